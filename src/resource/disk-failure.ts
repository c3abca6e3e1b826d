/**
 * A failing backing disk (on-io-error, issue 10 item 3). Pure transitions
 * (see machine.ts). Under `detach` the data plane stops using the disk at its
 * first error and reports `disk-failed` once; here the node becomes Diskless:
 * - Primary with an UpToDate peer (Established): it goes on serving through
 *   the peer (the data plane does that by itself, see peerServes);
 * - Primary without one: every request fails with EIO from now on;
 * - Secondary: it leaves the session (StandAlone), so the Primary records in
 *   its bitmap what this node misses, as after any disconnect.
 * The peer learns of it from this node's state (disk: Diskless), and never
 * takes a resync from it (sync.ts, sessionUp). `nraid attach` brings a disk
 * back: allowed on a Diskless Secondary, which then resyncs from the peer.
 */
import { NraidError, StateError } from '../errors';
import { Asker, Effect, Input, MachineState, Step, answer, connected, diskState, peerServes, persist } from './machine-core';

export function diskFailed(s: MachineState, fx: Effect[], detail: string, byOperator = false): Step {
  const r = s.config.resource;
  if (s.diskless) return { state: s, effects: fx };
  if (s.config.onIoError === 'pass-on' && !byOperator) {
    // The data plane counts it and passes it up; the disk stays attached.
    fx.push({ kind: 'log', level: 'error', message: 'local disk I/O error passed on to the application (on-io-error = pass-on)', fields: { error: detail } });
    fx.push({ kind: 'emit', event: { type: 'io-error', resource: r, node: s.config.local, error: detail, policy: 'pass-on' } });
    return { state: s, effects: fx };
  }
  s.diskless = true;
  s.diskFailure = detail;
  const served = peerServes(s);
  const consequence =
    s.role === 'Secondary'
      ? `${s.config.local} leaves the session; the Primary records what it misses; replace the disk and run nraid attach`
      : served
        ? `reads and writes go to ${s.config.peer} (UpToDate); no error reaches the application`
        : `no UpToDate peer can serve: I/O errors reach the application; connect ${s.config.peer} or switch over`;
  fx.push({ kind: 'log', level: 'error', message: `local disk failed: detached, ${s.config.local} is Diskless (on-io-error = detach); ${consequence}`, fields: { error: detail, role: s.role, servedByPeer: served } });
  fx.push({ kind: 'emit', event: { type: 'disk-failed', resource: r, node: s.config.local, error: detail, role: s.role, servedByPeer: served } });
  fx.push({ kind: 'emit', event: { disk: 'Diskless' } });
  if (connected(s)) fx.push({ kind: 'send-state' });
  if (s.role === 'Secondary') fx.push({ kind: 'link-disconnect', reason: `local disk failed (${detail}): ${s.config.local} is Diskless` });
  return { state: s, effects: fx };
}

/** `nraid attach`: the machine's part is the check; the daemon re-opens the disk and reconnects. */
export function attachCheck(s: MachineState, fx: Effect[], asker: Asker): Step {
  const r = s.config.resource;
  const refuse = (error: NraidError): Step => ({ state: s, effects: [{ kind: 'reply', to: asker, error }] });
  if (!s.diskless) return refuse(new StateError(`cannot attach a disk to ${r} on ${s.config.local}: its disk is attached (${s.md.flags.consistent ? 'Consistent' : 'Inconsistent'}); nothing to do`));
  if (s.role === 'Primary') {
    return refuse(
      new StateError(
        `cannot attach a disk to ${r} on ${s.config.local} while it is Primary (Diskless, served by ${s.config.peer}): ` +
          `switch over first (nraid switchover, or stop the services, nraid secondary here and nraid primary on ${s.config.peer}), then attach`,
      ),
    );
  }
  fx.push({ kind: 'log', level: 'info', message: 'attach: re-opening the backing disk; a resync from the peer follows' });
  answer(fx, asker, null);
  return { state: s, effects: fx };
}

/**
 * At the handshake, when either side is Diskless: no sync decision from the
 * generations. A Diskless Primary sends to an UpToDate peer of its generation
 * when nothing is marked out of sync (the peer then holds every acknowledged
 * write); anything else is refused, so a Diskless node is never a sync source
 * nor a sync target, and never serves stale data. The Diskless side stays
 * away (StandAlone: `attach` reconnects); its peer only drops the session and
 * keeps listening, so an attach finds it.
 */
