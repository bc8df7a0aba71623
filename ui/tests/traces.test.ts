import { describe, expect, it } from 'vitest';
import type { TraceEvent } from '../src/lib/api/types';
import { localToRfc3339, totalsPerDay } from '../src/lib/traces';

const e = (created_at: string, kind: TraceEvent['kind'], cost = 0, tin = 0, tout = 0): TraceEvent => ({
  id: created_at + kind,
  created_at,
  agent_name: 'a',
  kind,
  cost_usd: cost,
  tokens_in: tin,
  tokens_out: tout,
  payload: {},
});

describe('trace totals', () => {
  it('adds up each day, newest first', () => {
    const t = totalsPerDay([
      e('2026-01-02T10:00:00Z', 'llm_call', 0.02, 10, 5),
      e('2026-01-02T09:00:00Z', 'message_in'),
      e('2026-01-01T23:59:59Z', 'llm_call', 0.01, 3, 4),
    ]);
    expect(t).toEqual([
      { day: '2026-01-02', events: 2, llmCalls: 1, tokensIn: 10, tokensOut: 5, costUsd: 0.02 },
      { day: '2026-01-01', events: 1, llmCalls: 1, tokensIn: 3, tokensOut: 4, costUsd: 0.01 },
    ]);
  });
  it('turns a local time into RFC 3339', () => {
    expect(localToRfc3339('')).toBeUndefined();
    expect(localToRfc3339('2026-01-02T03:04')).toBe(new Date('2026-01-02T03:04').toISOString());
  });
});
