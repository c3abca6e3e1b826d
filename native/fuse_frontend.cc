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

#include <cstddef>
#include <mutex>
#include <vector>

#include "limits.h"
#include "nraid_assert.h"

#ifndef PR_SET_IO_FLUSHER
#define PR_SET_IO_FLUSHER 57
#endif

// Linux >= 6.9 (FUSE 7.40); the system headers here stop at 7.38.
constexpr int kFuseNotifyResend = 7;

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
constexpr uint32_t kOurMinorVersion = 38;
constexpr uint64_t kRootNodeId = FUSE_ROOT_ID;
constexpr uint64_t kAttrValidSeconds = 1;

static_assert(kWriteHeaderBytes == 80);
static_assert(sizeof(fuse_out_header) <= kFuseHeaderRoomBytes);
static_assert(kReadSizeBytes >= kWriteHeaderBytes + kRequestBytesMax, "the kernel refuses a read() shorter than this");

// Worker buffers and stacks, kept for the next frontend of this process (see prepare_memory).
// Never destroyed: the preparing thread is detached and may still run when the process exits.
struct WorkerMemory {
  uint8_t* buffer = nullptr;
  void* stack = nullptr;
};
std::mutex& g_memory_mutex = *new std::mutex;
std::vector<WorkerMemory>& g_memory_pool = *new std::vector<WorkerMemory>;

// A buffer and a stack, every page touched now (not on the write path); false when out of memory.
bool allocate_worker_memory(WorkerMemory* memory) {
  void* buffer = nullptr;
  if (posix_memalign(&buffer, kBlockBytes, kWorkerBufferBytes) != 0) return false;
  void* stack = nullptr;
  if (posix_memalign(&stack, kBlockBytes, kFrontendStackBytes) != 0) {
    free(buffer);
    return false;
  }
  memset(buffer, 0, kWorkerBufferBytes);
  memset(stack, 0, kFrontendStackBytes);
  memory->buffer = static_cast<uint8_t*>(buffer);
  memory->stack = stack;
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
    // Prepared (or left by an earlier frontend) buffers and stacks first: their pages are resident.
    std::lock_guard<std::mutex> lock(g_memory_mutex);
    for (uint32_t i = 0; i < options_.threads; i++) {
      Worker& worker = workers_[i];
      worker.frontend = this;
      worker.slot = i;
      WorkerMemory memory;
      if (!g_memory_pool.empty()) {
        memory = g_memory_pool.back();
        g_memory_pool.pop_back();
      } else if (!allocate_worker_memory(&memory)) {
        *error = "cannot allocate the frontend's request buffers and thread stacks";
        stop();
        return false;
      }
      worker.buffer = memory.buffer;
      worker.stack = memory.stack;
    }
  }
  // Keep what the serving threads touch resident: their buffers and stacks.
  // (mlockall would also pin V8's heap, which V8 cannot tear down then.)
  for (auto& worker : workers_) {
    if (options_.lock_memory &&
        (mlock(worker.buffer, kWorkerBufferBytes) != 0 || mlock(worker.stack, kFrontendStackBytes) != 0)) {
      *error = std::string("mlock of the frontend's buffers: ") + strerror(errno);
      stop();
      return false;
    }
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
  std::lock_guard<std::mutex> lock(g_memory_mutex);
  while (g_memory_pool.size() < threads) {
    WorkerMemory memory;
    if (!allocate_worker_memory(&memory)) return;  // start() reports it, if it happens again there
    g_memory_pool.push_back(memory);
  }
}

void FuseFrontend::release() {
  mounted_ = false;
  stop();
}

void FuseFrontend::stop() {
  stopping_.store(true, std::memory_order_release);
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
  {
    // Kept for the next frontend of this process (prepare_memory); bounded by kFrontendThreadsMax.
    std::lock_guard<std::mutex> lock(g_memory_mutex);
    for (auto& worker : workers_) {
      if (worker.buffer != nullptr) munlock(worker.buffer, kWorkerBufferBytes);
      if (worker.stack != nullptr) munlock(worker.stack, kFrontendStackBytes);
      if (worker.buffer != nullptr && worker.stack != nullptr && g_memory_pool.size() < kFrontendThreadsMax) {
        g_memory_pool.push_back({worker.buffer, worker.stack});
      } else {
        free(worker.buffer);
        free(worker.stack);
      }
      worker.buffer = nullptr;
      worker.stack = nullptr;
    }
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
  while (!stopping_.load(std::memory_order_acquire)) {
    ssize_t n = ::read(fd_, request, kReadSizeBytes);
    if (n < 0) {
      if (errno == EINTR || errno == EAGAIN || errno == ENOENT) continue;  // ENOENT: request was interrupted
      break;  // ENODEV: unmounted or aborted
    }
    if (static_cast<size_t>(n) < sizeof(fuse_in_header)) continue;
    handle(worker->slot, request, static_cast<size_t>(n), worker->buffer);
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
