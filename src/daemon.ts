/**
 * One daemon per resource per node: the shell that wires the owners in
 * src/resource/ (data plane, metadata store, peer session, device exposure)
 * to the state machine, and the admin command table. The main thread runs
 * only control actions; every byte of user data stays in native threads.
 */
import { ensurePrivateRunDir } from './run-dir';
import { EventEmitter } from 'node:events';
import fs from 'node:fs';
import path from 'node:path';
import { AdminServer, AdminStream, adminSocketPath } from './admin';
import { NodeConfig, ResourceConfig, loadConfig, localAndPeer, roleHookBudgetMs } from './config';
import { DeviceRecord, StaleCleanup, adoptableRecord, cleanupStale } from './device';
import { HolderClient, holderClient } from './holder-client';
import { BackingDisk } from './disk';
import { ConfigError, StaleDeviceError, StateError } from './errors';
import * as limits from './limits';
import { ControlLink } from './link/control-link';
import { linkTlsFromConfig, nativeTls } from './link/tls';
import { Logger } from './log';
import { MetricsServer } from './metrics';
import { NativeCounters, NativeEventType } from './native';
import { NodeState, PROTOCOL_VERSION, ProtocolVersion, parseProtocolVersion } from './protocol/control';
import { DataPlane } from './resource/data-plane';
import { Exposure } from './resource/exposure';
import { Command, FLAG_DISCARD_MY_DATA, diskState, flagWord, initialState } from './resource/machine';
import { MetadataStore } from './resource/metadata-store';
import { PeerSession } from './resource/peer-session';
import { RESYNC_PAUSE_FEATURE, ResyncControl } from './resource/resync-control';
import { Runner } from './resource/runner';
import { EVENT_KEYS, snapshot } from './resource/status';
import { Verifier } from './resource/verify';
import { ResourceStatus } from './state';

export { FLAG_DISCARD_MY_DATA };
export { mintUuid } from './resource/metadata-store';

export { ADMIN_SOCKET, adminSocketPath } from './admin';

export interface DaemonOptions {
  config: ResourceConfig;
  nodeName: string;
  log: Logger;
  /** mlockall and PR_SET_IO_FLUSHER in the frontend; tests may turn it off. */
  lockMemory?: boolean;
  /** The holder's client of a daemon woken from standby; by default, the one a cold start finds in its environment. */
  held?: HolderClient | null;
}

/** NRAID_TEST_PROTOCOL_VERSION=MAJOR.MINOR announces another protocol version (rolling-upgrade tests). */
function announcedVersion(): ProtocolVersion {
  const text = process.env.NRAID_TEST_PROTOCOL_VERSION;
  return text === undefined || text === '' ? PROTOCOL_VERSION : parseProtocolVersion(text);
}

/** NRAID_FAULT_POINTS=name,name: the named points of the control plane cut the link (tests only). */
function faultPoints(): Set<string> {
  return new Set((process.env.NRAID_FAULT_POINTS ?? '').split(',').map((name) => name.trim()).filter((name) => name !== ''));
}

interface Attached {
  disk: BackingDisk;
  plane: DataPlane;
  store: MetadataStore;
  exposure: Exposure;
  runner: Runner;
  resync: ResyncControl;
}

export class Daemon extends EventEmitter {
  readonly config: ResourceConfig;
  readonly local: NodeConfig;
  readonly peer: NodeConfig;
  private readonly log: Logger;
  private readonly lockMemory: boolean;
  private readonly admin: AdminServer;
  private parts: Attached | null = null;
  private link: ControlLink | null = null;
  private session: PeerSession | null = null;
  private metrics: MetricsServer | null = null;
  private persistTimer: NodeJS.Timeout | null = null;
  private verifier: Verifier | null = null;
  /** csums and csums-after-crash-only as the config says now (adjust re-reads them). */
  private csums = { csums: false, afterCrashOnly: false };
  private persistedOutOfSyncBytes = -1;
  private persisting = false;
  private persistedAtMs = 0;
  private progressAtMs = 0;
  private lastStatus: ResourceStatus | null = null;
  private stopping = false;
  private readonly stopped: Promise<void>;
  private resolveStopped: () => void = () => {};
  /** The holder that started this daemon and keeps its FUSE connection (daemon-restart-bound-ms), or null. */
  readonly held: HolderClient | null;
  /** What start() found of a killed daemon's device: cleaned, and left in place (for `up` to print). */
  staleAtStart: StaleCleanup = { cleaned: [], left: [] };

