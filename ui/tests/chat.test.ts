import { describe, expect, it } from 'vitest';
import { ChatClient } from '../src/lib/chat/connection';
import { HostError } from '../src/lib/host/HostClient';
import type { Message } from '../src/lib/api/types';
import { MemoryOutbox } from '../src/lib/chat/outbox';
import { FakeHost, msg, tick } from './fakes';

function setup() {
  const host = new FakeHost();
  const timers: (() => void)[] = [];
  let n = 0;
  const chat = new ChatClient(host, 'user:owner', {
    setTimer: (fn) => timers.push(fn),
    newClientId: () => `cid-${++n}`,
  });
  return { host, chat, timers, runTimers: () => timers.splice(0).forEach((f) => f()) };
}

describe('optimistic sends never duplicate', () => {
  it('shows the message at once and once only, whether the echo or the answer comes first', async () => {
    for (const echoFirst of [true, false]) {
      const { host, chat } = setup();
      host.sockets[0].accept();
      host.handler = async (m, p) => (p.endsWith('/messages') ? [] : undefined);
      await chat.open_channel('c1');
      let answer!: (m: Message) => void;
      host.handler = () => new Promise((r) => (answer = r as (m: Message) => void));
      const id = chat.send('c1', 'hi');
      const log = chat.log('c1');
      expect(log.list().map((m) => [m.content, m.state, m.local])).toEqual([['hi', 'pending', true]]);
      const stored = msg({ id: 'm1', seq: 5, content: 'hi', client_id: id, author_id: 'user:owner', author_type: 'user' });
      if (echoFirst) host.sockets[0].frame({ type: 'message', channel_id: 'c1', seq: 5, message: stored });
      answer(stored);
      await tick();
      if (!echoFirst) host.sockets[0].frame({ type: 'message', channel_id: 'c1', seq: 5, message: stored });
      expect(log.list().map((m) => [m.id, m.content, m.state])).toEqual([['m1', 'hi', 'complete']]);
    }
  });

  it('retries an unanswered send with the same client_id, then shows the error and can be retried', async () => {
    const { host, chat, runTimers } = setup();
    host.handler = async () => {
      throw new HostError(0, 'unreachable', 'offline');
    };
    const id = chat.send('c1', 'hello');
    await tick();
    for (let i = 0; i < 5; i++) {
      runTimers();
      await tick();
    }
    const posts = host.requests.filter((r) => r.method === 'POST');
    expect(posts).toHaveLength(6);
    expect(new Set(posts.map((p) => (p.init?.body as { client_id: string }).client_id))).toEqual(new Set([id]));
    const failed = chat.log('c1').get(`local:${id}`);
    expect(failed?.state).toBe('error');
    expect(failed?.sendError).toMatch(/offline/);
    expect(failed?.retryable).toBe(true);
    // The user retries: same client_id; the host answers with the stored message.
    host.handler = async () => msg({ id: 'm9', seq: 9, content: 'hello', client_id: id });
    chat.retry('c1', id);
    await tick();
    const last = host.requests.at(-1)!;
    expect((last.init?.body as { client_id: string }).client_id).toBe(id);
    expect(chat.log('c1').list().map((m) => m.id)).toEqual(['m9']);
  });

  it('does not retry a refused send', async () => {
    const { host, chat, runTimers } = setup();
    host.handler = async () => {
      throw new HostError(403, 'forbidden', 'this chat is archived');
    };
    const id = chat.send('c1', 'x');
    await tick();
    runTimers();
    await tick();
    expect(host.requests).toHaveLength(1);
    expect(chat.log('c1').get(`local:${id}`)?.sendError).toMatch(/archived/);
    // Sending the same again would be refused the same way: no Retry for it.
    expect(chat.log('c1').get(`local:${id}`)?.retryable).toBe(false);
  });
});

