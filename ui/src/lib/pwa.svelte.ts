// Offline reading in a browser (issue 19): public/sw.js keeps the app and the last channels.
// A service worker runs only in a secure context whose certificate the browser trusts; the
// host's own certificate is self-signed, so a browser that was only clicked past the warning
// refuses it. This says which case we are in, in words, so the UI can tell people why offline
// reading is off and how to turn it on (install the host's certificate: docs/install.md).
// The taos app (Tauri) keeps its own offline copy and needs none of this.

export type OfflineStatus = 'checking' | 'ready' | 'unavailable' | 'app';

export const offline = $state({
  status: 'checking' as OfflineStatus,
  /** Why offline reading is unavailable, in words. */
  reason: '',
  /** Whether the host's certificate is the problem (then installing it is the fix). */
  certificate: false,
  /** The page is showing answers kept from before: the host did not answer. */
  reading: false,
  /** When the oldest answer shown offline was fetched (ISO time), if known. */
  cachedAt: null as string | null,
});

const API_CACHE = 'taos-api-v1';

/** Why a browser refused the worker, for a person. Pure, for tests. */
export function explain(error: unknown, secure: boolean): { reason: string; certificate: boolean } {
  const text = error instanceof Error ? `${error.name}: ${error.message}` : String(error);
  if (!secure) {
    return { reason: 'This page is not a secure context, so the browser keeps nothing for offline reading.', certificate: true };
  }
  if (/SSL|certificate|SecurityError/i.test(text)) {
    return {
      reason: "This browser does not trust the host's certificate (it was only accepted for this visit), so it keeps nothing for offline reading.",
      certificate: true,
    };
  }
  return { reason: `The browser refused offline reading: ${text}`, certificate: false };
}

/** Registers the worker where the browser allows it; else says why not. Never throws. */
export async function startOfflineReading(inApp: boolean): Promise<void> {
  if (inApp) {
    offline.status = 'app';
    return;
  }
  if (!('serviceWorker' in navigator)) {
    Object.assign(offline, { status: 'unavailable', ...explain('no service workers', window.isSecureContext) });
    if (window.isSecureContext) offline.reason = 'This browser has no service workers, so it keeps nothing for offline reading.';
    return;
  }
  navigator.serviceWorker.addEventListener('message', (e: MessageEvent) => {
    const data = e.data as { type?: string; cachedAt?: string | null } | null;
    if (data?.type === 'offline') {
      offline.reading = true;
      if (data.cachedAt && (!offline.cachedAt || data.cachedAt < offline.cachedAt)) offline.cachedAt = data.cachedAt;
    } else if (data?.type === 'online') {
      offline.reading = false;
      offline.cachedAt = null;
    }
  });
  navigator.serviceWorker.startMessages();
  try {
    await navigator.serviceWorker.register('/sw.js', { scope: '/' });
    await navigator.serviceWorker.ready;
    offline.status = 'ready';
    offline.reason = '';
    offline.certificate = false;
  } catch (e) {
    Object.assign(offline, { status: 'unavailable', ...explain(e, window.isSecureContext) });
  }
}

/** Deletes the kept API answers: signing out leaves nothing of the session readable here. */
export async function forgetOfflineCopies(): Promise<void> {
  offline.reading = false;
  offline.cachedAt = null;
  if (typeof caches === 'undefined') return;
  await caches.delete(API_CACHE).catch(() => false);
}
