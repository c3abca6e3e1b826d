/**
 * The exposed device of one resource: the FUSE volume, the loop device on it
 * and the configured symlink (src/device.ts does the system work). Only a
 * Primary exposes its device.
 */
import { DeviceRecord, HeldFuse, deviceHolder, exposeDevice, markHandedOver, unexposeDevice } from '../device';
import { DataPlane } from './data-plane';

/** 4 KiB logical blocks whatever the backing disks have: every request fits a 512-byte and a 4Kn disk on either node, with O_DIRECT. */
const EXPOSED_BLOCK_BYTES = 4096;

export interface ExposureOptions {
  runDir: string;
  devicePath: string;
  source: string;
  threads: number;
  diskBlockBytes: number;
  lockMemory: boolean;
  /** The holder that keeps the FUSE connection across daemon restarts, if any. */
  held?: HeldFuse | null;
}

export class Exposure {
  private record: DeviceRecord | null = null;

  constructor(
    private readonly plane: DataPlane,
    private readonly options: ExposureOptions,
  ) {}

  get exposed(): boolean {
    return this.record !== null;
  }

  get loopDevice(): string | null {
    return this.record?.loopDevice ?? null;
  }

  /** Who holds the device open or mounted, or null. */
  holder(): string | null {
    return this.record?.loopDevice ? deviceHolder(this.record.loopDevice) : null;
  }

  expose(): void {
    if (this.record !== null) return;
    this.record = exposeDevice({
      frontend: this.plane,
      runDir: this.options.runDir,
      devicePath: this.options.devicePath,
      source: this.options.source,
      threads: this.options.threads,
      blockBytes: Math.max(EXPOSED_BLOCK_BYTES, this.options.diskBlockBytes),
      lockMemory: this.options.lockMemory,
      held: this.options.held,
    });
  }

  /**
   * `nraid restart`: stops serving and leaves the mount, the loop device and
   * the record to the holder and the next daemon. Each request carried is
   * answered; what the kernel queues meanwhile waits for the next daemon.
   */
  handOver(): void {
    if (this.record === null) return;
    this.plane.releaseFrontend();
    markHandedOver(this.options.runDir, this.record);
    this.record = null;
  }

  /** Flushes (without blocking the event loop), then takes the device away. Refuses while it is in use. */
  async unexpose(): Promise<void> {
    if (this.record === null) return;
    // A peer lost mid-flush fails the flush's barrier; the writes it covered are marked
    // out of sync, and a second flush, with no link, makes the local disk durable.
    const plane = this.plane;
    const frontend = {
      startFrontend: plane.startFrontend.bind(plane),
      stopFrontend: plane.stopFrontend.bind(plane),
      flush: () => plane.flush().catch((error: { errno?: string }) => {
        // Detached (Diskless) with no peer to flush: nothing holds data here; the device goes anyway.
        if (plane.counters()?.diskless === true) return;
        if (error.errno !== 'ENOTCONN') throw error;
        return plane.flush();
      }),
    };
    await unexposeDevice(this.record, frontend, this.options.runDir, this.options.held);
    this.record = null;
  }
}
