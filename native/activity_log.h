#pragma once
// The activity log (DESIGN.md §3 step 2): before a write touches a 4 MiB
// extent that is not "hot", a transaction naming every hot extent is written
// and made durable. After a crash of the Primary only those extents (plus the
// bitmap on disk) can differ from the peer, so a rejoin resyncs them, never
// the whole device. An extent stays hot while a write to it is in flight or
// not yet acknowledged as written by the peer; evicting it first writes the
// bitmap block that covers it, so its dirty bits survive a crash.
#include <atomic>
#include <condition_variable>
#include <cstdint>
#include <memory>
#include <mutex>
#include <vector>

#include "bitmap.h"
#include "local_io.h"
#include "zeroed_array.h"

namespace nraid {

struct ActivityLogLayout {
  uint64_t area_offset_bytes;
  uint64_t area_size_bytes;
  uint64_t extent_bytes;
  uint64_t bitmap_offset_bytes;  // on-disk bitmap, for writing back evicted extents' bits
  // The newest sequence in the ring on disk (a previous run's): this run's
  // transactions continue above it, or a crash recovery that picks the newest
  // would pick an older run's transaction.
  uint64_t sequence_start = 0;
};

class ActivityLog {
 public:
  ActivityLog(LocalDisk* disk, Bitmap* bitmap, uint64_t data_size_bytes, const ActivityLogLayout& layout);
  ~ActivityLog();
  ActivityLog(const ActivityLog&) = delete;
  ActivityLog& operator=(const ActivityLog&) = delete;

  // Makes every extent of the range hot (durably) and pins it; 0 or -errno.
  int acquire(uint64_t offset_bytes, uint64_t length_bytes);
  // Unpins: the write is on both disks, or its region is marked in the bitmap.
  void release(uint64_t offset_bytes, uint64_t length_bytes);
  // An empty transaction: a fresh start when this node becomes Primary.
  int reset();
  // Writes back the on-disk bitmap's blocks that changed since they were last
  // written (every block the first time), under the same lock as an eviction's
  // block write, so that a stale snapshot never overwrites newer bits. With
  // `flush` the blocks are durable on return; without, they ride on the next
  // flush (the log covers the hot extents meanwhile). Returns the bytes
  // written or -errno.
  int64_t write_bitmap(bool flush);
  // The disk failed and was detached (on-io-error = detach): extents are still
  // pinned and tracked in memory, nothing more is written to the disk.
  void set_detached() { detached_.store(true, std::memory_order_release); }
  bool detached() const { return detached_.load(std::memory_order_acquire); }
  uint64_t transactions() const { return transactions_.load(std::memory_order_relaxed); }
  uint32_t hot_extents() const;

 private:
  bool is_hot(uint64_t extent) const;
  void set_hot(uint64_t extent, bool hot);
  // Fills tx_buffer_ with a transaction naming every listed extent; its offset.
  uint64_t build_transaction_locked();
  // Writes and flushes tx_buffer_: only one writer at a time (committing_).
  int write_transaction(uint64_t offset_bytes);
  std::atomic<bool> detached_{false};
  int write_bitmap_block_locked(uint64_t extent);
  // 1 written, 0 unchanged (skipped when only_if_changed), or -errno.
  int write_bitmap_block_at_locked(uint64_t block, bool only_if_changed);
  bool evict_one_locked();

  LocalDisk* disk_;
  Bitmap* bitmap_;
  const uint64_t data_size_bytes_;
  const ActivityLogLayout layout_;
  const uint64_t extents_;
  const uint32_t slots_;
  ZeroedArray<std::atomic<uint32_t>> pins_;
  ZeroedArray<std::atomic<uint32_t>> last_used_;
  ZeroedArray<std::atomic<uint64_t>> hot_bits_;
  std::atomic<uint32_t> clock_{0};
  std::atomic<uint64_t> transactions_{0};
  std::mutex mutex_;
  std::vector<uint32_t> hot_list_;  // under mutex_
  std::vector<size_t> eviction_order_;  // under mutex_, scratch
  std::vector<uint32_t> pending_;       // the commit's not-yet-hot extents: its committer's
  std::condition_variable commit_cv_;   // a commit ended
  bool committing_ = false;             // under mutex_
  uint64_t sequence_ = 0;           // under mutex_
  uint8_t* buffer_ = nullptr;       // one bitmap block, aligned: under mutex_
  uint8_t* tx_buffer_ = nullptr;    // one transaction, aligned: the committer's
  // Every on-disk bitmap block was written once by write_bitmap (which writes all
  // of them the first time); after that the bitmap's change bits say which to write.
  bool written_known_ = false;
};

}  // namespace nraid
