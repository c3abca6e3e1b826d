import fs from 'node:fs';
import os from 'node:os';
import path from 'node:path';
import { stringify } from 'smol-toml';
import {
  closestName,
  defaultConfigPath,
  loadConfig,
  localAndPeer,
  parseConfig,
  resolveConfigPath,
  roleHookBudgetMs,
  secretWarnings,
  type ResourceConfig,
} from '../../src/config';
import { ConfigError, UsageError } from '../../src/errors';
import * as limits from '../../src/limits';
import { binding } from '../../src/native';

const file = '/etc/nraid/r0.toml';

type Table = Record<string, unknown>;

/** Two nodes on one host (as in tests), every per-node path distinct. */
function base(): Table {
  return {
    resource: 'r0',
    secret: 'correct horse',
    nodes: {
      alpha: { address: '127.0.0.1:7789', disk: '/dev/loop1', device: '/dev/nraid/r0-alpha' },
      beta: { address: '127.0.0.1:7790', disk: '/dev/loop2', device: '/dev/nraid/r0-beta' },
    },
  };
}

/** base() with `edit` applied: a dotted key set to a value, or deleted with undefined. */
function toml(edit: Record<string, unknown> = {}, start: Table = base()): string {
  const doc = structuredClone(start);
  for (const [dotted, value] of Object.entries(edit)) {
    const parts = dotted.split('.');
    let table = doc;
    for (const part of parts.slice(0, -1)) {
      if (typeof table[part] !== 'object' || table[part] === null) table[part] = {};
      table = table[part] as Table;
    }
    const last = parts[parts.length - 1];
    if (value === undefined) delete table[last];
    else table[last] = value;
  }
  return stringify(doc);
}

function parse(edit: Record<string, unknown> = {}): ResourceConfig {
  return parseConfig(toml(edit), file);
}

/** The ConfigError that parsing `text` raises; fails the test when there is none. */
function errorOf(text: string, sourcePath = file): ConfigError {
  try {
    parseConfig(text, sourcePath);
  } catch (error) {
    expect(error).toBeInstanceOf(ConfigError);
    return error as ConfigError;
  }
  throw new Error(`expected a ConfigError for:\n${text}`);
}

function messageOf(edit: Record<string, unknown>): string {
  const error = errorOf(toml(edit));
  expect(error.message.startsWith(`config ${file}: `)).toBe(true);
  expect(error.code).toBe('NRAID_ERR_CONFIG');
  return error.message;
}

