import { describe, expect, it } from 'vitest';
import { ChannelLog } from '../src/lib/chat/log';
import { msg } from './fakes';

describe('streaming replies are assembled from deltas', () => {
  it('appends deltas to a streaming message and takes the final text', () => {
    const log = new ChannelLog('c1');
    log.apply({ type: 'message', channel_id: 'c1', seq: 1, message: msg({ id: 'a', seq: 1, state: 'streaming' }) });
    log.apply({ type: 'message_delta', channel_id: 'c1', message_id: 'a', delta: 'Hel' });
    log.apply({ type: 'message_delta', channel_id: 'c1', message_id: 'a', delta: 'lo' });
    expect(log.get('a')?.content).toBe('Hello');
    expect(log.get('a')?.state).toBe('streaming');
    log.apply({ type: 'message', channel_id: 'c1', seq: 2, message: msg({ id: 'a', seq: 2, content: 'Hello!', state: 'complete' }) });
    expect(log.get('a')?.content).toBe('Hello!');
    expect(log.get('a')?.state).toBe('complete');
    expect(log.list()).toHaveLength(1);
  });

  it('keeps deltas that arrive before their message', () => {
    const log = new ChannelLog('c1');
    log.apply({ type: 'message_delta', channel_id: 'c1', message_id: 'a', delta: 'early ' });
    log.apply({ type: 'message', channel_id: 'c1', seq: 1, message: msg({ id: 'a', seq: 1, state: 'streaming' }) });
    log.apply({ type: 'message_delta', channel_id: 'c1', message_id: 'a', delta: 'late' });
    expect(log.get('a')?.content).toBe('early late');
  });

  it('does not lose streamed text when a streaming state repeats with empty content', () => {
    const log = new ChannelLog('c1');
    log.upsert(msg({ id: 'a', seq: 1, state: 'streaming' }));
    log.apply({ type: 'message_delta', channel_id: 'c1', message_id: 'a', delta: 'abc' });
    log.apply({ type: 'message', channel_id: 'c1', seq: 2, message: msg({ id: 'a', seq: 2, state: 'streaming' }) });
    expect(log.get('a')?.content).toBe('abc');
  });

  it('ignores a delta after the final and events of other channels', () => {
    const log = new ChannelLog('c1');
    log.upsert(msg({ id: 'a', seq: 1, content: 'done' }));
    expect(log.apply({ type: 'message_delta', channel_id: 'c1', message_id: 'a', delta: 'x' })).toBe(false);
    expect(log.apply({ type: 'message', channel_id: 'c2', seq: 9, message: msg({ id: 'z', seq: 9, channel_id: 'c2' }) })).toBe(false);
    expect(log.get('a')?.content).toBe('done');
    expect(log.lastSeq).toBe(1);
  });

  it('applies edits, states and deletes as tombstones, tracking the last seq', () => {
    const log = new ChannelLog('c1');
    log.upsert(msg({ id: 'a', seq: 1, content: 'one' }));
    log.apply({ type: 'message_edit', channel_id: 'c1', seq: 2, message_id: 'a', content: 'uno', edited_at: '2026-01-01T00:01:00Z' });
    expect(log.get('a')?.content).toBe('uno');
    log.apply({ type: 'message_state', channel_id: 'c1', seq: 3, message_id: 'a', state: 'error' });
    expect(log.get('a')?.state).toBe('error');
    log.apply({ type: 'message_delete', channel_id: 'c1', seq: 4, message_id: 'a', deleted_at: '2026-01-01T00:02:00Z' });
    expect(log.get('a')?.deleted_at).toBe('2026-01-01T00:02:00Z');
    expect(log.get('a')?.content).toBe('');
    expect(log.lastSeq).toBe(4);
  });

  it('keeps messages in creation order whatever order they arrive in', () => {
    const log = new ChannelLog('c1');
    log.upsert(msg({ id: 'c', seq: 3 }));
    log.upsert(msg({ id: 'a', seq: 1 }));
    log.upsert(msg({ id: 'b', seq: 2 }));
    expect(log.list().map((m) => m.id)).toEqual(['a', 'b', 'c']);
    const before = log.list();
    expect(log.list()).toBe(before);
  });
});

describe('order', () => {
  it('compares creation times as times, not strings', () => {
    const log = new ChannelLog('c1');
    log.upsert(msg({ id: 'b', seq: 2, created_at: '2026-01-01T00:00:01.5+00:00' }));
    log.upsert(msg({ id: 'a', seq: 1, created_at: '2026-01-01T00:00:01.25Z' }));
    log.upsert(msg({ id: 'c', seq: 3, created_at: '2026-01-01T00:00:01Z' }));
    expect(log.list().map((m) => m.id)).toEqual(['c', 'a', 'b']);
  });
});
