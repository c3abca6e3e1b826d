#include "js_bridge.h"

#include <errno.h>
#include <string.h>

#include <napi.h>

#include "limits.h"
#include "nraid_assert.h"

namespace nraid {

struct JsBridge::Message {
  std::string type;
  std::string detail;
  MetadataJob* job = nullptr;  // a completion when set, else an event
};

JsBridge* JsBridge::create(napi_env env, napi_value on_event) {
  auto* bridge = new JsBridge();
  napi_value name;
  napi_status status = napi_create_string_utf8(env, "nraid-pipeline", NAPI_AUTO_LENGTH, &name);
  // Queue size 0 (unlimited) for N-API: the bounds are kEventQueueMax and kMetadataJobsMax, kept here.
  if (status == napi_ok) {
    status = napi_create_threadsafe_function(env, on_event, nullptr, name, 0, 1, bridge, finalize, bridge, call_js,
                                             &bridge->tsfn_);
  }
  if (status != napi_ok) {
    delete bridge;  // no function, so no finalize either
    throw Napi::Error::New(Napi::Env(env), "pipelineCreate: cannot create the threadsafe function for events");
  }
  // Unref on the JS thread of a live function only flips its handle's ref.
  status = napi_unref_threadsafe_function(env, bridge->tsfn_);
  NRAID_ASSERT(status == napi_ok);
  return bridge;
}

bool JsBridge::post(Message* message) {
  if (napi_call_threadsafe_function(tsfn_, message, napi_tsfn_nonblocking) == napi_ok) return true;
  delete message;
  return false;
}

bool JsBridge::post_event(const std::string& type, const std::string& detail) {
  if (events_queued_.fetch_add(1, std::memory_order_relaxed) >= kEventQueueMax) {
    events_queued_.fetch_sub(1, std::memory_order_relaxed);
    events_dropped_.fetch_add(1, std::memory_order_relaxed);
    return false;
  }
  if (!post(new Message{type, detail, nullptr})) {
    events_queued_.fetch_sub(1, std::memory_order_relaxed);
    events_dropped_.fetch_add(1, std::memory_order_relaxed);
    return false;
  }
  return true;
}

void JsBridge::post_done(MetadataJob* job) {
  // The queue has no N-API bound and the function is released only after
  // every lane has stopped: this fails only while Node tears the environment
  // down (process exit), when no promise can be settled any more.
  auto* message = new Message{"", "", job};
  if (napi_call_threadsafe_function(tsfn_, message, napi_tsfn_nonblocking) != napi_ok) {
    delete job;
    delete message;
  }
}

namespace {

napi_value rejection(napi_env env, int error_number, const std::string& message) {
  Napi::Env e(env);
  auto error = Napi::Error::New(e, message);
  error.Set("errno", Napi::Number::New(e, error_number));
  const char* name = strerrorname_np(error_number);
  error.Set("code", Napi::String::New(e, name != nullptr ? name : "EIO"));
  return error.Value();
}

// What went wrong, and what it means for the caller.
std::string failure_message(const MetadataJob& job) {
  const int error_number = static_cast<int>(-job.result);
  const bool waits_for_peer = job.kind == MetadataJobKind::kFlush || job.kind == MetadataJobKind::kDrain;
  if (waits_for_peer && error_number == ENOTCONN) {
    if (!job.link.source) return job.error + ": no data link in source mode is attached";
    return job.error + ": the local disk is flushed, but the data link failed or was detached before the peer confirmed it";
  }
  if (error_number == ECANCELED) return job.error + ": the pipeline was destroyed before the job ran";
  if (waits_for_peer && error_number == ETIMEDOUT) {
    return job.error + ": the peer did not confirm in time (the link stays up; detach it if the peer is gone)";
  }
  return job.error + ": " + strerror(error_number);
}

}  // namespace

bool JsBridge::begin_job(napi_env env, MetadataJob* job, napi_value* promise) {
  napi_deferred deferred;
  if (napi_create_promise(env, &deferred, promise) != napi_ok) {
    throw Napi::Error::New(Napi::Env(env), "cannot create a promise");
  }
  if (jobs_outstanding_ >= kMetadataJobsMax) {
    napi_reject_deferred(env, deferred,
                         rejection(env, EAGAIN,
                                   job->error + ": " + std::to_string(kMetadataJobsMax) +
                                       " metadata jobs are outstanding already; the backing disk may be stalled "
                                       "(check dmesg and the disk's latency)"));
    return false;
  }
  job->completion = deferred;
  if (jobs_outstanding_++ == 0) napi_ref_threadsafe_function(env, tsfn_);
  return true;
}

void JsBridge::settle(napi_env env, MetadataJob* job) {
  NRAID_ASSERT(job->completion != nullptr);
  NRAID_ASSERT(jobs_outstanding_ > 0);
  auto deferred = static_cast<napi_deferred>(job->completion);
  if (job->result < 0) {
    napi_reject_deferred(env, deferred, rejection(env, static_cast<int>(-job->result), failure_message(*job)));
  } else {
    napi_value value;
    if (job->kind == MetadataJobKind::kBitmapPersist || job->kind == MetadataJobKind::kSuperblockWrite) {
      napi_create_double(env, static_cast<double>(job->result), &value);
    } else {
      napi_get_undefined(env, &value);
    }
    napi_resolve_deferred(env, deferred, value);
  }
  delete job;
  if (--jobs_outstanding_ == 0) napi_unref_threadsafe_function(env, tsfn_);
}

void JsBridge::release() {
  napi_release_threadsafe_function(tsfn_, napi_tsfn_release);
  drop_owner();
}

void JsBridge::drop_owner() {
  if (owners_.fetch_sub(1, std::memory_order_acq_rel) == 1) delete this;
}

void JsBridge::call_js(napi_env env, napi_value on_event, void* context, void* data) {
  auto* bridge = static_cast<JsBridge*>(context);
  auto* message = static_cast<Message*>(data);
  if (env == nullptr) {
    // The environment is going away: nothing can be called or settled any more.
    delete message->job;
    delete message;
    return;
  }
  if (message->job != nullptr) {
    bridge->settle(env, message->job);
  } else {
    bridge->events_queued_.fetch_sub(1, std::memory_order_relaxed);
    napi_value argv[2];
    napi_value undefined;
    napi_get_undefined(env, &undefined);
    napi_create_string_utf8(env, message->type.c_str(), message->type.size(), &argv[0]);
    napi_create_string_utf8(env, message->detail.c_str(), message->detail.size(), &argv[1]);
    // An exception thrown by the callback stays pending: Node reports it as uncaught.
    napi_call_function(env, undefined, on_event, 2, argv, nullptr);
  }
  delete message;
}

// After release(), or when Node tears the environment down without one (then
// the pipeline's threads may still post: the bridge stays, as a leak at exit).
void JsBridge::finalize(napi_env, void* data, void*) { static_cast<JsBridge*>(data)->drop_owner(); }

}  // namespace nraid
