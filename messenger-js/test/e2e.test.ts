// End-to-end tests of the SDK against the real messenger-server binary, the same cases
// as messenger-client/tests/e2e.rs. "The server restarts" is the real process killed
// (SIGKILL) and started again on the same data directory (its durable SQLite store);
// a proxy in front of the server plays network faults (connections cut, frames
// dropped or duplicated, the port refused for a while). The app restarts on its client
// store (a FileStore) with the server away and comes back.

import assert from "node:assert/strict";
import { after, afterEach, before, describe, test } from "node:test";

import path from "node:path";

import { MAX_SENDS_IN_FLIGHT, MemoryStore, MessengerClient, MessengerError, backoffCeiling, type ConnectionState } from "../src/index.js";
import { FileStore } from "../src/node.js";
import {
  Proxy,
  cleanup,
  connected,
  fastBackoff,
  freePort,
  jwt,
  range,
  scratchDir,
  seqs,
  settle,
  startServer,
  testClient,
  texts,
  waitFor,
  type Server,
  type TestClient,
} from "./support.js";

const TEST_TIMEOUT = 30_000;

function isState(kind: ConnectionState["kind"]) {
  return (c: TestClient) => c.events.state.some((s) => s.kind === kind);
}

async function closeAll(...cs: TestClient[]): Promise<void> {
  await Promise.all(cs.map((c) => c.client.close()));
}

