/**
 * The generation-UUID decision table (DESIGN.md §5, src/sync-decision.ts):
 * one test per row of decideSync and of resolveSplitBrain. Every case is also
 * run from the other node's point of view (local and peer swapped): both nodes
 * decide the same kind, with the source mirrored, or they would disagree on
 * who sends.
 */
import { UUID_JUST_CREATED } from '../../src/metadata';
import {
  AfterSplitBrainPolicy,
  decidedInSync,
  decideSync,
  resolveSplitBrain,
  SideView,
  SplitBrainFacts,
  SyncDecision,
} from '../../src/sync-decision';

// Distinct generation UUIDs (any value above the reserved small ones).
const A = 0xa1a1a1a1a1a1a1a1n;
const B = 0xb2b2b2b2b2b2b2b2n;
const C = 0xc3c3c3c3c3c3c3c3n;
const D = 0xd4d4d4d4d4d4d4d4n;
const E = 0xe5e5e5e5e5e5e5e5n;
const F = 0xf6f6f6f6f6f6f6f6n;
const G = 0x1717171717171717n;
const H = 0x2828282828282828n;

type Disk = SideView['disk'];

function side(current: bigint, bitmap = 0n, history: [bigint, bigint] = [0n, 0n], disk: Disk = 'UpToDate', primary = false): SideView {
  return { uuids: { current, bitmap, history }, disk, primary };
}

const fresh = (disk: Disk = 'Inconsistent'): SideView => side(UUID_JUST_CREATED, 0n, [0n, 0n], disk);

type Source = 'local' | 'peer' | null;

function mirror(source: Source): Source {
  return source === null ? null : source === 'local' ? 'peer' : 'local';
}

/** decideSync from both nodes' points of view; they must agree (kind equal, source mirrored). */
function decideBoth(local: SideView, peer: SideView): SyncDecision {
  const here = decideSync(local, peer);
  const there = decideSync(peer, local);
  expect({ kind: there.kind, source: there.source }).toEqual({ kind: here.kind, source: mirror(here.source) });
  return here;
}

interface Row {
  row: string;
  local: SideView;
  peer: SideView;
  kind: SyncDecision['kind'];
  source: Source;
  /** A fragment the reason must carry (the operator reads it in the log). */
  reason?: RegExp;
}

