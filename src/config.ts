/**
 * The one TOML file per resource, identical on both nodes (DESIGN.md §9).
 * Validation is strict and table-driven: each key is one line of a schema
 * (key, type, default, optional check against the rest of the file), and
 * every problem is a ConfigError naming the file, the dotted key, what was
 * expected and what was found.
 */
import fs from 'node:fs';
import net from 'node:net';
import path from 'node:path';
import { parse as parseToml, TomlError } from 'smol-toml';
import { ConfigError, UsageError } from './errors';
import * as limits from './limits';

export type Protocol = 'A' | 'B' | 'C';
export type OnNoPeer = 'continue' | 'suspend-io';
export type OnIoError = 'detach' | 'pass-on';
export type AfterSb0pri = 'disconnect' | 'discard-zero-changes' | 'discard-younger-primary' | 'discard-least-changes';

export interface NodeConfig {
  name: string;
  /** As written in the file: "host:port", "[v6]:port". */
  address: string;
  /** Without brackets, ready for net.connect. */
  host: string;
  port: number;
  disk: string;
  device: string;
  runDir: string;
}

export interface HooksConfig {
  splitBrain: string | null;
  fencePeer: string | null;
  /** Run before this node gives up Primary (stop the services, unmount); non-zero keeps it Primary. */
  beforeDemote: string | null;
  /** Run after this node became Primary (fsck, mount, start the services); non-zero undoes the promotion. */
  afterPromote: string | null;
  beforeDemoteTimeoutMs: number;
  afterPromoteTimeoutMs: number;
  /** Run when a verify finds blocks that differ (NRAID_OUT_OF_SYNC_RANGES, NRAID_OUT_OF_SYNC_BYTES). */
  outOfSync: string | null;
}

export interface ResourceConfig {
  /** The file this came from, for messages. */
  path: string;
  resource: string;
  protocol: Protocol;
  secret: string;
  pingIntervalMs: number;
  pingTimeoutMs: number;
  connectRetryMs: number;
  maxLagBytes: number;
  maxLagMs: number;
  /** The resync controller (src/limits.ts resync*): adjustable while running. */
  resyncPlanAheadMs: number;
  resyncFillTargetKib: number;
  resyncMaxRateMib: number;
  resyncMinRateMib: number;
  frontendThreads: number;
  /**
   * With a holder (> 0): a daemon that dies is started again and takes the
   * mounted device back; if none serves within this bound, pending I/O fails
   * with EIO and the device goes. 0: no holder.
   */
  daemonRestartBoundMs: number;
  onNoPeer: OnNoPeer;
  /** A failing backing disk: detach it and go Diskless (served by the peer), or pass the error on. */
  onIoError: OnIoError;
  afterSb0pri: AfterSb0pri;
  metricsPort: number | null;
  /** TLS 1.3 on both links (src/link/tls.ts): with a key derived from `secret`, or with these three files. */
  tls: boolean;
  tlsCert: string | null;
  tlsKey: string | null;
  tlsCa: string | null;
  /** Checksum resync (digests first, data only where they differ); with csumsAfterCrashOnly only after a Primary crash. */
  csums: boolean;
  csumsAfterCrashOnly: boolean;
  hooks: HooksConfig;
  nodes: [NodeConfig, NodeConfig];
}

export const configDirDefault = '/etc/nraid';
export const deviceDirDefault = '/dev/nraid';
export const runDirRootDefault = '/run/nraid';

const namePattern = new RegExp(`^[A-Za-z0-9][A-Za-z0-9_.-]{0,${limits.nameCharsMax - 1}}$`);
export const nameRule = `letters, digits, "_", "." and "-", starting with a letter or digit, at most ${limits.nameCharsMax} characters`;

/** Resource and node names: safe in file names, paths and the superblock. */
export function isValidName(name: string): boolean {
  return namePattern.test(name);
}

// --- Value types -------------------------------------------------------------

type Accepted<T> = { ok: true; value: T } | { ok: false; detail?: string };

interface ValueType<T> {
  /** What a good value looks like, for messages: "an integer from 1 to 128". */
  expected: string;
  accept(raw: unknown): Accepted<T>;
}

