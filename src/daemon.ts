/**
 * One daemon per resource per node: owns the backing disk, the data-plane
 * pipeline, the exposed device and the admin socket. The main thread runs
 * only control actions; every byte of user data stays in native threads.
 */
import crypto from 'node:crypto';
import { EventEmitter } from 'node:events';
import fs from 'node:fs';
import path from 'node:path';
import { AdminServer, AdminStream } from './admin';
import { NodeConfig, ResourceConfig, localAndPeer } from './config';
import { DeviceRecord, cleanupStale, deviceHolder, exposeDevice, unexposeDevice } from './device';
import { BackingDisk } from './disk';
import { MetadataError, NotUpToDateError, StateError } from './errors';
import { Logger } from './log';
import { Superblock, diskStateOf, readSuperblock, writeSuperblock } from './metadata';
import { PipelineHandle, binding } from './native';
import { DiskState, ResourceStatus, Role } from './state';

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
      this.pipeline = binding.pipelineCreate(disk.handle, { dataSizeBytes: superblock.dataSizeBytes });
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
    this.noteChange();
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

  private persist(change: (sb: Superblock) => void): void {
    const next = { ...this.sb, flags: { ...this.sb.flags }, uuids: { ...this.sb.uuids, history: [...this.sb.uuids.history] as [bigint, bigint] } };
    change(next);
    this.superblock = writeSuperblock(this.disk!, next);
    this.diskState = diskStateOf(this.superblock);
  }

  status(): ResourceStatus {
    const counters = this.pipeline !== null ? binding.pipelineCounters(this.pipeline) : null;
    const sb = this.superblock;
    return {
      resource: this.config.resource,
      node: this.local.name,
      peer: this.peer.name,
      role: this.role,
      disk: this.diskState,
      connection: 'StandAlone',
      replication: 'Off',
      peerRole: 'Unknown',
      peerDisk: 'DUnknown',
      outOfSyncBytes: 0,
      protocol: this.config.protocol,
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
      pid: process.pid,
    };
  }

  /** Emits `change` with the state fields that moved (counters are not events). */
  private noteChange(): void {
    const status = this.status();
    const keys: (keyof ResourceStatus)[] = ['role', 'disk', 'connection', 'replication', 'peerRole', 'peerDisk', 'exposed', 'loopDevice', 'protocol'];
    const changed: Partial<ResourceStatus> = {};
    for (const key of keys) {
      if (this.lastStatus === null || this.lastStatus[key] !== status[key]) (changed as Record<string, unknown>)[key] = status[key];
    }
    this.lastStatus = status;
    if (Object.keys(changed).length > 0) this.emit('change', changed);
  }

  async primary(force: boolean): Promise<ResourceStatus> {
    if (this.role === 'Primary') return this.status();
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
        // The data is declared the newest: a new generation starts here.
        sb.uuids.history = [sb.uuids.bitmap !== 0n ? sb.uuids.bitmap : sb.uuids.history[0], sb.uuids.history[0]];
        sb.uuids.bitmap = 0n;
        sb.uuids.current = mintUuid();
      });
    }
    this.persist((sb) => {
      sb.flags.wasPrimary = true;
      sb.flags.crashedPrimary = false;
    });
    this.device = exposeDevice({
      pipeline: this.pipeline!,
      runDir: this.local.runDir,
      devicePath: this.local.device,
      source: `nraid:${this.config.resource}:${this.local.name}`,
      threads: this.config.frontendThreads,
      blockBytes: this.disk!.logicalBlockBytes,
      lockMemory: this.lockMemory,
    });
    this.role = 'Primary';
    this.log.info('promoted', { device: this.local.device, loopDevice: this.device.loopDevice });
    this.noteChange();
    return this.status();
  }

  async secondary(): Promise<ResourceStatus> {
    if (this.role === 'Secondary') return this.status();
    if (this.device !== null) {
      unexposeDevice(this.device, this.pipeline!, this.local.runDir);
      this.device = null;
    }
    this.persist((sb) => {
      sb.flags.wasPrimary = false;
    });
    this.role = 'Secondary';
    this.log.info('demoted');
    this.noteChange();
    return this.status();
  }

  /** Flushes, takes the device away, closes the disk and the socket. Refuses while the device is in use. */
  async down(): Promise<void> {
    if (this.stopping) return;
    if (this.device?.loopDevice) {
      const holder = deviceHolder(this.device.loopDevice);
      if (holder !== null) {
        throw new StateError(
          `cannot take ${this.config.resource} down: device ${this.local.device} is in use (${holder}); unmount or close it first`,
        );
      }
    }
    this.stopping = true;
    try {
      if (this.role === 'Primary') await this.secondary();
      if (this.pipeline !== null) {
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

  private registerCommands(): void {
    this.admin.on('status', () => this.status());
    this.admin.on('primary', (args) => this.primary(args.force === true));
    this.admin.on('secondary', () => this.secondary());
    this.admin.on('down', () => this.down());
    this.admin.on('events', (args, stream) => this.streamEvents(stream));
  }

  private async streamEvents(stream: AdminStream): Promise<void> {
    stream.send({ type: 'exists', ...this.status() });
    const onChange = (changed: Partial<ResourceStatus>) =>
      stream.send({ type: 'change', resource: this.config.resource, node: this.local.name, ...changed });
    this.on('change', onChange);
    await Promise.race([stream.closed, this.stopped]);
    this.off('change', onChange);
  }
}
