/**
 * The command line: `nraid <command> [resource] [options]`. One table says
 * what each command does and which flags it takes; parsing, the errors and
 * the help text all come from it.
 */
import { closestName, isValidName, nameRule } from '../config';
import { UsageError } from '../errors';

export type Command =
  | 'create-md'
  | 'up'
  | 'down'
  | 'restart'
  | 'primary'
  | 'secondary'
  | 'switchover'
  | 'connect'
  | 'disconnect'
  | 'adjust'
  | 'status'
  | 'events'
  | 'resume-io'
  | 'pause-sync'
  | 'resume-sync'
  | 'verify'
  | 'resync'
  | 'invalidate'
  | 'demo'
  | 'help'
  | 'attach'
  | 'detach'
  | 'dump-md'
  | 'restore-md';

export interface ParsedArgs {
  command: Command;
  resource?: string;
  configPath?: string;
  nodeName?: string;
  force: boolean;
  foreground: boolean;
  json: boolean;
  watch: boolean;
  discardMyData: boolean;
  /** restore-md --file: the dump to write back. */
  file?: string;
  /** verify --start/--stop: byte offsets as given. */
  start?: string;
  stop?: string;
  /** create-md --assume-clean: both nodes of a new pair start UpToDate, no initial sync (set only when given). */
  assumeClean?: boolean;
  /** -h/--help, or `nraid help [command]` (then `command` is the one asked about). */
  help: boolean;
}

type BooleanField = 'force' | 'foreground' | 'json' | 'watch' | 'discardMyData' | 'help' | 'assumeClean';
type ValueField = 'configPath' | 'nodeName' | 'file' | 'start' | 'stop';

interface OptionSpec {
  long: string;
  short?: string;
  /** For options that take a value: its name in help and messages. */
  valueName?: string;
  field: BooleanField | ValueField;
  summary: string;
}

const options: readonly OptionSpec[] = [
  { long: '--config', short: '-c', valueName: 'FILE', field: 'configPath', summary: 'config file (default /etc/nraid/<resource>.toml)' },
  { long: '--node', short: '-n', valueName: 'NAME', field: 'nodeName', summary: 'which configured node this is (default: the hostname)' },
  { long: '--force', field: 'force', summary: 'create-md: overwrite existing data; primary: promote a disk that is not UpToDate' },
  { long: '--foreground', field: 'foreground', summary: 'up: run the daemon in the foreground, logging to stderr' },
  { long: '--json', field: 'json', summary: 'print JSON instead of text' },
  { long: '--watch', field: 'watch', summary: 'status: keep printing, with progress bars during resync and verify' },
  { long: '--discard-my-data', field: 'discardMyData', summary: 'connect: after a split brain, let the peer overwrite this node' },
  { long: '--file', valueName: 'FILE', field: 'file', summary: 'restore-md: the dump to write back (from dump-md --json)' },
  { long: '--start', valueName: 'OFFSET', field: 'start', summary: 'verify: the first byte to compare (default: where an interrupted verify stopped, else 0)' },
  { long: '--stop', valueName: 'OFFSET', field: 'stop', summary: 'verify: compare up to this byte (default: the end)' },
  { long: '--assume-clean', field: 'assumeClean', summary: 'create-md: on both nodes of a brand-new pair, start UpToDate with the same generation (no initial sync)' },
  { long: '--help', short: '-h', field: 'help', summary: 'show help' },
];

interface CommandSpec {
  name: Command;
  summary: string;
  /** Whether it takes a [resource] and -c/-n. */
  takesResource: boolean;
  /** Flags beyond -c, -n and -h. */
  flags: readonly string[];
}