describe('parseConfig: a valid file', () => {
  test('fills every default from limits.ts', () => {
    const config = parse();
    expect(config.path).toBe(file);
    expect(config.resource).toBe('r0');
    expect(config.protocol).toBe('C');
    expect(config.secret).toBe('correct horse');
    expect(config.pingIntervalMs).toBe(limits.pingIntervalMsDefault);
    expect(config.pingTimeoutMs).toBe(limits.pingTimeoutMsDefault);
    expect(config.connectRetryMs).toBe(limits.connectRetryMsDefault);
    expect(config.maxLagBytes).toBe(limits.maxLagBytesDefault);
    expect(config.maxLagMs).toBe(limits.maxLagMsDefault);
    expect(config.frontendThreads).toBe(limits.frontendThreadsDefault);
    expect(config.onNoPeer).toBe('continue');
    expect(config.onIoError).toBe('detach');
    expect(config.afterSb0pri).toBe('disconnect');
    expect(config.metricsPort).toBeNull();
    expect(config.hooks).toEqual({
      splitBrain: null,
      fencePeer: null,
      beforeDemote: null,
      afterPromote: null,
      beforeDemoteTimeoutMs: limits.roleHookTimeoutMsDefault,
      afterPromoteTimeoutMs: limits.roleHookTimeoutMsDefault,
      outOfSync: null,
    });
    expect(config.csums).toBe(false);
    expect(config.csumsAfterCrashOnly).toBe(false);
    expect(config.resyncPlanAheadMs).toBe(limits.resyncPlanAheadMsDefault);
    expect(config.resyncFillTargetKib).toBe(limits.resyncFillTargetKibDefault);
    expect(config.resyncMaxRateMib).toBe(limits.resyncMaxRateMibDefault);
    expect(config.resyncMinRateMib).toBe(limits.resyncMinRateMibDefault);
  });

  test('every field of the result is defined (the schema covers the interface)', () => {
    const config = parse();
    const fields: Array<keyof ResourceConfig> = [
      'path', 'resource', 'protocol', 'secret', 'pingIntervalMs', 'pingTimeoutMs', 'connectRetryMs', 'maxLagBytes',
      'maxLagMs', 'frontendThreads', 'daemonRestartBoundMs', 'onNoPeer', 'afterSb0pri', 'metricsPort', 'hooks', 'nodes', 'onIoError',
      'tls', 'tlsCert', 'tlsKey', 'tlsCa',
      'csums', 'csumsAfterCrashOnly',
      'resyncPlanAheadMs', 'resyncFillTargetKib', 'resyncMaxRateMib', 'resyncMinRateMib',
    ];
    for (const field of fields) expect(config[field]).not.toBeUndefined();
    expect(Object.keys(config).sort()).toEqual([...fields].sort());
  });

  test('takes every key when given', () => {
    const config = parse({
      protocol: 'A',
      'ping-interval-ms': 250,
      'ping-timeout-ms': 900,
      'connect-retry-ms': 75,
      'max-lag-bytes': 8 * 1024 * 1024,
      'max-lag-ms': 300,
      'frontend-threads': 7,
      'on-no-peer': 'suspend-io',
      'after-sb-0pri': 'discard-least-changes',
      'metrics-port': 9942,
      'on-io-error': 'pass-on',
      csums: true,
      'csums-after-crash-only': true,
      'hooks.split-brain': '/usr/lib/nraid/notify-split-brain',
      'hooks.fence-peer': '/usr/lib/nraid/fence',
      'hooks.out-of-sync': '/usr/lib/nraid/out-of-sync',
      'nodes.alpha.run-dir': '/tmp/nraid-a',
    });
    expect(config.protocol).toBe('A');
    expect(config.pingIntervalMs).toBe(250);
    expect(config.pingTimeoutMs).toBe(900);
    expect(config.connectRetryMs).toBe(75);
    expect(config.maxLagBytes).toBe(8 * 1024 * 1024);
    expect(config.maxLagMs).toBe(300);
    expect(config.frontendThreads).toBe(7);
    expect(config.onNoPeer).toBe('suspend-io');
    expect(config.afterSb0pri).toBe('discard-least-changes');
    expect(config.metricsPort).toBe(9942);
    expect(config.onIoError).toBe('pass-on');
    expect(config.csums).toBe(true);
    expect(config.csumsAfterCrashOnly).toBe(true);
    expect(config.hooks).toEqual({
      splitBrain: '/usr/lib/nraid/notify-split-brain',
      fencePeer: '/usr/lib/nraid/fence',
      beforeDemote: null,
      afterPromote: null,
      beforeDemoteTimeoutMs: limits.roleHookTimeoutMsDefault,
      afterPromoteTimeoutMs: limits.roleHookTimeoutMsDefault,
      outOfSync: '/usr/lib/nraid/out-of-sync',
    });
    expect(config.nodes[0].runDir).toBe('/tmp/nraid-a');
  });

  test('nodes keep file order, split host and port, and default run-dir per node', () => {
    const [alpha, beta] = parse().nodes;
    expect(alpha).toEqual({
      name: 'alpha',
      address: '127.0.0.1:7789',
      host: '127.0.0.1',
      port: 7789,
      disk: '/dev/loop1',
      device: '/dev/nraid/r0-alpha',
      runDir: '/run/nraid/r0-alpha',
    });
    expect(beta.name).toBe('beta');
    expect(beta.port).toBe(7790);
    expect(beta.runDir).toBe('/run/nraid/r0-beta');
  });

  test('nodes on different hosts may share the default device path', () => {
    const config = parse({
      resource: 'mail-queue',
      'nodes.alpha.address': 'alpha.example.net:7789',
      'nodes.alpha.device': undefined,
      'nodes.beta.address': '10.0.0.2:7789',
      'nodes.beta.device': undefined,
      'nodes.beta.disk': '/dev/loop1',
    });
    expect(config.nodes.map((n) => n.device)).toEqual(['/dev/nraid/mail-queue', '/dev/nraid/mail-queue']);
    expect(config.nodes.map((n) => n.runDir)).toEqual(['/run/nraid/mail-queue-alpha', '/run/nraid/mail-queue-beta']);
  });

  test.each(['A', 'B', 'C'])('protocol %s', (protocol) => {
    expect(parse({ protocol }).protocol).toBe(protocol);
  });

  test.each(['disconnect', 'discard-zero-changes', 'discard-younger-primary', 'discard-least-changes'])('after-sb-0pri %s', (policy) => {
    expect(parse({ 'after-sb-0pri': policy }).afterSb0pri).toBe(policy);
  });

  test.each([
    ['[::1]:7789', '::1', 7789],
    ['[fe80::1%eth0]:7789', 'fe80::1%eth0', 7789],
    ['db-1.example.com:1', 'db-1.example.com', 1],
    ['localhost:65535', 'localhost', 65535],
    ['10.1.2.3:7789', '10.1.2.3', 7789],
  ])('address %s has host %s and port %d', (address, host, port) => {
    const node = parse({ 'nodes.alpha.address': address }).nodes[0];
    expect(node.address).toBe(address);
    expect(node.host).toBe(host);
    expect(node.port).toBe(port);
  });

  test('a 63-character resource name is accepted, and names may hold _ . -', () => {
    const name = `a${'b'.repeat(62)}`;
    expect(parse({ resource: name }).resource).toBe(name);
    expect(parse({ resource: '0mail_q.v-2' }).resource).toBe('0mail_q.v-2');
  });

  test('a secret of exactly the minimum length is accepted', () => {
    const secret = 'x'.repeat(limits.secretCharsMin);
    expect(parse({ secret }).secret).toBe(secret);
  });
});

