/**
 * NRAID_ASSERT (native/nraid_assert.h) is always on: built with -DNDEBUG, as a
 * release build of anything else would be, a broken invariant still prints
 * the expression, file and line and aborts. And no plain assert() is left in
 * native/, whose meaning would depend on the build flags.
 */
import { spawnSync } from 'child_process';
import * as fs from 'fs';
import * as os from 'os';
import * as path from 'path';
import { REPO_ROOT } from '../harness/prereq';

const NATIVE_DIR = path.join(REPO_ROOT, 'native');

const PROGRAM = `
#include <cstdio>
#include "nraid_assert.h"

static int evaluations = 0;
static bool counted(bool value) { evaluations++; return value; }

int main(int argc, char**) {
  NRAID_ASSERT(counted(argc >= 1));  // holds: evaluated exactly once, no abort
  std::printf("evaluations=%d\\n", evaluations);
  std::fflush(stdout);
  if (argc > 1) NRAID_UNREACHABLE("the branch no input reaches");
  NRAID_ASSERT(evaluations == 2);  // line 13: fails
  return 0;
}
`;

describe('NRAID_ASSERT: always on, whatever NDEBUG says', () => {
  let dir: string;
  let binary: string;

  beforeAll(() => {
    dir = fs.mkdtempSync(path.join(os.tmpdir(), 'nraid-assert-'));
    const source = path.join(dir, 'assert_check.cc');
    binary = path.join(dir, 'assert_check');
    fs.writeFileSync(source, PROGRAM);
    const compiled = spawnSync('c++', ['-std=c++20', '-O2', '-DNDEBUG', '-Wall', '-Werror', '-I', NATIVE_DIR, source, '-o', binary], {
      encoding: 'utf8',
    });
    if (compiled.error !== undefined || compiled.status !== 0) {
      throw new Error(`cannot compile the check with c++ (needed to build the addon as well): ${compiled.error?.message ?? compiled.stderr}`);
    }
  });

  afterAll(() => {
    if (dir !== undefined) fs.rmSync(dir, { recursive: true, force: true });
  });

  test('a holding assertion evaluates its expression once; a broken one names expression, file and line, then aborts', () => {
    const run = spawnSync(binary, [], { encoding: 'utf8' });
    expect(run.stdout).toBe('evaluations=1\n');
    expect(run.signal).toBe('SIGABRT');
    expect(run.stderr).toMatch(/^nraid: assertion failed: evaluations == 2 \(.*assert_check\.cc:13, in main\)\n$/);
  });

  test('NRAID_UNREACHABLE aborts with what it says', () => {
    const run = spawnSync(binary, ['unreachable'], { encoding: 'utf8' });
    expect(run.signal).toBe('SIGABRT');
    expect(run.stderr).toMatch(/assertion failed: unreachable: the branch no input reaches \(.*assert_check\.cc:12, in main\)/);
  });

  test('no plain assert() is left in native/ (static_assert is compile time and stays)', () => {
    const offenders: string[] = [];
    for (const name of fs.readdirSync(NATIVE_DIR)) {
      if (!/\.(cc|h)$/.test(name)) continue;
      const lines = fs.readFileSync(path.join(NATIVE_DIR, name), 'utf8').split('\n');
      lines.forEach((line, i) => {
        if (/(^|[^_A-Za-z])assert\s*\(/.test(line) || /#include\s*<(cassert|assert\.h)>/.test(line)) offenders.push(`native/${name}:${i + 1}: ${line.trim()}`);
      });
    }
    expect(offenders).toEqual([]);
  });
});
