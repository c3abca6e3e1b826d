/**
 * The resource state machine, transition by transition, without root or I/O:
 * each row feeds events to step() and checks the state and the effects it
 * must emit, in order. The races found so far are rows here too.
 */
import { HookFailedError, NotUpToDateError, PromotionConflictError, StateError, SwitchoverOutcomeUnknownError } from '../../src/errors';
import { UUID_JUST_CREATED, flagBits } from '../../src/metadata';
import { Effect, Event, MachineState, PeerView, Step, diskState, initialState, peerServes, step } from '../../src/resource/machine';
import { MetadataView } from '../../src/resource/metadata-change';
import { snapshot } from '../../src/resource/status';

const GEN = 0x1111_2222_3333_4444n;
const OLD = 0x0aaa_bbbb_cccc_ddddn;
let freshCounter = 0x5000_0000_0000_0000n;

function md(over: Partial<MetadataView['flags']> = {}, uuids: Partial<MetadataView['uuids']> = {}): MetadataView {
  return {
    flags: { consistent: true, wasUpToDate: true, wasPrimary: false, crashedPrimary: false, resyncInProgress: false, peerOutdated: false, fullSyncNeeded: false, outdated: false, ...over },
    uuids: { current: GEN, bitmap: 0n, history: [OLD, 0n], ...uuids },
    primarySinceMs: 0,
  };
}

function node(name: 'alpha' | 'beta', meta: MetadataView = md()): MachineState {
  return initialState(
    { resource: 'r0', device: '/dev/nraid/r0', local: name, peer: name === 'alpha' ? 'beta' : 'alpha', onNoPeer: 'continue', onIoError: 'detach', fencePeer: false, splitBrainHook: false, afterSb0pri: 'disconnect', peerGraceMs: 5000 },
    meta,
    'C',
  );
}

function peer(over: Partial<PeerView> = {}): PeerView {
  return { role: 'Secondary', disk: 'UpToDate', uuids: { current: GEN, bitmap: 0n, history: [OLD, 0n] }, flags: flagBits.consistent | flagBits.wasUpToDate, ...over };
}

type TestEvent =
  | Exclude<Event, { type: 'program-done' } | { type: 'generation-written' }>
  | { type: 'program-done'; tag: Extract<Event, { type: 'program-done' }>['tag']; error: Extract<Event, { type: 'program-done' }>['error'] }
  | { type: 'generation-written' };

/**
 * Feeds events in order; returns the last step and every effect emitted. A
 * program-done or generation-written carries the store's view as a store that
 * wrote every change would report it.
 */
function run(state: MachineState, events: TestEvent[], outOfSyncBytes = 0): { state: MachineState; effects: Effect[]; last: Step } {
  let s = state;
  const effects: Effect[] = [];
  let last: Step = { state, effects: [] };
  for (const event of events) {
    freshCounter += 1n;
    let full: Event;
    if (event.type === 'program-done') full = { ...event, disk: { md: s.md, armed: s.armedGeneration } };
    else if (event.type === 'generation-written') {
      const armed = s.armedGeneration!;
      full = { type: 'generation-written', md: { ...s.md, uuids: { current: armed, bitmap: s.md.uuids.current, history: s.md.uuids.history } } };
    } else full = event;
    last = step(s, { event: full, nowMs: 1_700_000_000_000, fresh: freshCounter, outOfSyncBytes });
    s = last.state;
    effects.push(...last.effects);
  }
  return { state: s, effects, last };
}

const kinds = (effects: Effect[]): string[] => effects.map((e) => (e.kind === 'persist' ? `persist:${e.change.kind}` : e.kind === 'fault-point' ? `fault:${e.name}` : e.kind));
const replies = (effects: Effect[]) => effects.filter((e): e is Extract<Effect, { kind: 'reply' }> => e.kind === 'reply');

/** A connected, Established pair member: session 1, data link attached. */
function established(name: 'alpha' | 'beta', role: 'Primary' | 'Secondary', peerOver: Partial<PeerView> = {}): MachineState {
  const s = node(name);
  const dialer = name === 'alpha';
  const r = run({ ...s, role, exposed: role === 'Primary' }, [
    { type: 'connection', state: 'Connected' },
    { type: 'session-up', sessionId: 1, dialer, peer: peer(peerOver) },
  ]);
  let st = r.state;
  if (st.session!.direction === 'source') st = run(st, [{ type: 'bitmap-merged', sessionId: 1, error: null }]).state;
  st = run(st, [{ type: 'data-socket', sessionId: 1, socketId: 7 }, { type: 'data-attached', sessionId: 1, error: null }]).state;
  if (st.session!.direction === 'target') st = run(st, [{ type: 'peer-notice', notice: { kind: 'resyncNone' } }]).state;
  expect(st.replication).toBe('Established');
  return st;
}

describe('primary', () => {
  test('alone and UpToDate: arms a new generation, persists, exposes; replies after the program', () => {
    const r = run(node('alpha'), [{ type: 'command', id: 1, command: { name: 'primary', force: false } }]);
    expect(r.last.tag).toBe('promote');
    expect(kinds(r.effects)).toEqual(['arm-generation', 'log', 'persist:became-primary', 'persist-bitmap', 'activity-log-reset', 'expose']);
    expect(replies(r.effects)).toHaveLength(0);
    const done = run(r.state, [{ type: 'program-done', tag: 'promote', error: null }]);
    expect(done.state.role).toBe('Primary');
    expect(replies(done.effects)).toEqual([{ kind: 'reply', to: { command: 1 }, error: null, body: { ok: true, reason: '' } }]);
  });

  test('an Inconsistent disk without --force is refused and nothing changes', () => {
    const s = node('alpha', md({ consistent: false, wasUpToDate: false }));
    const r = run(s, [{ type: 'command', id: 1, command: { name: 'primary', force: false } }]);
    expect(r.effects).toHaveLength(1);
    expect(replies(r.effects)[0].error).toBeInstanceOf(NotUpToDateError);
    expect(r.state).toEqual(s);
  });

  test('--force on a new disk mints a generation and keeps the old one as the bitmap UUID only when it was real', () => {
    const s = node('alpha', md({ consistent: false, wasUpToDate: false }, { current: UUID_JUST_CREATED, history: [0n, 0n] }));
    const r = run(s, [{ type: 'command', id: 1, command: { name: 'primary', force: true } }]);
    const forced = r.effects.find((e) => e.kind === 'persist' && e.change.kind === 'forced-promotion');
    expect(forced).toBeDefined();
    expect(r.state.md.uuids.current).not.toBe(UUID_JUST_CREATED);
    expect(r.state.md.uuids.bitmap).toBe(0n);
    expect(diskState(r.state)).toBe('UpToDate');
    expect(kinds(r.effects)).not.toContain('arm-generation'); // the forced one is the new generation
  });

  test('connected: phase one asks the peer; nothing is persisted or exposed before its yes', () => {
    const s = established('beta', 'Secondary');
    const r = run(s, [{ type: 'command', id: 3, command: { name: 'primary', force: false } }]);
    expect(kinds(r.effects)).toEqual(['request-promote']);
    const yes = run(r.state, [{ type: 'promote-vote', requestId: r.state.promotion!.requestId!, ok: true, reason: '' }]);
    // Its data link still runs toward it until the turnaround: a new generation is armed for what it writes meanwhile.
    expect(kinds(yes.effects)).toEqual(['arm-generation', 'log', 'persist:became-primary', 'persist-bitmap', 'activity-log-reset', 'expose']);
    const done = run(yes.state, [{ type: 'program-done', tag: 'promote', error: null }]);
    expect(kinds(done.effects)).toEqual(['log', 'send-state', 'notice', 'reply', 'notice', 'drop-session']);
    expect(done.effects[2]).toEqual({ kind: 'notice', notice: { kind: 'promoteCommit', requestId: r.state.promotion!.requestId } });
  });

  test("the peer's no ends the promotion with NRAID_ERR_PROMOTION_CONFLICT and an abort notice", () => {
    const s = established('beta', 'Secondary');
    const r = run(s, [{ type: 'command', id: 3, command: { name: 'primary', force: false } }]);
    const no = run(r.state, [{ type: 'promote-vote', requestId: r.state.promotion!.requestId!, ok: false, reason: 'alpha is being promoted itself' }]);
    expect(no.state.role).toBe('Secondary');
    expect(no.state.promotion).toBeNull();
    expect(kinds(no.effects)).toEqual(['notice', 'reply']);
    expect(replies(no.effects)[0].error).toBeInstanceOf(PromotionConflictError);
  });

  test('race: both nodes promote at once: exactly one vote is yes (the name that sorts first wins)', () => {
    const a = run(established('alpha', 'Secondary'), [{ type: 'command', id: 1, command: { name: 'primary', force: false } }]).state;
    const b = run(established('beta', 'Secondary'), [{ type: 'command', id: 1, command: { name: 'primary', force: false } }]).state;
    const atAlpha = run(a, [{ type: 'peer-request', token: 9, request: { kind: 'promotePrepare', requestId: b.promotion!.requestId!, current: GEN } }]);
    const atBeta = run(b, [{ type: 'peer-request', token: 9, request: { kind: 'promotePrepare', requestId: a.promotion!.requestId!, current: GEN } }]);
    const voteOf = (r: { effects: Effect[] }) => (replies(r.effects)[0].body as { ok: boolean }).ok;
    expect(voteOf(atAlpha)).toBe(false);
    expect(voteOf(atBeta)).toBe(true);
    expect(atBeta.state.hold).toBe(a.promotion!.requestId);
  });

  test('a node that voted yes for the peer refuses its own promotion until commit or abort', () => {
    const s = run(established('beta', 'Secondary'), [{ type: 'peer-request', token: 1, request: { kind: 'promotePrepare', requestId: 5n, current: GEN } }]).state;
    const r = run(s, [{ type: 'command', id: 2, command: { name: 'primary', force: false } }]);
    expect(replies(r.effects)[0].error).toBeInstanceOf(PromotionConflictError);
    const released = run(s, [{ type: 'peer-notice', notice: { kind: 'promoteAbort', requestId: 5n } }]).state;
    expect(released.hold).toBeNull();
  });

  test('a Primary votes no', () => {
    const r = run(established('alpha', 'Primary'), [{ type: 'peer-request', token: 1, request: { kind: 'promotePrepare', requestId: 5n, current: GEN } }]);
    expect(replies(r.effects)[0].body).toEqual({ ok: false, reason: 'alpha is Primary' });
  });

  test('the session ends while waiting for the vote: no promotion', () => {
    const r = run(established('beta', 'Secondary'), [{ type: 'command', id: 3, command: { name: 'primary', force: false } }]);
    const id = r.state.promotion!.requestId!;
    const down = run(r.state, [
      { type: 'session-down', reason: 'cut' },
      { type: 'connection', state: 'Connecting' },
      { type: 'promote-vote', requestId: id, ok: false, reason: 'no answer: not connected' },
    ]);
    expect(down.state.role).toBe('Secondary');
    expect(kinds(down.effects)).not.toContain('expose');
    expect(replies(down.effects)[0].error).toBeInstanceOf(PromotionConflictError);
  });
});

