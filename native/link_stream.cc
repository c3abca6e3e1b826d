#include "link_stream.h"

#include <errno.h>
#include <openssl/err.h>
#include <openssl/pem.h>
#include <openssl/tls1.h>
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

// What the handshake's callbacks read and write: the PSK, and the traffic secrets from the key log.
struct HandshakeState {
  std::string psk;
  std::string client_secret;  // CLIENT_TRAFFIC_SECRET_0, bytes
  std::string server_secret;  // SERVER_TRAFFIC_SECRET_0, bytes
};

HandshakeState* state_of(const SSL* ssl) { return static_cast<HandshakeState*>(SSL_get_app_data(ssl)); }
const std::string* psk_of(SSL* ssl) {
  HandshakeState* state = state_of(ssl);
  return state == nullptr || state->psk.empty() ? nullptr : &state->psk;
}

// OpenSSL's key log line "LABEL <client random hex> <secret hex>": the two
// application traffic secrets are what the record layer below needs.
void keep_traffic_secret(const SSL* ssl, const char* line) {
  HandshakeState* state = state_of(ssl);
  if (state == nullptr) return;
  std::string text(line);
  std::string* target = nullptr;
  if (text.rfind("CLIENT_TRAFFIC_SECRET_0 ", 0) == 0) target = &state->client_secret;
  if (text.rfind("SERVER_TRAFFIC_SECRET_0 ", 0) == 0) target = &state->server_secret;
  size_t last_space = text.rfind(' ');
  if (target == nullptr || last_space == std::string::npos) return;
  std::string hex = text.substr(last_space + 1);
  if (hex.size() % 2 != 0 || hex.size() / 2 > EVP_MAX_MD_SIZE) return;
  target->clear();
  for (size_t i = 0; i < hex.size(); i += 2) target->push_back(static_cast<char>(std::stoi(hex.substr(i, 2), nullptr, 16)));
}

constexpr uint8_t kRecordAlert = 21;
constexpr size_t kRecordHeaderBytes = RecordCipher::kHeaderBytes;
constexpr size_t kTagBytes = RecordCipher::kTagBytes;

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

LinkStream::~LinkStream() = default;

int LinkStream::handshake(const TlsOptions& options, bool server, std::string* error) {
  if (!options.enabled) return 0;
  NRAID_ASSERT(!tls_);
  const bool with_psk = !options.psk.empty();
  NRAID_ASSERT(!with_psk || options.psk.size() == kTlsPskBytes);
  cipher_in_.reset(new uint8_t[kSocketReadBufferBytes]);
  cipher_out_.reset(new uint8_t[kTlsCipherChunkBytes]);
  HandshakeState state;
  state.psk = options.psk;

  // Owned here: nothing of OpenSSL's SSL objects outlives the handshake.
  std::unique_ptr<SSL_CTX, decltype(&SSL_CTX_free)> ctx(SSL_CTX_new(server ? TLS_server_method() : TLS_client_method()),
                                                        SSL_CTX_free);
  if (ctx == nullptr) {
    *error = "data link TLS: cannot make a context: " + openssl_error("out of memory");
    return -ENOMEM;
  }
  SSL_CTX_set_min_proto_version(ctx.get(), TLS1_3_VERSION);
  SSL_CTX_set_max_proto_version(ctx.get(), TLS1_3_VERSION);
  SSL_CTX_set_num_tickets(ctx.get(), 0);  // one session per connection: nothing to resume, nothing after the handshake
  SSL_CTX_set_options(ctx.get(), SSL_OP_NO_TICKET | SSL_OP_NO_RENEGOTIATION);
  SSL_CTX_set_keylog_callback(ctx.get(), keep_traffic_secret);
  if (SSL_CTX_set_ciphersuites(ctx.get(), with_psk ? kPskCipherSuites : kCertCipherSuites) != 1) {
    *error = "data link TLS: cipher suites refused: " + openssl_error("unknown");
    return -EINVAL;
  }
  if (!with_psk && !load_certificates(ctx.get(), options, error)) return -EINVAL;

  std::unique_ptr<SSL, decltype(&SSL_free)> ssl(SSL_new(ctx.get()), SSL_free);
  BIO* network_in = BIO_new(BIO_s_mem());
  BIO* network_out = BIO_new(BIO_s_mem());
  if (ssl == nullptr || network_in == nullptr || network_out == nullptr) {
    BIO_free(network_in);
    BIO_free(network_out);
    *error = "data link TLS: cannot make a session: " + openssl_error("out of memory");
    return -ENOMEM;
  }
  BIO_set_mem_eof_return(network_in, -1);  // empty means "wait for the socket", not the end of the stream
  SSL_set_bio(ssl.get(), network_in, network_out);  // owned by ssl from here
  SSL_set_app_data(ssl.get(), &state);
  if (with_psk) {
    if (server) {
      SSL_set_psk_server_callback(ssl.get(), psk_server);
    } else {
      SSL_set_psk_client_callback(ssl.get(), psk_client);
    }
  }
  if (server) {
    SSL_set_accept_state(ssl.get());
  } else {
    SSL_set_connect_state(ssl.get());
  }

  // Before the threads start: no lock needed, but the peer gets kTlsHandshakeTimeoutMs.
  int rc = set_receive_timeout(fd_, kTlsHandshakeTimeoutMs);
  while (rc == 0) {
    int done = SSL_do_handshake(ssl.get());
    // What OpenSSL wrote goes to the socket, also after the last step (the client's Finished).
    for (;;) {
      int n = BIO_read(network_out, cipher_out_.get(), static_cast<int>(kTlsCipherChunkBytes));
      if (n <= 0) break;
      iovec iov{cipher_out_.get(), static_cast<size_t>(n)};
      rc = writev_full(fd_, &iov, 1);
      if (rc != 0) break;
    }
    if (rc != 0) {
      *error = std::string("data link TLS handshake: sending: ") + strerror(-rc);
      break;
    }
    if (done == 1) {
      rc = start_records(ssl.get(), network_in, server, state.client_secret, state.server_secret, error);
      break;
    }
    int reason = SSL_get_error(ssl.get(), done);
    if (reason != SSL_ERROR_WANT_READ) {
      long verify = SSL_get_verify_result(ssl.get());
      *error = "data link TLS handshake failed: " + openssl_error("the peer closed the connection") +
               (verify != X509_V_OK ? std::string(" (peer certificate: ") + X509_verify_cert_error_string(verify) + ")"
                                    : std::string()) +
               (with_psk ? "; check that both nodes have the same secret and tls settings"
                         : "; check tls-cert, tls-key and tls-ca on both nodes");
      rc = -EPROTO;
      break;
    }
    // What comes after the handshake in this read stays in network_in for start_records.
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
    BIO_write(network_in, cipher_in_.get(), static_cast<int>(n));
  }
  OPENSSL_cleanse(state.client_secret.data(), state.client_secret.size());
  OPENSSL_cleanse(state.server_secret.data(), state.server_secret.size());
  int cleared = set_receive_timeout(fd_, 0);
  if (rc == 0) rc = cleared;
  return rc;
}

