#pragma once
// The one threadsafe function of a pipeline (after TigerBeetle's client):
// everything native threads tell JavaScript goes through it. Data-plane
// events (at most kEventQueueMax queued; more are dropped and counted) and
// the completions of metadata jobs (at most kMetadataJobsMax outstanding),
// which settle their promises on the JavaScript thread. Both bounds are ours,
// so the queue is bounded and a completion is never dropped.
#include <node_api.h>

#include <atomic>
#include <cstdint>
#include <string>

#include "metadata_jobs.h"

namespace nraid {

class JsBridge {
 public:
  // JS thread. The threadsafe function calls `on_event(type, detail)`. It
  // keeps the event loop alive only while a job is outstanding. Throws a
  // Napi::Error when N-API refuses.
  static JsBridge* create(napi_env env, napi_value on_event);

  // Any thread; false when the event was dropped (queue full, or released).
  bool post_event(const std::string& type, const std::string& detail);
  // A lane's thread: a finished job goes to the JS thread, which settles it.
  void post_done(MetadataJob* job);

  // JS thread: a promise for `job` (its completion is set). False, and
  // `*promise` an already rejected one (EAGAIN), when kMetadataJobsMax are
  // outstanding: the caller keeps and frees the job.
  bool begin_job(napi_env env, MetadataJob* job, napi_value* promise);
  // JS thread: settles the job's promise from job->result, frees the job.
  void settle(napi_env env, MetadataJob* job);
  // JS thread: no posts after this; the bridge frees itself once its queue is
  // empty (it has two owners: the pipeline, until release, and the function).
  void release();

  uint64_t events_dropped() const { return events_dropped_.load(std::memory_order_relaxed); }

 private:
  JsBridge() = default;
  struct Message;
  bool post(Message* message);
  static void call_js(napi_env env, napi_value on_event, void* context, void* data);
  static void finalize(napi_env env, void* data, void* hint);
  void drop_owner();

  napi_threadsafe_function tsfn_ = nullptr;
  std::atomic<uint32_t> events_queued_{0};
  std::atomic<uint64_t> events_dropped_{0};
  uint32_t jobs_outstanding_ = 0;  // JS thread only
  std::atomic<int> owners_{2};
};

}  // namespace nraid
