/**
 * One daemon per resource per node: owns the backing disk, the data-plane
 * pipeline, the exposed device and the admin socket. The main thread runs
 * only control actions; every byte of user data stays in native threads.
 */
import crypto from 'node:crypto';
import { EventEmitter } from 'node:events';
import fs from 'node:fs';
import path from 'node:path';
import net from 'node:net';
import lz4 from 'lz4';
import { AdminServer, AdminStream } from './admin';
import { NodeConfig, ResourceConfig, loadConfig, localAndPeer } from './config';
import { DeviceRecord, cleanupStale, deviceHolder, exposeDevice, unexposeDevice } from './device';
import { BackingDisk } from './disk';
import { ConfigError, DeviceBusyError, MetadataError, NotUpToDateError, NraidError, PeerError, StateError } from './errors';
import { runHook } from './hooks';
import { MetricsServer } from './metrics';
import { ControlLink, SessionInfo } from './link/control-link';
import { extentsToBitmap, newestTransaction } from './activity-log';
import { Logger } from './log';
import { Superblock, UUID_JUST_CREATED, diskStateOf, flagBits, prepareSuperblockWrite, readSuperblock, writeSuperblock } from './metadata';
import { NativeCounters, NativeEventType, PipelineHandle, binding } from './native';
import { NodeState, decodeBitmapChunk, encodeBitmapChunk } from './protocol/control';
import { ConnectionState, DiskState, PeerDiskState, PeerRole, ReplicationState, ResourceStatus, Role } from './state';
import { SplitBrainFacts, SyncDecision, decidedInSync, decideSync, resolveSplitBrain } from './sync-decision';
import { pack, unpack } from 'msgpackr';

/** NodeState flag bit (beyond the superblock's): this node asked to be the split-brain victim. */
export const FLAG_DISCARD_MY_DATA = 1 << 16;
const DRAIN_TIMEOUT_MS = 10_000;
const EXPOSED_BLOCK_BYTES = 4096;
const SPLIT_BRAIN_LINGER_MS = 300;

/** How often the dirty bitmap is written to disk while it changes. */
const BITMAP_PERSIST_INTERVAL_MS = 2_000;
const BITMAP_REQUEST_TIMEOUT_MS = 30_000;

export const ADMIN_SOCKET = 'admin.sock';

export function adminSocketPath(node: NodeConfig): string {
  return path.join(node.runDir, ADMIN_SOCKET);
}

export interface DaemonOptions {
  config: ResourceConfig;
  nodeName: string;
  log: Logger;
  /** mlockall and PR_SET_IO_FLUSHER in the frontend; tests may turn it off. */
  lockMemory?: boolean;
}

function hex(uuid: bigint): string {
  return uuid.toString(16).padStart(16, '0');
}

/** A fresh 64-bit generation UUID, never 0 (none) nor a reserved small value. */
export function mintUuid(): bigint {
  for (;;) {
    const uuid = crypto.randomBytes(8).readBigUInt64LE(0);
    if (uuid > 0xffffn) return uuid;
  }
}

export class Daemon extends EventEmitter {
  readonly config: ResourceConfig;
  readonly local: NodeConfig;
  readonly peer: NodeConfig;
  private readonly log: Logger;
  private readonly lockMemory: boolean;
  private readonly admin: AdminServer;
  private disk: BackingDisk | null = null;
  private pipeline: PipelineHandle | null = null;
  private superblock: Superblock | null = null;
  private device: DeviceRecord | null = null;
  private role: Role = 'Secondary';
  private diskState: DiskState = 'Diskless';
  private lastStatus: ResourceStatus | null = null;
  private link: ControlLink | null = null;
  private connection: ConnectionState = 'StandAlone';
  private replication: ReplicationState = 'Off';
  private peerState: NodeState | null = null;
  private session: SessionInfo | null = null;
  private direction: 'source' | 'target' | null = null;
  /** This session's source has said resync-start or resync-none already. */
  private syncNoticed = false;
  private lastDecision: SyncDecision | null = null;
  private resync: { totalBytes: number; startedAtMs: number; doneBaseBytes: number } | null = null;
  private persistedOutOfSyncBytes = -1;
  private persistTimer: NodeJS.Timeout | null = null;
  private protocol: 'A' | 'B' | 'C';
  private lastLinkError: string | null = null;
  /** Resolves true once this session's direction is decided and a source has merged the target's bitmap. */
  private sessionSetup: Promise<boolean> = Promise.resolve(false);
  /** The superblock of the next generation, armed in the data plane until the first write without a peer. */
  private pendingGeneration: Superblock | null = null;
  private discardMyData = false;
  private splitBrain = false;
  private ioSuspended = false;
  private metrics: MetricsServer | null = null;
  private stopping = false;
  private readonly stopped: Promise<void>;
  private resolveStopped: () => void = () => {};

  constructor(options: DaemonOptions) {
    super();
    this.config = options.config;
    const { local, peer } = localAndPeer(options.config, options.nodeName);
    this.local = local;
    this.peer = peer;
    this.log = options.log;
    this.lockMemory = options.lockMemory ?? true;
    this.admin = new AdminServer(adminSocketPath(local));
    this.stopped = new Promise((resolve) => (this.resolveStopped = resolve));
    this.protocol = options.config.protocol;
  }