const reject = (detail?: string): { ok: false; detail?: string } => ({ ok: false, detail });

function quoteList(values: readonly string[]): string {
  const quoted = values.map((v) => JSON.stringify(v));
  if (quoted.length <= 1) return quoted.join('');
  return `${quoted.slice(0, -1).join(', ')} or ${quoted[quoted.length - 1]}`;
}

function integer(min: number, max: number): ValueType<number> {
  return {
    expected: `an integer from ${min} to ${max}`,
    accept(raw) {
      if (typeof raw === 'number') return reject('write a whole number without a decimal point');
      if (typeof raw !== 'bigint') return reject();
      if (raw < BigInt(min) || raw > BigInt(max)) return reject('out of range');
      return { ok: true, value: Number(raw) };
    },
  };
}

function oneOf<T extends string>(values: readonly T[]): ValueType<T> {
  return {
    expected: quoteList(values),
    accept(raw) {
      return typeof raw === 'string' && (values as readonly string[]).includes(raw)
        ? { ok: true, value: raw as T }
        : reject();
    },
  };
}

const flag: ValueType<boolean> = {
  expected: 'true or false',
  accept(raw) {
    return typeof raw === 'boolean' ? { ok: true, value: raw } : reject();
  },
};

function text(minChars: number, maxChars: number): ValueType<string> {
  return {
    expected: `a string of ${minChars} to ${maxChars} characters`,
    accept(raw) {
      if (typeof raw !== 'string') return reject();
      const chars = [...raw].length;
      if (chars < minChars) return reject(`${chars} characters`);
      if (chars > maxChars) return reject(`${chars} characters`);
      return { ok: true, value: raw };
    },
  };
}

const booleanType: ValueType<boolean> = {
  expected: 'true or false',
  accept(raw) {
    return typeof raw === 'boolean' ? { ok: true, value: raw } : reject();
  },
};

const nameType: ValueType<string> = {
  expected: `a name of ${nameRule}`,
  accept(raw) {
    return typeof raw === 'string' && isValidName(raw) ? { ok: true, value: raw } : reject();
  },
};

const absolutePath: ValueType<string> = {
  expected: 'an absolute path (starting with "/")',
  accept(raw) {
    if (typeof raw !== 'string') return reject();
    if (!raw.startsWith('/')) return reject('not absolute');
    if (raw.includes('\0')) return reject('contains a NUL character');
    if (Buffer.byteLength(raw) > limits.pathBytesMax) return reject(`longer than ${limits.pathBytesMax} bytes`);
    return { ok: true, value: raw };
  },
};

interface Address {
  address: string;
  host: string;
  port: number;
}

const hostnameLabel = /^[A-Za-z0-9]([A-Za-z0-9-]{0,61}[A-Za-z0-9])?$/;

function isHostname(host: string): boolean {
  return host.length <= limits.hostnameCharsMax && host.split('.').every((label) => hostnameLabel.test(label));
}

function parsePort(portText: string): Accepted<number> {
  if (portText === '') return reject('no port after ":"');
  if (!/^[0-9]{1,5}$/.test(portText)) return reject(`port "${portText}" is not a number`);
  const port = Number(portText);
  if (port < limits.portMin || port > limits.portMax) {
    return reject(`port ${port} is not from ${limits.portMin} to ${limits.portMax}`);
  }
  return { ok: true, value: port };
}

const addressType: ValueType<Address> = {
  expected: '"host:port" (host an IPv4 address, a hostname or a bracketed IPv6 address such as "[::1]:7789")',
  accept(raw) {
    if (typeof raw !== 'string') return reject();
    let host: string;
    let portText: string;
    if (raw.startsWith('[')) {
      const end = raw.indexOf(']');
      if (end < 0) return reject('no "]" after the IPv6 address');
      host = raw.slice(1, end);
      if (raw[end + 1] !== ':') return reject('no ":port" after "]"');
      portText = raw.slice(end + 2);
      if (!net.isIPv6(host)) return reject(`"${host}" is not an IPv6 address`);
    } else {
      const colon = raw.lastIndexOf(':');
      if (colon < 0) return reject('no ":port"');
      host = raw.slice(0, colon);
      portText = raw.slice(colon + 1);
      if (host === '') return reject('no host before ":"');
      if (host.includes(':')) return reject(`an IPv6 host goes in brackets, e.g. "[${host}]:${portText}"`);
      if (/^[0-9.]+$/.test(host)) {
        if (!net.isIPv4(host)) return reject(`"${host}" is not an IPv4 address`);
      } else if (!isHostname(host)) {
        return reject(`"${host}" is not a valid hostname`);
      }
    }
    const port = parsePort(portText);
    if (!port.ok) return port;
    return { ok: true, value: { address: raw, host, port: port.value } };
  },
};

