// The client store contract for the stores that run in Node (memory, file), the file
// store's own promises (atomic writes, refusing what it cannot read), and what the
// client does with a store before it connects. IndexedDB is checked in Chromium
// (browser.test.ts), never against a fake.

import assert from "node:assert/strict";
import { spawn, spawnSync } from "node:child_process";
import { existsSync, mkdtempSync, readFileSync, rmSync, writeFileSync } from "node:fs";
import { tmpdir } from "node:os";
import path from "node:path";
import { after, describe, test } from "node:test";

import { MemoryStore, MessengerClient, MessengerError, type ClientStore, type StoreChanges, type StoredState } from "../src/index.js";
import { FileStore } from "../src/node.js";
import { storeContract } from "./store-contract.js";

const dir = mkdtempSync(path.join(tmpdir(), "messenger-js-store-"));
after(() => rmSync(dir, { recursive: true, force: true }));

const quiet = { debug() {}, warn() {} };

describe("client store contract", () => {
  test("MemoryStore (a restart is the same instance, as within one process)", async () => {
    const store = new MemoryStore();
    await storeContract(async () => store);
  });

  test("FileStore (a restart opens the file again)", async () => {
    const file = path.join(dir, "contract", "alice.json");
    await storeContract(
      () => FileStore.open(file),
      (s) => (s as FileStore).close(),
    );
  });
});

describe("FileStore", () => {
  test("writes whole states atomically and leaves no temporary files", async () => {
    const file = path.join(dir, "atomic.json");
    const store = await FileStore.open(file);
    await Promise.all(Array.from({ length: 20 }, (_, i) => store.save({ outboxAdded: [{ threadId: "g:1", tempId: `t${i}`, text: "x", queuedAt: i }] })));
    const onDisk = JSON.parse(readFileSync(file, "utf8")) as { format: number; outbox: unknown[] };
    assert.equal(onDisk.format, 1);
    assert.equal(onDisk.outbox.length, 20);
    await store.close();
    const { readdirSync } = await import("node:fs");
    assert.deepEqual(readdirSync(dir).filter((f) => f.startsWith("atomic.json")), ["atomic.json"]);
  });

  test("a save that cannot be written rejects and changes nothing", async () => {
    const folder = path.join(dir, "vanishing");
    const store = await FileStore.open(path.join(folder, "s.json"));
    await store.save({ userId: "alice" });
    // The store's folder becomes a file: every write fails from now on.
    rmSync(folder, { recursive: true });
    writeFileSync(folder, "not a folder");
    await assert.rejects(
      store.save({ outboxAdded: [{ threadId: "g:1", tempId: "t", text: "x", queuedAt: 1 }] }),
      (e: MessengerError) => e.kind === "store" && e.message.includes("cannot write"),
    );
    assert.deepEqual(await store.load(), { userId: "alice", synced: false, outbox: [], threads: [], receipts: [] });
    // A folder that is a file is refused when opening.
    await store.close();
    await assert.rejects(FileStore.open(path.join(folder, "s.json")), (e: MessengerError) => e.kind === "store" && e.message.includes("cannot create the folder"));
  });

  test("one client per file: a second open is refused until the first closes", async () => {
    const file = path.join(dir, "locked", "s.json");
    const first = await FileStore.open(file);
    await first.save({ userId: "alice" });
    await assert.rejects(FileStore.open(file), (e: MessengerError) => e.kind === "store" && e.message.includes("already open in this process"));
    // Another process cannot open it either while this one runs.
    const other = spawnSync(process.execPath, ["--input-type=module", "-e", `
      import { FileStore } from ${JSON.stringify(new URL("../src/node.js", import.meta.url).href)};
      try { await FileStore.open(${JSON.stringify(file)}); console.log("opened"); }
      catch (e) { console.log(e.kind + ": " + e.message); }
    `], { encoding: "utf8" });
    assert.match(other.stdout, new RegExp(`^store: the client store .* is in use by process ${process.pid} `), other.stderr);
    await first.close();
    await assert.rejects(first.save({ synced: true }), (e: MessengerError) => e.kind === "store" && e.message.includes("is closed"));
    await assert.rejects(first.load(), (e: MessengerError) => e.kind === "store" && e.message.includes("is closed"));
    const second = await FileStore.open(file);
    assert.equal((await second.load()).userId, "alice");
    await second.close();
    assert.equal(existsSync(`${file}.lock`), false, "close removes the lock file");
  });

  test("a lock left by a killed process is taken over", async () => {
    const file = path.join(dir, "stale", "s.json");
    // A process that opens the store, saves, and is killed without closing it.
    const child = spawn(process.execPath, ["--input-type=module", "-e", `
      import { FileStore } from ${JSON.stringify(new URL("../src/node.js", import.meta.url).href)};
      const s = await FileStore.open(${JSON.stringify(file)});
      await s.save({ userId: "bob" });
      console.log("saved");
      setInterval(() => {}, 1000);
    `], { stdio: ["ignore", "pipe", "inherit"] });
    await new Promise<void>((resolve, reject) => {
      child.stdout.on("data", (d: Buffer) => d.toString().includes("saved") && resolve());
      child.once("exit", (code) => reject(new Error(`the child exited (${code}) before saving`)));
    });
    assert.equal(readFileSync(`${file}.lock`, "utf8").trim(), String(child.pid));
    const exited = new Promise((resolve) => child.once("exit", resolve));
    child.kill("SIGKILL");
    await exited;
    const store = await FileStore.open(file);
    assert.equal((await store.load()).userId, "bob");
    assert.equal(readFileSync(`${file}.lock`, "utf8").trim(), String(process.pid));
    await store.close();
  });

  test("a file that is not a store is refused with what to do", async () => {
    const notJson = path.join(dir, "garbage.json");
    writeFileSync(notJson, "{ half");
    await assert.rejects(FileStore.open(notJson), (e: MessengerError) => e.kind === "store" && e.message.includes("move it away"));
    const newer = path.join(dir, "newer.json");
    writeFileSync(newer, JSON.stringify({ format: 2, synced: false, outbox: [], threads: [], receipts: [] }));
    await assert.rejects(FileStore.open(newer), (e: MessengerError) => e.kind === "store" && e.message.includes("format 2"));
    const broken = path.join(dir, "broken.json");
    writeFileSync(broken, JSON.stringify({ format: 1, synced: false, outbox: [{ threadId: 1 }], threads: [], receipts: [] }));
    await assert.rejects(FileStore.open(broken), (e: MessengerError) => e.kind === "store" && e.message.includes("outbox entry"));
  });
});

