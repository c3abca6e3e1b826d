'use strict';
/**
 * The rows of the end-to-end table. A stack builds one block device inside
 * its own directory (ctx.dir) over one fresh sparse file, registers every
 * undo step on the cleanup stack as it goes, and returns
 * `{ device, notes }`. The runner runs the workloads against `device` and
 * unwinds the stack afterwards, whatever happened.
 *
 * To add a row: write (or parametrize) a stack and list it in STACKS; add its
 * id to DEFAULT_ROWS to run it by default.
 */
const fs = require('node:fs');
const path = require('node:path');
const {
  attachLoop,
  cleanup,
  createSparseFile,
  isMounted,
  log,
  runCommand,
  startDaemon,
  stopChildSync,
  unmountSync,
  waitGoneSync,
  waitReady,
  warn,
} = require('./system');
const { nraidStack } = require('./nraid-stack');

/** (a) The physical limit: a loop device with direct I/O over the sparse file. */
const rawStack = {
  id: 'raw',
  title: 'raw loop (dio)',
  description: 'losetup --direct-io=on over the sparse file',
  async setup(ctx) {
    const file = createSparseFile(path.join(ctx.dir, 'backing.img'), ctx.sizeBytes);
    const loop = await attachLoop(file, { directIo: true });
    return { device: loop.device, notes: { loopDevice: loop.device, loopDirectIo: loop.directIo } };
  },
};

/** nbdkit serves parallel requests with this many threads per connection. */
const NBDKIT_THREADS = 32;
/** nbdfuse multi-conn: one operation thread per connection (FUSE adds its own ~10 workers). */
const NBDFUSE_CONNECTIONS = 8;

/**
 * (b) A generic user-space block stack: nbdkit's file plugin on the sparse
 * file, nbdfuse turning the export into MOUNT/nbd, a direct-I/O loop device
 * on that file. `cache: 'none'` makes nbdkit write behind and drop its
 * pages (sync_file_range + fadvise), so the row is bound by the disk like
 * the others; `cache: 'default'` lets writes land in nbdkit's page cache.
 */
function nbdStack({ id, title, cache }) {
  return {
    id,
    title,
    description: `nbdkit file plugin (cache=${cache}, ${NBDKIT_THREADS} threads) -> nbdfuse (-C ${NBDFUSE_CONNECTIONS}) -> loop dio`,
    async setup(ctx) {
      const file = createSparseFile(path.join(ctx.dir, 'backing.img'), ctx.sizeBytes);
      const socket = path.join(ctx.dir, 'nbdkit.sock');
      const mountDir = path.join(ctx.dir, 'mnt');
      const volume = path.join(mountDir, 'nbd');
      fs.mkdirSync(mountDir);

      const nbdkitPidFile = path.join(ctx.dir, 'nbdkit.pid');
      const nbdkit = startDaemon(
        'nbdkit',
        'nbdkit',
        ['--foreground', '--exit-with-parent', '--unix', socket, '--pidfile', nbdkitPidFile, '--threads', String(NBDKIT_THREADS),
          'file', `file=${file}`, `cache=${cache}`],
        path.join(ctx.dir, 'nbdkit.log'),
      );
      cleanup.defer(`stop nbdkit (pid ${nbdkit.pid})`, () => stopChildSync(nbdkit.child, 'nbdkit'));
      await waitReady(nbdkit, 'serving on its socket', () => fs.existsSync(nbdkitPidFile) && fs.existsSync(socket));

      // nbdfuse must not be killed while mounted: unmounting makes it exit.
      const nbdfusePidFile = path.join(ctx.dir, 'nbdfuse.pid');
      const nbdfuse = startDaemon(
        'nbdfuse',
        'nbdfuse',
        ['--connections', String(NBDFUSE_CONNECTIONS), '--pidfile', nbdfusePidFile, mountDir, '--unix', socket],
        path.join(ctx.dir, 'nbdfuse.log'),
      );
      cleanup.defer(`unmount ${mountDir} and stop nbdfuse (pid ${nbdfuse.pid})`, () => {
        if (isMounted(mountDir)) unmountSync(mountDir);
        if (!waitGoneSync(nbdfuse.pid, 5000)) {
          warn(`nbdfuse (pid ${nbdfuse.pid}) still running after unmount`);
          stopChildSync(nbdfuse.child, 'nbdfuse');
        }
      });
      await waitReady(nbdfuse, `mounting ${volume}`, () => {
        if (!fs.existsSync(nbdfusePidFile) || !isMounted(mountDir)) return false;
        try {
          return fs.statSync(volume).size === ctx.sizeBytes;
        } catch {
          return false;
        }
      });
      log(`nbdfuse serves ${volume}`);

      const loop = await attachLoop(volume, { directIo: true });
      return {
        device: loop.device,
        notes: { loopDevice: loop.device, loopDirectIo: loop.directIo, nbdkitCache: cache, nbdkitThreads: NBDKIT_THREADS, nbdfuseConnections: NBDFUSE_CONNECTIONS },
      };
    },
  };
}

