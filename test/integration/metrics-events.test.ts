/**
 * The operator's view beyond `status`: the Prometheus endpoint (off unless
 * `metrics-port` is set) and `nraid events` (JSON lines: `exists`, then
 * `change` with the fields that moved), on a real one-node resource.
 */
import { spawn } from 'child_process';
import * as http from 'http';
import { freePorts, makeResource, NRAID_BIN, TestResource } from '../harness/cluster';
import { writeDirect } from '../harness/direct-io';
import { describeIntegration } from '../harness/prereq';

function get(port: number, urlPath: string): Promise<{ status: number; body: string }> {
  return new Promise((resolve, reject) => {
    http
      .get({ host: '127.0.0.1', port, path: urlPath }, (response) => {
        let body = '';
        response.on('data', (chunk) => (body += chunk));
        response.on('end', () => resolve({ status: response.statusCode ?? 0, body }));
      })
      .on('error', reject);
  });
}

/** The value of one sample line, e.g. metric('nraid_primary{resource="r",node="alpha"}'). */
function sample(body: string, name: string, labels: Record<string, string> = {}): number | undefined {
  for (const line of body.split('\n')) {
    if (!line.startsWith(name)) continue;
    const match = /^([a-z_]+)(\{[^}]*\})? (\S+)$/.exec(line);
    if (!match || match[1] !== name) continue;
    const labelText = match[2] ?? '';
    if (Object.entries(labels).every(([k, v]) => labelText.includes(`${k}="${v}"`))) return Number(match[3]);
  }
  return undefined;
}

describeIntegration('metrics and events', ['root', 'loop', 'fuse', 'dd', 'nraid-cli'], () => {
  let r: TestResource;
  let metricsPort: number;

  beforeAll(async () => {
    [metricsPort] = await freePorts(1);
    r = await makeResource({ nodes: 1, sizeBytes: 64 << 20, extra: { 'metrics-port': metricsPort } });
    await r.runOk('alpha', 'create-md');
    await r.runOk('alpha', 'up');
  });

  afterAll(async () => {
    await r?.cleanup();
  });

  test('the Prometheus endpoint follows role, disk state and writes', async () => {
    const before = await get(metricsPort, '/metrics');
    expect(before.status).toBe(200);
    expect(sample(before.body, 'nraid_primary', { node: 'alpha' })).toBe(0);
    expect(sample(before.body, 'nraid_disk_state', { state: 'Inconsistent' })).toBe(1);
    expect(sample(before.body, 'nraid_disk_state', { state: 'UpToDate' })).toBe(0);

    await r.runOk('alpha', 'primary', ['--force']);
    await writeDirect(r.nodes.alpha.device, 0, Buffer.alloc(64 * 4096, 7));
    const after = await get(metricsPort, '/metrics');
    expect(sample(after.body, 'nraid_primary', { node: 'alpha' })).toBe(1);
    expect(sample(after.body, 'nraid_disk_state', { state: 'UpToDate' })).toBe(1);
    const writes = sample(after.body, 'nraid_writes_total') ?? 0;
    expect(writes).toBeGreaterThan(0);
    expect(sample(after.body, 'nraid_write_bytes_total')).toBeGreaterThanOrEqual(64 * 4096);
    // The latency histogram counts every write once, its +Inf bucket equals the count.
    const count = sample(after.body, 'nraid_write_latency_seconds_count');
    expect(count).toBe(writes);
    expect(sample(after.body, 'nraid_write_latency_seconds_bucket', { le: '+Inf' })).toBe(count);
    // Out of sync: nothing has a peer here, so every written block is tracked.
    expect(sample(after.body, 'nraid_out_of_sync_bytes')).toBeGreaterThanOrEqual(64 * 4096);
    expect((await get(metricsPort, '/other')).status).toBe(404);
  });

  test('events streams exists, then a change line when the role changes', async () => {
    const child = spawn(process.execPath, [NRAID_BIN, 'events', '-c', r.configPath, '-n', 'alpha']);
    const lines: Record<string, unknown>[] = [];
    let buffer = '';
    child.stdout.on('data', (chunk: Buffer) => {
      buffer += chunk.toString();
      let newline: number;
      while ((newline = buffer.indexOf('\n')) >= 0) {
        lines.push(JSON.parse(buffer.slice(0, newline)) as Record<string, unknown>);
        buffer = buffer.slice(newline + 1);
      }
    });
    try {
      const deadline = Date.now() + 10_000;
      while (lines.length === 0 && Date.now() < deadline) await new Promise((resolve) => setTimeout(resolve, 50));
      expect(lines[0]).toMatchObject({ type: 'exists', role: 'Primary', resource: r.name, node: 'alpha' });
      await r.runOk('alpha', 'secondary');
      while (!lines.some((l) => l.type === 'change' && l.role === 'Secondary') && Date.now() < deadline + 10_000) {
        await new Promise((resolve) => setTimeout(resolve, 50));
      }
      const change = lines.find((l) => l.type === 'change' && l.role === 'Secondary');
      expect(change).toBeDefined();
      expect(change).toMatchObject({ exposed: false });
      // Only fields that moved: the disk stayed UpToDate.
      expect(change).not.toHaveProperty('disk');
    } finally {
      child.kill('SIGTERM');
    }
  });
});
