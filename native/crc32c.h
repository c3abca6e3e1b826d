#pragma once
#include <cstddef>
#include <cstdint>

namespace nraid {

// CRC-32C (Castagnoli), the checksum of every frame and superblock.
// Uses the SSE4.2 instruction where the CPU has it (three lanes interleaved
// on long buffers, crc32c.cc), a table elsewhere.
// crc32c(0, data, n) is the checksum; pass a previous result as `crc` to continue.
uint32_t crc32c(uint32_t crc, const void* data, size_t length);
bool crc32c_hardware();

}  // namespace nraid
