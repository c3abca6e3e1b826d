/**
 * Every bound the control plane uses, named once (after TigerStyle). The ones
 * marked "mirrors native/limits.h" must equal their C++ twins; the relations
 * between limits are asserted when this module loads, so a bad edit fails
 * every test at once instead of one code path at run time.
 */

import { InternalError } from './errors';

const KiB = 1024;
const MiB = 1024 * KiB;
const GiB = 1024 * MiB;

// --- Blocks and requests --------------------------------------------------

/** Mirrors native/limits.h kSectorBytes. */
export const sectorBytes = 512;
/** Alignment of every metadata read and write; mirrors native/limits.h kBlockBytes. */
export const blockBytes = 4 * KiB;
/** Largest request from the kernel and largest payload on the data link; mirrors kRequestBytesMax. */
export const requestBytesMax = 1 * MiB;

// --- Frontend threads (config key frontend-threads) ------------------------

/** Mirrors native/limits.h kFrontendThreadsMin. */
export const frontendThreadsMin = 1;
/** Mirrors native/limits.h kFrontendThreadsDefault. */
export const frontendThreadsDefault = 48;
/** Mirrors native/limits.h kFrontendThreadsMax. */
export const frontendThreadsMax = 128;

// --- Internal metadata (DESIGN.md §2) --------------------------------------

/** Data bytes covered by one bit of the dirty bitmap, by default. */
export const bitmapGranularityBytes = 4 * KiB;
export const bitmapGranularityBytesMin = blockBytes;
export const bitmapGranularityBytesMax = 1 * MiB;
/** The activity log names hot extents of this size; mirrors kActivityExtentBytes. */
export const activityExtentBytes = 4 * MiB;
export const activityLogBytes = 1 * MiB;
/** One activity-log transaction (a slot of the ring); mirrors kActivityTransactionBytes. */
export const activityTransactionBytes = 4 * KiB;
/** Header of a transaction, before its extent numbers; mirrors kActivityHeaderBytes. */
export const activityHeaderBytes = 32;
/** Extent numbers one transaction holds at most; mirrors kActivityExtentsMax. */
export const activityExtentsMax = 1000;
export const superblockSlotBytes = 4 * KiB;
/** Two slots: a torn write of one leaves the other intact. */
export const superblockSlots = 2;
export const superblockAreaBytes = superblockSlotBytes * superblockSlots;
/** Bytes for the resource name and for the node name in the superblock (NUL-padded UTF-8). */
export const superblockNameBytes = 64;
/** Smallest data area nraid accepts. */
export const dataSizeMinBytes = 4 * MiB;
/** Largest single write when create-md zeroes the bitmap and the activity log. */
export const metadataWriteChunkBytes = 1 * MiB;
/** How much of the device head create-md reads to look for filesystem signatures. */
export const signatureProbeBytes = 128 * KiB;

// --- Names and paths --------------------------------------------------------

/** Resource and node names: /^[A-Za-z0-9][A-Za-z0-9_.-]{0,62}$/. */
export const nameCharsMax = 63;
/** Linux PATH_MAX includes the terminating NUL. */
export const pathBytesMax = 4095;
/** RFC 1123: a hostname is at most 253 characters. */
export const hostnameCharsMax = 253;
export const portMin = 1;
export const portMax = 65535;

// --- Config file and its timing keys --------------------------------------

/** A config file larger than this is not a config file. */
export const configFileBytesMax = 1 * MiB;
export const secretCharsMin = 8;
export const secretCharsMax = 1024;
/** Below this many bytes create-md and up warn that the secret is weak (it is what an attacker must guess). */
export const secretBytesWarnBelow = 16;

export const pingIntervalMsMin = 100;
export const pingIntervalMsDefault = 1000;
export const pingIntervalMsMax = 60_000;

/** Must also exceed ping-interval-ms (checked per file). */
export const pingTimeoutMsMin = 200;
export const pingTimeoutMsDefault = 5000;
export const pingTimeoutMsMax = 300_000;

/** Base of the reconnect backoff. */
export const connectRetryMsMin = 10;
export const connectRetryMsDefault = 500;
export const connectRetryMsMax = 10_000;
/** Ceiling of the reconnect backoff that starts at connect-retry-ms (DRBD's connect-int is 10 s too). */
export const connectRetryBackoffMsMax = 10_000;

