/**
 * The state machine of one resource on one node: `step(state, input)` returns
 * the next state and the effects to run, and does no I/O. Inputs are admin
 * commands, the peer's messages, the data plane's events and the results of
 * earlier effects; the owners in this folder execute the effects and feed
 * their results back (daemon.ts wires them). DESIGN.md §6 names the states.
 *
 * Invariants it keeps:
 * - never two Primaries while connected: a connected promotion is a
 *   two-phase exchange with the peer (promotePrepare, then promoteCommit or
 *   promoteAbort); a switchover whose outcome is unknown leaves this node
 *   Secondary until the peer's state says who is Primary;
 * - durable state before data: a sync target records Inconsistent before its
 *   data link attaches when the generations differ, and joins the source's
 *   generation (and only then lets resync data in) when the source asks, which
 *   the source does only after its own bitmap is durable.
 */
import { NraidError, StateError } from '../errors';
import { Asker, Effect, Input, MachineState, PeerRequest, Step, answer, diskState, persist, resolveUnknownSwitchover, resumeIo, splitBrainFacts } from './machine-core';
import { command, drained, faultPassed, programDone, promoteVote, switchover, switchoverReply } from './roles';
import { diskFailed, peerDiskless } from './disk-failure';
import { dataAttached, dataSocket, finishAsSource, peerNotice, sessionDown, sessionUp, setupReady, splitBrainDecided } from './sync';

export * from './machine-core';

/** One transition. Never throws for an operating condition: refusals are `reply` effects. */
export function step(state: MachineState, input: Input): Step {
  const s: MachineState = { ...state };
  const fx: Effect[] = [];
  const { event } = input;
  switch (event.type) {
    case 'command':
      return command(s, fx, event.id, event.command, input);
    case 'connection':
      s.connection = event.state;
      return { state: s, effects: fx };
    case 'link-refused':
      s.lastLinkError = event.reason;
      fx.push({ kind: 'emit', event: { lastLinkError: event.reason } });
      return { state: s, effects: fx };
    case 'peer-state':
      s.peer = event.peer;
      if (s.switchoverUnknown) resolveUnknownSwitchover(s, fx);
      peerDiskless(s, fx, input);
      return { state: s, effects: fx };
    case 'session-up':
      return sessionUp(s, fx, event, input);
    case 'session-down':
      return sessionDown(s, fx, event.reason, input);
    case 'peer-grace-over':
      s.peerLeftAsPrimary = false;
      return { state: s, effects: fx };
    case 'peer-facts':
      if (s.session?.id !== event.sessionId) return { state: s, effects: fx };
      s.session = { ...s.session, peerFacts: event.facts };
      return splitBrainDecided(s, fx, input);
    case 'facts-timeout':
      if (s.session?.id !== event.sessionId || s.session.setup !== 'deciding') return { state: s, effects: fx };
      s.session = { ...s.session, factsAnswered: true, peerFacts: s.session.peerFacts === undefined ? null : s.session.peerFacts };
      return splitBrainDecided(s, fx, input);
    case 'bitmap-merged':
      if (s.session?.id !== event.sessionId) return { state: s, effects: fx };
      if (event.error !== null) {
        fx.push({ kind: 'drop-session', reason: `session setup failed: ${event.error}` });
        return { state: s, effects: fx };
      }
      return setupReady(s, fx);
    case 'data-socket':
      return dataSocket(s, fx, event.sessionId, event.socketId);
    case 'data-attached':
      return dataAttached(s, fx, event, input);
    case 'peer-request':
      return peerRequest(s, fx, event.token, event.request, input);
    case 'peer-notice':
      return peerNotice(s, fx, event.notice, input);
    case 'promote-vote':
      return promoteVote(s, fx, event, input);
    case 'switchover-reply':
      return switchoverReply(s, fx, event, input);
    case 'resync-start-reply':
      if (s.session?.id !== event.sessionId || s.session.direction !== 'source') return { state: s, effects: fx };
      if (!event.ok) {
        fx.push({ kind: 'drop-session', reason: `the peer did not start its resync: ${event.reason}` });
        return { state: s, effects: fx };
      }
      s.replication = 'SyncSource';
      fx.push({ kind: 'start-resync' }, { kind: 'log', level: 'info', message: 'resync started', fields: { bytes: input.outOfSyncBytes } });
      return { state: s, effects: fx };
    case 'drained':
      return drained(s, fx, event.error, input);
    case 'program-done':
      // Diskless, the store writes nothing: the machine's view (following the peer) is the truth.
      if (!s.diskless) s.md = event.disk.md;
      s.armedGeneration = event.disk.armed;
      return programDone(s, fx, event.tag, event.error);
    case 'fault-passed':
      return faultPassed(s, fx, event.name, input);
    case 'link-lost':
      s.lastLinkError = event.detail;
      fx.push({ kind: 'log', level: 'warn', message: 'data link lost', fields: { reason: event.detail } });
      // Waiting for the peer's answer to a switchover: the new Primary closes the data link to turn
      // the session around right after it answers, and that close can arrive before the answer.
      // The control session carries the answer, then ends (or the request times out): not dropped here.
      if (s.switchover?.phase === 'requested') return { state: s, effects: fx };
      fx.push({ kind: 'drop-session', reason: `data link lost: ${event.detail}` });
      return { state: s, effects: fx };
    case 'resync-done':
      if (s.session?.direction !== 'source' || s.replication !== 'SyncSource') return { state: s, effects: fx };
      s.replication = 'Established';
      fx.push({ kind: 'log', level: 'info', message: 'resync finished', fields: { bytes: event.bytes } });
      finishAsSource(s, fx, input);
      fx.push({ kind: 'notice', notice: { kind: 'resyncDone' } });
      return { state: s, effects: fx };
    case 'generation-written':
      s.md = event.md;
      s.armedGeneration = null;
      fx.push({ kind: 'send-state' });
      return { state: s, effects: fx };
    case 'fence-done':
      if (event.exitCode === 0 && s.config.onNoPeer === 'continue' && s.connection !== 'Connected') resumeIo(s, fx, 'the fence-peer hook succeeded');
      else if (event.exitCode !== 0) fx.push({ kind: 'log', level: 'warn', message: 'fence-peer hook failed: I/O stays suspended until the peer returns or nraid resume-io', fields: { exitCode: event.exitCode } });
      return { state: s, effects: fx };
    case 'disk-failed':
      return diskFailed(s, fx, event.detail);
    case 'stop':
      s.stopping = true;
      return { state: s, effects: fx };
  }
}

