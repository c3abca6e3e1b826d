#!/usr/bin/env node
/**
 * The slow-link relay process (link-relay.ts starts it, inside a network
 * namespace with `ip netns exec`): a TCP relay from --listen to --target that
 * delays, throttles (bytes/s, per connection and direction), stalls, cuts and
 * flips bits on command. Plain JavaScript run straight from the source tree,
 * so that jest (ts-jest) and the compiled torture runner start the same file.
 *
 *   node link-relay-process.js --listen 127.0.0.1:7790 --target 10.213.5.2:7789
 *
 * Control: one JSON object per line on stdin, one answer per line on stdout:
 *   {"id":1,"cmd":"delay","ms":50}
 *   {"id":2,"cmd":"throttle","bytesPerSec":1048576}      (0 = off)
 *   {"id":3,"cmd":"stall","on":true}
 *   {"id":4,"cmd":"flip","kind":"data","direction":"toTarget","afterBytes":4096,"count":1,"bit":0}
 *   {"id":5,"cmd":"cut"}
 *   {"id":6,"cmd":"stats"}
 * answered {"id":N,"ok":true,...} or {"id":N,"ok":false,"error":"..."}. The
 * first line it prints is {"ready":true,"port":P}. stdin closing ends it.
 *
 * A connection's kind is read from its first 8 bytes (nraid's preambles
 * "NRAIDCTL" and "NRAIDDAT"), so flips can aim at the data link only: a
 * flipped bit on the control link is another test (its framing has no
 * checksum of its own; TCP's is all it has, as on a real network).
 */
'use strict';
const net = require('net');
const readline = require('readline');

const MAX_BUFFERED_BYTES = 16 * 1024 * 1024;
const PREAMBLE_BYTES = 8;

function parseHostPort(text, what) {
  const i = text.lastIndexOf(':');
  const port = Number(text.slice(i + 1));
  if (i <= 0 || !Number.isInteger(port) || port <= 0 || port > 65535) throw new Error(`${what} must be host:port, got ${text}`);
  return { host: text.slice(0, i), port };
}

function argValue(name) {
  const i = process.argv.indexOf(name);
  if (i < 0 || i + 1 >= process.argv.length) throw new Error(`missing ${name} host:port`);
  return process.argv[i + 1];
}

const listen = parseHostPort(argValue('--listen'), '--listen');
const target = parseHostPort(argValue('--target'), '--target');

const settings = { delayMs: 0, bytesPerSec: 0, stalled: false };
/** Armed flips per direction: { kind, remaining, thresholdOffset, bit } */
const flipState = { toTarget: undefined, toClient: undefined };
const counters = { accepted: 0, active: 0, cuts: 0, bytesToTarget: 0, bytesToClient: 0, fromClient: { control: 0, data: 0, unknown: 0 }, fromTarget: { control: 0, data: 0, unknown: 0 } };
const flips = [];
const pairs = new Set();
let nextId = 1;

function kindOf(preamble) {
  if (preamble === 'NRAIDCTL') return 'control';
  if (preamble === 'NRAIDDAT') return 'data';
  return 'unknown';
}

function makePipe(pair, direction, source, sink) {
  return { pair, direction, source, sink, queue: [], queuedBytes: 0, timer: undefined, waitingDrain: false, paused: false, sourceEnded: false, endSent: false, freeAtMs: 0, receivedBytes: 0 };
}

function destroyPair(pair) {
  if (pair.closed) return;
  pair.closed = true;
  pairs.delete(pair);
  counters.active = pairs.size;
  for (const pipe of [pair.toTarget, pair.toClient]) {
    if (pipe.timer !== undefined) clearTimeout(pipe.timer);
    pipe.queue.length = 0;
  }
  for (const s of [pair.client, pair.target]) {
    try {
      s.resetAndDestroy();
    } catch {
      s.destroy();
    }
  }
}

