/**
 * Role changes: the admin commands, the two-phase promotion, demotion, and
 * the switchover with its unknown outcome. Pure transitions (see machine.ts).
 */
import { DeviceBusyError, HookFailedError, NotUpToDateError, NraidError, PeerError, PromotionConflictError, StateError, SwitchoverOutcomeUnknownError } from '../errors';
import {
  Asker,
  Command,
  Effect,
  Event,
  Input,
  MachineState,
  ProgramTag,
  Promotion,
  Step,
  answer,
  armGeneration,
  connected,
  disarmGeneration,
  diskState,
  persist,
  resumeIo,
} from './machine-core';
import { attachCheck, detachCommand } from './disk-failure';
export function command(s: MachineState, fx: Effect[], id: number, c: Command, input: Input): Step {
  const r = s.config.resource;
  const asker: Asker = { command: id };
  const refuse = (error: NraidError): Step => ({ state: s, effects: [{ kind: 'reply', to: asker, error }] });
  const done = (): Step => {
    answer(fx, asker, null);
    return { state: s, effects: fx };
  };
  const busy = s.promotion !== null ? 'promotion' : s.switchover !== null ? 'switchover' : s.demotion !== null ? 'demotion' : null;
  if (busy !== null && c.name !== 'resume-io' && c.name !== 'disconnect' && c.name !== 'adjust') {
    return refuse(new StateError(`cannot run ${c.name} on ${r}: a ${busy} is in progress; wait for it to finish`));
  }
  switch (c.name) {
    case 'primary':
      return primary(s, fx, asker, c.force, input);
    case 'secondary':
      if (s.role === 'Secondary') return done();
      if (s.ioSuspended) return refuse(suspendedError(r, 'demote'));
      // A before-demote hook unmounts first; the unexpose after it still refuses a device in use.
      if (c.holder !== null && !beforeDemoteHook(s)) {
        return refuse(new DeviceBusyError(`cannot demote ${r}: device ${s.config.device} is in use (${c.holder}); unmount or close it first, or configure hooks.before-demote`));
      }
      s.demotion = asker;
      demote(s, fx);
      return { state: s, effects: fx, tag: 'demote' };
    case 'switchover':
      return switchover(s, fx, asker, c.holder, c.syncPercent);
    case 'connect':
      if (c.discardMyData) {
        if (s.role === 'Primary') {
          return refuse(
            new StateError(
              `cannot discard the data of ${r} on ${s.config.local}: it is Primary` +
                (c.holder !== null ? ` and its device ${s.config.device} is in use (${c.holder})` : '') +
                '; stop what uses it, run nraid secondary, then connect --discard-my-data',
            ),
          );
        }
        s.discardMyData = true;
        fx.push({ kind: 'log', level: 'warn', message: 'connect --discard-my-data: this node becomes the sync target of a split brain' });
      }
      fx.push({ kind: 'link-connect' });
      return done();
    case 'disconnect':
      fx.push({ kind: 'link-disconnect', reason: 'disconnect requested by the operator' });
      return done();
    case 'invalidate':
      if (s.role === 'Primary') {
        return refuse(new StateError(`cannot invalidate ${r} on ${s.config.local}: it is Primary; run nraid secondary first (or invalidate the peer instead)`));
      }
      if (connected(s) && s.peer!.disk !== 'UpToDate') {
        return refuse(new NotUpToDateError(`cannot invalidate ${r} on ${s.config.local}: the peer's disk is ${s.peer!.disk}; a full sync needs an UpToDate source`));
      }
      persist(s, fx, { kind: 'invalidated' });
      fx.push({ kind: 'log', level: 'warn', message: 'invalidated: a full sync from the peer follows' }, { kind: 'send-state' });
      if (connected(s)) fx.push({ kind: 'drop-session', reason: 'invalidated: full sync' });
      return done();
    case 'resume-io':
      if (!s.ioSuspended) return refuse(new StateError(`I/O of ${r} is not suspended; nothing to resume`));
      resumeIo(s, fx, 'nraid resume-io');
      return done();
    case 'attach':
      return attachCheck(s, fx, asker);
    case 'detach':
      return detachCommand(s, fx, asker);
    case 'adjust':
      if (c.onIoError !== undefined && c.onIoError !== s.config.onIoError) {
        fx.push({ kind: 'log', level: 'info', message: 'on-io-error changed', fields: { from: s.config.onIoError, to: c.onIoError } });
        s.config = { ...s.config, onIoError: c.onIoError };
        fx.push({ kind: 'set-on-io-error', policy: c.onIoError });
      }
      if (c.protocol !== s.protocol) {
        fx.push({ kind: 'log', level: 'info', message: 'protocol changed', fields: { from: s.protocol, to: c.protocol } });
        s.protocol = c.protocol;
        fx.push({ kind: 'set-protocol', protocol: c.protocol }, { kind: 'notice', notice: { kind: 'adjust' } }, { kind: 'send-state' });
      }
      return done();
    case 'down':
      if (s.ioSuspended) return refuse(suspendedError(r, 'take down'));
      if (c.holder !== null) return refuse(new DeviceBusyError(`cannot take ${r} down: device ${s.config.device} is in use (${c.holder}); unmount or close it first`));
      s.stopping = true;
      return done();
  }
}

