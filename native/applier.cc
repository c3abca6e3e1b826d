#include "applier.h"

#include <errno.h>
#include <stdlib.h>
#include <string.h>
#include <sys/socket.h>
#include <unistd.h>

#include <cassert>

namespace nraid {
namespace {

constexpr uint32_t kNoBuffer = 0xFFFFFFFFu;
// Frames without payload (discard, zeroes) also hold an active entry.
constexpr uint32_t kActiveMax = kApplyBuffers + kApplyThreads;

}  // namespace

Applier::Applier(LocalDisk* disk, uint64_t data_size_bytes, LinkCounters* counters, EventSink sink)
    : disk_(disk), data_size_bytes_(data_size_bytes), counters_(counters), sink_(std::move(sink)) {
  buffers_.resize(kApplyBuffers);
  for (uint32_t i = 0; i < kApplyBuffers; i++) {
    void* buffer = nullptr;
    if (posix_memalign(&buffer, kBlockBytes, kRequestBytesMax) != 0) abort();
    buffers_[i] = static_cast<uint8_t*>(buffer);
    free_buffers_.push_back(i);
  }
  active_.resize(kActiveMax);
  work_.resize(kActiveMax);
}

Applier::~Applier() {
  stop("closed");
  for (uint8_t* buffer : buffers_) free(buffer);
}

void Applier::start(int fd, bool send_hello_first) {
  assert(fd_ < 0);
  fd_ = fd;
  send_hello_first_ = send_hello_first;
  prepare_socket(fd_);
  for (uint32_t i = 0; i < kApplyThreads; i++) appliers_.emplace_back([this] { apply_loop(); });
  receiver_ = std::thread([this] { receive_loop(); });
}

void Applier::stop(const std::string& reason) {
  stopping_.store(true, std::memory_order_release);
  fail(reason);
  if (receiver_.joinable()) receiver_.join();
  for (auto& thread : appliers_) {
    if (thread.joinable()) thread.join();
  }
  appliers_.clear();
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
    work_cv_.notify_all();
    done_cv_.notify_all();
  }
  if (!stopping_.load(std::memory_order_acquire)) sink_("link-lost", reason);
}

namespace {

// An ack echoes the seq, epoch and request id of the frame it answers.
FrameHeader make_ack(uint16_t type, const FrameHeader& about) {
  FrameHeader ack{};
  ack.type = type;
  ack.flags = about.flags & kFlagResync;
  ack.seq = about.seq;
  ack.epoch = about.epoch;
  ack.request_id = about.request_id;
  frame_seal(&ack, nullptr);
  return ack;
}

}  // namespace

int Applier::send_ack(uint16_t type, const FrameHeader& about) {
  FrameHeader ack = make_ack(type, about);
  std::lock_guard<std::mutex> lock(send_mutex_);
  return write_frame(fd_, ack, nullptr);
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
    rc = writev_full(fd_, &iov, 1);
  }
  if (rc != 0) fail("data link send: receive ack");
  return rc == 0;
}

bool Applier::overlaps_active_locked(uint64_t offset, uint64_t length) const {
  for (const Active& a : active_) {
    if (a.in_use && offset < a.offset + a.length && a.offset < offset + length) return true;
  }
  return false;
}

uint32_t Applier::active_count_locked() const {
  uint32_t count = 0;
  for (const Active& a : active_) count += a.in_use ? 1 : 0;
  return count;
}

