/**
 * The client: one WebSocket, the outbox, catch-up, gap filling and de-duplication.
 *
 * @module
 */

import { DEFAULT_BACKOFF, backoffDelay, type BackoffOptions } from "./backoff.js";
import { MessengerError } from "./errors.js";
import { Outbox, type PendingSend } from "./outbox.js";
import { decode, encode, type ClientFrame, type ReqId, type ServerFrame } from "./protocol.js";
import { ReceiptMarks } from "./receipts.js";
import { Sequencer, type Step } from "./sequencer.js";
import {
  MemoryStore,
  type ClientStore,
  type OutboxEntry,
  type OutboxKey,
  type ReceiptMark,
  type StoreChanges,
  type StoredState,
  type ThreadPosition,
} from "./store.js";
import type {
  AckStatus,
  ClientEvents,
  ConnectionState,
  HistoryPage,
  Message,
  PushTarget,
  Sent,
  Thread,
  ThreadMute,
  ThreadSummary,
  WebPushSubscriptionJSON,
} from "./types.js";

/**
 * The part of the WebSocket API the client uses: the browser's `WebSocket`, Node 22's
 * global one and the `ws` package's all fit.
 */
export interface WebSocketLike {
  /** 0 connecting, 1 open, 2 closing, 3 closed. */
  readonly readyState: number;
  /** Writes a text frame. */
  send(data: string): void;
  /** Starts the closing handshake. */
  close(code?: number, reason?: string): void;
  /** The connection is open. */
  onopen: ((ev: unknown) => void) | null;
  /** A frame arrived. */
  onmessage: ((ev: { data: unknown }) => void) | null;
  /** The connection closed. */
  onclose: ((ev: { code: number; reason: string }) => void) | null;
  /** Something failed; a close follows. */
  onerror: ((ev: unknown) => void) | null;
}

/** A constructor of {@link WebSocketLike}, such as `WebSocket` or `ws`'s default export. */
export type WebSocketConstructor = new (url: string) => WebSocketLike;

/** What a {@link TokenProvider} is told. */
export interface TokenRequest {
  /**
   * The server refused the last token with HTTP 401: return a fresh one. If the fresh
   * one is refused too, the client stops with an `auth` error.
   */
  refused: boolean;
}

/**
 * Gives the token for the next connection attempt. It is called before every attempt,
 * so cache the token and mint a new one when it is close to expiry or when
 * `refused` is true.
 */
export type TokenProvider = (req: TokenRequest) => string | Promise<string>;

/** Where the client's threads start on its first connection. */
export type InitialSync = "latest" | "full";

/** Logging hooks; the default logs warnings to the console and drops debug lines. */
export interface Logger {
  /** Details for debugging. */
  debug(msg: string, ...rest: unknown[]): void;
  /** Something went wrong that the client handles by itself. */
  warn(msg: string, ...rest: unknown[]): void;
}

/** How to build a {@link MessengerClient}. Only `url` and `token` are required. */
export interface ClientOptions {
  /** The server's WebSocket endpoint, `ws://host:port/ws` or `wss://...`. */
  url: string;
  /**
   * The token: a string (dev auth: the user id; otherwise a JWT), or a provider that
   * is asked before every connection attempt (token refresh).
   */
  token: string | TokenProvider;
  /**
   * The WebSocket implementation. Default: the platform's `globalThis.WebSocket`
   * (browsers, Node 22+). On Node 20 pass `ws`'s: `import WebSocket from "ws"`.
   */
  WebSocket?: WebSocketConstructor;
  /** Reconnection backoff; see {@link BackoffOptions}. */
  backoff?: Partial<BackoffOptions>;
  /** How long a request waits for its reply, ms. Default 10 000. */
  requestTimeoutMs?: number;
  /** How long one connection attempt may take up to `welcome`, ms. Default 10 000. */
  connectTimeoutMs?: number;
  /**
   * The client pings the server after this long without a frame, and replaces a
   * connection silent for twice this, ms. Default 15 000.
   */
  heartbeatMs?: number;
  /** Ack `DELIVERED` for messages from others handed to the app. Default true. */
  autoAckDelivered?: boolean;
  /**
   * On the first connection, `latest` (default) starts each thread at its current
   * last seq (only new messages become events; read older ones with the history
   * calls); `full` delivers every thread from seq 1.
   */
  initialSync?: InitialSync;
  /**
   * Positions the app already holds (thread id to the last seq it has), e.g. from
   * its storage: those threads continue exactly after them.
   */
  resume?: Record<string, number>;
  /** Page size of catch-up and gap fills (the server caps it at 200). Default 200. */
  fillPageSize?: number;
  /**
   * Sends written and not yet answered, at most; each answer lets the next one go.
   * Default {@link MAX_SENDS_IN_FLIGHT} (64). The server answers a connection's
   * requests in order and runs a read only after the sends before it, so this bounds
   * how long the catch-up or a gap fill waits behind an outbox flushed after an
   * outage. Values below 1 count as 1.
   */
  maxSendsInFlight?: number;
  /**
   * Where the outbox, each thread's position and the receipt marks are kept across
   * restarts. Default: a new {@link MemoryStore} (gone with the page). In browsers use
   * an `IndexedDbStore` (one database per user), on Node a `FileStore` from
   * `messenger-js/node`: an app restarted with messages in its outbox sends them once
   * when connected, and resumes each thread after the last message it handed to the app.
   */
  store?: ClientStore;
  /**
   * WebSocket APIs do not expose the HTTP status of a refused upgrade. When a
   * connection fails before opening, the client asks the same URL with a plain
   * `fetch` to tell a refused token (401) from a server that is down. Default: the
   * global `fetch`; `false` turns the probe off (then a refused token is retried with
   * backoff like any failure).
   */
  authProbe?: false | typeof fetch;
  /** Logging. */
  logger?: Logger;
}

/** A page-by-page reader of a thread's history, newest first; see {@link MessengerClient.historyPager}. */
export interface HistoryPager {
  /** The next older page, ascending by seq; empty once the start of the thread is reached. */
  older(): Promise<Message[]>;
  /** Whether older messages may remain. */
  readonly hasMore: boolean;
}

type Listener<T> = (ev: T) => void;

type Want = "thread" | "threads" | "history" | "presence" | "pushTarget" | "pushTargets" | "pushTargetRemoved" | "threadMute";

type Pending =
  | { kind: "send"; threadId: string; tempId: string }
  | { kind: "want"; want: Want; resolve(v: unknown): void; reject(e: MessengerError): void; timer: Timer }
  | { kind: "fireHead"; ping: number }
  | { kind: "firePing"; head: number; resolve(): void; reject(e: MessengerError): void; timer: Timer }
  | { kind: "ping"; t0: number; resolve(ms: number): void; reject(e: MessengerError): void; timer: Timer }
  | { kind: "catchUpList" }
  | { kind: "fill"; threadId: string };

type Timer = ReturnType<typeof setTimeout>;