describe('switchover', () => {
  const start = (): { state: MachineState; effects: Effect[] } => run(established('alpha', 'Primary'), [{ type: 'command', id: 4, command: { name: 'switchover', holder: null, syncPercent: null } }]);

  test('the whole exchange in order: demote, drain, ask, done', () => {
    const r = start();
    expect(r.state.switchover?.phase).toBe('demoting');
    expect(kinds(r.effects)).toEqual(['log', 'unexpose', 'disarm-generation', 'persist:became-secondary']);
    let x = run(r.state, [{ type: 'program-done', tag: 'switchover-demote', error: null }]);
    expect(x.state.role).toBe('Secondary');
    expect(kinds(x.effects)).toEqual(['send-state', 'fault:switchover:after-demote']);
    x = run(x.state, [{ type: 'fault-passed', name: 'switchover:after-demote' }]);
    expect(kinds(x.effects)).toEqual(['drain']);
    x = run(x.state, [{ type: 'drained', error: null }, { type: 'fault-passed', name: 'switchover:after-drain' }]);
    expect(x.effects.at(-1)).toEqual({ kind: 'request-switchover-promote', current: GEN });
    x = run(x.state, [{ type: 'switchover-reply', outcome: 'done', reason: '', error: null }]);
    expect(replies(x.effects)).toEqual([{ kind: 'reply', to: { command: 4 }, error: null, body: undefined }]);
    expect(x.state.switchover).toBeNull();
    expect(x.state.role).toBe('Secondary');
  });

  test('regression: the reply is lost after the request left: stays Secondary, outcome unknown, never re-promotes', () => {
    let x = run(start().state, [
      { type: 'program-done', tag: 'switchover-demote', error: null },
      { type: 'fault-passed', name: 'switchover:after-demote' },
      { type: 'drained', error: null },
      { type: 'fault-passed', name: 'switchover:after-drain' },
    ]);
    x = run(x.state, [{ type: 'switchover-reply', outcome: 'unknown', reason: 'timed out', error: null }]);
    expect(x.state.role).toBe('Secondary');
    expect(x.state.switchoverUnknown).toBe(true);
    expect(kinds(x.effects)).not.toContain('expose');
    const err = replies(x.effects)[0].error!;
    expect(err).toBeInstanceOf(SwitchoverOutcomeUnknownError);
    expect(err.message).toContain('switchover outcome unknown: beta may be Primary');
    // Reconnected: the peer says who is Primary, and that resolves it.
    const back = run(x.state, [
      { type: 'session-down', reason: 'cut' },
      { type: 'connection', state: 'Connected' },
      { type: 'session-up', sessionId: 2, dialer: true, peer: peer({ role: 'Primary' }) },
    ]);
    expect(back.state.switchoverUnknown).toBe(false);
    expect(back.state.role).toBe('Secondary');
  });

  test('the drain fails (the peer was never asked): the role comes back and the command fails', () => {
    let x = run(start().state, [
      { type: 'program-done', tag: 'switchover-demote', error: null },
      { type: 'fault-passed', name: 'switchover:after-demote' },
      { type: 'drained', error: 'ENOTCONN' },
    ]);
    expect(x.last.tag).toBe('promote');
    expect(kinds(x.effects)).toContain('expose');
    x = run(x.state, [{ type: 'program-done', tag: 'promote', error: null }]);
    expect(x.state.role).toBe('Primary');
    const err = replies(x.effects)[0].error!;
    expect(err).toBeInstanceOf(StateError);
    expect(err.message).toContain('alpha is still Primary');
  });

  test('the peer refuses to promote: it is not Primary, so the role comes back', () => {
    const x = run(start().state, [
      { type: 'program-done', tag: 'switchover-demote', error: null },
      { type: 'fault-passed', name: 'switchover:after-demote' },
      { type: 'drained', error: null },
      { type: 'fault-passed', name: 'switchover:after-drain' },
      { type: 'switchover-reply', outcome: 'refused', reason: 'generations differ', error: null },
    ]);
    expect(x.last.tag).toBe('promote');
    expect(x.state.switchoverUnknown).toBe(false);
  });

  test('a device in use is refused before anything changes', () => {
    const s = established('alpha', 'Primary');
    const r = run(s, [{ type: 'command', id: 4, command: { name: 'switchover', holder: 'mounted on /mnt', syncPercent: null } }]);
    expect(r.state).toEqual(s);
    expect(replies(r.effects)[0].error?.code).toBe('NRAID_ERR_DEVICE_BUSY');
  });

  test('the peer side: generation check, fault points, the answer after the promotion, then the turnaround', () => {
    const s = established('beta', 'Secondary');
    const wrong = run(s, [{ type: 'peer-request', token: 2, request: { kind: 'switchoverPromote', current: 42n } }]);
    expect((replies(wrong.effects)[0].body as { ok: boolean }).ok).toBe(false);
    let x = run(s, [{ type: 'peer-request', token: 2, request: { kind: 'switchoverPromote', current: GEN } }]);
    expect(kinds(x.effects)).toEqual(['fault:switchover:peer-before-promote']);
    x = run(x.state, [{ type: 'fault-passed', name: 'switchover:peer-before-promote' }, { type: 'program-done', tag: 'promote', error: null }]);
    expect(x.state.role).toBe('Primary');
    expect(replies(x.effects)).toHaveLength(0);
    x = run(x.state, [{ type: 'fault-passed', name: 'switchover:peer-after-promote' }]);
    expect(kinds(x.effects)).toEqual(['reply', 'notice', 'drop-session']);
    expect(replies(x.effects)[0].to).toEqual({ token: 2 });
  });

  test('the peer side: the session ends before it acts: no promotion', () => {
    const x = run(established('beta', 'Secondary'), [
      { type: 'peer-request', token: 2, request: { kind: 'switchoverPromote', current: GEN } },
      { type: 'session-down', reason: 'cut' },
      { type: 'connection', state: 'Connecting' },
      { type: 'fault-passed', name: 'switchover:peer-before-promote' },
    ]);
    expect(x.state.role).toBe('Secondary');
    expect(x.state.promotion).toBeNull();
    expect(kinds(x.effects)).not.toContain('expose');
  });
});