// --- Schema ------------------------------------------------------------------

/** Sentinel default: the key must be present. */
const REQUIRED = Symbol('required');

interface Context {
  resource: string;
  node: string;
}

interface KeySpec {
  /** The TOML key (kebab-case); the field is its camelCase. */
  key: string;
  type: ValueType<unknown>;
  default: unknown;
  /** Checks against the other values of the same table, after all were read; returns a problem or null. */
  check?: (value: unknown, table: Record<string, unknown>) => string | null;
}

function key<T>(
  name: string,
  type: ValueType<T>,
  defaultValue: T | null | typeof REQUIRED | ((context: Context) => T),
  check?: (value: T, table: Record<string, unknown>) => string | null,
): KeySpec {
  return { key: name, type, default: defaultValue, check: check as KeySpec['check'] };
}

const topKeys: readonly KeySpec[] = [
  key('resource', nameType, REQUIRED),
  key<Protocol>('protocol', oneOf(['A', 'B', 'C']), 'C'),
  key('secret', text(limits.secretCharsMin, limits.secretCharsMax), REQUIRED),
  key('ping-interval-ms', integer(limits.pingIntervalMsMin, limits.pingIntervalMsMax), limits.pingIntervalMsDefault),
  key('ping-timeout-ms', integer(limits.pingTimeoutMsMin, limits.pingTimeoutMsMax), limits.pingTimeoutMsDefault,
    (value, table) => (value > (table.pingIntervalMs as number) ? null : `must exceed ping-interval-ms (${String(table.pingIntervalMs)})`)),
  key('connect-retry-ms', integer(limits.connectRetryMsMin, limits.connectRetryMsMax), limits.connectRetryMsDefault),
  key('max-lag-bytes', integer(limits.maxLagBytesMin, limits.maxLagBytesMax), limits.maxLagBytesDefault),
  key('max-lag-ms', integer(limits.maxLagMsMin, limits.maxLagMsMax), limits.maxLagMsDefault),
  key('resync-plan-ahead-ms', integer(limits.resyncPlanAheadMsMin, limits.resyncPlanAheadMsMax), limits.resyncPlanAheadMsDefault),
  key('resync-fill-target-kib', integer(limits.resyncFillTargetKibMin, limits.resyncFillTargetKibMax), limits.resyncFillTargetKibDefault),
  key('resync-max-rate-mib', integer(limits.resyncRateMibMin, limits.resyncRateMibMax), limits.resyncMaxRateMibDefault),
  key('resync-min-rate-mib', integer(limits.resyncRateMibMin, limits.resyncRateMibMax), limits.resyncMinRateMibDefault,
    (value, table) => (value <= (table.resyncMaxRateMib as number) ? null : `must not exceed resync-max-rate-mib (${String(table.resyncMaxRateMib)})`)),
  key('frontend-threads', integer(limits.frontendThreadsMin, limits.frontendThreadsMax), limits.frontendThreadsDefault),
  key('daemon-restart-bound-ms', integer(limits.daemonRestartBoundMsMin, limits.daemonRestartBoundMsMax), limits.daemonRestartBoundMsDefault),
  key<OnNoPeer>('on-no-peer', oneOf(['continue', 'suspend-io']), 'continue'),
  key<AfterSb0pri>('after-sb-0pri',
    oneOf(['disconnect', 'discard-zero-changes', 'discard-younger-primary', 'discard-least-changes']), 'disconnect'),
  key('metrics-port', integer(limits.portMin, limits.portMax), null),
  key<OnIoError>('on-io-error', oneOf(['detach', 'pass-on']), 'detach'),
  key('tls', booleanType, true),
  key('tls-cert', absolutePath, null),
  key('tls-key', absolutePath, null),
  key('tls-ca', absolutePath, null),
  // Checksum resync: the target sends digests of the marked regions, this node data only where they differ.
  key('csums', flag, false),
  // With csums: only for the resync after a Primary crash (its activity-log area is marked, little changed).
  key('csums-after-crash-only', flag, false),
];

