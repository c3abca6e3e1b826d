/**
 * native/crc32c.cc computes long buffers in three interleaved lanes and joins
 * them with precomputed shift tables; a mistake there changes the checksum of
 * every payload over 768 bytes and of no short one. Here it is checked
 * against the one-byte-per-step table (bench/crc32c-table.js) at every length
 * around the lane boundaries (768- and 24 KiB blocks), at odd alignments and
 * with a previous checksum carried in, and against CRC-32C's published check
 * value.
 */
import { randomBytes } from 'crypto';
import { binding } from '../../src/native';

// eslint-disable-next-line @typescript-eslint/no-require-imports
const { crc32cTable } = require('../../bench/crc32c-table') as { crc32cTable: (data: Uint8Array, seed?: number) => number };

const SHORT_BLOCK_BYTES = 3 * 256;
const LONG_BLOCK_BYTES = 3 * 8192;

function lengthsAround(block: number, blocks: number): number[] {
  const lengths: number[] = [];
  for (let n = 1; n <= blocks; n++) for (const delta of [-9, -8, -1, 0, 1, 7, 8, 9]) lengths.push(n * block + delta);
  return lengths;
}

describe('crc32c', () => {
  test('the check value of "123456789" is 0xE3069283 (RFC 3720, B.4)', () => {
    expect(binding.crc32c(Buffer.from('123456789')).toString(16)).toBe('e3069283');
  });

  test('agrees with the table at every length around the lane boundaries, at odd alignments, with a seed', () => {
    const lengths = [0, 1, 7, 8, 9, 4096, 1 << 20, (1 << 20) + 4096, ...lengthsAround(SHORT_BLOCK_BYTES, 6), ...lengthsAround(LONG_BLOCK_BYTES, 3)];
    const pool = randomBytes((1 << 20) + 4096 + 16);
    const wrong: string[] = [];
    for (const length of lengths) {
      for (const offset of [0, 1, 3, 8]) {
        const data = pool.subarray(offset, offset + length);
        const seed = (length * 2654435761) >>> 0;
        for (const s of [0, seed]) {
          const native = binding.crc32c(data, s);
          const table = crc32cTable(data, s);
          if (native !== table) wrong.push(`length ${length} offset ${offset} seed ${s}: ${native} != ${table}`);
        }
      }
    }
    expect(wrong).toEqual([]);
  });

  test('a checksum continued piece by piece equals the checksum of the whole', () => {
    const data = randomBytes(3 * LONG_BLOCK_BYTES + 5 * SHORT_BLOCK_BYTES + 77);
    let crc = 0;
    for (let at = 0; at < data.length; at += 5000) crc = binding.crc32c(data.subarray(at, at + 5000), crc);
    expect(crc).toBe(binding.crc32c(data));
  });

  test('one flipped bit anywhere in a long buffer changes the checksum', () => {
    const data = randomBytes(LONG_BLOCK_BYTES * 2 + 100);
    const whole = binding.crc32c(data);
    for (const at of [0, 8191, 8192, 16384, LONG_BLOCK_BYTES - 1, LONG_BLOCK_BYTES + 300, data.length - 1]) {
      data[at] ^= 0x10;
      expect({ at, changed: binding.crc32c(data) !== whole }).toEqual({ at, changed: true });
      data[at] ^= 0x10;
    }
  });
});
