/**
 * What the client must remember across restarts: the {@link ClientStore} interface and
 * the {@link MemoryStore}. The browser's {@link IndexedDbStore} is in `indexeddb.ts`;
 * Node's `FileStore` is exported from `messenger-js/node`.
 *
 * The client keeps three things in its store (the same as the Rust SDK's `ClientStore`):
 *
 * - the **outbox**: every send not yet confirmed by the server, with its temp id, in the
 *   order the app made them. A send is saved before it is written to the socket, so an
 *   app closed with messages in its outbox resends each of them, under the same temp id,
 *   when it starts again on the same store (the server de-duplicates by temp id: a
 *   message the server already stored is not stored twice);
 * - each thread's **position**: the last seq handed to the app's `message` listeners,
 *   and the `DELIVERED` ack still owed for it. A restarted client resumes every thread
 *   after that seq, so nothing the app already had is delivered again;
 * - **receipts**: the highest delivered and read seq of every member the client has
 *   shown, per thread, so a stale receipt is not shown after a restart either.
 *
 * The client reads the whole state once ({@link ClientStore.load}) and then hands the
 * store batches of changes ({@link ClientStore.save}), one at a time, each to be applied
 * atomically.
 *
 * @module
 */

/** One send waiting for the server's `message_sent`. */
export interface OutboxEntry {
  /** The thread. */
  threadId: string;
  /** The idempotency key: the same temp id is sent on every attempt. */
  tempId: string;
  /** The text. */
  text: string;
  /** When the app made the send (ms since the epoch). */
  queuedAt: number;
}

/** Which send: the outbox is keyed by (thread, temp id). */
export interface OutboxKey {
  /** The thread. */
  threadId: string;
  /** The send's temp id. */
  tempId: string;
}

/** A `DELIVERED` ack the client owes the server for a thread. */
export interface AckDue {
  /** The newest message from someone else handed to the app. */
  seq: number;
  /** Its id (the protocol acks by message id). */
  messageId: string;
}

/** Where a thread stands for the app. */
export interface ThreadPosition {
  /** The thread. */
  threadId: string;
  /** The last seq handed to the app. Never moves backwards. */
  heldSeq: number;
  /** The `DELIVERED` ack not yet written to the server, if any. */
  ackDue?: AckDue;
}

/** A member's receipt watermarks in a thread. */
export interface ReceiptMark {
  /** The thread. */
  threadId: string;
  /** Whose receipts. */
  userId: string;
  /** Highest delivered seq. */
  deliveredSeq: number;
  /** Highest read seq. */
  readSeq: number;
}

/** Everything a store holds, as {@link ClientStore.load} returns it. */
export interface StoredState {
  /**
   * The user this store belongs to (set on the first `welcome`). A client whose token
   * names another user stops with a `wrong_user` error.
   */
  userId?: string;
  /**
   * The first catch-up ran: threads the store has no position for start at seq 1 from
   * now on (before it, `initialSync` decides).
   */
  synced: boolean;
  /** Unconfirmed sends, oldest first. */
  outbox: OutboxEntry[];
  /** Each thread's position, one per thread. */
  threads: ThreadPosition[];
  /** Receipt watermarks, one per (thread, user). */
  receipts: ReceiptMark[];
}

/**
 * A batch of changes; {@link ClientStore.save} applies it atomically, in this order:
 * metadata, outbox additions, outbox removals, positions, receipts. Absent fields
 * change nothing.
 */
export interface StoreChanges {
  /** Set the store's user. */
  userId?: string;
  /** `true`: mark the first catch-up done (`false` or absent leaves the flag as it is). */
  synced?: boolean;
  /**
   * Append these sends to the outbox, in order. A (thread, temp id) already there is
   * left as it is (the first one stays).
   */
  outboxAdded?: OutboxEntry[];
  /** Remove these (thread, temp id) sends: confirmed or refused for good. */
  outboxRemoved?: OutboxKey[];
  /**
   * Upsert these positions: `heldSeq` becomes the larger of the stored and the given
   * one; `ackDue` is replaced as given (absent clears it).
   */
  threads?: ThreadPosition[];
  /** Merge these receipts: each watermark becomes the larger of the stored and the given. */
  receipts?: ReceiptMark[];
}

