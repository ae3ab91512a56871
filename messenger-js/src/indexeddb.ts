/**
 * The browser's persistent store: {@link IndexedDbStore}, on the raw IndexedDB API (no
 * dependency: the store needs one transaction per save over four object stores, which
 * the raw API does in about a hundred lines; a wrapper such as `idb` would save little).
 *
 * @module
 */

import { MessengerError } from "./errors.js";
import type { ClientStore, OutboxEntry, ReceiptMark, StoreChanges, StoredState, ThreadPosition } from "./store.js";

/** The schema version; a database made by a newer SDK is refused, never rewritten. */
const VERSION = 1;
const META = "meta";
const OUTBOX = "outbox";
const THREADS = "threads";
const RECEIPTS = "receipts";
const ALL = [META, OUTBOX, THREADS, RECEIPTS];

/** An outbox row: the entry and its place in the outbox. */
interface OutboxRow extends OutboxEntry {
  order: number;
}

interface MetaRow {
  key: "user" | "synced" | "nextOrder";
  value: unknown;
}

function failure(what: string, e: unknown): MessengerError {
  const why = e instanceof Error || (typeof DOMException !== "undefined" && e instanceof DOMException) ? (e as Error).message : String(e);
  return new MessengerError("store", `IndexedDB ${what} failed: ${why}`, { cause: e });
}

/** The result of one request, as a promise (for reads outside a write batch). */
function request<T>(r: IDBRequest<T>): Promise<T> {
  return new Promise((resolve, reject) => {
    r.onsuccess = () => resolve(r.result);
    r.onerror = () => reject(r.error);
  });
}

/** Resolves when the transaction committed; rejects when it aborted. */
function committed(tx: IDBTransaction): Promise<void> {
  return new Promise((resolve, reject) => {
    tx.oncomplete = () => resolve();
    tx.onabort = () => reject(tx.error ?? new Error("transaction aborted"));
    tx.onerror = () => {
      // Reported again by onabort with the same error.
    };
  });
}

/**
 * A {@link ClientStore} in an IndexedDB database of the page's origin: the outbox,
 * positions and receipts survive closing the tab, reloading and restarting the browser.
 * Every {@link save} is one `readwrite` transaction over the four object stores, so a
 * batch is applied whole or not at all.
 *
 * Use one database per user (for example `messenger:<user>`): a client whose token
 * names another user than the one the database belongs to stops with `wrong_user`.
 * Two tabs may open the same database: both resend its outbox under the same temp ids
 * and the server stores each message once.
 *
 * ```ts
 * const store = await IndexedDbStore.open(`messenger:${user}`);
 * const client = new MessengerClient({ url, token, store });
 * ```
 */
export class IndexedDbStore implements ClientStore {
  private constructor(private readonly db: IDBDatabase) {
    // Another tab upgrades or deletes the database: let it.
    db.onversionchange = () => db.close();
  }

  /**
   * Opens (or creates) the database `name`. Rejects with a `store` error when
   * IndexedDB is missing or refuses (private modes, quota, a database of a newer SDK).
   */
  static async open(name = "messenger", factory?: IDBFactory): Promise<IndexedDbStore> {
    const idb = factory ?? (globalThis as { indexedDB?: IDBFactory }).indexedDB;
    if (!idb) throw new MessengerError("store", "IndexedDB is not available here (pass an IDBFactory, or use another store)");
    let req: IDBOpenDBRequest;
    try {
      req = idb.open(name, VERSION);
    } catch (e) {
      throw failure(`open of ${name}`, e);
    }
    req.onupgradeneeded = () => {
      const db = req.result;
      if (!db.objectStoreNames.contains(META)) db.createObjectStore(META, { keyPath: "key" });
      if (!db.objectStoreNames.contains(OUTBOX)) db.createObjectStore(OUTBOX, { keyPath: ["threadId", "tempId"] });
      if (!db.objectStoreNames.contains(THREADS)) db.createObjectStore(THREADS, { keyPath: "threadId" });
      if (!db.objectStoreNames.contains(RECEIPTS)) db.createObjectStore(RECEIPTS, { keyPath: ["threadId", "userId"] });
    };
    const db = await new Promise<IDBDatabase>((resolve, reject) => {
      req.onsuccess = () => resolve(req.result);
      req.onerror = () => reject(failure(`open of ${name}`, req.error));
      req.onblocked = () => reject(new MessengerError("store", `IndexedDB open of ${name} is blocked by another tab holding an older version`));
    });
    return new IndexedDbStore(db);
  }

  /** Deletes the database `name` (for example when the user signs out). */
  static async delete(name = "messenger", factory?: IDBFactory): Promise<void> {
    const idb = factory ?? (globalThis as { indexedDB?: IDBFactory }).indexedDB;
    if (!idb) return;
    try {
      await request(idb.deleteDatabase(name));
    } catch (e) {
      throw failure(`delete of ${name}`, e);
    }
  }

  /** Closes the connection to the database (after the client is closed). */
  close(): void {
    this.db.close();
  }