export function suspendedError(resource: string, what: string): StateError {
  return new StateError(
    `cannot ${what} ${resource}: its I/O is suspended (on-no-peer = suspend-io or a failed fence-peer hook); ` +
      'writers are waiting on the device: reconnect the peer or run nraid resume-io first',
  );
}

const beforeDemoteHook = (s: MachineState): boolean => s.config.roleHooks?.beforeDemote === true;
const afterPromoteHook = (s: MachineState): boolean => s.config.roleHooks?.afterPromote === true;

/** The effects that take the device away and record the node as Secondary (a program). */
export function demote(s: MachineState, fx: Effect[]): void {
  // The services stop and the filesystem is unmounted before the device goes; a failing hook fails the program.
  if (beforeDemoteHook(s)) fx.push({ kind: 'run-role-hook', hook: 'before-demote', purpose: 'switch' });
  fx.push({ kind: 'unexpose' });
  disarmGeneration(s, fx);
  persist(s, fx, { kind: 'became-secondary' });
}

export function primary(s: MachineState, fx: Effect[], asker: Asker, force: boolean, input: Input): Step {
  const r = s.config.resource;
  const refuse = (error: NraidError): Step => ({ state: s, effects: [{ kind: 'reply', to: asker, error }] });
  if (s.role === 'Primary') {
    answer(fx, asker, null);
    return { state: s, effects: fx };
  }
  if (connected(s) && s.peer!.role === 'Primary') {
    return refuse(
      new StateError(`cannot promote ${r}: the peer ${s.config.peer} is Primary; demote it first (nraid secondary on ${s.config.peer}) or use nraid switchover`),
    );
  }
  if (s.peerLeftAsPrimary && !connected(s) && !force) {
    return refuse(
      new PromotionConflictError(
        `cannot promote ${r}: ${s.config.peer} ended the session as Primary a moment ago (it is alive); wait for the nodes to reconnect, ` +
          `or use --force if ${s.config.peer} is really gone`,
      ),
    );
  }
  if (s.hold !== null) {
    return refuse(new PromotionConflictError(`cannot promote ${r}: ${s.config.peer} is being promoted right now; run nraid status and try again if it did not become Primary`));
  }
  if (s.replication === 'SyncTarget') {
    return refuse(new NotUpToDateError(`cannot promote ${r}: local disk is Inconsistent (resync from ${s.config.peer} in progress); wait for it to finish`));
  }
  if (diskState(s) !== 'UpToDate' && !force) {
    return refuse(
      new NotUpToDateError(
        `cannot promote ${r}: local disk is ${diskState(s)}; connect to an UpToDate peer and wait for the resync, or use --force to accept this data as the newest`,
      ),
    );
  }
  if (connected(s)) {
    // Phase one of two: the peer promises not to promote itself, or says why not.
    const requestId = s.nextRequestId;
    s.nextRequestId = requestId + 1n;
    s.promotion = { asker, requestId, force, minted: false, failure: null };
    fx.push({ kind: 'request-promote', requestId, current: s.md.uuids.current });
    return { state: s, effects: fx };
  }
  s.promotion = { asker, requestId: null, force, minted: false, failure: null };
  return promote(s, fx, input);
}

