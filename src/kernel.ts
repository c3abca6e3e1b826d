/**
 * What nraid needs from the running kernel, feature by feature, and the check
 * `nraid up` makes before it starts a daemon. Pure over its input (the release
 * string and what exists under /dev), so it is tested with fake inputs; the
 * table is the one README.md ("Kernel requirements") shows.
 *
 * Versions: the FUSE protocol minors come from the changelog in the kernel's
 * include/uapi/linux/fuse.h (Debian 12's 6.1 headers declare 7.38); the Linux
 * release of each from the kernel's history.
 */
import fs from 'node:fs';
import os from 'node:os';
import { KernelError } from './errors';

export interface KernelFeature {
  /** What the feature is called in the kernel (an ioctl, a FUSE flag). */
  name: string;
  /** The first Linux release that has it. */
  linux: readonly [number, number];
  /** The FUSE protocol version that brought it, when it is a FUSE feature. */
  fuse?: string;
  /** What nraid does with it. */
  use: string;
  /** required: `up` refuses without it; optional: nraid works, as `without` says. */
  required: boolean;
  without: string;
}

export const KERNEL_FEATURES: readonly KernelFeature[] = [
  {
    name: 'LOOP_CONFIGURE',
    linux: [5, 8],
    use: 'attaches the exposed loop device with its block size and direct I/O in one ioctl',
    required: true,
    without: 'the exposed device cannot be set up',
  },
  {
    name: 'FUSE_MAX_PAGES',
    linux: [4, 20],
    fuse: '7.28',
    use: 'requests of up to 1 MiB from the loop device',
    required: true,
    without: 'the kernel splits requests into 128 KiB',
  },
  {
    name: 'FOPEN_PARALLEL_DIRECT_WRITES',
    linux: [6, 1],
    fuse: '7.38',
    use: 'direct writes to the volume run in parallel (the frontend threads all get work)',
    required: false,
    without: 'writes to the volume are serialized by the kernel: lower IOPS',
  },
  {
    name: 'FUSE_NOTIFY_RESEND',
    linux: [6, 9],
    fuse: '7.40',
    use: 'reserved for a daemon restart that takes the device back without an error seen above it (not used yet)',
    required: false,
    without: 'nothing today',
  },
  {
    name: 'FUSE over io_uring (CONFIG_FUSE_IO_URING)',
    linux: [6, 14],
    fuse: '7.42',
    use: 'not used (measured gains do not justify it yet; DESIGN.md §11)',
    required: false,
    without: 'nothing',
  },
];

/** The oldest Linux release nraid supports: the newest of the required features. */
export const OLDEST_KERNEL: readonly [number, number] = KERNEL_FEATURES.filter((f) => f.required).reduce<[number, number]>(
  (oldest, f) => (compareVersion(f.linux, oldest) > 0 ? [f.linux[0], f.linux[1]] : oldest),
  [0, 0],
);

export interface KernelFacts {
  /** `uname -r`, e.g. "6.18.44-fc-v1045" or "5.10.0-28-amd64". */
  release: string;
  /** /dev/fuse exists. */
  fuseDevice: boolean;
  /** /dev/loop-control exists. */
  loopControl: boolean;
}

export function readKernelFacts(): KernelFacts {
  return { release: os.release(), fuseDevice: fs.existsSync('/dev/fuse'), loopControl: fs.existsSync('/dev/loop-control') };
}

/** "6.18.44-fc" -> [6, 18]; null when the release does not start with MAJOR.MINOR. */
export function parseKernelRelease(release: string): [number, number] | null {
  const match = /^([0-9]+)\.([0-9]+)/.exec(release);
  return match === null ? null : [Number(match[1]), Number(match[2])];
}

function compareVersion(a: readonly [number, number], b: readonly [number, number]): number {
  return a[0] !== b[0] ? a[0] - b[0] : a[1] - b[1];
}

const shown = (v: readonly [number, number]): string => `${v[0]}.${v[1]}`;

export interface KernelCheck {
  /** What makes `up` refuse, one sentence each (empty: the kernel will do). */
  problems: string[];
  /** Optional features this kernel lacks, with what that costs. */
  missingOptional: string[];
}

/** Checks `facts` against the table: every required feature, /dev/fuse and /dev/loop-control. */
export function checkKernel(facts: KernelFacts): KernelCheck {
  const problems: string[] = [];
  const missingOptional: string[] = [];
  const version = parseKernelRelease(facts.release);
  if (version === null) {
    problems.push(`cannot read the kernel version from the release "${facts.release}" (expected MAJOR.MINOR...); nraid needs Linux ${shown(OLDEST_KERNEL)} or newer`);
  } else {
    for (const feature of KERNEL_FEATURES) {
      if (compareVersion(version, feature.linux) >= 0) continue;
      const what = `${feature.name}${feature.fuse === undefined ? '' : ` (FUSE ${feature.fuse})`}, in Linux ${shown(feature.linux)} and newer`;
      if (feature.required) problems.push(`this kernel (${facts.release}) lacks ${what}: ${feature.without}`);
      else missingOptional.push(`${what}: ${feature.without}`);
    }
  }
  if (!facts.fuseDevice) problems.push('no /dev/fuse: load the fuse module (modprobe fuse) or use a kernel with CONFIG_FUSE_FS');
  if (!facts.loopControl) problems.push('no /dev/loop-control: load the loop module (modprobe loop) or use a kernel with CONFIG_BLK_DEV_LOOP');
  return { problems, missingOptional };
}

/** Throws a KernelError naming every missing piece; `nraid up` calls it before anything else happens. */
export function requireKernel(facts: KernelFacts = readKernelFacts()): KernelCheck {
  const check = checkKernel(facts);
  if (check.problems.length > 0) {
    throw new KernelError(
      `cannot run nraid on this kernel: ${check.problems.join('; ')}. nraid needs Linux ${shown(OLDEST_KERNEL)} or newer with FUSE and loop devices ` +
        '(see "Kernel requirements" in README.md); upgrade the kernel or load the module',
    );
  }
  return check;
}