/** Certificates: all three files or none, and only with TLS on. */
function checkTlsKeys(reader: Reader, values: Record<string, unknown>): void {
  const files = ['tls-cert', 'tls-key', 'tls-ca'] as const;
  const given = files.filter((name) => values[camelCase(name)] !== null);
  if (given.length === 0) return;
  if (values.tls === false) {
    reader.fail(`key "${given[0]}" is set but tls = false; remove ${given.join(', ')}, or set tls = true to use certificates`);
  }
  if (given.length < files.length) {
    const missing = files.filter((name) => !given.includes(name));
    reader.fail(
      `certificates need tls-cert, tls-key and tls-ca together; found ${given.join(', ')} without ${missing.join(', ')}; ` +
        'set all three, or none to use a key derived from the secret',
    );
  }
}

const hookKeys: readonly KeySpec[] = [
  key('split-brain', absolutePath, null),
  key('fence-peer', absolutePath, null),
  key('before-demote', absolutePath, null),
  key('after-promote', absolutePath, null),
  key('before-demote-timeout-ms', integer(limits.roleHookTimeoutMsMin, limits.roleHookTimeoutMsMax), limits.roleHookTimeoutMsDefault),
  key('after-promote-timeout-ms', integer(limits.roleHookTimeoutMsMin, limits.roleHookTimeoutMsMax), limits.roleHookTimeoutMsDefault),
  key('out-of-sync', absolutePath, null),
];

/** The longest a role change may spend in its hooks (one of each, and each again to undo): added to the waits for it. */
export function roleHookBudgetMs(hooks: HooksConfig): number {
  const beforeDemote = hooks.beforeDemote === null ? 0 : hooks.beforeDemoteTimeoutMs;
  const afterPromote = hooks.afterPromote === null ? 0 : hooks.afterPromoteTimeoutMs;
  return 2 * (beforeDemote + afterPromote);
}

const nodeKeys: readonly KeySpec[] = [
  key('address', addressType, REQUIRED),
  key('disk', absolutePath, REQUIRED),
  key('device', absolutePath, (c) => `${deviceDirDefault}/${c.resource}`),
  key('run-dir', absolutePath, (c) => `${runDirRootDefault}/${c.resource}-${c.node}`),
];

/** Tables under the top level, listed with the keys in messages. */
const topTables = ['hooks', 'nodes'] as const;
const nodesRequired = 2;

function camelCase(kebab: string): string {
  return kebab.replace(/-([a-z0-9])/g, (_, c: string) => c.toUpperCase());
}

// --- Reading -----------------------------------------------------------------

/** Keys whose values never appear in a message. */
const SENSITIVE_KEYS: ReadonlySet<string> = new Set(['secret']);

function describeSensitive(raw: unknown): string {
  return typeof raw === 'string' ? 'a string (not shown)' : describe(raw);
}

/**
 * What create-md and up warn about the secret: shorter than
 * secretBytesWarnBelow bytes, or a config file that users other than its
 * owner may read. Never the secret itself.
 */
export function secretWarnings(config: ResourceConfig): string[] {
  const warnings: string[] = [];
  const secretBytes = Buffer.byteLength(config.secret, 'utf8');
  if (secretBytes < limits.secretBytesWarnBelow) {
    warnings.push(
      `secret in ${config.path} is ${secretBytes} bytes long; use at least ${limits.secretBytesWarnBelow} random bytes ` +
        '(e.g. openssl rand -base64 32) on both nodes: it is all that keeps strangers off the replication link',
    );
  }
  try {
    const mode = fs.statSync(config.path).mode & 0o777;
    if ((mode & 0o077) !== 0) {
      warnings.push(
        `config ${config.path} has mode 0${mode.toString(8)}: users other than its owner can read the secret; ` +
          `chmod 600 ${config.path}`,
      );
    }
  } catch {
    // the config was just read; a file gone since is not worth a warning
  }
  return warnings;
}

