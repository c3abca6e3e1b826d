#include "activity_log.h"

#include <errno.h>
#include <stdlib.h>
#include <string.h>

#include <algorithm>

#include "crc32c.h"
#include "limits.h"
#include "nraid_assert.h"

namespace nraid {

ActivityLog::ActivityLog(LocalDisk* disk, Bitmap* bitmap, uint64_t data_size_bytes, const ActivityLogLayout& layout)
    : disk_(disk),
      bitmap_(bitmap),
      data_size_bytes_(data_size_bytes),
      layout_(layout),
      extents_((data_size_bytes + layout.extent_bytes - 1) / layout.extent_bytes),
      slots_(static_cast<uint32_t>(layout.area_size_bytes / kActivityTransactionBytes)),
      pins_(extents_),
      last_used_(extents_),
      hot_bits_((extents_ + 63) / 64) {
  NRAID_ASSERT(slots_ > 0);
  sequence_ = layout_.sequence_start;
  NRAID_ASSERT(layout_.extent_bytes % kBlockBytes == 0);
  // pins_, last_used_ and hot_bits_ start as zeros, resident only where extents are used.
  void* buffer = nullptr;
  if (posix_memalign(&buffer, kBlockBytes, kActivityTransactionBytes) != 0) abort();
  buffer_ = static_cast<uint8_t*>(buffer);
  if (posix_memalign(&buffer, kBlockBytes, kActivityTransactionBytes) != 0) abort();
  tx_buffer_ = static_cast<uint8_t*>(buffer);
  hot_list_.reserve(kActivityExtentsMax);
  eviction_order_.reserve(kActivityExtentsMax);
  pending_.reserve(kActivityExtentsMax);
}

ActivityLog::~ActivityLog() {
  free(buffer_);
  free(tx_buffer_);
}

bool ActivityLog::is_hot(uint64_t extent) const {
  return (hot_bits_[extent / 64].load(std::memory_order_seq_cst) >> (extent % 64)) & 1;
}

void ActivityLog::set_hot(uint64_t extent, bool hot) {
  uint64_t mask = 1ull << (extent % 64);
  if (hot) hot_bits_[extent / 64].fetch_or(mask, std::memory_order_seq_cst);
  else hot_bits_[extent / 64].fetch_and(~mask, std::memory_order_seq_cst);
}

uint32_t ActivityLog::hot_extents() const {
  uint32_t count = 0;
  for (uint64_t i = 0; i < (extents_ + 63) / 64; i++) count += static_cast<uint32_t>(__builtin_popcountll(hot_bits_[i].load()));
  return count;
}

uint64_t ActivityLog::build_transaction_locked() {
  memset(tx_buffer_, 0, kActivityTransactionBytes);
  sequence_++;
  // magic, layout version, sequence (low, high), extents listed, extent size in blocks (src/activity-log.ts reads it).
  uint32_t header[kActivityHeaderBytes / 4] = {kActivityMagic,
                                               kActivityLayoutVersion,
                                               static_cast<uint32_t>(sequence_),
                                               static_cast<uint32_t>(sequence_ >> 32),
                                               static_cast<uint32_t>(hot_list_.size()),
                                               static_cast<uint32_t>(layout_.extent_bytes / kBlockBytes),
                                               0,
                                               0};
  memcpy(tx_buffer_, header, sizeof(header));
  memcpy(tx_buffer_ + kActivityHeaderBytes, hot_list_.data(), hot_list_.size() * 4);
  uint32_t crc = crc32c(0, tx_buffer_, kActivityTransactionBytes - 4);
  memcpy(tx_buffer_ + kActivityTransactionBytes - 4, &crc, 4);
  return layout_.area_offset_bytes + (sequence_ % slots_) * kActivityTransactionBytes;
}

int ActivityLog::write_transaction(uint64_t offset_bytes) {
  if (detached()) return 0;
  int rc = disk_->write(tx_buffer_, kActivityTransactionBytes, offset_bytes);
  if (rc == 0) rc = disk_->flush();
  if (rc == 0) transactions_.fetch_add(1, std::memory_order_relaxed);
  return rc;
}

int ActivityLog::write_bitmap_block_locked(uint64_t extent) {
  // The bits of one extent lie in one 4 KiB block of the on-disk bitmap (little-endian words).
  uint64_t first_bit = extent * layout_.extent_bytes / bitmap_->granularity_bytes();
  int rc = write_bitmap_block_at_locked(first_bit / (kBlockBytes * 8), false);
  return rc < 0 ? rc : 0;
}

int ActivityLog::write_bitmap_block_at_locked(uint64_t block, bool only_if_changed) {
  constexpr uint64_t kWordsPerBlock = Bitmap::kWordsPerBlock;
  uint64_t first_word = block * kWordsPerBlock;
  uint64_t words = std::min<uint64_t>(kWordsPerBlock, bitmap_->words() - first_word);
  // Taken before the snapshot: a word that changes after this point marks the block again,
  // so the next write-back carries it even when this snapshot missed it.
  bool changed = bitmap_->take_changed(block);
  // A look costs less than a write, and most blocks did not change.
  if (only_if_changed && written_known_ && !changed) return 0;
  if (detached()) {  // an eviction of a detached disk: the bits stay in memory only
    if (changed) bitmap_->mark_changed(block);
    return 0;
  }
  memset(buffer_, 0, kBlockBytes);
  bitmap_->snapshot_range(first_word, words, reinterpret_cast<uint64_t*>(buffer_));
  int rc = disk_->write(buffer_, kBlockBytes, layout_.bitmap_offset_bytes + block * kBlockBytes);
  if (rc != 0) {
    bitmap_->mark_changed(block);  // still to be written
    return rc;
  }
  return 1;
}

int64_t ActivityLog::write_bitmap(bool flush) {
  std::lock_guard<std::mutex> lock(mutex_);
  if (detached()) return 0;
  uint64_t blocks = bitmap_->blocks();
  int64_t written_bytes = 0;
  for (uint64_t block = 0; block < blocks; block++) {
    int rc = write_bitmap_block_at_locked(block, true);
    if (rc < 0) return rc;
    written_bytes += rc * static_cast<int64_t>(kBlockBytes);
  }
  written_known_ = true;
  if (flush) {
    int rc = disk_->flush();
    if (rc != 0) return rc;
  }
  return written_bytes;
}

bool ActivityLog::evict_one_locked() {
  // The least recently used extent with nothing pinned.
  std::vector<size_t>& order = eviction_order_;  // reserved up front: no allocation on the write path
  order.resize(hot_list_.size());
  for (size_t i = 0; i < order.size(); i++) order[i] = i;
  std::sort(order.begin(), order.end(), [&](size_t a, size_t b) {
    return last_used_[hot_list_[a]].load(std::memory_order_relaxed) < last_used_[hot_list_[b]].load(std::memory_order_relaxed);
  });
  for (size_t index : order) {
    uint32_t extent = hot_list_[index];
    set_hot(extent, false);
    if (pins_[extent].load(std::memory_order_seq_cst) != 0) {
      set_hot(extent, true);  // a writer got in between: keep it
      continue;
    }
    if (write_bitmap_block_locked(extent) != 0) {
      set_hot(extent, true);
      return false;
    }
    hot_list_[index] = hot_list_.back();
    hot_list_.pop_back();
    return true;
  }
  return false;
}

int ActivityLog::acquire(uint64_t offset_bytes, uint64_t length_bytes) {
  if (length_bytes == 0) return 0;
  uint64_t first = offset_bytes / layout_.extent_bytes;
  uint64_t last = (offset_bytes + length_bytes - 1) / layout_.extent_bytes;
  uint32_t now = clock_.fetch_add(1, std::memory_order_relaxed);
  bool all_hot = true;
  for (uint64_t e = first; e <= last; e++) {
    pins_[e].fetch_add(1, std::memory_order_seq_cst);  // pin first, then look: see evict_one_locked
    last_used_[e].store(now, std::memory_order_relaxed);
    all_hot = all_hot && is_hot(e);
  }
  if (all_hot) return 0;
  std::unique_lock<std::mutex> lock(mutex_);
  for (;;) {
    // List what is missing. A listed extent that is not hot yet waits for the
    // next transaction: while one is being written, every writer that needs a
    // new extent joins the one after it (group commit), so a burst of writes
    // to cold extents costs a few flushes, not one each.
    bool missing = false;
    for (uint64_t e = first; e <= last; e++) {
      if (is_hot(e)) continue;
      missing = true;
      if (std::find(hot_list_.begin(), hot_list_.end(), static_cast<uint32_t>(e)) != hot_list_.end()) continue;
      if (hot_list_.size() >= kActivityExtentsMax && !evict_one_locked()) {
        release(offset_bytes, length_bytes);
        return -EBUSY;
      }
      hot_list_.push_back(static_cast<uint32_t>(e));
    }
    if (!missing) return 0;
    if (!committing_) break;
    commit_cv_.wait(lock);
  }
  // This writer commits: every listed extent, written and flushed without the
  // lock held. The pending ones are pinned by their writers, so no eviction
  // takes them off the list meanwhile.
  committing_ = true;
  pending_.clear();
  for (uint32_t e : hot_list_) {
    if (!is_hot(e)) pending_.push_back(e);
  }
  uint64_t tx_offset = build_transaction_locked();
  lock.unlock();
  int rc = write_transaction(tx_offset);
  lock.lock();
  committing_ = false;
  if (rc == 0) {
    for (uint32_t e : pending_) set_hot(e, true);
  } else {
    // Not durable: not hot. Off the list again; their other writers retry on their own.
    for (uint32_t e : pending_) {
      auto it = std::find(hot_list_.begin(), hot_list_.end(), e);
      if (it != hot_list_.end()) hot_list_.erase(it);
    }
  }
  commit_cv_.notify_all();
  if (rc != 0) {
    release(offset_bytes, length_bytes);
    return rc;
  }
  return 0;
}

void ActivityLog::release(uint64_t offset_bytes, uint64_t length_bytes) {
  if (length_bytes == 0) return;
  uint64_t first = offset_bytes / layout_.extent_bytes;
  uint64_t last = (offset_bytes + length_bytes - 1) / layout_.extent_bytes;
  for (uint64_t e = first; e <= last; e++) {
    uint32_t before = pins_[e].fetch_sub(1, std::memory_order_seq_cst);
    NRAID_ASSERT(before > 0);
    (void)before;
  }
}

int ActivityLog::reset() {
  std::lock_guard<std::mutex> lock(mutex_);
  if (committing_) return -EBUSY;
  for (uint32_t extent : hot_list_) {
    if (pins_[extent].load() != 0) return -EBUSY;
  }
  for (uint32_t extent : hot_list_) set_hot(extent, false);
  hot_list_.clear();
  return write_transaction(build_transaction_locked());
}

}  // namespace nraid
