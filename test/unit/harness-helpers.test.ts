/**
 * The shared test helpers (test/harness/helpers.ts) read what they claim to:
 * a CLI refusal, the status predicates tests wait on, a numeric status field,
 * a live or dead process. A broken helper would make many tests pass or fail
 * for the wrong reason, so they are pinned here without root.
 */
import { spawn } from 'node:child_process';
import type { NraidStatus } from '../harness/cluster';
import { cliError, connectedUpToDate, num, otherNode, pathExists, processAlive, settled, until } from '../harness/helpers';

const replicating: NraidStatus = {
  resource: 'r0',
  node: 'alpha',
  role: 'Primary',
  disk: 'UpToDate',
  connection: 'Connected',
  replication: 'Established',
  peerDisk: 'UpToDate',
  outOfSyncBytes: 0,
  lagBytes: 0,
  writesInFlight: 0,
};

describe('test/harness/helpers', () => {
  test('cliError reads the one "error: <message> (<code>)" line, and refuses anything else', () => {
    expect(cliError({ code: 1, stdout: '', stderr: 'error: no such thing; do this (NRAID_ERR_CONFIG)\n' })).toEqual({
      message: 'no such thing; do this',
      code: 'NRAID_ERR_CONFIG',
    });
    expect(() => cliError({ code: 0, stdout: '', stderr: 'error: x (NRAID_ERR_CONFIG)\n' })).toThrow('expected exit code 1');
    expect(() => cliError({ code: 1, stdout: '', stderr: 'error: x (ENOENT)\n' })).toThrow('expected exit code 1');
    expect(() => cliError({ code: 1, stdout: '', stderr: 'warning\nerror: x (NRAID_ERR_CONFIG)\n' })).toThrow('expected exit code 1');
  });

  test('settled needs replication, nothing out of sync and nothing in flight; connectedUpToDate only the states', () => {
    expect(settled(replicating)).toBe(true);
    expect(connectedUpToDate(replicating)).toBe(true);
    for (const change of [{ outOfSyncBytes: 4096 }, { lagBytes: 1 }, { writesInFlight: 1 }]) {
      expect({ change, settled: settled({ ...replicating, ...change }) }).toEqual({ change, settled: false });
      expect(connectedUpToDate({ ...replicating, ...change })).toBe(true);
    }
    for (const change of [{ connection: 'Connecting' }, { replication: 'SyncSource' }, { disk: 'Inconsistent' }, { peerDisk: 'DUnknown' }]) {
      expect({ change, connectedUpToDate: connectedUpToDate({ ...replicating, ...change }) }).toEqual({ change, connectedUpToDate: false });
    }
  });

  test('num returns a number field and names the node and field otherwise', () => {
    expect(num(replicating, 'lagBytes')).toBe(0);
    expect(() => num(replicating, 'bytesSent')).toThrow('status of alpha: expected bytesSent to be a number, found undefined');
    expect(() => num({ ...replicating, pid: '12' }, 'pid')).toThrow('found "12"');
  });

  test('otherNode and pathExists', () => {
    expect([otherNode('alpha'), otherNode('beta')]).toEqual(['beta', 'alpha']);
    expect(pathExists('/proc/self')).toBe(true);
    expect(pathExists('/nonexistent/nraid-helpers-test')).toBe(false);
  });

  test('processAlive: this process yes; a child killed with -9 no, also while it is a zombie', async () => {
    expect(processAlive(process.pid)).toBe(true);
    const child = spawn('sleep', ['30'], { stdio: 'ignore' });
    const pid = child.pid!;
    const exited = new Promise<void>((resolve) => child.once('exit', () => resolve()));
    try {
      expect(processAlive(pid)).toBe(true);
      child.kill('SIGKILL');
      await until(`pid ${pid} to die`, () => !processAlive(pid), 5_000);
      expect(processAlive(pid)).toBe(false);
    } finally {
      if (child.exitCode === null && child.signalCode === null) child.kill('SIGKILL');
      await exited;
    }
  });
});