const commands: readonly CommandSpec[] = [
  { name: 'create-md', summary: 'write fresh nraid metadata at the end of this node\'s backing disk', takesResource: true, flags: ['--force', '--assume-clean'] },
  { name: 'up', summary: 'start the resource\'s daemon on this node and connect to the peer', takesResource: true, flags: ['--foreground'] },
  { name: 'down', summary: 'remove the device and stop the daemon on this node', takesResource: true, flags: [] },
  { name: 'restart', summary: 'replace the running daemon with the installed version; the device stays mounted (needs daemon-restart-bound-ms)', takesResource: true, flags: [] },
  { name: 'primary', summary: 'make this node Primary and expose the device', takesResource: true, flags: ['--force'] },
  { name: 'secondary', summary: 'make this node Secondary (the device must be unused)', takesResource: true, flags: [] },
  { name: 'switchover', summary: 'hand the Primary role to the peer in one step', takesResource: true, flags: [] },
  { name: 'connect', summary: 'connect to the peer again after disconnect or a split brain', takesResource: true, flags: ['--discard-my-data'] },
  { name: 'disconnect', summary: 'drop the connection to the peer and stay StandAlone', takesResource: true, flags: [] },
  { name: 'adjust', summary: 'apply changes of the config file to the running daemon', takesResource: true, flags: [] },
  { name: 'status', summary: 'print role, disk, connection and resync progress', takesResource: true, flags: ['--json', '--watch'] },
  { name: 'events', summary: 'stream state changes and progress as they happen', takesResource: true, flags: ['--json'] },
  { name: 'resume-io', summary: 'resume I/O suspended by on-no-peer = "suspend-io"', takesResource: true, flags: [] },
  { name: 'pause-sync', summary: 'hold the running resync (on either node) until resume-sync; the bitmap keeps what is left', takesResource: true, flags: [] },
  { name: 'resume-sync', summary: 'let a resync paused with pause-sync on this node go on', takesResource: true, flags: [] },
  { name: 'verify', summary: 'compare both disks online (digests), report differences and mark them out of sync; resumes an interrupted verify', takesResource: true, flags: ['--start', '--stop'] },
  { name: 'resync', summary: 'repair: send the blocks marked out of sync (after a verify) to the peer, without a disconnect', takesResource: true, flags: [] },
  { name: 'invalidate', summary: 'discard this node\'s data and resync it from the peer', takesResource: true, flags: [] },
  { name: 'demo', summary: 'run a two-node mirror on this machine with loop devices and show it working', takesResource: false, flags: [] },
  { name: 'help', summary: 'show this help, or one command\'s', takesResource: false, flags: [] },
  { name: 'detach', summary: 'stop using this node\'s disk (Diskless), e.g. before replacing it; a Primary goes on through its UpToDate peer', takesResource: true, flags: [] },
  { name: 'attach', summary: 'bring back a replaced disk of a Diskless Secondary (on-io-error = detach); a resync from the peer follows', takesResource: true, flags: [] },
  { name: 'dump-md', summary: 'print this node\'s metadata (both superblock slots, activity log, bitmap) of a stopped resource', takesResource: true, flags: ['--json'] },
  { name: 'restore-md', summary: 'write a dump from dump-md --json back to this node\'s metadata (stopped resource only)', takesResource: true, flags: ['--file', '--force'] },
];

const commandNames = commands.map((c) => c.name);

function commandSpec(name: string): CommandSpec | undefined {
  return commands.find((c) => c.name === name);
}

function optionLabel(option: OptionSpec): string {
  const names = option.short === undefined ? option.long : `${option.short}/${option.long}`;
  return option.valueName === undefined ? names : `${names} ${option.valueName}`;
}

/** The options `spec` accepts, -c/-n first and -h last. */
function optionsOf(spec: CommandSpec): OptionSpec[] {
  return options.filter(
    (o) => o.field === 'help' || spec.flags.includes(o.long) || (spec.takesResource && (o.field === 'configPath' || o.field === 'nodeName')),
  );
}

function unknownCommand(found: string): UsageError {
  const near = closestName(found, commandNames);
  const hint = near === null ? '' : `; did you mean "${near}"?`;
  return new UsageError(`unknown command "${found}"${hint}; expected one of ${commandNames.join(', ')}; run "nraid help"`);
}

function findOption(name: string): OptionSpec | undefined {
  return options.find((o) => o.long === name || o.short === name);
}

/**
 * Parses argv without the node and script entries: process.argv.slice(2).
 * `nraid help up` comes back as { command: 'up', help: true }.
 */