  /** Attaches the disk and opens the admin socket. Leaves nothing behind on failure. */
  async start(): Promise<void> {
    fs.mkdirSync(this.local.runDir, { recursive: true, mode: 0o700 });
    for (const line of cleanupStale(this.local.runDir)) this.log.info(line);
    this.diskState = 'Attaching';
    const disk = BackingDisk.open(this.local.disk, { configKey: `nodes.${this.local.name}.disk in ${this.config.path}` });
    try {
      const superblock = readSuperblock(disk);
      this.checkIdentity(superblock);
      this.disk = disk;
      this.pipeline = binding.pipelineCreate(disk.handle, {
        dataSizeBytes: superblock.dataSizeBytes,
        bitmapGranularityBytes: superblock.bitmapGranularityBytes,
        bitmapOffsetBytes: superblock.bitmapOffsetBytes,
        activityLogOffsetBytes: superblock.activityLogOffsetBytes,
        activityLogSizeBytes: superblock.activityLogSizeBytes,
        activityExtentBytes: superblock.activityExtentBytes,
        onEvent: (type, detail) => this.onNativeEvent(type, detail),
      });
      binding.bitmapSet(this.pipeline, 'replace', disk.read(superblock.bitmapOffsetBytes, superblock.bitmapSizeBytes));
      if (superblock.flags.wasPrimary || superblock.flags.crashedPrimary) this.recoverActivityLog(disk, superblock);
      if (superblock.flags.wasPrimary) {
        // The last run ended while Primary without a clean `secondary` or `down`: a crash.
        superblock.flags.crashedPrimary = true;
        superblock.flags.wasPrimary = false;
        this.log.warn('the previous run ended while Primary without a clean shutdown (crashed primary)');
      }
      this.superblock = writeSuperblock(disk, superblock);
      this.diskState = diskStateOf(this.superblock);
      this.registerCommands();
      await this.admin.listen();
    } catch (error) {
      if (this.pipeline !== null) binding.pipelineDestroy(this.pipeline);
      this.pipeline = null;
      this.disk = null;
      disk.close();
      this.diskState = 'Diskless';
      throw error;
    }
    this.log.info('up', { disk: this.local.disk, dataSizeBytes: this.superblock.dataSizeBytes, diskState: this.diskState });
    this.persistedOutOfSyncBytes = this.counters()?.outOfSyncBytes ?? 0;
    this.persistTimer = setInterval(() => this.persistBitmapIfChanged(), BITMAP_PERSIST_INTERVAL_MS);
    this.persistTimer.unref();
    await this.startLink();
    if (this.config.metricsPort !== null) {
      const metrics = new MetricsServer(() => this.status(), () => this.counters());
      try {
        await metrics.listen(this.local.host, this.config.metricsPort);
      } catch (error) {
        await this.link?.stop();
        this.link = null;
        await this.admin.close();
        if (this.persistTimer !== null) clearInterval(this.persistTimer);
        if (this.pipeline !== null) binding.pipelineDestroy(this.pipeline);
        this.pipeline = null;
        this.disk?.close();
        this.disk = null;
        throw new ConfigError(
          `metrics-port ${this.config.metricsPort} on ${this.local.host} is not free (${(error as Error).message}); ` +
            'choose another metrics-port in the config or stop what listens there',
        );
      }
      this.metrics = metrics;
    }
    this.noteChange();
  }

  /**
   * A Primary that crashed may have written blocks its peer never saw: every
   * extent its activity log names is marked out of sync (not the whole device).
   */
  private recoverActivityLog(disk: BackingDisk, sb: Superblock): void {
    const transaction = newestTransaction(disk.read(sb.activityLogOffsetBytes, sb.activityLogSizeBytes));
    if (transaction === null || transaction.extents.length === 0) return;
    const words = extentsToBitmap(
      transaction.extents,
      transaction.extentBytes || sb.activityExtentBytes,
      sb.bitmapGranularityBytes,
      sb.dataSizeBytes,
      binding.bitmapGet(this.pipeline!).length,
    );
    binding.bitmapSet(this.pipeline!, 'merge', words);
    this.log.warn('crashed primary: activity-log extents marked out of sync', { extents: transaction.extents.length });
  }

  /** Resolves when the daemon has shut down (after `down` or a signal). */
  whenStopped(): Promise<void> {
    return this.stopped;
  }

  private checkIdentity(superblock: Superblock): void {
    if (superblock.resource !== this.config.resource) {
      throw new MetadataError(
        `backing device ${this.local.disk} holds metadata of resource "${superblock.resource}", not "${this.config.resource}"; ` +
          'check the config, or run nraid create-md --force to give the disk to this resource (its data becomes unusable)',
      );
    }
  }

  private get sb(): Superblock {
    if (this.superblock === null) throw new StateError(`resource ${this.config.resource} has no disk attached`);
    return this.superblock;
  }

  /** Adopts the next generation if the data plane has written it (first write without a peer). */
  private adoptWrittenGeneration(): void {
    if (this.pipeline === null || this.pendingGeneration === null) return;
    if (binding.generationTake(this.pipeline, true) !== 'written') return;
    binding.generationTake(this.pipeline);
    this.superblock = this.pendingGeneration;
    this.pendingGeneration = null;
    this.diskState = diskStateOf(this.superblock);
    this.log.info('new generation: first write without the peer', { current: this.superblock.uuids.current.toString(16), bitmap: this.superblock.uuids.bitmap.toString(16) });
    this.link?.sendState();
  }

  private persist(change: (sb: Superblock) => void): void {
    // A superblock write must not race the data plane's armed one: settle it first, re-arm after.
    let rearm = false;
    if (this.pipeline !== null && this.pendingGeneration !== null) {
      this.adoptWrittenGeneration();
      if (this.pendingGeneration !== null && binding.generationTake(this.pipeline) === 'armed') rearm = true;
      this.pendingGeneration = null;
    }
    this.persistNow(change);
    if (rearm) this.startNewGeneration();
  }

  private persistNow(change: (sb: Superblock) => void): void {
    const next = { ...this.sb, flags: { ...this.sb.flags }, uuids: { ...this.sb.uuids, history: [...this.sb.uuids.history] as [bigint, bigint] } };
    change(next);
    this.superblock = writeSuperblock(this.disk!, next);
    this.diskState = diskStateOf(this.superblock);
  }