describe('durable state before data', () => {
  test('a target whose generation differs records Inconsistent before its data link opens', () => {
    const s = node('alpha', md({}, { current: OLD, history: [0n, 0n] }));
    const r = run(s, [
      { type: 'connection', state: 'Connected' },
      { type: 'session-up', sessionId: 1, dialer: true, peer: peer({ role: 'Primary', uuids: { current: GEN, bitmap: OLD, history: [0n, 0n] } }) },
    ]);
    expect(r.state.session!.direction).toBe('target');
    const k = kinds(r.effects);
    expect(k.indexOf('persist:target-begins')).toBeGreaterThanOrEqual(0);
    expect(k.indexOf('persist:target-begins')).toBeLessThan(k.indexOf('open-data'));
    expect(diskState(r.state)).toBe('Inconsistent');
    // The generation is joined only when the source asks, before the gate opens and the answer goes.
    const a = run(r.state, [
      { type: 'data-socket', sessionId: 1, socketId: 3 },
      { type: 'data-attached', sessionId: 1, error: null },
      { type: 'peer-request', token: 8, request: { kind: 'resyncStart', bytes: 4096n, current: GEN, history: [OLD, 0n] } },
    ]);
    const j = kinds(a.effects);
    expect(j.indexOf('persist:target-joins')).toBeLessThan(j.indexOf('allow-resync'));
    expect(j.indexOf('allow-resync')).toBeLessThan(j.indexOf('reply'));
    expect(a.state.md.uuids.current).toBe(GEN);
    expect(a.state.replication).toBe('SyncTarget');
  });

  test('a source makes the merged bitmap durable (merge-peer-bitmap) before the data link, and sends only after the target says yes', () => {
    const s = node('alpha', md({}, { current: GEN, bitmap: OLD }));
    let r = run({ ...s, role: 'Primary' }, [
      { type: 'connection', state: 'Connected' },
      { type: 'session-up', sessionId: 1, dialer: true, peer: peer({ uuids: { current: OLD, bitmap: 0n, history: [0n, 0n] } }) },
    ]);
    expect(kinds(r.effects)).toContain('merge-peer-bitmap');
    expect(kinds(r.effects)).not.toContain('open-data');
    r = run(r.state, [{ type: 'bitmap-merged', sessionId: 1, error: null }]);
    expect(kinds(r.effects)).toEqual(['open-data']);
    r = run(r.state, [{ type: 'data-socket', sessionId: 1, socketId: 4 }, { type: 'data-attached', sessionId: 1, error: null }], 1 << 20);
    expect(kinds(r.effects)).toContain('request-resync-start');
    expect(kinds(r.effects)).not.toContain('start-resync');
    r = run(r.state, [{ type: 'resync-start-reply', sessionId: 1, ok: true, reason: '' }], 1 << 20);
    expect(kinds(r.effects)).toContain('start-resync');
    expect(r.state.replication).toBe('SyncSource');
  });

  test('a resyncStart on a node that is not a target is refused', () => {
    const r = run(established('alpha', 'Primary'), [{ type: 'peer-request', token: 8, request: { kind: 'resyncStart', bytes: 1n, current: 9n, history: [0n, 0n] } }]);
    expect(replies(r.effects)[0].error).toBeInstanceOf(StateError);
    expect(kinds(r.effects)).not.toContain('persist:target-joins');
  });
});

describe('races found so far', () => {
  test('a split-brain victim reports SyncTarget, never Established and UpToDate, between attach and the resync notice', () => {
    const s = node('beta', md({}, { current: 0x77n << 20n, bitmap: GEN }));
    let r = run({ ...s, discardMyData: true }, [
      { type: 'connection', state: 'Connected' },
      { type: 'session-up', sessionId: 1, dialer: false, peer: peer({ role: 'Primary', uuids: { current: 0x99n << 20n, bitmap: GEN, history: [0n, 0n] } }) },
    ]);
    expect(kinds(r.effects)).toContain('request-facts');
    r = run(r.state, [
      { type: 'peer-request', token: 1, request: { kind: 'splitBrainFacts' } },
      { type: 'peer-facts', sessionId: 1, facts: { node: 'alpha', primary: true, primarySinceMs: 1, changedBytes: 4096, discardMyData: false } },
      { type: 'data-socket', sessionId: 1, socketId: 5 },
      { type: 'data-attached', sessionId: 1, error: null },
    ]);
    expect(r.state.decision!.kind).toBe('bitmap');
    expect(r.state.replication).toBe('SyncTarget');
    expect(diskState(r.state)).toBe('Inconsistent');
  });

  test('a forced promotion during a both-disks-new session renegotiates, and the old session never makes the peer UpToDate', () => {
    const fresh = md({ consistent: false, wasUpToDate: false }, { current: UUID_JUST_CREATED, history: [0n, 0n] });
    const newPeer = peer({ disk: 'Inconsistent', uuids: { current: UUID_JUST_CREATED, bitmap: 0n, history: [0n, 0n] }, flags: 0 });
    let a = run(node('alpha', fresh), [
      { type: 'connection', state: 'Connected' },
      { type: 'session-up', sessionId: 1, dialer: true, peer: newPeer },
    ]);
    expect(a.state.decision).toMatchObject({ kind: 'none', bothNew: true });
    a = run(a.state, [{ type: 'command', id: 1, command: { name: 'primary', force: true } }]);
    a = run(a.state, [{ type: 'promote-vote', requestId: a.state.promotion!.requestId!, ok: true, reason: '' }, { type: 'program-done', tag: 'promote', error: null }]);
    expect(kinds(a.effects)).toContain('drop-session');
    // The peer, target of that old session, hears resync-none: it must stay Inconsistent.
    let b = run(node('beta', fresh), [
      { type: 'connection', state: 'Connected' },
      { type: 'session-up', sessionId: 1, dialer: false, peer: peer({ disk: 'Inconsistent', uuids: { current: UUID_JUST_CREATED, bitmap: 0n, history: [0n, 0n] }, flags: 0 }) },
    ]);
    b = run(b.state, [{ type: 'peer-state', peer: peer({ role: 'Primary' }) }, { type: 'peer-notice', notice: { kind: 'resyncNone' } }]);
    expect(diskState(b.state)).toBe('Inconsistent');
    expect(kinds(b.effects)).not.toContain('persist:target-done');
  });

  test('a Primary keeps a generation armed while it replicates; one that wrote nothing while apart keeps its generation', () => {
    const connected = established('alpha', 'Primary');
    // Armed before any failure: a write the link loses completes only after the generation is written.
    const armed = connected.armedGeneration;
    expect(armed).not.toBeNull();
    expect(established('beta', 'Secondary').armedGeneration).toBeNull();
    let a = run(connected, [{ type: 'session-down', reason: 'cut' }, { type: 'connection', state: 'Connecting' }]);
    expect(kinds(a.effects)).not.toContain('arm-generation');
    expect(a.state.armedGeneration).toBe(armed);
    expect(a.state.md.uuids.current).toBe(GEN);
    a = run(a.state, [
      { type: 'connection', state: 'Connected' },
      { type: 'session-up', sessionId: 2, dialer: true, peer: peer() },
      { type: 'bitmap-merged', sessionId: 2, error: null },
      { type: 'data-socket', sessionId: 2, socketId: 1 },
      { type: 'data-attached', sessionId: 2, error: null },
    ]);
    expect(a.state.decision!.kind).toBe('none');
    expect(kinds(a.effects)).not.toContain('disarm-generation');
    expect(a.state.armedGeneration).toBe(armed);
    expect(a.state.md.uuids.current).toBe(GEN);
  });

  test('a Primary that wrote while apart moves on: the written generation becomes current, the old one the bitmap UUID', () => {
    let a = run(established('alpha', 'Primary'), [{ type: 'session-down', reason: 'cut' }]);
    const armed = a.state.armedGeneration!;
    a = run(a.state, [{ type: 'generation-written' }]);
    expect(a.state.md.uuids).toEqual({ current: armed, bitmap: GEN, history: [OLD, 0n] });
  });

  test('commands are refused while a switchover runs (one role change at a time)', () => {
    const s = run(established('alpha', 'Primary'), [{ type: 'command', id: 4, command: { name: 'switchover', holder: null, syncPercent: null } }]).state;
    for (const command of [{ name: 'primary', force: false }, { name: 'secondary', holder: null }, { name: 'invalidate' }] as const) {
      const r = run(s, [{ type: 'command', id: 9, command }]);
      expect(replies(r.effects)[0].error?.message).toContain('a switchover is in progress');
    }
  });
});

