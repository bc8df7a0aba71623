// Data shaping for the home screen and the disk screen: a figure against its whole as a meter
// (percent, level, words), and a series of samples as columns. Pure, so it is unit-tested;
// the screens draw these with plain HTML bars (no chart library yet: see docs/architecture.md).
import { size } from './capacity';

/** The disk quota monitor's thresholds (agents/quota.rs): warn at 87.5 %, hard at 100 %. */
export const DISK_WARN = 87.5;
export const DISK_HARD = 100;

export type Level = 'ok' | 'warn' | 'bad';

export interface Meter {
  /** 0–100, one decimal; null when either figure is unknown. */
  percent: number | null;
  level: Level;
  /** "1.2 GiB of 4.0 GiB (30%)", or "unknown". */
  words: string;
}

/** `used` of `total`: warn from `warnAt` percent, bad from `badAt`. */
export function meter(
  used: number | null | undefined,
  total: number | null | undefined,
  warnAt = 80,
  badAt = 95,
): Meter {
  if (used == null || total == null || total <= 0) return { percent: null, level: 'ok', words: 'unknown' };
  const percent = Math.round((used * 1000) / total) / 10;
  const level: Level = percent >= badAt ? 'bad' : percent >= warnAt ? 'warn' : 'ok';
  return { percent, level, words: `${size(used)} of ${size(total)} (${Math.round(percent)}%)` };
}

/** An agent's disk against its quota, with the quota monitor's thresholds. */
export function diskMeter(used: number | null | undefined, quota: number | null | undefined): Meter {
  return meter(used, quota, DISK_WARN, DISK_HARD);
}

/** A CPU share as a meter. */
export function cpuMeter(percent: number | null | undefined): Meter {
  if (percent == null) return { percent: null, level: 'ok', words: 'measuring…' };
  const p = Math.max(0, Math.min(100, percent));
  return { percent: p, level: p >= 95 ? 'bad' : p >= 80 ? 'warn' : 'ok', words: `${p.toFixed(1)}%` };
}

export interface Column {
  at: string;
  /** Height, 0–100, of the column in its chart. */
  height: number;
  value: number | null;
  level: Level;
}

/**
 * Samples as columns scaled to `max` (an agent's quota, or the series' own largest value when
 * none is given), each coloured by its share of `max` against the thresholds.
 */
export function columns(
  samples: { at: string; value: number | null | undefined }[],
  max?: number | null,
  warnAt = DISK_WARN,
  badAt = DISK_HARD,
): Column[] {
  const top = max && max > 0 ? max : Math.max(0, ...samples.map((s) => s.value ?? 0));
  return samples.map((s) => {
    const value = s.value ?? null;
    if (value == null || top <= 0) return { at: s.at, height: 0, value, level: 'ok' as Level };
    const share = (value * 100) / top;
    return {
      at: s.at,
      height: Math.min(100, Math.round(share * 10) / 10),
      value,
      level: share >= badAt ? 'bad' : share >= warnAt ? 'warn' : 'ok',
    };
  });
}

/**
 * Samples placed in `count` time slots of `bucketSecs` ending with the one holding `nowMs`,
 * aligned as the host buckets them (`at / bucket * bucket` since the epoch): a slot without a
 * sample is `value: null`, so a week with one day of samples shows six empty days first.
 */
export function timeSlots(
  samples: { at: string; value: number | null | undefined }[],
  nowMs: number,
  bucketSecs: number,
  count: number,
): { at: string; value: number | null }[] {
  const bucket = Math.max(1, bucketSecs) * 1000;
  const first = Math.floor(nowMs / bucket) * bucket - (count - 1) * bucket;
  const slots: { at: string; value: number | null }[] = Array.from({ length: count }, (_, i) => ({
    at: new Date(first + i * bucket).toISOString(),
    value: null,
  }));
  for (const s of samples) {
    const i = Math.floor((Date.parse(s.at) - first) / bucket);
    if (i >= 0 && i < count && s.value != null) slots[i].value = Math.max(slots[i].value ?? 0, s.value);
  }
  return slots;
}

/** Bytes for people, small files included: "512 B", "3.4 KiB", then MiB and GiB. */
export function bytes(n: number | null | undefined): string {
  if (n == null) return '—';
  if (n < 1024) return `${n} B`;
  if (n < 1024 * 1024) return `${(n / 1024).toFixed(1)} KiB`;
  return size(n);
}

/** LiteLLM's state in words and a level. */
export function llmLevel(state: string): Level {
  return state === 'ready' ? 'ok' : state === 'failed' ? 'bad' : 'warn';
}

/** The runtime's health words (`ok: incus 6.0.4`, `disabled: …`, `error: …`) as a level. */
export function runtimeLevel(words: string): Level {
  return words.startsWith('ok') ? 'ok' : words.startsWith('error') ? 'bad' : 'warn';
}
