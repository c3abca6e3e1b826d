{
  "targets": [
    {
      "target_name": "nraid",
      "sources": [
        "native/addon.cc",
        "native/crc32c.cc",
        "native/local_io.cc",
        "native/fuse_frontend.cc",
        "native/io_buffers.cc",
        "native/pipeline.cc",
        "native/bitmap.cc",
        "native/link_io.cc",
        "native/link_stream.cc",
        "native/record_cipher.cc",
        "native/replicator.cc",
        "native/applier.cc",
        "native/activity_log.cc",
        "native/metadata_jobs.cc",
        "native/js_bridge.cc"
      ],
      "include_dirs": ["<!(node -p \"require('node-addon-api').include_dir\")"],
      "defines": ["NAPI_VERSION=8", "NODE_ADDON_API_DISABLE_DEPRECATED", "NAPI_CPP_EXCEPTIONS"],
      "cflags!": ["-fno-exceptions"],
      "cflags_cc!": ["-fno-exceptions", "-fno-rtti"],
      "cflags_cc": ["-std=c++20", "-O2", "-Wall", "-Wextra", "-Werror", "-Wno-unused-parameter", "-pthread"],
      "ldflags": ["-pthread"],
      "libraries": ["-lIPSec_MB"]
    }
  ]
}
