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

__attribute__((target("sse4.2"))) uint32_t crc32c_sse42(uint32_t crc, const uint8_t* data, size_t length) {
  uint64_t crc64 = crc;
  while (length >= 8) {
    uint64_t word;
    std::memcpy(&word, data, 8);
    crc64 = _mm_crc32_u64(crc64, word);
    data += 8;
    length -= 8;
  }
  uint32_t crc32 = static_cast<uint32_t>(crc64);
  while (length > 0) {
    crc32 = _mm_crc32_u8(crc32, *data);
    data++;
    length--;
  }
  return crc32;
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
