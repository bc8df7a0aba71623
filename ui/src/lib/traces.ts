import type { TraceEvent } from './api/types';

export interface DayTotal {
  day: string;
  events: number;
  llmCalls: number;
  tokensIn: number;
  tokensOut: number;
  costUsd: number;
}

/** Per-UTC-day totals of the events given, newest day first. */
export function totalsPerDay(events: TraceEvent[]): DayTotal[] {
  const days = new Map<string, DayTotal>();
  for (const e of events) {
    const day = e.created_at.slice(0, 10);
    let t = days.get(day);
    if (!t) {
      t = { day, events: 0, llmCalls: 0, tokensIn: 0, tokensOut: 0, costUsd: 0 };
      days.set(day, t);
    }
    t.events++;
    if (e.kind === 'llm_call') t.llmCalls++;
    t.tokensIn += e.tokens_in ?? 0;
    t.tokensOut += e.tokens_out ?? 0;
    t.costUsd += e.cost_usd ?? 0;
  }
  return [...days.values()].sort((a, b) => (a.day < b.day ? 1 : -1));
}

/** `datetime-local` input value → RFC 3339 for the trace API ('' → undefined). */
export function localToRfc3339(v: string): string | undefined {
  if (!v) return undefined;
  const d = new Date(v);
  return Number.isNaN(d.getTime()) ? undefined : d.toISOString();
}