describe('every other command', () => {
  test('secondary: takes the device away, then replies; refused while suspended or in use', () => {
    const s = established('alpha', 'Primary');
    const r = run(s, [{ type: 'command', id: 1, command: { name: 'secondary', holder: null } }]);
    expect(r.last.tag).toBe('demote');
    expect(kinds(r.effects)).toEqual(['unexpose', 'disarm-generation', 'persist:became-secondary']);
    const done = run(r.state, [{ type: 'program-done', tag: 'demote', error: null }]);
    expect(done.state.role).toBe('Secondary');
    expect(kinds(done.effects)).toEqual(['log', 'send-state', 'reply']);
    expect(replies(run(s, [{ type: 'command', id: 1, command: { name: 'secondary', holder: 'mounted on /srv' } }]).effects)[0].error?.code).toBe('NRAID_ERR_DEVICE_BUSY');
    expect(replies(run({ ...s, ioSuspended: true }, [{ type: 'command', id: 1, command: { name: 'secondary', holder: null } }]).effects)[0].error?.message).toContain('I/O is suspended');
  });

  test('a failed demotion answers the error and keeps the role', () => {
    const r = run(established('alpha', 'Primary'), [
      { type: 'command', id: 1, command: { name: 'secondary', holder: null } },
      { type: 'program-done', tag: 'demote', error: new StateError('device busy') },
    ]);
    expect(r.state.role).toBe('Primary');
    expect(replies(r.effects)[0].error?.message).toBe('device busy');
  });

  test('invalidate: a Secondary records a full sync and renegotiates; a Primary, or a peer that is not UpToDate, is refused', () => {
    const r = run(established('beta', 'Secondary'), [{ type: 'command', id: 1, command: { name: 'invalidate' } }]);
    expect(kinds(r.effects)).toEqual(['persist:invalidated', 'log', 'send-state', 'drop-session', 'reply']);
    expect(r.state.md.flags.fullSyncNeeded).toBe(true);
    expect(replies(run(established('alpha', 'Primary'), [{ type: 'command', id: 1, command: { name: 'invalidate' } }]).effects)[0].error).toBeInstanceOf(StateError);
    const peerBehind = established('beta', 'Secondary', { disk: 'Outdated', role: 'Secondary' });
    expect(replies(run(peerBehind, [{ type: 'command', id: 1, command: { name: 'invalidate' } }]).effects)[0].error).toBeInstanceOf(NotUpToDateError);
  });

  test('connect --discard-my-data: refused on a Primary, else remembered and sent as a flag', () => {
    const refused = run(established('alpha', 'Primary'), [{ type: 'command', id: 1, command: { name: 'connect', discardMyData: true, holder: 'mounted' } }]);
    expect(replies(refused.effects)[0].error?.message).toContain('it is Primary and its device /dev/nraid/r0 is in use (mounted)');
    const ok = run(node('beta'), [{ type: 'command', id: 1, command: { name: 'connect', discardMyData: true, holder: null } }]);
    expect(ok.state.discardMyData).toBe(true);
    expect(kinds(ok.effects)).toEqual(['log', 'link-connect', 'reply']);
  });

  test('disconnect, adjust, resume-io', () => {
    expect(kinds(run(node('alpha'), [{ type: 'command', id: 1, command: { name: 'disconnect' } }]).effects)).toEqual(['link-disconnect', 'reply']);
    const adj = run(node('alpha'), [{ type: 'command', id: 1, command: { name: 'adjust', protocol: 'A' } }]);
    expect(adj.state.protocol).toBe('A');
    expect(kinds(adj.effects)).toEqual(['log', 'set-protocol', 'notice', 'send-state', 'reply']);
    expect(kinds(run(node('alpha'), [{ type: 'command', id: 1, command: { name: 'adjust', protocol: 'C' } }]).effects)).toEqual(['reply']);
    expect(replies(run(node('alpha'), [{ type: 'command', id: 1, command: { name: 'resume-io' } }]).effects)[0].error?.message).toContain('not suspended');
    const resumed = run({ ...node('alpha'), ioSuspended: true }, [{ type: 'command', id: 1, command: { name: 'resume-io' } }]);
    expect(resumed.state.ioSuspended).toBe(false);
    expect(kinds(resumed.effects)).toEqual(['resume-io', 'emit', 'reply']);
  });

  test('down: refused while suspended or in use; else the node is stopping', () => {
    expect(replies(run({ ...node('alpha'), ioSuspended: true }, [{ type: 'command', id: 1, command: { name: 'down', holder: null } }]).effects)[0].error?.message).toContain('cannot take down');
    expect(replies(run(node('alpha'), [{ type: 'command', id: 1, command: { name: 'down', holder: 'pid 12' } }]).effects)[0].error?.code).toBe('NRAID_ERR_DEVICE_BUSY');
    expect(run(node('alpha'), [{ type: 'command', id: 1, command: { name: 'down', holder: null } }]).state.stopping).toBe(true);
  });

  test('primary is refused on a SyncTarget and when the peer is Primary', () => {
    const target = { ...established('beta', 'Secondary'), replication: 'SyncTarget' as const };
    expect(replies(run(target, [{ type: 'command', id: 1, command: { name: 'primary', force: true } }]).effects)[0].error).toBeInstanceOf(NotUpToDateError);
    const peerPrimary = established('beta', 'Secondary', { role: 'Primary' });
    expect(replies(run(peerPrimary, [{ type: 'command', id: 1, command: { name: 'primary', force: false } }]).effects)[0].error?.message).toContain('the peer alpha is Primary');
  });

  test('switchover refusals: not connected, not Established, neither Primary; a Secondary delegates to the Primary', () => {
    expect(replies(run(node('alpha'), [{ type: 'command', id: 1, command: { name: 'switchover', holder: null, syncPercent: null } }]).effects)[0].error?.message).toContain('the peer is not connected');
    const syncing = { ...established('alpha', 'Primary'), replication: 'SyncSource' as const };
    expect(replies(run(syncing, [{ type: 'command', id: 1, command: { name: 'switchover', holder: null, syncPercent: null } }]).effects)[0].error?.message).toContain('replication is SyncSource');
    expect(replies(run(established('beta', 'Secondary'), [{ type: 'command', id: 1, command: { name: 'switchover', holder: null, syncPercent: null } }]).effects)[0].error?.message).toContain('neither node is Primary');
    const d = run(established('beta', 'Secondary', { role: 'Primary' }), [{ type: 'command', id: 1, command: { name: 'switchover', holder: null, syncPercent: null } }]);
    expect(kinds(d.effects)).toEqual(['request-switchover']);
    const failed = run(d.state, [{ type: 'switchover-reply', outcome: 'refused', reason: 'x', error: new SwitchoverOutcomeUnknownError('switchover outcome unknown: beta may be Primary') }]);
    expect(replies(failed.effects)[0].error).toBeInstanceOf(SwitchoverOutcomeUnknownError);
  });
});