function describe(raw: unknown): string {
  if (typeof raw === 'string') return JSON.stringify(raw.length > 80 ? `${raw.slice(0, 77)}...` : raw);
  if (typeof raw === 'bigint') return String(raw);
  if (typeof raw === 'number') return `${Number.isInteger(raw) ? raw.toFixed(1) : String(raw)} (a float)`;
  if (typeof raw === 'boolean') return `${raw} (a boolean)`;
  if (Array.isArray(raw)) return 'an array';
  if (raw instanceof Date) return `${raw.toISOString()} (a date)`;
  if (isTable(raw)) return 'a table';
  return String(raw);
}

function isTable(raw: unknown): raw is Record<string, unknown> {
  return typeof raw === 'object' && raw !== null && !Array.isArray(raw) && !(raw instanceof Date);
}

/** The known name closest to `found`, if it is a plausible typo. */
export function closestName(found: string, known: readonly string[]): string | null {
  let best: string | null = null;
  let bestDistance = Infinity;
  for (const candidate of known) {
    const distance = editDistance(found.toLowerCase(), candidate.toLowerCase());
    if (distance < bestDistance) {
      best = candidate;
      bestDistance = distance;
    }
  }
  const allowed = Math.max(1, Math.floor(found.length / 3));
  return best !== null && bestDistance <= allowed ? best : null;
}

function editDistance(a: string, b: string): number {
  let previous = Array.from({ length: b.length + 1 }, (_, i) => i);
  for (let i = 1; i <= a.length; i++) {
    const current = [i];
    for (let j = 1; j <= b.length; j++) {
      const cost = a[i - 1] === b[j - 1] ? 0 : 1;
      current[j] = Math.min(previous[j] + 1, current[j - 1] + 1, previous[j - 1] + cost);
    }
    previous = current;
  }
  return previous[b.length];
}

class Reader {
  constructor(readonly sourcePath: string) {}

  fail(problem: string): never {
    throw new ConfigError(`config ${this.sourcePath}: ${problem}`);
  }

  rejectUnknown(table: Record<string, unknown>, prefix: string, known: readonly string[], shown: readonly string[] = known): void {
    for (const name of Object.keys(table)) {
      if (known.includes(name)) continue;
      const near = closestName(name, known);
      const hint = near === null ? '' : `; did you mean "${prefix}${near}"?`;
      const where = prefix === '' ? 'at the top level' : `in [${prefix.slice(0, -1)}]`;
      this.fail(`unknown key "${prefix}${name}"${hint}; the keys known ${where} are ${shown.join(', ')}`);
    }
  }

  /** Reads `specs` from `table` into camelCase fields, filling defaults and running checks. */
  readKeys(table: Record<string, unknown>, specs: readonly KeySpec[], prefix: string, context: Context): Record<string, unknown> {
    const values: Record<string, unknown> = {};
    for (const spec of specs) {
      const dotted = `${prefix}${spec.key}`;
      const raw = table[spec.key];
      if (raw === undefined) {
        if (spec.default === REQUIRED) this.fail(`key "${dotted}" is missing; it is required: ${spec.type.expected}`);
        values[camelCase(spec.key)] = typeof spec.default === 'function' ? (spec.default as (c: Context) => unknown)(context) : spec.default;
        continue;
      }
      const accepted = spec.type.accept(raw);
      if (!accepted.ok) {
        const detail = accepted.detail === undefined ? '' : `: ${accepted.detail}`;
        // A rejected secret is described, never echoed: the message goes to terminals and logs.
        const found = SENSITIVE_KEYS.has(spec.key) ? describeSensitive(raw) : describe(raw);
        this.fail(`key "${dotted}" must be ${spec.type.expected}; found ${found}${detail}`);
      }
      values[camelCase(spec.key)] = accepted.value;
    }
    for (const spec of specs) {
      if (spec.check === undefined || table[spec.key] === undefined && spec.default === null) continue;
      const value = values[camelCase(spec.key)];
      const problem = spec.check(value, values);
      if (problem === null) continue;
      const found = table[spec.key] === undefined ? `${String(value)} (the default)` : describe(table[spec.key]);
      this.fail(`key "${prefix}${spec.key}" ${problem}; found ${found}`);
    }
    return values;
  }

