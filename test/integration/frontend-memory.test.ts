/**
 * Issue 12's memory target: the FUSE frontend's request buffers and stacks
 * are resident (and locked) only where its threads touched them, and a
 * thread idle for kFrontendIdleTrimMs gives its pages back. Regression: every
 * frontend populated and mlocked all of them at start, 48 x (1 MiB + 8 KiB +
 * 256 KiB) = 62 MiB, whether or not a thread ever served (rss-1t: 339 MiB).
 *
 * The arena is the daemon's only mlocked memory, so the Locked line of
 * /proc/PID/smaps_rollup (resident pages in locked mappings) is exactly its
 * resident part. (VmLck counts the whole locked range, resident or not.)
 */
import * as crypto from 'crypto';
import * as fs from 'fs';
import { makeResource, TestResource } from '../harness/cluster';
import { readDirect, writeDirect } from '../harness/direct-io';
import { describeIntegration } from '../harness/prereq';

const KiB = 1024;
const MiB = 1024 * KiB;
const THREADS = 8;
/** One thread's part of the arena: its buffer (1 MiB + 8 KiB) and its stack (256 KiB). */
const SLOT_BYTES = MiB + 8 * KiB + 256 * KiB;
/** native/limits.h kFrontendIdleTrimMs, plus a check period and room for a loaded machine. */
const TRIM_WAIT_MS = 10_000 + 1_000 + 14_000;

function lockedBytes(pid: number): number {
  const m = /^Locked:\s+(\d+) kB/m.exec(fs.readFileSync(`/proc/${pid}/smaps_rollup`, 'utf8'));
  if (m === null) throw new Error(`no Locked line in /proc/${pid}/smaps_rollup`);
  return Number(m[1]) * KiB;
}

async function until(what: string, predicate: () => boolean, timeoutMs: number): Promise<void> {
  const deadline = Date.now() + timeoutMs;
  while (!predicate()) {
    if (Date.now() > deadline) throw new Error(`${what}: not within ${timeoutMs} ms`);
    await new Promise((r) => setTimeout(r, 200));
  }
}

describeIntegration('frontend memory: resident as threads use it, given back when they idle', ['root', 'fuse', 'loop', 'dd', 'nraid-cli'], () => {
  let r: TestResource;
  let pid: number;

  beforeAll(async () => {
    r = await makeResource({ nodes: 1, sizeBytes: 96 * MiB, extra: { 'frontend-threads': THREADS } });
    await r.runOk('alpha', 'create-md');
    await r.runOk('alpha', 'up');
    await r.runOk('alpha', 'primary', ['--force']);
    pid = (await r.status('alpha')).pid as number;
    expect(pid).toBeGreaterThan(0);
  }, 60_000);

  afterAll(async () => {
    await r?.cleanup();
  }, 60_000);

  test(`${THREADS} threads: little locked at start, every buffer after 1 MiB writes, given back after idling, and still serving`, async () => {
    // At start only what the kernel's probes of the new device touched (a few small reads), not
    // THREADS whole slots (main: all of them, locked at start).
    const atStart = lockedBytes(pid);
    expect(atStart).toBeLessThan((THREADS * SLOT_BYTES) / 2);

    // 1 MiB writes, one at a time: the kernel hands each to the thread that waited longest, so
    // every thread serves some and its buffer becomes resident. (Within a second of the first
    // large request the buffers turn to huge pages, and each thread drops its small-page buffer
    // once, so not every buffer need be resident at the end.) The canary: this must show.
    const data = crypto.randomBytes(32 * MiB);
    await writeDirect(r.nodes.alpha.device, 0, data);
    const busy = lockedBytes(pid);
    expect(busy).toBeGreaterThan(atStart + 2 * MiB);

    // Idle: each thread gives back its buffer and the unused part of its stack.
    await until('the idle threads gave their pages back', () => lockedBytes(pid) < THREADS * 64 * KiB, TRIM_WAIT_MS);
    const trimmed = lockedBytes(pid);

    // Trimmed buffers serve again, correctly: what was written reads back, and new writes land.
    expect((await readDirect(r.nodes.alpha.device, 0, data.length)).equals(data)).toBe(true);
    const again = crypto.randomBytes(4 * MiB);
    await writeDirect(r.nodes.alpha.device, 8 * MiB, again);
    expect((await readDirect(r.nodes.alpha.device, 8 * MiB, again.length)).equals(again)).toBe(true);
    console.log(`frontend locked memory, ${THREADS} threads: ${(atStart / KiB).toFixed(0)} KiB at start, ${(busy / KiB).toFixed(0)} KiB after 32 MiB of 1 MiB writes, ${(trimmed / KiB).toFixed(0)} KiB after idling`);
  }, 90_000);
});