type End = { lost: string } | { closed: true };

type Opened =
  | { ok: true; ws: WebSocketLike; userId: string; sessionId: string; early: string[] }
  | { ok: false; error: MessengerError };

/**
 * The default of {@link ClientOptions.maxSendsInFlight}: at most this many sends are
 * written and not yet answered (the server's own per-session cap). The server answers a
 * connection's requests in order and runs a read (the catch-up's `list_threads`, a gap
 * fill's `fetch_history`) only after the sends before it are answered. A client that
 * wrote its whole outbox at once after an outage (hundreds of sends) held its catch-up
 * and every gap fill behind all of it; under sustained overload those reads were not
 * answered before the next fault cut the connection, and the thread stayed stuck behind
 * its gap (found by the chaos suite, docs/reliability.md). With the cap a read waits
 * behind at most this many sends.
 */
export const MAX_SENDS_IN_FLIGHT = 64;

/** How long a send refused as transient (`rate_limited`, `unavailable`) waits. */
const SEND_RETRY_MS = 1000;
/** How long a catch-up refused as transient waits. */
const CATCH_UP_RETRY_MS = 1000;
/** Housekeeping period: acks, outbox retries, heartbeats. */
const TICK_MS = 250;
/** The `req_id` of automatic `DELIVERED` acks: not tracked, a refusal is only logged. */
const AUTO_ACK = "auto-ack";

const pairKey = (a: string, b: string) => `${a}\u0000${b}`;

/** Changes not yet handed to the client store, merged as they come. */
class Changes {
  userId: string | undefined;
  synced = false;
  added: OutboxEntry[] = [];
  removed: OutboxKey[] = [];
  threads = new Map<string, ThreadPosition>();
  receipts = new Map<string, ReceiptMark>();

  get empty(): boolean {
    return (
      this.userId === undefined &&
      !this.synced &&
      this.added.length === 0 &&
      this.removed.length === 0 &&
      this.threads.size === 0 &&
      this.receipts.size === 0
    );
  }

  /** The batch to save; this is empty afterwards. */
  take(): StoreChanges {
    const c: StoreChanges = {};
    if (this.userId !== undefined) c.userId = this.userId;
    if (this.synced) c.synced = true;
    if (this.added.length > 0) c.outboxAdded = this.added;
    if (this.removed.length > 0) c.outboxRemoved = this.removed;
    if (this.threads.size > 0) c.threads = [...this.threads.values()];
    if (this.receipts.size > 0) c.receipts = [...this.receipts.values()];
    this.userId = undefined;
    this.synced = false;
    this.added = [];
    this.removed = [];
    this.threads = new Map();
    this.receipts = new Map();
    return c;
  }

  /** A batch the store refused, minus its sends: kept under what came after it. */
  putBack(failed: StoreChanges): void {
    if (this.userId === undefined) this.userId = failed.userId;
    this.synced ||= failed.synced === true;
    this.removed = [...(failed.outboxRemoved ?? []), ...this.removed];
    for (const p of failed.threads ?? []) if (!this.threads.has(p.threadId)) this.threads.set(p.threadId, p);
    for (const r of failed.receipts ?? []) {
      const k = pairKey(r.threadId, r.userId);
      if (!this.receipts.has(k)) this.receipts.set(k, r);
    }
  }
}

const defaultLogger: Logger = {
  debug() {},
  warn(msg, ...rest) {
    console.warn(`[messenger] ${msg}`, ...rest);
  },
};

let tempCounter = 0;

/**
 * A new temp id, unique per client and page load: the time, a counter and randomness.
 * The server de-duplicates sends by (thread, sender, temp id).
 */
export function newTempId(): string {
  tempCounter += 1;
  const rand = Math.floor(Math.random() * 0x100000000).toString(36);
  return `t-${Date.now().toString(36)}-${tempCounter.toString(36)}-${rand}`;
}

/**
 * A messenger client. It keeps one WebSocket open (reconnecting with backoff), and
 * keeps the protocol's delivery guarantee for the app: every message reaches the
 * `message` listeners exactly once and in seq order per thread, across disconnects,
 * and every `send` that resolved is stored exactly once.
 *
 * ```ts
 * const client = new MessengerClient({ url: "ws://127.0.0.1:8080/ws", token: "alice" });
 * client.on("message", (m) => console.log(`${m.senderId}: ${m.text}`));
 * await client.connect();
 * const dm = await client.createDirect("bob");
 * await client.send(dm.threadId, "hi bob");
 * ```
 */
export class MessengerClient {
  private readonly opts: Required<
    Pick<
      ClientOptions,
      | "url"
      | "requestTimeoutMs"
      | "connectTimeoutMs"
      | "heartbeatMs"
      | "autoAckDelivered"
      | "initialSync"
      | "fillPageSize"
      | "maxSendsInFlight"
    >
  > &
    ClientOptions;
  private readonly backoff: BackoffOptions;
  private readonly log: Logger;
  private readonly WS: WebSocketConstructor | undefined;
  private readonly listeners = new Map<keyof ClientEvents, Set<Listener<never>>>();

  private readonly outbox = new Outbox();
  private readonly store: ClientStore;
  /** The store's state was read into the client (true) or could not be (false). */
  private loading: Promise<boolean> | undefined;
  private loadError: MessengerError | undefined;
  /** The user the store belongs to. */
  private storeUser: string | undefined;
  private readonly changes = new Changes();
  /** The save chain: one store save at a time, each taking every change made so far. */
  private saving: Promise<void> = Promise.resolve();
  private saveQueued = false;
  /** What the store holds (or will, after the pending save) per thread. */
  private readonly positions = new Map<string, ThreadPosition>();
  private readonly seq = new Sequencer();
  /** The receipts shown so far: a stale one (crossed in a failover) is dropped. */
  private readonly receipts = new ReceiptMarks();
  private readonly pendingReqs = new Map<number, Pending>();
  private nextReq = 1;
  private current: ConnectionState = { kind: "idle" };
  private me: string | undefined;
  private session: string | undefined;
  private ws: WebSocketLike | undefined;
  /** The first catch-up (which applies `initialSync`) is done. */
  private synced = false;
  /** This connection's catch-up list was answered: the connection was healthy. */
  private sessionSynced = false;
  private catchUpAt: number | undefined;
  private readonly acksDue = new Map<string, { seq: number; messageId: string }>();
  /**
   * The acks written on the current connection: owed again if it dies (acks have no
   * reply, and a connection the server already dropped swallows them).
   */
  private readonly acksOnConnection = new Map<string, { seq: number; messageId: string }>();
  private lastRx = 0;
  private lastPing = 0;

  private running: Promise<void> | undefined;
  private closing = false;
  private endSession: ((e: End) => void) | undefined;
  private abortOpen: (() => void) | undefined;
  private wake: (() => void) | undefined;
  private ready: { resolve(): void; reject(e: MessengerError): void; promise: Promise<void> } | undefined;
  private readonly onOnline = () => this.wake?.();

