#pragma once
// The write pipeline: every request of the exposed device passes here on its
// way to the backing device (and, with a peer, to the peer). Called from the
// frontend threads, blocking; never from JavaScript per request.
#include <atomic>
#include <cstdint>

#include "local_io.h"

namespace nraid {

struct PipelineCounters {
  std::atomic<uint64_t> writes{0};
  std::atomic<uint64_t> write_bytes{0};
  std::atomic<uint64_t> reads{0};
  std::atomic<uint64_t> read_bytes{0};
  std::atomic<uint64_t> flushes{0};
  std::atomic<uint64_t> discards{0};
  std::atomic<uint64_t> discard_bytes{0};
  std::atomic<uint64_t> zeroes{0};
  std::atomic<uint64_t> zero_bytes{0};
  std::atomic<uint64_t> io_errors{0};
  std::atomic<uint64_t> requests_in_flight{0};
  std::atomic<uint64_t> write_latency_us_total{0};
};

class Pipeline {
 public:
  Pipeline(LocalDisk* disk, uint64_t data_size_bytes);
  Pipeline(const Pipeline&) = delete;
  Pipeline& operator=(const Pipeline&) = delete;

  // Each returns 0 or a negative errno for the kernel. `data` is block-aligned.
  int write(const uint8_t* data, uint32_t length_bytes, uint64_t offset_bytes);
  int read(uint8_t* data, uint32_t length_bytes, uint64_t offset_bytes);
  // Closes the epoch: everything completed before is durable when this returns 0.
  int flush();
  int discard(uint64_t offset_bytes, uint64_t length_bytes);
  int zero_out(uint64_t offset_bytes, uint64_t length_bytes);

  uint64_t data_size_bytes() const { return data_size_bytes_; }
  const PipelineCounters& counters() const { return counters_; }
  uint64_t sequence() const { return sequence_.load(std::memory_order_relaxed); }
  uint64_t epoch() const { return epoch_.load(std::memory_order_relaxed); }

 private:
  bool in_bounds(uint64_t offset_bytes, uint64_t length_bytes) const;
  int count_error(int rc);

  LocalDisk* disk_;
  const uint64_t data_size_bytes_;
  // Every write, discard and zeroing gets the next sequence number and the
  // current epoch; a flush closes the epoch. The peer applies in this order.
  std::atomic<uint64_t> sequence_{0};
  std::atomic<uint64_t> epoch_{1};
  PipelineCounters counters_;
};

}  // namespace nraid
