// Messages written but not yet stored by the host, kept across reloads: a browser tab that is
// closed or reloaded while the host is out of reach sends them when it next runs. The app has
// its own outbox in the shell (taos-client's SQLite cache), so only the browser uses this one.

export interface OutboxEntry {
  clientId: string;
  channelId: string;
  /** Who wrote it (`user:<name>`): another account signing in on this browser never sends it. */
  author: string;
  content: string;
  createdAt: string;
  /** The thread it replies in (its root), if any. */
  threadId?: string;
}

export interface Outbox {
  put(entry: OutboxEntry): Promise<void>;
  remove(clientId: string): Promise<void>;
  /** Everything `author` has waiting, oldest first. */
  pending(author: string): Promise<OutboxEntry[]>;
}

const byAge = (a: OutboxEntry, b: OutboxEntry) => a.createdAt.localeCompare(b.createdAt);

/** For tests, and where IndexedDB is missing: lives as long as the page. */
export class MemoryOutbox implements Outbox {
  readonly entries = new Map<string, OutboxEntry>();
  async put(entry: OutboxEntry) {
    this.entries.set(entry.clientId, { ...entry });
  }
  async remove(clientId: string) {
    this.entries.delete(clientId);
  }
  async pending(author: string) {
    return [...this.entries.values()].filter((e) => e.author === author).sort(byAge);
  }
}

const DB = 'taos';
const STORE = 'outbox';

function done<T>(request: IDBRequest<T>): Promise<T> {
  return new Promise((resolve, reject) => {
    request.onsuccess = () => resolve(request.result);
    request.onerror = () => reject(request.error);
  });
}

/** IndexedDB, one object store keyed by client id. */
export class IdbOutbox implements Outbox {
  private db: Promise<IDBDatabase> | null = null;

  constructor(private readonly factory: IDBFactory = indexedDB) {}

  private open(): Promise<IDBDatabase> {
    this.db ??= new Promise((resolve, reject) => {
      const req = this.factory.open(DB, 1);
      req.onupgradeneeded = () => req.result.createObjectStore(STORE, { keyPath: 'clientId' });
      req.onsuccess = () => resolve(req.result);
      req.onerror = () => reject(req.error);
    });
    return this.db;
  }

  private async store(mode: IDBTransactionMode): Promise<IDBObjectStore> {
    return (await this.open()).transaction(STORE, mode).objectStore(STORE);
  }

  async put(entry: OutboxEntry) {
    await done((await this.store('readwrite')).put(entry));
  }

  async remove(clientId: string) {
    await done((await this.store('readwrite')).delete(clientId));
  }

  async pending(author: string) {
    const all = (await done((await this.store('readonly')).getAll())) as OutboxEntry[];
    return all.filter((e) => e.author === author).sort(byAge);
  }

  /** Forgets every entry (signing out on a shared computer). */
  async clear() {
    await done((await this.store('readwrite')).clear());
  }
}

/** The browser's outbox, or a page-long one where IndexedDB is unavailable (private modes). */
export function browserOutbox(): Outbox {
  return typeof indexedDB === 'undefined' ? new MemoryOutbox() : new IdbOutbox();
}
