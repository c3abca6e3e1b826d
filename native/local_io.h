#pragma once
// The backing device: O_DIRECT I/O at absolute byte offsets, blocking, callable
// from any thread. A block device or, for tests, a regular file.
#include <cstdint>
#include <string>

namespace nraid {

class LocalDisk {
 public:
  // Opens `path` with O_DIRECT; returns nullptr and sets `error` (and errno) on failure.
  static LocalDisk* open(const std::string& path, bool read_only, std::string* error);
  ~LocalDisk();
  LocalDisk(const LocalDisk&) = delete;
  LocalDisk& operator=(const LocalDisk&) = delete;

  // Each returns 0 or a negative errno. Buffers, offsets and lengths must be
  // aligned to logical_block_bytes (asserted): O_DIRECT demands it.
  int write(const void* data, uint64_t length_bytes, uint64_t offset_bytes);
  int read(void* data, uint64_t length_bytes, uint64_t offset_bytes);
  int flush();
  // After discard the range reads as zeroes on loop devices and files (punch hole);
  // zero_out guarantees zeroes everywhere.
  int discard(uint64_t offset_bytes, uint64_t length_bytes);
  int zero_out(uint64_t offset_bytes, uint64_t length_bytes);

  const std::string& path() const { return path_; }
  uint64_t size_bytes() const { return size_bytes_; }
  bool is_block_device() const { return is_block_device_; }
  uint32_t logical_block_bytes() const { return logical_block_bytes_; }
  int fd() const { return fd_; }

 private:
  LocalDisk() = default;
  std::string path_;
  int fd_ = -1;
  uint64_t size_bytes_ = 0;
  bool is_block_device_ = false;
  uint32_t logical_block_bytes_ = 512;
};

}  // namespace nraid