  status(): ResourceStatus {
    this.adoptWrittenGeneration();
    const counters = this.counters();
    const sb = this.superblock;
    return {
      resource: this.config.resource,
      node: this.local.name,
      peer: this.peer.name,
      role: this.role,
      disk: this.diskState,
      connection: this.connection,
      replication: this.replication,
      peerRole: this.peerRole(),
      peerDisk: this.peerDisk(),
      outOfSyncBytes: counters?.outOfSyncBytes ?? 0,
      protocol: this.protocol,
      device: this.local.device,
      exposed: this.device !== null,
      loopDevice: this.device?.loopDevice ?? null,
      backingDisk: this.local.disk,
      dataSizeBytes: sb?.dataSizeBytes ?? 0,
      uuids: {
        current: hex(sb?.uuids.current ?? 0n),
        bitmap: hex(sb?.uuids.bitmap ?? 0n),
        history: [hex(sb?.uuids.history[0] ?? 0n), hex(sb?.uuids.history[1] ?? 0n)],
      },
      writes: counters?.writes ?? 0,
      writeBytes: counters?.writeBytes ?? 0,
      reads: counters?.reads ?? 0,
      readBytes: counters?.readBytes ?? 0,
      flushes: counters?.flushes ?? 0,
      ioErrors: counters?.ioErrors ?? 0,
      requestsInFlight: counters?.requestsInFlight ?? 0,
      bytesSent: counters?.bytesSent ?? 0,
      bytesAcked: counters?.bytesAcked ?? 0,
      bytesReceived: counters?.bytesReceived ?? 0,
      bytesApplied: counters?.bytesApplied ?? 0,
      writesInFlight: counters?.framesInFlight ?? 0,
      lagBytes: counters?.lagBytes ?? 0,
      lagSeconds: (counters?.lagUs ?? 0) / 1e6,
      checksumErrors: counters?.checksumErrors ?? 0,
      protocolErrors: counters?.protocolErrors ?? 0,
      linkFailures: counters?.linkFailures ?? 0,
      resync: this.resyncProgress(counters),
      lastLinkError: this.lastLinkError,
      syncDecision: this.lastDecision?.kind ?? null,
      splitBrain: this.splitBrain,
      ioSuspended: this.ioSuspended,
      discardMyData: this.discardMyData,
      pid: process.pid,
    };
  }

  private counters(): NativeCounters | null {
    return this.pipeline !== null ? binding.pipelineCounters(this.pipeline) : null;
  }

  private peerRole(): PeerRole {
    return this.connection === 'Connected' && this.peerState ? this.peerState.role : 'Unknown';
  }

  private peerDisk(): PeerDiskState {
    return this.connection === 'Connected' && this.peerState ? this.peerState.disk : 'DUnknown';
  }

  private resyncProgress(counters: NativeCounters | null): ResourceStatus['resync'] {
    if (this.resync === null || counters === null || this.direction !== 'source') return null;
    const done = Math.max(0, counters.resyncBytesDone - this.resync.doneBaseBytes);
    const left = counters.outOfSyncBytes;
    const elapsedS = Math.max(0.001, (Date.now() - this.resync.startedAtMs) / 1000);
    const rate = done / elapsedS;
    const total = Math.max(this.resync.totalBytes, done + left);
    return {
      percent: total === 0 ? 100 : Math.min(100, (100 * (total - left)) / total),
      bytesLeft: left,
      bytesDone: done,
      rateBytesPerSec: Math.round(rate),
      etaSeconds: rate > 0 ? left / rate : null,
    };
  }

  /** Emits `change` with the state fields that moved (counters are not events). */
  private noteChange(): void {
    const status = this.status();
    const keys: (keyof ResourceStatus)[] = ['role', 'disk', 'connection', 'replication', 'peerRole', 'peerDisk', 'exposed', 'loopDevice', 'protocol', 'syncDecision', 'splitBrain', 'ioSuspended'];
    const changed: Partial<ResourceStatus> = {};
    for (const key of keys) {
      if (this.lastStatus === null || this.lastStatus[key] !== status[key]) (changed as Record<string, unknown>)[key] = status[key];
    }
    this.lastStatus = status;
    if (Object.keys(changed).length > 0) this.emit('change', changed);
  }

  async primary(force: boolean): Promise<ResourceStatus> {
    if (this.role === 'Primary') return this.status();
    if (this.connection === 'Connected' && this.peerState?.role === 'Primary') {
      throw new StateError(
        `cannot promote ${this.config.resource}: the peer ${this.peer.name} is Primary; demote it first (nraid secondary on ${this.peer.name}) or use nraid switchover`,
      );
    }
    if (this.replication === 'SyncTarget') {
      throw new NotUpToDateError(
        `cannot promote ${this.config.resource}: local disk is Inconsistent (resync from ${this.peer.name} in progress); wait for it to finish`,
      );
    }
    let minted = false;
    if (this.diskState !== 'UpToDate') {
      if (!force) {
        throw new NotUpToDateError(
          `cannot promote ${this.config.resource}: local disk is ${this.diskState}; ` +
            'connect to an UpToDate peer and wait for the resync, or use --force to accept this data as the newest',
        );
      }
      this.log.warn('forced promotion', { disk: this.diskState });
      this.persist((sb) => {
        sb.flags.consistent = true;
        sb.flags.wasUpToDate = true;
        sb.flags.outdated = false;
        // The data is declared the newest: a new generation starts here. The one it leaves
        // becomes the bitmap UUID, so a peer still at it gets a bitmap resync, not a full one.
        const left = sb.uuids.current;
        if (left !== UUID_JUST_CREATED && left !== 0n) {
          if (sb.uuids.bitmap === 0n) sb.uuids.bitmap = left;
          else sb.uuids.history = [left, sb.uuids.history[0]];
        }
        sb.uuids.current = mintUuid();
      });
      minted = true;
    }
    // Promoted without its peer: what it writes now, the peer misses.
    if (this.connection !== 'Connected' && !minted) this.startNewGeneration();
    this.persist((sb) => {
      sb.flags.wasPrimary = true;
      sb.primarySinceMs = Date.now();
    });
    this.persistBitmap();  // what the old log covered is in the bitmap now, durably
    binding.activityLogReset(this.pipeline!);
    this.device = exposeDevice({
      pipeline: this.pipeline!,
      runDir: this.local.runDir,
      devicePath: this.local.device,
      source: `nraid:${this.config.resource}:${this.local.name}`,
      threads: this.config.frontendThreads,
      // 4 KiB logical blocks whatever the backing disks have: every request fits both
      // a 512-byte and a 4Kn disk on either node, with O_DIRECT.
      blockBytes: Math.max(EXPOSED_BLOCK_BYTES, this.disk!.logicalBlockBytes),
      lockMemory: this.lockMemory,
    });
    this.role = 'Primary';
    this.log.info('promoted', { device: this.local.device, loopDevice: this.device.loopDevice });
    this.link?.sendState();
    // The data link runs from the Primary: turn it around if it ran the other way. After a
    // forced promotion the generations differ now, so the handshake decides the sync anew:
    // also when a handshake is under way (Connecting), as the peer may already hold our
    // old state and would decide on it (both disks new: no sync, and a peer taken as in sync).
    const renegotiate = minted && this.link !== null && this.link.connectionState !== 'StandAlone';
    if (renegotiate || (this.connection === 'Connected' && this.direction !== 'source')) {
      // After this call's reply has gone out (it may be the peer's switchover request).
      const reason = minted ? 'a new generation starts: renegotiating the sync' : 'the new Primary becomes the source';
      setTimeout(() => this.dropSession(reason), 20);
    }
    this.noteChange();
    return this.status();
  }