/** A store that refuses saves while `refuse` is set. */
class FlakyStore implements ClientStore {
  refuse = false;
  readonly inner = new MemoryStore();
  readonly saves: StoreChanges[] = [];
  load(): Promise<StoredState> {
    return this.inner.load();
  }
  async save(c: StoreChanges): Promise<void> {
    if (this.refuse) throw new Error("disk full");
    this.saves.push(c);
    await this.inner.save(c);
  }
}

describe("the client and its store, before any connection", () => {
  test("load() restores the outbox and the positions while offline", async () => {
    const store = new MemoryStore();
    await store.save({
      userId: "alice",
      synced: true,
      outboxAdded: [
        { threadId: "g:1", tempId: "t-1", text: "written offline", queuedAt: 1 },
        { threadId: "g:2", tempId: "t-2", text: "and this", queuedAt: 2 },
      ],
      threads: [{ threadId: "g:1", heldSeq: 41 }],
    });
    const c = new MessengerClient({ url: "ws://127.0.0.1:1/ws", token: "alice", store, logger: quiet });
    await c.load();
    assert.deepEqual(
      c.pending().map((p) => [p.threadId, p.tempId, p.text]),
      [
        ["g:1", "t-1", "written offline"],
        ["g:2", "t-2", "and this"],
      ],
    );
    assert.equal(c.position("g:1"), 41);
    assert.equal(c.userId, "alice");
    // A send under a restored temp id joins it: nothing new is queued or stored.
    const joined = c.send("g:1", "written offline", { tempId: "t-1" });
    const fresh = c.send("g:1", "new");
    assert.equal(c.pending().length, 3);
    await c.close();
    await assert.rejects(joined, (e: MessengerError) => e.kind === "closed");
    await assert.rejects(fresh, (e: MessengerError) => e.kind === "closed");
    // close() waited for the store: the new send is in it, for the next client.
    assert.deepEqual(
      (await store.load()).outbox.map((e) => e.text),
      ["written offline", "and this", "new"],
    );
  });

  test("a send the store refuses fails with a store error and is never written", async () => {
    const store = new FlakyStore();
    const c = new MessengerClient({ url: "ws://127.0.0.1:1/ws", token: "alice", store, logger: quiet });
    store.refuse = true;
    await assert.rejects(c.send("g:1", "lost"), (e: MessengerError) => e.kind === "store" && e.message.includes("disk full"));
    assert.equal(c.pending().length, 0);
    store.refuse = false;
    const kept = c.send("g:1", "kept");
    await c.close();
    await assert.rejects(kept, (e: MessengerError) => e.kind === "closed");
    assert.deepEqual(
      (await store.inner.load()).outbox.map((e) => e.text),
      ["kept"],
      "only what the store took",
    );
  });

  test("a store that cannot be read stops connect() with a store error", async () => {
    const store: ClientStore = {
      load: () => Promise.reject(new Error("corrupt")),
      save: () => Promise.resolve(),
    };
    const c = new MessengerClient({ url: "ws://127.0.0.1:1/ws", token: "alice", store, logger: quiet });
    await assert.rejects(c.connect(), (e: MessengerError) => e.kind === "store" && e.message.includes("corrupt"));
    assert.equal(c.state.kind, "closed");
  });
});
