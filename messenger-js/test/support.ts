// Test support: the real messenger-server binary as a child process, a WebSocket proxy
// that can drop, duplicate and cut traffic, and HS256 JWTs minted for the tests.

import { spawn, type ChildProcess } from "node:child_process";
import { createHmac } from "node:crypto";
import { existsSync, mkdtempSync, rmSync } from "node:fs";
import { tmpdir } from "node:os";
import http from "node:http";
import net from "node:net";
import path from "node:path";
import { fileURLToPath } from "node:url";
import WebSocket, { WebSocketServer } from "ws";

import { MessengerClient, MessengerError, type ClientEvents, type ClientOptions, type Message } from "../src/index.js";

const here = path.dirname(fileURLToPath(import.meta.url));
/** messenger-js/ (tests run from build-test/test/). */
export const pkgRoot = path.resolve(here, "..", "..");
export const repoRoot = path.resolve(pkgRoot, "..");

/** What the tests opened, closed by {@link cleanup} even when a test failed. */
const opened = { clients: new Set<MessengerClient>(), proxies: new Set<Proxy>(), dirs: new Set<string>() };

/** Server processes still running: killed when the test process exits, whatever happened. */
const children = new Set<ChildProcess>();
process.on("exit", () => {
  for (const c of children) c.kill("SIGKILL");
});

/** Closes every client and proxy a test opened and did not close; removes its scratch folders. */
export async function cleanup(): Promise<void> {
  await Promise.all([...opened.clients].map((c) => c.close().catch(() => {})));
  await Promise.all([...opened.proxies].map((p) => p.close().catch(() => {})));
  opened.clients.clear();
  opened.proxies.clear();
  for (const d of opened.dirs) rmSync(d, { recursive: true, force: true });
  opened.dirs.clear();
}

/** A new empty folder (a server's data directory, a client store's), removed by {@link cleanup}. */
export function scratchDir(prefix: string): string {
  const d = mkdtempSync(path.join(tmpdir(), `messenger-js-${prefix}-`));
  opened.dirs.add(d);
  return d;
}

/** Every wait in the tests is bounded by this. */
export const WAIT_MS = 8000;

/** The server binary: $MESSENGER_SERVER_BIN or target/debug/messenger-server. */
export function serverBin(): string {
  const bin = process.env.MESSENGER_SERVER_BIN ?? path.join(repoRoot, "target", "debug", "messenger-server");
  if (!existsSync(bin)) {
    throw new Error(
      `${bin} does not exist: build it with \`cargo build -p messenger-server --features cli --bin messenger-server\` ` +
        "(or point MESSENGER_SERVER_BIN at one)",
    );
  }
  return bin;
}

/** A free TCP port on 127.0.0.1. */
export async function freePort(): Promise<number> {
  return new Promise((resolve, reject) => {
    const s = net.createServer();
    s.once("error", reject);
    s.listen(0, "127.0.0.1", () => {
      const a = s.address() as net.AddressInfo;
      s.close(() => resolve(a.port));
    });
  });
}

/** Polls `cond` until it holds or `ms` pass; fails with `what`. */
export async function waitFor(what: string, cond: () => boolean | Promise<boolean>, ms = WAIT_MS): Promise<void> {
  const deadline = Date.now() + ms;
  for (;;) {
    if (await cond()) return;
    if (Date.now() > deadline) throw new Error(`timed out waiting for ${what}`);
    await new Promise((r) => setTimeout(r, 10));
  }
}

/** A running messenger-server process. */
export interface Server {
  port: number;
  /** ws://127.0.0.1:PORT/ws */
  wsUrl: string;
  /** SIGTERM, then wait for the exit. */
  stop(): Promise<void>;
  /** SIGKILL (a crash: no drain, no goodbye to the clients), then wait for the exit. */
  kill(): Promise<void>;
  /** The log so far (stdout and stderr). */
  log(): string;
}

/**
 * Starts the real server on `port` (a free one by default) and waits for /healthz.
 * With `dataDir` it keeps messages in its default durable store (SQLite) there, so a
 * server started again on the same folder has them; without, in memory.
 */