  /** Creates a client; nothing happens until {@link connect}. */
  constructor(options: ClientOptions) {
    this.opts = {
      requestTimeoutMs: 10_000,
      connectTimeoutMs: 10_000,
      heartbeatMs: 15_000,
      autoAckDelivered: true,
      initialSync: "latest",
      fillPageSize: 200,
      ...options,
      maxSendsInFlight: Math.max(1, Math.floor(options.maxSendsInFlight ?? MAX_SENDS_IN_FLIGHT)),
    };
    this.backoff = { ...DEFAULT_BACKOFF, ...options.backoff };
    this.log = options.logger ?? defaultLogger;
    this.store = options.store ?? new MemoryStore();
    this.WS = options.WebSocket ?? (globalThis as { WebSocket?: WebSocketConstructor }).WebSocket;
  }

  // ----- events --------------------------------------------------------------------

  /**
   * Listens to an event; returns a function that removes the listener. Listeners run
   * synchronously in the order the client produced the events; one that throws does
   * not disturb the client or the other listeners (the error is rethrown
   * asynchronously).
   */
  on<K extends keyof ClientEvents>(event: K, listener: (ev: ClientEvents[K]) => void): () => void {
    let set = this.listeners.get(event);
    if (!set) {
      set = new Set();
      this.listeners.set(event, set);
    }
    set.add(listener as Listener<never>);
    return () => this.off(event, listener);
  }

  /** Removes a listener added with {@link on}. */
  off<K extends keyof ClientEvents>(event: K, listener: (ev: ClientEvents[K]) => void): void {
    this.listeners.get(event)?.delete(listener as Listener<never>);
  }

  private emit<K extends keyof ClientEvents>(event: K, payload: ClientEvents[K]): void {
    const set = this.listeners.get(event);
    if (!set) return;
    for (const l of [...set]) {
      try {
        (l as Listener<ClientEvents[K]>)(payload);
      } catch (e) {
        queueMicrotask(() => {
          throw e;
        });
      }
    }
  }

  private setState(s: ConnectionState): void {
    this.current = s;
    this.emit("state", s);
  }

  // ----- accessors -----------------------------------------------------------------

  /** The current connection state. */
  get state(): ConnectionState {
    return this.current;
  }

  /** The user the server authenticated (known after the first `welcome`). */
  get userId(): string | undefined {
    return this.me;
  }

  /** The current session's id, while connected. */
  get sessionId(): string | undefined {
    return this.current.kind === "connected" ? this.session : undefined;
  }

  /** Sends waiting for the server's confirmation, oldest first. */
  pending(): PendingSend[] {
    return this.outbox.list();
  }

  /** The last seq handed to the app in a thread, if the client knows the thread. */
  position(threadId: string): number | undefined {
    return this.seq.position(threadId);
  }

  // ----- the client store -------------------------------------------------------------

  /**
   * Reads the client store (once; {@link connect} calls it too). Afterwards
   * {@link pending} lists the sends a previous run left unconfirmed (they go out on the
   * next connection; a `send` with the same `tempId` gives a promise for one) and
   * {@link position} the threads' positions, even while offline. Rejects with a `store`
   * error when the store cannot be read.
   */
  async load(): Promise<void> {
    if (!this.loading) {
      this.loading = this.store.load().then(
        (state) => {
          this.restore(state);
          return true;
        },
        (e: unknown) => {
          this.loadError =
            e instanceof MessengerError ? e : new MessengerError("store", `the client store could not be read: ${String(e)}`, { cause: e });
          return false;
        },
      );
    }
    if (!(await this.loading)) throw this.loadError;
  }

  private restore(state: StoredState): void {
    if (state.userId !== undefined) {
      this.storeUser = state.userId;
      this.me ??= state.userId;
    }
    this.synced ||= state.synced;
    this.outbox.restoreAll(state.outbox);
    for (const t of state.threads) {
      const p: ThreadPosition = { threadId: t.threadId, heldSeq: t.heldSeq };
      if (t.ackDue) p.ackDue = { ...t.ackDue };
      this.positions.set(t.threadId, p);
      if (p.ackDue && this.opts.autoAckDelivered) this.acksDue.set(t.threadId, p.ackDue);
    }
    for (const [threadId, seq] of Object.entries(this.opts.resume ?? {})) {
      const p = this.positions.get(threadId);
      if (p && seq > p.heldSeq) this.setPosition(threadId, (q) => (q.heldSeq = seq));
    }
    for (const p of this.positions.values()) this.seq.startAt(p.threadId, p.heldSeq);
    for (const r of state.receipts) this.receipts.restore(r.threadId, r.userId, r.deliveredSeq, r.readSeq);
  }

  /** Records a thread's position for the store when `f` changes it. */
  private setPosition(threadId: string, f: (p: ThreadPosition) => void): void {
    let p = this.positions.get(threadId);
    if (!p) {
      p = { threadId, heldSeq: 0 };
      this.positions.set(threadId, p);
    }
    const before = `${p.heldSeq}/${p.ackDue?.seq}/${p.ackDue?.messageId}`;
    f(p);
    if (`${p.heldSeq}/${p.ackDue?.seq}/${p.ackDue?.messageId}` === before) return;
    const copy: ThreadPosition = { threadId, heldSeq: p.heldSeq };
    if (p.ackDue) copy.ackDue = { ...p.ackDue };
    this.changes.threads.set(threadId, copy);
    this.scheduleSave();
  }

  /** Saves what changed, after the save in progress (one at a time, batched). */
  private scheduleSave(): void {
    if (this.saveQueued) return;
    this.saveQueued = true;
    const loaded = this.loading ?? this.load().then(
      () => true,
      () => false,
    );
    this.saving = this.saving.then(async () => {
      if (!(await loaded)) {
        this.saveQueued = false;
        return;
      }
      await this.saveNow();
    });
  }

  private async saveNow(): Promise<void> {
    this.saveQueued = false;
    if (this.changes.empty) return;
    const batch = this.changes.take();
    try {
      await this.store.save(batch);
    } catch (e) {
      // Sends in the batch were never written to the server: they fail now. The rest is
      // kept and written with the next save.
      const err = e instanceof MessengerError ? e : new MessengerError("store", `the client store refused a save: ${String(e)}`, { cause: e });
      this.log.warn(`client store: ${err.message}`);
      for (const a of batch.outboxAdded ?? []) {
        // (One that joined a twin read from the store is stored already: it stays.)
        if (this.outbox.get(a.threadId, a.tempId)?.stored !== false) continue;
        const item = this.outbox.take(a.threadId, a.tempId);
        for (const w of item?.waiters ?? []) w.reject(err);
      }
      this.changes.putBack(batch);
      return;
    }
    if (batch.outboxAdded) {
      this.outbox.markStored(batch.outboxAdded);
      if (this.ws) this.flushOutbox(Date.now());
    }
  }

