#pragma once
// The digest that checksum resync and online verify compare, one per 4 KiB
// block: XXH64 (seed 0, the reference algorithm by Yann Collet). 64 bits,
// because a verify of a 1 TiB device compares 2^28 blocks and a 32-bit digest
// would let a real difference through once in 2^32 (crc32c is also linear:
// the data frames already carry it, and a digest should not share its blind
// spots); XXH64, because it runs at several GB/s a core, faster than any disk
// here, where SHA-256 without SHA extensions (about 0.4 GB/s on this machine's
// class of CPU) would make verify CPU-bound on a 2-core node. It guards
// against accidental differences (bit rot, a disk written behind nraid's
// back), not against an adversary who controls one disk's contents.
#include <cstdint>
#include <cstring>

namespace nraid {

namespace xxh64_detail {
constexpr uint64_t kP1 = 0x9E3779B185EBCA87ull;
constexpr uint64_t kP2 = 0xC2B2AE3D27D4EB4Full;
constexpr uint64_t kP3 = 0x165667B19E3779F9ull;
constexpr uint64_t kP4 = 0x85EBCA77C2B2AE63ull;
constexpr uint64_t kP5 = 0x27D4EB2F165667C5ull;
inline uint64_t rotl(uint64_t x, int r) { return (x << r) | (x >> (64 - r)); }
inline uint64_t read64(const uint8_t* p) {
  uint64_t v;
  memcpy(&v, p, sizeof(v));
  return v;
}
inline uint32_t read32(const uint8_t* p) {
  uint32_t v;
  memcpy(&v, p, sizeof(v));
  return v;
}
inline uint64_t round(uint64_t acc, uint64_t input) {
  acc += input * kP2;
  acc = rotl(acc, 31);
  return acc * kP1;
}
inline uint64_t merge(uint64_t acc, uint64_t val) {
  acc ^= round(0, val);
  return acc * kP1 + kP4;
}
}  // namespace xxh64_detail

inline uint64_t xxh64(const void* data, size_t length, uint64_t seed = 0) {
  using namespace xxh64_detail;
  const auto* p = static_cast<const uint8_t*>(data);
  const uint8_t* end = p + length;
  uint64_t h;
  if (length >= 32) {
    uint64_t v1 = seed + kP1 + kP2, v2 = seed + kP2, v3 = seed, v4 = seed - kP1;
    const uint8_t* limit = end - 32;
    do {
      v1 = round(v1, read64(p));
      v2 = round(v2, read64(p + 8));
      v3 = round(v3, read64(p + 16));
      v4 = round(v4, read64(p + 24));
      p += 32;
    } while (p <= limit);
    h = rotl(v1, 1) + rotl(v2, 7) + rotl(v3, 12) + rotl(v4, 18);
    h = merge(h, v1);
    h = merge(h, v2);
    h = merge(h, v3);
    h = merge(h, v4);
  } else {
    h = seed + kP5;
  }
  h += static_cast<uint64_t>(length);
  while (p + 8 <= end) {
    h ^= round(0, read64(p));
    h = rotl(h, 27) * kP1 + kP4;
    p += 8;
  }
  if (p + 4 <= end) {
    h ^= static_cast<uint64_t>(read32(p)) * kP1;
    h = rotl(h, 23) * kP2 + kP3;
    p += 4;
  }
  while (p < end) {
    h ^= (*p) * kP5;
    h = rotl(h, 11) * kP1;
    p++;
  }
  h ^= h >> 33;
  h *= kP2;
  h ^= h >> 29;
  h *= kP3;
  h ^= h >> 32;
  return h;
}

// One digest per kBlockBytes block of `data` (length a multiple of it) into `digests`.
inline void block_digests(const uint8_t* data, uint32_t length_bytes, uint32_t block_bytes, uint64_t* digests) {
  for (uint32_t i = 0; i < length_bytes / block_bytes; i++) digests[i] = xxh64(data + uint64_t{i} * block_bytes, block_bytes);
}

// Whether every byte of `data` is zero (length a multiple of 8, 8-aligned).
inline bool all_zero(const uint8_t* data, uint32_t length_bytes) {
  const auto* words = reinterpret_cast<const uint64_t*>(data);
  uint64_t any = 0;
  for (uint32_t i = 0; i < length_bytes / 8; i++) {
    any |= words[i];
    if ((i & 511) == 511 && any != 0) return false;
  }
  return any == 0;
}

}  // namespace nraid
