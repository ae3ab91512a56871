/// <reference types="node" />
/**
 * Node's persistent store: {@link FileStore}, one JSON file written atomically.
 *
 * @module
 */

import { randomBytes } from "node:crypto";
import { unlinkSync } from "node:fs";
import { mkdir, open, readFile, rename, rm } from "node:fs/promises";
import path from "node:path";

import { MessengerError } from "./errors.js";
import { applyChanges, cloneState, emptyState, type ClientStore, type StoreChanges, type StoredState } from "./store.js";

/** The file's format version; a file of a newer SDK is refused, never rewritten. */
const FORMAT = 1;

function failure(what: string, e: unknown): MessengerError {
  return new MessengerError("store", `${what}: ${e instanceof Error ? e.message : String(e)}`, { cause: e });
}

function isNumber(v: unknown): v is number {
  return typeof v === "number" && Number.isFinite(v);
}

/** The lock files this process holds (absolute paths), released on `close` or exit. */
const held = new Set<string>();
let exitHook = false;

/** Whether a process with this id runs (on this machine). */
function running(pid: number): boolean {
  try {
    process.kill(pid, 0);
    return true;
  } catch (e) {
    // EPERM: it runs under another user.
    return (e as NodeJS.ErrnoException).code === "EPERM";
  }
}

/**
 * Takes `lock` for this process: creates it exclusively with our pid. A lock left by a
 * process that no longer runs (killed) is taken over; one held by a running process,
 * or by another `FileStore` of this process, is refused with what to do.
 */
async function takeLock(lock: string, file: string): Promise<void> {
  if (held.has(lock)) {
    throw new MessengerError("store", `the client store ${file} is already open in this process (close() the other FileStore first: one client per file)`);
  }
  await mkdir(path.dirname(lock), { recursive: true }).catch((e) => {
    throw failure(`cannot create the folder of the client store ${file}`, e);
  });
  for (let attempt = 0; attempt < 2; attempt++) {
    try {
      const fh = await open(lock, "wx", 0o600);
      try {
        await fh.writeFile(`${process.pid}\n`, "utf8");
      } finally {
        await fh.close();
      }
      held.add(lock);
      if (!exitHook) {
        exitHook = true;
        // A process that exits without close() still frees its files; a killed one
        // leaves the lock behind, and the next open takes it over (its pid is gone).
        process.once("exit", () => {
          for (const l of held) {
            try {
              unlinkSync(l);
            } catch {
              // Already gone.
            }
          }
        });
      }
      return;
    } catch (e) {
      if ((e as NodeJS.ErrnoException).code !== "EEXIST") throw failure(`cannot lock the client store ${file} (${lock})`, e);
    }
    const owner = Number.parseInt(await readFile(lock, "utf8").catch(() => ""), 10);
    if (Number.isInteger(owner) && owner > 0 && owner !== process.pid && running(owner)) {
      throw new MessengerError(
        "store",
        `the client store ${file} is in use by process ${owner} (one client per file: stop that process or use another file; if no such process runs, remove ${lock})`,
      );
    }
    // Left by a process that is gone (or by this one before a crash of its own state):
    // take it over.
    await rm(lock, { force: true }).catch(() => {});
  }
  throw new MessengerError("store", `cannot lock the client store ${file}: ${lock} keeps coming back (another process opens it at the same time)`);
}

/** Checks a parsed file; returns what is wrong, or undefined. */
function invalid(v: unknown): string | undefined {
  if (typeof v !== "object" || v === null) return "not a JSON object";
  const o = v as Record<string, unknown>;
  if (o.format !== FORMAT) return `format ${String(o.format)} (this SDK reads format ${FORMAT})`;
  if (o.userId !== undefined && typeof o.userId !== "string") return "userId is not a string";
  if (typeof o.synced !== "boolean") return "synced is not a boolean";
  const arrays = ["outbox", "threads", "receipts"] as const;
  for (const a of arrays) if (!Array.isArray(o[a])) return `${a} is not an array`;
  for (const e of o.outbox as Record<string, unknown>[]) {
    if (typeof e?.threadId !== "string" || typeof e.tempId !== "string" || typeof e.text !== "string" || !isNumber(e.queuedAt)) {
      return "an outbox entry is malformed";
    }
  }
  for (const t of o.threads as Record<string, unknown>[]) {
    if (typeof t?.threadId !== "string" || !isNumber(t.heldSeq)) return "a thread position is malformed";
    const due = t.ackDue as Record<string, unknown> | undefined;
    if (due !== undefined && (!isNumber(due?.seq) || typeof due.messageId !== "string")) return "an ack due is malformed";
  }
  for (const r of o.receipts as Record<string, unknown>[]) {
    if (typeof r?.threadId !== "string" || typeof r.userId !== "string" || !isNumber(r.deliveredSeq) || !isNumber(r.readSeq)) {
      return "a receipt mark is malformed";
    }
  }
  return undefined;
}

