// A small history router: paths map to screens by pattern, same-origin links are intercepted.

export interface Match {
  name: string;
  params: Record<string, string>;
}

const ROUTES: [string, string][] = [
  ['/login', 'login'],
  ['/', 'home'],
  ['/disk', 'disk'],
  ['/recycle', 'recycle'],
  ['/agents', 'agents'],
  ['/agents/new', 'deploy'],
  ['/agents/:slug', 'agent'],
  ['/agents/:slug/traces', 'traces'],
  ['/agents/:slug/traces/:trace', 'trace'],
  ['/spend', 'spend'],
  ['/connect', 'connect'],
  ['/traces', 'traces-index'],
  ['/settings', 'settings'],
  ['/settings/backups', 'backups'],
  ['/chat', 'chat'],
  ['/chat/:channel', 'chat'],
  ['/providers', 'providers'],
  ['/devices', 'devices'],
  ['/notifications', 'notifications'],
];

export function match(path: string): Match {
  const parts = path.split('/').filter(Boolean);
  for (const [pattern, name] of ROUTES) {
    const want = pattern.split('/').filter(Boolean);
    if (want.length !== parts.length) continue;
    const params: Record<string, string> = {};
    let ok = true;
    for (let i = 0; i < want.length; i++) {
      if (want[i].startsWith(':')) params[want[i].slice(1)] = decodeURIComponent(parts[i]);
      else if (want[i] !== parts[i]) ok = false;
    }
    if (ok) return { name, params };
  }
  return { name: 'notfound', params: {} };
}

export const router = $state({ path: location.pathname, search: location.search });

export function navigate(to: string, replace = false) {
  const url = new URL(to, location.origin);
  if (url.pathname + url.search === router.path + router.search) return;
  if (replace) history.replaceState(null, '', url);
  else history.pushState(null, '', url);
  router.path = url.pathname;
  router.search = url.search;
}

export function installRouter() {
  addEventListener('popstate', () => {
    router.path = location.pathname;
    router.search = location.search;
  });
  document.addEventListener('click', (e) => {
    if (e.defaultPrevented || e.button !== 0 || e.metaKey || e.ctrlKey || e.shiftKey || e.altKey) return;
    const a = (e.target as Element | null)?.closest?.('a');
    if (!a || a.target || a.hasAttribute('download')) return;
    const url = new URL(a.href, location.href);
    if (url.origin !== location.origin || url.pathname.startsWith('/api/')) return;
    e.preventDefault();
    navigate(url.pathname + url.search);
  });
}
