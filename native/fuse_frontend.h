#pragma once
// The FUSE frontend: a single-file filesystem served straight from /dev/fuse
// (no libfuse), mounted with mount(2) onto a regular file. A direct-I/O loop
// device on that file (set up by the control plane) is the exposed block
// device. Each serving thread owns one aligned request buffer and carries one
// request at a time into the pipeline, so nothing is allocated per request.
#include <pthread.h>

#include <atomic>
#include <condition_variable>
#include <cstdint>
#include <mutex>
#include <string>
#include <thread>
#include <vector>

#include "pipeline.h"

namespace nraid {

struct FrontendOptions {
  std::string mount_path;  // an existing regular file; the volume appears there
  std::string source;      // shown in /proc/mounts
  uint32_t threads;
  bool lock_memory;  // mlock buffers and stacks + PR_SET_IO_FLUSHER: no deadlock under reclaim
  // A /dev/fuse descriptor that a holder process keeps open for us (it outlives
  // this process); -1: open our own. We serve a duplicate of it.
  int fuse_fd = -1;
  // The holder's connection is mounted and initialized already (an earlier
  // daemon did it and died or handed over): no mount, no FUSE_INIT; ask the
  // kernel with FUSE_NOTIFY_RESEND for what that daemon read but never answered.
  bool adopt = false;
};

class FuseFrontend {
 public:
  FuseFrontend(Pipeline* pipeline, FrontendOptions options);
  ~FuseFrontend();
  FuseFrontend(const FuseFrontend&) = delete;
  FuseFrontend& operator=(const FuseFrontend&) = delete;

  // Opens /dev/fuse, allocates every buffer, starts the threads, mounts.
  // Returns false and sets `error` on failure, leaving nothing behind.
  bool start(std::string* error);
  // Unmounts (lazily, so a stuck opener cannot block us), ends the connection
  // and joins every thread. Safe to call twice.
  void stop();
  // Stops serving but leaves the mount and the connection to the holder: each
  // thread answers the request it carries, then leaves. What the kernel queues
  // meanwhile waits for the next daemon (upgrade, `nraid restart`).
  void release();

  // Maps (without touching) the buffers and stacks of `threads` workers ahead
  // of the first start() (the daemon calls it at its start, off the event
  // loop). The mapping outlives each frontend, for the next start() of this
  // process; its pages become resident only as threads use them. Thread-safe.
  static void prepare_memory(uint32_t threads);

  uint64_t requests_unknown() const { return requests_unknown_.load(std::memory_order_relaxed); }
  // Idle threads' buffers and stacks given back so far (run_trimmer).
  uint64_t trims() const { return trims_.load(std::memory_order_relaxed); }
  // Times the buffers turned to huge pages after large requests (run_trimmer).
  uint64_t huge_switches() const { return huge_switches_.load(std::memory_order_relaxed); }
  bool initialized() const { return initialized_.load(std::memory_order_acquire); }
  // The descriptor we serve (for the holder to take a duplicate of); -1 when stopped.
  int fd() const { return fd_; }

 private:
  struct Worker {
    FuseFrontend* frontend = nullptr;
    uint32_t slot = 0;  // this thread's slot in the pipeline
    uint8_t* buffer = nullptr;  // kFuseBufferBytes + slack, kBlockBytes-aligned, in arena_
    void* stack = nullptr;      // in arena_, after the buffer
    pthread_t thread{};
    bool started = false;
    std::atomic<bool> exited{false};
    // Published by the thread for the trimmer: requests served, waiting in read(), pages touched
    // since the last trim. Set by the trimmer: give them back before the next read().
    std::atomic<uint64_t> served{0};
    std::atomic<bool> in_read{false};
    std::atomic<bool> resident{false};
    std::atomic<bool> trim{false};
  };
  static void* run_worker(void* arg);
  void serve(Worker* worker);
  void trim(Worker* worker);
  // On the serving path: one load, and a store only the first time in a check period.
  void note_large_request() {
    if (!large_request_seen_.load(std::memory_order_relaxed)) large_request_seen_.store(true, std::memory_order_relaxed);
  }
  void run_trimmer();
  void handle(uint32_t slot, uint8_t* request, size_t request_bytes, uint8_t* buffer);
  void reply(uint64_t unique, int error, const void* body, size_t body_bytes);
  void reply_data(uint64_t unique, uint8_t* data_with_room, uint32_t data_bytes);

  Pipeline* pipeline_;
  FrontendOptions options_;
  int fd_ = -1;
  bool mounted_ = false;
  std::vector<Worker> workers_;
  // Every worker's buffer, then every worker's stack: one mapping, 2 MiB aligned, resident (and
  // locked) as touched.
  uint8_t* arena_ = nullptr;
  size_t arena_bytes_ = 0;
  std::atomic<bool> stopping_{false};
  std::atomic<bool> initialized_{false};
  std::atomic<uint64_t> requests_unknown_{0};
  std::atomic<uint64_t> trims_{0};
  std::atomic<uint64_t> huge_switches_{0};
  std::atomic<bool> large_request_seen_{false};
  std::thread trimmer_;
  std::mutex trimmer_mutex_;
  std::condition_variable trimmer_cv_;
};

}  // namespace nraid