  constructor(options: DaemonOptions) {
    super();
    this.config = options.config;
    const { local, peer } = localAndPeer(options.config, options.nodeName);
    this.local = local;
    this.peer = peer;
    this.log = options.log;
    this.lockMemory = options.lockMemory ?? true;
    this.held = options.held !== undefined ? options.held : holderClient();
    this.admin = new AdminServer(adminSocketPath(local));
    this.stopped = new Promise((resolve) => (this.resolveStopped = resolve));
  }

  /** Attaches the disk, opens the admin socket, starts the link. Leaves nothing behind on failure. */
  async start(): Promise<void> {
    ensurePrivateRunDir(this.local.runDir);
    // A daemon that died as Primary left its device mounted over the holder's connection: not stale, ours to serve.
    const adoptable = adoptableRecord(this.local.runDir, this.held);
    if (adoptable === null) this.staleAtStart = cleanupStale(this.local.runDir, this.local.device);
    for (const line of this.staleAtStart.cleaned) this.log.info(line);
    for (const line of this.staleAtStart.left) this.log.warn(line);
    await this.openParts();
    this.held?.mark('metadata');
    try {
      this.registerCommands();
      await this.admin.listen();
    } catch (error) {
      this.closeDetachedParts();
      throw error;
    }
    this.log.info('up', { disk: this.local.disk, dataSizeBytes: this.p.store.superblock.dataSizeBytes, diskState: diskState(this.p.runner.state) });
    this.persistedOutOfSyncBytes = this.p.plane.outOfSyncBytes();
    this.persistTimer = setInterval(() => this.persistTick(), limits.resyncPersistIntervalMs);
    this.persistTimer.unref();
    if (this.config.metricsPort !== null) await this.startMetrics();
    this.held?.mark('admin');
    // The device first, the peer after: the requests waiting in the kernel need no link (a write
    // the peer does not take starts the armed generation before it completes, so the zero-loss
    // rule holds), and a promotion with no session asks nobody and waits for no timeout.
    if (adoptable !== null) await this.takeDeviceBack(adoptable);
    this.held?.mark('takeBack');
    this.held?.serving();
    await this.startLink();
    if (this.held?.restart != null) this.log.info('serving again after a restart', { cause: this.held.restart.cause, pauseMs: this.held.pauseMs, phasesMs: this.held.phases() });
    this.noteChange();
  }

  /**
   * After a restart on the Primary: the applications' device is still there
   * and its requests wait in the kernel. Primary again (the metadata store has
   * already marked the activity-log extents out of sync, as after a crash:
   * the peer gets them by resync), the device served again with the requests
   * the dead daemon had read resent.
   */
  private async takeDeviceBack(record: DeviceRecord): Promise<void> {
    this.log.warn('taking back the device a dead daemon left with the holder', {
      loopDevice: record.loopDevice,
      deadPid: record.pid,
      cause: this.held?.restart?.cause ?? null,
    });
    await this.command({ name: 'primary', force: false });
  }

  /**
   * `nraid restart`: stops taking requests (each one carried is answered),
   * leaves the mounted device to the holder, makes what was written durable,
   * and closes everything without a demotion: the next daemon takes the
   * device back as after a crash of this one.
   */
  async handOver(): Promise<void> {
    if (this.stopping) return;
    this.stopping = true;
    if (this.persistTimer !== null) clearInterval(this.persistTimer);
    const parts = this.parts;
    if (parts !== null) {
      parts.exposure.handOver();
      await parts.plane.flush().catch((error: Error) => this.log.warn('flush at handover failed', { error: error.message }));
    }
    if (this.metrics !== null) await this.metrics.close();
    if (this.link !== null) await this.link.stop();
    this.link = null;
    this.session?.discardAll();
    this.session = null;
    if (parts !== null) {
      parts.plane.detach('handover');
      if (!parts.runner.state.diskless) await parts.plane.persistBitmap(true).catch(() => undefined);
      parts.plane.destroy();
      parts.disk.close();
      parts.runner.failPending(`the daemon of ${this.config.resource} is being replaced (nraid restart)`);
    }
    this.parts = null;
    await this.admin.close();
    this.log.info('handed over to the next daemon');
    this.held?.handedOver();
  }

