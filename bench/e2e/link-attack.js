#!/usr/bin/env node
'use strict';
/**
 * Connections a stranger on the network can make to a node's link port
 * (issue 11): garbage, oversized, silent or slow ones, a TLS handshake with a
 * key from a wrong secret, a data link with a made-up token, and connections
 * from an address that is not the peer's. Each runs until the node closes it
 * (or a cap); a bounded number run at once.
 *
 * Run as its own process, so that the attack's CPU is not the test's or the
 * bench's event loop:
 *
 *   node bench/e2e/link-attack.js --port 7789 [--port 7790] --connections 1000
 *        [--concurrency 50] [--rate N (connections started per second, default: no pacing)]
 *        [--resource r0] [--rounds 1 | --rounds 0 (until SIGTERM)] [--summary FILE]
 *
 * Prints one JSON line at the end (and writes it to FILE with --summary): connections made, per kind how many the
 * node closed and how many ran into the cap, and how long the slowest took.
 * Targets are loopback addresses only (the peer's, 127.0.0.1, and 127.0.0.2
 * for "not the peer").
 */
const crypto = require('node:crypto');
const fs = require('node:fs');
const net = require('node:net');
const tls = require('node:tls');

const CONTROL_PREAMBLE = Buffer.from('NRAIDCTL');
const DATA_PREAMBLE = Buffer.from('NRAIDDAT');
const DATA_TOKEN_BYTES = 32;
/** What this process does to a connection the node has not closed by then. */
const CONNECTION_CAP_MS = 6000;
const CONTROL_PSK_IDENTITY = 'nraid-control-link-v1'; // src/link/tls.ts
const PSK_CIPHER_SUITES = 'TLS_AES_128_GCM_SHA256:TLS_CHACHA20_POLY1305_SHA256';

/** Made once: the attacker's own CPU is not what is measured. */
const RANDOM = crypto.randomBytes(512 * 1024);
function randomPiece(bytes) {
  const start = crypto.randomInt(RANDOM.length - bytes + 1);
  return RANDOM.subarray(start, start + bytes);
}

const KINDS = ['garbage', 'oversized-control', 'oversized-data', 'silent', 'slow-preamble', 'wrong-secret', 'wrong-token', 'not-peer'];

function parseArgs(argv) {
  const options = { host: '127.0.0.1', ports: [], connections: 1000, concurrency: 50, resource: 'r0', rounds: 1, rate: 0 };
  for (let i = 0; i < argv.length; i++) {
    const value = () => {
      const v = argv[++i];
      if (v === undefined) throw new Error(`${argv[i - 1]} needs a value`);
      return v;
    };
    switch (argv[i]) {
      case '--host': options.host = value(); break;
      case '--port': options.ports.push(Number(value())); break;
      case '--connections': options.connections = Number(value()); break;
      case '--concurrency': options.concurrency = Number(value()); break;
      case '--resource': options.resource = value(); break;
      case '--rounds': options.rounds = Number(value()); break;
      case '--rate': options.rate = Number(value()); break;
      case '--summary': options.summary = value(); break;
      default: throw new Error(`unknown option "${argv[i]}"`);
    }
  }
  if (!/^127\./.test(options.host)) throw new Error(`--host: expected a loopback address (127.x.x.x), found ${options.host}`);
  if (options.ports.length === 0 || options.ports.some((p) => !Number.isInteger(p) || p < 1 || p > 65535)) {
    throw new Error('--port: expected one or more TCP ports (1..65535)');
  }
  for (const [name, v, min, max] of [['--connections', options.connections, 1, 100000], ['--concurrency', options.concurrency, 1, 500], ['--rounds', options.rounds, 0, 100000], ['--rate', options.rate, 0, 100000]]) {
    if (!Number.isInteger(v) || v < min || v > max) throw new Error(`${name}: expected a whole number ${min}..${max}, found ${v}`);
  }
  return options;
}

/** The control link key a node would derive from `secret` (src/link/tls.ts derivePsk); here from a wrong one. */
function wrongControlPsk(resource) {
  const secret = crypto.randomBytes(24).toString('base64');
  return Buffer.from(crypto.hkdfSync('sha256', Buffer.from(secret), Buffer.from(resource), Buffer.from('nraid tls 1.3 psk, control link, v1'), 32));
}

/**
 * One connection of `kind`; resolves { kind, closedByPeer, ms } once the node
 * closed it (an end, a reset or a failed handshake) or the cap ran out.
 */