  private refuseWhileSuspended(what: string): void {
    if (!this.ioSuspended) return;
    throw new StateError(
      `cannot ${what} ${this.config.resource}: its I/O is suspended (on-no-peer = suspend-io or a failed fence-peer hook); ` +
        'writers are waiting on the device: reconnect the peer or run nraid resume-io first',
    );
  }

  async secondary(): Promise<ResourceStatus> {
    if (this.role === 'Secondary') return this.status();
    this.refuseWhileSuspended('demote');
    if (this.device !== null) {
      unexposeDevice(this.device, this.pipeline!, this.local.runDir);
      this.device = null;
    }
    this.cancelNewGeneration();
    this.persist((sb) => {
      sb.flags.wasPrimary = false;
    });
    this.role = 'Secondary';
    this.log.info('demoted');
    this.link?.sendState();
    this.noteChange();
    return this.status();
  }

  /** Flushes, takes the device away, closes the disk and the socket. Refuses while the device is in use. */
  async down(): Promise<void> {
    if (this.stopping) return;
    this.refuseWhileSuspended('take down');
    if (this.device?.loopDevice) {
      const holder = deviceHolder(this.device.loopDevice);
      if (holder !== null) {
        throw new DeviceBusyError(
          `cannot take ${this.config.resource} down: device ${this.local.device} is in use (${holder}); unmount or close it first`,
        );
      }
    }
    this.stopping = true;
    try {
      if (this.role === 'Primary') await this.secondary();
      if (this.persistTimer !== null) clearInterval(this.persistTimer);
      if (this.metrics !== null) await this.metrics.close();
      if (this.link !== null) {
        await this.link.stop();
        this.link = null;
      }
      if (this.pipeline !== null) {
        binding.linkDetach(this.pipeline, 'down');
        this.persistBitmap();
        binding.pipelineFlush(this.pipeline);
        binding.pipelineDestroy(this.pipeline);
        this.pipeline = null;
      }
      if (this.disk !== null) {
        this.disk.flush();
        this.disk.close();
        this.disk = null;
      }
      this.diskState = 'Diskless';
      this.log.info('down');
    } finally {
      // The reply to `down` goes out before the socket closes.
      setImmediate(() => {
        void this.admin.close().then(() => this.resolveStopped());
      });
    }
  }


  // ---- the peer: control link, data link, resync ----

  private nodeState(): NodeState {
    this.adoptWrittenGeneration();
    const sb = this.superblock;
    let flags = 0;
    if (sb) for (const [name, bit] of Object.entries(flagBits)) if (sb.flags[name as keyof typeof sb.flags]) flags |= bit;
    if (this.discardMyData) flags |= FLAG_DISCARD_MY_DATA;
    return {
      role: this.role,
      disk: this.diskState,
      dataSizeBytes: BigInt(sb?.dataSizeBytes ?? 0),
      uuids: sb ? { current: sb.uuids.current, bitmap: sb.uuids.bitmap, history: [...sb.uuids.history] } : { current: 0n, bitmap: 0n, history: [0n, 0n] },
      flags,
      protocol: this.protocol,
    } as NodeState;
  }

  private async startLink(): Promise<void> {
    const link = new ControlLink({
      resource: this.config.resource,
      local: { name: this.local.name, host: this.local.host, port: this.local.port },
      peer: { name: this.peer.name, host: this.peer.host, port: this.peer.port },
      secret: this.config.secret,
      pingIntervalMs: this.config.pingIntervalMs,
      pingTimeoutMs: this.config.pingTimeoutMs,
      connectRetryMs: this.config.connectRetryMs,
      getState: () => this.nodeState(),
      log: (level, message, fields) => this.log[level](message, fields),
    });
    this.link = link;
    link.on('connectionState', (state) => {
      this.connection = state;
      this.noteChange();
    });
    link.on('connected', (info) => {
      this.onSession(info).catch((error: Error) => this.dropSession(`session setup failed: ${error.message}`));
    });
    link.on('peerState', (state) => {
      this.peerState = state;
      this.noteChange();
    });
    link.on('disconnected', (event) => this.onSessionEnd(event.reason));
    link.on('refused', (event) => {
      this.lastLinkError = event.reason;
      this.emit('change', { lastLinkError: event.reason });
    });
    link.on('dataSocket', (socket, info) => {
      socket.on('error', () => {});
      // The acceptor attaches only once its side of the handshake is done: direction
      // decided and, as a source, the target's bitmap merged (else the resync misses it).
      void this.sessionSetup.then((ready) => {
        if (!ready || this.session?.id !== info.id) {
          socket.destroy();
          return;
        }
        this.attachData(socket, info);
      });
    });
    link.on('notice', (kind, payload) => this.onNotice(kind, payload));
    link.onRequest('bitmap', () => this.encodeBitmap());
    link.onRequest('split-brain-facts', () => pack(this.splitBrainFacts()));
    link.onRequest('switchover', async () => {
      await this.switchover();
      return Buffer.alloc(0);
    });
    link.onRequest('switchover-promote', (payload) => this.onSwitchoverPromote(payload));
    await link.start();
    link.connect();
  }

  private sideView(state: NodeState | null): Parameters<typeof decideSync>[0] {
    const s = state ?? this.nodeState();
    return { uuids: s.uuids as Parameters<typeof decideSync>[0]['uuids'], disk: s.disk, primary: s.role === 'Primary' };
  }