  /** Waits until every change made so far is in the store (a store that keeps failing: a few tries). */
  private async flushStore(): Promise<void> {
    for (let i = 0; i < 3 && (this.saveQueued || !this.changes.empty); i++) {
      if (!this.saveQueued) this.scheduleSave();
      await this.saving;
    }
    await this.saving;
  }

  // ----- lifecycle -----------------------------------------------------------------

  /**
   * Starts the client and resolves once it is connected and the first catch-up has
   * fixed where each thread starts. Until then failures are retried with backoff.
   * Rejects with an `auth` error when the token is refused, `retries_exhausted`
   * when `backoff.maxRetries` is reached, `closed` when {@link close} is called first.
   * Calling it again returns the same promise.
   */
  connect(): Promise<void> {
    if (this.ready) return this.ready.promise;
    let resolve!: () => void;
    let reject!: (e: MessengerError) => void;
    const promise = new Promise<void>((res, rej) => {
      resolve = res;
      reject = rej;
    });
    this.ready = { resolve, reject, promise };
    if (this.closing) {
      reject(new MessengerError("closed", "the client is closed"));
      return promise;
    }
    const g = globalThis as { addEventListener?: (t: string, l: () => void) => void };
    g.addEventListener?.("online", this.onOnline);
    this.running = this.load()
      .then(
        () => this.run(),
        (e: MessengerError) => this.stop(e),
      )
      .catch((e) => this.log.warn("client loop failed", e));
    return promise;
  }

  /**
   * Creates a client and connects it: `new MessengerClient(options)` then
   * {@link connect}. Add listeners before connecting if you need every event.
   */
  static async connect(options: ClientOptions): Promise<MessengerClient> {
    const c = new MessengerClient(options);
    await c.connect();
    return c;
  }

  /**
   * Closes the connection and stops for good, once everything the client changed is in
   * its store. Pending requests and queued sends reject with a `closed` error; the
   * sends stay in the store, so the next client on a persistent store sends them.
   */
  async close(): Promise<void> {
    if (this.closing) {
      await this.running;
      await this.flushStore();
      return;
    }
    this.closing = true;
    this.endSession?.({ closed: true });
    this.abortOpen?.();
    this.wake?.();
    if (this.running) await this.running;
    else this.stop(undefined);
    await this.flushStore();
  }

  private async run(): Promise<void> {
    let failures = 0;
    let refreshed = false;
    let outcome: MessengerError | undefined;
    for (;;) {
      if (this.closing) break;
      this.setState({ kind: "connecting", attempt: failures });
      const opened = await this.open(refreshed);
      if (this.closing) {
        if (opened.ok) opened.ws.close(1000);
        break;
      }
      if (opened.ok && this.storeUser !== undefined && opened.userId !== this.storeUser) {
        opened.ws.onmessage = opened.ws.onclose = opened.ws.onerror = null;
        opened.ws.close(1000);
        outcome = new MessengerError(
          "wrong_user",
          `the server authenticated ${opened.userId} but the client store belongs to ${this.storeUser}: open that user's store`,
        );
        break;
      }
      if (opened.ok) {
        refreshed = false;
        const end = await this.runSession(opened);
        if ("closed" in end) break;
        this.log.debug(`connection lost: ${end.lost}`);
        // Only a connection that got as far as catch-up resets the backoff: a server
        // that welcomes and drops at once must not be hammered.
        if (this.sessionSynced) failures = 0;
        else failures += 1;
        this.connectionLost();
        this.setState({ kind: "disconnected", reason: end.lost });
        if (this.exhausted(failures)) {
          outcome = new MessengerError("retries_exhausted", `gave up after ${failures} attempts: ${end.lost}`, {
            attempts: failures,
            cause: new MessengerError("connect", end.lost),
          });
          break;
        }
      } else {
        const e = opened.error;
        if (e.kind === "auth") {
          if (typeof this.opts.token === "function" && !refreshed) {
            // Ask the provider for a fresh token and try again at once.
            refreshed = true;
            this.log.debug("token refused; asking the provider for a fresh one");
            continue;
          }
          outcome = e;
          break;
        }
        if (e.kind === "invalid_url" || e.kind === "unsupported") {
          outcome = e;
          break;
        }
        failures += 1;
        this.log.debug(`connect failed (${failures}): ${e.message}`);
        if (this.exhausted(failures)) {
          outcome = new MessengerError("retries_exhausted", `gave up after ${failures} attempts: ${e.message}`, {
            attempts: failures,
            cause: e,
          });
          break;
        }
      }
      const delayMs = backoffDelay(this.backoff, failures);
      this.setState({ kind: "reconnecting", attempt: failures, delayMs });
      await this.sleep(delayMs);
    }
    this.stop(outcome);
  }

  private exhausted(failures: number): boolean {
    return this.backoff.maxRetries !== undefined && failures > this.backoff.maxRetries;
  }

  private sleep(ms: number): Promise<void> {
    return new Promise((resolve) => {
      const t = setTimeout(done, ms);
      function done() {
        clearTimeout(t);
        resolve();
      }
      this.wake = () => {
        this.wake = undefined;
        done();
      };
    });
  }

  /** Ends the client: everything still waiting fails with `err` (or `closed`). */
  private stop(err: MessengerError | undefined): void {
    const fail = err ?? new MessengerError("closed", "the client is closed");
    this.closing = true;
    for (const [, p] of this.pendingReqs) failPending(p, fail);
    this.pendingReqs.clear();
    this.outbox.failAll(fail);
    const g = globalThis as { removeEventListener?: (t: string, l: () => void) => void };
    g.removeEventListener?.("online", this.onOnline);
    if (err) this.log.warn(`client stopped: ${err.message}`);
    this.ready?.reject(fail);
    this.setState(err ? { kind: "closed", error: err } : { kind: "closed" });
  }

  // ----- one connection --------------------------------------------------------------

  private async token(refused: boolean): Promise<string> {
    const t = this.opts.token;
    return typeof t === "function" ? await t({ refused }) : t;
  }

