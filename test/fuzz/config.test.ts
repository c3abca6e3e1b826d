/**
 * Fuzz target 5: the config loader (src/config.ts: smol-toml, then the
 * table-driven checks). Inputs: valid configs made from random values;
 * the same with one value replaced by any TOML value, a key added or
 * removed; their text mutated byte-wise; and TOML-ish text put together
 * from fragments (keys, values of every TOML type, table headers, arrays of
 * tables, comments, stray characters).
 * Property: parseConfig gives a ResourceConfig or a ConfigError whose message
 * names the file, nothing else; a valid config comes back with its values;
 * each case within its time bound.
 * Canary: "every mutated config parses" must fail.
 */
import * as fc from 'fast-check';
import { stringify } from 'smol-toml';
import { ResourceConfig, parseConfig } from '../../src/config';
import { ConfigError } from '../../src/errors';
import * as limits from '../../src/limits';
import { applyMutations, mutations } from './mutate';
import { expectCanaryFails, fuzz, fuzzCases, fuzzTimeLimitMs, jestTimeoutMs } from './fuzz-run';

const CI_CASES = 1000;
const CI_TIME_LIMIT_MS = 8000;
const CASE_TIME_MAX_MS = 1000;
const FILE = '/etc/nraid/fuzz.toml';

type Table = Record<string, unknown>;

// ---- valid configs ---------------------------------------------------------------------------

const nameArb = fc.stringMatching(new RegExp(`^[A-Za-z0-9][A-Za-z0-9_.-]{0,${limits.nameCharsMax - 1}}$`));
const pathArb = fc.array(fc.stringMatching(/^[a-z0-9_.-]{1,12}$/), { minLength: 1, maxLength: 4 }).map((parts) => `/${parts.join('/')}`);
const portArb = fc.integer({ min: limits.portMin, max: limits.portMax });
const hostArb = fc.oneof(fc.ipV4(), fc.constantFrom('localhost', 'alpha.example', 'node-1'), fc.ipV6().map((h) => `[${h}]`));
const secretArb = fc.string({ minLength: limits.secretCharsMin, maxLength: 64 });
const int = (min: number, max: number) => fc.integer({ min, max }).map((n) => BigInt(n));

const validArb: fc.Arbitrary<Table> = fc
  .record({
    resource: nameArb,
    secret: secretArb,
    protocol: fc.option(fc.constantFrom('A', 'B', 'C'), { nil: undefined }),
    pingIntervalMs: fc.option(int(limits.pingIntervalMsMin, 5000), { nil: undefined }),
    frontendThreads: fc.option(int(limits.frontendThreadsMin, limits.frontendThreadsMax), { nil: undefined }),
    onNoPeer: fc.option(fc.constantFrom('continue', 'suspend-io'), { nil: undefined }),
    names: fc.uniqueArray(nameArb, { minLength: 2, maxLength: 2 }),
    hosts: fc.tuple(hostArb, hostArb),
    ports: fc.uniqueArray(portArb, { minLength: 2, maxLength: 2 }),
    disks: fc.uniqueArray(pathArb, { minLength: 2, maxLength: 2 }),
    hooks: fc.option(fc.record({ 'split-brain': pathArb }), { nil: undefined }),
  })
  .map((r) => {
    const t: Table = { resource: r.resource, secret: r.secret };
    if (r.protocol !== undefined) t.protocol = r.protocol;
    if (r.pingIntervalMs !== undefined) {
      t['ping-interval-ms'] = r.pingIntervalMs;
      t['ping-timeout-ms'] = r.pingIntervalMs * 3n;
    }
    if (r.frontendThreads !== undefined) t['frontend-threads'] = r.frontendThreads;
    if (r.onNoPeer !== undefined) t['on-no-peer'] = r.onNoPeer;
    if (r.hooks !== undefined) t.hooks = r.hooks;
    t.nodes = Object.fromEntries(
      r.names.map((name, i) => [
        name,
        { address: `${r.hosts[i]}:${r.ports[i]}`, disk: r.disks[i], device: `/dev/nraid/${r.resource}-${name}`, 'run-dir': `/run/nraid/${r.resource}-${name}` },
      ]),
    );
    return t;
  });

