#pragma once
// The data-link frame (DESIGN.md §7, docs/CONTRACTS.md): a fixed 48-byte
// little-endian header, then at most 1 MiB of payload. Every header carries
// the crc32c of its payload and of itself; nothing unchecked is ever applied.
#include <cstddef>
#include <cstdint>

#include "crc32c.h"
#include "limits.h"
#include "nraid_assert.h"

namespace nraid {

static_assert(__BYTE_ORDER__ == __ORDER_LITTLE_ENDIAN__, "frames are little endian on the wire and in memory");

constexpr uint32_t kFrameMagic = 0x3144524E;  // "NRD1"

enum FrameType : uint16_t {
  kFrameWrite = 1,
  kFrameDiscard = 2,
  kFrameZeroes = 3,
  kFrameBarrier = 4,
  kFrameAckRecv = 5,
  kFrameAckWrite = 6,
  kFrameBarrierAck = 7,
  kFrameRsData = 8,
  kFrameRsRequest = 9,
  kFrameRsIsInSync = 10,
  // Digests (checksum resync, online verify): OV_REQUEST names a range of at
  // most one request; the target reads it after every earlier frame that
  // overlaps it and answers with OV_REPLY, whose payload is one 64-bit digest
  // (digest.h) per 4 KiB block. kFlagResync on the request: a checksum
  // resync's, echoed in the reply.
  kFrameOvRequest = 11,
  kFrameOvReply = 12,
  kFrameHello = 13,  // first frame each way: both sides' data planes are attached
  // A Diskless Primary (on-io-error = detach) reads through its peer: the
  // request is ordered after the peer's in-flight writes like any frame of
  // the stream; the reply carries the data (or kFlagReadError, no payload).
  kFrameReadRequest = 14,
  kFrameReadReply = 15,
  kFrameTypeMax = 15,
};

enum FrameFlag : uint16_t {
  kFlagWantRecvAck = 1 << 0,   // protocol B: ack on receipt
  kFlagWantWriteAck = 1 << 1,  // always set on writes: the ack bounds lag and clears dirty tracking
  kFlagResync = 1 << 2,        // the ack belongs to resync traffic
  kFlagReadError = 1 << 3,     // READ_REPLY: the peer could not read the range; no payload
};

struct FrameHeader {
  uint32_t magic;
  uint16_t type;
  uint16_t flags;
  uint64_t seq;
  uint64_t epoch;
  uint64_t offset;
  uint32_t length;
  uint32_t payload_crc;
  uint32_t request_id;  // the sender's slot, echoed in acks
  uint32_t header_crc;
};

static_assert(sizeof(FrameHeader) == 48);
static_assert(offsetof(FrameHeader, header_crc) == 44);

inline bool frame_has_payload(uint16_t type) {
  return type == kFrameWrite || type == kFrameRsData || type == kFrameOvReply || type == kFrameReadReply;
}

// How a link proves a payload intact. Plain TCP: the frame's crc32c. TLS: the
// AEAD tag of the records that carry it, keyed by the handshake, over every
// byte; a crc32c there would only repeat that proof (unkeyed, weaker) at the
// cost of one more pass over every payload on each side, so it is 0 and not
// checked. Headers keep their crc32c on both kinds of link: it is checked
// before any length in them is trusted.
enum class PayloadCheck { kCrc32c, kAead };

inline PayloadCheck payload_check_for(bool tls) { return tls ? PayloadCheck::kAead : PayloadCheck::kCrc32c; }

inline uint32_t payload_crc(PayloadCheck check, uint16_t type, const void* payload, uint32_t length) {
  return check == PayloadCheck::kCrc32c && frame_has_payload(type) ? crc32c(0, payload, length) : 0;
}

// The payload of `header`, read whole into `payload`: is it what the sender sent?
inline bool payload_intact(PayloadCheck check, const FrameHeader& header, const void* payload) {
  return check == PayloadCheck::kAead || crc32c(0, payload, header.length) == header.payload_crc;
}

inline void frame_seal(FrameHeader* header, const void* payload, PayloadCheck check) {
  header->magic = kFrameMagic;
  header->payload_crc = payload_crc(check, header->type, payload, header->length);
  header->header_crc = crc32c(0, header, offsetof(FrameHeader, header_crc));
}

// A frame with no payload (acks, HELLO, requests) is sealed alike on both kinds of link.
inline void frame_seal(FrameHeader* header) {
  NRAID_ASSERT(!frame_has_payload(header->type) || header->length == 0);
  frame_seal(header, nullptr, PayloadCheck::kCrc32c);
}

enum class FrameCheck { kOk, kBadMagic, kBadHeaderCrc, kBadType, kBadLength, kOutOfBounds, kMisaligned };

inline const char* frame_check_name(FrameCheck check) {
  switch (check) {
    case FrameCheck::kOk: return "ok";
    case FrameCheck::kBadMagic: return "bad magic";
    case FrameCheck::kBadHeaderCrc: return "bad header checksum";
    case FrameCheck::kBadType: return "unknown frame type";
    case FrameCheck::kBadLength: return "length over the limit";
    case FrameCheck::kOutOfBounds: return "range outside the data area";
    case FrameCheck::kMisaligned: return "range not aligned to 4 KiB blocks";
  }
  return "?";
}

// Checks everything the header alone can tell; the payload crc is checked after it is read.
inline FrameCheck frame_check_header(const FrameHeader& header, uint64_t data_size_bytes) {
  if (header.magic != kFrameMagic) return FrameCheck::kBadMagic;
  if (crc32c(0, &header, offsetof(FrameHeader, header_crc)) != header.header_crc) return FrameCheck::kBadHeaderCrc;
  if (header.type == 0 || header.type > kFrameTypeMax) return FrameCheck::kBadType;
  if (frame_has_payload(header.type) && header.length > kFramePayloadBytesMax) return FrameCheck::kBadLength;
  bool ranged = header.type == kFrameWrite || header.type == kFrameRsData || header.type == kFrameDiscard ||
                header.type == kFrameZeroes || header.type == kFrameReadRequest || header.type == kFrameReadReply ||
                header.type == kFrameOvRequest;
  // A read or digest request names at most one request's worth: the reply must fit in one frame.
  if ((header.type == kFrameReadRequest || header.type == kFrameOvRequest) && header.length > kRequestBytesMax) {
    return FrameCheck::kBadLength;
  }
  // A digest reply carries one digest per block of at most one request.
  if (header.type == kFrameOvReply &&
      (header.length > kDigestReplyBytesMax || header.length % kDigestBytes != 0 || header.offset % kBlockBytes != 0 ||
       header.offset > data_size_bytes ||
       header.length / kDigestBytes * kBlockBytes > data_size_bytes - header.offset)) {
    return FrameCheck::kBadLength;
  }
  if (ranged && (header.offset > data_size_bytes || header.length > data_size_bytes - header.offset)) {
    return FrameCheck::kOutOfBounds;
  }
  // The exposed device has 4 KiB logical blocks: every range is block-aligned,
  // whatever sector size either backing disk has.
  if (ranged && (header.offset % kBlockBytes != 0 || header.length % kBlockBytes != 0)) return FrameCheck::kMisaligned;
  return FrameCheck::kOk;
}

}  // namespace nraid
