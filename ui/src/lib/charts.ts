// Data shaping for the spend, histogram and trace-waterfall pictures: pure functions, so the
// numbers drawn are tested without a browser (tests/charts.test.ts). The charts themselves
// (uPlot) only draw what these return.
import type { AgentSpend, Budget, SpendOverview, TraceEvent, TraceHourTotal } from './api/types';

/** The UTC days from `from` to `to` inclusive, `YYYY-MM-DD`. */
export function dayRange(from: string, to: string): string[] {
  const out: string[] = [];
  const end = Date.parse(`${to}T00:00:00Z`);
  let t = Date.parse(`${from}T00:00:00Z`);
  if (Number.isNaN(t) || Number.isNaN(end)) return out;
  // A range longer than the host serves (366 days) is a bug, not a reason to loop for long.
  for (let i = 0; t <= end && i < 400; i++, t += 86_400_000) out.push(new Date(t).toISOString().slice(0, 10));
  return out;
}

export type SpendMetric = 'cost' | 'tokens';

/** Per-day values per model: `values[m][d]` is model `models[m]` on day `days[d]`. */
export interface DailyByModel {
  days: string[];
  models: string[];
  values: number[][];
  /** Per day, the sum over models. */
  totals: number[];
  requests: number[];
  failures: number[];
}

/**
 * Buckets usage rows of the chosen agents (all when `agent` is null) into one value per UTC
 * day and model over the overview's range; days without usage are 0. Models are sorted by
 * their total, largest first, so the biggest spender sits at the bottom of the stack.
 */
export function dailyByModel(o: SpendOverview, agent: string | null, metric: SpendMetric): DailyByModel {
  const days = dayRange(o.from_day, o.to_day);
  const index = new Map(days.map((d, i) => [d, i]));
  const byModel = new Map<string, number[]>();
  const requests = days.map(() => 0);
  const failures = days.map(() => 0);
  for (const a of o.agents) {
    if (agent !== null && a.agent_name !== agent) continue;
    for (const r of a.rows) {
      const d = index.get(r.day);
      if (d === undefined) continue;
      let v = byModel.get(r.model);
      if (!v) byModel.set(r.model, (v = days.map(() => 0)));
      v[d] += metric === 'cost' ? r.cost_usd : r.tokens_in + r.tokens_out;
      requests[d] += r.requests;
      failures[d] += r.failures;
    }
  }
  const sum = (xs: number[]) => xs.reduce((a, b) => a + b, 0);
  const models = [...byModel.keys()].sort((a, b) => sum(byModel.get(b)!) - sum(byModel.get(a)!) || a.localeCompare(b));
  const values = models.map((m) => byModel.get(m)!);
  const totals = days.map((_, d) => values.reduce((a, v) => a + v[d], 0));
  return { days, models, values, totals, requests, failures };
}

/** Running sums bottom-up: `stacked[m][d]` is the top of model m's segment on day d. */
export function stack(values: number[][]): number[][] {
  const out: number[][] = [];
  for (let m = 0; m < values.length; m++) {
    out.push(values[m].map((v, d) => v + (m > 0 ? out[m - 1][d] : 0)));
  }
  return out;
}

export interface BudgetMark {
  percent: number;
  usd: number;
  reached: boolean;
}

/** The 50/80/100 % marks of a budget, and whether the period's spend has reached each. */
export function budgetMarks(budget: Budget | null | undefined, periodSpend: number): BudgetMark[] {
  if (!budget) return [];
  return [50, 80, 100].map((percent) => {
    const usd = (budget.limit_usd * percent) / 100;
    return { percent, usd, reached: periodSpend >= usd - 1e-9 };
  });
}

/** Spend of the period as a share of the budget, 0–100+ (null without a budget or with a 0 limit). */
export function budgetShare(a: Pick<AgentSpend, 'budget' | 'period_spend_usd'>): number | null {
  if (!a.budget || a.budget.limit_usd <= 0) return null;
  return (a.period_spend_usd / a.budget.limit_usd) * 100;
}

/** Per-agent totals over the range, largest cost first. */
export function agentTotals(o: SpendOverview) {
  return o.agents
    .map((a) => ({
      agent: a,
      cost: a.rows.reduce((s, r) => s + r.cost_usd, 0),
      tokens: a.rows.reduce((s, r) => s + r.tokens_in + r.tokens_out, 0),
      requests: a.rows.reduce((s, r) => s + r.requests, 0),
      failures: a.rows.reduce((s, r) => s + r.failures, 0),
    }))
    .sort((x, y) => y.cost - x.cost || x.agent.agent_name.localeCompare(y.agent.agent_name));
}

