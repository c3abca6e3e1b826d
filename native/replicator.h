#pragma once
// The source side of the data link (Primary, or SyncSource): a writing
// thread queues its frame and, when no other thread is sending, becomes the
// sender and writes every queued frame, in sequence order, many in one
// writev() of headers and payloads straight from the frontend's buffers (no
// copy, no sender thread, no waiting for a lock to send); one receiver
// thread takes the acks. A frontend thread waits on its own slot, as its protocol says:
//   A: the frame is in the kernel's send queue;  B: the peer received it;
//   C: the peer wrote it.
// When the link fails, every frame not acknowledged as written is marked
// dirty in the bitmap and every waiter is released: the local write stands.
#include <pthread.h>

#include <atomic>
#include <condition_variable>
#include <cstdint>
#include <memory>
#include <mutex>
#include <string>
#include <thread>

#include "activity_log.h"
#include "bitmap.h"
#include "frame.h"
#include "io_buffers.h"
#include "limits.h"
#include "link_io.h"
#include "link_stream.h"
#include "local_io.h"

namespace nraid {

enum class Protocol : uint8_t { kA = 0, kB = 1, kC = 2 };

// What a resync sends for the regions the bitmap marks (the scheduling is the resync loop's).
struct ResyncOptions {
  // Checksum resync: a first pass asks the target for digests of the marked
  // regions and clears the bits of blocks found equal; the next passes send
  // data only for what is still marked.
  bool csums = false;
  // Repair after a verify (no session change, the target stays as it is):
  // the marked blocks go as ordinary WRITE frames, which the target applies
  // without a resync state; they only bring it closer to this node.
  bool repair = false;
};

// The resync controller's settings, and the application requests it watches.
// The pipeline owns it (it outlives every link); JavaScript changes the
// settings at any time (nraid adjust, pause-sync), the resync thread reads
// them at every step.
struct ResyncControl {
  std::atomic<uint32_t> plan_ahead_ms{kResyncPlanAheadMsDefault};
  std::atomic<uint64_t> fill_target_bytes{kResyncFillTargetBytesDefault};
  std::atomic<uint64_t> max_rate_bytes{kResyncMaxRateBytesDefault};  // per second
  std::atomic<uint64_t> min_rate_bytes{kResyncMinRateBytesDefault};  // per second
  std::atomic<bool> paused{false};
  // Application reads and writes started (the pipeline counts them).
  std::atomic<uint64_t> app_requests{0};
  // What the controller planned last (status): the rate, and whether applications held it down.
  std::atomic<uint64_t> planned_rate_bytes{0};
  std::atomic<bool> throttled{false};
};

struct ReplicatorOptions {
  Protocol protocol = Protocol::kC;
  uint64_t max_lag_bytes = kMaxLagBytesDefault;
  uint64_t max_lag_us = kMaxLagUsDefault;
  bool send_hello_first = false;  // the acceptor of the data connection; with TLS, its server
  TlsOptions tls;
};

class Replicator {
 public:
  // `activity_log` may be null; pins of replicated writes are released when the peer has written them.
  // `resync` outlives the replicator.
  Replicator(LocalDisk* disk, Bitmap* bitmap, ActivityLog* activity_log, uint64_t data_size_bytes,
             LinkCounters* counters, ResyncControl* resync, EventSink sink);
  ~Replicator();
  Replicator(const Replicator&) = delete;
  Replicator& operator=(const Replicator&) = delete;

  // Takes ownership of `fd` and starts the threads.
  void start(int fd, const ReplicatorOptions& options);
  // Fails the link (if it still runs) and joins every thread. Idempotent.
  void stop(const std::string& reason);
  bool failed() const { return failed_.load(std::memory_order_acquire); }
  void set_protocol(Protocol protocol) { protocol_.store(protocol, std::memory_order_release); }
  Protocol protocol() const { return protocol_.load(std::memory_order_acquire); }

