// The browser chat in a real headless Chromium (Debian's, driven by playwright-core),
// served by the real messenger-server binary: two browser contexts sign in as two
// users, exchange messages, see the delivered and read marks and each other's
// presence; one goes offline and back and catches up. The IndexedDB client store keeps
// its contract in Chromium, and a message written while the server is down survives a
// reload and arrives once. Screenshots go to target/web-chat/.

import assert from "node:assert/strict";
import { existsSync, mkdirSync, readFileSync } from "node:fs";
import net from "node:net";
import path from "node:path";
import { after, before, test } from "node:test";

import { build } from "esbuild";
import { chromium, type Browser, type BrowserContext, type Page } from "playwright-core";

import { Proxy, cleanup, connected, freePort, pkgRoot, repoRoot, scratchDir, settle, startServer, waitFor, type Server } from "./support.js";

const CHROMIUM = process.env.CHROMIUM_PATH ?? "/usr/bin/chromium";
/** The flags that work on a machine with no network but loopback. */
const FLAGS = [
  "--headless",
  "--no-sandbox",
  "--disable-gpu",
  "--disable-quic",
  "--no-first-run",
  "--disable-background-networking",
  "--disable-component-update",
  "--disable-sync",
];
const SHOTS = path.join(repoRoot, "target", "web-chat");
const WAIT = 10_000;

/** A TCP proxy in front of the server for one user: its network can be cut and restored. */
class Link {
  private server: net.Server | undefined;
  private readonly sockets = new Set<net.Socket>();
  private constructor(
    readonly port: number,
    private readonly upstream: number,
  ) {}

  static async start(upstream: number): Promise<Link> {
    const l = new Link(await freePort(), upstream);
    await l.up();
    return l;
  }

  async up(): Promise<void> {
    const server = net.createServer((down) => {
      const up = net.connect(this.upstream, "127.0.0.1");
      for (const s of [down, up]) {
        this.sockets.add(s);
        s.on("close", () => this.sockets.delete(s));
        s.on("error", () => {
          down.destroy();
          up.destroy();
        });
      }
      down.pipe(up);
      up.pipe(down);
    });
    await new Promise<void>((resolve, reject) => {
      server.once("error", reject);
      server.listen(this.port, "127.0.0.1", () => resolve());
    });
    this.server = server;
  }

  /** Every connection dies and new ones are refused until {@link up}. */
  async down(): Promise<void> {
    const s = this.server;
    this.server = undefined;
    const closed = s ? new Promise<void>((r) => s.close(() => r())) : Promise.resolve();
    for (const sock of this.sockets) sock.destroy();
    await closed;
  }
}

let server: Server;
let browser: Browser;

before(async () => {
  if (!existsSync(CHROMIUM)) {
    throw new Error(`${CHROMIUM} not found: install Debian's chromium (apt-get install chromium) or set CHROMIUM_PATH`);
  }
  mkdirSync(SHOTS, { recursive: true });
  server = await startServer();
  // playwright gives every launch a fresh, empty profile (--user-data-dir).
  browser = await chromium.launch({ executablePath: CHROMIUM, args: FLAGS, headless: true });
});

after(async () => {
  await cleanup();
  await browser?.close();
  await server?.stop();
});

/** Waits until `fn` is true in the page. */
// eslint-disable-next-line @typescript-eslint/no-explicit-any
async function until(page: Page, what: string, fn: (arg: any) => boolean, arg?: unknown, ms = WAIT): Promise<void> {
  try {
    await page.waitForFunction(fn, arg, { timeout: ms, polling: 50 });
  } catch (e) {
    await page.screenshot({ path: path.join(SHOTS, `failed-${what.replace(/\W+/g, "-")}.png`) });
    throw new Error(`${what}: ${(e as Error).message.split("\n")[0]}`);
  }
}

const text = (page: Page, sel: string) => page.locator(sel).innerText();

