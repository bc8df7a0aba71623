import { describe, expect, it } from 'vitest';
import { fit, needText, size, type HostCapacity } from '../src/lib/capacity';

const GIB = 1024 ** 3;
const MIB = 1024 ** 2;

const host = (memory: number | null, disk: number | null, problems: string[] = []): HostCapacity => ({
  memory_available_bytes: memory,
  memory_total_bytes: memory === null ? null : 24 * GIB,
  disk_free_bytes: disk,
  disk_total_bytes: disk === null ? null : 20 * GIB,
  storage: 'incus storage pool "default" (btrfs)',
  problems,
});

describe('a framework against what the host has free', () => {
  const openclaw = { ram_mb: 1400, disk_mb: 2048, cpus: 1 };

  it('fits with room to spare: no warning', () => {
    const f = fit('openclaw', openclaw, host(8 * GIB, 10 * GIB));
    expect(f.short).toBe(false);
    expect(f.warnings).toEqual([]);
    expect(f.needs.map(needText)).toEqual(['1.4 GiB (8.0 GiB free)', '2.0 GiB (10.0 GiB free)']);
  });

  it('warns, naming the resource and both sizes, when memory is short', () => {
    const f = fit('openclaw', openclaw, host(900 * MIB, 10 * GIB));
    expect(f.short).toBe(true);
    expect(f.needs.find((n) => n.what === 'memory')?.short).toBe(true);
    expect(f.needs.find((n) => n.what === 'disk')?.short).toBe(false);
    expect(f.warnings).toEqual(['openclaw needs 1.4 GiB of memory; the host has 900 MiB memory available. It may fail to start or run out.']);
  });

  it('warns for the disk too, and for both at once', () => {
    const f = fit('openclaw', openclaw, host(512 * MIB, 1 * GIB));
    expect(f.warnings).toHaveLength(2);
    expect(f.warnings[1]).toBe("openclaw needs 2.0 GiB of disk; the host has 1.0 GiB free disk where agents' storage is. It may fail to start or run out.");
  });

  it('exactly what is free still fits', () => {
    expect(fit('x', { ram_mb: 256, disk_mb: 400, cpus: 1 }, host(256 * MIB, 400 * MIB)).short).toBe(false);
  });

  it('an unknown figure is no warning about size, but the host’s reason is shown', () => {
    const f = fit('direct', { ram_mb: 128, disk_mb: 400, cpus: 1 }, host(8 * GIB, null, ['no container runtime: agents\' storage is unknown']));
    expect(f.short).toBe(false);
    expect(f.needs.map(needText)).toEqual(['128 MiB (8.0 GiB free)', '400 MiB (free: unknown)']);
    expect(f.warnings).toEqual(["Could not check: no container runtime: agents' storage is unknown."]);
  });

  it('before the host answered: needs only, no warning', () => {
    const f = fit('direct', { ram_mb: 128, disk_mb: 400, cpus: 1 }, null);
    expect(f.warnings).toEqual([]);
    expect(f.needs.every((n) => n.freeBytes === null)).toBe(true);
  });

  it('sizes read as people say them', () => {
    expect(size(128 * MIB)).toBe('128 MiB');
    expect(size(1023 * MIB)).toBe('1023 MiB');
    expect(size(GIB)).toBe('1.0 GiB');
    expect(size(1.35 * GIB)).toBe('1.4 GiB');
  });
});
