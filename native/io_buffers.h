#pragma once
// Fixed sets of large direct-I/O buffers, and the page size they live in.
//
// A direct-I/O request is one segment per physically contiguous run of its
// buffer. A 1 MiB buffer of scattered 4 KiB pages is 256 segments, more than
// a virtio disk takes in one request (max_segments 254 here; 127 or fewer on
// many NVMe and SATA disks), so the block layer splits it; in 2 MiB pages it
// is one segment. Measured on a full sync (issue 12): with malloc'd buffers
// its reads and writes averaged 620-960 KiB, with waits three times dd's, at
// 0.8-0.95 of a dd copy, and the same dd ran at 512 KiB requests whenever its
// own buffer's pages were scattered.
//
// A huge page is resident 2 MiB at a time, so only buffers that carry large
// payloads live in them; buffers that may carry a 4 KiB write live in small
// pages (only the pages a payload touches become resident).
//
// Mappings are reserved, not populated: a page becomes resident when a buffer
// in it is first used, and stays so until the set is freed.
#include <cstddef>
#include <cstdint>
#include <vector>

namespace nraid {

constexpr size_t kHugePageBytes = 2 * 1024 * 1024;

inline size_t round_to_huge(size_t bytes) { return (bytes + kHugePageBytes - 1) / kHugePageBytes * kHugePageBytes; }

// `bytes` (a multiple of kHugePageBytes) of anonymous memory aligned to a huge page,
// or nullptr (errno set). Its huge pages are left to the caller's madvise.
uint8_t* map_huge_aligned(size_t bytes);

enum class PageSize { kSmall, kHuge };

// `count` buffers of `buffer_bytes` (a multiple of 4 KiB) in one mapping, in
// `pages`. Aborts when the mapping fails, as an allocation would.
class IoBuffers {
 public:
  IoBuffers(uint32_t count, size_t buffer_bytes, PageSize pages);
  ~IoBuffers();
  IoBuffers(const IoBuffers&) = delete;
  IoBuffers& operator=(const IoBuffers&) = delete;

  uint8_t* operator[](uint32_t index) const { return base_ + index * buffer_bytes_; }
  uint32_t count() const { return count_; }

 private:
  uint8_t* base_;
  size_t mapped_bytes_;
  uint32_t count_;
  size_t buffer_bytes_;
};

// A receive window's payload buffers: `large` in huge pages, taken first for
// payloads of `large_from_bytes` or more, and `small` in small pages, taken
// first for the others; either kind when the other is used up. Each kind is
// taken last-in first-out, so a link keeps the same few resident. Not locked:
// its owner's mutex guards it.
class PayloadBuffers {
 public:
  PayloadBuffers(uint32_t large, uint32_t small, size_t buffer_bytes, size_t large_from_bytes);

  bool empty() const { return free_large_.empty() && free_small_.empty(); }
  // Not empty: a buffer for a payload of `length` bytes.
  uint32_t take(uint32_t length);
  void give(uint32_t index);
  uint8_t* operator[](uint32_t index) const {
    return index < large_.count() ? large_[index] : small_[index - large_.count()];
  }

 private:
  IoBuffers large_;
  IoBuffers small_;
  const size_t large_from_bytes_;
  std::vector<uint32_t> free_large_;
  std::vector<uint32_t> free_small_;
};

}  // namespace nraid
