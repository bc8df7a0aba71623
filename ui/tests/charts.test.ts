import { describe, expect, it } from 'vitest';
import type { SpendOverview, TraceEvent, UsageRow } from '../src/lib/api/types';
import {
  agentTotals,
  budgetMarks,
  budgetShare,
  dailyByModel,
  dayRange,
  hourly,
  stack,
  visibleRows,
  waterfall,
} from '../src/lib/charts';

const row = (day: string, model: string, cost: number, extra: Partial<UsageRow> = {}): UsageRow => ({
  day,
  model,
  cost_usd: cost,
  requests: 1,
  failures: 0,
  tokens_in: 10,
  tokens_out: 5,
  ...extra,
});

const overview: SpendOverview = {
  from_day: '2026-02-27',
  to_day: '2026-03-02',
  agents: [
    {
      agent_name: 'a',
      display_name: 'A',
      budget: { limit_usd: 10, period: 'month' },
      period_spend_usd: 8,
      rows: [
        row('2026-02-27', 'small', 1),
        row('2026-03-01', 'big', 3, { requests: 4, failures: 1 }),
        row('2026-03-01', 'small', 0.5),
        // Outside the range: never drawn.
        row('2026-02-01', 'big', 100),
      ],
    },
    { agent_name: 'b', display_name: 'B', budget: null, period_spend_usd: 0, rows: [row('2026-03-02', 'big', 2)] },
  ],
};

const ev = (id: string, kind: TraceEvent['kind'], at: string, extra: Partial<TraceEvent> = {}): TraceEvent => ({
  id,
  kind,
  created_at: at,
  agent_name: 'a',
  trace_id: 't',
  ...extra,
});

describe('spend shaping', () => {
  it('lists every UTC day of a range, across a month end', () => {
    expect(dayRange('2026-02-27', '2026-03-02')).toEqual(['2026-02-27', '2026-02-28', '2026-03-01', '2026-03-02']);
    expect(dayRange('2026-03-02', '2026-03-01')).toEqual([]);
    expect(dayRange('nonsense', '2026-03-01')).toEqual([]);
  });

  it('buckets rows per day and model, all agents or one, with empty days as 0', () => {
    const all = dailyByModel(overview, null, 'cost');
    expect(all.days).toHaveLength(4);
    // big: 3 + 2 = 5 in range, small: 1.5 → big first (bottom of the stack).
    expect(all.models).toEqual(['big', 'small']);
    expect(all.values).toEqual([
      [0, 0, 3, 2],
      [1, 0, 0.5, 0],
    ]);
    expect(all.totals).toEqual([1, 0, 3.5, 2]);
    expect(all.requests).toEqual([1, 0, 5, 1]);
    expect(all.failures).toEqual([0, 0, 1, 0]);

    const b = dailyByModel(overview, 'b', 'tokens');
    expect(b.models).toEqual(['big']);
    expect(b.values).toEqual([[0, 0, 0, 15]]);
    expect(dailyByModel(overview, 'nobody', 'cost').models).toEqual([]);
  });

  it('stacks series bottom-up', () => {
    expect(stack([[1, 2], [3, 4], [0, 1]])).toEqual([[1, 2], [4, 6], [4, 7]]);
    expect(stack([])).toEqual([]);
  });

  it('marks 50/80/100 % of a budget and which were reached', () => {
    expect(budgetMarks({ limit_usd: 10, period: 'month' }, 8)).toEqual([
      { percent: 50, usd: 5, reached: true },
      { percent: 80, usd: 8, reached: true },
      { percent: 100, usd: 10, reached: false },
    ]);
    expect(budgetMarks(null, 8)).toEqual([]);
    expect(budgetShare(overview.agents[0])).toBe(80);
    expect(budgetShare(overview.agents[1])).toBeNull();
    expect(budgetShare({ budget: { limit_usd: 0, period: 'day' }, period_spend_usd: 1 })).toBeNull();
  });

  it('totals each agent over the range, largest first', () => {
    const t = agentTotals(overview);
    expect(t.map((x) => x.agent.agent_name)).toEqual(['a', 'b']);
    // Rows outside the range are the host's to leave out; the totals add what was sent.
    expect(t[0].cost).toBe(104.5);
    expect(t[0].requests).toBe(7);
    expect(t[0].failures).toBe(1);
    expect(t[1].tokens).toBe(15);
  });
});

