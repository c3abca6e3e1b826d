#include "crc32c.h"

#include <nmmintrin.h>

#include <array>
#include <cstring>

namespace nraid {
namespace {

constexpr uint32_t kPolynomialReflected = 0x82F63B78u;

constexpr std::array<uint32_t, 256> make_table() {
  std::array<uint32_t, 256> table{};
  for (uint32_t i = 0; i < 256; i++) {
    uint32_t value = i;
    for (int bit = 0; bit < 8; bit++) value = (value >> 1) ^ ((value & 1) ? kPolynomialReflected : 0);
    table[i] = value;
  }
  return table;
}

constexpr std::array<uint32_t, 256> kTable = make_table();

uint32_t crc32c_table(uint32_t crc, const uint8_t* data, size_t length) {
  for (size_t i = 0; i < length; i++) crc = kTable[(crc ^ data[i]) & 0xFF] ^ (crc >> 8);
  return crc;
}

// One lane: the instruction's raw state (not inverted) over `length` bytes.
__attribute__((target("sse4.2"))) uint64_t crc32c_lane(uint64_t crc, const uint8_t* data, size_t length) {
  while (length >= 8) {
    uint64_t word;
    std::memcpy(&word, data, 8);
    crc = _mm_crc32_u64(crc, word);
    data += 8;
    length -= 8;
  }
  while (length > 0) {
    crc = _mm_crc32_u8(static_cast<uint32_t>(crc), *data);
    data++;
    length--;
  }
  return crc;
}

// The crc32 instruction takes 3 cycles and starts one every cycle: one
// dependent chain runs at a third of the core's speed. So a long buffer is cut
// into blocks of three equal lanes computed side by side, and the lanes are
// joined after each block. Joining is linear algebra over GF(2): a lane's state
// carried over n further bytes is a fixed linear map of it (what n zero bytes
// do to it), here four 256-entry tables per lane length, built once from the
// map's 32 basis images; the second and third lanes start from 0 and add in.
template <size_t kLaneBytes>
struct Shift {
  std::array<std::array<uint32_t, 256>, 4> table{};

  __attribute__((target("sse4.2"))) Shift() {
    uint8_t zeros[kLaneBytes] = {};
    uint32_t basis[32];
    for (int bit = 0; bit < 32; bit++) {
      basis[bit] = static_cast<uint32_t>(crc32c_lane(uint64_t{1} << bit, zeros, kLaneBytes));
    }
    for (int part = 0; part < 4; part++) {
      for (uint32_t byte = 0; byte < 256; byte++) {
        uint32_t image = 0;
        for (int bit = 0; bit < 8; bit++) {
          if (byte & (1u << bit)) image ^= basis[part * 8 + bit];
        }
        table[part][byte] = image;
      }
    }
  }

  // `crc` carried over kLaneBytes zero bytes.
  uint32_t operator()(uint32_t crc) const {
    return table[0][crc & 0xFF] ^ table[1][(crc >> 8) & 0xFF] ^ table[2][(crc >> 16) & 0xFF] ^ table[3][crc >> 24];
  }
};

constexpr size_t kLongLaneBytes = 8192;  // blocks of 24 KiB: 1 MiB payloads
constexpr size_t kShortLaneBytes = 256;  // blocks of 768 bytes: 4 KiB payloads and the tails
static_assert(kLongLaneBytes % 8 == 0 && kShortLaneBytes % 8 == 0);

template <size_t kLaneBytes>
__attribute__((target("sse4.2"))) uint64_t crc32c_blocks(uint64_t crc, const uint8_t** data, size_t* length,
                                                         const Shift<kLaneBytes>& shift) {
  while (*length >= 3 * kLaneBytes) {
    const uint8_t* p = *data;
    uint64_t crc1 = 0;
    uint64_t crc2 = 0;
    for (size_t at = 0; at < kLaneBytes; at += 8) {
      uint64_t word0;
      uint64_t word1;
      uint64_t word2;
      std::memcpy(&word0, p + at, 8);
      std::memcpy(&word1, p + kLaneBytes + at, 8);
      std::memcpy(&word2, p + 2 * kLaneBytes + at, 8);
      crc = _mm_crc32_u64(crc, word0);
      crc1 = _mm_crc32_u64(crc1, word1);
      crc2 = _mm_crc32_u64(crc2, word2);
    }
    uint32_t joined = shift(shift(static_cast<uint32_t>(crc)) ^ static_cast<uint32_t>(crc1));
    crc = joined ^ static_cast<uint32_t>(crc2);
    *data += 3 * kLaneBytes;
    *length -= 3 * kLaneBytes;
  }
  return crc;
}

uint32_t crc32c_sse42(uint32_t crc, const uint8_t* data, size_t length) {
  static const Shift<kLongLaneBytes> long_shift;
  static const Shift<kShortLaneBytes> short_shift;
  uint64_t state = crc;
  state = crc32c_blocks(state, &data, &length, long_shift);
  state = crc32c_blocks(state, &data, &length, short_shift);
  return static_cast<uint32_t>(crc32c_lane(state, data, length));
}

const bool kHardware = __builtin_cpu_supports("sse4.2");

}  // namespace

bool crc32c_hardware() { return kHardware; }

uint32_t crc32c(uint32_t crc, const void* data, size_t length) {
  const auto* bytes = static_cast<const uint8_t*>(data);
  crc = ~crc;
  crc = kHardware ? crc32c_sse42(crc, bytes, length) : crc32c_table(crc, bytes, length);
  return ~crc;
}

}  // namespace nraid