/** Reads the state in `abs` (empty when there is no file yet). */
async function readState(abs: string): Promise<StoredState> {
  let text: string;
  try {
    text = await readFile(abs, "utf8");
  } catch (e) {
    if ((e as NodeJS.ErrnoException).code === "ENOENT") return emptyState();
    throw failure(`cannot read the client store ${abs}`, e);
  }
  let parsed: unknown;
  try {
    parsed = JSON.parse(text);
  } catch (e) {
    throw failure(`the client store ${abs} is not JSON (move it away to start empty)`, e);
  }
  const why = invalid(parsed);
  if (why) throw new MessengerError("store", `the client store ${abs} is not a messenger-js store: ${why} (move it away to start empty)`);
  const o = parsed as StoredState;
  const state = cloneState({ synced: o.synced, outbox: o.outbox, threads: o.threads, receipts: o.receipts });
  if (o.userId !== undefined) state.userId = o.userId;
  return state;
}

/** Releases a lock this process holds. */
function release(lock: string): void {
  if (!held.delete(lock)) return;
  try {
    unlinkSync(lock);
  } catch {
    // Already gone (removed by hand): nothing to release.
  }
}

function closedError(file: string): MessengerError {
  return new MessengerError("store", `the client store ${file} is closed`);
}

/**
 * A {@link ClientStore} in one JSON file, for Node apps (bots, command-line tools,
 * servers that talk as a user): the outbox, positions and receipts survive the process.
 *
 * Every save writes the whole state to a temporary file next to it, flushes it to disk
 * (`fsync`), renames it over the file and flushes the folder, so the file always holds
 * one complete state: the old or the new, never a torn mix. The state is small (the
 * unconfirmed sends and one line per thread), so rewriting it whole is cheap next to
 * the `fsync`.
 *
 * One client at a time per file: `open` takes a lock file next to it (`FILE.lock`, with
 * the process id) and refuses a file that another running process, or another open
 * `FileStore` of this process, holds. {@link FileStore.close} releases it, and so does
 * the process's exit; a lock left by a killed process is taken over by the next `open`.
 *
 * ```ts
 * import { FileStore } from "messenger-js/node";
 * const store = await FileStore.open("alice.messenger.json");
 * const client = new MessengerClient({ url, token, WebSocket, store });
 * ```
 */
export class FileStore implements ClientStore {
  private state: StoredState;
  private queue: Promise<void> = Promise.resolve();
  private closed = false;

  private constructor(
    /** The file. */
    readonly file: string,
    private readonly lock: string,
    state: StoredState,
  ) {
    this.state = state;
  }

  /**
   * Opens the store in `file` (created on the first save, with its folder) and locks it
   * for this process. Rejects with a `store` error when the file is in use (by another
   * running process or another open `FileStore`), exists but cannot be read, or is not a
   * store.
   */
  static async open(file: string): Promise<FileStore> {
    const abs = path.resolve(file);
    const lock = `${abs}.lock`;
    await takeLock(lock, abs);
    try {
      return new FileStore(abs, lock, await readState(abs));
    } catch (e) {
      release(lock);
      throw e;
    }
  }

  /**
   * Waits for the saves in flight and releases the file for another `open` (this
   * process's or another's). The store refuses `load` and `save` afterwards. Idempotent.
   */
  async close(): Promise<void> {
    if (this.closed) return;
    this.closed = true;
    await this.queue;
    release(this.lock);
  }

  /** Everything stored (a copy). */
  async load(): Promise<StoredState> {
    this.checkOpen();
    await this.queue;
    return cloneState(this.state);
  }

  /** Applies a batch and writes the file; the batch is in memory only once it is on disk. */
  save(changes: StoreChanges): Promise<void> {
    if (this.closed) return Promise.reject(closedError(this.file));
    const run = this.queue.then(async () => {
      const next = cloneState(this.state);
      applyChanges(next, changes);
      await this.write(next);
      this.state = next;
    });
    this.queue = run.catch(() => {});
    return run;
  }

  private checkOpen(): void {
    if (this.closed) throw closedError(this.file);
  }

  private async write(state: StoredState): Promise<void> {
    const dir = path.dirname(this.file);
    const tmp = `${this.file}.${process.pid}.${randomBytes(4).toString("hex")}.tmp`;
    const body = JSON.stringify({ format: FORMAT, ...state });
    try {
      await mkdir(dir, { recursive: true });
      const fh = await open(tmp, "w", 0o600);
      try {
        await fh.writeFile(body, "utf8");
        await fh.sync();
      } finally {
        await fh.close();
      }
      await rename(tmp, this.file);
    } catch (e) {
      await rm(tmp, { force: true }).catch(() => {});
      throw failure(`cannot write the client store ${this.file}`, e);
    }
    // The rename is durable once the folder is flushed (not possible on every platform).
    try {
      const d = await open(dir, "r");
      try {
        await d.sync();
      } finally {
        await d.close();
      }
    } catch {
      // Windows cannot open a folder: the rename is still atomic there.
    }
  }
}
