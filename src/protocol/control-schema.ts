/**
 * The .proto schema of the control link, parsed once at load with protobufjs
 * (no generated code), and the checks that it matches what the TypeScript
 * side expects.
 */
import { InternalError, PrerequisiteError } from '../errors';
import * as fs from 'fs';
import * as path from 'path';
import * as protobuf from 'protobufjs';
import { ControlMessageType } from './control-messages';

function loadSchema(): protobuf.Root {
  // Next to this file when run from src/ by ts-jest; from dist/src/protocol
  // the build leaves the .proto in src/protocol, three levels up.
  const candidates = [
    path.join(__dirname, 'control.proto'),
    path.join(__dirname, '..', '..', '..', 'src', 'protocol', 'control.proto'),
  ];
  for (const file of candidates) {
    if (fs.existsSync(file)) return protobuf.parse(fs.readFileSync(file, 'utf8'), { keepCase: false }).root;
  }
  throw new PrerequisiteError(`control.proto not found; looked at ${candidates.join(', ')}; the package is incomplete, reinstall nraid`);
}

/** control.proto, parsed. */
export const controlSchema = loadSchema();
/** The message every frame holds: one member per ControlMessageType. */
export const EnvelopeType = controlSchema.lookupType('nraid.control.Envelope');

if (!protobuf.util.Long) {
  throw new PrerequisiteError('protobufjs runs without Long support; uint64 fields (sizes, UUIDs) would lose precision');
}

/** The members of Envelope, as ControlMessage names them; checked against the .proto at load. */
export const MESSAGE_TYPES: readonly ControlMessageType[] = [
  'hello', 'auth', 'sessionStart', 'nodeState', 'ping', 'pong',
  'request', 'response', 'notice', 'dataLinkAccepted', 'goodbye', 'identity',
];
for (const type of MESSAGE_TYPES) {
  if (!EnvelopeType.fields[type]) throw new InternalError(`control.proto Envelope lacks field ${type}`);
}

/** Pairs the TypeScript names of an enum with the numbers control.proto gives them; throws at load if one is missing. */
export function enumPairs<T extends string>(enumName: string, names: Record<T, string>): Array<[T, number]> {
  const protoEnum = controlSchema.lookupEnum(enumName);
  return (Object.keys(names) as T[]).map((name) => {
    const value = protoEnum.values[names[name]];
    if (value === undefined) throw new InternalError(`control.proto ${enumName} lacks ${names[name]}`);
    return [name, value];
  });
}