/** `YYYY-MM-DDTHH` for the UTC hour containing `t` (ms). */
export function hourKey(t: number): string {
  return new Date(t).toISOString().slice(0, 13);
}

export interface HourSeries {
  /** Each hour's start, epoch seconds (uPlot's x axis). */
  xs: number[];
  hours: string[];
  /** `counts[k][h]`: events of `kinds[k]` in hour h. */
  kinds: string[];
  counts: number[][];
  totals: number[];
}

/**
 * Fills the host's per-hour totals (hours without events are left out, newest first) into a
 * continuous oldest-first series from `since` to `until`, split by kind.
 */
export function hourly(hoursIn: TraceHourTotal[], since: string, until: string): HourSeries {
  const start = Math.floor(Date.parse(since) / 3_600_000) * 3_600_000;
  const end = Date.parse(until);
  const hours: string[] = [];
  const xs: number[] = [];
  // At most 92 days of hours (the host's own limit on the range).
  for (let t = start, i = 0; t <= end && i < 92 * 24 + 1; t += 3_600_000, i++) {
    hours.push(hourKey(t));
    xs.push(t / 1000);
  }
  const index = new Map(hours.map((h, i) => [h, i]));
  const kindSet = new Set<string>();
  for (const h of hoursIn) for (const k of Object.keys(h.by_kind)) kindSet.add(k);
  const kinds = [...kindSet].sort();
  const counts = kinds.map(() => hours.map(() => 0));
  const totals = hours.map(() => 0);
  for (const h of hoursIn) {
    const i = index.get(h.hour);
    if (i === undefined) continue;
    totals[i] += h.events;
    kinds.forEach((k, ki) => (counts[ki][i] += h.by_kind[k] ?? 0));
  }
  return { xs, hours, kinds, counts, totals };
}

export interface Bar {
  event: TraceEvent;
  /** Offset of the bar's start from the trace's first moment, ms. */
  startMs: number;
  durationMs: number;
  /** Position and width as percentages of the whole trace (width at least `minWidth`). */
  left: number;
  width: number;
  /** Nesting under the event's `parent_id` within this trace (0 = top). */
  depth: number;
}

export interface Waterfall {
  bars: Bar[];
  totalMs: number;
  tokensIn: number;
  tokensOut: number;
  costUsd: number;
}

/**
 * Lays one trace's events out as a waterfall. An event with a `duration_ms` is written when its
 * work ends (the gateway's `llm_call`, a tool's result), so its bar runs from `created_at −
 * duration_ms` to `created_at`; an event without one is an instant. Bars are ordered by start
 * (then by when they were written), and nested under their `parent_id` when it is in the trace.
 */
export function waterfall(events: TraceEvent[], minWidth = 0.5): Waterfall {
  const timed = events.map((event, i) => {
    const end = Date.parse(event.created_at);
    const dur = Math.max(0, event.duration_ms ?? 0);
    return { event, start: end - dur, end, dur, i };
  });
  timed.sort((a, b) => a.start - b.start || a.end - b.end || a.i - b.i);
  const t0 = timed.length ? Math.min(...timed.map((t) => t.start)) : 0;
  const t1 = timed.length ? Math.max(...timed.map((t) => t.end)) : 0;
  const totalMs = t1 - t0;
  const depthOf = new Map<string, number>();
  const bars: Bar[] = timed.map((t) => {
    const parent = t.event.parent_id ? depthOf.get(t.event.parent_id) : undefined;
    const depth = parent === undefined ? 0 : parent + 1;
    depthOf.set(t.event.id, depth);
    const startMs = t.start - t0;
    let left = totalMs > 0 ? (startMs / totalMs) * 100 : 0;
    let width = totalMs > 0 ? (t.dur / totalMs) * 100 : 0;
    if (width < minWidth) width = minWidth;
    if (left + width > 100) left = Math.max(0, 100 - width);
    return { event: t.event, startMs, durationMs: t.dur, left, width, depth };
  });
  const sum = (f: (e: TraceEvent) => number | null | undefined) => events.reduce((a, e) => a + (f(e) ?? 0), 0);
  return {
    bars,
    totalMs,
    tokensIn: sum((e) => e.tokens_in),
    tokensOut: sum((e) => e.tokens_out),
    costUsd: sum((e) => e.cost_usd),
  };
}

/** Which bars of a `rowHeight`-px waterfall a `viewport`-px window at `scrollTop` shows (plus `overscan`). */
export function visibleRows(count: number, rowHeight: number, scrollTop: number, viewport: number, overscan = 10) {
  const first = Math.max(0, Math.floor(scrollTop / rowHeight) - overscan);
  const last = Math.min(count, Math.ceil((scrollTop + viewport) / rowHeight) + overscan);
  return { first, last };
}
