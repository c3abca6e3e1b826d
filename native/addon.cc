// The N-API surface of the data plane (after sharp and TigerBeetle's client):
// a handful of control calls on opaque handles. JavaScript validates options;
// here they are copied into plain structs; the data plane threads never touch
// a JavaScript value.
#include <malloc.h>
#include <napi.h>
#include <stdlib.h>
#include <fcntl.h>
#include <string.h>
#include <unistd.h>
#include <sys/mount.h>
#include <sys/socket.h>
#include <sys/syscall.h>
#include <sys/un.h>

#include <algorithm>
#include <atomic>
#include <cmath>
#include <memory>
#include <vector>
#include <string>
#include <thread>

#include "crc32c.h"
#include "record_cipher.h"
#include "fuse_frontend.h"
#include "js_bridge.h"
#include "limits.h"
#include "local_io.h"
#include "metadata_jobs.h"
#include "nraid_assert.h"
#include "pipeline.h"

namespace {

using nraid::FuseFrontend;
using nraid::JsBridge;
using nraid::LocalDisk;
using nraid::MetadataJob;
using nraid::MetadataJobKind;
using nraid::MetadataJobs;
using nraid::Pipeline;

// A handle owns its object until close(); after that every call on it throws.
template <typename T>
struct Handle {
  T* object = nullptr;
};

template <typename T>
Napi::Value wrap(Napi::Env env, T* object) {
  // The finalizer frees only the small box: the object itself is closed explicitly,
  // since native threads may still use it when JavaScript drops the handle.
  return Napi::External<Handle<T>>::New(env, new Handle<T>{object},
                                        [](Napi::Env, Handle<T>* handle) { delete handle; });
}

template <typename T>
Handle<T>* unwrap(const Napi::CallbackInfo& info, size_t index, const char* what) {
  if (info.Length() <= index || !info[index].IsExternal()) {
    throw Napi::TypeError::New(info.Env(), std::string("expected a ") + what + " handle");
  }
  auto* handle = info[index].As<Napi::External<Handle<T>>>().Data();
  if (handle->object == nullptr) throw Napi::Error::New(info.Env(), std::string("the ") + what + " is closed");
  return handle;
}

Napi::Error errno_error(Napi::Env env, int error_number, const std::string& message) {
  auto error = Napi::Error::New(env, message);
  error.Set("errno", Napi::Number::New(env, error_number));
  const char* name = strerrorname_np(error_number);
  error.Set("code", Napi::String::New(env, name != nullptr ? name : "EIO"));
  return error;
}

uint64_t get_u64(const Napi::Value& value, const char* name) {
  if (!value.IsNumber()) throw Napi::TypeError::New(value.Env(), std::string(name) + ": expected a number");
  double number = value.As<Napi::Number>().DoubleValue();
  if (number < 0 || number > 9007199254740991.0 || number != static_cast<double>(static_cast<uint64_t>(number))) {
    throw Napi::RangeError::New(value.Env(), std::string(name) + ": expected a non-negative safe integer");
  }
  return static_cast<uint64_t>(number);
}

Napi::Value Crc32c(const Napi::CallbackInfo& info) {
  Napi::Env env = info.Env();
  if (!info[0].IsTypedArray()) throw Napi::TypeError::New(env, "crc32c: expected a Uint8Array");
  auto data = info[0].As<Napi::Uint8Array>();
  uint32_t seed = info.Length() > 1 && info[1].IsNumber() ? info[1].As<Napi::Number>().Uint32Value() : 0;
  return Napi::Number::New(env, nraid::crc32c(seed, data.Data(), data.ByteLength()));
}

// Tests only (test/unit/record-cipher.test.ts): one TLS 1.3 record sealed from
// `pieces` (a record's plaintext, split where the caller likes) or opened,
// with the traffic secret `secret` at record number `seq`, so that the data
// link's record layer is checked against another implementation.
void RecordCipherFor(Napi::Env env, const Napi::CallbackInfo& info, bool seal, nraid::RecordCipher* cipher) {
  if (!info[0].IsString() || !info[1].IsTypedArray() || !info[2].IsNumber()) {
    throw Napi::TypeError::New(env, "record cipher: expected (suite, secret, seq, data)");
  }
  std::string name = info[0].As<Napi::String>().Utf8Value();
  nraid::RecordSuite suite;
  const EVP_MD* digest = EVP_sha256();
  if (name == "aes-128-gcm") {
    suite = nraid::RecordSuite::kAes128Gcm;
  } else if (name == "aes-256-gcm") {
    suite = nraid::RecordSuite::kAes256Gcm;
    digest = EVP_sha384();
  } else if (name == "chacha20-poly1305") {
    suite = nraid::RecordSuite::kChacha20Poly1305;
  } else {
    throw Napi::TypeError::New(env, "record cipher: expected aes-128-gcm, aes-256-gcm or chacha20-poly1305, found " + name);
  }
  auto secret = info[1].As<Napi::Uint8Array>();
  if (secret.ByteLength() != static_cast<size_t>(EVP_MD_get_size(digest))) {
    throw Napi::RangeError::New(env, "record cipher: expected a secret of the suite's hash size, found " +
                                         std::to_string(secret.ByteLength()) + " bytes");
  }
  if (!cipher->init(suite, digest, secret.Data(), secret.ByteLength(), seal)) {
    throw Napi::Error::New(env, "record cipher: cannot set up the key");
  }
  cipher->set_sequence_for_test(static_cast<uint64_t>(info[2].As<Napi::Number>().Int64Value()));
}

Napi::Value RecordSeal(const Napi::CallbackInfo& info) {
  Napi::Env env = info.Env();
  nraid::RecordCipher cipher;
  RecordCipherFor(env, info, true, &cipher);
  if (!info[3].IsArray()) throw Napi::TypeError::New(env, "record seal: expected an array of Uint8Array pieces");
  auto array = info[3].As<Napi::Array>();
  std::vector<iovec> iov;
  size_t plain_bytes = 0;
  for (uint32_t i = 0; i < array.Length(); i++) {
    Napi::Value piece = array.Get(i);
    if (!piece.IsTypedArray()) throw Napi::TypeError::New(env, "record seal: expected Uint8Array pieces");
    auto bytes = piece.As<Napi::Uint8Array>();
    iov.push_back({bytes.Data(), bytes.ByteLength()});
    plain_bytes += bytes.ByteLength();
  }
  if (plain_bytes == 0 || plain_bytes > nraid::kTlsRecordPlainBytesMax) {
    throw Napi::RangeError::New(env, "record seal: expected 1 to 16384 bytes of plaintext, found " + std::to_string(plain_bytes));
  }
  auto record = Napi::Uint8Array::New(env, plain_bytes + nraid::kTlsRecordOverheadBytes);
  int index = 0;
  size_t offset = 0;
  if (!cipher.seal(iov.data(), static_cast<int>(iov.size()), &index, &offset, plain_bytes, record.Data())) {
    throw Napi::Error::New(env, "record seal: the cipher failed");
  }
  return record;
}

Napi::Value RecordOpen(const Napi::CallbackInfo& info) {
  Napi::Env env = info.Env();
  nraid::RecordCipher cipher;
  RecordCipherFor(env, info, false, &cipher);
  if (!info[3].IsTypedArray()) throw Napi::TypeError::New(env, "record open: expected the record as a Uint8Array");
  auto record = info[3].As<Napi::Uint8Array>();
  constexpr size_t kHeaderBytes = nraid::RecordCipher::kHeaderBytes;
  constexpr size_t kTagBytes = nraid::RecordCipher::kTagBytes;
  if (record.ByteLength() < kHeaderBytes + kTagBytes + 1) {
    throw Napi::RangeError::New(env, "record open: expected at least 22 bytes, found " + std::to_string(record.ByteLength()));
  }
  const size_t body_bytes = record.ByteLength() - kHeaderBytes;
  auto plain = Napi::Uint8Array::New(env, body_bytes - kTagBytes - 1);
  uint8_t type = 0;
  ssize_t n = cipher.open(record.Data(), body_bytes, plain.Data(), &type);
  Napi::Object result = Napi::Object::New(env);
  result.Set("rc", Napi::Number::New(env, n < 0 ? static_cast<double>(n) : 0));
  result.Set("type", Napi::Number::New(env, type));
  result.Set("plain", plain);
  return result;
}

// ---- disk ----

Napi::Value DiskOpen(const Napi::CallbackInfo& info) {
  Napi::Env env = info.Env();
  if (!info[0].IsString()) throw Napi::TypeError::New(env, "diskOpen: expected a path");
  std::string path = info[0].As<Napi::String>();
  bool read_only = info.Length() > 1 && info[1].ToBoolean();
  std::string error;
  LocalDisk* disk = LocalDisk::open(path, read_only, &error);
  if (disk == nullptr) throw errno_error(env, errno, error);
  return wrap(env, disk);
}

Napi::Value DiskInfo(const Napi::CallbackInfo& info) {
  Napi::Env env = info.Env();
  LocalDisk* disk = unwrap<LocalDisk>(info, 0, "disk")->object;
  auto result = Napi::Object::New(env);
  result.Set("path", disk->path());
  result.Set("sizeBytes", Napi::Number::New(env, static_cast<double>(disk->size_bytes())));
  result.Set("isBlockDevice", Napi::Boolean::New(env, disk->is_block_device()));
  result.Set("logicalBlockBytes", Napi::Number::New(env, disk->logical_block_bytes()));
  return result;
}

struct AlignedBuffer {
  explicit AlignedBuffer(uint64_t bytes) {
    if (posix_memalign(&data, nraid::kBlockBytes, bytes == 0 ? nraid::kBlockBytes : bytes) != 0) data = nullptr;
  }
  ~AlignedBuffer() { free(data); }
  void* data = nullptr;
};

void check_range(Napi::Env env, LocalDisk* disk, uint64_t offset, uint64_t length) {
  if (offset % nraid::kBlockBytes != 0 || length % nraid::kBlockBytes != 0) {
    throw Napi::RangeError::New(env, "disk I/O: offset and length must be multiples of 4096");
  }
  if (offset > disk->size_bytes() || length > disk->size_bytes() - offset) {
    throw Napi::RangeError::New(env, "disk I/O: range past the end of " + disk->path());
  }
}

Napi::Value DiskRead(const Napi::CallbackInfo& info) {
  Napi::Env env = info.Env();
  LocalDisk* disk = unwrap<LocalDisk>(info, 0, "disk")->object;
  uint64_t offset = get_u64(info[1], "offsetBytes");
  uint64_t length = get_u64(info[2], "lengthBytes");
  check_range(env, disk, offset, length);
  AlignedBuffer buffer(length);
  if (buffer.data == nullptr) throw Napi::Error::New(env, "diskRead: out of memory");
  int rc = disk->read(buffer.data, length, offset);
  if (rc != 0) throw errno_error(env, -rc, "read " + disk->path() + ": " + strerror(-rc));
  return Napi::Buffer<uint8_t>::Copy(env, static_cast<uint8_t*>(buffer.data), length);
}

Napi::Value DiskWrite(const Napi::CallbackInfo& info) {
  Napi::Env env = info.Env();
  LocalDisk* disk = unwrap<LocalDisk>(info, 0, "disk")->object;
  uint64_t offset = get_u64(info[1], "offsetBytes");
  if (!info[2].IsTypedArray()) throw Napi::TypeError::New(env, "diskWrite: expected a Uint8Array");
  auto data = info[2].As<Napi::Uint8Array>();
  check_range(env, disk, offset, data.ByteLength());
  AlignedBuffer buffer(data.ByteLength());
  if (buffer.data == nullptr) throw Napi::Error::New(env, "diskWrite: out of memory");
  memcpy(buffer.data, data.Data(), data.ByteLength());
  int rc = disk->write(buffer.data, data.ByteLength(), offset);
  if (rc != 0) throw errno_error(env, -rc, "write " + disk->path() + ": " + strerror(-rc));
  return env.Undefined();
}

Napi::Value DiskFlush(const Napi::CallbackInfo& info) {
  Napi::Env env = info.Env();
  LocalDisk* disk = unwrap<LocalDisk>(info, 0, "disk")->object;
  int rc = disk->flush();
  if (rc != 0) throw errno_error(env, -rc, "flush " + disk->path() + ": " + strerror(-rc));
  return env.Undefined();
}

Napi::Value DiskClose(const Napi::CallbackInfo& info) {
  auto* handle = unwrap<LocalDisk>(info, 0, "disk");
  delete handle->object;
  handle->object = nullptr;
  return info.Env().Undefined();
}

// ---- pipeline ----

// Destroyed in this order: frontend, metadata jobs, pipeline, then the bridge
// (released: it frees itself once JavaScript has taken what it queued).
struct PipelineBox {
  JsBridge* bridge = nullptr;
  std::unique_ptr<Pipeline> pipeline;
  std::unique_ptr<MetadataJobs> jobs;
  std::unique_ptr<FuseFrontend> frontend;
};

Napi::Value PipelineCreate(const Napi::CallbackInfo& info) {
  Napi::Env env = info.Env();
  LocalDisk* disk = unwrap<LocalDisk>(info, 0, "disk")->object;
  if (!info[1].IsObject()) throw Napi::TypeError::New(env, "pipelineCreate: expected options");
  auto options = info[1].As<Napi::Object>();
  uint64_t data_size_bytes = get_u64(options.Get("dataSizeBytes"), "dataSizeBytes");
  uint64_t granularity_bytes = get_u64(options.Get("bitmapGranularityBytes"), "bitmapGranularityBytes");
  if (data_size_bytes == 0 || data_size_bytes % nraid::kBlockBytes != 0 || data_size_bytes > disk->size_bytes()) {
    throw Napi::RangeError::New(env, "pipelineCreate: dataSizeBytes must be a multiple of 4096 within the disk");
  }
  if (granularity_bytes < nraid::kBitmapGranularityBytesMin || granularity_bytes > nraid::kBitmapGranularityBytesMax ||
      (granularity_bytes & (granularity_bytes - 1)) != 0) {
    throw Napi::RangeError::New(env, "pipelineCreate: bitmapGranularityBytes must be a power of two from " +
                                         std::to_string(nraid::kBitmapGranularityBytesMin) + " to " +
                                         std::to_string(nraid::kBitmapGranularityBytesMax) + ", found " +
                                         std::to_string(granularity_bytes));
  }
  if (!options.Get("onEvent").IsFunction()) throw Napi::TypeError::New(env, "pipelineCreate: expected onEvent");
  nraid::ActivityLogLayout activity_log;
  activity_log.area_offset_bytes = get_u64(options.Get("activityLogOffsetBytes"), "activityLogOffsetBytes");
  activity_log.area_size_bytes = get_u64(options.Get("activityLogSizeBytes"), "activityLogSizeBytes");
  activity_log.extent_bytes = get_u64(options.Get("activityExtentBytes"), "activityExtentBytes");
  activity_log.bitmap_offset_bytes = get_u64(options.Get("bitmapOffsetBytes"), "bitmapOffsetBytes");
  if (!options.Get("activityLogSequenceStart").IsUndefined()) {
    activity_log.sequence_start = get_u64(options.Get("activityLogSequenceStart"), "activityLogSequenceStart");
  }
  if (activity_log.area_size_bytes < nraid::kActivityTransactionBytes || activity_log.extent_bytes % nraid::kBlockBytes != 0 ||
      activity_log.area_offset_bytes % nraid::kBlockBytes != 0 || activity_log.bitmap_offset_bytes % nraid::kBlockBytes != 0 ||
      activity_log.area_offset_bytes + activity_log.area_size_bytes > disk->size_bytes() || activity_log.extent_bytes == 0) {
    throw Napi::RangeError::New(env, "pipelineCreate: activity log layout out of range");
  }
  auto* box = new PipelineBox();
  // One threadsafe function per pipeline with a bounded queue: native threads
  // never block on JavaScript; an event that does not fit is counted and dropped.
  JsBridge* bridge = JsBridge::create(env, options.Get("onEvent"));
  box->bridge = bridge;
  nraid::EventSink sink = [bridge](const std::string& type, const std::string& detail) {
    bridge->post_event(type, detail);
  };
  box->pipeline =
      std::make_unique<Pipeline>(disk, data_size_bytes, static_cast<uint32_t>(granularity_bytes), activity_log, sink);
  box->jobs = std::make_unique<MetadataJobs>(box->pipeline.get(), [bridge](MetadataJob* job) { bridge->post_done(job); });
  return wrap(env, box);
}

Napi::Value PipelineCounters(const Napi::CallbackInfo& info) {
  Napi::Env env = info.Env();
  PipelineBox* box = unwrap<PipelineBox>(info, 0, "pipeline")->object;
  const auto& c = box->pipeline->counters();
  auto result = Napi::Object::New(env);
  auto set = [&](const char* name, uint64_t value) {
    result.Set(name, Napi::Number::New(env, static_cast<double>(value)));
  };
  set("writes", c.writes.load());
  set("writeBytes", c.write_bytes.load());
  set("reads", c.reads.load());
  set("readBytes", c.read_bytes.load());
  set("flushes", c.flushes.load());
  set("discards", c.discards.load());
  set("discardBytes", c.discard_bytes.load());
  set("zeroes", c.zeroes.load());
  set("zeroBytes", c.zero_bytes.load());
  set("ioErrors", c.io_errors.load());
  set("requestsInFlight", c.requests_in_flight.load());
  set("writeLatencyUsTotal", c.write_latency_us_total.load());
  set("sequence", box->pipeline->sequence());
  set("epoch", box->pipeline->epoch());
  set("frontendUnknownRequests", box->frontend ? box->frontend->requests_unknown() : 0);
  set("frontendTrims", box->frontend ? box->frontend->trims() : 0);
  set("frontendHugeSwitches", box->frontend ? box->frontend->huge_switches() : 0);
  set("replicatedWrites", c.replicated_writes.load());
  set("dirtyWrites", c.dirty_writes.load());
  const auto& l = box->pipeline->link_counters();
  set("framesSent", l.frames_sent.load());
  set("bytesSent", l.bytes_sent.load());
  set("bytesAcked", l.bytes_acked.load());
  set("lagBytes", l.lag_bytes.load());
  uint64_t oldest = l.lag_oldest_us.load();
  set("lagUs", oldest == 0 ? 0 : nraid::monotonic_us() - std::min(oldest, nraid::monotonic_us()));
  set("framesInFlight", l.frames_in_flight.load());
  set("framesReceived", l.frames_received.load());
  set("bytesReceived", l.bytes_received.load());
  set("bytesApplied", l.bytes_applied.load());
  set("checksumErrors", l.checksum_errors.load());
  set("protocolErrors", l.protocol_errors.load());
  set("resyncBytesDone", l.resync_bytes_done.load());
  set("resyncBytesReceived", l.resync_bytes_received.load());
  const auto& resync = box->pipeline->resync_control();
  set("resyncPlannedRateBytes", resync.planned_rate_bytes.load());
  result.Set("resyncThrottled", Napi::Boolean::New(env, resync.throttled.load()));
  result.Set("resyncPaused", Napi::Boolean::New(env, resync.paused.load()));
  set("linkFailures", l.link_failures.load());
  set("resyncDataBytesSent", l.resync_data_bytes_sent.load());
  set("resyncZeroBytesSent", l.resync_zero_bytes_sent.load());
  set("resyncEqualBytes", l.resync_equal_bytes.load());
  set("zeroBytesApplied", l.zero_bytes_applied.load());
  set("digestBytesRead", l.digest_bytes_read.load());
  set("verifyStartBytes", l.verify_start_bytes.load());
  set("verifyStopBytes", l.verify_stop_bytes.load());
  set("verifyPositionBytes", l.verify_position_bytes.load());
  set("verifyMismatchBytes", l.verify_mismatch_bytes.load());
  set("verifyMismatchTotalBytes", l.verify_mismatch_total_bytes.load());
  set("verifyBytesDoneTotal", l.verify_bytes_done_total.load());
  set("eventsDropped", box->bridge->events_dropped());
  auto& bitmap = box->pipeline->bitmap();
  set("outOfSyncBytes", std::min(bitmap.count_set() * bitmap.granularity_bytes(), box->pipeline->data_size_bytes()));
  set("suspendedWaits", c.suspended_waits.load());
  set("localIoErrors", c.local_io_errors.load());
  set("peerReads", c.peer_reads.load());
  set("peerWrites", c.peer_writes.load());
  result.Set("diskless", Napi::Boolean::New(env, box->pipeline->diskless()));
  auto buckets = Napi::Array::New(env, nraid::kLatencyBuckets);
  for (uint32_t i = 0; i < nraid::kLatencyBuckets; i++) {
    buckets.Set(i, Napi::Number::New(env, static_cast<double>(c.write_latency_buckets[i].load())));
  }
  result.Set("writeLatencyBuckets", buckets);
  result.Set("suspended", Napi::Boolean::New(env, box->pipeline->suspended()));
  set("activityLogTransactions", box->pipeline->activity_log().transactions());
  set("activityLogHotExtents", box->pipeline->activity_log().hot_extents());
  result.Set("linkAttached", Napi::Boolean::New(env, box->pipeline->link_attached()));
  result.Set("linkFailed", Napi::Boolean::New(env, box->pipeline->link_failed()));
  result.Set("resyncRunning", Napi::Boolean::New(env, box->pipeline->resync_running()));
  result.Set("verifyRunning", Napi::Boolean::New(env, box->pipeline->verify_running()));
  return result;
}

// ---- metadata jobs: promises settled on this thread through the pipeline's threadsafe function ----

std::unique_ptr<MetadataJob> new_job(MetadataJobKind kind, std::string what) {
  auto job = std::make_unique<MetadataJob>();
  job->kind = kind;
  job->error = std::move(what);
  return job;
}

Napi::Value submit_job(Napi::Env env, PipelineBox* box, std::unique_ptr<MetadataJob> job) {
  napi_value promise;
  if (!box->bridge->begin_job(env, job.get(), &promise)) return Napi::Value(env, promise);  // rejected: too many
  MetadataJob* taken = job.release();
  // Only a destroyed pipeline stops taking jobs, and a destroyed one cannot be unwrapped.
  bool submitted = box->jobs->submit(taken);
  NRAID_ASSERT(submitted);
  return Napi::Value(env, promise);
}

Napi::Value SuperblockWrite(const Napi::CallbackInfo& info) {
  Napi::Env env = info.Env();
  PipelineBox* box = unwrap<PipelineBox>(info, 0, "pipeline")->object;
  const LocalDisk& disk = box->pipeline->disk();
  // A superblock lives in the metadata area: never over data.
  auto slot_image = [&](const Napi::Value& value, const Napi::Value& offset_value, const char* what) {
    if (!value.IsTypedArray() || value.As<Napi::Uint8Array>().ByteLength() != nraid::kBlockBytes) {
      throw Napi::TypeError::New(env, std::string("superblockWrite: expected a 4096-byte ") + what);
    }
    uint64_t offset = get_u64(offset_value, "offsetBytes");
    if (offset % nraid::kBlockBytes != 0 || offset < box->pipeline->data_size_bytes() ||
        offset > disk.size_bytes() - nraid::kBlockBytes) {
      throw Napi::RangeError::New(env, std::string("superblockWrite: the ") + what + "'s offset " + std::to_string(offset) +
                                           " is not a block-aligned slot between the data area's end (" +
                                           std::to_string(box->pipeline->data_size_bytes()) + ") and the disk's (" +
                                           std::to_string(disk.size_bytes()) + ")");
    }
    return offset;
  };
  uint64_t offset = slot_image(info[1], info[2], "superblock image");
  bool has_successor = info.Length() > 3 && !info[3].IsUndefined() && !info[3].IsNull();
  uint64_t successor_offset = has_successor ? slot_image(info[3], info[4], "armed generation image") : 0;
  auto job = new_job(MetadataJobKind::kSuperblockWrite,
                     "superblock write at offset " + std::to_string(offset) + " of " + disk.path());
  void* image = nullptr;
  if (posix_memalign(&image, nraid::kBlockBytes, 2 * nraid::kBlockBytes) != 0) {
    throw Napi::Error::New(env, "superblockWrite: out of memory");
  }
  job->image = static_cast<uint8_t*>(image);
  memcpy(job->image, info[1].As<Napi::Uint8Array>().Data(), nraid::kBlockBytes);
  job->offset_bytes = offset;
  if (has_successor) {
    memcpy(job->image + nraid::kBlockBytes, info[3].As<Napi::Uint8Array>().Data(), nraid::kBlockBytes);
    job->has_successor = true;
    job->successor_offset_bytes = successor_offset;
  }
  return submit_job(env, box, std::move(job));
}

// Writes back the changed blocks of the on-disk bitmap (flush: durably); resolves with the bytes written.
Napi::Value BitmapPersist(const Napi::CallbackInfo& info) {
  PipelineBox* box = unwrap<PipelineBox>(info, 0, "pipeline")->object;
  auto job = new_job(MetadataJobKind::kBitmapPersist, "bitmap write-back to " + box->pipeline->disk().path());
  job->flush = info[1].ToBoolean();
  return submit_job(info.Env(), box, std::move(job));
}

Napi::Value ActivityLogReset(const Napi::CallbackInfo& info) {
  PipelineBox* box = unwrap<PipelineBox>(info, 0, "pipeline")->object;
  return submit_job(info.Env(), box,
                    new_job(MetadataJobKind::kActivityLogReset, "activity log reset on " + box->pipeline->disk().path()));
}

Napi::Value PipelineFlush(const Napi::CallbackInfo& info) {
  PipelineBox* box = unwrap<PipelineBox>(info, 0, "pipeline")->object;
  auto job = new_job(MetadataJobKind::kFlush, "flush of " + box->pipeline->disk().path());
  job->link = box->pipeline->link_snapshot();
  return submit_job(info.Env(), box, std::move(job));
}

Napi::Value Drain(const Napi::CallbackInfo& info) {
  PipelineBox* box = unwrap<PipelineBox>(info, 0, "pipeline")->object;
  uint64_t timeout_ms = get_u64(info[1], "timeoutMs");
  if (timeout_ms > nraid::kDrainTimeoutMsMax) {
    throw Napi::RangeError::New(info.Env(), "drain: timeoutMs " + std::to_string(timeout_ms) + " is over the limit of " +
                                                std::to_string(nraid::kDrainTimeoutMsMax) + " (one day)");
  }
  auto job = new_job(MetadataJobKind::kDrain, "drain to the peer (timeout " + std::to_string(timeout_ms) + " ms)");
  job->link = box->pipeline->link_snapshot();
  job->deadline_us = nraid::monotonic_us() + timeout_ms * 1000;
  return submit_job(info.Env(), box, std::move(job));
}

Napi::Value FrontendStart(const Napi::CallbackInfo& info) {
  Napi::Env env = info.Env();
  PipelineBox* box = unwrap<PipelineBox>(info, 0, "pipeline")->object;
  if (box->frontend) throw Napi::Error::New(env, "frontendStart: the frontend already runs");
  if (!info[1].IsObject()) throw Napi::TypeError::New(env, "frontendStart: expected options");
  auto options = info[1].As<Napi::Object>();
  nraid::FrontendOptions frontend_options;
  frontend_options.mount_path = options.Get("mountPath").As<Napi::String>();
  frontend_options.source = options.Get("source").As<Napi::String>();
  frontend_options.threads = static_cast<uint32_t>(get_u64(options.Get("threads"), "threads"));
  frontend_options.lock_memory = options.Get("lockMemory").ToBoolean();
  if (options.Has("fuseFd") && !options.Get("fuseFd").IsUndefined()) {
    frontend_options.fuse_fd = static_cast<int>(get_u64(options.Get("fuseFd"), "fuseFd"));
    frontend_options.adopt = options.Get("adopt").ToBoolean();
  }
  if (frontend_options.threads < nraid::kFrontendThreadsMin || frontend_options.threads > nraid::kFrontendThreadsMax) {
    throw Napi::RangeError::New(env, "frontendStart: threads out of range");
  }
  auto frontend = std::make_unique<FuseFrontend>(box->pipeline.get(), frontend_options);
  std::string error;
  if (!frontend->start(&error)) throw errno_error(env, errno, error);
  int fd = frontend->fd();
  box->frontend = std::move(frontend);
  return Napi::Number::New(env, fd);
}

// Touches the frontend's buffers and stacks ahead of the first promotion, on a
// thread of its own (seconds on a loaded VM): the event loop does not wait.
Napi::Value FrontendPrepare(const Napi::CallbackInfo& info) {
  Napi::Env env = info.Env();
  uint64_t threads = get_u64(info[0], "threads");
  if (threads < nraid::kFrontendThreadsMin || threads > nraid::kFrontendThreadsMax) {
    throw Napi::RangeError::New(env, "frontendPrepare: threads out of range");
  }
  std::thread([threads] { FuseFrontend::prepare_memory(static_cast<uint32_t>(threads)); }).detach();
  return env.Undefined();
}

Napi::Value FrontendStop(const Napi::CallbackInfo& info) {
  PipelineBox* box = unwrap<PipelineBox>(info, 0, "pipeline")->object;
  if (box->frontend) {
    box->frontend->stop();
    box->frontend.reset();
  }
  return info.Env().Undefined();
}

// Hands the mounted connection back to the holder: no unmount (nraid restart).
Napi::Value FrontendRelease(const Napi::CallbackInfo& info) {
  PipelineBox* box = unwrap<PipelineBox>(info, 0, "pipeline")->object;
  if (box->frontend) {
    box->frontend->release();
    box->frontend.reset();
  }
  return info.Env().Undefined();
}

nraid::Protocol parse_protocol(Napi::Env env, const Napi::Value& value) {
  std::string name = value.IsString() ? value.As<Napi::String>().Utf8Value() : "";
  if (name == "A") return nraid::Protocol::kA;
  if (name == "B") return nraid::Protocol::kB;
  if (name == "C") return nraid::Protocol::kC;
  throw Napi::TypeError::New(env, "protocol must be \"A\", \"B\" or \"C\"");
}

// The data link's TLS settings: none (plain TCP), { psk }, or { certPem, keyPem, caPem }.
nraid::TlsOptions parse_tls(Napi::Env env, Napi::Value value) {
  nraid::TlsOptions tls;
  if (value.IsUndefined() || value.IsNull()) return tls;
  if (!value.IsObject()) throw Napi::TypeError::New(env, "linkAttach: tls must be an object, null or left out");
  auto object = value.As<Napi::Object>();
  tls.enabled = true;
  Napi::Value psk = object.Get("psk");
  if (psk.IsBuffer()) {
    auto bytes = psk.As<Napi::Buffer<uint8_t>>();
    if (bytes.Length() != nraid::kTlsPskBytes) {
      throw Napi::TypeError::New(env, "linkAttach: tls.psk must be " + std::to_string(nraid::kTlsPskBytes) +
                                          " bytes, found " + std::to_string(bytes.Length()));
    }
    tls.psk.assign(reinterpret_cast<const char*>(bytes.Data()), bytes.Length());
    return tls;
  }
  for (const char* name : {"certPem", "keyPem", "caPem"}) {
    if (!object.Get(name).IsString()) {
      throw Napi::TypeError::New(env, std::string("linkAttach: tls needs a 32-byte psk Buffer, or certPem, keyPem and "
                                                  "caPem strings; ") + name + " is missing");
    }
  }
  tls.cert_pem = object.Get("certPem").As<Napi::String>().Utf8Value();
  tls.key_pem = object.Get("keyPem").As<Napi::String>().Utf8Value();
  tls.ca_pem = object.Get("caPem").As<Napi::String>().Utf8Value();
  return tls;
}

// Takes a connected TCP socket's descriptor (dup()ed: JavaScript closes its own).
Napi::Value LinkAttach(const Napi::CallbackInfo& info) {
  Napi::Env env = info.Env();
  PipelineBox* box = unwrap<PipelineBox>(info, 0, "pipeline")->object;
  if (!info[1].IsNumber() || !info[2].IsObject()) throw Napi::TypeError::New(env, "linkAttach: expected (pipeline, fd, options)");
  int fd = info[1].As<Napi::Number>().Int32Value();
  auto options = info[2].As<Napi::Object>();
  std::string mode = options.Get("mode").As<Napi::String>();
  bool hello_first = options.Get("sendHelloFirst").ToBoolean();
  nraid::TlsOptions tls = parse_tls(env, options.Get("tls"));
  int own = fcntl(fd, F_DUPFD_CLOEXEC, 3);
  if (own < 0) throw errno_error(env, errno, std::string("linkAttach: dup: ") + strerror(errno));
  if (mode == "source") {
    nraid::ReplicatorOptions replicator_options;
    // Left out: ReplicatorOptions' defaults (protocol C, kMaxLagBytesDefault, kMaxLagUsDefault).
    if (!options.Get("protocol").IsUndefined()) replicator_options.protocol = parse_protocol(env, options.Get("protocol"));
    if (!options.Get("maxLagBytes").IsUndefined()) {
      replicator_options.max_lag_bytes = get_u64(options.Get("maxLagBytes"), "maxLagBytes");
    }
    if (!options.Get("maxLagMs").IsUndefined()) {
      replicator_options.max_lag_us = get_u64(options.Get("maxLagMs"), "maxLagMs") * 1000;
    }
    replicator_options.send_hello_first = hello_first;
    replicator_options.tls = tls;
    box->pipeline->attach_source(own, replicator_options);
  } else if (mode == "target") {
    box->pipeline->attach_target(own, hello_first, options.Get("resyncAllowed").ToBoolean(), tls);
  } else {
    ::close(own);
    throw Napi::TypeError::New(env, "linkAttach: mode must be \"source\" or \"target\"");
  }
  return env.Undefined();
}

Napi::Value AllowResync(const Napi::CallbackInfo& info) {
  Napi::Env env = info.Env();
  PipelineBox* box = unwrap<PipelineBox>(info, 0, "pipeline")->object;
  if (!box->pipeline->allow_resync()) {
    throw errno_error(env, ENOTCONN, "allowResync: no data link in target mode is attached; attach it first");
  }
  return env.Undefined();
}

Napi::Value LinkDetach(const Napi::CallbackInfo& info) {
  PipelineBox* box = unwrap<PipelineBox>(info, 0, "pipeline")->object;
  std::string reason = info.Length() > 1 && info[1].IsString() ? info[1].As<Napi::String>().Utf8Value() : "detached";
  box->pipeline->detach(reason);
  return info.Env().Undefined();
}

Napi::Value SetProtocol(const Napi::CallbackInfo& info) {
  PipelineBox* box = unwrap<PipelineBox>(info, 0, "pipeline")->object;
  box->pipeline->set_protocol(parse_protocol(info.Env(), info[1]));
  return info.Env().Undefined();
}

// resyncStart(pipeline, { csums?, repair? }): false when no source link is attached or a resync or verify runs.
Napi::Value ResyncStart(const Napi::CallbackInfo& info) {
  PipelineBox* box = unwrap<PipelineBox>(info, 0, "pipeline")->object;
  nraid::ResyncOptions options;
  if (info.Length() > 1 && info[1].IsObject()) {
    Napi::Object o = info[1].As<Napi::Object>();
    options.csums = o.Has("csums") && o.Get("csums").ToBoolean();
    options.repair = o.Has("repair") && o.Get("repair").ToBoolean();
  }
  return Napi::Boolean::New(info.Env(), box->pipeline->start_resync(options));
}

// verifyStart(pipeline, startBytes, stopBytes): block-aligned, start <= stop <= data size (checked here too).
Napi::Value VerifyStart(const Napi::CallbackInfo& info) {
  Napi::Env env = info.Env();
  PipelineBox* box = unwrap<PipelineBox>(info, 0, "pipeline")->object;
  if (info.Length() < 3 || !info[1].IsNumber() || !info[2].IsNumber()) {
    throw Napi::TypeError::New(env, "verifyStart: expected (pipeline, startBytes, stopBytes)");
  }
  double start = info[1].As<Napi::Number>().DoubleValue();
  double stop = info[2].As<Napi::Number>().DoubleValue();
  double size = static_cast<double>(box->pipeline->data_size_bytes());
  if (!(start >= 0 && start <= stop && stop <= size) || std::fmod(start, nraid::kBlockBytes) != 0 ||
      (std::fmod(stop, nraid::kBlockBytes) != 0 && stop != size)) {
    throw Napi::RangeError::New(env, "verifyStart: expected 4 KiB-aligned 0 <= start <= stop <= " +
                                         std::to_string(box->pipeline->data_size_bytes()) + ", found " +
                                         std::to_string(start) + ".." + std::to_string(stop));
  }
  return Napi::Boolean::New(env, box->pipeline->start_verify(static_cast<uint64_t>(start), static_cast<uint64_t>(stop)));
}

Napi::Value VerifyStop(const Napi::CallbackInfo& info) {
  PipelineBox* box = unwrap<PipelineBox>(info, 0, "pipeline")->object;
  box->pipeline->stop_verify();
  return info.Env().Undefined();
}

// resyncSet(pipeline, { planAheadMs?, fillTargetBytes?, maxRateBytes?, minRateBytes?, paused? }):
// every value is checked against native/limits.h before any is taken, so a
// bad one changes nothing. A running resync reads them at its next step.
Napi::Value ResyncSet(const Napi::CallbackInfo& info) {
  Napi::Env env = info.Env();
  PipelineBox* box = unwrap<PipelineBox>(info, 0, "pipeline")->object;
  if (info.Length() < 2 || !info[1].IsObject()) throw Napi::TypeError::New(env, "resyncSet: expected an options object");
  Napi::Object options = info[1].As<Napi::Object>();
  auto bounded = [&](const char* name, uint64_t min, uint64_t max, uint64_t current) {
    Napi::Value value = options.Get(name);
    if (value.IsUndefined()) return current;
    uint64_t number = get_u64(value, name);
    if (number < min || number > max) {
      throw Napi::RangeError::New(env, std::string("resyncSet: ") + name + " must be between " + std::to_string(min) +
                                           " and " + std::to_string(max) + ", not " + std::to_string(number));
    }
    return number;
  };
  nraid::ResyncControl& control = box->pipeline->resync_control();
  uint64_t plan_ahead_ms = bounded("planAheadMs", nraid::kResyncPlanAheadMsMin, nraid::kResyncPlanAheadMsMax,
                                   control.plan_ahead_ms.load());
  uint64_t fill_target = bounded("fillTargetBytes", nraid::kResyncFillTargetBytesMin, nraid::kResyncFillTargetBytesMax,
                                 control.fill_target_bytes.load());
  uint64_t max_rate = bounded("maxRateBytes", nraid::kResyncRateBytesMin, nraid::kResyncRateBytesMax,
                              control.max_rate_bytes.load());
  uint64_t min_rate = bounded("minRateBytes", nraid::kResyncRateBytesMin, nraid::kResyncRateBytesMax,
                              control.min_rate_bytes.load());
  Napi::Value paused = options.Get("paused");
  if (!paused.IsUndefined() && !paused.IsBoolean()) throw Napi::TypeError::New(env, "resyncSet: paused must be a boolean");
  control.plan_ahead_ms.store(static_cast<uint32_t>(plan_ahead_ms));
  control.fill_target_bytes.store(fill_target);
  control.max_rate_bytes.store(max_rate);
  control.min_rate_bytes.store(min_rate);
  if (paused.IsBoolean()) control.paused.store(paused.As<Napi::Boolean>().Value());
  box->pipeline->resync_settings_changed();
  return env.Undefined();
}

// Words [offsetBytes, offsetBytes + lengthBytes) of the bitmap (both multiples of 8; by default
// all of it) as little-endian 64-bit words, the layout of the on-disk bitmap area. Callers take
// it a chunk at a time: a whole bitmap is 32 MiB per TiB of data.
Napi::Value BitmapGet(const Napi::CallbackInfo& info) {
  Napi::Env env = info.Env();
  PipelineBox* box = unwrap<PipelineBox>(info, 0, "pipeline")->object;
  auto& bitmap = box->pipeline->bitmap();
  const uint64_t size_bytes = bitmap.words() * 8;
  uint64_t offset = info.Length() > 1 && !info[1].IsUndefined() ? get_u64(info[1], "offsetBytes") : 0;
  uint64_t length = info.Length() > 2 && !info[2].IsUndefined() ? get_u64(info[2], "lengthBytes") : size_bytes - std::min(offset, size_bytes);
  if (offset % 8 != 0 || length % 8 != 0 || offset > size_bytes || length > size_bytes - offset) {
    throw Napi::RangeError::New(env, "bitmapGet: expected whole words within the bitmap's " + std::to_string(size_bytes) +
                                         " bytes, found offset " + std::to_string(offset) + " and length " + std::to_string(length));
  }
  if (info.Length() > 3 && !info[3].IsUndefined()) {
    // Into the caller's array (reused chunk after chunk: no garbage per chunk).
    if (!info[3].IsTypedArray()) throw Napi::TypeError::New(env, "bitmapGet: expected a Uint8Array to read into");
    auto into = info[3].As<Napi::Uint8Array>();
    if (into.ByteLength() < length) {
      throw Napi::RangeError::New(env, "bitmapGet: expected room for " + std::to_string(length) + " bytes, found " + std::to_string(into.ByteLength()));
    }
    for (uint64_t i = 0; i < length / 8; i++) {
      uint64_t word;
      bitmap.snapshot_range(offset / 8 + i, 1, &word);
      memcpy(into.Data() + i * 8, &word, 8);
    }
    return info[3];
  }
  auto buffer = Napi::Buffer<uint8_t>::New(env, length);
  bitmap.snapshot_range(offset / 8, length / 8, reinterpret_cast<uint64_t*>(buffer.Data()));
  return buffer;
}

// Replaces the bitmap with the on-disk one: the area at bitmapOffsetBytes of the disk (whole
// blocks, at least the bitmap's words) read kBitmapLoadChunkBytes at a time into one buffer,
// so no copy of the whole bitmap exists, in JS or here. At start-up, before anything is served.
Napi::Value BitmapLoad(const Napi::CallbackInfo& info) {
  Napi::Env env = info.Env();
  PipelineBox* box = unwrap<PipelineBox>(info, 0, "pipeline")->object;
  LocalDisk* disk = unwrap<LocalDisk>(info, 1, "disk")->object;
  uint64_t offset = get_u64(info[2], "offsetBytes");
  auto& bitmap = box->pipeline->bitmap();
  const uint64_t size_bytes = bitmap.words() * 8;
  const uint64_t area_bytes = (size_bytes + nraid::kBlockBytes - 1) / nraid::kBlockBytes * nraid::kBlockBytes;
  check_range(env, disk, offset, area_bytes);
  AlignedBuffer buffer(nraid::kBitmapLoadChunkBytes);
  if (buffer.data == nullptr) throw Napi::Error::New(env, "bitmapLoad: out of memory");
  for (uint64_t at = 0; at < area_bytes; at += nraid::kBitmapLoadChunkBytes) {
    uint64_t read_bytes = std::min(nraid::kBitmapLoadChunkBytes, area_bytes - at);
    int rc = disk->read(buffer.data, read_bytes, offset + at);
    if (rc != 0) throw errno_error(env, -rc, "read " + disk->path() + ": " + strerror(-rc));
    uint64_t words = std::min(read_bytes, size_bytes - at) / 8;
    bitmap.load_range(at / 8, words, static_cast<const uint8_t*>(buffer.data));
  }
  return env.Undefined();
}

Napi::Value BitmapSizeBytes(const Napi::CallbackInfo& info) {
  PipelineBox* box = unwrap<PipelineBox>(info, 0, "pipeline")->object;
  return Napi::Number::New(info.Env(), static_cast<double>(box->pipeline->bitmap().words() * 8));
}

// mode "replace" or "merge" (OR) of words at offsetBytes (a multiple of 8, default 0) of the
// bitmap, in place and without a copy; "all" (every bit set: a full sync); "clear" (none);
// "range": the bits covering data bytes [info[2], info[2] + info[3]) set.
Napi::Value BitmapSet(const Napi::CallbackInfo& info) {
  Napi::Env env = info.Env();
  PipelineBox* box = unwrap<PipelineBox>(info, 0, "pipeline")->object;
  auto& bitmap = box->pipeline->bitmap();
  std::string mode = info[1].As<Napi::String>();
  if (mode == "all") {
    bitmap.set_range(0, box->pipeline->data_size_bytes());
    return env.Undefined();
  }
  if (mode == "clear") {
    bitmap.clear_all();
    return env.Undefined();
  }
  if (mode == "range") {
    uint64_t offset = get_u64(info[2], "offsetBytes");
    uint64_t length = get_u64(info[3], "lengthBytes");
    uint64_t size = box->pipeline->data_size_bytes();
    if (offset > size || length > size - offset) {
      throw Napi::RangeError::New(env, "bitmapSet: expected a range within the " + std::to_string(size) + " data bytes, found offset " +
                                           std::to_string(offset) + " and length " + std::to_string(length));
    }
    bitmap.set_range(offset, length);
    return env.Undefined();
  }
  if (mode != "merge" && mode != "replace") throw Napi::TypeError::New(env, "bitmapSet: mode must be replace, merge, all, clear or range");
  if (!info[2].IsTypedArray()) throw Napi::TypeError::New(env, "bitmapSet: expected a Uint8Array");
  auto data = info[2].As<Napi::Uint8Array>();
  const uint64_t size_bytes = bitmap.words() * 8;
  // Without an offset: the whole bitmap (a longer array is allowed: the on-disk area is whole
  // blocks). With one: exactly the array's words, within the bitmap.
  const bool whole = info.Length() <= 3 || info[3].IsUndefined();
  uint64_t offset = whole ? 0 : get_u64(info[3], "offsetBytes");
  uint64_t length = whole ? size_bytes : data.ByteLength();
  if ((whole && data.ByteLength() < size_bytes) || offset % 8 != 0 || length % 8 != 0 || offset > size_bytes ||
      length > size_bytes - offset) {
    throw Napi::RangeError::New(env, "bitmapSet: expected " + (whole ? std::to_string(size_bytes) + " bytes" : std::string("whole words")) +
                                         " within the bitmap's " + std::to_string(size_bytes) + " bytes, found " +
                                         std::to_string(data.ByteLength()) + " at offset " + std::to_string(offset));
  }
  if (mode == "merge") bitmap.merge_range(offset / 8, length / 8, data.Data());
  else bitmap.load_range(offset / 8, length / 8, data.Data());
  return env.Undefined();
}

Napi::Value GenerationArm(const Napi::CallbackInfo& info) {
  Napi::Env env = info.Env();
  PipelineBox* box = unwrap<PipelineBox>(info, 0, "pipeline")->object;
  if (!info[1].IsTypedArray() || info[1].As<Napi::Uint8Array>().ByteLength() != nraid::kBlockBytes) {
    throw Napi::TypeError::New(env, "generationArm: expected a 4096-byte superblock image");
  }
  uint64_t offset = get_u64(info[2], "offsetBytes");
  if (offset % nraid::kBlockBytes != 0) throw Napi::RangeError::New(env, "generationArm: offset must be block-aligned");
  box->pipeline->generation_arm(info[1].As<Napi::Uint8Array>().Data(), offset);
  return env.Undefined();
}

Napi::Value GenerationTake(const Napi::CallbackInfo& info) {
  PipelineBox* box = unwrap<PipelineBox>(info, 0, "pipeline")->object;
  static const char* kNames[] = {"none", "armed", "written"};
  bool peek = info.Length() > 1 && info[1].ToBoolean();
  return Napi::String::New(info.Env(), kNames[peek ? box->pipeline->generation_peek() : box->pipeline->generation_take()]);
}

Napi::Value SetSuspended(const Napi::CallbackInfo& info) {
  PipelineBox* box = unwrap<PipelineBox>(info, 0, "pipeline")->object;
  box->pipeline->set_suspended(info[1].ToBoolean());
  return info.Env().Undefined();
}

// on-io-error: "detach" or "pass-on".
Napi::Value SetOnIoError(const Napi::CallbackInfo& info) {
  Napi::Env env = info.Env();
  PipelineBox* box = unwrap<PipelineBox>(info, 0, "pipeline")->object;
  std::string policy = info[1].IsString() ? info[1].As<Napi::String>().Utf8Value() : "";
  if (policy != "detach" && policy != "pass-on") throw Napi::TypeError::New(env, "setOnIoError: expected \"detach\" or \"pass-on\"");
  box->pipeline->set_detach_on_error(policy == "detach");
  return env.Undefined();
}

Napi::Value SetPeerServes(const Napi::CallbackInfo& info) {
  PipelineBox* box = unwrap<PipelineBox>(info, 0, "pipeline")->object;
  box->pipeline->set_peer_serves(info[1].ToBoolean());
  return info.Env().Undefined();
}

Napi::Value DetachDisk(const Napi::CallbackInfo& info) {
  PipelineBox* box = unwrap<PipelineBox>(info, 0, "pipeline")->object;
  box->pipeline->detach_disk(info.Length() > 1 && info[1].IsString() ? info[1].As<Napi::String>().Utf8Value() : "detached");
  return info.Env().Undefined();
}

Napi::Value PipelineDestroy(const Napi::CallbackInfo& info) {
  Napi::Env env = info.Env();
  auto* handle = unwrap<PipelineBox>(info, 0, "pipeline");
  PipelineBox* box = handle->object;
  handle->object = nullptr;
  if (box->frontend) {
    box->frontend->stop();
    box->frontend.reset();
  }
  // A flush or drain waiting for the peer settles (ENOTCONN) once the link is gone;
  // a disk job that runs finishes; the ones that never ran are rejected here.
  box->pipeline->detach("closed");
  for (MetadataJob* job : box->jobs->stop()) {
    job->result = -ECANCELED;
    box->bridge->settle(env, job);
  }
  box->jobs.reset();
  box->pipeline.reset();  // no native thread is left to post anything
  box->bridge->release();
  delete box;
  return env.Undefined();
}

// umount2(2): the control plane's cleanup of a stale FUSE mount after a crash.
Napi::Value Unmount(const Napi::CallbackInfo& info) {
  Napi::Env env = info.Env();
  if (!info[0].IsString()) throw Napi::TypeError::New(env, "unmount: expected a path");
  std::string path = info[0].As<Napi::String>();
  bool lazy = info.Length() > 1 && info[1].ToBoolean();
  if (::umount2(path.c_str(), UMOUNT_NOFOLLOW | (lazy ? MNT_DETACH : 0)) != 0) {
    int saved = errno;
    throw errno_error(env, saved, "umount " + path + ": " + strerror(saved));
  }
  return env.Undefined();
}

// A duplicate, in this process, of descriptor `fd` of process `pid` (pidfd_getfd, Linux >= 5.6): the
// holder takes the daemon's /dev/fuse this way. The same open file, so the connection's state
// (requests read but unanswered) belongs to both; close-on-exec, as pidfd_getfd makes it.
Napi::Value TakeFd(const Napi::CallbackInfo& info) {
  Napi::Env env = info.Env();
  auto pid = static_cast<pid_t>(get_u64(info[0], "pid"));
  auto fd = static_cast<int>(get_u64(info[1], "fd"));
  int pidfd = static_cast<int>(::syscall(SYS_pidfd_open, pid, 0));
  if (pidfd < 0) {
    int saved = errno;
    throw errno_error(env, saved, "pidfd_open of pid " + std::to_string(pid) + ": " + strerror(saved));
  }
  int taken = static_cast<int>(::syscall(SYS_pidfd_getfd, pidfd, fd, 0));
  int saved = errno;
  ::close(pidfd);
  if (taken < 0) {
    throw errno_error(env, saved, "pidfd_getfd of descriptor " + std::to_string(fd) + " of pid " + std::to_string(pid) + ": " + strerror(saved));
  }
  return Napi::Number::New(env, taken);
}

// sd_notify(3) by hand (no libsystemd here): one datagram with `state` to the
// AF_UNIX socket systemd names in NOTIFY_SOCKET ('@' = abstract namespace),
// with descriptor `fd` attached (SCM_RIGHTS) unless it is -1: FDSTORE=1 keeps
// it in the service's file-descriptor store.
Napi::Value SdNotify(const Napi::CallbackInfo& info) {
  Napi::Env env = info.Env();
  if (!info[0].IsString() || !info[1].IsString() || !info[2].IsNumber()) {
    throw Napi::TypeError::New(env, "sdNotify: expected (socketPath, state, fd)");
  }
  std::string socket_path = info[0].As<Napi::String>().Utf8Value();
  std::string state = info[1].As<Napi::String>().Utf8Value();
  int fd = info[2].As<Napi::Number>().Int32Value();
  sockaddr_un address{};
  address.sun_family = AF_UNIX;
  if (socket_path.empty() || socket_path.size() >= sizeof(address.sun_path) || (socket_path[0] != '/' && socket_path[0] != '@')) {
    throw Napi::RangeError::New(env, "sdNotify: NOTIFY_SOCKET must be an absolute path or start with @, found \"" + socket_path + "\"");
  }
  memcpy(address.sun_path, socket_path.data(), socket_path.size());
  if (address.sun_path[0] == '@') address.sun_path[0] = '\0';
  socklen_t address_bytes = static_cast<socklen_t>(offsetof(sockaddr_un, sun_path) + socket_path.size());
  int sock = ::socket(AF_UNIX, SOCK_DGRAM | SOCK_CLOEXEC, 0);
  if (sock < 0) {
    int saved = errno;
    throw errno_error(env, saved, std::string("sd_notify socket: ") + strerror(saved));
  }
  iovec iov{const_cast<char*>(state.data()), state.size()};
  msghdr message{};
  message.msg_name = &address;
  message.msg_namelen = address_bytes;
  message.msg_iov = &iov;
  message.msg_iovlen = 1;
  alignas(cmsghdr) char control[CMSG_SPACE(sizeof(int))] = {};
  if (fd >= 0) {
    message.msg_control = control;
    message.msg_controllen = sizeof(control);
    cmsghdr* header = CMSG_FIRSTHDR(&message);
    header->cmsg_level = SOL_SOCKET;
    header->cmsg_type = SCM_RIGHTS;
    header->cmsg_len = CMSG_LEN(sizeof(int));
    memcpy(CMSG_DATA(header), &fd, sizeof(int));
  }
  ssize_t sent = ::sendmsg(sock, &message, MSG_NOSIGNAL);
  int saved = errno;
  ::close(sock);
  if (sent < 0) throw errno_error(env, saved, "sd_notify to " + socket_path + ": " + strerror(saved));
  return env.Undefined();
}

}  // namespace

