/**
 * Who is newer: DESIGN.md §5, adopted from DRBD's generation UUIDs. One pure
 * function decides from both nodes' UUIDs and disk states, from the local
 * node's point of view. Bit 0 of a UUID carries no meaning here (DRBD uses it
 * for the primary flag); nraid compares whole values.
 */
import { UUID_JUST_CREATED } from './metadata';

export interface GenerationView {
  current: bigint;
  bitmap: bigint;
  history: readonly [bigint, bigint];
}

export interface SideView {
  uuids: GenerationView;
  disk: 'Diskless' | 'Attaching' | 'Inconsistent' | 'Outdated' | 'Consistent' | 'UpToDate';
  primary: boolean;
  /** The node crashed while Primary and has not finished a resync as source since (its superblock flag). */
  crashedPrimary?: boolean;
}

export type SyncDecision =
  /**
   * Same generation: nothing to send beyond the dirty bits either side holds.
   * Or `bothNew`: two new disks, nothing decided until one is promoted with --force.
   */
  | { kind: 'none'; source: 'local' | 'peer' | null; reason: string; bothNew?: true }
  /** One side moved on since the last common generation: resync what its bitmap (and the other's) names. */
  | { kind: 'bitmap'; source: 'local' | 'peer'; reason: string }
  /** No usable bitmap relates the two: every block goes. */
  | { kind: 'full'; source: 'local' | 'peer'; reason: string }
  /** Both moved on from the last common generation: an operator must choose. */
  | { kind: 'split-brain'; source: null; reason: string }
  /** No common generation at all: different data, refuse. */
  | { kind: 'unrelated'; source: null; reason: string };

const DISK_RANK: Record<SideView['disk'], number> = {
  Diskless: 0,
  Attaching: 0,
  Inconsistent: 1,
  Outdated: 2,
  Consistent: 3,
  UpToDate: 4,
};

function hex(uuid: bigint): string {
  return uuid.toString(16).padStart(16, '0');
}

/**
 * With equal generations, the Primary, else the better disk, else the node
 * that crashed as Primary, is the source of dirty regions. A crashed Primary may
 * have acknowledged writes after it lost its peer and before a new generation
 * reached its disk (it marks them in its activity log, not in the generation):
 * as in DRBD's uuid_compare, it must be the source, or its peer's older blocks
 * overwrite them. Found by the torture runner (seed 1234, step 112): both
 * nodes killed 0.3 s apart, the dialer became source and 2 acknowledged
 * writes of the crashed Primary were lost.
 */
function sameGenerationSource(local: SideView, peer: SideView): 'local' | 'peer' | null {
  if (local.primary !== peer.primary) return local.primary ? 'local' : 'peer';
  if (DISK_RANK[local.disk] !== DISK_RANK[peer.disk]) return DISK_RANK[local.disk] > DISK_RANK[peer.disk] ? 'local' : 'peer';
  const localCrashed = local.crashedPrimary === true;
  if (localCrashed !== (peer.crashedPrimary === true)) return localCrashed ? 'local' : 'peer';
  return null;
}

/**
 * True when the session's decision says both disks hold the same data, so a
 * target told "resync-none" may take the source's generation and be UpToDate.
 * Two new disks are not in sync: nothing is sent because nothing is decided
 * yet, and a forced promotion during that session must not make the other
 * node UpToDate without a full sync.
 */
export function decidedInSync(decision: SyncDecision): boolean {
  if (decision.kind === 'none') return decision.bothNew !== true;
  return decision.kind === 'bitmap' || decision.kind === 'full';
}