describe("against the real server", { timeout: 120_000 }, () => {
  afterEach(cleanup);
  let server: Server;
  before(async () => {
    server = await startServer();
  });
  after(async () => {
    await server.stop();
  });

  test("a server restart mid-conversation (process killed, same data) loses nothing and doubles nothing", { timeout: TEST_TIMEOUT }, async () => {
    const dataDir = scratchDir("restart");
    const own = await startServer({ dataDir });
    const alice = await connected(own.wsUrl, "r-alice");
    const bob = await connected(own.wsUrl, "r-bob");
    const thread = (await alice.client.createDirect("r-bob")).threadId;
    for (let i = 1; i <= 4; i++) {
      const who = i % 2 === 0 ? bob : alice;
      await who.client.send(thread, `m${i}`);
    }
    await waitFor("bob's first four", () => bob.messages(thread).length === 4);
    assert.deepEqual(seqs(bob.messages(thread)), [1, 2, 3, 4]);

    await own.kill();
    await waitFor("bob disconnected", () => isState("disconnected")(bob));
    await waitFor("alice disconnected", () => isState("disconnected")(alice));
    // While the server is away alice keeps typing: the sends wait in the outbox.
    const pending = [5, 6, 7].map((i) => alice.client.send(thread, `m${i}`));
    assert.equal(alice.client.pending().length, 3);
    assert.notEqual(alice.client.state.kind, "connected");

    const again = await startServer({ port: own.port, dataDir });
    const sent = await Promise.all(pending);
    assert.deepEqual(
      sent.map((s) => s.seq),
      [5, 6, 7],
      "the outbox is resent oldest first",
    );
    await bob.client.send(thread, "m8");
    await waitFor("bob's 5..8", () => bob.messages(thread).length === 8);
    await waitFor("alice's 1..8", () => alice.messages(thread).length === 8);
    await settle(alice, bob);
    await settle(alice, bob);
    assert.deepEqual(seqs(bob.messages(thread)), range(1, 8));
    assert.deepEqual(texts(bob.messages(thread)), range(1, 8).map((i) => `m${i}`));
    assert.deepEqual(seqs(alice.messages(thread)), range(1, 8));
    assert.equal(new Set(alice.messages(thread).map((m) => m.messageId)).size, 8);
    // The store holds each message once.
    assert.deepEqual(seqs(await alice.client.historyAfter(thread, 0)), range(1, 8));
    await closeAll(alice, bob);
    await again.stop();
  });

  test("a send stored but unconfirmed when the connection died reconciles to the original", { timeout: TEST_TIMEOUT }, async () => {
    const proxy = await Proxy.start(server.port);
    const alice = await connected(proxy.wsUrl, "l-alice");
    const bob = await connected(proxy.wsUrl, "l-bob");
    const thread = (await alice.client.createDirect("l-bob")).threadId;
    // The server stores the message, but its `message_sent` is lost with the connection.
    let dropped = false;
    proxy.filter = (text, conn) => {
      if (!dropped && conn.token === "l-alice" && text.includes('"message_sent"')) {
        dropped = true;
        setImmediate(() => proxy.cut());
        return [];
      }
      return [text];
    };
    const sent = await alice.client.send(thread, "hello", { tempId: "lost-reply" });
    assert.ok(dropped);
    assert.equal(sent.seq, 1);
    await alice.client.send(thread, "next");
    for (const [who, c] of [
      ["alice", alice],
      ["bob", bob],
    ] as const) {
      await waitFor(`${who}'s two messages`, () => c.messages(thread).length === 2);
      await settle(c);
      assert.deepEqual(seqs(c.messages(thread)), [1, 2], who);
      assert.equal(c.messages(thread)[0]?.messageId, sent.messageId, who);
    }
    assert.equal((await alice.client.historyAfter(thread, 0)).length, 2, "stored once");
    await closeAll(alice, bob);
    await proxy.close();
  });

  test("the outbox flushes after a reconnect, in order and idempotently", { timeout: TEST_TIMEOUT }, async () => {
    const proxy = await Proxy.start(server.port);
    const alice = await connected(proxy.wsUrl, "o-alice");
    const thread = (await alice.client.createGroup(["o-bob"], "team")).threadId;
    const first = await alice.client.send(thread, "one", { tempId: "t-1" });
    // The same temp id again: the server's idempotent send, same id and seq.
    const again = await alice.client.send(thread, "one", { tempId: "t-1" });
    assert.deepEqual([again.messageId, again.seq], [first.messageId, first.seq]);
    await waitFor("alice's first", () => alice.messages(thread).length === 1);

    await proxy.down();
    await waitFor("alice disconnected", () => isState("disconnected")(alice));
    await assert.rejects(alice.client.listThreads(), (e: MessengerError) => e.kind === "disconnected");
    const queued = ["two", "three", "four"].map((t) => alice.client.send(thread, t));
    await proxy.up();
    const sent = await Promise.all(queued);
    assert.deepEqual(
      sent.map((s) => s.seq),
      [2, 3, 4],
    );
    await waitFor("alice's 2..4", () => alice.messages(thread).length === 4);
    await settle(alice);
    assert.deepEqual(texts(alice.messages(thread)), ["one", "two", "three", "four"]);
    assert.equal((await alice.client.historyAfter(thread, 0)).length, 4, "nothing doubled");
    await closeAll(alice);
    await proxy.close();
  });

  test("a live gap is filled from history, in order", { timeout: TEST_TIMEOUT }, async () => {
    const proxy = await Proxy.start(server.port);
    const alice = await connected(proxy.wsUrl, "g-alice");
    const bob = await connected(proxy.wsUrl, "g-bob");
    const thread = (await alice.client.createDirect("g-bob")).threadId;
    await alice.client.send(thread, "first");
    await waitFor("bob's first", () => bob.messages(thread).length === 1);
    // Bob's live copies of seq 2 and 3 are lost on the way.
    proxy.filter = (text, conn) =>
      conn.token === "g-bob" && /"receive_message".*"seq":(2|3)[,}]/.test(text) ? [] : [text];
    await alice.client.send(thread, "hidden-2");
    await alice.client.send(thread, "hidden-3");
    const sent = await alice.client.send(thread, "fourth");
    assert.equal(sent.seq, 4);
    await waitFor("bob's 2..4", () => bob.messages(thread).length === 4);
    await settle(bob);
    await settle(bob);
    assert.deepEqual(seqs(bob.messages(thread)), [1, 2, 3, 4]);
    assert.deepEqual(texts(bob.messages(thread)), ["first", "hidden-2", "hidden-3", "fourth"]);
    await closeAll(alice, bob);
    await proxy.close();
  });

  test("duplicates on the wire and overlapping catch-up reach the app once", { timeout: TEST_TIMEOUT }, async () => {
    const proxy = await Proxy.start(server.port);
    const alice = await connected(proxy.wsUrl, "d-alice");
    const bob = await connected(proxy.wsUrl, "d-bob");
    const thread = (await alice.client.createGroup(["d-bob"], "dups")).threadId;
    // Every message bob receives comes twice, and each also replays the previous one.
    let previous: string | undefined;
    proxy.filter = (text, conn) => {
      if (conn.token !== "d-bob" || !text.includes('"receive_message"')) return [text];
      const out = previous ? [text, text, previous] : [text, text];
      previous = text;
      return out;
    };
    for (let i = 1; i <= 5; i++) await alice.client.send(thread, `m${i}`);
    await waitFor("bob's five", () => bob.messages(thread).length === 5);
    // A reconnect: catch-up history overlaps with what bob already has.
    proxy.cut();
    await waitFor("bob back", () => bob.events.state.filter((s) => s.kind === "connected").length === 2);
    for (let i = 6; i <= 8; i++) await alice.client.send(thread, `m${i}`);
    await waitFor("bob's eight", () => bob.messages(thread).length === 8);
    await settle(bob);
    await settle(bob);
    assert.deepEqual(seqs(bob.messages(thread)), range(1, 8));
    assert.equal(new Set(bob.messages(thread).map((m) => m.messageId)).size, 8);
    await closeAll(alice, bob);
    await proxy.close();
  });

  test("both sides talking through a server restart (killed, same data) see every message once, in order", { timeout: TEST_TIMEOUT }, async () => {
    const dataDir = scratchDir("talk");
    const own = await startServer({ dataDir });
    const alice = await connected(own.wsUrl, "b-alice");
    const bob = await connected(own.wsUrl, "b-bob");
    const thread = (await alice.client.createGroup(["b-bob"], "through the restart")).threadId;
    const EACH = 15;
    const talk = async (c: TestClient, who: string) => {
      for (let i = 0; i < EACH; i++) await c.client.send(thread, `${who}-${i}`);
    };
    const a = talk(alice, "alice");
    const b = talk(bob, "bob");
    await waitFor("a few messages", () => alice.messages(thread).length >= 4);
    // Killed mid-stream: sends in flight may be stored with their reply lost, or lost.
    await own.kill();
    await waitFor("both disconnected", () => isState("disconnected")(alice) && isState("disconnected")(bob));
    const again = await startServer({ port: own.port, dataDir });
    await Promise.all([a, b]);
    const want = range(1, 2 * EACH);
    const expected = range(0, EACH - 1)
      .flatMap((i) => [`alice-${i}`, `bob-${i}`])
      .sort();
    for (const c of [alice, bob]) {
      await waitFor("every message", () => c.messages(thread).length === 2 * EACH);
      await settle(c);
      assert.deepEqual(seqs(c.messages(thread)), want);
      assert.deepEqual(texts(c.messages(thread)).sort(), expected);
    }
    assert.deepEqual(seqs(await alice.client.historyAfter(thread, 0)), want, "stored once each");
    await closeAll(alice, bob);
    await again.stop();
  });

  test("an app restarted offline sends what its user wrote once, and shows nothing twice", { timeout: TEST_TIMEOUT }, async () => {
    const dataDir = scratchDir("app-restart");
    const storeFile = path.join(scratchDir("app-store"), "s-alice.json");
    const own = await startServer({ dataDir });
    const aliceStore = await FileStore.open(storeFile);
    const alice = await connected(own.wsUrl, "s-alice", { store: aliceStore });
    const bob = await connected(own.wsUrl, "s-bob");
    const thread = (await alice.client.createDirect("s-bob")).threadId;
    await alice.client.send(thread, "m1");
    await bob.client.send(thread, "m2");
    await waitFor("alice's two", () => alice.messages(thread).length === 2);

    // The server goes away; alice writes twice, then her app is closed.
    await own.kill();
    await waitFor("alice disconnected", () => isState("disconnected")(alice));
    const lost = ["written offline 1", "written offline 2"].map((t) => alice.client.send(thread, t).catch((e: MessengerError) => e));
    await alice.client.close();
    await aliceStore.close();
    for (const e of await Promise.all(lost)) assert.equal((e as MessengerError).kind, "closed");

    // Bob writes while alice's app is closed (after the server is back).
    const again = await startServer({ port: own.port, dataDir });
    await waitFor("bob back", () => bob.client.state.kind === "connected");
    await bob.client.send(thread, "m-while-closed");

    // Alice's app starts again on its store: the two sends are there before connecting.
    const store = await FileStore.open(storeFile);
    const alice2 = testClient(again.wsUrl, "s-alice", { store });
    await alice2.client.load();
    assert.deepEqual(
      alice2.client.pending().map((p) => p.text),
      ["written offline 1", "written offline 2"],
    );
    assert.equal(alice2.client.position(thread), 2, "the thread resumes after what the app had");
    await alice2.client.connect();
    await waitFor("both confirmed", () => alice2.events.sent.length === 2 && alice2.client.pending().length === 0);
    await waitFor("bob gets them", () => bob.messages(thread).length === 5);
    await waitFor("alice2 has 3..5", () => alice2.messages(thread).length === 3);
    await settle(alice2, bob);
    // Alice's new app sees only what came after her position: bob's message and her two.
    assert.deepEqual(seqs(alice2.messages(thread)), [3, 4, 5]);
    assert.deepEqual(texts(alice2.messages(thread)).sort(), ["m-while-closed", "written offline 1", "written offline 2"]);
    assert.deepEqual(seqs(bob.messages(thread)), range(1, 5));
    assert.equal((await alice2.client.historyAfter(thread, 0)).length, 5, "each stored once");
    await closeAll(alice2, bob);
    await store.close();
    // The store is empty of sends, and its position is the thread's end.
    const reopened = await FileStore.open(storeFile);
    const left = await reopened.load();
    await reopened.close();
    assert.deepEqual([left.outbox.length, left.threads.find((t) => t.threadId === thread)?.heldSeq], [0, 5]);
    await again.stop();
  });

  test("a send stored by the server whose reply was lost before the app closed is not stored twice", { timeout: TEST_TIMEOUT }, async () => {
    const proxy = await Proxy.start(server.port);
    const storeFile = path.join(scratchDir("lost-store"), "u-alice.json");
    const aliceStore = await FileStore.open(storeFile);
    const alice = await connected(proxy.wsUrl, "u-alice", { store: aliceStore });
    const thread = (await alice.client.createDirect("u-bob")).threadId;
    // The server stores the message, but its `message_sent` never reaches alice: the
    // network dies with it and her app is closed.
    let dropped = false;
    proxy.filter = (text, conn) => {
      if (!dropped && conn.token === "u-alice" && text.includes('"message_sent"')) {
        dropped = true;
        setImmediate(() => void proxy.down());
        return [];
      }
      return [text];
    };
    const first = alice.client.send(thread, "hello", { tempId: "kept-across" }).catch((e: MessengerError) => e);
    await waitFor("the reply dropped", () => dropped);
    await alice.client.close();
    await aliceStore.close();
    assert.equal(((await first) as MessengerError).kind, "closed");

    await proxy.up();
    const alice2Store = await FileStore.open(storeFile);
    const alice2 = testClient(proxy.wsUrl, "u-alice", { store: alice2Store });
    // The app asks for the send's result again under its temp id.
    const again = alice2.client.send(thread, "hello", { tempId: "kept-across" });
    await alice2.client.connect();
    const sent = await again;
    assert.equal(sent.seq, 1, "the server answered the resend with the original");
    await waitFor("alice2's message", () => alice2.messages(thread).length === 1);
    await settle(alice2);
    assert.deepEqual(seqs(alice2.messages(thread)), [1]);
    assert.equal((await alice2.client.historyAfter(thread, 0)).length, 1, "stored once");
    await closeAll(alice2);
    await alice2Store.close();
    await proxy.close();
  });

  test("a DELIVERED ack owed when the app stopped is written by the next client on its store", { timeout: TEST_TIMEOUT }, async () => {
    const alice = await connected(server.wsUrl, "k-alice");
    const thread = (await alice.client.createDirect("k-bob")).threadId;
    const sent = await alice.client.send(thread, "did you get this?");
    // Bob's app had the message (position 1) but stopped before its ack went out.
    const store = new MemoryStore();
    await store.save({
      userId: "k-bob",
      synced: true,
      threads: [{ threadId: thread, heldSeq: 1, ackDue: { seq: 1, messageId: sent.messageId } }],
    });
    const bob = await connected(server.wsUrl, "k-bob", { store });
    await waitFor("alice sees bob's DELIVERED", () =>
      alice.events.receipt.some((r) => r.userId === "k-bob" && r.status === "DELIVERED" && r.seq === 1),
    );
    await settle(bob);
    assert.deepEqual(bob.messages(thread), [], "not handed to the app again");
    await bob.client.close();
    const left = await store.load();
    assert.deepEqual(left.threads, [{ threadId: thread, heldSeq: 1 }], "the ack is no longer owed");
    await closeAll(alice);
  });

  test("a store of another user is refused: the client stops with wrong_user", { timeout: TEST_TIMEOUT }, async () => {
    const storeFile = path.join(scratchDir("wrong-user"), "store.json");
    const store = await FileStore.open(storeFile);
    const alice = await connected(server.wsUrl, "v-alice", { store });
    await alice.client.close();
    await store.close();
    const mallory = testClient(server.wsUrl, "v-mallory", { store: await FileStore.open(storeFile) });
    await assert.rejects(mallory.client.connect(), (e: MessengerError) => e.kind === "wrong_user" && e.message.includes("v-alice"));
  });

  test("a connection that stops answering is replaced; a quiet healthy one is kept", { timeout: TEST_TIMEOUT }, async () => {
    const proxy = await Proxy.start(server.port);
    // Margins for a loaded machine: timers may run late by a good part of a second.
    const alice = await connected(proxy.wsUrl, "hb-alice", { heartbeatMs: 1000 });
    const pongs = () => proxy.seen.filter((f) => f.token === "hb-alice" && f.text.includes('"heartbeat"')).length;
    await waitFor("two heartbeat round trips", () => pongs() >= 2, 15_000);
    assert.equal(alice.events.state.filter((s) => s.kind === "disconnected").length, 0, "quiet is not dead");
    // The server side goes silent while the TCP connection stays up.
    let silent = true;
    proxy.filter = (t, c) => (silent && c.token === "hb-alice" ? [] : [t]);
    await waitFor(
      "heartbeat timeout",
      () => alice.events.state.some((s) => s.kind === "disconnected" && s.reason === "heartbeat timeout"),
      15_000,
    );
    silent = false;
    await waitFor("a new connection", () => alice.client.state.kind === "connected", 15_000);
    assert.ok((await alice.client.ping()) >= 0);
    await closeAll(alice);
    await proxy.close();
  });

  test("receipts, presence, typing and threads arrive as events; DELIVERED is automatic", { timeout: TEST_TIMEOUT }, async () => {
    const alice = await connected(server.wsUrl, "e-alice");
    const bob = await connected(server.wsUrl, "e-bob");
    const group = (await alice.client.createGroup(["e-bob"], "g")).threadId;
    await waitFor("bob hears of the group", () => bob.events.thread.some((t) => t.threadId === group));
    await alice.client.subscribePresence(["e-bob"]);
    assert.ok(alice.events.presence.some((p) => p.userId === "e-bob" && p.status === "online"));
    const sent = await alice.client.send(group, "hello");
    await waitFor("bob's message", () => bob.messages(group).length === 1);
    // Bob's client acks DELIVERED by itself.
    await waitFor("delivered", () =>
      alice.events.receipt.some((r) => r.messageId === sent.messageId && r.status === "DELIVERED" && r.userId === "e-bob"),
    );
    await bob.client.markRead(group, sent.messageId);
    await bob.client.typing(group, true);
    await waitFor("read", () => alice.events.receipt.some((r) => r.status === "READ" && r.seq === 1));
    await waitFor("typing", () => alice.events.typing.some((t) => t.userId === "e-bob" && t.typing));
    const [summary] = (await alice.client.listThreads()).filter((t) => t.threadId === group);
    assert.equal(summary?.receipts["e-bob"]?.readSeq, 1);
    assert.equal(summary?.title, "g");
    // Bob leaves: alice sees him offline with a last-seen time.
    await bob.client.close();
    await waitFor("bob offline", () => alice.events.presence.some((p) => p.userId === "e-bob" && p.status === "offline"));
    const off = alice.events.presence.find((p) => p.status === "offline");
    assert.ok(off?.lastSeen && off.lastSeen > 0);
    await closeAll(alice);
  });

  test("receipts are watermarks: a stale or repeated one (crossed during a failover) is not shown", { timeout: TEST_TIMEOUT }, async () => {
    // Alice talks through the proxy, which plays two nodes relaying bob's receipts in the
    // wrong order: after his DELIVERED for seq 2 it also hands alice a DELIVERED for seq 1
    // and the seq-2 one again.
    const proxy = await Proxy.start(server.port);
    const alice = await connected(proxy.wsUrl, "w-alice");
    const bob = await connected(server.wsUrl, "w-bob");
    const group = (await alice.client.createGroup(["w-bob"], "w")).threadId;
    await waitFor("bob hears of the group", () => bob.events.thread.some((t) => t.threadId === group));
    const first = await alice.client.send(group, "one");
    await waitFor("bob's DELIVERED for seq 1", () => alice.events.receipt.some((r) => r.userId === "w-bob" && r.seq === 1));
    let crossed = 0;
    proxy.filter = (text, conn) => {
      const f = JSON.parse(text) as { type?: string; user_id?: string; seq?: number; status?: string };
      if (conn.token !== "w-alice" || f.type !== "message_ack" || f.user_id !== "w-bob" || f.seq !== 2 || f.status !== "DELIVERED") {
        return [text];
      }
      const stale = JSON.stringify({ ...f, seq: 1, message_id: first.messageId });
      crossed += 1;
      return [text, stale, text];
    };
    await alice.client.send(group, "two");
    await waitFor("bob's DELIVERED for seq 2", () => alice.events.receipt.some((r) => r.userId === "w-bob" && r.seq === 2));
    // A READ below the delivered mark still moves the read mark: it is shown, once.
    await bob.client.markRead(group, first.messageId);
    await waitFor("bob's READ for seq 1", () => alice.events.receipt.some((r) => r.userId === "w-bob" && r.status === "READ"));
    // Frames arrive in order: the stale and repeated receipts came before the READ.
    const shown = alice.events.receipt.filter((r) => r.userId === "w-bob").map((r) => `${r.status} ${r.seq}`);
    assert.deepEqual(shown, ["DELIVERED 1", "DELIVERED 2", "READ 1"]);
    // The proxy did hand alice the stale and the repeated receipt.
    assert.equal(crossed, 1);
    await closeAll(alice, bob);
  });

  test("history pages backwards and forwards", { timeout: TEST_TIMEOUT }, async () => {
    const alice = await connected(server.wsUrl, "h-alice");
    const thread = (await alice.client.createGroup(["h-bob"], "long")).threadId;
    for (let i = 1; i <= 12; i++) await alice.client.send(thread, `m${i}`);
    const pager = alice.client.historyPager(thread, 5);
    assert.deepEqual(seqs(await pager.older()), [8, 9, 10, 11, 12]);
    assert.deepEqual(seqs(await pager.older()), [3, 4, 5, 6, 7]);
    assert.deepEqual(seqs(await pager.older()), [1, 2]);
    assert.equal(pager.hasMore, false);
    assert.deepEqual(await pager.older(), []);
    assert.deepEqual(seqs(await alice.client.historyAfter(thread, 9)), [10, 11, 12]);
    const page = await alice.client.fetchHistory(thread, { afterSeq: 2, limit: 3 });
    assert.deepEqual([seqs(page.messages), page.hasMore], [[3, 4, 5], true]);
    await closeAll(alice);
  });

  test("push targets and thread mutes: register, refresh, list, mute elsewhere, unregister", { timeout: TEST_TIMEOUT }, async () => {
    const a1 = await connected(server.wsUrl, "p-alice");
    const a2 = await connected(server.wsUrl, "p-alice");
    const p256dh = Buffer.concat([Buffer.from([4]), Buffer.alloc(64, 7)]).toString("base64url");
    const auth = Buffer.alloc(16, 9).toString("base64url");
    const subscription = { endpoint: "https://push.example.net/send/abc", keys: { p256dh, auth } };
    const t = await a1.client.registerPushTarget({ platform: "webpush", subscription, locale: "fr" });
    assert.equal(t.platform, "webpush");
    const again = await a1.client.registerPushTarget({ platform: "webpush", subscription });
    assert.equal(again.targetId, t.targetId);
    assert.deepEqual((await a2.client.listPushTargets()).map((x) => x.targetId), [t.targetId]);
    const code = (c: string) => (e: MessengerError) => e.kind === "server" && e.code === c;
    await assert.rejects(
      a1.client.registerPushTarget({ platform: "webpush", subscription: { ...subscription, endpoint: "http://insecure.example/x" } }),
      code("bad_request"),
    );
    const thread = (await a1.client.createDirect("p-bob")).threadId;
    const heard = new Promise<unknown>((resolve) => a2.client.on("threadMute", resolve));
    const until = Date.now() + 3_600_000;
    assert.deepEqual(await a1.client.muteThread(thread, until), { threadId: thread, muted: true, until });
    assert.deepEqual(await heard, { threadId: thread, muted: true, until });
    const listed = (await a1.client.listThreads()).find((x) => x.threadId === thread);
    assert.equal(listed?.muted, true);
    assert.equal(listed?.mutedUntil, until);
    assert.equal((await a1.client.unmuteThread(thread)).muted, false);
    assert.equal(await a1.client.unregisterPushTarget(t.targetId), true);
    assert.equal(await a1.client.unregisterPushTarget(t.targetId), false);
    assert.deepEqual(await a1.client.listPushTargets(), []);
    await closeAll(a1, a2);
  });

  test("errors reach the caller typed", { timeout: TEST_TIMEOUT }, async () => {
    const bad = testClient("http://example.invalid/ws", "alice");
    await assert.rejects(bad.client.connect(), (e: MessengerError) => e.kind === "invalid_url");
    // Dev auth refuses a token that is not a valid user id: 401, not retried.
    const refused = testClient(server.wsUrl, "not a user id");
    await assert.rejects(refused.client.connect(), (e: MessengerError) => e.kind === "auth" && e.status === 401);
    assert.equal(refused.events.state.filter((s) => s.kind === "connecting").length, 1);

    const alice = await connected(server.wsUrl, "x-alice");
    const carol = await connected(server.wsUrl, "x-carol");
    const bob = await connected(server.wsUrl, "x-bob");
    const theirs = (await bob.client.createDirect("x-carol")).threadId;
    const code = (...codes: string[]) => (e: MessengerError) => e.kind === "server" && codes.includes(e.code ?? "");
    await assert.rejects(alice.client.send(theirs, "hi"), code("forbidden", "not_found"));
    await assert.rejects(alice.client.fetchHistory(theirs), code("forbidden", "not_found"));
    // A frame with no reply on success still reports its failure.
    await assert.rejects(alice.client.markRead(theirs, "1"), code("forbidden", "not_found"));
    await assert.rejects(alice.client.subscribePresence(["x-carol"]), code("forbidden"));
    const mine = (await alice.client.createDirect("x-bob")).threadId;
    await assert.rejects(alice.client.send(mine, "x".repeat(17 * 1024)), code("too_large"));
    await assert.rejects(alice.client.send(mine, ""), code("bad_request"));
    // Successes on the same paths.
    const first = await alice.client.send(mine, "hi bob");
    await bob.client.markRead(mine, first.messageId);
    await alice.client.typing(mine, true);
    await alice.client.subscribePresence(["x-bob"]);
    assert.ok((await alice.client.ping()) >= 0);
    assert.equal(alice.client.pending().length, 0);

    await alice.client.close();
    await assert.rejects(alice.client.send(mine, "after close"), (e: MessengerError) => e.kind === "closed");
    await assert.rejects(alice.client.listThreads(), (e: MessengerError) => e.kind === "closed");
    assert.deepEqual(alice.client.state, { kind: "closed" });
    await closeAll(bob, carol);
  });

  test("a real process restart: the client comes back; a send the new process cannot place fails typed", { timeout: TEST_TIMEOUT }, async () => {
    const own = await startServer();
    const alice = await connected(own.wsUrl, "p-alice");
    const thread = (await alice.client.createDirect("p-bob")).threadId;
    await alice.client.send(thread, "before");
    const firstSession = alice.client.sessionId;
    await own.stop();
    await waitFor("alice disconnected", () => isState("disconnected")(alice));
    // The in-memory store went with the process: this thread no longer exists.
    const queued = alice.client.send(thread, "after").then(
      () => undefined,
      (e: MessengerError) => e,
    );
    const again = await startServer({ port: own.port });
    const err = await queued;
    assert.deepEqual([err?.kind, err?.code], ["server", "not_found"]);
    assert.equal(alice.client.state.kind, "connected");
    assert.notEqual(alice.client.sessionId, firstSession);
    const fresh = (await alice.client.createDirect("p-bob")).threadId;
    assert.equal((await alice.client.send(fresh, "hello again")).seq, 1);
    await closeAll(alice);
    await again.stop();
  });
});

