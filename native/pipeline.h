#pragma once
// The write pipeline: every request of the exposed device passes here on its
// way to the backing device and, with a peer, to the peer. Called from the
// frontend threads (each with its own slot), blocking; never from JavaScript
// per request.
#include <atomic>
#include <condition_variable>
#include <mutex>
#include <cstdint>
#include <memory>
#include <shared_mutex>

#include "activity_log.h"
#include "applier.h"
#include "bitmap.h"
#include "link_io.h"
#include "local_io.h"
#include "replicator.h"

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
  std::atomic<uint64_t> replicated_writes{0};
  std::atomic<uint64_t> dirty_writes{0};  // written with no peer: tracked in the bitmap
  std::atomic<uint64_t> suspended_waits{0};
  std::atomic<uint64_t> local_io_errors{0};  // errors of the backing disk, whatever became of the request
  std::atomic<uint64_t> peer_reads{0};       // served by the peer (this node is Diskless)
  std::atomic<uint64_t> peer_writes{0};      // completed by the peer's write alone (this node is Diskless)
  // Write latency, log2 buckets of microseconds: bucket i counts latencies < 2^i us.
  std::atomic<uint64_t> write_latency_buckets[kLatencyBuckets] = {};
};

// Which data link a control-plane flush was asked under: a flush or drain
// that expected a peer fails with -ENOTCONN once that link is gone.
struct LinkSnapshot {
  uint64_t generation = 0;  // counts attaches and detaches
  bool source = false;      // a link in source mode was attached (failed or not)
};

class Pipeline {
 public:
  Pipeline(LocalDisk* disk, uint64_t data_size_bytes, uint32_t granularity_bytes, const ActivityLogLayout& activity_log,
           EventSink sink);
  ~Pipeline();
  Pipeline(const Pipeline&) = delete;
  Pipeline& operator=(const Pipeline&) = delete;

  // Each returns 0 or a negative errno for the kernel. `data` is block-aligned.
  int write(uint32_t slot, const uint8_t* data, uint32_t length_bytes, uint64_t offset_bytes);
  int read(uint32_t slot, uint8_t* data, uint32_t length_bytes, uint64_t offset_bytes);
  // Closes the epoch: everything completed before is durable here and, under
  // protocols B and C, on the peer when this returns 0.
  int flush();
  int discard(uint32_t slot, uint64_t offset_bytes, uint64_t length_bytes);
  int zero_out(uint32_t slot, uint64_t offset_bytes, uint64_t length_bytes);

  // The control plane's flush (off the JavaScript thread): the local disk,
  // then, when `link` had a source link, a barrier the peer must acknowledge.
  // 0; a negative errno of the local flush; -ENOTCONN when the local flush
  // succeeded but that link failed or was detached; -ETIMEDOUT past
  // `deadline_us` (monotonic; 0: none).
  int flush_durable(const LinkSnapshot& link, uint64_t deadline_us);
  // flush_durable, then waits until nothing is in flight to the peer: no frame
  // unacknowledged, no lag. -ENOTCONN also when no source link was attached.
  int drain(const LinkSnapshot& link, uint64_t deadline_us);
  // One superblock slot image, written and flushed under the generation
  // lock: never at the same time as the armed generation's own write. With a
  // generation armed, `successor` (or null) is the armed image prepared to
  // follow this one (the next slot, the next sequence): it replaces the armed
  // image in the same critical section, so a write the peer never confirmed
  // always finds a generation ready. Returns 1, writing nothing, when the
  // armed generation was started first: the control plane adopts it and
  // prepares its image again on top of it.
  int write_superblock(const uint8_t* image, uint64_t offset_bytes, const uint8_t* successor,
                       uint64_t successor_offset_bytes);

