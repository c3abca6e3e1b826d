#pragma once
// The target side of the data link (Secondary, or SyncTarget). One receiver
// thread checks every frame before anything touches the disk (header crc,
// payload crc, bounds, type, sequence); apply threads write non-overlapping
// frames concurrently, overlapping ones in sequence order; a barrier waits
// for every earlier frame, flushes, then acks. A frame that fails a check is
// never applied: the link drops and the source marks the regions dirty.
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
#include "limits.h"
#include "link_io.h"
#include "local_io.h"

namespace nraid {

class Applier {
 public:
  Applier(LocalDisk* disk, uint64_t data_size_bytes, LinkCounters* counters, EventSink sink);
  ~Applier();
  Applier(const Applier&) = delete;
  Applier& operator=(const Applier&) = delete;

  void start(int fd, bool send_hello_first);
  void stop(const std::string& reason);
  bool failed() const { return failed_.load(std::memory_order_acquire); }

 private:
  struct Work {
    FrameHeader header;
    uint32_t buffer;  // index into buffers_, or kNoBuffer
    uint32_t active;  // index into active_
  };
  struct Active {
    bool in_use = false;
    uint64_t offset = 0;
    uint64_t length = 0;
  };

  void receive_loop();
  void apply_loop();
  void apply_one(const Work& work);
  void fail(const std::string& reason);
  int send_ack(uint16_t type, const FrameHeader& about);
  // Protocol B's receive acks of one burst leave in one write: the receiver
  // queues them and sends them before it would wait for anything.
  // Both fail the link on a send error and return false.
  bool queue_recv_ack(const FrameHeader& about);
  bool flush_recv_acks();
  bool overlaps_active_locked(uint64_t offset, uint64_t length) const;
  uint32_t active_count_locked() const;

  LocalDisk* disk_;
  const uint64_t data_size_bytes_;
  LinkCounters* counters_;
  EventSink sink_;
  int fd_ = -1;
  bool send_hello_first_ = false;

  std::mutex send_mutex_;  // acks come from several threads
  static constexpr uint32_t kRecvAcksMax = 64;
  FrameHeader recv_acks_[kRecvAcksMax];  // the receiver's own
  uint32_t recv_acks_pending_ = 0;
  std::mutex mutex_;       // buffers, active set, work queue
  std::condition_variable work_cv_;  // apply threads wait for work
  std::condition_variable done_cv_;  // the receiver waits for buffers, overlaps, an empty pipe
  std::vector<uint8_t*> buffers_;
  std::vector<uint32_t> free_buffers_;
  std::vector<Active> active_;
  std::vector<Work> work_;  // ring
  uint32_t work_head_ = 0;
  uint32_t work_count_ = 0;
  std::atomic<bool> failed_{false};
  std::atomic<bool> stopping_{false};
  std::thread receiver_;
  std::vector<std::thread> appliers_;
};

}  // namespace nraid
