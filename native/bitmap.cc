#include "bitmap.h"

#include <string.h>

#include "nraid_assert.h"

namespace nraid {

Bitmap::Bitmap(uint64_t data_size_bytes, uint32_t granularity_bytes)
    : data_size_bytes_(data_size_bytes),
      granularity_bytes_(granularity_bytes),
      bits_((data_size_bytes + granularity_bytes - 1) / granularity_bytes),
      words_((bits_ + 63) / 64),
      blocks_((words_ + kWordsPerBlock - 1) / kWordsPerBlock),
      data_(words_),
      changed_((blocks_ + 63) / 64) {
  // Zero-filled by the kernel, and resident only where a bit was ever set: no pass over the
  // words here (that would make all of them resident).
  NRAID_ASSERT(granularity_bytes > 0 && (granularity_bytes & (granularity_bytes - 1)) == 0);
}

void Bitmap::note_changed_word(uint64_t word) {
  uint64_t block = word / kWordsPerBlock;
  changed_[block / 64].fetch_or(1ull << (block % 64), std::memory_order_seq_cst);
}

uint64_t Bitmap::tail_mask(uint64_t word) const {
  uint64_t tail_bits = bits_ % 64;
  return (word + 1 == words_ && tail_bits != 0) ? (1ull << tail_bits) - 1 : ~0ull;
}

void Bitmap::apply(uint64_t offset_bytes, uint64_t length_bytes, bool set) {
  if (length_bytes == 0) return;
  NRAID_ASSERT(offset_bytes < data_size_bytes_ && length_bytes <= data_size_bytes_ - offset_bytes);
  uint64_t first = offset_bytes / granularity_bytes_;
  uint64_t last = (offset_bytes + length_bytes - 1) / granularity_bytes_;
  for (uint64_t bit = first; bit <= last;) {
    uint64_t word = bit / 64;
    uint64_t low = bit % 64;
    uint64_t high = (last / 64 == word) ? last % 64 : 63;
    uint64_t mask = (high == 63 ? ~0ull : ((1ull << (high + 1)) - 1)) & ~((1ull << low) - 1);
    if (set) {
      // A look first: on a write without a peer the bits are mostly set already,
      // and a read keeps a clean word's page shared with the zero page.
      if ((data_[word].load(std::memory_order_relaxed) & mask) != mask) {
        uint64_t old = data_[word].fetch_or(mask, std::memory_order_seq_cst);
        if ((old & mask) != mask) note_changed_word(word);
      }
    } else {
      if ((data_[word].load(std::memory_order_relaxed) & mask) != 0) {
        uint64_t old = data_[word].fetch_and(~mask, std::memory_order_seq_cst);
        if ((old & mask) != 0) note_changed_word(word);
      }
    }
    bit = (word + 1) * 64;
  }
}

void Bitmap::set_range(uint64_t offset_bytes, uint64_t length_bytes) { apply(offset_bytes, length_bytes, true); }

void Bitmap::clear_range(uint64_t offset_bytes, uint64_t length_bytes) { apply(offset_bytes, length_bytes, false); }

void Bitmap::clear_all() {
  for (uint64_t word = 0; word < words_; word++) {
    if (data_[word].load(std::memory_order_relaxed) == 0) continue;
    if (data_[word].exchange(0, std::memory_order_seq_cst) != 0) note_changed_word(word);
  }
}

bool Bitmap::test(uint64_t bit) const {
  return bit < bits_ && (data_[bit / 64].load(std::memory_order_relaxed) >> (bit % 64)) & 1;
}

uint64_t Bitmap::find_next_set(uint64_t from_bit) const {
  if (from_bit >= bits_) return bits_;
  uint64_t word = from_bit / 64;
  uint64_t value = data_[word].load(std::memory_order_relaxed) & (~0ull << (from_bit % 64));
  for (;;) {
    if (value != 0) {
      uint64_t bit = word * 64 + static_cast<uint64_t>(__builtin_ctzll(value));
      return bit < bits_ ? bit : bits_;
    }
    if (++word >= words_) return bits_;
    value = data_[word].load(std::memory_order_relaxed);
  }
}

uint64_t Bitmap::count_set() const {
  uint64_t count = 0;
  for (uint64_t i = 0; i < words_; i++) count += static_cast<uint64_t>(__builtin_popcountll(data_[i].load(std::memory_order_relaxed)));
  return count;
}

void Bitmap::snapshot_range(uint64_t first_word, uint64_t count, uint64_t* out) const {
  NRAID_ASSERT(first_word <= words_ && count <= words_ - first_word);
  for (uint64_t i = 0; i < count; i++) out[i] = data_[first_word + i].load(std::memory_order_relaxed);
}

template <typename Apply>
void Bitmap::apply_range(uint64_t first_word, uint64_t count, const uint8_t* in, Apply apply) {
  NRAID_ASSERT(first_word <= words_ && count <= words_ - first_word);
  for (uint64_t i = 0; i < count; i++) {
    uint64_t word = first_word + i;
    uint64_t value;
    memcpy(&value, in + i * 8, 8);
    if (apply(word, value & tail_mask(word))) note_changed_word(word);
  }
}

void Bitmap::merge_range(uint64_t first_word, uint64_t count, const uint8_t* in) {
  apply_range(first_word, count, in, [this](uint64_t word, uint64_t value) {
    if (value == 0 || (data_[word].load(std::memory_order_relaxed) & value) == value) return false;
    uint64_t old = data_[word].fetch_or(value, std::memory_order_seq_cst);
    return (old | value) != old;
  });
}

void Bitmap::load_range(uint64_t first_word, uint64_t count, const uint8_t* in) {
  apply_range(first_word, count, in, [this](uint64_t word, uint64_t value) {
    if (data_[word].load(std::memory_order_relaxed) == value) return false;  // zero stays unwritten: not resident
    return data_[word].exchange(value, std::memory_order_seq_cst) != value;
  });
}

bool Bitmap::take_changed(uint64_t block) {
  NRAID_ASSERT(block < blocks_);
  uint64_t mask = 1ull << (block % 64);
  if ((changed_[block / 64].load(std::memory_order_seq_cst) & mask) == 0) return false;
  return (changed_[block / 64].fetch_and(~mask, std::memory_order_seq_cst) & mask) != 0;
}

void Bitmap::mark_changed(uint64_t block) {
  NRAID_ASSERT(block < blocks_);
  changed_[block / 64].fetch_or(1ull << (block % 64), std::memory_order_seq_cst);
}

}  // namespace nraid