function msgStatus(page: Page, seq: number, status: string, what: string) {
  return until(
    page,
    what,
    ([s, st]) => document.querySelector(`#messages li[data-seq="${s}"]`)?.getAttribute("data-status") === st,
    [seq, status] as const,
  );
}

async function signIn(ctx: BrowserContext, base: string, name: string): Promise<Page> {
  const page = await ctx.newPage();
  page.on("pageerror", (e) => console.error(`[${name}] page error: ${e.message}`));
  await page.goto(base);
  await page.fill("#signin-name", name);
  await page.click("#signin-form button[type=submit]");
  await until(page, `${name} online`, () => document.querySelector("#conn")?.getAttribute("data-state") === "connected");
  return page;
}

test("two users chat in Chromium: marks, presence, typing, offline and catch-up, history", { timeout: 120_000 }, async () => {
  const base = `http://127.0.0.1:${server.port}/`;
  const bobLink = await Link.start(server.port);
  const aliceCtx = await browser.newContext({ viewport: { width: 1000, height: 700 } });
  // Bob is on a phone-sized screen, through a network that can be cut.
  const bobCtx = await browser.newContext({ viewport: { width: 390, height: 760 }, isMobile: true, hasTouch: true });
  const alice = await signIn(aliceCtx, base, "alice");
  const bob = await signIn(bobCtx, `http://127.0.0.1:${bobLink.port}/`, "bob");

  // Alice starts a 1:1 and writes.
  await alice.fill("#direct-user", "bob");
  await alice.click("#new-direct button[type=submit]");
  await until(alice, "conversation open", () => document.querySelector("#conv-title")?.textContent === "bob");
  await alice.fill("#compose", "hi bob");
  await alice.press("#compose", "Enter");
  // Bob's client acks DELIVERED by itself: alice sees ✓✓ before bob opens the chat.
  await msgStatus(alice, 1, "delivered", "alice sees delivered");
  assert.equal(await text(alice, '#messages li[data-seq="1"] .mark'), "\u2713\u2713");

  // Bob sees the conversation with one unread, opens it; alice sees it read.
  const bobRow = 'li[data-thread="dm:alice:bob"]';
  await until(bob, "bob's unread badge", (s) => document.querySelector(`${s} .unread`)?.textContent === "1", bobRow);
  await bob.click(bobRow);
  await until(bob, "bob sees the message", () => document.querySelector('#messages li[data-seq="1"] .text')?.textContent === "hi bob");
  await msgStatus(alice, 1, "read", "alice sees read");
  // Presence both ways.
  await until(alice, "alice sees bob online", () => document.querySelector("#conv-sub")?.textContent === "online");
  await until(bob, "bob sees alice online", () => document.querySelector("#conv-sub")?.textContent === "online");

  // Bob types, then answers.
  await bob.type("#compose", "hello alice", { delay: 5 });
  await until(alice, "alice sees bob typing", () => (document.querySelector("#typing")?.textContent ?? "").includes("bob is typing"));
  await bob.press("#compose", "Enter");
  await until(alice, "alice gets the answer", () => document.querySelector('#messages li[data-seq="2"] .text')?.textContent === "hello alice");
  await msgStatus(bob, 2, "read", "bob sees his answer read");
  await until(alice, "typing cleared", () => (document.querySelector("#typing")?.textContent ?? "") === "");

  // Bob loses his network.
  await bobCtx.setOffline(true);
  await bobLink.down();
  await until(bob, "bob sees he is offline", () =>
    ["disconnected", "reconnecting", "connecting"].includes(document.querySelector("#conn")?.getAttribute("data-state") ?? ""),
  );
  await until(alice, "alice sees bob's last seen", () => (document.querySelector("#conv-sub")?.textContent ?? "").startsWith("last seen"));
  for (const t of ["are you there?", "ping me when back"]) {
    await alice.fill("#compose", t);
    await alice.press("#compose", "Enter");
  }
  await msgStatus(alice, 4, "sent", "alice's messages stored, not delivered");
  assert.equal(await alice.getAttribute('#messages li[data-seq="3"]', "data-status"), "sent");
  await alice.screenshot({ path: path.join(SHOTS, "alice-while-bob-offline.png") });
  await bob.screenshot({ path: path.join(SHOTS, "bob-offline.png") });

  // Bob comes back and catches up: both messages, in order; alice sees them read.
  await bobLink.up();
  await bobCtx.setOffline(false);
  await until(bob, "bob reconnected", () => document.querySelector("#conn")?.getAttribute("data-state") === "connected");
  await until(bob, "bob caught up", () => document.querySelector('#messages li[data-seq="4"] .text')?.textContent === "ping me when back");
  const bobSeqs = await bob.$$eval("#messages li.msg", (els) => els.map((e) => e.getAttribute("data-seq")));
  assert.deepEqual(bobSeqs, ["1", "2", "3", "4"], "each message once, in order");
  await msgStatus(alice, 4, "read", "alice sees the caught-up messages read");
  await msgStatus(alice, 3, "read", "the read mark covers the earlier one too");
  await until(alice, "alice sees bob online again", () => document.querySelector("#conv-sub")?.textContent === "online");
  await alice.screenshot({ path: path.join(SHOTS, "alice.png") });
  await bob.screenshot({ path: path.join(SHOTS, "bob.png") });

  // A long group from another client (the SDK on Node): alice scrolls up through history.
  const carol = await connected(server.wsUrl, "carol");
  const group = await carol.client.createGroup(["alice"], "history");
  for (let i = 1; i <= 70; i++) await carol.client.send(group.threadId, `c${i}`);
  const groupRow = `li[data-thread="${group.threadId}"]`;
  await until(alice, "alice sees the group", (s) => document.querySelector(s) !== null, groupRow);
  // A reload starts a new client (signed in again from the tab's session storage; its
  // thread positions from IndexedDB): the unread count comes from the server, the
  // messages from history. Reloaded once the 70 are saved as handed to the app (a
  // reload before would see the unsaved rest again as new events, which is allowed).
  await waitFor("alice's position saved", async () => (await storedPosition(alice, "alice", group.threadId)) === 70, WAIT);
  await alice.reload();
  await until(alice, "alice back after the reload", () => document.querySelector("#conn")?.getAttribute("data-state") === "connected");
  await until(alice, "70 unread", (s) => document.querySelector(`${s} .unread`)?.textContent === "70", groupRow);
  await alice.click(groupRow);
  await until(alice, "latest page", () => document.querySelectorAll("#messages li.msg").length === 50);
  assert.equal(await text(alice, "#messages li.msg:last-child .text"), "c70");
  await alice.locator("#scroller").evaluate((el) => el.scrollTo(0, 0));
  await until(alice, "older page", () => document.querySelectorAll("#messages li.msg").length === 70);
  await until(alice, "start reached", () => document.querySelector("#history-state")?.textContent === "Start of the conversation");
  assert.equal(await text(alice, "#messages li.msg:first-child .text"), "c1");
  assert.equal(await text(alice, "#conv-sub"), "2 members, 1 online");
  // In a group, who read my message is spelled out.
  await alice.fill("#compose", "thanks carol");
  await alice.press("#compose", "Enter");
  await waitFor("carol gets alice's message", () => carol.messages(group.threadId).some((m) => m.text === "thanks carol"));
  const thanks = carol.messages(group.threadId).find((m) => m.text === "thanks carol");
  await carol.client.markRead(group.threadId, thanks?.messageId ?? "");
  await until(alice, "read by carol", (seq) => document.querySelector(`#messages li[data-seq="${seq}"] .readby`)?.textContent === "Read by carol", thanks?.seq);
  await alice.screenshot({ path: path.join(SHOTS, "alice-group.png") });
  await carol.client.close();

  // Bob, on his conversation list, misses two messages while offline: after the
  // catch-up the unread badge counts each of them once.
  await bob.click("#back");
  await bobCtx.setOffline(true);
  await bobLink.down();
  await until(bob, "bob offline again", () => document.querySelector("#conn")?.getAttribute("data-state") !== "connected");
  await alice.click(bobRow);
  await until(alice, "the 1:1 reloaded from history", () => document.querySelector('#messages li[data-seq="4"]') !== null);
  for (const t of ["one more", "and another"]) {
    await alice.fill("#compose", t);
    await alice.press("#compose", "Enter");
  }
  await msgStatus(alice, 6, "sent", "stored while bob is away");
  await bobLink.up();
  await bobCtx.setOffline(false);
  await until(bob, "bob back again", () => document.querySelector("#conn")?.getAttribute("data-state") === "connected");
  await until(bob, "the preview caught up", (s) => (document.querySelector(`${s} .last`)?.textContent ?? "").includes("and another"), bobRow);
  assert.equal(await text(bob, `${bobRow} .unread`), "2");

  // A refused token is reported on the sign-in form (the page cannot see the 401
  // itself; the SDK asks with a plain GET).
  const evil = await browser.newContext();
  const page = await evil.newPage();
  await page.goto(base);
  await page.fill("#signin-token", "not a valid token");
  await page.click("#signin-form button[type=submit]");
  await until(page, "refusal shown", () => (document.querySelector("#signin-error")?.textContent ?? "").includes("refused"));
  assert.equal(await page.isVisible("#signin"), true);

  await Promise.all([aliceCtx.close(), bobCtx.close(), evil.close()]);
  await bobLink.down();
});

