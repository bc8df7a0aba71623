// The Tauri shell's HostClient. The web view never talks to a host itself: every call goes to
// the shell's Rust commands, which use TLS pinned to the key learned at pairing. Chat reads come
// from the shell's offline cache when the host is out of reach, sends go through its outbox
// (delivered exactly once, in order, when the host is back), and live events arrive on one
// Tauri channel that the shell keeps fed.
import { Channel, addPluginListener, invoke } from '@tauri-apps/api/core';
import type { ClientEvent, HostEvent, Message, ServerEvent } from '../api/types';
import { buildUrl } from './browser';
import { HostError, type ChatSocket, type HostClient, type Method, type RequestInit, type SseMessage } from './HostClient';

/** Whether this page runs inside the taos app. */
export function isTauri(): boolean {
  return typeof window !== 'undefined' && '__TAURI_INTERNALS__' in window;
}

/** What the shell's commands reject with. */
interface CommandError {
  code: string;
  message: string;
  status: number;
}

export interface OutboxItem {
  client_id: string;
  channel_id: string;
  content: string;
  state: 'queued' | 'sent' | 'failed';
  last_error: string | null;
  message_id: string | null;
}

export interface NativeNotification {
  title: string;
  body: string;
  route: string;
}

/** The shell's events (taos-client's `AppEvent`). */
export type AppEvent =
  | { type: 'connection'; online: boolean; detail: string | null }
  | { type: 'revoked' }
  | { type: 'channels_changed' }
  | { type: 'message'; message: Message }
  | { type: 'delta'; channel_id: string; message_id: string; delta: string }
  | { type: 'outbox'; items: OutboxItem[] }
  | { type: 'host'; event: HostEvent }
  | { type: 'resync' }
  | { type: 'notify'; notification: NativeNotification }
  | { type: 'unread'; total: number };

export interface PairedHost {
  device_id: string;
  host_name: string;
  addresses: string[];
}

function toHostError(e: unknown): HostError {
  const err = e as Partial<CommandError>;
  if (err && typeof err === 'object' && typeof err.code === 'string') {
    const status = err.code === 'offline' ? 0 : err.code === 'revoked' ? 401 : (err.status ?? 0) || 400;
    return new HostError(status, err.code, err.message ?? err.code);
  }
  return new HostError(0, 'shell', String(e));
}

async function call<T>(command: string, args: Record<string, unknown> = {}): Promise<T> {
  try {
    return await invoke<T>(command, args);
  } catch (e) {
    throw toHostError(e);
  }
}

/** Pairs with the host that made `token`; it becomes the active host. */
export function pair(token: string, deviceName: string): Promise<PairedHost> {
  return call('pairing_pair', { token, device_name: deviceName });
}

/** Whether this device can scan the host's pairing QR code (phones; desktops paste it). */
export function canScanPairingCode(): Promise<boolean> {
  return call<boolean>('pairing_can_scan').catch(() => false);
}

/** The camera side of the barcode scanner plugin, as `scanPairingCode` needs it. */
export interface QrScanner {
  checkPermissions(): Promise<string>;
  requestPermissions(): Promise<string>;
  scanQr(): Promise<string>;
}

async function pluginScanner(): Promise<QrScanner> {
  const plugin = await import('@tauri-apps/plugin-barcode-scanner');
  return {
    checkPermissions: () => plugin.checkPermissions(),
    requestPermissions: () => plugin.requestPermissions(),
    scanQr: async () => (await plugin.scan({ formats: [plugin.Format.QRCode], windowed: false })).content,
  };
}

/**
 * Scans the host's pairing QR code with the camera and returns the code it holds. Asks for the
 * camera first when the user has not answered yet; a refusal says where to change it.
 */
export async function scanPairingCode(scanner?: QrScanner): Promise<string> {
  const camera = scanner ?? (await pluginScanner());
  let permission = await camera.checkPermissions();
  if (permission !== 'granted') permission = await camera.requestPermissions();
  if (permission !== 'granted') {
    throw new HostError(0, 'camera', 'taos may not use the camera: allow it in the system settings, or paste the code');
  }
  const content = (await camera.scanQr()).trim();
  if (!content) throw new HostError(0, 'camera', 'that QR code holds nothing; scan the one the host shows');
  return content;
}

/** What a tap on a phone's notification asks for: answer an approval, open a screen, or nothing. */
export type Tap = { kind: 'answer'; id: string; action: 'approve' | 'deny' } | { kind: 'open'; route: string } | null;

type Tapped = { actionId?: string; notification?: { extra?: { route?: unknown; approval_id?: unknown } } | null };

/** Reads the plugin's `actionPerformed` data (the shell's own extras, but checked anyway). */
export function tapOf(data: Tapped | null | undefined): Tap {
  const extra = data?.notification?.extra;
  const action = data?.actionId;
  if ((action === 'approve' || action === 'deny') && typeof extra?.approval_id === 'string' && extra.approval_id) {
    return { kind: 'answer', id: extra.approval_id, action };
  }
  if (action !== 'dismiss' && typeof extra?.route === 'string') return { kind: 'open', route: extra.route };
  return null;
}

