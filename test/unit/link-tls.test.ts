/**
 * TLS on the control link (issue 11, Deliver 3), over real sockets on
 * 127.0.0.1: the key derived from the secret, the config keys, a session
 * whose bytes after the preamble are TLS (nothing of the nraid handshake in
 * the clear), a peer with another secret or a certificate from another CA
 * that never gets a session.
 */
import { execFileSync } from 'child_process';
import * as fs from 'fs';
import * as net from 'net';
import * as os from 'os';
import * as path from 'path';
import { ConfigError } from '../../src/errors';
import { parseConfig } from '../../src/config';
import { ControlLink, ControlLinkOptions, LinkRefusal, SessionInfo } from '../../src/link/control-link';
import { derivePsk, LinkTls, linkTlsFromConfig } from '../../src/link/tls';
import { NodeState } from '../../src/protocol/control';

const HOST = '127.0.0.1';
const RESOURCE = 'tls-resource-under-test';
const SECRET = 'correct horse battery staple';
const cleanups: Array<() => unknown> = [];

afterEach(async () => {
  while (cleanups.length > 0) await cleanups.pop()!();
});

const state: NodeState = {
  role: 'Secondary',
  disk: 'UpToDate',
  dataSizeBytes: 1n << 30n,
  uuids: { current: 1n, bitmap: 0n, history: [0n, 0n] },
  flags: 0,
  protocol: 'C',
};

interface Node {
  link: ControlLink;
  refused: LinkRefusal[];
  connected: SessionInfo[];
}

function makeNode(name: string, peer: { name: string; port: number }, tls: LinkTls | null, extra: Partial<ControlLinkOptions> = {}): Node {
  const node = { refused: [] as LinkRefusal[], connected: [] as SessionInfo[] } as Node;
  node.link = new ControlLink({
    resource: RESOURCE,
    local: { name, host: HOST, port: 0 },
    peer: { name: peer.name, host: HOST, port: peer.port },
    secret: SECRET,
    tls,
    pingIntervalMs: 100,
    pingTimeoutMs: 1000,
    connectRetryMs: 50,
    handshakeTimeoutMs: 1000,
    getState: () => state,
    log: () => undefined,
    ...extra,
  });
  node.link.on('refused', (r) => node.refused.push(r));
  node.link.on('connected', (info) => node.connected.push(info));
  cleanups.push(() => node.link.stop());
  return node;
}

/** A relay that records what alpha sends to beta. */
async function recordingRelay(targetPort: number): Promise<{ port: number; toTarget: Buffer[] }> {
  const toTarget: Buffer[] = [];
  const server = net.createServer((client) => {
    const target = net.connect({ host: HOST, port: targetPort });
    client.on('data', (chunk: Buffer) => {
      toTarget.push(chunk);
      target.write(chunk);
    });
    target.on('data', (chunk: Buffer) => client.write(chunk));
    for (const s of [client, target]) s.on('error', () => undefined);
    client.on('close', () => target.destroy());
    target.on('close', () => client.destroy());
  });
  await new Promise<void>((resolve) => server.listen(0, HOST, resolve));
  cleanups.push(() => new Promise<void>((resolve) => server.close(() => resolve())));
  return { port: (server.address() as net.AddressInfo).port, toTarget };
}

async function pair(alphaTls: LinkTls | null, betaTls: LinkTls | null, relay = false) {
  const beta = makeNode('beta', { name: 'alpha', port: 1 }, betaTls);
  const betaPort = (await beta.link.start()).port;
  const recorder = relay ? await recordingRelay(betaPort) : null;
  const alpha = makeNode('alpha', { name: 'beta', port: recorder?.port ?? betaPort }, alphaTls);
  await alpha.link.start();
  beta.link.connect();
  alpha.link.connect();
  return { alpha, beta, recorder };
}

async function until(what: string, ready: () => boolean, timeoutMs = 5000): Promise<void> {
  const deadlineMs = Date.now() + timeoutMs;
  while (!ready()) {
    if (Date.now() > deadlineMs) throw new Error(`expected ${what} within ${timeoutMs} ms`);
    await new Promise((resolve) => setTimeout(resolve, 20));
  }
}

function pskTls(secret: string): LinkTls {
  return linkTlsFromConfig({ resource: RESOURCE, secret, tls: true, tlsCert: null, tlsKey: null, tlsCa: null })!;
}

const CONFIG_BASE = `resource = "r0"
secret = "a long enough shared secret"
[nodes.alpha]
address = "10.0.0.1:7789"
disk = "/dev/loop1"
[nodes.beta]
address = "10.0.0.2:7789"
disk = "/dev/loop2"
`;

