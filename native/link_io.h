#pragma once
// Blocking socket helpers for the data link: whole reads and writes, socket
// options, and the HELLO exchange that tells each side that the other's data
// plane (not its JavaScript) now owns the connection.
#include <sys/uio.h>

#include <atomic>
#include <chrono>
#include <condition_variable>
#include <cstddef>
#include <cstdint>
#include <functional>
#include <memory>
#include <mutex>
#include <string>

#include "frame.h"
#include "limits.h"

namespace nraid {

// Returns 0, or a negative errno (-EPIPE for an orderly close by the peer).
int read_full(int fd, void* data, size_t length);
int writev_full(int fd, iovec* iov, int count);
class LinkStream;
int write_frame(LinkStream& stream, const FrameHeader& header, const void* payload);

// Blocking mode, TCP_NODELAY, large buffers, keepalive.
void prepare_socket(int fd);
// The acceptor sends HELLO first; the dialer waits for it, then answers.
// A HELLO that fails its checks counts as a checksum or protocol error.
struct LinkCounters;
int exchange_hello(LinkStream& stream, bool send_first, LinkCounters* counters, std::string* error);
// Why a read of the data link failed (a LinkStream::read result), for the
// link's failure; an unauthenticated TLS record counts as a checksum error.
std::string receive_failure(int rc, LinkCounters* counters);

// Counters of the data link, both sides; read by the control plane in one call.
struct LinkCounters {
  std::atomic<uint64_t> frames_sent{0};
  std::atomic<uint64_t> bytes_sent{0};      // payload bytes of writes and resync data
  std::atomic<uint64_t> bytes_acked{0};     // payload bytes the peer has written
  std::atomic<uint64_t> lag_bytes{0};       // sent or queued, not yet written by the peer
  std::atomic<uint64_t> lag_oldest_us{0};   // enqueue time of the oldest unacknowledged frame (0: none)
  std::atomic<uint64_t> frames_in_flight{0};
  std::atomic<uint64_t> frames_received{0};
  std::atomic<uint64_t> bytes_received{0};
  std::atomic<uint64_t> bytes_applied{0};
  std::atomic<uint64_t> checksum_errors{0};
  std::atomic<uint64_t> protocol_errors{0};
  std::atomic<uint64_t> resync_bytes_done{0};      // source: resync data the peer has written
  std::atomic<uint64_t> resync_bytes_received{0};  // target: resync data received (checked)
  std::atomic<uint64_t> link_failures{0};
  // Checksum resync, sparse sync and verify (source side unless noted).
  std::atomic<uint64_t> resync_data_bytes_sent{0};    // RS_DATA payload bytes
  std::atomic<uint64_t> resync_zero_bytes_sent{0};    // covered by zero frames instead of bytes
  std::atomic<uint64_t> resync_equal_bytes{0};        // marked, found equal by digest, not sent
  std::atomic<uint64_t> zero_bytes_applied{0};        // target: a resync's zero frames written
  std::atomic<uint64_t> digest_bytes_read{0};         // target: bytes read to answer digest requests
  std::atomic<uint64_t> verify_start_bytes{0};
  std::atomic<uint64_t> verify_stop_bytes{0};
  std::atomic<uint64_t> verify_position_bytes{0};     // everything before it is compared
  std::atomic<uint64_t> verify_mismatch_bytes{0};     // this verify's differences, marked out of sync
  std::atomic<uint64_t> verify_mismatch_total_bytes{0};
  std::atomic<uint64_t> verify_bytes_done_total{0};
};

// CLOCK_MONOTONIC, the clock of std::chrono::steady_clock on Linux.
uint64_t monotonic_us();
// Waits on `cv` until `ready()` holds or the monotonic clock passes
// `deadline_us` (a monotonic_us() value); returns ready().
template <typename Predicate>
bool wait_until_us(std::condition_variable& cv, std::unique_lock<std::mutex>& lock, uint64_t deadline_us,
                   Predicate ready) {
  const auto deadline = std::chrono::steady_clock::time_point(std::chrono::microseconds(deadline_us));
  return cv.wait_until(lock, deadline, ready);
}
// Names the calling thread as `top -H` and /proc show it (at most 15 characters).
void name_thread(const char* name);

// What the data plane tells JavaScript, through one threadsafe function per pipeline.
using EventSink = std::function<void(const std::string& type, const std::string& detail)>;

}  // namespace nraid