test("the IndexedDB store keeps the client store contract in Chromium", { timeout: 60_000 }, async () => {
  // The same contract as the memory and file stores (test/store-contract.ts), bundled
  // with the store into the page: a real browser's IndexedDB, no fake.
  const bundle = await build({
    stdin: {
      contents: `
        import { storeContract } from "./test/store-contract.ts";
        import { IndexedDbStore } from "./src/indexeddb.ts";
        window.__storeContract = (name) =>
          storeContract(() => IndexedDbStore.open(name), async (s) => s.close());
      `,
      resolveDir: pkgRoot,
      loader: "ts",
    },
    bundle: true,
    write: false,
    format: "iife",
    target: "es2020",
    logLevel: "silent",
  });
  const code = bundle.outputFiles[0]?.text ?? "";
  // The chat's origin gives IndexedDB a real origin; its CSP would refuse an inline script.
  const ctx = await browser.newContext({ bypassCSP: true });
  const page = await ctx.newPage();
  await page.goto(`http://127.0.0.1:${server.port}/`);
  await page.addScriptTag({ content: code });
  await page.evaluate((name) => (window as unknown as { __storeContract(n: string): Promise<void> }).__storeContract(name), "contract");
  // And it is still there after a reload (a new page on the same profile's database).
  await page.reload();
  const outbox = await idbRead(page, "contract", "outbox");
  assert.equal(outbox, 36);
  await ctx.close();
});