export function decideSync(local: SideView, peer: SideView): SyncDecision {
  const l = local.uuids;
  const p = peer.uuids;
  const localFresh = l.current === UUID_JUST_CREATED || l.current === 0n;
  const peerFresh = p.current === UUID_JUST_CREATED || p.current === 0n;
  if (localFresh && peerFresh) return { kind: 'none', source: null, reason: 'both disks are new: promote one with primary --force', bothNew: true };
  if (localFresh) return { kind: 'full', source: 'peer', reason: 'the local disk is new' };
  if (peerFresh) return { kind: 'full', source: 'local', reason: 'the peer disk is new' };

  if (l.current === p.current) {
    return { kind: 'none', source: sameGenerationSource(local, peer), reason: `same generation ${hex(l.current)}` };
  }
  if (l.bitmap !== 0n && p.current === l.bitmap) {
    return { kind: 'bitmap', source: 'local', reason: `the peer is at ${hex(p.current)}, where the local bitmap started` };
  }
  if (p.bitmap !== 0n && l.current === p.bitmap) {
    return { kind: 'bitmap', source: 'peer', reason: `this node is at ${hex(l.current)}, where the peer's bitmap started` };
  }
  if (l.bitmap !== 0n && l.bitmap === p.bitmap) {
    return { kind: 'split-brain', source: null, reason: `both moved on from generation ${hex(l.bitmap)}` };
  }
  if (p.current !== 0n && l.history.includes(p.current)) {
    return { kind: 'full', source: 'local', reason: `the peer is at an old generation ${hex(p.current)} with no bitmap left for it` };
  }
  if (l.current !== 0n && p.history.includes(l.current)) {
    return { kind: 'full', source: 'peer', reason: `this node is at an old generation ${hex(l.current)} with no bitmap left for it` };
  }
  const shared = [l.bitmap, ...l.history].filter((u) => u !== 0n && (u === p.bitmap || p.history.includes(u)));
  if (shared.length > 0) {
    return { kind: 'split-brain', source: null, reason: `both moved on from generation ${hex(shared[0])}` };
  }
  return { kind: 'unrelated', source: null, reason: `no common generation (local ${hex(l.current)}, peer ${hex(p.current)})` };
}

/** What each side tells the other when a split brain is found (exchanged over the control link). */
export interface SplitBrainFacts {
  node: string;
  primary: boolean;
  /** When this node last became Primary (0: never). */
  primarySinceMs: number;
  /** Bytes this node changed since the split (its out-of-sync bytes). */
  changedBytes: number;
  /** The operator ran `connect --discard-my-data` here. */
  discardMyData: boolean;
}

export type AfterSplitBrainPolicy = 'disconnect' | 'discard-zero-changes' | 'discard-younger-primary' | 'discard-least-changes';

/**
 * Turns a split brain into a bitmap resync when the operator chose a victim
 * (`connect --discard-my-data`) or, with no Primary on either side, when the
 * after-sb-0pri policy picks one. Both nodes run this with the same facts
 * swapped, so they agree. Otherwise the split brain stands: nothing is lost.
 */
export function resolveSplitBrain(
  decision: SyncDecision,
  local: SplitBrainFacts,
  peer: SplitBrainFacts,
  policy: AfterSplitBrainPolicy,
): SyncDecision {
  if (decision.kind !== 'split-brain') return decision;
  if (local.discardMyData && peer.discardMyData) {
    return { ...decision, reason: `${decision.reason}; both nodes asked to discard their data: choose one` };
  }
  if (local.discardMyData) return { kind: 'bitmap', source: 'peer', reason: `split brain resolved: ${local.node} discards its changes` };
  if (peer.discardMyData) return { kind: 'bitmap', source: 'local', reason: `split brain resolved: ${peer.node} discards its changes` };
  if (local.primary || peer.primary || policy === 'disconnect') return decision;
  const victim = pickVictim(local, peer, policy);
  if (victim === null) return { ...decision, reason: `${decision.reason}; after-sb-0pri ${policy} found no victim` };
  return {
    kind: 'bitmap',
    source: victim === 'local' ? 'peer' : 'local',
    reason: `split brain resolved by after-sb-0pri ${policy}: ${victim === 'local' ? local.node : peer.node} discards its changes`,
  };
}

function pickVictim(local: SplitBrainFacts, peer: SplitBrainFacts, policy: AfterSplitBrainPolicy): 'local' | 'peer' | null {
  switch (policy) {
    case 'discard-zero-changes':
      if (local.changedBytes === 0 && peer.changedBytes > 0) return 'local';
      if (peer.changedBytes === 0 && local.changedBytes > 0) return 'peer';
      return null;
    case 'discard-younger-primary':
      if (local.primarySinceMs === peer.primarySinceMs) return null;
      return local.primarySinceMs > peer.primarySinceMs ? 'local' : 'peer';
    case 'discard-least-changes':
      if (local.changedBytes !== peer.changedBytes) return local.changedBytes < peer.changedBytes ? 'local' : 'peer';
      if (local.primarySinceMs !== peer.primarySinceMs) return local.primarySinceMs > peer.primarySinceMs ? 'local' : 'peer';
      return null;
    case 'disconnect':
      return null;
  }
}
