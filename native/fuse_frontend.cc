#include "fuse_frontend.h"

#include <errno.h>
#include <fcntl.h>
#include <linux/falloc.h>
#include <linux/fuse.h>
#include <signal.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/mman.h>
#include <sys/mount.h>
#include <sys/prctl.h>
#include <sys/stat.h>
#include <sys/sysmacros.h>
#include <sys/uio.h>
#include <unistd.h>

#include <chrono>
#include <cstddef>
#include <mutex>
#include <vector>

#include "limits.h"
#include "io_buffers.h"
#include "nraid_assert.h"

#ifndef PR_SET_IO_FLUSHER
#define PR_SET_IO_FLUSHER 57
#endif

// Linux >= 6.9 (FUSE 7.40); the system headers here stop at 7.38.
constexpr int kFuseNotifyResend = 7;
// Linux >= 6.1 (MADV_COLLAPSE); older kernels refuse it (EINVAL), and khugepaged collapses later.
constexpr int kMadvCollapse = 25;

namespace nraid {
namespace {

// A WRITE's headers; the payload follows them. We read each request so that
// the payload lands at buffer + kFuseHeaderRoomBytes, block-aligned for O_DIRECT.
constexpr size_t kWriteHeaderBytes = sizeof(fuse_in_header) + sizeof(fuse_write_in);
constexpr size_t kReadOffsetBytes = kFuseHeaderRoomBytes - kWriteHeaderBytes;
// Slack past the largest payload for requests with larger headers (never a WRITE).
constexpr size_t kBufferSlackBytes = kBlockBytes;
constexpr size_t kWorkerBufferBytes = kFuseBufferBytes + kBufferSlackBytes;
constexpr size_t kReadSizeBytes = kWorkerBufferBytes - kReadOffsetBytes;
// The arena: every worker's request buffer, then (from a 2 MiB boundary) every worker's stack.
// Its pages are small (MADV_NOHUGEPAGE) while the device is quiet: a touch makes 4 KiB
// resident, not 2 MiB (a thread's stack is touched as it starts, its buffer by any request).
// Once a large request is seen, the buffers' part turns to transparent huge pages (1 MiB
// writes through 4 KiB pages ran at 0.55x the rate through 2 MiB pages, bench row nraid);
// back to small pages when every thread has idled.
constexpr uint32_t kOurMinorVersion = 38;
constexpr uint64_t kRootNodeId = FUSE_ROOT_ID;
constexpr uint64_t kAttrValidSeconds = 1;

static_assert(kWriteHeaderBytes == 80);
static_assert(kWorkerBufferBytes % kBlockBytes == 0 && kFrontendStackBytes % kBlockBytes == 0, "buffers and stacks stay block-aligned in the arena");
static_assert(sizeof(fuse_out_header) <= kFuseHeaderRoomBytes);
static_assert(kReadSizeBytes >= kWriteHeaderBytes + kRequestBytesMax, "the kernel refuses a read() shorter than this");

// The arena kept for the next frontend of this process: mapped at daemon start
// (prepare_memory) or left by an earlier frontend (its pages given back).
// Never destroyed: the preparing thread is detached and may still run when the process exits.
struct Arena {
  uint8_t* base = nullptr;
  size_t bytes = 0;
};
std::mutex& g_arena_mutex = *new std::mutex;
Arena& g_spare_arena = *new Arena;

// The buffers' part, whole huge pages: the stacks start after it.
size_t buffers_bytes_for(uint32_t threads) { return round_to_huge(kWorkerBufferBytes * threads); }

size_t arena_bytes_for(uint32_t threads) { return buffers_bytes_for(threads) + round_to_huge(kFrontendStackBytes * threads); }

// Every buffer and stack in one mapping, nothing touched: a page becomes resident (and, with
// lock-memory, locked: mlock2 MLOCK_ONFAULT in start()) when a thread first uses it. Populating
// all of it up front cost 60 MiB resident at 48 threads whether or not they ever served (issue
// 12: 1 TiB at <= 100 MiB); first touches now cost a fault per 4 KiB page, once per thread
// (and again after an idle trim), on the request that touches it.
bool map_arena(size_t bytes, Arena* arena, std::string* error) {
  uint8_t* aligned = map_huge_aligned(bytes);
  if (aligned == nullptr) {
    *error = std::string("cannot map the frontend's request buffers and stacks: ") + strerror(errno);
    return false;
  }
  arena->base = aligned;
  arena->bytes = bytes;
  ::madvise(arena->base, bytes, MADV_NOHUGEPAGE);  // small pages until large requests (run_trimmer)
  return true;
}

fuse_attr volume_attr(uint64_t size_bytes) {
  fuse_attr attr{};
  attr.ino = kRootNodeId;
  attr.size = size_bytes;
  attr.blocks = size_bytes / kSectorBytes;
  attr.mode = S_IFREG | 0600;
  attr.nlink = 1;
  attr.blksize = kBlockBytes;
  return attr;
}

void wake(int) {}

// SIGURG is ignored by default, and an ignored signal interrupts nothing: give
// it an empty handler without SA_RESTART so that it breaks a blocked read().
void install_wake_handler() {
  struct sigaction action {};
  action.sa_handler = wake;
  sigemptyset(&action.sa_mask);
  action.sa_flags = 0;
  sigaction(SIGURG, &action, nullptr);
}

}  // namespace

FuseFrontend::FuseFrontend(Pipeline* pipeline, FrontendOptions options)
    : pipeline_(pipeline), options_(std::move(options)) {
  NRAID_ASSERT(options_.threads >= kFrontendThreadsMin && options_.threads <= kFrontendThreadsMax);
}

FuseFrontend::~FuseFrontend() { stop(); }

bool FuseFrontend::start(std::string* error) {
  NRAID_ASSERT(fd_ < 0);
  install_wake_handler();
  if (options_.fuse_fd >= 0) {
    // The same open file as the holder's: requests read through it stay with the holder's file when we die.
    fd_ = ::fcntl(options_.fuse_fd, F_DUPFD_CLOEXEC, 0);
    if (fd_ < 0) {
      *error = "the /dev/fuse descriptor " + std::to_string(options_.fuse_fd) + " from the holder: " + strerror(errno);
      return false;
    }
  } else {
    NRAID_ASSERT(!options_.adopt);
    fd_ = ::open("/dev/fuse", O_RDWR | O_CLOEXEC);
  }
  if (fd_ < 0) {
    *error = std::string("open /dev/fuse: ") + strerror(errno);
    return false;
  }
  workers_ = std::vector<Worker>(options_.threads);
  {
    // The prepared (or an earlier frontend's) arena if it is large enough.
    std::lock_guard<std::mutex> lock(g_arena_mutex);
    size_t needed = arena_bytes_for(options_.threads);
    Arena arena;
    if (g_spare_arena.bytes >= needed) {
      arena = g_spare_arena;
      g_spare_arena = Arena();
    } else if (!map_arena(needed, &arena, error)) {
      stop();
      return false;
    }
    arena_ = arena.base;
    arena_bytes_ = arena.bytes;
  }
  // Keep what the serving threads touch resident: their buffers and stacks, locked as they are
  // touched (MLOCK_ONFAULT: nothing populated now). (mlockall would also pin V8's heap, which V8
  // cannot tear down then.)
  if (options_.lock_memory && mlock2(arena_, arena_bytes_, MLOCK_ONFAULT) != 0) {
    *error = std::string("mlock of the frontend's buffers: ") + strerror(errno);
    stop();
    return false;
  }
  for (uint32_t i = 0; i < options_.threads; i++) {
    Worker& worker = workers_[i];
    worker.frontend = this;
    worker.slot = i;
    worker.buffer = arena_ + i * kWorkerBufferBytes;
    worker.stack = arena_ + buffers_bytes_for(options_.threads) + i * kFrontendStackBytes;
  }
  if (options_.adopt) {
    // The kernel sends FUSE_INIT once per connection: the daemon that mounted it answered it
    // with what we would answer (handle() below), so the connection runs on those terms.
    initialized_.store(true, std::memory_order_release);
  } else {
    char mount_options[256];
    // allow_other lets the loop driver (and root's programs) in; default_permissions makes the kernel
    // check the volume's owner and mode (root, 0600) on every open, so no other user can read or write it.
    snprintf(mount_options, sizeof(mount_options),
             "fd=%d,rootmode=%o,user_id=0,group_id=0,allow_other,default_permissions,max_read=%u", fd_,
             S_IFREG | 0600, kRequestBytesMax);
    if (::mount(options_.source.c_str(), options_.mount_path.c_str(), "fuse", MS_NOSUID | MS_NODEV | MS_NOATIME,
                mount_options) != 0) {
      *error = "mount fuse on " + options_.mount_path + ": " + strerror(errno);
      stop();
      return false;
    }
  }
  mounted_ = true;
  for (auto& worker : workers_) {
    pthread_attr_t attr;
    pthread_attr_init(&attr);
    pthread_attr_setstack(&attr, worker.stack, kFrontendStackBytes);
    int rc = pthread_create(&worker.thread, &attr, &FuseFrontend::run_worker, &worker);
    pthread_attr_destroy(&attr);
    if (rc != 0) {
      *error = std::string("cannot start a frontend thread: ") + strerror(rc);
      stop();
      return false;
    }
    worker.started = true;
  }
  trimmer_ = std::thread([this] { run_trimmer(); });
  if (options_.adopt) {
    // Every request the previous daemon read and never answered goes back to the queue (unique
    // marked FUSE_UNIQUE_RESEND); the threads above serve them like new ones. A write applied
    // twice at one offset is the same write; a flush honoured twice is still a flush.
    fuse_out_header notify{};
    notify.len = sizeof(notify);
    notify.error = kFuseNotifyResend;
    notify.unique = 0;
    if (::write(fd_, &notify, sizeof(notify)) < 0) {
      int saved = errno;
      *error = std::string("FUSE_NOTIFY_RESEND (needs Linux >= 6.9) on the held /dev/fuse: ") + strerror(saved);
      release();
      errno = saved;
      return false;
    }
  }
  return true;
}

void FuseFrontend::prepare_memory(uint32_t threads) {
  NRAID_ASSERT(threads <= kFrontendThreadsMax);
  std::lock_guard<std::mutex> lock(g_arena_mutex);
  size_t needed = arena_bytes_for(threads);
  if (g_spare_arena.bytes >= needed) return;
  Arena arena;
  std::string error;
  if (!map_arena(needed, &arena, &error)) return;  // start() reports it, if it happens again there
  if (g_spare_arena.base != nullptr) ::munmap(g_spare_arena.base, g_spare_arena.bytes);
  g_spare_arena = arena;
}

void FuseFrontend::release() {
  mounted_ = false;
  stop();
}

void FuseFrontend::stop() {
  stopping_.store(true, std::memory_order_release);
  {
    // No trim signal after this: the threads it would signal are joined below.
    std::lock_guard<std::mutex> lock(trimmer_mutex_);
    trimmer_cv_.notify_all();
  }
  if (trimmer_.joinable()) trimmer_.join();
  if (mounted_) {
    // Unmounting ends the FUSE connection once nobody holds the file: the
    // control plane detaches the loop device first. If something still holds
    // it, detach lazily and abort the connection so that no thread hangs.
    if (::umount2(options_.mount_path.c_str(), UMOUNT_NOFOLLOW) != 0) {
      ::umount2(options_.mount_path.c_str(), MNT_DETACH | UMOUNT_NOFOLLOW);
    }
    mounted_ = false;
  }
  // Threads blocked in read() on /dev/fuse see ENODEV once the connection ends.
  // A connection kept alive by a lazy unmount is ended by closing our descriptor
  // only after the threads leave read(), so wake them with a signal as well.
  // Every thread woken at once, then each waited for: one by one (a signal, then at least a
  // millisecond's sleep each) took 48+ ms for 48 threads, all of it in `nraid restart`'s pause.
  for (auto& worker : workers_) {
    if (worker.started) pthread_kill(worker.thread, SIGURG);
  }
  for (auto& worker : workers_) {
    if (!worker.started) continue;
    // A thread may be between its check of stopping_ and read(): signal until it leaves.
    while (!worker.exited.load(std::memory_order_acquire)) {
      pthread_kill(worker.thread, SIGURG);
      usleep(1000);
    }
    pthread_join(worker.thread, nullptr);
    worker.started = false;
  }
  if (arena_ != nullptr) {
    // Kept for the next frontend of this process (a promotion, an adopted restart), unless
    // a spare one is kept already: one arena per process at most besides the serving one.
    std::lock_guard<std::mutex> lock(g_arena_mutex);
    munlock(arena_, arena_bytes_);
    ::madvise(arena_, arena_bytes_, MADV_DONTNEED);  // every thread is joined: nothing in it is in use
    ::madvise(arena_, arena_bytes_, MADV_NOHUGEPAGE);  // the next frontend starts on small pages
    if (g_spare_arena.base == nullptr) {
      g_spare_arena = Arena{arena_, arena_bytes_};
    } else {
      ::munmap(arena_, arena_bytes_);
    }
    arena_ = nullptr;
    arena_bytes_ = 0;
  }
  workers_.clear();
  if (fd_ >= 0) {
    ::close(fd_);
    fd_ = -1;
  }
}

void* FuseFrontend::run_worker(void* arg) {
  auto* worker = static_cast<Worker*>(arg);
  name_thread("nraid-fuse");
  if (worker->frontend->options_.lock_memory) prctl(PR_SET_IO_FLUSHER, 1, 0, 0, 0);
  sigset_t set;
  sigemptyset(&set);
  sigaddset(&set, SIGURG);
  pthread_sigmask(SIG_UNBLOCK, &set, nullptr);
  worker->frontend->serve(worker);
  worker->exited.store(true, std::memory_order_release);
  return nullptr;
}

void FuseFrontend::serve(Worker* worker) {
  uint8_t* request = worker->buffer + kReadOffsetBytes;
  uint64_t served = 0;  // this thread's count; worker->served is its published copy
  while (!stopping_.load(std::memory_order_acquire)) {
    if (worker->trim.load(std::memory_order_acquire)) trim(worker);
    worker->in_read.store(true, std::memory_order_release);
    ssize_t n = ::read(fd_, request, kReadSizeBytes);
    worker->in_read.store(false, std::memory_order_relaxed);
    if (n < 0) {
      if (errno == EINTR || errno == EAGAIN || errno == ENOENT) continue;  // ENOENT: request was interrupted
      break;  // ENODEV: unmounted or aborted
    }
    worker->resident.store(true, std::memory_order_relaxed);  // the request touched the buffer
    if (static_cast<size_t>(n) < sizeof(fuse_in_header)) continue;
    handle(worker->slot, request, static_cast<size_t>(n), worker->buffer);
    worker->served.store(++served, std::memory_order_relaxed);
  }
}

// On the worker's own thread, between requests (so nothing in its buffer is in use): its buffer's
// pages and the unused part of its stack go back to the kernel; they come back, zero-filled and
// locked, when touched again. Locked pages cannot be dropped: unlock, drop, lock on fault again.
void FuseFrontend::trim(Worker* worker) {
  worker->trim.store(false, std::memory_order_relaxed);
  if (!worker->resident.load(std::memory_order_relaxed)) return;
  if (options_.lock_memory) {
    munlock(worker->buffer, kWorkerBufferBytes);
    munlock(worker->stack, kFrontendStackBytes);
  }
  ::madvise(worker->buffer, kWorkerBufferBytes, MADV_DONTNEED);
  // The stack grows down from its top: drop what lies below this frame, less a margin.
  auto here = reinterpret_cast<uintptr_t>(__builtin_frame_address(0));
  auto stack = reinterpret_cast<uintptr_t>(worker->stack);
  if (here > stack + kFrontendStackKeptBytes) {
    uintptr_t end = (here - kFrontendStackKeptBytes) / kBlockBytes * kBlockBytes;
    if (end > stack) ::madvise(worker->stack, end - stack, MADV_DONTNEED);
  }
  if (options_.lock_memory) {
    mlock2(worker->buffer, kWorkerBufferBytes, MLOCK_ONFAULT);
    mlock2(worker->stack, kFrontendStackBytes, MLOCK_ONFAULT);
  }
  worker->resident.store(false, std::memory_order_relaxed);
  trims_.fetch_add(1, std::memory_order_relaxed);
}

// Every kFrontendIdleCheckMs: a thread waiting in read() that served nothing since
// kFrontendIdleTrimMs, with pages to give back, is asked to trim itself (a flag, then SIGURG to
// take it out of read(); a request it reads meanwhile is served first, the trim after).
void FuseFrontend::run_trimmer() {
  name_thread("nraid-fuse-trim");
  const uint32_t idle_checks = kFrontendIdleTrimMs / kFrontendIdleCheckMs;
  std::vector<uint64_t> seen(workers_.size(), 0);
  std::vector<uint32_t> quiet(workers_.size(), 0);
  const size_t buffers_bytes = buffers_bytes_for(options_.threads);
  bool huge = false;
  std::unique_lock<std::mutex> lock(trimmer_mutex_);
  while (!stopping_.load(std::memory_order_acquire)) {
    trimmer_cv_.wait_for(lock, std::chrono::milliseconds(kFrontendIdleCheckMs));
    if (stopping_.load(std::memory_order_acquire)) break;
    bool large = large_request_seen_.exchange(false, std::memory_order_acq_rel);
    if (large && !huge) {
      // Large requests: the buffers to huge pages, new faults and (MADV_COLLAPSE, Linux >= 6.1,
      // safe while threads use them: a range in use by I/O is skipped) what is resident now.
      ::madvise(arena_, buffers_bytes, MADV_HUGEPAGE);
      ::madvise(arena_, buffers_bytes, kMadvCollapse);
      // The collapse made every buffer resident: each thread gives its own back once idle.
      for (auto& worker : workers_) worker.resident.store(true, std::memory_order_relaxed);
      huge = true;
      huge_switches_.fetch_add(1, std::memory_order_relaxed);
    }
    bool any_resident = false;
    for (size_t i = 0; i < workers_.size(); i++) {
      Worker& worker = workers_[i];
      uint64_t served = worker.served.load(std::memory_order_relaxed);
      if (served != seen[i]) {
        seen[i] = served;
        quiet[i] = 0;
        continue;
      }
      if (!worker.resident.load(std::memory_order_relaxed)) continue;
      any_resident = true;
      if (++quiet[i] < idle_checks) continue;
      quiet[i] = 0;
      if (!worker.in_read.load(std::memory_order_acquire)) continue;  // busy with a long request
      worker.trim.store(true, std::memory_order_release);
      pthread_kill(worker.thread, SIGURG);
    }
    if (huge && !large && !any_resident) {
      // Every thread idled and gave its buffer back: small pages again for the next touches,
      // and the collapse's filling past the last buffer (no thread's) goes back too.
      ::madvise(arena_, buffers_bytes, MADV_NOHUGEPAGE);
      uint8_t* tail = arena_ + static_cast<size_t>(options_.threads) * kWorkerBufferBytes;
      size_t tail_bytes = buffers_bytes - static_cast<size_t>(options_.threads) * kWorkerBufferBytes;
      if (tail_bytes > 0) {
        if (options_.lock_memory) munlock(tail, tail_bytes);
        ::madvise(tail, tail_bytes, MADV_DONTNEED);
        if (options_.lock_memory) mlock2(tail, tail_bytes, MLOCK_ONFAULT);
      }
      huge = false;
    }
  }
}

void FuseFrontend::reply(uint64_t unique, int error, const void* body, size_t body_bytes) {
  fuse_out_header out{};
  out.unique = unique;
  out.error = error;
  out.len = static_cast<uint32_t>(sizeof(out) + (error == 0 ? body_bytes : 0));
  iovec iov[2] = {{&out, sizeof(out)}, {const_cast<void*>(body), error == 0 ? body_bytes : 0}};
  // ENOENT: the request was interrupted and is gone; nothing else is expected.
  while (::writev(fd_, iov, error == 0 && body_bytes > 0 ? 2 : 1) < 0 && errno == EINTR) {
  }
}

void FuseFrontend::reply_data(uint64_t unique, uint8_t* data, uint32_t data_bytes) {
  // The room in front of the data holds the reply header: one contiguous write.
  auto* out = reinterpret_cast<fuse_out_header*>(data - sizeof(fuse_out_header));
  out->unique = unique;
  out->error = 0;
  out->len = static_cast<uint32_t>(sizeof(fuse_out_header) + data_bytes);
  while (::write(fd_, out, out->len) < 0 && errno == EINTR) {
  }
}

void FuseFrontend::handle(uint32_t slot, uint8_t* request, size_t request_bytes, uint8_t* buffer) {
  auto* in = reinterpret_cast<fuse_in_header*>(request);
  const uint8_t* arg = request + sizeof(fuse_in_header);
  const uint64_t size_bytes = pipeline_->data_size_bytes();
  switch (in->opcode) {
    case FUSE_INIT: {
      auto* init = reinterpret_cast<const fuse_init_in*>(arg);
      fuse_init_out out{};
      out.major = FUSE_KERNEL_VERSION;
      out.minor = init->minor < kOurMinorVersion ? init->minor : kOurMinorVersion;
      if (init->major != FUSE_KERNEL_VERSION) {
        reply(in->unique, 0, &out, sizeof(out));  // the kernel retries with our major or gives up
        return;
      }
      const uint32_t wanted = FUSE_ASYNC_DIO | FUSE_BIG_WRITES | FUSE_MAX_PAGES | FUSE_ASYNC_READ;
      out.flags = init->flags & wanted;
      out.max_readahead = init->max_readahead;
      out.max_background = kFuseMaxBackground;
      out.congestion_threshold = kFuseCongestionThreshold;
      out.max_write = kRequestBytesMax;
      out.time_gran = 1;
      out.max_pages = kRequestBytesMax / kFusePageBytes;
      reply(in->unique, 0, &out, sizeof(out));
      initialized_.store(true, std::memory_order_release);
      return;
    }
    case FUSE_WRITE: {
      auto* write_in = reinterpret_cast<const fuse_write_in*>(arg);
      if (in->total_extlen != 0 || request_bytes != kWriteHeaderBytes + write_in->size) {
        reply(in->unique, -EPROTO, nullptr, 0);
        return;
      }
      uint8_t* data = buffer + kFuseHeaderRoomBytes;
      NRAID_ASSERT(request + kWriteHeaderBytes == data);
      if (write_in->size >= kFrontendHugeRequestBytes) note_large_request();
      int rc = pipeline_->write(slot, data, write_in->size, write_in->offset);
      fuse_write_out out{};
      out.size = write_in->size;
      reply(in->unique, rc, &out, sizeof(out));
      return;
    }
    case FUSE_READ: {
      auto* read_in = reinterpret_cast<const fuse_read_in*>(arg);
      uint64_t offset = read_in->offset;
      uint32_t length = read_in->size;
      if (length > kRequestBytesMax) length = kRequestBytesMax;
      if (offset >= size_bytes) length = 0;
      else if (length > size_bytes - offset) length = static_cast<uint32_t>(size_bytes - offset);
      uint8_t* data = buffer + kFuseHeaderRoomBytes;
      if (length >= kFrontendHugeRequestBytes) note_large_request();
      int rc = length == 0 ? 0 : pipeline_->read(slot, data, length, offset);
      if (rc != 0) {
        reply(in->unique, rc, nullptr, 0);
      } else {
        reply_data(in->unique, data, length);
      }
      return;
    }
    case FUSE_FSYNC:
    case FUSE_FLUSH:
    case FUSE_SYNCFS: {
      // Never ENOSYS here: the kernel would stop sending flushes, and they would silently stop being durable.
      reply(in->unique, pipeline_->flush(), nullptr, 0);
      return;
    }
    case FUSE_FALLOCATE: {
      auto* fallocate_in = reinterpret_cast<const fuse_fallocate_in*>(arg);
      uint32_t mode = fallocate_in->mode & ~static_cast<uint32_t>(FALLOC_FL_KEEP_SIZE);
      uint64_t offset = fallocate_in->offset;
      uint64_t length = fallocate_in->length;
      int rc;
      if (offset > size_bytes || length > size_bytes - offset) {
        rc = -EINVAL;
      } else if (mode == FALLOC_FL_PUNCH_HOLE) {
        rc = pipeline_->discard(slot, offset, length);
      } else if (mode == FALLOC_FL_ZERO_RANGE) {
        rc = pipeline_->zero_out(slot, offset, length);
      } else if (mode == 0) {
        rc = 0;  // the volume is fully allocated already
      } else {
        rc = -EOPNOTSUPP;  // never ENOSYS, which would turn fallocate off for good
      }
      reply(in->unique, rc, nullptr, 0);
      return;
    }
    case FUSE_GETATTR:
    case FUSE_SETATTR: {
      fuse_attr_out out{};
      out.attr_valid = kAttrValidSeconds;
      out.attr = volume_attr(size_bytes);
      reply(in->unique, 0, &out, sizeof(out));
      return;
    }
    case FUSE_OPEN: {
      fuse_open_out out{};
      out.open_flags = FOPEN_DIRECT_IO | FOPEN_PARALLEL_DIRECT_WRITES;
      reply(in->unique, 0, &out, sizeof(out));
      return;
    }
    case FUSE_RELEASE:
    case FUSE_ACCESS:
      reply(in->unique, 0, nullptr, 0);
      return;
    case FUSE_STATFS: {
      fuse_statfs_out out{};
      out.st.blocks = size_bytes / kBlockBytes;
      out.st.bsize = kBlockBytes;
      out.st.frsize = kBlockBytes;
      out.st.namelen = 255;
      out.st.files = 1;
      reply(in->unique, 0, &out, sizeof(out));
      return;
    }
    case FUSE_LOOKUP:
      reply(in->unique, -ENOENT, nullptr, 0);
      return;
    case FUSE_FORGET:
    case FUSE_BATCH_FORGET:
    case FUSE_INTERRUPT:
      return;  // no reply expected; an interrupted request still completes normally
    case FUSE_DESTROY:
      reply(in->unique, 0, nullptr, 0);
      return;
    default:
      requests_unknown_.fetch_add(1, std::memory_order_relaxed);
      reply(in->unique, -ENOSYS, nullptr, 0);
      return;
  }
}

}  // namespace nraid