/**
 * Where the client keeps what must survive a restart. One store belongs to one client
 * at a time; the client calls `save` one batch at a time and never before `load`
 * returned. Implementations: {@link MemoryStore} (the default), `IndexedDbStore`
 * (browsers), `FileStore` (Node, from `messenger-js/node`), or your own: check it with
 * the same contract tests (`messenger-js/test/store-contract.ts`).
 */
export interface ClientStore {
  /** Everything stored. */
  load(): Promise<StoredState>;
  /** Applies `changes` atomically: all of them or none. Rejects when nothing was applied. */
  save(changes: StoreChanges): Promise<void>;
}

/** A new, empty state. */
export function emptyState(): StoredState {
  return { synced: false, outbox: [], threads: [], receipts: [] };
}

/** A deep copy of a state (stores hand out copies, so callers cannot change them). */
export function cloneState(s: StoredState): StoredState {
  const out: StoredState = {
    synced: s.synced,
    outbox: s.outbox.map((e) => ({ ...e })),
    threads: s.threads.map((t) => {
      const p: ThreadPosition = { threadId: t.threadId, heldSeq: t.heldSeq };
      if (t.ackDue) p.ackDue = { ...t.ackDue };
      return p;
    }),
    receipts: s.receipts.map((r) => ({ ...r })),
  };
  if (s.userId !== undefined) out.userId = s.userId;
  return out;
}

const pair = (a: string, b: string) => `${a}\u0000${b}`;

/**
 * Applies `changes` to `state` in place with the {@link ClientStore.save} semantics;
 * the reference for every implementation (the memory and file stores use it).
 */
export function applyChanges(state: StoredState, changes: StoreChanges): void {
  if (changes.userId !== undefined) state.userId = changes.userId;
  if (changes.synced) state.synced = true;
  const keys = new Set(state.outbox.map((e) => pair(e.threadId, e.tempId)));
  for (const e of changes.outboxAdded ?? []) {
    const k = pair(e.threadId, e.tempId);
    if (keys.has(k)) continue;
    keys.add(k);
    state.outbox.push({ threadId: e.threadId, tempId: e.tempId, text: e.text, queuedAt: e.queuedAt });
  }
  if (changes.outboxRemoved && changes.outboxRemoved.length > 0) {
    const gone = new Set(changes.outboxRemoved.map((r) => pair(r.threadId, r.tempId)));
    state.outbox = state.outbox.filter((e) => !gone.has(pair(e.threadId, e.tempId)));
  }
  for (const p of changes.threads ?? []) {
    let cur = state.threads.find((t) => t.threadId === p.threadId);
    if (!cur) {
      cur = { threadId: p.threadId, heldSeq: p.heldSeq };
      state.threads.push(cur);
    }
    cur.heldSeq = Math.max(cur.heldSeq, p.heldSeq);
    if (p.ackDue) cur.ackDue = { seq: p.ackDue.seq, messageId: p.ackDue.messageId };
    else delete cur.ackDue;
  }
  for (const r of changes.receipts ?? []) {
    const cur = state.receipts.find((c) => c.threadId === r.threadId && c.userId === r.userId);
    if (cur) {
      cur.deliveredSeq = Math.max(cur.deliveredSeq, r.deliveredSeq);
      cur.readSeq = Math.max(cur.readSeq, r.readSeq);
    } else {
      state.receipts.push({ threadId: r.threadId, userId: r.userId, deliveredSeq: r.deliveredSeq, readSeq: r.readSeq });
    }
  }
}

/**
 * The default store: everything in memory, gone with the page or process. Pass the
 * same instance to a new client to carry the state over within one process (what the
 * tests do to play an app restart).
 */
export class MemoryStore implements ClientStore {
  private state = emptyState();

  /** Everything stored (a copy). */
  async load(): Promise<StoredState> {
    return cloneState(this.state);
  }

  /** Applies a batch. */
  async save(changes: StoreChanges): Promise<void> {
    const next = cloneState(this.state);
    applyChanges(next, changes);
    this.state = next;
  }
}
