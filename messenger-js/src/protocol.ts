/**
 * Protocol v1 frames on the wire (snake_case JSON) and their translation to the SDK's
 * model. The SDK ignores frame types and fields it does not know, as the protocol asks.
 *
 * @internal
 * @module
 */

import type {
  AckStatus,
  HistoryPage,
  Message,
  PresenceStatus,
  PushPlatform,
  PushTarget,
  Receipt,
  ReceiptSummary,
  ThreadKind,
  ThreadMute,
  ThreadSummary,
  WebPushSubscriptionJSON,
} from "./types.js";

/** A client frame, before `req_id` is added. */
export type ClientFrame =
  | { type: "send_message"; thread_id: string; temp_id: string; text: string }
  | { type: "message_ack"; thread_id: string; message_id: string; status: AckStatus }
  | { type: "create_thread"; kind: ThreadKind; members: string[]; title?: string }
  | { type: "add_members"; thread_id: string; members: string[] }
  | { type: "leave_thread"; thread_id: string }
  | { type: "list_threads" }
  | { type: "fetch_history"; thread_id: string; before_seq?: number; after_seq?: number; limit?: number }
  | { type: "presence_subscribe"; user_ids: string[] }
  | { type: "presence_unsubscribe"; user_ids: string[] }
  | { type: "typing"; thread_id: string; typing: boolean }
  | { type: "ping" }
  | {
      type: "register_push_target";
      platform: PushPlatform;
      token?: string;
      subscription?: WebPushSubscriptionJSON;
      app_id?: string;
      locale?: string;
      sandbox?: boolean;
    }
  | { type: "unregister_push_target"; target_id: string }
  | { type: "list_push_targets" }
  | { type: "mute_thread"; thread_id: string; until?: number }
  | { type: "unmute_thread"; thread_id: string };

/** A request id: the client uses integers; strings mark frames it does not track. */
export type ReqId = number | string;

/** A server frame, decoded into the SDK's model. */
export type ServerFrame =
  | { type: "welcome"; userId: string; sessionId: string; serverTime: number }
  | { type: "message_sent"; reqId?: ReqId; threadId: string; tempId: string; messageId: string; seq: number; sentAt: number }
  | { type: "receive_message"; message: Message }
  | ({ type: "message_ack" } & Receipt)
  | { type: "thread"; reqId?: ReqId; threadId: string; kind: ThreadKind; title?: string; members: string[] }
  | { type: "threads"; reqId?: ReqId; threads: ThreadSummary[] }
  | { type: "history"; reqId?: ReqId; page: HistoryPage }
  | { type: "presence"; reqId?: ReqId; userId: string; status: PresenceStatus; lastSeen?: number }
  | { type: "typing"; threadId: string; userId: string; typing: boolean }
  | { type: "pong"; reqId?: ReqId }
  | { type: "push_target"; reqId?: ReqId; target: PushTarget }
  | { type: "push_targets"; reqId?: ReqId; targets: PushTarget[] }
  | { type: "push_target_removed"; reqId?: ReqId; targetId: string; removed: boolean }
  | ({ type: "thread_mute"; reqId?: ReqId } & ThreadMute)
  | { type: "error"; reqId?: ReqId; code: string; message: string };

/** Encodes a client frame with its request id. */
export function encode(frame: ClientFrame, reqId?: ReqId): string {
  return JSON.stringify(reqId === undefined ? frame : { ...frame, req_id: reqId });
}

class Bad extends Error {}

type Obj = Record<string, unknown>;

function str(o: Obj, k: string): string {
  const v = o[k];
  if (typeof v !== "string") throw new Bad(`${k}: expected a string`);
  return v;
}

function num(o: Obj, k: string): number {
  const v = o[k];
  if (typeof v !== "number" || !Number.isFinite(v)) throw new Bad(`${k}: expected a number`);
  return v;
}

function bool(o: Obj, k: string): boolean {
  const v = o[k];
  if (typeof v !== "boolean") throw new Bad(`${k}: expected a boolean`);
  return v;
}

function optStr(o: Obj, k: string): string | undefined {
  return o[k] === undefined || o[k] === null ? undefined : str(o, k);
}

function optNum(o: Obj, k: string): number | undefined {
  return o[k] === undefined || o[k] === null ? undefined : num(o, k);
}

function strs(o: Obj, k: string): string[] {
  const v = o[k];
  if (!Array.isArray(v) || v.some((x) => typeof x !== "string")) throw new Bad(`${k}: expected strings`);
  return v as string[];
}

function obj(v: unknown, what: string): Obj {
  if (typeof v !== "object" || v === null || Array.isArray(v)) throw new Bad(`${what}: expected an object`);
  return v as Obj;
}

function reqId(o: Obj): ReqId | undefined {
  const v = o.req_id;
  return typeof v === "number" || typeof v === "string" ? v : undefined;
}

function kind(o: Obj): ThreadKind {
  const k = str(o, "kind");
  if (k !== "direct" && k !== "group") throw new Bad(`kind: unknown ${k}`);
  return k;
}

function ackStatus(o: Obj): AckStatus {
  const s = str(o, "status");
  if (s !== "DELIVERED" && s !== "READ") throw new Bad(`status: unknown ${s}`);
  return s;
}

function message(threadId: string, m: Obj): Message {
  return {
    threadId,
    messageId: str(m, "message_id"),
    seq: num(m, "seq"),
    senderId: str(m, "sender_id"),
    text: str(m, "text"),
    sentAt: num(m, "sent_at"),
  };
}