  /** Opens the backing disk, its metadata and the data plane, and a fresh state machine over them. Leaves nothing behind on failure. */
  private async openParts(): Promise<void> {
    const disk = BackingDisk.open(this.local.disk, { configKey: `nodes.${this.local.name}.disk in ${this.config.path}` });
    let plane: DataPlane | null = null;
    try {
      const store = MetadataStore.open(disk, this.config.resource, this.log, this.local.runDir);
      plane = new DataPlane(disk, store.superblock, (type, detail) => this.onNativeEvent(type, detail));
      if (await store.recover(plane)) {
        this.log.warn('the previous run ended while Primary without a clean shutdown (crashed primary)');
        await store.persist(plane, { kind: 'crash-noted' });
      }
      const exposure = new Exposure(plane, {
        runDir: this.local.runDir,
        devicePath: this.local.device,
        source: `nraid:${this.config.resource}:${this.local.name}`,
        threads: this.config.frontendThreads,
        diskBlockBytes: disk.logicalBlockBytes,
        lockMemory: this.lockMemory,
        held: this.held,
      });
      // A promotion (switchover, failover) then starts the frontend on memory already touched.
      plane.prepareFrontend(this.config.frontendThreads);
      const state = initialState(
        {
          resource: this.config.resource,
          device: this.local.device,
          local: this.local.name,
          peer: this.peer.name,
          onNoPeer: this.config.onNoPeer,
          onIoError: this.config.onIoError,
          fencePeer: this.config.hooks.fencePeer !== null,
          splitBrainHook: this.config.hooks.splitBrain !== null,
          roleHooks: { beforeDemote: this.config.hooks.beforeDemote !== null, afterPromote: this.config.hooks.afterPromote !== null },
          afterSb0pri: this.config.afterSb0pri,
          peerGraceMs: this.config.pingTimeoutMs,
        },
        store.view(),
        this.config.protocol,
      );
      const runner = new Runner(state, {
        plane,
        store,
        exposure,
        peer: () => this.session,
        log: this.log,
        hooks: {
          fencePeer: this.config.hooks.fencePeer,
          splitBrain: this.config.hooks.splitBrain,
          env: (event) => this.hookEnv(event),
          role: {
            beforeDemote: this.config.hooks.beforeDemote,
            afterPromote: this.config.hooks.afterPromote,
            beforeDemoteTimeoutMs: this.config.hooks.beforeDemoteTimeoutMs,
            afterPromoteTimeoutMs: this.config.hooks.afterPromoteTimeoutMs,
          },
        },
        lag: { maxLagBytes: this.config.maxLagBytes, maxLagMs: this.config.maxLagMs },
        faultPoints: faultPoints(),
        status: () => this.status(),
        csums: () => this.csums,
      });
      this.csums = { csums: this.config.csums, afterCrashOnly: this.config.csumsAfterCrashOnly };
      this.verifier = new Verifier({
        plane,
        state: () => runner.state,
        dataSizeBytes: store.superblock.dataSizeBytes,
        runDir: this.local.runDir,
        log: this.log,
        emit: (event) => this.emit('event', event),
        outOfSyncHook: this.config.hooks.outOfSync,
        hookEnv: (event) => this.hookEnv(event),
      });
      store.onGenerationAdopted = () => runner.dispatch({ type: 'generation-written', md: store.view() });
      runner.on('stepped', () => this.noteChange());
      runner.on('change', (changed: Record<string, unknown>) => this.emit('change', changed));
      runner.on('event', (event: Record<string, unknown>) => this.emit('event', event));
      plane.setOnIoError(this.config.onIoError);
      const resync = new ResyncControl(plane, this.config.resource, this.local.runDir, (level, message, fields) => this.log[level](message, fields));
      resync.configure(this.config);
      this.parts = { disk, plane, store, exposure, runner, resync };
    } catch (error) {
      this.parts = null;
      plane?.destroy();
      disk.close();
      throw error;
    }
  }

