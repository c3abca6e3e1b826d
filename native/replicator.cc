#include "replicator.h"

#include <errno.h>
#include <stdlib.h>
#include <string.h>
#include <sys/socket.h>
#include <unistd.h>

#include <algorithm>

#include "digest.h"
#include "nraid_assert.h"

namespace nraid {
namespace {

enum SlotEvent { kSent = 1, kRecvAcked = 2, kWriteAcked = 3 };
constexpr uint32_t kNoSlot = 0xFFFFFFFFu;

bool ranges_overlap(uint64_t a_offset, uint64_t a_length, uint64_t b_offset, uint64_t b_length) {
  return a_length > 0 && b_length > 0 && a_offset < b_offset + b_length && b_offset < a_offset + a_length;
}

}  // namespace

Replicator::Replicator(LocalDisk* disk, Bitmap* bitmap, ActivityLog* activity_log, uint64_t data_size_bytes,
                       LinkCounters* counters, ResyncControl* resync, EventSink sink)
    : disk_(disk),
      bitmap_(bitmap),
      activity_log_(activity_log),
      data_size_bytes_(data_size_bytes),
      counters_(counters),
      sink_(std::move(sink)),
      unacked_(new Unacked[kUnackedEntries]),
      slots_(new Slot[kSlotsMax]),
      resync_digests_(new uint64_t[kResyncWindowChunks * (kResyncChunkBytes / kBlockBytes)]),
      resync_control_(resync) {
  NRAID_ASSERT(resync_control_ != nullptr);
  resync_free_mask_ = kResyncWindowChunks == 32 ? ~0u : (1u << kResyncWindowChunks) - 1;
  void* buffer = nullptr;
  if (posix_memalign(&buffer, kBlockBytes, kRequestBytesMax) != 0) abort();
  read_reply_buffer_ = static_cast<uint8_t*>(buffer);
  // Without a context (the system's fs.aio-max-nr used up) resync and verify read one chunk at a time.
  reads_open_ = reads_.open(kResyncWindowChunks) == 0;
}

Replicator::~Replicator() {
  stop("closed");
  free(read_reply_buffer_);
}

void Replicator::start(int fd, const ReplicatorOptions& options) {
  NRAID_ASSERT(fd_ < 0);
  fd_ = fd;
  options_ = options;
  payload_check_.store(payload_check_for(options.tls.enabled), std::memory_order_release);
  stream_ = std::make_unique<LinkStream>(fd_);
  protocol_.store(options.protocol, std::memory_order_release);
  prepare_socket(fd_);
  receiver_ = std::thread([this] {
    name_thread("nraid-acks");
    receive_loop();
  });
}

void Replicator::stop(const std::string& reason) {
  stopping_.store(true, std::memory_order_release);
  fail(reason);
  {
    std::lock_guard<std::mutex> lock(region_mutex_);
    region_cv_.notify_all();
  }
  if (receiver_.joinable()) receiver_.join();
  if (resyncer_.joinable()) resyncer_.join();
  {
    // A writer that is sending gives up at its next batch (the link has failed): only then may the socket close.
    std::unique_lock<std::mutex> lock(mutex_);
    sender_gone_cv_.wait(lock, [&] { return !sending_; });
  }
  if (fd_ >= 0) {
    ::close(fd_);
    fd_ = -1;
  }
}

void Replicator::fail(const std::string& reason) {
  {
    std::lock_guard<std::mutex> lock(mutex_);
    if (failed_.load(std::memory_order_acquire)) return;
    failed_.store(true, std::memory_order_release);
    fail_reason_ = reason;
    // Everything queued or sent and not known to be on the peer's disk may differ now.
    uint64_t marked = 0;
    for (uint32_t i = 0; i < kUnackedEntries; i++) {
      Unacked& entry = unacked_[i];
      if (!entry.in_use) continue;
      // A digest request changes nothing on the peer (a checksum resync's regions are still marked).
      if (entry.type != kFrameBarrier && entry.type != kFrameReadRequest && entry.type != kFrameOvRequest &&
          entry.length > 0) {
        bitmap_->set_range(entry.offset, entry.length);
        marked++;
      }
      if (entry.pinned && activity_log_ != nullptr) activity_log_->release(entry.offset, entry.length);
      entry.in_use = false;
    }
    counters_->lag_bytes.store(0, std::memory_order_relaxed);
    counters_->lag_oldest_us.store(0, std::memory_order_relaxed);
    counters_->frames_in_flight.store(0, std::memory_order_relaxed);
    counters_->link_failures.fetch_add(1, std::memory_order_relaxed);
    space_cv_.notify_all();
    barrier_cv_.notify_all();
  }
  if (fd_ >= 0) ::shutdown(fd_, SHUT_RDWR);  // wakes the thread blocked in the other direction
  for (uint32_t i = 0; i < kSlotsMax; i++) {
    std::lock_guard<std::mutex> lock(slots_[i].mutex);
    slots_[i].failed = true;
    slots_[i].cv.notify_all();
  }
  {
    std::lock_guard<std::mutex> lock(region_mutex_);
    region_cv_.notify_all();
  }
  if (!stopping_.load(std::memory_order_acquire)) sink_("link-lost", reason);
}

// Queues the frame; the calling thread sends it itself (with whatever else
// is queued) when no other thread is sending. No hand-off to a sender thread,
// so no extra wake-up on the write path, and no thread sleeps on a send lock.
int Replicator::enqueue(uint32_t slot, uint16_t type, uint16_t flags, const uint8_t* data, uint32_t length,
                        uint64_t offset, uint32_t resync_buffer, uint64_t deadline_us, bool pin) {
  FrameHeader header{};
  header.type = type;
  header.flags = flags;
  header.offset = offset;
  header.length = length;
  header.request_id = slot;
  // The payload checksum (plain TCP only) is the expensive part: outside every lock.
  const PayloadCheck check = payload_check_.load(std::memory_order_acquire);
  header.payload_crc = payload_crc(check, type, data, length);
  bool become_sender;
  {
    std::unique_lock<std::mutex> lock(mutex_);
    const bool bounded = type == kFrameWrite || type == kFrameRsData;
    auto has_room = [&] {
      if (failed_.load(std::memory_order_acquire)) return true;
      if (!hello_done_) return false;
      if (next_seq_ - oldest_unacked_seq_ >= kUnackedEntries) return false;
      if (!bounded) return true;
      uint64_t lag = counters_->lag_bytes.load(std::memory_order_relaxed);
      if (lag > 0 && lag + length > options_.max_lag_bytes) return false;
      uint64_t oldest = counters_->lag_oldest_us.load(std::memory_order_relaxed);
      return oldest == 0 || monotonic_us() - oldest <= options_.max_lag_us;
    };
    if (deadline_us == 0) {
      space_cv_.wait(lock, has_room);
    } else if (!wait_until_us(space_cv_, lock, deadline_us, has_room)) {
      return -ETIMEDOUT;
    }
    if (failed_.load(std::memory_order_acquire)) return -ENOTCONN;
    // A link started since (with the other kind of protection) gets the checksum it expects.
    const PayloadCheck now_check = payload_check_.load(std::memory_order_acquire);
    if (now_check != check) header.payload_crc = payload_crc(now_check, type, data, length);
    uint64_t seq = next_seq_++;
    header.seq = seq;
    header.epoch = epoch_;
    if (type == kFrameBarrier) epoch_++;
    header.magic = kFrameMagic;
    header.header_crc = crc32c(0, &header, offsetof(FrameHeader, header_crc));
    Unacked& entry = unacked_[seq % kUnackedEntries];
    NRAID_ASSERT(!entry.in_use);
    uint64_t now = monotonic_us();
    bool pinned = pin && (type == kFrameWrite || type == kFrameDiscard || type == kFrameZeroes);
    entry = Unacked{seq,   offset, type == kFrameBarrier ? 0 : length, type, true, (flags & kFlagResync) != 0, pinned,
                    resync_buffer, now, header, data};
    if (bounded) counters_->lag_bytes.fetch_add(length, std::memory_order_relaxed);
    if (counters_->lag_oldest_us.load(std::memory_order_relaxed) == 0) {
      counters_->lag_oldest_us.store(now, std::memory_order_relaxed);
    }
    counters_->frames_in_flight.fetch_add(1, std::memory_order_relaxed);
    if (slot < kSlotsMax && slot != kResyncSlot) {
      Slot& s = slots_[slot];
      std::lock_guard<std::mutex> slot_lock(s.mutex);
      s.seq = seq;
      s.sent = s.recv_acked = s.write_acked = false;
    }
    become_sender = !sending_;
    sending_ = true;
  }
  if (become_sender) send_queued();
  return 0;
}

void Replicator::send_queued() {
  iovec iov[2 * kFramesPerWrite];
  uint32_t sent_slots[kFramesPerWrite];
  uint64_t first_seq;
  uint64_t end_seq;
  for (;;) {
    bool abandon;  // after a failure, queued frames are dropped, a batch at a time as well
    {
      std::lock_guard<std::mutex> lock(mutex_);
      abandon = failed_.load(std::memory_order_acquire);
      first_seq = next_send_seq_;
      end_seq = std::min(next_seq_, first_seq + kFramesPerWrite);
      next_send_seq_ = end_seq;
      NRAID_ASSERT(end_seq - first_seq <= kFramesPerWrite);
      if (first_seq == end_seq) {
        sending_ = false;
        if (abandon) sender_gone_cv_.notify_all();
        return;
      }
    }
    // No other thread reads or changes these entries until their frames are sent.
    uint32_t iov_count = 0;
    uint64_t payload_bytes = 0;
    for (uint64_t seq = first_seq; seq < end_seq; seq++) {
      const Unacked& entry = unacked_[seq % kUnackedEntries];
      const FrameHeader& header = entry.header;
      sent_slots[seq - first_seq] = header.request_id;
      if (abandon) continue;
      iov[iov_count++] = {const_cast<FrameHeader*>(&header), sizeof(header)};
      if (frame_has_payload(header.type)) {
        iov[iov_count++] = {const_cast<uint8_t*>(entry.data), header.length};
        payload_bytes += header.length;
      }
    }
    if (!abandon) {
      int rc = stream_->writev(iov, static_cast<int>(iov_count));
      if (rc != 0) {
        // The frames are in the unacked table: failing marks their regions dirty and releases the waiters.
        fail(std::string("data link send: ") + strerror(-rc));
      } else {
        counters_->frames_sent.fetch_add(end_seq - first_seq, std::memory_order_relaxed);
        counters_->bytes_sent.fetch_add(payload_bytes, std::memory_order_relaxed);
      }
    }
    // Sent, or given up after a failure: either way the payload buffers are no longer read.
    for (uint64_t seq = first_seq; seq < end_seq; seq++) notify_slot(sent_slots[seq - first_seq], seq, kSent);
  }
}

bool Replicator::submit(uint32_t slot, uint16_t type, const uint8_t* data, uint32_t length_bytes,
                        uint64_t offset_bytes, bool pinned) {
  NRAID_ASSERT(slot < kSlotsMax);
  NRAID_ASSERT(type == kFrameWrite || type == kFrameDiscard || type == kFrameZeroes);
  uint16_t flags = kFlagWantWriteAck;
  if (protocol() == Protocol::kB) flags |= kFlagWantRecvAck;
  return enqueue(slot, type, flags, data, length_bytes, offset_bytes, 0, 0, pinned) == 0;
}

bool Replicator::wait(uint32_t slot, bool write_ack) {
  Slot& s = slots_[slot];
  Protocol protocol = write_ack ? Protocol::kC : this->protocol();
  std::unique_lock<std::mutex> lock(s.mutex);
  s.cv.wait(lock, [&] {
    // After a failure, still wait until the sender no longer reads the payload.
    if (s.failed) return s.sent;
    switch (protocol) {
      case Protocol::kA: return s.sent;
      case Protocol::kB: return s.recv_acked || s.write_acked;
      case Protocol::kC: return s.write_acked;
    }
    return true;
  });
  return s.write_acked;
}

int Replicator::read_remote(uint32_t slot, uint8_t* data, uint32_t length_bytes, uint64_t offset_bytes) {
  NRAID_ASSERT(slot < kSlotsMax && slot != kResyncSlot);
  NRAID_ASSERT(length_bytes > 0 && length_bytes <= kRequestBytesMax);
  Slot& s = slots_[slot];
  {
    std::lock_guard<std::mutex> lock(s.mutex);
    s.read_into = data;
    s.read_rc = -EIO;
  }
  if (enqueue(slot, kFrameReadRequest, 0, nullptr, length_bytes, offset_bytes, 0, 0, false) != 0) return -EIO;
  std::unique_lock<std::mutex> lock(s.mutex);
  // A write ack stands for the reply here: set, under this lock, after the data is in place.
  s.cv.wait(lock, [&] { return s.write_acked || (s.failed && s.sent); });
  int rc = s.write_acked ? s.read_rc : -EIO;
  s.read_into = nullptr;
  return rc;
}

bool Replicator::take_read_reply(LinkStream& reader, const FrameHeader& reply) {
  bool error = (reply.flags & kFlagReadError) != 0;
  if (error && reply.length != 0) {
    counters_->protocol_errors.fetch_add(1, std::memory_order_relaxed);
    fail("protocol error on the data link: a failed READ_REPLY with a payload");
    return false;
  }
  if (!error) {
    int rc = reader.read(read_reply_buffer_, reply.length);
    if (rc != 0) {
      fail(receive_failure(rc, counters_));
      return false;
    }
    if (!payload_intact(payload_check_.load(std::memory_order_relaxed), reply, read_reply_buffer_)) {
      counters_->checksum_errors.fetch_add(1, std::memory_order_relaxed);
      fail("frame rejected: READ_REPLY payload checksum mismatch at offset " + std::to_string(reply.offset));
      return false;
    }
  }
  uint32_t slot = reply.request_id;
  bool known;
  {
    std::lock_guard<std::mutex> lock(mutex_);
    Unacked& entry = unacked_[reply.seq % kUnackedEntries];
    known = entry.in_use && entry.seq == reply.seq && entry.type == kFrameReadRequest && entry.offset == reply.offset &&
            (error || entry.length == reply.length) && slot < kSlotsMax && slot != kResyncSlot;
    if (known) {
      entry.in_use = false;
      counters_->frames_in_flight.fetch_sub(1, std::memory_order_relaxed);
      advance_oldest_locked();
      space_cv_.notify_all();
    }
  }
  if (!known) {
    counters_->protocol_errors.fetch_add(1, std::memory_order_relaxed);
    fail("protocol error on the data link: a READ_REPLY for no read request");
    return false;
  }
  Slot& s = slots_[slot];
  std::lock_guard<std::mutex> lock(s.mutex);
  if (s.seq != reply.seq || s.failed || s.read_into == nullptr) return true;  // the reader gave up
  if (!error) memcpy(s.read_into, read_reply_buffer_, reply.length);
  s.read_rc = error ? -EIO : 0;
  s.write_acked = s.recv_acked = s.sent = true;
  s.cv.notify_all();
  return true;
}

int Replicator::barrier(uint64_t deadline_us, bool always_wait) {
  uint64_t epoch;
  {
    std::lock_guard<std::mutex> lock(mutex_);
    epoch = epoch_;
  }
  int rc = enqueue(kNoSlot, kFrameBarrier, 0, nullptr, 0, 0, 0, deadline_us);
  if (rc != 0 || (protocol() == Protocol::kA && !always_wait)) return rc;
  std::unique_lock<std::mutex> lock(mutex_);
  auto settled = [&] { return failed_.load(std::memory_order_acquire) || barrier_acked_epoch_ >= epoch; };
  if (deadline_us == 0) {
    barrier_cv_.wait(lock, settled);
  } else if (!wait_until_us(barrier_cv_, lock, deadline_us, settled)) {
    return -ETIMEDOUT;
  }
  return barrier_acked_epoch_ >= epoch ? 0 : -ENOTCONN;
}

int Replicator::wait_idle(uint64_t deadline_us) {
  std::unique_lock<std::mutex> lock(mutex_);
  // Every change of these two happens under mutex_ and is followed by space_cv_'s notify.
  auto idle = [&] {
    return failed_.load(std::memory_order_acquire) ||
           (counters_->frames_in_flight.load(std::memory_order_relaxed) == 0 &&
            counters_->lag_bytes.load(std::memory_order_relaxed) == 0);
  };
  if (deadline_us == 0) {
    space_cv_.wait(lock, idle);
  } else if (!wait_until_us(space_cv_, lock, deadline_us, idle)) {
    return -ETIMEDOUT;
  }
  return failed_.load(std::memory_order_acquire) ? -ENOTCONN : 0;
}

void Replicator::notify_slot(uint32_t slot, uint64_t seq, int what) {
  if (slot >= kSlotsMax || slot == kResyncSlot) return;
  Slot& s = slots_[slot];
  std::lock_guard<std::mutex> lock(s.mutex);
  if (s.seq != seq) return;  // an ack for an earlier request of this slot (protocol A moved on)
  if (what == kSent) s.sent = true;
  if (what == kRecvAcked) s.recv_acked = true;
  if (what == kWriteAcked) s.write_acked = s.recv_acked = s.sent = true;
  // Wake the writer only when this is what it waits for: under C a "sent" or
  // "received" would wake it just to sleep again. (A protocol change while it
  // waits at most delays it until the write ack, which wakes it in any case.)
  Protocol protocol = this->protocol();
  bool satisfied = what == kWriteAcked || s.failed || (what == kSent && protocol == Protocol::kA) ||
                   (what == kRecvAcked && protocol == Protocol::kB);
  if (satisfied) s.cv.notify_all();
}

void Replicator::advance_oldest_locked() {
  while (oldest_unacked_seq_ < next_seq_) {
    const Unacked& entry = unacked_[oldest_unacked_seq_ % kUnackedEntries];
    if (entry.in_use && entry.seq == oldest_unacked_seq_) break;
    oldest_unacked_seq_++;
  }
  if (oldest_unacked_seq_ < next_seq_) {
    counters_->lag_oldest_us.store(unacked_[oldest_unacked_seq_ % kUnackedEntries].enqueued_us, std::memory_order_relaxed);
  } else {
    counters_->lag_oldest_us.store(0, std::memory_order_relaxed);
  }
}

void Replicator::receive_loop() {
  std::string error;
  if (stream_->handshake(options_.tls, options_.send_hello_first, &error) != 0 ||
      exchange_hello(*stream_, options_.send_hello_first, counters_, &error) != 0) {
    fail(error);
    return;
  }
  {
    std::lock_guard<std::mutex> lock(mutex_);
    hello_done_ = true;
    space_cv_.notify_all();
  }
  LinkStream& reader = *stream_;
  for (;;) {
    FrameHeader ack{};
    int rc = reader.read(&ack, sizeof(ack));
    if (rc != 0) {
      fail(receive_failure(rc, counters_));
      return;
    }
    FrameCheck check = frame_check_header(ack, data_size_bytes_);
    if (check != FrameCheck::kOk) {
      counters_->protocol_errors.fetch_add(1, std::memory_order_relaxed);
      fail(std::string("protocol error on the data link: ") + frame_check_name(check));
      return;
    }
    switch (ack.type) {
      case kFrameHello:
        counters_->protocol_errors.fetch_add(1, std::memory_order_relaxed);
        fail("protocol error on the data link: a second HELLO");
        return;
      case kFrameAckRecv:
        notify_slot(ack.request_id, ack.seq, kRecvAcked);
        continue;
      case kFrameAckWrite: {
        bool known;
        {
          std::lock_guard<std::mutex> lock(mutex_);
          Unacked& entry = unacked_[ack.seq % kUnackedEntries];
          known = entry.in_use && entry.seq == ack.seq;
          if (known) {
            entry.in_use = false;
            if (entry.type == kFrameWrite || entry.type == kFrameRsData) {
              counters_->lag_bytes.fetch_sub(entry.length, std::memory_order_relaxed);
              counters_->bytes_acked.fetch_add(entry.length, std::memory_order_relaxed);
            }
            counters_->frames_in_flight.fetch_sub(1, std::memory_order_relaxed);
            if (entry.pinned && activity_log_ != nullptr) activity_log_->release(entry.offset, entry.length);
            if (entry.resync) {
              bitmap_->clear_range(entry.offset, entry.length);
              counters_->resync_bytes_done.fetch_add(entry.length, std::memory_order_relaxed);
              release_resync_buffer_locked(entry.buffer);
            }
            advance_oldest_locked();
            space_cv_.notify_all();
          }
        }
        if (!known) {
          counters_->protocol_errors.fetch_add(1, std::memory_order_relaxed);
          fail("protocol error on the data link: an ack for a frame never sent");
          return;
        }
        notify_slot(ack.request_id, ack.seq, kWriteAcked);
        continue;
      }
      case kFrameReadReply:
        if (!take_read_reply(reader, ack)) return;
        continue;
      case kFrameOvReply:
        if (!take_digest_reply(reader, ack)) return;
        continue;
      case kFrameBarrierAck: {
        std::lock_guard<std::mutex> lock(mutex_);
        Unacked& entry = unacked_[ack.seq % kUnackedEntries];
        if (entry.in_use && entry.seq == ack.seq && entry.type == kFrameBarrier) {
          entry.in_use = false;
          counters_->frames_in_flight.fetch_sub(1, std::memory_order_relaxed);
          advance_oldest_locked();
        }
        if (ack.epoch > barrier_acked_epoch_) barrier_acked_epoch_ = ack.epoch;
        barrier_cv_.notify_all();
        space_cv_.notify_all();
        continue;
      }
      default:
        counters_->protocol_errors.fetch_add(1, std::memory_order_relaxed);
        fail("protocol error on the data link: unexpected frame type " + std::to_string(ack.type) + " from the target");
        return;
    }
  }
}

bool Replicator::overlaps_busy(uint64_t offset, uint64_t length) {
  for (uint32_t i = 0; i < kSlotsMax; i++) {
    uint64_t busy_length = slots_[i].busy_length.load(std::memory_order_seq_cst);
    if (busy_length > 0 && ranges_overlap(offset, length, slots_[i].busy_offset.load(std::memory_order_seq_cst), busy_length)) {
      return true;
    }
  }
  return false;
}

bool Replicator::overlaps_resync_lock(uint64_t offset, uint64_t length) {
  if (resync_locks_held_.load(std::memory_order_seq_cst) == 0) return false;
  for (uint32_t i = 0; i < kResyncWindowChunks; i++) {
    const uint64_t lock_length = resync_lock_length_[i].load(std::memory_order_seq_cst);
    if (lock_length > 0 && ranges_overlap(offset, length, resync_lock_offset_[i].load(std::memory_order_seq_cst), lock_length)) {
      return true;
    }
  }
  return false;
}

void Replicator::region_enter(uint32_t slot, uint64_t offset_bytes, uint64_t length_bytes) {
  Slot& s = slots_[slot];
  for (;;) {
    s.busy_offset.store(offset_bytes, std::memory_order_seq_cst);
    s.busy_length.store(length_bytes, std::memory_order_seq_cst);
    if (!overlaps_resync_lock(offset_bytes, length_bytes)) return;
    // The resync engine is reading these blocks: let it enqueue them first, so that this write follows.
    s.busy_length.store(0, std::memory_order_seq_cst);
    std::unique_lock<std::mutex> lock(region_mutex_);
    region_cv_.notify_all();
    region_cv_.wait(lock, [&] { return failed() || !overlaps_resync_lock(offset_bytes, length_bytes); });
  }
}

void Replicator::region_leave(uint32_t slot) {
  slots_[slot].busy_length.store(0, std::memory_order_seq_cst);
  if (resync_locks_held_.load(std::memory_order_seq_cst) > 0) {
    std::lock_guard<std::mutex> lock(region_mutex_);
    region_cv_.notify_all();
  }
}

bool Replicator::take_digest_reply(LinkStream& reader, const FrameHeader& reply) {
  int rc = reader.read(digest_reply_, reply.length);
  if (rc != 0) {
    fail(rc == -EPIPE ? "data link closed by the peer" : std::string("data link receive: ") + strerror(-rc));
    return false;
  }
  if (!payload_intact(payload_check_.load(std::memory_order_relaxed), reply, digest_reply_)) {
    counters_->checksum_errors.fetch_add(1, std::memory_order_relaxed);
    fail("frame rejected: OV_REPLY payload checksum mismatch at offset " + std::to_string(reply.offset));
    return false;
  }
  const uint64_t granularity = bitmap_->granularity_bytes();
  std::string mismatches;  // "OFFSET+LENGTH" runs, space-separated
  bool known;
  {
    std::lock_guard<std::mutex> lock(mutex_);
    Unacked& entry = unacked_[reply.seq % kUnackedEntries];
    known = entry.in_use && entry.seq == reply.seq && entry.type == kFrameOvRequest &&
                 entry.offset == reply.offset && entry.length / kBlockBytes * kDigestBytes == reply.length &&
                 (reply.flags & kFlagResync) == (entry.resync ? kFlagResync : 0);
    if (known) {
      const uint64_t* local = &resync_digests_[uint64_t{entry.buffer} * (kResyncChunkBytes / kBlockBytes)];
      const uint32_t blocks = entry.length / kBlockBytes;
      uint64_t run_start = 0;
      uint32_t i = 0;
      while (i < blocks) {
        bool equal = local[i] == digest_reply_[i];
        uint32_t j = i + 1;
        while (j < blocks && (local[j] == digest_reply_[j]) == equal) j++;
        run_start = entry.offset + uint64_t{i} * kBlockBytes;
        uint64_t run_bytes = uint64_t{j - i} * kBlockBytes;
        if (entry.resync && equal) {
          // Only bits whose every block is equal are cleared.
          uint64_t first = (run_start + granularity - 1) / granularity * granularity;
          uint64_t end = (run_start + run_bytes) / granularity * granularity;
          if (run_start + run_bytes == data_size_bytes_) end = data_size_bytes_;
          if (end > first) {
            bitmap_->clear_range(first, end - first);
            counters_->resync_equal_bytes.fetch_add(end - first, std::memory_order_relaxed);
            counters_->resync_bytes_done.fetch_add(end - first, std::memory_order_relaxed);
          }
        } else if (!entry.resync && !equal) {
          bitmap_->set_range(run_start, run_bytes);
          counters_->verify_mismatch_bytes.fetch_add(run_bytes, std::memory_order_relaxed);
          counters_->verify_mismatch_total_bytes.fetch_add(run_bytes, std::memory_order_relaxed);
          if (!mismatches.empty()) mismatches += ' ';
          mismatches += std::to_string(run_start) + "+" + std::to_string(run_bytes);
        }
        i = j;
      }
      entry.in_use = false;
      counters_->frames_in_flight.fetch_sub(1, std::memory_order_relaxed);
      release_resync_buffer_locked(entry.buffer);
      if (!entry.resync) {
        // The target may answer out of order (its reads complete so): everything before the
        // lowest range still taken (asked, or read ahead), or else before the furthest answered, is compared.
        verify_replied_end_bytes_ = std::max(verify_replied_end_bytes_, entry.offset + entry.length);
        uint64_t position = verify_replied_end_bytes_;
        for (uint32_t b = 0; b < kResyncWindowChunks; b++) {
          if ((resync_free_mask_ & (1u << b)) == 0) position = std::min(position, resync_buffer_offset_[b]);
        }
        counters_->verify_position_bytes.store(position, std::memory_order_relaxed);
        counters_->verify_bytes_done_total.fetch_add(entry.length, std::memory_order_relaxed);
      }
      advance_oldest_locked();
      space_cv_.notify_all();
    }
  }
  if (!known) {
    counters_->protocol_errors.fetch_add(1, std::memory_order_relaxed);
    fail("protocol error on the data link: an OV_REPLY for no digest request");
    return false;
  }
  if (!mismatches.empty()) sink_("verify-mismatch", mismatches);
  return true;
}

void Replicator::release_resync_buffer_locked(uint32_t buffer) {
  NRAID_ASSERT(buffer < kResyncWindowChunks && (resync_free_mask_ & (1u << buffer)) == 0);
  NRAID_ASSERT(resync_in_flight_bytes_ >= resync_buffer_bytes_[buffer]);
  resync_in_flight_bytes_ -= resync_buffer_bytes_[buffer];
  resync_buffer_bytes_[buffer] = 0;
  resync_free_mask_ |= 1u << buffer;
}

void Replicator::return_resync_buffer(uint32_t buffer) {
  std::lock_guard<std::mutex> lock(mutex_);
  release_resync_buffer_locked(buffer);
  space_cv_.notify_all();
}

bool Replicator::wait_resync_window_empty() {
  std::unique_lock<std::mutex> lock(mutex_);
  const uint32_t all = kResyncWindowChunks == 32 ? ~0u : (1u << kResyncWindowChunks) - 1;
  space_cv_.wait(lock, [&] { return failed() || resync_free_mask_ == all; });
  return !failed();
}

void Replicator::resync_lock(uint32_t buffer, uint64_t offset, uint64_t length) {
  NRAID_ASSERT(buffer < kResyncWindowChunks && length > 0);
  NRAID_ASSERT(resync_lock_length_[buffer].load(std::memory_order_relaxed) == 0);
  // Set, then check the writers (each writer sets its busy range, then checks the locks): one of
  // the two sees the other. A writer that read a half-set lock is still seen here, and waited for.
  resync_locks_held_.fetch_add(1, std::memory_order_seq_cst);
  resync_lock_offset_[buffer].store(offset, std::memory_order_seq_cst);
  resync_lock_length_[buffer].store(length, std::memory_order_seq_cst);
  std::unique_lock<std::mutex> lock(region_mutex_);
  region_cv_.wait(lock, [&] { return failed() || !overlaps_busy(offset, length); });
}

void Replicator::resync_unlock(uint32_t buffer) {
  NRAID_ASSERT(buffer < kResyncWindowChunks && resync_lock_length_[buffer].load(std::memory_order_relaxed) > 0);
  resync_lock_length_[buffer].store(0, std::memory_order_seq_cst);
  resync_locks_held_.fetch_sub(1, std::memory_order_seq_cst);
  std::lock_guard<std::mutex> lock(region_mutex_);
  region_cv_.notify_all();
}

void Replicator::ahead_issue(uint32_t buffer, bool ahead) {
  NRAID_ASSERT(ahead_count_ < kResyncWindowChunks);
  Ahead& a = ahead_[buffer];
  NRAID_ASSERT(resync_lock_length_[buffer].load(std::memory_order_relaxed) >= a.length);
  a.reading = false;
  a.rc = failed() ? -ECANCELED : 0;
  if (a.rc == 0 && a.type != kFrameZeroes) {
    uint8_t* data = resync_buffers_[buffer];
    // One at a time (the rate held down), or no room for it in the kernel: here and now.
    if (!ahead || !reads_open_ || reads_.submit_read(disk_, data, a.length, a.offset, buffer) != 0) {
      a.rc = disk_->read(data, a.length, a.offset);
    } else {
      a.reading = true;
      ahead_reading_++;
    }
  }
  ahead_order_[(ahead_first_ + ahead_count_) % kResyncWindowChunks] = buffer;
  ahead_count_++;
}

void Replicator::ahead_reap() {
  NRAID_ASSERT(ahead_reading_ > 0);
  AsyncIo::Completion done[kResyncWindowChunks];
  int count = reads_.reap(done, kResyncWindowChunks);
  // io_getevents fails only on a bad context or buffer: a broken invariant.
  NRAID_ASSERT(count > 0);
  for (int i = 0; i < count; i++) {
    NRAID_ASSERT(done[i].tag < kResyncWindowChunks && ahead_[done[i].tag].reading);
    Ahead& a = ahead_[done[i].tag];
    a.reading = false;
    ahead_reading_--;
    const int64_t result = done[i].result;
    if (result < 0) {
      a.rc = static_cast<int>(result);
    } else if (static_cast<uint64_t>(result) < a.length) {
      // A short read (not seen on block devices): the rest, here and now.
      const auto got = static_cast<uint64_t>(result);
      a.rc = got % disk_->logical_block_bytes() != 0
                 ? -EIO
                 : disk_->read(resync_buffers_[done[i].tag] + got, a.length - got, a.offset + got);
    }
  }
}

uint32_t Replicator::ahead_wait_oldest() {
  NRAID_ASSERT(ahead_count_ > 0);
  const uint32_t buffer = ahead_order_[ahead_first_];
  while (ahead_[buffer].reading) ahead_reap();
  return buffer;
}

void Replicator::ahead_pop() {
  NRAID_ASSERT(ahead_count_ > 0);
  resync_unlock(ahead_order_[ahead_first_]);
  ahead_first_ = (ahead_first_ + 1) % kResyncWindowChunks;
  ahead_count_--;
}

void Replicator::ahead_drain() {
  while (ahead_reading_ > 0) ahead_reap();
  while (ahead_count_ > 0) {
    const uint32_t buffer = ahead_order_[ahead_first_];
    ahead_pop();
    return_resync_buffer(buffer);
  }
}

bool Replicator::start_resync(const ResyncOptions& options) {
  if (verify_running_.load(std::memory_order_acquire)) return false;
  if (resync_running_.exchange(true)) return false;
  if (resyncer_.joinable()) resyncer_.join();
  resyncer_ = std::thread([this, options] {
    name_thread("nraid-resync");
    resync_loop(options);
  });
  return true;
}

bool Replicator::start_verify(uint64_t start_bytes, uint64_t stop_bytes) {
  NRAID_ASSERT(start_bytes % kBlockBytes == 0 && start_bytes <= stop_bytes && stop_bytes <= data_size_bytes_);
  if (resync_running_.load(std::memory_order_acquire)) return false;
  if (verify_running_.exchange(true)) return false;
  if (resyncer_.joinable()) resyncer_.join();
  verify_stop_.store(false, std::memory_order_release);
  counters_->verify_start_bytes.store(start_bytes, std::memory_order_relaxed);
  counters_->verify_stop_bytes.store(stop_bytes, std::memory_order_relaxed);
  counters_->verify_position_bytes.store(start_bytes, std::memory_order_relaxed);
  counters_->verify_mismatch_bytes.store(0, std::memory_order_relaxed);
  resyncer_ = std::thread([this, start_bytes, stop_bytes] {
    name_thread("nraid-verify");
    verify_loop(start_bytes, stop_bytes);
  });
  return true;
}

void Replicator::resync_settings_changed() {
  std::lock_guard<std::mutex> lock(mutex_);
  space_cv_.notify_all();
}

bool Replicator::wait_resync_room(uint64_t offset, uint64_t length, uint64_t fill_target_bytes, uint64_t deadline_us,
                                  uint32_t* buffer) {
  std::unique_lock<std::mutex> lock(mutex_);
  // One chunk may always go: a fill target below the chunk size does not stop the resync.
  bool ready = wait_until_us(space_cv_, lock, deadline_us, [&] {
    return failed() || (resync_free_mask_ != 0 &&
                        (resync_in_flight_bytes_ == 0 || resync_in_flight_bytes_ + length <= fill_target_bytes));
  });
  if (!ready || failed()) return false;
  *buffer = static_cast<uint32_t>(__builtin_ctz(resync_free_mask_));
  resync_free_mask_ &= ~(1u << *buffer);
  resync_buffer_bytes_[*buffer] = length;
  resync_buffer_offset_[*buffer] = offset;
  resync_in_flight_bytes_ += length;
  return true;
}

// The rate controller (DESIGN.md §8), after DRBD's drbd_rs_controller in
// what it is asked to do, not in how: DRBD plans each 100 ms tick from what
// the peer answered in the last one, which needs many ticks to reach the
// speed of a fast link. Here each step plans from the settings:
//   - a budget of bytes accrues at the planned rate (max-rate; min-rate
//     while applications do I/O, re-planned every tick; none while paused)
//     and holds at most a plan-ahead window's worth (rate x plan-ahead), so
//     a pause in sending does not turn into a burst later;
//   - at most fill-target bytes are in flight (read, sent, not yet written
//     by the peer); the window is what keeps a fast link busy;
//   - while applications do I/O, requests are small (kResyncThrottledChunkBytes)
//     and paced by the budget, so an application write waits behind little.
// Application I/O is any read or write started since the last step; a tick
// (kResyncTickUs) without any lifts the throttle. While the rate is not held
// below max-rate (by applications, or a pause), up to kResyncReadsAheadMax
// requests are read ahead of the one being sent (within the budget and the
// window like any other), so the disk reads while the link sends; while it
// is, one at a time. Resync data, zero frames,
// a checksum resync's digest requests and a verify's all take from the same
// budget and window: each request counts the bytes both disks read for it
// (a zero frame its first chunk).
void Replicator::pace_start(Pace* pace) {
  pace->last_us = monotonic_us();
  pace->app_seen = resync_control_->app_requests.load(std::memory_order_relaxed);
  pace->app_seen_us = 0;
  pace->budget_bytes = 0;
}

uint64_t Replicator::pace_step(Pace* pace, bool may_wait) {
  ResyncControl& control = *resync_control_;
  const uint64_t now = monotonic_us();
  const uint64_t app = control.app_requests.load(std::memory_order_relaxed);
  if (app != pace->app_seen) {
    pace->app_seen = app;
    pace->app_seen_us = now;
  }
  const bool busy = pace->app_seen_us != 0 && now - pace->app_seen_us < kResyncTickUs;
  const bool paused = control.paused.load(std::memory_order_acquire);
  const uint64_t max_rate = control.max_rate_bytes.load(std::memory_order_relaxed);
  const uint64_t rate = paused ? 0 : busy ? std::min(control.min_rate_bytes.load(std::memory_order_relaxed), max_rate) : max_rate;
  const uint64_t plan_ahead_ms = control.plan_ahead_ms.load(std::memory_order_relaxed);
  const uint64_t chunk_max = busy ? kResyncThrottledChunkBytes : kResyncChunkBytes;
  control.planned_rate_bytes.store(rate, std::memory_order_relaxed);
  control.throttled.store(busy && !paused, std::memory_order_relaxed);
  pace->held = paused || rate < max_rate;
  // rate <= kResyncRateBytesMax and elapsed <= 1 s: the product fits in 64 bits.
  const uint64_t elapsed_us = std::min<uint64_t>(now - pace->last_us, 1'000'000);
  pace->last_us = now;
  const int64_t ceiling = static_cast<int64_t>(std::max<uint64_t>(busy ? chunk_max : rate / 1000 * plan_ahead_ms, 1));
  pace->budget_bytes = std::min(pace->budget_bytes + static_cast<int64_t>(rate * elapsed_us / 1'000'000), ceiling);
  if (paused) pace->budget_bytes = std::min<int64_t>(pace->budget_bytes, 0);  // not one more request
  // The least a request covers. Unthrottled, a whole chunk (or a tick's worth, at a max-rate below
  // 10 chunks a second): a budget that has just turned positive would otherwise cut a chunk short,
  // and the rest of that chunk then goes alone, so both disks see split requests (measured: a full
  // sync's reads and writes averaged 620 KiB and ran at 0.8 of a dd copy). Throttled, any byte:
  // small requests are what keeps an application's write from waiting behind the resync.
  const int64_t grain = busy ? 1 : static_cast<int64_t>(std::clamp<uint64_t>(rate / 1000 * kResyncTickUs / 1000, 1, chunk_max));
  if (pace->budget_bytes < grain) {
    if (!may_wait) return 0;
    // Until the budget covers a request again, or the next tick re-plans (a resume, new settings).
    const uint64_t wait_us =
        rate == 0 ? kResyncTickUs
                  : std::min<uint64_t>(kResyncTickUs, static_cast<uint64_t>(grain - pace->budget_bytes) * 1'000'000 / rate + 1);
    std::unique_lock<std::mutex> lock(mutex_);
    wait_until_us(space_cv_, lock, now + wait_us,
                  [&] { return failed() || control.paused.load(std::memory_order_acquire) != paused; });
    return 0;
  }
  pace->fill_target_bytes = control.fill_target_bytes.load(std::memory_order_relaxed);
  pace->now_us = now;
  return std::min<uint64_t>(chunk_max, static_cast<uint64_t>(pace->budget_bytes));
}

void Replicator::verify_loop(uint64_t start_bytes, uint64_t stop_bytes) {
  {
    std::lock_guard<std::mutex> lock(mutex_);
    verify_replied_end_bytes_ = start_bytes;
  }
  Pace pace;
  pace_start(&pace);
  uint64_t offset = start_bytes;
  while (!failed() && !verify_stop_.load(std::memory_order_acquire)) {
    const bool ahead = ahead_count_ > 0;
    // The next range: read ahead of those not yet queued only while the rate is not held down,
    // and then without waiting for budget or room (the oldest one goes on meanwhile).
    if (offset < stop_bytes && (!ahead || (ahead_count_ < kResyncReadsAheadMax && !pace.held))) {
      const uint64_t want = pace_step(&pace, !ahead);
      uint32_t buffer;
      if (want > 0) {
        // Up to the next chunk boundary: once aligned, every range is a whole chunk of both disks.
        const auto length = static_cast<uint32_t>(std::min<uint64_t>(
            {(want + kBlockBytes - 1) / kBlockBytes * kBlockBytes, kResyncChunkBytes - offset % kResyncChunkBytes, stop_bytes - offset}));
        if (wait_resync_room(offset, length, pace.fill_target_bytes, ahead ? 0 : pace.now_us + kResyncTickUs, &buffer)) {
          pace.budget_bytes -= static_cast<int64_t>(length);
          // Read and request under the region lock: no application write falls between this
          // side's read and the request's place in the stream, so both digest the same writes.
          ahead_[buffer] = Ahead{offset, length, 0, kFrameOvRequest, false, 0};
          resync_lock(buffer, offset, length);
          ahead_issue(buffer, !pace.held);
          offset += length;
          continue;
        }
      }
      if (!ahead) continue;  // re-plan, or stop
    }
    if (!ahead) break;  // every range is queued
    const uint32_t buffer = ahead_wait_oldest();
    const Ahead& a = ahead_[buffer];
    int rc = a.rc;
    if (rc == 0) {
      block_digests(resync_buffers_[buffer], static_cast<uint32_t>(a.length), kBlockBytes,
                    &resync_digests_[uint64_t{buffer} * (kResyncChunkBytes / kBlockBytes)]);
    }
    bool queued = rc == 0 && enqueue(kResyncSlot, kFrameOvRequest, 0, nullptr, static_cast<uint32_t>(a.length), a.offset,
                                     buffer, 0, false) == 0;
    ahead_pop();
    if (!queued) {
      return_resync_buffer(buffer);
      if (rc != 0 && rc != -ECANCELED) fail(std::string("verify read of the local disk failed: ") + strerror(-rc));
      break;
    }
  }
  ahead_drain();
  wait_resync_window_empty();
  resync_control_->throttled.store(false, std::memory_order_relaxed);
  verify_running_.store(false, std::memory_order_release);
  // Where it stopped: a verify started again from here resumes it.
  sink_("verify-done", std::to_string(counters_->verify_position_bytes.load(std::memory_order_relaxed)));
}

void Replicator::resync_loop(ResyncOptions options) {
  const uint64_t granularity = bitmap_->granularity_bytes();
  const uint64_t bits_per_chunk = kResyncChunkBytes / granularity;
  // A checksum resync's first pass asks for digests; later passes send what is still marked.
  bool digest_pass = options.csums;
  Pace pace;
  pace_start(&pace);
  uint64_t bit = 0;
  while (!failed()) {
    const bool ahead = ahead_count_ > 0;
    // The next request: read ahead of those not yet queued only while the rate is not held down,
    // near the oldest one, and then without waiting for budget or room (the oldest goes on meanwhile).
    if (!ahead || (ahead_count_ < kResyncReadsAheadMax && !pace.held)) {
      const uint64_t want = pace_step(&pace, !ahead);
      if (want == 0 && !ahead) continue;
      if (want > 0) bit = bitmap_->find_next_set(bit);
      if (want > 0 && bit >= bitmap_->bits() && !ahead) {
        // Wait for what is in flight; its acks clear bits. Then one more pass from the start.
        if (!wait_resync_window_empty()) break;
        digest_pass = false;
        if (bitmap_->count_set() == 0) {
          resync_control_->throttled.store(false, std::memory_order_relaxed);
          resync_running_.store(false, std::memory_order_release);
          sink_("resync-done", std::to_string(counters_->resync_bytes_done.load()));
          return;
        }
        bit = 0;
        continue;
      }
      const uint64_t oldest_offset = ahead ? ahead_[ahead_order_[ahead_first_]].offset : 0;
      if (want > 0 && bit < bitmap_->bits() && (!ahead || bit * granularity < oldest_offset + kResyncReadAheadSpanBytes)) {
        const uint64_t bits_max = std::max<uint64_t>(1, (want + granularity - 1) / granularity);
        uint64_t run = 1;
        while (run < bits_max && bitmap_->test(bit + run) && (bit + run) % bits_per_chunk != 0) run++;
        uint64_t offset = bit * granularity;
        uint64_t length = run * granularity;
        if (offset + length > data_size_bytes_) length = data_size_bytes_ - offset;
        uint32_t buffer;
        // The window counts what this request reads (a zero frame: at most this first chunk).
        if (wait_resync_room(offset, length, pace.fill_target_bytes, ahead ? 0 : pace.now_us + kResyncTickUs, &buffer)) {
          pace.budget_bytes -= static_cast<int64_t>(length);
          const uint16_t type = digest_pass ? kFrameOvRequest : options.repair ? kFrameWrite : kFrameRsData;
          ahead_[buffer] = Ahead{offset, length, run, type, false, 0};
          // A hole of a backing file needs no read: one zero frame, as far as the hole and
          // the marked bits go (a range frame's bound at most). Checked again under the lock.
          if (!digest_pass && !options.repair && disk_->next_data(offset, data_size_bytes_) >= offset + length) {
            uint64_t limit = std::min(disk_->next_data(offset, data_size_bytes_), offset + kRangeFrameBytesMax);
            uint64_t end_bit = bit + run;
            while (end_bit < bitmap_->bits() && bitmap_->test(end_bit) &&
                   std::min((end_bit + 1) * granularity, data_size_bytes_) <= limit) {
              end_bit++;
            }
            const uint64_t hole_length = std::min(end_bit * granularity, data_size_bytes_) - offset;
            resync_lock(buffer, offset, hole_length);
            if (disk_->next_data(offset, data_size_bytes_) >= offset + hole_length) {
              ahead_[buffer].type = kFrameZeroes;
              ahead_[buffer].bits = end_bit - bit;
              ahead_[buffer].length = hole_length;
            }
            // Written meanwhile: read the first chunk as usual (the larger lock is harmless).
          } else {
            // Lock the region against application writes, and wait for those in flight there.
            resync_lock(buffer, offset, length);
          }
          ahead_issue(buffer, !pace.held);
          bit += ahead_[buffer].bits;
          continue;
        }
        if (!ahead) continue;  // re-plan, or stop
      }
      if (!ahead) continue;
    }
    // The oldest request: its read done, it goes to the send queue (this thread sends it, unless another sends).
    const uint32_t buffer = ahead_wait_oldest();
    const Ahead& a = ahead_[buffer];
    const int rc = a.rc;
    const uint64_t offset = a.offset;
    const uint64_t length = a.length;
    uint16_t type = a.type;
    if (rc == 0 && type == kFrameOvRequest) {
      block_digests(resync_buffers_[buffer], static_cast<uint32_t>(length), kBlockBytes,
                    &resync_digests_[uint64_t{buffer} * (kResyncChunkBytes / kBlockBytes)]);
    } else if (rc == 0 && type == kFrameRsData && all_zero(resync_buffers_[buffer], static_cast<uint32_t>(length))) {
      type = kFrameZeroes;
    }
    const uint16_t flags = type == kFrameOvRequest ? kFlagResync : kFlagWantWriteAck | kFlagResync;
    const bool payload = type == kFrameRsData || type == kFrameWrite;
    bool queued = rc == 0 && enqueue(kResyncSlot, type, flags, payload ? resync_buffers_[buffer] : nullptr,
                                     static_cast<uint32_t>(length), offset, buffer, 0, false) == 0;
    ahead_pop();
    if (!queued) {
      return_resync_buffer(buffer);
      if (rc != 0 && rc != -ECANCELED) fail(std::string("resync read of the local disk failed: ") + strerror(-rc));
      break;
    }
    if (type == kFrameZeroes) {
      counters_->resync_zero_bytes_sent.fetch_add(length, std::memory_order_relaxed);
    } else if (type != kFrameOvRequest) {
      counters_->resync_data_bytes_sent.fetch_add(length, std::memory_order_relaxed);
    }
  }
  ahead_drain();
  resync_control_->throttled.store(false, std::memory_order_relaxed);
  resync_running_.store(false, std::memory_order_release);
}

}  // namespace nraid
