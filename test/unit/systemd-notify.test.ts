/**
 * The systemd side of the holder (src/systemd.ts), against a fake systemd: a
 * Python process bound to a Unix datagram socket as NOTIFY_SOCKET (systemd
 * cannot run as PID 1 here). It checks the sd_notify(3) datagrams systemd
 * parses: READY=1 with no descriptor; FDSTOREREMOVE=1 then FDSTORE=1 with
 * FDNAME=nraid-fuse and the descriptor attached (SCM_RIGHTS), received as the
 * same open file; the abstract-namespace form (@name); and LISTEN_FDS /
 * LISTEN_FDNAMES read back as systemd passes the fd store to a restarted
 * service (sd_listen_fds(3)).
 */
import { ChildProcess, spawn } from 'child_process';
import * as fs from 'fs';
import * as os from 'os';
import * as path from 'path';
import { FUSE_FD_NAME, notify, passedFds, removeStoredFd, storeFd } from '../../src/systemd';

interface Received {
  state: string;
  /** Per attached descriptor: what it is (/proc/self/fd link) and its inode. */
  fds: Array<{ link: string; inode: number }>;
}

const RECEIVER = `
import json, os, socket, sys
path, count = sys.argv[1], int(sys.argv[2])
sock = socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM)
sock.bind(path if path[0] != '@' else '\\0' + path[1:])
print('listening', flush=True)
for _ in range(count):
    data, ancdata, flags, addr = sock.recvmsg(4096, socket.CMSG_SPACE(4 * 8))
    fds = []
    for level, kind, payload in ancdata:
        if level == socket.SOL_SOCKET and kind == socket.SCM_RIGHTS:
            for i in range(0, len(payload) - len(payload) % 4, 4):
                fd = int.from_bytes(payload[i:i + 4], sys.byteorder)
                fds.append({'link': os.readlink('/proc/self/fd/%d' % fd), 'inode': os.fstat(fd).st_ino})
    print(json.dumps({'state': data.decode(), 'fds': fds}), flush=True)
`;

/** A fake systemd receiving `count` datagrams on `socketPath`; resolves once it listens. */
async function fakeSystemd(socketPath: string, count: number): Promise<{ child: ChildProcess; received: Promise<Received[]> }> {
  const child = spawn('python3', ['-c', RECEIVER, socketPath, String(count)], { stdio: ['ignore', 'pipe', 'pipe'] });
  let stdout = '';
  let stderr = '';
  child.stderr!.on('data', (d) => (stderr += d));
  const received = new Promise<Received[]>((resolve, reject) => {
    child.on('error', (error) => reject(new Error(`python3 (the fake systemd) did not start: ${error.message}`)));
    child.on('exit', (code) => {
      if (code !== 0) return reject(new Error(`the fake systemd exited with ${code}: ${stderr}`));
      resolve(stdout.split('\n').filter((line) => line.startsWith('{')).map((line) => JSON.parse(line)));
    });
  });
  await new Promise<void>((resolve, reject) => {
    child.stdout!.on('data', (d) => {
      stdout += d;
      if (stdout.startsWith('listening\n')) resolve();
    });
    received.catch(reject);
  });
  return { child, received };
}

describe('sd_notify and the fd store (src/systemd.ts) against a fake NOTIFY_SOCKET', () => {
  let dir: string;
  let children: ChildProcess[] = [];

  beforeEach(() => {
    dir = fs.mkdtempSync(path.join(os.tmpdir(), 'nraid-notify-'));
  });

  afterEach(() => {
    for (const child of children) if (child.exitCode === null) child.kill('SIGKILL');
    children = [];
    fs.rmSync(dir, { recursive: true, force: true });
  });

  test('READY=1 carries no descriptor; storeFd replaces the named entry and attaches the open file; removeStoredFd names it', async () => {
    const socketPath = path.join(dir, 'notify');
    const systemd = await fakeSystemd(socketPath, 4);
    children.push(systemd.child);
    const file = path.join(dir, 'held');
    fs.writeFileSync(file, 'x');
    const fd = fs.openSync(file, 'r');
    try {
      const env = { NOTIFY_SOCKET: socketPath };
      expect(notify('READY=1', null, env)).toBe(true);
      expect(storeFd(fd, FUSE_FD_NAME, env)).toBe(true);
      expect(removeStoredFd(FUSE_FD_NAME, env)).toBe(true);
    } finally {
      fs.closeSync(fd);
    }
    const inode = fs.statSync(file).ino;
    expect(await systemd.received).toEqual([
      { state: 'READY=1', fds: [] },
      { state: 'FDSTOREREMOVE=1\nFDNAME=nraid-fuse', fds: [] },
      { state: 'FDSTORE=1\nFDNAME=nraid-fuse', fds: [{ link: file, inode }] },
      { state: 'FDSTOREREMOVE=1\nFDNAME=nraid-fuse', fds: [] },
    ]);
  });

  test('an abstract NOTIFY_SOCKET (@name), as systemd sets it', async () => {
    const name = `@nraid-notify-${process.pid}-${Date.now()}`;
    const systemd = await fakeSystemd(name, 1);
    children.push(systemd.child);
    expect(notify('READY=1', null, { NOTIFY_SOCKET: name })).toBe(true);
    expect(await systemd.received).toEqual([{ state: 'READY=1', fds: [] }]);
  });

  test('outside systemd nothing is sent; a bad or absent socket is an error, not a silent loss', () => {
    expect(notify('READY=1', null, {})).toBe(false);
    expect(storeFd(0, FUSE_FD_NAME, {})).toBe(false);
    expect(() => notify('READY=1', null, { NOTIFY_SOCKET: 'relative/path' })).toThrow(/absolute path or start with @/);
    expect(() => notify('READY=1', null, { NOTIFY_SOCKET: path.join(dir, 'nobody-listens') })).toThrow(/sd_notify to .*nobody-listens/);
  });

  test('LISTEN_FDS and LISTEN_FDNAMES: the fd store handed back, for this process only', () => {
    const env = { LISTEN_PID: String(process.pid), LISTEN_FDS: '2', LISTEN_FDNAMES: 'other:nraid-fuse' };
    expect([...passedFds(env)]).toEqual([
      ['other', 3],
      ['nraid-fuse', 4],
    ]);
    expect(passedFds({ ...env, LISTEN_PID: String(process.pid + 1) }).size).toBe(0);
    expect(passedFds({ LISTEN_PID: String(process.pid), LISTEN_FDS: '1' }).get('unknown-0')).toBe(3);
    expect(passedFds({}).size).toBe(0);
  });
});