  private async open(refused: boolean): Promise<Opened> {
    const url = this.opts.url;
    if (!/^wss?:\/\//i.test(url)) {
      return { ok: false, error: new MessengerError("invalid_url", `${url}: the scheme must be ws:// or wss://`) };
    }
    const WS = this.WS;
    if (!WS) {
      return {
        ok: false,
        error: new MessengerError(
          "unsupported",
          "no WebSocket implementation: pass one as ClientOptions.WebSocket (on Node 20: the `ws` package)",
        ),
      };
    }
    let token: string;
    try {
      token = await this.token(refused);
    } catch (e) {
      return { ok: false, error: new MessengerError("connect", `the token provider failed: ${String(e)}`, { cause: e }) };
    }
    let full: string;
    try {
      const u = new URL(url);
      u.searchParams.set("token", token);
      full = u.toString();
    } catch (e) {
      return { ok: false, error: new MessengerError("invalid_url", `${url}: ${String(e)}`) };
    }
    return new Promise<Opened>((resolve) => {
      let ws: WebSocketLike;
      try {
        ws = new WS(full);
      } catch (e) {
        resolve({ ok: false, error: new MessengerError("connect", String(e), { cause: e }) });
        return;
      }
      let opened = false;
      let done = false;
      let errorText = "";
      let welcome: { userId: string; sessionId: string } | undefined;
      const early: string[] = [];
      const finish = (r: Opened) => {
        if (done) return;
        done = true;
        this.abortOpen = undefined;
        clearTimeout(timer);
        if (!r.ok) {
          ws.onopen = ws.onmessage = ws.onerror = ws.onclose = null;
          try {
            ws.close();
          } catch {
            // already closed
          }
        }
        resolve(r);
      };
      const timer = setTimeout(
        () => finish({ ok: false, error: new MessengerError("connect", "connect timed out") }),
        this.opts.connectTimeoutMs,
      );
      this.abortOpen = () => finish({ ok: false, error: new MessengerError("closed", "the client is closed") });
      ws.onopen = () => {
        opened = true;
      };
      ws.onerror = (ev) => {
        const m = (ev as { message?: unknown; error?: { message?: unknown } })?.message;
        if (typeof m === "string") errorText = m;
      };
      ws.onmessage = (ev) => {
        if (typeof ev.data !== "string") return;
        if (welcome) {
          early.push(ev.data);
          return;
        }
        let f: ServerFrame | null;
        try {
          f = decode(ev.data);
        } catch (e) {
          finish({ ok: false, error: new MessengerError("protocol", `bad welcome: ${(e as Error).message}`) });
          return;
        }
        if (f?.type !== "welcome") {
          finish({ ok: false, error: new MessengerError("protocol", `expected welcome, got ${f?.type ?? "an unknown frame"}`) });
          return;
        }
        welcome = { userId: f.userId, sessionId: f.sessionId };
        // Resolve on the next turn so frames already queued behind `welcome` are kept.
        setTimeout(() => {
          if (done) return;
          if (ws.readyState !== 1) {
            finish({ ok: false, error: new MessengerError("connect", "closed right after welcome") });
            return;
          }
          done = true;
          this.abortOpen = undefined;
          clearTimeout(timer);
          resolve({ ok: true, ws, userId: f.userId, sessionId: f.sessionId, early });
        }, 0);
      };
      ws.onclose = (ev) => {
        if (done) return;
        if (welcome) {
          finish({ ok: false, error: new MessengerError("connect", `closed after welcome: ${ev.code}`) });
          return;
        }
        const status = opened ? undefined : statusFrom(errorText);
        const judge = async (): Promise<Opened> => {
          const s = status ?? (opened ? undefined : await this.probe(full));
          if (s === 401 || s === 403) {
            return { ok: false, error: new MessengerError("auth", `the server refused the token (HTTP ${s})`, { status: s }) };
          }
          const why = s !== undefined ? `HTTP ${s}` : errorText || `closed (${ev.code}) before welcome`;
          return { ok: false, error: new MessengerError("connect", why) };
        };
        judge().then(finish, (e) => finish({ ok: false, error: new MessengerError("connect", String(e)) }));
      };
    });
  }

  /** Asks the WebSocket URL with plain HTTP: 401 means the token was refused. */
  private async probe(wsUrl: string): Promise<number | undefined> {
    const f = this.opts.authProbe === undefined ? (globalThis as { fetch?: typeof fetch }).fetch : this.opts.authProbe;
    if (!f) return undefined;
    const httpUrl = wsUrl.replace(/^ws/i, "http");
    const abort = new AbortController();
    const t = setTimeout(() => abort.abort(), 5000);
    try {
      const r = await f(httpUrl, { method: "GET", cache: "no-store", signal: abort.signal });
      return r.status === 401 || r.status === 403 ? r.status : undefined;
    } catch {
      return undefined; // the server is down, or another origin without CORS
    } finally {
      clearTimeout(t);
    }
  }

  private runSession(o: { ws: WebSocketLike; userId: string; sessionId: string; early: string[] }): Promise<End> {
    const { ws } = o;
    return new Promise<End>((resolve) => {
      let ended = false;
      const end = (e: End) => {
        if (ended) return;
        ended = true;
        clearInterval(tick);
        this.endSession = undefined;
        this.ws = undefined;
        ws.onmessage = ws.onclose = ws.onerror = ws.onopen = null;
        if ("closed" in e || ws.readyState <= 1) {
          try {
            ws.close(1000);
          } catch {
            // already closed
          }
        }
        resolve(e);
      };
      this.endSession = end;
      this.ws = ws;
      this.lastRx = Date.now();
      this.lastPing = 0;
      ws.onmessage = (ev) => {
        this.lastRx = Date.now();
        if (typeof ev.data === "string") this.onText(ev.data);
      };
      ws.onclose = (ev) => end({ lost: `closed by server: ${ev.code}${ev.reason ? ` ${ev.reason}` : ""}` });
      ws.onerror = () => {};
      const tick = setInterval(() => {
        const now = Date.now();
        // Dead when a heartbeat ping got nothing back for a whole interval. Judged from
        // the ping, not from the last frame alone: a background tab's timers may fire
        // only once a minute, and a quiet but healthy connection must survive that.
        if (this.lastPing > this.lastRx && now - this.lastPing > this.opts.heartbeatMs) {
          end({ lost: "heartbeat timeout" });
          return;
        }
        if (now - this.lastRx >= this.opts.heartbeatMs && now - this.lastPing >= this.opts.heartbeatMs) {
          this.lastPing = now;
          this.write(encode({ type: "ping" }, "heartbeat"));
        }
        this.tick(now);
      }, TICK_MS);
      this.connected(o.userId, o.sessionId);
      for (const text of o.early) if (!ended) this.onText(text);
    });
  }

  private write(text: string): void {
    const ws = this.ws;
    if (!ws || ws.readyState !== 1) return;
    try {
      ws.send(text);
    } catch (e) {
      this.endSession?.({ lost: `write failed: ${String(e)}` });
    }
  }

  private onText(text: string): void {
    let f: ServerFrame | null;
    try {
      f = decode(text);
    } catch (e) {
      this.log.debug(`ignoring an undecodable frame: ${(e as Error).message}`);
      return;
    }
    if (f) this.onFrame(f);
    if (this.synced && this.ready) this.ready.resolve();
  }

  // ----- protocol state machine ------------------------------------------------------

  private request(frame: ClientFrame, p: Pending): number {
    const id = this.nextReq++;
    this.pendingReqs.set(id, p);
    this.write(encode(frame, id));
    return id;
  }

  private take(reqId: ReqId | undefined): Pending | undefined {
    if (typeof reqId !== "number") return undefined;
    const p = this.pendingReqs.get(reqId);
    this.pendingReqs.delete(reqId);
    if (p && "timer" in p) clearTimeout(p.timer);
    return p;
  }