void Applier::receive_loop() {
  std::string error;
  if (exchange_hello(fd_, send_hello_first_, counters_, &error) != 0) {
    fail(error);
    return;
  }
  uint64_t expected_seq = 1;
  SocketReader reader(fd_);
  for (;;) {
    FrameHeader header{};
    // About to wait for the source: what it waits for goes out first.
    if (reader.buffered() < sizeof(header) && !flush_recv_acks()) return;
    int rc = reader.read(&header, sizeof(header));
    if (rc != 0) {
      fail(rc == -EPIPE ? "data link closed by the peer" : std::string("data link receive: ") + strerror(-rc));
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
                   header.type == kFrameBarrier || header.type == kFrameRsData;
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

    if (header.type == kFrameBarrier) {
      if (!flush_recv_acks()) return;
      counters_->frames_received.fetch_add(1, std::memory_order_relaxed);
      // Every earlier frame on disk, then flushed, then acked.
      {
        std::unique_lock<std::mutex> lock(mutex_);
        done_cv_.wait(lock, [&] { return failed() || active_count_locked() == 0; });
      }
      if (failed()) return;
      rc = disk_->flush();
      if (rc != 0) {
        fail(std::string("flush of the target's disk failed: ") + strerror(-rc));
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
        if (free_buffers_.empty()) {
          lock.unlock();
          flush_recv_acks();  // a failure ends the wait below
          lock.lock();
        }
        done_cv_.wait(lock, [&] { return failed() || !free_buffers_.empty(); });
        if (failed()) return;
        buffer = free_buffers_.back();
        free_buffers_.pop_back();
      }
      if (reader.buffered() < header.length && !flush_recv_acks()) {
        std::lock_guard<std::mutex> lock(mutex_);
        free_buffers_.push_back(buffer);
        return;
      }
      rc = reader.read(buffers_[buffer], header.length);
      bool intact = rc == 0 && crc32c(0, buffers_[buffer], header.length) == header.payload_crc;
      if (!intact) {
        {
          std::lock_guard<std::mutex> lock(mutex_);
          free_buffers_.push_back(buffer);
        }
        if (rc != 0) {
          fail(std::string("data link receive: ") + strerror(-rc));
        } else {
          counters_->checksum_errors.fetch_add(1, std::memory_order_relaxed);
          fail("frame rejected: payload checksum mismatch at offset " + std::to_string(header.offset));
        }
        return;
      }
      counters_->bytes_received.fetch_add(header.length, std::memory_order_relaxed);
    }
    counters_->frames_received.fetch_add(1, std::memory_order_relaxed);
    if ((header.flags & kFlagWantRecvAck) != 0 && !queue_recv_ack(header)) {
      if (buffer != kNoBuffer) {
        std::lock_guard<std::mutex> lock(mutex_);
        free_buffers_.push_back(buffer);
      }
      return;
    }
    // Overlapping frames apply in sequence order: wait for the earlier ones.
    std::unique_lock<std::mutex> lock(mutex_);
    auto can_start = [&] {
      return failed() || (!overlaps_active_locked(header.offset, header.length) && work_count_ < kActiveMax &&
                          active_count_locked() < kActiveMax);
    };
    if (!can_start()) {
      lock.unlock();
      flush_recv_acks();  // a failure ends the wait below
      lock.lock();
    }
    done_cv_.wait(lock, can_start);
    if (failed()) {
      if (buffer != kNoBuffer) free_buffers_.push_back(buffer);
      return;
    }
    uint32_t slot = 0;
    while (active_[slot].in_use) slot++;
    active_[slot] = Active{true, header.offset, header.length};
    Work work{header, buffer, slot};
    // Nothing else in flight, nothing more already received and a small frame:
    // apply right here, which saves a thread hand-off at low queue depth. A
    // large one goes to an apply thread, so the receiver reads on meanwhile.
    if (header.length <= kInlineApplyBytesMax && work_count_ == 0 && active_count_locked() == 1 &&
        reader.buffered() == 0) {
      lock.unlock();
      flush_recv_acks();  // on a failure apply_one applies nothing
      apply_one(work);
      continue;
    }
    work_[(work_head_ + work_count_) % kActiveMax] = work;
    work_count_++;
    work_cv_.notify_one();
  }
}

void Applier::apply_one(const Work& work) {
  const FrameHeader& h = work.header;
  int rc = 0;
  if (!failed()) {
    switch (h.type) {
      case kFrameWrite:
      case kFrameRsData: rc = disk_->write(buffers_[work.buffer], h.length, h.offset); break;
      case kFrameDiscard: rc = disk_->discard(h.offset, h.length); break;
      case kFrameZeroes: rc = disk_->zero_out(h.offset, h.length); break;
      default: assert(false);
    }
    if (rc != 0) {
      fail(std::string("write to the target's disk failed: ") + strerror(-rc));
    } else {
      if (frame_has_payload(h.type)) counters_->bytes_applied.fetch_add(h.length, std::memory_order_relaxed);
      if (send_ack(kFrameAckWrite, h) != 0) fail("data link send: write ack");
    }
  }
  std::lock_guard<std::mutex> lock(mutex_);
  active_[work.active].in_use = false;
  if (work.buffer != kNoBuffer) free_buffers_.push_back(work.buffer);
  done_cv_.notify_all();
}

void Applier::apply_loop() {
  for (;;) {
    Work work;
    {
      std::unique_lock<std::mutex> lock(mutex_);
      work_cv_.wait(lock, [&] { return failed() || work_count_ > 0; });
      if (work_count_ == 0) return;  // failed and drained
      work = work_[work_head_];
      work_head_ = (work_head_ + 1) % kActiveMax;
      work_count_--;
    }
    apply_one(work);
  }
}

}  // namespace nraid
