/**
 * # messenger-js
 *
 * The TypeScript client SDK for messenger's protocol v1, for browsers and Node 20+.
 * It keeps the delivery guarantee for the app: every message reaches it exactly once,
 * in seq order per thread, across disconnects and server restarts; every `send` that
 * resolved is stored exactly once.
 *
 * ```ts
 * import { MessengerClient } from "messenger-js";
 *
 * const client = new MessengerClient({ url: "ws://127.0.0.1:8080/ws", token: "alice" });
 * client.on("message", (m) => console.log(`[${m.threadId} #${m.seq}] ${m.senderId}: ${m.text}`));
 * await client.connect();
 * const dm = await client.createDirect("bob");
 * const sent = await client.send(dm.threadId, "hi bob");
 * console.log(`stored as ${sent.messageId} at seq ${sent.seq}`);
 * ```
 *
 * On Node 20 pass a WebSocket implementation: `import WebSocket from "ws"` and
 * `new MessengerClient({ url, token, WebSocket })`.
 *
 * How the guarantee is kept, in short: an outbox keyed by temp id resent on every
 * reconnect (the server's send is idempotent), catch-up with `list_threads` and
 * `fetch_history` after each connect, gap filling from history on the live stream,
 * and de-duplication by message id. A {@link ClientStore} keeps the outbox and each
 * thread's position across restarts: {@link IndexedDbStore} in browsers, `FileStore`
 * from `messenger-js/node` on Node, {@link MemoryStore} (the default) for neither.
 * See `docs/web.md`.
 *
 * @packageDocumentation
 */

export { MAX_SENDS_IN_FLIGHT, MessengerClient, newTempId } from "./client.js";
export type {
  ClientOptions,
  HistoryPager,
  InitialSync,
  Logger,
  TokenProvider,
  TokenRequest,
  WebSocketConstructor,
  WebSocketLike,
} from "./client.js";
export { MessengerError } from "./errors.js";
export type { ErrorCode, ErrorKind } from "./errors.js";
export { DEFAULT_BACKOFF, backoffCeiling, backoffDelay } from "./backoff.js";
export type { BackoffOptions } from "./backoff.js";
export type { PendingSend } from "./outbox.js";
export { MemoryStore, applyChanges, emptyState } from "./store.js";
export type { AckDue, ClientStore, OutboxEntry, OutboxKey, ReceiptMark, StoreChanges, StoredState, ThreadPosition } from "./store.js";
export { IndexedDbStore } from "./indexeddb.js";
export type {
  AckStatus,
  ClientEvents,
  ConnectionState,
  HistoryPage,
  Message,
  Presence,
  PresenceStatus,
  PushPlatform,
  PushTarget,
  Receipt,
  ReceiptSummary,
  Sent,
  Thread,
  ThreadKind,
  ThreadMute,
  ThreadSummary,
  Typing,
  WebPushSubscriptionJSON,
} from "./types.js";
