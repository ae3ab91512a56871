// Unit tests of the pure parts: per-thread ordering, the outbox, backoff, decoding.

import assert from "node:assert/strict";
import { describe, test } from "node:test";

import { backoffCeiling, backoffDelay, MessengerError, newTempId, type Message } from "../src/index.js";
import { Outbox } from "../src/outbox.js";
import { ReceiptMarks } from "../src/receipts.js";
import { decode, encode } from "../src/protocol.js";
import { SEEN_CAP, Sequencer } from "../src/sequencer.js";

const T = "t1";
const m = (seq: number, id = String(1000 + seq)): Message => ({
  threadId: T,
  messageId: id,
  seq,
  senderId: "bob",
  text: `m${seq}`,
  sentAt: seq,
});
const seqs = (ms: Message[]) => ms.map((x) => x.seq);

describe("sequencer", () => {
  test("in order, and duplicates dropped by seq and by id", () => {
    const s = new Sequencer();
    assert.deepEqual(seqs(s.offer(m(1)).deliver), [1]);
    assert.deepEqual(seqs(s.offer(m(2)).deliver), [2]);
    assert.deepEqual(s.offer(m(2)), { deliver: [] });
    assert.deepEqual(s.offer(m(1)), { deliver: [] });
    assert.deepEqual(s.offer(m(3, "1002")).deliver, [], "same id under another seq");
    assert.equal(s.position(T), 2);
  });

  test("a gap holds later messages, and the fill releases them in order", () => {
    const s = new Sequencer();
    s.startAt(T, 3);
    const step = s.offer(m(6));
    assert.deepEqual([step.deliver, step.fillAfter], [[], 3]);
    assert.equal(s.offer(m(7)).fillAfter, undefined, "one fill at a time");
    const filled = s.fillPage(T, [m(4), m(5), m(6)], false);
    assert.deepEqual([seqs(filled.deliver), filled.fillAfter], [[4, 5, 6, 7], undefined]);
    assert.equal(s.position(T), 7);
  });

  test("catch-up pages until has_more is false", () => {
    const s = new Sequencer();
    assert.equal(s.catchUp(T, 5), 0);
    assert.equal(s.catchUp(T, 5), undefined);
    const a = s.fillPage(T, [m(1), m(2)], true);
    assert.deepEqual([seqs(a.deliver), a.fillAfter], [[1, 2], 2]);
    const b = s.fillPage(T, [m(3), m(4), m(5)], false);
    assert.deepEqual([seqs(b.deliver), b.fillAfter], [[3, 4, 5], undefined]);
    assert.equal(s.catchUp(T, 5), undefined, "up to date");
  });

  test("refills when more arrived meanwhile; skips a gap history cannot fill", () => {
    const s = new Sequencer();
    s.offer(m(1));
    assert.equal(s.offer(m(3)).fillAfter, 1);
    s.offer(m(5));
    const a = s.fillPage(T, [m(2), m(3)], false);
    assert.deepEqual([seqs(a.deliver), a.fillAfter], [[2, 3], 3]);
    const b = s.fillPage(T, [], false);
    assert.deepEqual([seqs(b.deliver), b.fillAfter], [[5], undefined]);
  });

  test("a lost connection forgets fills in flight; a failed fill delivers what is held", () => {
    const s = new Sequencer();
    s.offer(m(1));
    assert.equal(s.offer(m(4)).fillAfter, 1);
    s.connectionLost();
    assert.equal(s.catchUp(T, 4), 1, "catch-up redoes the fill");
    assert.deepEqual(seqs(s.fillFailed(T).deliver), [4]);
  });

  test("the remembered ids are bounded", () => {
    const s = new Sequencer();
    for (let i = 1; i <= SEEN_CAP + 10; i++) s.offer(m(i));
    assert.equal(s.seenCount(T), SEEN_CAP);
  });
});