function attackOnce(kind, host, port, resource, sockets) {
  return new Promise((resolve) => {
    const startedMs = Date.now();
    let finished = false;
    let timers = [];
    const socket = net.connect({ host, port, localAddress: kind === 'not-peer' ? '127.0.0.2' : undefined });
    sockets.add(socket);
    const finish = (closedByPeer) => {
      if (finished) return;
      finished = true;
      for (const t of timers) clearTimeout(t);
      sockets.delete(socket);
      socket.destroy();
      resolve({ kind, closedByPeer, ms: Date.now() - startedMs });
    };
    const cap = setTimeout(() => finish(false), CONNECTION_CAP_MS);
    timers.push(cap);
    socket.on('error', () => finish(true));
    socket.on('close', () => finish(true));
    socket.on('data', () => undefined); // whatever the node says is read and dropped
    socket.on('connect', () => {
      switch (kind) {
        case 'garbage':
          socket.write(randomPiece(64 + crypto.randomInt(4096)));
          break;
        case 'oversized-control': {
          // A preamble, then a length prefix of 16 MiB and the start of a body (what took the event loop down).
          const prefix = Buffer.alloc(4);
          prefix.writeUInt32LE(16 * 1024 * 1024 - 1);
          socket.write(Buffer.concat([CONTROL_PREAMBLE, prefix, randomPiece(256 * 1024)]));
          break;
        }
        case 'oversized-data':
          socket.write(Buffer.concat([DATA_PREAMBLE, crypto.randomBytes(DATA_TOKEN_BYTES), randomPiece(256 * 1024)]));
          break;
        case 'silent':
        case 'not-peer':
          break; // nothing: the node has to close it
        case 'slow-preamble':
          socket.write(CONTROL_PREAMBLE.subarray(0, 3));
          timers.push(setTimeout(() => !finished && socket.write(CONTROL_PREAMBLE.subarray(3, 5)), 1000));
          break;
        case 'wrong-token':
          socket.write(Buffer.concat([DATA_PREAMBLE, crypto.randomBytes(DATA_TOKEN_BYTES)]));
          break;
        case 'wrong-secret': {
          socket.write(CONTROL_PREAMBLE);
          const psk = wrongControlPsk(resource);
          const secure = tls.connect({
            socket,
            minVersion: 'TLSv1.3',
            maxVersion: 'TLSv1.3',
            ciphers: PSK_CIPHER_SUITES,
            pskCallback: () => ({ psk, identity: CONTROL_PSK_IDENTITY }),
            checkServerIdentity: () => undefined,
          });
          secure.on('error', () => finish(true));
          secure.on('close', () => finish(true));
          break;
        }
        default:
          throw new Error(`unknown kind ${kind}`);
      }
    });
  });
}

async function attackRound(options, sockets, summary, stopped, pace) {
  let next = 0;
  const worker = async () => {
    while (!stopped() && next < options.connections) {
      const index = next++;
      if (options.rate > 0) {
        // Paced over the whole run: connection n starts n / rate seconds after the first.
        const dueMs = pace.startedMs + (pace.started++ * 1000) / options.rate;
        if (dueMs > Date.now()) await new Promise((resolve) => setTimeout(resolve, dueMs - Date.now()));
        if (stopped()) break;
      }
      const kind = KINDS[index % KINDS.length];
      const port = options.ports[index % options.ports.length];
      const outcome = await attackOnce(kind, options.host, port, options.resource, sockets);
      const entry = (summary.byKind[kind] ??= { count: 0, closedByPeer: 0, capped: 0, maxMs: 0 });
      entry.count += 1;
      entry[outcome.closedByPeer ? 'closedByPeer' : 'capped'] += 1;
      entry.maxMs = Math.max(entry.maxMs, outcome.ms);
      summary.connections += 1;
    }
  };
  await Promise.all([...Array(Math.min(options.concurrency, options.connections)).keys()].map(worker));
}

async function main() {
  const options = parseArgs(process.argv.slice(2));
  const startedMs = Date.now();
  const summary = { connections: 0, rounds: 0, byKind: {}, elapsedMs: 0 };
  const sockets = new Set();
  const pace = { startedMs: startedMs, started: 0 };
  let stop = false;
  const onSignal = () => {
    stop = true;
    for (const socket of sockets) socket.destroy();
  };
  process.on('SIGTERM', onSignal);
  process.on('SIGINT', onSignal);
  while (!stop && (options.rounds === 0 || summary.rounds < options.rounds)) {
    await attackRound(options, sockets, summary, () => stop, pace);
    summary.rounds += 1;
  }
  summary.elapsedMs = Date.now() - startedMs;
  process.stdout.write(`${JSON.stringify(summary)}\n`);
  if (options.summary) fs.writeFileSync(options.summary, `${JSON.stringify(summary)}\n`);
}

main().catch((error) => {
  process.stderr.write(`link-attack: ${error.message}\n`);
  process.exitCode = 1;
});