describe('parseConfig: TOML syntax', () => {
  test('a syntax error names the file, line and column', () => {
    const error = errorOf('resource = "r0"\nsecret = "correct horse"\nprotocol = \n');
    expect(error.message).toMatch(/^config \/etc\/nraid\/r0\.toml: line 3, column \d+: not valid TOML/);
  });

  test('an unterminated string is a ConfigError, not a TomlError', () => {
    const error = errorOf('resource = "r0\n', '/tmp/x.toml');
    expect(error.message).toContain('config /tmp/x.toml: line 1');
  });

  test('a duplicated key is a ConfigError', () => {
    expect(errorOf('resource = "a"\nresource = "b"\n').message).toContain('not valid TOML');
  });
});

describe('parseConfig: unknown keys', () => {
  test('at the top level: names the key, suggests the near one and lists the known keys', () => {
    const message = messageOf({ protocl: 'A' });
    expect(message).toContain('unknown key "protocl"');
    expect(message).toContain('did you mean "protocol"?');
    for (const known of ['resource', 'protocol', 'secret', 'ping-interval-ms', 'metrics-port', '[hooks]', '[nodes.NAME]']) {
      expect(message).toContain(known);
    }
  });

  test('without a near match there is no suggestion', () => {
    const message = messageOf({ 'completely-different': 1 });
    expect(message).toContain('unknown key "completely-different"');
    expect(message).not.toContain('did you mean');
  });

  test('in [hooks]', () => {
    const message = messageOf({ 'hooks.before-resync': '/bin/true' });
    expect(message).toContain('unknown key "hooks.before-resync"');
    expect(message).toContain('split-brain, fence-peer');
  });

  test('in a node', () => {
    const message = messageOf({ 'nodes.beta.adress': '127.0.0.1:1' });
    expect(message).toContain('unknown key "nodes.beta.adress"');
    expect(message).toContain('did you mean "nodes.beta.address"?');
    expect(message).toContain('address, disk, device, run-dir');
  });
});