  /** The link, the data plane and the disk closed without writing anything: the disk failed (or start failed). */
  private closeDetachedParts(): void {
    const parts = this.parts;
    this.parts = null;
    if (parts === null) return;
    parts.plane.detach('disk detached');
    parts.plane.destroy();
    parts.disk.close();
    parts.runner.failPending(`the disk of ${this.config.resource} is being re-attached`);
  }

  /**
   * `nraid attach`: a Diskless Secondary closes its failed disk and opens the
   * one at the configured path again (repaired, or replaced and create-md'ed),
   * then reconnects: the handshake decides the resync (bitmap-based when the
   * generations allow, full for a fresh disk).
   */
  private async attach(): Promise<ResourceStatus> {
    await this.command({ name: 'attach' });
    // Before anything is closed: the disk opens, holds this resource's metadata and reads.
    // A disk that still fails is refused here and the node stays as it was (Diskless).
    const probe = BackingDisk.open(this.local.disk, { readOnly: true, configKey: `nodes.${this.local.name}.disk in ${this.config.path}` });
    try {
      MetadataStore.open(probe, this.config.resource, this.log);
      probe.read(0, limits.blockBytes);
    } finally {
      probe.close();
    }
    if (this.link !== null) {
      await this.link.stop();
      this.link = null;
    }
    this.session?.discardAll();
    this.session = null;
    this.closeDetachedParts();
    this.lastStatus = null;
    await this.openParts();
    this.log.info('attach: disk re-opened', { disk: this.local.disk, diskState: diskState(this.p.runner.state) });
    this.persistedOutOfSyncBytes = this.p.plane.outOfSyncBytes();
    await this.startLink();
    this.noteChange();
    return this.status();
  }

  private async startMetrics(): Promise<void> {
    const metrics = new MetricsServer(() => this.status(), () => this.counters(), () => this.link?.refusedConnections() ?? null);
    try {
      await metrics.listen(this.local.host, this.config.metricsPort!);
    } catch (error) {
      await this.teardown();
      await this.admin.close();
      throw new ConfigError(
        `metrics-port ${this.config.metricsPort} on ${this.local.host} is not free (${(error as Error).message}); ` +
          'choose another metrics-port in the config or stop what listens there',
      );
    }
    this.metrics = metrics;
  }

  /** Resolves when the daemon has shut down (after `down` or a signal). */
  whenStopped(): Promise<void> {
    return this.stopped;
  }

  private get p(): Attached {
    if (this.parts === null) throw new StateError(`resource ${this.config.resource} has no disk attached`);
    return this.parts;
  }

  private counters(): NativeCounters | null {
    return this.parts?.plane.counters() ?? null;
  }

  /** A snapshot: reads the state, changes nothing. */
  status(): ResourceStatus {
    const parts = this.parts;
    if (parts === null) throw new StateError(`resource ${this.config.resource} has no disk attached`);
    const status = snapshot({
      state: parts.runner.state,
      counters: parts.plane.counters(),
      superblock: parts.store.superblock,
      resync: parts.runner.resync,
      resyncTotals: parts.resync.totals(parts.plane.counters()),
      resyncPaused: parts.resync.paused,
      device: this.local.device,
      backingDisk: this.local.disk,
      exposed: parts.exposure.exposed,
      loopDevice: parts.exposure.loopDevice,
      nowMs: Date.now(),
      metadataDamage: parts.store.damage,
    });
    status.daemonRestarts = this.held?.restarts() ?? null;
    const c = parts.plane.counters();
    status.verify = this.verifier?.progress() ?? null;
    status.lastResync = parts.runner.lastResync;
    status.resyncSent = { dataBytes: c?.resyncDataBytesSent ?? 0, zeroBytes: c?.resyncZeroBytesSent ?? 0, equalBytes: c?.resyncEqualBytes ?? 0 };
    return status;
  }

