/**
 * Runs the state machine: one event at a time, in arrival order, each step's
 * effects executed by their owners before the next event is taken. Effects
 * that wait on the peer (requests, drains, the data socket) do not hold the
 * queue: their results come back as events. A program (a tagged step) reports
 * its end with program-done before any other event.
 */
import { EventEmitter } from 'node:events';
import { HookFailedError, InternalError, NraidError, SystemError } from '../errors';
import { runHook, runHookWithOutput } from '../hooks';
import * as limits from '../limits';
import { Logger } from '../log';
import { flagBits } from '../metadata';
import { LastResync, ResourceStatus } from '../state';
import { DataPlane } from './data-plane';
import { Exposure } from './exposure';
import { Command, Effect, Event, MachineState, peerServes, step } from './machine';
import { RoleHookPurpose } from './machine-core';
import { MetadataStore, mintUuid } from './metadata-store';
import { PeerSession } from './peer-session';
import { ResyncClock, endedResync, resyncTargetBytes } from './status';

export interface RunnerOwners {
  plane: DataPlane;
  store: MetadataStore;
  exposure: Exposure;
  peer: () => PeerSession | null;
  log: Logger;
  /** Environment for hooks, and the hooks' commands. */
  hooks: {
    fencePeer: string | null;
    splitBrain: string | null;
    env: (event: string) => Record<string, string>;
    /** before-demote and after-promote, with their timeouts (absent: none configured). */
    role?: { beforeDemote: string | null; afterPromote: string | null; beforeDemoteTimeoutMs: number; afterPromoteTimeoutMs: number };
  };
  lag: { maxLagBytes: number; maxLagMs: number };
  /** Names of fault points that cut the link when reached (NRAID_FAULT_POINTS; tests only). */
  faultPoints: ReadonlySet<string>;
  status: () => ResourceStatus;
  /** Checksum resync settings (config keys csums, csums-after-crash-only), read at each resync's start. */
  csums?: () => { csums: boolean; afterCrashOnly: boolean };
}

function asNraidError(error: unknown): NraidError {
  if (error instanceof NraidError) return error;
  return new InternalError(error instanceof Error ? error.message : String(error));
}

/** Effects that write the backing disk. */
const DISK_EFFECTS: ReadonlySet<Effect['kind']> = new Set<Effect['kind']>(['persist', 'persist-bitmap', 'activity-log-reset', 'arm-generation']);

/** A resync in `direction` is what the machine says this node does now. */
function resyncRuns(s: MachineState, direction: 'source' | 'target'): boolean {
  return s.session?.direction === direction && s.replication === (direction === 'source' ? 'SyncSource' : 'SyncTarget');
}

export class Runner extends EventEmitter {
  private queue: Event[] = [];
  private running = false;
  private nextCommand = 1;
  private readonly commands = new Map<number, { resolve: (status: ResourceStatus) => void; reject: (error: Error) => void }>();
  resync: ResyncClock | null = null;
  /** The last resync that ended here, on the daemon's clock (status lastResync). */
  lastResync: LastResync | null = null;

  constructor(
    public state: MachineState,
    private readonly owners: RunnerOwners,
  ) {
    super();
  }

  /** csums, unless csums-after-crash-only and neither side crashed as Primary. */
  private resyncUsesCsums(): boolean {
    const settings = this.owners.csums?.() ?? { csums: false, afterCrashOnly: false };
    if (!settings.csums) return false;
    const crashed = this.state.md.flags.crashedPrimary || ((this.state.peer?.flags ?? 0) & flagBits.crashedPrimary) !== 0;
    const csums = !settings.afterCrashOnly || crashed;
    this.owners.log.info('resync starts', { csums, crashedPrimary: crashed });
    return csums;
  }

  /** Records (and logs, as DRBD's "Resync done (total N sec; ... K/sec)") the resync that just ended. */
  private resyncEnded(clock: ResyncClock): void {
    this.resync = null;
    const finished = this.state.replication === 'Established';
    const ended = endedResync(clock, this.owners.plane.open ? this.owners.plane.counters() : null, finished, Date.now());
    this.lastResync = ended;
    this.owners.log.info(finished ? 'resync done' : 'resync stopped before its end', {
      direction: ended.direction,
      bytes: ended.bytes,
      seconds: Number(ended.seconds.toFixed(3)),
      mibPerSecond: Number((ended.rateBytesPerSec / 1048576).toFixed(1)),
    });
  }

