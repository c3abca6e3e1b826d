import { parseArgs, usage, type ParsedArgs } from '../../src/cli/args';
import { UsageError } from '../../src/errors';

const allCommands = [
  'create-md', 'up', 'down', 'primary', 'secondary', 'switchover', 'connect', 'disconnect',
  'adjust', 'status', 'events', 'resume-io', 'pause-sync', 'resume-sync', 'verify', 'resync', 'invalidate', 'demo', 'help',
];
const resourceCommands = allCommands.filter((c) => c !== 'demo' && c !== 'help');

/** Which of the boolean flags each command takes, beyond -h. */
const flagsOf: Record<string, string[]> = {
  'create-md': ['--force'],
  up: ['--foreground'],
  primary: ['--force'],
  status: ['--json', '--watch'],
  events: ['--json'],
  connect: ['--discard-my-data'],
};
const booleanFlags = ['--force', '--foreground', '--json', '--watch', '--discard-my-data'];
const fieldOf: Record<string, keyof ParsedArgs> = {
  '--force': 'force',
  '--foreground': 'foreground',
  '--json': 'json',
  '--watch': 'watch',
  '--discard-my-data': 'discardMyData',
};

describe('parseArgs: resync and verify', () => {
  test('create-md --assume-clean sets assumeClean; other commands refuse it', () => {
    expect(parseArgs(['create-md', 'r0', '--assume-clean']).assumeClean).toBe(true);
    expect(parseArgs(['create-md', 'r0']).assumeClean).toBeUndefined();
    expect(usageErrorOf(['up', 'r0', '--assume-clean']).message).toContain('nraid up does not take --assume-clean');
  });

  test('verify takes --start and --stop as given; resync takes neither', () => {
    const parsed = parseArgs(['verify', 'r0', '--start', '4096', '--stop=1G']);
    expect(parsed.command).toBe('verify');
    expect(parsed.start).toBe('4096');
    expect(parsed.stop).toBe('1G');
    expect(usageErrorOf(['resync', 'r0', '--start', '0']).message).toContain('nraid resync does not take --start');
  });
});

function usageErrorOf(argv: string[]): UsageError {
  try {
    parseArgs(argv);
  } catch (error) {
    expect(error).toBeInstanceOf(UsageError);
    expect((error as UsageError).code).toBe('NRAID_ERR_USAGE');
    return error as UsageError;
  }
  throw new Error(`expected a UsageError for ${JSON.stringify(argv)}`);
}

describe('parseArgs: commands and resources', () => {
  test.each(resourceCommands)('%s with a resource', (command) => {
    const parsed = parseArgs([command, 'r0']);
    expect(parsed).toEqual({
      command,
      resource: 'r0',
      force: false,
      foreground: false,
      json: false,
      watch: false,
      discardMyData: false,
      help: false,
    });
  });

  test.each(resourceCommands)('%s without a resource', (command) => {
    const parsed = parseArgs([command]);
    expect(parsed.command).toBe(command);
    expect(parsed.resource).toBeUndefined();
  });

  test('demo takes no resource', () => {
    expect(parseArgs(['demo']).command).toBe('demo');
    const message = usageErrorOf(['demo', 'r0']).message;
    expect(message).toContain('unexpected argument "r0": nraid demo takes no resource');
  });

  test('an extra positional names it and shows the usage', () => {
    const message = usageErrorOf(['up', 'r0', 'r1']).message;
    expect(message).toContain('unexpected argument "r1": nraid up takes at most one resource');
    expect(message).toContain('usage: nraid up [resource] [-c FILE] [-n NAME] [--foreground]');
  });

  test('an unknown command suggests the near one and lists them all', () => {
    const message = usageErrorOf(['stauts', 'r0']).message;
    expect(message).toContain('unknown command "stauts"; did you mean "status"?');
    for (const command of allCommands) expect(message).toContain(command);
  });

  test('no command at all is a UsageError listing the commands', () => {
    const message = usageErrorOf([]).message;
    expect(message).toContain('no command given');
    expect(message).toContain('create-md, up, down');
  });

  test('an invalid resource name is refused', () => {
    expect(usageErrorOf(['up', 'a/b']).message).toContain('resource name must be letters, digits');
    expect(usageErrorOf(['up', 'r'.repeat(64)]).message).toContain('found "');
  });

  test('"--" ends the options', () => {
    expect(usageErrorOf(['up', '--', '--force']).message).toContain('resource name must be');
    expect(parseArgs(['up', '--', 'r0']).resource).toBe('r0');
  });
});

