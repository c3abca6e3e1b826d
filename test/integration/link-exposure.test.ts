/**
 * Issue 11 (part A) end to end with real daemons:
 * - finding 6: an unprivileged user (setpriv --reuid=65534) can neither read
 *   nor write the device or the FUSE volume file, whatever the run
 *   directory's mode before `up` and after it (the volume was mounted
 *   allow_other without default_permissions, and an existing run-dir kept
 *   its mode);
 * - finding 7: a file-backed disk that a running daemon holds cannot be
 *   opened for writing again (create-md --force overwrote live metadata).
 */
import * as fs from 'fs';
import * as path from 'path';
import { makeResource, TestResource } from '../harness/cluster';
import { execTool } from '../harness/exec';
import { makeSparseFile } from '../harness/loop';
import { describeIntegration } from '../harness/prereq';
import { BackingDisk } from '../../src/disk';

const MiB = 1024 * 1024;
const NOBODY = '65534';

/** Runs `args` as uid/gid 65534 with no supplementary groups; resolves with the exit code. */
async function asNobody(args: string[]): Promise<number> {
  const result = await execTool('setpriv', ['--reuid', NOBODY, '--regid', NOBODY, '--clear-groups', '--', ...args]);
  return result.code;
}

describeIntegration('a private device and locked disks (issue 11 findings 6, 7)', ['root', 'fuse', 'loop', 'dd', 'nraid-cli'], () => {
  let r: TestResource;
  let diskFile: string;

  beforeAll(async () => {
    diskFile = (await makeSparseFile(64 * MiB, 'exposure-disk')).file;
    r = await makeResource({ nodes: 1, sizeBytes: 64 * MiB, extra: { nodes: { alpha: { disk: diskFile } } } });
    // A run dir that exists already, open to everyone.
    fs.mkdirSync(r.nodes.alpha.runDir, { recursive: true });
    fs.chmodSync(r.nodes.alpha.runDir, 0o777);
    await r.runOk('alpha', 'create-md');
    await r.runOk('alpha', 'up');
    await r.runOk('alpha', 'primary', ['--force']);
  }, 60_000);

  afterAll(async () => {
    await r?.cleanup();
  }, 60_000);

  test('the run dir is corrected to 0700 root; nobody reads or writes the device or the volume, even with the run dir opened again', async () => {
    const runDir = r.nodes.alpha.runDir;
    const st = fs.statSync(runDir);
    expect(st.mode & 0o7777).toBe(0o700);
    expect(st.uid).toBe(0);
    const volume = path.join(runDir, 'volume');
    const device = fs.realpathSync(r.nodes.alpha.device);
    // Positive control: root reads the device.
    expect((await execTool('dd', [`if=${device}`, 'of=/dev/null', 'bs=4096', 'count=1', 'iflag=direct'])).code).toBe(0);
    // Someone makes the run dir traversable again: the volume itself must still refuse (default_permissions).
    fs.chmodSync(runDir, 0o755);
    try {
      for (const target of [device, volume]) {
        expect(await asNobody(['dd', `if=${target}`, 'of=/dev/null', 'bs=4096', 'count=1'])).not.toBe(0);
        expect(await asNobody(['dd', 'if=/dev/zero', `of=${target}`, 'bs=4096', 'count=1', 'conv=notrunc'])).not.toBe(0);
      }
    } finally {
      fs.chmodSync(runDir, 0o700);
    }
  }, 30_000);

  test('a file-backed disk held by the daemon cannot be opened for writing (create-md --force), and can after down', async () => {
    // Regression: files had no O_EXCL, so create-md --force from another config overwrote live metadata.
    expect(() => BackingDisk.open(diskFile, { configKey: 'test' })).toThrow(/busy/);
    await r.runOk('alpha', 'secondary');
    await r.runOk('alpha', 'down');
    const disk = BackingDisk.open(diskFile, { configKey: 'test' });
    disk.close();
  }, 30_000);
});
