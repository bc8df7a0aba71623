// App-wide state: the host client, who is signed in, chat, the live event feed and the
// notifications it keeps current.
import { createApi } from './api/api';
import type { HostEvent, Notification, User } from './api/types';
import { ChatClient } from './chat/connection';
import { browserOutbox } from './chat/outbox';
import { BrowserHostClient } from './host/browser';
import { TauriHostClient, canScanPairingCode, forgetHost, hostStatus, isTauri, onNotificationTap } from './host/tauri';
import { EventFeed } from './host/events';
import { HostError, type HostClient } from './host/HostClient';
import { navigate, router } from './router.svelte';
import { forgetOfflineCopies } from './pwa.svelte';

/**
 * In the taos app (Tauri) the host is the paired one, reached through the shell; there is no
 * sign-in, only pairing, and the shell keeps chats readable and sends queued while offline.
 */
export const shell = $state({
  tauri: isTauri(),
  paired: true,
  online: true,
  hostName: '' as string,
  deviceId: null as string | null,
  /** Why the app is back on the pairing screen, if it was sent there. */
  message: '' as string,
});

const tauriHost = shell.tauri ? new TauriHostClient(() => unpaired('This device was signed out by the host. Pair it again.')) : null;

// Any 401 (the session ended or was revoked) sends the user to sign in (or pair) again.
export const host: HostClient = tauriHost ?? new BrowserHostClient('', () => signedOut());

/** The typed calls over `host` (api/api.ts): what the screens use for REST. */
export const api = createApi(host);

if (tauriHost) {
  tauriHost.listen((event) => {
    if (event.type === 'connection') shell.online = event.online;
    // Alerts get their toast from the event feed (below), like in the browser; replies here.
    if (event.type === 'notify' && event.notification.route.startsWith('/chat/')) toast(event.notification.title, 'warning');
  });
  // A click on a native notification: the shell raised the window; open its screen.
  const openRoute = (route: string) => {
    if (route.startsWith('/') && !route.startsWith('//')) navigate(route);
  };
  void import('@tauri-apps/api/event').then(({ listen }) =>
    listen<string>('taos://open', (event) => openRoute(event.payload)),
  );
  // On phones the tap arrives from the notification plugin instead.
  void canScanPairingCode().then((mobile) => (mobile ? onNotificationTap(openRoute) : undefined));
}

/** The app lost (or never had) its pairing: show the pairing screen. */
export function unpaired(message = '') {
  stopLive();
  session.user = null;
  shell.paired = false;
  shell.message = message;
}

/** Called by the pairing screen once the shell has paired. */
export async function paired() {
  shell.paired = true;
  shell.message = '';
  await checkSession();
}

/** Unpairs this app from its host (the app's "sign out"). */
export async function unpair() {
  if (shell.deviceId) await forgetHost(shell.deviceId).catch(() => undefined);
  unpaired();
}

export const session = $state<{ checked: boolean; configured: boolean; user: User | null; fingerprint: string }>({
  checked: false,
  configured: true,
  user: null,
  /** The host's key pin, shown on the sign-in page to compare with `taos-host fingerprint`. */
  fingerprint: '',
});

export const live = $state({
  connected: false,
  notifications: [] as Notification[],
});

const eventListeners = new Set<(event: HostEvent) => void>();

/** Every host event from now on, each once, in order; returns the unsubscribe function. */
export function onHostEvent(fn: (event: HostEvent) => void): () => void {
  eventListeners.add(fn);
  return () => eventListeners.delete(fn);
}

const transientListeners = new Set<(kind: string, data: unknown) => void>();

/** Live figures the host sends without storing them (`host.overview`); returns the unsubscribe function. */
export function onHostFigure(fn: (kind: string, data: unknown) => void): () => void {
  transientListeners.add(fn);
  return () => transientListeners.delete(fn);
}

export const toasts = $state<{ id: number; text: string; level: string; href?: string }[]>([]);
let toastId = 0;
/** Shows `text` for a few seconds; `href` makes it a link (to the screen it is about). */
export function toast(text: string, level = 'info', href?: string) {
  const id = ++toastId;
  toasts.push({ id, text, level, href });
  setTimeout(() => {
    const i = toasts.findIndex((t) => t.id === id);
    if (i >= 0) toasts.splice(i, 1);
  }, 6000);
}

