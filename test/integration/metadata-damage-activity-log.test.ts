/**
 * The activity log at start (issue 10, item 5), through the metadata store
 * and a real data plane on a sparse file (O_DIRECT):
 *
 * Regression: the native log numbers its transactions from 1 in every run, so
 * records of an earlier run (higher sequences) shadowed the current run's:
 * after a crash, recovery marked the earlier run's extents and missed the
 * extents that were hot when it crashed. Now the ring is cleared at start,
 * once what it says is durable in the bitmap.
 *
 * And: a damaged record, after a possible Primary crash, marks the whole
 * device out of sync and is reported.
 */
import { ACTIVITY_MAGIC, inspectActivityLog } from '../../src/activity-log';
import { BackingDisk } from '../../src/disk';
import * as limits from '../../src/limits';
import { createMetadata, Superblock, writeSuperblock } from '../../src/metadata';
import { DataPlane } from '../../src/resource/data-plane';
import { MetadataStore } from '../../src/resource/metadata-store';
import { makeSparseFile, SparseFile } from '../harness/loop';
import { describeIntegration } from '../harness/prereq';

const MiB = 1024 * 1024;
const FILE_BYTES = 64 * MiB;

const quiet = { info: () => {}, warn: () => {}, error: () => {} };

describeIntegration('activity log at start: cleared after recovery, damage marks the whole device', ['nraid-cli'], () => {
  let file: SparseFile;
  let sb: Superblock;

  beforeAll(async () => {
    file = await makeSparseFile(FILE_BYTES, 'md-al');
    const disk = BackingDisk.open(file.file, { configKey: 'test' });
    try {
      sb = createMetadata(disk, { resource: 'r0', node: 'alpha', force: false });
    } finally {
      disk.close();
    }
  });

  afterAll(async () => {
    await file?.remove();
  });

  /** One run of the daemon's start: open, recover; `during` runs with the plane; then everything closes. */
  async function run<T>(during: (plane: DataPlane, store: MetadataStore, disk: BackingDisk) => Promise<T>): Promise<T> {
    const disk = BackingDisk.open(file.file, { configKey: 'test' });
    let plane: DataPlane | null = null;
    try {
      const store = MetadataStore.open(disk, 'r0', quiet);
      plane = new DataPlane(disk, store.superblock, () => {});
      await store.recover(plane);
      return await during(plane, store, disk);
    } finally {
      plane?.destroy();
      disk.close();
    }
  }

  function activityLog(disk: BackingDisk) {
    return inspectActivityLog(disk.read(sb.activityLogOffsetBytes, sb.activityLogSizeBytes), {
      extentBytes: sb.activityExtentBytes,
      extents: Math.ceil(sb.dataSizeBytes / sb.activityExtentBytes),
    });
  }

  test('a second run\'s transactions are the newest, not the first run\'s', async () => {
    await run(async (plane) => {
      for (let i = 0; i < 5; i++) await plane.resetActivityLog();
    });
    const newest = await run(async (plane, _store, disk) => {
      expect(activityLog(disk).validRecords).toBe(0); // cleared at start
      await plane.resetActivityLog();
      expect(activityLog(disk).validRecords).toBe(1);
      return activityLog(disk).newest;
    });
    // The only record on disk is the second run's, and its sequence continues the first run's
    // (the data plane numbers on from the newest sequence it found: activity-log-sequence.test.ts).
    expect(newest?.sequence).toBe(6n);
  });

  test('a damaged record after a possible Primary crash: the whole device out of sync, reported', async () => {
    const disk = BackingDisk.open(file.file, { configKey: 'test' });
    try {
      const record = Buffer.alloc(limits.activityTransactionBytes);
      record.writeUInt32LE(ACTIVITY_MAGIC, 0);
      record.writeUInt32LE(1, 4);
      record.writeBigUInt64LE(7n, 8); // no valid checksum: damaged
      disk.write(sb.activityLogOffsetBytes + 2 * limits.activityTransactionBytes, record);
      const current = MetadataStore.open(disk, 'r0', quiet).superblock;
      writeSuperblock(disk, { ...current, flags: { ...current.flags, wasPrimary: true } });
    } finally {
      disk.close();
    }
    await run(async (plane, store, opened) => {
      expect(plane.outOfSyncBytes()).toBe(sb.dataSizeBytes);
      expect(store.damage).toEqual([expect.objectContaining({ area: 'activity-log', slot: 2, condition: 'damaged', action: expect.stringMatching(/whole device/) })]);
      expect(activityLog(opened).damaged).toHaveLength(0); // the evidence went to the report; the ring starts empty
      // The marks are durable: the next start finds them in the bitmap.
      const bitmap = opened.read(sb.bitmapOffsetBytes, sb.bitmapSizeBytes);
      expect(bitmap[0]).toBe(0xff);
    });
  });
});