// ---- what may replace a value: any TOML value ---------------------------------------------------

const tomlScalar = fc.oneof(
  fc.string({ maxLength: 40 }),
  fc.string({ minLength: 1000, maxLength: 1100 }),
  fc.bigInt({ min: -(1n << 63n), max: (1n << 63n) - 1n }),
  fc.constantFrom(0n, -1n, 1n, 65535n, 65536n, 2n ** 53n, (1n << 63n) - 1n),
  fc.double(),
  fc.boolean(),
  fc.date({ min: new Date(Date.UTC(1, 0, 1)), max: new Date(Date.UTC(9999, 11, 31)), noInvalidDate: true }),
  nameArb,
  pathArb,
);
const tomlValue: fc.Arbitrary<unknown> = fc.letrec((tie) => ({
  value: fc.oneof({ depthSize: 'small', withCrossShrink: true }, tomlScalar, tie('array'), tie('table')),
  array: fc.array(tie('value'), { maxLength: 3 }),
  table: fc.dictionary(fc.oneof(nameArb, fc.string({ maxLength: 8 })), tie('value'), { maxKeys: 3 }),
})).value;

const TOP_KEYS = ['resource', 'protocol', 'secret', 'ping-interval-ms', 'ping-timeout-ms', 'connect-retry-ms', 'max-lag-bytes', 'max-lag-ms', 'frontend-threads', 'on-no-peer', 'after-sb-0pri', 'metrics-port', 'hooks', 'nodes', 'nodes.X', 'hooks.split-brain', 'hooks.fence-peer', 'unknown-key', 'resourc'];
const NODE_KEYS = ['address', 'disk', 'device', 'run-dir', 'adress'];

type TableEdit = { where: string; nodeKey: string; node: number; value: unknown; remove: boolean };
const tableEdit: fc.Arbitrary<TableEdit> = fc.record({
  where: fc.constantFrom(...TOP_KEYS, 'node'),
  nodeKey: fc.constantFrom(...NODE_KEYS),
  node: fc.nat(1),
  value: tomlValue,
  remove: fc.boolean(),
});

function applyEdit(doc: Table, edit: TableEdit): Table {
  const t = structuredClone(doc);
  let table = t;
  let key = edit.where;
  if (edit.where === 'node') {
    const nodes = t.nodes;
    const node = typeof nodes === 'object' && nodes !== null ? Object.values(nodes as Record<string, unknown>)[edit.node] : undefined;
    if (typeof node !== 'object' || node === null || Array.isArray(node) || node instanceof Date) return t; // an earlier edit replaced it
    table = node as Table;
    key = edit.nodeKey;
  } else if (edit.where.includes('.')) {
    const [parent, child] = edit.where.split('.');
    if (typeof t[parent] !== 'object' || t[parent] === null || Array.isArray(t[parent])) t[parent] = {};
    table = t[parent] as Table;
    key = child;
  }
  if (edit.remove) delete table[key];
  else table[key] = edit.value;
  return t;
}

// ---- TOML-ish text from fragments --------------------------------------------------------------

const fragment = fc.oneof(
  fc.constantFrom(...TOP_KEYS, ...NODE_KEYS, 'nodes.alpha.address', '"quoted key"', "'lit'", 'a.b.c', '__proto__', 'constructor'),
  fc.constantFrom(' = ', '=', '\n', '\r\n', ' ', '\t', '#', '# comment\n', '[', ']', '[[', ']]', '{', '}', ',', '.', '"', "'", '"""', "'''", '\\', '\\u0000', '\\uD800'),
  fc.constantFrom('[nodes.alpha]', '[nodes.beta]', '[hooks]', '[[nodes]]', '[nodes]', '[nodes."a b"]', 'inf', 'nan', '+inf', '-0', '0x1F', '0o7', '0b1', '1_000', '1e400', '07:32:00', '1979-05-27T07:32:00Z', '1979-05-27', '2023-02-30', '9999-12-31T23:59:60Z', 'true', 'false'),
  tomlScalar.map((v) => {
    try {
      return stringify({ v }).replace(/^v = /, '').trimEnd();
    } catch {
      return '';
    }
  }),
  fc.string({ maxLength: 12 }),
  fc.string({ unit: 'binary', maxLength: 6 }),
);
const tomlIsh = fc.array(fragment, { maxLength: 60 }).map((parts) => parts.join(''));