  // Queues a WRITE, DISCARD or ZEROES for `slot`; false when the link is down.
  // `pinned`: the writer holds an activity-log pin that the peer's write ack releases.
  bool submit(uint32_t slot, uint16_t type, const uint8_t* data, uint32_t length_bytes, uint64_t offset_bytes,
              bool pinned = true);
  // Waits until the slot's last frame is as far as the protocol asks (or the
  // link failed); with `write_ack`, until the peer wrote it, whatever the
  // protocol (the peer holds the only copy). True when the peer wrote it.
  bool wait(uint32_t slot, bool write_ack = false);
  // A Diskless Primary's read: READ_REQUEST, ordered after every frame sent
  // before it, answered by READ_REPLY. 0, or -EIO (link failed, or the peer
  // could not read). `data` is untouched unless 0 is returned.
  int read_remote(uint32_t slot, uint8_t* data, uint32_t length_bytes, uint64_t offset_bytes);
  // Queues a BARRIER closing the current epoch; under B and C (or with
  // `always_wait`) waits for its ack. 0; -ENOTCONN when the link failed
  // first; -ETIMEDOUT past `deadline_us` (monotonic; 0: no deadline).
  int barrier(uint64_t deadline_us, bool always_wait = false);
  // Waits until no frame is unacknowledged and nothing lags: 0, -ENOTCONN, -ETIMEDOUT.
  int wait_idle(uint64_t deadline_us);

  // Region locks between application writes and resync reads of the same blocks:
  // a writer entering a region that a resync or verify read holds waits until
  // that read's frame is queued (so the write's frame follows it).
  void region_enter(uint32_t slot, uint64_t offset_bytes, uint64_t length_bytes);
  void region_leave(uint32_t slot);

  // Sends every region set in the bitmap, at the pace the controller plans
  // (ResyncControl); emits "resync-done" when the bitmap is clean.
  // Regions that read as zeros (or are holes of a backing file) go as zero frames.
  // False when a resync or a verify runs already.
  bool start_resync(const ResyncOptions& options = ResyncOptions{});
  // Wakes the resync thread to read its settings again (resumed, adjusted).
  void resync_settings_changed();
  bool resync_running() const { return resync_running_.load(std::memory_order_acquire); }
  // Online verify of [start, stop): digests of both sides, range by range, in
  // the write stream's order (both sides digest the same point of it, so a
  // block written meanwhile is compared as written on both, never reported);
  // a difference sets its bits and is reported ("verify-mismatch", detail
  // "OFFSET+LENGTH"); the end is "verify-done" (detail: the position reached).
  // False when a resync or a verify runs already.
  bool start_verify(uint64_t start_bytes, uint64_t stop_bytes);
  // Stops a running verify after the ranges in flight ("verify-done" tells where).
  void stop_verify() { verify_stop_.store(true, std::memory_order_release); }
  bool verify_running() const { return verify_running_.load(std::memory_order_acquire); }

 private:
  struct Slot {
    std::mutex mutex;
    std::condition_variable cv;
    uint64_t seq = 0;
    bool sent = false;
    bool recv_acked = false;
    bool write_acked = false;
    bool failed = false;
    uint8_t* read_into = nullptr;  // read_remote's destination, while it waits
    int read_rc = -EIO;
    std::atomic<uint64_t> busy_offset{0};
    std::atomic<uint64_t> busy_length{0};
  };
  struct Unacked {
    uint64_t seq = 0;
    uint64_t offset = 0;
    uint32_t length = 0;
    uint16_t type = 0;
    bool in_use = false;
    bool resync = false;
    bool pinned = false;  // holds an activity-log pin until written by the peer
    uint32_t buffer = 0;
    uint64_t enqueued_us = 0;
    FrameHeader header{};  // what goes on the wire, with
    const uint8_t* data = nullptr;  // the payload, until sent
  };