const rows: Row[] = [
  { row: 'both disks new', local: fresh(), peer: fresh(), kind: 'none', source: null, reason: /both disks are new/ },
  { row: 'both new, current 0 on one (never written metadata)', local: side(0n, 0n, [0n, 0n], 'Inconsistent'), peer: fresh(), kind: 'none', source: null },
  { row: 'local disk new: full sync from the peer', local: fresh(), peer: side(A), kind: 'full', source: 'peer', reason: /local disk is new/ },
  { row: 'peer disk new: full sync from local', local: side(A), peer: fresh(), kind: 'full', source: 'local', reason: /peer disk is new/ },
  {
    row: 'same generation, local Primary: local is the source of dirty regions',
    local: side(A, 0n, [B, 0n], 'UpToDate', true),
    peer: side(A, 0n, [B, 0n], 'UpToDate', false),
    kind: 'none',
    source: 'local',
    reason: /same generation a1a1a1a1a1a1a1a1/,
  },
  {
    row: 'same generation, peer Primary: the peer is the source',
    local: side(A, 0n, [B, 0n], 'UpToDate', false),
    peer: side(A, 0n, [B, 0n], 'UpToDate', true),
    kind: 'none',
    source: 'peer',
  },
  {
    row: 'same generation, no Primary, peer has the better disk',
    local: side(A, 0n, [0n, 0n], 'Outdated'),
    peer: side(A, 0n, [0n, 0n], 'UpToDate'),
    kind: 'none',
    source: 'peer',
  },
  {
    row: 'same generation, no Primary, local Consistent beats peer Inconsistent',
    local: side(A, 0n, [0n, 0n], 'Consistent'),
    peer: side(A, 0n, [0n, 0n], 'Inconsistent'),
    kind: 'none',
    source: 'local',
  },
  {
    row: 'same generation, Primary wins over a better disk',
    local: side(A, 0n, [0n, 0n], 'Consistent', true),
    peer: side(A, 0n, [0n, 0n], 'UpToDate', false),
    kind: 'none',
    source: 'local',
  },
  // Regression (torture seed 1234, step 112): both killed 0.3 s apart, the old Primary's
  // acknowledged writes were overwritten by the dialer's older blocks.
  {
    row: 'same generation, no Primary, same disk: the node that crashed as Primary is the source',
    local: side(A),
    peer: { ...side(A), crashedPrimary: true },
    kind: 'none',
    source: 'peer',
  },
  {
    row: 'same generation: a Primary wins over a crashed Primary',
    local: { ...side(A), crashedPrimary: true },
    peer: side(A, 0n, [0n, 0n], 'UpToDate', true),
    kind: 'none',
    source: 'peer',
  },
  {
    row: 'same generation, both crashed as Primary, same disk: no source',
    local: { ...side(A), crashedPrimary: true },
    peer: { ...side(A), crashedPrimary: true },
    kind: 'none',
    source: null,
  },
  {
    row: 'same generation, same role and disk: no source',
    local: side(A),
    peer: side(A),
    kind: 'none',
    source: null,
  },
  {
    row: 'peer is at local bitmap UUID: bitmap resync from local',
    local: side(B, A, [C, 0n]),
    peer: side(A, 0n, [C, 0n]),
    kind: 'bitmap',
    source: 'local',
    reason: /where the local bitmap started/,
  },
  {
    row: 'local is at the peer bitmap UUID: bitmap resync from the peer',
    local: side(A, 0n, [C, 0n]),
    peer: side(B, A, [C, 0n]),
    kind: 'bitmap',
    source: 'peer',
    reason: /where the peer's bitmap started/,
  },
  {
    row: 'both moved on from the same bitmap UUID: split brain',
    local: side(B, A, [C, 0n]),
    peer: side(D, A, [C, 0n]),
    kind: 'split-brain',
    source: null,
    reason: /both moved on from generation a1a1a1a1a1a1a1a1/,
  },
  {
    row: 'peer current in local history (no bitmap left): full sync from local',
    local: side(C, 0n, [B, A]),
    peer: side(A, 0n, [D, 0n]),
    kind: 'full',
    source: 'local',
    reason: /old generation a1a1a1a1a1a1a1a1/,
  },
  {
    row: 'peer current in the second local history slot: full sync from local',
    local: side(C, 0n, [B, A]),
    peer: side(B, 0n, [0n, 0n]),
    kind: 'full',
    source: 'local',
  },
  {
    row: 'local current in peer history: full sync from the peer',
    local: side(A, 0n, [D, 0n]),
    peer: side(C, 0n, [B, A]),
    kind: 'full',
    source: 'peer',
  },
  {
    row: 'shared history (bitmaps differ): split brain',
    local: side(E, D, [A, 0n]),
    peer: side(G, F, [A, 0n]),
    kind: 'split-brain',
    source: null,
    reason: /both moved on from generation a1a1a1a1a1a1a1a1/,
  },
  {
    row: 'local bitmap in peer history: split brain',
    local: side(E, D, [0n, 0n]),
    peer: side(G, F, [D, 0n]),
    kind: 'split-brain',
    source: null,
  },
  {
    row: 'no common generation: unrelated',
    local: side(A, B, [C, D]),
    peer: side(E, F, [G, H]),
    kind: 'unrelated',
    source: null,
    reason: /no common generation \(local a1a1a1a1a1a1a1a1, peer e5e5e5e5e5e5e5e5\)/,
  },
  {
    row: 'zeros in bitmap and history are never a common generation',
    local: side(A, 0n, [0n, 0n]),
    peer: side(E, 0n, [0n, 0n]),
    kind: 'unrelated',
    source: null,
  },
];

describe('decideSync: one row of the decision table each, the same from both sides', () => {
  test.each(rows)('$row', ({ local, peer, kind, source, reason }) => {
    const d = decideBoth(local, peer);
    expect(d.kind).toBe(kind);
    expect(d.source).toBe(source);
    if (reason) expect(d.reason).toMatch(reason);
  });

  test('the table covers every kind of decision', () => {
    expect(new Set(rows.map((r) => r.kind))).toEqual(new Set(['none', 'bitmap', 'full', 'split-brain', 'unrelated']));
  });
});

// ---- resolveSplitBrain ----

const SPLIT: SyncDecision = decideSync(side(B, A, [C, 0n]), side(D, A, [C, 0n]));

function facts(node: string, over: Partial<SplitBrainFacts> = {}): SplitBrainFacts {
  return { node, primary: false, primarySinceMs: 0, changedBytes: 4096, discardMyData: false, ...over };
}

