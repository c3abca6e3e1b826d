#include "metadata_jobs.h"

#include <errno.h>
#include <stdlib.h>

#include "limits.h"
#include "link_io.h"
#include "nraid_assert.h"

namespace nraid {

MetadataJob::~MetadataJob() { free(image); }

namespace {

bool on_disk_lane(MetadataJobKind kind) {
  return kind == MetadataJobKind::kSuperblockWrite || kind == MetadataJobKind::kBitmapPersist ||
         kind == MetadataJobKind::kActivityLogReset;
}

}  // namespace

MetadataJobs::MetadataJobs(Pipeline* pipeline, Done done) : pipeline_(pipeline), done_(std::move(done)) {
  disk_.thread = std::thread([this] {
    name_thread("nraid-md-disk");
    lane_loop(&disk_);
  });
  link_.thread = std::thread([this] {
    name_thread("nraid-md-flush");
    lane_loop(&link_);
  });
}

MetadataJobs::~MetadataJobs() {
  // The owner stops first and settles what never ran; nothing may be left here.
  std::vector<MetadataJob*> left = stop();
  NRAID_ASSERT(left.empty());
}

bool MetadataJobs::submit(MetadataJob* job) {
  std::lock_guard<std::mutex> lock(mutex_);
  if (stopping_) return false;
  NRAID_ASSERT(disk_.queue.size() + link_.queue.size() < kMetadataJobsMax);
  if (on_disk_lane(job->kind)) {
    job->disk_ticket = ++disk_submitted_;
    disk_.queue.push_back(job);
    disk_.cv.notify_one();
  } else {
    job->disk_ticket = disk_submitted_;  // the disk jobs it must follow
    link_.queue.push_back(job);
    link_.cv.notify_one();
  }
  return true;
}

std::vector<MetadataJob*> MetadataJobs::stop() {
  std::vector<MetadataJob*> never_started;
  {
    std::lock_guard<std::mutex> lock(mutex_);
    stopping_ = true;
    for (Lane* lane : {&disk_, &link_}) {
      never_started.insert(never_started.end(), lane->queue.begin(), lane->queue.end());
      lane->queue.clear();
      lane->cv.notify_all();
    }
    disk_finished_cv_.notify_all();
  }
  for (Lane* lane : {&disk_, &link_}) {
    if (lane->thread.joinable()) lane->thread.join();
  }
  return never_started;
}

void MetadataJobs::lane_loop(Lane* lane) {
  for (;;) {
    MetadataJob* job;
    bool cancelled = false;
    {
      std::unique_lock<std::mutex> lock(mutex_);
      lane->cv.wait(lock, [&] { return stopping_ || !lane->queue.empty(); });
      if (stopping_) return;
      job = lane->queue.front();
      lane->queue.pop_front();
      if (lane == &link_) {
        // A flush covers the metadata writes submitted before it; when those
        // never run (stop), neither does the flush: it must not claim them durable.
        disk_finished_cv_.wait(lock, [&] { return stopping_ || disk_finished_ >= job->disk_ticket; });
        cancelled = disk_finished_ < job->disk_ticket;
      }
    }
    if (cancelled) {
      job->result = -ECANCELED;
    } else {
      run(job);
    }
    // Handed over before a flush behind it may run: JavaScript sees the
    // completions in the order the jobs were submitted, too.
    uint64_t ticket = job->disk_ticket;
    done_(job);
    if (lane == &disk_) {
      std::lock_guard<std::mutex> lock(mutex_);
      disk_finished_ = ticket;
      disk_finished_cv_.notify_all();
    }
  }
}

void MetadataJobs::run(MetadataJob* job) {
  switch (job->kind) {
    case MetadataJobKind::kSuperblockWrite:
      job->result = pipeline_->write_superblock(job->image, job->offset_bytes,
                                                job->has_successor ? job->image + kBlockBytes : nullptr,
                                                job->successor_offset_bytes);
      return;
    case MetadataJobKind::kBitmapPersist:
      job->result = pipeline_->activity_log().write_bitmap(job->flush);
      return;
    case MetadataJobKind::kActivityLogReset:
      job->result = pipeline_->activity_log().reset();
      return;
    case MetadataJobKind::kFlush:
      job->result = pipeline_->flush_durable(job->link, job->deadline_us);
      return;
    case MetadataJobKind::kDrain:
      job->result = pipeline_->drain(job->link, job->deadline_us);
      return;
  }
  NRAID_UNREACHABLE("a metadata job of no known kind");
}

}  // namespace nraid