// ---- the harness -----------------------------------------------------------------------------------

type Verdict = { ok: true; config: ResourceConfig } | { ok: false; error: ConfigError };

function load(text: string): Verdict {
  const started = Date.now();
  let verdict: Verdict;
  try {
    verdict = { ok: true, config: parseConfig(text, FILE) };
  } catch (error) {
    if (!(error instanceof ConfigError)) {
      throw new Error(`parseConfig threw ${error instanceof Error ? error.constructor.name : typeof error}, not a ConfigError: ${String(error)}`);
    }
    if (!error.message.startsWith(`config ${FILE}: `) || error.message.length <= `config ${FILE}: `.length) {
      throw new Error(`a ConfigError that does not name the file, or says nothing: ${JSON.stringify(error.message)}`);
    }
    verdict = { ok: false, error };
  }
  const elapsedMs = Date.now() - started;
  if (elapsedMs > CASE_TIME_MAX_MS) throw new Error(`parseConfig took ${elapsedMs} ms for ${text.length} characters`);
  return verdict;
}

function stringifyOrNull(doc: Table): string | null {
  try {
    return stringify(doc);
  } catch {
    return null; // smol-toml cannot write some values (NaN keys, mixed arrays); that is not the loader's input
  }
}

describe('fuzz: config loader', () => {
  const cases = fuzzCases(CI_CASES);
  const timeLimitMs = fuzzTimeLimitMs(CI_TIME_LIMIT_MS);

  test(
    'a valid config comes back with its values',
    async () => {
      await fuzz(
        'config: valid',
        fc.property(validArb, (doc) => {
          const verdict = load(stringify(doc));
          if (!verdict.ok) throw new Error(`a valid config was refused: ${verdict.error.message}\n${stringify(doc)}`);
          const c = verdict.config;
          expect(c.resource).toBe(doc.resource);
          expect(c.secret).toBe(doc.secret);
          expect(c.protocol).toBe(doc.protocol ?? 'C');
          expect(c.nodes.map((n) => n.name)).toEqual(Object.keys(doc.nodes as Table));
          expect(c.nodes.map((n) => n.disk)).toEqual(Object.values(doc.nodes as Record<string, Table>).map((n) => n.disk));
        }),
        { cases: Math.ceil(cases / 4), timeLimitMs: timeLimitMs / 4 },
      );
    },
    jestTimeoutMs(CI_TIME_LIMIT_MS),
  );

  test(
    'a valid config with values replaced, keys added or removed: a config or a ConfigError',
    async () => {
      await fuzz(
        'config: edited',
        fc.property(validArb, fc.array(tableEdit, { minLength: 1, maxLength: 3 }), (doc, edits) => {
          const text = stringifyOrNull(edits.reduce(applyEdit, doc));
          if (text !== null) load(text);
        }),
        { cases, timeLimitMs: timeLimitMs / 4 },
      );
    },
    jestTimeoutMs(CI_TIME_LIMIT_MS),
  );

  test(
    'a valid config\'s text mutated byte-wise, and TOML-ish text from fragments: a config or a ConfigError',
    async () => {
      await fuzz(
        'config: mutated text',
        fc.property(fc.oneof(validArb.map((d) => stringify(d)), tomlIsh), mutations, fc.boolean(), (text, list, mutate) => {
          load(mutate ? applyMutations(Buffer.from(text), list).toString('utf8') : text);
        }),
        { cases, timeLimitMs: timeLimitMs / 3 },
      );
    },
    jestTimeoutMs(CI_TIME_LIMIT_MS),
  );

  test('canary: "every mutated config parses" fails, with a ConfigError', async () => {
    const [doc, list] = await expectCanaryFails(
      'config',
      fc.property(validArb, mutations, (d, l) => load(applyMutations(Buffer.from(stringify(d)), l).toString('utf8')).ok),
      500,
    );
    const verdict = load(applyMutations(Buffer.from(stringify(doc)), list).toString('utf8'));
    expect(verdict.ok).toBe(false);
    if (!verdict.ok) expect(verdict.error.code).toBe('NRAID_ERR_CONFIG');
  });
});