/** resolveSplitBrain from both sides with the facts swapped; they must agree. */
function resolveBoth(local: SplitBrainFacts, peer: SplitBrainFacts, policy: AfterSplitBrainPolicy): SyncDecision {
  const here = resolveSplitBrain(SPLIT, local, peer, policy);
  const there = resolveSplitBrain(SPLIT, peer, local, policy);
  expect({ kind: there.kind, source: there.source }).toEqual({ kind: here.kind, source: mirror(here.source) });
  return here;
}

interface ResolveRow {
  row: string;
  local: SplitBrainFacts;
  peer: SplitBrainFacts;
  policy: AfterSplitBrainPolicy;
  kind: 'bitmap' | 'split-brain';
  source: Source;
  reason?: RegExp;
}

const T0 = 1_700_000_000_000;

const resolveRows: ResolveRow[] = [
  {
    row: 'discard-my-data on local: bitmap resync from the peer',
    local: facts('alpha', { discardMyData: true }),
    peer: facts('beta'),
    policy: 'disconnect',
    kind: 'bitmap',
    source: 'peer',
    reason: /alpha discards its changes/,
  },
  {
    row: 'discard-my-data on the peer: bitmap resync from local',
    local: facts('alpha'),
    peer: facts('beta', { discardMyData: true }),
    policy: 'disconnect',
    kind: 'bitmap',
    source: 'local',
    reason: /beta discards its changes/,
  },
  {
    row: 'discard-my-data on both: stays split brain (choose one)',
    local: facts('alpha', { discardMyData: true }),
    peer: facts('beta', { discardMyData: true }),
    policy: 'discard-least-changes',
    kind: 'split-brain',
    source: null,
    reason: /both nodes asked to discard their data: choose one/,
  },
  {
    row: 'discard-my-data on a Secondary while the survivor is Primary: resolved',
    local: facts('alpha', { discardMyData: true }),
    peer: facts('beta', { primary: true, primarySinceMs: T0 }),
    policy: 'disconnect',
    kind: 'bitmap',
    source: 'peer',
  },
  {
    row: 'a Primary present (local): no policy applies, stays split brain',
    local: facts('alpha', { primary: true, primarySinceMs: T0, changedBytes: 0 }),
    peer: facts('beta', { changedBytes: 8192 }),
    policy: 'discard-zero-changes',
    kind: 'split-brain',
    source: null,
  },
  {
    row: 'a Primary present (peer): stays split brain under discard-least-changes',
    local: facts('alpha', { changedBytes: 4096 }),
    peer: facts('beta', { primary: true, primarySinceMs: T0, changedBytes: 1 << 20 }),
    policy: 'discard-least-changes',
    kind: 'split-brain',
    source: null,
  },
  {
    row: 'after-sb-0pri disconnect: stays split brain',
    local: facts('alpha', { changedBytes: 0 }),
    peer: facts('beta', { changedBytes: 8192 }),
    policy: 'disconnect',
    kind: 'split-brain',
    source: null,
  },
  {
    row: 'discard-zero-changes: local changed nothing, local is the victim',
    local: facts('alpha', { changedBytes: 0 }),
    peer: facts('beta', { changedBytes: 8192 }),
    policy: 'discard-zero-changes',
    kind: 'bitmap',
    source: 'peer',
    reason: /after-sb-0pri discard-zero-changes: alpha discards/,
  },
  {
    row: 'discard-zero-changes: peer changed nothing, the peer is the victim',
    local: facts('alpha', { changedBytes: 8192 }),
    peer: facts('beta', { changedBytes: 0 }),
    policy: 'discard-zero-changes',
    kind: 'bitmap',
    source: 'local',
  },
  {
    row: 'discard-zero-changes: both changed something, no victim',
    local: facts('alpha', { changedBytes: 4096 }),
    peer: facts('beta', { changedBytes: 8192 }),
    policy: 'discard-zero-changes',
    kind: 'split-brain',
    source: null,
    reason: /after-sb-0pri discard-zero-changes found no victim/,
  },
  {
    row: 'discard-zero-changes: neither changed anything, no victim',
    local: facts('alpha', { changedBytes: 0 }),
    peer: facts('beta', { changedBytes: 0 }),
    policy: 'discard-zero-changes',
    kind: 'split-brain',
    source: null,
  },
  {
    row: 'discard-younger-primary: local became Primary later, local is the victim',
    local: facts('alpha', { primarySinceMs: T0 + 5000 }),
    peer: facts('beta', { primarySinceMs: T0 }),
    policy: 'discard-younger-primary',
    kind: 'bitmap',
    source: 'peer',
    reason: /alpha discards/,
  },
  {
    row: 'discard-younger-primary: the peer became Primary later, the peer is the victim',
    local: facts('alpha', { primarySinceMs: T0 }),
    peer: facts('beta', { primarySinceMs: T0 + 1 }),
    policy: 'discard-younger-primary',
    kind: 'bitmap',
    source: 'local',
  },
  {
    row: 'discard-younger-primary: same promotion time, no victim',
    local: facts('alpha', { primarySinceMs: T0 }),
    peer: facts('beta', { primarySinceMs: T0 }),
    policy: 'discard-younger-primary',
    kind: 'split-brain',
    source: null,
    reason: /found no victim/,
  },
  {
    row: 'discard-least-changes: local changed less, local is the victim',
    local: facts('alpha', { changedBytes: 4096, primarySinceMs: T0 }),
    peer: facts('beta', { changedBytes: 40960, primarySinceMs: T0 + 9 }),
    policy: 'discard-least-changes',
    kind: 'bitmap',
    source: 'peer',
  },
  {
    row: 'discard-least-changes: the peer changed less, the peer is the victim',
    local: facts('alpha', { changedBytes: 40960 }),
    peer: facts('beta', { changedBytes: 4096 }),
    policy: 'discard-least-changes',
    kind: 'bitmap',
    source: 'local',
  },
  {
    row: 'discard-least-changes: equal changes, the younger Primary is the victim',
    local: facts('alpha', { changedBytes: 8192, primarySinceMs: T0 }),
    peer: facts('beta', { changedBytes: 8192, primarySinceMs: T0 + 1000 }),
    policy: 'discard-least-changes',
    kind: 'bitmap',
    source: 'local',
    reason: /beta discards/,
  },
  {
    row: 'discard-least-changes: equal changes and promotion times, no victim',
    local: facts('alpha', { changedBytes: 8192, primarySinceMs: T0 }),
    peer: facts('beta', { changedBytes: 8192, primarySinceMs: T0 }),
    policy: 'discard-least-changes',
    kind: 'split-brain',
    source: null,
    reason: /discard-least-changes found no victim/,
  },
];

