// App-wide state: the host client, who is signed in, chat, the live event feed and the
// notifications it keeps current.
import type { AuthStatus, HostEvent, Notification, User } from './api/types';
import { ChatClient } from './chat/connection';
import { BrowserHostClient } from './host/browser';
import { EventFeed } from './host/events';
import { HostError, type HostClient } from './host/HostClient';
import { navigate, router } from './router.svelte';

// Any 401 (the session ended or was revoked) sends the user to sign in again.
export const host: HostClient = new BrowserHostClient('', () => signedOut());

export const session = $state<{ checked: boolean; configured: boolean; user: User | null }>({
  checked: false,
  configured: true,
  user: null,
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

export const toasts = $state<{ id: number; text: string; level: string }[]>([]);
let toastId = 0;
export function toast(text: string, level = 'info') {
  const id = ++toastId;
  toasts.push({ id, text, level });
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
  if (!chat) chat = new ChatClient(host, `user:${session.user?.username ?? ''}`);
  return chat;
}

export const unreadCount = () => live.notifications.filter((n) => !n.read).length;

async function loadNotifications() {
  try {
    live.notifications = await host.request<Notification[]>('GET', '/api/notifications', {
      query: { limit: 100 },
    });
  } catch (e) {
    if (e instanceof HostError && e.status === 401) signedOut();
  }
}

function onEvent(event: HostEvent) {
  for (const fn of eventListeners) fn(event);
  if (event.kind === 'notification.created') {
    const n = event.data as unknown as Notification;
    if (!live.notifications.some((x) => x.id === n.id)) live.notifications.unshift(n);
  } else if (event.kind === 'notification.read') {
    const ids = new Set(((event.data as { ids?: number[] }).ids ?? []).map(Number));
    for (const n of live.notifications) if (ids.has(n.id)) n.read = true;
  }
}

function startLive() {
  if (feed) return;
  feed = new EventFeed(host, {
    onEvent,
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
  stopLive();
  session.user = null;
  if (router.path !== '/login') {
    const back = router.path + router.search;
    navigate(`/login${back !== '/' ? `?next=${encodeURIComponent(back)}` : ''}`, true);
  }
}

export async function checkSession() {
  try {
    const status = await host.request<AuthStatus>('GET', '/api/auth/status');
    session.configured = status.configured;
    session.user = status.authenticated ? (status.user ?? null) : null;
  } catch {
    session.user = null;
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
    await host.request('POST', '/api/auth/logout');
  } catch {
    // signed out either way
  }
  host.setCsrf(null);
  signedOut();
}
