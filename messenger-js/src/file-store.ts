/// <reference types="node" />
/**
 * Node's persistent store: {@link FileStore}, one JSON file written atomically.
 *
 * @module
 */

import { randomBytes } from "node:crypto";
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

/**
 * A {@link ClientStore} in one JSON file, for Node apps (bots, command-line tools,
 * servers that talk as a user): the outbox, positions and receipts survive the process.
 *
 * Every save writes the whole state to a temporary file next to it, flushes it to disk
 * (`fsync`), renames it over the file and flushes the folder, so the file always holds
 * one complete state: the old or the new, never a torn mix. The state is small (the
 * unconfirmed sends and one line per thread), so rewriting it whole is cheap next to
 * the `fsync`. One client at a time per file: two processes on one file would overwrite
 * each other's saves (use a file per user and process).
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

  private constructor(
    /** The file. */
    readonly file: string,
    state: StoredState,
  ) {
    this.state = state;
  }

  /**
   * Opens the store in `file` (created on the first save, with its folder). Rejects
   * with a `store` error when the file exists but cannot be read or is not a store.
   */
  static async open(file: string): Promise<FileStore> {
    const abs = path.resolve(file);
    let text: string;
    try {
      text = await readFile(abs, "utf8");
    } catch (e) {
      if ((e as NodeJS.ErrnoException).code === "ENOENT") return new FileStore(abs, emptyState());
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
    return new FileStore(abs, state);
  }

  /** Everything stored (a copy). */
  async load(): Promise<StoredState> {
    await this.queue;
    return cloneState(this.state);
  }

  /** Applies a batch and writes the file; the batch is in memory only once it is on disk. */
  save(changes: StoreChanges): Promise<void> {
    const run = this.queue.then(async () => {
      const next = cloneState(this.state);
      applyChanges(next, changes);
      await this.write(next);
      this.state = next;
    });
    this.queue = run.catch(() => {});
    return run;
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
