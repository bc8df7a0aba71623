import { describe, expect, it } from 'vitest';
import { bytes, columns, cpuMeter, diskMeter, llmLevel, meter, runtimeLevel, timeSlots } from '../src/lib/board';

const GIB = 1024 ** 3;

describe('meters', () => {
  it('say used of total with a level from the thresholds', () => {
    expect(meter(GIB, 4 * GIB)).toEqual({ percent: 25, level: 'ok', words: '1.0 GiB of 4.0 GiB (25%)' });
    expect(meter(81, 100).level).toBe('warn');
    expect(meter(95, 100).level).toBe('bad');
    expect(meter(null, 100)).toEqual({ percent: null, level: 'ok', words: 'unknown' });
    expect(meter(1, 0).percent).toBeNull();
  });

  it("use the quota monitor's 87.5 % and 100 % for disks", () => {
    expect(diskMeter(87, 100).level).toBe('ok');
    expect(diskMeter(875, 1000).level).toBe('warn');
    expect(diskMeter(100, 100).level).toBe('bad');
    expect(diskMeter(333, 1000).percent).toBe(33.3);
  });

  it('keep CPU within 0–100 and say when there is no figure yet', () => {
    expect(cpuMeter(null).words).toBe('measuring…');
    expect(cpuMeter(12.345).words).toBe('12.3%');
    expect(cpuMeter(140).percent).toBe(100);
    expect(cpuMeter(90).level).toBe('warn');
  });

  it('word the states', () => {
    expect(llmLevel('ready')).toBe('ok');
    expect(llmLevel('starting')).toBe('warn');
    expect(llmLevel('failed')).toBe('bad');
    expect(runtimeLevel('ok: incus 6.0.4')).toBe('ok');
    expect(runtimeLevel('disabled: no runtime')).toBe('warn');
    expect(runtimeLevel('error: pool gone')).toBe('bad');
  });
});

describe('columns', () => {
  it('scale to the quota and colour by the thresholds', () => {
    const cols = columns(
      [
        { at: 'a', value: 50 },
        { at: 'b', value: 90 },
        { at: 'c', value: 100 },
        { at: 'd', value: null },
      ],
      100,
    );
    expect(cols.map((c) => [c.height, c.level])).toEqual([
      [50, 'ok'],
      [90, 'warn'],
      [100, 'bad'],
      [0, 'ok'],
    ]);
  });

  it('scale to the largest value without a quota, and cap at 100', () => {
    const cols = columns([{ at: 'a', value: 2 }, { at: 'b', value: 4 }]);
    expect(cols.map((c) => c.height)).toEqual([50, 100]);
    expect(columns([{ at: 'a', value: 300 }], 100)[0].height).toBe(100);
    expect(columns([])).toEqual([]);
  });
});

describe('time slots', () => {
  it('place samples in the host-aligned buckets ending now, empty slots null', () => {
    const hour = 3600;
    const now = Date.parse('2026-12-06T10:30:00Z');
    const slots = timeSlots(
      [
        { at: '2026-12-06T08:00:00Z', value: 5 },
        { at: '2026-12-06T10:00:00Z', value: 7 },
        { at: '2026-12-06T03:00:00Z', value: 99 }, // before the window
      ],
      now,
      hour,
      4,
    );
    expect(slots.map((s) => s.at)).toEqual([
      '2026-12-06T07:00:00.000Z',
      '2026-12-06T08:00:00.000Z',
      '2026-12-06T09:00:00.000Z',
      '2026-12-06T10:00:00.000Z',
    ]);
    expect(slots.map((s) => s.value)).toEqual([null, 5, null, 7]);
  });
});

describe('bytes', () => {
  it('word small files too', () => {
    expect(bytes(7)).toBe('7 B');
    expect(bytes(2048)).toBe('2.0 KiB');
    expect(bytes(5 * 1024 * 1024)).toBe('5 MiB');
    expect(bytes(null)).toBe('—');
  });
});