  private timeout(id: () => number): Timer {
    return setTimeout(() => {
      const p = this.take(id());
      if (p) failPending(p, new MessengerError("timeout", `no reply within ${this.opts.requestTimeoutMs} ms`));
    }, this.opts.requestTimeoutMs);
  }

  private connected(userId: string, sessionId: string): void {
    this.me = userId;
    if (this.storeUser === undefined) {
      this.storeUser = userId;
      this.changes.userId = userId;
      this.scheduleSave();
    }
    this.session = sessionId;
    this.sessionSynced = false;
    this.setState({ kind: "connected", userId, sessionId });
    // The catch-up first: its list (and the fills it asks for) then waits behind no
    // resent send, and the outbox follows, capped (see MAX_SENDS_IN_FLIGHT).
    this.catchUp();
    this.flushOutbox(Date.now());
  }

  private catchUp(): void {
    this.catchUpAt = undefined;
    this.request({ type: "list_threads" }, { kind: "catchUpList" });
  }

  /** Writes the sends due now, oldest first, while fewer than the cap await an answer. */
  private flushOutbox(now: number): void {
    const room = this.opts.maxSendsInFlight - this.outbox.inFlight();
    if (room <= 0) return;
    for (const item of this.outbox.due(now, room)) {
      this.request(
        { type: "send_message", thread_id: item.threadId, temp_id: item.tempId, text: item.text },
        { kind: "send", threadId: item.threadId, tempId: item.tempId },
      );
    }
  }

  private connectionLost(): void {
    const err = new MessengerError("disconnected", "the connection dropped before the reply");
    for (const [, p] of this.pendingReqs) failPending(p, err);
    this.pendingReqs.clear();
    this.outbox.connectionLost();
    this.seq.connectionLost();
    for (const [threadId, due] of this.acksOnConnection) {
      const owed = this.acksDue.get(threadId);
      if (owed && owed.seq >= due.seq) continue;
      this.acksDue.set(threadId, due);
      this.setPosition(threadId, (p) => {
        if (!p.ackDue || p.ackDue.seq < due.seq) p.ackDue = { seq: due.seq, messageId: due.messageId };
      });
    }
    this.acksOnConnection.clear();
  }

  private tick(now: number): void {
    this.flushOutbox(now);
    for (const [threadId, due] of this.acksDue) {
      this.write(encode({ type: "message_ack", thread_id: threadId, message_id: due.messageId, status: "DELIVERED" }, AUTO_ACK));
      this.acksOnConnection.set(threadId, due);
      this.setPosition(threadId, (p) => {
        if (p.ackDue && p.ackDue.seq <= due.seq) delete p.ackDue;
      });
    }
    this.acksDue.clear();
    if (this.catchUpAt !== undefined && this.catchUpAt <= now) this.catchUp();
  }

  private apply(threadId: string, step: Step): void {
    for (const m of step.deliver) {
      if (this.opts.autoAckDelivered && m.senderId !== this.me) {
        const due = this.acksDue.get(threadId);
        if (!due || m.seq > due.seq) this.acksDue.set(threadId, { seq: m.seq, messageId: m.messageId });
      }
      this.emit("message", m);
    }
    const last = step.deliver[step.deliver.length - 1];
    if (last) {
      // The listeners have it: a restart resumes after it (and still owes its ack).
      const due = this.acksDue.get(threadId);
      this.setPosition(threadId, (p) => {
        p.heldSeq = Math.max(p.heldSeq, last.seq);
        if (due) p.ackDue = { seq: due.seq, messageId: due.messageId };
      });
    }
    if (step.fillAfter !== undefined) this.fetchFill(threadId, step.fillAfter);
  }

  private fetchFill(threadId: string, after: number): void {
    this.request(
      { type: "fetch_history", thread_id: threadId, after_seq: after, limit: this.opts.fillPageSize },
      { kind: "fill", threadId },
    );
  }

  /**
   * Before the first catch-up, a thread without a position starts per `initialSync`;
   * the position is stored so a restart keeps it.
   */
  private positionUnknown(threadId: string, serverLast: number): void {
    if (this.seq.position(threadId) !== undefined) return;
    const resume = this.opts.resume?.[threadId];
    let start: number | undefined;
    if (resume !== undefined) start = resume;
    else if (!this.synced && this.opts.initialSync === "latest") start = serverLast;
    if (start === undefined) return;
    this.seq.startAt(threadId, start);
    const at = start;
    this.setPosition(threadId, (p) => (p.heldSeq = Math.max(p.heldSeq, at)));
  }

  private offer(m: Message): void {
    this.positionUnknown(m.threadId, Math.max(0, m.seq - 1));
    this.apply(m.threadId, this.seq.offer(m));
  }

  private onFrame(f: ServerFrame): void {
    switch (f.type) {
      case "welcome":
        this.log.debug("ignoring a second welcome");
        return;
      case "message_sent": {
        this.take(f.reqId);
        const item = this.outbox.take(f.threadId, f.tempId);
        if (!item) {
          this.log.debug(`message_sent for no pending send: ${f.threadId} ${f.tempId}`);
          return;
        }
        this.changes.removed.push({ threadId: f.threadId, tempId: f.tempId });
        this.scheduleSave();
        const sent: Sent = { threadId: f.threadId, tempId: f.tempId, messageId: f.messageId, seq: f.seq, sentAt: f.sentAt };
        for (const w of item.waiters) w.resolve(sent);
        this.emit("sent", sent);
        if (this.me !== undefined) {
          this.offer({
            threadId: f.threadId,
            messageId: f.messageId,
            seq: f.seq,
            senderId: this.me,
            text: item.text,
            sentAt: f.sentAt,
          });
        }
        // A slot of maxSendsInFlight is free: the next oldest send goes out.
        this.flushOutbox(Date.now());
        return;
      }
      case "receive_message":
        this.offer(f.message);
        return;
      case "message_ack": {
        if (!this.receipts.offer(f.threadId, f.userId, f.status, f.seq)) {
          this.log.debug(`stale receipt ignored: ${f.threadId} ${f.userId} ${f.status} ${f.seq}`);
          return;
        }
        const mark = this.receipts.get(f.threadId, f.userId);
        if (mark) {
          this.changes.receipts.set(pairKey(f.threadId, f.userId), {
            threadId: f.threadId,
            userId: f.userId,
            deliveredSeq: mark.delivered,
            readSeq: mark.read,
          });
          this.scheduleSave();
        }
        this.emit("receipt", {
          threadId: f.threadId,
          messageId: f.messageId,
          seq: f.seq,
          status: f.status,
          userId: f.userId,
          at: f.at,
        });
        return;
      }
      case "thread": {
        const t: Thread = { threadId: f.threadId, kind: f.kind, members: f.members };
        if (f.title !== undefined) t.title = f.title;
        const p = this.take(f.reqId);
        if (p?.kind === "want" && p.want === "thread") p.resolve(t);
        this.emit("thread", t);
        return;
      }
      case "threads": {
        const p = this.take(f.reqId);
        if (p?.kind === "want" && p.want === "threads") p.resolve(f.threads);
        else if (p?.kind === "catchUpList") this.onCatchUpList(f.threads);
        else this.log.debug("unexpected threads frame");
        return;
      }
      case "history": {
        const p = this.take(f.reqId);
        if (p?.kind === "want" && p.want === "history") p.resolve(f.page);
        else if (p?.kind === "fill") this.apply(p.threadId, this.seq.fillPage(p.threadId, f.page.messages, f.page.hasMore));
        else this.log.debug("unexpected history frame");
        return;
      }
      case "presence": {
        const p = this.take(f.reqId);
        if (p?.kind === "want" && p.want === "presence") p.resolve(undefined);
        const ev: ClientEvents["presence"] = { userId: f.userId, status: f.status };
        if (f.lastSeen !== undefined) ev.lastSeen = f.lastSeen;
        this.emit("presence", ev);
        return;
      }
      case "typing":
        this.emit("typing", { threadId: f.threadId, userId: f.userId, typing: f.typing });
        return;
      case "pong": {
        const p = this.take(f.reqId);
        if (p?.kind === "firePing") {
          this.pendingReqs.delete(p.head);
          p.resolve();
        } else if (p?.kind === "ping") {
          p.resolve(Date.now() - p.t0);
        }
        return;
      }
      case "push_target":
      case "push_targets":
      case "push_target_removed": {
        const p = this.take(f.reqId);
        const want = f.type === "push_target" ? "pushTarget" : f.type === "push_targets" ? "pushTargets" : "pushTargetRemoved";
        const value = f.type === "push_target" ? f.target : f.type === "push_targets" ? f.targets : f.removed;
        if (p?.kind === "want" && p.want === want) p.resolve(value);
        else this.log.debug(`unexpected ${f.type} frame`);
        return;
      }
      case "thread_mute": {
        const m: ThreadMute = { threadId: f.threadId, muted: f.muted };
        if (f.until !== undefined) m.until = f.until;
        const p = this.take(f.reqId);
        if (p?.kind === "want" && p.want === "threadMute") p.resolve(m);
        this.emit("threadMute", m);
        return;
      }
      case "error":
        this.onError(f.reqId, f.code, f.message);
        return;
    }
  }

