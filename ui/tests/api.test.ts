// The typed layer over HostClient: what it sends, and (checked by `npm run check`, which runs tsc
// over tests/) what it refuses to compile.
import { describe, expect, expectTypeOf, it } from 'vitest';
import { createApi, fillPath } from '../src/lib/api/api';
import type { Agent, Channel, DiskStatus, Message, TraceList } from '../src/lib/api/types';
import { HostError } from '../src/lib/host/HostClient';
import { FakeHost } from './fakes';

function setup(answer: unknown = undefined) {
  const host = new FakeHost();
  host.handler = async () => answer;
  return { host, api: createApi(host) };
}

describe('api', () => {
  it('URL-encodes path parameters', async () => {
    const { host, api } = setup({});
    await api.get('/api/agents/{slug}', { path: { slug: 'a b/c?d#e%f' } });
    await api.post('/api/notifications/{id}/read', { path: { id: 7 } });
    await api.post('/api/agents/{slug}/admin-prompts/{name}', { path: { slug: 'x&y', name: 'disk-audit' }, body: {} });
    expect(host.requests.map((r) => [r.method, r.path])).toEqual([
      ['GET', '/api/agents/a%20b%2Fc%3Fd%23e%25f'],
      ['POST', '/api/notifications/7/read'],
      ['POST', '/api/agents/x%26y/admin-prompts/disk-audit'],
    ]);
  });

  it('refuses a path parameter that would name another route, without asking the host', async () => {
    const { host, api } = setup();
    for (const slug of ['', '.', '..']) {
      const e = await api.get('/api/agents/{slug}', { path: { slug } }).catch((e) => e);
      expect(e).toBeInstanceOf(HostError);
      expect((e as HostError).code).toBe('bad_input');
    }
    expect(host.requests).toEqual([]);
    expect(fillPath('/api/agents/{slug}/trace', { slug: '...' })).toBe('/api/agents/.../trace');
  });

  it('passes the query and the body as they are, and nothing the call did not give', async () => {
    const { host, api } = setup([]);
    await api.get('/api/chat/channels', { query: { archived: true, member: 'helper' } });
    await api.get('/api/agents');
    await api.post('/api/chat/messages', { body: { channel_id: 'c1', content: 'hi', client_id: 'k' } });
    expect(host.requests.map((r) => r.init)).toEqual([
      { query: { archived: true, member: 'helper' } },
      {},
      { body: { channel_id: 'c1', content: 'hi', client_id: 'k' } },
    ]);
  });

  it('reads the text routes as text', async () => {
    const { host, api } = setup('line\n');
    const logs = await api.get('/api/agents/{slug}/logs', { path: { slug: 'a' }, query: { lines: 200 } });
    expect(logs).toBe('line\n');
    expect(host.requests[0]).toEqual({
      method: 'GET',
      path: '/api/agents/a/logs',
      init: { query: { lines: 200 }, text: true },
    });
  });

  it('hands on the host error unchanged', async () => {
    const host = new FakeHost();
    const api = createApi(host);
    const e = await api.delete('/api/users/{id}', { path: { id: 'u1' } }).catch((e) => e);
    expect(e).toBeInstanceOf(HostError);
    expect((e as HostError).status).toBe(404);
  });
});

// Never called: tsc checks these lines (each @ts-expect-error must see an error, or the check fails).
export async function typeChecks() {
  const { api } = setup();

  // The answer's type comes from the route's success response.
  expectTypeOf(api.get('/api/agents/{slug}', { path: { slug: 'a' } })).resolves.toEqualTypeOf<Agent>();
  expectTypeOf(api.get('/api/agents')).resolves.toEqualTypeOf<Agent[]>();
  expectTypeOf(api.get('/api/chat/channels')).resolves.toEqualTypeOf<Channel[]>();
  expectTypeOf(api.post('/api/chat/messages', { body: { channel_id: 'c', content: 'x' } })).resolves.toEqualTypeOf<Message>();
  expectTypeOf(api.post('/api/agents/{slug}/quota', { path: { slug: 'a' }, body: { size_gib: 2 } })).resolves.toEqualTypeOf<DiskStatus>();
  expectTypeOf(api.get('/api/agents/{slug}/trace', { path: { slug: 'a' }, query: { limit: 5 } })).resolves.toEqualTypeOf<TraceList>();
  expectTypeOf(api.get('/api/agents/{slug}/logs', { path: { slug: 'a' } })).resolves.toEqualTypeOf<string>();
  expectTypeOf(api.post('/api/auth/logout')).resolves.toEqualTypeOf<undefined>();

  // @ts-expect-error: no such route
  void api.get('/api/agent/{slug}', { path: { slug: 'a' } });
  // @ts-expect-error: a filled-in path is not a route template
  void api.get('/api/agents/a');
  // @ts-expect-error: the route has no GET
  void api.get('/api/auth/logout');
  // @ts-expect-error: the path parameter is required
  void api.get('/api/agents/{slug}');
  // @ts-expect-error: the path parameter is named slug
  void api.get('/api/agents/{slug}', { path: { name: 'a' } });
  // @ts-expect-error: a route without parameters takes none
  void api.get('/api/agents', { path: { slug: 'a' } });
  // @ts-expect-error: no such query parameter
  void api.get('/api/chat/channels', { query: { archive: true } });
  // @ts-expect-error: archived is a boolean
  void api.get('/api/chat/channels', { query: { archived: 'yes' } });
  // @ts-expect-error: the body is required
  void api.post('/api/chat/messages');
  // @ts-expect-error: the body lacks content
  void api.post('/api/chat/messages', { body: { channel_id: 'c' } });
  // @ts-expect-error: size_gib is a number
  void api.post('/api/agents/{slug}/quota', { path: { slug: 'a' }, body: { size_gib: '2' } });
  // @ts-expect-error: the route takes no body
  void api.post('/api/auth/logout', { body: {} });
  // @ts-expect-error: the answer is an Agent, not a list
  const agents: Agent[] = await api.get('/api/agents/{slug}', { path: { slug: 'a' } });
  void agents;
}