export function disklessSession(s: MachineState, input: Input): { direction: 'source' | 'target' } | { refuse: string; standAlone: boolean } | null {
  const peer = s.peer!;
  const peerDiskless = peer.disk === 'Diskless';
  if (!s.diskless && !peerDiskless) return null;
  const away = (refuse: string) => ({ refuse, standAlone: s.diskless });
  if (s.diskless && peerDiskless) return away('both nodes are Diskless');
  if (s.role === 'Primary' && peer.role === 'Primary') return away('both nodes are Primary; demote one with nraid secondary');
  const sameGeneration = peer.uuids.current === s.md.uuids.current;
  if (s.diskless) {
    if (s.role !== 'Primary') return away(`${s.config.local} is Diskless; run nraid attach with a working disk`);
    if (peer.disk !== 'UpToDate') return away(`${s.config.local} is Diskless and ${s.config.peer} is ${peer.disk}: nothing can serve the data`);
    if (!sameGeneration || input.outOfSyncBytes > 0) {
      return away(`${s.config.local} is Diskless and ${s.config.peer} may miss writes acknowledged here before the disk failed; nothing can serve the newest data`);
    }
    return { direction: 'source' };
  }
  if (peer.role !== 'Primary') return away(`${s.config.peer} is Diskless (waiting for nraid attach there)`);
  // This node may have started its own generation for the Diskless Primary already (peerDiskless).
  const startedFromPeer = s.peerDiskLost && (s.md.uuids.bitmap === peer.uuids.current || s.md.uuids.history[0] === peer.uuids.current);
  if (!(sameGeneration || startedFromPeer) || !s.md.flags.consistent || s.md.flags.outdated || !s.md.flags.wasUpToDate) {
    return away(`${s.config.peer} is Diskless and Primary, and this disk is not its UpToDate copy`);
  }
  return { direction: 'target' };
}

/**
 * Both sides of a Diskless Primary and its UpToDate peer (on peer-state, and at
 * the handshake):
 * - the peer starts a generation of its own, once per loss, with every bit
 *   set: the Primary's old disk, if it ever comes back, is then behind by a
 *   generation and resyncs from here (every block), whatever its metadata says;
 * - the Diskless Primary follows the generation of the peer that holds its
 *   data, in memory only (it writes no metadata), so that a reconnect or a
 *   switchover finds both at the same generation.
 */
export function peerDiskless(s: MachineState, fx: Effect[], input: Input): void {
  const peer = s.peer;
  if (peer === null) return;
  if (peer.disk !== 'Diskless') {
    s.peerDiskLost = false;
  } else if (peer.role === 'Primary' && !s.peerDiskLost && !s.diskless && diskState(s) === 'UpToDate') {
    s.peerDiskLost = true;
    fx.push({ kind: 'log', level: 'warn', message: `${s.config.peer} is a Diskless Primary: this disk holds the only copy; a new generation starts here`, fields: { next: input.fresh.toString(16) } });
    fx.push({ kind: 'mark-all' }, { kind: 'persist-bitmap' });
    persist(s, fx, { kind: 'peer-disk-lost', fresh: input.fresh });
    fx.push({ kind: 'send-state' });
  }
  const u = s.md.uuids;
  const descends = peer.uuids.current === u.current || peer.uuids.bitmap === u.current || peer.uuids.history.includes(u.current);
  if (s.diskless && s.role === 'Primary' && peer.disk === 'UpToDate' && descends && peer.uuids.current !== u.current) {
    s.md = { ...s.md, uuids: { current: peer.uuids.current, bitmap: peer.uuids.bitmap, history: [peer.uuids.history[0], peer.uuids.history[1]] } };
    fx.push({ kind: 'log', level: 'info', message: `Diskless: following ${s.config.peer}'s generation`, fields: { current: peer.uuids.current.toString(16) } });
  }
}

/** `nraid detach`: the disk goes away now, as after an error; refused where nothing could serve the data. */
export function detachCommand(s: MachineState, fx: Effect[], asker: Asker): Step {
  const r = s.config.resource;
  const refuse = (error: NraidError): Step => ({ state: s, effects: [{ kind: 'reply', to: asker, error }] });
  if (s.diskless) return refuse(new StateError(`cannot detach the disk of ${r} on ${s.config.local}: it is Diskless already; nraid attach brings a disk back`));
  if (s.role === 'Primary' && !peerServes(s)) {
    return refuse(
      new StateError(
        `cannot detach the disk of ${r} on ${s.config.local}: it is Primary and ${s.config.peer} is not an UpToDate peer that could serve its I/O; ` +
          `connect ${s.config.peer} and wait for Established, or switch over first`,
      ),
    );
  }
  const why = 'detached by the operator (nraid detach)';
  diskFailed(s, fx, why, true);
  fx.push({ kind: 'detach-disk', why });
  answer(fx, asker, null);
  return { state: s, effects: fx };
}