/**
 * On phones a tap on a native notification reaches the UI as the notification plugin's
 * `actionPerformed` event, carrying the screen to open in `extra.route` (desktops get the
 * shell's `taos://open` event instead). An approval's Approve / Deny button is answered by the
 * shell (`approval_answer`, the same path as the desktop's buttons), which says how it came
 * out in a notification. Resolves once listening, or at once where the plugin has no such event.
 */
export async function onNotificationTap(open: (route: string) => void): Promise<void> {
  await addPluginListener<Tapped>('notification', 'actionPerformed', (data) => {
    const tap = tapOf(data);
    if (tap?.kind === 'open') open(tap.route);
    // A failure is also told by the shell's notification; the log is for whoever debugs it.
    if (tap?.kind === 'answer') call('approval_answer', { id: tap.id, action: tap.action }).catch((e) => console.warn('approval_answer', e));
  }).catch(() => undefined);
}

/** The desktop extras (`available` is false on phones). */
export interface DesktopSettings {
  available: boolean;
  tray: boolean;
  start_at_login: boolean;
}

export function desktopSettings(): Promise<DesktopSettings> {
  return call('desktop_settings');
}

export function setTray(on: boolean): Promise<DesktopSettings> {
  return call('desktop_set_tray', { on });
}

export function setStartAtLogin(on: boolean): Promise<DesktopSettings> {
  return call('desktop_set_start_at_login', { on });
}

export function hostStatus(): Promise<{ paired: boolean; host_name: string | null; device_id: string | null }> {
  return call('host_status');
}

export function forgetHost(deviceId: string): Promise<void> {
  return call('pairing_forget', { device_id: deviceId });
}

export interface PairedHostFull extends PairedHost {
  paired_at: string;
}

export function pairedHosts(): Promise<{ active: string | null; hosts: PairedHostFull[] }> {
  return call('pairing_hosts');
}

export function activateHost(deviceId: string): Promise<void> {
  return call('pairing_activate', { device_id: deviceId });
}

/** Whether the shell notifies for each cached channel (`muted` per channel id). */
export async function mutedChannels(): Promise<Record<string, boolean>> {
  const channels = await call<{ id: string; muted: boolean }[]>('chat_channels');
  return Object.fromEntries(channels.map((c) => [c.id, c.muted]));
}

export function muteChannel(channelId: string, muted: boolean): Promise<void> {
  return call('chat_mute', { channel_id: channelId, muted });
}

export function reconnect(): Promise<void> {
  return call('host_reconnect');
}

export function focusChannel(channelId: string | null): Promise<void> {
  return call('chat_focus', { channel_id: channelId }).catch(() => undefined) as Promise<void>;
}

const HISTORY = /^\/api\/chat\/channels\/([^/?]+)\/messages$/;

export class TauriHostClient implements HostClient {
  private readonly listeners = new Set<(event: AppEvent) => void>();
  private subscribed: Promise<void> | null = null;
  online = false;

  constructor(private readonly onRevoked?: () => void) {}

  /** Every shell event from now on; returns the unsubscribe function. */
  listen(fn: (event: AppEvent) => void): () => void {
    this.listeners.add(fn);
    void this.ensureSubscribed();
    return () => this.listeners.delete(fn);
  }

  private ensureSubscribed(): Promise<void> {
    if (!this.subscribed) {
      const channel = new Channel<AppEvent>();
      channel.onmessage = (event) => {
        if (event.type === 'connection') this.online = event.online;
        if (event.type === 'revoked') this.onRevoked?.();
        for (const fn of this.listeners) fn(event);
      };
      this.subscribed = call<void>('notify_subscribe', { on_event: channel });
    }
    return this.subscribed;
  }

  setCsrf(): void {
    // Device tokens, held by the shell: nothing for the page to keep.
  }

  async request<T>(method: Method, path: string, init: RequestInit = {}): Promise<T> {
    if (method === 'POST' && path === '/api/chat/messages') {
      return (await this.send(init.body as { channel_id: string; content: string; client_id?: string; thread_id?: string })) as T;
    }
    const url = buildUrl('', path, init.query);
    try {
      return await call<T>('host_request', { method, path: url, body: init.body ?? null });
    } catch (e) {
      const err = e as HostError;
      if (err.status === 401) this.onRevoked?.();
      if (err.code === 'offline' && method === 'GET') {
        const cached = await this.fromCache(path, init);
        if (cached !== undefined) return cached as T;
      }
      throw err;
    }
  }

  /** What the offline cache can answer for a GET, or undefined. */
  private async fromCache(path: string, init: RequestInit): Promise<unknown> {
    if (path === '/api/chat/channels') return call('chat_channels');
    if (path === '/api/agents') return call('cache_agents');
    const history = HISTORY.exec(path);
    if (history) {
      const limit = Number(init.query?.limit ?? 200);
      return call('chat_messages', { channel_id: decodeURIComponent(history[1]), limit });
    }
    return undefined;
  }

