#include "applier.h"

#include <errno.h>
#include <stdlib.h>
#include <string.h>
#include <sys/eventfd.h>
#include <sys/socket.h>
#include <unistd.h>

#include "digest.h"
#include "nraid_assert.h"

namespace nraid {
namespace {

constexpr uint32_t kNoBuffer = 0xFFFFFFFFu;
// Every payload frame holds a buffer; one more for a discard or zeroes frame,
// which the receiver applies itself.
constexpr uint32_t kActiveMax = kApplyBuffers + 1;
// The tag of the completion that wakes the reaper to stop.
constexpr uint64_t kWakeTag = kActiveMax;

}  // namespace

Applier::Applier(LocalDisk* disk, uint64_t data_size_bytes, LinkCounters* counters, EventSink sink)
    : disk_(disk), data_size_bytes_(data_size_bytes), counters_(counters), sink_(std::move(sink)) {
  active_.resize(kActiveMax);
  reply_digests_.reset(new uint64_t[uint64_t{kApplyBuffers} * (kDigestReplyBytesMax / kDigestBytes)]);
  void* buffer = nullptr;
  if (posix_memalign(&buffer, kBlockBytes, kRequestBytesMax) != 0) abort();
  read_buffer_ = static_cast<uint8_t*>(buffer);
}

Applier::~Applier() {
  stop("closed");
  free(read_buffer_);
}

void Applier::start(int fd, bool send_hello_first, const TlsOptions& tls) {
  NRAID_ASSERT(fd_ < 0);
  fd_ = fd;
  stream_ = std::make_unique<LinkStream>(fd_);
  send_hello_first_ = send_hello_first;
  tls_ = tls;
  payload_check_ = payload_check_for(tls.enabled);
  prepare_socket(fd_);
  int rc = io_.open(kActiveMax + 1);
  wake_fd_ = rc == 0 ? eventfd(0, EFD_CLOEXEC) : -1;
  if (rc == 0 && wake_fd_ < 0) rc = -errno;
  if (rc == 0) rc = io_.submit_poll(wake_fd_, kWakeTag);
  if (rc != 0) {
    // The receiver is not started either: the link fails before any frame is read.
    fail(std::string("cannot set up asynchronous writes to the target's disk: ") + strerror(-rc) +
         (rc == -EAGAIN ? " (the system's fs.aio-max-nr is used up; raise it with sysctl)" : ""));
    return;
  }
  reaper_ = std::thread([this] {
    name_thread("nraid-reap");
    reap_loop();
  });
  receiver_ = std::thread([this] {
    name_thread("nraid-receive");
    receive_loop();
  });
}

void Applier::stop(const std::string& reason) {
  stopping_.store(true, std::memory_order_release);
  fail(reason);
  if (receiver_.joinable()) receiver_.join();
  // Nothing is submitted any more: the reaper takes what is in flight, then ends.
  if (reaper_.joinable()) {
    uint64_t one = 1;
    if (::write(wake_fd_, &one, sizeof(one)) != sizeof(one)) abort();  // an eventfd write cannot fail here
    reaper_.join();
  }
  io_.close();  // waits for any write still in flight: only then may its buffer go
  if (wake_fd_ >= 0) {
    ::close(wake_fd_);
    wake_fd_ = -1;
  }
  if (fd_ >= 0) {
    ::close(fd_);
    fd_ = -1;
  }
}

void Applier::fail(const std::string& reason) {
  if (failed_.exchange(true)) return;
  counters_->link_failures.fetch_add(1, std::memory_order_relaxed);
  if (fd_ >= 0) ::shutdown(fd_, SHUT_RDWR);
  {
    std::lock_guard<std::mutex> lock(mutex_);
    done_cv_.notify_all();
  }
  if (!stopping_.load(std::memory_order_acquire)) sink_("link-lost", reason);
}

namespace {

// An answer (ack or reply) echoes the seq, epoch and request id of the frame it answers, and its resync flag.
FrameHeader answer_to(uint16_t type, const FrameHeader& about) {
  FrameHeader answer{};
  answer.type = type;
  answer.flags = about.flags & kFlagResync;
  answer.seq = about.seq;
  answer.epoch = about.epoch;
  answer.request_id = about.request_id;
  return answer;
}

FrameHeader make_ack(uint16_t type, const FrameHeader& about) {
  FrameHeader ack = answer_to(type, about);
  frame_seal(&ack);
  return ack;
}

// OV_REPLY to `request`: one digest per block, `digests` (request.length / kBlockBytes of them).
FrameHeader make_digest_reply(const FrameHeader& request, const uint64_t* digests, PayloadCheck check) {
  FrameHeader reply = answer_to(kFrameOvReply, request);
  reply.offset = request.offset;
  reply.length = request.length / kBlockBytes * kDigestBytes;
  frame_seal(&reply, digests, check);
  return reply;
}

}  // namespace

int Applier::send_ack(uint16_t type, const FrameHeader& about) {
  FrameHeader ack = make_ack(type, about);
  std::lock_guard<std::mutex> lock(send_mutex_);
  return write_frame(*stream_, ack, nullptr);
}

bool Applier::queue_recv_ack(const FrameHeader& about) {
  recv_acks_[recv_acks_pending_++] = make_ack(kFrameAckRecv, about);
  return recv_acks_pending_ < kRecvAcksMax || flush_recv_acks();
}

bool Applier::flush_recv_acks() {
  if (recv_acks_pending_ == 0) return true;
  iovec iov{recv_acks_, recv_acks_pending_ * sizeof(FrameHeader)};
  recv_acks_pending_ = 0;
  int rc;
  {
    std::lock_guard<std::mutex> lock(send_mutex_);
    rc = stream_->writev(&iov, 1);
  }
  if (rc != 0) fail("data link send: receive ack");
  return rc == 0;
}

bool Applier::overlaps_active_locked(uint64_t offset, uint64_t length) const {
  for (const Active& a : active_) {
    if (a.in_use && offset < a.header.offset + a.header.length && a.header.offset < offset + length) return true;
  }
  return false;
}

void Applier::release_locked(uint32_t active) {
  Active& a = active_[active];
  NRAID_ASSERT(a.in_use);
  if (a.buffer != kNoBuffer) buffers_.give(a.buffer);
  a.in_use = false;
  active_count_--;
  done_cv_.notify_all();
}

void Applier::receive_loop() {
  std::string error;
  if (stream_->handshake(tls_, send_hello_first_, &error) != 0 ||
      exchange_hello(*stream_, send_hello_first_, counters_, &error) != 0) {
    fail(error);
    return;
  }
  uint64_t expected_seq = 1;
  LinkStream& reader = *stream_;
  for (;;) {
    FrameHeader header{};
    // About to wait for the source: what it waits for goes out first.
    if (reader.buffered() < sizeof(header) && !flush_recv_acks()) return;
    int rc = reader.read(&header, sizeof(header));
    if (rc != 0) {
      fail(receive_failure(rc, counters_));
      return;
    }
    FrameCheck check = frame_check_header(header, data_size_bytes_);
    if (check != FrameCheck::kOk) {
      auto& counter = check == FrameCheck::kBadHeaderCrc ? counters_->checksum_errors : counters_->protocol_errors;
      counter.fetch_add(1, std::memory_order_relaxed);
      fail(std::string("frame rejected: ") + frame_check_name(check));
      return;
    }
    bool ordered = header.type == kFrameWrite || header.type == kFrameDiscard || header.type == kFrameZeroes ||
                   header.type == kFrameBarrier || header.type == kFrameRsData || header.type == kFrameReadRequest ||
                   header.type == kFrameOvRequest;
    if (!ordered) {
      counters_->protocol_errors.fetch_add(1, std::memory_order_relaxed);
      fail("frame rejected: type " + std::to_string(header.type) + " is not expected from the source");
      return;
    }
    if (header.seq != expected_seq) {
      counters_->protocol_errors.fetch_add(1, std::memory_order_relaxed);
      fail("frame rejected: sequence " + std::to_string(header.seq) + ", expected " + std::to_string(expected_seq));
      return;
    }
    expected_seq++;
    // A resync's zero frame (a region that reads as zeros on the source) is resync data too.
    const bool resync_data = header.type == kFrameRsData || (header.type == kFrameZeroes && (header.flags & kFlagResync) != 0);
    if (resync_data && !resync_allowed_.load(std::memory_order_acquire)) {
      counters_->protocol_errors.fetch_add(1, std::memory_order_relaxed);
      fail("frame rejected: resync data arrived before the target recorded its resync state");
      return;
    }

    if (header.type == kFrameReadRequest) {
      if (!flush_recv_acks() || !serve_read(header)) return;
      continue;
    }
    if (header.type == kFrameOvRequest) {
      if (!flush_recv_acks() || !serve_digests(header)) return;
      continue;
    }

    if (header.type == kFrameBarrier) {
      if (!flush_recv_acks()) return;
      counters_->frames_received.fetch_add(1, std::memory_order_relaxed);
      // Every earlier frame on disk, then flushed, then acked.
      {
        std::unique_lock<std::mutex> lock(mutex_);
        done_cv_.wait(lock, [&] { return failed() || active_count_ == 0; });
      }
      if (failed()) return;
      rc = disk_->flush();
      if (rc != 0) {
        disk_failed("flush of the target's disk failed: ", rc);
        return;
      }
      if (send_ack(kFrameBarrierAck, header) != 0) {
        fail("data link send: barrier ack");
        return;
      }
      continue;
    }

    uint32_t buffer = kNoBuffer;
    if (frame_has_payload(header.type)) {
      {
        std::unique_lock<std::mutex> lock(mutex_);
        if (buffers_.empty()) {
          lock.unlock();
          flush_recv_acks();  // a failure ends the wait below
          lock.lock();
        }
        done_cv_.wait(lock, [&] { return failed() || !buffers_.empty(); });
        if (failed()) return;
        buffer = buffers_.take(header.length);
      }
      if (reader.buffered() < header.length && !flush_recv_acks()) {
        std::lock_guard<std::mutex> lock(mutex_);
        buffers_.give(buffer);
        return;
      }
      rc = reader.read(buffers_[buffer], header.length);
      bool intact = rc == 0 && payload_intact(payload_check_, header, buffers_[buffer]);
      if (!intact) {
        {
          std::lock_guard<std::mutex> lock(mutex_);
          buffers_.give(buffer);
        }
        if (rc != 0) {
          // The end of the stream inside a payload reads as it does between frames, not as "Broken pipe".
          fail(receive_failure(rc, counters_));
        } else {
          counters_->checksum_errors.fetch_add(1, std::memory_order_relaxed);
          fail("frame rejected: payload checksum mismatch at offset " + std::to_string(header.offset));
        }
        return;
      }
      counters_->bytes_received.fetch_add(header.length, std::memory_order_relaxed);
      if (header.type == kFrameRsData) counters_->resync_bytes_received.fetch_add(header.length, std::memory_order_relaxed);
    }
    counters_->frames_received.fetch_add(1, std::memory_order_relaxed);
    if ((header.flags & kFlagWantRecvAck) != 0 && !queue_recv_ack(header)) {
      if (buffer != kNoBuffer) {
        std::lock_guard<std::mutex> lock(mutex_);
        buffers_.give(buffer);
      }
      return;
    }
    // Overlapping frames apply in sequence order: wait for the earlier ones.
    std::unique_lock<std::mutex> lock(mutex_);
    auto can_start = [&] {
      return failed() || (!overlaps_active_locked(header.offset, header.length) && active_count_ < kActiveMax);
    };
    if (!can_start()) {
      lock.unlock();
      flush_recv_acks();  // a failure ends the wait below
      lock.lock();
    }
    done_cv_.wait(lock, can_start);
    if (failed()) {
      if (buffer != kNoBuffer) buffers_.give(buffer);
      return;
    }
    NRAID_ASSERT(header.type != kFrameRsData || resync_allowed_.load(std::memory_order_acquire));
    uint32_t active = 0;
    while (active_[active].in_use) active++;
    active_[active] = Active{true, header, buffer};
    active_count_++;
    // Discard and zeroes have no asynchronous form: the receiver applies them.
    // So it does a small frame when nothing else is in flight and nothing more
    // has arrived, which saves the reaper's wake-up at low queue depth.
    bool apply_here = buffer == kNoBuffer ||
                      (header.length <= kInlineApplyBytesMax && active_count_ == 1 && reader.buffered() == 0);
    if (!apply_here) io_in_flight_++;
    lock.unlock();
    if (apply_here) {
      flush_recv_acks();  // on a failure apply_inline applies nothing
      apply_inline(active);
      continue;
    }
    rc = io_.submit_write(disk_, buffers_[buffer], header.length, header.offset, active);
    if (rc != 0) {
      disk_failed("write to the target\'s disk failed: ", rc);
      std::lock_guard<std::mutex> relock(mutex_);
      io_in_flight_--;
      release_locked(active);
      return;
    }
  }
}

void Applier::disk_failed(const char* what, int rc) {
  // The control plane decides (on-io-error): detach and leave, or pass on. The link fails either way.
  sink_("disk-failed", std::string(what) + strerror(-rc));
  fail(std::string(what) + strerror(-rc));
}

bool Applier::serve_digests(const FrameHeader& request) {
  counters_->frames_received.fetch_add(1, std::memory_order_relaxed);
  if (request.length == 0) return send_digest_reply(request, nullptr);
  // Read as a write is applied: asynchronously, into a payload buffer, as an entry of the active
  // set. Every earlier write to these blocks is on the disk first, and every later one waits for
  // this read, so both sides digest the same point of the write stream. The reaper digests and replies.
  uint32_t buffer;
  uint32_t active = 0;
  {
    std::unique_lock<std::mutex> lock(mutex_);
    done_cv_.wait(lock, [&] {
      return failed() || (!buffers_.empty() && active_count_ < kActiveMax &&
                          !overlaps_active_locked(request.offset, request.length));
    });
    if (failed()) return false;
    buffer = buffers_.take(request.length);
    while (active_[active].in_use) active++;
    active_[active] = Active{true, request, buffer};
    active_count_++;
    io_in_flight_++;
  }
  int rc = io_.submit_read(disk_, buffers_[buffer], request.length, request.offset, active);
  if (rc != 0) {
    disk_failed("read of the target's disk for digests failed: ", rc);
    std::lock_guard<std::mutex> lock(mutex_);
    io_in_flight_--;
    release_locked(active);
    return false;
  }
  return true;
}

bool Applier::send_digest_reply(const FrameHeader& request, const uint64_t* digests) {
  FrameHeader reply = make_digest_reply(request, digests, payload_check_);
  std::lock_guard<std::mutex> lock(send_mutex_);
  if (write_frame(*stream_, reply, digests) != 0) {
    fail("data link send: digest reply");
    return false;
  }
  return true;
}

bool Applier::serve_read(const FrameHeader& request) {
  counters_->frames_received.fetch_add(1, std::memory_order_relaxed);
  {
    // Every earlier write to these blocks is on the disk first: the reader sees what it wrote.
    std::unique_lock<std::mutex> lock(mutex_);
    done_cv_.wait(lock, [&] { return failed() || !overlaps_active_locked(request.offset, request.length); });
  }
  if (failed()) return false;
  FrameHeader reply{};
  reply.type = kFrameReadReply;
  reply.seq = request.seq;
  reply.epoch = request.epoch;
  reply.offset = request.offset;
  reply.request_id = request.request_id;
  int rc = request.length == 0 ? 0 : disk_->read(read_buffer_, request.length, request.offset);
  if (rc == 0) {
    reply.length = request.length;
  } else {
    // This disk fails too: the reader gets EIO, and the control plane hears of it.
    reply.flags = kFlagReadError;
    sink_("disk-failed", std::string("read for the peer failed: ") + strerror(-rc));
  }
  frame_seal(&reply, read_buffer_, payload_check_);
  std::lock_guard<std::mutex> lock(send_mutex_);
  if (write_frame(*stream_, reply, rc == 0 ? read_buffer_ : nullptr) != 0) {
    fail("data link send: read reply");
    return false;
  }
  return true;
}

void Applier::apply_inline(uint32_t active) {
  const Active& a = active_[active];  // only the receiver changes an entry it holds
  const FrameHeader& h = a.header;
  int rc = 0;
  if (!failed()) {
    switch (h.type) {
      case kFrameWrite:
      case kFrameRsData: rc = disk_->write(buffers_[a.buffer], h.length, h.offset); break;
      case kFrameDiscard: rc = disk_->discard(h.offset, h.length); break;
      // A resync's zeros leave a file sparse (punch hole), or BLKZEROOUT on a block device.
      case kFrameZeroes:
        rc = (h.flags & kFlagResync) != 0 ? disk_->zero_out_sparse(h.offset, h.length) : disk_->zero_out(h.offset, h.length);
        if (rc == 0 && (h.flags & kFlagResync) != 0) counters_->zero_bytes_applied.fetch_add(h.length, std::memory_order_relaxed);
        break;
      default: NRAID_UNREACHABLE("a frame type the receiver never applies inline");
    }
    if (rc != 0) {
      disk_failed("write to the target\'s disk failed: ", rc);
    } else {
      if (frame_has_payload(h.type)) counters_->bytes_applied.fetch_add(h.length, std::memory_order_relaxed);
      if (send_ack(kFrameAckWrite, h) != 0) fail("data link send: write ack");
    }
  }
  std::lock_guard<std::mutex> lock(mutex_);
  release_locked(active);
}

// Takes completions in batches; their write acks and digest replies leave in
// one write, then their entries and buffers are released.
void Applier::reap_loop() {
  constexpr uint32_t kBatch = kReapMax;
  AsyncIo::Completion done[kBatch];
  Active taken[kBatch];
  FrameHeader acks[kBatch];
  FrameHeader replies[kBatch];
  iovec iov[1 + 2 * kBatch];
  bool stop_asked = false;
  for (;;) {
    {
      std::lock_guard<std::mutex> lock(mutex_);
      if (stop_asked && io_in_flight_ == 0) return;
    }
    int count = io_.reap(done, kBatch);
    if (count < 0) {
      fail(std::string("waiting for writes to the target's disk: ") + strerror(-count));
      return;  // stop() closes the AIO context, which waits for what is still in flight
    }
    NRAID_ASSERT(static_cast<uint32_t>(count) <= kBatch);
    {
      std::lock_guard<std::mutex> lock(mutex_);
      for (int i = 0; i < count; i++) {
        if (done[i].tag != kWakeTag) taken[i] = active_[done[i].tag];
      }
    }
    uint32_t acks_count = 0;
    uint32_t iov_count = 1;  // iov[0]: the acks
    int error = 0;  // the first failed write of the batch; the others' acks still go out first
    bool read_error = false;  // whether that was a digest read
    for (int i = 0; i < count; i++) {
      if (done[i].tag == kWakeTag) {
        stop_asked = true;
        continue;
      }
      const FrameHeader& h = taken[i].header;
      const bool digests = h.type == kFrameOvRequest;
      uint8_t* data = buffers_[taken[i].buffer];
      const int64_t result = done[i].result;
      int rc = result < 0 ? static_cast<int>(result) : 0;
      if (result >= 0 && static_cast<uint64_t>(result) < h.length) {
        // A short read or write (not seen on block devices): the rest, here and now, if it is aligned as O_DIRECT needs.
        const auto moved = static_cast<uint64_t>(result);
        rc = moved % disk_->logical_block_bytes() != 0 ? -EIO
             : digests ? disk_->read(data + moved, h.length - moved, h.offset + moved)
                       : disk_->write(data + moved, h.length - moved, h.offset + moved);
      }
      if (rc != 0) {
        if (error == 0) {
          error = rc;
          read_error = digests;
        }
      } else if (digests) {
        uint64_t* out = &reply_digests_[uint64_t{taken[i].buffer} * (kDigestReplyBytesMax / kDigestBytes)];
        block_digests(data, h.length, kBlockBytes, out);
        counters_->digest_bytes_read.fetch_add(h.length, std::memory_order_relaxed);
        FrameHeader& reply = replies[iov_count / 2];
        reply = make_digest_reply(h, out, payload_check_);
        iov[iov_count++] = {&reply, sizeof(reply)};
        iov[iov_count++] = {out, reply.length};
      } else {
        counters_->bytes_applied.fetch_add(h.length, std::memory_order_relaxed);
        acks[acks_count++] = make_ack(kFrameAckWrite, h);
      }
    }
    iov[0] = {acks, acks_count * sizeof(FrameHeader)};
    if (iov_count > 1 || acks_count > 0) {
      if (!failed()) {
        int rc;
        {
          std::lock_guard<std::mutex> lock(send_mutex_);
          rc = acks_count > 0 ? stream_->writev(iov, static_cast<int>(iov_count))
                              : stream_->writev(iov + 1, static_cast<int>(iov_count - 1));
        }
        if (rc != 0) fail("data link send: write ack");
      }
    }
    if (error != 0) {
      disk_failed(read_error ? "read of the target's disk for digests failed: " : "write to the target\'s disk failed: ",
                  error);
    }
    std::lock_guard<std::mutex> lock(mutex_);
    for (int i = 0; i < count; i++) {
      if (done[i].tag == kWakeTag) continue;
      io_in_flight_--;
      release_locked(static_cast<uint32_t>(done[i].tag));
    }
  }
}

}  // namespace nraid