  private async onSession(info: SessionInfo): Promise<void> {
    let setupDone: (ready: boolean) => void = () => {};
    this.sessionSetup = new Promise((resolve) => (setupDone = resolve));
    try {
      setupDone(await this.setUpSession(info));
    } catch (error) {
      setupDone(false);
      throw error;
    }
  }

  /** Decides the sync and the direction; true when the data link may be attached. */
  private async setUpSession(info: SessionInfo): Promise<boolean> {
    this.session = info;
    this.adoptWrittenGeneration();
    this.peerState = info.peerState;
    let decision = decideSync(this.sideView(null), this.sideView(info.peerState));
    if (decision.kind === 'split-brain') {
      let peerFacts: SplitBrainFacts | null = null;
      try {
        peerFacts = unpack(await this.link!.request('split-brain-facts', Buffer.alloc(0))) as SplitBrainFacts;
      } catch (error) {
        // The peer found the split brain first and ended the session: it stands.
        this.log.warn('split brain: the peer left before answering', { error: (error as Error).message });
      }
      if (peerFacts !== null && this.session !== info) return false;
      if (peerFacts !== null) decision = resolveSplitBrain(decision, this.splitBrainFacts(), peerFacts, this.config.afterSb0pri);
    }
    this.lastDecision = decision;
    this.log.info('peer connected', { peer: info.peerHello.nodeName, decision: decision.kind, reason: decision.reason });
    if (decision.kind === 'split-brain') this.onSplitBrain(decision.reason);
    if (decision.kind !== 'split-brain' && this.role === 'Primary' && info.peerState.role === 'Primary') {
      this.refuseSession('both nodes are Primary; demote one with nraid secondary');
      return false;
    }
    if (decision.kind === 'split-brain' || decision.kind === 'unrelated') {
      // Give the peer a moment to ask for our facts and find the same, so both sides report it.
      await new Promise((resolve) => setTimeout(resolve, SPLIT_BRAIN_LINGER_MS));
      this.refuseSession(
        decision.kind === 'split-brain'
          ? `split brain: ${decision.reason}; choose the node whose changes to drop and run nraid connect --discard-my-data there`
          : `unrelated data: ${decision.reason}; run create-md on the node that should receive a full sync`,
      );
      return false;
    }
    let source: boolean;
    if (decision.source !== null) source = decision.source === 'local';
    else source = this.role === 'Primary' || (info.peerState.role !== 'Primary' && info.dialer);
    if (this.role === 'Primary' && !source) {
      this.refuseSession(`this node is Primary but its data is older than the peer's (${decision.reason})`);
      return false;
    }
    this.direction = source ? 'source' : 'target';
    if (source) {
      // A target that was invalidated (or never completed a full sync) gets every block.
      const peerWantsFull = (info.peerState.flags & flagBits.fullSyncNeeded) !== 0;
      if (decision.kind === 'full' || peerWantsFull) binding.bitmapSet(this.pipeline!, 'all');
      // The target's own dirty regions (written while it was apart) go back too.
      const reply = await this.link!.request('bitmap', Buffer.alloc(0), BITMAP_REQUEST_TIMEOUT_MS);
      if (this.session !== info) return false;
      binding.bitmapSet(this.pipeline!, 'merge', this.decodeBitmap(reply));
    }
    if (info.dialer) {
      const socket = await this.link!.openDataSocket();
      if (this.session !== info) {
        socket.destroy();
        return false;
      }
      this.attachData(socket, info);
    }
    return true;
  }

  private refuseSession(reason: string): void {
    this.log.warn('session refused', { reason });
    this.lastLinkError = reason;
    this.link?.disconnect(reason);
    this.emit('change', { lastLinkError: reason, connection: 'StandAlone' });
  }

  private attachData(socket: net.Socket, info: SessionInfo): void {
    const fd = (socket as unknown as { _handle?: { fd?: number } })._handle?.fd;
    socket.on('error', () => {});
    if (typeof fd !== 'number' || fd < 0) {
      socket.destroy();
      this.dropSession('the data socket has no file descriptor');
      return;
    }
    try {
      binding.linkAttach(this.pipeline!, fd, {
        mode: this.direction!,
        sendHelloFirst: !info.dialer,
        protocol: this.protocol,
        maxLagBytes: this.config.maxLagBytes,
        maxLagMs: this.config.maxLagMs,
      });
    } finally {
      socket.destroy();
    }
    this.log.info('data link attached', { direction: this.direction, protocol: this.protocol });
    this.lastLinkError = null;
    if (this.direction === 'source' && this.ioSuspended) this.resumeIo('the peer is back');
    this.cancelNewGeneration();
    this.splitBrain = false;
    // A target is a SyncTarget until the source says what it sends (resync-start)
    // or that there is nothing (resync-none), which may have come first on the
    // control link. Reporting Established before that showed a split-brain
    // victim as Established and UpToDate for a few milliseconds before its
    // resync began.
    if (this.direction === 'source') this.beginResyncIfNeeded();
    else if (!this.syncNoticed) this.replication = 'SyncTarget';
    this.noteChange();
  }

  private beginResyncIfNeeded(): void {
    const counters = this.counters()!;
    if (counters.outOfSyncBytes === 0) {
      this.replication = 'Established';
      this.link?.notice('resync-none', Buffer.alloc(0));
      this.finishSyncAsSource();
      return;
    }
    this.resync = { totalBytes: counters.outOfSyncBytes, startedAtMs: Date.now(), doneBaseBytes: counters.resyncBytesDone };
    this.replication = 'SyncSource';
    this.link?.notice('resync-start', Buffer.from(String(counters.outOfSyncBytes)));
    binding.resyncStart(this.pipeline!);
    this.log.info('resync started', { bytes: counters.outOfSyncBytes });
  }

  /** The source's generation after a resync: the bitmap UUID goes to history. */
  private finishSyncAsSource(): void {
    if ((this.sb.uuids.bitmap !== 0n || this.sb.flags.crashedPrimary) && this.connection === 'Connected') {
      this.persist((sb) => {
        if (sb.uuids.bitmap !== 0n) sb.uuids.history = [sb.uuids.bitmap, sb.uuids.history[0]];
        sb.uuids.bitmap = 0n;
        sb.flags.crashedPrimary = false;
      });
    }
    this.persistBitmap();
    this.link?.sendState();
  }

