// Tool approvals as the UI words and answers them (lib/approvals.ts).
import { describe, expect, it } from 'vitest';
import { createApi } from '../src/lib/api/api';
import { approvalOf, callSummary, current, decide, requestText, stateLabel } from '../src/lib/approvals';
import { HostError } from '../src/lib/host/HostClient';
import { FakeHost } from './fakes';

describe('approvals', () => {
  it('reads a step approval only when it is well formed (steps are agent-made data)', () => {
    expect(approvalOf({ approval: { id: 'ap1', state: 'pending', reason: null } })).toEqual({ id: 'ap1', state: 'pending', reason: null });
    expect(approvalOf({ approval: { id: 'ap1', state: 'denied', reason: 'denied by user:owner' } })?.reason).toBe('denied by user:owner');
    expect(approvalOf({ approval: { id: 'ap1', state: 'denied', reason: '' } })?.reason).toBeNull();
    for (const bad of [undefined, null, 'ap1', {}, { id: 'ap1' }, { id: '', state: 'pending' }, { id: 7, state: 'pending' }, { id: 'ap1', state: 'maybe' }]) {
      expect(approvalOf({ approval: bad })).toBeNull();
    }
    expect(approvalOf({})).toBeNull();
  });

  it('says what the call would run, like the host summary, without repeating the tool', () => {
    expect(callSummary('shell', { command: 'rm -r ~/logs/2024' })).toBe('rm -r ~/logs/2024');
    expect(callSummary('shell', { command: ['du', '-sh', '/root'] })).toBe('du -sh /root');
    expect(callSummary('read_file', { path: 'notes.txt' })).toBe('notes.txt');
    expect(callSummary('list_dir', {})).toBe('.');
    expect(callSummary('http_get', { url: 'https://example.com' })).toBe('GET https://example.com');
    expect(callSummary('other', { a: 1 })).toBe('{"a":1}');
    expect(callSummary('shell', undefined)).toBe('{}');
    const long = callSummary('shell', { command: 'x'.repeat(500) });
    expect(long).toBe(`${'x'.repeat(200)}…`);
    expect(requestText('Helper', 'shell', { command: 'rm -r ~/logs/2024' })).toBe('Helper wants to run shell: rm -r ~/logs/2024');
  });

  it('labels every state, a denial with its reason', () => {
    expect(stateLabel({ state: 'pending', reason: null })).toBe('waiting for approval');
    expect(stateLabel({ state: 'approved', reason: null })).toBe('approved');
    expect(stateLabel({ state: 'denied', reason: 'denied by user:owner' })).toBe('denied: denied by user:owner');
    expect(stateLabel({ state: 'denied', reason: null })).toBe('denied');
    expect(stateLabel({ state: 'expired', reason: 'nobody approved it within 600 s' })).toBe('expired: nobody answered in time');
    expect(stateLabel({ state: 'cancelled', reason: 'the answer was stopped' })).toBe('cancelled');
    expect(stateLabel({ state: 'answered', reason: null })).toBe('already answered');
  });

  it('lets a decision learnt later replace a pending step, never a decided one', () => {
    const pending = { id: 'ap1', state: 'pending' as const, reason: null };
    expect(current(pending, undefined)).toEqual(pending);
    expect(current(pending, { state: 'denied', reason: 'denied by user:sam' })).toEqual({ id: 'ap1', state: 'denied', reason: 'denied by user:sam' });
    expect(current(pending, { state: 'pending', reason: null })).toEqual(pending);
    const approved = { id: 'ap1', state: 'approved' as const, reason: null };
    expect(current(approved, { state: 'answered', reason: null })).toEqual(approved);
  });

  it('sends the decision and reads the state the host holds', async () => {
    const host = new FakeHost();
    host.handler = async () => ({ id: 'ap 1', state: 'denied', reason: 'denied by user:owner' });
    const r = await decide(createApi(host), 'ap 1', 'deny');
    expect(r).toEqual({ kind: 'decided', state: 'denied', reason: 'denied by user:owner' });
    expect(host.requests.map((q) => [q.method, q.path, q.init?.body])).toEqual([['POST', '/api/approvals/ap%201', { decision: 'deny' }]]);
  });

  it('turns a 409 into "already answered" with the state the host named, and throws anything else', async () => {
    const host = new FakeHost();
    const api = createApi(host);
    host.handler = async () => {
      throw new HostError(409, 'conflict', 'this approval is already expired');
    };
    expect(await decide(api, 'ap1', 'approve')).toEqual({ kind: 'already', state: 'expired' });
    host.handler = async () => {
      throw new HostError(409, 'conflict', 'the answer this call belongs to is already settled');
    };
    expect(await decide(api, 'ap1', 'approve')).toEqual({ kind: 'already', state: null });
    host.handler = async () => {
      throw new HostError(403, 'forbidden', 'you do not see this channel');
    };
    await expect(decide(api, 'ap1', 'approve')).rejects.toMatchObject({ status: 403 });
  });
});
