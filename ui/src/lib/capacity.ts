// A framework's needs (its manifest's `requires`) against what the host has free
// (`GET /api/host/capacity`), worded for the deploy form's framework picker.
import type { components } from './api/schema';

export type Requires = components['schemas']['Requires'];
export type HostCapacity = components['schemas']['HostCapacity'];

const MIB = 1024 * 1024;

/** A size for people: MiB below 1 GiB, else GiB with one decimal. */
export function size(bytes: number): string {
  if (bytes < 1024 * MIB) return `${Math.round(bytes / MIB)} MiB`;
  return `${(bytes / (1024 * MIB)).toFixed(1)} GiB`;
}

/** One resource: what the framework needs, what is free (null: unknown), whether it is short. */
export interface Need {
  what: 'memory' | 'disk';
  needBytes: number;
  freeBytes: number | null;
  short: boolean;
}

export interface Fit {
  needs: Need[];
  /** One sentence per resource the host lacks, or couldn't read. Empty: it fits. */
  warnings: string[];
  /** True when the host has less of something than the framework needs. */
  short: boolean;
}

/** How a framework fits the host now. `capacity` null: not known (yet), no warning. */
export function fit(name: string, requires: Requires, capacity: HostCapacity | null): Fit {
  const needs: Need[] = [
    { what: 'memory', needBytes: requires.ram_mb * MIB, freeBytes: capacity?.memory_available_bytes ?? null, short: false },
    { what: 'disk', needBytes: requires.disk_mb * MIB, freeBytes: capacity?.disk_free_bytes ?? null, short: false },
  ];
  const warnings: string[] = [];
  for (const n of needs) {
    n.short = n.freeBytes !== null && n.needBytes > n.freeBytes;
    if (n.short) {
      const where = n.what === 'memory' ? 'memory available' : "free disk where agents' storage is";
      warnings.push(`${name} needs ${size(n.needBytes)} of ${n.what}; the host has ${size(n.freeBytes as number)} ${where}. It may fail to start or run out.`);
    }
  }
  if (capacity) {
    for (const p of capacity.problems) warnings.push(`Could not check: ${p}.`);
  }
  return { needs, warnings, short: needs.some((n) => n.short) };
}

/** "256 MiB (7.9 GiB free)", or "(free: unknown)". */
export function needText(n: Need): string {
  return `${size(n.needBytes)} (${n.freeBytes === null ? 'free: unknown' : `${size(n.freeBytes)} free`})`;
}
