#include "pipeline.h"

#include <errno.h>
#include <stdlib.h>
#include <string.h>

#include <mutex>

#include "limits.h"
#include "nraid_assert.h"

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

}  // namespace

Pipeline::Pipeline(LocalDisk* disk, uint64_t data_size_bytes, uint32_t granularity_bytes,
                   const ActivityLogLayout& activity_log, EventSink sink)
    : disk_(disk),
      data_size_bytes_(data_size_bytes),
      sink_(std::move(sink)),
      bitmap_(data_size_bytes, granularity_bytes),
      activity_log_(disk, &bitmap_, data_size_bytes, activity_log) {
  NRAID_ASSERT(disk_ != nullptr);
  NRAID_ASSERT(data_size_bytes_ % kBlockBytes == 0);
  NRAID_ASSERT(data_size_bytes_ <= disk_->size_bytes());
}

Pipeline::~Pipeline() {
  detach("closed");
  free(generation_image_);
}

void Pipeline::generation_arm(const uint8_t* image, uint64_t offset_bytes) {
  std::lock_guard<std::mutex> lock(generation_mutex_);
  if (generation_image_ == nullptr) {
    void* buffer = nullptr;
    if (posix_memalign(&buffer, kBlockBytes, kBlockBytes) != 0) abort();
    generation_image_ = static_cast<uint8_t*>(buffer);
  }
  memcpy(generation_image_, image, kBlockBytes);
  generation_offset_bytes_ = offset_bytes;
  generation_state_.store(1, std::memory_order_release);
}

int Pipeline::generation_take() {
  std::lock_guard<std::mutex> lock(generation_mutex_);
  return generation_state_.exchange(0, std::memory_order_acq_rel);
}

int Pipeline::start_generation_if_armed() {
  if (generation_state_.load(std::memory_order_acquire) != 1) return 0;
  std::lock_guard<std::mutex> lock(generation_mutex_);
  if (generation_state_.load(std::memory_order_acquire) != 1) return 0;
  int rc = disk_->write(generation_image_, kBlockBytes, generation_offset_bytes_);
  if (rc == 0) rc = disk_->flush();
  if (rc != 0) return rc;  // the write that needed it fails: nothing unrecorded reaches the disk
  generation_state_.store(2, std::memory_order_release);
  sink_("generation-started", "");
  return 0;
}

bool Pipeline::in_bounds(uint64_t offset_bytes, uint64_t length_bytes) const {
  return offset_bytes <= data_size_bytes_ && length_bytes <= data_size_bytes_ - offset_bytes;
}

int Pipeline::count_error(int rc) {
  if (rc < 0) counters_.io_errors.fetch_add(1, std::memory_order_relaxed);
  return rc;
}

bool Pipeline::local_error(int rc, const char* what) {
  counters_.local_io_errors.fetch_add(1, std::memory_order_relaxed);
  if (!detach_on_error_.load(std::memory_order_acquire)) return false;
  if (!diskless_.exchange(true, std::memory_order_acq_rel)) {
    activity_log_.set_detached();
    sink_("disk-failed", std::string(what) + ": " + strerror(-rc));
  }
  return true;
}

void Pipeline::detach_disk(const std::string& why) {
  if (!diskless_.exchange(true, std::memory_order_acq_rel)) {
    activity_log_.set_detached();
    sink_("disk-failed", why);
  }
}

bool Pipeline::peer_serves_locked() const {
  return replicator_ != nullptr && !replicator_->failed() && peer_serves_.load(std::memory_order_acquire);
}

