/**
 * The local outbox: sends not yet confirmed by `message_sent`, keyed by (thread, temp
 * id), in the order the app made them. It outlives connections: every (re)connect
 * resends all of it, oldest first and a window at a time (the client keeps at most
 * `maxSendsInFlight` unanswered), with the same temp ids, and the server's idempotent
 * send answers a resend of an already stored message with the original id and seq. A
 * send is written only once the client store holds it (`stored`), so a restarted app
 * resends it.
 *
 * @internal
 * @module
 */

import type { MessengerError } from "./errors.js";
import type { Sent } from "./types.js";

/** Someone waiting for a send's result. */
export interface Waiter {
  resolve(s: Sent): void;
  reject(e: MessengerError): void;
}

/** A queued send. */
export interface OutboxItem {
  threadId: string;
  tempId: string;
  text: string;
  /** When the app made the send (ms since the epoch). */
  queuedAt: number;
  waiters: Waiter[];
  /** The client store holds it: it may be written to the server. */
  stored: boolean;
  /** Written on the current connection and not answered yet. */
  inFlight: boolean;
  /** Refused as transient (`rate_limited`, `unavailable`): resend at this time (ms). */
  retryAt?: number;
}

/** A send waiting in the outbox, as {@link MessengerClient.pending} shows it. */
export interface PendingSend {
  /** The thread. */
  threadId: string;
  /** Its temp id. */
  tempId: string;
  /** The text. */
  text: string;
}

const key = (threadId: string, tempId: string) => `${threadId}\u0000${tempId}`;

/** The sends waiting for `message_sent`, oldest first (Map keeps insertion order). */
export class Outbox {
  private readonly items = new Map<string, OutboxItem>();

  /**
   * Adds a send. Returns false when the same (thread, temp id) is already pending:
   * the waiter then joins it and nothing new should be written.
   */
  push(threadId: string, tempId: string, text: string, w: Waiter, queuedAt = Date.now()): boolean {
    const existing = this.items.get(key(threadId, tempId));
    if (existing) {
      existing.waiters.push(w);
      return false;
    }
    this.items.set(key(threadId, tempId), { threadId, tempId, text, queuedAt, waiters: [w], stored: false, inFlight: false });
    return true;
  }

  /**
   * Puts the sends read from the client store first, oldest first: already stored,
   * nobody waiting yet (a `send` with the same temp id joins one). A key already queued
   * by a `send` made before the store was read joins its stored twin.
   */
  restoreAll(entries: { threadId: string; tempId: string; text: string; queuedAt: number }[]): void {
    const before = new Map(this.items);
    this.items.clear();
    for (const e of entries) {
      const k = key(e.threadId, e.tempId);
      const existing = before.get(k);
      if (existing) {
        existing.stored = true;
        this.items.set(k, existing);
      } else {
        this.items.set(k, { ...e, waiters: [], stored: true, inFlight: false });
      }
    }
    for (const [k, item] of before) if (!this.items.has(k)) this.items.set(k, item);
  }

  /** The client store holds these sends now. */
  markStored(keys: { threadId: string; tempId: string }[]): void {
    for (const k of keys) {
      const item = this.items.get(key(k.threadId, k.tempId));
      if (item) item.stored = true;
    }
  }

  /** Removes and returns the item for (thread, temp id). */
  take(threadId: string, tempId: string): OutboxItem | undefined {
    const k = key(threadId, tempId);
    const item = this.items.get(k);
    this.items.delete(k);
    return item;
  }

  /** The item for (thread, temp id). */
  get(threadId: string, tempId: string): OutboxItem | undefined {
    return this.items.get(key(threadId, tempId));
  }

  /** Items written on the current connection and not answered yet. */
  inFlight(): number {
    let n = 0;
    for (const item of this.items.values()) if (item.inFlight) n++;
    return n;
  }

  /**
   * Up to `limit` items to write now (not in flight, no retry pending past `now`),
   * oldest first, marked in flight.
   */
  due(now: number, limit = Infinity): OutboxItem[] {
    const out: OutboxItem[] = [];
    for (const item of this.items.values()) {
      if (out.length >= limit) break;
      if (item.inFlight || !item.stored) continue;
      if (item.retryAt !== undefined && item.retryAt > now) continue;
      item.inFlight = true;
      item.retryAt = undefined;
      out.push(item);
    }
    return out;
  }

  /** The connection dropped: everything is resent on the next one. */
  connectionLost(): void {
    for (const item of this.items.values()) {
      item.inFlight = false;
      item.retryAt = undefined;
    }
  }

  /** Fails every waiting send (the client stopped for good). */
  failAll(err: MessengerError): void {
    for (const item of this.items.values()) for (const w of item.waiters) w.reject(err);
    this.items.clear();
  }

  /** What is queued, oldest first. */
  list(): PendingSend[] {
    return [...this.items.values()].map(({ threadId, tempId, text }) => ({ threadId, tempId, text }));
  }

  /** How many sends wait. */
  get size(): number {
    return this.items.size;
  }
}