  private onNotice(kind: string, payload: Buffer): void {
    if (kind === 'resync-start' || kind === 'resync-none' || kind === 'resync-done') this.syncNoticed = true;
    switch (kind) {
      case 'resync-start':
        // This node is the target: Inconsistent until every block has arrived.
        this.replication = 'SyncTarget';
        this.persist((sb) => {
          sb.flags.consistent = false;
          sb.flags.resyncInProgress = true;
          // Joining the source's generation now lets an interrupted resync resume from the
          // source's persisted bitmap instead of starting over (it stays Inconsistent until done).
          if (this.peerState !== null) {
            sb.uuids.current = this.peerState.uuids.current;
            sb.uuids.bitmap = 0n;
            sb.uuids.history = [this.peerState.uuids.history[0], this.peerState.uuids.history[1]];
          }
        });
        this.log.info('resync started as target', { bytes: Number(payload.toString()) });
        this.link?.sendState();
        break;
      case 'resync-none':
      case 'resync-done': {
        this.replication = 'Established';
        const peer = this.peerState;
        // Not after "both disks are new": the source may have been force-promoted since
        // (its state says UpToDate), but nothing was ever sent; the next session full-syncs.
        const inSync = this.lastDecision !== null && decidedInSync(this.lastDecision);
        if (this.direction === 'target' && peer && peer.disk === 'UpToDate' && inSync) {
          binding.bitmapSet(this.pipeline!, 'replace', Buffer.alloc(binding.bitmapGet(this.pipeline!).length));
          this.persist((sb) => {
            sb.flags.consistent = true;
            sb.flags.wasUpToDate = true;
            sb.flags.outdated = false;
            sb.flags.resyncInProgress = false;
            sb.flags.crashedPrimary = false;
            sb.flags.fullSyncNeeded = false;
            sb.uuids.current = peer.uuids.current;
            sb.uuids.bitmap = 0n;
            sb.uuids.history = [peer.uuids.history[0], peer.uuids.history[1]];
          });
          this.persistBitmap();
          this.discardMyData = false;
          this.link?.sendState();
          if (kind === 'resync-done') this.log.info('resync finished: UpToDate');
        }
        break;
      }
      case 'adjust':
        this.adjust().catch((error: Error) => this.log.warn('adjust from the peer failed', { error: error.message }));
        break;
      default:
        this.log.warn('unknown notice from the peer', { kind });
    }
    this.noteChange();
  }

  private onNativeEvent(type: NativeEventType, detail: string): void {
    if (this.stopping) return;
    if (type === 'generation-started') {
      this.adoptWrittenGeneration();
      return;
    }
    if (type === 'link-lost') {
      this.log.warn('data link lost', { reason: detail });
      this.lastLinkError = detail;
      this.dropSession(`data link lost: ${detail}`);
    } else if (type === 'resync-done') {
      if (this.direction !== 'source' || this.replication !== 'SyncSource') return;
      this.log.info('resync finished', { bytes: Number(detail) });
      this.replication = 'Established';
      this.resync = null;
      this.finishSyncAsSource();
      this.link?.notice('resync-done', Buffer.alloc(0));
      this.noteChange();
    }
  }

  /** Ends this session and, if the operator still wants a connection, dials again. */
  private dropSession(reason: string): void {
    if (this.link === null) return;
    const want = this.link.connectionState !== 'StandAlone';
    this.link.disconnect(reason);
    if (want) this.link.connect();
  }

  private onSessionEnd(reason: string): void {
    this.log.warn('peer disconnected', { reason });
    if (this.pipeline !== null) binding.linkDetach(this.pipeline, reason);
    const wasConnected = this.session !== null;
    this.session = null;
    this.direction = null;
    this.syncNoticed = false;
    this.resync = null;
    this.replication = 'Off';
    this.peerState = null;
    if (wasConnected && this.role === 'Primary') {
      this.startNewGeneration();
      this.applyNoPeerPolicy();
    }
    this.persistBitmap();
    this.noteChange();
  }

  /** on-no-peer and fence-peer: may the Primary go on writing without its peer? */
  private applyNoPeerPolicy(): void {
    const fence = this.config.hooks.fencePeer;
    if (this.config.onNoPeer !== 'suspend-io' && fence === null) return;
    this.suspendIo(fence !== null ? 'fencing the peer' : 'on-no-peer = suspend-io');
    if (fence === null) return;
    runHook(fence, this.hookEnv('fence-peer'), this.log)
      .then((code) => {
        if (code === 0 && this.config.onNoPeer === 'continue' && this.connection !== 'Connected') {
          this.resumeIo('the fence-peer hook succeeded');
        } else if (code !== 0) {
          this.log.warn('fence-peer hook failed: I/O stays suspended until the peer returns or nraid resume-io', { exitCode: code });
        }
      })
      .catch((error: Error) => this.log.error('fence-peer hook could not run', { error: error.message }));
  }

  private suspendIo(reason: string): void {
    if (this.pipeline === null || this.ioSuspended) return;
    binding.setSuspended(this.pipeline, true);
    this.ioSuspended = true;
    this.log.warn('I/O suspended', { reason });
    this.emit('change', { ioSuspended: true });
  }

  private resumeIo(reason: string): void {
    if (this.pipeline === null || !this.ioSuspended) return;
    binding.setSuspended(this.pipeline, false);
    this.ioSuspended = false;
    this.log.info('I/O resumed', { reason });
    this.emit('change', { ioSuspended: false });
  }

  /** A signal asks the daemon to stop: writers must not stay blocked behind a suspension. */
  resumeIoForShutdown(): void {
    this.resumeIo('shutting down');
  }

  async resumeIoCommand(): Promise<ResourceStatus> {
    if (!this.ioSuspended) throw new StateError(`I/O of ${this.config.resource} is not suspended; nothing to resume`);
    this.resumeIo('nraid resume-io');
    return this.status();
  }

  private hookEnv(event: string): Record<string, string> {
    return {
      NRAID_EVENT: event,
      NRAID_RESOURCE: this.config.resource,
      NRAID_NODE: this.local.name,
      NRAID_PEER: this.peer.name,
      NRAID_PEER_ADDRESS: this.peer.address,
      NRAID_ROLE: this.role,
      NRAID_DISK: this.diskState,
    };
  }