/** The floor row serves with as many threads as nraid's frontend does by default (src/limits.ts). */
const FLOOR_THREADS = 48;
const FLOOR_SOURCE = path.join(__dirname, 'fuse-floor.c');

/**
 * (c) The FUSE + loop floor: fuse-floor.c, a single-file /dev/fuse server that
 * does nothing per write but pwrite to its disk (a direct-I/O loop device over
 * the sparse file, as nraid's is) and reply; a 4 KiB direct-I/O loop device on
 * top, as nraid's. What remains between this row and `raw` is the cost of the
 * frontend itself; what remains between `nraid` and this row is ours.
 */
const floorStack = {
  id: 'floor',
  title: 'FUSE+loop floor',
  description: `bench/e2e/fuse-floor.c (${FLOOR_THREADS} threads, pwrite to loop dio) -> loop dio, 4 KiB sectors`,
  async setup(ctx) {
    const binary = path.join(ctx.dir, 'fuse-floor');
    await runCommand('cc', ['-O2', '-Wall', '-Werror', '-o', binary, FLOOR_SOURCE, '-lpthread'], { check: true });
    const file = createSparseFile(path.join(ctx.dir, 'backing.img'), ctx.sizeBytes);
    const disk = await attachLoop(file, { directIo: true });
    const volume = path.join(ctx.dir, 'volume');
    fs.writeFileSync(volume, '');
    const server = startDaemon('fuse-floor', binary, [volume, disk.device, String(FLOOR_THREADS)], path.join(ctx.dir, 'fuse-floor.log'));
    cleanup.defer(`unmount ${volume} and stop fuse-floor (pid ${server.pid})`, () => {
      if (isMounted(volume)) unmountSync(volume);
      if (!waitGoneSync(server.pid, 5000)) {
        warn(`fuse-floor (pid ${server.pid}) still running after unmount`);
        stopChildSync(server.child, 'fuse-floor');
      }
    });
    await waitReady(server, `mounting ${volume}`, () => isMounted(volume));
    const loop = await attachLoop(volume, { directIo: true, sectorSize: 4096 });
    return { device: loop.device, notes: { loopDevice: loop.device, loopDirectIo: loop.directIo, diskLoopDevice: disk.device, threads: FLOOR_THREADS } };
  },
};

const STACKS = [
  rawStack,
  nbdStack({ id: 'nbd', title: 'nbdkit+nbdfuse', cache: 'none' }),
  nbdStack({ id: 'nbd-cached', title: 'nbdkit(cache)+nbdfuse', cache: 'default' }),
  floorStack,
  nraidStack({ id: 'nraid', title: 'nraid 1 node', nodes: ['alpha'] }),
  // Replication rows: both daemons up, primary on alpha, resync done before fio.
  nraidStack({ id: 'nraid-A', title: 'nraid 2 nodes prot A', nodes: ['alpha', 'beta'], protocol: 'A' }),
  nraidStack({ id: 'nraid-B', title: 'nraid 2 nodes prot B', nodes: ['alpha', 'beta'], protocol: 'B' }),
  // TLS is on in these rows (the default); nraid-C-notls is its baseline (issue 11 targets:
  // nraid-C / nraid-C-notls >= 0.85 for 4k QD32 IOPS and 1M MB/s, p50 QD1 <= 1.15).
  nraidStack({ id: 'nraid-C', title: 'nraid 2 nodes prot C', nodes: ['alpha', 'beta'], protocol: 'C', compareTo: 'nraid-C-notls' }),
  // Issue 13: a holder adds nothing to the write path (it is idle per request): these rows against the same
  // stacks without one, in the same run.
  nraidStack({ id: 'nraid-held', title: 'nraid 1 node, holder', nodes: ['alpha'], held: true, compareTo: 'nraid' }),
  nraidStack({ id: 'nraid-C-held', title: 'nraid 2 nodes prot C, holder', nodes: ['alpha', 'beta'], protocol: 'C', held: true, compareTo: 'nraid-C' }),
  nraidStack({ id: 'nraid-C-notls', title: 'nraid 2 nodes prot C, no TLS', nodes: ['alpha', 'beta'], protocol: 'C', tls: false }),
  // Issue 11: replication while 1,000 hostile connections per fio job hit beta's port
  // (target: within 10 % of nraid-C, i.e. ratios >= 0.9, latency <= 1.1).
  nraidStack({ id: 'nraid-C-attacked', title: 'nraid 2 nodes prot C, under attack', nodes: ['alpha', 'beta'], protocol: 'C', attack: true, compareTo: 'nraid-C' }),
];

/** The row every ratio is taken against. */
const BASELINE_ROW = 'raw';
const DEFAULT_ROWS = ['raw', 'nbd', 'floor', 'nraid', 'nraid-held', 'nraid-A', 'nraid-B', 'nraid-C', 'nraid-C-held', 'nraid-C-notls', 'nraid-C-attacked'];

function stackById(id) {
  return STACKS.find((s) => s.id === id) || null;
}

module.exports = { BASELINE_ROW, DEFAULT_ROWS, STACKS, stackById };
