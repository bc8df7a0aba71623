import { describe, expect, it } from 'vitest';
import { EventFeed } from '../src/lib/host/events';
import { HostError } from '../src/lib/host/HostClient';
import { SseParser } from '../src/lib/host/sse';
import type { HostEvent } from '../src/lib/api/types';
import { FakeHost } from './fakes';

const ev = (id: number, kind = 'notification.created') => ({
  id: String(id),
  event: kind,
  data: JSON.stringify({ id, kind, created_at: '2026-01-01T00:00:00Z', data: {} }),
});

describe('the SSE parser', () => {
  it('reassembles events split anywhere and skips keep-alives', () => {
    const text = ': keep-alive\n\nid: 4\nevent: notification.created\ndata: {"a":\ndata: 1}\n\nid: 5\r\nevent: x\r\ndata: y\r\n\r\n';
    for (let cut = 1; cut < text.length; cut++) {
      const p = new SseParser();
      const out = [...p.push(text.slice(0, cut)), ...p.push(text.slice(cut))];
      expect(out).toEqual([
        { id: '4', event: 'notification.created', data: '{"a":\n1}' },
        { id: '5', event: 'x', data: 'y' },
      ]);
    }
  });
});

describe('the event feed resumes', () => {
  it('reconnects after a drop with the last id and delivers each event once', async () => {
    const host = new FakeHost();
    host.streams.push({ after: null, messages: [ev(1), ev(2)] });
    // The next stream replays 2 (a server may) and then sends 3.
    host.streams.push({ after: '2', messages: [ev(2), ev(3)] });
    const seen: number[] = [];
    const statuses: boolean[] = [];
    const feed = new EventFeed(
      host,
      { onEvent: (e: HostEvent) => seen.push(e.id), onResync: () => {}, onStatus: (s) => statuses.push(s) },
      null,
      { sleep: async () => {} },
    );
    await new Promise((r) => setTimeout(r, 10));
    await feed.stop();
    expect(seen).toEqual([1, 2, 3]);
    expect(host.eventCalls.slice(0, 3)).toEqual([null, '2', '3']);
    expect(statuses.slice(0, 3)).toEqual([true, false, true]);
  });

  it('hands id-less figures to onTransient without moving the resume cursor', async () => {
    const host = new FakeHost();
    const figure = { id: null, event: 'host.overview', data: JSON.stringify({ host_name: 'pi', agents: [] }) };
    host.streams.push({ after: null, messages: [ev(1), figure, ev(2)] });
    host.streams.push({ after: '2', messages: [ev(3)] });
    const seen: number[] = [];
    const figures: [string, unknown][] = [];
    const feed = new EventFeed(
      host,
      { onEvent: (e) => seen.push(e.id), onResync: () => {}, onTransient: (kind, data) => figures.push([kind, data]) },
      null,
      { sleep: async () => {} },
    );
    await new Promise((r) => setTimeout(r, 10));
    await feed.stop();
    expect(seen).toEqual([1, 2, 3]);
    expect(figures).toEqual([['host.overview', { host_name: 'pi', agents: [] }]]);
    expect(host.eventCalls.slice(0, 2)).toEqual([null, '2']);
  });

  it('starts after a given id, resyncs when told, and stops on 401', async () => {
    const host = new FakeHost();
    host.streams.push({ after: '10', messages: [{ id: null, event: 'resync', data: '{}' }, ev(3)] });
    host.streams.push({ after: null, messages: [], fail: new HostError(401, 'unauthorized', 'no') });
    const seen: number[] = [];
    let resyncs = 0;
    let unauthorized = 0;
    const feed = new EventFeed(
      host,
      {
        onEvent: (e) => seen.push(e.id),
        onResync: () => resyncs++,
        onUnauthorized: () => unauthorized++,
      },
      '10',
      { sleep: async () => {} },
    );
    await new Promise((r) => setTimeout(r, 10));
    await feed.stop();
    // After a resync the old cursor is dropped, so id 3 (a reset host) is not skipped.
    expect(seen).toEqual([3]);
    expect(resyncs).toBe(1);
    expect(unauthorized).toBe(1);
    expect(host.eventCalls).toEqual(['10', '3']);
  });

  it('stops at an unauthorized event (the session was revoked or expired) without reconnecting', async () => {
    const host = new FakeHost();
    host.streams.push({ after: null, messages: [ev(1), { id: null, event: 'unauthorized', data: '{"reason":"revoked"}' }, ev(2)] });
    host.streams.push({ after: '1', messages: [ev(2)] });
    const seen: number[] = [];
    let unauthorized = 0;
    const feed = new EventFeed(
      host,
      { onEvent: (e) => seen.push(e.id), onResync: () => {}, onUnauthorized: () => unauthorized++ },
      null,
      { sleep: async () => {} },
    );
    await new Promise((r) => setTimeout(r, 10));
    await feed.stop();
    expect(seen).toEqual([1]);
    expect(unauthorized).toBe(1);
    expect(host.eventCalls).toEqual([null]);
  });
});
