import type { Message, ServerEvent } from '../api/types';

/** A message as the UI shows it: the host's, or our own not yet stored (`local`). */
export interface ChatMessage extends Message {
  /** Sent by us, not yet confirmed by the host. Its id is `local:<client_id>`. */
  local?: boolean;
  /** Why sending failed (a retry resends the same client_id, so it cannot duplicate). */
  sendError?: string;
  /** False when the host refused the message itself (too long, not allowed): sending the same
   *  again would fail the same way, so no Retry is offered. */
  retryable?: boolean;
}

// Creation order; ids (UUIDv7, time-ordered) break ties within a millisecond.
function before(a: Message, b: Message): boolean {
  const ta = Date.parse(a.created_at);
  const tb = Date.parse(b.created_at);
  if (ta !== tb) return ta < tb;
  return a.id < b.id;
}

export const localId = (clientId: string) => `local:${clientId}`;

/**
 * One channel's messages, built from history, live events and our own sends. Pure: no I/O.
 * - upserts by message id (a `message` event is a message's full state);
 * - assembles streaming replies from `message_delta`s, also when deltas come before the
 *   message they belong to;
 * - replaces an optimistic local message by the stored one with the same `client_id`, from
 *   whichever arrives first (the POST answer or the WebSocket echo), so it shows once;
 * - tracks the highest `seq` seen, to resubscribe with `after_seq` after a drop.
 */
export class ChannelLog {
  lastSeq = 0;
  private items: ChatMessage[] = [];
  private byId = new Map<string, ChatMessage>();
  private earlyDeltas = new Map<string, string>();
  private snapshot: ChatMessage[] | null = null;

  constructor(readonly channelId: string) {}

  /** The messages in order; the same array until something changes. */
  list(): ChatMessage[] {
    if (!this.snapshot) this.snapshot = this.items.slice();
    return this.snapshot;
  }

  /** The lowest seq among stored messages: where older history continues. */
  oldestSeq(): number | null {
    let min: number | null = null;
    for (const m of this.items) if (!m.local && (min === null || m.seq < min)) min = m.seq;
    return min;
  }

  get(id: string): ChatMessage | undefined {
    return this.byId.get(id);
  }

  private changed() {
    this.snapshot = null;
  }

  private insert(m: ChatMessage) {
    let lo = 0;
    let hi = this.items.length;
    // Mostly appends: check the end first.
    if (hi === 0 || before(this.items[hi - 1], m)) {
      this.items.push(m);
    } else {
      while (lo < hi) {
        const mid = (lo + hi) >> 1;
        if (before(this.items[mid], m)) lo = mid + 1;
        else hi = mid;
      }
      this.items.splice(lo, 0, m);
    }
    this.byId.set(m.id, m);
  }

  private remove(id: string) {
    const m = this.byId.get(id);
    if (!m) return;
    this.byId.delete(id);
    const i = this.items.indexOf(m);
    if (i >= 0) this.items.splice(i, 1);
  }

  private replace(old: ChatMessage, next: ChatMessage) {
    const i = this.items.indexOf(old);
    if (i >= 0 && old.created_at === next.created_at) {
      this.items[i] = next;
      this.byId.set(next.id, next);
    } else {
      this.remove(old.id);
      this.insert(next);
    }
  }

  private seen(seq: number) {
    if (seq > this.lastSeq) this.lastSeq = seq;
  }

  /** Stores a message's current state (from history, an event or a POST answer). */
  upsert(incoming: Message): void {
    this.seen(incoming.seq);
    if (incoming.client_id) {
      const local = this.byId.get(localId(incoming.client_id));
      if (local) this.remove(local.id);
    }
    const existing = this.byId.get(incoming.id);
    let next: ChatMessage = { ...incoming };
    if (existing && existing.seq > incoming.seq) return; // older state, e.g. a late POST answer
    const early = this.earlyDeltas.get(incoming.id);
    if (early !== undefined) {
      this.earlyDeltas.delete(incoming.id);
      if (incoming.state === 'streaming') next.content = incoming.content + early;
    }
    // The host stores a streaming reply's text only when it completes: keep what streamed.
    if (
      existing &&
      incoming.state === 'streaming' &&
      existing.content.length > incoming.content.length
    ) {
      next = { ...next, content: existing.content };
    }
    if (existing) this.replace(existing, next);
    else this.insert(next);
    this.changed();
  }

  /** Applies one WebSocket event for this channel. Returns whether anything changed. */
  apply(event: ServerEvent): boolean {
    if (!('channel_id' in event) || event.channel_id !== this.channelId) return false;
    switch (event.type) {
      case 'message':
        this.upsert(event.message);
        return true;
      case 'message_delta': {
        const m = this.byId.get(event.message_id);
        if (!m) {
          this.earlyDeltas.set(
            event.message_id,
            (this.earlyDeltas.get(event.message_id) ?? '') + event.delta,
          );
          return false;
        }
        if (m.state === 'complete') return false; // a late delta after the final
        this.replace(m, { ...m, content: m.content + event.delta, state: 'streaming' });
        this.changed();
        return true;
      }
      case 'message_edit': {
        this.seen(event.seq);
        const m = this.byId.get(event.message_id);
        if (!m) return false;
        this.replace(m, { ...m, content: event.content, edited_at: event.edited_at, seq: event.seq });
        this.changed();
        return true;
      }
      case 'message_state': {
        this.seen(event.seq);
        const m = this.byId.get(event.message_id);
        if (!m) return false;
        this.replace(m, { ...m, state: event.state, seq: event.seq });
        this.changed();
        return true;
      }
      case 'message_delete': {
        this.seen(event.seq);
        const m = this.byId.get(event.message_id);
        if (!m) return false;
        this.replace(m, { ...m, content: '', deleted_at: event.deleted_at, seq: event.seq });
        this.changed();
        return true;
      }
      case 'subscribed':
        this.seen(event.last_seq);
        return false;
      default:
        return false;
    }
  }

  /** Shows our own message at once, before the host has it. */
  addLocal(clientId: string, content: string, authorId: string, now = new Date(), threadId?: string): ChatMessage {
    const existing = this.byId.get(localId(clientId));
    if (existing) {
      const retry = { ...existing, sendError: undefined, retryable: undefined, state: 'pending' as const };
      this.replace(existing, retry);
      this.changed();
      return retry;
    }
    const m: ChatMessage = {
      id: localId(clientId),
      channel_id: this.channelId,
      seq: 0,
      author_id: authorId,
      author_type: 'user',
      content,
      content_type: 'text',
      state: 'pending',
      metadata: {},
      created_at: now.toISOString(),
      client_id: clientId,
      thread_id: threadId ?? null,
      local: true,
    };
    this.insert(m);
    this.changed();
    return m;
  }

  /** Sending failed for good (until the user retries, if `retryable`). */
  failLocal(clientId: string, error: string, retryable = true): void {
    const m = this.byId.get(localId(clientId));
    if (!m) return;
    this.replace(m, { ...m, state: 'error', sendError: error, retryable });
    this.changed();
  }
}
