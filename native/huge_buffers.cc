#include "huge_buffers.h"

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

HugeBuffers::HugeBuffers(uint32_t count, size_t buffer_bytes)
    : mapped_bytes_(round_to_huge(count * buffer_bytes)), count_(count), buffer_bytes_(buffer_bytes) {
  NRAID_ASSERT(count > 0 && buffer_bytes % 4096 == 0);
  base_ = map_huge_aligned(mapped_bytes_);
  if (base_ == nullptr) abort();
  // Where transparent huge pages are off this fails (EINVAL): the buffers work in small pages.
  ::madvise(base_, mapped_bytes_, MADV_HUGEPAGE);
}

HugeBuffers::~HugeBuffers() { ::munmap(base_, mapped_bytes_); }

}  // namespace nraid