/** A readable line for a failed call. */
export function problem(e: unknown): string {
  if (e instanceof HostError) {
    if (e.status === 429) return `Too many attempts. Try again in ${e.retryAfter ?? 60} s.`;
    return e.message;
  }
  return e instanceof Error ? e.message : String(e);
}

let chat: ChatClient | null = null;
let feed: EventFeed | null = null;

export function chatClient(): ChatClient {
  // The app's shell has its own outbox; a browser keeps unsent messages in IndexedDB.
  if (!chat) {
    chat = new ChatClient(host, `user:${session.user?.username ?? ''}`, {
      onUnauthorized: signedOut,
      outbox: tauriHost ? undefined : browserOutbox(),
    });
  }
  return chat;
}

export const unreadCount = () => live.notifications.filter((n) => !n.read).length;

async function loadNotifications() {
  try {
    live.notifications = await api.get('/api/notifications', { query: { limit: 100 } });
  } catch (e) {
    if (e instanceof HostError && e.status === 401) signedOut();
  }
}

function onEvent(event: HostEvent) {
  for (const fn of eventListeners) fn(event);
  if (event.kind === 'notification.created') {
    const n = event.data as unknown as Notification;
    if (!live.notifications.some((x) => x.id === n.id)) {
      live.notifications.unshift(n);
      // A new alert pops up wherever you are, not only as a number on the badge.
      toast(n.message ? `${n.title}: ${n.message}` : n.title, n.level, '/notifications');
    }
  } else if (event.kind === 'notification.read') {
    const ids = new Set(((event.data as { ids?: number[] }).ids ?? []).map(Number));
    for (const n of live.notifications) if (ids.has(n.id)) n.read = true;
  }
}

function startLive() {
  if (feed) return;
  feed = new EventFeed(host, {
    onEvent,
    onTransient: (kind, data) => {
      for (const fn of transientListeners) fn(kind, data);
    },
    onResync: () => void loadNotifications(),
    onStatus: (c) => (live.connected = c),
    onUnauthorized: signedOut,
  });
  void loadNotifications();
}

function stopLive() {
  void feed?.stop();
  feed = null;
  chat?.close();
  chat = null;
  live.notifications = [];
  live.connected = false;
}

/** Called when the host says the session is gone. */
export function signedOut() {
  if (shell.tauri) {
    // Offline, a paired app stays on its cached screens; only a revoked device re-pairs.
    if (!shell.online && shell.paired) return;
    unpaired('This device was signed out by the host. Pair it again.');
    return;
  }
  stopLive();
  session.user = null;
  if (router.path !== '/login') {
    const back = router.path + router.search;
    navigate(`/login${back !== '/' ? `?next=${encodeURIComponent(back)}` : ''}`, true);
  }
}

const KNOWN_USER = 'taos.app.user';

export async function checkSession() {
  if (shell.tauri) {
    try {
      const status = await hostStatus();
      shell.hostName = status.host_name ?? '';
      shell.deviceId = status.device_id;
      if (!status.paired) {
        session.checked = true;
        unpaired(shell.message);
        return;
      }
      shell.paired = true;
    } catch {
      session.checked = true;
      unpaired();
      return;
    }
  }
  try {
    const status = await api.get('/api/auth/status');
    session.configured = status.configured;
    session.fingerprint = status.fingerprint;
    session.user = status.authenticated ? (status.user ?? null) : null;
    if (shell.tauri && session.user) localStorage.setItem(KNOWN_USER, JSON.stringify(session.user));
  } catch (e) {
    session.user = null;
    // The app starts on its cache when the host is away: as the owner it last saw.
    if (shell.tauri && e instanceof HostError && e.status === 0) {
      shell.online = false;
      const known = localStorage.getItem(KNOWN_USER);
      session.user = known ? (JSON.parse(known) as User) : null;
    }
  }
  session.checked = true;
  if (session.user) startLive();
  else signedOut();
}

export function signedIn(user: User, csrf: string) {
  host.setCsrf(csrf);
  session.user = user;
  session.configured = true;
  startLive();
}

export async function logout() {
  try {
    await api.post('/api/auth/logout');
  } catch {
    // signed out either way
  }
  host.setCsrf(null);
  // Chats kept for offline reading go with the session.
  await forgetOfflineCopies();
  signedOut();
}