/**
 * Reads an IndexedDB database of the page: how many rows `store` has, or with `key` that
 * row (undefined when the database or the row does not exist).
 */
function idbRead(page: Page, name: string, store: string, key?: string): Promise<unknown> {
  return page.evaluate(
    ([db, os, k]) =>
      new Promise<unknown>((resolve, reject) => {
        const req = indexedDB.open(db);
        req.onerror = () => reject(req.error);
        req.onsuccess = () => {
          const conn = req.result;
          if (!conn.objectStoreNames.contains(os)) {
            conn.close();
            resolve(k === undefined ? 0 : undefined);
            return;
          }
          const objects = conn.transaction(os).objectStore(os);
          const r: IDBRequest = k === undefined ? objects.count() : objects.get(k);
          r.onsuccess = () => {
            conn.close();
            resolve(r.result);
          };
          r.onerror = () => reject(r.error);
        };
      }),
    [name, store, key] as const,
  );
}

/** The position the chat's IndexedDB store of `user` holds for a thread (0 if none). */
async function storedPosition(page: Page, user: string, threadId: string): Promise<number> {
  const row = (await idbRead(page, `messenger:${user}`, "threads", threadId)) as { heldSeq?: number } | undefined;
  return row?.heldSeq ?? 0;
}

/** How many sends the chat's IndexedDB store of `user` holds. */
async function storedSends(page: Page, user: string): Promise<number> {
  return (await idbRead(page, `messenger:${user}`, "outbox")) as number;
}