  private onCatchUpList(threads: ThreadSummary[]): void {
    for (const t of threads) {
      this.positionUnknown(t.threadId, t.lastSeq);
      const after = this.seq.catchUp(t.threadId, t.lastSeq);
      if (after !== undefined) this.fetchFill(t.threadId, after);
    }
    if (!this.synced) {
      this.synced = true;
      this.changes.synced = true;
      this.scheduleSave();
    }
    this.sessionSynced = true;
  }

  private onError(reqId: ReqId | undefined, code: string, message: string): void {
    const err = MessengerError.server(code, message);
    if (reqId === AUTO_ACK) {
      this.log.debug(`delivered ack refused: ${err.message}`);
      return;
    }
    const p = this.take(reqId);
    if (!p) {
      this.log.warn(`server error for no pending request: ${err.message}`);
      return;
    }
    const now = Date.now();
    switch (p.kind) {
      case "send": {
        if (err.transient) {
          const item = this.outbox.get(p.threadId, p.tempId);
          if (item) {
            item.inFlight = false;
            item.retryAt = now + SEND_RETRY_MS;
          }
        } else {
          const item = this.outbox.take(p.threadId, p.tempId);
          if (item) {
            this.changes.removed.push({ threadId: p.threadId, tempId: p.tempId });
            this.scheduleSave();
          }
          for (const w of item?.waiters ?? []) w.reject(err);
        }
        // A slot of maxSendsInFlight is free.
        this.flushOutbox(now);
        return;
      }
      case "fireHead": {
        const ping = this.take(p.ping);
        if (ping) failPending(ping, err);
        return;
      }
      case "catchUpList":
        this.log.warn(`catch-up refused (${err.message}); retrying`);
        this.catchUpAt = now + CATCH_UP_RETRY_MS;
        return;
      case "fill":
        if (err.transient) {
          this.log.warn(`fill of ${p.threadId} refused (${err.message}); retrying with catch-up`);
          this.seq.fillAborted(p.threadId);
          this.catchUpAt = now + CATCH_UP_RETRY_MS;
        } else {
          this.log.warn(`fill of ${p.threadId} impossible (${err.message}); delivering what is held`);
          this.apply(p.threadId, this.seq.fillFailed(p.threadId));
        }
        return;
      default:
        failPending(p, err);
    }
  }

  // ----- requests ------------------------------------------------------------------

  private ensureOpen(): MessengerError | undefined {
    if (this.closing) return new MessengerError("closed", "the client is closed");
    if (!this.ws) return new MessengerError("disconnected", "not connected; try again once reconnected");
    return undefined;
  }

  private want<T>(frame: ClientFrame, want: Want): Promise<T> {
    const err = this.ensureOpen();
    if (err) return Promise.reject(err);
    return new Promise<T>((resolve, reject) => {
      let id = 0;
      const timer = this.timeout(() => id);
      id = this.request(frame, { kind: "want", want, resolve: resolve as (v: unknown) => void, reject, timer });
    });
  }

  /** A frame with no reply on success, confirmed by a `ping` right behind it. */
  private fire(frame: ClientFrame): Promise<void> {
    const err = this.ensureOpen();
    if (err) return Promise.reject(err);
    return new Promise<void>((resolve, reject) => {
      const pingId = this.nextReq + 1;
      let id = 0;
      const timer = this.timeout(() => id);
      const head = this.request(frame, { kind: "fireHead", ping: pingId });
      id = this.request({ type: "ping" }, { kind: "firePing", head, resolve, reject, timer });
    });
  }

  /**
   * Sends a message. It goes into the outbox first and is written now or on the next
   * connection; the promise resolves when the server stored it (`message_sent`), and
   * waits across reconnects. A resend under the same temp id is idempotent: the server
   * answers with the original id and seq. Transient refusals (`rate_limited`,
   * `unavailable`) are retried after 1 s; others reject with a `server` error.
   */
  send(threadId: string, text: string, options: { tempId?: string } = {}): Promise<Sent> {
    if (this.closing) return Promise.reject(new MessengerError("closed", "the client is closed"));
    const tempId = options.tempId ?? newTempId();
    return new Promise<Sent>((resolve, reject) => {
      const queuedAt = Date.now();
      if (this.outbox.push(threadId, tempId, text, { resolve, reject }, queuedAt)) {
        // Into the store first: it is written to the server once the store has it.
        this.changes.added.push({ threadId, tempId, text, queuedAt });
        this.scheduleSave();
      }
    });
  }

  /** Acks `READ` up to this message (and so `DELIVERED`). Resolves once the server processed it. */
  markRead(threadId: string, messageId: string): Promise<void> {
    return this.ack(threadId, messageId, "READ");
  }