/** Protocol A: how far the peer may fall behind before writes wait. */
export const maxLagBytesMin = requestBytesMax;
export const maxLagBytesDefault = 64 * MiB;
export const maxLagBytesMax = 16 * GiB;

export const maxLagMsMin = 10;
export const maxLagMsDefault = 2000;
export const maxLagMsMax = 600_000;

// --- The holder (config key daemon-restart-bound-ms) -------------------------

/** 0: no holder; the daemon's death fails the device (as before the holder). */
export const daemonRestartBoundMsMin = 0;
export const daemonRestartBoundMsDefault = 0;
export const daemonRestartBoundMsMax = 600_000;
/** Between two starts of a daemon that exits before it serves (a broken install): no busy loop. */
export const daemonRestartRetryMs = 200;
/** How long the holder gives a daemon asked to hand over (`nraid restart`) to answer what it carries and exit. */
export const daemonHandoverWaitMs = 10_000;
/** After the bound, how long the holder waits for the openers of the failed device to close it before it leaves it to autoclear. */
export const holderReleaseWaitMs = 2000;
/**
 * The resync rate controller (the same bounds as native/limits.h's kResync* constants; config keys
 * resync-plan-ahead-ms, resync-fill-target-kib, resync-max-rate-mib,
 * resync-min-rate-mib). The fill target is the whole resync window
 * (8 x 1 MiB, the fixed window measured at 0.9-1.0 x a dd copy in issue 12);
 * max rate is above any link here, so only the link limits an idle resync;
 * min rate is what a resync keeps while applications do I/O (not yet
 * measured against the application's p99: see the bench rows to come).
 */
export const resyncPlanAheadMsMin = 100;
export const resyncPlanAheadMsDefault = 1_000;
export const resyncPlanAheadMsMax = 10_000;
export const resyncFillTargetKibMin = 64;
export const resyncFillTargetKibDefault = 8_192;
export const resyncFillTargetKibMax = 8_192;
export const resyncRateMibMin = 1;
export const resyncRateMibMax = 100_000;
export const resyncMaxRateMibDefault = 4_096;
export const resyncMinRateMibDefault = 16;

// --- Messages ----------------------------------------------------------------

/** One msgpack frame on the admin socket (CLI <-> daemon); src/admin.ts refuses larger ones both ways. */
export const adminFrameBytesMax = 1 * MiB;
/** One protobuf message on the control link; a bitmap exchange is chunked below this. */
export const controlMessageBytesMax = 16 * MiB;

// --- Control plane (src/resource/) -----------------------------------------------

/**
 * Node flags of a daemon process (and of the CLI: bin/nraid's #! line repeats
 * them, for systemd's `nraid up --foreground`): V8's semi-spaces at 1 MiB,
 * not up to 16 MiB. The control plane allocates little; the default kept
 * ~4 MiB more resident in rss-1t (issue 12: a 1 TiB Primary at <= 100 MiB).
 */
export const daemonNodeFlags: readonly string[] = ['--max-semi-space-size=1'];
/** A switchover's drain: how long the peer may take to write what was sent. */
export const drainTimeoutMs = 10_000;
/** How long a switchover waits for the peer's answer before its outcome is unknown. */
export const switchoverTimeoutMs = 30_000;
/** How long a sync source waits for the target's bitmap. */
export const bitmapRequestTimeoutMs = 30_000;
/** How often the dirty bitmap is written back (without a flush) while it changes. */
export const bitmapPersistIntervalMs = 2_000;
/** While a resync runs, the bitmap's cleared bits are written back this often (a restart resends at most this much of it). */
export const resyncPersistIntervalMs = 100;
/** `nraid events`: a resync-progress event this often while a resync runs. */
export const resyncProgressEventIntervalMs = 1_000;
/** How long a node that found a split brain waits for the peer to ask for its facts. */
export const splitBrainFactsTimeoutMs = 2_000;

// --- CLI, admin socket, hooks and cleanup (timing) ---------------------------

