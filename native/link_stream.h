#pragma once
// The byte stream of the data link: plain TCP, or TLS 1.3 over it. The
// kernel here has no kTLS, so the data plane runs TLS itself, with the
// OpenSSL that Node carries (its headers ship with Node's, its symbols are
// exported by the node binary: no second TLS library, the same one as the
// control link's).
//
// One SSL object serves two threads (the receiver decrypts, senders
// encrypt), which OpenSSL does not allow at once: it runs on memory BIOs, so
// every SSL call is short CPU work under `ssl_mutex_`, and the socket reads
// and writes happen outside it. Senders hold `write_mutex_` from encryption
// to the socket write, so records leave in the order they were sealed. A
// batch of frames is coalesced into few records (up to kTlsPlainChunkBytes
// per SSL_write) and leaves in one write(); every buffer is allocated when
// the stream is made.
//
// With TLS every frame is authenticated by the AEAD with keys from the
// handshake: a byte changed on the way fails its record, read() returns
// -EBADMSG and the link is reset.
#include <openssl/ssl.h>
#include <sys/uio.h>

#include <cstddef>
#include <cstdint>
#include <memory>
#include <mutex>
#include <string>

#include "limits.h"

namespace nraid {

// How the data link is protected. No psk and no certificate: plain TCP.
struct TlsOptions {
  bool enabled = false;
  std::string psk;       // kTlsPskBytes, derived from the shared secret; or empty with certificates:
  std::string cert_pem;  // this node's certificate chain,
  std::string key_pem;   // its private key,
  std::string ca_pem;    // the CA that signed both nodes' certificates
};

class LinkStream {
 public:
  // `fd` stays its owner's (shut down and closed by it).
  explicit LinkStream(int fd);
  int fd() const { return fd_; }
  ~LinkStream();
  LinkStream(const LinkStream&) = delete;
  LinkStream& operator=(const LinkStream&) = delete;

  // The TLS handshake (`server`: the acceptor of the data connection), before
  // any read or write and before other threads use the stream. Without TLS: 0
  // at once. 0, or a negative errno and `*error` saying what failed.
  int handshake(const TlsOptions& options, bool server, std::string* error);
  bool tls() const { return ssl_ != nullptr; }

  // Whole reads: 0, or a negative errno (-EPIPE for an orderly close by the
  // peer, -EBADMSG for a TLS record that failed its authentication). One thread reads.
  int read(void* data, size_t length);
  // Bytes at hand without waiting for the socket: read and not yet taken;
  // with TLS also what is received and not yet decrypted (its ciphertext
  // size, a few bytes per record above the plaintext). The receiver only.
  size_t buffered();
  // Whole writes, from any thread: 0, or a negative errno.
  int writev(iovec* iov, int count);
  int write(const void* data, size_t length);

 private:
  int read_plain(void* data, size_t length);
  int read_tls(uint8_t* out, size_t length);
  // Decrypts into `out` (at most `length` bytes): bytes given, or a negative errno.
  ssize_t decrypt_some(uint8_t* out, size_t length);
  int writev_tls(iovec* iov, int count);
  // Encrypts `length` bytes and writes their records to the socket. Under write_mutex_.
  int seal_and_send(const uint8_t* plain, size_t length);
  // Moves what OpenSSL wrote to its output BIO to the socket. Under write_mutex_, not ssl_mutex_.
  int drain_output_locked();

  const int fd_;
  std::unique_ptr<uint8_t[]> buffer_;  // read: plaintext (or, plain TCP, bytes) not yet taken
  size_t start_ = 0;
  size_t end_ = 0;
  std::unique_ptr<uint8_t[]> cipher_in_;   // the receiver's socket reads
  std::unique_ptr<uint8_t[]> plain_out_;   // a batch's small pieces, coalesced
  std::unique_ptr<uint8_t[]> cipher_out_;  // records on their way to the socket

  std::mutex ssl_mutex_;    // ssl_, its BIOs
  std::mutex write_mutex_;  // plain_out_, cipher_out_, the socket's write side
  std::string psk_;  // what the PSK callbacks hand OpenSSL
  SSL_CTX* ctx_ = nullptr;
  SSL* ssl_ = nullptr;
  BIO* network_in_ = nullptr;   // owned by ssl_
  BIO* network_out_ = nullptr;  // owned by ssl_
};

}  // namespace nraid