  /** Acks a message with a status. Resolves once the server processed it. */
  ack(threadId: string, messageId: string, status: AckStatus): Promise<void> {
    return this.fire({ type: "message_ack", thread_id: threadId, message_id: messageId, status });
  }

  /** Opens (or finds) the direct thread with `userId`. */
  createDirect(userId: string): Promise<Thread> {
    return this.want({ type: "create_thread", kind: "direct", members: [userId] }, "thread");
  }

  /** Creates a group with these members (the caller is added) and an optional title. */
  createGroup(members: string[], title?: string): Promise<Thread> {
    const f: ClientFrame = { type: "create_thread", kind: "group", members };
    if (title !== undefined) f.title = title;
    return this.want(f, "thread");
  }

  /** Adds members to a group. */
  addMembers(threadId: string, members: string[]): Promise<Thread> {
    return this.want({ type: "add_members", thread_id: threadId, members }, "thread");
  }

  /** Leaves a group. */
  leaveThread(threadId: string): Promise<Thread> {
    return this.want({ type: "leave_thread", thread_id: threadId }, "thread");
  }

  /**
   * Registers (or refreshes) a push target for the user: an APNs device token
   * (`appId` = bundle id, `sandbox` for development builds), an FCM registration token,
   * or a browser's Web Push subscription (`subscription.toJSON()`). The same device
   * registered again keeps its `targetId`.
   */
  registerPushTarget(
    target:
      | { platform: "apns"; token: string; appId: string; sandbox?: boolean; locale?: string }
      | { platform: "fcm"; token: string; appId?: string; locale?: string }
      | { platform: "webpush"; subscription: WebPushSubscriptionJSON; locale?: string },
  ): Promise<PushTarget> {
    const f: ClientFrame = { type: "register_push_target", platform: target.platform };
    if (target.platform === "webpush") {
      f.subscription = { endpoint: target.subscription.endpoint, keys: { p256dh: target.subscription.keys.p256dh, auth: target.subscription.keys.auth } };
    } else {
      f.token = target.token;
      if (target.appId !== undefined) f.app_id = target.appId;
    }
    if (target.platform === "apns" && target.sandbox) f.sandbox = true;
    if (target.locale !== undefined) f.locale = target.locale;
    return this.want(f, "pushTarget");
  }

  /** Forgets one of the user's push targets; resolves to whether the user had it. */
  unregisterPushTarget(targetId: string): Promise<boolean> {
    return this.want({ type: "unregister_push_target", target_id: targetId }, "pushTargetRemoved");
  }

  /** The user's push targets, oldest first (never their tokens). */
  listPushTargets(): Promise<PushTarget[]> {
    return this.want({ type: "list_push_targets" }, "pushTargets");
  }

  /** Mutes push notifications for a thread until `until` (Unix ms) or for ever. */
  muteThread(threadId: string, until?: number): Promise<ThreadMute> {
    const f: ClientFrame = { type: "mute_thread", thread_id: threadId };
    if (until !== undefined) f.until = until;
    return this.want(f, "threadMute");
  }

  /** Unmutes a thread. */
  unmuteThread(threadId: string): Promise<ThreadMute> {
    return this.want({ type: "unmute_thread", thread_id: threadId }, "threadMute");
  }

  /** The caller's threads with their last seq, every member's receipts and the unread count. */
  listThreads(): Promise<ThreadSummary[]> {
    return this.want({ type: "list_threads" }, "threads");
  }

  /**
   * One page of a thread's history, ascending by seq. No cursor: the latest `limit`;
   * `beforeSeq`: the newest `limit` below it; `afterSeq`: the oldest `limit` above it.
   * `limit` defaults to 50 (the server caps it at 200).
   */
  fetchHistory(threadId: string, cursor: { beforeSeq?: number; afterSeq?: number; limit?: number } = {}): Promise<HistoryPage> {
    const f: ClientFrame = { type: "fetch_history", thread_id: threadId };
    if (cursor.beforeSeq !== undefined) f.before_seq = cursor.beforeSeq;
    if (cursor.afterSeq !== undefined) f.after_seq = cursor.afterSeq;
    if (cursor.limit !== undefined) f.limit = cursor.limit;
    return this.want(f, "history");
  }

  /** Every message after `seq`, paging forward until the end. */
  async historyAfter(threadId: string, seq: number): Promise<Message[]> {
    const out: Message[] = [];
    let after = seq;
    for (;;) {
      const page = await this.fetchHistory(threadId, { afterSeq: after, limit: 200 });
      out.push(...page.messages);
      const last = page.messages[page.messages.length - 1];
      if (!page.hasMore || !last) return out;
      after = last.seq;
    }
  }

  /**
   * Pages backwards through a thread for scrollback: the first {@link HistoryPager.older}
   * gives the latest `pageSize` messages, each next call the page before.
   */
  historyPager(threadId: string, pageSize = 50): HistoryPager {
    let oldest: number | undefined;
    let more = true;
    const pager = {
      get hasMore() {
        return more;
      },
      older: async (): Promise<Message[]> => {
        if (!more) return [];
        const page = await this.fetchHistory(
          threadId,
          oldest === undefined ? { limit: pageSize } : { beforeSeq: oldest, limit: pageSize },
        );
        const first = page.messages[0];
        if (first) oldest = first.seq;
        more = page.hasMore && first !== undefined;
        return page.messages;
      },
    };
    return pager;
  }

  /**
   * Subscribes to users' presence: a `presence` event for each now, then on every
   * change. Only users who share a thread with the caller; naming anyone else rejects
   * with `forbidden` and subscribes to nothing.
   */
  subscribePresence(userIds: string[]): Promise<void> {
    return this.want({ type: "presence_subscribe", user_ids: userIds }, "presence");
  }

  /** Stops presence events for these users. */
  unsubscribePresence(userIds: string[]): Promise<void> {
    return this.fire({ type: "presence_unsubscribe", user_ids: userIds });
  }

  /** Tells the thread's other members the caller started or stopped typing. */
  typing(threadId: string, typing: boolean): Promise<void> {
    return this.fire({ type: "typing", thread_id: threadId, typing });
  }

  /** A round trip to the server; resolves with its time in ms. */
  ping(): Promise<number> {
    const err = this.ensureOpen();
    if (err) return Promise.reject(err);
    return new Promise<number>((resolve, reject) => {
      let id = 0;
      const timer = this.timeout(() => id);
      id = this.request({ type: "ping" }, { kind: "ping", t0: Date.now(), resolve, reject, timer });
    });
  }
}

function failPending(p: Pending, err: MessengerError): void {
  switch (p.kind) {
    case "want":
    case "firePing":
    case "ping":
      clearTimeout(p.timer);
      p.reject(err);
      return;
    default:
      return;
  }
}

/** The HTTP status in `ws`'s "Unexpected server response: 401" error, if any. */
function statusFrom(text: string): number | undefined {
  const m = /server response: (\d{3})/i.exec(text);
  return m ? Number(m[1]) : undefined;
}
