#include <napi.h>

#include "crc32c.h"

namespace {

Napi::Value Crc32c(const Napi::CallbackInfo& info) {
  Napi::Env env = info.Env();
  if (!info[0].IsTypedArray()) throw Napi::TypeError::New(env, "crc32c: expected a Uint8Array");
  auto data = info[0].As<Napi::Uint8Array>();
  uint32_t seed = info.Length() > 1 && info[1].IsNumber() ? info[1].As<Napi::Number>().Uint32Value() : 0;
  return Napi::Number::New(env, nraid::crc32c(seed, data.Data(), data.ByteLength()));
}

}  // namespace

Napi::Object Init(Napi::Env env, Napi::Object exports) {
  exports.Set("crc32c", Napi::Function::New(env, Crc32c));
  exports.Set("crc32cHardware", Napi::Boolean::New(env, nraid::crc32c_hardware()));
  return exports;
}
NODE_API_MODULE(nraid, Init)
