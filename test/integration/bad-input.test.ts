/**
 * Bad input is refused before anything changes (foundation issue, acceptance
 * list part 3). Every case checks three things: stderr holds one line
 * `error: <message> (<code>)` whose message names what is wrong, the exit
 * code is 1, and nothing changed: the backing device's bytes, the metadata,
 * the daemon (none started, or the running one untouched).
 */
import * as crypto from 'crypto';
import * as fs from 'fs';
import * as os from 'os';
import * as path from 'path';
import { stringify as tomlStringify } from 'smol-toml';
import { loopDevices, mountPoints, registerCleanup } from '../harness/cleanup';
import { makeResource, NRAID_BIN, NraidResult, processesMentioning, TestResource } from '../harness/cluster';
import { BLOCK_BYTES, readDirect, sha256Range, sizeOf, writeDirect } from '../harness/direct-io';
import { execOk, execTool, toolEnv } from '../harness/exec';
import { describeIntegration, findExecutable, REPO_ROOT } from '../harness/prereq';
import { cliError, expectRefused, pathExists } from '../harness/helpers';

const MiB = 1024 * 1024;
const NOBODY = 65534;

interface DiskImage {
  head: Buffer;
  tail: Buffer;
  sha256: string;
}

/** First MiB, last MiB and a digest of the whole device, read with O_DIRECT. */
async function diskImage(device: string): Promise<DiskImage> {
  const size = await sizeOf(device);
  const edge = Math.min(MiB, size);
  return {
    head: await readDirect(device, 0, edge),
    tail: await readDirect(device, size - edge, edge),
    sha256: await sha256Range(device, 0, size),
  };
}

function expectSameImage(what: string, before: DiskImage, after: DiskImage): void {
  if (!after.head.equals(before.head)) throw new Error(`${what}: the first MiB of the device changed`);
  if (!after.tail.equals(before.tail)) throw new Error(`${what}: the last MiB of the device changed`);
  if (after.sha256 !== before.sha256) throw new Error(`${what}: the device's contents changed`);
}

/** What a started daemon would leave for node alpha; empty when nothing runs. */
function signsOfLife(r: TestResource): string[] {
  const signs: string[] = [];
  const runDir = r.nodes.alpha.runDir;
  const volume = path.join(runDir, 'volume');
  if (pathExists(path.join(runDir, 'admin.sock'))) signs.push('admin socket');
  if (mountPoints().includes(volume)) signs.push(`mount on ${volume}`);
  for (const l of loopDevices().filter((l) => l.backingFile === volume)) signs.push(`loop device ${l.device}`);
  if (pathExists(r.nodes.alpha.device)) signs.push(`device path ${r.nodes.alpha.device}`);
  for (const pid of processesMentioning(r.dir + '/')) signs.push(`process ${pid}`);
  return signs;
}

/** A copy of the resource's config with `change` applied, written next to it; returns its path. */
function writeConfig(r: TestResource, tag: string, change: (c: Record<string, unknown>) => void): string {
  const config = structuredClone(r.config);
  change(config);
  const file = path.join(r.dir, `${tag}.toml`);
  fs.writeFileSync(file, tomlStringify(config) + '\n', { mode: 0o600 });
  return file;
}

function alphaTable(config: Record<string, unknown>): Record<string, unknown> {
  return (config.nodes as Record<string, Record<string, unknown>>).alpha;
}