  private splitBrainFacts(): SplitBrainFacts {
    return {
      node: this.local.name,
      primary: this.role === 'Primary',
      primarySinceMs: this.sb.primarySinceMs,
      changedBytes: this.counters()?.outOfSyncBytes ?? 0,
      discardMyData: this.discardMyData,
    };
  }

  private onSplitBrain(reason: string): void {
    if (this.splitBrain) return;
    this.splitBrain = true;
    this.log.error('split brain detected: both nodes wrote since their last common generation; nothing is discarded', { reason });
    this.emit('change', { splitBrain: true, lastLinkError: reason });
    this.emit('event', { type: 'split-brain', resource: this.config.resource, node: this.local.name, peer: this.peer.name, reason });
    const hook = this.config.hooks.splitBrain;
    if (hook !== null) {
      runHook(hook, this.hookEnv('split-brain'), this.log).catch((error: Error) =>
        this.log.error('split-brain hook could not run', { error: error.message }),
      );
    }
  }

  /** connect, optionally as the victim of a split brain: its changes since the split are overwritten. */
  async connect(args: { discardMyData?: boolean } = {}): Promise<ResourceStatus> {
    if (args.discardMyData) {
      if (this.role === 'Primary') {
        const holder = this.device?.loopDevice ? deviceHolder(this.device.loopDevice) : null;
        throw new StateError(
          `cannot discard the data of ${this.config.resource} on ${this.local.name}: it is Primary` +
            (holder !== null ? ` and its device ${this.local.device} is in use (${holder})` : '') +
            '; stop what uses it, run nraid secondary, then connect --discard-my-data',
        );
      }
      this.discardMyData = true;
      this.log.warn('connect --discard-my-data: this node becomes the sync target of a split brain');
    }
    this.link?.connect();
    return this.status();
  }

  /**
   * Declares the local data invalid: this node becomes the target of a full
   * sync from its peer (DRBD's invalidate). Only on a Secondary, since a
   * Primary's data is what applications read.
   */
  async invalidate(): Promise<ResourceStatus> {
    if (this.role === 'Primary') {
      throw new StateError(`cannot invalidate ${this.config.resource} on ${this.local.name}: it is Primary; run nraid secondary first (or invalidate the peer instead)`);
    }
    if (this.connection === 'Connected' && this.peerState?.disk !== 'UpToDate') {
      throw new NotUpToDateError(
        `cannot invalidate ${this.config.resource} on ${this.local.name}: the peer's disk is ${this.peerState?.disk}; a full sync needs an UpToDate source`,
      );
    }
    this.persist((sb) => {
      sb.flags.consistent = false;
      sb.flags.wasUpToDate = false;
      sb.flags.fullSyncNeeded = true;
    });
    this.log.warn('invalidated: a full sync from the peer follows');
    this.link?.sendState();
    if (this.connection === 'Connected') this.dropSession('invalidated: full sync');
    this.noteChange();
    return this.status();
  }

  /**
   * Planned failover with nothing lost: the Primary drains and flushes, checks
   * that both current UUIDs agree, demotes, and the peer promotes. On any
   * failure the old Primary stays (or becomes again) Primary.
   */
  async switchover(): Promise<ResourceStatus> {
    if (this.connection !== 'Connected' || this.peerState === null) {
      throw new StateError(`cannot switch over ${this.config.resource}: the peer is not connected (connection ${this.connection}); a planned switchover needs both nodes`);
    }
    if (this.replication !== 'Established') {
      const progress = this.resyncProgress(this.counters());
      throw new StateError(
        `cannot switch over ${this.config.resource}: replication is ${this.replication}` +
          (progress ? ` (${progress.percent.toFixed(1)}% done)` : '') + '; wait for it to be Established',
      );
    }
    if (this.diskState !== 'UpToDate' || this.peerState.disk !== 'UpToDate') {
      throw new NotUpToDateError(
        `cannot switch over ${this.config.resource}: disks are ${this.diskState} here and ${this.peerState.disk} on ${this.peer.name}; both must be UpToDate`,
      );
    }
    if (this.role === 'Secondary') {
      if (this.peerState.role !== 'Primary') throw new StateError(`cannot switch over ${this.config.resource}: neither node is Primary; use nraid primary`);
      await this.link!.request('switchover', Buffer.alloc(0), 30_000);
      return this.status();
    }
    const holder = this.device?.loopDevice ? deviceHolder(this.device.loopDevice) : null;
    if (holder !== null) {
      throw new DeviceBusyError(`cannot switch over ${this.config.resource}: device ${this.local.device} is in use (${holder}); stop the services and unmount it first`);
    }
    const started = Date.now();
    await this.secondary();
    try {
      await this.drain();
      const reply = unpack(await this.link!.request('switchover-promote', pack({ current: this.sb.uuids.current.toString(16) }), 30_000)) as { ok: boolean };
      if (!reply.ok) throw new PeerError('the peer did not promote');
    } catch (error) {
      this.log.error('switchover failed: staying Primary', { error: (error as Error).message });
      await this.primary(false);
      throw new StateError(`switchover of ${this.config.resource} failed, ${this.local.name} is still Primary: ${(error as Error).message}`);
    }
    this.log.info('switchover done', { newPrimary: this.peer.name, ms: Date.now() - started });
    return this.status();
  }

  /** Waits until the peer has written everything sent (lag 0) and acknowledged the last barrier. */
  private async drain(): Promise<void> {
    const deadline = Date.now() + DRAIN_TIMEOUT_MS;
    binding.pipelineFlush(this.pipeline!);
    for (;;) {
      const counters = this.counters()!;
      if (counters.framesInFlight === 0 && counters.lagBytes === 0) return;
      if (counters.linkFailed || this.connection !== 'Connected') throw new PeerError('the peer went away while draining');
      if (Date.now() > deadline) throw new PeerError(`the peer did not catch up within ${DRAIN_TIMEOUT_MS} ms (${counters.lagBytes} bytes behind)`);
      await new Promise((resolve) => setTimeout(resolve, 5));
    }
  }

