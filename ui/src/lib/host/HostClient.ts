// The one way the UI reaches a taos host. The browser build uses BrowserHostClient (browser.ts:
// fetch with the session cookie and the CSRF header, a WebSocket, a streamed fetch for
// server-sent events); inside the app, TauriHostClient (tauri.ts) goes through the shell's Rust
// commands (TLS pinned to the key learned at pairing, device tokens, the offline cache and
// outbox). Everything above this interface is shared by both: the typed REST calls (api/api.ts,
// keyed on the generated schema's routes; the only caller of `request`), chat resume
// (chat/connection.ts) and event resume (events.ts).
import type { ClientEvent, ServerEvent } from '../api/types';

export type Method = 'GET' | 'POST' | 'PUT' | 'PATCH' | 'DELETE';

export type Query = Record<string, string | number | boolean | null | undefined>;

export interface RequestInit {
  body?: unknown;
  query?: Query;
  /** Answer is plain text (e.g. agent logs) instead of JSON. */
  text?: boolean;
}

/** A host error: `{error: {code, message}}` with its HTTP status (0 when the host was unreachable). */
export class HostError extends Error {
  constructor(
    readonly status: number,
    readonly code: string,
    message: string,
    /** Seconds, from `Retry-After` (rate-limited logins). */
    readonly retryAfter: number | null = null,
  ) {
    super(message);
    this.name = 'HostError';
  }
}

/** One server-sent event as it arrived on the wire. */
export interface SseMessage {
  id: string | null;
  event: string;
  data: string;
}

/** An open chat WebSocket, reduced to what the chat client needs. */
export interface ChatSocket {
  send(frame: ClientEvent): void;
  close(): void;
  onopen: (() => void) | null;
  onframe: ((frame: ServerEvent) => void) | null;
  /** Called once, whether the socket failed to open or closed later. */
  onclose: ((code: number) => void) | null;
}

export interface HostClient {
  /**
   * A REST call to an already encoded path. Resolves with the parsed JSON (undefined for 204);
   * rejects with HostError. `T` is unchecked here: call it through api/api.ts, which derives it.
   */
  request<T>(method: Method, path: string, init?: RequestInit): Promise<T>;
  /** Opens the chat WebSocket (`/api/chat/ws`). */
  openChat(): ChatSocket;
  /**
   * Opens `/api/events` after `lastEventId` and yields its events until the stream ends or
   * `signal` aborts; `onOpen` is called once the host has accepted the stream. Resuming and
   * backoff are the caller's (see events.ts).
   */
  openEvents(lastEventId: string | null, signal: AbortSignal, onOpen?: () => void): AsyncIterable<SseMessage>;
  /** Remember the CSRF token from setup or login (the browser also reads its cookie). */
  setCsrf(token: string | null): void;
}
