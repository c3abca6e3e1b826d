/**
 * The only owner of this node's metadata on disk: the superblock, the
 * generation armed for the first write without the peer, and (through the
 * data plane) the bitmap and the activity log. Superblock writes go through
 * the data plane's metadata thread, never blocking the event loop.
 */
import crypto from 'node:crypto';
import { extentsToBitmap, newestTransaction } from '../activity-log';
import { BackingDisk } from '../disk';
import { MetadataError } from '../errors';
import { Superblock, encodeSuperblock, inspectSuperblocks, readSuperblock, superblockSlotOffsetBytes } from '../metadata';
import { DataPlane } from './data-plane';
import { MetadataChange, MetadataView, applyChange, cloneView } from './metadata-change';

/** A fresh 64-bit generation UUID, never 0 (none) nor a reserved small value. */
export function mintUuid(): bigint {
  for (;;) {
    const uuid = crypto.randomBytes(8).readBigUInt64LE(0);
    if (uuid > 0xffffn) return uuid;
  }
}

export interface StoreLog {
  info(message: string, fields?: Record<string, unknown>): void;
  warn(message: string, fields?: Record<string, unknown>): void;
}

/** What goes where: the image for the slot that does not hold the newest copy. */
interface PreparedWrite {
  superblock: Superblock;
  slot: number;
  image: Buffer;
  offsetBytes: number;
}

export class MetadataStore {
  private sb: Superblock;
  /** The slot holding `sb`: each write goes to the other one, so a torn write leaves `sb` intact. */
  private slot: number;
  /** The superblock armed in the data plane, written by it before the first write without the peer. */
  private armed: PreparedWrite | null = null;

  private constructor(
    readonly disk: BackingDisk,
    sb: Superblock,
    slot: number,
    private readonly log: StoreLog,
  ) {
    this.sb = sb;
    this.slot = slot;
  }

  /** Reads the superblock and checks it belongs to `resource`. Synchronous: before anything is served. */
  static open(disk: BackingDisk, resource: string, log: StoreLog): MetadataStore {
    const sb = readSuperblock(disk);
    const slot = inspectSuperblocks(disk).find((state) => state.superblock?.sequence === sb.sequence)?.slot ?? 0;
    if (sb.resource !== resource) {
      throw new MetadataError(
        `backing device ${disk.path} holds metadata of resource "${sb.resource}", not "${resource}"; ` +
          'check the config, or run nraid create-md --force to give the disk to this resource (its data becomes unusable)',
      );
    }
    return new MetadataStore(disk, sb, slot, log);
  }

  /** The fresh UUID armed in the data plane, if any. */
  get armedGeneration(): bigint | null {
    return this.armed?.superblock.uuids.current ?? null;
  }

  get superblock(): Superblock {
    return this.sb;
  }

  view(): MetadataView {
    return cloneView({ flags: this.sb.flags, uuids: this.sb.uuids, primarySinceMs: this.sb.primarySinceMs });
  }

  /**
   * At start-up, before anything is served: the bitmap from disk, and after a
   * Primary's crash every extent its activity log names marked out of sync.
   * Returns true when the last run ended as a Primary without a clean demotion.
   */
  async recover(plane: DataPlane): Promise<boolean> {
    const sb = this.sb;
    plane.replaceBitmap(this.disk.read(sb.bitmapOffsetBytes, sb.bitmapSizeBytes));
    if (sb.flags.wasPrimary || sb.flags.crashedPrimary) {
      const transaction = newestTransaction(this.disk.read(sb.activityLogOffsetBytes, sb.activityLogSizeBytes));
      if (transaction !== null && transaction.extents.length > 0) {
        const words = extentsToBitmap(transaction.extents, transaction.extentBytes || sb.activityExtentBytes, sb.bitmapGranularityBytes, sb.dataSizeBytes, plane.bitmapBytes());
        plane.mergeBitmap(words);
        this.log.warn('crashed primary: activity-log extents marked out of sync', { extents: transaction.extents.length });
      }
    }
    return sb.flags.wasPrimary;
  }

  /** Writes the superblock with `change` applied, durably, settling an armed generation first. */
  async persist(plane: DataPlane, change: MetadataChange): Promise<void> {
    let rearm: bigint | null = null;
    if (this.armed !== null) {
      this.adoptIfWritten(plane);
      if (this.armed !== null && plane.takeGeneration() === 'armed') rearm = this.armed.superblock.uuids.current;
      this.armed = null;
    }
    const prepared = this.prepare(applyChange(this.sb, change));
    await plane.writeSuperblock(prepared.image, prepared.offsetBytes);
    this.sb = prepared.superblock;
    this.slot = prepared.slot;
    if (rearm !== null) this.arm(plane, rearm);
  }

  /** No read of the disk: the store knows which slot holds the newest copy and its sequence. */
  private prepare(next: Superblock): PreparedWrite {
    const slot = 1 - this.slot;
    const superblock: Superblock = { ...next, sequence: this.sb.sequence + 1 };
    return { superblock, slot, image: encodeSuperblock(superblock), offsetBytes: superblockSlotOffsetBytes(this.disk.sizeBytes, slot) };
  }

  /** Arms the next generation (`fresh` becomes current) for the data plane to write before the first write without the peer. */
  arm(plane: DataPlane, fresh: bigint): void {
    if (this.armed !== null || this.sb.uuids.bitmap !== 0n) return;
    const prepared = this.prepare(applyChange(this.sb, { kind: 'generation-written', fresh }));
    this.armed = prepared;
    plane.armGeneration(prepared.image, prepared.offsetBytes);
  }

  /** Back with the peer, or no longer Primary: an unused armed generation is dropped. */
  disarm(plane: DataPlane): void {
    if (this.armed === null) return;
    this.adoptIfWritten(plane);
    if (this.armed !== null) plane.takeGeneration();
    this.armed = null;
  }

  /** True when the data plane wrote the armed generation (it is the superblock now). */
  adoptIfWritten(plane: DataPlane): boolean {
    if (this.armed === null || plane.takeGeneration(true) !== 'written') return false;
    plane.takeGeneration();
    this.sb = this.armed.superblock;
    this.slot = this.armed.slot;
    this.armed = null;
    this.log.info('new generation: first write without the peer', { current: this.sb.uuids.current.toString(16), bitmap: this.sb.uuids.bitmap.toString(16) });
    return true;
  }
}
