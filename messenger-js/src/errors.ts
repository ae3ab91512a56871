/**
 * The one error type of the SDK. Every promise the client returns rejects with a
 * {@link MessengerError}; `kind` says what went wrong and `code` carries the server's
 * error code for `kind === "server"`.
 *
 * @module
 */

/**
 * What went wrong:
 *
 * - `server`: the server refused the request with an `error` frame; see `code`.
 * - `disconnected`: the connection dropped before the reply (or a request other than
 *   `send` was made while reconnecting). Sends never fail this way: they wait.
 * - `timeout`: no reply within `requestTimeoutMs`.
 * - `closed`: the client was closed.
 * - `auth`: the server refused the token (HTTP `status`, 401), after a refresh when a
 *   token provider is configured. Never retried.
 * - `connect`: a connection attempt failed (network, server down, bad handshake).
 * - `retries_exhausted`: `backoff.maxRetries` attempts failed in a row; `cause` is the
 *   last failure.
 * - `protocol`: the server sent something the SDK cannot understand.
 * - `invalid_url`: the URL is not `ws://` or `wss://`.
 * - `unsupported`: no WebSocket implementation (pass one in `ClientOptions.WebSocket`).
 * - `store`: the client store failed: a send it could not save is refused with it
 *   (nothing was written to the server); a store that cannot be read stops the client.
 * - `wrong_user`: the server authenticated another user than the one the client store
 *   belongs to; the client stops (open the store of that user instead).
 */
export type ErrorKind =
  | "server"
  | "disconnected"
  | "timeout"
  | "closed"
  | "auth"
  | "connect"
  | "retries_exhausted"
  | "protocol"
  | "invalid_url"
  | "unsupported"
  | "store"
  | "wrong_user";

/**
 * The protocol's error codes (`error` frames). Unknown future codes come through as
 * their string.
 */
export type ErrorCode =
  | "bad_request"
  | "unknown_type"
  | "unauthorized"
  | "forbidden"
  | "not_found"
  | "too_large"
  | "rate_limited"
  | "unavailable"
  | "internal"
  | (string & {});

/** The error every failed call rejects with. */
export class MessengerError extends Error {
  /** What went wrong. */
  readonly kind: ErrorKind;
  /** The server's error code, for `kind === "server"`. */
  readonly code?: ErrorCode;
  /** The HTTP status, for `kind === "auth"`. */
  readonly status?: number;
  /** Failed attempts in a row, for `kind === "retries_exhausted"`. */
  readonly attempts?: number;
  /** The underlying failure, when there is one (the last attempt's, for `retries_exhausted`). */
  declare readonly cause?: unknown;

  /** @internal */
  constructor(
    kind: ErrorKind,
    message: string,
    extra: { code?: ErrorCode; status?: number; attempts?: number; cause?: unknown } = {},
  ) {
    super(message);
    this.name = "MessengerError";
    this.kind = kind;
    if (extra.code !== undefined) this.code = extra.code;
    if (extra.status !== undefined) this.status = extra.status;
    if (extra.attempts !== undefined) this.attempts = extra.attempts;
    if (extra.cause !== undefined) (this as { cause?: unknown }).cause = extra.cause;
  }

  /** Worth retrying later: `rate_limited`, `unavailable`, `disconnected`, `timeout`. */
  get transient(): boolean {
    return (
      this.kind === "disconnected" ||
      this.kind === "timeout" ||
      (this.kind === "server" && (this.code === "rate_limited" || this.code === "unavailable"))
    );
  }

  /** @internal */
  static server(code: string, message: string): MessengerError {
    return new MessengerError("server", `${code}: ${message}`, { code });
  }
}
