#pragma once
// The dirty bitmap: one bit per granule (4 KiB) of data that may differ from
// the peer. Set and cleared from any thread without locks; allocated once.
#include <atomic>
#include <cstdint>
#include <memory>

namespace nraid {

class Bitmap {
 public:
  Bitmap(uint64_t data_size_bytes, uint32_t granularity_bytes);

  void set_range(uint64_t offset_bytes, uint64_t length_bytes);
  void clear_range(uint64_t offset_bytes, uint64_t length_bytes);
  bool test(uint64_t bit) const;
  // The first set bit at or after `from_bit`, or bits() when none.
  uint64_t find_next_set(uint64_t from_bit) const;
  uint64_t count_set() const;
  uint64_t bits() const { return bits_; }
  uint64_t words() const { return words_; }
  uint32_t granularity_bytes() const { return granularity_bytes_; }
  uint64_t data_size_bytes() const { return data_size_bytes_; }
  // Little-endian 64-bit words, as stored on disk.
  void snapshot(uint64_t* out) const;
  void snapshot_range(uint64_t first_word, uint64_t count, uint64_t* out) const;
  void merge(const uint64_t* in);  // OR
  void load(const uint64_t* in);   // replace

 private:
  void apply(uint64_t offset_bytes, uint64_t length_bytes, bool set);
  const uint64_t data_size_bytes_;
  const uint32_t granularity_bytes_;
  const uint64_t bits_;
  const uint64_t words_;
  std::unique_ptr<std::atomic<uint64_t>[]> data_;
};

}  // namespace nraid