describeIntegration('bad input is refused and changes nothing', ['root', 'fuse', 'loop', 'dd', 'mkfs.ext4', 'nraid-cli'], () => {
  describe('bad config and node names', () => {
    let r: TestResource;
    let image: DiskImage;

    beforeAll(async () => {
      r = await makeResource({ nodes: 1, sizeBytes: 16 * MiB });
      await r.runOk('alpha', 'create-md');
      image = await diskImage(r.nodes.alpha.diskPath);
    }, 60_000);

    afterAll(async () => {
      await r?.cleanup();
    }, 60_000);

    const cases: Array<{ name: string; change: (c: Record<string, unknown>) => void; mentions: string[] }> = [
      { name: 'an unknown top-level key', change: (c) => (c['frobnicate-level'] = 3), mentions: ['"frobnicate-level"'] },
      { name: 'an unknown key in a node table', change: (c) => (alphaTable(c)['dsik'] = '/dev/null'), mentions: ['"nodes.alpha.dsik"'] },
      { name: 'a port out of range', change: (c) => (alphaTable(c).address = '127.0.0.1:70000'), mentions: ['nodes.alpha.address', '70000'] },
      { name: 'an address without a port', change: (c) => (alphaTable(c).address = '127.0.0.1'), mentions: ['nodes.alpha.address'] },
      { name: 'an IPv4 address that is not one', change: (c) => (alphaTable(c).address = '300.1.2.3:7789'), mentions: ['nodes.alpha.address', '300.1.2.3'] },
      { name: 'a bad protocol', change: (c) => (c.protocol = 'D'), mentions: ['"protocol"', '"D"'] },
    ];

    for (const c of cases) {
      test(`${c.name}: create-md, up and down refuse with NRAID_ERR_CONFIG`, async () => {
        const file = writeConfig(r, c.name.replace(/[^a-z0-9]+/gi, '-'), c.change);
        for (const command of ['create-md', 'up', 'down']) {
          const res = await r.nraid([command, r.name, '-c', file, '-n', 'alpha']);
          expectRefused(res, 'NRAID_ERR_CONFIG', [file, ...c.mentions]);
        }
        expect(signsOfLife(r)).toEqual([]);
        expect(pathExists(r.nodes.alpha.runDir)).toBe(false);
        expectSameImage(c.name, image, await diskImage(r.nodes.alpha.diskPath));
      });
    }

    test('a node that is not in the config (-n gamma) is refused, naming it and the configured nodes', async () => {
      for (const command of ['create-md', 'up', 'primary', 'down', 'status']) {
        const res = await r.nraid([command, r.name, '-c', r.configPath, '-n', 'gamma']);
        expectRefused(res, 'NRAID_ERR_CONFIG', ['"gamma"', '"alpha"', '"beta"']);
      }
      expect(signsOfLife(r)).toEqual([]);
      expect(pathExists(r.nodes.alpha.runDir)).toBe(false);
      expectSameImage('-n gamma', image, await diskImage(r.nodes.alpha.diskPath));
    });

    test('the good config still works (so the refusals above were about the changes)', async () => {
      await r.runOk('alpha', 'up');
      expect(await r.status('alpha')).toMatchObject({ role: 'Secondary', disk: 'Inconsistent' });
      // A bad node name against a running daemon leaves it alone too.
      expectRefused(await r.nraid(['down', r.name, '-c', r.configPath, '-n', 'gamma']), 'NRAID_ERR_CONFIG', ['"gamma"']);
      expect(await r.status('alpha')).toMatchObject({ role: 'Secondary' });
      await r.runOk('alpha', 'down');
    }, 60_000);
  });

  describe('create-md on a disk that holds data', () => {
    test('an ext4 filesystem: NRAID_ERR_DISK_HAS_DATA, first and last MiB unchanged', async () => {
      const r = await makeResource({ nodes: 1, sizeBytes: 32 * MiB });
      try {
        const disk = r.nodes.alpha.diskPath;
        await execOk('mkfs.ext4', ['-q', '-F', disk]);
        const before = await diskImage(disk);
        const message = expectRefused(await r.run('alpha', 'create-md'), 'NRAID_ERR_DISK_HAS_DATA', [disk, 'ext4', '--force']);
        expect(message).toMatch(/ext4/);
        expectSameImage('create-md on ext4', before, await diskImage(disk));
        const fsck = await execTool('e2fsck', ['-fn', disk]);
        expect(fsck.code).toBe(0);
        // Nothing to start on it either.
        expect(cliError(await r.run('alpha', 'up')).code).toBe('NRAID_ERR_METADATA');
        expect(signsOfLife(r)).toEqual([]);
        expectSameImage('up on ext4', before, await diskImage(disk));
      } finally {
        await r.cleanup();
      }
    }, 60_000);

    test("another resource's metadata: refused, naming that resource", async () => {
      const owner = await makeResource({ nodes: 1, sizeBytes: 16 * MiB });
      const other = await makeResource({
        nodes: 1,
        sizeBytes: 16 * MiB,
        extra: { nodes: { alpha: { disk: owner.nodes.alpha.diskPath } } },
      });
      try {
        const disk = owner.nodes.alpha.diskPath;
        await owner.runOk('alpha', 'create-md');
        const before = await diskImage(disk);
        expectRefused(await other.run('alpha', 'create-md'), 'NRAID_ERR_DISK_HAS_DATA', [disk, `"${owner.name}"`, '--force']);
        expectSameImage('create-md over another resource', before, await diskImage(disk));
        // up with the wrong resource's config is refused too, and starts nothing.
        const up = cliError(await other.run('alpha', 'up'));
        expect(up.message).toContain(`"${owner.name}"`);
        expect(signsOfLife(other)).toEqual([]);
        expectSameImage('up over another resource', before, await diskImage(disk));
        // create-md again for the same resource is refused as well (it would reset the UUIDs).
        expectRefused(await owner.run('alpha', 'create-md'), 'NRAID_ERR_DISK_HAS_DATA', [disk, '--force']);
        expectSameImage('create-md again', before, await diskImage(disk));
        // The owner's metadata is intact.
        await owner.runOk('alpha', 'up');
        expect(await owner.status('alpha')).toMatchObject({ resource: owner.name, disk: 'Inconsistent' });
        await owner.runOk('alpha', 'down');
      } finally {
        await other.cleanup();
        await owner.cleanup();
      }
    }, 60_000);
  });

  test('a 1 MiB backing device is too small for the metadata: create-md says NRAID_ERR_DISK, up starts nothing', async () => {
    const r = await makeResource({ nodes: 1, sizeBytes: MiB });
    try {
      const disk = r.nodes.alpha.diskPath;
      const before = await diskImage(disk);
      expectRefused(await r.run('alpha', 'create-md'), 'NRAID_ERR_DISK', [disk, String(MiB)]);
      expectSameImage('create-md on 1 MiB', before, await diskImage(disk));
      expect(before.head.equals(Buffer.alloc(MiB))).toBe(true);
      // up has no metadata to find there; it names the disk and starts nothing.
      const up = cliError(await r.run('alpha', 'up'));
      expect(up.message).toContain(disk);
      expect(['NRAID_ERR_DISK', 'NRAID_ERR_METADATA']).toContain(up.code);
      expect(signsOfLife(r)).toEqual([]);
      expectSameImage('up on 1 MiB', before, await diskImage(disk));
    } finally {
      await r.cleanup();
    }
  }, 60_000);

  describe('a resource that is up', () => {
    let r: TestResource;
    const data = crypto.randomBytes(MiB);

    beforeAll(async () => {
      r = await makeResource({ nodes: 1, sizeBytes: 32 * MiB });
      await r.runOk('alpha', 'create-md');
      await r.runOk('alpha', 'up');
      await r.runOk('alpha', 'primary', ['--force']);
      await writeDirect(r.nodes.alpha.device, 0, data);
    }, 60_000);

    afterAll(async () => {
      await r?.cleanup();
    }, 60_000);

    test('up twice: NRAID_ERR_ALREADY_UP naming the running daemon, which still serves', async () => {
      const s0 = await r.status('alpha');
      const pid = s0.pid as number;
      expectRefused(await r.run('alpha', 'up'), 'NRAID_ERR_ALREADY_UP', [r.name, String(pid)]);
      expectRefused(await r.run('alpha', 'up', ['--foreground']), 'NRAID_ERR_ALREADY_UP', [String(pid)]);
      const s1 = await r.status('alpha');
      expect(s1).toMatchObject({ pid, role: 'Primary', disk: 'UpToDate', exposed: true, loopDevice: s0.loopDevice });
      expect(fs.readlinkSync(r.nodes.alpha.device)).toBe(s0.loopDevice);
      expect(processesMentioning(r.dir + '/')).toEqual([pid]);
      // The device still answers: old data there, new data lands.
      expect((await readDirect(r.nodes.alpha.device, 0, MiB)).equals(data)).toBe(true);
      const more = crypto.randomBytes(64 * BLOCK_BYTES);
      await writeDirect(r.nodes.alpha.device, 8 * MiB, more);
      expect((await readDirect(r.nodes.alpha.device, 8 * MiB, more.length)).equals(more)).toBe(true);
    }, 60_000);

    test('create-md under a running daemon: NRAID_ERR_ALREADY_UP, metadata untouched', async () => {
      const disk = r.nodes.alpha.diskPath;
      const size = await sizeOf(disk);
      const tailBefore = await readDirect(disk, size - MiB, MiB);
      for (const flags of [[], ['--force']]) {
        expectRefused(await r.run('alpha', 'create-md', flags), 'NRAID_ERR_ALREADY_UP', [r.name]);
      }
      expect((await readDirect(disk, size - MiB, MiB)).equals(tailBefore)).toBe(true);
      expect(await r.status('alpha')).toMatchObject({ role: 'Primary', disk: 'UpToDate' });
    }, 60_000);
  });

  describe('not root', () => {
    let r: TestResource;
    let image: DiskImage;
    let publicDir: string;
    let publicConfig: string;

    /** Runs the CLI as uid/gid 65534 with no supplementary groups. */
    async function asNobody(args: readonly string[]): Promise<NraidResult> {
      const res = await execTool(
        'setpriv',
        [`--reuid=${NOBODY}`, `--regid=${NOBODY}`, '--clear-groups', process.execPath, NRAID_BIN, ...args],
        { cwd: REPO_ROOT, env: toolEnv({ HOME: '/nonexistent' }), timeoutMs: 30_000 },
      );
      return { code: res.code, stdout: res.stdout.toString(), stderr: res.stderr.toString() };
    }

    beforeAll(async () => {
      if (findExecutable('setpriv') === undefined) throw new Error('setpriv (util-linux) not found on PATH');
      // nobody must be able to reach bin/nraid: every directory above it needs o+x.
      for (let dir = path.dirname(NRAID_BIN); ; dir = path.dirname(dir)) {
        const mode = fs.statSync(dir).mode & 0o777;
        if ((mode & 0o001) === 0) {
          throw new Error(
            `these tests run the CLI as nobody, who cannot reach ${NRAID_BIN}: ${dir} has mode 0${mode.toString(8)} ` +
              `(no search permission for others). Clone the repository under a directory others can enter, or chmod o+x ${dir}.`,
          );
        }
        if (dir === path.dirname(dir)) break;
      }
      r = await makeResource({ nodes: 1, sizeBytes: 16 * MiB });
      await r.runOk('alpha', 'create-md');
      image = await diskImage(r.nodes.alpha.diskPath);
      // The harness's temp dir is 0700: give nobody a readable copy of the config.
      publicDir = fs.mkdtempSync(path.join(fs.realpathSync(os.tmpdir()), `nraid-badinput-${process.pid}-`));
      const dir = publicDir;
      registerCleanup(`public dir ${dir}`, async () => fs.promises.rm(dir, { recursive: true, force: true }), () => fs.rmSync(dir, { recursive: true, force: true }));
      fs.chmodSync(publicDir, 0o755);
      publicConfig = path.join(publicDir, `${r.name}.toml`);
      fs.copyFileSync(r.configPath, publicConfig);
      fs.chmodSync(publicConfig, 0o644);
    }, 60_000);

    afterAll(async () => {
      if (publicDir !== undefined) fs.rmSync(publicDir, { recursive: true, force: true });
      await r?.cleanup();
    }, 60_000);

    test('the CLI runs as nobody at all (node, bin/nraid and dist/ are readable)', async () => {
      const res = await asNobody(['help']);
      expect({ code: res.code, stderr: res.stderr }).toEqual({ code: 0, stderr: '' });
    });

    test('create-md, up, primary, secondary and down as nobody: NRAID_ERR_NOT_ROOT, nothing changed', async () => {
      for (const command of ['create-md', 'up', 'primary', 'secondary', 'down']) {
        const res = await asNobody([command, r.name, '-c', publicConfig, '-n', 'alpha']);
        expectRefused(res, 'NRAID_ERR_NOT_ROOT', ['root']);
      }
      expect(signsOfLife(r)).toEqual([]);
      expect(pathExists(r.nodes.alpha.runDir)).toBe(false);
      expectSameImage('commands as nobody', image, await diskImage(r.nodes.alpha.diskPath));
    }, 60_000);

    test('with the config readable only by root (it holds the secret), up as nobody still says NRAID_ERR_NOT_ROOT', async () => {
      fs.chmodSync(publicConfig, 0o600);
      try {
        for (const command of ['create-md', 'up']) {
          const res = await asNobody([command, r.name, '-c', publicConfig, '-n', 'alpha']);
          expectRefused(res, 'NRAID_ERR_NOT_ROOT', ['root']);
        }
      } finally {
        fs.chmodSync(publicConfig, 0o644);
      }
      expect(signsOfLife(r)).toEqual([]);
      expectSameImage('commands as nobody, root-only config', image, await diskImage(r.nodes.alpha.diskPath));
    }, 60_000);
  });

  describe('no /dev/fuse or no loop support', () => {
    let r: TestResource;
    let image: DiskImage;

    beforeAll(async () => {
      if (findExecutable('unshare') === undefined) throw new Error('unshare (util-linux) not found on PATH');
      r = await makeResource({ nodes: 1, sizeBytes: 16 * MiB });
      await r.runOk('alpha', 'create-md');
      image = await diskImage(r.nodes.alpha.diskPath);
    }, 60_000);

    afterAll(async () => {
      await r?.cleanup();
    }, 60_000);

    function devNumbers(device: string): { major: number; minor: number } {
      const rdev = fs.statSync(device).rdev;
      return { major: (rdev >> 8) & 0xfff, minor: (rdev & 0xff) | ((rdev >> 12) & 0xfff00) };
    }

    /**
     * Runs `nraid up` in a private mount namespace whose /dev is a fresh tmpfs
     * holding null, zero, random, urandom, the backing disk, and /dev/fuse and
     * /dev/loop-control only when asked.
     */
    async function upWithMinimalDev(withFuse: boolean, withLoopControl: boolean): Promise<NraidResult> {
      const disk = r.nodes.alpha.diskPath;
      const d = devNumbers(disk);
      const script = [
        'set -e',
        'mount -t tmpfs -o mode=0755 nraid-test-dev /dev',
        'mknod -m 0666 /dev/null c 1 3',
        'mknod -m 0666 /dev/zero c 1 5',
        'mknod -m 0666 /dev/random c 1 8',
        'mknod -m 0666 /dev/urandom c 1 9',
        'mknod -m 0660 "$1" b "$2" "$3"',
        'if [ "$4" = yes ]; then mknod -m 0666 /dev/fuse c 10 229; fi',
        'if [ "$5" = yes ]; then mknod -m 0660 /dev/loop-control c 10 237; fi',
        'test -b "$1"',
        'shift 5',
        'exec "$@"',
      ].join('\n');
      const res = await execTool(
        'unshare',
        [
          '--mount',
          '--propagation',
          'private',
          'sh',
          '-c',
          script,
          'sh',
          disk,
          String(d.major),
          String(d.minor),
          withFuse ? 'yes' : 'no',
          withLoopControl ? 'yes' : 'no',
          process.execPath,
          NRAID_BIN,
          'up',
          r.name,
          '-c',
          r.configPath,
          '-n',
          'alpha',
        ],
        { cwd: REPO_ROOT, timeoutMs: 60_000 },
      );
      return { code: res.code, stdout: res.stdout.toString(), stderr: res.stderr.toString() };
    }

    test('up without /dev/fuse: NRAID_ERR_PREREQUISITE naming /dev/fuse, nothing started', async () => {
      const res = await upWithMinimalDev(false, true);
      expectRefused(res, 'NRAID_ERR_PREREQUISITE', ['/dev/fuse']);
      expect(signsOfLife(r)).toEqual([]);
      expect(pathExists(r.nodes.alpha.runDir)).toBe(false);
      expectSameImage('up without /dev/fuse', image, await diskImage(r.nodes.alpha.diskPath));
    }, 60_000);

    test('up without /dev/loop-control: NRAID_ERR_PREREQUISITE naming it, nothing started', async () => {
      const res = await upWithMinimalDev(true, false);
      expectRefused(res, 'NRAID_ERR_PREREQUISITE', ['/dev/loop-control']);
      expect(signsOfLife(r)).toEqual([]);
      expect(pathExists(r.nodes.alpha.runDir)).toBe(false);
      expectSameImage('up without /dev/loop-control', image, await diskImage(r.nodes.alpha.diskPath));
    }, 60_000);

    test('with the real /dev the same config and disk come up (the refusals were about /dev)', async () => {
      await r.runOk('alpha', 'up');
      expect(await r.status('alpha')).toMatchObject({ role: 'Secondary', disk: 'Inconsistent' });
      await r.runOk('alpha', 'down');
    }, 60_000);
  });

  describe('a backing device that vanished', () => {
    test('a config naming a path that does not exist: up and create-md say NRAID_ERR_DISK naming it', async () => {
      const r = await makeResource({ nodes: 1, sizeBytes: 16 * MiB });
      try {
        const missing = path.join(r.dir, 'no-such-disk');
        const file = writeConfig(r, 'missing-disk', (c) => (alphaTable(c).disk = missing));
        for (const command of ['up', 'create-md']) {
          expectRefused(await r.nraid([command, r.name, '-c', file, '-n', 'alpha']), 'NRAID_ERR_DISK', [missing]);
          expect(pathExists(missing)).toBe(false);
        }
        expect(signsOfLife(r)).toEqual([]);
        expect(pathExists(r.nodes.alpha.runDir)).toBe(false);
      } finally {
        await r.cleanup();
      }
    }, 60_000);

    test('a disk link that disappears after create-md (an unplugged /dev/disk/by-id path): NRAID_ERR_DISK naming it', async () => {
      const r = await makeResource({ nodes: 1, sizeBytes: 16 * MiB });
      try {
        const link = path.join(r.dir, `by-id-${crypto.randomBytes(4).toString('hex')}`);
        fs.symlinkSync(r.nodes.alpha.diskPath, link);
        const file = writeConfig(r, 'linked-disk', (c) => (alphaTable(c).disk = link));
        await r.nraid(['create-md', r.name, '-c', file, '-n', 'alpha']).then((res) => {
          if (res.code !== 0) throw new Error(`create-md through ${link} failed: ${res.stderr}`);
        });
        const image = await diskImage(r.nodes.alpha.diskPath);
        fs.unlinkSync(link);
        for (const command of ['up', 'create-md']) {
          expectRefused(await r.nraid([command, r.name, '-c', file, '-n', 'alpha']), 'NRAID_ERR_DISK', [link]);
        }
        expect(signsOfLife(r)).toEqual([]);
        expect(pathExists(r.nodes.alpha.runDir)).toBe(false);
        expectSameImage('after the disk vanished', image, await diskImage(r.nodes.alpha.diskPath));
      } finally {
        await r.cleanup();
      }
    }, 60_000);
  });
});
