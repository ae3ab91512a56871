/**
 * Per-thread ordering: hands messages to the app strictly in seq order, each once.
 *
 * Pure state, no I/O: the client feeds it live messages, history pages and the
 * server's `last_seq` per thread; it answers with the messages to deliver now and the
 * history range to fetch (`fillAfter`) when it sees a gap.
 *
 * @internal
 * @module
 */

import type { Message } from "./types.js";

/** How many recent message ids each thread remembers for de-duplication. */
export const SEEN_CAP = 512;

/** What the client should do after feeding the sequencer. */
export interface Step {
  /** Hand these to the app, in this order. */
  deliver: Message[];
  /** Fetch the thread's history after this seq. */
  fillAfter?: number;
}

class Seen {
  private readonly order: string[] = [];
  private readonly set = new Set<string>();

  has(id: string): boolean {
    return this.set.has(id);
  }

  add(id: string): void {
    if (this.set.has(id)) return;
    this.set.add(id);
    this.order.push(id);
    if (this.order.length > SEEN_CAP) {
      const old = this.order.shift();
      if (old !== undefined) this.set.delete(old);
    }
  }

  get size(): number {
    return this.set.size;
  }
}

interface ThreadSeq {
  /** The last seq handed to the app. */
  last: number;
  /** Messages past a gap, held until it is filled, by seq. */
  held: Map<number, Message>;
  seen: Seen;
  /** A history fill is in flight. */
  filling: boolean;
  /** Messages delivered since the current fill chain started. */
  fillProgress: number;
}

function newThread(last = 0): ThreadSeq {
  return { last, held: new Map(), seen: new Seen(), filling: false, fillProgress: 0 };
}

function firstHeld(t: ThreadSeq): number | undefined {
  let min: number | undefined;
  for (const s of t.held.keys()) if (min === undefined || s < min) min = s;
  return min;
}

/** The ordering state of every thread the client has seen. */
export class Sequencer {
  private readonly threads = new Map<string, ThreadSeq>();

  /** The last seq handed to the app in `thread`, if the thread is known. */
  position(thread: string): number | undefined {
    return this.threads.get(thread)?.last;
  }

  /** Sets the starting position of a thread the sequencer does not know yet. */
  startAt(thread: string, last: number): void {
    if (!this.threads.has(thread)) this.threads.set(thread, newThread(last));
  }

  private entry(thread: string): ThreadSeq {
    let t = this.threads.get(thread);
    if (!t) {
      t = newThread();
      this.threads.set(thread, t);
    }
    return t;
  }

  /**
   * The server says `thread` ends at `serverLast`: returns the seq to fetch after when
   * the client is behind and no fill is in flight. Unknown threads start at 0.
   */
  catchUp(thread: string, serverLast: number): number | undefined {
    const t = this.entry(thread);
    if (serverLast > t.last && !t.filling) {
      t.filling = true;
      t.fillProgress = 0;
      return t.last;
    }
    return undefined;
  }

  /** A live message (or the app's own, reconciled). Unknown threads start at 0. */
  offer(msg: Message): Step {
    const t = this.entry(msg.threadId);
    const step: Step = { deliver: [] };
    accept(t, msg, step.deliver);
    if (!t.filling) {
      const first = firstHeld(t);
      if (first !== undefined && first > t.last + 1) {
        t.filling = true;
        t.fillProgress = 0;
        step.fillAfter = t.last;
      }
    }
    return step;
  }

  /** A page of a fill for `thread`, ascending by seq. */
  fillPage(thread: string, page: Message[], hasMore: boolean): Step {
    const t = this.entry(thread);
    const step: Step = { deliver: [] };
    for (const m of page) accept(t, m, step.deliver);
    t.fillProgress += step.deliver.length;
    if (hasMore && page.length > 0) {
      step.fillAfter = t.last;
      return step;
    }
    t.filling = false;
    const first = firstHeld(t);
    if (first !== undefined && first > t.last + 1) {
      if (t.fillProgress > 0) {
        // Messages were appended while the fill was served: fetch again.
        t.filling = true;
        t.fillProgress = 0;
        step.fillAfter = t.last;
      } else {
        // History has nothing for the gap: never stall the thread behind it.
        skipAhead(t, step.deliver);
      }
    }
    return step;
  }

  /** A fill failed for good (e.g. the user left the thread): deliver what is held. */
  fillFailed(thread: string): Step {
    const step: Step = { deliver: [] };
    const t = this.threads.get(thread);
    if (t) {
      t.filling = false;
      skipAhead(t, step.deliver);
    }
    return step;
  }

  /** A fill was refused for now: forget it so the next catch-up starts it again. */
  fillAborted(thread: string): void {
    const t = this.threads.get(thread);
    if (t) t.filling = false;
  }

  /** The connection dropped: fills in flight are lost (catch-up redoes them). */
  connectionLost(): void {
    for (const t of this.threads.values()) t.filling = false;
  }

  /** How many ids `thread` remembers (for tests of the bound). */
  seenCount(thread: string): number {
    return this.threads.get(thread)?.seen.size ?? 0;
  }
}

function skipAhead(t: ThreadSeq, out: Message[]): void {
  for (let first = firstHeld(t); first !== undefined; first = firstHeld(t)) {
    t.last = first - 1;
    drain(t, out);
  }
}

function accept(t: ThreadSeq, msg: Message, out: Message[]): void {
  if (msg.seq <= t.last || t.seen.has(msg.messageId)) return;
  if (msg.seq === t.last + 1) {
    t.seen.add(msg.messageId);
    t.last = msg.seq;
    out.push(msg);
    drain(t, out);
  } else if (!t.held.has(msg.seq)) {
    t.held.set(msg.seq, msg);
  }
}

function drain(t: ThreadSeq, out: Message[]): void {
  for (;;) {
    const seq = firstHeld(t);
    if (seq === undefined) return;
    const m = t.held.get(seq) as Message;
    if (seq <= t.last) {
      t.held.delete(seq);
      continue;
    }
    if (seq !== t.last + 1) return;
    t.held.delete(seq);
    if (t.seen.has(m.messageId)) continue;
    t.seen.add(m.messageId);
    t.last = seq;
    out.push(m);
  }
}