describe('parseConfig: top-level values', () => {
  test.each(['resource', 'secret'])('%s is required', (key) => {
    const message = messageOf({ [key]: undefined });
    expect(message).toContain(`key "${key}" is missing; it is required`);
  });

  test.each([
    ['has a slash', 'a/b'],
    ['starts with a dash', '-r0'],
    ['starts with a dot', '.r0'],
    ['is empty', ''],
    ['is 64 characters', 'r'.repeat(64)],
    ['has a space', 'r 0'],
  ])('resource that %s', (_, resource) => {
    const message = messageOf({ resource });
    expect(message).toContain('key "resource" must be a name of letters, digits');
    expect(message).toContain(`found ${JSON.stringify(resource)}`);
  });

  test('resource that is not a string', () => {
    expect(messageOf({ resource: 5 })).toContain('key "resource" must be a name of letters, digits');
  });

  test('protocol outside A, B, C', () => {
    expect(messageOf({ protocol: 'D' })).toBe(`config ${file}: key "protocol" must be "A", "B" or "C"; found "D"`);
    expect(messageOf({ protocol: 'c' })).toContain('found "c"');
    expect(messageOf({ protocol: 3 })).toContain('found 3');
  });

  test('secret too short says how long it is', () => {
    const message = messageOf({ secret: 'x'.repeat(limits.secretCharsMin - 1) });
    expect(message).toContain(`key "secret" must be a string of ${limits.secretCharsMin} to ${limits.secretCharsMax} characters`);
    expect(message).toContain(`${limits.secretCharsMin - 1} characters`);
  });

  test('secret too long, and not a string', () => {
    expect(messageOf({ secret: 'x'.repeat(limits.secretCharsMax + 1) })).toContain(`${limits.secretCharsMax + 1} characters`);
    expect(messageOf({ secret: true })).toContain('found true (a boolean)');
    expect(messageOf({ secret: ['a'] })).toContain('found an array');
  });

  const integerKeys: Array<[string, keyof ResourceConfig, number, number]> = [
    ['ping-interval-ms', 'pingIntervalMs', limits.pingIntervalMsMin, limits.pingIntervalMsMax],
    ['ping-timeout-ms', 'pingTimeoutMs', limits.pingTimeoutMsMin, limits.pingTimeoutMsMax],
    ['connect-retry-ms', 'connectRetryMs', limits.connectRetryMsMin, limits.connectRetryMsMax],
    ['max-lag-bytes', 'maxLagBytes', limits.maxLagBytesMin, limits.maxLagBytesMax],
    ['max-lag-ms', 'maxLagMs', limits.maxLagMsMin, limits.maxLagMsMax],
    ['frontend-threads', 'frontendThreads', limits.frontendThreadsMin, limits.frontendThreadsMax],
    ['metrics-port', 'metricsPort', limits.portMin, limits.portMax],
    ['resync-plan-ahead-ms', 'resyncPlanAheadMs', limits.resyncPlanAheadMsMin, limits.resyncPlanAheadMsMax],
    ['resync-fill-target-kib', 'resyncFillTargetKib', limits.resyncFillTargetKibMin, limits.resyncFillTargetKibMax],
    ['resync-max-rate-mib', 'resyncMaxRateMib', limits.resyncRateMibMin, limits.resyncRateMibMax],
    ['resync-min-rate-mib', 'resyncMinRateMib', limits.resyncRateMibMin, limits.resyncRateMibMax],
  ];

  /** Keeps ping-timeout-ms above ping-interval-ms whatever bound is tried. */
  function withTimingRoom(key: string, value: number): Record<string, unknown> {
    if (key === 'ping-interval-ms') return { [key]: value, 'ping-timeout-ms': limits.pingTimeoutMsMax };
    if (key === 'ping-timeout-ms') return { [key]: value, 'ping-interval-ms': limits.pingIntervalMsMin };
    if (key === 'resync-min-rate-mib') return { [key]: value, 'resync-max-rate-mib': limits.resyncRateMibMax };
    if (key === 'resync-max-rate-mib') return { [key]: value, 'resync-min-rate-mib': limits.resyncRateMibMin };
    return { [key]: value };
  }

  test('resync-min-rate-mib above resync-max-rate-mib is refused, naming both', () => {
    expect(messageOf({ 'resync-max-rate-mib': 100, 'resync-min-rate-mib': 101 })).toContain('must not exceed resync-max-rate-mib (100)');
    expect(parse({ 'resync-max-rate-mib': 100, 'resync-min-rate-mib': 100 }).resyncMinRateMib).toBe(100);
  });

  describe.each(integerKeys)('%s', (key, field, min, max) => {
    test('accepts both bounds', () => {
      expect(parse(withTimingRoom(key, min))[field]).toBe(min);
      expect(parse(withTimingRoom(key, max))[field]).toBe(max);
    });

    test('rejects one below and one above, naming the range', () => {
      for (const value of [min - 1, max + 1]) {
        const message = messageOf(withTimingRoom(key, value));
        expect(message).toContain(`key "${key}" must be an integer from ${min} to ${max}; found ${value}: out of range`);
      }
    });

    test('rejects a float, even a whole one', () => {
      const text = `${key} = ${min}.0\n${toml()}`;
      const message = errorOf(text).message;
      expect(message).toContain(`key "${key}" must be an integer from ${min} to ${max}; found ${min}.0 (a float)`);
      expect(message).toContain('without a decimal point');
      expect(messageOf(withTimingRoom(key, min + 0.5))).toContain('(a float)');
    });

    test('rejects a string', () => {
      expect(messageOf({ [key]: String(min) })).toContain(`found "${min}"`);
    });
  });

  test('ping-timeout-ms must exceed ping-interval-ms', () => {
    const message = messageOf({ 'ping-interval-ms': 2000, 'ping-timeout-ms': 2000 });
    expect(message).toBe(`config ${file}: key "ping-timeout-ms" must exceed ping-interval-ms (2000); found 2000`);
  });

  test('a ping interval above the default timeout blames the default', () => {
    const message = messageOf({ 'ping-interval-ms': limits.pingTimeoutMsDefault + 1000 });
    expect(message).toContain(`must exceed ping-interval-ms (${limits.pingTimeoutMsDefault + 1000})`);
    expect(message).toContain(`found ${limits.pingTimeoutMsDefault} (the default)`);
  });

  test('on-no-peer outside its values', () => {
    expect(messageOf({ 'on-no-peer': 'panic' })).toContain('key "on-no-peer" must be "continue" or "suspend-io"; found "panic"');
  });

  test('after-sb-0pri outside its values', () => {
    const message = messageOf({ 'after-sb-0pri': 'discard-secondary' });
    expect(message).toContain(
      'key "after-sb-0pri" must be "disconnect", "discard-zero-changes", "discard-younger-primary" or "discard-least-changes"',
    );
    expect(message).toContain('found "discard-secondary"');
  });
});

