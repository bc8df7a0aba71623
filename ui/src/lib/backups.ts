// Pure helpers for the Backups screen: what a destination, schedule and run say in words, and
// the form's fields turned into the host's shapes. No DOM, so they are unit-tested.
import type { components } from './api/schema';

type S = components['schemas'];
export type BackupDestination = S['BackupDestination'];
export type BackupSchedule = S['BackupSchedule'];
export type BackupRun = S['BackupRun'];
export type BackupSettings = S['BackupSettings'];
export type BackupCredentials = S['BackupCredentials'];
export type DestinationKind = BackupDestination['kind'];

/** The form's fields, all strings as inputs hold them. */
export interface DestinationFields {
  kind: DestinationKind;
  path: string;
  host: string;
  port: string;
  user: string;
  hostKey: string;
  endpoint: string;
  bucket: string;
}

export function emptyFields(): DestinationFields {
  return { kind: 'local', path: '', host: '', port: '22', user: '', hostKey: '', endpoint: '', bucket: '' };
}

export function fieldsOf(d: BackupDestination | null | undefined): DestinationFields {
  const f = emptyFields();
  if (!d) return f;
  f.kind = d.kind;
  if (d.kind === 'local') f.path = d.path;
  if (d.kind === 'sftp') {
    f.host = d.host;
    f.port = String(d.port);
    f.user = d.user;
    f.path = d.path;
    f.hostKey = d.host_key;
  }
  if (d.kind === 's3') {
    f.endpoint = d.endpoint;
    f.bucket = d.bucket;
  }
  return f;
}

/** The destination the fields describe, or the first thing missing, in words. */
export function destinationOf(f: DestinationFields): { destination: BackupDestination } | { missing: string } {
  const t = (s: string) => s.trim();
  if (f.kind === 'local') {
    if (!t(f.path)) return { missing: 'Enter the folder the backups go to.' };
    return { destination: { kind: 'local', path: t(f.path) } };
  }
  if (f.kind === 'sftp') {
    if (!t(f.host)) return { missing: "Enter the SFTP server's name or address." };
    const port = Number(t(f.port) || '22');
    if (!Number.isInteger(port) || port < 1 || port > 65535) return { missing: 'The port is a number from 1 to 65535.' };
    if (!t(f.user)) return { missing: 'Enter the user on the SFTP server.' };
    if (!t(f.path)) return { missing: 'Enter the folder on the SFTP server.' };
    if (!t(f.hostKey)) return { missing: "Paste the server's host key (ssh-keyscan prints it)." };
    return {
      destination: { kind: 'sftp', host: t(f.host), port, user: t(f.user), path: t(f.path), host_key: t(f.hostKey) },
    };
  }
  if (!t(f.endpoint)) return { missing: "Enter the S3 endpoint's address (https://…)." };
  if (!t(f.bucket)) return { missing: 'Enter the bucket name.' };
  return { destination: { kind: 's3', endpoint: t(f.endpoint), bucket: t(f.bucket) } };
}

export function describeDestination(d: BackupDestination | null | undefined): string {
  if (!d) return 'nowhere yet';
  if (d.kind === 'local') return `the folder ${d.path}`;
  if (d.kind === 'sftp') return `${d.user}@${d.host}${d.port === 22 ? '' : `:${d.port}`}:${d.path} (SFTP)`;
  return `the bucket ${d.bucket} at ${d.endpoint} (S3)`;
}

/** What restic's `-r` takes for this destination, for the recovery sheet. */
export function repositoryOf(d: BackupDestination): string {
  if (d.kind === 'local') return d.path;
  if (d.kind === 'sftp') return `sftp://${d.user}@${d.host}${d.port === 22 ? '' : `:${d.port}`}${d.path.startsWith('/') ? '' : '/'}${d.path}`;
  return `s3:${d.endpoint.replace(/\/+$/, '')}/${d.bucket}`;
}

const pad = (n: number) => String(n).padStart(2, '0');

export function describeSchedule(s: BackupSchedule | null | undefined): string {
  if (!s || s.kind === 'off') return 'only when you press Back up now';
  if (s.kind === 'daily') return `every day at ${pad(s.hour)}:${pad(s.minute)} UTC`;
  return s.hours === 1 ? 'every hour' : `every ${s.hours} hours`;
}

