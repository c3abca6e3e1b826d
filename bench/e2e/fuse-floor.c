// The FUSE + loop floor: the least any server behind a direct-I/O loop device
// on a /dev/fuse file can do for a write. A single-file FUSE filesystem whose
// threads block in read(/dev/fuse), pwrite the payload to a backing device
// opened with O_DIRECT, and reply. No metadata, no activity log, no bitmap,
// no replication, no counters: the row in the bench that says how much of
// nraid's cost is ours and how much is the frontend's.
//
//   fuse-floor <mount file> <backing device or file> <threads>
//
// Mounted with mount(2) on an existing regular file (rootmode=100600), like
// nraid's frontend. Exits when the file is unmounted.
#define _GNU_SOURCE
#include <errno.h>
#include <fcntl.h>
#include <linux/fs.h>
#include <linux/fuse.h>
#include <pthread.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/ioctl.h>
#include <sys/mount.h>
#include <sys/stat.h>
#include <sys/uio.h>
#include <unistd.h>

#define REQUEST_BYTES_MAX (1u << 20)
#define WRITE_HEADER_BYTES (sizeof(struct fuse_in_header) + sizeof(struct fuse_write_in))
#define BUFFER_BYTES (REQUEST_BYTES_MAX + 2 * 4096)
#define THREADS_MAX 256

static int fuse_fd = -1;
static int backing_fd = -1;
static uint64_t size_bytes;

static void reply(uint64_t unique, int error, const void* body, size_t body_bytes) {
  if (error != 0) body_bytes = 0;
  struct fuse_out_header out = {.len = (uint32_t)(sizeof(out) + body_bytes), .error = error, .unique = unique};
  struct iovec iov[2] = {{&out, sizeof(out)}, {(void*)body, body_bytes}};
  while (writev(fuse_fd, iov, body_bytes > 0 ? 2 : 1) < 0 && errno == EINTR) {
  }
}

static void attr_of_volume(struct fuse_attr* attr) {
  memset(attr, 0, sizeof(*attr));
  attr->ino = FUSE_ROOT_ID;
  attr->size = size_bytes;
  attr->blocks = size_bytes / 512;
  attr->mode = S_IFREG | 0600;
  attr->nlink = 1;
  attr->blksize = 4096;
}

static void handle(uint8_t* request) {
  struct fuse_in_header* in = (struct fuse_in_header*)request;
  void* arg = request + sizeof(*in);
  switch (in->opcode) {
    case FUSE_INIT: {
      struct fuse_init_in* init = arg;
      struct fuse_init_out out = {0};
      out.major = FUSE_KERNEL_VERSION;
      out.minor = init->minor < 38 ? init->minor : 38;
      out.flags = init->flags & (FUSE_ASYNC_DIO | FUSE_BIG_WRITES | FUSE_MAX_PAGES | FUSE_ASYNC_READ);
      out.max_background = 64;
      out.congestion_threshold = 48;
      out.max_write = REQUEST_BYTES_MAX;
      out.max_pages = REQUEST_BYTES_MAX / 4096;
      out.time_gran = 1;
      reply(in->unique, 0, &out, sizeof(out));
      return;
    }
    case FUSE_WRITE: {
      struct fuse_write_in* write_in = arg;
      int error = 0;
      if (pwrite(backing_fd, request + WRITE_HEADER_BYTES, write_in->size, (off_t)write_in->offset) != (ssize_t)write_in->size) {
        error = errno != 0 ? -errno : -EIO;
      }
      struct fuse_write_out out = {.size = write_in->size};
      reply(in->unique, error, &out, sizeof(out));
      return;
    }
    case FUSE_READ: {
      struct fuse_read_in* read_in = arg;
      // The payload lands where a WRITE's would: aligned for O_DIRECT.
      uint8_t* data = request + WRITE_HEADER_BYTES;
      uint32_t length = read_in->size > REQUEST_BYTES_MAX ? REQUEST_BYTES_MAX : read_in->size;
      ssize_t n = pread(backing_fd, data, length, (off_t)read_in->offset);
      if (n < 0) reply(in->unique, -errno, NULL, 0);
      else reply(in->unique, 0, data, (size_t)n);
      return;
    }
    case FUSE_FSYNC:
    case FUSE_FLUSH:
      reply(in->unique, fdatasync(backing_fd) == 0 ? 0 : -errno, NULL, 0);
      return;
    case FUSE_GETATTR:
    case FUSE_SETATTR: {
      struct fuse_attr_out out = {0};
      out.attr_valid = 1;
      attr_of_volume(&out.attr);
      reply(in->unique, 0, &out, sizeof(out));
      return;
    }
    case FUSE_OPEN: {
      struct fuse_open_out out = {0};
      out.open_flags = FOPEN_DIRECT_IO | (1u << 4); /* FOPEN_PARALLEL_DIRECT_WRITES */
      reply(in->unique, 0, &out, sizeof(out));
      return;
    }
    case FUSE_RELEASE:
    case FUSE_DESTROY:
      reply(in->unique, 0, NULL, 0);
      return;
    case FUSE_FORGET:
    case FUSE_BATCH_FORGET:
    case FUSE_INTERRUPT:
      return;
    default:
      reply(in->unique, -ENOSYS, NULL, 0);
      return;
  }
}