/**
 * What the proxy saw of `token`'s connections numbered above `after`: per connection,
 * whether the catch-up's `list_threads` was written before the first send and answered
 * before the first send's answer, and the most sends written and not yet answered at
 * any moment (answers matched by `req_id`, as the proxy passed the frames on).
 */
function sendWindows(proxy: Proxy, token: string, after: number) {
  type Window = {
    listReq?: unknown;
    listAt?: number;
    listAnsweredAt?: number;
    firstSendAt?: number;
    firstSentAt?: number;
    open: Set<unknown>;
    max: number;
    sends: number;
  };
  const conns = new Map<number, Window>();
  proxy.wire.forEach((w, i) => {
    if (w.token !== token || w.conn <= after) return;
    let c = conns.get(w.conn);
    if (!c) conns.set(w.conn, (c = { open: new Set(), max: 0, sends: 0 }));
    const f = JSON.parse(w.text) as { type: string; req_id?: unknown };
    if (w.dir === "up") {
      if (f.type === "list_threads" && c.listAt === undefined) {
        c.listAt = i;
        c.listReq = f.req_id;
      }
      if (f.type === "send_message") {
        c.firstSendAt ??= i;
        c.sends++;
        c.open.add(f.req_id);
        c.max = Math.max(c.max, c.open.size);
      }
      return;
    }
    if (f.req_id === undefined) return;
    if (c.open.delete(f.req_id)) c.firstSentAt ??= i;
    else if (c.listReq !== undefined && f.req_id === c.listReq) c.listAnsweredAt ??= i;
  });
  return [...conns.values()];
}

