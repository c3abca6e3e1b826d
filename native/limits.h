// Every bound of the data plane, named once (after TigerStyle), with
// static_asserts for how they relate. src/limits.ts mirrors the ones the
// control plane needs; test/unit/config.test.ts checks that they agree
// (through the binding's `limits` object).
#pragma once
#include <cstddef>
#include <cstdint>

namespace nraid {

constexpr uint64_t kKiB = 1024;
constexpr uint64_t kMiB = 1024 * kKiB;
constexpr uint64_t kGiB = 1024 * kMiB;

// ---- blocks and requests ----

constexpr uint32_t kSectorBytes = 512;
constexpr uint32_t kBlockBytes = 4 * kKiB;
// The largest request the kernel sends (max_pages 256 of kFusePageBytes).
constexpr uint32_t kRequestBytesMax = 1 * kMiB;
// The largest payload of one data-link frame.
constexpr uint32_t kFramePayloadBytesMax = kRequestBytesMax;
// A DISCARD or ZEROES frame's length is 32 bits: longer ones go in pieces of this size.
constexpr uint64_t kRangeFrameBytesMax = 1 * kGiB;

// Checksum resync and verify compare one 64-bit digest per block (xxh64, digest.h).
constexpr uint32_t kDigestBytes = 8;
constexpr uint32_t kDigestReplyBytesMax = kRequestBytesMax / kBlockBytes * kDigestBytes;

static_assert(kBlockBytes % kSectorBytes == 0);
static_assert(kDigestReplyBytesMax <= kFramePayloadBytesMax, "a digest reply fits in one frame");
static_assert(kRequestBytesMax % kBlockBytes == 0);
static_assert(kRequestBytesMax <= kFramePayloadBytesMax, "every request fits in one frame");
static_assert(kRangeFrameBytesMax % kBlockBytes == 0);
static_assert(kRangeFrameBytesMax <= UINT32_MAX, "a frame's length field is 32 bits");

// ---- FUSE frontend ----

// The unit of FUSE_INIT's max_pages.
constexpr uint32_t kFusePageBytes = 4 * kKiB;
// Room in front of a FUSE request buffer so that a WRITE's payload lands block-aligned.
constexpr uint32_t kFuseHeaderRoomBytes = kBlockBytes;
constexpr uint32_t kFuseBufferBytes = kFuseHeaderRoomBytes + kRequestBytesMax;
// Frontend threads: each owns one request buffer and carries one request at a time,
// so this is also the bound on requests in flight from the kernel.
constexpr uint32_t kFrontendThreadsMin = 1;
constexpr uint32_t kFrontendThreadsDefault = 48;
constexpr uint32_t kFrontendThreadsMax = 128;
// The stack of each frontend thread (allocated, and with lock-memory mlocked, up front).
constexpr size_t kFrontendStackBytes = 256 * kKiB;
// Frontend memory is resident only where a thread touched it (mlock2 MLOCK_ONFAULT): a thread
// that served nothing for kFrontendIdleTrimMs gives its buffer's and stack's pages back, found by
// a check every kFrontendIdleCheckMs. The kernel wakes reading threads in FIFO order, so under
// load every thread serves; on a quiet device (or one only resyncing) their memory goes back.
constexpr uint32_t kFrontendIdleCheckMs = 1'000;
constexpr uint32_t kFrontendIdleTrimMs = 10'000;
// What a trim leaves of a stack below the trimming frame (its own calls and a signal's frame).
constexpr size_t kFrontendStackKeptBytes = 16 * kKiB;
// A request with this much payload turns the frontend's buffers to huge pages (1 MiB writes
// through 4 KiB pages ran at 0.55-0.6x; small requests showed no difference).
constexpr uint32_t kFrontendHugeRequestBytes = 256 * kKiB;
// FUSE asks for the kernel's background queue: bounds async direct I/O in flight.
constexpr uint16_t kFuseMaxBackground = 256;
constexpr uint16_t kFuseCongestionThreshold = 192;

static_assert(kRequestBytesMax % kFusePageBytes == 0);
static_assert(kRequestBytesMax / kFusePageBytes <= 256, "the kernel's max_pages_limit");
static_assert(kFuseHeaderRoomBytes % kBlockBytes == 0);
static_assert(kFrontendThreadsMin <= kFrontendThreadsDefault && kFrontendThreadsDefault <= kFrontendThreadsMax);
static_assert(kFuseCongestionThreshold < kFuseMaxBackground);
static_assert(kFrontendStackBytes % kBlockBytes == 0);
static_assert(kFrontendIdleTrimMs >= 2 * kFrontendIdleCheckMs, "idle means several checks without a request");
static_assert(kFrontendStackKeptBytes % kBlockBytes == 0 && kFrontendStackKeptBytes < kFrontendStackBytes);
static_assert(kFrontendHugeRequestBytes <= kRequestBytesMax);

// ---- dirty bitmap and activity log ----

// Data bytes one bitmap bit covers (a power of two between these; the control plane picks it).
constexpr uint32_t kBitmapGranularityBytesMin = kBlockBytes;
constexpr uint32_t kBitmapGranularityBytesMax = 1 * kMiB;
// The activity log tracks extents of this size.
constexpr uint64_t kActivityExtentBytes = 4 * kMiB;
// A ring of transactions, each naming every hot extent.
constexpr uint32_t kActivityTransactionBytes = kBlockBytes;
constexpr uint32_t kActivityHeaderBytes = 32;
constexpr uint32_t kActivityExtentsMax = 1000;  // 4 GiB of hot data at 4 MiB extents
constexpr uint32_t kActivityMagic = 0x4C41524E;  // "NRAL"
constexpr uint32_t kActivityLayoutVersion = 1;
// The on-disk bitmap is read at start-up this much at a time, into one buffer
// (addon.cc BitmapLoad): never whole, which is 32 MiB per TiB of data.
constexpr uint64_t kBitmapLoadChunkBytes = 1 * kMiB;

static_assert(kBitmapGranularityBytesMin % kBlockBytes == 0, "a bitmap bit covers whole blocks");
static_assert(kBitmapGranularityBytesMin <= kBitmapGranularityBytesMax);
static_assert(kActivityExtentBytes % kRequestBytesMax == 0);
static_assert(kBitmapLoadChunkBytes % kBlockBytes == 0, "the bitmap is read in whole disk blocks");
static_assert(kActivityExtentBytes % kBitmapGranularityBytesMax == 0, "an activity extent is whole bitmap bits");
static_assert(kActivityHeaderBytes + kActivityExtentsMax * 4 <= kActivityTransactionBytes - 4,
              "header, extent numbers and the crc fit in one transaction");

// ---- replication (source side) ----

// Slots: one per frontend thread, plus the resync engine's.
constexpr uint32_t kSlotsMax = kFrontendThreadsMax + 1;
constexpr uint32_t kResyncSlot = kFrontendThreadsMax;
// Frames sent and not yet acknowledged as written (bounded by span of sequence numbers).
constexpr uint32_t kUnackedEntries = 8192;
// Frames the sender writes in one writev() (two iovecs each: header and payload).
constexpr uint32_t kFramesPerWrite = 64;
// Resync: chunks read from disk and in flight to the peer (a bit each in a 32-bit mask).
constexpr uint32_t kResyncChunkBytes = kRequestBytesMax;
constexpr uint32_t kResyncWindowChunks = 8;
// Resync and verify reads issued ahead of the one being sent (native AIO, each
// into its own resync buffer, its region locked until its frame is queued),
// so the disk reads while the link sends; while applications hold the rate down, none.
constexpr uint32_t kResyncReadsAheadMax = 4;
// A read ahead starts at most this far past the oldest one not yet queued: the
// region locks held meanwhile stay near each other (sparse bitmaps read one at a time).
constexpr uint64_t kResyncReadAheadSpanBytes = 16 * kMiB;
// Protocol A's defaults for how far the peer may fall behind (src/limits.ts maxLagBytesDefault, maxLagMsDefault).
constexpr uint64_t kMaxLagBytesDefault = 64 * kMiB;
constexpr uint64_t kMaxLagUsDefault = 2'000'000;
constexpr uint32_t kSocketBufferBytes = 4 * kMiB;
// Time each side's data plane waits for the other's HELLO on a new data link (a peer that never
// sends one would otherwise hold the receiving thread forever).
constexpr uint32_t kDataHelloTimeoutMs = 10000;
// Buffered socket reads: under load one read() brings many frames.
constexpr size_t kSocketReadBufferBytes = 256 * kKiB;
// TLS on the data link (link_stream.h): plaintext sealed into records before
// one socket write, and the ciphertext buffer that holds those records.
constexpr size_t kTlsPlainChunkBytes = 128 * kKiB;
constexpr size_t kTlsRecordPlainBytesMax = 16 * kKiB;  // RFC 8446 5.1
constexpr size_t kTlsRecordOverheadBytes = 5 + 1 + 16;  // header, inner content type, AEAD tag
constexpr size_t kTlsRecordCipherBytesMax = kTlsRecordPlainBytesMax + 256;  // RFC 8446 5.2
constexpr size_t kTlsCipherChunkBytes =
    kTlsPlainChunkBytes + (kTlsPlainChunkBytes / kTlsRecordPlainBytesMax + 1) * kTlsRecordOverheadBytes;
// Records sealed under one key before both ends move to the next (the TLS 1.3
// KeyUpdate derivation, at a count both ends know): AES-GCM's limit is 2^24.5
// full records per key (RFC 8446 5.5).
constexpr uint64_t kTlsRecordsPerKey = 1ull << 23;
constexpr uint32_t kTlsHandshakeTimeoutMs = 10'000;
// The pre-shared key the control plane derives from the secret (src/link/tls.ts).
constexpr size_t kTlsPskBytes = 32;

// Resync rate controller (replicator.cc, resync_loop): every tick it plans the
// next one from the settings (src/limits.ts resync*; config resync-*).
constexpr uint64_t kResyncTickUs = 100'000;
constexpr uint32_t kResyncPlanAheadMsMin = 100;
constexpr uint32_t kResyncPlanAheadMsMax = 10'000;
constexpr uint32_t kResyncPlanAheadMsDefault = 1'000;
constexpr uint64_t kResyncFillTargetBytesMin = 64 * kKiB;
constexpr uint64_t kResyncFillTargetBytesMax = static_cast<uint64_t>(kResyncWindowChunks) * kResyncChunkBytes;
constexpr uint64_t kResyncFillTargetBytesDefault = kResyncFillTargetBytesMax;
constexpr uint64_t kResyncRateBytesMin = 1 * kMiB;          // per second
constexpr uint64_t kResyncRateBytesMax = 100'000 * kMiB;    // per second
constexpr uint64_t kResyncMaxRateBytesDefault = 4'096 * kMiB;
constexpr uint64_t kResyncMinRateBytesDefault = 16 * kMiB;
// While applications do I/O, one resync frame carries at most this much:
// an application write queued behind it on either disk waits less.
constexpr uint32_t kResyncThrottledChunkBytes = 128 * kKiB;

static_assert(kUnackedEntries >= kSlotsMax + kResyncWindowChunks,
              "every writer and the resync window can have a frame in flight at once");
static_assert(2 * kFramesPerWrite <= 1024, "one writev() stays under IOV_MAX");
static_assert(kResyncChunkBytes <= kFramePayloadBytesMax, "a resync chunk fits in one frame");
static_assert(kTlsPlainChunkBytes % kTlsRecordPlainBytesMax == 0, "one socket write carries whole records");
static_assert(kTlsRecordCipherBytesMax + 5 <= kSocketReadBufferBytes / 2, "a whole record fits in the receive buffer");
static_assert(kTlsCipherChunkBytes <= kSocketReadBufferBytes, "one chunk's records fit in one socket read buffer");
static_assert(kResyncChunkBytes % kBitmapGranularityBytesMax == 0, "a resync chunk is whole bitmap bits");
static_assert(kResyncWindowChunks >= 1 && kResyncWindowChunks <= 32, "the free mask of resync buffers is 32 bits");
static_assert(kResyncReadsAheadMax >= 1 && kResyncReadsAheadMax <= kResyncWindowChunks, "each read ahead holds a resync buffer");
static_assert(kResyncReadAheadSpanBytes >= kResyncReadsAheadMax * kResyncChunkBytes, "contiguous reads ahead fit in the span");
static_assert(kMaxLagBytesDefault >= kRequestBytesMax, "protocol A can hold at least one request in flight");
static_assert(kResyncPlanAheadMsMin * 1000 >= kResyncTickUs, "the plan covers at least one tick");
static_assert(kResyncFillTargetBytesMin <= kResyncFillTargetBytesDefault && kResyncFillTargetBytesDefault <= kResyncFillTargetBytesMax);
static_assert(kResyncFillTargetBytesMax <= static_cast<uint64_t>(kResyncWindowChunks) * kResyncChunkBytes,
              "what the controller keeps in flight fits in the resync buffers");
static_assert(kResyncRateBytesMin <= kResyncMinRateBytesDefault && kResyncMinRateBytesDefault <= kResyncMaxRateBytesDefault &&
              kResyncMaxRateBytesDefault <= kResyncRateBytesMax);
static_assert(kResyncRateBytesMax / kMiB * kResyncPlanAheadMsMax < UINT64_MAX / kMiB, "a plan's bytes fit in 64 bits");
static_assert(kResyncThrottledChunkBytes % kBitmapGranularityBytesMax == 0 || kBitmapGranularityBytesMax % kResyncThrottledChunkBytes == 0);
static_assert(kResyncThrottledChunkBytes <= kResyncChunkBytes && kResyncThrottledChunkBytes >= kBitmapGranularityBytesMin);

// ---- apply (target side) ----

// Payload buffers in flight (the receive window), which also bounds the
// asynchronous disk writes in flight.
constexpr uint32_t kApplyBuffers = 64;
// Of those, the ones in huge pages (native/io_buffers.h), taken first for payloads
// of kApplyLargePayloadBytes or more: a resync window's worth and then some.
constexpr uint32_t kApplyLargeBuffers = 16;
constexpr uint32_t kApplyLargePayloadBytes = 128 * 1024;
// With nothing else in flight, the receiver writes a frame this small itself
// and waits for it: at queue depth 1 that is one wake-up less than the
// reaper's. A larger write would hold up the frames behind it for longer.
constexpr uint32_t kInlineApplyBytesMax = 64 * kKiB;
// Protocol B's receive acks of one burst leave in one write of at most this many.
constexpr uint32_t kRecvAcksMax = 64;
// Completions the reaper takes from the kernel per wake-up.
constexpr uint32_t kReapMax = 64;

static_assert(kInlineApplyBytesMax <= kRequestBytesMax);
static_assert(kInlineApplyBytesMax % kBlockBytes == 0);
static_assert(kApplyBuffers <= kUnackedEntries, "the receive window is within what the source keeps in flight");
static_assert(kApplyLargeBuffers >= kResyncWindowChunks && kApplyLargeBuffers <= kApplyBuffers,
              "a resync window's chunks all land in huge pages");

// ---- process ----

// glibc malloc arenas (mallopt M_ARENA_MAX, set when the addon loads): the data plane
// allocates nothing per request, so only node's own threads share them; each arena
// more kept ~1-2 MiB resident (rss-1t: 3.5 MiB less with 2).
constexpr int kMallocArenasMax = 2;

// ---- control plane boundary ----

// Events queued to JavaScript before new ones are dropped (and counted).
constexpr uint32_t kEventQueueMax = 256;
// Metadata jobs (superblock writes, bitmap write-back, activity-log reset,
// flushes, drains) submitted and not yet settled, per pipeline. One more is
// refused (EAGAIN): a backlog this long means the backing disk is stalled.
constexpr uint32_t kMetadataJobsMax = 32;
// The longest a drain may be asked to wait (one day): a deadline in microseconds stays far from overflow.
constexpr uint64_t kDrainTimeoutMsMax = 24ull * 3600 * 1000;
// Write latency histogram: bucket i counts latencies under 2^i microseconds (the last one: the rest).
constexpr uint32_t kLatencyBuckets = 24;

static_assert(kMetadataJobsMax >= 8, "room for one of each kind of job, and a few flushes");
static_assert(kLatencyBuckets <= 64);
static_assert(kDrainTimeoutMsMax * 1000 < UINT64_MAX / 2, "now + the longest drain fits the monotonic microsecond clock");

}  // namespace nraid