test("a message written while the server is down survives a reload or a closed tab and arrives exactly once", { timeout: 120_000 }, async () => {
  // The server keeps its data in SQLite; it is killed and started again on the same
  // folder. The page comes through a proxy that serves the chat's built files itself
  // (as a cached app would load) and forwards the rest: while the server is down the
  // page still loads, and its WebSocket and everything else fail.
  const dataDir = scratchDir("browser-restart");
  const own = await startServer({ dataDir });
  const front = await Proxy.start(own.port);
  const assets = path.join(repoRoot, "messenger-server", "assets", "web");
  for (const [url, file, type] of [
    ["/", "index.html", "text/html"],
    ["/index.html", "index.html", "text/html"],
    ["/chat.js", "chat.js", "text/javascript"],
    ["/chat.css", "chat.css", "text/css"],
  ] as const) {
    front.files.set(url, { type, body: readFileSync(path.join(assets, file)) });
  }
  const base = `http://127.0.0.1:${front.port}/`;
  const ctx = await browser.newContext({ viewport: { width: 1000, height: 700 } });
  const bob = await connected(own.wsUrl, "dora");
  const alice = await signIn(ctx, base, "cleo");
  await alice.fill("#direct-user", "dora");
  await alice.click("#new-direct button[type=submit]");
  await until(alice, "conversation open", () => document.querySelector("#conv-title")?.textContent === "dora");
  await alice.fill("#compose", "before");
  await alice.press("#compose", "Enter");
  await msgStatus(alice, 1, "delivered", "the first message delivered");

  await own.kill();
  await until(alice, "cleo sees she is offline", () => document.querySelector("#conn")?.getAttribute("data-state") !== "connected");
  await alice.fill("#compose", "written offline");
  await alice.press("#compose", "Enter");
  await until(alice, "the message waits", () => document.querySelector("#messages li[data-temp] .text")?.textContent === "written offline");
  await waitFor("the send in IndexedDB", async () => (await storedSends(alice, "cleo")) === 1, WAIT);
  await alice.screenshot({ path: path.join(SHOTS, "offline-before-reload.png") });

  // The tab reloads with the server still down: the message is still there, waiting.
  await alice.reload();
  await until(alice, "the waiting message after the reload", () => document.querySelector("#messages li[data-temp] .text")?.textContent === "written offline");
  assert.notEqual(await alice.getAttribute("#conn", "data-state"), "connected");
  await until(alice, "the list shows it waiting", () => (document.querySelector('li[data-thread="dm:cleo:dora"] .last')?.textContent ?? "").includes("written offline"));
  await alice.screenshot({ path: path.join(SHOTS, "offline-after-reload.png") });

  // The server comes back (same data); the browser's `online` event cuts the backoff short.
  const again = await startServer({ port: own.port, dataDir });
  await ctx.setOffline(true);
  await ctx.setOffline(false);
  // Generous: should the event be missed, the next backoff attempt (at most 30 s) connects.
  await until(alice, "cleo reconnected", () => document.querySelector("#conn")?.getAttribute("data-state") === "connected", undefined, 45_000);
  await until(alice, "stored as seq 2", () => document.querySelector('#messages li[data-seq="2"] .text')?.textContent === "written offline");
  await until(alice, "no waiting copy left", () => document.querySelector("#messages li[data-temp]") === null);
  await waitFor("dora gets it", () => bob.messages("dm:cleo:dora").length === 2, WAIT);
  await settle(bob);
  assert.deepEqual(
    bob.messages("dm:cleo:dora").map((m) => m.text),
    ["before", "written offline"],
  );
  const shown = await alice.$$eval("#messages li.msg .text", (els) => els.map((e) => e.textContent));
  assert.deepEqual(shown, ["before", "written offline"], "each once");
  assert.equal(await storedSends(alice, "cleo"), 0);
  const history = await bob.client.historyAfter("dm:cleo:dora", 0);
  assert.deepEqual(
    history.map((m) => m.text),
    ["before", "written offline"],
    "stored once",
  );

  // Another reload with the server up: nothing is sent again, nothing shown twice.
  await alice.reload();
  await until(alice, "cleo online again", () => document.querySelector("#conn")?.getAttribute("data-state") === "connected");
  await until(alice, "the conversation from history", () => document.querySelectorAll("#messages li.msg").length === 2);
  await settle(bob);
  assert.equal((await bob.client.historyAfter("dm:cleo:dora", 0)).length, 2);
  assert.deepEqual(await alice.$$eval("#messages li.msg .text", (els) => els.map((e) => e.textContent)), ["before", "written offline"]);
  await alice.screenshot({ path: path.join(SHOTS, "offline-sent-once.png") });

  // Once more with the tab closed instead of reloaded: a new page on the same profile
  // (no session left: the user signs in again) finds the message and sends it once.
  await again.kill();
  await until(alice, "cleo offline again", () => document.querySelector("#conn")?.getAttribute("data-state") !== "connected");
  await alice.fill("#compose", "from a closed tab");
  await alice.press("#compose", "Enter");
  await waitFor("that send in IndexedDB", async () => (await storedSends(alice, "cleo")) === 1, WAIT);
  await alice.close();
  const reopened = await ctx.newPage();
  reopened.on("pageerror", (e) => console.error(`[cleo] page error: ${e.message}`));
  await reopened.goto(base);
  await reopened.fill("#signin-name", "cleo");
  await reopened.click("#signin-form button[type=submit]");
  await until(reopened, "the list shows it waiting", () =>
    (document.querySelector('li[data-thread="dm:cleo:dora"] .last')?.textContent ?? "").includes("from a closed tab"),
  );
  const third = await startServer({ port: own.port, dataDir });
  await ctx.setOffline(true);
  await ctx.setOffline(false);
  await until(reopened, "cleo reconnected once more", () => document.querySelector("#conn")?.getAttribute("data-state") === "connected", undefined, 45_000);
  await reopened.click('li[data-thread="dm:cleo:dora"]');
  await until(reopened, "stored as seq 3", () => document.querySelector('#messages li[data-seq="3"] .text')?.textContent === "from a closed tab");
  await until(reopened, "the whole conversation, once", () => document.querySelectorAll("#messages li.msg").length === 3);
  await until(reopened, "no waiting copy", () => document.querySelector("#messages li[data-temp]") === null);
  await waitFor("dora gets it", () => bob.messages("dm:cleo:dora").length === 3, WAIT);
  await settle(bob);
  assert.deepEqual(
    (await bob.client.historyAfter("dm:cleo:dora", 0)).map((m) => m.text),
    ["before", "written offline", "from a closed tab"],
    "each stored once",
  );
  assert.deepEqual(
    bob.messages("dm:cleo:dora").map((m) => m.text),
    ["before", "written offline", "from a closed tab"],
  );
  assert.equal(await storedSends(reopened, "cleo"), 0);
  await ctx.close();
  await bob.client.close();
  await front.close();
  await third.stop();
});