Napi::Object Init(Napi::Env env, Napi::Object exports) {
  mallopt(M_ARENA_MAX, nraid::kMallocArenasMax);
  exports.Set("crc32c", Napi::Function::New(env, Crc32c));
  exports.Set("recordSeal", Napi::Function::New(env, RecordSeal));
  exports.Set("recordOpen", Napi::Function::New(env, RecordOpen));
  exports.Set("crc32cHardware", Napi::Boolean::New(env, nraid::crc32c_hardware()));
  exports.Set("diskOpen", Napi::Function::New(env, DiskOpen));
  exports.Set("diskInfo", Napi::Function::New(env, DiskInfo));
  exports.Set("diskRead", Napi::Function::New(env, DiskRead));
  exports.Set("diskWrite", Napi::Function::New(env, DiskWrite));
  exports.Set("diskFlush", Napi::Function::New(env, DiskFlush));
  exports.Set("diskClose", Napi::Function::New(env, DiskClose));
  exports.Set("pipelineCreate", Napi::Function::New(env, PipelineCreate));
  exports.Set("pipelineCounters", Napi::Function::New(env, PipelineCounters));
  exports.Set("pipelineFlush", Napi::Function::New(env, PipelineFlush));
  exports.Set("pipelineDestroy", Napi::Function::New(env, PipelineDestroy));
  exports.Set("frontendStart", Napi::Function::New(env, FrontendStart));
  exports.Set("frontendPrepare", Napi::Function::New(env, FrontendPrepare));
  exports.Set("frontendStop", Napi::Function::New(env, FrontendStop));
  exports.Set("frontendRelease", Napi::Function::New(env, FrontendRelease));
  exports.Set("takeFd", Napi::Function::New(env, TakeFd));
  exports.Set("sdNotify", Napi::Function::New(env, SdNotify));
  exports.Set("unmount", Napi::Function::New(env, Unmount));
  exports.Set("linkAttach", Napi::Function::New(env, LinkAttach));
  exports.Set("linkDetach", Napi::Function::New(env, LinkDetach));
  exports.Set("setProtocol", Napi::Function::New(env, SetProtocol));
  exports.Set("resyncStart", Napi::Function::New(env, ResyncStart));
  exports.Set("verifyStart", Napi::Function::New(env, VerifyStart));
  exports.Set("verifyStop", Napi::Function::New(env, VerifyStop));
  exports.Set("resyncSet", Napi::Function::New(env, ResyncSet));
  exports.Set("bitmapGet", Napi::Function::New(env, BitmapGet));
  exports.Set("bitmapSet", Napi::Function::New(env, BitmapSet));
  exports.Set("bitmapSizeBytes", Napi::Function::New(env, BitmapSizeBytes));
  exports.Set("bitmapLoad", Napi::Function::New(env, BitmapLoad));
  exports.Set("generationArm", Napi::Function::New(env, GenerationArm));
  exports.Set("generationTake", Napi::Function::New(env, GenerationTake));
  exports.Set("setSuspended", Napi::Function::New(env, SetSuspended));
  exports.Set("activityLogReset", Napi::Function::New(env, ActivityLogReset));
  exports.Set("bitmapPersist", Napi::Function::New(env, BitmapPersist));
  exports.Set("superblockWrite", Napi::Function::New(env, SuperblockWrite));
  exports.Set("drain", Napi::Function::New(env, Drain));
  exports.Set("allowResync", Napi::Function::New(env, AllowResync));
  exports.Set("setOnIoError", Napi::Function::New(env, SetOnIoError));
  exports.Set("setPeerServes", Napi::Function::New(env, SetPeerServes));
  exports.Set("detachDisk", Napi::Function::New(env, DetachDisk));
  auto limits = Napi::Object::New(env);
  limits.Set("blockBytes", nraid::kBlockBytes);
  limits.Set("requestBytesMax", nraid::kRequestBytesMax);
  limits.Set("frontendThreadsMin", nraid::kFrontendThreadsMin);
  limits.Set("frontendThreadsDefault", nraid::kFrontendThreadsDefault);
  limits.Set("frontendThreadsMax", nraid::kFrontendThreadsMax);
  limits.Set("sectorBytes", nraid::kSectorBytes);
  limits.Set("bitmapGranularityBytesMin", nraid::kBitmapGranularityBytesMin);
  limits.Set("bitmapGranularityBytesMax", nraid::kBitmapGranularityBytesMax);
  limits.Set("activityExtentBytes", static_cast<double>(nraid::kActivityExtentBytes));
  limits.Set("maxLagBytesDefault", static_cast<double>(nraid::kMaxLagBytesDefault));
  limits.Set("maxLagMsDefault", static_cast<double>(nraid::kMaxLagUsDefault / 1000));
  limits.Set("eventQueueMax", nraid::kEventQueueMax);
  limits.Set("resyncPlanAheadMsMin", nraid::kResyncPlanAheadMsMin);
  limits.Set("resyncPlanAheadMsMax", nraid::kResyncPlanAheadMsMax);
  limits.Set("resyncPlanAheadMsDefault", nraid::kResyncPlanAheadMsDefault);
  limits.Set("resyncFillTargetBytesMin", static_cast<double>(nraid::kResyncFillTargetBytesMin));
  limits.Set("resyncFillTargetBytesMax", static_cast<double>(nraid::kResyncFillTargetBytesMax));
  limits.Set("resyncFillTargetBytesDefault", static_cast<double>(nraid::kResyncFillTargetBytesDefault));
  limits.Set("resyncRateBytesMin", static_cast<double>(nraid::kResyncRateBytesMin));
  limits.Set("resyncRateBytesMax", static_cast<double>(nraid::kResyncRateBytesMax));
  limits.Set("resyncMaxRateBytesDefault", static_cast<double>(nraid::kResyncMaxRateBytesDefault));
  limits.Set("resyncMinRateBytesDefault", static_cast<double>(nraid::kResyncMinRateBytesDefault));
  limits.Set("metadataJobsMax", nraid::kMetadataJobsMax);
  exports.Set("limits", limits);
  return exports;
}

NODE_API_MODULE(nraid, Init)