  // 0 queued; -ENOTCONN the link failed; -ETIMEDOUT no room before `deadline_us` (0: none).
  int enqueue(uint32_t slot, uint16_t type, uint16_t flags, const uint8_t* data, uint32_t length, uint64_t offset,
              uint32_t resync_buffer, uint64_t deadline_us, bool pin = true);
  // The peer's READ_REPLY (its header read and checked): the payload, then the waiting reader.
  bool take_read_reply(LinkStream& reader, const FrameHeader& reply);
  void fail(const std::string& reason);
  // The sender's loop: writes queued frames until none is left.
  void send_queued();
  void notify_slot(uint32_t slot, uint64_t seq, int what);
  void receive_loop();
  void resync_loop(ResyncOptions options);
  void verify_loop(uint64_t start_bytes, uint64_t stop_bytes);
  // Gives back a taken resync buffer whose request was never queued.
  void return_resync_buffer(uint32_t buffer);
  // A resync buffer's request answered (or never sent): its bytes leave the window.
  void release_resync_buffer_locked(uint32_t buffer);
  // Waits until every resync buffer is back (false: the link failed).
  bool wait_resync_window_empty();
  // Locks [offset, offset + length) for resync buffer `buffer`'s read against application
  // writes, and waits for those in flight there.
  void resync_lock(uint32_t buffer, uint64_t offset, uint64_t length);
  void resync_unlock(uint32_t buffer);
  bool overlaps_resync_lock(uint64_t offset, uint64_t length);
  // Reads ahead (the resync thread's own): a resync or verify request from its
  // planning to its place in the send queue, in a FIFO of resync buffers. Its
  // region is locked from before its read until its frame is queued.
  struct Ahead {
    uint64_t offset = 0;
    uint64_t length = 0;
    uint64_t bits = 0;   // bitmap bits it covers (resync)
    uint16_t type = 0;   // the frame it becomes (a resync's data may still turn out to be zeros)
    bool reading = false;  // an asynchronous read is in flight
    int rc = 0;          // the read's result: 0 or a negative errno
  };
  // Starts the read of ahead_[buffer] (none for a zero frame), its region locked, and appends it.
  // `ahead`: asynchronously (more may follow before it is queued); else read here and now.
  void ahead_issue(uint32_t buffer, bool ahead);
  // Waits for the oldest request's read: its buffer.
  uint32_t ahead_wait_oldest();
  // The oldest request is queued (or dropped): its region unlocked, its entry gone.
  void ahead_pop();
  // Waits for every read in flight, unlocks and gives back the buffers of requests never queued.
  void ahead_drain();
  // Takes completed reads (waits for one at least).
  void ahead_reap();
  // The peer's OV_REPLY (its header read and checked): compared with this side's digests.
  bool take_digest_reply(LinkStream& reader, const FrameHeader& reply);
  // One step of the rate controller (ResyncControl) for a resync or a verify:
  // the most bytes the next request may cover, with the fill target to wait
  // for; 0 when the budget is spent (it waited for it, or for new settings,
  // at most a tick: plan again).
  struct Pace {
    uint64_t last_us = 0;
    uint64_t app_seen = 0;
    uint64_t app_seen_us = 0;  // when application I/O was last seen (0: not since the start)
    int64_t budget_bytes = 0;
    uint64_t fill_target_bytes = 0;
    uint64_t now_us = 0;
    bool held = false;  // the rate is held below max-rate (applications, a pause): no reads ahead
  };
  void pace_start(Pace* pace);
  // `may_wait`: false while requests are ahead (they go on instead of waiting for budget).
  uint64_t pace_step(Pace* pace, bool may_wait = true);
  // Waits for the resync window and a free buffer (true), or until `deadline_us` or a failure (false).
  // `offset`: where the request starts (a verify's position counts from the lowest one taken).
  bool wait_resync_room(uint64_t offset, uint64_t length, uint64_t fill_target_bytes, uint64_t deadline_us,
                        uint32_t* buffer);
  void advance_oldest_locked();
  bool overlaps_busy(uint64_t offset, uint64_t length);