  /**
   * Sends through the shell's outbox and resolves with the stored message once the host has
   * it, however long that takes (the UI shows it as queued meanwhile). Rejects only if the
   * host refuses it for good.
   */
  private send(body: { channel_id: string; content: string; client_id?: string; thread_id?: string }): Promise<Message> {
    const clientId = body.client_id ?? crypto.randomUUID();
    return new Promise<Message>((resolve, reject) => {
      const stop = this.listen((event) => {
        if (event.type === 'message' && event.message.client_id === clientId) {
          stop();
          resolve(event.message);
        } else if (event.type === 'outbox') {
          const item = event.items.find((i) => i.client_id === clientId);
          if (item?.state === 'failed') {
            stop();
            reject(new HostError(400, 'refused', item.last_error ?? 'the host refused this message'));
          }
        }
      });
      call<OutboxItem>('chat_send', {
        channel_id: body.channel_id,
        content: body.content,
        thread_id: body.thread_id ?? null,
        client_id: clientId,
      }).catch((e) => {
        stop();
        reject(e);
      });
    });
  }

  /**
   * The chat "socket": open while the shell is connected to the host. Subscribing replays
   * what the cache has after `after_seq`; live frames are the shell's chat events.
   */
  openChat(): ChatSocket {
    let closed = false;
    const socket: ChatSocket = {
      onopen: null,
      onframe: null,
      onclose: null,
      send: (frame: ClientEvent) => {
        if (frame.type === 'subscribe') void this.replay(socket, frame.channel_id, frame.after_seq ?? null);
      },
      close: () => finish(1000),
    };
    const finish = (code: number) => {
      if (closed) return;
      closed = true;
      stop();
      socket.onclose?.(code);
    };
    const frame = (f: ServerEvent) => {
      if (!closed) socket.onframe?.(f);
    };
    const stop = this.listen((event) => {
      if (event.type === 'connection' && !event.online) finish(1006);
      else if (event.type === 'message') frame({ type: 'message', channel_id: event.message.channel_id, seq: event.message.seq, message: event.message } as ServerEvent);
      else if (event.type === 'delta') frame({ type: 'message_delta', channel_id: event.channel_id, message_id: event.message_id, delta: event.delta } as ServerEvent);
    });
    // Open once the shell says the host is there (at once if it already is).
    const opened = this.listen((event) => {
      if (event.type === 'connection' && event.online && !closed) {
        opened();
        socket.onopen?.();
      }
    });
    void this.ensureSubscribed().then(() => {
      if (this.online && !closed) {
        opened();
        socket.onopen?.();
      } else if (!closed) {
        // Offline: report the socket closed so the UI shows it, and retries later.
        setTimeout(() => {
          if (!this.online) {
            opened();
            finish(1006);
          }
        }, 1500);
      }
    });
    return socket;
  }

  private async replay(socket: ChatSocket, channelId: string, afterSeq: number | null) {
    let lastSeq = afterSeq ?? 0;
    if (afterSeq !== null) {
      const cached = await call<Message[]>('chat_messages', { channel_id: channelId, limit: 1000 }).catch(() => []);
      for (const m of cached) {
        if (m.seq > afterSeq) socket.onframe?.({ type: 'message', channel_id: channelId, seq: m.seq, message: m } as ServerEvent);
        lastSeq = Math.max(lastSeq, m.seq);
      }
    }
    socket.onframe?.({ type: 'subscribed', channel_id: channelId, last_seq: lastSeq } as ServerEvent);
  }

  /**
   * The shell's host events as the stream the UI's event feed reads. It opens once the shell
   * reaches the host and ends when the host is lost, so the feed shows the connection as it is;
   * the shell itself resumes after the last event, so nothing is missed in between.
   */
  async *openEvents(_lastEventId: string | null, signal: AbortSignal, onOpen?: () => void): AsyncIterable<SseMessage> {
    const queue: SseMessage[] = [];
    let lost = false;
    let wake: (() => void) | null = null;
    const stop = this.listen((event) => {
      if (event.type === 'host') {
        queue.push({ id: String(event.event.id), event: event.event.kind, data: JSON.stringify(event.event) });
      } else if (event.type === 'resync') {
        queue.push({ id: null, event: 'resync', data: '{}' });
      } else if (event.type === 'connection') {
        lost = !event.online;
      } else {
        return;
      }
      wake?.();
    });
    const next = () => new Promise<void>((resolve) => (wake = resolve)).then(() => void (wake = null));
    signal.addEventListener('abort', () => wake?.());
    try {
      await this.ensureSubscribed();
      while (!this.online && !signal.aborted) await next();
      if (signal.aborted) return;
      lost = false;
      onOpen?.();
      while (!signal.aborted && !lost) {
        const item = queue.shift();
        if (item) {
          yield item;
          continue;
        }
        await next();
      }
    } finally {
      stop();
    }
  }
}
