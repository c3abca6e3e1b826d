/**
 * The only owner of this node's metadata on disk: the superblock, the
 * generation armed for the first write without the peer, and (through the
 * data plane) the bitmap and the activity log. Superblock writes go through
 * the data plane's metadata thread, never blocking the event loop.
 */
import crypto from 'node:crypto';
import fs from 'node:fs';
import path from 'node:path';
import { ActivityLogInspection, inspectActivityLog } from '../activity-log';
import { BackingDisk } from '../disk';
import { MetadataError } from '../errors';
import { Superblock, encodeSuperblock, inspectSuperblocks, superblockSlotOffsetBytes } from '../metadata';
import { DataPlane } from './data-plane';
import { DamageReport, OpenDecision, decideActivityLog, decideOpen, superblockReport } from './metadata-damage';
import { MetadataChange, MetadataView, applyChange, cloneView, mustSurviveLostSlot } from './metadata-change';

/** Damaged activity-log records whose images go into the evidence file (the rest are counted). */
const evidenceRecordsMax = 16;

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
  error(message: string, fields?: Record<string, unknown>): void;
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
  /** Superblock writes one at a time: each picks its slot and sequence when it runs. */
  private writes: Promise<void> = Promise.resolve();
  private readonly damageReports: DamageReport[] = [];

  private constructor(
    readonly disk: BackingDisk,
    private readonly opened: OpenDecision,
    private readonly log: StoreLog,
    /** Where the images of damaged metadata are kept before anything overwrites them (the run dir); null: the log only. */
    private readonly evidenceDir: string | null,
  ) {
    this.sb = opened.chosen.superblock;
    this.slot = opened.chosen.slot;
  }

  /**
   * Reads both superblock slots, starts from the newest valid one and checks
   * it belongs to `resource`. Synchronous: before anything is served. A torn,
   * damaged or zeroed other slot is reported, never overwritten before
   * recover() has kept its image.
   */
  static open(disk: BackingDisk, resource: string, log: StoreLog, evidenceDir: string | null = null): MetadataStore {
    const slots = inspectSuperblocks(disk);
    const decision = decideOpen(slots);
    if (decision === null) {
      const problems = slots.map((s) => `slot ${s.slot}: ${s.problem}`).join(', ');
      const blank = slots.every((s) => s.condition === 'blank');
      throw new MetadataError(
        blank
          ? `no valid nraid metadata on ${disk.path} (${problems}); run nraid create-md`
          : `no valid nraid metadata on ${disk.path} (${problems}); nraid dump-md shows it; nraid restore-md from a saved dump repairs it, or run nraid create-md --force to start over`,
      );
    }
    const sb = decision.chosen.superblock;
    if (sb.resource !== resource) {
      throw new MetadataError(
        `backing device ${disk.path} holds metadata of resource "${sb.resource}", not "${resource}"; ` +
          'check the config, or run nraid create-md --force to give the disk to this resource (its data becomes unusable)',
      );
    }
    return new MetadataStore(disk, decision, log, evidenceDir);
  }

  /** Metadata damage found at start (empty when none): status --json shows it as metadataDamage. */
  get damage(): readonly DamageReport[] {
    return this.damageReports;
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
   * Damage is handled here, in this order: its evidence is kept (run dir and
   * log), the bitmap or activity log that cannot be trusted marks the whole
   * device, a lost superblock slot writes the node down to Outdated (both
   * slots), and the activity log starts empty. Returns true when the last run
   * ended as a Primary without a clean demotion (and the superblock says so).
   */
  async recover(plane: DataPlane): Promise<boolean> {
    const sb = this.sb;
    const sbReport = superblockReport(this.opened);
    if (sbReport !== null) this.damageReports.push(sbReport);

    let bitmapReadable = true;
    try {
      // Read a chunk at a time in native code: the whole bitmap is 32 MiB per TiB, and a copy in JS
      // would stay resident until a garbage collection that a quiet daemon may not run for long.
      if (sb.bitmapSizeBytes < plane.bitmapBytes()) throw new MetadataError(`the on-disk bitmap has ${sb.bitmapSizeBytes} bytes, the data needs ${plane.bitmapBytes()}`);
      plane.loadBitmap(this.disk.handle, sb.bitmapOffsetBytes);
    } catch (error) {
      bitmapReadable = false;
      plane.markAll();
      this.damageReports.push({ area: 'bitmap', slot: null, condition: 'unreadable', problem: (error as Error).message, action: 'the whole device is marked out of sync' });
    }

    let inspection: ActivityLogInspection | null = null;
    let readProblem: string | null = null;
    try {
      const extents = Math.ceil(sb.dataSizeBytes / sb.activityExtentBytes);
      inspection = inspectActivityLog(this.disk.read(sb.activityLogOffsetBytes, sb.activityLogSizeBytes), { extentBytes: sb.activityExtentBytes, extents });
    } catch (error) {
      readProblem = (error as Error).message;
    }
    const consulted = sb.flags.wasPrimary || sb.flags.crashedPrimary || this.opened.replayActivityLog;
    const action = decideActivityLog(inspection, consulted, sb.activityExtentBytes);
    if (readProblem !== null || (inspection !== null && inspection.damaged.length > 0)) {
      const first = inspection?.damaged[0];
      this.damageReports.push({
        area: 'activity-log',
        slot: first?.index ?? null,
        condition: readProblem !== null ? 'unreadable' : 'damaged',
        problem: readProblem ?? `${inspection!.damaged.length} damaged record(s); first: ${first!.problem}`,
        action: action.kind === 'all' ? 'the whole device is marked out of sync' : 'not needed: the last run ended cleanly as Secondary; the log starts empty',
      });
    }
    if (this.damageReports.length > 0) this.keepEvidence(inspection);

    let merged = false;
    if (action.kind === 'all') {
      plane.markAll();
      merged = true;
      this.log.warn('activity log not trusted: the whole device is marked out of sync', { reason: action.reason });
    } else if (action.kind === 'extents') {
      // Extent by extent in place (no bitmap-sized buffer), each once: distinct extents are disjoint
      // ranges, so the work is bounded by the bitmap's size. Extents past the data are ignored.
      for (const extent of new Set(action.extents)) {
        const offsetBytes = extent * action.extentBytes;
        if (offsetBytes < sb.dataSizeBytes) plane.markRange(offsetBytes, Math.min(action.extentBytes, sb.dataSizeBytes - offsetBytes));
      }
      merged = true;
      this.log.warn(this.opened.lost === null ? 'crashed primary: activity-log extents marked out of sync' : 'the last run may have ended as Primary: activity-log extents marked out of sync', {
        extents: action.extents.length,
      });
    }
    if (!bitmapReadable) merged = true;

    let crashed = sb.flags.wasPrimary;
    if (this.opened.lost !== null) {
      // The older slot's wasPrimary says what was true one write ago: say what is known, no more.
      this.log.warn('a superblock slot is lost (torn, damaged or zeroed): the node starts from the other one', { ...sbReport });
      if (this.opened.downgrade) await this.persist(plane, { kind: 'damage-noted' });
      if (sb.flags.wasPrimary) {
        this.log.warn('the previous run may have ended while Primary (the newest superblock slot is lost): treated as a crashed primary');
        await this.persist(plane, { kind: 'crash-noted' });
      }
      crashed = false;
    }
    await this.restartActivityLog(plane, inspection, merged);
    return crashed;
  }

  /**
   * The native activity log numbers its transactions from 1 in every run, so
   * a previous run's records (with higher sequences) would shadow this run's
   * after a crash: once what they say is durable in the bitmap, the ring is
   * zeroed. A crash in between replays the same records again: harmless.
   */
  private async restartActivityLog(plane: DataPlane, inspection: ActivityLogInspection | null, merged: boolean): Promise<void> {
    const sb = this.sb;
    if (inspection !== null && inspection.validRecords === 0 && inspection.damaged.length === 0) return;
    if (merged) await plane.persistBitmap(true);
    try {
      this.disk.write(sb.activityLogOffsetBytes, Buffer.alloc(sb.activityLogSizeBytes));
      this.disk.flush();
    } catch (error) {
      // Not fatal: the next start replays more than needed, never less than the bitmap holds.
      this.log.error('could not clear the activity log', { error: (error as Error).message });
    }
  }

  /** The images of what is damaged, in the run dir and the log, before anything writes over them. */
  private keepEvidence(inspection: ActivityLogInspection | null): void {
    const lost = this.opened.lost;
    const evidence = {
      kind: 'nraid-metadata-damage',
      detectedAt: new Date().toISOString(),
      device: this.disk.path,
      resource: this.sb.resource,
      node: this.sb.node,
      reports: this.damageReports,
      superblockSlot: lost === null ? null : { slot: lost.slot, offsetBytes: lost.offsetBytes, condition: lost.condition, problem: lost.problem, imageBase64: lost.image.toString('base64') },
      activityLogRecords: (inspection?.damaged ?? []).slice(0, evidenceRecordsMax).map((r) => ({
        index: r.index,
        offsetBytes: this.sb.activityLogOffsetBytes + r.index * r.image.length,
        problem: r.problem,
        imageBase64: r.image.toString('base64'),
      })),
      activityLogRecordsDamaged: inspection?.damaged.length ?? 0,
    };
    let file: string | null = null;
    if (this.evidenceDir !== null) {
      file = path.join(this.evidenceDir, `metadata-damage-${evidence.detectedAt.replace(/[:.]/g, '-')}.json`);
      try {
        fs.writeFileSync(file, JSON.stringify(evidence, null, 2) + '\n', { mode: 0o600 });
      } catch (error) {
        this.log.error('could not keep the damaged metadata in the run dir; its image is in this log', { file, error: (error as Error).message });
        file = null;
      }
    }
    this.log.warn('metadata damage found: the damaged images are kept before anything is written', {
      evidence: file,
      reports: this.damageReports,
      superblockImageBase64: evidence.superblockSlot?.imageBase64 ?? null,
    });
    for (const report of this.damageReports) {
      if (file !== null) report.action += `; evidence in ${file}`;
    }
  }

  /**
   * Writes the superblock with `change` applied, durably. A change that a lost
   * slot must never undo (mustSurviveLostSlot) is then written to the other
   * slot too. An armed generation stays armed throughout (see write).
   */
  persist(plane: DataPlane, change: MetadataChange): Promise<void> {
    return this.serialized(async () => {
      await this.write(plane, (sb) => applyChange(sb, change));
      if (mustSurviveLostSlot(change)) await this.write(plane, (sb) => sb);
    });
  }

  /** Called with each generation the data plane started, once adopted here. */
  onGenerationAdopted: (() => void) | null = null;

  /** A 'generation-started' event: adopted in turn with the writes, so that `armed` is the image the data plane held. */
  adoptStarted(plane: DataPlane): Promise<void> {
    return this.serialized(async () => {
      this.adoptIfWritten(plane);
    });
  }

  private serialized(job: () => Promise<void>): Promise<void> {
    const run = this.writes.then(job);
    this.writes = run.catch(() => undefined);
    return run;
  }

  /**
   * With a generation armed, the armed image is prepared again to follow each
   * write (the next slot, the next sequence) and swapped in by the same native
   * job, so the data plane never holds an image this write made stale and
   * never goes without one. If the data plane started the armed generation
   * first, it is adopted and the write is prepared again on top of it.
   */
  private async write(plane: DataPlane, next: (sb: Superblock) => Superblock): Promise<void> {
    this.adoptIfWritten(plane);
    for (;;) {
      const prepared = this.prepare(next(this.sb), this.sb.sequence, this.slot);
      const fresh = this.armed?.superblock.uuids.current ?? null;
      const successor = fresh === null ? null : this.prepare(applyChange(prepared.superblock, { kind: 'generation-written', fresh }), prepared.superblock.sequence, prepared.slot);
      if (await plane.writeSuperblock(prepared.image, prepared.offsetBytes, successor ?? undefined)) {
        this.sb = prepared.superblock;
        this.slot = prepared.slot;
        if (successor !== null) this.armed = successor;
        return;
      }
      if (!this.adoptIfWritten(plane)) {
        throw new MetadataError('the data plane reports a started generation this node never armed; run nraid down and up again to reread the metadata');
      }
    }
  }

  /** No read of the disk: the store knows which slot holds the newest copy and its sequence. */
  private prepare(next: Superblock, afterSequence = this.sb.sequence, afterSlot = this.slot): PreparedWrite {
    const slot = 1 - afterSlot;
    const superblock: Superblock = { ...next, sequence: afterSequence + 1 };
    return { superblock, slot, image: encodeSuperblock(superblock), offsetBytes: superblockSlotOffsetBytes(this.disk.sizeBytes, slot) };
  }

  /** Arms the next generation (`fresh` becomes current) for the data plane to write before the first write without the peer. */
  /** In turn with the writes: an image prepared beside a write in flight would target its slot. */
  arm(plane: DataPlane, fresh: bigint): Promise<void> {
    return this.serialized(async () => {
      if (this.armed !== null || this.sb.uuids.bitmap !== 0n) return;
      const prepared = this.prepare(applyChange(this.sb, { kind: 'generation-written', fresh }));
      this.armed = prepared;
      plane.armGeneration(prepared.image, prepared.offsetBytes);
    });
  }

  /** No longer Primary (or Diskless): an unused armed generation is dropped. */
  disarm(plane: DataPlane): Promise<void> {
    return this.serialized(async () => {
      if (this.armed === null) return;
      this.adoptIfWritten(plane);
      if (this.armed !== null) plane.takeGeneration();
      this.armed = null;
    });
  }

  /** True when the data plane wrote the armed generation (it is the superblock now). */
  adoptIfWritten(plane: DataPlane): boolean {
    if (this.armed === null || plane.takeGeneration(true) !== 'written') return false;
    plane.takeGeneration();
    this.sb = this.armed.superblock;
    this.slot = this.armed.slot;
    this.armed = null;
    this.log.info('new generation: first write without the peer', { current: this.sb.uuids.current.toString(16), bitmap: this.sb.uuids.bitmap.toString(16) });
    this.onGenerationAdopted?.();
    // The data plane wrote one slot; the copy in the other follows (mustSurviveLostSlot).
    this.serialized(() => this.write(plane, (sb) => sb)).catch((error: Error) =>
      this.log.error('writing the second copy of the new generation failed', { error: error.message }),
    );
    return true;
  }
}