/** How long an admin call waits for its reply, unless the caller says otherwise (0: forever, for `events`). */
export const adminCallTimeoutMsDefault = 60_000;
/** How long a CLI probe for a running daemon ("is it up?") waits for its status. */
export const daemonProbeTimeoutMs = 5_000;
/** How long `nraid up` waits for the daemon it started to report ready. */
export const upReadyTimeoutMs = 60_000;
/** How long `nraid down` waits for the daemon's process to exit after it answered. */
export const downExitTimeoutMs = 30_000;
/** After a switchover's answer, how long the CLI waits for the turned-around session to replicate before printing the status. */
export const switchoverSettleWaitMs = 10_000;
export const switchoverSettlePollMs = 100;
/** Poll interval while waiting for a process to exit (there is no event for a non-child). */
export const processExitPollMs = 20;
/** `nraid status --watch`: one line per interval. */
export const statusWatchIntervalMs = 1_000;
/** A split-brain or fence-peer hook is killed after this long; its answer then is "failed". */
export const hookTimeoutMs = 60_000;
/** Role hooks (before-demote, after-promote): each one's timeout, configurable per resource. */
export const roleHookTimeoutMsMin = 1_000;
export const roleHookTimeoutMsDefault = 60_000;
export const roleHookTimeoutMsMax = 600_000;
/** Characters of a failed role hook's output quoted in the error (the log keeps more). */
export const roleHookMessageCharsMax = 300;
/** Characters of a hook's output kept for the log. */
export const hookOutputCharsMax = 4096;
/** How long `up` waits for a killed daemon (a zombie for a moment) to go before cleaning up after it. */
export const staleDaemonExitWaitMs = 10_000;
/** Tries to take a free loop device when another program takes each one first. */
export const loopAttachAttemptsMax = 8;

// --- Relations ------------------------------------------------------------------

function check(condition: boolean, relation: string): void {
  if (!condition) throw new InternalError(`src/limits.ts: expected ${relation}, found it broken; fix the limits named in it`);
}

function isPowerOfTwo(n: number): boolean {
  return Number.isSafeInteger(n) && n > 0 && (n & (n - 1)) === 0;
}

