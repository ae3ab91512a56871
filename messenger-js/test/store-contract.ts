// The contract every ClientStore keeps (the same checks as the Rust SDK's
// messenger_client::store::conformance). No Node APIs: the Chromium test bundles this
// file into a page to check the IndexedDB store in a real browser.
//
// `open` opens the store under test; it is called again to "restart" (a persistent
// store must return what the first instance saved). `reopen` is told the previous
// instance is done (close it first, as a restarted app would have).

import type { ClientStore, OutboxEntry, ReceiptMark, StoredState, ThreadPosition } from "../src/index.js";

function sameJson(actual: unknown, expected: unknown, what: string): void {
  const a = JSON.stringify(actual);
  const e = JSON.stringify(expected);
  if (a !== e) throw new Error(`${what}:\n  actual:   ${a}\n  expected: ${e}`);
}

const entry = (threadId: string, tempId: string, text: string, queuedAt: number): OutboxEntry => ({ threadId, tempId, text, queuedAt });
const mark = (threadId: string, userId: string, deliveredSeq: number, readSeq: number): ReceiptMark => ({
  threadId,
  userId,
  deliveredSeq,
  readSeq,
});

/** A state in a canonical order (threads and receipts have none), for comparisons. */
export function canonical(s: StoredState): StoredState {
  const out: StoredState = {
    synced: s.synced,
    outbox: s.outbox.map((e) => entry(e.threadId, e.tempId, e.text, e.queuedAt)),
    threads: [...s.threads]
      .sort((a, b) => a.threadId.localeCompare(b.threadId))
      .map((t) => {
        const p: ThreadPosition = { threadId: t.threadId, heldSeq: t.heldSeq };
        if (t.ackDue) p.ackDue = { seq: t.ackDue.seq, messageId: t.ackDue.messageId };
        return p;
      }),
    receipts: [...s.receipts]
      .sort((a, b) => a.threadId.localeCompare(b.threadId) || a.userId.localeCompare(b.userId))
      .map((r) => mark(r.threadId, r.userId, r.deliveredSeq, r.readSeq)),
  };
  if (s.userId !== undefined) out.userId = s.userId;
  return out;
}

/** Runs every check; rejects with what broke. */
export async function storeContract(open: () => Promise<ClientStore>, done: (s: ClientStore) => Promise<void> = async () => {}): Promise<void> {
  let store = await open();
  sameJson(canonical(await store.load()), { synced: false, outbox: [], threads: [], receipts: [] }, "a new store is empty");

  // Outbox: the order of additions, duplicate keys keep the first, removal by key.
  await store.save({
    userId: "alice",
    outboxAdded: [entry("g:1", "a", "first", 10), entry("g:2", "b", "second \u2713 \u00fcn\u00efcode \u{1F552}", 11), entry("g:1", "c", "third", 12)],
  });
  await store.save({
    outboxAdded: [entry("g:1", "a", "first again", 99), entry("g:1", "d", "fourth", 13), entry("g:1", "d", "fourth twice", 14)],
    outboxRemoved: [
      { threadId: "g:2", tempId: "b" },
      { threadId: "g:9", tempId: "nope" },
    ],
  });
  let s = await store.load();
  sameJson([s.userId, s.synced], ["alice", false], "user set, not synced");
  sameJson(
    s.outbox,
    [entry("g:1", "a", "first", 10), entry("g:1", "c", "third", 12), entry("g:1", "d", "fourth", 13)],
    "oldest first, duplicate keys keep the first, removals applied",
  );
  // Added and removed in one batch: additions first, so it is gone.
  await store.save({ outboxAdded: [entry("g:1", "e", "fleeting", 15)], outboxRemoved: [{ threadId: "g:1", tempId: "e" }] });
  // The same temp id in another thread is another send.
  await store.save({ outboxAdded: [entry("g:3", "a", "elsewhere", 16)] });
  s = await store.load();
  sameJson(
    s.outbox.map((e) => `${e.threadId}/${e.tempId}`),
    ["g:1/a", "g:1/c", "g:1/d", "g:3/a"],
    "added-and-removed in one batch is gone; keys are per thread",
  );

  // Positions: heldSeq never moves backwards; ackDue replaced as given (absent clears).
  const due = { seq: 7, messageId: "7140000000000000123" };
  await store.save({
    synced: true,
    threads: [
      { threadId: "g:1", heldSeq: 7, ackDue: due },
      { threadId: "dm:alice:bob", heldSeq: 0 },
    ],
  });
  await store.save({ threads: [{ threadId: "g:1", heldSeq: 5 }] });
  s = canonical(await store.load());
  sameJson(s.synced, true, "synced");
  sameJson(
    s.threads,
    [
      { threadId: "dm:alice:bob", heldSeq: 0 },
      { threadId: "g:1", heldSeq: 7 },
    ],
    "heldSeq keeps the maximum; ackDue cleared",
  );
  await store.save({ synced: false, threads: [{ threadId: "g:1", heldSeq: 9, ackDue: { seq: 9, messageId: "9" } }] });
  s = canonical(await store.load());
  sameJson([s.synced, s.threads[1]], [true, { threadId: "g:1", heldSeq: 9, ackDue: { seq: 9, messageId: "9" } }], "synced stays; moved forward");

  // Receipts merge by maximum, per (thread, user).
  await store.save({ receipts: [mark("g:1", "bob", 5, 2), mark("g:1", "carol", 1, 1)] });
  await store.save({ receipts: [mark("g:1", "bob", 4, 3), mark("g:2", "bob", 1, 0)] });
  sameJson(
    canonical(await store.load()).receipts,
    [mark("g:1", "bob", 5, 3), mark("g:1", "carol", 1, 1), mark("g:2", "bob", 1, 0)],
    "receipts merged by maximum",
  );

  // An empty batch is fine; a failed-looking one changes nothing it did not name.
  await store.save({});

  // Everything survives a restart.
  const before = canonical(await store.load());
  await done(store);
  store = await open();
  sameJson(canonical(await store.load()), before, "the same state after reopening");

  // Saves started at once all land, in the order they were made.
  await Promise.all(Array.from({ length: 32 }, (_, i) => store.save({ outboxAdded: [entry("g:c", `k${i}`, "x", i)] })));
  s = await store.load();
  sameJson(
    s.outbox.filter((e) => e.threadId === "g:c").map((e) => e.tempId),
    Array.from({ length: 32 }, (_, i) => `k${i}`),
    "32 concurrent saves, all kept, in order",
  );

  // Loads hand out copies: changing one changes nothing stored.
  s = await store.load();
  s.outbox.length = 0;
  const t0 = s.threads[0];
  if (t0) t0.heldSeq = 1_000_000;
  sameJson(canonical(await store.load()).outbox.length, 36, "a load is a copy");
  await done(store);
}