describe('the session', () => {
  test('on-no-peer suspend-io: a Primary losing its peer suspends I/O; the peer coming back as target resumes it', () => {
    const base = established('alpha', 'Primary');
    const s = { ...base, config: { ...base.config, onNoPeer: 'suspend-io' as const } };
    let r = run(s, [{ type: 'session-down', reason: 'ping timeout' }, { type: 'connection', state: 'Connecting' }]);
    expect(r.state.ioSuspended).toBe(true);
    // Armed since the session was established: nothing to arm now.
    expect(r.state.armedGeneration).not.toBeNull();
    expect(kinds(r.effects)).toEqual(['log', 'suspend-io', 'emit', 'persist-bitmap']);
    r = run(r.state, [
      { type: 'connection', state: 'Connected' },
      { type: 'session-up', sessionId: 2, dialer: true, peer: peer() },
      { type: 'bitmap-merged', sessionId: 2, error: null },
      { type: 'data-socket', sessionId: 2, socketId: 1 },
      { type: 'data-attached', sessionId: 2, error: null },
    ]);
    expect(r.state.ioSuspended).toBe(false);
  });

  test('fence-peer: runs the hook; a successful hook resumes I/O only with on-no-peer = continue', () => {
    const base = established('alpha', 'Primary');
    const s = { ...base, config: { ...base.config, fencePeer: true } };
    let r = run(s, [{ type: 'session-down', reason: 'ping timeout' }, { type: 'connection', state: 'Connecting' }]);
    expect(kinds(r.effects)).toContain('run-hook');
    expect(r.state.ioSuspended).toBe(true);
    r = run(r.state, [{ type: 'fence-done', exitCode: 1 }]);
    expect(r.state.ioSuspended).toBe(true);
    r = run(r.state, [{ type: 'fence-done', exitCode: 0 }]);
    expect(r.state.ioSuspended).toBe(false);
  });

  test('link-lost drops the session (and redials)', () => {
    const r = run(established('alpha', 'Primary'), [{ type: 'link-lost', detail: 'bad frame' }]);
    expect(kinds(r.effects)).toEqual(['log', 'drop-session']);
    expect(r.state.lastLinkError).toBe('bad frame');
  });

  test('resync-done on the source: Established, the bitmap UUID goes to history, the target is told', () => {
    const s = node('alpha', md({}, { current: GEN, bitmap: OLD, history: [0n, 0n] }));
    let r = run({ ...s, role: 'Primary' }, [
      { type: 'connection', state: 'Connected' },
      { type: 'session-up', sessionId: 1, dialer: true, peer: peer({ uuids: { current: OLD, bitmap: 0n, history: [0n, 0n] } }) },
      { type: 'bitmap-merged', sessionId: 1, error: null },
      { type: 'data-socket', sessionId: 1, socketId: 4 },
      { type: 'data-attached', sessionId: 1, error: null },
      { type: 'resync-start-reply', sessionId: 1, ok: true, reason: '' },
    ], 4096);
    r = run(r.state, [{ type: 'resync-done', bytes: 4096 }]);
    expect(r.state.replication).toBe('Established');
    expect(r.state.md.uuids).toEqual({ current: GEN, bitmap: 0n, history: [OLD, 0n] });
    // In step again: armed for the next write the peer misses.
    expect(kinds(r.effects)).toEqual(['log', 'persist:source-done', 'persist-bitmap', 'send-state', 'arm-generation', 'log', 'notice']);
    expect(r.state.armedGeneration).not.toBeNull();
  });

  test('resync-done on the target: UpToDate at the source generation, bitmap cleared', () => {
    const s = node('beta', md({ consistent: false, resyncInProgress: true }, { current: GEN }));
    const r = run(s, [
      { type: 'connection', state: 'Connected' },
      { type: 'session-up', sessionId: 1, dialer: false, peer: peer({ role: 'Primary', uuids: { current: GEN, bitmap: 0n, history: [OLD, 0n] } }) },
      { type: 'data-socket', sessionId: 1, socketId: 4 },
      { type: 'data-attached', sessionId: 1, error: null },
      { type: 'peer-notice', notice: { kind: 'resyncDone' } },
    ]);
    expect(diskState(r.state)).toBe('UpToDate');
    expect(r.state.md.flags.resyncInProgress).toBe(false);
    expect(kinds(r.effects)).toEqual(expect.arrayContaining(['clear-bitmap', 'persist:target-done', 'persist-bitmap']));
  });

  test('split brain with no victim: both report it and refuse; the hook runs; nothing is discarded', () => {
    const s = node('alpha', md({}, { current: 0x77n << 20n, bitmap: GEN }));
    const withHook = { ...s, config: { ...s.config, splitBrainHook: true } };
    const r = run(withHook, [
      { type: 'connection', state: 'Connected' },
      { type: 'session-up', sessionId: 1, dialer: true, peer: peer({ uuids: { current: 0x99n << 20n, bitmap: GEN, history: [0n, 0n] } }) },
      { type: 'peer-facts', sessionId: 1, facts: { node: 'beta', primary: false, primarySinceMs: 0, changedBytes: 1, discardMyData: false } },
    ]);
    expect(kinds(r.effects)).not.toContain('link-disconnect'); // waits until it answered the peer's question too
    const done = run(r.state, [{ type: 'peer-request', token: 1, request: { kind: 'splitBrainFacts' } }]);
    expect(done.state.splitBrain).toBe(true);
    expect(kinds(done.effects)).toEqual(expect.arrayContaining(['run-hook', 'link-disconnect']));
    expect(kinds(done.effects)).not.toContain('open-data');
  });

  test('split brain: when the peer never asks, the facts timeout decides', () => {
    const s = node('alpha', md({}, { current: 0x77n << 20n, bitmap: GEN }));
    const r = run(s, [
      { type: 'connection', state: 'Connected' },
      { type: 'session-up', sessionId: 1, dialer: true, peer: peer({ uuids: { current: 0x99n << 20n, bitmap: GEN, history: [0n, 0n] } }) },
      { type: 'facts-timeout', sessionId: 1 },
    ]);
    expect(r.state.splitBrain).toBe(true);
    expect(kinds(r.effects)).toContain('link-disconnect');
  });

  test('unrelated data, two Primaries, and a Primary with older data are refused', () => {
    const unrelated = run(node('alpha', md({}, { current: 0x123n << 20n, history: [0n, 0n] })), [
      { type: 'connection', state: 'Connected' },
      { type: 'session-up', sessionId: 1, dialer: true, peer: peer({ uuids: { current: 0x456n << 20n, bitmap: 0n, history: [0n, 0n] } }) },
    ]);
    expect(unrelated.state.lastLinkError).toContain('unrelated data');
    const twoPrimaries = run({ ...node('alpha'), role: 'Primary' }, [
      { type: 'connection', state: 'Connected' },
      { type: 'session-up', sessionId: 1, dialer: true, peer: peer({ role: 'Primary' }) },
    ]);
    expect(twoPrimaries.state.lastLinkError).toContain('both nodes are Primary');
    const older = run({ ...node('alpha', md({}, { current: OLD, history: [0n, 0n] })), role: 'Primary' }, [
      { type: 'connection', state: 'Connected' },
      { type: 'session-up', sessionId: 1, dialer: true, peer: peer({ uuids: { current: GEN, bitmap: OLD, history: [0n, 0n] } }) },
    ]);
    expect(older.state.lastLinkError).toContain('older than the peer');
  });

  test('a data socket that arrives before the setup is parked, then attached', () => {
    const s = node('alpha', md({}, { current: GEN, bitmap: OLD }));
    let r = run({ ...s, role: 'Primary' }, [
      { type: 'connection', state: 'Connected' },
      { type: 'session-up', sessionId: 1, dialer: false, peer: peer({ uuids: { current: OLD, bitmap: 0n, history: [0n, 0n] } }) },
      { type: 'data-socket', sessionId: 1, socketId: 11 },
    ]);
    expect(kinds(r.effects)).not.toContain('attach-data');
    r = run(r.state, [{ type: 'bitmap-merged', sessionId: 1, error: null }]);
    expect(r.effects).toContainEqual({ kind: 'attach-data', sessionId: 1, socketId: 11, direction: 'source', sendHelloFirst: true, resyncAllowed: false });
    // A socket of an old session is closed.
    const stale = run(r.state, [{ type: 'data-socket', sessionId: 0, socketId: 12 }]);
    expect(stale.effects).toEqual([{ kind: 'discard-socket', socketId: 12 }]);
  });
});

describe('rows added for defects found in integration', () => {
  test('a Secondary that delegated a switchover promotes when the Primary asks', () => {
    const d = run(established('beta', 'Secondary', { role: 'Primary' }), [{ type: 'command', id: 1, command: { name: 'switchover', holder: null, syncPercent: null } }]);
    const x = run(d.state, [{ type: 'peer-request', token: 3, request: { kind: 'switchoverPromote', current: GEN } }]);
    expect(kinds(x.effects)).toEqual(['fault:switchover:peer-before-promote']);
  });

  test('split brain: the peer refuses first (session ends while deciding): reported here too, StandAlone', () => {
    const s = node('alpha', md({}, { current: 0x77n << 20n, bitmap: GEN }));
    const r = run(s, [
      { type: 'connection', state: 'Connected' },
      { type: 'session-up', sessionId: 1, dialer: true, peer: peer({ uuids: { current: 0x99n << 20n, bitmap: GEN, history: [0n, 0n] } }) },
      { type: 'session-down', reason: 'split brain' },
    ]);
    expect(r.state.splitBrain).toBe(true);
    expect(kinds(r.effects)).toContain('link-disconnect');
  });
});