// The local I/O and the network send start together; the request completes
// when the local I/O is done and the peer is as far as the protocol asks.
// Diskless (on-io-error = detach), it completes when the peer wrote it: the
// peer holds the only copy. A local error that detaches the disk is not the
// application's: the frame already on its way to the peer completes it.
template <typename LocalIo>
int Pipeline::replicate(uint32_t slot, uint16_t type, const uint8_t* data, uint32_t length, uint64_t offset,
                        LocalIo local_io) {
  wait_while_suspended();
  sequence_.fetch_add(1, std::memory_order_relaxed);
  bool diskless = diskless_.load(std::memory_order_acquire);
  // The extent is logged as hot before any byte of it changes on either disk.
  int rc = diskless ? 0 : activity_log_.acquire(offset, length);
  bool pinned = !diskless && rc == 0;
  if (rc != 0) {
    if (!local_error(rc, "activity log write")) return rc;
    diskless = true;
  }
  std::shared_lock<std::shared_mutex> lock(link_mutex_);
  Replicator* replicator = replicator_.get();
  if (diskless && !peer_serves_locked()) {
    if (pinned) activity_log_.release(offset, length);
    return -EIO;  // nothing can hold the data
  }
  if (replicator == nullptr || replicator->failed()) {
    rc = start_generation_if_armed();
    if (rc != 0) {
      activity_log_.release(offset, length);
      if (local_error(rc, "new generation's superblock write")) rc = -EIO;
      return rc;
    }
    bitmap_.set_range(offset, length);  // no peer: the region differs from it now
    counters_.dirty_writes.fetch_add(1, std::memory_order_relaxed);
    rc = local_io();
    activity_log_.release(offset, length);
    if (rc != 0 && local_error(rc, "write")) rc = -EIO;  // Diskless now, and no peer to serve
    return rc;
  }
  replicator->region_enter(slot, offset, length);
  // Once queued, the replicator owns the pin: it lets go when the peer has written the frame.
  bool queued = replicator->submit(slot, type, data, length, offset, pinned);
  if (!queued && !diskless) {
    rc = start_generation_if_armed();
    if (rc != 0) {
      replicator->region_leave(slot);
      if (pinned) activity_log_.release(offset, length);
      if (local_error(rc, "new generation's superblock write")) rc = -EIO;
      return rc;
    }
    bitmap_.set_range(offset, length);
    counters_.dirty_writes.fetch_add(1, std::memory_order_relaxed);
  }
  if (!diskless) {
    rc = local_io();
    if (rc != 0 && local_error(rc, "write")) diskless = true;
  }
  replicator->region_leave(slot);
  if (queued) {
    // Diskless, only the peer's write completes the request, under any protocol.
    bool written = replicator->wait(slot, diskless);
    if (!diskless) counters_.replicated_writes.fetch_add(1, std::memory_order_relaxed);
    // The link failed before the peer confirmed it: the failure marked the
    // region, and the write completes only once this node's generation says it
    // holds data the peer lacks (DESIGN.md §5); else a crash now, followed by
    // the peer's promotion, would resync this acknowledged write away.
    if (!written && !diskless && rc == 0 && replicator->failed()) {
      rc = start_generation_if_armed();
      if (rc != 0 && local_error(rc, "new generation's superblock write")) rc = -EIO;
    }
    if (diskless) {
      rc = written ? 0 : -EIO;  // on the peer's disk: done, whatever changed meanwhile
      if (rc == 0) counters_.peer_writes.fetch_add(1, std::memory_order_relaxed);
    }
  } else {
    if (pinned) activity_log_.release(offset, length);
    if (diskless) rc = -EIO;
  }
  return rc;
}