describe("the outbox after an outage", { timeout: 120_000 }, () => {
  afterEach(cleanup);
  let server: Server;
  before(async () => {
    // Default limits: hundreds of sends on one connection exceed the server's frame
    // burst (100), and the server paces sends over it rather than refusing them, so
    // they are still stored in the order written (docs/protocol.md, section 3).
    server = await startServer();
  });
  after(async () => {
    await server.stop();
  });

  test(
    `hundreds of queued sends: the catch-up is asked first, at most ${MAX_SENDS_IN_FLIGHT} await an answer, each is stored once in order`,
    { timeout: 90_000 },
    async () => {
      const proxy = await Proxy.start(server.port);
      const alice = await connected(proxy.wsUrl, "f-alice");
      const bob = await connected(server.wsUrl, "f-bob");
      const a = (await alice.client.createGroup(["f-bob"], "a")).threadId;
      const b = (await alice.client.createGroup(["f-bob"], "b")).threadId;
      await proxy.down();
      await waitFor("alice disconnected", () => isState("disconnected")(alice));
      const before = Math.max(0, ...proxy.wire.map((w) => w.conn));
      // Bob writes while alice is away: her catch-up brings it.
      await bob.client.send(a, "bob, while alice was away");
      // Alice's outbox: 300 sends, alternating between the two threads.
      const n = 300;
      const want = { [a]: ["bob, while alice was away"], [b]: [] as string[] };
      const queued = range(1, n).map((i) => {
        const t = i % 2 === 1 ? a : b;
        want[t]?.push(`queued ${i}`);
        return alice.client.send(t, `queued ${i}`);
      });
      await proxy.up();
      const sent = await Promise.all(queued);

      // Each thread's sends got consecutive seqs in the order alice made them.
      assert.deepEqual(
        sent.filter((s) => s.threadId === a).map((s) => s.seq),
        range(2, n / 2 + 1),
      );
      assert.deepEqual(
        sent.filter((s) => s.threadId === b).map((s) => s.seq),
        range(1, n / 2),
      );
      for (const t of [a, b]) {
        assert.deepEqual(texts(await bob.client.historyAfter(t, 0)), want[t], "stored once each, in order");
      }
      await waitFor("alice has every message of both threads", () => alice.messages(a).length === n / 2 + 1 && alice.messages(b).length === n / 2);
      await settle(alice);
      assert.deepEqual(texts(alice.messages(a)), want[a], "bob's message and alice's own, once each, in order");
      assert.deepEqual(texts(alice.messages(b)), want[b]);

      const windows = sendWindows(proxy, "f-alice", before);
      assert.ok(windows.length >= 1);
      assert.equal(
        windows.reduce((s, w) => s + w.sends, 0) >= n,
        true,
        "every queued send was written after the reconnect",
      );
      for (const w of windows) {
        if (w.sends === 0) continue;
        assert.ok(w.listAt !== undefined && w.firstSendAt !== undefined && w.listAt < w.firstSendAt, "list_threads is written before the first resend");
        assert.ok(
          w.listAnsweredAt !== undefined && w.firstSentAt !== undefined && w.listAnsweredAt < w.firstSentAt,
          "the catch-up's list is answered before any resend",
        );
        assert.ok(w.max <= MAX_SENDS_IN_FLIGHT, `${w.max} sends awaited an answer at once`);
      }
      // The window is used: the sends are pipelined, not one at a time.
      assert.ok(Math.max(...windows.map((w) => w.max)) > 1);
      await closeAll(alice, bob);
      await proxy.close();
    },
  );

  test("maxSendsInFlight sets the window", { timeout: TEST_TIMEOUT }, async () => {
    const proxy = await Proxy.start(server.port);
    const alice = await connected(proxy.wsUrl, "m-alice", { maxSendsInFlight: 3 });
    const t = (await alice.client.createGroup(["m-bob"], "m")).threadId;
    await proxy.down();
    await waitFor("alice disconnected", () => isState("disconnected")(alice));
    const before = Math.max(0, ...proxy.wire.map((w) => w.conn));
    const queued = range(1, 40).map((i) => alice.client.send(t, `m${i}`));
    await proxy.up();
    assert.deepEqual(
      (await Promise.all(queued)).map((s) => s.seq),
      range(1, 40),
    );
    const windows = sendWindows(proxy, "m-alice", before);
    for (const w of windows) assert.ok(w.max <= 3, `${w.max} sends awaited an answer at once`);
    assert.deepEqual(texts(await alice.client.historyAfter(t, 0)), range(1, 40).map((i) => `m${i}`));
    await closeAll(alice);
    await proxy.close();
  });
});

