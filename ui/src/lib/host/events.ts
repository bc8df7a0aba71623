import type { HostEvent } from '../api/types';
import { HostError, type HostClient } from './HostClient';

export interface FeedHandlers {
  /** A host event, in id order, each exactly once per feed. */
  onEvent(event: HostEvent): void;
  /**
   * A transient figure (`host.overview`): sent live only, never stored, so it has no id and does
   * not move the resume cursor; `data` is the figure itself, not a `HostEvent`.
   */
  onTransient?(kind: string, data: unknown): void;
  /** The host no longer has the events we missed: reload state. */
  onResync(): void;
  /** Connected (true) or waiting to reconnect (false). */
  onStatus?(connected: boolean): void;
  /** The session is gone (401, or an `unauthorized` event ending the stream): stop and sign in again. */
  onUnauthorized?(): void;
}

export interface FeedOptions {
  /** First reconnect delay; doubles to `maxDelayMs`. */
  minDelayMs?: number;
  maxDelayMs?: number;
  sleep?: (ms: number, signal: AbortSignal) => Promise<void>;
}

function defaultSleep(ms: number, signal: AbortSignal): Promise<void> {
  return new Promise((resolve) => {
    const t = setTimeout(resolve, ms);
    signal.addEventListener('abort', () => {
      clearTimeout(t);
      resolve();
    });
  });
}

/**
 * `/api/events`, kept open: reconnects with backoff and resumes after the last id it saw, so
 * no event is lost or repeated across drops. Call `stop()` to end it.
 */
export class EventFeed {
  lastEventId: string | null;
  private readonly abort = new AbortController();
  private readonly done: Promise<void>;

  constructor(
    private readonly client: HostClient,
    private readonly handlers: FeedHandlers,
    startAfter: string | null = null,
    private readonly options: FeedOptions = {},
  ) {
    this.lastEventId = startAfter;
    this.done = this.run();
  }

  stop(): Promise<void> {
    this.abort.abort();
    return this.done;
  }

  private async run(): Promise<void> {
    const min = this.options.minDelayMs ?? 500;
    const max = this.options.maxDelayMs ?? 15_000;
    const sleep = this.options.sleep ?? defaultSleep;
    let delay = min;
    const signal = this.abort.signal;
    while (!signal.aborted) {
      try {
        const opened = () => {
          delay = min;
          this.handlers.onStatus?.(true);
        };
        for await (const message of this.client.openEvents(this.lastEventId, signal, opened)) {
          if (message.event === 'unauthorized') {
            // The host ended the session the stream was opened with (revoked or expired).
            this.handlers.onUnauthorized?.();
            return;
          }
          if (message.event === 'resync') {
            // What we missed is gone: start over from what the host sends next.
            this.lastEventId = message.id;
            this.handlers.onResync();
            continue;
          }
          if (message.id === null) {
            try {
              this.handlers.onTransient?.(message.event, JSON.parse(message.data));
            } catch {
              // Not JSON: nothing to show.
            }
            continue;
          }
          let event: HostEvent;
          try {
            event = JSON.parse(message.data) as HostEvent;
          } catch {
            continue;
          }
          // Never deliver an event twice, even if a server replays across a reconnect.
          if (this.lastEventId !== null && Number(event.id) <= Number(this.lastEventId)) continue;
          this.lastEventId = String(event.id);
          this.handlers.onEvent(event);
        }
      } catch (e) {
        if (signal.aborted) break;
        if (e instanceof HostError && e.status === 401) {
          this.handlers.onUnauthorized?.();
          break;
        }
      }
      if (signal.aborted) break;
      this.handlers.onStatus?.(false);
      await sleep(delay, signal);
      delay = Math.min(delay * 2, max);
    }
  }
}
