import { describe, expect, it } from 'vitest';
import {
  bytes,
  checkWords,
  drillBlocked,
  drillStepOf,
  drillWords,
  describeDestination,
  describeSchedule,
  destinationOf,
  emptyFields,
  fieldsOf,
  lastRuns,
  phaseWords,
  progressOf,
  repositoryOf,
  type BackupRun,
} from '../src/lib/backups';

const run = (id: string, state: BackupRun['state']): BackupRun => ({
  id,
  state,
  reason: 'manual',
  destination: 'x',
  created_at: '2026-12-06T00:00:00Z',
});

describe('backup destinations', () => {
  it('a folder needs its path, trimmed', () => {
    const f = emptyFields();
    expect(destinationOf(f)).toEqual({ missing: 'Enter the folder the backups go to.' });
    f.path = '  /media/usb/taos ';
    expect(destinationOf(f)).toEqual({ destination: { kind: 'local', path: '/media/usb/taos' } });
  });

  it('SFTP needs every field, and a port in range', () => {
    const f = { ...emptyFields(), kind: 'sftp' as const, host: 'nas.lan', user: 'pi', path: '/backups' };
    expect(destinationOf(f)).toHaveProperty('missing');
    f.hostKey = 'ssh-ed25519 AAAA';
    f.port = '70000';
    expect(destinationOf(f)).toEqual({ missing: 'The port is a number from 1 to 65535.' });
    f.port = '2222';
    expect(destinationOf(f)).toEqual({
      destination: { kind: 'sftp', host: 'nas.lan', port: 2222, user: 'pi', path: '/backups', host_key: 'ssh-ed25519 AAAA' },
    });
  });

  it('fields round trip through a saved destination', () => {
    const d = { kind: 's3' as const, endpoint: 'https://s3.example', bucket: 'taos' };
    expect(destinationOf(fieldsOf(d))).toEqual({ destination: d });
  });

  it('say where backups go, and what restic -r takes', () => {
    expect(describeDestination(null)).toBe('nowhere yet');
    const sftp = { kind: 'sftp' as const, host: 'nas', port: 22, user: 'pi', path: '/b', host_key: 'k' };
    expect(describeDestination(sftp)).toBe('pi@nas:/b (SFTP)');
    expect(repositoryOf(sftp)).toBe('sftp://pi@nas/b');
    expect(repositoryOf({ ...sftp, port: 2222 })).toBe('sftp://pi@nas:2222/b');
    expect(repositoryOf({ kind: 's3', endpoint: 'https://s3.example/', bucket: 'taos' })).toBe('s3:https://s3.example/taos');
    expect(repositoryOf({ kind: 'local', path: '/media/usb' })).toBe('/media/usb');
  });
});

describe('schedules, sizes and runs in words', () => {
  it('schedules', () => {
    expect(describeSchedule({ kind: 'off' })).toBe('only when you press Back up now');
    expect(describeSchedule({ kind: 'daily', hour: 3, minute: 5 })).toBe('every day at 03:05 UTC');
    expect(describeSchedule({ kind: 'every_hours', hours: 1 })).toBe('every hour');
    expect(describeSchedule({ kind: 'every_hours', hours: 6 })).toBe('every 6 hours');
  });

  it('sizes', () => {
    expect(bytes(null)).toBe('—');
    expect(bytes(999)).toBe('999 B');
    expect(bytes(1500)).toBe('1.5 kB');
    expect(bytes(123_456_789)).toBe('123 MB');
  });

  it('the latest run and the last good one', () => {
    expect(lastRuns([])).toEqual({ latest: null, lastGood: null });
    const runs = [run('c', 'failed'), run('b', 'succeeded'), run('a', 'succeeded')];
    expect(lastRuns(runs).latest?.id).toBe('c');
    expect(lastRuns(runs).lastGood?.id).toBe('b');
  });

  it('progress events are checked and clamped', () => {
    expect(progressOf(null)).toBeNull();
    expect(progressOf({ phase: 'uploading' })).toBeNull();
    expect(progressOf({ run_id: 'r', phase: 'uploading', percent_done: 1.7 })?.percent_done).toBe(1);
    expect(progressOf({ run_id: 'r', phase: 'staging', percent_done: 'x' })?.percent_done).toBe(0);
  });
  it('says every phase in words, the pause for chat with when it goes on', () => {
    const phases = ['staging', 'containers', 'paused_for_chat', 'uploading', 'retention', 'archives'];
    for (const phase of phases) expect(phaseWords(phase)).not.toBe(phase);
    expect(phaseWords('paused_for_chat')).toContain('quiet for a minute');
  });
});

describe('drill words', () => {
  const drill = (state: 'running' | 'passed' | 'failed', error: string | null = null) => ({
    id: 'd', state, reason: 'manual' as const, snapshot_id: 'abcdef0123', created_at: '2026-01-01T00:00:00Z', finished_at: null, checks: [], error,
  });
  it('says the outcome in words, with the reason when it failed', () => {
    expect(drillWords(drill('passed'))).toBe('Passed: the backup restores');
    expect(drillWords(drill('running'))).toBe('Running now');
    expect(drillWords(drill('failed', 'restic check: pack damaged'))).toBe('Failed: restic check: pack damaged');
    expect(drillWords(drill('failed'))).toBe('Failed: no reason given');
  });
  it('names each check, one agent container per line', () => {
    expect(checkWords('container:taos-helper')).toBe('Agent container taos-helper boots');
    expect(checkWords('bridge_round_trip:taos-helper')).toBe(
      'Agent in taos-helper answers over the bridge',
    );
    expect(checkWords('repository')).toBe('Repository is readable');
    expect(checkWords('something-new')).toBe('something-new');
  });
  it("follows the shown drill's step from its progress events only", () => {
    expect(drillStepOf({ drill_id: 'd', step: 'restore' }, 'd')).toBe('restore');
    expect(drillStepOf({ drill_id: 'other', step: 'restore' }, 'd')).toBeNull();
    expect(drillStepOf({ drill_id: 'd' }, 'd')).toBeNull();
    expect(drillStepOf({ drill_id: 'd', step: 3 }, 'd')).toBeNull();
    expect(drillStepOf(null, 'd')).toBeNull();
    expect(drillStepOf({ drill_id: 'd', step: 'restore' }, undefined)).toBeNull();
  });
  it('a drill can start only after a backup, with no backup or drill running', () => {
    const good = run('r', 'succeeded');
    expect(drillBlocked({ lastGood: good, backupRunning: false, drill: null })).toBeNull();
    expect(drillBlocked({ lastGood: good, backupRunning: false, drill: drill('passed') })).toBeNull();
    expect(drillBlocked({ lastGood: null, backupRunning: false, drill: null })).toMatch(/back up first/);
    expect(drillBlocked({ lastGood: good, backupRunning: true, drill: null })).toMatch(/backup is running/);
    expect(drillBlocked({ lastGood: good, backupRunning: false, drill: drill('running') })).toMatch(/drill is running/);
  });
});
