/**
 * Limits and defaults of the control link and of the data link's handshake.
 * Every size, count and time the link code bounds is named here once; the
 * checks at the bottom state how they relate and run when the module loads.
 */

/** Bytes of the preamble that opens every connection ("NRAIDCTL" or "NRAIDDAT"). */
export const PREAMBLE_BYTES = 8;
/** Bytes of the u32 little-endian length before each control message. */
export const CONTROL_LENGTH_PREFIX_BYTES = 4;
/** Largest encoded control message; a bigger length prefix is a protocol error. */
export const CONTROL_MESSAGE_SIZE_MAX_BYTES = 16 * 1024 * 1024;
/** Bytes queued for sending on a control socket before the peer counts as not reading. */
export const CONTROL_SEND_QUEUE_MAX_BYTES = 4 * CONTROL_MESSAGE_SIZE_MAX_BYTES;

/** Random bytes of each side's Hello nonce. */
export const NONCE_BYTES = 32;
/** Bytes of an HMAC-SHA256. */
export const HMAC_BYTES = 32;
/** Random bytes of the one-time data link token. */
export const DATA_TOKEN_BYTES = 32;

/** Longest resource or node name in a Hello, in UTF-8 bytes. */
export const NAME_MAX_BYTES = 64;
/** Most features one side may announce. */
export const FEATURES_MAX = 64;
/** Longest feature name, in UTF-8 bytes. */
export const FEATURE_NAME_MAX_BYTES = 64;
/** Longest request or notice kind, in UTF-8 bytes. */
export const REQUEST_KIND_MAX_BYTES = 64;
/** Generation history UUIDs in a NodeState (DESIGN.md §5). */
export const HISTORY_UUIDS = 2;

/** Unauthenticated control connections handled at once; more are refused at once. */
export const PENDING_HANDSHAKES_MAX = 8;
/** Requests to the peer waiting for their response at once. */
export const PENDING_REQUESTS_MAX = 256;
/** Longest error message carried back in a Response, in characters. */
export const ERROR_MESSAGE_MAX_CHARS = 4096;

/** Ping interval when the config does not set `ping-interval-ms`. */
export const PING_INTERVAL_DEFAULT_MS = 1_000;
/** Silence after which the peer is declared dead, when `ping-timeout-ms` is not set. */
export const PING_TIMEOUT_DEFAULT_MS = 5_000;
/** First redial delay when `connect-retry-ms` is not set. */
export const CONNECT_RETRY_DEFAULT_MS = 500;
/** Cap of the exponential redial backoff. */
export const CONNECT_RETRY_MAX_MS = 10_000;
/** Factor by which the redial delay grows after each failed attempt. */
export const CONNECT_RETRY_FACTOR = 2;
/** Relative jitter added to each redial delay (0.2 = up to +20%). */
export const CONNECT_RETRY_JITTER = 0.2;
/** Time from TCP connect to an established session (preamble, Hello, Auth, states). */
export const HANDSHAKE_TIMEOUT_DEFAULT_MS = 5_000;
/** Time the dialer has, from SessionStart, to open the data link with its token. */
export const DATA_LINK_TIMEOUT_DEFAULT_MS = 10_000;
/** Default time a request waits for its response. */
export const REQUEST_TIMEOUT_DEFAULT_MS = 10_000;
/** Time a closing socket gets to flush its last bytes (end) before it is destroyed. */
export const SOCKET_LINGER_MS = 1_000;

/** Smallest accepted ping interval and timeout: below this timers dominate the event loop. */
export const PING_INTERVAL_MIN_MS = 10;

function check(condition: boolean, relation: string): void {
  if (!condition) throw new Error(`link limits broken: ${relation}`);
}

check(PING_INTERVAL_DEFAULT_MS < PING_TIMEOUT_DEFAULT_MS, 'PING_INTERVAL_DEFAULT_MS < PING_TIMEOUT_DEFAULT_MS');
check(PING_TIMEOUT_DEFAULT_MS <= 5_000, 'a dead peer is noticed within 5 s by default');
check(CONNECT_RETRY_DEFAULT_MS <= CONNECT_RETRY_MAX_MS, 'CONNECT_RETRY_DEFAULT_MS <= CONNECT_RETRY_MAX_MS');
check(CONNECT_RETRY_FACTOR > 1, 'CONNECT_RETRY_FACTOR > 1');
check(CONTROL_MESSAGE_SIZE_MAX_BYTES < 2 ** 32, 'a message length fits the u32 prefix');
check(CONTROL_SEND_QUEUE_MAX_BYTES >= CONTROL_MESSAGE_SIZE_MAX_BYTES, 'the send queue holds one largest message');
check(PREAMBLE_BYTES === 'NRAIDCTL'.length, 'the preamble is 8 ASCII bytes');