function summary(v: unknown): ThreadSummary {
  const t = obj(v, "thread");
  const receipts: Record<string, ReceiptSummary> = {};
  const r = obj(t.receipts ?? {}, "receipts");
  for (const [user, w] of Object.entries(r)) {
    const o = obj(w, "receipt");
    receipts[user] = { deliveredSeq: num(o, "delivered_seq"), readSeq: num(o, "read_seq") };
  }
  const out: ThreadSummary = {
    threadId: str(t, "thread_id"),
    kind: kind(t),
    members: strs(t, "members"),
    lastSeq: num(t, "last_seq"),
    receipts,
    unread: num(t, "unread"),
  };
  const title = optStr(t, "title");
  if (title !== undefined) out.title = title;
  if (t.muted === true) out.muted = true;
  const mutedUntil = optNum(t, "muted_until");
  if (mutedUntil !== undefined) out.mutedUntil = mutedUntil;
  return out;
}

function pushTarget(v: unknown): PushTarget {
  const t = obj(v, "target");
  const platform = str(t, "platform");
  if (platform !== "apns" && platform !== "fcm" && platform !== "webpush") throw new Bad(`platform: unknown ${platform}`);
  const out: PushTarget = {
    targetId: str(t, "target_id"),
    platform,
    sandbox: t.sandbox === true,
    createdAt: num(t, "created_at"),
    updatedAt: num(t, "updated_at"),
  };
  const appId = optStr(t, "app_id");
  if (appId !== undefined) out.appId = appId;
  const locale = optStr(t, "locale");
  if (locale !== undefined) out.locale = locale;
  return out;
}

/**
 * Decodes one text frame. Returns `null` for a frame type this SDK does not know
 * (newer servers may add some); throws on malformed JSON or a known frame with
 * missing or ill-typed fields.
 */
export function decode(text: string): ServerFrame | null {
  let raw: unknown;
  try {
    raw = JSON.parse(text);
  } catch (e) {
    throw new Error(`not JSON: ${(e as Error).message}`);
  }
  try {
    const o = obj(raw, "frame");
    const type = str(o, "type");
    switch (type) {
      case "welcome":
        return { type, userId: str(o, "user_id"), sessionId: str(o, "session_id"), serverTime: num(o, "server_time") };
      case "message_sent":
        return {
          type,
          reqId: reqId(o),
          threadId: str(o, "thread_id"),
          tempId: str(o, "temp_id"),
          messageId: str(o, "message_id"),
          seq: num(o, "seq"),
          sentAt: num(o, "sent_at"),
        };
      case "receive_message":
        return { type, message: message(str(o, "thread_id"), o) };
      case "message_ack":
        return {
          type,
          threadId: str(o, "thread_id"),
          messageId: str(o, "message_id"),
          seq: num(o, "seq"),
          status: ackStatus(o),
          userId: str(o, "user_id"),
          at: num(o, "at"),
        };
      case "thread": {
        const f: ServerFrame = {
          type,
          reqId: reqId(o),
          threadId: str(o, "thread_id"),
          kind: kind(o),
          members: strs(o, "members"),
        };
        const title = optStr(o, "title");
        if (title !== undefined) f.title = title;
        return f;
      }
      case "threads": {
        const list = o.threads;
        if (!Array.isArray(list)) throw new Bad("threads: expected an array");
        return { type, reqId: reqId(o), threads: list.map(summary) };
      }
      case "history": {
        const threadId = str(o, "thread_id");
        const list = o.messages;
        if (!Array.isArray(list)) throw new Bad("messages: expected an array");
        return {
          type,
          reqId: reqId(o),
          page: { threadId, messages: list.map((m) => message(threadId, obj(m, "message"))), hasMore: bool(o, "has_more") },
        };
      }
      case "presence": {
        const status = str(o, "status");
        if (status !== "online" && status !== "offline") throw new Bad(`status: unknown ${status}`);
        const f: ServerFrame = { type, reqId: reqId(o), userId: str(o, "user_id"), status };
        const lastSeen = optNum(o, "last_seen");
        if (lastSeen !== undefined) f.lastSeen = lastSeen;
        return f;
      }
      case "typing":
        return { type, threadId: str(o, "thread_id"), userId: str(o, "user_id"), typing: bool(o, "typing") };
      case "pong":
        return { type, reqId: reqId(o) };
      case "push_target":
        return { type, reqId: reqId(o), target: pushTarget(o.target) };
      case "push_targets": {
        const list = o.targets;
        if (!Array.isArray(list)) throw new Bad("targets: expected an array");
        return { type, reqId: reqId(o), targets: list.map(pushTarget) };
      }
      case "push_target_removed":
        return { type, reqId: reqId(o), targetId: str(o, "target_id"), removed: bool(o, "removed") };
      case "thread_mute": {
        const f: ServerFrame = { type, reqId: reqId(o), threadId: str(o, "thread_id"), muted: bool(o, "muted") };
        const until = optNum(o, "until");
        if (until !== undefined) f.until = until;
        return f;
      }
      case "error":
        return { type, reqId: reqId(o), code: str(o, "code"), message: optStr(o, "message") ?? "" };
      default:
        return null;
    }
  } catch (e) {
    if (e instanceof Bad) throw new Error(`bad frame: ${e.message}`);
    throw e;
  }
}