describe('parseArgs: -c and -n', () => {
  test.each([
    [['up', 'r0', '-c', '/srv/r0.toml', '-n', 'alpha']],
    [['up', 'r0', '--config', '/srv/r0.toml', '--node', 'alpha']],
    [['up', 'r0', '--config=/srv/r0.toml', '--node=alpha']],
    [['up', '-c/srv/r0.toml', '-nalpha', 'r0']],
    [['-c=/srv/r0.toml', 'up', '-n=alpha', 'r0']],
  ])('%j', (argv) => {
    const parsed = parseArgs(argv);
    expect(parsed.command).toBe('up');
    expect(parsed.resource).toBe('r0');
    expect(parsed.configPath).toBe('/srv/r0.toml');
    expect(parsed.nodeName).toBe('alpha');
  });

  test('a value may contain "="', () => {
    expect(parseArgs(['up', '--config=/srv/a=b.toml']).configPath).toBe('/srv/a=b.toml');
  });

  test.each(resourceCommands)('%s takes -c and -n', (command) => {
    const parsed = parseArgs([command, '-c', 'x.toml', '-n', 'beta']);
    expect(parsed.configPath).toBe('x.toml');
    expect(parsed.nodeName).toBe('beta');
  });

  test.each(['demo', 'help'])('%s does not take -c', (command) => {
    const message = usageErrorOf([command, '-c', 'x.toml']).message;
    expect(message).toContain(`nraid ${command} does not take -c/--config FILE (found "-c")`);
  });

  test('a missing value at the end', () => {
    expect(usageErrorOf(['up', '-c']).message).toBe('option -c needs a FILE; found nothing after it');
    expect(usageErrorOf(['up', '--node']).message).toBe('option --node needs a NAME; found nothing after it');
  });

  test('an option where the value should be', () => {
    expect(usageErrorOf(['up', '-c', '--force']).message).toBe('option -c needs a FILE; found the option "--force" instead');
  });

  test('an empty value', () => {
    expect(usageErrorOf(['up', '--config=']).message).toBe('option --config needs a FILE; found an empty value');
  });

  test('the same option twice with different values', () => {
    expect(usageErrorOf(['up', '-n', 'a', '--node', 'b']).message).toContain('given twice ("a" and "b")');
    expect(parseArgs(['up', '-n', 'a', '--node', 'a']).nodeName).toBe('a');
  });
});