export function parseArgs(argv: readonly string[]): ParsedArgs {
  const parsed: ParsedArgs = {
    command: 'help',
    force: false,
    foreground: false,
    json: false,
    watch: false,
    discardMyData: false,
    help: false,
  };
  const positionals: string[] = [];
  const seen: Array<{ option: OptionSpec; token: string }> = [];

  for (let i = 0; i < argv.length; i++) {
    const token = argv[i];
    if (token === '--') {
      positionals.push(...argv.slice(i + 1));
      break;
    }
    if (!token.startsWith('-') || token === '-') {
      positionals.push(token);
      continue;
    }
    const equals = token.startsWith('--') ? token.indexOf('=') : -1;
    let name = equals < 0 ? token : token.slice(0, equals);
    let inline: string | undefined = equals < 0 ? undefined : token.slice(equals + 1);
    // -cFILE, -c=FILE: a short option with its value attached.
    if (!token.startsWith('--') && token.length > 2 && findOption(token.slice(0, 2))?.valueName !== undefined) {
      name = token.slice(0, 2);
      inline = token[2] === '=' ? token.slice(3) : token.slice(2);
    }
    const option = findOption(name);
    if (option === undefined) {
      const known = options.map((o) => o.long);
      const near = closestName(name, known);
      const hint = near === null ? '' : `; did you mean "${near}"?`;
      throw new UsageError(`unknown option "${name}"${hint}; the options are ${options.map(optionLabel).join(', ')}`);
    }
    if (option.valueName === undefined) {
      if (inline !== undefined) throw new UsageError(`option ${optionLabel(option)} takes no value; found "${token}"`);
      (parsed as unknown as Record<string, boolean>)[option.field] = true;
    } else {
      let value = inline;
      if (value === undefined) {
        const next = argv[i + 1];
        if (next === undefined) throw new UsageError(`option ${name} needs a ${option.valueName}; found nothing after it`);
        if (next.startsWith('-') && next !== '-') {
          throw new UsageError(`option ${name} needs a ${option.valueName}; found the option "${next}" instead`);
        }
        value = next;
        i++;
      }
      if (value === '') throw new UsageError(`option ${name} needs a ${option.valueName}; found an empty value`);
      const field = option.field as ValueField;
      if (parsed[field] !== undefined && parsed[field] !== value) {
        throw new UsageError(`option ${optionLabel(option)} given twice ("${parsed[field]}" and "${value}"); give it once`);
      }
      parsed[field] = value;
    }
    seen.push({ option, token });
  }

  if (positionals.length === 0) {
    if (parsed.help) return { ...parsed, command: 'help' };
    throw new UsageError(`no command given; expected one of ${commandNames.join(', ')}; run "nraid help"`);
  }
  const [commandName, ...rest] = positionals;
  let spec = commandSpec(commandName);
  if (spec === undefined) throw unknownCommand(commandName);

  if (spec.name === 'help') {
    if (rest.length > 1) throw new UsageError(`nraid help takes at most one command; found ${rest.map((r) => `"${r}"`).join(', ')}`);
    parsed.help = true;
    if (rest.length === 1) {
      const topic = commandSpec(rest[0]);
      if (topic === undefined) throw unknownCommand(rest[0]);
      spec = topic;
      rest.length = 0;
    }
  }
  parsed.command = spec.name;

  const accepted = optionsOf(spec);
  for (const { option, token } of seen) {
    if (accepted.includes(option)) continue;
    throw new UsageError(`nraid ${spec.name} does not take ${optionLabel(option)} (found "${token}"); it takes ${accepted.map(optionLabel).join(', ')}`);
  }

  const resourcesMax = spec.takesResource ? 1 : 0;
  if (rest.length > resourcesMax) {
    const extra = rest[resourcesMax];
    const takes = spec.takesResource ? 'at most one resource' : 'no resource';
    throw new UsageError(`unexpected argument "${extra}": nraid ${spec.name} takes ${takes}; usage: ${synopsis(spec)}`);
  }
  if (rest.length === 1) {
    if (!isValidName(rest[0])) throw new UsageError(`resource name must be ${nameRule}; found ${JSON.stringify(rest[0])}`);
    parsed.resource = rest[0];
  }
  return parsed;
}

function synopsis(spec: CommandSpec): string {
  const parts = ['nraid', spec.name];
  if (spec.name === 'help') parts.push('[command]');
  if (spec.takesResource) parts.push('[resource]');
  for (const option of optionsOf(spec)) {
    if (option.field === 'help') continue;
    parts.push(`[${option.valueName === undefined ? option.long : `${option.short ?? option.long} ${option.valueName}`}]`);
  }
  return parts.join(' ');
}

function table(rows: Array<[string, string]>): string[] {
  const width = Math.max(...rows.map(([left]) => left.length));
  return rows.map(([left, right]) => `  ${left.padEnd(width)}  ${right}`);
}

/** The help text: every command with what it does, or one command with its options. */
export function usage(command?: string): string {
  if (command === undefined || command === 'help') {
    return [
      'usage: nraid <command> [resource] [options]',
      '',
      'nraid mirrors one block device between two servers (network RAID 1).',
      '',
      'commands:',
      ...table(commands.map((c) => [c.name, c.summary])),
      '',
      'options:',
      ...table(options.map((o) => [optionLabel(o), o.summary])),
      '',
      'The resource defaults to the only *.toml in /etc/nraid. Run "nraid help <command>" for one command.',
      '',
    ].join('\n');
  }
  const spec = commandSpec(command);
  if (spec === undefined) throw unknownCommand(command);
  return [
    `usage: ${synopsis(spec)}`,
    '',
    `${spec.summary[0].toUpperCase()}${spec.summary.slice(1)}.`,
    '',
    'options:',
    ...table(optionsOf(spec).map((o) => [optionLabel(o), o.summary])),
    '',
  ].join('\n');
}
