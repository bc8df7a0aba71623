import type { ClientEvent, Message, ServerEvent } from '../src/lib/api/types';
import { HostError, type ChatSocket, type HostClient, type Method, type RequestInit, type SseMessage } from '../src/lib/host/HostClient';

export function msg(over: Partial<Message> & { id: string; seq: number }): Message {
  return {
    channel_id: 'c1',
    author_id: 'helper',
    author_type: 'agent',
    content: '',
    content_type: 'text',
    state: 'complete',
    metadata: {},
    created_at: `2026-01-01T00:00:${String(over.seq).padStart(2, '0')}Z`,
    ...over,
  };
}

export class FakeSocket implements ChatSocket {
  sent: ClientEvent[] = [];
  onopen: (() => void) | null = null;
  onframe: ((frame: ServerEvent) => void) | null = null;
  onclose: ((code: number) => void) | null = null;
  open = false;
  send(frame: ClientEvent) {
    if (!this.open) throw new Error('send on a closed socket');
    this.sent.push(frame);
  }
  close() {
    this.drop(1000);
  }
  accept() {
    this.open = true;
    this.onopen?.();
  }
  frame(f: ServerEvent) {
    this.onframe?.(f);
  }
  drop(code = 1006) {
    this.open = false;
    this.onclose?.(code);
  }
}

type Handler = (method: Method, path: string, init?: RequestInit) => Promise<unknown>;

/** A HostClient whose transport the test drives. */
export class FakeHost implements HostClient {
  sockets: FakeSocket[] = [];
  requests: { method: Method; path: string; init?: RequestInit }[] = [];
  handler: Handler = async () => {
    throw new HostError(404, 'not_found', 'no handler');
  };
  streams: { after: string | null; messages: SseMessage[]; fail?: HostError }[] = [];
  eventCalls: (string | null)[] = [];
  setCsrf() {}
  request<T>(method: Method, path: string, init?: RequestInit): Promise<T> {
    this.requests.push({ method, path, init });
    return this.handler(method, path, init) as Promise<T>;
  }
  openChat(): ChatSocket {
    const s = new FakeSocket();
    this.sockets.push(s);
    return s;
  }
  async *openEvents(lastEventId: string | null, signal: AbortSignal, onOpen?: () => void): AsyncIterable<SseMessage> {
    this.eventCalls.push(lastEventId);
    const next = this.streams.shift();
    if (next && !next.fail) onOpen?.();
    if (!next) {
      // No more scripted streams: hang until stopped.
      await new Promise<void>((r) => signal.addEventListener('abort', () => r()));
      return;
    }
    if (next.fail) throw next.fail;
    for (const m of next.messages) yield m;
  }
}

export const tick = () => new Promise((r) => setTimeout(r, 0));