check(blockBytes % sectorBytes === 0, 'blockBytes is a multiple of sectorBytes');
check(requestBytesMax % blockBytes === 0, 'requestBytesMax is a multiple of blockBytes');
check(
  frontendThreadsMin <= frontendThreadsDefault && frontendThreadsDefault <= frontendThreadsMax,
  'frontendThreadsMin <= frontendThreadsDefault <= frontendThreadsMax',
);
check(isPowerOfTwo(bitmapGranularityBytes), 'bitmapGranularityBytes is a power of two');
check(
  bitmapGranularityBytesMin <= bitmapGranularityBytes && bitmapGranularityBytes <= bitmapGranularityBytesMax,
  'bitmapGranularityBytes within its bounds',
);
check(bitmapGranularityBytesMin % blockBytes === 0, 'bitmap granularity is whole blocks');
check(activityExtentBytes % requestBytesMax === 0, 'activityExtentBytes is a multiple of requestBytesMax');
check(activityExtentBytes % bitmapGranularityBytesMax === 0, 'an activity extent is whole bitmap bits');
check(activityLogBytes % blockBytes === 0, 'activityLogBytes is a multiple of blockBytes');
check(activityTransactionBytes === blockBytes, 'an activity-log transaction is one block');
check(activityLogBytes % activityTransactionBytes === 0, 'the activity log is whole transactions');
check(activityHeaderBytes + activityExtentsMax * 4 <= activityTransactionBytes - 4, 'a full transaction fits before its crc32c');
check(daemonProbeTimeoutMs < adminCallTimeoutMsDefault, 'a probe gives up before an ordinary admin call');
check(processExitPollMs < staleDaemonExitWaitMs && processExitPollMs < downExitTimeoutMs, 'exit waits poll several times');
check(statusWatchIntervalMs > 0 && hookTimeoutMs > 0 && upReadyTimeoutMs > 0, 'timeouts are positive');
check(loopAttachAttemptsMax >= 1, 'at least one loop attach attempt');
check(superblockSlotBytes === blockBytes, 'a superblock slot is one block');
check(superblockSlots === 2, 'two superblock slots');
check(superblockNameBytes * 2 < superblockSlotBytes, 'names fit in a superblock slot');
check(dataSizeMinBytes % activityExtentBytes === 0, 'dataSizeMinBytes is whole activity extents');
check(metadataWriteChunkBytes % blockBytes === 0, 'metadataWriteChunkBytes is a multiple of blockBytes');
check(signatureProbeBytes % blockBytes === 0, 'signatureProbeBytes is a multiple of blockBytes');
check(signatureProbeBytes <= dataSizeMinBytes, 'the signature probe stays inside the data area');
check(pingIntervalMsMin <= pingIntervalMsDefault && pingIntervalMsDefault <= pingIntervalMsMax, 'ping interval default in bounds');
check(pingTimeoutMsMin <= pingTimeoutMsDefault && pingTimeoutMsDefault <= pingTimeoutMsMax, 'ping timeout default in bounds');
check(pingTimeoutMsDefault > pingIntervalMsDefault, 'default ping timeout exceeds default ping interval');
check(pingTimeoutMsMin > pingIntervalMsMin, 'smallest ping timeout exceeds smallest ping interval');
check(pingTimeoutMsMax > pingIntervalMsMax, 'largest ping timeout exceeds largest ping interval');
check(connectRetryMsMin <= connectRetryMsDefault && connectRetryMsDefault <= connectRetryMsMax, 'connect retry default in bounds');
check(connectRetryMsMax <= connectRetryBackoffMsMax, 'backoff ceiling at or above its largest base');
check(maxLagBytesMin <= maxLagBytesDefault && maxLagBytesDefault <= maxLagBytesMax, 'max lag bytes default in bounds');
check(maxLagBytesMin >= requestBytesMax, 'protocol A can hold at least one request in flight');
check(Number.isSafeInteger(maxLagBytesMax), 'max lag bytes is a safe integer');
check(maxLagMsMin <= maxLagMsDefault && maxLagMsDefault <= maxLagMsMax, 'max lag ms default in bounds');
check(resyncPlanAheadMsMin <= resyncPlanAheadMsDefault && resyncPlanAheadMsDefault <= resyncPlanAheadMsMax, 'resync plan-ahead default in bounds');
check(resyncFillTargetKibMin <= resyncFillTargetKibDefault && resyncFillTargetKibDefault <= resyncFillTargetKibMax, 'resync fill target default in bounds');
check(resyncRateMibMin <= resyncMinRateMibDefault && resyncMinRateMibDefault <= resyncMaxRateMibDefault && resyncMaxRateMibDefault <= resyncRateMibMax, 'resync rate defaults in bounds');
check(portMin === 1 && portMax === 65535, 'TCP ports');
check(secretCharsMin <= secretCharsMax, 'secret length bounds');
check(controlMessageBytesMax >= requestBytesMax, 'a control message can carry a request-sized chunk');
check(adminFrameBytesMax <= controlMessageBytesMax, 'admin frames are not larger than control messages');
check(configFileBytesMax >= 4 * KiB, 'a config file can hold a real config');
check(switchoverTimeoutMs > drainTimeoutMs, 'a switchover outlasts its drain');
check(roleHookTimeoutMsMin <= roleHookTimeoutMsDefault && roleHookTimeoutMsDefault <= roleHookTimeoutMsMax, 'role hook timeout default in bounds');

// --- Control link (src/link, src/protocol/control.proto) -------------------------
// Defaults of the timing keys (ping-interval-ms, ...) and the largest message
// (controlMessageBytesMax) are above; these are the link's own.

/** Bytes of the preamble that opens every peer connection ("NRAIDCTL" or "NRAIDDAT"). */
export const controlPreambleBytes = 8;
/** Bytes of the u32 little-endian length before each control message. */
export const controlLengthPrefixBytes = 4;
/** Bytes queued for sending on a control socket before the peer counts as not reading. */
export const controlSendQueueBytesMax = 4 * controlMessageBytesMax;
/** Random bytes of each side's Hello nonce. */
export const controlNonceBytes = 32;
/** Bytes of an HMAC-SHA256. */
export const controlHmacBytes = 32;
/** Random bytes of the one-time token that binds the data link to a control session. */
export const dataTokenBytes = 32;
/** Most features one side may announce in its Hello. */
export const controlFeaturesMax = 64;
/** Longest feature name, in UTF-8 bytes. */
export const controlFeatureNameBytesMax = 64;
/** History UUIDs of a generation set (DESIGN.md §5): in the superblock and in NodeState. */
export const generationHistoryUuids = 2;
/**
 * Incoming connections not yet authenticated (reading their preamble or
 * token, or in the handshake), altogether and per source address. When a
 * bound is reached the newcomer is kept and the half-open connection that
 * got least far (the oldest of those) is closed, so that silent or stalled
 * connections cannot keep the real peer out.
 */