test('a Secondary that delegated a switchover answers its command once it is Primary, whatever the old Primary says later', () => {
  const d = run(established('beta', 'Secondary', { role: 'Primary' }), [{ type: 'command', id: 1, command: { name: 'switchover', holder: null, syncPercent: null } }]);
  let x = run(d.state, [
    { type: 'peer-request', token: 3, request: { kind: 'switchoverPromote', current: GEN } },
    { type: 'fault-passed', name: 'switchover:peer-before-promote' },
    { type: 'program-done', tag: 'promote', error: null },
    { type: 'fault-passed', name: 'switchover:peer-after-promote' },
  ]);
  expect(replies(x.effects).map((e) => e.to)).toEqual([{ token: 3 }, { command: 1 }]);
  expect(replies(x.effects).every((e) => e.error === null)).toBe(true);
  x = run(x.state, [{ type: 'switchover-reply', outcome: 'refused', reason: 'session ended', error: null }]);
  expect(replies(x.effects)).toHaveLength(0);
  expect(x.state.role).toBe('Primary');
});

test('race: the peer turned the session around after its promotion: no promotion here until reconnected (or --force)', () => {
  const s = established('beta', 'Secondary', { role: 'Primary' });
  const down = run(s, [
    { type: 'peer-notice', notice: { kind: 'turnaround' } },
    { type: 'session-down', reason: 'alpha closed the session: the new Primary becomes the source' },
    { type: 'connection', state: 'Connecting' },
  ]);
  expect(kinds(down.effects)).toContain('arm-peer-grace');
  const refused = run(down.state, [{ type: 'command', id: 1, command: { name: 'primary', force: false } }]);
  expect(replies(refused.effects)[0].error).toBeInstanceOf(PromotionConflictError);
  expect(replies(refused.effects)[0].error!.message).toContain('ended the session as Primary a moment ago');
  const forced = run(down.state, [{ type: 'command', id: 1, command: { name: 'primary', force: true } }]);
  expect(forced.last.tag).toBe('promote');
  const later = run(down.state, [{ type: 'peer-grace-over' }, { type: 'command', id: 1, command: { name: 'primary', force: false } }]);
  expect(later.last.tag).toBe('promote');
  // A failure (no goodbye) is the unplanned failover: promotion is allowed at once.
  const crashed = run(s, [{ type: 'session-down', reason: 'ping timeout' }, { type: 'connection', state: 'Connecting' }, { type: 'command', id: 1, command: { name: 'primary', force: false } }]);
  expect(crashed.last.tag).toBe('promote');
});

test('race: the session ends while this node holds its vote for the peer\'s promotion (no commit, no abort, no turnaround yet): no promotion here until reconnected (or --force)', () => {
  // Found by roles-concurrent-promotion: the new Primary closes the session to turn it around, and
  // that close arrived before its turnaround notice; this node's own `primary` then promoted without a vote.
  const s = established('alpha', 'Secondary', { role: 'Secondary' });
  const held = run(s, [{ type: 'peer-request', token: 7, request: { kind: 'promotePrepare', requestId: 5n, current: s.md.uuids.current } }]);
  expect(held.state.hold).toBe(5n);
  const down = run(held.state, [{ type: 'session-down', reason: 'data link lost: data link closed by the peer' }, { type: 'connection', state: 'Connecting' }]);
  expect(kinds(down.effects)).toContain('arm-peer-grace');
  const refused = run(down.state, [{ type: 'command', id: 1, command: { name: 'primary', force: false } }]);
  expect(replies(refused.effects)[0].error).toBeInstanceOf(PromotionConflictError);
  const forced = run(down.state, [{ type: 'command', id: 1, command: { name: 'primary', force: true } }]);
  expect(forced.last.tag).toBe('promote');
  // The vote withdrawn (promoteAbort) before the session ended: nothing is held, promotion is allowed.
  const aborted = run(held.state, [
    { type: 'peer-notice', notice: { kind: 'promoteAbort', requestId: 5n } },
    { type: 'session-down', reason: 'ping timeout' },
    { type: 'connection', state: 'Connecting' },
    { type: 'command', id: 1, command: { name: 'primary', force: false } },
  ]);
  expect(aborted.last.tag).toBe('promote');
});