/** Bytes in the units people read (1000-based, like disks are sold). */
export function bytes(n: number | null | undefined): string {
  if (n == null) return '—';
  const units = ['B', 'kB', 'MB', 'GB', 'TB'];
  let v = n;
  let i = 0;
  while (v >= 1000 && i < units.length - 1) {
    v /= 1000;
    i++;
  }
  return `${i === 0 ? v : v.toFixed(v < 10 ? 1 : 0)} ${units[i]}`;
}

/** The newest run that finished well, and the newest run of all (the list is newest first). */
export function lastRuns(runs: BackupRun[]): { latest: BackupRun | null; lastGood: BackupRun | null } {
  return { latest: runs[0] ?? null, lastGood: runs.find((r) => r.state === 'succeeded') ?? null };
}

export interface Progress {
  run_id: string;
  phase: string;
  percent_done: number;
  bytes_done?: number;
  total_bytes?: number;
}

/** A `backup.progress` event's data, checked (events are typed loosely in the schema). */
export function progressOf(data: unknown): Progress | null {
  if (typeof data !== 'object' || data === null) return null;
  const d = data as Record<string, unknown>;
  if (typeof d.run_id !== 'string' || typeof d.phase !== 'string') return null;
  const pct = typeof d.percent_done === 'number' && Number.isFinite(d.percent_done) ? d.percent_done : 0;
  return {
    run_id: d.run_id,
    phase: d.phase,
    percent_done: Math.min(1, Math.max(0, pct)),
    bytes_done: typeof d.bytes_done === 'number' ? d.bytes_done : undefined,
    total_bytes: typeof d.total_bytes === 'number' ? d.total_bytes : undefined,
  };
}

export function phaseWords(phase: string): string {
  if (phase === 'staging') return 'Copying the database and files';
  if (phase === 'containers') return "Exporting the agents' containers";
  if (phase === 'paused_for_chat')
    return 'Paused while people chat: it goes on once chat has been quiet for a minute';
  if (phase === 'uploading') return 'Encrypting and sending';
  if (phase === 'retention') return 'Removing old backups';
  if (phase === 'archives') return "Moving archived agents' containers into the backup";
  return phase;
}

export type BackupDrill = S['BackupDrill'];
export type ArchiveTarget = S['ArchiveTarget'];

/** A drill's outcome in words. */
export function drillWords(d: BackupDrill): string {
  if (d.state === 'running') return 'Running now';
  if (d.state === 'passed') return 'Passed: the backup restores';
  return `Failed: ${d.error ?? 'no reason given'}`;
}

/** A drill check's name in words; `container:<name>` is one agent's container, and
 * `bridge_round_trip:<name>` its restored copy answering a message over the bridge. */
export function checkWords(name: string): string {
  if (name.startsWith('container:')) return `Agent container ${name.slice('container:'.length)} boots`;
  if (name.startsWith('bridge_round_trip:'))
    return `Agent in ${name.slice('bridge_round_trip:'.length)} answers over the bridge`;
  if (name === 'repository') return 'Repository is readable';
  if (name === 'restore') return 'Snapshot restores';
  if (name === 'database') return 'Database and agents match';
  return name;
}

/** A `backup.drill_progress` event's check that starts now, for the drill shown (else null). */
export function drillStepOf(data: unknown, drillId: string | undefined): string | null {
  if (typeof data !== 'object' || data === null || !drillId) return null;
  const d = data as Record<string, unknown>;
  if (d.drill_id !== drillId || typeof d.step !== 'string') return null;
  return d.step;
}

/** Why "Run a restore drill now" can't be pressed, in words; null when it can. The host
 * refuses the same cases (409); saying so here saves a failed click. */
export function drillBlocked(o: {
  lastGood: BackupRun | null;
  backupRunning: boolean;
  drill: BackupDrill | null;
}): string | null {
  if (o.drill?.state === 'running') return 'A restore drill is running.';
  if (o.backupRunning) return 'A backup is running; drill when it has finished.';
  if (!o.lastGood) return 'A drill restores the newest backup: back up first.';
  return null;
}
