import type { HostInfo } from './api/types';
import { api } from './app.svelte';

let cached: Promise<HostInfo> | null = null;

/** Where this host is reached (GET /api/host), asked once per page load. */
export function hostInfo(): Promise<HostInfo> {
  cached ??= api.get('/api/host').catch((e) => {
    cached = null;
    throw e;
  });
  return cached;
}