describe('parseArgs: flags per command', () => {
  for (const command of allCommands.filter((c) => c !== 'help')) {
    for (const flag of booleanFlags) {
      const accepted = (flagsOf[command] ?? []).includes(flag);
      test(`${command} ${accepted ? 'takes' : 'refuses'} ${flag}`, () => {
        if (accepted) {
          const parsed = parseArgs([command, flag]);
          expect(parsed[fieldOf[flag]]).toBe(true);
          for (const other of booleanFlags.filter((f) => f !== flag)) expect(parsed[fieldOf[other]]).toBe(false);
        } else {
          const message = usageErrorOf([command, flag]).message;
          expect(message).toContain(`nraid ${command} does not take ${flag}`);
          expect(message).toContain('it takes ');
          for (const ok of flagsOf[command] ?? []) expect(message).toContain(ok);
          expect(message).toContain('-h/--help');
        }
      });
    }
  }

  test('status takes --json and --watch together', () => {
    const parsed = parseArgs(['status', 'r0', '--watch', '--json']);
    expect(parsed.json && parsed.watch).toBe(true);
  });

  test('flags may come before the command', () => {
    expect(parseArgs(['--force', 'primary', 'r0']).force).toBe(true);
  });

  test('a flag with a value is refused', () => {
    expect(usageErrorOf(['primary', '--force=yes']).message).toBe('option --force takes no value; found "--force=yes"');
  });

  test('an unknown option suggests the near one and lists them all', () => {
    const message = usageErrorOf(['primary', '--forse']).message;
    expect(message).toContain('unknown option "--forse"; did you mean "--force"?');
    expect(message).toContain('-c/--config FILE, -n/--node NAME, --force, --foreground, --json, --watch, --discard-my-data, --file FILE, --start OFFSET, --stop OFFSET, --assume-clean, -h/--help');
  });

  test('a long option written with one dash is unknown', () => {
    expect(usageErrorOf(['primary', '-force']).message).toContain('unknown option "-force"; did you mean "--force"?');
    expect(usageErrorOf(['up', '-x']).message).toContain('unknown option "-x"');
  });
});

describe('parseArgs: help', () => {
  test.each(allCommands)('%s -h sets help', (command) => {
    const parsed = parseArgs([command, '-h']);
    expect(parsed.command).toBe(command);
    expect(parsed.help).toBe(true);
    expect(parseArgs([command, '--help']).help).toBe(true);
  });

  test('nraid help, nraid -h and nraid help <command>', () => {
    expect(parseArgs(['help'])).toMatchObject({ command: 'help', help: true });
    expect(parseArgs(['-h'])).toMatchObject({ command: 'help', help: true });
    const topic = parseArgs(['help', 'up']);
    expect(topic).toMatchObject({ command: 'up', help: true });
    expect(topic.resource).toBeUndefined();
  });

  test('help for an unknown command, or for two', () => {
    expect(usageErrorOf(['help', 'upp']).message).toContain('unknown command "upp"; did you mean "up"?');
    expect(usageErrorOf(['help', 'up', 'down']).message).toContain('nraid help takes at most one command');
  });

  test('-h takes no value', () => {
    expect(usageErrorOf(['up', '-hx']).message).toContain('unknown option "-hx"');
    expect(usageErrorOf(['up', '--help=x']).message).toBe('option -h/--help takes no value; found "--help=x"');
  });
});

describe('usage', () => {
  test('lists every command with what it does, and every option', () => {
    const text = usage();
    expect(text.startsWith('usage: nraid <command> [resource] [options]')).toBe(true);
    const lines = text.split('\n');
    for (const command of allCommands) {
      const line = lines.find((l) => l.trimStart().startsWith(`${command} `));
      expect(line).toBeDefined();
      expect(line!.trim().length).toBeGreaterThan(command.length + 10);
    }
    for (const option of ['-c/--config FILE', '-n/--node NAME', '--force', '--discard-my-data', '-h/--help']) {
      expect(text).toContain(option);
    }
    expect(usage('help')).toBe(text);
  });

  test('one command shows its synopsis and only its options', () => {
    const text = usage('status');
    expect(text.split('\n')[0]).toBe('usage: nraid status [resource] [-c FILE] [-n NAME] [--json] [--watch]');
    expect(text).toContain('--watch');
    expect(text).not.toContain('--force');
    expect(usage('demo').split('\n')[0]).toBe('usage: nraid demo');
    expect(usage('help').split('\n')[0]).toBe('usage: nraid <command> [resource] [options]');
    expect(usage('connect')).toContain('--discard-my-data');
  });

  test('an unknown command is a UsageError', () => {
    expect(() => usage('bogus')).toThrow(UsageError);
  });
});