  /** Everything stored. */
  async load(): Promise<StoredState> {
    try {
      const tx = this.db.transaction(ALL, "readonly");
      const [meta, outbox, threads, receipts] = await Promise.all([
        request(tx.objectStore(META).getAll() as IDBRequest<MetaRow[]>),
        request(tx.objectStore(OUTBOX).getAll() as IDBRequest<OutboxRow[]>),
        request(tx.objectStore(THREADS).getAll() as IDBRequest<ThreadPosition[]>),
        request(tx.objectStore(RECEIPTS).getAll() as IDBRequest<ReceiptMark[]>),
      ]);
      const state: StoredState = {
        synced: meta.some((m) => m.key === "synced" && m.value === true),
        outbox: outbox
          .sort((a, b) => a.order - b.order)
          .map((r) => ({ threadId: r.threadId, tempId: r.tempId, text: r.text, queuedAt: r.queuedAt })),
        threads: threads.map((t) => {
          const p: ThreadPosition = { threadId: t.threadId, heldSeq: t.heldSeq };
          if (t.ackDue) p.ackDue = { seq: t.ackDue.seq, messageId: t.ackDue.messageId };
          return p;
        }),
        receipts: receipts.map((r) => ({ threadId: r.threadId, userId: r.userId, deliveredSeq: r.deliveredSeq, readSeq: r.readSeq })),
      };
      const user = meta.find((m) => m.key === "user")?.value;
      if (typeof user === "string") state.userId = user;
      return state;
    } catch (e) {
      throw failure("load", e);
    }
  }

  /**
   * Applies a batch in one transaction: the reads it needs (existing outbox keys,
   * positions and receipts, the outbox counter) first, then every write in the order
   * the contract gives.
   */
  async save(changes: StoreChanges): Promise<void> {
    let tx: IDBTransaction;
    try {
      tx = this.db.transaction(ALL, "readwrite");
    } catch (e) {
      throw failure("save", e);
    }
    const done = committed(tx);
    const meta = tx.objectStore(META);
    const outbox = tx.objectStore(OUTBOX);
    const threads = tx.objectStore(THREADS);
    const receipts = tx.objectStore(RECEIPTS);
    const added = changes.outboxAdded ?? [];
    const positions = changes.threads ?? [];
    const marks = changes.receipts ?? [];
    try {
      // Reads, all in this transaction (nothing else can write in between).
      const [next, present, held, had] = await Promise.all([
        request(meta.get("nextOrder") as IDBRequest<MetaRow | undefined>),
        Promise.all(added.map((e) => request(outbox.getKey([e.threadId, e.tempId])))),
        Promise.all(positions.map((p) => request(threads.get(p.threadId) as IDBRequest<ThreadPosition | undefined>))),
        Promise.all(marks.map((r) => request(receipts.get([r.threadId, r.userId]) as IDBRequest<ReceiptMark | undefined>))),
      ]);
      // Writes, queued synchronously so the transaction stays active.
      if (changes.userId !== undefined) meta.put({ key: "user", value: changes.userId });
      if (changes.synced) meta.put({ key: "synced", value: true });
      let order = typeof next?.value === "number" ? next.value : 0;
      const seen = new Set<string>();
      added.forEach((e, i) => {
        const k = `${e.threadId}\u0000${e.tempId}`;
        if (present[i] !== undefined || seen.has(k)) return;
        seen.add(k);
        const row: OutboxRow = { threadId: e.threadId, tempId: e.tempId, text: e.text, queuedAt: e.queuedAt, order: order++ };
        outbox.put(row);
      });
      meta.put({ key: "nextOrder", value: order });
      for (const r of changes.outboxRemoved ?? []) outbox.delete([r.threadId, r.tempId]);
      // Within one batch a later entry for the same thread or member sees the earlier.
      const posNow = new Map<string, ThreadPosition | undefined>();
      positions.forEach((p, i) => {
        const cur = posNow.has(p.threadId) ? posNow.get(p.threadId) : held[i];
        const row: ThreadPosition = { threadId: p.threadId, heldSeq: Math.max(cur?.heldSeq ?? 0, p.heldSeq) };
        if (p.ackDue) row.ackDue = { seq: p.ackDue.seq, messageId: p.ackDue.messageId };
        posNow.set(p.threadId, row);
        threads.put(row);
      });
      const marksNow = new Map<string, ReceiptMark | undefined>();
      marks.forEach((r, i) => {
        const k = `${r.threadId}\u0000${r.userId}`;
        const cur = marksNow.has(k) ? marksNow.get(k) : had[i];
        const row: ReceiptMark = {
          threadId: r.threadId,
          userId: r.userId,
          deliveredSeq: Math.max(cur?.deliveredSeq ?? 0, r.deliveredSeq),
          readSeq: Math.max(cur?.readSeq ?? 0, r.readSeq),
        };
        marksNow.set(k, row);
        receipts.put(row);
      });
    } catch (e) {
      try {
        tx.abort();
      } catch {
        // already finished
      }
      await done.catch(() => {});
      throw failure("save", e);
    }
    try {
      await done;
    } catch (e) {
      throw failure("save", e);
    }
  }
}