int Pipeline::write(uint32_t slot, const uint8_t* data, uint32_t length_bytes, uint64_t offset_bytes) {
  NRAID_ASSERT(length_bytes <= kRequestBytesMax);
  NRAID_ASSERT(slot < kSlotsMax);
  if (!in_bounds(offset_bytes, length_bytes)) return -ENOSPC;
  InFlight in_flight(counters_.requests_in_flight);
  uint64_t start_us = monotonic_us();
  resync_control_.app_requests.fetch_add(1, std::memory_order_relaxed);
  int rc = replicate(slot, kFrameWrite, data, length_bytes, offset_bytes,
                     [&] { return disk_->write(data, length_bytes, offset_bytes); });
  counters_.writes.fetch_add(1, std::memory_order_relaxed);
  counters_.write_bytes.fetch_add(length_bytes, std::memory_order_relaxed);
  uint64_t latency_us = monotonic_us() - start_us;
  counters_.write_latency_us_total.fetch_add(latency_us, std::memory_order_relaxed);
  uint32_t bucket = latency_us == 0 ? 0 : 64 - static_cast<uint32_t>(__builtin_clzll(latency_us));
  if (bucket >= kLatencyBuckets) bucket = kLatencyBuckets - 1;
  counters_.write_latency_buckets[bucket].fetch_add(1, std::memory_order_relaxed);
  return count_error(rc);
}

int Pipeline::read(uint32_t slot, uint8_t* data, uint32_t length_bytes, uint64_t offset_bytes) {
  NRAID_ASSERT(length_bytes <= kRequestBytesMax);
  NRAID_ASSERT(slot < kSlotsMax);
  if (!in_bounds(offset_bytes, length_bytes)) return -EINVAL;
  InFlight in_flight(counters_.requests_in_flight);
  resync_control_.app_requests.fetch_add(1, std::memory_order_relaxed);
  int rc = 0;
  bool diskless = diskless_.load(std::memory_order_acquire);
  if (!diskless) {
    rc = disk_->read(data, length_bytes, offset_bytes);
    diskless = rc != 0 && local_error(rc, "read");
  }
  if (diskless) {
    // The peer's copy is the only one: its applier reads it after the writes sent before this request.
    std::shared_lock<std::shared_mutex> lock(link_mutex_);
    rc = peer_serves_locked() ? replicator_->read_remote(slot, data, length_bytes, offset_bytes) : -EIO;
    if (rc == 0) counters_.peer_reads.fetch_add(1, std::memory_order_relaxed);
  }
  counters_.reads.fetch_add(1, std::memory_order_relaxed);
  counters_.read_bytes.fetch_add(length_bytes, std::memory_order_relaxed);
  return count_error(rc);
}

int Pipeline::flush() {
  wait_while_suspended();
  InFlight in_flight(counters_.requests_in_flight);
  epoch_.fetch_add(1, std::memory_order_relaxed);
  counters_.flushes.fetch_add(1, std::memory_order_relaxed);
  std::shared_lock<std::shared_mutex> lock(link_mutex_);
  bool diskless = diskless_.load(std::memory_order_acquire);
  int rc = diskless ? 0 : disk_->flush();
  if (rc != 0 && local_error(rc, "flush")) diskless = true;
  if (diskless) {
    // The peer's disk is the only one: the flush is its barrier, acknowledged under any protocol.
    rc = peer_serves_locked() && replicator_->barrier(0, true) == 0 ? 0 : -EIO;
    return count_error(rc);
  }
  // A lost peer does not fail the kernel's flush: what it missed is in the bitmap.
  if (replicator_ != nullptr && !replicator_->failed()) replicator_->barrier(0);
  return count_error(rc);
}

int Pipeline::flush_durable(const LinkSnapshot& link, uint64_t deadline_us) {
  InFlight in_flight(counters_.requests_in_flight);
  epoch_.fetch_add(1, std::memory_order_relaxed);
  counters_.flushes.fetch_add(1, std::memory_order_relaxed);
  std::shared_lock<std::shared_mutex> lock(link_mutex_);
  // Diskless, the local disk is not touched: the peer's barrier is the whole flush.
  int rc = diskless() ? 0 : count_error(disk_->flush());
  if (rc == 0 && diskless() && !link.source) rc = -EIO;
  if (rc != 0 || !link.source) return rc;
  if (link_generation_ != link.generation || replicator_ == nullptr) return -ENOTCONN;
  return replicator_->barrier(deadline_us);
}

