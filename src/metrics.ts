/**
 * Prometheus metrics (prom-client), off unless `metrics-port` is set: roles,
 * states, out-of-sync bytes, write counters and the data plane's write
 * latency histogram. Values are read from the status and the native counters
 * at scrape time, in one call each. prom-client's default process metrics
 * (process_resident_memory_bytes, nodejs_heap_size_used_bytes, open file
 * descriptors, event-loop lag, ...) are served beside them: an operator
 * watching a daemon's memory needs the V8 heap apart from the rest.
 */
import http from 'node:http';
import client from 'prom-client';
import { isErrnoException, systemError, toNraidError } from './errors';
import type { NativeCounters } from './native';
import type { ResourceStatus } from './state';

const DISK_STATES = ['Diskless', 'Attaching', 'Inconsistent', 'Outdated', 'Consistent', 'UpToDate'];
const CONNECTION_STATES = ['StandAlone', 'Connecting', 'Connected', 'Disconnecting', 'NetworkFailure', 'ProtocolError'];
const REPLICATION_STATES = ['Off', 'Established', 'SyncSource', 'SyncTarget', 'PausedSyncS', 'PausedSyncT', 'VerifyS', 'VerifyT'];

export class MetricsServer {
  private readonly registry = new client.Registry();
  private readonly server: http.Server;

  constructor(
    private readonly status: () => ResourceStatus,
    private readonly counters: () => NativeCounters | null,
    /** Connections the control link refused before authentication, per kind (RefusalKind). */
    private readonly refusedConnections: () => Record<string, number> | null = () => null,
  ) {
    const labels = ['resource', 'node'];
    client.collectDefaultMetrics({ register: this.registry });
    const state = (name: string, help: string, field: 'disk' | 'connection' | 'replication', values: string[]) =>
      new client.Gauge({
        name,
        help,
        labelNames: [...labels, 'state'],
        registers: [this.registry],
        collect: () => {
          const s = this.status();
          for (const value of values) gaugeSet(name, { resource: s.resource, node: s.node, state: value }, s[field] === value ? 1 : 0);
        },
      });
    const gauges = new Map<string, client.Gauge>();
    const gaugeSet = (name: string, labelValues: Record<string, string>, value: number) => gauges.get(name)!.set(labelValues, value);
    gauges.set('nraid_disk_state', state('nraid_disk_state', 'Local disk state (1 for the current one).', 'disk', DISK_STATES));
    gauges.set('nraid_connection_state', state('nraid_connection_state', 'Connection state (1 for the current one).', 'connection', CONNECTION_STATES));
    gauges.set('nraid_replication_state', state('nraid_replication_state', 'Replication state (1 for the current one).', 'replication', REPLICATION_STATES));
    const simple = (name: string, help: string, read: (s: ResourceStatus, c: NativeCounters | null) => number) =>
      new client.Gauge({
        name,
        help,
        labelNames: labels,
        registers: [this.registry],
        collect() {
          const s = status();
          this.set({ resource: s.resource, node: s.node }, read(s, counters()));
        },
      });
    simple('nraid_primary', '1 when this node is Primary.', (s) => (s.role === 'Primary' ? 1 : 0));
    simple('nraid_peer_primary', '1 when the connected peer is Primary.', (s) => (s.peerRole === 'Primary' ? 1 : 0));
    simple('nraid_out_of_sync_bytes', 'Bytes that may differ from the peer.', (s) => s.outOfSyncBytes);
    simple('nraid_writes_total', 'Writes served by the device.', (_s, c) => c?.writes ?? 0);
    simple('nraid_write_bytes_total', 'Bytes written through the device.', (_s, c) => c?.writeBytes ?? 0);
    simple('nraid_flushes_total', 'Flushes served by the device.', (_s, c) => c?.flushes ?? 0);
    simple('nraid_sent_bytes_total', 'Payload bytes sent to the peer.', (_s, c) => c?.bytesSent ?? 0);
    simple('nraid_acked_bytes_total', 'Payload bytes the peer has written.', (_s, c) => c?.bytesAcked ?? 0);
    simple('nraid_lag_bytes', 'Bytes sent or queued and not yet written by the peer.', (_s, c) => c?.lagBytes ?? 0);
    simple('nraid_checksum_errors_total', 'Frames rejected for a checksum.', (_s, c) => c?.checksumErrors ?? 0);
    simple('nraid_protocol_errors_total', 'Frames rejected as protocol errors.', (_s, c) => c?.protocolErrors ?? 0);
    simple('nraid_io_errors_total', 'Local I/O errors.', (_s, c) => c?.ioErrors ?? 0);
    simple('nraid_local_io_errors_total', 'Errors of the backing disk (passed on, or hidden by on-io-error = detach).', (_s, c) => c?.localIoErrors ?? 0);
    simple('nraid_diskless', '1 while the backing disk is detached after an error (on-io-error = detach).', (s) => (s.diskFailure !== null ? 1 : 0));
    simple('nraid_peer_served_reads_total', 'Reads served by the peer while Diskless.', (_s, c) => c?.peerReads ?? 0);
    simple('nraid_peer_served_writes_total', 'Writes completed by the peer alone while Diskless.', (_s, c) => c?.peerWrites ?? 0);
    simple('nraid_resync_sent_bytes_total', 'Resync data this node sent that the peer wrote, over every run of the daemon here.', (s) => s.resyncSentBytesTotal);
    simple('nraid_resync_received_bytes_total', 'Resync data this node received, over every run of the daemon here.', (s) => s.resyncReceivedBytesTotal);
    simple('nraid_resync_percent', 'Progress of the running resync (source or target); 0 when none runs.', (s) => s.resync?.percent ?? 0);
    simple('nraid_resync_left_bytes', 'Bytes the running resync has still to move; 0 when none runs.', (s) => s.resync?.bytesLeft ?? 0);
    simple('nraid_resync_rate_bytes', 'Bytes per second of the running resync since it started; 0 when none runs.', (s) => s.resync?.rateBytesPerSec ?? 0);
    simple('nraid_resync_eta_seconds', 'Seconds the running resync needs still at its rate; -1 when unknown or paused, 0 when none runs.', (s) => (s.resync === null ? 0 : s.resync.etaSeconds ?? -1));
    simple('nraid_resync_paused', '1 while pause-sync holds the resync (on either node).', (s) => (s.resync?.paused ? 1 : 0));
    simple('nraid_resync_throttled', '1 while application I/O holds the resync at resync-min-rate-mib.', (s) => (s.resync?.throttled ? 1 : 0));
    simple('nraid_verify_running', '1 while an online verify runs (nraid verify).', (s) => (s.verify?.running ? 1 : 0));
    simple('nraid_verify_percent', 'Progress of the running or last online verify; 0 when none ran.', (s) => s.verify?.percent ?? 0);
    simple('nraid_verify_mismatch_bytes', 'Bytes the running or last online verify found differing (marked out of sync).', (s) => s.verify?.mismatchBytes ?? 0);
    simple('nraid_resync_zero_bytes', 'Bytes the resyncs of this daemon covered with zero frames instead of data (sparse-aware sync).', (s) => s.resyncSent?.zeroBytes ?? 0);
    simple('nraid_resync_equal_bytes', 'Marked bytes the checksum resyncs of this daemon found equal by digest and did not send.', (s) => s.resyncSent?.equalBytes ?? 0);
    simple('nraid_io_suspended', '1 while writes are suspended (on-no-peer, fence-peer).', (s) => (s.ioSuspended ? 1 : 0));
    simple('nraid_daemon_restarts_total', 'Daemons started again by the holder after a crash, kill or nraid restart.', (s) => s.daemonRestarts?.count ?? 0);
    simple('nraid_daemon_restart_pause_seconds', 'Pause of the last daemon restart: from the death of one daemon until the next served.', (s) => (s.daemonRestarts?.lastPauseMs ?? 0) / 1000);
    simple('nraid_metadata_damage', 'Damaged metadata areas found when the daemon started (superblock slot, activity log, bitmap).', (s) => s.metadataDamage?.length ?? 0);
    const refused = this.refusedConnections;
    new client.Gauge({
      name: 'nraid_link_refused_connections_total',
      help: 'Peer connections refused before authentication, by reason (not-peer: another address; evicted: made room in the handshake pool; malformed, timeout, auth, version, other).',
      labelNames: [...labels, 'reason'],
      registers: [this.registry],
      collect() {
        const s = status();
        for (const [kind, count] of Object.entries(refused() ?? {})) this.set({ resource: s.resource, node: s.node, reason: kind }, count);
      },
    });
    this.server = http.createServer((request, response) => {
      if (request.url !== '/metrics') {
        response.writeHead(404).end('see /metrics\n');
        return;
      }
      this.render()
        .then((body) => response.writeHead(200, { 'Content-Type': this.registry.contentType }).end(body))
        .catch((error: Error) => response.writeHead(500).end(`${error.message}\n`));
    });
  }