function onData(pipe, chunk) {
  const pair = pipe.pair;
  if (pair.closed) return;
  if (pipe.direction === 'toTarget' && pair.preamble.length < PREAMBLE_BYTES) {
    pair.preamble += chunk.subarray(0, PREAMBLE_BYTES - pair.preamble.length).toString('latin1');
    if (pair.preamble.length >= PREAMBLE_BYTES) pair.kind = kindOf(pair.preamble);
  }
  const byKind = pipe.direction === 'toTarget' ? counters.fromClient : counters.fromTarget;
  const streamOffset = byKind[pair.kind];
  const flip = flipState[pipe.direction];
  // Never the preamble: a flip there is a refused connection, not a corrupted stream.
  if (flip && flip.remaining > 0 && (flip.kind === 'any' || flip.kind === pair.kind) && streamOffset + chunk.length > flip.thresholdOffset && pipe.receivedBytes + chunk.length > PREAMBLE_BYTES) {
    const i = Math.max(flip.thresholdOffset - streamOffset, 0, PREAMBLE_BYTES - pipe.receivedBytes);
    if (i < chunk.length) {
      const before = chunk[i];
      chunk[i] = before ^ (1 << flip.bit);
      flips.push({ direction: pipe.direction, kind: pair.kind, connectionId: pair.id, connectionOffset: pipe.receivedBytes + i, bit: flip.bit, before, after: chunk[i] });
      flip.remaining -= 1;
      flip.thresholdOffset = streamOffset + chunk.length;
    }
  }
  byKind[pair.kind] += chunk.length;
  pipe.receivedBytes += chunk.length;
  const now = Date.now();
  let readyAtMs = now + settings.delayMs;
  if (settings.bytesPerSec > 0) {
    readyAtMs = Math.max(readyAtMs, pipe.freeAtMs);
    pipe.freeAtMs = readyAtMs + (chunk.length * 1000) / settings.bytesPerSec;
  }
  pipe.queue.push({ data: chunk, readyAtMs });
  pipe.queuedBytes += chunk.length;
  if (pipe.queuedBytes > MAX_BUFFERED_BYTES && !pipe.paused) {
    pipe.paused = true;
    pipe.source.pause();
  }
  pump(pipe);
}

function pump(pipe) {
  if (pipe.pair.closed || settings.stalled || pipe.waitingDrain || pipe.timer !== undefined) return;
  if (pipe.sink.connecting) return;
  while (pipe.queue.length > 0) {
    const head = pipe.queue[0];
    const waitMs = head.readyAtMs - Date.now();
    if (waitMs > 0) {
      pipe.timer = setTimeout(() => {
        pipe.timer = undefined;
        pump(pipe);
      }, Math.ceil(waitMs));
      return;
    }
    pipe.queue.shift();
    pipe.queuedBytes -= head.data.length;
    if (pipe.direction === 'toTarget') counters.bytesToTarget += head.data.length;
    else counters.bytesToClient += head.data.length;
    const more = pipe.sink.write(head.data);
    if (pipe.paused && pipe.queuedBytes <= MAX_BUFFERED_BYTES / 2) {
      pipe.paused = false;
      pipe.source.resume();
    }
    if (!more) {
      pipe.waitingDrain = true;
      pipe.sink.once('drain', () => {
        pipe.waitingDrain = false;
        pump(pipe);
      });
      return;
    }
  }
  if (pipe.sourceEnded && !pipe.endSent) {
    pipe.endSent = true;
    pipe.sink.end();
  }
}

