#pragma once
// The target side of the data link (Secondary, or SyncTarget). One receiver
// thread checks every frame before anything touches the disk (header crc,
// payload crc, bounds, type, sequence), then submits its write to the disk
// asynchronously and reads on: non-overlapping frames are written
// concurrently, overlapping ones in sequence order. One reaper thread takes
// the completions and sends their write acks, many in one write. A barrier
// waits for every earlier frame, flushes, then acks. A frame that fails a
// check is never applied: the link drops and the source marks the regions dirty.
#include <atomic>
#include <condition_variable>
#include <cstdint>
#include <memory>
#include <mutex>
#include <string>
#include <thread>
#include <vector>

#include "bitmap.h"
#include "frame.h"
#include "io_buffers.h"
#include "limits.h"
#include "link_io.h"
#include "link_stream.h"
#include "local_io.h"

namespace nraid {

class Applier {
 public:
  Applier(LocalDisk* disk, uint64_t data_size_bytes, LinkCounters* counters, EventSink sink);
  ~Applier();
  Applier(const Applier&) = delete;
  Applier& operator=(const Applier&) = delete;

  // `send_hello_first`: the acceptor of the data connection (with TLS, its server).
  void start(int fd, bool send_hello_first, const TlsOptions& tls);
  void stop(const std::string& reason);
  bool failed() const { return failed_.load(std::memory_order_acquire); }
  // Durable state before data: until the control plane says that the
  // target's resync state (Inconsistent, the new bitmap UUID) is on its disk,
  // RS_DATA is a protocol error and never applied. Replicated WRITEs are not gated.
  void allow_resync() { resync_allowed_.store(true, std::memory_order_release); }

 private:
  // A frame between its check and its ack; its index is the tag of its disk write.
  struct Active {
    bool in_use = false;
    FrameHeader header{};
    uint32_t buffer = 0;  // index into buffers_, or kNoBuffer
  };

  void receive_loop();
  void reap_loop();
  // Applies a frame on the calling thread, acks it and releases its entry.
  void apply_inline(uint32_t active);
  void release_locked(uint32_t active);
  void fail(const std::string& reason);
  // This node's disk failed under a frame: reported ("disk-failed"), then the link fails.
  void disk_failed(const char* what, int rc);
  int send_ack(uint16_t type, const FrameHeader& about);
  // Protocol B's receive acks of one burst leave in one write: the receiver
  // queues them and sends them before it would wait for anything.
  // Both fail the link on a send error and return false.
  bool queue_recv_ack(const FrameHeader& about);
  bool flush_recv_acks();
  bool overlaps_active_locked(uint64_t offset, uint64_t length) const;
  // A Diskless Primary's READ_REQUEST: after the overlapping writes before it, read here and reply.
  bool serve_read(const FrameHeader& request);
  // OV_REQUEST: after the overlapping writes before it, read here (asynchronously; the reaper
  // replies with one digest per block).
  bool serve_digests(const FrameHeader& request);
  bool send_digest_reply(const FrameHeader& request, const uint64_t* digests);

  LocalDisk* disk_;
  const uint64_t data_size_bytes_;
  LinkCounters* counters_;
  EventSink sink_;
  int fd_ = -1;
  std::unique_ptr<LinkStream> stream_;  // over fd_, made by start()
  bool send_hello_first_ = false;
  TlsOptions tls_;
  PayloadCheck payload_check_ = PayloadCheck::kCrc32c;  // of tls_

  std::mutex send_mutex_;  // acks come from several threads
  FrameHeader recv_acks_[kRecvAcksMax];  // the receiver's own
  uint32_t recv_acks_pending_ = 0;
  std::mutex mutex_;       // buffers, active set
  std::condition_variable done_cv_;  // the receiver waits for buffers, overlaps, an empty pipe
  PayloadBuffers buffers_{kApplyLargeBuffers, kApplyBuffers - kApplyLargeBuffers, kRequestBytesMax, kApplyLargePayloadBytes};
  uint8_t* read_buffer_ = nullptr;  // the receiver's, for READ_REPLY
  // The reaper's digests for OV_REPLY, one reply's worth per payload buffer (the one read).
  std::unique_ptr<uint64_t[]> reply_digests_;
  std::vector<Active> active_;
  uint32_t active_count_ = 0;
  uint32_t io_in_flight_ = 0;  // submitted and not reaped (writes, and reads for digests)
  AsyncIo io_;
  int wake_fd_ = -1;  // an eventfd: stop() wakes the reaper through it
  std::atomic<bool> resync_allowed_{false};
  std::atomic<bool> failed_{false};
  std::atomic<bool> stopping_{false};
  std::thread receiver_;
  std::thread reaper_;
};

}  // namespace nraid