  /** prom-client's metrics, plus the latency histogram whose buckets the data plane counts. */
  async render(): Promise<string> {
    const text = await this.registry.metrics();
    const s = this.status();
    const c = this.counters();
    if (c === null) return text;
    const name = 'nraid_write_latency_seconds';
    const lines = [`# HELP ${name} Write latency seen by the device (local write and, per protocol, the peer).`, `# TYPE ${name} histogram`];
    const labels = `resource="${s.resource}",node="${s.node}"`;
    let cumulative = 0;
    c.writeLatencyBuckets.forEach((count, i) => {
      cumulative += count;
      const le = i === c.writeLatencyBuckets.length - 1 ? '+Inf' : String(2 ** i / 1e6);
      lines.push(`${name}_bucket{${labels},le="${le}"} ${cumulative}`);
    });
    lines.push(`${name}_sum{${labels}} ${c.writeLatencyUsTotal / 1e6}`, `${name}_count{${labels}} ${cumulative}`);
    return `${text}${lines.join('\n')}\n`;
  }

  listen(host: string, port: number): Promise<void> {
    return new Promise((resolve, reject) => {
      const refused = (error: Error) =>
        reject(
          isErrnoException(error)
            ? systemError(`cannot serve metrics on ${host}:${port}`, error, error.code === 'EADDRINUSE' ? 'choose a free metrics-port in the config' : 'check metrics-port in the config')
            : toNraidError(error),
        );
      this.server.once('error', refused);
      this.server.listen(port, host, () => {
        this.server.off('error', refused);
        resolve();
      });
    });
  }

  close(): Promise<void> {
    return new Promise((resolve) => this.server.close(() => resolve()));
  }
}