describe('reconnecting resumes with after_seq', () => {
  it('resubscribes every followed channel after the last seq seen', async () => {
    const { host, chat, runTimers } = setup();
    host.handler = async (_m, p) => (p.includes('/c1/') ? [msg({ id: 'a', seq: 3 })] : []);
    host.sockets[0].accept();
    await chat.open_channel('c1');
    chat.follow('c2');
    expect(host.sockets[0].sent).toEqual([
      { type: 'subscribe', channel_id: 'c1', after_seq: 3 },
      { type: 'subscribe', channel_id: 'c2', after_seq: null },
    ]);
    host.sockets[0].frame({ type: 'message', channel_id: 'c1', seq: 7, message: msg({ id: 'b', seq: 7 }) });
    host.sockets[0].drop();
    expect(chat.connected).toBe(false);
    // Missed while down: seq 8. The new socket asks for everything after 7.
    runTimers();
    expect(host.sockets).toHaveLength(2);
    host.sockets[1].accept();
    expect(host.sockets[1].sent).toEqual([
      { type: 'subscribe', channel_id: 'c1', after_seq: 7 },
      { type: 'subscribe', channel_id: 'c2', after_seq: null },
    ]);
    host.sockets[1].frame({ type: 'message', channel_id: 'c1', seq: 8, message: msg({ id: 'c', seq: 8 }) });
    // A replayed event we already had changes nothing.
    host.sockets[1].frame({ type: 'message', channel_id: 'c1', seq: 7, message: msg({ id: 'b', seq: 7 }) });
    expect(chat.log('c1').list().map((m) => m.id)).toEqual(['a', 'b', 'c']);
    expect(chat.log('c1').lastSeq).toBe(8);
  });

  it('backs off between failed connects and resets after one succeeds', () => {
    const host = new FakeHost();
    const waits: number[] = [];
    const pending: (() => void)[] = [];
    new ChatClient(host, 'me', {
      minDelayMs: 100,
      maxDelayMs: 400,
      setTimer: (fn, ms) => {
        waits.push(ms);
        pending.push(fn);
      },
    });
    for (let i = 0; i < 4; i++) {
      host.sockets.at(-1)!.drop();
      pending.shift()!();
    }
    host.sockets.at(-1)!.accept();
    host.sockets.at(-1)!.drop();
    expect(waits).toEqual([100, 200, 400, 400, 100]);
  });
  it('stops and reports sign-out when the host closes with 4001 (revoked or expired)', () => {
    const host = new FakeHost();
    const waits: number[] = [];
    let unauthorized = 0;
    const chat = new ChatClient(host, 'me', {
      onUnauthorized: () => unauthorized++,
      setTimer: (_fn, ms) => waits.push(ms),
    });
    host.sockets[0].accept();
    host.sockets[0].drop(4001);
    expect(unauthorized).toBe(1);
    expect(chat.connected).toBe(false);
    expect(waits).toEqual([]);
    expect(host.sockets).toHaveLength(1);
  });
});

describe('older history', () => {
  it('pages back with before_seq until the start', async () => {
    const { host, chat } = setup();
    host.sockets[0].accept();
    const all = Array.from({ length: 5 }, (_, i) => msg({ id: `m${i + 1}`, seq: i + 1 }));
    host.handler = async (_m, _p, init) => {
      const q = init?.query ?? {};
      const limit = Number(q.limit);
      const before = q.before_seq === undefined ? Infinity : Number(q.before_seq);
      return all.filter((m) => m.seq < before).slice(-limit);
    };
    await chat.open_channel('c1', 2);
    expect(chat.log('c1').list().map((m) => m.id)).toEqual(['m4', 'm5']);
    expect(await chat.loadOlder('c1', 2)).toBe(true);
    expect(await chat.loadOlder('c1', 2)).toBe(true);
    expect(chat.log('c1').list().map((m) => m.id)).toEqual(['m1', 'm2', 'm3', 'm4', 'm5']);
    expect(chat.hasAll('c1')).toBe(true);
    expect(await chat.loadOlder('c1', 2)).toBe(false);
    const pages = host.requests.map((r) => r.init?.query?.before_seq);
    expect(pages).toEqual([undefined, 4, 2]);
  });
});

describe('typing', () => {
  it('tells the channel at most every 3 s', () => {
    const { host, chat } = setup();
    host.sockets[0].accept();
    chat.typing('c1', 10_000);
    chat.typing('c1', 11_000);
    chat.typing('c2', 11_000);
    chat.typing('c1', 13_001);
    expect(host.sockets[0].sent).toEqual([
      { type: 'typing', channel_id: 'c1' },
      { type: 'typing', channel_id: 'c2' },
      { type: 'typing', channel_id: 'c1' },
    ]);
  });
});

