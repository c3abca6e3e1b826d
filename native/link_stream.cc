#include "link_stream.h"

#include <errno.h>
#include <openssl/err.h>
#include <openssl/pem.h>
#include <openssl/x509.h>
#include <string.h>
#include <sys/socket.h>
#include <sys/time.h>
#include <unistd.h>

#include <algorithm>
#include <climits>

#include "frame.h"
#include "link_io.h"
#include "nraid_assert.h"

namespace nraid {

static_assert(kSocketReadBufferBytes >= 2 * sizeof(FrameHeader), "one read() can bring several frame headers");

namespace {

// Both ends name the key the same way; the acceptor refuses any other name.
constexpr char kPskIdentity[] = "nraid-data-link-v1";
// TLS 1.3 external PSKs through OpenSSL's PSK callbacks hash with SHA-256.
constexpr char kPskCipherSuites[] = "TLS_AES_128_GCM_SHA256:TLS_CHACHA20_POLY1305_SHA256";
constexpr char kCertCipherSuites[] = "TLS_AES_128_GCM_SHA256:TLS_AES_256_GCM_SHA384:TLS_CHACHA20_POLY1305_SHA256";

// The oldest error OpenSSL queued, as text; the queue is cleared.
std::string openssl_error(const char* fallback) {
  unsigned long code = ERR_get_error();
  ERR_clear_error();
  if (code == 0) return fallback;
  char text[256];
  ERR_error_string_n(code, text, sizeof(text));
  return text;
}

const std::string* psk_of(SSL* ssl) { return static_cast<const std::string*>(SSL_get_app_data(ssl)); }

unsigned int psk_server(SSL* ssl, const char* identity, unsigned char* psk, unsigned int psk_max_bytes) {
  const std::string* key = psk_of(ssl);
  if (key == nullptr || strcmp(identity, kPskIdentity) != 0 || key->size() > psk_max_bytes) return 0;
  memcpy(psk, key->data(), key->size());
  return static_cast<unsigned int>(key->size());
}

unsigned int psk_client(SSL* ssl, const char* hint, char* identity, unsigned int identity_max_bytes, unsigned char* psk,
                        unsigned int psk_max_bytes) {
  const std::string* key = psk_of(ssl);
  if (key == nullptr || sizeof(kPskIdentity) > identity_max_bytes || key->size() > psk_max_bytes) return 0;
  memcpy(identity, kPskIdentity, sizeof(kPskIdentity));
  memcpy(psk, key->data(), key->size());
  return static_cast<unsigned int>(key->size());
}

// Loads this node's certificate (chain), key and the CA into `ctx`; false and `*error` on a bad PEM.
bool load_certificates(SSL_CTX* ctx, const TlsOptions& options, std::string* error) {
  auto with_pem = [](const std::string& pem, auto use) {
    BIO* bio = BIO_new_mem_buf(pem.data(), static_cast<int>(pem.size()));
    bool ok = bio != nullptr && use(bio);
    BIO_free(bio);
    return ok;
  };
  bool ok = with_pem(options.cert_pem, [&](BIO* bio) {
    X509* cert = PEM_read_bio_X509(bio, nullptr, nullptr, nullptr);
    if (cert == nullptr) return false;
    bool used = SSL_CTX_use_certificate(ctx, cert) == 1;
    X509_free(cert);
    // The rest of the file: intermediate certificates, sent along.
    while (used) {
      X509* extra = PEM_read_bio_X509(bio, nullptr, nullptr, nullptr);
      if (extra == nullptr) break;
      if (SSL_CTX_add_extra_chain_cert(ctx, extra) != 1) {
        X509_free(extra);
        used = false;
      }
    }
    ERR_clear_error();  // the end of the file reads as an error
    return used;
  });
  if (!ok) {
    *error = "data link TLS: expected a PEM certificate in tls-cert, found none usable: " + openssl_error("no certificate");
    return false;
  }
  ok = with_pem(options.key_pem, [&](BIO* bio) {
    EVP_PKEY* key = PEM_read_bio_PrivateKey(bio, nullptr, nullptr, nullptr);
    if (key == nullptr) return false;
    bool used = SSL_CTX_use_PrivateKey(ctx, key) == 1 && SSL_CTX_check_private_key(ctx) == 1;
    EVP_PKEY_free(key);
    return used;
  });
  if (!ok) {
    *error = "data link TLS: expected the private key of tls-cert in tls-key, found " + openssl_error("none usable");
    return false;
  }
  int authorities = 0;
  with_pem(options.ca_pem, [&](BIO* bio) {
    X509_STORE* store = SSL_CTX_get_cert_store(ctx);
    while (X509* ca = PEM_read_bio_X509(bio, nullptr, nullptr, nullptr)) {
      if (X509_STORE_add_cert(store, ca) == 1) authorities++;
      X509_free(ca);
    }
    ERR_clear_error();
    return true;
  });
  if (authorities == 0) {
    *error = "data link TLS: expected at least one PEM CA certificate in tls-ca, found none";
    return false;
  }
  SSL_CTX_set_verify(ctx, SSL_VERIFY_PEER | SSL_VERIFY_FAIL_IF_NO_PEER_CERT, nullptr);
  return true;
}

int set_receive_timeout(int fd, uint32_t timeout_ms) {
  timeval timeout{static_cast<time_t>(timeout_ms / 1000), static_cast<suseconds_t>((timeout_ms % 1000) * 1000)};
  return setsockopt(fd, SOL_SOCKET, SO_RCVTIMEO, &timeout, sizeof(timeout)) == 0 ? 0 : -errno;
}

}  // namespace

LinkStream::LinkStream(int fd) : fd_(fd), buffer_(new uint8_t[kSocketReadBufferBytes]) {}

LinkStream::~LinkStream() {
  if (ssl_ != nullptr) SSL_free(ssl_);  // frees both BIOs
  if (ctx_ != nullptr) SSL_CTX_free(ctx_);
}

int LinkStream::handshake(const TlsOptions& options, bool server, std::string* error) {
  if (!options.enabled) return 0;
  NRAID_ASSERT(ssl_ == nullptr);
  const bool with_psk = !options.psk.empty();
  NRAID_ASSERT(!with_psk || options.psk.size() == kTlsPskBytes);
  cipher_in_.reset(new uint8_t[kSocketReadBufferBytes]);
  plain_out_.reset(new uint8_t[kTlsPlainChunkBytes]);
  cipher_out_.reset(new uint8_t[kTlsCipherChunkBytes]);
  psk_ = options.psk;

  ctx_ = SSL_CTX_new(server ? TLS_server_method() : TLS_client_method());
  if (ctx_ == nullptr) {
    *error = "data link TLS: cannot make a context: " + openssl_error("out of memory");
    return -ENOMEM;
  }
  SSL_CTX_set_min_proto_version(ctx_, TLS1_3_VERSION);
  SSL_CTX_set_max_proto_version(ctx_, TLS1_3_VERSION);
  SSL_CTX_set_num_tickets(ctx_, 0);  // one session per connection: nothing to resume, nothing after the handshake
  SSL_CTX_set_options(ctx_, SSL_OP_NO_TICKET | SSL_OP_NO_RENEGOTIATION);
  if (SSL_CTX_set_ciphersuites(ctx_, with_psk ? kPskCipherSuites : kCertCipherSuites) != 1) {
    *error = "data link TLS: cipher suites refused: " + openssl_error("unknown");
    return -EINVAL;
  }
  if (!with_psk && !load_certificates(ctx_, options, error)) return -EINVAL;

  ssl_ = SSL_new(ctx_);
  network_in_ = BIO_new(BIO_s_mem());
  network_out_ = BIO_new(BIO_s_mem());
  if (ssl_ == nullptr || network_in_ == nullptr || network_out_ == nullptr) {
    BIO_free(network_in_);
    BIO_free(network_out_);
    network_in_ = network_out_ = nullptr;
    *error = "data link TLS: cannot make a session: " + openssl_error("out of memory");
    return -ENOMEM;
  }
  BIO_set_mem_eof_return(network_in_, -1);  // empty means "wait for the socket", not the end of the stream
  SSL_set_bio(ssl_, network_in_, network_out_);
  if (with_psk) {
    SSL_set_app_data(ssl_, &psk_);
    if (server) {
      SSL_set_psk_server_callback(ssl_, psk_server);
    } else {
      SSL_set_psk_client_callback(ssl_, psk_client);
    }
  }
  if (server) {
    SSL_set_accept_state(ssl_);
  } else {
    SSL_set_connect_state(ssl_);
  }

  // Before the threads start: no lock needed, but the peer gets kTlsHandshakeTimeoutMs.
  int rc = set_receive_timeout(fd_, kTlsHandshakeTimeoutMs);
  while (rc == 0) {
    int done = SSL_do_handshake(ssl_);
    {
      std::lock_guard<std::mutex> lock(write_mutex_);
      rc = drain_output_locked();
    }
    if (rc != 0) {
      *error = std::string("data link TLS handshake: sending: ") + strerror(-rc);
      break;
    }
    if (done == 1) break;
    int reason = SSL_get_error(ssl_, done);
    if (reason != SSL_ERROR_WANT_READ) {
      long verify = SSL_get_verify_result(ssl_);
      *error = "data link TLS handshake failed: " + openssl_error("the peer closed the connection") +
               (verify != X509_V_OK ? std::string(" (peer certificate: ") + X509_verify_cert_error_string(verify) + ")"
                                    : std::string()) +
               (with_psk ? "; check that both nodes have the same secret and tls settings"
                         : "; check tls-cert, tls-key and tls-ca on both nodes");
      rc = -EPROTO;
      break;
    }
    ssize_t n = ::read(fd_, cipher_in_.get(), kSocketReadBufferBytes);
    if (n < 0 && errno == EINTR) continue;
    if (n <= 0) {
      rc = n == 0 ? -EPIPE : -errno;
      *error = n == 0 ? std::string("data link TLS handshake: the peer closed the connection")
               : rc == -EAGAIN ? "data link TLS handshake: expected the peer's handshake within " +
                                     std::to_string(kTlsHandshakeTimeoutMs) + " ms, found none"
                               : std::string("data link TLS handshake: receiving: ") + strerror(-rc);
      if (rc == -EAGAIN) rc = -ETIMEDOUT;
      break;
    }
    BIO_write(network_in_, cipher_in_.get(), static_cast<int>(n));
  }
  int cleared = set_receive_timeout(fd_, 0);
  if (rc == 0) rc = cleared;
  return rc;
}

size_t LinkStream::buffered() {
  size_t bytes = end_ - start_;
  if (ssl_ == nullptr) return bytes;
  // The applier asks to tell "more is coming at once" from "about to wait for
  // the source": records still undecrypted count, or it would flush its acks
  // and apply inline (one frame at a time) after every record.
  std::lock_guard<std::mutex> lock(ssl_mutex_);
  return bytes + static_cast<size_t>(SSL_pending(ssl_)) + BIO_ctrl_pending(network_in_);
}

int LinkStream::read(void* data, size_t length) {
  return ssl_ == nullptr ? read_plain(data, length) : read_tls(static_cast<uint8_t*>(data), length);
}

int LinkStream::read_plain(void* data, size_t length) {
  auto* out = static_cast<uint8_t*>(data);
  size_t buffered = end_ - start_;
  size_t copied = buffered < length ? buffered : length;
  memcpy(out, buffer_.get() + start_, copied);
  start_ += copied;
  size_t remaining = length - copied;
  if (remaining == 0) return 0;
  if (remaining >= kSocketReadBufferBytes / 2) return read_full(fd_, out + copied, remaining);
  start_ = end_ = 0;
  while (end_ < remaining) {
    ssize_t n = ::read(fd_, buffer_.get() + end_, kSocketReadBufferBytes - end_);
    if (n < 0) {
      if (errno == EINTR) continue;
      return -errno;
    }
    if (n == 0) return -EPIPE;
    end_ += static_cast<size_t>(n);
  }
  memcpy(out + copied, buffer_.get(), remaining);
  start_ = remaining;
  return 0;
}

int LinkStream::read_tls(uint8_t* out, size_t length) {
  size_t done = std::min(end_ - start_, length);
  memcpy(out, buffer_.get() + start_, done);
  start_ += done;
  while (done < length) {
    const size_t remaining = length - done;
    if (remaining >= kTlsRecordPlainBytesMax) {
      // Large payloads decrypt straight into their destination.
      ssize_t n = decrypt_some(out + done, remaining);
      if (n < 0) return static_cast<int>(n);
      done += static_cast<size_t>(n);
      continue;
    }
    start_ = end_ = 0;
    ssize_t n = decrypt_some(buffer_.get(), kSocketReadBufferBytes);
    if (n < 0) return static_cast<int>(n);
    end_ = static_cast<size_t>(n);
    size_t copied = std::min(end_, remaining);
    memcpy(out + done, buffer_.get(), copied);
    start_ = copied;
    done += copied;
  }
  return 0;
}

ssize_t LinkStream::decrypt_some(uint8_t* out, size_t length) {
  const int want = static_cast<int>(std::min<size_t>(length, INT_MAX));
  for (;;) {
    int got;
    int reason;
    {
      std::lock_guard<std::mutex> lock(ssl_mutex_);
      got = SSL_read(ssl_, out, want);
      if (got > 0) return got;
      reason = SSL_get_error(ssl_, got);
      if (reason == SSL_ERROR_SSL) {
        // A record that fails its AEAD tag is the one error a relay can cause at will; any other is the peer's.
        bool forged = ERR_GET_REASON(ERR_peek_last_error()) == SSL_R_DECRYPTION_FAILED_OR_BAD_RECORD_MAC;
        ERR_clear_error();
        return forged ? -EBADMSG : -EPROTO;
      }
    }
    if (reason == SSL_ERROR_ZERO_RETURN) return -EPIPE;  // close_notify
    if (reason != SSL_ERROR_WANT_READ) {
      ERR_clear_error();
      return -EIO;
    }
    ssize_t n = ::read(fd_, cipher_in_.get(), kSocketReadBufferBytes);
    if (n < 0) {
      if (errno == EINTR) continue;
      return -errno;
    }
    if (n == 0) return -EPIPE;
    std::lock_guard<std::mutex> lock(ssl_mutex_);
    BIO_write(network_in_, cipher_in_.get(), static_cast<int>(n));
  }
}

int LinkStream::writev(iovec* iov, int count) {
  return ssl_ == nullptr ? writev_full(fd_, iov, count) : writev_tls(iov, count);
}

int LinkStream::write(const void* data, size_t length) {
  iovec iov{const_cast<void*>(data), length};
  return writev(&iov, 1);
}

int LinkStream::writev_tls(iovec* iov, int count) {
  std::lock_guard<std::mutex> lock(write_mutex_);
  size_t pending = 0;  // bytes in plain_out_
  for (int i = 0; i < count; i++) {
    const auto* piece = static_cast<const uint8_t*>(iov[i].iov_base);
    size_t left = iov[i].iov_len;
    while (left > 0) {
      if (pending == 0 && left >= kTlsPlainChunkBytes) {
        // A whole chunk of one payload: sealed from where it is, no copy.
        int rc = seal_and_send(piece, kTlsPlainChunkBytes);
        if (rc != 0) return rc;
        piece += kTlsPlainChunkBytes;
        left -= kTlsPlainChunkBytes;
        continue;
      }
      // Headers and small payloads of a batch share records.
      size_t taken = std::min(left, kTlsPlainChunkBytes - pending);
      memcpy(plain_out_.get() + pending, piece, taken);
      pending += taken;
      piece += taken;
      left -= taken;
      if (pending == kTlsPlainChunkBytes) {
        int rc = seal_and_send(plain_out_.get(), pending);
        if (rc != 0) return rc;
        pending = 0;
      }
    }
  }
  return pending == 0 ? 0 : seal_and_send(plain_out_.get(), pending);
}

int LinkStream::seal_and_send(const uint8_t* plain, size_t length) {
  NRAID_ASSERT(length > 0 && length <= kTlsPlainChunkBytes);
  {
    std::lock_guard<std::mutex> lock(ssl_mutex_);
    // Memory BIOs take everything: one call seals the whole chunk, or the session has failed.
    if (SSL_write(ssl_, plain, static_cast<int>(length)) != static_cast<int>(length)) {
      ERR_clear_error();
      return -EIO;
    }
  }
  return drain_output_locked();
}

int LinkStream::drain_output_locked() {
  for (;;) {
    int n;
    {
      std::lock_guard<std::mutex> lock(ssl_mutex_);
      n = BIO_read(network_out_, cipher_out_.get(), static_cast<int>(kTlsCipherChunkBytes));
    }
    if (n <= 0) return 0;
    iovec iov{cipher_out_.get(), static_cast<size_t>(n)};
    int rc = writev_full(fd_, &iov, 1);
    if (rc != 0) return rc;
  }
}

}  // namespace nraid
