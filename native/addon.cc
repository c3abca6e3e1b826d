// The N-API surface of the data plane (after sharp and TigerBeetle's client):
// a handful of control calls on opaque handles. JavaScript validates options;
// here they are copied into plain structs; the data plane threads never touch
// a JavaScript value.
#include <napi.h>
#include <stdlib.h>
#include <string.h>
#include <sys/mount.h>

#include <memory>
#include <string>

#include "crc32c.h"
#include "fuse_frontend.h"
#include "limits.h"
#include "local_io.h"
#include "pipeline.h"

namespace {

using nraid::FuseFrontend;
using nraid::LocalDisk;
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

struct PipelineBox {
  std::unique_ptr<Pipeline> pipeline;
  std::unique_ptr<FuseFrontend> frontend;
};

Napi::Value PipelineCreate(const Napi::CallbackInfo& info) {
  Napi::Env env = info.Env();
  LocalDisk* disk = unwrap<LocalDisk>(info, 0, "disk")->object;
  if (!info[1].IsObject()) throw Napi::TypeError::New(env, "pipelineCreate: expected options");
  auto options = info[1].As<Napi::Object>();
  uint64_t data_size_bytes = get_u64(options.Get("dataSizeBytes"), "dataSizeBytes");
  if (data_size_bytes == 0 || data_size_bytes % nraid::kBlockBytes != 0 || data_size_bytes > disk->size_bytes()) {
    throw Napi::RangeError::New(env, "pipelineCreate: dataSizeBytes must be a multiple of 4096 within the disk");
  }
  auto* box = new PipelineBox();
  box->pipeline = std::make_unique<Pipeline>(disk, data_size_bytes);
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
  return result;
}

Napi::Value PipelineFlush(const Napi::CallbackInfo& info) {
  Napi::Env env = info.Env();
  PipelineBox* box = unwrap<PipelineBox>(info, 0, "pipeline")->object;
  int rc = box->pipeline->flush();
  if (rc != 0) throw errno_error(env, -rc, std::string("flush: ") + strerror(-rc));
  return env.Undefined();
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
  if (frontend_options.threads < nraid::kFrontendThreadsMin || frontend_options.threads > nraid::kFrontendThreadsMax) {
    throw Napi::RangeError::New(env, "frontendStart: threads out of range");
  }
  auto frontend = std::make_unique<FuseFrontend>(box->pipeline.get(), frontend_options);
  std::string error;
  if (!frontend->start(&error)) throw errno_error(env, errno, error);
  box->frontend = std::move(frontend);
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

Napi::Value PipelineDestroy(const Napi::CallbackInfo& info) {
  auto* handle = unwrap<PipelineBox>(info, 0, "pipeline");
  if (handle->object->frontend) handle->object->frontend->stop();
  delete handle->object;
  handle->object = nullptr;
  return info.Env().Undefined();
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

}  // namespace

Napi::Object Init(Napi::Env env, Napi::Object exports) {
  exports.Set("crc32c", Napi::Function::New(env, Crc32c));
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
  exports.Set("frontendStop", Napi::Function::New(env, FrontendStop));
  exports.Set("unmount", Napi::Function::New(env, Unmount));
  auto limits = Napi::Object::New(env);
  limits.Set("blockBytes", nraid::kBlockBytes);
  limits.Set("requestBytesMax", nraid::kRequestBytesMax);
  limits.Set("frontendThreadsMin", nraid::kFrontendThreadsMin);
  limits.Set("frontendThreadsDefault", nraid::kFrontendThreadsDefault);
  limits.Set("frontendThreadsMax", nraid::kFrontendThreadsMax);
  exports.Set("limits", limits);
  return exports;
}

NODE_API_MODULE(nraid, Init)