  dispatch(event: Event): void {
    this.queue.push(event);
    if (!this.running) void this.run();
  }

  /** An admin command: resolves with the status after it, or rejects with the machine's refusal. */
  command(command: Command): Promise<ResourceStatus> {
    const id = this.nextCommand++;
    return new Promise((resolve, reject) => {
      this.commands.set(id, { resolve, reject });
      this.dispatch({ type: 'command', id, command });
    });
  }

  private async run(): Promise<void> {
    this.running = true;
    try {
      for (let event = this.queue.shift(); event !== undefined; event = this.queue.shift()) {
        const { plane } = this.owners;
        const result = step(this.state, { event, nowMs: Date.now(), fresh: mintUuid(), outOfSyncBytes: plane.open ? plane.outOfSyncBytes() : 0 });
        this.state = result.state;
        // Before any effect: a Diskless node's requests go to the peer only while it can serve them.
        if (plane.open) plane.setPeerServes(peerServes(this.state));
        let failure: NraidError | null = null;
        for (const effect of result.effects) {
          try {
            await this.execute(effect);
          } catch (error) {
            if (result.tag !== undefined) {
              failure = asNraidError(error);
              break;
            }
            this.owners.log.error(`${effect.kind} failed`, { error: (error as Error).message });
          }
        }
        if (this.resync !== null && !resyncRuns(this.state, this.resync.direction)) this.resyncEnded(this.resync);
        if (result.tag !== undefined) {
          const disk = { md: this.owners.store.view(), armed: this.owners.store.armedGeneration };
          this.queue.unshift({ type: 'program-done', tag: result.tag, error: failure, disk });
        }
        // A program's changes are one event: reported after its program-done step.
        if (result.tag === undefined) this.emit('stepped');
      }
    } finally {
      this.running = false;
    }
  }

  private async execute(effect: Effect): Promise<void> {
    const { plane, store, exposure, log } = this.owners;
    // Detached: the failed disk is not written again, metadata neither (DRBD does the same).
    if (this.state.diskless && DISK_EFFECTS.has(effect.kind)) {
      log.info(`skipped ${effect.kind}: the disk is detached (Diskless)`);
      return;
    }
    switch (effect.kind) {
      case 'reply':
        if ('command' in effect.to) {
          const waiter = this.commands.get(effect.to.command);
          this.commands.delete(effect.to.command);
          if (effect.error !== null) waiter?.reject(effect.error);
          else waiter?.resolve(this.owners.status());
        } else {
          this.owners.peer()?.answer(effect.to.token, effect.body ?? {}, effect.error);
        }
        return;
      case 'persist':
        return store.persist(plane, effect.change);
      case 'persist-bitmap':
        if (plane.open) await plane.persistBitmap(true);
        return;
      case 'activity-log-reset':
        return plane.resetActivityLog();
      case 'expose':
        exposure.expose();
        return;
      case 'unexpose':
        return exposure.unexpose();
      case 'drain':
        plane.drain(limits.drainTimeoutMs).then(
          () => this.dispatch({ type: 'drained', error: null }),
          (error: Error) => this.dispatch({ type: 'drained', error: error.message }),
        );
        return;
      case 'arm-generation':
        return store.arm(plane, effect.fresh);
      case 'disarm-generation':
        return store.disarm(plane);
      case 'allow-resync': {
        // With no data link attached yet, the attach carries the permission instead.
        const counters = plane.counters();
        if (counters?.linkAttached) plane.allowResync();
        if (counters !== null && effect.bytes !== undefined) {
          this.resync = { direction: 'target', totalBytes: effect.bytes, startedAtMs: Date.now(), doneBaseBytes: resyncTargetBytes(counters) };
        }
        return;
      }
      case 'start-resync': {
        const counters = plane.counters();
        if (counters !== null) this.resync = { direction: 'source', totalBytes: counters.outOfSyncBytes, startedAtMs: Date.now(), doneBaseBytes: counters.resyncBytesDone };
        plane.startResync({ csums: this.resyncUsesCsums() });
        return;
      }
      case 'clear-bitmap':
        plane.clearBitmap();
        return;
      case 'mark-all':
        plane.markAll();
        return;
      case 'suspend-io':
        plane.setSuspended(true);
        log.warn('I/O suspended', { reason: effect.reason });
        return;
      case 'resume-io':
        plane.setSuspended(false);
        log.info('I/O resumed', { reason: effect.reason });
        return;
      case 'set-protocol':
        plane.setProtocol(effect.protocol);
        return;
      case 'detach-disk':
        plane.detachDisk(effect.why);
        return;
      case 'set-on-io-error':
        plane.setOnIoError(effect.policy);
        return;
      case 'run-hook':
        return this.runHook(effect.hook);
      case 'run-role-hook':
        return this.runRoleHook(effect.hook, effect.purpose);
      case 'fault-point':
        if (this.owners.faultPoints.has(effect.name)) {
          log.warn(`fault point ${effect.name} hit`);
          // The link reports the cut at once (session-down is queued now), so the step
          // after the fault point runs without the peer, as after a real cut there.
          this.owners.peer()?.cut(`fault point ${effect.name}`);
        }
        this.dispatch({ type: 'fault-passed', name: effect.name });
        return;
      case 'arm-facts-timeout': {
        const sessionId = effect.sessionId;
        setTimeout(() => this.dispatch({ type: 'facts-timeout', sessionId }), limits.splitBrainFactsTimeoutMs).unref();
        return;
      }
      case 'arm-peer-grace':
        setTimeout(() => this.dispatch({ type: 'peer-grace-over' }), effect.ms).unref();
        return;
      case 'log':
        log[effect.level](effect.message, effect.fields);
        return;
      case 'emit':
        if (typeof effect.event.type === 'string') this.emit('event', effect.event);
        else this.emit('change', effect.event);
        return;
      default: {
        const peer = this.owners.peer();
        if (peer === null) return;
        if (!peer.run(effect, this.state.protocol, this.owners.lag)) throw new InternalError(`no owner runs the effect ${effect.kind}`);
      }
    }
  }

