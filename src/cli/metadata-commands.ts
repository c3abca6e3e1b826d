/**
 * `nraid dump-md` and `nraid restore-md`: the metadata of a stopped resource,
 * read or written straight on its backing disk (src/metadata-dump.ts does the
 * work). Like create-md they refuse while the daemon runs: it owns the disk.
 */
import fs from 'node:fs';
import path from 'node:path';
import { BackingDisk } from '../disk';
import { AlreadyUpError, UsageError } from '../errors';
import { dumpMetadata, formatDump, parseDump, restoreMetadata } from '../metadata-dump';
import { NodeConfig, ResourceConfig } from '../config';

export interface MetadataCommandContext {
  config: ResourceConfig;
  local: NodeConfig;
  json: boolean;
  force: boolean;
  file: string | undefined;
  /** The running daemon's pid, or null when the resource is not up on this node. */
  runningPid: () => Promise<number | null>;
  out: (line: string) => void;
}

async function requireStopped(ctx: MetadataCommandContext, command: string): Promise<void> {
  const pid = await ctx.runningPid();
  if (pid !== null) {
    throw new AlreadyUpError(
      `resource ${ctx.config.resource} is up on node ${ctx.local.name} (daemon pid ${pid}); ${command} works on a stopped resource only: run nraid down first`,
    );
  }
}

function openDisk(ctx: MetadataCommandContext, readOnly: boolean): BackingDisk {
  return BackingDisk.open(ctx.local.disk, { readOnly, configKey: `nodes.${ctx.local.name}.disk in ${ctx.config.path}` });
}

export async function dumpMd(ctx: MetadataCommandContext): Promise<void> {
  await requireStopped(ctx, 'dump-md');
  const disk = openDisk(ctx, true);
  try {
    const dump = dumpMetadata(disk);
    ctx.out(ctx.json ? JSON.stringify(dump, null, 2) : formatDump(dump));
  } finally {
    disk.close();
  }
}

export async function restoreMd(ctx: MetadataCommandContext): Promise<void> {
  if (ctx.file === undefined) {
    throw new UsageError('nraid restore-md needs --file FILE: a dump written by nraid dump-md --json');
  }
  await requireStopped(ctx, 'restore-md');
  const text = fs.readFileSync(ctx.file, 'utf8');
  const dump = parseDump(text, ctx.file);
  const disk = openDisk(ctx, false);
  try {
    // What is there now is kept first: a restore is undone by restoring this file.
    const before = dumpMetadata(disk);
    const kept = path.join(ctx.local.runDir, `metadata-before-restore-${before.dumpedAt.replace(/[:.]/g, '-')}.json`);
    const keep = (): void => {
      fs.mkdirSync(ctx.local.runDir, { recursive: true, mode: 0o700 });
      fs.writeFileSync(kept, JSON.stringify(before, null, 2) + '\n', { mode: 0o600 });
    };
    const sb = restoreMetadata(disk, dump, { resource: ctx.config.resource, force: ctx.force, beforeWrite: keep });
    ctx.out(`restored nraid metadata on ${disk.path} from ${ctx.file} (sequence ${sb.sequence}); the metadata it replaced is in ${kept}`);
  } finally {
    disk.close();
  }
}
