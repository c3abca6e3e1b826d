#pragma once
// Fixed sets of large I/O buffers in transparent huge pages.
//
// A direct-I/O request is one segment per physically contiguous run of its
// buffer. A 1 MiB buffer of scattered 4 KiB pages is 256 segments, more than
// a virtio disk takes in one request (max_segments 254 here), so the block
// layer splits it in two; in 2 MiB pages it is one segment. Measured on a
// full sync (issue 12): with malloc'd buffers its reads and writes averaged
// 620-960 KiB, with waits three times dd's, at 0.8-0.95 of a dd copy, and the
// same dd ran at 512 KiB requests whenever its own buffer's pages were scattered.
//
// The mapping is reserved, not populated: a page becomes resident when a
// buffer in it is first used (2 MiB at a time), and stays so until the set is freed.
#include <cstddef>
#include <cstdint>

namespace nraid {

constexpr size_t kHugePageBytes = 2 * 1024 * 1024;

inline size_t round_to_huge(size_t bytes) { return (bytes + kHugePageBytes - 1) / kHugePageBytes * kHugePageBytes; }

// `bytes` (a multiple of kHugePageBytes) of anonymous memory aligned to a huge page,
// or nullptr (errno set). Its huge pages are left to the caller's madvise.
uint8_t* map_huge_aligned(size_t bytes);

// `count` buffers of `buffer_bytes` (a multiple of 4 KiB), laid out in one mapping
// in huge pages (MADV_HUGEPAGE). Aborts when the mapping fails, as an allocation would.
class HugeBuffers {
 public:
  HugeBuffers(uint32_t count, size_t buffer_bytes);
  ~HugeBuffers();
  HugeBuffers(const HugeBuffers&) = delete;
  HugeBuffers& operator=(const HugeBuffers&) = delete;

  uint8_t* operator[](uint32_t index) const { return base_ + index * buffer_bytes_; }
  uint32_t count() const { return count_; }

 private:
  uint8_t* base_;
  size_t mapped_bytes_;
  uint32_t count_;
  size_t buffer_bytes_;
};

}  // namespace nraid