function peerRequest(s: MachineState, fx: Effect[], token: number, request: PeerRequest, input: Input): Step {
  const asker: Asker = { token };
  const respond = (body: unknown, error: NraidError | null = null): Step => {
    answer(fx, asker, error, body);
    return { state: s, effects: fx };
  };
  switch (request.kind) {
    case 'splitBrainFacts':
      answer(fx, asker, null, splitBrainFacts(s, input));
      if (s.session === null) return { state: s, effects: fx };
      s.session = { ...s.session, factsAnswered: true };
      return s.session.setup === 'deciding' ? splitBrainDecided(s, fx, input) : { state: s, effects: fx };
    case 'promotePrepare': {
      if (s.role === 'Primary') return respond({ ok: false, reason: `${s.config.local} is Primary` });
      if (s.hold !== null && s.hold !== request.requestId) return respond({ ok: false, reason: 'another promotion is being decided' });
      if (s.switchover !== null || s.demotion !== null) return respond({ ok: false, reason: `${s.config.local} is changing its role` });
      if (s.promotion !== null) {
        // Both asked at once: the node whose name sorts first wins, so exactly one goes on.
        const peerWins = s.promotion.requestId !== null && s.config.peer < s.config.local;
        if (!peerWins) return respond({ ok: false, reason: `${s.config.local} is being promoted itself` });
      }
      s.hold = request.requestId;
      return respond({ ok: true, reason: '' });
    }
    case 'switchover':
      if (s.role !== 'Primary') return respond({}, new StateError(`cannot switch over ${s.config.resource}: ${s.config.local} is not Primary`));
      if (s.promotion !== null || s.switchover !== null || s.demotion !== null) {
        return respond({}, new StateError(`cannot switch over ${s.config.resource}: ${s.config.local} is busy with another role change`));
      }
      return switchover(s, fx, asker, request.holder);
    case 'switchoverPromote': {
      if (s.role === 'Primary') return respond({ ok: true, reason: '' });
      if (request.current !== s.md.uuids.current) {
        return respond({ ok: false, reason: `generations differ (${s.config.peer} ${request.current.toString(16)}, ${s.config.local} ${s.md.uuids.current.toString(16)})` });
      }
      // A switchover this node asked the Primary for (delegated) is exactly this request.
      const busy = s.promotion !== null || s.demotion !== null || (s.switchover !== null && s.switchover.phase !== 'delegated');
      if (busy) return respond({ ok: false, reason: `${s.config.local} is busy with another role change` });
      if (diskState(s) !== 'UpToDate') return respond({ ok: false, reason: `${s.config.local}'s disk is ${diskState(s)}` });
      s.promotion = { asker, requestId: null, force: false, minted: false, failure: null };
      fx.push({ kind: 'fault-point', name: 'switchover:peer-before-promote' });
      return { state: s, effects: fx };
    }
    case 'resyncStart': {
      if (s.session === null || s.session.direction !== 'target') return respond({ ok: false }, new StateError(`${s.config.local} is not a sync target in this session`));
      s.replication = 'SyncTarget';
      s.session = { ...s.session, syncNoticed: true };
      // Durable before data: the source's bitmap is on its disk; take its generation, then let data in.
      persist(s, fx, { kind: 'target-joins', current: request.current, history: request.history });
      s.session = { ...s.session, resyncAllowed: true };
      fx.push({ kind: 'allow-resync', bytes: Number(request.bytes) }, { kind: 'log', level: 'info', message: 'resync started as target', fields: { bytes: Number(request.bytes) } });
      fx.push({ kind: 'send-state' });
      return respond({ ok: true });
    }
  }
}
