#include "bitmap.h"

#include "nraid_assert.h"

namespace nraid {

Bitmap::Bitmap(uint64_t data_size_bytes, uint32_t granularity_bytes)
    : data_size_bytes_(data_size_bytes),
      granularity_bytes_(granularity_bytes),
      bits_((data_size_bytes + granularity_bytes - 1) / granularity_bytes),
      words_((bits_ + 63) / 64),
      data_(new std::atomic<uint64_t>[words_]) {
  NRAID_ASSERT(granularity_bytes > 0 && (granularity_bytes & (granularity_bytes - 1)) == 0);
  for (uint64_t i = 0; i < words_; i++) data_[i].store(0, std::memory_order_relaxed);
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
      data_[word].fetch_or(mask, std::memory_order_relaxed);
    } else {
      data_[word].fetch_and(~mask, std::memory_order_relaxed);
    }
    bit = (word + 1) * 64;
  }
}

void Bitmap::set_range(uint64_t offset_bytes, uint64_t length_bytes) { apply(offset_bytes, length_bytes, true); }

void Bitmap::clear_range(uint64_t offset_bytes, uint64_t length_bytes) { apply(offset_bytes, length_bytes, false); }

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

void Bitmap::snapshot(uint64_t* out) const {
  for (uint64_t i = 0; i < words_; i++) out[i] = data_[i].load(std::memory_order_relaxed);
}

void Bitmap::snapshot_range(uint64_t first_word, uint64_t count, uint64_t* out) const {
  NRAID_ASSERT(first_word + count <= words_);
  for (uint64_t i = 0; i < count; i++) out[i] = data_[first_word + i].load(std::memory_order_relaxed);
}

void Bitmap::merge(const uint64_t* in) {
  for (uint64_t i = 0; i < words_; i++) data_[i].fetch_or(in[i], std::memory_order_relaxed);
}

void Bitmap::load(const uint64_t* in) {
  for (uint64_t i = 0; i < words_; i++) data_[i].store(in[i], std::memory_order_relaxed);
}

}  // namespace nraid