describe('parseConfig: [hooks]', () => {
  test('must be a table', () => {
    expect(messageOf({ hooks: '/bin/true' })).toContain('key "hooks" must be a table (split-brain, fence-peer, before-demote, after-promote, before-demote-timeout-ms, after-promote-timeout-ms, out-of-sync); found "/bin/true"');
  });

  test('role hooks and their timeouts (switchover hooks, issue 14)', () => {
    const config = parse({ 'hooks.before-demote': '/etc/nraid/stop-services', 'hooks.after-promote': '/etc/nraid/start-services', 'hooks.after-promote-timeout-ms': 120000 });
    expect(config.hooks.beforeDemote).toBe('/etc/nraid/stop-services');
    expect(config.hooks.afterPromote).toBe('/etc/nraid/start-services');
    expect(config.hooks.afterPromoteTimeoutMs).toBe(120000);
    expect(config.hooks.beforeDemoteTimeoutMs).toBe(limits.roleHookTimeoutMsDefault);
    expect(roleHookBudgetMs(config.hooks)).toBe(2 * (limits.roleHookTimeoutMsDefault + 120000));
    const message = messageOf({ 'hooks.before-demote-timeout-ms': 10 });
    expect(message).toContain(`key "hooks.before-demote-timeout-ms" must be an integer from ${limits.roleHookTimeoutMsMin} to ${limits.roleHookTimeoutMsMax}`);
    expect(message).toContain('found 10: out of range');
  });

  test.each(['split-brain', 'fence-peer', 'before-demote', 'after-promote', 'out-of-sync'])('%s must be an absolute path', (key) => {
    const message = messageOf({ [`hooks.${key}`]: 'bin/notify' });
    expect(message).toContain(`key "hooks.${key}" must be an absolute path`);
    expect(message).toContain('found "bin/notify": not absolute');
    expect(messageOf({ [`hooks.${key}`]: 1 })).toContain(`key "hooks.${key}" must be an absolute path`);
  });

  test('a path with a NUL or longer than PATH_MAX is rejected', () => {
    expect(messageOf({ 'hooks.split-brain': '/bin/a\u0000b' })).toContain('contains a NUL character');
    expect(messageOf({ 'hooks.split-brain': `/${'a'.repeat(limits.pathBytesMax)}` })).toContain(`longer than ${limits.pathBytesMax} bytes`);
  });
});