describe("outbox", () => {
  const waiter = () => ({ resolve() {}, reject() {} });

  test("oldest first; a second send under the same temp id joins the first", () => {
    const o = new Outbox();
    assert.ok(o.push("a", "t1", "one", waiter()));
    assert.ok(o.push("a", "t2", "two", waiter()));
    assert.equal(o.push("a", "t1", "one", waiter()), false);
    assert.deepEqual(o.due(0), [], "nothing is written before the client store holds it");
    o.markStored([
      { threadId: "a", tempId: "t1" },
      { threadId: "a", tempId: "t2" },
    ]);
    assert.deepEqual(
      o.due(0).map((i) => i.tempId),
      ["t1", "t2"],
    );
    assert.deepEqual(o.due(0), [], "in flight");
    o.connectionLost();
    assert.equal(o.due(0).length, 2, "resent after a reconnect");
    assert.equal(o.take("a", "t1")?.waiters.length, 2);
    assert.equal(o.size, 1);
  });

  test("due takes at most `limit`, oldest first; inFlight counts what awaits an answer", () => {
    const o = new Outbox();
    for (let i = 1; i <= 5; i++) o.push(i % 2 ? "a" : "b", `t${i}`, `m${i}`, waiter());
    o.markStored(o.list());
    assert.deepEqual(
      o.due(0, 2).map((i) => i.tempId),
      ["t1", "t2"],
    );
    assert.equal(o.inFlight(), 2);
    o.take("a", "t1");
    assert.equal(o.inFlight(), 1, "an answer frees a slot");
    assert.deepEqual(
      o.due(0, 1).map((i) => i.tempId),
      ["t3"],
    );
    o.connectionLost();
    assert.equal(o.inFlight(), 0);
    assert.deepEqual(
      o.due(0, 3).map((i) => i.tempId),
      ["t2", "t3", "t4"],
      "resent from the oldest after a reconnect",
    );
  });

  test("a transient refusal waits for its retry time; failAll rejects every waiter", () => {
    const o = new Outbox();
    const errors: MessengerError[] = [];
    o.push("a", "t1", "one", { resolve() {}, reject: (e) => errors.push(e) });
    o.markStored([{ threadId: "a", tempId: "t1" }]);
    const [item] = o.due(0);
    if (!item) throw new Error("due");
    item.inFlight = false;
    item.retryAt = 1000;
    assert.deepEqual(o.due(999), []);
    assert.equal(o.due(1000).length, 1);
    o.failAll(new MessengerError("closed", "closed"));
    assert.equal(errors[0]?.kind, "closed");
    assert.equal(o.size, 0);
  });
});

describe("outbox restore", () => {
  test("restored sends go first, oldest first; a send made before the load joins its stored twin", () => {
    const o = new Outbox();
    const w = { resolve() {}, reject() {} };
    o.push("a", "new", "made before the load", w);
    o.push("a", "t2", "two, again", w);
    o.restoreAll([
      { threadId: "a", tempId: "t1", text: "one", queuedAt: 1 },
      { threadId: "a", tempId: "t2", text: "two", queuedAt: 2 },
    ]);
    assert.deepEqual(
      o.list().map((p) => p.tempId),
      ["t1", "t2", "new"],
    );
    assert.deepEqual(
      o.due(0).map((i) => i.tempId),
      ["t1", "t2"],
      "the stored ones may go out; the new one waits for its save",
    );
    assert.equal(o.get("a", "t2")?.waiters.length, 1);
  });
});

describe("receipts", () => {
  test("watermarks never go back: stale and repeated receipts are dropped, READ raises delivered", () => {
    // Receipts relayed by different nodes can cross during a failover.
    const r = new ReceiptMarks();
    const shown = (
      [
        ["DELIVERED", 5, true],
        ["DELIVERED", 9, true],
        ["DELIVERED", 7, false],
        ["DELIVERED", 9, false],
        ["READ", 8, true],
        ["READ", 6, false],
        ["DELIVERED", 8, false],
        ["READ", 10, true],
        ["DELIVERED", 10, false],
        ["DELIVERED", 12, true],
      ] as const
    ).map(([status, seq, want]) => {
      assert.equal(r.offer("g", "bob", status, seq), want, `${status} ${seq}`);
      return want;
    });
    assert.equal(shown.filter((x) => x).length, 5);
    // Other members and other threads have marks of their own.
    assert.ok(r.offer("g", "carol", "DELIVERED", 3));
    assert.ok(r.offer("h", "bob", "DELIVERED", 1));
  });
});