describe('the outbox keeps unsent messages across reloads', () => {
  it('keeps a message until the host stores it, and a new client (a reload) sends what is left', async () => {
    const outbox = new MemoryOutbox();
    const host = new FakeHost();
    const timers: (() => void)[] = [];
    const first = new ChatClient(host, 'user:owner', { outbox, setTimer: (fn) => timers.push(fn), newClientId: () => 'cid-1', sendRetries: 1 });
    host.handler = async () => {
      throw new HostError(0, 'unreachable', 'offline');
    };
    first.send('c1', 'written offline');
    await tick();
    expect([...outbox.entries.keys()]).toEqual(['cid-1']);
    timers.splice(0).forEach((f) => f());
    await tick();
    // Out of retries: shown as failed, still kept.
    expect(first.log('c1').get('local:cid-1')?.state).toBe('error');
    expect(outbox.entries.has('cid-1')).toBe(true);
    first.close();

    // Another account on this browser never sends it.
    const other = new FakeHost();
    new ChatClient(other, 'user:guest', { outbox });
    await tick();
    expect(other.requests).toHaveLength(0);

    // The page reloads with the host back: the message shows at once and is sent with its id.
    const again = new FakeHost();
    again.handler = async (_m, _p, init) => msg({ id: 'm1', seq: 3, content: 'written offline', client_id: (init?.body as { client_id: string }).client_id, author_id: 'user:owner', author_type: 'user' });
    const second = new ChatClient(again, 'user:owner', { outbox });
    await tick();
    await tick();
    const posts = again.requests.filter((r) => r.method === 'POST');
    expect(posts.map((p) => (p.init?.body as { client_id: string }).client_id)).toEqual(['cid-1']);
    expect(second.log('c1').list().map((m) => [m.id, m.state])).toEqual([['m1', 'complete']]);
    expect(outbox.entries.size).toBe(0);
  });

  it('drops a refused message from the outbox (it stays on screen with the reason)', async () => {
    const outbox = new MemoryOutbox();
    const host = new FakeHost();
    host.handler = async () => {
      throw new HostError(403, 'forbidden', 'this chat is archived');
    };
    const chat = new ChatClient(host, 'user:owner', { outbox, newClientId: () => 'cid-2' });
    chat.send('c1', 'x');
    await tick();
    await tick();
    expect(outbox.entries.size).toBe(0);
    expect(chat.log('c1').get('local:cid-2')?.sendError).toMatch(/archived/);
  });

  it('sends what waits when the socket reconnects, never twice while one is in flight', async () => {
    const outbox = new MemoryOutbox();
    const host = new FakeHost();
    const timers: (() => void)[] = [];
    const chat = new ChatClient(host, 'user:owner', { outbox, setTimer: (fn) => timers.push(fn), newClientId: () => 'cid-3', sendRetries: 0 });
    host.handler = async () => {
      throw new HostError(0, 'unreachable', 'offline');
    };
    chat.send('c1', 'later');
    await tick();
    expect(chat.log('c1').get('local:cid-3')?.state).toBe('error');
    let answer!: (m: Message) => void;
    host.handler = () => new Promise((r) => (answer = r as (m: Message) => void));
    host.sockets[0].accept();
    await tick();
    host.sockets[0].drop(1006);
    timers.splice(0).forEach((f) => f());
    host.sockets[1].accept();
    await tick();
    // One POST for the reconnect(s) while the first is unanswered.
    expect(host.requests.filter((r) => r.method === 'POST')).toHaveLength(2);
    answer(msg({ id: 'm3', seq: 1, content: 'later', client_id: 'cid-3', author_id: 'user:owner', author_type: 'user' }));
    await tick();
    expect(outbox.entries.size).toBe(0);
  });
});

describe('thread replies', () => {
  it('post with the thread, show under it at once, and keep the thread through the outbox', async () => {
    const outbox = new MemoryOutbox();
    const host = new FakeHost();
    const timers: (() => void)[] = [];
    const first = new ChatClient(host, 'user:owner', { outbox, setTimer: (fn) => timers.push(fn), newClientId: () => 'cid-t', sendRetries: 0 });
    host.handler = async () => {
      throw new HostError(0, 'unreachable', 'offline');
    };
    first.send('c1', 'in the thread', undefined, 'root-1');
    expect(first.log('c1').get('local:cid-t')?.thread_id).toBe('root-1');
    await tick();
    expect(outbox.entries.get('cid-t')?.threadId).toBe('root-1');
    expect((host.requests.find((r) => r.method === 'POST')?.init?.body as { thread_id?: string }).thread_id).toBe('root-1');
    first.close();

    // A reload sends it again into the same thread.
    const again = new FakeHost();
    again.handler = async (_m, _p, init) => {
      const body = init?.body as { client_id: string; thread_id?: string };
      return msg({ id: 'm1', seq: 2, content: 'in the thread', client_id: body.client_id, thread_id: body.thread_id ?? null, author_id: 'user:owner', author_type: 'user' });
    };
    const second = new ChatClient(again, 'user:owner', { outbox });
    expect(second.log('c1').get('local:cid-t')).toBeUndefined();
    await tick();
    await tick();
    const posts = again.requests.filter((r) => r.method === 'POST');
    expect(posts.map((p) => (p.init?.body as { thread_id?: string }).thread_id)).toEqual(['root-1']);
    expect(second.log('c1').get('m1')?.thread_id).toBe('root-1');
  });

  it('leave thread_id out of an ordinary message', async () => {
    const { host, chat } = setup();
    host.handler = async (_m, _p, init) => msg({ id: 'm1', seq: 1, client_id: (init?.body as { client_id: string }).client_id, author_id: 'user:owner', author_type: 'user' });
    chat.send('c1', 'plain');
    await tick();
    const body = host.requests.find((r) => r.method === 'POST')?.init?.body as Record<string, unknown>;
    expect('thread_id' in body).toBe(false);
  });
});