  private async runHook(hook: 'fence-peer' | 'split-brain'): Promise<void> {
    const { hooks, log } = this.owners;
    const command = hook === 'fence-peer' ? hooks.fencePeer : hooks.splitBrain;
    if (command === null) return;
    const running = runHook(command, hooks.env(hook), log);
    if (hook === 'fence-peer') {
      running.then(
        (exitCode) => this.dispatch({ type: 'fence-done', exitCode }),
        (error: Error) => log.error('fence-peer hook could not run', { error: error.message }),
      );
    } else {
      running.catch((error: Error) => log.error('split-brain hook could not run', { error: error.message }));
    }
  }

  /**
   * Runs a role hook and waits for it (the machine waits too: it is part of a
   * program). For `switch`, a non-zero exit or the timeout throws a
   * HookFailedError that fails the program; `restore` and `cleanup` are best
   * effort and only log.
   */
  private async runRoleHook(hook: 'before-demote' | 'after-promote', purpose: RoleHookPurpose): Promise<void> {
    const { hooks, log, exposure } = this.owners;
    const role = hooks.role;
    const command = role === undefined ? null : hook === 'before-demote' ? role.beforeDemote : role.afterPromote;
    if (role === undefined || command === null) return;
    if (purpose === 'restore' && !exposure.exposed) {
      log.warn(`the ${hook} hook is not run to restore the services: the device is gone`);
      return;
    }
    const timeoutMs = hook === 'before-demote' ? role.beforeDemoteTimeoutMs : role.afterPromoteTimeoutMs;
    const key = `hooks.${hook}`;
    let failure: string | null = null;
    try {
      const result = await runHookWithOutput(command, { ...hooks.env(hook), NRAID_HOOK_PURPOSE: purpose }, log, timeoutMs);
      if (result.timedOut) failure = `the ${hook} hook ${command} did not finish within ${key}-timeout-ms (${timeoutMs} ms) and was killed`;
      else if (result.exitCode !== 0) failure = `the ${hook} hook ${command} exited with ${result.exitCode}`;
      if (failure !== null && result.output !== '') failure += ` (its output ends: ${JSON.stringify(result.output.slice(-limits.roleHookMessageCharsMax))})`;
    } catch (error) {
      failure = (error as Error).message;
    }
    if (failure === null) return;
    if (purpose !== 'switch') {
      log.error(`the ${hook} hook failed (${purpose})`, { error: failure });
      return;
    }
    throw new HookFailedError(`${failure}; fix it (see ${key} in the config and the daemon's log)`);
  }

  /** Rejects every command still waiting (the daemon stops). */
  failPending(why: string): void {
    for (const [id, waiter] of this.commands) {
      this.commands.delete(id);
      waiter.reject(new SystemError(why, 'ESHUTDOWN', 108));
    }
  }
}
