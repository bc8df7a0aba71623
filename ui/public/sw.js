// taos offline reading (issue 19): the app shell and the last channels' API answers, so a
// browser keeps showing them when the host is away. Registered by src/lib/pwa.ts only where the
// browser allows a service worker (a secure context whose certificate it trusts).
//
// - Pages (navigations): network first; offline, the cached app (it routes by itself).
// - /assets/*: hashed names, never change: cache first, kept when fetched.
// - A few GET API answers the chat screen needs (KEEP): network first, the fresh answer kept;
//   offline, the kept one, and the page is told it is reading offline. Message lists are kept
//   for the MAX_CHANNELS channels read last, no more.
// - Nothing else (writes, other API answers, the event and chat streams) is touched.
// Signing out (or the host saying the session is gone) deletes the API cache (pwa.ts).

const SHELL = 'taos-shell-v1';
const API = 'taos-api-v1';
const MAX_CHANNELS = 10;
const KEEP = [
  /^\/api\/auth\/status$/,
  /^\/api\/agents$/,
  /^\/api\/chat\/channels$/,
  /^\/api\/chat\/channels\/[^/]+$/,
  /^\/api\/chat\/channels\/[^/]+\/messages$/,
];
const CHANNEL = /^\/api\/chat\/channels\/([^/]+)(\/messages)?$/;

self.addEventListener('install', (event) => {
  event.waitUntil(cacheShell().then(() => self.skipWaiting()));
});

self.addEventListener('activate', (event) => {
  event.waitUntil(
    caches
      .keys()
      .then((names) => Promise.all(names.filter((n) => n.startsWith('taos-') && n !== SHELL && n !== API).map((n) => caches.delete(n))))
      .then(() => self.clients.claim()),
  );
});

self.addEventListener('message', (event) => {
  if (event.data?.type === 'forget') event.waitUntil(caches.delete(API));
});

self.addEventListener('fetch', (event) => {
  const req = event.request;
  if (req.method !== 'GET') return;
  const url = new URL(req.url);
  if (url.origin !== self.location.origin) return;
  if (req.mode === 'navigate') return event.respondWith(page(req));
  if (url.pathname.startsWith('/assets/')) return event.respondWith(asset(req));
  // Catch-up and older pages (after_seq, before_seq) pass by: only a channel's opening page is
  // kept, so each channel holds one answer.
  if (url.searchParams.has('after_seq') || url.searchParams.has('before_seq')) return;
  if (KEEP.some((re) => re.test(url.pathname))) return event.respondWith(api(req, url, event.clientId));
});

/** The app: index.html and what it loads. A new build (another main script) replaces the old. */
async function cacheShell(html) {
  const cache = await caches.open(SHELL);
  if (!html) {
    const res = await fetch('/index.html', { cache: 'no-cache' });
    if (!res.ok) throw new Error(`index.html: ${res.status}`);
    html = await res.text();
  }
  const assets = [...new Set(html.match(/\/assets\/[^"'\s>]+/g) ?? [])];
  const before = await cache.match('/index.html');
  const changed = !before || (await before.text()) !== html;
  if (changed) {
    // Old builds' assets go: only this build's, and the chunks it loads later, stay.
    for (const key of await cache.keys()) {
      if (new URL(key.url).pathname.startsWith('/assets/') && !assets.includes(new URL(key.url).pathname)) await cache.delete(key);
    }
  }
  await cache.put('/index.html', new Response(html, { headers: { 'content-type': 'text/html; charset=utf-8' } }));
  await Promise.all(
    [...assets, '/favicon.svg', '/manifest.webmanifest', '/icon-192.png', '/icon-512.png'].map(async (path) => {
      if (await cache.match(path)) return;
      const res = await fetch(path);
      if (res.ok) await cache.put(path, res);
    }),
  );
}

async function page(req) {
  try {
    const res = await fetch(req);
    if (res.ok && (res.headers.get('content-type') ?? '').startsWith('text/html')) {
      const html = await res.clone().text();
      // Kept for the next offline start; a failure here must not fail the page.
      cacheShell(html).catch(() => {});
    }
    return res;
  } catch (e) {
    const cached = await caches.match('/index.html', { cacheName: SHELL });
    if (cached) return cached;
    throw e;
  }
}

async function asset(req) {
  const cache = await caches.open(SHELL);
  const hit = await cache.match(req, { ignoreSearch: true });
  if (hit) return hit;
  const res = await fetch(req);
  if (res.ok) await cache.put(req, res.clone());
  return res;
}

async function api(req, url, clientId) {
  const cache = await caches.open(API);
  try {
    const res = await fetch(req);
    if (res.ok) {
      await cache.put(req, stamped(res.clone(), await res.clone().blob()));
      const m = CHANNEL.exec(url.pathname);
      if (m && m[2]) await prune(cache, m[1]);
    } else if (res.status === 401) {
      // Signed out on the host: nothing of this session stays readable here.
      await caches.delete(API);
    }
    tell(clientId, { type: 'online' });
    return res;
  } catch (e) {
    const hit = await cache.match(req);
    if (!hit) throw e;
    tell(clientId, { type: 'offline', cachedAt: hit.headers.get('x-taos-cached-at') });
    return hit;
  }
}

/** The answer as kept: when it was fetched rides along, to say how old offline reading is. */
function stamped(res, body) {
  const headers = new Headers(res.headers);
  headers.set('x-taos-cached-at', new Date().toISOString());
  return new Response(body, { status: res.status, statusText: res.statusText, headers });
}

/** Keeps the message lists (and channel records) of the MAX_CHANNELS channels read last. */
async function prune(cache, justRead) {
  const keys = await cache.keys();
  const lastRead = new Map();
  for (const key of keys) {
    const m = CHANNEL.exec(new URL(key.url).pathname);
    if (!m || !m[2]) continue;
    const at = Date.parse((await cache.match(key))?.headers.get('x-taos-cached-at') ?? '') || 0;
    lastRead.set(m[1], Math.max(lastRead.get(m[1]) ?? 0, m[1] === justRead ? Infinity : at));
  }
  const keep = new Set([...lastRead.entries()].sort((a, b) => b[1] - a[1]).slice(0, MAX_CHANNELS).map(([id]) => id));
  for (const key of keys) {
    const m = CHANNEL.exec(new URL(key.url).pathname);
    if (m && !keep.has(m[1])) await cache.delete(key);
  }
}

function tell(clientId, message) {
  if (!clientId) return;
  self.clients.get(clientId).then((c) => c?.postMessage(message)).catch(() => {});
}
