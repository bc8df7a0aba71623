import { createApi, type Api } from '../api/api';
import type { ServerEvent } from '../api/types';
import { HostError, type ChatSocket, type HostClient } from '../host/HostClient';
import { ChannelLog } from './log';
import type { Outbox } from './outbox';

/** The host closed the socket because its credential was revoked or expired. */
export const CLOSE_UNAUTHORIZED = 4001;

export interface ChatOptions {
  /**
   * Called once when the host closes the socket with 4001: the session was revoked or expired.
   * The client stops instead of reconnecting (that would only be refused); sign in again.
   */
  onUnauthorized?: () => void;
  minDelayMs?: number;
  maxDelayMs?: number;
  /** Retries of a send that got no answer at all (network), before showing an error. */
  sendRetries?: number;
  setTimer?: (fn: () => void, ms: number) => unknown;
  newClientId?: () => string;
  /**
   * Where sends wait until the host has stored them, across reloads (the browser's IndexedDB).
   * What it holds is sent again when the client starts and whenever the socket reconnects.
   */
  outbox?: Outbox;
}

type Listener = (channelId: string, event: ServerEvent | null) => void;

/**
 * The chat side of a host: one WebSocket for every channel the UI follows, resubscribed with
 * `after_seq` after any drop so nothing is missed; history over REST; sends over REST with a
 * `client_id`, shown at once and retried with the same id (the host stores it once).
 */
export class ChatClient {
  readonly logs = new Map<string, ChannelLog>();
  connected = false;
  private socket: ChatSocket | null = null;
  private following = new Set<string>();
  private loaded = new Set<string>();
  private complete = new Set<string>();
  private paging = new Set<string>();
  private listeners = new Set<Listener>();
  private delay: number;
  private stopped = false;
  private readonly opts: Required<Omit<ChatOptions, 'onUnauthorized' | 'outbox'>>;
  private readonly outbox?: Outbox;
  /** Client ids being posted now: a resend never doubles one in flight. */
  private inFlight = new Set<string>();
  private readonly onUnauthorized?: () => void;
  private readonly api: Api;

  constructor(
    private readonly host: HostClient,
    private readonly me: string,
    options: ChatOptions = {},
  ) {
    this.api = createApi(host);
    this.onUnauthorized = options.onUnauthorized;
    this.outbox = options.outbox;
    this.opts = {
      minDelayMs: options.minDelayMs ?? 500,
      maxDelayMs: options.maxDelayMs ?? 15_000,
      sendRetries: options.sendRetries ?? 5,
      setTimer: options.setTimer ?? ((fn, ms) => setTimeout(fn, ms)),
      newClientId: options.newClientId ?? (() => crypto.randomUUID()),
    };
    this.delay = this.opts.minDelayMs;
    this.open();
    void this.resendOutbox();
  }

  /**
   * Shows and posts again what the outbox holds that is not being posted now: at start (a
   * reload) and after every reconnect. The host stores a client id once, so a message that
   * did arrive before the page went away is not doubled.
   */
  private async resendOutbox(): Promise<void> {
    if (!this.outbox) return;
    let entries;
    try {
      entries = await this.outbox.pending(this.me);
    } catch {
      return;
    }
    for (const e of entries) {
      if (this.inFlight.has(e.clientId)) continue;
      this.log(e.channelId).addLocal(e.clientId, e.content, this.me, new Date(e.createdAt), e.threadId);
      this.emit(e.channelId, null);
      void this.post(e.channelId, e.content, e.clientId, 0, e.threadId);
    }
  }

  /** Called after every change to a channel (event null: history, a send, connection state). */
  listen(fn: Listener): () => void {
    this.listeners.add(fn);
    return () => this.listeners.delete(fn);
  }

  private emit(channelId: string, event: ServerEvent | null) {
    for (const fn of this.listeners) fn(channelId, event);
  }

  log(channelId: string): ChannelLog {
    let log = this.logs.get(channelId);
    if (!log) {
      log = new ChannelLog(channelId);
      this.logs.set(channelId, log);
    }
    return log;
  }

  close(): void {
    this.stopped = true;
    this.socket?.close();
  }

  private open() {
    if (this.stopped) return;
    const socket = this.host.openChat();
    this.socket = socket;
    socket.onopen = () => {
      this.connected = true;
      this.delay = this.opts.minDelayMs;
      for (const id of this.following) this.subscribe(id);
      this.emit('', null);
      void this.resendOutbox();
    };
    socket.onframe = (frame) => this.onFrame(frame);
    socket.onclose = (code) => {
      if (this.socket !== socket) return;
      this.socket = null;
      this.connected = false;
      this.emit('', null);
      if (this.stopped) return;
      if (code === CLOSE_UNAUTHORIZED) {
        this.stopped = true;
        this.onUnauthorized?.();
        return;
      }
      const wait = this.delay;
      this.delay = Math.min(this.delay * 2, this.opts.maxDelayMs);
      this.opts.setTimer(() => this.open(), wait);
    };
  }

  private subscribe(channelId: string) {
    const log = this.log(channelId);
    // Channels with history resume after the last change we saw; others start live.
    const after = this.loaded.has(channelId) ? log.lastSeq : undefined;
    this.socket?.send({ type: 'subscribe', channel_id: channelId, after_seq: after ?? null });
  }

  private onFrame(frame: ServerEvent) {
    if (!('channel_id' in frame)) return;
    const log = this.logs.get(frame.channel_id);
    if (!log) return;
    log.apply(frame);
    this.emit(frame.channel_id, frame);
  }