int Pipeline::drain(const LinkSnapshot& link, uint64_t deadline_us) {
  if (!link.source) return -ENOTCONN;
  int rc = flush_durable(link, deadline_us);
  if (rc != 0) return rc;
  std::shared_lock<std::shared_mutex> lock(link_mutex_);
  if (link_generation_ != link.generation || replicator_ == nullptr) return -ENOTCONN;
  return replicator_->wait_idle(deadline_us);
}

int Pipeline::write_superblock(const uint8_t* image, uint64_t offset_bytes, const uint8_t* successor,
                               uint64_t successor_offset_bytes) {
  NRAID_ASSERT(reinterpret_cast<uintptr_t>(image) % kBlockBytes == 0);
  NRAID_ASSERT(offset_bytes % kBlockBytes == 0);
  std::lock_guard<std::mutex> lock(generation_mutex_);
  if (diskless()) return -EIO;  // detached: metadata is not written (the control plane skips it)
  if (generation_state_.load(std::memory_order_acquire) == 2) return 1;
  int rc = disk_->write(image, kBlockBytes, offset_bytes);
  if (rc == 0) rc = disk_->flush();
  if (rc == 0 && successor != nullptr && generation_state_.load(std::memory_order_acquire) == 1) {
    memcpy(generation_image_, successor, kBlockBytes);
    generation_offset_bytes_ = successor_offset_bytes;
  }
  return rc;
}

int Pipeline::discard(uint32_t slot, uint64_t offset_bytes, uint64_t length_bytes) {
  if (!in_bounds(offset_bytes, length_bytes)) return -EINVAL;
  InFlight in_flight(counters_.requests_in_flight);
  counters_.discards.fetch_add(1, std::memory_order_relaxed);
  resync_control_.app_requests.fetch_add(1, std::memory_order_relaxed);
  counters_.discard_bytes.fetch_add(length_bytes, std::memory_order_relaxed);
  int rc = 0;
  // A frame's length is 32 bits: long discards go in pieces.
  for (uint64_t done = 0; done < length_bytes && rc == 0;) {
    uint64_t piece = std::min<uint64_t>(length_bytes - done, kRangeFrameBytesMax);
    rc = replicate(slot, kFrameDiscard, nullptr, static_cast<uint32_t>(piece), offset_bytes + done,
                   [&] { return disk_->discard(offset_bytes + done, piece); });
    done += piece;
  }
  return count_error(rc);
}

int Pipeline::zero_out(uint32_t slot, uint64_t offset_bytes, uint64_t length_bytes) {
  if (!in_bounds(offset_bytes, length_bytes)) return -EINVAL;
  InFlight in_flight(counters_.requests_in_flight);
  counters_.zeroes.fetch_add(1, std::memory_order_relaxed);
  resync_control_.app_requests.fetch_add(1, std::memory_order_relaxed);
  counters_.zero_bytes.fetch_add(length_bytes, std::memory_order_relaxed);
  int rc = 0;
  for (uint64_t done = 0; done < length_bytes && rc == 0;) {
    uint64_t piece = std::min<uint64_t>(length_bytes - done, kRangeFrameBytesMax);
    rc = replicate(slot, kFrameZeroes, nullptr, static_cast<uint32_t>(piece), offset_bytes + done,
                   [&] { return disk_->zero_out(offset_bytes + done, piece); });
    done += piece;
  }
  return count_error(rc);
}

void Pipeline::attach_source(int fd, const ReplicatorOptions& options) {
  detach("replaced");
  auto replicator =
      std::make_unique<Replicator>(disk_, &bitmap_, &activity_log_, data_size_bytes_, &link_counters_,
                                   &resync_control_, sink_);
  replicator->start(fd, options);
  std::unique_lock<std::shared_mutex> lock(link_mutex_);
  replicator_ = std::move(replicator);
  link_generation_++;
}

