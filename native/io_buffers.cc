#include "io_buffers.h"

#include <sys/mman.h>

#include <cerrno>
#include <cstdlib>

#include "nraid_assert.h"

namespace nraid {

uint8_t* map_huge_aligned(size_t bytes) {
  NRAID_ASSERT(bytes % kHugePageBytes == 0);
  void* mapped = ::mmap(nullptr, bytes + kHugePageBytes, PROT_READ | PROT_WRITE, MAP_PRIVATE | MAP_ANONYMOUS, -1, 0);
  if (mapped == MAP_FAILED) return nullptr;
  // Trim to a huge-page-aligned window (the kernel backs only aligned 2 MiB ranges with huge pages).
  auto base = reinterpret_cast<uintptr_t>(mapped);
  uintptr_t aligned = (base + kHugePageBytes - 1) / kHugePageBytes * kHugePageBytes;
  if (aligned > base) ::munmap(mapped, aligned - base);
  size_t tail_bytes = base + kHugePageBytes - aligned;  // > 0: aligned - base < kHugePageBytes
  ::munmap(reinterpret_cast<void*>(aligned + bytes), tail_bytes);
  return reinterpret_cast<uint8_t*>(aligned);
}

IoBuffers::IoBuffers(uint32_t count, size_t buffer_bytes, PageSize pages)
    : mapped_bytes_(round_to_huge(count * buffer_bytes)), count_(count), buffer_bytes_(buffer_bytes) {
  NRAID_ASSERT(buffer_bytes % 4096 == 0);
  if (count == 0) {
    base_ = nullptr;
    mapped_bytes_ = 0;
    return;
  }
  base_ = map_huge_aligned(mapped_bytes_);
  if (base_ == nullptr) abort();
  // Where transparent huge pages are off MADV_HUGEPAGE fails (EINVAL): the buffers work in small pages.
  ::madvise(base_, mapped_bytes_, pages == PageSize::kHuge ? MADV_HUGEPAGE : MADV_NOHUGEPAGE);
}

IoBuffers::~IoBuffers() {
  if (base_ != nullptr) ::munmap(base_, mapped_bytes_);
}

PayloadBuffers::PayloadBuffers(uint32_t large, uint32_t small, size_t buffer_bytes, size_t large_from_bytes)
    : large_(large, buffer_bytes, PageSize::kHuge), small_(small, buffer_bytes, PageSize::kSmall), large_from_bytes_(large_from_bytes) {
  for (uint32_t i = large; i-- > 0;) free_large_.push_back(i);
  for (uint32_t i = large + small; i-- > large;) free_small_.push_back(i);
}

uint32_t PayloadBuffers::take(uint32_t length) {
  NRAID_ASSERT(!empty());
  std::vector<uint32_t>* from = length >= large_from_bytes_ ? &free_large_ : &free_small_;
  if (from->empty()) from = from == &free_large_ ? &free_small_ : &free_large_;
  const uint32_t index = from->back();
  from->pop_back();
  return index;
}

void PayloadBuffers::give(uint32_t index) {
  (index < large_.count() ? free_large_ : free_small_).push_back(index);
}

}  // namespace nraid
