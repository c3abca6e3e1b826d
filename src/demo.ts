/**
 * `nraid demo`: the whole life of a resource on this one machine, with the
 * commands an operator would type, printed as they run. Everything it makes
 * (sparse files, loop devices, mounts, daemons) is removed afterwards, also
 * on failure and on Ctrl-C.
 */
import { execFileSync, spawnSync } from 'node:child_process';
import crypto from 'node:crypto';
import fs from 'node:fs';
import os from 'node:os';
import path from 'node:path';

const BIN = path.join(__dirname, '..', '..', 'bin', 'nraid');
const DISK_BYTES = 512 << 20;

function say(line: string): void {
  process.stdout.write(line + '\n');
}

function run(command: string, args: string[], options: { quiet?: boolean } = {}): string {
  say(`$ ${[command, ...args].join(' ')}`);
  const result = spawnSync(command, args, { encoding: 'utf8' });
  const output = `${result.stdout ?? ''}${result.stderr ?? ''}`.trimEnd();
  if (output && !options.quiet) say(output.replace(/^/gm, '  '));
  if (result.status !== 0) throw new Error(`${command} ${args.join(' ')} failed (exit ${result.status}): ${output}`);
  return result.stdout;
}

export async function runDemo(): Promise<number> {
  if (process.getuid?.() !== 0) {
    process.stderr.write('error: nraid demo must run as root (loop devices, FUSE, mount) (NRAID_ERR_NOT_ROOT)\n');
    return 1;
  }
  const work = fs.mkdtempSync(path.join(os.tmpdir(), 'nraid-demo-'));
  const resource = `demo${process.pid}`;
  const cleanups: (() => void)[] = [];
  const cleanup = () => {
    while (cleanups.length > 0) {
      try {
        cleanups.pop()!();
      } catch {
        // keep cleaning
      }
    }
  };
  const onSignal = () => {
    say('\ninterrupted: cleaning up');
    cleanup();
    process.exit(130);
  };
  process.on('SIGINT', onSignal);
  process.on('SIGTERM', onSignal);
  cleanups.push(() => fs.rmSync(work, { recursive: true, force: true }));
  try {
    say(`nraid demo: one node, a ${DISK_BYTES >> 20} MiB sparse file as its disk, in ${work}\n`);
    const image = path.join(work, 'alpha.img');
    fs.writeFileSync(image, '');
    fs.truncateSync(image, DISK_BYTES);
    const disk = run('losetup', ['--find', '--show', image]).trim();
    cleanups.push(() => execFileSync('losetup', ['-d', disk]));
    const device = `/dev/nraid/${resource}`;
    const configPath = path.join(work, `${resource}.toml`);
    fs.writeFileSync(
      configPath,
      [
        `resource = "${resource}"`,
        'protocol = "C"',
        `secret = "${crypto.randomBytes(16).toString('hex')}"`,
        '',
        '[nodes.alpha]',
        'address = "127.0.0.1:7790"',
        `disk = "${disk}"`,
        `device = "${device}"`,
        `run-dir = "${path.join(work, 'run-alpha')}"`,
        '',
        '[nodes.beta]',
        'address = "127.0.0.1:7791"',
        `disk = "/dev/nraid-demo-beta-absent"`,
        `run-dir = "${path.join(work, 'run-beta')}"`,
        `device = "/dev/nraid/${resource}-beta"`,
        '',
      ].join('\n'),
    );
    say(`config ${configPath}:\n${fs.readFileSync(configPath, 'utf8').replace(/^/gm, '  ')}`);
    const nraid = (...args: string[]) => run(process.execPath, [BIN, ...args, '-c', configPath, '-n', 'alpha']);
    nraid('create-md');
    nraid('up');
    cleanups.push(() => spawnSync(process.execPath, [BIN, 'down', '-c', configPath, '-n', 'alpha']));
    nraid('status');
    nraid('primary', '--force');
    run('mkfs.ext4', ['-q', '-F', device]);
    const mountPoint = path.join(work, 'mnt');
    fs.mkdirSync(mountPoint);
    run('mount', [device, mountPoint]);
    cleanups.push(() => spawnSync('umount', [mountPoint]));
    say(`writing 64 files of random data into ${mountPoint}`);
    const digests = new Map<string, string>();
    for (let i = 0; i < 64; i++) {
      const data = crypto.randomBytes(64 * 1024 + i * 4096);
      const file = path.join(mountPoint, `file-${i}`);
      fs.writeFileSync(file, data);
      digests.set(file, crypto.createHash('sha256').update(data).digest('hex'));
    }
    run('sync', ['-f', mountPoint]);
    run('umount', [mountPoint]);
    run('mount', [device, mountPoint]);
    let intact = 0;
    for (const [file, digest] of digests) {
      if (crypto.createHash('sha256').update(fs.readFileSync(file)).digest('hex') === digest) intact++;
    }
    say(`read back after a remount: ${intact} of ${digests.size} files intact`);
    nraid('status', '--json');
    run('umount', [mountPoint]);
    run('e2fsck', ['-fn', device]);
    nraid('down');
    const ok = intact === digests.size;
    say(ok ? '\nresult: every file read back intact; the filesystem checks clean' : '\nresult: FAILED, some files differ');
    return ok ? 0 : 1;
  } catch (error) {
    say(`\ndemo failed: ${(error as Error).message}`);
    return 1;
  } finally {
    cleanup();
    process.off('SIGINT', onSignal);
    process.off('SIGTERM', onSignal);
  }
}