void Pipeline::attach_target(int fd, bool send_hello_first, bool resync_allowed, const TlsOptions& tls) {
  detach("replaced");
  auto applier = std::make_unique<Applier>(disk_, data_size_bytes_, &link_counters_, sink_);
  if (resync_allowed) applier->allow_resync();
  applier->start(fd, send_hello_first, tls);
  std::unique_lock<std::shared_mutex> lock(link_mutex_);
  applier_ = std::move(applier);
  link_generation_++;
}

bool Pipeline::allow_resync() {
  std::shared_lock<std::shared_mutex> lock(link_mutex_);
  if (applier_ == nullptr) return false;
  applier_->allow_resync();
  return true;
}

LinkSnapshot Pipeline::link_snapshot() const {
  std::shared_lock<std::shared_mutex> lock(link_mutex_);
  return LinkSnapshot{link_generation_, replicator_ != nullptr};
}

void Pipeline::detach(const std::string& reason) {
  // Fail first, so that every waiting writer lets go of the shared lock.
  {
    std::shared_lock<std::shared_mutex> lock(link_mutex_);
    if (replicator_) replicator_->stop(reason);
    if (applier_) applier_->stop(reason);
  }
  std::unique_lock<std::shared_mutex> lock(link_mutex_);
  if (replicator_ != nullptr || applier_ != nullptr) link_generation_++;
  replicator_.reset();
  applier_.reset();
}

bool Pipeline::link_attached() const {
  std::shared_lock<std::shared_mutex> lock(link_mutex_);
  return replicator_ != nullptr || applier_ != nullptr;
}

bool Pipeline::link_failed() const {
  std::shared_lock<std::shared_mutex> lock(link_mutex_);
  return (replicator_ != nullptr && replicator_->failed()) || (applier_ != nullptr && applier_->failed());
}

void Pipeline::set_protocol(Protocol protocol) {
  std::shared_lock<std::shared_mutex> lock(link_mutex_);
  if (replicator_) replicator_->set_protocol(protocol);
}

bool Pipeline::start_resync(const ResyncOptions& options) {
  std::shared_lock<std::shared_mutex> lock(link_mutex_);
  if (!replicator_ || replicator_->failed()) return false;
  return replicator_->start_resync(options);
}

bool Pipeline::start_verify(uint64_t start_bytes, uint64_t stop_bytes) {
  std::shared_lock<std::shared_mutex> lock(link_mutex_);
  if (!replicator_ || replicator_->failed()) return false;
  return replicator_->start_verify(start_bytes, stop_bytes);
}

void Pipeline::stop_verify() {
  std::shared_lock<std::shared_mutex> lock(link_mutex_);
  if (replicator_) replicator_->stop_verify();
}

bool Pipeline::verify_running() const {
  std::shared_lock<std::shared_mutex> lock(link_mutex_);
  return replicator_ != nullptr && replicator_->verify_running();
}

void Pipeline::set_suspended(bool suspended) {
  std::lock_guard<std::mutex> lock(suspend_mutex_);
  suspended_.store(suspended, std::memory_order_release);
  suspend_cv_.notify_all();
}

void Pipeline::wait_while_suspended() {
  if (!suspended_.load(std::memory_order_acquire)) return;
  counters_.suspended_waits.fetch_add(1, std::memory_order_relaxed);
  std::unique_lock<std::mutex> lock(suspend_mutex_);
  suspend_cv_.wait(lock, [&] { return !suspended_.load(std::memory_order_acquire); });
}

void Pipeline::resync_settings_changed() {
  std::shared_lock<std::shared_mutex> lock(link_mutex_);
  if (replicator_) replicator_->resync_settings_changed();
}

bool Pipeline::resync_running() const {
  std::shared_lock<std::shared_mutex> lock(link_mutex_);
  return replicator_ != nullptr && replicator_->resync_running();
}

}  // namespace nraid