/** The local part of a promotion (after the peer's yes, or with no peer to ask). Ends in program-done 'promote'. */
export function promote(s: MachineState, fx: Effect[], input: Input): Step {
  const promotion = s.promotion!;
  let minted = false;
  // Diskless, there is nothing to declare newest: the peer holds the data (a switchover taken back).
  if (diskState(s) !== 'UpToDate' && !s.diskless) {
    // primary() refused this without --force.
    fx.push({ kind: 'log', level: 'warn', message: 'forced promotion', fields: { disk: diskState(s) } });
    persist(s, fx, { kind: 'forced-promotion', fresh: input.fresh });
    minted = true;
  }
  // Armed with or without the peer, and over a session whose data link still runs toward this
  // node (it turns around after the promotion): the first write the peer does not take starts a
  // new generation, so the turned-around session resyncs it (the after-promote hook's writes,
  // PostgreSQL starting: at an equal generation they were lost on a switchover back).
  if (!minted) armGeneration(s, fx, input);
  persist(s, fx, { kind: 'became-primary', atMs: input.nowMs });
  fx.push({ kind: 'persist-bitmap' }, { kind: 'activity-log-reset' }, { kind: 'expose' });
  // fsck, mount, start the services; a failing hook fails the program, which undoes the promotion.
  // Writes it makes before a switchover's session turns around are marked out of sync, resynced after.
  if (afterPromoteHook(s)) fx.push({ kind: 'run-role-hook', hook: 'after-promote', purpose: 'switch' });
  s.promotion = { ...promotion, minted };
  return { state: s, effects: fx, tag: 'promote' };
}

export function programDone(s: MachineState, fx: Effect[], tag: ProgramTag, error: NraidError | null): Step {
  switch (tag) {
    case 'promote': {
      const promotion = s.promotion!;
      if (error !== null && error.code === 'NRAID_ERR_HOOK_FAILED') {
        // The device is exposed and the hook may have started part of the services: stop them
        // and take the device away before this node says it is Secondary (a program: if the
        // device cannot go, the node stays Primary and says so).
        fx.push({ kind: 'log', level: 'error', message: 'promotion failed in the after-promote hook: undoing it', fields: { error: error.message } });
        s.promotion = { ...promotion, hookFailure: error };
        if (beforeDemoteHook(s)) fx.push({ kind: 'run-role-hook', hook: 'before-demote', purpose: 'cleanup' });
        fx.push({ kind: 'unexpose' });
        return { state: s, effects: fx, tag: 'promote-undo' };
      }
      s.promotion = null;
      if (error !== null) {
        fx.push({ kind: 'log', level: 'error', message: 'promotion failed', fields: { error: error.message } });
        return promotionFailed(s, fx, promotion, error);
      }
      return promoted(s, fx, promotion);
    }
    case 'promote-undo': {
      const promotion = s.promotion!;
      const hookError = promotion.hookFailure!;
      s.promotion = null;
      if (error === null) return promotionFailed(s, fx, promotion, hookError);
      // The device could not be taken away (still in use): this node stays Primary, and says so.
      const r = s.config.resource;
      const stays = new HookFailedError(
        `${hookError.message}; undoing the promotion failed too (${error.message}): ${s.config.local} stays Primary of ${r} with its services ` +
          'as the hooks left them; start them by hand, or stop them, unmount and run nraid secondary',
      );
      fx.push({ kind: 'log', level: 'error', message: 'undoing the promotion failed: staying Primary', fields: { error: error.message } });
      const askedByPeer = promotion.asker !== null && 'token' in promotion.asker;
      return promoted(s, fx, { ...promotion, failure: askedByPeer ? null : promotion.failure !== null ? new HookFailedError(`${promotion.failure.message}; ${stays.message}`) : stays });
    }
    case 'demote': {
      const asker = s.demotion;
      s.demotion = null;
      if (error !== null) {
        restoreServices(s, fx);
        if (asker !== null) answer(fx, asker, restoredError(s, error));
        return { state: s, effects: fx };
      }
      s.role = 'Secondary';
      s.exposed = false;
      fx.push({ kind: 'log', level: 'info', message: 'demoted' }, { kind: 'send-state' });
      if (asker !== null) answer(fx, asker, null);
      return { state: s, effects: fx };
    }
    case 'switchover-demote': {
      const so = s.switchover!;
      if (error !== null) {
        // The device is still there (the hook or unexpose refused): this node stays Primary.
        s.switchover = null;
        restoreServices(s, fx);
        const message = `cannot switch over ${s.config.resource}: ${error.message}`;
        answer(fx, so.asker, restoredError(s, error.code === 'NRAID_ERR_HOOK_FAILED' ? new HookFailedError(message) : new StateError(message)));
        return { state: s, effects: fx };
      }
      s.role = 'Secondary';
      s.exposed = false;
      s.switchover = { ...so, phase: 'draining' };
      fx.push({ kind: 'send-state' }, { kind: 'fault-point', name: 'switchover:after-demote' });
      return { state: s, effects: fx };
    }
  }
}

