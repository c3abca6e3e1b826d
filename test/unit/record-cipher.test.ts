/**
 * The data link's TLS 1.3 record layer (native/record_cipher.cc) seals and
 * opens records itself, AES-GCM through Intel's ipsec-mb and
 * ChaCha20-Poly1305 through OpenSSL. Two nraid nodes would agree with each
 * other even if both derived the key wrongly or hashed the additional data
 * the wrong way, so here every record is checked against an independent
 * implementation (Node's crypto, RFC 8446 5.2, 7.1-7.3 written out below):
 * the same bytes sealed, whatever the split into pieces and at every length
 * around the 16-byte block and the record's bounds; every record of the
 * reference opened; a record changed in any one byte refused; the key update
 * after kTlsRecordsPerKey records done as RFC 8446 7.2 derives it.
 */
import { createCipheriv, createHmac, randomBytes } from 'crypto';
import { binding, RecordSuiteName } from '../../src/native';

const EBADMSG = 74;
const RECORDS_PER_KEY = 2 ** 23; // native/limits.h kTlsRecordsPerKey
const APPLICATION_DATA = 23;
const ALERT = 21;

const SUITES: Array<{ name: RecordSuiteName; hash: 'sha256' | 'sha384'; keyBytes: number }> = [
  { name: 'aes-128-gcm', hash: 'sha256', keyBytes: 16 },
  { name: 'aes-256-gcm', hash: 'sha384', keyBytes: 32 },
  { name: 'chacha20-poly1305', hash: 'sha256', keyBytes: 32 },
];

/** HKDF-Expand-Label(secret, label, "", length), RFC 8446 7.1 (one HMAC block). */
function expandLabel(hash: string, secret: Buffer, label: string, length: number): Buffer {
  const full = Buffer.from(`tls13 ${label}`);
  const info = Buffer.concat([Buffer.from([length >> 8, length & 0xff, full.length]), full, Buffer.from([0])]);
  return createHmac(hash, secret).update(info).update(Buffer.from([1])).digest().subarray(0, length);
}

/** The record number `seq` of the direction keyed by `secret`, as RFC 8446 5.2 seals it (key updates every RECORDS_PER_KEY records). */
function referenceSeal(suite: (typeof SUITES)[number], secret: Buffer, seq: number, plain: Buffer, type = APPLICATION_DATA): Buffer {
  let current = secret;
  const hashBytes = suite.hash === 'sha256' ? 32 : 48;
  for (let n = seq; n >= RECORDS_PER_KEY; n -= RECORDS_PER_KEY) current = expandLabel(suite.hash, current, 'traffic upd', hashBytes);
  const key = expandLabel(suite.hash, current, 'key', suite.keyBytes);
  const nonce = Buffer.from(expandLabel(suite.hash, current, 'iv', 12));
  const counter = BigInt(seq % RECORDS_PER_KEY);
  for (let i = 0; i < 8; i++) nonce[11 - i] ^= Number((counter >> BigInt(8 * i)) & 0xffn);
  const bodyBytes = plain.length + 1 + 16;
  const header = Buffer.from([APPLICATION_DATA, 3, 3, bodyBytes >> 8, bodyBytes & 0xff]);
  const cipher = createCipheriv(suite.name as 'aes-128-gcm', key, nonce, { authTagLength: 16 });
  cipher.setAAD(header);
  const body = Buffer.concat([cipher.update(plain), cipher.update(Buffer.from([type])), cipher.final()]);
  return Buffer.concat([header, body, cipher.getAuthTag()]);
}

/** `data` cut at `cuts` random places. */
function pieces(data: Buffer, cuts: number): Buffer[] {
  const at = Array.from({ length: cuts }, () => Math.floor(Math.random() * (data.length + 1))).sort((a, b) => a - b);
  const out: Buffer[] = [];
  let start = 0;
  for (const end of [...at, data.length]) {
    out.push(data.subarray(start, end));
    start = end;
  }
  return out;
}

