#include "local_io.h"

#include <errno.h>
#include <fcntl.h>
#include <linux/aio_abi.h>
#include <linux/falloc.h>
#include <linux/fs.h>
#include <poll.h>
#include <string.h>
#include <sys/ioctl.h>
#include <sys/file.h>
#include <sys/stat.h>
#include <sys/syscall.h>
#include <unistd.h>

#include <algorithm>

#include "nraid_assert.h"

namespace nraid {

LocalDisk* LocalDisk::open(const std::string& path, bool read_only, std::string* error) {
  int flags = (read_only ? O_RDONLY : O_RDWR) | O_DIRECT | O_CLOEXEC;
  // A block device opened O_EXCL cannot be opened O_EXCL or mounted by anyone else.
  struct stat st;
  if (::stat(path.c_str(), &st) != 0) {
    int saved = errno;
    *error = "stat " + path + ": " + strerror(saved);
    errno = saved;
    return nullptr;
  }
  bool block = S_ISBLK(st.st_mode);
  if (!block && !S_ISREG(st.st_mode)) {
    *error = path + " is neither a block device nor a regular file";
    errno = EINVAL;
    return nullptr;
  }
  if (block && !read_only) flags |= O_EXCL;
  int fd = ::open(path.c_str(), flags);
  if (fd < 0) {
    int saved = errno;
    *error = "open " + path + ": " + strerror(saved);
    if (saved == EBUSY) *error += " (it is mounted or held by another program)";
    errno = saved;
    return nullptr;
  }
  // A file has no O_EXCL: an exclusive flock (per open file description, released with it) keeps a
  // second resource or create-md off a file a running daemon holds, as O_EXCL does for a block device.
  if (!block && !read_only && ::flock(fd, LOCK_EX | LOCK_NB) != 0) {
    int saved = errno == EWOULDBLOCK ? EBUSY : errno;
    *error = "flock " + path + ": " + strerror(saved) + " (a running nraid daemon or another program holds it)";
    ::close(fd);
    errno = saved;
    return nullptr;
  }
  auto* disk = new LocalDisk();
  disk->path_ = path;
  disk->fd_ = fd;
  disk->is_block_device_ = block;
  if (block) {
    uint64_t size = 0;
    int logical = 512;
    if (ioctl(fd, BLKGETSIZE64, &size) != 0 || ioctl(fd, BLKSSZGET, &logical) != 0) {
      int saved = errno;
      *error = "ioctl " + path + ": " + strerror(saved);
      delete disk;
      errno = saved;
      return nullptr;
    }
    disk->size_bytes_ = size;
    disk->logical_block_bytes_ = static_cast<uint32_t>(logical);
  } else {
    disk->size_bytes_ = static_cast<uint64_t>(st.st_size);
    disk->logical_block_bytes_ = 512;
  }
  return disk;
}

LocalDisk::~LocalDisk() {
  if (fd_ >= 0) ::close(fd_);
}

int LocalDisk::write(const void* data, uint64_t length_bytes, uint64_t offset_bytes) {
  NRAID_ASSERT(reinterpret_cast<uintptr_t>(data) % logical_block_bytes_ == 0);
  NRAID_ASSERT(length_bytes % logical_block_bytes_ == 0 && offset_bytes % logical_block_bytes_ == 0);
  const auto* bytes = static_cast<const uint8_t*>(data);
  uint64_t done = 0;
  while (done < length_bytes) {
    ssize_t n = ::pwrite(fd_, bytes + done, length_bytes - done, static_cast<off_t>(offset_bytes + done));
    if (n < 0) {
      if (errno == EINTR) continue;
      return -errno;
    }
    if (n == 0) return -EIO;
    done += static_cast<uint64_t>(n);
  }
  return 0;
}

int LocalDisk::read(void* data, uint64_t length_bytes, uint64_t offset_bytes) {
  NRAID_ASSERT(reinterpret_cast<uintptr_t>(data) % logical_block_bytes_ == 0);
  NRAID_ASSERT(length_bytes % logical_block_bytes_ == 0 && offset_bytes % logical_block_bytes_ == 0);
  auto* bytes = static_cast<uint8_t*>(data);
  uint64_t done = 0;
  while (done < length_bytes) {
    ssize_t n = ::pread(fd_, bytes + done, length_bytes - done, static_cast<off_t>(offset_bytes + done));
    if (n < 0) {
      if (errno == EINTR) continue;
      return -errno;
    }
    if (n == 0) return -EIO;  // past the end: never expected inside the data area
    done += static_cast<uint64_t>(n);
  }
  return 0;
}

int LocalDisk::flush() { return ::fdatasync(fd_) == 0 ? 0 : -errno; }

int LocalDisk::discard(uint64_t offset_bytes, uint64_t length_bytes) {
  // Nothing to do; fallocate() would refuse it with EINVAL, which a caller
  // (the applier, for a peer's frame) would take for a failing disk.
  if (length_bytes == 0) return 0;
  if (is_block_device_) {
    uint64_t range[2] = {offset_bytes, length_bytes};
    if (ioctl(fd_, BLKDISCARD, range) == 0) return 0;
    // A device without discard support: the data may stay, which is allowed for a discard.
    return errno == EOPNOTSUPP ? 0 : -errno;
  }
  int rc = ::fallocate(fd_, FALLOC_FL_PUNCH_HOLE | FALLOC_FL_KEEP_SIZE, static_cast<off_t>(offset_bytes),
                       static_cast<off_t>(length_bytes));
  return rc == 0 ? 0 : -errno;
}

int LocalDisk::zero_out(uint64_t offset_bytes, uint64_t length_bytes) {
  if (length_bytes == 0) return 0;  // as for discard()
  if (is_block_device_) {
    uint64_t range[2] = {offset_bytes, length_bytes};
    return ioctl(fd_, BLKZEROOUT, range) == 0 ? 0 : -errno;
  }
  int rc = ::fallocate(fd_, FALLOC_FL_ZERO_RANGE | FALLOC_FL_KEEP_SIZE, static_cast<off_t>(offset_bytes),
                       static_cast<off_t>(length_bytes));
  return rc == 0 ? 0 : -errno;
}

int LocalDisk::zero_out_sparse(uint64_t offset_bytes, uint64_t length_bytes) {
  if (length_bytes == 0 || is_block_device_) return zero_out(offset_bytes, length_bytes);
  int rc = ::fallocate(fd_, FALLOC_FL_PUNCH_HOLE | FALLOC_FL_KEEP_SIZE, static_cast<off_t>(offset_bytes),
                       static_cast<off_t>(length_bytes));
  // A file system without hole punching still zeroes the range.
  return rc == 0 ? 0 : (errno == EOPNOTSUPP ? zero_out(offset_bytes, length_bytes) : -errno);
}

uint64_t LocalDisk::next_data(uint64_t offset_bytes, uint64_t limit_bytes) const {
  if (is_block_device_ || offset_bytes >= limit_bytes) return offset_bytes;
  off_t data = ::lseek(fd_, static_cast<off_t>(offset_bytes), SEEK_DATA);
  if (data < 0) return errno == ENXIO ? limit_bytes : offset_bytes;  // ENXIO: no data up to the end of the file
  return std::min(static_cast<uint64_t>(data), limit_bytes);
}

void AsyncIo::close() {
  if (context_ != 0) syscall(SYS_io_destroy, context_);
  context_ = 0;
}

int AsyncIo::open(uint32_t depth) {
  aio_context_t context = 0;
  if (syscall(SYS_io_setup, depth, &context) != 0) return -errno;
  context_ = context;
  return 0;
}

namespace {

int submit_one(unsigned long context, iocb* request) {
  iocb* list[1] = {request};
  for (;;) {
    long n = syscall(SYS_io_submit, context, 1, list);
    if (n == 1) return 0;
    if (n < 0 && errno == EINTR) continue;
    return n < 0 ? -errno : -EAGAIN;
  }
}

}  // namespace

int AsyncIo::submit(const LocalDisk* disk, uint16_t opcode, const void* data, uint64_t length_bytes,
                    uint64_t offset_bytes, uint64_t tag) {
  NRAID_ASSERT(reinterpret_cast<uintptr_t>(data) % disk->logical_block_bytes() == 0);
  NRAID_ASSERT(length_bytes % disk->logical_block_bytes() == 0 && offset_bytes % disk->logical_block_bytes() == 0);
  iocb request{};  // the kernel copies it during io_submit
  request.aio_data = tag;
  request.aio_lio_opcode = opcode;
  request.aio_fildes = static_cast<uint32_t>(disk->fd());
  request.aio_buf = reinterpret_cast<uint64_t>(data);
  request.aio_nbytes = length_bytes;
  request.aio_offset = static_cast<int64_t>(offset_bytes);
  return submit_one(context_, &request);
}

int AsyncIo::submit_write(const LocalDisk* disk, const void* data, uint64_t length_bytes, uint64_t offset_bytes,
                          uint64_t tag) {
  return submit(disk, IOCB_CMD_PWRITE, data, length_bytes, offset_bytes, tag);
}

int AsyncIo::submit_read(const LocalDisk* disk, void* data, uint64_t length_bytes, uint64_t offset_bytes,
                         uint64_t tag) {
  return submit(disk, IOCB_CMD_PREAD, data, length_bytes, offset_bytes, tag);
}

int AsyncIo::submit_poll(int fd, uint64_t tag) {
  iocb request{};
  request.aio_data = tag;
  request.aio_lio_opcode = IOCB_CMD_POLL;
  request.aio_fildes = static_cast<uint32_t>(fd);
  request.aio_buf = POLLIN;
  return submit_one(context_, &request);
}

int AsyncIo::reap(Completion* out, uint32_t max) {
  io_event events[kReapMax];
  if (max > kReapMax) max = kReapMax;
  for (;;) {
    long n = syscall(SYS_io_getevents, context_, 1, max, events, nullptr);
    if (n < 0 && errno == EINTR) continue;
    if (n < 0) return -errno;
    for (long i = 0; i < n; i++) out[i] = Completion{events[i].data, events[i].res};
    return static_cast<int>(n);
  }
}

}  // namespace nraid
