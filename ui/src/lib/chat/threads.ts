import type { ChatMessage } from './log';

/**
 * A channel's messages split into the main line and threads. A message with a `thread_id` is a
 * reply; its thread is named by the root it leads back to (a reply to a reply belongs to the
 * same thread). A reply whose root is not loaded (older history not paged in yet) stays in the
 * main line, so nothing loaded is ever hidden.
 */
export interface Threads {
  /** Roots and ordinary messages, plus replies whose root is not loaded, in log order. */
  main: ChatMessage[];
  /** Each root's replies, oldest first. */
  replies: Map<string, ChatMessage[]>;
}

/** The id of the thread root `m` leads back to, or null when that root is not among `byId`. */
export function rootOf(m: ChatMessage, byId: Map<string, ChatMessage>): string | null {
  let cur = m;
  // A chain longer than the log is a cycle (hostile or broken data): treat it as no root.
  for (let hops = 0; hops <= byId.size; hops++) {
    if (!cur.thread_id) return cur.id;
    const parent = byId.get(cur.thread_id);
    if (!parent) return null;
    cur = parent;
  }
  return null;
}

export function groupThreads(list: ChatMessage[]): Threads {
  const byId = new Map(list.map((m) => [m.id, m]));
  const main: ChatMessage[] = [];
  const replies = new Map<string, ChatMessage[]>();
  for (const m of list) {
    if (!m.thread_id) {
      main.push(m);
      continue;
    }
    const root = rootOf(m, byId);
    if (root === null || root === m.id) {
      main.push(m);
      continue;
    }
    const r = replies.get(root);
    if (r) r.push(m);
    else replies.set(root, [m]);
  }
  return { main, replies };
}

/** How many replies a thread shows as its count: deleted ones leave only a tombstone. */
export function replyCount(replies: ChatMessage[] | undefined): number {
  return replies ? replies.filter((m) => !m.deleted_at).length : 0;
}