describe('on-io-error (a failing backing disk)', () => {
  const emitted = (effects: Effect[]) => effects.filter((e): e is Extract<Effect, { kind: 'emit' }> => e.kind === 'emit').map((e) => e.event);

  test('detach, Primary with an UpToDate peer: Diskless, served by the peer, the peer is told; no metadata written', () => {
    const s = established('alpha', 'Primary');
    const r = run(s, [{ type: 'disk-failed', detail: 'write: Input/output error' }]);
    expect(r.state.diskless).toBe(true);
    expect(diskState(r.state)).toBe('Diskless');
    expect(r.state.diskFailure).toBe('write: Input/output error');
    expect(peerServes(r.state)).toBe(true);
    expect(kinds(r.effects)).toEqual(['log', 'emit', 'emit', 'send-state']);
    expect(emitted(r.effects)[0]).toMatchObject({ type: 'disk-failed', servedByPeer: true, role: 'Primary' });
    expect(r.state.connection).toBe('Connected');
    // A second report changes nothing.
    expect(run(r.state, [{ type: 'disk-failed', detail: 'again' }]).effects).toEqual([]);
  });

  test('detach, Primary alone: Diskless, and the log says that errors reach the application', () => {
    const s = { ...node('alpha'), role: 'Primary' as const, exposed: true };
    const r = run(s, [{ type: 'disk-failed', detail: 'read: Input/output error' }]);
    expect(diskState(r.state)).toBe('Diskless');
    expect(peerServes(r.state)).toBe(false);
    const log = r.effects.find((e) => e.kind === 'log') as Extract<Effect, { kind: 'log' }>;
    expect(log.message).toMatch(/I\/O errors reach the application/);
    // A Diskless Primary that loses its peer mints nothing (it writes no metadata).
    const lost = run(established('alpha', 'Primary'), [{ type: 'disk-failed', detail: 'x' }, { type: 'session-down', reason: 'cut' }]);
    expect(kinds(lost.effects)).not.toContain('arm-generation');
  });

  test('detach, Secondary: Diskless and StandAlone (the Primary records what it misses)', () => {
    const s = established('beta', 'Secondary', { role: 'Primary' });
    const r = run(s, [{ type: 'disk-failed', detail: "write to the target's disk failed: Input/output error" }]);
    expect(diskState(r.state)).toBe('Diskless');
    expect(kinds(r.effects)).toEqual(['log', 'emit', 'emit', 'send-state', 'link-disconnect']);
  });

  test('pass-on: nothing changes but a log line and an event', () => {
    const s = established('alpha', 'Primary');
    const passOn = { ...s, config: { ...s.config, onIoError: 'pass-on' as const } };
    const r = run(passOn, [{ type: 'disk-failed', detail: 'write: Input/output error' }]);
    expect(r.state.diskless).toBe(false);
    expect(diskState(r.state)).toBe('UpToDate');
    expect(kinds(r.effects)).toEqual(['log', 'emit']);
  });

  test("the UpToDate peer of a Diskless Primary starts its own generation once, with every bit set; the Primary follows it in memory", () => {
    const beta = established('beta', 'Secondary', { role: 'Primary' });
    const diskless = peer({ role: 'Primary', disk: 'Diskless' });
    const r = run(beta, [{ type: 'peer-state', peer: diskless }]);
    expect(kinds(r.effects)).toEqual(['log', 'mark-all', 'persist-bitmap', 'persist:peer-disk-lost', 'send-state']);
    expect(r.state.md.uuids.bitmap).toBe(GEN);
    expect(r.state.md.uuids.current).not.toBe(GEN);
    expect(run(r.state, [{ type: 'peer-state', peer: diskless }]).effects).toEqual([]);
    // alpha, Diskless, hears beta's new state and takes its generation (no persist: it writes nothing).
    const alpha = run(established('alpha', 'Primary'), [{ type: 'disk-failed', detail: 'x' }]).state;
    const follows = run(alpha, [{ type: 'peer-state', peer: peer({ uuids: r.state.md.uuids }) }]);
    expect(follows.state.md.uuids.current).toBe(r.state.md.uuids.current);
    expect(kinds(follows.effects)).toEqual(['log']);
    // An unrelated generation is not followed.
    const stranger = run(alpha, [{ type: 'peer-state', peer: peer({ uuids: { current: 0x77n, bitmap: 0x66n, history: [0n, 0n] } }) }]);
    expect(stranger.state.md.uuids.current).toBe(GEN);
  });

  test('handshakes with a Diskless side: a Diskless Primary sends to its UpToDate peer with no resync; anything else is refused', () => {
    const alpha = run({ ...node('alpha'), role: 'Primary' as const, exposed: true }, [{ type: 'disk-failed', detail: 'x' }]).state;
    const up = run(alpha, [{ type: 'connection', state: 'Connected' }, { type: 'session-up', sessionId: 2, dialer: true, peer: peer() }]);
    expect(up.state.session!.direction).toBe('source');
    expect(kinds(up.effects)).not.toContain('merge-peer-bitmap');
    expect(kinds(up.effects)).toContain('open-data');
    // Something marked out of sync here (acknowledged before the disk failed, maybe not on the peer): refused.
    const marked = run(alpha, [{ type: 'connection', state: 'Connected' }, { type: 'session-up', sessionId: 2, dialer: true, peer: peer() }], 4096);
    expect(kinds(marked.effects)).toContain('link-disconnect');
    // A Diskless Secondary stays away until attach; its peer only drops the session (it keeps listening).
    const betaDiskless = run(node('beta'), [{ type: 'disk-failed', detail: 'x' }]).state;
    const away = run(betaDiskless, [{ type: 'connection', state: 'Connected' }, { type: 'session-up', sessionId: 3, dialer: false, peer: peer({ role: 'Primary' }) }]);
    expect(kinds(away.effects)).toContain('link-disconnect');
    const primary = { ...node('alpha'), role: 'Primary' as const, exposed: true };
    const drop = run(primary, [{ type: 'connection', state: 'Connected' }, { type: 'session-up', sessionId: 3, dialer: true, peer: peer({ disk: 'Diskless' }) }]);
    expect(kinds(drop.effects)).toContain('drop-session');
    expect(kinds(drop.effects)).not.toContain('link-disconnect');
    // The UpToDate target of a Diskless Primary: no target-begins (its data stays UpToDate).
    const target = run(node('beta'), [{ type: 'connection', state: 'Connected' }, { type: 'session-up', sessionId: 4, dialer: false, peer: peer({ role: 'Primary', disk: 'Diskless' }) }]);
    expect(target.state.session!.direction).toBe('target');
    expect(kinds(target.effects)).not.toContain('persist:target-begins');
  });

  test('attach: refused with a disk attached and on a Diskless Primary (switch over first); allowed on a Diskless Secondary', () => {
    const attached = run(node('beta'), [{ type: 'command', id: 1, command: { name: 'attach' } }]);
    expect(replies(attached.effects)[0].error).toBeInstanceOf(StateError);
    const primary = run(established('alpha', 'Primary'), [{ type: 'disk-failed', detail: 'x' }, { type: 'command', id: 2, command: { name: 'attach' } }]);
    expect(replies(primary.effects)[0].error!.message).toMatch(/switch over first/);
    const secondary = run(node('beta'), [{ type: 'disk-failed', detail: 'x' }, { type: 'command', id: 3, command: { name: 'attach' } }]);
    expect(replies(secondary.effects)[0].error).toBeNull();
  });

  test('a Diskless Primary may switch over to its UpToDate peer; a failed switchover takes the role back without forcing a generation', () => {
    const s = run(established('alpha', 'Primary'), [{ type: 'disk-failed', detail: 'x' }]).state;
    const r = run(s, [{ type: 'command', id: 1, command: { name: 'switchover', holder: null, syncPercent: null } }]);
    expect(r.last.tag).toBe('switchover-demote');
    const back = run(r.state, [{ type: 'program-done', tag: 'switchover-demote', error: null }, { type: 'drained', error: 'the peer did not catch up' }]);
    expect(kinds(back.effects)).not.toContain('persist:forced-promotion');
    expect(back.state.md.uuids.current).toBe(GEN);
  });

  test('nraid detach: a Primary served by its peer, or a Secondary, goes Diskless whatever the policy; a lone Primary is refused', () => {
    const s = established('alpha', 'Primary');
    const passOn = { ...s, config: { ...s.config, onIoError: 'pass-on' as const } };
    const r = run(passOn, [{ type: 'command', id: 1, command: { name: 'detach' } }]);
    expect(diskState(r.state)).toBe('Diskless');
    expect(kinds(r.effects)).toEqual(['log', 'emit', 'emit', 'send-state', 'detach-disk', 'reply']);
    expect(replies(r.effects)[0].error).toBeNull();
    // The data plane's own disk-failed report afterwards changes nothing.
    expect(run(r.state, [{ type: 'disk-failed', detail: 'detached by the operator (nraid detach)' }]).effects).toEqual([]);
    const again = run(r.state, [{ type: 'command', id: 2, command: { name: 'detach' } }]);
    expect(replies(again.effects)[0].error!.message).toMatch(/Diskless already/);
    const alone = run({ ...node('alpha'), role: 'Primary' as const, exposed: true }, [{ type: 'command', id: 3, command: { name: 'detach' } }]);
    expect(replies(alone.effects)[0].error!.message).toMatch(/not an UpToDate peer/);
    expect(alone.state.diskless).toBe(false);
    const secondary = run(established('beta', 'Secondary', { role: 'Primary' }), [{ type: 'command', id: 4, command: { name: 'detach' } }]);
    expect(kinds(secondary.effects)).toContain('link-disconnect');
    expect(kinds(secondary.effects)).toContain('detach-disk');
  });

  test('adjust changes on-io-error', () => {
    const r = run(node('alpha'), [{ type: 'command', id: 1, command: { name: 'adjust', protocol: 'C', onIoError: 'pass-on' } }]);
    expect(r.state.config.onIoError).toBe('pass-on');
    expect(kinds(r.effects)).toEqual(['log', 'set-on-io-error', 'reply']);
  });
});

describe('status: Connected only once the session is agreed', () => {
  const facts = (state: MachineState) => ({ state, counters: null, superblock: null, resync: null, device: '/dev/nraid/r0', backingDisk: '/dev/x', exposed: false, loopDevice: null, nowMs: 0 });

  // Regression (torture seed 20261202, step 56): two Primaries met after a promotion made while
  // apart; one showed Connected to a Primary peer for the moment before it refused the session.
  test('two Primaries meeting: Connecting while they decide, StandAlone once refused, never Connected', () => {
    const s = node('alpha');
    const up = run({ ...s, role: 'Primary', exposed: true }, [
      { type: 'connection', state: 'Connected' },
      { type: 'session-up', sessionId: 1, dialer: true, peer: peer({ role: 'Primary' }) },
    ]);
    expect(up.state.session!.setup).toBe('refused');
    const shown = snapshot(facts(up.state));
    expect(shown.connection).toBe('Connecting');
    expect(shown.peerRole).toBe('Unknown');
  });

  test('an accepted session is Connected with the peer role shown', () => {
    const st = established('alpha', 'Secondary', { role: 'Primary' });
    const shown = snapshot(facts(st));
    expect(shown.connection).toBe('Connected');
    expect(shown.peerRole).toBe('Primary');
  });

  test('link up, no session yet: Connecting', () => {
    const st = run(node('beta'), [{ type: 'connection', state: 'Connected' }]).state;
    expect(snapshot(facts(st)).connection).toBe('Connecting');
  });
});

test('regression: writes of a new Primary before its session turns around are resynced (a new generation is armed), not left out of sync at an equal generation', () => {
  // Found by the PostgreSQL test (issue 14): the after-promote hook mounted and started PostgreSQL on
  // beta before the turnaround; those writes only set bits, the handshake at the same generation
  // decided "none", and a switchover back to alpha lost committed rows.
  let x = run(established('beta', 'Secondary'), [
    { type: 'peer-request', token: 2, request: { kind: 'switchoverPromote', current: GEN } },
    { type: 'fault-passed', name: 'switchover:peer-before-promote' },
  ]);
  expect(kinds(x.effects)).toContain('arm-generation');
  x = run(x.state, [{ type: 'program-done', tag: 'promote', error: null }, { type: 'generation-written' }]);
  expect(x.state.md.uuids.bitmap).toBe(GEN);
  expect(x.state.md.uuids.current).not.toBe(GEN);
  // A Primary that already sends to its peer arms nothing: its writes reach the peer.
  const source = run({ ...established('alpha', 'Primary'), role: 'Secondary' as const, exposed: false }, [{ type: 'command', id: 1, command: { name: 'primary', force: false } }]);
  const voted = run(source.state, [{ type: 'promote-vote', requestId: source.state.promotion!.requestId!, ok: true, reason: '' }]);
  expect(kinds(voted.effects)).not.toContain('arm-generation');
});