describe('parseConfig: [nodes]', () => {
  test('missing', () => {
    const message = messageOf({ nodes: undefined });
    expect(message).toContain('[nodes] must hold exactly 2 nodes');
    expect(message).toContain('found none');
  });

  test('one node', () => {
    expect(messageOf({ 'nodes.beta': undefined })).toContain('found 1 ("alpha")');
  });

  test('three nodes', () => {
    const message = messageOf({ 'nodes.gamma': { address: '127.0.0.1:7791', disk: '/dev/loop3' } });
    expect(message).toContain('found 3 ("alpha", "beta", "gamma")');
  });

  test('nodes must be a table, and each node a table', () => {
    expect(messageOf({ nodes: 'alpha,beta' })).toContain('key "nodes" must be a table');
    expect(messageOf({ 'nodes.beta': 'x' })).toContain('key "nodes.beta" must be a table (address, disk, device, run-dir); found "x"');
  });

  test('a bad node name', () => {
    const doc = base();
    const nodes = doc.nodes as Table;
    nodes['beta gamma'] = nodes.beta;
    delete nodes.beta;
    expect(errorOf(toml({}, doc)).message).toContain('node name "nodes.beta gamma" must be letters, digits');
  });

  test.each(['address', 'disk'])('%s is required', (key) => {
    expect(messageOf({ [`nodes.beta.${key}`]: undefined })).toContain(`key "nodes.beta.${key}" is missing; it is required`);
  });

  test.each(['disk', 'device', 'run-dir'])('%s must be an absolute path', (key) => {
    const message = messageOf({ [`nodes.alpha.${key}`]: 'dev/loop9' });
    expect(message).toContain(`key "nodes.alpha.${key}" must be an absolute path`);
    expect(message).toContain('found "dev/loop9"');
  });

  test.each([
    ['127.0.0.1', 'no ":port"'],
    ['127.0.0.1:', 'no port after ":"'],
    [':7789', 'no host before ":"'],
    ['127.0.0.1:0', 'port 0 is not from 1 to 65535'],
    ['127.0.0.1:65536', 'port 65536 is not from 1 to 65535'],
    ['127.0.0.1:99999999', 'port "99999999" is not a number'],
    ['127.0.0.1:http', 'port "http" is not a number'],
    ['127.0.0.1:-1', 'port "-1" is not a number'],
    ['::1:7789', 'an IPv6 host goes in brackets, e.g. "[::1]:7789"'],
    ['[::1]7789', 'no ":port" after "]"'],
    ['[::1:7789', 'no "]" after the IPv6 address'],
    ['[zz::1]:7789', '"zz::1" is not an IPv6 address'],
    ['[127.0.0.1]:7789', '"127.0.0.1" is not an IPv6 address'],
    ['300.1.1.1:7789', '"300.1.1.1" is not an IPv4 address'],
    ['10.0.0:7789', '"10.0.0" is not an IPv4 address'],
    ['bad_host:7789', '"bad_host" is not a valid hostname'],
    ['-bad.example:7789', '"-bad.example" is not a valid hostname'],
    ['a..b:7789', '"a..b" is not a valid hostname'],
    [`${'a'.repeat(64)}.example:7789`, 'is not a valid hostname'],
  ])('address %s: %s', (address, detail) => {
    const message = messageOf({ 'nodes.beta.address': address });
    expect(message).toContain('key "nodes.beta.address" must be "host:port"');
    expect(message).toContain(`found ${JSON.stringify(address)}: `);
    expect(message).toContain(detail);
  });

  test('address must be a string', () => {
    expect(messageOf({ 'nodes.beta.address': 7789 })).toContain('key "nodes.beta.address" must be "host:port"');
  });

  test('device must not be the node\'s own disk', () => {
    const message = messageOf({ 'nodes.alpha.device': '/dev/loop1/' });
    expect(message).toContain('key "nodes.alpha.device" must differ from nodes.alpha.disk');
  });
});

describe('parseConfig: two nodes on one host', () => {
  test('same port', () => {
    const message = messageOf({ 'nodes.beta.address': '127.0.0.1:7789' });
    expect(message).toContain('nodes "alpha" and "beta" are on the same host "127.0.0.1"');
    expect(message).toContain('key "address" must differ');
    expect(message).toContain('port 7789');
  });

  test('same port written differently', () => {
    expect(messageOf({ 'nodes.beta.address': '127.0.0.1:07789' })).toContain('key "address" must differ');
  });

  test('same disk, compared after normalizing the path', () => {
    const message = messageOf({ 'nodes.beta.disk': '/dev/./loop1' });
    expect(message).toContain('key "disk" must differ');
    expect(message).toContain('set nodes.beta.disk');
  });

  test('same default device', () => {
    const message = messageOf({ 'nodes.alpha.device': undefined, 'nodes.beta.device': undefined });
    expect(message).toContain('key "device" must differ; both have "/dev/nraid/r0" (the default)');
  });

  test('same run-dir', () => {
    const message = messageOf({ 'nodes.alpha.run-dir': '/run/x', 'nodes.beta.run-dir': '/run/x/' });
    expect(message).toContain('key "run-dir" must differ');
  });

  test('same host by name is checked too', () => {
    const message = messageOf({ 'nodes.alpha.address': 'node1:7789', 'nodes.beta.address': 'node1:7789' });
    expect(message).toContain('same host "node1"');
  });

  test('different hosts may share port, disk and device', () => {
    const config = parse({
      'nodes.beta.address': '127.0.0.2:7789',
      'nodes.beta.disk': '/dev/loop1',
      'nodes.beta.device': '/dev/nraid/r0-alpha',
    });
    expect(config.nodes[1].host).toBe('127.0.0.2');
  });
});