  /** Emits `change` with the state fields that moved (counters are not events). */
  private noteChange(): void {
    if (this.parts === null) return;
    const status = this.status();
    const changed: Record<string, unknown> = {};
    for (const key of EVENT_KEYS) {
      const value = (status as unknown as Record<string, unknown>)[key];
      if (this.lastStatus === null || (this.lastStatus as unknown as Record<string, unknown>)[key] !== value) changed[key] = value;
    }
    this.lastStatus = status;
    if (Object.keys(changed).length > 0) this.emit('change', changed);
  }

  private nodeState(): NodeState {
    const s = this.p.runner.state;
    const uuids = s.md.uuids;
    return {
      role: s.role,
      disk: diskState(s),
      dataSizeBytes: BigInt(this.p.store.superblock.dataSizeBytes),
      uuids: { current: uuids.current, bitmap: uuids.bitmap, history: [uuids.history[0], uuids.history[1]] },
      flags: flagWord(s),
      protocol: s.protocol,
    } as NodeState;
  }

  private async startLink(): Promise<void> {
    const linkTls = linkTlsFromConfig(this.config);
    const link = new ControlLink({
      resource: this.config.resource,
      local: { name: this.local.name, host: this.local.host, port: this.local.port },
      peer: { name: this.peer.name, host: this.peer.host, port: this.peer.port },
      secret: this.config.secret,
      tls: linkTls,
      pingIntervalMs: this.config.pingIntervalMs,
      pingTimeoutMs: this.config.pingTimeoutMs,
      connectRetryMs: this.config.connectRetryMs,
      protocolVersion: announcedVersion(),
      getState: () => this.nodeState(),
      log: (level, message, fields) => this.log[level](message, fields),
    });
    this.link = link;
    const runner = this.p.runner;
    this.session = new PeerSession({
      link,
      plane: this.p.plane,
      granularityBytes: this.p.store.superblock.bitmapGranularityBytes,
      dataLinkTls: nativeTls(linkTls),
      dispatch: (event) => runner.dispatch(event),
      holder: () => this.p.exposure.holder(),
      roleHookBudgetMs: roleHookBudgetMs(this.config.hooks),
      onAdjust: () => void this.adjust().catch((error: Error) => this.log.warn('adjust from the peer failed', { error: error.message })),
      onResyncPause: (paused) => this.resyncPauseChanged(() => this.parts?.resync.setPausedByPeer(paused)),
      log: (level, message, fields) => this.log[level](message, fields),
    });
    // The operator's pause outlives a session: a new one hears of it; the peer's ends with its session.
    link.on('connected', (info) => {
      if (this.parts?.resync.pausedHere && info.features.includes(RESYNC_PAUSE_FEATURE)) link.notice('resyncPause', { paused: true });
    });
    link.on('disconnected', () => this.resyncPauseChanged(() => this.parts?.resync.setPausedByPeer(false)));
    await link.start();
    link.connect();
  }

  private onNativeEvent(type: NativeEventType, detail: string): void {
    const parts = this.parts;
    if (this.stopping || parts === null) return;
    if (type === 'generation-started') {
      // Adopted in turn with the superblock writes; the store's listener tells the machine.
      parts.store.adoptStarted(parts.plane).catch((error: Error) => this.log.error('adopting the new generation failed', { error: error.message }));
    } else if (type === 'link-lost') {
      parts.runner.dispatch({ type: 'link-lost', detail });
    } else if (type === 'disk-failed') {
      parts.runner.dispatch({ type: 'disk-failed', detail });
    } else if (type === 'resync-done') {
      parts.runner.dispatch({ type: 'resync-done', bytes: Number(detail) });
    } else if (type === 'verify-mismatch' || type === 'verify-done') {
      this.verifier?.onNative(type, detail);
    }
  }