  subTable(parent: Record<string, unknown>, name: string, dotted: string, expected: string): Record<string, unknown> | undefined {
    const raw = parent[name];
    if (raw === undefined) return undefined;
    if (!isTable(raw)) this.fail(`key "${dotted}" must be a table (${expected}); found ${describe(raw)}`);
    return raw;
  }
}

function tomlProblem(error: unknown): string {
  if (error instanceof TomlError) {
    const what = error.message.split('\n')[0].replace(/^Invalid TOML document:\s*/, '');
    return `line ${error.line}, column ${error.column}: not valid TOML (${what}); fix the syntax there`;
  }
  const message = error instanceof Error ? error.message : String(error);
  return `not valid TOML (${message}); fix the syntax`;
}

function readNodes(reader: Reader, top: Record<string, unknown>, resource: string): [NodeConfig, NodeConfig] {
  const nodeKeyNames = nodeKeys.map((s) => s.key);
  const nodesTable = reader.subTable(top, 'nodes', 'nodes', `[nodes.NAME] with ${nodeKeyNames.join(', ')}`);
  const names = nodesTable === undefined ? [] : Object.keys(nodesTable);
  if (names.length !== nodesRequired) {
    const found = names.length === 0 ? 'none' : `${names.length} (${names.map((n) => JSON.stringify(n)).join(', ')})`;
    reader.fail(`[nodes] must hold exactly ${nodesRequired} nodes, one [nodes.NAME] table each; found ${found}`);
  }
  const nodes = names.map((name): NodeConfig => {
    if (!isValidName(name)) reader.fail(`node name "nodes.${name}" must be ${nameRule}; found ${JSON.stringify(name)}`);
    const prefix = `nodes.${name}.`;
    const table = reader.subTable(nodesTable!, name, `nodes.${name}`, nodeKeyNames.join(', '))!;
    reader.rejectUnknown(table, prefix, nodeKeyNames);
    const v = reader.readKeys(table, nodeKeys, prefix, { resource, node: name });
    const address = v.address as Address;
    const node: NodeConfig = {
      name,
      address: address.address,
      host: address.host,
      port: address.port,
      disk: v.disk as string,
      device: v.device as string,
      runDir: v.runDir as string,
    };
    if (samePath(node.device, node.disk)) {
      reader.fail(`key "${prefix}device" must differ from ${prefix}disk, or the device would replace its own backing disk; both are "${node.disk}"`);
    }
    return node;
  });
  const [first, second] = nodes;
  if (first.host === second.host) rejectClashes(reader, top, first, second);
  return [first, second];
}

function samePath(a: string, b: string): boolean {
  const normalize = (p: string) => path.posix.normalize(p).replace(/(.)\/+$/, '$1');
  return normalize(a) === normalize(b);
}

/** Two nodes on one host (tests, demos) must not share a device, run dir, disk or address. */
function rejectClashes(reader: Reader, top: Record<string, unknown>, first: NodeConfig, second: NodeConfig): void {
  const nodesTable = top.nodes as Record<string, Record<string, unknown>>;
  const clashes: Array<{ key: string; same: boolean; shown: string }> = [
    { key: 'address', same: first.port === second.port, shown: `port ${first.port}` },
    { key: 'disk', same: samePath(first.disk, second.disk), shown: JSON.stringify(first.disk) },
    { key: 'device', same: samePath(first.device, second.device), shown: JSON.stringify(first.device) },
    { key: 'run-dir', same: samePath(first.runDir, second.runDir), shown: JSON.stringify(first.runDir) },
  ];
  for (const clash of clashes) {
    if (!clash.same) continue;
    const defaulted = nodesTable[second.name][clash.key] === undefined ? ' (the default)' : '';
    reader.fail(
      `nodes "${first.name}" and "${second.name}" are on the same host "${first.host}", so their key "${clash.key}" must differ; ` +
        `both have ${clash.shown}${defaulted}; set nodes.${second.name}.${clash.key} to something else`,
    );
  }
}