  // The data link: this node sends (source) or applies (target). One at a time.
  void attach_source(int fd, const ReplicatorOptions& options);
  // `resync_allowed`: RS_DATA may be applied (the target's resync state is on its disk).
  void attach_target(int fd, bool send_hello_first, bool resync_allowed, const TlsOptions& tls);
  // The target recorded its resync state (Inconsistent, the new bitmap UUID)
  // durably: RS_DATA may be applied from now on. False without a target link.
  bool allow_resync();
  LinkSnapshot link_snapshot() const;
  void detach(const std::string& reason);
  bool link_attached() const;
  bool link_failed() const;
  void set_protocol(Protocol protocol);
  bool start_resync(const ResyncOptions& options);
  // Online verify of [start, stop) (Replicator::start_verify); false with no
  // source link, or while a resync or verify runs.
  bool start_verify(uint64_t start_bytes, uint64_t stop_bytes);
  void stop_verify();
  bool verify_running() const;
  // on-no-peer = suspend-io: new requests wait until resumed (the peer is back, or an operator says so).
  void set_suspended(bool suspended);
  bool suspended() const { return suspended_.load(std::memory_order_acquire); }
  bool resync_running() const;
  // The resync controller's settings (any time, with or without a link) and what it planned.
  ResyncControl& resync_control() { return resync_control_; }
  // Wakes a running resync to read its settings again.
  void resync_settings_changed();

  // on-io-error (docs/operations.md): detach (true) or pass-on. Under detach
  // the first error of the backing disk makes this node Diskless for good
  // (until the disk is attached again): "disk-failed" is reported once, the
  // disk is not touched again, and while the peer serves (below) every
  // request goes through it; without it, requests fail with -EIO.
  void set_detach_on_error(bool detach) { detach_on_error_.store(detach, std::memory_order_release); }
  bool diskless() const { return diskless_.load(std::memory_order_acquire); }
  // Set by the control plane: the source link's peer is UpToDate and
  // replication Established, so it can serve this node's reads and writes.
  void set_peer_serves(bool serves) { peer_serves_.store(serves, std::memory_order_release); }
  // `nraid detach`: Diskless now, as after an error under detach (whatever the policy).
  void detach_disk(const std::string& why);

  // A new generation (DESIGN.md §5) starts on the first write without a peer,
  // not before: the control plane arms a ready superblock image, the data
  // plane writes it (durably) just before that first write. `take` returns
  // 0 nothing armed, 1 armed (now disarmed), 2 written (acknowledged now).
  void generation_arm(const uint8_t* image, uint64_t offset_bytes);
  int generation_take();
  int generation_peek() const { return generation_state_.load(std::memory_order_acquire); }

  const LocalDisk& disk() const { return *disk_; }
  Bitmap& bitmap() { return bitmap_; }
  ActivityLog& activity_log() { return activity_log_; }
  uint64_t data_size_bytes() const { return data_size_bytes_; }
  const PipelineCounters& counters() const { return counters_; }
  const LinkCounters& link_counters() const { return link_counters_; }
  uint64_t sequence() const { return sequence_.load(std::memory_order_relaxed); }
  uint64_t epoch() const { return epoch_.load(std::memory_order_relaxed); }

 private:
  bool in_bounds(uint64_t offset_bytes, uint64_t length_bytes) const;
  int count_error(int rc);
  // A backing-disk error: counted; under detach the node goes Diskless. True when it did (or was).
  bool local_error(int rc, const char* what);
  bool peer_serves_locked() const;
  template <typename LocalIo>
  int replicate(uint32_t slot, uint16_t type, const uint8_t* data, uint32_t length, uint64_t offset, LocalIo local_io);

  LocalDisk* disk_;
  const uint64_t data_size_bytes_;
  EventSink sink_;
  Bitmap bitmap_;
  ActivityLog activity_log_;
  std::atomic<uint64_t> sequence_{0};
  std::atomic<uint64_t> epoch_{1};
  PipelineCounters counters_;
  LinkCounters link_counters_;
  ResyncControl resync_control_;
  // Writers hold it shared for the whole request; attach and detach hold it exclusively.
  mutable std::shared_mutex link_mutex_;
  std::unique_ptr<Replicator> replicator_;
  std::unique_ptr<Applier> applier_;
  uint64_t link_generation_ = 0;  // under link_mutex_
  std::atomic<bool> suspended_{false};
  std::atomic<bool> detach_on_error_{true};
  std::atomic<bool> diskless_{false};
  std::atomic<bool> peer_serves_{false};
  int start_generation_if_armed();
  std::mutex generation_mutex_;
  std::atomic<int> generation_state_{0};  // 0 none, 1 armed, 2 written
  uint8_t* generation_image_ = nullptr;    // one aligned superblock slot
  uint64_t generation_offset_bytes_ = 0;
  std::mutex suspend_mutex_;
  std::condition_variable suspend_cv_;
  void wait_while_suspended();
};

}  // namespace nraid
