import type { ClientEvent, ServerEvent } from '../api/types';
import {
  HostError,
  type ChatSocket,
  type HostClient,
  type Method,
  type RequestInit,
  type SseMessage,
} from './HostClient';
import { SseParser } from './sse';

// `__Host-`: only this host can set it (Secure, Path=/, no Domain).
const CSRF_COOKIE = '__Host-taos_csrf';
const CSRF_HEADER = 'X-CSRF-Token';

function readCookie(name: string): string | null {
  for (const part of document.cookie.split(';')) {
    const [k, ...v] = part.trim().split('=');
    if (k === name) return decodeURIComponent(v.join('='));
  }
  return null;
}

export function buildUrl(base: string, path: string, query?: RequestInit['query']): string {
  const params = new URLSearchParams();
  for (const [k, v] of Object.entries(query ?? {})) {
    if (v !== undefined && v !== null && v !== '') params.set(k, String(v));
  }
  const qs = params.toString();
  return `${base}${path}${qs ? `?${qs}` : ''}`;
}

export async function toHostError(response: Response): Promise<HostError> {
  let code = 'http_' + response.status;
  let message = response.statusText || `HTTP ${response.status}`;
  try {
    const body = await response.json();
    if (body?.error?.code) code = body.error.code;
    if (body?.error?.message) message = body.error.message;
  } catch {
    // not JSON: keep the status line
  }
  const retry = Number(response.headers.get('retry-after'));
  return new HostError(response.status, code, message, Number.isFinite(retry) && retry > 0 ? retry : null);
}

/** The browser: same-origin fetch with the session cookie, CSRF header on changes. */
export class BrowserHostClient implements HostClient {
  private csrf: string | null = null;

  /**
   * @param onUnauthorized called when the host answers 401 to anything but a sign-in attempt
   *   (the session ended or was revoked).
   */
  constructor(
    private readonly base = '',
    private readonly onUnauthorized?: () => void,
  ) {}

  setCsrf(token: string | null): void {
    this.csrf = token;
  }

  async request<T>(method: Method, path: string, init: RequestInit = {}): Promise<T> {
    const headers: Record<string, string> = { accept: 'application/json' };
    if (method !== 'GET') {
      const token = readCookie(CSRF_COOKIE) ?? this.csrf;
      if (token) headers[CSRF_HEADER] = token;
    }
    let body: string | undefined;
    if (init.body !== undefined) {
      headers['content-type'] = 'application/json';
      body = JSON.stringify(init.body);
    }
    let response: Response;
    try {
      response = await fetch(buildUrl(this.base, path, init.query), {
        method,
        headers,
        body,
        credentials: 'same-origin',
      });
    } catch (e) {
      throw new HostError(0, 'unreachable', `The host did not answer (${(e as Error).message})`);
    }
    if (!response.ok) {
      if (response.status === 401 && !path.startsWith('/api/auth/')) this.onUnauthorized?.();
      throw await toHostError(response);
    }
    if (response.status === 204) return undefined as T;
    if (init.text) return (await response.text()) as T;
    return (await response.json()) as T;
  }

  openChat(): ChatSocket {
    const origin = this.base || location.origin;
    const url = origin.replace(/^http/, 'ws') + '/api/chat/ws';
    // Same origin: the session cookie authenticates; the subprotocol names the frame format.
    const ws = new WebSocket(url, ['taos.v1']);
    let closed = false;
    const socket: ChatSocket = {
      onopen: null,
      onframe: null,
      onclose: null,
      send(frame: ClientEvent) {
        if (ws.readyState === WebSocket.OPEN) ws.send(JSON.stringify(frame));
      },
      close() {
        ws.close();
      },
    };
    ws.onopen = () => socket.onopen?.();
    ws.onmessage = (e) => {
      if (typeof e.data !== 'string') return;
      try {
        socket.onframe?.(JSON.parse(e.data) as ServerEvent);
      } catch {
        // a frame we cannot read is skipped; the seq gap is repaired on resubscribe
      }
    };
    const done = (code: number) => {
      if (closed) return;
      closed = true;
      socket.onclose?.(code);
    };
    ws.onclose = (e) => done(e.code);
    ws.onerror = () => done(1006);
    return socket;
  }

  async *openEvents(
    lastEventId: string | null,
    signal: AbortSignal,
    onOpen?: () => void,
  ): AsyncIterable<SseMessage> {
    const headers: Record<string, string> = { accept: 'text/event-stream' };
    if (lastEventId) headers['Last-Event-ID'] = lastEventId;
    const response = await fetch(`${this.base}/api/events`, {
      headers,
      signal,
      credentials: 'same-origin',
      cache: 'no-store',
    });
    if (!response.ok) throw await toHostError(response);
    if (!response.body) return;
    onOpen?.();
    const reader = response.body.pipeThrough(new TextDecoderStream()).getReader();
    const parser = new SseParser();
    try {
      for (;;) {
        const { value, done } = await reader.read();
        if (done) return;
        for (const message of parser.push(value)) yield message;
      }
    } finally {
      reader.releaseLock();
    }
  }
}
