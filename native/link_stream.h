#pragma once
// The byte stream of the data link: plain TCP, or TLS 1.3 over it. The
// kernel here has no kTLS, so the data plane runs TLS itself, with the
// OpenSSL that Node carries (its headers ship with Node's, its symbols are
// exported by the node binary: no second TLS library, the same one as the
// control link's).
//
// OpenSSL runs the TLS 1.3 handshake (on memory BIOs, so that it keeps its
// bound in time and reads nothing past the handshake). Then the stream moves
// the records itself, as kTLS does in a kernel: both traffic secrets are taken
// from the handshake (OpenSSL's key log callback), key and IV derived as RFC
// 8446 7.3 says, and each direction seals or opens its records with its own
// RecordCipher (record_cipher.h: AES-GCM through Intel's ipsec-mb, VAES where
// the CPU has it; ChaCha20-Poly1305 through EVP). So the receiver and the
// senders share no lock and no SSL object, a record is sealed from where the
// plaintext lies straight into the send buffer, and opened from the receive
// buffer straight into its destination (a large payload lands where the
// caller wants it with no copy besides the kernel's). Senders hold
// `write_mutex_` from sealing to the socket write, so records leave in the
// order of their sequence numbers. Both ends move to the next key (the TLS
// 1.3 KeyUpdate derivation) after kTlsRecordsPerKey records of a direction,
// at a count both know, so no KeyUpdate message is sent. Every buffer is
// allocated when the stream is made.
//
// With TLS every frame is authenticated by the AEAD with keys from the
// handshake: a byte changed on the way fails its record, read() returns
// -EBADMSG and the link is reset.
#include <openssl/evp.h>
#include <openssl/ssl.h>
#include <sys/uio.h>

#include <cstddef>
#include <cstdint>
#include <memory>
#include <mutex>
#include <string>

#include "limits.h"
#include "record_cipher.h"

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
  bool tls() const { return tls_; }

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
  // Takes the traffic secrets of `ssl`'s finished handshake (`client_secret`,
  // `server_secret`: from its key log) and what it left unread, and sets up both directions.
  int start_records(SSL* ssl, BIO* network_in, bool server, const std::string& client_secret,
                    const std::string& server_secret, std::string* error);
  // The next record whole in cipher_in_ (reading the socket as needed): 0 and
  // its body's bounds, or a negative errno.
  int next_record(size_t* body_offset, size_t* body_bytes);
  // Opens the record at cipher_in_[body_offset] into `out` (room for
  // body_bytes - tag - 1): the plaintext's size, or a negative errno.
  ssize_t open_record(size_t body_offset, size_t body_bytes, uint8_t* out);
  int writev_tls(iovec* iov, int count);

  const int fd_;
  std::unique_ptr<uint8_t[]> buffer_;  // read: plaintext (or, plain TCP, bytes) not yet taken
  size_t start_ = 0;
  size_t end_ = 0;
  std::unique_ptr<uint8_t[]> cipher_in_;   // the receiver's socket reads: records not yet opened
  size_t cipher_start_ = 0;
  size_t cipher_end_ = 0;
  std::unique_ptr<uint8_t[]> cipher_out_;  // records on their way to the socket

  std::mutex write_mutex_;  // send_, cipher_out_, the socket's write side
  bool tls_ = false;
  RecordCipher send_;
  RecordCipher receive_;
};

}  // namespace nraid
