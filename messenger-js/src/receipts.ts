/**
 * Receipt watermarks: each member's delivered and read seq per thread only move
 * forward in what the app sees.
 *
 * Receipts are watermarks (docs/protocol.md): a `message_ack` for seq N means every
 * message up to N. Frames relayed by different nodes can cross during a failover, so a
 * client may receive DELIVERED 654 after DELIVERED 628 was already superseded; showing
 * it would move the app's ✓✓ backwards. The client keeps the highest marks it has
 * shown and drops a receipt that moves neither (the Rust SDK does the same).
 *
 * Pure state, no I/O.
 *
 * @internal
 * @module
 */

import type { AckStatus } from "./types.js";

/** A member's highest shown delivered and read seq. */
export interface Mark {
  delivered: number;
  read: number;
}

/** The highest delivered and read seq shown per (thread, member). */
export class ReceiptMarks {
  private readonly marks = new Map<string, Mark>();

  /** Starts from marks read from the client store. */
  restore(threadId: string, userId: string, delivered: number, read: number): void {
    this.marks.set(`${threadId}\u0000${userId}`, { delivered, read });
  }

  /** The marks of (thread, member), if any receipt was shown. */
  get(threadId: string, userId: string): Mark | undefined {
    const m = this.marks.get(`${threadId}\u0000${userId}`);
    return m ? { ...m } : undefined;
  }

  /**
   * Records a receipt; returns whether it moved either watermark (show it) or not
   * (stale or repeated: drop it). A READ also counts as delivered up to its seq.
   */
  offer(threadId: string, userId: string, status: AckStatus, seq: number): boolean {
    const key = `${threadId}\u0000${userId}`;
    const read = status === "READ" ? seq : 0;
    const delivered = seq;
    const mark = this.marks.get(key);
    if (mark === undefined) {
      this.marks.set(key, { delivered, read });
      return true;
    }
    const moved = delivered > mark.delivered || read > mark.read;
    mark.delivered = Math.max(mark.delivered, delivered);
    mark.read = Math.max(mark.read, read);
    return moved;
  }
}