/** A promotion that ended well (or could not be undone): the node is Primary and the askers hear so. */
function promoted(s: MachineState, fx: Effect[], promotion: Promotion): Step {
  s.role = 'Primary';
    s.exposed = true;
    fx.push({ kind: 'log', level: 'info', message: 'promoted' }, { kind: 'send-state' });
    if (promotion.requestId !== null) fx.push({ kind: 'notice', notice: { kind: 'promoteCommit', requestId: promotion.requestId } });
    const after: Effect[] = [];
    if (promotion.asker !== null) after.push({ kind: 'reply', to: promotion.asker, error: promotion.failure, body: { ok: true, reason: '' } });
    // The data link runs from the Primary: turn it around if it ran the other way. After a
    // forced promotion the generations differ, so the handshake decides the sync anew, also
    // while a handshake is under way (the peer may already hold the old state).
    if ((promotion.minted && s.connection !== 'StandAlone') || (connected(s) && s.session!.direction !== 'source')) {
      after.push({ kind: 'notice', notice: { kind: 'turnaround' } });
      after.push({ kind: 'drop-session', reason: promotion.minted ? 'a new generation starts: renegotiating the sync' : 'the new Primary becomes the source' });
    }
    if (promotion.asker !== null && 'token' in promotion.asker && s.switchover?.phase === 'delegated') {
      // This node asked the Primary for the switchover and is Primary now: that is its answer
      // (the Primary's own reply may not arrive once the session turns around).
      after.unshift({ kind: 'log', level: 'info', message: 'switchover done', fields: { newPrimary: s.config.local } });
      after.push({ kind: 'reply', to: s.switchover.asker, error: null });
      s.switchover = null;
    }
    if (promotion.asker !== null && 'token' in promotion.asker) {
      // Promoted at the peer's request (switchover): the answer leaves after the fault point.
      s.afterPeerPromote = after;
      fx.push({ kind: 'fault-point', name: 'switchover:peer-after-promote' });
    } else {
      fx.push(...after);
    }
    return { state: s, effects: fx };
}
/** A promotion that did not happen: the node records itself Secondary and the askers hear why. */
function promotionFailed(s: MachineState, fx: Effect[], promotion: Promotion, error: NraidError): Step {
  if (promotion.requestId !== null) fx.push({ kind: 'notice', notice: { kind: 'promoteAbort', requestId: promotion.requestId } });
  persist(s, fx, { kind: 'became-secondary' });
  disarmGeneration(s, fx);
  // A peer that asked (switchover) hears a plain no: it knows this node is not Primary.
  if (promotion.asker !== null && 'token' in promotion.asker) {
    answer(fx, promotion.asker, null, { ok: false, reason: `the promotion failed: ${error.message}` });
  } else if (promotion.asker !== null) {
    const undone =
      error.code === 'NRAID_ERR_HOOK_FAILED'
        ? new HookFailedError(`cannot promote ${s.config.resource} on ${s.config.local}: ${error.message}; the promotion is undone, ${s.config.local} is Secondary: fix the hook and run nraid primary again`)
        : error;
    answer(fx, promotion.asker, promotion.failure !== null && promotion.failure !== error ? combined(s, promotion.failure, error) : undone);
  }
  return { state: s, effects: fx };
}

