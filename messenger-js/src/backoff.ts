/**
 * Reconnection backoff: exponential with full jitter.
 *
 * @module
 */

/** How the client waits between failed connection attempts. */
export interface BackoffOptions {
  /** The ceiling of the first wait, in ms. Default 250. */
  initialMs: number;
  /** The largest ceiling, in ms. Default 30 000. */
  maxMs: number;
  /** How much the ceiling grows per failure. Default 2. */
  multiplier: number;
  /**
   * Stop after this many failed attempts in a row (+1 for the first), with a
   * `retries_exhausted` error. Default: never stop.
   */
  maxRetries?: number;
}

/** The defaults: 250 ms doubling up to 30 s, forever. */
export const DEFAULT_BACKOFF: BackoffOptions = {
  initialMs: 250,
  maxMs: 30_000,
  multiplier: 2,
};

/** The ceiling of the wait before retry `n` (0-based): `min(max, initial * multiplier^n)`. */
export function backoffCeiling(b: BackoffOptions, n: number): number {
  const raw = b.initialMs * Math.pow(b.multiplier, n);
  return Math.min(b.maxMs, Number.isFinite(raw) ? raw : b.maxMs);
}

/**
 * The wait before retry `n`: uniformly random in `[0, ceiling(n)]` (full jitter), so
 * clients that lost the same server do not come back in lockstep.
 */
export function backoffDelay(b: BackoffOptions, n: number, random: () => number = Math.random): number {
  return Math.floor(random() * backoffCeiling(b, n));
}
