#include "link_io.h"

#include <errno.h>
#include <fcntl.h>
#include <netinet/in.h>
#include <netinet/tcp.h>
#include <pthread.h>
#include <string.h>
#include <sys/socket.h>
#include <time.h>
#include <unistd.h>

#include "limits.h"
#include "link_stream.h"

namespace nraid {

uint64_t monotonic_us() {
  timespec now;
  clock_gettime(CLOCK_MONOTONIC, &now);
  return static_cast<uint64_t>(now.tv_sec) * 1000000u + static_cast<uint64_t>(now.tv_nsec) / 1000u;
}

void name_thread(const char* name) { pthread_setname_np(pthread_self(), name); }

int read_full(int fd, void* data, size_t length) {
  auto* bytes = static_cast<uint8_t*>(data);
  size_t done = 0;
  while (done < length) {
    ssize_t n = ::read(fd, bytes + done, length - done);
    if (n < 0) {
      if (errno == EINTR) continue;
      return -errno;
    }
    if (n == 0) return -EPIPE;
    done += static_cast<size_t>(n);
  }
  return 0;
}

int writev_full(int fd, iovec* iov, int count) {
  while (count > 0) {
    ssize_t n = ::writev(fd, iov, count);
    if (n < 0) {
      if (errno == EINTR) continue;
      return -errno;
    }
    auto left = static_cast<size_t>(n);
    while (count > 0 && left >= iov->iov_len) {
      left -= iov->iov_len;
      iov++;
      count--;
    }
    if (count > 0) {
      iov->iov_base = static_cast<uint8_t*>(iov->iov_base) + left;
      iov->iov_len -= left;
    }
  }
  return 0;
}

int write_frame(LinkStream& stream, const FrameHeader& header, const void* payload) {
  iovec iov[2] = {{const_cast<FrameHeader*>(&header), sizeof(header)},
                  {const_cast<void*>(payload), frame_has_payload(header.type) ? header.length : 0}};
  return stream.writev(iov, iov[1].iov_len > 0 ? 2 : 1);
}

std::string receive_failure(int rc, LinkCounters* counters) {
  switch (rc) {
    case -EPIPE: return "data link closed by the peer";
    case -EBADMSG:
      counters->checksum_errors.fetch_add(1, std::memory_order_relaxed);
      return "frame rejected: a TLS record failed its authentication (changed on the way); resetting the link";
    case -EPROTO:
      counters->protocol_errors.fetch_add(1, std::memory_order_relaxed);
      return "protocol error on the data link: the peer broke the TLS protocol";
    default: return std::string("data link receive: ") + strerror(-rc);
  }
}

void prepare_socket(int fd) {
  int flags = fcntl(fd, F_GETFL);
  // JavaScript's socket was non-blocking; the descriptor's status flags are shared with its dup.
  if (flags >= 0) fcntl(fd, F_SETFL, flags & ~O_NONBLOCK);
  int one = 1;
  setsockopt(fd, IPPROTO_TCP, TCP_NODELAY, &one, sizeof(one));
  setsockopt(fd, SOL_SOCKET, SO_KEEPALIVE, &one, sizeof(one));
  int buffer_bytes = static_cast<int>(kSocketBufferBytes);
  setsockopt(fd, SOL_SOCKET, SO_SNDBUF, &buffer_bytes, sizeof(buffer_bytes));
  setsockopt(fd, SOL_SOCKET, SO_RCVBUF, &buffer_bytes, sizeof(buffer_bytes));
}

int exchange_hello(LinkStream& stream, bool send_first, LinkCounters* counters, std::string* error) {
  FrameHeader hello{};
  hello.type = kFrameHello;
  frame_seal(&hello);
  if (send_first) {
    int rc = write_frame(stream, hello, nullptr);
    if (rc != 0) {
      *error = std::string("data link: sending HELLO: ") + strerror(-rc);
      return rc;
    }
  }
  FrameHeader received{};
  // Bounded wait: the receive timeout holds for this read only, then reads block again.
  timeval wait{static_cast<time_t>(kDataHelloTimeoutMs / 1000), static_cast<suseconds_t>((kDataHelloTimeoutMs % 1000) * 1000)};
  setsockopt(stream.fd(), SOL_SOCKET, SO_RCVTIMEO, &wait, sizeof(wait));
  int rc = stream.read(&received, sizeof(received));
  timeval forever{0, 0};
  setsockopt(stream.fd(), SOL_SOCKET, SO_RCVTIMEO, &forever, sizeof(forever));
  if (rc == -EAGAIN || rc == -EWOULDBLOCK) {
    *error = "data link: expected the peer's HELLO within " + std::to_string(kDataHelloTimeoutMs) + " ms, found none";
    return -ETIMEDOUT;
  }
  if (rc != 0) {
    *error = "data link: waiting for HELLO: " + receive_failure(rc, counters);
    return rc;
  }
  FrameCheck check = frame_check_header(received, 0);
  if (check != FrameCheck::kOk || received.type != kFrameHello) {
    auto& counter = check == FrameCheck::kBadHeaderCrc ? counters->checksum_errors : counters->protocol_errors;
    counter.fetch_add(1, std::memory_order_relaxed);
    *error = std::string("data link: expected HELLO, found ") +
             (check != FrameCheck::kOk ? frame_check_name(check) : "another frame type");
    return -EPROTO;
  }
  if (!send_first) {
    rc = write_frame(stream, hello, nullptr);
    if (rc != 0) {
      *error = std::string("data link: answering HELLO: ") + strerror(-rc);
      return rc;
    }
  }
  return 0;
}

}  // namespace nraid