describe("reconnection", { timeout: 60_000 }, () => {
  afterEach(cleanup);
  test("backoff is bounded by the jitter ceiling and gives up after maxRetries", { timeout: TEST_TIMEOUT }, async () => {
    const port = await freePort(); // nothing listens
    const backoff = { initialMs: 20, maxMs: 80, multiplier: 2, maxRetries: 4 };
    const c = testClient(`ws://127.0.0.1:${port}/ws`, "alice", { backoff });
    const t0 = Date.now();
    const err = await c.client.connect().then(
      () => assert.fail("nothing listens"),
      (e: MessengerError) => e,
    );
    assert.equal(err.kind, "retries_exhausted");
    assert.equal(err.attempts, 5);
    assert.equal((err.cause as MessengerError).kind, "connect");
    const waits = c.events.state.filter((s) => s.kind === "reconnecting");
    assert.deepEqual(
      waits.map((s) => s.attempt),
      [1, 2, 3, 4],
    );
    for (const s of waits) assert.ok(s.delayMs <= backoffCeiling(backoff, s.attempt), `${s.delayMs} at ${s.attempt}`);
    const ceilings = [1, 2, 3, 4].reduce((sum, n) => sum + backoffCeiling(backoff, n), 0);
    assert.ok(Date.now() - t0 <= ceilings + 2000);
    assert.deepEqual(c.client.state, { kind: "closed", error: err });
  });

  test("reconnecting delays respect the ceiling and count up; the client comes back", { timeout: TEST_TIMEOUT }, async () => {
    const server = await startServer();
    const backoff = { initialMs: 10, maxMs: 40, multiplier: 2 };
    const alice = await connected(server.wsUrl, "alice", { backoff });
    await server.stop();
    await waitFor("six attempts", () => alice.events.state.filter((s) => s.kind === "reconnecting").length >= 6);
    const waits = alice.events.state.filter((s) => s.kind === "reconnecting").slice(0, 6);
    assert.deepEqual(
      waits.map((s) => s.attempt),
      [0, 1, 2, 3, 4, 5],
      "failures count up",
    );
    for (const s of waits) assert.ok(s.delayMs <= backoffCeiling(backoff, s.attempt));
    const again = await startServer({ port: server.port });
    await waitFor("connected again", () => alice.events.state.filter((s) => s.kind === "connected").length === 2);
    assert.ok((await alice.client.ping()) >= 0);
    await alice.client.close();
    await again.stop();
  });
});

