#pragma once
// The backing device: O_DIRECT I/O at absolute byte offsets, blocking, callable
// from any thread. A block device or, for tests, a regular file.
#include <cstdint>
#include <string>

#include "limits.h"

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
  // Zeros that leave a file sparse (punch hole: reads as zeros, no blocks);
  // on a block device, zero_out (BLKZEROOUT).
  int zero_out_sparse(uint64_t offset_bytes, uint64_t length_bytes);
  // Where the next data may be at or after `offset_bytes` (SEEK_DATA): for a
  // backing file with a hole at `offset_bytes`, the hole's end (or
  // `limit_bytes` when no data follows); otherwise `offset_bytes` (a block
  // device, or data there: read it to know). At most `limit_bytes`.
  uint64_t next_data(uint64_t offset_bytes, uint64_t limit_bytes) const;

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

// Reads and writes that complete later, through Linux native AIO: with
// O_DIRECT the submitting thread does not wait for the device, and one thread
// reaps many completions per wake-up. A tag names each request in its completion.
class AsyncIo {
 public:
  struct Completion {
    uint64_t tag;
    int64_t result;  // bytes read or written, or a negative errno
  };

  AsyncIo() = default;
  ~AsyncIo() { close(); }
  AsyncIo(const AsyncIo&) = delete;
  AsyncIo& operator=(const AsyncIo&) = delete;

  // Room for `depth` requests in flight; returns 0 or a negative errno.
  int open(uint32_t depth);
  // Waits for every request still in flight, then frees the context. Idempotent.
  void close();
  // Each returns 0 or a negative errno; the buffer must stay untouched until the completion.
  int submit_write(const LocalDisk* disk, const void* data, uint64_t length_bytes, uint64_t offset_bytes, uint64_t tag);
  int submit_read(const LocalDisk* disk, void* data, uint64_t length_bytes, uint64_t offset_bytes, uint64_t tag);
  // A completion with `tag` arrives once `fd` (an eventfd) becomes readable: a way to wake the reaper.
  int submit_poll(int fd, uint64_t tag);
  // Waits for at least one completion; returns how many it stored (at most `max`
  // and kReapMax), or a negative errno.
  int reap(Completion* out, uint32_t max);

 private:
  int submit(const LocalDisk* disk, uint16_t opcode, const void* data, uint64_t length_bytes, uint64_t offset_bytes,
             uint64_t tag);
  unsigned long context_ = 0;  // aio_context_t
};

}  // namespace nraid