describe('trace histogram', () => {
  it('fills the hours without events and splits by kind, oldest first', () => {
    const s = hourly(
      [
        { hour: '2026-03-01T12', events: 3, by_kind: { llm_call: 2, message_in: 1 }, cost_usd: 0, tokens_in: 0, tokens_out: 0 },
        { hour: '2026-03-01T10', events: 1, by_kind: { message_in: 1 }, cost_usd: 0, tokens_in: 0, tokens_out: 0 },
      ],
      '2026-03-01T10:30:00Z',
      '2026-03-01T12:10:00Z',
    );
    expect(s.hours).toEqual(['2026-03-01T10', '2026-03-01T11', '2026-03-01T12']);
    expect(s.xs[0]).toBe(Date.parse('2026-03-01T10:00:00Z') / 1000);
    expect(s.kinds).toEqual(['llm_call', 'message_in']);
    expect(s.counts).toEqual([
      [0, 0, 2],
      [1, 0, 1],
    ]);
    expect(s.totals).toEqual([1, 0, 3]);
  });
});

describe('trace waterfall', () => {
  it('starts timed events duration before they were written, and nests by parent', () => {
    const w = waterfall([
      ev('out', 'message_out', '2026-03-01T10:00:03Z'),
      ev('in', 'message_in', '2026-03-01T10:00:00Z'),
      ev('llm', 'llm_call', '2026-03-01T10:00:02Z', { duration_ms: 1500, tokens_in: 7, tokens_out: 3, cost_usd: 0.25 }),
      ev('tool', 'tool_call', '2026-03-01T10:00:02.200Z', { parent_id: 'llm' }),
      ev('res', 'tool_result', '2026-03-01T10:00:02.700Z', { parent_id: 'tool', duration_ms: 500 }),
    ]);
    expect(w.bars.map((b) => b.event.id)).toEqual(['in', 'llm', 'tool', 'res', 'out']);
    expect(w.totalMs).toBe(3000);
    const llm = w.bars[1];
    expect(llm.startMs).toBe(500);
    expect(llm.durationMs).toBe(1500);
    expect(llm.left).toBeCloseTo(16.667, 2);
    expect(llm.width).toBe(50);
    expect(w.bars.map((b) => b.depth)).toEqual([0, 0, 1, 2, 0]);
    // Instants get the minimum width, and never run past the end.
    expect(w.bars[0].width).toBe(0.5);
    expect(w.bars[4].left).toBe(99.5);
    expect([w.tokensIn, w.tokensOut, w.costUsd]).toEqual([7, 3, 0.25]);
  });

  it('copes with an empty trace and a single instant', () => {
    expect(waterfall([])).toMatchObject({ bars: [], totalMs: 0 });
    const one = waterfall([ev('x', 'message_in', '2026-03-01T10:00:00Z')]);
    expect(one.bars[0]).toMatchObject({ left: 0, width: 0.5, startMs: 0 });
  });

  it('lays out 1 000 spans and windows the rows', () => {
    const events = Array.from({ length: 1000 }, (_, i) =>
      ev(`e${i}`, i % 2 ? 'tool_result' : 'tool_call', new Date(Date.parse('2026-03-01T10:00:00Z') + i * 10).toISOString(), { duration_ms: 5 }),
    );
    const w = waterfall(events);
    expect(w.bars).toHaveLength(1000);
    expect(w.bars.every((b) => b.left >= 0 && b.left + b.width <= 100 + 1e-9)).toBe(true);
    expect(visibleRows(1000, 28, 0, 560)).toEqual({ first: 0, last: 30 });
    expect(visibleRows(1000, 28, 28 * 990, 560)).toEqual({ first: 980, last: 1000 });
  });
});