  private hookEnv(event: string): Record<string, string> {
    const s = this.p.runner.state;
    return {
      NRAID_EVENT: event,
      NRAID_RESOURCE: this.config.resource,
      NRAID_NODE: this.local.name,
      NRAID_PEER: this.peer.name,
      NRAID_PEER_ADDRESS: this.peer.address,
      NRAID_ROLE: s.role,
      NRAID_DISK: diskState(s),
      NRAID_DEVICE: this.local.device,
    };
  }

  /**
   * Every bitmapPersistIntervalMs while the bitmap changes: the changed blocks
   * are written without a flush of their own (a flush per period stalled every
   * write behind it). Nothing depends on these writes being durable at once:
   * the activity log covers every extent whose bits are not on disk yet.
   */
  private persistTick(): void {
    const parts = this.parts;
    if (parts === null || this.stopping) return;
    const now = Date.now();
    const resyncing = parts.runner.resync !== null;
    // While a resync runs the bitmap's cleared bits go to disk often: a restart resends little.
    if (resyncing || now - this.persistedAtMs >= limits.bitmapPersistIntervalMs) {
      this.persistedAtMs = now;
      this.persistBitmapIfChanged();
      parts.resync.save(parts.plane.counters());
    }
    // Progress, for `nraid events`, about once a second while a resync runs.
    if (resyncing && now - this.progressAtMs >= limits.resyncProgressEventIntervalMs) {
      this.progressAtMs = now;
      const resync = this.status().resync;
      if (resync !== null) this.emit('event', { type: 'resync-progress', resource: this.config.resource, node: this.local.name, ...resync });
    }
  }

  /** pause-sync / resume-sync here, or the peer's: the change is an event. */
  private resyncPauseChanged(change: () => void): void {
    const before = this.parts?.resync.paused;
    change();
    const after = this.parts?.resync.paused;
    if (after !== undefined && after !== before) this.emit('change', { resyncPaused: after });
  }

  private pauseSync(paused: boolean): ResourceStatus {
    const parts = this.p;
    const replication = this.status().replication;
    const features = this.session?.features ?? [];
    const link = this.link;
    this.resyncPauseChanged(() =>
      parts.resync.setPausedHere(paused, replication, link !== null && features.includes(RESYNC_PAUSE_FEATURE), (value) => {
        link?.notice('resyncPause', { paused: value });
      }),
    );
    return this.status();
  }

  private persistBitmapIfChanged(): void {
    const parts = this.parts;
    if (parts === null || this.persisting || this.stopping) return;
    const outOfSyncBytes = parts.plane.outOfSyncBytes();
    if (outOfSyncBytes === this.persistedOutOfSyncBytes) return;
    this.persisting = true;
    parts.plane
      .persistBitmap(false)
      .then(() => (this.persistedOutOfSyncBytes = outOfSyncBytes))
      .catch((error: Error) => this.log.error('persisting the bitmap failed', { error: error.message }))
      .finally(() => (this.persisting = false));
  }

  /** A signal asks the daemon to stop: writers must not stay blocked behind a suspension. */
  resumeIoForShutdown(): void {
    if (this.parts?.runner.state.ioSuspended) this.parts.plane.setSuspended(false);
  }

  /** Re-reads the config file: the protocol may change while connected. */
  private async adjust(): Promise<ResourceStatus> {
    const next = loadConfig(this.config.path);
    if (next.resource !== this.config.resource) {
      throw new StateError(`config ${this.config.path} now names resource "${next.resource}", not "${this.config.resource}"; nothing changed`);
    }
    // The resync settings first: a value the data plane refuses changes nothing.
    this.p.resync.configure(next);
    this.csums = { csums: next.csums, afterCrashOnly: next.csumsAfterCrashOnly };
    return this.p.runner.command({ name: 'adjust', protocol: next.protocol, onIoError: next.onIoError });
  }

  private command(command: Command): Promise<ResourceStatus> {
    return this.p.runner.command(command);
  }

  /** Flushes, takes the device away, closes the disk and the socket. Refuses while the device is in use. */
  async down(): Promise<void> {
    if (this.stopping) return;
    await this.command({ name: 'down', holder: this.p.exposure.holder() });
    this.stopping = true;
    try {
      await this.teardown();
      this.log.info('down');
    } finally {
      // The reply to `down` goes out before the socket closes.
      setImmediate(() => void this.admin.close().then(() => this.resolveStopped()));
    }
  }

