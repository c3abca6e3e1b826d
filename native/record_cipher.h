#pragma once
// One direction of the data link's TLS 1.3 record protection (RFC 8446 5.2
// and 7.3): the traffic secret, the AEAD key and static IV derived from it,
// the record sequence number, and the KeyUpdate derivation (7.2) after
// kTlsRecordsPerKey records. It seals a record from plaintext pieces lying
// anywhere (frame headers and payloads, no gathering copy) and opens one
// into its destination.
//
// AES-GCM runs through Intel's Multi-Buffer Crypto for IPsec library
// (Debian's libipsec-mb, BSD): its VAES/AVX-512 GCM moves 9-11 GB/s per core
// here against 3.5-4 GB/s for the AES-NI code of the OpenSSL 3.0 that Node
// carries, and the record layer is a third of both daemons' CPU during
// sequential writes. On CPUs without AVX-512 the library picks its AVX2,
// AVX or SSE code (AES-NI), or its portable code. ChaCha20-Poly1305 (only
// negotiated when a peer prefers it) stays with OpenSSL's EVP.
// Without the library's pre-0.53 names (SHA1, ...), which clash with OpenSSL's.
#define NO_COMPAT_IMB_API_053
#include <intel-ipsec-mb.h>
#include <openssl/evp.h>
#include <sys/types.h>
#include <sys/uio.h>

#include <cstddef>
#include <cstdint>

namespace nraid {

enum class RecordSuite : uint8_t { kAes128Gcm, kAes256Gcm, kChacha20Poly1305 };

// The outer content type of every TLS 1.3 record after the handshake (RFC 8446 5.2).
constexpr uint8_t kRecordApplicationData = 23;

class RecordCipher {
 public:
  static constexpr size_t kHeaderBytes = 5;
  static constexpr size_t kTagBytes = 16;

  RecordCipher() = default;
  ~RecordCipher();
  RecordCipher(const RecordCipher&) = delete;
  RecordCipher& operator=(const RecordCipher&) = delete;

  // Keys this direction from its application traffic secret (`secret_bytes`:
  // the size of `digest`'s output). `seal`: this side sends with it. False
  // when a key cannot be set up (out of memory).
  bool init(RecordSuite suite, const EVP_MD* digest, const uint8_t* secret, size_t secret_bytes, bool seal);
  // Tests only: where the record count stands, to reach the key update.
  void set_sequence_for_test(uint64_t seq) { seq_ = seq; }

  // Seals `plain_bytes` (1 to kTlsRecordPlainBytesMax) taken from iov[*index]
  // at *offset onward (both advanced past them) into one application data
  // record at `out` (header, body, tag: plain_bytes + kTlsRecordOverheadBytes).
  bool seal(const iovec* iov, int count, int* index, size_t* offset, size_t plain_bytes, uint8_t* out);
  // Opens the record whose header is at `record` and whose body (`body_bytes`,
  // tag included) follows it, into `out` (room for body_bytes - kTagBytes - 1):
  // the plaintext's size and its content type in `*type`; -EBADMSG when the tag
  // does not match (changed on the way, or forged), -EIO when the cipher fails.
  ssize_t open(const uint8_t* record, size_t body_bytes, uint8_t* out, uint8_t* type);

 private:
  // Key and IV from the current secret; the sequence restarts at 0.
  bool install_key();
  // The nonce of the next record (and the key update when its count is reached).
  bool next_nonce(uint8_t nonce[12]);

  // This direction's AES-GCM calls, for the CPU ipsec-mb picked (set by init).
  struct GcmCalls {
    aes_gcm_pre_t pre = nullptr;
    aes_gcm_init_t init = nullptr;
    aes_gcm_enc_dec_update_t update = nullptr;
    aes_gcm_enc_dec_finalize_t finalize = nullptr;
  };

  RecordSuite suite_ = RecordSuite::kAes128Gcm;
  const EVP_MD* digest_ = nullptr;
  bool seal_ = false;
  uint8_t secret_[EVP_MAX_MD_SIZE] = {};
  size_t secret_bytes_ = 0;
  uint8_t iv_[12] = {};
  uint64_t seq_ = 0;
  gcm_key_data* gcm_key_ = nullptr;  // AES-GCM: expanded key and hash key powers (64-byte aligned)
  gcm_context_data gcm_{};           // AES-GCM: the record in progress
  GcmCalls gcm_calls_{};
  EVP_CIPHER_CTX* evp_ = nullptr;    // ChaCha20-Poly1305
};

// HKDF-Expand-Label(secret, label, "", length) of RFC 8446 7.1, for lengths of one hash block at most.
bool tls13_expand_label(const EVP_MD* digest, const uint8_t* secret, size_t secret_bytes, const char* label,
                        uint8_t* out, size_t length);

}  // namespace nraid
