/**
 * Every change the control plane makes to the superblock, as data: the state
 * machine emits them, applies them to its own view, and the metadata store
 * applies the same function to the superblock it writes. One definition, so
 * what the machine believes and what is on the disk cannot drift apart.
 */
import { GenerationUuids, SuperblockFlags, UUID_JUST_CREATED } from '../metadata';

/** The part of the superblock the state machine reasons about. */
export interface MetadataView {
  flags: SuperblockFlags;
  uuids: GenerationUuids;
  primarySinceMs: number;
}

export type MetadataChange =
  /** `primary --force`: the local data is declared the newest; a new generation starts (`fresh`). */
  | { kind: 'forced-promotion'; fresh: bigint }
  | { kind: 'became-primary'; atMs: number }
  | { kind: 'became-secondary' }
  /** About to receive a sync: Inconsistent from now until it ends (before any byte arrives). */
  | { kind: 'target-begins' }
  /** The source's bitmap is durable and names what it sends: join its generation. */
  | { kind: 'target-joins'; current: bigint; history: readonly [bigint, bigint] }
  /** Every block arrived (or none was needed): UpToDate at the source's generation. */
  | { kind: 'target-done'; current: bigint; history: readonly [bigint, bigint] }
  /** The source's resync ended: the bitmap UUID goes to history, a crash is resolved. */
  | { kind: 'source-done' }
  | { kind: 'invalidated' }
  /** The last run ended while Primary without a clean demotion. */
  | { kind: 'crash-noted' }
  /** The data plane wrote the armed generation (first write without the peer). */
  | { kind: 'generation-written'; fresh: bigint }
  /**
   * The peer, Primary, lost its disk (Diskless) and now writes to this disk alone: a new
   * generation starts here (`fresh`), so its old disk, if it comes back, is behind by one
   * and resyncs from this node (every block: the bitmap is all set with it).
   */
  | { kind: 'peer-disk-lost'; fresh: bigint }
  /** A superblock slot was torn or damaged at start: the lost write may have been a downgrade (metadata-damage.ts). */
  | { kind: 'damage-noted' };

/**
 * Changes that a lost superblock slot must never undo: they make the disk
 * worse (Inconsistent, invalid, Outdated) or move its generation. The store
 * writes them to both slots, one after the other (metadata-store.ts), so the
 * slot that survives damage to the other one still holds them.
 */
export function mustSurviveLostSlot(change: MetadataChange): boolean {
  switch (change.kind) {
    case 'target-begins':
    case 'target-joins':
    case 'invalidated':
    case 'forced-promotion':
    case 'generation-written':
    case 'damage-noted':
    case 'peer-disk-lost':
      return true;
    default:
      return false;
  }
}

/** A sync target takes the source's generation: its current and history, no bitmap UUID. */
function takeSourceGeneration(uuids: MetadataView['uuids'], source: { current: bigint; history: readonly [bigint, bigint] }): void {
  uuids.current = source.current;
  uuids.bitmap = 0n;
  uuids.history = [source.history[0], source.history[1]];
}

export function cloneView<T extends MetadataView>(view: T): T {
  return { ...view, flags: { ...view.flags }, uuids: { ...view.uuids, history: [...view.uuids.history] as [bigint, bigint] } };
}

/** The view after `change`; the input is not modified. */
export function applyChange<T extends MetadataView>(view: T, change: MetadataChange): T {
  const next = cloneView(view);
  const { flags, uuids } = next;
  switch (change.kind) {
    case 'forced-promotion': {
      flags.consistent = true;
      flags.wasUpToDate = true;
      flags.outdated = false;
      // The generation it leaves becomes the bitmap UUID, so a peer still at it gets a
      // bitmap resync, not a full one.
      const left = uuids.current;
      if (left !== UUID_JUST_CREATED && left !== 0n) {
        if (uuids.bitmap === 0n) uuids.bitmap = left;
        else uuids.history = [left, uuids.history[0]];
      }
      uuids.current = change.fresh;
      break;
    }
    case 'became-primary':
      flags.wasPrimary = true;
      next.primarySinceMs = change.atMs;
      break;
    case 'became-secondary':
      flags.wasPrimary = false;
      break;
    case 'target-begins':
      flags.consistent = false;
      flags.resyncInProgress = true;
      break;
    case 'target-joins':
      flags.consistent = false;
      flags.resyncInProgress = true;
      takeSourceGeneration(uuids, change);
      break;
    case 'target-done':
      flags.consistent = true;
      flags.wasUpToDate = true;
      flags.outdated = false;
      flags.resyncInProgress = false;
      flags.crashedPrimary = false;
      flags.fullSyncNeeded = false;
      takeSourceGeneration(uuids, change);
      break;
    case 'source-done':
      if (uuids.bitmap !== 0n) uuids.history = [uuids.bitmap, uuids.history[0]];
      uuids.bitmap = 0n;
      flags.crashedPrimary = false;
      break;
    case 'invalidated':
      flags.consistent = false;
      flags.wasUpToDate = false;
      flags.fullSyncNeeded = true;
      break;
    case 'crash-noted':
      flags.crashedPrimary = true;
      flags.wasPrimary = false;
      break;
    case 'generation-written':
      uuids.bitmap = uuids.current;
      uuids.current = change.fresh;
      break;
    case 'peer-disk-lost':
      if (uuids.bitmap === 0n) uuids.bitmap = uuids.current;
      else uuids.history = [uuids.current, uuids.history[0]];
      uuids.current = change.fresh;
      break;
    case 'damage-noted':
      // No better than Outdated: an Inconsistent disk stays Inconsistent.
      if (flags.consistent) flags.outdated = true;
      break;
  }
  return next;
}