const server = net.createServer({ allowHalfOpen: true }, (client) => {
  client.on('error', () => undefined);
  counters.accepted += 1;
  const t = net.connect({ host: target.host, port: target.port, allowHalfOpen: true });
  t.on('error', () => undefined);
  client.setNoDelay(true);
  t.setNoDelay(true);
  const pair = { id: nextId++, client, target: t, closed: false, preamble: '', kind: 'unknown' };
  pair.toTarget = makePipe(pair, 'toTarget', client, t);
  pair.toClient = makePipe(pair, 'toClient', t, client);
  pairs.add(pair);
  counters.active = pairs.size;
  t.once('connect', () => pump(pair.toTarget));
  for (const pipe of [pair.toTarget, pair.toClient]) {
    pipe.source.on('data', (chunk) => onData(pipe, chunk));
    pipe.source.on('end', () => {
      pipe.sourceEnded = true;
      pump(pipe);
    });
  }
  let cleanCloses = 0;
  const onClose = (hadError) => {
    if (hadError) return destroyPair(pair);
    cleanCloses += 1;
    if (cleanCloses === 2) destroyPair(pair);
  };
  client.on('close', onClose);
  t.on('close', onClose);
});

function answer(obj) {
  process.stdout.write(JSON.stringify(obj) + '\n');
}

function handle(msg) {
  switch (msg.cmd) {
    case 'delay':
      if (!Number.isFinite(msg.ms) || msg.ms < 0) throw new Error(`bad delay ${msg.ms}`);
      settings.delayMs = msg.ms;
      return {};
    case 'throttle':
      if (!Number.isFinite(msg.bytesPerSec) || msg.bytesPerSec < 0) throw new Error(`bad bytesPerSec ${msg.bytesPerSec}`);
      settings.bytesPerSec = msg.bytesPerSec;
      for (const p of pairs) for (const pipe of [p.toTarget, p.toClient]) pipe.freeAtMs = 0;
      return {};
    case 'stall':
      settings.stalled = msg.on === true;
      if (!settings.stalled) for (const p of pairs) for (const pipe of [p.toTarget, p.toClient]) pump(pipe);
      return {};
    case 'flip': {
      const direction = msg.direction;
      if (direction !== 'toTarget' && direction !== 'toClient') throw new Error(`bad direction ${direction}`);
      const kind = msg.kind ?? 'data';
      if (!['data', 'control', 'any'].includes(kind)) throw new Error(`bad kind ${kind}`);
      const bit = msg.bit ?? 0;
      if (!Number.isInteger(bit) || bit < 0 || bit > 7) throw new Error(`bad bit ${bit}`);
      const byKind = direction === 'toTarget' ? counters.fromClient : counters.fromTarget;
      const position = kind === 'any' ? byKind.control + byKind.data + byKind.unknown : byKind[kind];
      flipState[direction] = { kind, remaining: msg.count ?? 1, thresholdOffset: position + (msg.afterBytes ?? 0), bit };
      return {};
    }
    case 'cut': {
      counters.cuts += 1;
      const n = pairs.size;
      for (const p of [...pairs]) destroyPair(p);
      return { connectionsCut: n };
    }
    case 'stats':
      return { settings, counters, flips: flips.length, flipsPending: { toTarget: flipState.toTarget?.remaining ?? 0, toClient: flipState.toClient?.remaining ?? 0 } };
    default:
      throw new Error(`unknown command ${JSON.stringify(msg.cmd)}`);
  }
}

server.on('error', (e) => {
  process.stderr.write(`relay: ${e.message}\n`);
  process.exit(2);
});
server.listen(listen.port, listen.host, () => {
  answer({ ready: true, port: server.address().port });
  const rl = readline.createInterface({ input: process.stdin });
  rl.on('line', (line) => {
    let msg;
    try {
      msg = JSON.parse(line);
    } catch (e) {
      return answer({ ok: false, error: `not JSON: ${line.slice(0, 100)}` });
    }
    try {
      answer({ id: msg.id, ok: true, ...handle(msg) });
    } catch (e) {
      answer({ id: msg.id, ok: false, error: e.message });
    }
  });
  rl.on('close', () => {
    for (const p of [...pairs]) destroyPair(p);
    server.close();
    process.exit(0);
  });
});
