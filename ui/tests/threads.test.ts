import { describe, expect, it } from 'vitest';
import { groupThreads, replyCount, rootOf } from '../src/lib/chat/threads';
import { msg } from './fakes';

const ids = (l: { id: string }[]) => l.map((m) => m.id);

describe('thread grouping', () => {
  it('keeps messages without a thread in the main line, in order', () => {
    const t = groupThreads([msg({ id: 'a', seq: 1 }), msg({ id: 'b', seq: 2 })]);
    expect(ids(t.main)).toEqual(['a', 'b']);
    expect(t.replies.size).toBe(0);
  });

  it('moves replies under their root, oldest first, and counts them', () => {
    const t = groupThreads([
      msg({ id: 'root', seq: 1 }),
      msg({ id: 'r1', seq: 2, thread_id: 'root' }),
      msg({ id: 'other', seq: 3 }),
      msg({ id: 'r2', seq: 4, thread_id: 'root' }),
    ]);
    expect(ids(t.main)).toEqual(['root', 'other']);
    expect(ids(t.replies.get('root')!)).toEqual(['r1', 'r2']);
    expect(replyCount(t.replies.get('root'))).toBe(2);
    expect(replyCount(t.replies.get('other'))).toBe(0);
  });

  it('puts a reply to a reply in the same thread as its root', () => {
    const t = groupThreads([
      msg({ id: 'root', seq: 1 }),
      msg({ id: 'r1', seq: 2, thread_id: 'root' }),
      msg({ id: 'r2', seq: 3, thread_id: 'r1' }),
    ]);
    expect(ids(t.main)).toEqual(['root']);
    expect(ids(t.replies.get('root')!)).toEqual(['r1', 'r2']);
    expect(t.replies.has('r1')).toBe(false);
  });

  it('shows a reply whose root is not loaded in the main line, so nothing loaded is hidden', () => {
    const t = groupThreads([msg({ id: 'r1', seq: 5, thread_id: 'older' }), msg({ id: 'b', seq: 6 })]);
    expect(ids(t.main)).toEqual(['r1', 'b']);
    expect(t.replies.size).toBe(0);
  });

  it('does not count deleted replies (they stay as tombstones in the thread)', () => {
    const t = groupThreads([
      msg({ id: 'root', seq: 1 }),
      msg({ id: 'r1', seq: 2, thread_id: 'root', deleted_at: '2026-01-01T00:01:00Z' }),
      msg({ id: 'r2', seq: 3, thread_id: 'root' }),
    ]);
    expect(t.replies.get('root')).toHaveLength(2);
    expect(replyCount(t.replies.get('root'))).toBe(1);
  });

  it('survives a thread_id cycle (broken or hostile data) by keeping both in the main line', () => {
    const a = msg({ id: 'a', seq: 1, thread_id: 'b' });
    const b = msg({ id: 'b', seq: 2, thread_id: 'a' });
    const byId = new Map([a, b].map((m) => [m.id, m]));
    expect(rootOf(a, byId)).toBeNull();
    const t = groupThreads([a, b]);
    expect(ids(t.main)).toEqual(['a', 'b']);
  });

  it('treats a message naming itself as its thread as a main-line message', () => {
    const t = groupThreads([msg({ id: 'a', seq: 1, thread_id: 'a' })]);
    expect(ids(t.main)).toEqual(['a']);
  });
});