describe('loadConfig', () => {
  let dir: string;
  beforeAll(() => {
    dir = fs.mkdtempSync(path.join(os.tmpdir(), 'nraid-config-'));
  });
  afterAll(() => fs.rmSync(dir, { recursive: true, force: true }));

  test('reads and parses a file, keeping its path', () => {
    const configPath = path.join(dir, 'r0.toml');
    fs.writeFileSync(configPath, toml({ protocol: 'B' }));
    const config = loadConfig(configPath);
    expect(config.path).toBe(configPath);
    expect(config.protocol).toBe('B');
  });

  test('errors name the loaded file', () => {
    const configPath = path.join(dir, 'bad.toml');
    fs.writeFileSync(configPath, toml({ protocol: 'Z' }));
    expect(() => loadConfig(configPath)).toThrow(`config ${configPath}: key "protocol"`);
  });

  test('a missing file says to pass -c FILE', () => {
    const missing = path.join(dir, 'missing.toml');
    const call = () => loadConfig(missing);
    expect(call).toThrow(ConfigError);
    expect(call).toThrow(`config ${missing}: cannot read it (ENOENT: no such file)`);
    expect(call).toThrow('pass -c FILE');
  });

  test('a directory is not a config', () => {
    expect(() => loadConfig(dir)).toThrow('EISDIR');
  });

  test('a huge file is refused before parsing', () => {
    const configPath = path.join(dir, 'huge.toml');
    fs.writeFileSync(configPath, `# ${'x'.repeat(limits.configFileBytesMax)}\n`);
    expect(() => loadConfig(configPath)).toThrow(`expected at most ${limits.configFileBytesMax} bytes`);
  });
});

describe('localAndPeer', () => {
  test('picks the local node and the other one as peer', () => {
    const config = parse();
    expect(localAndPeer(config, 'alpha')).toEqual({ local: config.nodes[0], peer: config.nodes[1] });
    expect(localAndPeer(config, 'beta')).toEqual({ local: config.nodes[1], peer: config.nodes[0] });
  });

  test('an unknown node lists the configured ones and says to pass -n NAME', () => {
    const call = () => localAndPeer(parse(), 'gamma');
    expect(call).toThrow(ConfigError);
    expect(call).toThrow('this node is "gamma", but the configured nodes are "alpha" and "beta"; pass -n NAME');
  });
});

