#pragma once
// The dirty bitmap: one bit per granule (4 KiB) of data that may differ from
// the peer. Set and cleared from any thread without locks; allocated once, as
// an anonymous mapping whose pages the kernel provides on first write (a clean
// 1 TiB device costs no resident memory for its 32 MiB of zero bits).
//
// It also keeps one change bit per on-disk bitmap block (kBitmapBlockBytes of
// words): set whenever a word of that block changes value, taken by whoever
// writes the block back (the activity log), so that write-back needs no copy
// of what it wrote last.
#include <atomic>
#include <cstdint>

#include "limits.h"
#include "zeroed_array.h"

namespace nraid {

class Bitmap {
 public:
  static constexpr uint64_t kWordsPerBlock = kBlockBytes / 8;

  Bitmap(uint64_t data_size_bytes, uint32_t granularity_bytes);
  Bitmap(const Bitmap&) = delete;
  Bitmap& operator=(const Bitmap&) = delete;

  void set_range(uint64_t offset_bytes, uint64_t length_bytes);
  void clear_range(uint64_t offset_bytes, uint64_t length_bytes);
  bool test(uint64_t bit) const;
  // The first set bit at or after `from_bit`, or bits() when none.
  uint64_t find_next_set(uint64_t from_bit) const;
  uint64_t count_set() const;
  uint64_t bits() const { return bits_; }
  uint64_t words() const { return words_; }
  // On-disk bitmap blocks (kBlockBytes each, the last one padded with zero words).
  uint64_t blocks() const { return blocks_; }
  uint32_t granularity_bytes() const { return granularity_bytes_; }
  uint64_t data_size_bytes() const { return data_size_bytes_; }
  // Little-endian 64-bit words, as stored on disk.
  void snapshot_range(uint64_t first_word, uint64_t count, uint64_t* out) const;
  // Words [first_word, first_word + count) from `in` (little-endian, any
  // alignment): OR-ed in, or replacing what is there. Bits past bits() are
  // dropped. Each word is one atomic step: concurrent set/clear stay correct.
  void merge_range(uint64_t first_word, uint64_t count, const uint8_t* in);
  void load_range(uint64_t first_word, uint64_t count, const uint8_t* in);
  void clear_all();

  // The change bit of on-disk block `block`: taken (read and cleared) before
  // the block is snapshotted for a write, given back when that write fails.
  bool take_changed(uint64_t block);
  void mark_changed(uint64_t block);

 private:
  void apply(uint64_t offset_bytes, uint64_t length_bytes, bool set);
  void note_changed_word(uint64_t word);
  // Calls apply(word, value) for each little-endian word of `in` (its tail bits masked off) from
  // `first_word`; notes the word as changed where apply says it changed.
  template <typename Apply>
  void apply_range(uint64_t first_word, uint64_t count, const uint8_t* in, Apply apply);
  uint64_t tail_mask(uint64_t word) const;
  const uint64_t data_size_bytes_;
  const uint32_t granularity_bytes_;
  const uint64_t bits_;
  const uint64_t words_;
  const uint64_t blocks_;
  ZeroedArray<std::atomic<uint64_t>> data_;
  ZeroedArray<std::atomic<uint64_t>> changed_;
};

}  // namespace nraid