describe("backoff", () => {
  const b = { initialMs: 250, maxMs: 30_000, multiplier: 2 };
  test("the ceiling grows and is capped; delays stay under it (full jitter)", () => {
    assert.deepEqual(
      [0, 1, 2, 3].map((n) => backoffCeiling(b, n)),
      [250, 500, 1000, 2000],
    );
    assert.equal(backoffCeiling(b, 50), 30_000);
    assert.equal(backoffCeiling(b, 5000), 30_000, "no overflow");
    assert.equal(backoffDelay(b, 3, () => 0), 0);
    assert.equal(backoffDelay(b, 3, () => 0.999999), 1999);
    for (let i = 0; i < 100; i++) assert.ok(backoffDelay(b, 4) <= 4000);
  });
});

describe("protocol", () => {
  test("frames decode into the model; unknown types are skipped; bad ones throw", () => {
    const f = decode(
      '{"type":"threads","req_id":5,"threads":[{"thread_id":"dm:a:b","kind":"direct","members":["a","b"],"last_seq":7,"receipts":{"a":{"delivered_seq":7,"read_seq":7}},"unread":2,"future":1}]}',
    );
    assert.deepEqual(f, {
      type: "threads",
      reqId: 5,
      threads: [
        {
          threadId: "dm:a:b",
          kind: "direct",
          members: ["a", "b"],
          lastSeq: 7,
          receipts: { a: { deliveredSeq: 7, readSeq: 7 } },
          unread: 2,
        },
      ],
    });
    assert.equal(decode('{"type":"something_new","x":1}'), null);
    assert.throws(() => decode("{"), /not JSON/);
    assert.throws(() => decode('{"type":"receive_message","thread_id":"t"}'), /bad frame/);
    assert.equal(encode({ type: "ping" }, 3), '{"type":"ping","req_id":3}');
  });

  test("push frames decode; tokens never appear in the model", () => {
    assert.deepEqual(
      decode(
        '{"type":"push_target","req_id":9,"target":{"target_id":"apns-1","platform":"apns","app_id":"com.example","sandbox":true,"created_at":1,"updated_at":2}}',
      ),
      { type: "push_target", reqId: 9, target: { targetId: "apns-1", platform: "apns", appId: "com.example", sandbox: true, createdAt: 1, updatedAt: 2 } },
    );
    assert.deepEqual(decode('{"type":"push_targets","req_id":1,"targets":[]}'), { type: "push_targets", reqId: 1, targets: [] });
    assert.deepEqual(decode('{"type":"push_target_removed","req_id":2,"target_id":"x","removed":false}'), {
      type: "push_target_removed",
      reqId: 2,
      targetId: "x",
      removed: false,
    });
    assert.deepEqual(decode('{"type":"thread_mute","thread_id":"g:1","muted":true,"until":5}'), {
      type: "thread_mute",
      reqId: undefined,
      threadId: "g:1",
      muted: true,
      until: 5,
    });
    assert.throws(() => decode('{"type":"push_target","target":{"target_id":"x","platform":"sms","created_at":1,"updated_at":1}}'), /bad frame/);
    assert.equal(
      encode({ type: "mute_thread", thread_id: "g:1", until: 5 }, 4),
      '{"type":"mute_thread","thread_id":"g:1","until":5,"req_id":4}',
    );
  });

  test("temp ids are unique", () => {
    const ids = new Set(Array.from({ length: 1000 }, () => newTempId()));
    assert.equal(ids.size, 1000);
  });
});