const LENGTHS = [1, 2, 15, 16, 17, 31, 32, 33, 63, 64, 65, 95, 96, 97, 255, 256, 257, 4096, 4096 + 64, 8191, 16383, 16384];

describe.each(SUITES)('record cipher $name', (suite) => {
  const secret = randomBytes(suite.hash === 'sha256' ? 32 : 48);

  test('seals what the reference seals, at every length around the blocks and bounds, however split', () => {
    for (const length of LENGTHS) {
      const plain = randomBytes(length);
      for (const seq of [0, 1, 255, 256, 65_537, RECORDS_PER_KEY - 1]) {
        const expected = referenceSeal(suite, secret, seq, plain);
        for (const cuts of [0, 1, 3, 9]) {
          const sealed = Buffer.from(binding.recordSeal(suite.name, secret, seq, pieces(plain, cuts)));
          expect({ length, seq, cuts, equal: sealed.equals(expected) }).toEqual({ length, seq, cuts, equal: true });
        }
      }
    }
  });

  test('opens what the reference seals, and reports the content type', () => {
    for (const length of LENGTHS) {
      const plain = randomBytes(length);
      const opened = binding.recordOpen(suite.name, secret, 7, referenceSeal(suite, secret, 7, plain));
      expect(opened.rc).toBe(0);
      expect(opened.type).toBe(APPLICATION_DATA);
      expect(Buffer.from(opened.plain).equals(plain)).toBe(true);
    }
    const alert = binding.recordOpen(suite.name, secret, 0, referenceSeal(suite, secret, 0, Buffer.from([1, 0]), ALERT));
    expect(alert.rc).toBe(0);
    expect(alert.type).toBe(ALERT);
  });

  test('refuses a record with any one byte changed, one under another record number, one under another secret', () => {
    const record = referenceSeal(suite, secret, 3, randomBytes(300));
    for (let at = 0; at < record.length; at++) {
      const changed = Buffer.from(record);
      changed[at] ^= 1 << (at % 8);
      expect({ at, rc: binding.recordOpen(suite.name, secret, 3, changed).rc }).toEqual({ at, rc: -EBADMSG });
    }
    expect(binding.recordOpen(suite.name, secret, 3, record).rc).toBe(0);
    expect(binding.recordOpen(suite.name, secret, 4, record).rc).toBe(-EBADMSG);
    expect(binding.recordOpen(suite.name, randomBytes(secret.length), 3, record).rc).toBe(-EBADMSG);
  });

  test('moves to the next key after kTlsRecordsPerKey records, as the TLS 1.3 key update derives it', () => {
    const plain = randomBytes(1000);
    const afterUpdate = referenceSeal(suite, secret, RECORDS_PER_KEY, plain);
    expect(Buffer.from(binding.recordSeal(suite.name, secret, RECORDS_PER_KEY, [plain])).equals(afterUpdate)).toBe(true);
    // Not the old key at record number 0, nor at 2^23.
    expect(afterUpdate.equals(referenceSeal(suite, secret, 0, plain))).toBe(false);
    expect(binding.recordOpen(suite.name, secret, RECORDS_PER_KEY, afterUpdate).rc).toBe(0);
    expect(binding.recordOpen(suite.name, secret, 0, afterUpdate).rc).toBe(-EBADMSG);
  });

  test('refuses a secret of the wrong size, and no plaintext or too much', () => {
    expect(() => binding.recordSeal(suite.name, randomBytes(secret.length + 1), 0, [Buffer.alloc(1)])).toThrow(/secret of the suite's hash size/);
    expect(() => binding.recordSeal(suite.name, secret, 0, [])).toThrow(/1 to 16384 bytes/);
    expect(() => binding.recordSeal(suite.name, secret, 0, [Buffer.alloc(16385)])).toThrow(/1 to 16384 bytes/);
  });
});
