#pragma once
// Metadata work the control plane asks for, off the JavaScript thread: the
// superblock, the bitmap's write-back, the activity log's reset, flushes and
// drains. Two threads per pipeline, each with a FIFO:
//   disk lane: superblock writes, bitmap write-back, activity-log reset;
//   link lane: flushes and drains, which may wait for the peer.
// A flush or drain first waits until every disk job submitted before it is
// done, so it covers them (and settles after them); a disk job never waits
// behind a peer that is slow to answer. Each finished job goes to `done` on the lane's thread (the addon
// hands it to JavaScript through the pipeline's threadsafe function).
#include <condition_variable>
#include <cstdint>
#include <deque>
#include <functional>
#include <mutex>
#include <string>
#include <thread>
#include <vector>

#include "pipeline.h"

namespace nraid {

enum class MetadataJobKind : uint8_t { kSuperblockWrite, kBitmapPersist, kActivityLogReset, kFlush, kDrain };

struct MetadataJob {
  MetadataJobKind kind = MetadataJobKind::kFlush;
  // kSuperblockWrite: one block-aligned superblock slot image (the job owns it) and where it goes;
  // with a generation armed, the armed image to follow it (the block after `image`, same allocation).
  uint8_t* image = nullptr;
  uint64_t offset_bytes = 0;
  bool has_successor = false;
  uint64_t successor_offset_bytes = 0;
  // kBitmapPersist: durably.
  bool flush = false;
  // kFlush, kDrain: the data link as it was at submission; the monotonic deadline (0: none).
  LinkSnapshot link{};
  uint64_t deadline_us = 0;
  // Set by the lane: >= 0 the result (bytes written for kBitmapPersist), else -errno; a message for an error.
  int64_t result = 0;
  std::string error;
  // The submitter's: what settles the job on its side.
  void* completion = nullptr;
  // Internal: the disk jobs submitted before this one (a flush waits for them).
  uint64_t disk_ticket = 0;

  ~MetadataJob();
};

class MetadataJobs {
 public:
  using Done = std::function<void(MetadataJob*)>;
  MetadataJobs(Pipeline* pipeline, Done done);
  ~MetadataJobs();
  MetadataJobs(const MetadataJobs&) = delete;
  MetadataJobs& operator=(const MetadataJobs&) = delete;

  // Queues the job on its lane; false once stopped (the job is not taken).
  bool submit(MetadataJob* job);
  // Lets the running jobs finish (the caller first detaches the link, so that
  // none waits for the peer), joins both threads, and hands back every job
  // that never started: the caller settles them. Idempotent.
  std::vector<MetadataJob*> stop();

 private:
  struct Lane {
    std::deque<MetadataJob*> queue;
    std::condition_variable cv;
    std::thread thread;
  };
  void lane_loop(Lane* lane);
  void run(MetadataJob* job);

  Pipeline* pipeline_;
  Done done_;
  std::mutex mutex_;
  bool stopping_ = false;
  uint64_t disk_submitted_ = 0;  // tickets handed to disk jobs
  uint64_t disk_finished_ = 0;   // disk jobs done, in order (one thread)
  std::condition_variable disk_finished_cv_;
  Lane disk_;
  Lane link_;
};

}  // namespace nraid