int LinkStream::start_records(SSL* ssl, BIO* network_in, bool server, const std::string& client_secret,
                              const std::string& server_secret, std::string* error) {
  const SSL_CIPHER* suite = SSL_get_current_cipher(ssl);
  const uint32_t id = suite == nullptr ? 0 : SSL_CIPHER_get_id(suite);
  RecordSuite record_suite;
  switch (id) {
    case TLS1_3_CK_AES_128_GCM_SHA256: record_suite = RecordSuite::kAes128Gcm; break;
    case TLS1_3_CK_AES_256_GCM_SHA384: record_suite = RecordSuite::kAes256Gcm; break;
    case TLS1_3_CK_CHACHA20_POLY1305_SHA256: record_suite = RecordSuite::kChacha20Poly1305; break;
    default:
      *error = std::string("data link TLS: expected an AES-GCM or ChaCha20-Poly1305 suite, found ") +
               (suite == nullptr ? "none" : SSL_CIPHER_get_name(suite));
      return -EPROTO;
  }
  const EVP_MD* digest = SSL_CIPHER_get_handshake_digest(suite);
  const size_t hash_bytes = digest == nullptr ? 0 : static_cast<size_t>(EVP_MD_get_size(digest));
  if (hash_bytes == 0 || client_secret.size() != hash_bytes || server_secret.size() != hash_bytes) {
    *error = "data link TLS: the handshake gave no application traffic secrets (key log)";
    return -EPROTO;
  }
  // Nothing may be left inside OpenSSL: the records after the handshake are ours to open.
  if (SSL_has_pending(ssl)) {
    *error = "data link TLS: the peer sent records OpenSSL read past the handshake";
    return -EPROTO;
  }
  const std::string& mine = server ? server_secret : client_secret;
  const std::string& theirs = server ? client_secret : server_secret;
  if (!send_.init(record_suite, digest, reinterpret_cast<const uint8_t*>(mine.data()), hash_bytes, true) ||
      !receive_.init(record_suite, digest, reinterpret_cast<const uint8_t*>(theirs.data()), hash_bytes, false)) {
    *error = "data link TLS: cannot set up the record keys: " + openssl_error("out of memory");
    return -ENOMEM;
  }
  // Records the peer sent right after its Finished wait in network_in: they are the first to open.
  const size_t left = BIO_ctrl_pending(network_in);
  NRAID_ASSERT(left <= kSocketReadBufferBytes);
  cipher_start_ = 0;
  cipher_end_ = left == 0 ? 0 : static_cast<size_t>(BIO_read(network_in, cipher_in_.get(), static_cast<int>(left)));
  tls_ = true;
  return 0;
}

size_t LinkStream::buffered() {
  // The applier asks to tell "more is coming at once" from "about to wait for
  // the source": records not yet opened count, or it would flush its acks and
  // apply inline (one frame at a time) after every record.
  return (end_ - start_) + (cipher_end_ - cipher_start_);
}

