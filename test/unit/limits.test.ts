/**
 * Limits named once (tidy issue): every bound in src/limits.ts marked
 * "mirrors kX" equals its twin in native/limits.h, read from the C++ source
 * (so one edited without the other fails here), and the activity-log format
 * constants the control plane reads agree with the data plane that writes them.
 */
import * as fs from 'fs';
import * as path from 'path';
import { ACTIVITY_MAGIC } from '../../src/activity-log';
import * as limits from '../../src/limits';
import { LIMITS_H, readConstants } from '../harness/native-source';
import { REPO_ROOT } from '../harness/prereq';

const native = readConstants(fs.readFileSync(LIMITS_H, 'utf8'));

/** [TS name, native name] for every `export const` whose doc comment says "mirrors ... kName". */
function mirrored(source: string): Array<[string, string]> {
  const pairs: Array<[string, string]> = [];
  for (const m of source.matchAll(/\/\*\*((?:(?!\*\/)[\s\S])*)\*\/\s*export const (\w+)/g)) {
    const twin = /\bmirrors (?:native\/limits\.h )?(k\w+)/i.exec(m[1]);
    if (twin !== null) pairs.push([m[2], twin[1]]);
  }
  return pairs;
}

describe('src/limits.ts and native/limits.h', () => {
  const pairs = mirrored(fs.readFileSync(path.join(REPO_ROOT, 'src', 'limits.ts'), 'utf8'));

  test('the mirrored limits are found (the list cannot silently go empty)', () => {
    expect(pairs.map(([ts]) => ts)).toEqual(
      expect.arrayContaining(['sectorBytes', 'blockBytes', 'requestBytesMax', 'frontendThreadsMax', 'activityExtentBytes', 'activityTransactionBytes']),
    );
  });

  test('each mirrored limit equals its C++ twin', () => {
    const table = limits as unknown as Record<string, number>;
    const compared = pairs.map(([ts, cpp]) => ({ ts, cpp, value: table[ts], native: native.get(cpp) }));
    expect(compared).toEqual(compared.map((c) => ({ ...c, native: c.value })));
  });

  test('the activity-log magic the control plane reads is the one the data plane writes', () => {
    expect(ACTIVITY_MAGIC).toBe(native.get('kActivityMagic'));
  });

  test('the comparison can fail (canary): an edited native value is seen', () => {
    const edited = readConstants(fs.readFileSync(LIMITS_H, 'utf8').replace(/kBlockBytes = [^;]+;/, 'kBlockBytes = 8192;'));
    expect(edited.get('kBlockBytes')).toBe(8192);
    expect(edited.get('kBlockBytes')).not.toBe(limits.blockBytes);
  });
});

describe('daemon node flags', () => {
  test("bin/nraid's #! line carries src/limits.ts daemonNodeFlags (systemd runs the daemon through it)", () => {
    const first = fs.readFileSync(path.join(REPO_ROOT, 'bin', 'nraid'), 'utf8').split('\n')[0];
    expect(first).toBe(`#!/usr/bin/env -S node ${limits.daemonNodeFlags.join(' ')}`);
  });
});