describe('role hooks (issue 14: the services move with the device)', () => {
  const hooked = (s: MachineState): MachineState => ({ ...s, config: { ...s.config, roleHooks: { beforeDemote: true, afterPromote: true } } });
  const hookFailed = (hook: string) => new HookFailedError(`the ${hook} hook /etc/nraid/services exited with 1`);
  const roleHooks = (effects: Effect[]) => effects.filter((e): e is Extract<Effect, { kind: 'run-role-hook' }> => e.kind === 'run-role-hook').map((e) => `${e.hook}:${e.purpose}`);

  test('switchover: before-demote runs first, the device in use is no reason to refuse (the hook unmounts)', () => {
    const r = run(hooked(established('alpha', 'Primary')), [{ type: 'command', id: 4, command: { name: 'switchover', holder: 'mounted on /srv', syncPercent: null } }]);
    expect(r.last.tag).toBe('switchover-demote');
    expect(kinds(r.effects)).toEqual(['log', 'run-role-hook', 'unexpose', 'disarm-generation', 'persist:became-secondary']);
    expect(roleHooks(r.effects)).toEqual(['before-demote:switch']);
  });

  test('switchover: a failing before-demote keeps the node Primary, restores the services, and the command fails with NRAID_ERR_HOOK_FAILED', () => {
    const r = run(hooked(established('alpha', 'Primary')), [
      { type: 'command', id: 4, command: { name: 'switchover', holder: null, syncPercent: null } },
      { type: 'program-done', tag: 'switchover-demote', error: hookFailed('before-demote') },
    ]);
    expect(r.state.role).toBe('Primary');
    expect(r.state.switchover).toBeNull();
    expect(kinds(r.effects)).not.toContain('request-switchover-promote');
    expect(roleHooks(r.effects)).toEqual(['before-demote:switch', 'after-promote:restore']);
    const err = replies(r.effects)[0].error!;
    expect(err.code).toBe('NRAID_ERR_HOOK_FAILED');
    expect(err.message).toContain('cannot switch over r0: the before-demote hook');
    expect(err.message).toContain('alpha stays Primary, the after-promote hook ran to bring the services back');
  });

  test('the peer side: after-promote runs after the device is exposed, before the answer', () => {
    let x = run(hooked(established('beta', 'Secondary')), [
      { type: 'peer-request', token: 2, request: { kind: 'switchoverPromote', current: GEN } },
      { type: 'fault-passed', name: 'switchover:peer-before-promote' },
    ]);
    expect(kinds(x.effects).slice(-2)).toEqual(['expose', 'run-role-hook']);
    expect(roleHooks(x.effects)).toEqual(['after-promote:switch']);
    expect(replies(x.effects)).toHaveLength(0);
    x = run(x.state, [{ type: 'program-done', tag: 'promote', error: null }, { type: 'fault-passed', name: 'switchover:peer-after-promote' }]);
    expect(x.state.role).toBe('Primary');
    expect((replies(x.effects)[0].body as { ok: boolean }).ok).toBe(true);
  });

  test('the peer side: a failing after-promote is undone (cleanup, unexpose) and the old Primary hears no, so it takes its role back', () => {
    let x = run(hooked(established('beta', 'Secondary')), [
      { type: 'peer-request', token: 2, request: { kind: 'switchoverPromote', current: GEN } },
      { type: 'fault-passed', name: 'switchover:peer-before-promote' },
      { type: 'program-done', tag: 'promote', error: hookFailed('after-promote') },
    ]);
    expect(x.last.tag).toBe('promote-undo');
    expect(kinds(x.last.effects)).toEqual(['log', 'run-role-hook', 'unexpose']);
    expect(roleHooks(x.last.effects)).toEqual(['before-demote:cleanup']);
    expect(replies(x.effects)).toHaveLength(0);
    x = run(x.state, [{ type: 'program-done', tag: 'promote-undo', error: null }]);
    expect(x.state.role).toBe('Secondary');
    expect(x.state.promotion).toBeNull();
    expect(kinds(x.effects)).toContain('persist:became-secondary');
    const body = replies(x.effects)[0].body as { ok: boolean; reason: string };
    expect(body.ok).toBe(false);
    expect(body.reason).toContain('the after-promote hook');
    // The old Primary, refused, takes its role back: its own after-promote restarts the services there.
    const alpha = run(hooked(established('alpha', 'Primary')), [
      { type: 'command', id: 4, command: { name: 'switchover', holder: null, syncPercent: null } },
      { type: 'program-done', tag: 'switchover-demote', error: null },
      { type: 'fault-passed', name: 'switchover:after-demote' },
      { type: 'drained', error: null },
      { type: 'fault-passed', name: 'switchover:after-drain' },
      { type: 'switchover-reply', outcome: 'refused', reason: body.reason, error: null },
    ]);
    expect(alpha.last.tag).toBe('promote');
    expect(roleHooks(alpha.last.effects)).toEqual(['after-promote:switch']);
    const back = run(alpha.state, [{ type: 'program-done', tag: 'promote', error: null }]);
    expect(back.state.role).toBe('Primary');
    expect(replies(back.effects)[0].error!.message).toContain('alpha is still Primary: beta refused to promote: the promotion failed: the after-promote hook');
  });

  test('taking the role back fails in its hook too: no node is Primary, and the message says so', () => {
    const x = run(hooked(established('alpha', 'Primary')), [
      { type: 'command', id: 4, command: { name: 'switchover', holder: null, syncPercent: null } },
      { type: 'program-done', tag: 'switchover-demote', error: null },
      { type: 'fault-passed', name: 'switchover:after-demote' },
      { type: 'drained', error: null },
      { type: 'fault-passed', name: 'switchover:after-drain' },
      { type: 'switchover-reply', outcome: 'refused', reason: 'the promotion failed: hook', error: null },
      { type: 'program-done', tag: 'promote', error: hookFailed('after-promote') },
      { type: 'program-done', tag: 'promote-undo', error: null },
    ]);
    expect(x.state.role).toBe('Secondary');
    const err = replies(x.effects)[0].error!;
    expect(err.code).toBe('NRAID_ERR_HOOK_FAILED');
    expect(err.message).toContain('taking the Primary role back failed too');
    expect(err.message).toContain('no node is Primary of r0');
  });

  test('primary: a failing after-promote leaves the node Secondary; the command says the promotion is undone', () => {
    const x = run(hooked(node('alpha')), [
      { type: 'command', id: 1, command: { name: 'primary', force: false } },
      { type: 'program-done', tag: 'promote', error: hookFailed('after-promote') },
      { type: 'program-done', tag: 'promote-undo', error: null },
    ]);
    expect(x.state.role).toBe('Secondary');
    expect(x.state.armedGeneration).toBeNull();
    const err = replies(x.effects)[0].error!;
    expect(err.code).toBe('NRAID_ERR_HOOK_FAILED');
    expect(err.message).toContain('the promotion is undone, alpha is Secondary');
  });

  test('primary: when the undo cannot take the device away, the node stays Primary and the command says so', () => {
    const x = run(hooked(node('alpha')), [
      { type: 'command', id: 1, command: { name: 'primary', force: true } },
      { type: 'program-done', tag: 'promote', error: hookFailed('after-promote') },
      { type: 'program-done', tag: 'promote-undo', error: new StateError('device in use') },
    ]);
    expect(x.state.role).toBe('Primary');
    expect(x.state.exposed).toBe(true);
    expect(replies(x.effects)[0].error!.message).toContain('alpha stays Primary of r0');
  });

  test('secondary: before-demote runs first; its failure restores the services and keeps the role; a failure not in a hook keeps today\'s path', () => {
    const s = hooked({ ...node('alpha'), role: 'Primary', exposed: true });
    const r = run(s, [{ type: 'command', id: 2, command: { name: 'secondary', holder: 'mounted on /srv' } }]);
    expect(roleHooks(r.effects)).toEqual(['before-demote:switch']);
    const failed = run(r.state, [{ type: 'program-done', tag: 'demote', error: hookFailed('before-demote') }]);
    expect(failed.state.role).toBe('Primary');
    expect(roleHooks(failed.effects)).toEqual(['after-promote:restore']);
    expect(replies(failed.effects)[0].error!.code).toBe('NRAID_ERR_HOOK_FAILED');
    // Without hooks nothing runs and a device in use is still refused up front.
    const plain = run({ ...node('alpha'), role: 'Primary', exposed: true }, [{ type: 'command', id: 2, command: { name: 'secondary', holder: 'mounted on /srv' } }]);
    expect(replies(plain.effects)[0].error!.code).toBe('NRAID_ERR_DEVICE_BUSY');
    expect(roleHooks(plain.effects)).toEqual([]);
  });
});
