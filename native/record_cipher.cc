#include "record_cipher.h"

#include <errno.h>
#include <link.h>
#include <openssl/crypto.h>
#include <openssl/err.h>
#include <openssl/hmac.h>
#include <string.h>
#include <sys/mman.h>
#include <unistd.h>

#include <algorithm>
#include <cstdlib>
#include <new>

#include "limits.h"
#include "nraid_assert.h"

namespace nraid {

namespace {

// ipsec-mb's init runs its self-test of every algorithm (IMB_FEATURE_SELF_TEST), which
// faults in 3.1 MiB of the library's code that GCM never runs again; they stay in the
// daemon's RSS (issue 12: <= 100 MiB). Once it is done, the library's code pages leave
// this process (MADV_DONTNEED: a clean file-backed page comes back from the page cache
// at its next use; GCM's own come back as 0.5 MiB). Only code segments never written:
// not an object with text relocations, whose code pages are private copies.
int drop_code_pages(dl_phdr_info* info, size_t, void* data) {
  const auto address = reinterpret_cast<uintptr_t>(data);  // a function of the library
  bool contains = false;
  bool text_relocations = false;
  for (int i = 0; i < info->dlpi_phnum; i++) {
    const ElfW(Phdr)& ph = info->dlpi_phdr[i];
    const uintptr_t start = info->dlpi_addr + ph.p_vaddr;
    if (ph.p_type == PT_LOAD && address >= start && address < start + ph.p_memsz) contains = true;
    if (ph.p_type == PT_DYNAMIC) {
      for (auto* d = reinterpret_cast<const ElfW(Dyn)*>(start); d->d_tag != DT_NULL; d++) {
        if (d->d_tag == DT_TEXTREL || (d->d_tag == DT_FLAGS && (d->d_un.d_val & DF_TEXTREL) != 0)) text_relocations = true;
      }
    }
  }
  if (!contains) return 0;
  if (text_relocations) return 1;
  const auto page = static_cast<uintptr_t>(sysconf(_SC_PAGESIZE));
  for (int i = 0; i < info->dlpi_phnum; i++) {
    const ElfW(Phdr)& ph = info->dlpi_phdr[i];
    if (ph.p_type != PT_LOAD || (ph.p_flags & PF_X) == 0 || (ph.p_flags & PF_W) != 0) continue;
    // Whole pages inside the segment: a page it shares with a neighbour stays.
    const uintptr_t start = (info->dlpi_addr + ph.p_vaddr + page - 1) / page * page;
    const uintptr_t end = (info->dlpi_addr + ph.p_vaddr + ph.p_memsz) / page * page;
    if (end > start) ::madvise(reinterpret_cast<void*>(start), end - start, MADV_DONTNEED);
  }
  return 1;
}

// One manager for the process: made once, read-only afterwards (the GCM
// calls below take their state from the key and context passed to them, so
// any thread may use them at once).
IMB_MGR* gcm_manager() {
  static IMB_MGR* const manager = [] {
    IMB_MGR* made = alloc_mb_mgr(0);
    if (made != nullptr) {
      IMB_ARCH arch;
      init_mb_mgr_auto(made, &arch);
      dl_iterate_phdr(drop_code_pages, reinterpret_cast<void*>(&init_mb_mgr_auto));
    }
    return made;
  }();
  return manager;
}

size_t key_bytes_of(RecordSuite suite) { return suite == RecordSuite::kAes128Gcm ? 16 : 32; }

}  // namespace

bool tls13_expand_label(const EVP_MD* digest, const uint8_t* secret, size_t secret_bytes, const char* label,
                        uint8_t* out, size_t length) {
  uint8_t info[2 + 1 + 255 + 1 + 1];
  const size_t label_bytes = 6 + strlen(label);
  NRAID_ASSERT(label_bytes <= 255);
  size_t n = 0;
  info[n++] = static_cast<uint8_t>(length >> 8);
  info[n++] = static_cast<uint8_t>(length);
  info[n++] = static_cast<uint8_t>(label_bytes);
  memcpy(info + n, "tls13 ", 6);
  memcpy(info + n + 6, label, label_bytes - 6);
  n += label_bytes;
  info[n++] = 0;  // no context
  info[n++] = 1;  // HKDF-Expand's first block counter
  uint8_t block[EVP_MAX_MD_SIZE];
  unsigned int block_bytes = 0;
  if (HMAC(digest, secret, static_cast<int>(secret_bytes), info, n, block, &block_bytes) == nullptr ||
      length > block_bytes) {
    return false;
  }
  memcpy(out, block, length);
  OPENSSL_cleanse(block, sizeof(block));
  return true;
}

RecordCipher::~RecordCipher() {
  if (gcm_key_ != nullptr) {
    OPENSSL_cleanse(gcm_key_, sizeof(gcm_key_data));
    free(gcm_key_);
  }
  OPENSSL_cleanse(&gcm_, sizeof(gcm_));
  EVP_CIPHER_CTX_free(evp_);
  OPENSSL_cleanse(secret_, sizeof(secret_));
  OPENSSL_cleanse(iv_, sizeof(iv_));
}

bool RecordCipher::init(RecordSuite suite, const EVP_MD* digest, const uint8_t* secret, size_t secret_bytes, bool seal) {
  NRAID_ASSERT(secret_bytes > 0 && secret_bytes <= sizeof(secret_));
  suite_ = suite;
  digest_ = digest;
  seal_ = seal;
  memcpy(secret_, secret, secret_bytes);
  secret_bytes_ = secret_bytes;
  if (suite == RecordSuite::kChacha20Poly1305) {
    if (evp_ == nullptr) evp_ = EVP_CIPHER_CTX_new();
    if (evp_ == nullptr) return false;
  } else {
    IMB_MGR* const m = gcm_manager();
    if (m == nullptr) return false;
    const bool aes128 = suite == RecordSuite::kAes128Gcm;
    gcm_calls_ = aes128 ? GcmCalls{m->gcm128_pre, m->gcm128_init, seal ? m->gcm128_enc_update : m->gcm128_dec_update,
                                   seal ? m->gcm128_enc_finalize : m->gcm128_dec_finalize}
                        : GcmCalls{m->gcm256_pre, m->gcm256_init, seal ? m->gcm256_enc_update : m->gcm256_dec_update,
                                   seal ? m->gcm256_enc_finalize : m->gcm256_dec_finalize};
    if (gcm_key_ == nullptr) {
      void* memory = aligned_alloc(64, (sizeof(gcm_key_data) + 63) / 64 * 64);
      if (memory == nullptr) return false;
      gcm_key_ = new (memory) gcm_key_data{};
    }
  }
  return install_key();
}

bool RecordCipher::install_key() {
  uint8_t key[32];
  const size_t key_bytes = key_bytes_of(suite_);
  bool ok = tls13_expand_label(digest_, secret_, secret_bytes_, "key", key, key_bytes) &&
            tls13_expand_label(digest_, secret_, secret_bytes_, "iv", iv_, sizeof(iv_));
  if (ok && suite_ == RecordSuite::kChacha20Poly1305) {
    ok = EVP_CipherInit_ex(evp_, EVP_chacha20_poly1305(), nullptr, key, nullptr, seal_ ? 1 : 0) == 1;
  } else if (ok) {
    gcm_calls_.pre(key, gcm_key_);
  }
  OPENSSL_cleanse(key, sizeof(key));
  seq_ = 0;
  return ok;
}

bool RecordCipher::next_nonce(uint8_t nonce[12]) {
  if (seq_ == kTlsRecordsPerKey) {
    // The TLS 1.3 KeyUpdate derivation (RFC 8446 7.2), at a count both ends know.
    uint8_t next[EVP_MAX_MD_SIZE];
    if (!tls13_expand_label(digest_, secret_, secret_bytes_, "traffic upd", next, secret_bytes_)) return false;
    memcpy(secret_, next, secret_bytes_);
    OPENSSL_cleanse(next, sizeof(next));
    if (!install_key()) return false;
  }
  memcpy(nonce, iv_, 12);
  for (int i = 0; i < 8; i++) nonce[11 - i] ^= static_cast<uint8_t>(seq_ >> (8 * i));
  seq_++;
  return true;
}

bool RecordCipher::seal(const iovec* iov, int count, int* index, size_t* offset, size_t plain_bytes, uint8_t* out) {
  NRAID_ASSERT(seal_);
  NRAID_ASSERT(plain_bytes > 0 && plain_bytes <= kTlsRecordPlainBytesMax);
  const size_t body_bytes = plain_bytes + 1 + kTagBytes;
  out[0] = kRecordApplicationData;
  out[1] = 0x03;
  out[2] = 0x03;
  out[3] = static_cast<uint8_t>(body_bytes >> 8);
  out[4] = static_cast<uint8_t>(body_bytes);
  uint8_t* sealed = out + kHeaderBytes;
  uint8_t nonce[12];
  if (!next_nonce(nonce)) return false;
  const bool gcm = suite_ != RecordSuite::kChacha20Poly1305;
  const GcmCalls& calls = gcm_calls_;
  int n = 0;
  if (gcm) {
    calls.init(gcm_key_, &gcm_, nonce, out, kHeaderBytes);  // the header is the additional data
  } else if (EVP_EncryptInit_ex(evp_, nullptr, nullptr, nullptr, nonce) != 1 ||
             EVP_EncryptUpdate(evp_, nullptr, &n, out, kHeaderBytes) != 1) {
    return false;
  }
  auto encrypt = [&](const uint8_t* plain, size_t bytes) {
    if (gcm) {
      calls.update(gcm_key_, &gcm_, sealed, plain, bytes);
      sealed += bytes;
      return true;
    }
    if (EVP_EncryptUpdate(evp_, sealed, &n, plain, static_cast<int>(bytes)) != 1) return false;
    sealed += n;
    return true;
  };
  // Sealed from where the pieces lie (frame headers and payloads), no gathering copy.
  size_t left = plain_bytes;
  while (left > 0) {
    NRAID_ASSERT(*index < count);
    const size_t piece = std::min(left, iov[*index].iov_len - *offset);
    if (piece > 0 && !encrypt(static_cast<const uint8_t*>(iov[*index].iov_base) + *offset, piece)) return false;
    left -= piece;
    *offset += piece;
    if (*offset == iov[*index].iov_len) {
      (*index)++;
      *offset = 0;
    }
  }
  const uint8_t type = kRecordApplicationData;
  if (!encrypt(&type, 1)) return false;
  if (gcm) {
    calls.finalize(gcm_key_, &gcm_, sealed, kTagBytes);
  } else if (EVP_EncryptFinal_ex(evp_, sealed, &n) != 1 || n != 0 ||
             EVP_CIPHER_CTX_ctrl(evp_, EVP_CTRL_AEAD_GET_TAG, kTagBytes, sealed) != 1) {
    return false;
  }
  NRAID_ASSERT(sealed + kTagBytes == out + kHeaderBytes + body_bytes);
  return true;
}

ssize_t RecordCipher::open(const uint8_t* record, size_t body_bytes, uint8_t* out, uint8_t* type) {
  NRAID_ASSERT(!seal_);
  NRAID_ASSERT(body_bytes > kTagBytes);
  const uint8_t* body = record + kHeaderBytes;
  const size_t inner_bytes = body_bytes - kTagBytes;  // plaintext and its content type
  uint8_t nonce[12];
  if (!next_nonce(nonce)) return -EIO;
  if (suite_ != RecordSuite::kChacha20Poly1305) {
    const GcmCalls& calls = gcm_calls_;
    calls.init(gcm_key_, &gcm_, nonce, record, kHeaderBytes);
    if (inner_bytes > 1) calls.update(gcm_key_, &gcm_, out, body, inner_bytes - 1);
    calls.update(gcm_key_, &gcm_, type, body + inner_bytes - 1, 1);
    uint8_t tag[kTagBytes];
    calls.finalize(gcm_key_, &gcm_, tag, kTagBytes);
    // Compared in constant time; a mismatch leaves the plaintext unused (the link is reset).
    if (CRYPTO_memcmp(tag, body + inner_bytes, kTagBytes) != 0) return -EBADMSG;
    return static_cast<ssize_t>(inner_bytes - 1);
  }
  int n = 0;
  bool ok = EVP_DecryptInit_ex(evp_, nullptr, nullptr, nullptr, nonce) == 1 &&
            EVP_DecryptUpdate(evp_, nullptr, &n, record, kHeaderBytes) == 1 &&
            (inner_bytes == 1 || EVP_DecryptUpdate(evp_, out, &n, body, static_cast<int>(inner_bytes - 1)) == 1) &&
            EVP_DecryptUpdate(evp_, type, &n, body + inner_bytes - 1, 1) == 1 &&
            EVP_CIPHER_CTX_ctrl(evp_, EVP_CTRL_AEAD_SET_TAG, kTagBytes, const_cast<uint8_t*>(body + inner_bytes)) == 1;
  if (!ok) {
    ERR_clear_error();
    return -EIO;
  }
  uint8_t final_bytes[EVP_MAX_BLOCK_LENGTH];  // none for this AEAD
  if (EVP_DecryptFinal_ex(evp_, final_bytes, &n) != 1) {
    ERR_clear_error();
    return -EBADMSG;
  }
  return static_cast<ssize_t>(inner_bytes - 1);
}

}  // namespace nraid
