// Every bound of the data plane, named once. src/limits.ts mirrors the ones
// the control plane needs; test/unit/limits.test.ts checks that they agree.
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