  private async onSwitchoverPromote(payload: Buffer): Promise<Uint8Array> {
    const { current } = unpack(payload) as { current: string };
    if (current !== this.sb.uuids.current.toString(16)) {
      throw new StateError(`generations differ (peer ${current}, here ${this.sb.uuids.current.toString(16)}): refusing to promote`);
    }
    await this.primary(false);
    return pack({ ok: true });
  }

  /**
   * A Primary without its peer starts a new generation on its first write
   * (DESIGN.md §5): the rotated superblock is prepared here and armed in the
   * data plane, which writes it durably just before that write. A Primary
   * that never writes while apart keeps its generation, so its return is a
   * plain bitmap resync, not a split brain.
   */
  private startNewGeneration(): void {
    if (this.sb.uuids.bitmap !== 0n || this.pendingGeneration !== null || this.pipeline === null || this.disk === null) return;
    const next: Superblock = { ...this.sb, flags: { ...this.sb.flags }, uuids: { ...this.sb.uuids, history: [...this.sb.uuids.history] as [bigint, bigint] } };
    next.uuids.bitmap = next.uuids.current;
    next.uuids.current = mintUuid();
    const prepared = prepareSuperblockWrite(this.disk, next);
    this.pendingGeneration = prepared.superblock;
    binding.generationArm(this.pipeline, prepared.image, prepared.offsetBytes);
    this.log.info('the peer is gone while Primary: a new generation starts with the first write', { next: next.uuids.current.toString(16) });
  }

  /** Back with the peer, or no longer Primary: an unused armed generation is dropped. */
  private cancelNewGeneration(): void {
    if (this.pipeline === null || this.pendingGeneration === null) return;
    this.adoptWrittenGeneration();
    if (this.pendingGeneration !== null) binding.generationTake(this.pipeline);
    this.pendingGeneration = null;
  }

  private encodeBitmap(): Buffer {
    const words = binding.bitmapGet(this.pipeline!);
    return encodeBitmapChunk({
      offsetBits: 0n,
      countBits: BigInt(words.length * 8),
      granularityBytes: this.sb.bitmapGranularityBytes,
      wordsBytes: words.length,
      wordsLz4: lz4.encode(words),
      last: true,
    });
  }

  private decodeBitmap(payload: Buffer): Buffer {
    const chunk = decodeBitmapChunk(payload);
    const words = lz4.decode(chunk.wordsLz4) as Buffer;
    const expected = binding.bitmapGet(this.pipeline!).length;
    if (chunk.granularityBytes !== this.sb.bitmapGranularityBytes || words.length !== expected || chunk.wordsBytes !== expected) {
      throw new NraidError(
        `the peer's bitmap does not match: ${words.length} bytes at ${chunk.granularityBytes} bytes per bit, expected ${expected} at ${this.sb.bitmapGranularityBytes}`,
      );
    }
    return words;
  }

  /** The bitmap on disk, durably: at every change of role or connection and on shutdown. */
  private persistBitmap(): void {
    if (this.pipeline === null) return;
    binding.bitmapPersist(this.pipeline, true);
    this.persistedOutOfSyncBytes = this.counters()?.outOfSyncBytes ?? 0;
  }

  /**
   * Every BITMAP_PERSIST_INTERVAL_MS while the bitmap changes: the changed
   * blocks are written without a flush of their own. A flush per period
   * stalled every write behind it (on ext4 over a loop device it costs a
   * journal commit): with it, the single-node bench row ran at 0.5x the
   * FUSE floor row, without it at 0.9-1.0x. Nothing depends on these writes
   * being durable at once: the activity log covers every extent whose bits
   * are not on disk yet (an evicted extent's block is written and flushed
   * before the transaction that drops it), and the next flush of any kind
   * makes them durable.
   */
  private persistBitmapIfChanged(): void {
    try {
      const counters = this.counters();
      if (counters === null || this.pipeline === null || counters.outOfSyncBytes === this.persistedOutOfSyncBytes) return;
      binding.bitmapPersist(this.pipeline, false);
      this.persistedOutOfSyncBytes = counters.outOfSyncBytes;
    } catch (error) {
      this.log.error('persisting the bitmap failed', { error: (error as Error).message });
    }
  }

  async disconnect(): Promise<ResourceStatus> {
    this.link?.disconnect('disconnect requested by the operator');
    return this.status();
  }

  /** Re-reads the config file: the protocol may change while connected. */
  async adjust(): Promise<ResourceStatus> {
    const next = loadConfig(this.config.path);
    if (next.resource !== this.config.resource) {
      throw new StateError(`config ${this.config.path} now names resource "${next.resource}", not "${this.config.resource}"; nothing changed`);
    }
    if (next.protocol !== this.protocol) {
      this.log.info('protocol changed', { from: this.protocol, to: next.protocol });
      this.protocol = next.protocol;
      if (this.pipeline !== null) binding.setProtocol(this.pipeline, next.protocol);
      this.link?.notice('adjust', Buffer.alloc(0));
      this.link?.sendState();
      this.noteChange();
    }
    return this.status();
  }

  private registerCommands(): void {
    this.admin.on('status', () => this.status());
    this.admin.on('primary', (args) => this.primary(args.force === true));
    this.admin.on('secondary', () => this.secondary());
    this.admin.on('down', () => this.down());
    this.admin.on('connect', (args) => this.connect({ discardMyData: args.discardMyData === true }));
    this.admin.on('switchover', () => this.switchover());
    this.admin.on('resume-io', () => this.resumeIoCommand());
    this.admin.on('invalidate', () => this.invalidate());
    this.admin.on('disconnect', () => this.disconnect());
    this.admin.on('adjust', () => this.adjust());
    this.admin.on('events', (args, stream) => this.streamEvents(stream));
  }

  private async streamEvents(stream: AdminStream): Promise<void> {
    stream.send({ type: 'exists', ...this.status() });
    const onChange = (changed: Partial<ResourceStatus>) =>
      stream.send({ type: 'change', resource: this.config.resource, node: this.local.name, ...changed });
    const onEvent = (event: Record<string, unknown>) => stream.send(event);
    this.on('change', onChange);
    this.on('event', onEvent);
    await Promise.race([stream.closed, this.stopped]);
    this.off('change', onChange);
    this.off('event', onEvent);
  }
}
