// Every bound of the data plane, named once. src/limits.ts mirrors the ones
// the control plane needs; test/unit/config.test.ts checks that they agree.
#pragma once
#include <cstddef>
#include <cstdint>

namespace nraid {

constexpr uint32_t kSectorBytes = 512;
constexpr uint32_t kBlockBytes = 4096;
// The largest request the kernel sends (max_pages 256) and the largest payload on the wire.
constexpr uint32_t kRequestBytesMax = 1u << 20;
// Room in front of a FUSE request buffer so that a WRITE's payload lands block-aligned.
constexpr uint32_t kFuseHeaderRoomBytes = kBlockBytes;
constexpr uint32_t kFuseBufferBytes = kFuseHeaderRoomBytes + kRequestBytesMax;
// Frontend threads: each owns one request buffer and carries one request at a time,
// so this is also the bound on requests in flight from the kernel.
constexpr uint32_t kFrontendThreadsMin = 1;
constexpr uint32_t kFrontendThreadsDefault = 48;
constexpr uint32_t kFrontendThreadsMax = 128;
// FUSE asks for the kernel's background queue: bounds async direct I/O in flight.
constexpr uint16_t kFuseMaxBackground = 256;
constexpr uint16_t kFuseCongestionThreshold = 192;
// The activity log tracks extents of this size.
constexpr uint64_t kActivityExtentBytes = 4ull << 20;

static_assert(kRequestBytesMax % kBlockBytes == 0);
static_assert(kFuseHeaderRoomBytes % kBlockBytes == 0);
static_assert(kFrontendThreadsDefault <= kFrontendThreadsMax);
static_assert(kFuseCongestionThreshold < kFuseMaxBackground);
static_assert(kActivityExtentBytes % kRequestBytesMax == 0);

}  // namespace nraid

namespace nraid {

// Replication. Slots: one per frontend thread, plus the resync engine's.
constexpr uint32_t kSlotsMax = kFrontendThreadsMax + 1;
constexpr uint32_t kResyncSlot = kFrontendThreadsMax;
// Frames sent and not yet acknowledged as written (bounded by span of sequence numbers).
constexpr uint32_t kUnackedEntries = 8192;
// Target side: payload buffers in flight (the receive window), which also
// bounds the asynchronous disk writes in flight.
constexpr uint32_t kApplyBuffers = 64;
// With nothing else in flight, the receiver writes a frame this small itself
// and waits for it: at queue depth 1 that is one wake-up less than the
// reaper's. A larger write would hold up the frames behind it for longer.
constexpr uint32_t kInlineApplyBytesMax = 64 * 1024;
// Resync: chunks read from disk and in flight to the peer.
constexpr uint32_t kResyncChunkBytes = kRequestBytesMax;
constexpr uint32_t kResyncWindowChunks = 8;
constexpr uint32_t kSocketBufferBytes = 4u << 20;
// Events queued to JavaScript before new ones are dropped (and counted).
constexpr uint32_t kEventQueueMax = 256;

static_assert(kUnackedEntries >= kSlotsMax + kResyncWindowChunks);
static_assert(kResyncChunkBytes <= kRequestBytesMax);

}  // namespace nraid

namespace nraid {

// Activity log: a ring of 4 KiB transactions, each naming every hot extent.
constexpr uint32_t kActivityTransactionBytes = 4096;
constexpr uint32_t kActivityHeaderBytes = 32;
constexpr uint32_t kActivityExtentsMax = 1000;  // 4 GiB of hot data at 4 MiB extents
constexpr uint32_t kActivityMagic = 0x4C41524E;  // "NRAL"

static_assert(kActivityHeaderBytes + kActivityExtentsMax * 4 <= kActivityTransactionBytes - 4);

}  // namespace nraid