/** A switchover that failed, then taking the Primary role back failed in its hook: no node is Primary, and the message says so. */
function combined(s: MachineState, failure: NraidError, error: NraidError): NraidError {
  if (error.code !== 'NRAID_ERR_HOOK_FAILED') return failure;
  return new HookFailedError(
    `${failure.message.replace(`, ${s.config.local} is still Primary`, '')}; taking the Primary role back failed too: ${error.message}; ` +
      `no node is Primary of ${s.config.resource}: fix the hook, then run nraid primary where the services should run`,
  );
}

/** A demotion that did not happen after the before-demote hook ran: the after-promote hook brings the services back. */
function restoreServices(s: MachineState, fx: Effect[]): void {
  if (beforeDemoteHook(s) && afterPromoteHook(s)) fx.push({ kind: 'run-role-hook', hook: 'after-promote', purpose: 'restore' });
}

function restoredError(s: MachineState, error: NraidError): NraidError {
  if (!beforeDemoteHook(s)) return error;
  const restored = afterPromoteHook(s) ? 'the after-promote hook ran to bring the services back (see the log)' : 'no after-promote hook is configured to bring the services back';
  const message = `${error.message}; ${s.config.local} stays Primary, ${restored}`;
  if (error.code === 'NRAID_ERR_HOOK_FAILED') return new HookFailedError(message);
  if (error.code === 'NRAID_ERR_DEVICE_BUSY') return new DeviceBusyError(message);
  return new StateError(message);
}

export function switchover(s: MachineState, fx: Effect[], asker: Asker, holder: string | null, syncPercent: number | null = null): Step {
  const r = s.config.resource;
  const refuse = (error: NraidError): Step => ({ state: s, effects: [{ kind: 'reply', to: asker, error }] });
  if (!connected(s)) {
    return refuse(new StateError(`cannot switch over ${r}: the peer is not connected (connection ${s.connection}); a planned switchover needs both nodes`));
  }
  if (s.replication !== 'Established') {
    const progress = syncPercent !== null ? ` (${syncPercent.toFixed(1)}% done)` : '';
    return refuse(new StateError(`cannot switch over ${r}: replication is ${s.replication}${progress}; wait for it to be Established`));
  }
  // A Diskless Primary (served by its UpToDate peer) may hand over: that is how its disk gets replaced.
  const localOk = diskState(s) === 'UpToDate' || (s.diskless && s.role === 'Primary');
  if (!localOk || s.peer!.disk !== 'UpToDate') {
    return refuse(new NotUpToDateError(`cannot switch over ${r}: disks are ${diskState(s)} here and ${s.peer!.disk} on ${s.config.peer}; both must be UpToDate`));
  }
  if (s.role === 'Secondary') {
    if (s.peer!.role !== 'Primary') return refuse(new StateError(`cannot switch over ${r}: neither node is Primary; use nraid primary`));
    // The Primary runs it; its answer is this command's.
    s.switchover = { asker, phase: 'delegated' };
    fx.push({ kind: 'request-switchover' });
    return { state: s, effects: fx };
  }
  if (holder !== null && !beforeDemoteHook(s)) {
    return refuse(
      new DeviceBusyError(`cannot switch over ${r}: device ${s.config.device} is in use (${holder}); stop the services and unmount it first, or configure hooks.before-demote`),
    );
  }
  s.switchover = { asker, phase: 'demoting' };
  fx.push({ kind: 'log', level: 'info', message: 'switchover: demoting', fields: { to: s.config.peer } });
  demote(s, fx);
  return { state: s, effects: fx, tag: 'switchover-demote' };
}

export function faultPassed(s: MachineState, fx: Effect[], name: string, input: Input): Step {
  switch (name) {
    case 'switchover:after-demote':
      if (s.switchover?.phase === 'draining') fx.push({ kind: 'drain' });
      break;
    case 'switchover:after-drain':
      if (s.switchover?.phase !== 'draining') break;
      if (!connected(s)) return switchoverFailedBeforeAsking(s, fx, 'the peer went away before it was asked to promote', input);
      s.switchover = { ...s.switchover, phase: 'requested' };
      fx.push({ kind: 'request-switchover-promote', current: s.md.uuids.current });
      break;
    case 'switchover:peer-before-promote':
      if (s.promotion === null || s.promotion.asker === null) break;
      if (!connected(s)) {
        // The session that asked is gone: its request is not acted on.
        s.promotion = null;
        break;
      }
      return promote(s, fx, input);
    case 'switchover:peer-after-promote':
      if (s.afterPeerPromote !== null) fx.push(...s.afterPeerPromote);
      s.afterPeerPromote = null;
      break;
  }
  return { state: s, effects: fx };
}