/** Parses and validates one resource's config; `sourcePath` is only for messages. */
export function parseConfig(text: string, sourcePath: string): ResourceConfig {
  const reader: Reader = new Reader(sourcePath);
  let top: Record<string, unknown>;
  try {
    top = parseToml(text, { integersAsBigInt: true, unsafeKeyBehaviour: 'throw' }) as Record<string, unknown>;
  } catch (error) {
    reader.fail(tomlProblem(error));
  }
  reader.rejectUnknown(top, '', [...topKeys.map((s) => s.key), ...topTables], [...topKeys.map((s) => s.key), '[hooks]', '[nodes.NAME]']);
  const values = reader.readKeys(top, topKeys, '', { resource: '', node: '' });
  const resource = values.resource as string;
  checkTlsKeys(reader, values);

  const hooksTable = reader.subTable(top, 'hooks', 'hooks', hookKeys.map((s) => s.key).join(', ')) ?? {};
  reader.rejectUnknown(hooksTable, 'hooks.', hookKeys.map((s) => s.key));
  const hooks = reader.readKeys(hooksTable, hookKeys, 'hooks.', { resource, node: '' }) as unknown as HooksConfig;

  const nodes = readNodes(reader, top, resource);
  return { path: sourcePath, ...(values as Omit<ResourceConfig, 'path' | 'hooks' | 'nodes'>), hooks, nodes };
}

/** Reads and parses `configPath`; a missing or unreadable file says how to name another. */
export function loadConfig(configPath: string): ResourceConfig {
  let data: Buffer;
  try {
    data = fs.readFileSync(configPath);
  } catch (error) {
    const code = (error as NodeJS.ErrnoException).code ?? 'error';
    const why = code === 'ENOENT' ? 'no such file' : code === 'EACCES' ? 'permission denied' : code === 'EISDIR' ? 'it is a directory' : (error as Error).message;
    throw new ConfigError(`config ${configPath}: cannot read it (${code}: ${why}); create it, or pass -c FILE to name the config file`, { cause: error });
  }
  if (data.length > limits.configFileBytesMax) {
    throw new ConfigError(
      `config ${configPath}: expected at most ${limits.configFileBytesMax} bytes; found ${data.length}; is this the right file? pass -c FILE to name the config file`,
    );
  }
  return parseConfig(data.toString('utf8'), configPath);
}

/** This node and its peer; an unknown name lists the configured ones. */
export function localAndPeer(config: ResourceConfig, nodeName: string): { local: NodeConfig; peer: NodeConfig } {
  const [first, second] = config.nodes;
  if (first.name === nodeName) return { local: first, peer: second };
  if (second.name === nodeName) return { local: second, peer: first };
  throw new ConfigError(
    `config ${config.path}: this node is "${nodeName}", but the configured nodes are "${first.name}" and "${second.name}"; ` +
      `pass -n NAME to say which one this node is`,
  );
}

export function defaultConfigPath(resource: string): string {
  return path.posix.join(configDirDefault, `${resource}.toml`);
}

/** -c wins; else the resource's file in configDir; else the only *.toml in configDir; else a UsageError. */
export function resolveConfigPath(resource: string | undefined, configPath: string | undefined, configDir = configDirDefault): string {
  if (configPath !== undefined) return configPath;
  if (resource !== undefined) {
    if (!isValidName(resource)) throw new UsageError(`resource name must be ${nameRule}; found ${JSON.stringify(resource)}`);
    return path.join(configDir, `${resource}.toml`);
  }
  let files: string[];
  try {
    files = fs.readdirSync(configDir).filter((f) => f.endsWith('.toml')).sort();
  } catch {
    files = [];
  }
  if (files.length === 1) return path.join(configDir, files[0]);
  if (files.length === 0) {
    throw new UsageError(`no resource named and no *.toml config in ${configDir}; name the resource (e.g. "nraid up r0") or pass -c FILE`);
  }
  const names = files.map((f) => f.slice(0, -'.toml'.length));
  throw new UsageError(
    `no resource named and ${configDir} holds ${files.length} configs (${files.join(', ')}); name one of ${names.join(', ')}, or pass -c FILE`,
  );
}