static void* serve(void* unused) {
  (void)unused;
  uint8_t* buffer = NULL;
  if (posix_memalign((void**)&buffer, 4096, BUFFER_BYTES) != 0) return NULL;
  // Read so that a WRITE's payload starts on a 4 KiB boundary.
  uint8_t* request = buffer + 4096 - WRITE_HEADER_BYTES;
  for (;;) {
    ssize_t n = read(fuse_fd, request, BUFFER_BYTES - (4096 - WRITE_HEADER_BYTES));
    if (n < 0) {
      if (errno == EINTR || errno == EAGAIN || errno == ENOENT) continue;
      break;  // ENODEV: unmounted
    }
    if ((size_t)n >= sizeof(struct fuse_in_header)) handle(request);
  }
  free(buffer);
  return NULL;
}

int main(int argc, char** argv) {
  if (argc != 4) {
    fprintf(stderr, "usage: fuse-floor <mount file> <backing device or file> <threads>\n");
    return 2;
  }
  int threads = atoi(argv[3]);
  if (threads < 1 || threads > THREADS_MAX) {
    fprintf(stderr, "fuse-floor: threads must be 1..%d, got \"%s\"\n", THREADS_MAX, argv[3]);
    return 2;
  }
  backing_fd = open(argv[2], O_RDWR | O_DIRECT | O_CLOEXEC);
  if (backing_fd < 0) {
    fprintf(stderr, "fuse-floor: open %s: %s\n", argv[2], strerror(errno));
    return 1;
  }
  struct stat st;
  if (fstat(backing_fd, &st) != 0) return 1;
  size_bytes = (uint64_t)st.st_size;
  if (S_ISBLK(st.st_mode) && ioctl(backing_fd, BLKGETSIZE64, &size_bytes) != 0) {
    fprintf(stderr, "fuse-floor: size of %s: %s\n", argv[2], strerror(errno));
    return 1;
  }
  fuse_fd = open("/dev/fuse", O_RDWR | O_CLOEXEC);
  if (fuse_fd < 0) {
    fprintf(stderr, "fuse-floor: open /dev/fuse: %s\n", strerror(errno));
    return 1;
  }
  char options[256];
  snprintf(options, sizeof(options), "fd=%d,rootmode=%o,user_id=0,group_id=0,allow_other,max_read=%u", fuse_fd,
           S_IFREG | 0600, REQUEST_BYTES_MAX);
  if (mount("fuse-floor", argv[1], "fuse", MS_NOSUID | MS_NODEV | MS_NOATIME, options) != 0) {
    fprintf(stderr, "fuse-floor: mount on %s: %s\n", argv[1], strerror(errno));
    return 1;
  }
  pthread_t workers[THREADS_MAX];
  int started = 0;
  for (; started < threads; started++) {
    if (pthread_create(&workers[started], NULL, serve, NULL) != 0) break;
  }
  for (int i = 0; i < started; i++) pthread_join(workers[i], NULL);
  return 0;
}
