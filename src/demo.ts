/**
 * `nraid demo`: the main job on one machine. Two nodes (two sparse files, two
 * loop devices, two daemons on 127.0.0.1), a filesystem written through the
 * Primary while both nodes' status is shown, then a byte-for-byte comparison
 * of both backing devices' data areas. Everything it makes (files, loop
 * devices, mounts, daemons) is removed afterwards, also on failure and Ctrl-C.
 */
import { execFileSync, spawnSync } from 'node:child_process';
import crypto from 'node:crypto';
import fs from 'node:fs';
import net from 'node:net';
import os from 'node:os';
import path from 'node:path';
import { CommandFailedError, DiskError, NotRootError, TimeoutError, errorReply, toNraidError } from './errors';
import type { ResourceStatus } from './state';

const BIN = path.join(__dirname, '..', '..', 'bin', 'nraid');
const DISK_BYTES = 512 << 20;
const NODES = ['alpha', 'beta'] as const;
const WAIT_MS = 60_000;

function say(line: string): void {
  process.stdout.write(line + '\n');
}

function run(command: string, args: string[], options: { quiet?: boolean } = {}): string {
  if (!options.quiet) say(`$ ${[path.basename(command) === 'node' ? 'node' : command, ...args].join(' ')}`);
  const result = spawnSync(command, args, { encoding: 'utf8' });
  const output = `${result.stdout ?? ''}${result.stderr ?? ''}`.trimEnd();
  if (output && !options.quiet) say(output.replace(/^/gm, '  '));
  if (result.status !== 0) {
    const how = result.error !== undefined ? `could not start (${result.error.message})` : `exited with ${result.status ?? result.signal}`;
    throw new CommandFailedError(`${command} ${args.join(' ')}: expected exit 0, ${how}: ${output}; see the output above`);
  }
  return result.stdout;
}

async function freePort(): Promise<number> {
  return new Promise((resolve, reject) => {
    const server = net.createServer();
    server.once('error', (error: Error) => reject(toNraidError(error)));
    server.listen(0, '127.0.0.1', () => {
      const port = (server.address() as net.AddressInfo).port;
      server.close(() => resolve(port));
    });
  });
}

function sha256Of(device: string, lengthBytes: number): string {
  const hash = crypto.createHash('sha256');
  const fd = fs.openSync(device, 'r');
  try {
    const buffer = Buffer.alloc(4 << 20);
    for (let offset = 0; offset < lengthBytes; ) {
      const n = fs.readSync(fd, buffer, 0, Math.min(buffer.length, lengthBytes - offset), offset);
      if (n <= 0) {
        throw new DiskError(`${device}: expected ${lengthBytes} bytes to compare, found its end at ${offset}; was the loop device detached meanwhile?`);
      }
      hash.update(buffer.subarray(0, n));
      offset += n;
    }
  } finally {
    fs.closeSync(fd);
  }
  return hash.digest('hex');
}

