/**
 * What a node may believe when its metadata is damaged (issue 10, item 5):
 * pure decisions from what the metadata store read at start, tested row by
 * row without a disk. The store executes them (metadata-store.ts);
 * docs/CONTRACTS.md "Metadata damage" says why each is safe.
 */
import { ActivityLogInspection } from '../activity-log';
import { SlotState, Superblock, diskStateOf, newestSlot } from '../metadata';
import { MetadataDamageReport } from '../state';

/** One damaged area, as `status --json` (metadataDamage) and `events` (exists) show it. */
export type DamageReport = MetadataDamageReport;

export interface OpenDecision {
  /** The newest valid slot: the node starts from it. */
  chosen: SlotState & { superblock: Superblock };
  /** The other slot when it is torn, damaged or blank (not when it is valid). */
  lost: SlotState | null;
  /**
   * The lost slot may have held a newer write, and the node cannot know
   * whether that write was a downgrade (UpToDate to Inconsistent, a new
   * generation): it comes up no better than Outdated.
   */
  downgrade: boolean;
  /** A lost `became-primary` would hide a crash: the activity log is replayed as after one. */
  replayActivityLog: boolean;
}

/**
 * Which slot to start from, and what a lost other slot costs. Null when no
 * slot is valid (the store then refuses to start; both blank: a device that
 * never had metadata). A blank slot next to a valid one is lost too: nraid
 * never leaves one (create-md and restore-md write both slots, and every
 * write after them goes to one or the other), so it was zeroed afterwards
 * (by a discard, a stray dd) and may have held the newest write; it is
 * reported as `zeroed`. A torn slot is handled like a damaged one: its label
 * comes from a heuristic (the write stamps), and a wrong label must not make
 * the node trust more.
 */
export function decideOpen(slots: readonly SlotState[]): OpenDecision | null {
  const chosen = newestSlot(slots);
  if (chosen === null || chosen.superblock === null) return null;
  const lost = slots.find((s) => s !== chosen && s.condition !== 'valid') ?? null;
  const state = diskStateOf(chosen.superblock);
  return {
    chosen: chosen as SlotState & { superblock: Superblock },
    lost,
    downgrade: lost !== null && (state === 'UpToDate' || state === 'Consistent'),
    replayActivityLog: lost !== null,
  };
}

export type ActivityLogAction =
  /** Nothing to replay: the last run ended cleanly as Secondary and nothing was lost. */
  | { kind: 'none' }
  /** Mark the extents the newest transaction names (the usual crash recovery). */
  | { kind: 'extents'; extents: readonly number[]; extentBytes: number }
  /** The log cannot be trusted: every extent may have been hot, the whole device is out of sync. */
  | { kind: 'all'; reason: string };

/**
 * What the activity log means at start. It matters only when the last run
 * may have ended as Primary (`consulted`); then a damaged or unreadable log is
 * treated as "everything possibly hot": the whole device is marked out of
 * sync (a full resync with the peer; a damaged record could have named any
 * extent). `inspection` null: the area could not be read.
 */
export function decideActivityLog(inspection: ActivityLogInspection | null, consulted: boolean, fallbackExtentBytes: number): ActivityLogAction {
  if (!consulted) return { kind: 'none' };
  if (inspection === null) return { kind: 'all', reason: 'the activity log could not be read' };
  if (inspection.damaged.length > 0) {
    return { kind: 'all', reason: `${inspection.damaged.length} damaged activity-log record(s), first at ${inspection.damaged[0].index}: ${inspection.damaged[0].problem}` };
  }
  const newest = inspection.newest;
  if (newest === null || newest.extents.length === 0) return { kind: 'none' };
  return { kind: 'extents', extents: newest.extents, extentBytes: newest.extentBytes || fallbackExtentBytes };
}

/** The report of a lost superblock slot. */
export function superblockReport(decision: OpenDecision): DamageReport | null {
  const lost = decision.lost;
  if (lost === null) return null;
  const action = decision.downgrade
    ? `came up Outdated from slot ${decision.chosen.slot} (sequence ${decision.chosen.superblock.sequence}): the lost write may have been a downgrade`
    : `came up from slot ${decision.chosen.slot} (sequence ${decision.chosen.superblock.sequence}), ${diskStateOf(decision.chosen.superblock)} already`;
  const condition = lost.condition === 'torn' ? 'torn' : lost.condition === 'blank' ? 'zeroed' : 'damaged';
  return { area: 'superblock', slot: lost.slot, condition, problem: lost.problem ?? 'not valid', action };
}
