#pragma once
// An array of trivially constructible atomics that starts as zeros without
// touching its memory: an anonymous mapping, whose pages the kernel provides
// (zero-filled) on first write. What is never written is never resident, so
// per-device arrays (the dirty bitmap, the activity log's per-extent counters:
// 34 MiB for 1 TiB) cost memory only where the device is used.
#include <errno.h>
#include <string.h>
#include <sys/mman.h>

#include <atomic>
#include <cstddef>
#include <cstdint>
#include <cstdio>
#include <cstdlib>
#include <type_traits>

#include "limits.h"

namespace nraid {

template <typename T>
class ZeroedArray {
  static_assert(std::is_trivially_destructible_v<T> && sizeof(T) <= 8 && T::is_always_lock_free,
                "lock-free atomics whose zero bytes are the value zero");

 public:
  explicit ZeroedArray(uint64_t count)
      : count_(count), mapped_bytes_((count * sizeof(T) + kBlockBytes - 1) / kBlockBytes * kBlockBytes + kBlockBytes) {
    void* mapped = ::mmap(nullptr, mapped_bytes_, PROT_READ | PROT_WRITE, MAP_PRIVATE | MAP_ANONYMOUS, -1, 0);
    if (mapped == MAP_FAILED) {
      fprintf(stderr, "nraid: cannot map %llu zeroed bytes: %s\n", static_cast<unsigned long long>(mapped_bytes_), strerror(errno));
      abort();
    }
    data_ = static_cast<T*>(mapped);
  }
  ~ZeroedArray() { ::munmap(data_, mapped_bytes_); }
  ZeroedArray(const ZeroedArray&) = delete;
  ZeroedArray& operator=(const ZeroedArray&) = delete;

  T& operator[](uint64_t i) { return data_[i]; }
  const T& operator[](uint64_t i) const { return data_[i]; }
  uint64_t size() const { return count_; }

 private:
  const uint64_t count_;
  const uint64_t mapped_bytes_;
  T* data_;
};

}  // namespace nraid