  /** Follow a channel's live events (for unread counts) without loading its history. */
  follow(channelId: string): void {
    if (this.following.has(channelId)) return;
    this.following.add(channelId);
    this.log(channelId);
    if (this.connected) this.subscribe(channelId);
  }

  /** Loads a channel's recent history once, then follows it. */
  async open_channel(channelId: string, limit = 500): Promise<ChannelLog> {
    const log = this.log(channelId);
    if (!this.loaded.has(channelId)) {
      const history = await this.api.get('/api/chat/channels/{id}/messages', {
        path: { id: channelId },
        query: { limit },
      });
      for (const m of history) log.upsert(m);
      this.loaded.add(channelId);
      if (history.length < limit) this.complete.add(channelId);
      // Resubscribe so the replay covers everything after this history.
      if (this.following.has(channelId) && this.connected) this.subscribe(channelId);
    }
    this.follow(channelId);
    this.emit(channelId, null);
    return log;
  }

  /** Whether the channel's whole history is loaded. */
  hasAll(channelId: string): boolean {
    return this.complete.has(channelId);
  }

  /** Loads the page of history before what is loaded; false when there is no more. */
  async loadOlder(channelId: string, limit = 200): Promise<boolean> {
    if (this.complete.has(channelId) || this.paging.has(channelId)) return false;
    const log = this.log(channelId);
    const oldest = log.oldestSeq();
    if (oldest === null || oldest <= 1) {
      this.complete.add(channelId);
      return false;
    }
    this.paging.add(channelId);
    try {
      const page = await this.api.get('/api/chat/channels/{id}/messages', {
        path: { id: channelId },
        query: { before_seq: oldest, limit },
      });
      for (const m of page) log.upsert(m);
      if (page.length < limit) this.complete.add(channelId);
      this.emit(channelId, null);
      return page.length > 0;
    } finally {
      this.paging.delete(channelId);
    }
  }

  /**
   * Sends a message (into the thread whose root is `threadId`, if given): shown at once, stored
   * once however many times it is retried.
   */
  send(channelId: string, content: string, clientId = this.opts.newClientId(), threadId?: string): string {
    const log = this.log(channelId);
    const shown = log.addLocal(clientId, content, this.me, new Date(), threadId);
    this.emit(channelId, null);
    this.inFlight.add(clientId);
    if (!this.outbox) {
      void this.post(channelId, content, clientId, 0, threadId);
      return clientId;
    }
    // Kept before it is posted, so a reload at any moment still has it.
    void this.outbox
      .put({ clientId, channelId, author: this.me, content, createdAt: shown.created_at, threadId })
      .catch(() => {})
      .then(() => this.post(channelId, content, clientId, 0, threadId));
    return clientId;
  }

  /** Sends a failed message again, with its original client_id. */
  retry(channelId: string, clientId: string): void {
    const m = this.log(channelId).get(`local:${clientId}`);
    if (!m) return;
    this.send(channelId, m.content, clientId, m.thread_id ?? undefined);
  }

  private async post(channelId: string, content: string, clientId: string, attempt: number, threadId?: string) {
    const log = this.log(channelId);
    this.inFlight.add(clientId);
    try {
      const stored = await this.api.post('/api/chat/messages', {
        body: { channel_id: channelId, content, client_id: clientId, ...(threadId ? { thread_id: threadId } : {}) },
      });
      this.inFlight.delete(clientId);
      await this.outbox?.remove(clientId).catch(() => {});
      log.upsert(stored);
      this.emit(channelId, null);
    } catch (e) {
      const unreachable = e instanceof HostError && e.status === 0;
      if (unreachable && attempt < this.opts.sendRetries) {
        const wait = Math.min(this.opts.minDelayMs * 2 ** attempt, this.opts.maxDelayMs);
        this.opts.setTimer(() => void this.post(channelId, content, clientId, attempt + 1, threadId), wait);
        return;
      }
      this.inFlight.delete(clientId);
      // A 4xx is the host refusing this message (too long, archived channel, not a member):
      // the same message would be refused again. Timeouts and rate limits pass with time.
      const refused = e instanceof HostError && e.status >= 400 && e.status < 500 && e.status !== 408 && e.status !== 429;
      // A refused message leaves the outbox (it stays on screen, failed, with the reason); one
      // that found no host stays, and goes when the connection is back or the page reloads.
      if (refused) await this.outbox?.remove(clientId).catch(() => {});
      log.failLocal(clientId, e instanceof Error ? e.message : String(e), !refused);
      this.emit(channelId, null);
    }
  }

  async edit(messageId: string, content: string): Promise<void> {
    const m = await this.api.patch('/api/chat/messages/{id}', { path: { id: messageId }, body: { content } });
    this.log(m.channel_id).upsert(m);
    this.emit(m.channel_id, null);
  }

  async remove(messageId: string): Promise<void> {
    await this.api.delete('/api/chat/messages/{id}', { path: { id: messageId } });
  }

  private lastTyping = new Map<string, number>();

  /** Tells the channel we are typing, at most every 3 s. */
  typing(channelId: string, now = Date.now()): void {
    if ((this.lastTyping.get(channelId) ?? 0) > now - 3000) return;
    this.lastTyping.set(channelId, now);
    if (this.connected) this.socket?.send({ type: 'typing', channel_id: channelId });
  }
}
