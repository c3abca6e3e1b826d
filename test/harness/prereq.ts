/**
 * What an integration test needs from the machine, and a describe() that
 * never skips silently under CI.
 */
import * as fs from 'fs';
import * as path from 'path';
import { execFileSync } from 'child_process';
import { toolEnv } from './exec';

export type Need =
  | 'root'
  | 'fuse'
  | 'loop'
  | 'mkfs.ext4'
  | 'e2fsck'
  | 'ip-netns'
  | 'fio'
  | 'dd'
  /** bin/nraid and the compiled CLI it runs (dist/src/cli.js). */
  | 'nraid-cli'
  /** nbdkit (with its error filter) and nbdfuse: the failing disk (failing-disk.ts). */
  | 'nbdkit'
  /** Debian's PostgreSQL server (initdb, pg_ctl, psql in /usr/lib/postgresql/<major>/bin) and its postgres user. */
  | 'postgresql'
  /** podman, runc and debootstrap: the two-node lab (docker/lab.sh). */
  | 'podman-lab';

/** The bin dir of the newest PostgreSQL Debian installed, or undefined. */
export function postgresBinDir(): string | undefined {
  const root = '/usr/lib/postgresql';
  let majors: string[];
  try {
    majors = fs.readdirSync(root).filter((v) => /^[0-9]+$/.test(v)).sort((a, b) => Number(b) - Number(a));
  } catch {
    return undefined;
  }
  const found = majors.map((v) => path.join(root, v, 'bin')).find((dir) => ['initdb', 'pg_ctl', 'psql'].every((t) => fs.existsSync(path.join(dir, t))));
  return found;
}

// From test/harness/ under jest; from dist/test/harness/ when compiled by tsc (the torture runner).
const HARNESS_UP_TWO = path.resolve(__dirname, '..', '..');
export const REPO_ROOT = path.basename(HARNESS_UP_TWO) === 'dist' ? path.dirname(HARNESS_UP_TWO) : HARNESS_UP_TWO;

/** Absolute path of `name` on PATH (plus the sbin dirs), or undefined. */
export function findExecutable(name: string): string | undefined {
  for (const dir of (toolEnv().PATH ?? '').split(':')) {
    if (dir === '') continue;
    const p = path.join(dir, name);
    try {
      fs.accessSync(p, fs.constants.X_OK);
      if (fs.statSync(p).isFile()) return p;
    } catch {
      // Not here.
    }
  }
  return undefined;
}

function canOpen(p: string, flags: string): string | undefined {
  try {
    fs.closeSync(fs.openSync(p, flags));
    return undefined;
  } catch (e) {
    return (e as NodeJS.ErrnoException).code ?? String(e);
  }
}

function tool(name: string, why: string): string | undefined {
  return findExecutable(name) ? undefined : `${name} (${why}) not found on PATH`;
}

const checks: Record<Need, () => string | undefined> = {
  root: () =>
    process.getuid?.() === 0 ? undefined : `root (running as uid ${process.getuid?.() ?? '?'}; run the suite as root)`,
  fuse: () => {
    const err = canOpen('/dev/fuse', 'r+');
    return err === undefined ? undefined : `/dev/fuse cannot be opened read-write (${err}; modprobe fuse, or run as root)`;
  },
  loop: () => {
    const err = canOpen('/dev/loop-control', 'r+');
    if (err !== undefined) return `/dev/loop-control cannot be opened (${err}; modprobe loop, or run as root)`;
    return tool('losetup', 'util-linux');
  },
  'mkfs.ext4': () => tool('mkfs.ext4', 'e2fsprogs'),
  e2fsck: () => tool('e2fsck', 'e2fsprogs'),
  'ip-netns': () => {
    const ip = findExecutable('ip');
    if (!ip) return 'ip (iproute2) not found on PATH';
    if (!fs.existsSync('/proc/self/ns/net')) return 'network namespaces (/proc/self/ns/net missing)';
    try {
      execFileSync(ip, ['netns', 'list'], { stdio: 'ignore', timeout: 10_000 });
      return undefined;
    } catch (e) {
      return `ip netns does not work here (${(e as Error).message.split('\n')[0]})`;
    }
  },
  fio: () => tool('fio', 'apt-get install fio'),
  dd: () => tool('dd', 'coreutils'),
  nbdkit: () => tool('nbdkit', 'scripts/setup.sh installs it') ?? tool('nbdfuse', 'scripts/setup.sh installs it'),
  postgresql: () => {
    if (postgresBinDir() === undefined) return 'PostgreSQL (initdb, pg_ctl, psql under /usr/lib/postgresql/<major>/bin; scripts/setup.sh installs Debian\'s postgresql)';
    try {
      execFileSync('id', ['-u', 'postgres'], { stdio: 'ignore', timeout: 10_000 });
    } catch {
      return 'the user postgres (made by Debian\'s postgresql package; scripts/setup.sh installs it)';
    }
    return tool('runuser', 'util-linux');
  },
  'podman-lab': () =>
    tool('podman', 'scripts/setup.sh installs it') ?? tool('runc', 'scripts/setup.sh installs it') ?? tool('debootstrap', 'scripts/setup.sh installs it'),
  'nraid-cli': () => {
    const bin = path.join(REPO_ROOT, 'bin', 'nraid');
    const cli = path.join(REPO_ROOT, 'dist', 'src', 'cli.js');
    if (!fs.existsSync(bin)) return `${bin} does not exist`;
    if (!fs.existsSync(cli)) return `${cli} does not exist (build with npx tsc -p tsconfig.json)`;
    return undefined;
  },
};

/** The needs that are not met, each as a sentence an operator can act on. */
export function checkPrerequisites(needs: readonly Need[]): string[] {
  const missing: string[] = [];
  for (const need of new Set(needs)) {
    const check = checks[need];
    if (!check) {
      missing.push(`unknown prerequisite ${JSON.stringify(need)}`);
      continue;
    }
    const problem = check();
    if (problem !== undefined) missing.push(problem);
  }
  return missing;
}

/**
 * jest's describe when every need is met. When something is missing: under
 * CI (CI=true) a describe with one failing test that lists what is missing;
 * elsewhere describe.skip and a console.warn saying why.
 */
export function describeIntegration(name: string, needs: readonly Need[], fn: () => void): void {
  const missing = checkPrerequisites(needs);
  if (missing.length === 0) {
    describe(name, fn);
    return;
  }
  const list = missing.join('; ');
  if (process.env.CI === 'true') {
    describe(name, () => {
      test('prerequisites are present', () => {
        throw new Error(`integration test "${name}" cannot run, missing: ${list}`);
      });
    });
    return;
  }
  console.warn(`skipping integration test "${name}": missing ${list}`);
  describe.skip(name, fn);
}

/**
 * describeIntegration behind an opt-in variable, for a test that cannot be in
 * the suite yet (too long for its 25 minutes, or finding an open defect):
 * without `variable`=1 it is reported as skipped with the reason and how to
 * run it; with it, exactly describeIntegration (a missing need fails under CI).
 */
export function describeOptIn(variable: string, reason: string, name: string, needs: Need[], fn: () => void): void {
  if (process.env[variable] === '1') {
    describeIntegration(name, needs, fn);
    return;
  }
  console.warn(`skipping "${name}": ${reason}; set ${variable}=1 to run it (docs/testing.md)`);
  describe.skip(name, fn);
}
