/**
 * TLS 1.3 on both links (issue 11). By default the key is a pre-shared key
 * derived from the config's `secret` (HKDF-SHA256, one key per link, bound to
 * the resource name): nothing to distribute beyond the secret, and a party
 * without it cannot finish a handshake. With `tls-cert`, `tls-key` and
 * `tls-ca` the nodes authenticate each other with certificates signed by that
 * CA instead. `tls = false` leaves both links in the clear (a dedicated cable).
 *
 * The control link is Node's `tls` (its `pskCallback` does TLS 1.3 external
 * PSKs; OpenSSL's PSK callbacks hash with SHA-256, hence the suites below).
 * The data link's TLS runs in native/link_stream.cc with the same OpenSSL,
 * given the data link's key or the PEM texts (nativeTls).
 *
 * The cleartext preambles (NRAIDCTL, NRAIDDAT + token) come first, then the
 * TLS handshake; the nraid handshake runs inside the TLS session unchanged.
 */
import crypto from 'node:crypto';
import fs from 'node:fs';
import * as net from 'node:net';
import * as tls from 'node:tls';
import { ConfigError, PeerError } from '../errors';

/** Bytes of each derived key; native/limits.h kTlsPskBytes. */
export const tlsPskBytes = 32;
/** The PSK identity of the control link (the data link's is in native/link_stream.cc). */
const controlPskIdentity = 'nraid-control-link-v1';
/** TLS 1.3 external PSKs through OpenSSL's PSK callbacks hash with SHA-256. */
const pskCipherSuites = 'TLS_AES_128_GCM_SHA256:TLS_CHACHA20_POLY1305_SHA256';

/** How both links are protected: none, keys derived from the secret, or certificates. */
export type LinkTls =
  | { mode: 'psk'; controlPsk: Buffer; dataPsk: Buffer }
  | { mode: 'cert'; certPem: string; keyPem: string; caPem: string };

/** What the data plane's linkAttach takes (native/addon.cc parse_tls). */
export type NativeTls = { psk: Buffer } | { certPem: string; keyPem: string; caPem: string };

/** The config keys this reads (config.ts ResourceConfig). */
export interface TlsConfig {
  resource: string;
  secret: string | Buffer;
  tls: boolean;
  tlsCert: string | null;
  tlsKey: string | null;
  tlsCa: string | null;
}

/**
 * The key of one link: HKDF-SHA256 over the secret, salted with the resource
 * name, labelled per link, so that the control and data keys differ and a
 * key of one resource opens nothing of another.
 */
export function derivePsk(secret: string | Buffer, resource: string, link: 'control' | 'data'): Buffer {
  const ikm = Buffer.isBuffer(secret) ? secret : Buffer.from(secret, 'utf8');
  const info = Buffer.from(`nraid tls 1.3 psk, ${link} link, v1`, 'utf8');
  return Buffer.from(crypto.hkdfSync('sha256', ikm, Buffer.from(resource, 'utf8'), info, tlsPskBytes));
}

function readPem(key: string, file: string, kind: string): string {
  let text: string;
  try {
    text = fs.readFileSync(file, 'utf8');
  } catch (error) {
    const code = (error as NodeJS.ErrnoException).code ?? 'error';
    throw new ConfigError(`${key}: cannot read ${file} (${code}); expected ${kind} in PEM form there`, { cause: error });
  }
  if (!text.includes('-----BEGIN ')) {
    throw new ConfigError(`${key}: expected ${kind} in PEM form in ${file}, found no "-----BEGIN" line`);
  }
  return text;
}

/** The links' TLS from the config: null with `tls = false`; reads the PEM files in certificate mode. */
export function linkTlsFromConfig(config: TlsConfig): LinkTls | null {
  if (!config.tls) return null;
  if (config.tlsCert !== null && config.tlsKey !== null && config.tlsCa !== null) {
    return {
      mode: 'cert',
      certPem: readPem('tls-cert', config.tlsCert, 'a certificate'),
      keyPem: readPem('tls-key', config.tlsKey, 'a private key'),
      caPem: readPem('tls-ca', config.tlsCa, 'a CA certificate'),
    };
  }
  return {
    mode: 'psk',
    controlPsk: derivePsk(config.secret, config.resource, 'control'),
    dataPsk: derivePsk(config.secret, config.resource, 'data'),
  };
}

export function nativeTls(linkTls: LinkTls | null): NativeTls | null {
  if (linkTls === null) return null;
  if (linkTls.mode === 'psk') return { psk: linkTls.dataPsk };
  return { certPem: linkTls.certPem, keyPem: linkTls.keyPem, caPem: linkTls.caPem };
}

function commonOptions(linkTls: LinkTls): tls.CommonConnectionOptions & tls.SecureContextOptions {
  const base = { minVersion: 'TLSv1.3' as const, maxVersion: 'TLSv1.3' as const };
  if (linkTls.mode === 'cert') {
    return { ...base, cert: linkTls.certPem, key: linkTls.keyPem, ca: linkTls.caPem, rejectUnauthorized: true };
  }
  return { ...base, ciphers: pskCipherSuites };
}

/**
 * The dialer's side of the control link: TLS over `socket` (after its
 * preamble). Writes before the handshake ends wait in the TLS socket; a
 * failed handshake is an 'error' on it.
 */
export function secureClient(socket: net.Socket, linkTls: LinkTls): tls.TLSSocket {
  socket.on('error', () => undefined); // reported by the TLS socket over it
  const options: tls.ConnectionOptions = { socket, ...commonOptions(linkTls) };
  if (linkTls.mode === 'psk') {
    const psk = linkTls.controlPsk;
    options.pskCallback = () => ({ psk, identity: controlPskIdentity });
  }
  // The peer is who the CA signed (or who knows the secret), whatever its host name.
  options.checkServerIdentity = () => undefined;
  return tls.connect(options);
}

/**
 * The acceptor's side: TLS over `socket`, whose bytes after the preamble
 * (`rest`, already read) are given back to it first.
 */
export function secureServer(socket: net.Socket, rest: Buffer, linkTls: LinkTls): tls.TLSSocket {
  if (rest.length > 0) socket.unshift(rest);
  socket.on('error', () => undefined); // reported by the TLS socket over it
  // Node's TLSSocket takes pskCallback as tls.createServer does; its typings list it for the server only.
  const options: tls.TLSSocketOptions & Pick<tls.TlsOptions, 'pskCallback'> = { isServer: true, ...commonOptions(linkTls) };
  if (linkTls.mode === 'psk') {
    const psk = linkTls.controlPsk;
    options.pskCallback = (_socket: tls.TLSSocket, identity: string) => (identity === controlPskIdentity ? psk : null);
  } else {
    options.requestCert = true;
  }
  const secure = new tls.TLSSocket(socket, options);
  if (linkTls.mode === 'cert') {
    // A TLSSocket made outside a tls.Server asks for the peer's certificate but
    // does not judge it (tls.Server does that in its own handshake callback):
    // judge it here, as the handshake ends, before the session reads a byte.
    secure.once('secure', () => {
      const handle = (secure as unknown as { _handle?: { verifyError?: () => (Error & { code?: string }) | null } })._handle;
      const problem = handle?.verifyError ? handle.verifyError() : { code: undefined, message: 'cannot check the peer certificate' };
      if (problem) {
        secure.destroy(new PeerError(`peer certificate refused (${problem.code ?? problem.message}); expected one signed by tls-ca: check tls-ca on both nodes`));
      }
    });
  }
  return secure;
}