describe('decidedInSync: may a target told resync-none take the source\'s generation?', () => {
  test.each([
    // Two new disks: nothing was decided, even if one node was force-promoted during the session.
    ['both disks new', fresh(), fresh(), false],
    ['both new, current 0 on one', side(0n, 0n, [0n, 0n], 'Inconsistent'), fresh(), false],
    ['same generation', side(A), side(A), true],
    ['the peer disk is new (full sync)', side(A), fresh(), true],
    ['bitmap resync', side(B, A), side(A), true],
    ['split brain', side(B, A, [C, 0n]), side(D, A, [C, 0n]), false],
    ['unrelated data', side(A, B, [C, D]), side(E, F, [G, H]), false],
  ] as const)('%s: %s', (_row, local, peer, inSync) => {
    expect(decidedInSync(decideSync(local, peer))).toBe(inSync);
    expect(decidedInSync(decideSync(peer, local))).toBe(inSync);
  });
});

describe('resolveSplitBrain: operator choice and after-sb-0pri, the same from both sides', () => {
  test('the split-brain input is one', () => {
    expect(SPLIT.kind).toBe('split-brain');
  });

  test.each(resolveRows)('$row', ({ local, peer, policy, kind, source, reason }) => {
    const d = resolveBoth(local, peer, policy);
    expect(d.kind).toBe(kind);
    expect(d.source).toBe(source);
    if (reason) expect(d.reason).toMatch(reason);
  });

  test.each(['disconnect', 'discard-zero-changes', 'discard-younger-primary', 'discard-least-changes'] as const)(
    'a decision that is not a split brain passes through unchanged under %s',
    (policy) => {
      for (const d of [
        decideSync(side(B, A, [C, 0n]), side(A, 0n, [C, 0n])),
        decideSync(fresh(), side(A)),
        decideSync(side(A), side(A)),
        decideSync(side(A, B, [C, D]), side(E, F, [G, H])),
      ]) {
        expect(resolveSplitBrain(d, facts('alpha', { discardMyData: true }), facts('beta', { changedBytes: 0 }), policy)).toBe(d);
      }
    },
  );

  test('every policy is exercised with a victim and without one', () => {
    for (const policy of ['discard-zero-changes', 'discard-younger-primary', 'discard-least-changes'] as const) {
      const kinds = new Set(resolveRows.filter((r) => r.policy === policy && !r.local.primary && !r.peer.primary && !r.local.discardMyData && !r.peer.discardMyData).map((r) => r.kind));
      expect([policy, [...kinds].sort()]).toEqual([policy, ['bitmap', 'split-brain']]);
    }
  });
});