export const controlHandshakesPendingMax = 16;
export const controlHandshakesPerSourceMax = 8;
/** Largest control message accepted before the peer is authenticated (Hello, Auth), checked on the length prefix. */
export const controlPreAuthMessageBytesMax = 1 * KiB;
/** Time an incoming connection has, from accept, to prove the secret (preamble, Hello, Auth); capped by the handshake timeout. */
export const controlPreAuthTimeoutMsDefault = 2_000;
/** Refused connections are logged at most once per this interval (the first at once, then a count of the rest). */
export const refusedLogIntervalMs = 10_000;
/** Longest reason of a refused connection written to the log, in characters. */
export const refusedReasonCharsMax = 240;
/** Requests to the peer waiting for their response at once. */
export const controlRequestsPendingMax = 256;
/** Longest error message or reason carried in a Response, PromoteVote or Goodbye, in characters. */
export const controlErrorMessageCharsMax = 4096;
/**
 * Bitmap exchange: each chunk carries at most this many bytes of bitmap words,
 * and at most this many bytes on the wire (lz4-compressed, or raw when lz4
 * would not make it smaller).
 */
export const bitmapChunkBytesMax = 64 * KiB;
/** Largest whole bitmap a peer may send: 2^32 bits (16 TiB of data at 4 KiB per bit). */
export const bitmapReplyBytesMax = 512 * MiB;
/** Factor by which the redial delay grows after each failed attempt. */
export const connectRetryFactor = 2;
/** Relative jitter added to each redial delay (0.2 = up to +20 %). */
export const connectRetryJitter = 0.2;
/** Time from TCP connect to an established session (preamble, Hello, Auth, states). */
export const handshakeTimeoutMsDefault = 5_000;
/** Time the dialer has, from SessionStart, to open the data link with its token. */
export const dataLinkTimeoutMsDefault = 10_000;
/** Time a control request waits for its (whole) response when the caller names none. */
export const controlRequestTimeoutMsDefault = 10_000;
/** Time a closing control socket gets to flush its last bytes (end) before it is destroyed. */
export const socketLingerMs = 1_000;

check(controlLengthPrefixBytes === 4 && controlMessageBytesMax < 2 ** 32, 'a control message length fits the u32 prefix');
check(controlSendQueueBytesMax >= controlMessageBytesMax, 'the control send queue holds one largest message');
check(bitmapChunkBytesMax % 8 === 0, 'a bitmap chunk is whole u64 words');
check(bitmapChunkBytesMax * 2 <= controlMessageBytesMax, 'a bitmap chunk and its envelope fit one control message');
check(bitmapReplyBytesMax % bitmapChunkBytesMax === 0, 'the largest bitmap is whole chunks');
check(Number.isSafeInteger(bitmapReplyBytesMax * 8), 'bit counts of the largest bitmap are safe integers');
check(controlErrorMessageCharsMax * 4 < bitmapChunkBytesMax, 'an error message (UTF-8) is smaller than a chunk');
check(connectRetryFactor > 1 && connectRetryJitter >= 0 && connectRetryJitter < 1, 'the redial backoff grows, with bounded jitter');
check(pingTimeoutMsDefault <= 5_000, 'a dead peer is noticed within 5 s by default');
check(handshakeTimeoutMsDefault < dataLinkTimeoutMsDefault, 'the data link may come after the handshake');
check(controlPreAuthTimeoutMsDefault <= handshakeTimeoutMsDefault, 'the secret is proven within the handshake');
check(controlHandshakesPerSourceMax <= controlHandshakesPendingMax, 'a source holds at most the whole half-open pool');
check(controlPreAuthMessageBytesMax >= 2 * (controlNonceBytes + controlHmacBytes), 'a Hello or an Auth fits the pre-auth bound');
check(controlPreAuthMessageBytesMax < controlMessageBytesMax, 'the pre-auth bound is the smaller one');