describe("JWT auth (HS256)", { timeout: 60_000 }, () => {
  afterEach(cleanup);
  const secret = "e2e-secret";
  let server: Server;
  before(async () => {
    server = await startServer({ jwtSecret: secret, args: ["--jwt-leeway", "0s"] });
  });
  after(async () => {
    await server.stop();
  });
  const now = () => Math.floor(Date.now() / 1000);

  test("a refused token is not retried", { timeout: TEST_TIMEOUT }, async () => {
    const t0 = Date.now();
    const c = testClient(server.wsUrl, "alice");
    await assert.rejects(c.client.connect(), (e: MessengerError) => e.kind === "auth" && e.status === 401);
    assert.ok(Date.now() - t0 < 2000);
  });

  test("an expired token is refreshed through the provider, on connect and on reconnect", { timeout: TEST_TIMEOUT }, async () => {
    const proxy = await Proxy.start(server.port);
    const calls: boolean[] = [];
    let cached = jwt(secret, "alice", now() - 60); // already expired
    const provider = ({ refused }: { refused: boolean }) => {
      calls.push(refused);
      if (refused) cached = jwt(secret, "alice", now() + 3600);
      return cached;
    };
    const alice = await connected(proxy.wsUrl, provider);
    assert.deepEqual(calls, [false, true], "asked again with refused: true after the 401");
    assert.equal(alice.client.userId, "alice");
    const bob = await connected(server.wsUrl, jwt(secret, "bob", now() + 3600));
    const thread = (await alice.client.createDirect("bob")).threadId;

    // The cached token expires while alice is connected; then the connection drops.
    cached = jwt(secret, "alice", now() - 60);
    await proxy.down();
    await waitFor("alice disconnected", () => isState("disconnected")(alice));
    const queued = alice.client.send(thread, "sent while away");
    await proxy.up();
    const sent = await queued;
    assert.equal(sent.seq, 1);
    // Asked before every attempt (refused ones while the proxy was down), then once
    // more with `refused: true` after the 401.
    const later = calls.slice(2);
    assert.deepEqual([later.filter((r) => r).length, later[later.length - 1]], [1, true], String(later));
    await waitFor("bob's message", () => bob.messages(thread).length === 1);
    await closeAll(alice, bob);
    await proxy.close();
  });

  test("a 401 after the refresh stops the client with a typed error; queued sends fail with it", { timeout: TEST_TIMEOUT }, async () => {
    const proxy = await Proxy.start(server.port);
    const calls: boolean[] = [];
    let good = true;
    const provider = ({ refused }: { refused: boolean }) => {
      calls.push(refused);
      return good ? jwt(secret, "carol", now() + 3600) : jwt("another-secret", "carol", now() + 3600);
    };
    const carol = await connected(proxy.wsUrl, provider);
    const thread = (await carol.client.createDirect("dave")).threadId;
    good = false; // from now on the provider's tokens are refused
    await proxy.down();
    await waitFor("carol disconnected", () => isState("disconnected")(carol));
    const queued = carol.client.send(thread, "never stored").then(
      () => undefined,
      (e: MessengerError) => e,
    );
    await proxy.up();
    const err = await queued;
    assert.deepEqual([err?.kind, err?.status], ["auth", 401]);
    // Asked before every attempt, then once with `refused: true`; then it stops.
    assert.deepEqual([calls.filter((r) => r).length, calls[calls.length - 1]], [1, true], String(calls));
    const last = carol.client.state;
    assert.equal(last.kind, "closed");
    assert.equal(last.kind === "closed" ? last.error?.kind : undefined, "auth");
    await assert.rejects(carol.client.listThreads(), (e: MessengerError) => e.kind === "closed");
    await proxy.close();
  });

  test("the browser path: without the HTTP status, a plain GET tells a refused token from a down server", { timeout: TEST_TIMEOUT }, async () => {
    // A WebSocket that, like a browser's, hides why the upgrade failed.
    const WS = (await import("ws")).default;
    class Opaque extends WS {
      constructor(url: string) {
        super(url);
        this.on("error", () => {});
        // Browsers give an Event without the status: drop the details.
        Object.defineProperty(this, "onerror", { get: () => null, set: () => {} });
      }
    }
    const c = new MessengerClient({
      url: server.wsUrl,
      token: "not-a-jwt",
      WebSocket: Opaque as unknown as never,
      backoff: fastBackoff,
      logger: { debug() {}, warn() {} },
    });
    await assert.rejects(c.connect(), (e: MessengerError) => e.kind === "auth" && e.status === 401);
  });
});