export function drained(s: MachineState, fx: Effect[], error: string | null, input: Input): Step {
  if (s.switchover?.phase !== 'draining') return { state: s, effects: fx };
  if (error !== null) return switchoverFailedBeforeAsking(s, fx, `the peer did not catch up: ${error}`, input);
  fx.push({ kind: 'fault-point', name: 'switchover:after-drain' });
  return { state: s, effects: fx };
}

/** The peer was never asked (or said no), so it is not Primary: this node takes its role back. */
export function switchoverFailedBeforeAsking(s: MachineState, fx: Effect[], why: string, input: Input): Step {
  const so = s.switchover!;
  s.switchover = null;
  fx.push({ kind: 'log', level: 'error', message: 'switchover failed: the peer did not promote, taking the Primary role back', fields: { error: why } });
  const failure = new StateError(`switchover of ${s.config.resource} failed, ${s.config.local} is still Primary: ${why}`);
  s.promotion = { asker: so.asker, requestId: null, force: false, minted: false, failure };
  return promote(s, fx, input);
}

export function switchoverReply(s: MachineState, fx: Effect[], event: Extract<Event, { type: 'switchover-reply' }>, input: Input): Step {
  const so = s.switchover;
  if (so === null || (so.phase !== 'requested' && so.phase !== 'delegated')) return { state: s, effects: fx };
  if (event.outcome === 'done') {
    s.switchover = null;
    fx.push({ kind: 'log', level: 'info', message: 'switchover done', fields: { newPrimary: so.phase === 'requested' ? s.config.peer : s.config.local } });
    answer(fx, so.asker, null);
    return { state: s, effects: fx };
  }
  if (so.phase === 'delegated') {
    // The Primary ran it and said how it ended.
    s.switchover = null;
    answer(fx, so.asker, event.error ?? new PeerError(`switchover of ${s.config.resource} failed on ${s.config.peer}: ${event.reason}`));
    return { state: s, effects: fx };
  }
  if (event.outcome === 'refused') return switchoverFailedBeforeAsking(s, fx, `${s.config.peer} refused to promote: ${event.reason}`, input);
  // The request left; whether the peer acted is not known. Never re-promote on a guess.
  s.switchover = null;
  s.switchoverUnknown = true;
  fx.push({ kind: 'log', level: 'error', message: 'switchover outcome unknown: staying Secondary until the peer says who is Primary', fields: { error: event.reason } });
  fx.push({ kind: 'emit', event: { switchoverUnknown: true } });
  answer(
    fx,
    so.asker,
    new SwitchoverOutcomeUnknownError(
      `switchover outcome unknown: ${s.config.peer} may be Primary (${event.reason}); ${s.config.local} stays Secondary. ` +
        `Check nraid status on ${s.config.peer}; when the nodes reconnect this node learns the outcome`,
    ),
  );
  return { state: s, effects: fx };
}

export function promoteVote(s: MachineState, fx: Effect[], event: { requestId: bigint; ok: boolean; reason: string }, input: Input): Step {
  const p = s.promotion;
  if (p === null || p.requestId !== event.requestId) return { state: s, effects: fx };
  if (!event.ok || !connected(s)) {
    s.promotion = null;
    if (connected(s)) fx.push({ kind: 'notice', notice: { kind: 'promoteAbort', requestId: event.requestId } });
    const why = event.ok ? 'the peer went away during the promotion' : `${s.config.peer} said no (${event.reason})`;
    if (p.asker !== null) {
      answer(fx, p.asker, new PromotionConflictError(`cannot promote ${s.config.resource}: ${why}; check nraid status on both nodes, then try again`));
    }
    return { state: s, effects: fx };
  }
  return promote(s, fx, input);
}
