/**
 * The model the SDK hands to the app: messages, receipts, presence, threads and the
 * connection state. Field names follow the wire protocol in camelCase.
 *
 * @module
 */

/** A message in a thread, handed to the app exactly once and in `seq` order. */
export interface Message {
  /** The thread it belongs to. */
  threadId: string;
  /** The server's id: the decimal string of a 64-bit Snowflake id. */
  messageId: string;
  /** Position in the thread: 1, 2, 3, ... gapless. Order a thread by this. */
  seq: number;
  /** Who sent it. */
  senderId: string;
  /** The text. */
  text: string;
  /** When the server accepted it, in milliseconds since the Unix epoch. */
  sentAt: number;
}

/** One of the app's sends was stored durably by the server (the "sent" mark). */
export interface Sent {
  /** The thread. */
  threadId: string;
  /** The temp id the send was made under. */
  tempId: string;
  /** The id the server gave the message. */
  messageId: string;
  /** The message's position in the thread. */
  seq: number;
  /** When the server accepted it (ms since the epoch). */
  sentAt: number;
}

/** How far a member got with a message. */
export type AckStatus = "DELIVERED" | "READ";

/**
 * A member acknowledged messages up to `seq` (the "delivered" and "read" marks). A
 * watermark: it covers every message up to `seq` in the thread.
 */
export interface Receipt {
  /** The thread. */
  threadId: string;
  /** The newest message the ack covers. */
  messageId: string;
  /** Its seq: the ack covers every message up to it. */
  seq: number;
  /** `DELIVERED` or `READ` (READ implies DELIVERED). */
  status: AckStatus;
  /** Who acked. */
  userId: string;
  /** When (ms since the epoch). */
  at: number;
}

/** Online or offline. */
export type PresenceStatus = "online" | "offline";

/** A subscribed user's presence changed (or its current value after subscribing). */
export interface Presence {
  /** Whose presence. */
  userId: string;
  /** `online` while at least one session is connected. */
  status: PresenceStatus;
  /** When the user went offline (ms since the epoch), for `offline`. */
  lastSeen?: number;
}

/** A member started or stopped typing in a thread. */
export interface Typing {
  /** The thread. */
  threadId: string;
  /** Who is typing. */
  userId: string;
  /** Started (`true`) or stopped (`false`). */
  typing: boolean;
}

/** `direct` (two users, one canonical id) or `group`. */
export type ThreadKind = "direct" | "group";

/** A thread was created or its members changed. */
export interface Thread {
  /** Its id (`dm:alice:bob` for a direct thread, `g:<id>` for a group). */
  threadId: string;
  /** `direct` or `group`. */
  kind: ThreadKind;
  /** A group's title, if it has one. */
  title?: string;
  /** Every member, the caller included. */
  members: string[];
}

/** A member's watermarks in a thread. */
export interface ReceiptSummary {
  /** Every message up to this seq reached the member. */
  deliveredSeq: number;
  /** The member read every message up to this seq. */
  readSeq: number;
}

/** One entry of {@link MessengerClient.listThreads}. */
export interface ThreadSummary extends Thread {
  /** The seq of the thread's newest message (0 when empty). */
  lastSeq: number;
  /** Every member's watermarks, by user id. */
  receipts: Record<string, ReceiptSummary>;
  /** Messages others sent after the caller's read watermark. */
  unread: number;
  /** The caller muted the thread (no push notifications). */
  muted?: boolean;
  /** When the caller's mute ends (Unix ms); absent for ever. */
  mutedUntil?: number;
}

/** A push service: Apple (`apns`), Firebase (`fcm`) or a browser's Web Push (`webpush`). */
export type PushPlatform = "apns" | "fcm" | "webpush";

/** A browser's push subscription as `PushSubscription.toJSON()` gives it. */
export interface WebPushSubscriptionJSON {
  /** The push service URL (https). */
  endpoint: string;
  /** The subscription's keys, base64url. */
  keys: {
    /** The user agent's P-256 ECDH public key, base64url. */
    p256dh: string;
    /** The authentication secret, base64url. */
    auth: string;
  };
}

/** One of the user's push targets, as the server shows it (never its token). */
export interface PushTarget {
  /** The target's id (for {@link MessengerClient.unregisterPushTarget}). */
  targetId: string;
  /** The push service. */
  platform: PushPlatform;
  /** APNs topic (bundle id) or Android package name, if given. */
  appId?: string;
  /** The device's locale, if given. */
  locale?: string;
  /** APNs development environment. */
  sandbox: boolean;
  /** First registered (Unix ms). */
  createdAt: number;
  /** Last registered or refreshed (Unix ms). */
  updatedAt: number;
}

/** A thread's mute state for the user: no push notifications while muted. */
export interface ThreadMute {
  /** The thread. */
  threadId: string;
  /** Whether it is muted now. */
  muted: boolean;
  /** When the mute ends (Unix ms); absent for ever or when not muted. */
  until?: number;
}

/** A page of a thread's history, ascending by seq. */
export interface HistoryPage {
  /** The thread. */
  threadId: string;
  /** The messages, ascending by seq. */
  messages: Message[];
  /** More exist in the direction paged. */
  hasMore: boolean;
}

/**
 * Where the client's connection stands. Every change is also a `state` event.
 *
 * - `connecting`: opening a connection (`attempt` counts failures in a row).
 * - `connected`: the server said `welcome`; catch-up runs.
 * - `disconnected`: a connection that was up is gone; the client will reconnect.
 * - `reconnecting`: waiting `delayMs` (full jitter) before the next attempt.
 * - `closed`: final. `error` says why when it was not {@link MessengerClient.close}.
 */
export type ConnectionState =
  | {
      /** Not started. */
      kind: "idle";
    }
  | {
      /** Opening a connection. */
      kind: "connecting";
      /** Failed attempts in a row before this one. */
      attempt: number;
    }
  | {
      /** Connected; catch-up runs. */
      kind: "connected";
      /** The user the server authenticated. */
      userId: string;
      /** This session's id. */
      sessionId: string;
    }
  | {
      /** A connection that was up is gone; the client will reconnect. */
      kind: "disconnected";
      /** Why, for humans. */
      reason: string;
    }
  | {
      /** Waiting before the next attempt. */
      kind: "reconnecting";
      /** Failed attempts in a row. */
      attempt: number;
      /** How long the client waits (full jitter), ms. */
      delayMs: number;
    }
  | {
      /** Stopped for good. */
      kind: "closed";
      /** Why, unless {@link MessengerClient.close} was called. */
      error?: import("./errors.js").MessengerError;
    };

/** What the client emits, by event name. Subscribe with {@link MessengerClient.on}. */
export interface ClientEvents {
  /** A message, exactly once per thread and in seq order; the app's own included. */
  message: Message;
  /** One of the app's sends was stored. */
  sent: Sent;
  /** A member acked messages (delivered / read marks). */
  receipt: Receipt;
  /** A subscribed user's presence. */
  presence: Presence;
  /** Someone is typing. */
  typing: Typing;
  /** A thread was created or its members changed. */
  thread: Thread;
  /** The user muted or unmuted a thread (in this or another session). */
  threadMute: ThreadMute;
  /** The connection state changed. */
  state: ConnectionState;
}