export async function startServer(opts: { port?: number; jwtSecret?: string; args?: string[]; dataDir?: string } = {}): Promise<Server> {
  const port = opts.port ?? (await freePort());
  const env: NodeJS.ProcessEnv = { ...process.env, RUST_LOG: process.env.RUST_LOG ?? "warn" };
  delete env.MESSENGER_JWT_SECRET;
  if (opts.jwtSecret !== undefined) env.MESSENGER_JWT_SECRET = opts.jwtSecret;
  const args = [
    "--listen",
    `127.0.0.1:${port}`,
    "--presence-grace",
    "200ms",
    "--drain-timeout",
    "500ms",
    // Durable in `dataDir` (sync normal: survives a killed process, which is what the
    // restart tests do); else ephemeral: an empty store and no data directory left.
    ...(opts.dataDir !== undefined ? ["--store", "sqlite", "--data-dir", opts.dataDir, "--sync", "normal"] : ["--store", "memory"]),
    ...(opts.args ?? []),
  ];
  let log = "";
  let exited: number | null | undefined;
  const child: ChildProcess = spawn(serverBin(), args, { env, stdio: ["ignore", "pipe", "pipe"] });
  children.add(child);
  child.stdout?.on("data", (d) => (log += d));
  child.stderr?.on("data", (d) => (log += d));
  const exit = new Promise<void>((resolve) =>
    child.once("exit", (code) => {
      exited = code;
      children.delete(child);
      resolve();
    }),
  );
  try {
    await waitFor("the server's /healthz", async () => {
      if (exited !== undefined) throw new Error(`the server exited (${exited}):\n${log}`);
      try {
        const r = await fetch(`http://127.0.0.1:${port}/healthz`);
        return r.ok;
      } catch {
        return false;
      }
    });
  } catch (e) {
    child.kill("SIGKILL");
    throw e;
  }
  return {
    port,
    wsUrl: `ws://127.0.0.1:${port}/ws`,
    log: () => log,
    async stop() {
      if (exited === undefined) child.kill("SIGTERM");
      const killer = setTimeout(() => child.kill("SIGKILL"), 5000);
      await exit;
      clearTimeout(killer);
    },
    async kill() {
      if (exited === undefined) child.kill("SIGKILL");
      await exit;
    },
  };
}

/** One proxied connection. */
export interface ProxiedConn {
  /** The user in the token (`?token=`). */
  token: string;
  /** Writes a frame to the client as if the server sent it. */
  toClient(text: string): void;
}

/** A frame the proxy passed on (see {@link Proxy.wire}). */
export interface WireFrame {
  /** The proxied connection, numbered from 1 in the order they were opened. */
  conn: number;
  /** The user in the token. */
  token: string;
  /** `up`: client to server; `down`: server to client (before the filter). */
  dir: "up" | "down";
  text: string;
}

/**
 * Decides what reaches the client of each server frame: return the frames to forward
 * (none to drop it, two to duplicate it).
 */
export type ServerFilter = (text: string, conn: ProxiedConn) => string[];

/**
 * A WebSocket proxy in front of the real server. It forwards the upgrade's refusal
 * status (401) and plain HTTP requests as they are, can rewrite server frames, cut
 * every connection, and go down (port refused) and up again on the same port.
 */
export class Proxy {
  filter: ServerFilter = (t) => [t];
  /**
   * Files the proxy answers itself, by path (`/`, `/chat.js`): a page that still loads
   * while the server is down, as a cached app's would.
   */
  readonly files = new Map<string, { type: string; body: Buffer }>();
  /** Server frames seen per token, in order. */
  readonly seen: { token: string; text: string }[] = [];
  /**
   * Every frame in both directions, in the order the proxy passed them on: `up` from
   * the client to the server, `down` back; `conn` numbers the proxied connections.
   */
  readonly wire: WireFrame[] = [];
  private conns = 0;
  private server: http.Server | undefined;
  private readonly wss = new WebSocketServer({ noServer: true });
  private readonly pairs = new Set<{ down: WebSocket; up: WebSocket }>();
  private readonly sockets = new Set<net.Socket>();

  private constructor(
    readonly port: number,
    private readonly upstream: number,
  ) {}

  static async start(upstreamPort: number): Promise<Proxy> {
    const p = new Proxy(await freePort(), upstreamPort);
    await p.up();
    opened.proxies.add(p);
    return p;
  }

  get wsUrl(): string {
    return `ws://127.0.0.1:${this.port}/ws`;
  }

  /** Listens (again) on the proxy's port. */
  async up(): Promise<void> {
    const server = http.createServer((req, res) => {
      const file = this.files.get(new URL(req.url ?? "/", "http://x").pathname);
      if (file && req.method === "GET") {
        res.writeHead(200, { "content-type": file.type, "cache-control": "no-cache" });
        res.end(file.body);
        return;
      }
      const up = http.request(
        { host: "127.0.0.1", port: this.upstream, path: req.url, method: req.method, headers: req.headers },
        (r) => {
          res.writeHead(r.statusCode ?? 502, r.headers);
          r.pipe(res);
        },
      );
      up.on("error", () => {
        res.writeHead(502);
        res.end();
      });
      req.pipe(up);
    });
    server.on("connection", (s) => {
      this.sockets.add(s);
      s.on("close", () => this.sockets.delete(s));
    });
    server.on("upgrade", (req, socket, head) => this.upgrade(req, socket as net.Socket, head));
    await new Promise<void>((resolve, reject) => {
      server.once("error", reject);
      server.listen(this.port, "127.0.0.1", () => resolve());
    });
    this.server = server;
  }