describe('config paths', () => {
  let dir: string;
  beforeEach(() => {
    dir = fs.mkdtempSync(path.join(os.tmpdir(), 'nraid-etc-'));
  });
  afterEach(() => fs.rmSync(dir, { recursive: true, force: true }));

  test('defaultConfigPath', () => {
    expect(defaultConfigPath('r0')).toBe('/etc/nraid/r0.toml');
    expect(defaultConfigPath('mail.q')).toBe('/etc/nraid/mail.q.toml');
  });

  test('-c wins over the resource and the directory', () => {
    fs.writeFileSync(path.join(dir, 'only.toml'), '');
    expect(resolveConfigPath('r0', '/srv/r0.toml', dir)).toBe('/srv/r0.toml');
    expect(resolveConfigPath(undefined, 'rel.toml', dir)).toBe('rel.toml');
  });

  test('a resource names its file in the directory, which need not exist yet', () => {
    expect(resolveConfigPath('r1', undefined, dir)).toBe(path.join(dir, 'r1.toml'));
    expect(resolveConfigPath('r1', undefined)).toBe('/etc/nraid/r1.toml');
  });

  test('a resource that is not a valid name is a UsageError', () => {
    expect(() => resolveConfigPath('../etc/passwd', undefined, dir)).toThrow(UsageError);
  });

  test('no resource: the only *.toml in the directory', () => {
    fs.writeFileSync(path.join(dir, 'r7.toml'), '');
    fs.writeFileSync(path.join(dir, 'notes.txt'), '');
    expect(resolveConfigPath(undefined, undefined, dir)).toBe(path.join(dir, 'r7.toml'));
  });

  test('no resource and no *.toml is a UsageError', () => {
    const call = () => resolveConfigPath(undefined, undefined, dir);
    expect(call).toThrow(UsageError);
    expect(call).toThrow(`no resource named and no *.toml config in ${dir}`);
    expect(() => resolveConfigPath(undefined, undefined, path.join(dir, 'absent'))).toThrow(UsageError);
  });

  test('no resource and several *.toml lists them', () => {
    fs.writeFileSync(path.join(dir, 'b.toml'), '');
    fs.writeFileSync(path.join(dir, 'a.toml'), '');
    const call = () => resolveConfigPath(undefined, undefined, dir);
    expect(call).toThrow(UsageError);
    expect(call).toThrow('holds 2 configs (a.toml, b.toml); name one of a, b, or pass -c FILE');
  });
});

describe('closestName', () => {
  test('finds a near typo and ignores a far one', () => {
    expect(closestName('protocl', ['resource', 'protocol'])).toBe('protocol');
    expect(closestName('PROTOCOL', ['resource', 'protocol'])).toBe('protocol');
    expect(closestName('zzz', ['resource', 'protocol'])).toBeNull();
    expect(closestName('x', [])).toBeNull();
  });
});

describe('limits the config shares with the data plane', () => {
  test('frontend-threads bounds, block and request sizes equal native/limits.h', () => {
    expect(binding.limits).toMatchObject({
      blockBytes: limits.blockBytes,
      requestBytesMax: limits.requestBytesMax,
      frontendThreadsMin: limits.frontendThreadsMin,
      frontendThreadsDefault: limits.frontendThreadsDefault,
      frontendThreadsMax: limits.frontendThreadsMax,
    });
  });
});

describe('secretWarnings: create-md and up warn about a weak secret or a readable config, never showing it (issue 11 finding 3)', () => {
  // Regression: weak secrets ("password", eight spaces) were taken without a word, and a rejected secret was echoed.
  let dir: string;
  beforeEach(() => {
    dir = fs.mkdtempSync(path.join(os.tmpdir(), 'nraid-secret-warnings-'));
  });
  afterEach(() => fs.rmSync(dir, { recursive: true, force: true }));

  function configAt(secret: string, mode: number): ResourceConfig {
    const configPath = path.join(dir, 'r0.toml');
    fs.writeFileSync(configPath, toml({ secret }), { mode });
    fs.chmodSync(configPath, mode);
    return parseConfig(fs.readFileSync(configPath, 'utf8'), configPath);
  }

  test('a secret under 16 bytes: one warning with its length and how to make a good one, not the secret', () => {
    const warnings = secretWarnings(configAt('password', 0o600));
    expect(warnings).toHaveLength(1);
    expect(warnings[0]).toContain(`is 8 bytes long; use at least ${limits.secretBytesWarnBelow} random bytes`);
    expect(warnings[0]).toContain('openssl rand');
    expect(warnings[0]).not.toContain('password');
  });

  test('a config others can read: one warning with its mode and the chmod, not the secret', () => {
    const secret = 'q'.repeat(12) + 'unguessable-part';
    const warnings = secretWarnings(configAt(secret, 0o644));
    expect(warnings).toHaveLength(1);
    expect(warnings[0]).toMatch(/has mode 0644: users other than its owner can read the secret; chmod 600 /);
    expect(warnings[0]).not.toContain('unguessable');
  });

  test('32 random bytes in a file of mode 0600: no warning', () => {
    expect(secretWarnings(configAt('7bq2Hk1x9VdL0sWm4cPz8fRt6yNj3aGe', 0o600))).toEqual([]);
  });

  test('a rejected secret is described, never echoed', () => {
    const message = messageOf({ secret: 'hunter2-' + 'y'.repeat(limits.secretCharsMax) });
    expect(message).toContain(`${limits.secretCharsMax + 8} characters`);
    expect(message).not.toContain('hunter2');
  });
});
