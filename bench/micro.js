'use strict';
/**
 * Micro benchmarks (benny): crc32c through the native addon against a plain
 * JavaScript table (the baseline), and encode/decode of the 48-byte frame
 * header with its crc32c. Checks the implementations agree before timing.
 *
 * Alone: node bench/micro.js [--quick]   (needs build/Release/nraid.node)
 */
const crypto = require('node:crypto');
const path = require('node:path');
const b = require('benny');
const { crc32cTable } = require('./crc32c-table');
const { FRAME_HEADER_BYTES, FrameHeaderCodec, FrameType } = require('./frame-codec');

const ADDON_PATH = path.join(__dirname, '..', 'build', 'Release', 'nraid.node');

/** benchmark.js options per case: maxTime caps each case (seconds). */
const CASE_OPTIONS_FULL = { maxTime: 2, minSamples: 10 };
const CASE_OPTIONS_QUICK = { maxTime: 0.3, minSamples: 5 };

/** Results land here so that no benchmarked call is dead code. */
let sink = 0;

function loadAddon() {
  try {
    return require(ADDON_PATH);
  } catch (error) {
    throw new Error(`cannot load ${ADDON_PATH} (${error.message}); build it first (npm run build)`);
  }
}

function selfCheck(addon) {
  const check = Buffer.from('123456789');
  const expected = 0xe3069283;
  if (addon.crc32c(check) !== expected || crc32cTable(check) !== expected) {
    throw new Error(`crc32c("123456789"): expected 0xe3069283, native gives 0x${addon.crc32c(check).toString(16)}, table 0x${crc32cTable(check).toString(16)}`);
  }
  const random = crypto.randomBytes(65_537);
  if (addon.crc32c(random) !== crc32cTable(random)) throw new Error('native and table crc32c disagree on random data');

  const codec = new FrameHeaderCodec(addon.crc32c);
  const header = { type: FrameType.WRITE, flags: 3, seq: 2 ** 40 + 7, epoch: 2 ** 33 + 1, offset: 2 ** 52 - 4096, length: 4096, payloadCrc: 0xdeadbeef };
  const bytes = codec.encode(header);
  if (bytes.readBigUInt64LE(8) !== BigInt(header.seq) || bytes.readBigUInt64LE(24) !== BigInt(header.offset)) {
    throw new Error('frame codec: u64 fields do not match a BigInt reading');
  }
  const decoded = codec.decode({});
  for (const key of Object.keys(header)) {
    if (decoded[key] !== header[key]) throw new Error(`frame codec round trip: ${key} ${header[key]} became ${decoded[key]}`);
  }
  bytes[20] ^= 1;
  let refused = false;
  try {
    codec.decode({});
  } catch {
    refused = true;
  }
  if (!refused) throw new Error('frame codec accepted a header with a flipped bit');
}

/** Runs one benny suite; returns its cases as plain numbers. */
async function suite(name, cases, caseOptions, bytesPerOp) {
  const summary = await b.suite(
    name,
    ...cases.map(([caseName, fn]) => b.add(caseName, fn, caseOptions)),
    b.cycle((result) => {
      const rate = bytesPerOp ? `  ${formatBytesPerSecond(result.ops * bytesPerOp)}` : '';
      console.log(`  ${result.name.padEnd(34)} ${formatOps(result.ops).padStart(12)} ops/s  ±${result.margin.toFixed(2)}%${rate}`);
    }),
  );
  return {
    name,
    bytesPerOp: bytesPerOp || null,
    cases: summary.results.map((r) => ({
      name: r.name,
      opsPerSecond: r.ops,
      marginPct: r.margin,
      samples: r.samples,
      bytesPerSecond: bytesPerOp ? r.ops * bytesPerOp : null,
    })),
  };
}

function formatOps(ops) {
  return Math.round(ops).toLocaleString('en-US');
}

function formatBytesPerSecond(bytesPerSecond) {
  return bytesPerSecond >= 1e9 ? `${(bytesPerSecond / 1e9).toFixed(2)} GB/s` : `${(bytesPerSecond / 1e6).toFixed(0)} MB/s`;
}

async function runMicro({ quick = false } = {}) {
  const addon = loadAddon();
  selfCheck(addon);
  const caseOptions = quick ? CASE_OPTIONS_QUICK : CASE_OPTIONS_FULL;
  console.log(`crc32c native: ${addon.crc32cHardware ? 'SSE4.2 instruction' : 'table (no SSE4.2)'}`);

  const suites = [];
  for (const sizeBytes of [4096, 1024 * 1024]) {
    const data = crypto.randomBytes(sizeBytes);
    const label = sizeBytes === 4096 ? '4 KiB' : '1 MiB';
    suites.push(
      await suite(
        `crc32c ${label}`,
        [
          ['native crc32c (addon)', () => { sink ^= addon.crc32c(data); }],
          ['js table crc32c (baseline)', () => { sink ^= crc32cTable(data); }],
        ],
        caseOptions,
        sizeBytes,
      ),
    );
  }

  const codec = new FrameHeaderCodec(addon.crc32c);
  const header = { type: FrameType.WRITE, flags: 0, seq: 1, epoch: 7, offset: 0, length: 4096, payloadCrc: 0x12345678 };
  const decoded = {};
  const received = Buffer.alloc(FRAME_HEADER_BYTES);
  codec.encode(header).copy(received);
  const receiver = new FrameHeaderCodec(addon.crc32c);
  // For comparison: on 44 bytes the N-API call may cost more than the checksum.
  const codecJs = new FrameHeaderCodec(crc32cTable);
  suites.push(
    await suite(
      `frame header (${FRAME_HEADER_BYTES} B)`,
      [
        ['encode', () => {
          header.seq += 1;
          header.offset = (header.offset + 4096) % 2 ** 40;
          sink ^= codec.encode(header)[44];
        }],
        ['decode', () => {
          received.copy(receiver.bytes);
          sink ^= receiver.decode(decoded).seq;
        }],
        ['encode, js table crc32c (comparison)', () => {
          header.seq += 1;
          sink ^= codecJs.encode(header)[44];
        }],
      ],
      caseOptions,
      0,
    ),
  );

  for (const s of suites.slice(0, 2)) {
    const [native, table] = s.cases;
    console.log(`  ${s.name}: native is ${(native.opsPerSecond / table.opsPerSecond).toFixed(1)}x the js table`);
  }
  return { crc32cHardware: addon.crc32cHardware, caseOptions, suites, sink: sink & 1 };
}

module.exports = { runMicro };

if (require.main === module) {
  runMicro({ quick: process.argv.includes('--quick') }).catch((error) => {
    console.error(`error: ${error.message}`);
    process.exit(1);
  });
}