  private upgrade(req: http.IncomingMessage, socket: net.Socket, head: Buffer): void {
    const token = new URL(req.url ?? "/", "http://x").searchParams.get("token") ?? "";
    const up = new WebSocket(`ws://127.0.0.1:${this.upstream}${req.url ?? "/ws"}`);
    const held: string[] = [];
    const conn = ++this.conns;
    let down: WebSocket | undefined;
    up.on("unexpected-response", (_r, res) => {
      socket.end(`HTTP/1.1 ${res.statusCode} Refused\r\ncontent-length: 0\r\nconnection: close\r\n\r\n`);
      up.terminate();
    });
    up.on("error", () => socket.destroy());
    up.on("message", (data) => {
      const text = data.toString();
      if (!down) {
        held.push(text);
        return;
      }
      this.forward(text, token, conn, down);
    });
    up.on("open", () => {
      this.wss.handleUpgrade(req, socket, head, (ws) => {
        down = ws;
        const pair = { down: ws, up };
        this.pairs.add(pair);
        for (const t of held.splice(0)) this.forward(t, token, conn, ws);
        ws.on("message", (d) => {
          if (up.readyState !== WebSocket.OPEN) return;
          const text = d.toString();
          this.wire.push({ conn, token, dir: "up", text });
          up.send(text);
        });
        ws.on("close", () => {
          this.pairs.delete(pair);
          up.close();
        });
        ws.on("error", () => up.terminate());
        up.on("close", (code) => {
          if (ws.readyState === WebSocket.OPEN) ws.close(code === 1005 || code === 1006 ? 1001 : code);
        });
      });
    });
  }

  private forward(text: string, token: string, connNo: number, down: WebSocket): void {
    this.seen.push({ token, text });
    this.wire.push({ conn: connNo, token, dir: "down", text });
    const conn: ProxiedConn = { token, toClient: (t) => down.readyState === WebSocket.OPEN && down.send(t) };
    for (const t of this.filter(text, conn)) conn.toClient(t);
  }

  /** Drops every connection at once, as a crashed server or a broken network would. */
  cut(): void {
    for (const { down, up } of this.pairs) {
      down.terminate();
      up.terminate();
    }
    this.pairs.clear();
    for (const s of this.sockets) s.destroy();
  }

  /** Cuts everything and stops listening: new connections are refused until {@link up}. */
  async down(): Promise<void> {
    const s = this.server;
    this.server = undefined;
    const closed = s ? new Promise<void>((r) => s.close(() => r())) : Promise.resolve();
    this.cut();
    await closed;
  }

  async close(): Promise<void> {
    await this.down();
    this.wss.close();
  }
}

/** An HS256 JWT with `sub` and `exp` (seconds since the epoch). */
export function jwt(secret: string, sub: string, expSeconds: number): string {
  const b64 = (v: unknown) => Buffer.from(JSON.stringify(v)).toString("base64url");
  const body = `${b64({ alg: "HS256", typ: "JWT" })}.${b64({ sub, exp: expSeconds })}`;
  const sig = createHmac("sha256", secret).update(body).digest("base64url");
  return `${body}.${sig}`;
}

/** Fast backoff for tests. */
export const fastBackoff = { initialMs: 20, maxMs: 200, multiplier: 2 };

/** A client on Node 20 (the `ws` package), with fast backoff, and what it emitted. */
export interface TestClient {
  client: MessengerClient;
  events: { [K in keyof ClientEvents]: ClientEvents[K][] };
  /** Messages of `thread`, in the order the app got them. */
  messages(thread: string): Message[];
}

export function testClient(url: string, token: ClientOptions["token"], extra: Partial<ClientOptions> = {}): TestClient {
  const client = new MessengerClient({
    url,
    token,
    WebSocket: WebSocket as unknown as ClientOptions["WebSocket"],
    backoff: fastBackoff,
    logger: { debug() {}, warn() {} },
    ...extra,
  });
  opened.clients.add(client);
  const events = { message: [], sent: [], receipt: [], presence: [], typing: [], thread: [], threadMute: [], state: [] } as TestClient["events"];
  for (const k of Object.keys(events) as (keyof ClientEvents)[]) {
    client.on(k, (ev) => (events[k] as unknown[]).push(ev));
  }
  return { client, events, messages: (t) => events.message.filter((m) => m.threadId === t) };
}

/** Connects a test client. */
export async function connected(url: string, token: ClientOptions["token"], extra: Partial<ClientOptions> = {}): Promise<TestClient> {
  const c = testClient(url, token, extra);
  await c.client.connect();
  return c;
}

/** The seqs of messages. */
export const seqs = (ms: Message[]) => ms.map((m) => m.seq);
/** The texts of messages. */
export const texts = (ms: Message[]) => ms.map((m) => m.text);
/** 1..n */
export const range = (from: number, to: number) => Array.from({ length: to - from + 1 }, (_, i) => from + i);

/**
 * Waits until a later round trip of `c` is answered: every frame the server sent `c`
 * before it (such as duplicates a proxy added) has been handled by then.
 */
export async function settle(...cs: TestClient[]): Promise<void> {
  for (const c of cs) {
    // The round trip needs a connection: one may still be (re)connecting after a
    // fault the test injected, or be replaced while the ping is in flight.
    let answered = false;
    await waitFor("a settling round trip", async () => {
      if (c.client.state.kind !== "connected") return false;
      try {
        await c.client.ping();
        answered = true;
      } catch (e) {
        if (!(e instanceof MessengerError) || e.kind !== "disconnected") throw e;
      }
      return answered;
    });
  }
}