int LinkStream::read(void* data, size_t length) {
  return tls_ ? read_tls(static_cast<uint8_t*>(data), length) : read_plain(data, length);
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
    size_t body_offset = 0;
    size_t body_bytes = 0;
    int rc = next_record(&body_offset, &body_bytes);
    if (rc != 0) return rc;
    const size_t remaining = length - done;
    if (remaining >= body_bytes - kTagBytes - 1) {
      // The whole record belongs to this read: opened straight into its destination.
      ssize_t n = open_record(body_offset, body_bytes, out + done);
      if (n < 0) return static_cast<int>(n);
      done += static_cast<size_t>(n);
      continue;
    }
    ssize_t n = open_record(body_offset, body_bytes, buffer_.get());
    if (n < 0) return static_cast<int>(n);
    size_t copied = std::min(static_cast<size_t>(n), remaining);
    memcpy(out + done, buffer_.get(), copied);
    start_ = copied;
    end_ = static_cast<size_t>(n);
    done += copied;
  }
  return 0;
}

int LinkStream::next_record(size_t* body_offset, size_t* body_bytes) {
  for (;;) {
    const size_t have = cipher_end_ - cipher_start_;
    size_t need = kRecordHeaderBytes;
    if (have >= kRecordHeaderBytes) {
      const uint8_t* header = cipher_in_.get() + cipher_start_;
      const size_t bytes = (size_t{header[3]} << 8) | header[4];
      // After the handshake only application data records come; the header
      // is the AEAD's additional data, so a relay that changes it is caught
      // here or by the tag: either way a record that failed its authentication.
      if (header[0] != kRecordApplicationData || header[1] != 0x03 || header[2] != 0x03 || bytes < kTagBytes + 1 ||
          bytes > kTlsRecordCipherBytesMax) {
        return -EBADMSG;
      }
      need = kRecordHeaderBytes + bytes;
      if (have >= need) {
        *body_offset = cipher_start_ + kRecordHeaderBytes;
        *body_bytes = bytes;
        return 0;
      }
    }
    // Room for the rest of this record: what is left moves to the front (at most one record).
    if (cipher_start_ + need > kSocketReadBufferBytes || cipher_end_ == cipher_start_) {
      memmove(cipher_in_.get(), cipher_in_.get() + cipher_start_, have);
      cipher_start_ = 0;
      cipher_end_ = have;
    }
    ssize_t n = ::read(fd_, cipher_in_.get() + cipher_end_, kSocketReadBufferBytes - cipher_end_);
    if (n < 0) {
      if (errno == EINTR) continue;
      return -errno;
    }
    if (n == 0) return -EPIPE;
    cipher_end_ += static_cast<size_t>(n);
  }
}

ssize_t LinkStream::open_record(size_t body_offset, size_t body_bytes, uint8_t* out) {
  const uint8_t* record = cipher_in_.get() + body_offset - kRecordHeaderBytes;
  cipher_start_ = body_offset + body_bytes;
  uint8_t type = 0;
  ssize_t n = receive_.open(record, body_bytes, out, &type);
  if (n < 0) return n;
  if (cipher_start_ == cipher_end_) cipher_start_ = cipher_end_ = 0;
  if (type == kRecordApplicationData) return n;
  // The peer's close_notify (or any alert): the stream ends. Padding or post-handshake messages never come from nraid.
  return type == kRecordAlert ? -EPIPE : -EPROTO;
}

int LinkStream::writev(iovec* iov, int count) { return tls_ ? writev_tls(iov, count) : writev_full(fd_, iov, count); }

int LinkStream::write(const void* data, size_t length) {
  iovec iov{const_cast<void*>(data), length};
  return writev(&iov, 1);
}

int LinkStream::writev_tls(iovec* iov, int count) {
  std::lock_guard<std::mutex> lock(write_mutex_);
  size_t total = 0;
  for (int i = 0; i < count; i++) total += iov[i].iov_len;
  int index = 0;
  size_t offset = 0;
  size_t used = 0;  // bytes of records in cipher_out_
  while (total > 0) {
    const size_t plain_bytes = std::min(total, kTlsRecordPlainBytesMax);
    if (used + plain_bytes + kTlsRecordOverheadBytes > kTlsCipherChunkBytes) {
      iovec out{cipher_out_.get(), used};
      int rc = writev_full(fd_, &out, 1);
      if (rc != 0) return rc;
      used = 0;
    }
    if (!send_.seal(iov, count, &index, &offset, plain_bytes, cipher_out_.get() + used)) {
      ERR_clear_error();
      return -EIO;
    }
    used += plain_bytes + kTlsRecordOverheadBytes;
    total -= plain_bytes;
  }
  if (used == 0) return 0;
  iovec out{cipher_out_.get(), used};
  return writev_full(fd_, &out, 1);
}

}  // namespace nraid