  LocalDisk* disk_;
  Bitmap* bitmap_;
  ActivityLog* activity_log_;
  const uint64_t data_size_bytes_;
  LinkCounters* counters_;
  EventSink sink_;
  int fd_ = -1;
  std::unique_ptr<LinkStream> stream_;  // over fd_, made by start()
  ReplicatorOptions options_;
  // Of options_.tls, read by writers outside every lock (frame.h: PayloadCheck).
  std::atomic<PayloadCheck> payload_check_{PayloadCheck::kCrc32c};
  std::atomic<Protocol> protocol_{Protocol::kC};

  std::mutex mutex_;  // unacked table, sequence, epoch, send queue
  std::condition_variable space_cv_;
  std::condition_variable barrier_cv_;
  std::unique_ptr<Unacked[]> unacked_;
  uint64_t next_seq_ = 1;
  uint64_t next_send_seq_ = 1;  // frames [next_send_seq_, next_seq_) are queued, not yet written
  bool sending_ = false;        // a thread is in send_queued()
  std::condition_variable sender_gone_cv_;  // stop() waits for the sender to leave before closing the socket
  uint64_t oldest_unacked_seq_ = 1;
  uint64_t epoch_ = 1;
  uint64_t barrier_acked_epoch_ = 0;
  bool hello_done_ = false;
  std::atomic<bool> failed_{false};
  std::string fail_reason_;
  std::unique_ptr<Slot[]> slots_;

  std::mutex region_mutex_;
  std::condition_variable region_cv_;
  // One region lock per resync buffer (length 0: none). Each is set (offset, then length) only
  // before the resync thread checks the writers in flight, and cleared by its length alone.
  std::atomic<uint64_t> resync_lock_offset_[kResyncWindowChunks] = {};
  std::atomic<uint64_t> resync_lock_length_[kResyncWindowChunks] = {};
  std::atomic<uint32_t> resync_locks_held_{0};  // a writer's fast path skips the scan when 0

  Ahead ahead_[kResyncWindowChunks];             // by buffer
  uint32_t ahead_order_[kResyncWindowChunks] = {};  // ring of buffers, oldest first
  uint32_t ahead_first_ = 0;
  uint32_t ahead_count_ = 0;
  uint32_t ahead_reading_ = 0;  // asynchronous reads in flight
  AsyncIo reads_;               // the resync thread's reads ahead
  bool reads_open_ = false;     // else every read is synchronous (no AIO context could be had)

  IoBuffers resync_buffers_{kResyncWindowChunks, kResyncChunkBytes, PageSize::kHuge};  // every one carries whole chunks
  // This side's digests of each resync buffer's range (kResyncChunkBytes / kBlockBytes each).
  std::unique_ptr<uint64_t[]> resync_digests_;
  uint64_t digest_reply_[kDigestReplyBytesMax / kDigestBytes];  // the receiver's
  std::atomic<bool> verify_running_{false};
  std::atomic<bool> verify_stop_{false};
  uint8_t* read_reply_buffer_ = nullptr;  // the receiver's: a reply's payload, checked before a reader sees it
  uint32_t resync_free_mask_ = 0;  // under mutex_
  // What each taken resync buffer counts in resync_in_flight_bytes_ (a zero frame or a
  // digest request counts its first chunk, whatever range it covers); under mutex_.
  uint64_t resync_buffer_bytes_[kResyncWindowChunks] = {};
  uint64_t resync_buffer_offset_[kResyncWindowChunks] = {};  // under mutex_: where each taken buffer's request starts
  uint64_t verify_replied_end_bytes_ = 0;  // under mutex_: the end of the furthest range compared
  uint64_t resync_in_flight_bytes_ = 0;  // under mutex_: resync data queued or sent, not yet written by the peer
  ResyncControl* resync_control_;
  std::atomic<bool> resync_running_{false};
  std::atomic<bool> stopping_{false};

  std::thread receiver_;
  std::thread resyncer_;
};

}  // namespace nraid