export async function runDemo(): Promise<number> {
  if (process.getuid?.() !== 0) {
    const e = new NotRootError('nraid demo must run as root (loop devices, FUSE, mount); run it with sudo');
    process.stderr.write(`error: ${e.message} (${e.code})\n`);
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
    say(`nraid demo: two nodes on this machine, each with a ${DISK_BYTES >> 20} MiB sparse file as its disk, in ${work}\n`);
    const disks: Record<string, string> = {};
    for (const node of NODES) {
      const image = path.join(work, `${node}.img`);
      fs.writeFileSync(image, '');
      fs.truncateSync(image, DISK_BYTES);
      const disk = run('losetup', ['--find', '--show', '--direct-io=on', image]).trim();
      cleanups.push(() => execFileSync('losetup', ['-d', disk]));
      disks[node] = disk;
    }
    const ports = [await freePort(), await freePort()];
    const configPath = path.join(work, `${resource}.toml`);
    const lines = [`resource = "${resource}"`, 'protocol = "C"', `secret = "${crypto.randomBytes(16).toString('hex')}"`];
    NODES.forEach((node, i) => {
      lines.push(
        '',
        `[nodes.${node}]`,
        `address = "127.0.0.1:${ports[i]}"`,
        `disk = "${disks[node]}"`,
        `device = "/dev/nraid/${resource}-${node}"`,
        `run-dir = "${path.join(work, `run-${node}`)}"`,
      );
    });
    fs.writeFileSync(configPath, lines.join('\n') + '\n');
    say(`the config, the same file for both nodes (${configPath}):\n${fs.readFileSync(configPath, 'utf8').replace(/^/gm, '  ')}`);
    const nraid = (node: string, ...args: string[]) => run(process.execPath, [BIN, ...args, '-c', configPath, '-n', node]);
    const status = (node: string) =>
      JSON.parse(spawnSync(process.execPath, [BIN, 'status', '--json', '-c', configPath, '-n', node], { encoding: 'utf8' }).stdout) as ResourceStatus;
    const waitFor = async (what: string, predicate: () => boolean) => {
      const deadline = Date.now() + WAIT_MS;
      while (!predicate()) {
        if (Date.now() > deadline) throw new TimeoutError(`waited ${WAIT_MS} ms for ${what}; the status lines above show where it stopped`);
        await new Promise((resolve) => setTimeout(resolve, 200));
      }
    };
    for (const node of NODES) {
      nraid(node, 'create-md');
      nraid(node, 'up');
      cleanups.push(() => spawnSync(process.execPath, [BIN, 'down', '-c', configPath, '-n', node]));
    }
    await waitFor('the nodes to connect', () => status('alpha').connection === 'Connected');
    for (const node of NODES) nraid(node, 'status');
    nraid('alpha', 'primary', '--force');
    say('(the initial full sync from alpha to beta runs now)');
    await waitFor('the initial sync', () => status('beta').disk === 'UpToDate');
    for (const node of NODES) nraid(node, 'status');
    const device = `/dev/nraid/${resource}-alpha`;
    run('mkfs.ext4', ['-q', '-F', device]);
    const mountPoint = path.join(work, 'mnt');
    fs.mkdirSync(mountPoint);
    run('mount', [device, mountPoint]);
    cleanups.push(() => spawnSync('umount', [mountPoint]));
    say(`writing a tree of 8 directories x 16 files of random data into ${mountPoint} (through alpha, mirrored to beta)`);
    const digests = new Map<string, string>();
    for (let d = 0; d < 8; d++) {
      const dir = path.join(mountPoint, `queue-${d}`);
      fs.mkdirSync(dir);
      for (let i = 0; i < 16; i++) {
        const data = crypto.randomBytes(16 * 1024 + ((d * 16 + i) % 32) * 16 * 1024);
        const file = path.join(dir, `msg-${i}.eml`);
        fs.writeFileSync(file, data);
        digests.set(file, crypto.createHash('sha256').update(data).digest('hex'));
      }
      if (d % 3 === 0) for (const node of NODES) say(`  ${node}: ${spawnSync(process.execPath, [BIN, 'status', '-c', configPath, '-n', node], { encoding: 'utf8' }).stdout.trim()}`);
    }
    run('sync', ['-f', mountPoint]);
    run('umount', [mountPoint]);
    run('e2fsck', ['-fn', device], { quiet: true });
    say('e2fsck -fn: clean');
    await waitFor('the peer to catch up', () => {
      const s = status('alpha');
      return s.writesInFlight === 0 && s.outOfSyncBytes === 0;
    });
    for (const node of NODES) nraid(node, 'status');
    const dataSizeBytes = status('alpha').dataSizeBytes;
    nraid('alpha', 'secondary');
    for (const node of NODES) nraid(node, 'down');
    const sums = NODES.map((node) => sha256Of(disks[node], dataSizeBytes));
    say(`\nsha256 of the ${dataSizeBytes} data bytes of each backing device:`);
    NODES.forEach((node, i) => say(`  ${node} (${disks[node]}): ${sums[i]}`));
    const ok = sums[0] === sums[1];
    say(ok ? `\nresult: IDENTICAL: ${digests.size} files written through alpha, beta holds the same bytes` : '\nresult: FAILED: the backing devices differ');
    return ok ? 0 : 1;
  } catch (error) {
    const { code, message } = errorReply(error);
    say(`\ndemo failed: ${message} (${code})`);
    return 1;
  } finally {
    cleanup();
    process.off('SIGINT', onSignal);
    process.off('SIGTERM', onSignal);
  }
}
