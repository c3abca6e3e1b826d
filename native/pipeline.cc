#include "pipeline.h"

#include <errno.h>

#include <cassert>
#include <chrono>

#include "limits.h"

namespace nraid {
namespace {

class InFlight {
 public:
  explicit InFlight(std::atomic<uint64_t>& counter) : counter_(counter) {
    counter_.fetch_add(1, std::memory_order_relaxed);
  }
  ~InFlight() { counter_.fetch_sub(1, std::memory_order_relaxed); }

 private:
  std::atomic<uint64_t>& counter_;
};

uint64_t now_us() {
  using namespace std::chrono;
  return static_cast<uint64_t>(duration_cast<microseconds>(steady_clock::now().time_since_epoch()).count());
}

}  // namespace

Pipeline::Pipeline(LocalDisk* disk, uint64_t data_size_bytes) : disk_(disk), data_size_bytes_(data_size_bytes) {
  assert(disk_ != nullptr);
  assert(data_size_bytes_ % kBlockBytes == 0);
  assert(data_size_bytes_ <= disk_->size_bytes());
}

bool Pipeline::in_bounds(uint64_t offset_bytes, uint64_t length_bytes) const {
  return offset_bytes <= data_size_bytes_ && length_bytes <= data_size_bytes_ - offset_bytes;
}

int Pipeline::count_error(int rc) {
  if (rc < 0) counters_.io_errors.fetch_add(1, std::memory_order_relaxed);
  return rc;
}

int Pipeline::write(const uint8_t* data, uint32_t length_bytes, uint64_t offset_bytes) {
  assert(length_bytes <= kRequestBytesMax);
  if (!in_bounds(offset_bytes, length_bytes)) return -ENOSPC;
  InFlight in_flight(counters_.requests_in_flight);
  uint64_t start_us = now_us();
  sequence_.fetch_add(1, std::memory_order_relaxed);
  int rc = disk_->write(data, length_bytes, offset_bytes);
  counters_.writes.fetch_add(1, std::memory_order_relaxed);
  counters_.write_bytes.fetch_add(length_bytes, std::memory_order_relaxed);
  counters_.write_latency_us_total.fetch_add(now_us() - start_us, std::memory_order_relaxed);
  return count_error(rc);
}

int Pipeline::read(uint8_t* data, uint32_t length_bytes, uint64_t offset_bytes) {
  assert(length_bytes <= kRequestBytesMax);
  if (!in_bounds(offset_bytes, length_bytes)) return -EINVAL;
  InFlight in_flight(counters_.requests_in_flight);
  int rc = disk_->read(data, length_bytes, offset_bytes);
  counters_.reads.fetch_add(1, std::memory_order_relaxed);
  counters_.read_bytes.fetch_add(length_bytes, std::memory_order_relaxed);
  return count_error(rc);
}

int Pipeline::flush() {
  InFlight in_flight(counters_.requests_in_flight);
  epoch_.fetch_add(1, std::memory_order_relaxed);
  counters_.flushes.fetch_add(1, std::memory_order_relaxed);
  return count_error(disk_->flush());
}

int Pipeline::discard(uint64_t offset_bytes, uint64_t length_bytes) {
  if (!in_bounds(offset_bytes, length_bytes)) return -EINVAL;
  InFlight in_flight(counters_.requests_in_flight);
  sequence_.fetch_add(1, std::memory_order_relaxed);
  counters_.discards.fetch_add(1, std::memory_order_relaxed);
  counters_.discard_bytes.fetch_add(length_bytes, std::memory_order_relaxed);
  return count_error(disk_->discard(offset_bytes, length_bytes));
}

int Pipeline::zero_out(uint64_t offset_bytes, uint64_t length_bytes) {
  if (!in_bounds(offset_bytes, length_bytes)) return -EINVAL;
  InFlight in_flight(counters_.requests_in_flight);
  sequence_.fetch_add(1, std::memory_order_relaxed);
  counters_.zeroes.fetch_add(1, std::memory_order_relaxed);
  counters_.zero_bytes.fetch_add(length_bytes, std::memory_order_relaxed);
  return count_error(disk_->zero_out(offset_bytes, length_bytes));
}

}  // namespace nraid