describe('TLS keys and config', () => {
  test('the PSK is 32 bytes, the same for the same inputs, different per link, resource and secret', () => {
    const control = derivePsk(SECRET, RESOURCE, 'control');
    expect(control).toHaveLength(32);
    expect(derivePsk(SECRET, RESOURCE, 'control').equals(control)).toBe(true);
    expect(derivePsk(SECRET, RESOURCE, 'data').equals(control)).toBe(false);
    expect(derivePsk(SECRET, 'r1', 'control').equals(control)).toBe(false);
    expect(derivePsk(`${SECRET}!`, RESOURCE, 'control').equals(control)).toBe(false);
  });

  test('tls defaults to true with a derived key; certificates need all three files; tls = false takes none', () => {
    const config = parseConfig(CONFIG_BASE, 'r0.toml');
    expect([config.tls, config.tlsCert, config.tlsKey, config.tlsCa]).toEqual([true, null, null, null]);
    expect(linkTlsFromConfig(config)?.mode).toBe('psk');
    expect(parseConfig(`tls = false\n${CONFIG_BASE}`, 'r0.toml').tls).toBe(false);
    expect(() => parseConfig(`tls = "yes"\n${CONFIG_BASE}`, 'r0.toml')).toThrow(/key "tls" must be true or false; found "yes"/);
    expect(() => parseConfig(`tls-cert = "/etc/nraid/a.pem"\n${CONFIG_BASE}`, 'r0.toml')).toThrow(
      /certificates need tls-cert, tls-key and tls-ca together; found tls-cert without tls-key, tls-ca/,
    );
    expect(() =>
      parseConfig(`tls = false\ntls-cert = "/a"\ntls-key = "/b"\ntls-ca = "/c"\n${CONFIG_BASE}`, 'r0.toml'),
    ).toThrow(ConfigError);
    const missing = { resource: 'r0', secret: SECRET, tls: true, tlsCert: '/nonexistent/c.pem', tlsKey: '/nonexistent/k.pem', tlsCa: '/nonexistent/ca.pem' };
    expect(() => linkTlsFromConfig(missing)).toThrow(/tls-cert: cannot read \/nonexistent\/c.pem \(ENOENT\)/);
  });
});

describe('the control link over TLS', () => {
  test('PSK: a session, and nothing after the preamble in the clear', async () => {
    const { alpha, beta, recorder } = await pair(pskTls(SECRET), pskTls(SECRET), true);
    await until('both connected', () => alpha.connected.length > 0 && beta.connected.length > 0);
    const sent = Buffer.concat(recorder!.toTarget);
    expect(sent.subarray(0, 8).toString('latin1')).toBe('NRAIDCTL');
    expect(sent[8]).toBe(0x16); // a TLS handshake record
    expect(sent.includes(Buffer.from(RESOURCE))).toBe(false); // the nraid HELLO names the resource
  });

  test('PSK from another secret: no session on either side, refusals reported', async () => {
    const { alpha, beta } = await pair(pskTls(SECRET), pskTls('another secret of the same length'));
    await until('a refusal', () => alpha.refused.length + beta.refused.length > 0);
    await new Promise((resolve) => setTimeout(resolve, 300));
    expect(alpha.connected.length + beta.connected.length).toBe(0);
  });

  test('one side with TLS, the other without: no session', async () => {
    const { alpha, beta } = await pair(pskTls(SECRET), null);
    await until('a refusal', () => alpha.refused.length + beta.refused.length > 0);
    expect(alpha.connected.length + beta.connected.length).toBe(0);
  });

  test('certificates: a session with the CA that signed both; none with a certificate of another CA', async () => {
    const dir = fs.mkdtempSync(path.join(os.tmpdir(), 'nraid-tls-'));
    cleanups.push(() => fs.rmSync(dir, { recursive: true, force: true }));
    const run = (...args: string[]): void => void execFileSync('openssl', args, { cwd: dir, stdio: 'ignore' });
    for (const ca of ['ca', 'other-ca']) {
      run('req', '-x509', '-newkey', 'ec', '-pkeyopt', 'ec_paramgen_curve:P-256', '-nodes', '-keyout', `${ca}.key`,
        '-out', `${ca}.pem`, '-days', '2', '-subj', `/CN=${ca}`);
    }
    for (const [node, ca] of [['alpha', 'ca'], ['beta', 'ca'], ['mallory', 'other-ca']]) {
      run('req', '-newkey', 'ec', '-pkeyopt', 'ec_paramgen_curve:P-256', '-nodes', '-keyout', `${node}.key`,
        '-out', `${node}.csr`, '-subj', `/CN=${node}`);
      run('x509', '-req', '-in', `${node}.csr`, '-CA', `${ca}.pem`, '-CAkey', `${ca}.key`, '-CAcreateserial',
        '-out', `${node}.pem`, '-days', '2');
    }
    const certTls = (node: string): LinkTls =>
      linkTlsFromConfig({
        resource: RESOURCE, secret: SECRET, tls: true,
        tlsCert: path.join(dir, `${node}.pem`), tlsKey: path.join(dir, `${node}.key`), tlsCa: path.join(dir, 'ca.pem'),
      })!;
    const good = await pair(certTls('alpha'), certTls('beta'));
    await until('both connected', () => good.alpha.connected.length > 0 && good.beta.connected.length > 0);
    while (cleanups.length > 1) await cleanups.pop()!(); // stop the good pair, keep the dir

    const bad = await pair(certTls('mallory'), certTls('beta'));
    await until('a refusal', () => bad.alpha.refused.length + bad.beta.refused.length > 0);
    expect(bad.alpha.connected.length + bad.beta.connected.length).toBe(0);
  });
});