  private async teardown(): Promise<void> {
    if (this.persistTimer !== null) clearInterval(this.persistTimer);
    this.verifier?.close();
    if (this.metrics !== null) await this.metrics.close();
    const parts = this.parts;
    const diskless = parts?.runner.state.diskless === true;
    if (parts !== null && parts.exposure.exposed) {
      await parts.exposure.unexpose();
      await parts.store.disarm(parts.plane);
      // Detached: the failed disk keeps the metadata it had (DRBD writes none either).
      if (!diskless) await parts.store.persist(parts.plane, { kind: 'became-secondary' });
    }
    if (this.link !== null) {
      await this.link.stop();
      this.link = null;
    }
    this.session?.discardAll();
    this.session = null;
    if (parts !== null) {
      parts.plane.detach('down');
      parts.resync.save(parts.plane.counters());
      if (!diskless) {
        await parts.plane.persistBitmap(true);
        await parts.plane.flush();
      }
      parts.plane.destroy();
      parts.disk.close();
      parts.runner.failPending(`resource ${this.config.resource} is going down`);
    }
    this.parts = null;
  }

  private registerCommands(): void {
    const holder = (): string | null => this.p.exposure.holder();
    this.admin.on('status', () => this.status());
    this.admin.on('primary', (args) => {
      this.refuseOverStaleDevice('promote');
      return this.command({ name: 'primary', force: args.force === true });
    });
    this.admin.on('secondary', () => this.command({ name: 'secondary', holder: holder() }));
    this.admin.on('down', () => this.down());
    this.admin.on('connect', (args) => this.command({ name: 'connect', discardMyData: args.discardMyData === true, holder: holder() }));
    this.admin.on('switchover', () => {
      this.refuseOverStaleDevice('switch over');
      return this.command({ name: 'switchover', holder: holder(), syncPercent: this.status().resync?.percent ?? null });
    });
    this.admin.on('resume-io', () => this.command({ name: 'resume-io' }));
    this.admin.on('invalidate', () => this.command({ name: 'invalidate' }));
    this.admin.on('verify', (args) => {
      const verify = this.verifier!.start({ start: args.start as number | undefined, stop: args.stop as number | undefined });
      return { ...this.status(), verify };
    });
    this.admin.on('resync', () => {
      this.verifier!.repair();
      return this.status();
    });
    this.admin.on('disconnect', () => this.command({ name: 'disconnect' }));
    this.admin.on('adjust', () => this.adjust());
    this.admin.on('pause-sync', () => this.pauseSync(true));
    this.admin.on('resume-sync', () => this.pauseSync(false));
    this.admin.on('attach', () => this.attach());
    this.admin.on('detach', () => this.command({ name: 'detach' }));
    this.admin.on('events', (args, stream) => this.streamEvents(stream));
  }

  /**
   * Before this node exposes its device: cleans what a killed daemon left and
   * refuses while a filesystem is still mounted on its stale loop device. Not
   * even --force overrides: that flag accepts stale data, and a promotion that
   * only needs it for the disk state would then slip past this check too; the
   * way out (umount, umount -l) is always open.
   */
  private refuseOverStaleDevice(what: string): void {
    if (this.p.exposure.exposed) return;
    const stale = cleanupStale(this.local.runDir, this.local.device);
    for (const line of stale.cleaned) this.log.info(line);
    if (stale.left.length > 0) throw new StaleDeviceError(`cannot ${what} ${this.config.resource}: ${stale.left.join('; ')}; then try again`);
  }

  private async streamEvents(stream: AdminStream): Promise<void> {
    stream.send({ type: 'exists', ...this.status() });
    // Damage is found at start, before any subscriber: each one hears of it first thing.
    const damage = this.p.store.damage;
    if (damage.length > 0) stream.send({ type: 'metadata-damage', resource: this.config.resource, node: this.local.name, reports: damage });
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
