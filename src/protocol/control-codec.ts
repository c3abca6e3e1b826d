/**
 * Codec of one control message: a typed ControlMessage to the bytes of one
 * protobuf Envelope with its u32 little-endian length prefix, and an Envelope
 * back, checking what protobuf itself cannot (sizes of nonces, tokens and
 * HMACs, enum values, name lengths, one message per Envelope) and throwing
 * ProtocolError with what was expected and what was found.
 */
import * as protobuf from 'protobufjs';
import { ProtocolError } from '../errors';
import {
  controlFeatureNameBytesMax,
  controlFeaturesMax,
  controlHmacBytes,
  controlLengthPrefixBytes,
  controlMessageBytesMax,
  controlNonceBytes,
  dataTokenBytes,
  generationHistoryUuids,
  nameCharsMax,
} from '../limits';
import { ControlMessage, ControlMessageType, DiskState, Hello, NodeState, ReplicationProtocol, Role } from './control-messages';
import {
  noticeFromWire,
  noticeToWire,
  requestFromWire,
  requestToWire,
  responseFromWire,
  responseToWire,
} from './control-request-codecs';
import { EnvelopeType, MESSAGE_TYPES, enumPairs } from './control-schema';
import { EnumMap, Wire, expectBytes, expectName, fromWireUint64, toWireUint64 } from './wire-values';

// ------------------------------------------------------- node state

const ROLES = new EnumMap<Role>('role', enumPairs('nraid.control.Role', {
  Primary: 'ROLE_PRIMARY',
  Secondary: 'ROLE_SECONDARY',
}));
const DISKS = new EnumMap<DiskState>('disk state', enumPairs('nraid.control.Disk', {
  Diskless: 'DISK_DISKLESS',
  Attaching: 'DISK_ATTACHING',
  Inconsistent: 'DISK_INCONSISTENT',
  Outdated: 'DISK_OUTDATED',
  Consistent: 'DISK_CONSISTENT',
  UpToDate: 'DISK_UP_TO_DATE',
}));
const PROTOCOLS = new EnumMap<ReplicationProtocol>('replication protocol', enumPairs('nraid.control.ReplicationProtocol', {
  A: 'PROTOCOL_A',
  B: 'PROTOCOL_B',
  C: 'PROTOCOL_C',
}));

function nodeStateToWire(state: NodeState): Wire {
  if (state.uuids.history.length !== generationHistoryUuids) {
    throw new ProtocolError(`node state needs ${generationHistoryUuids} history UUIDs, found ${state.uuids.history.length}`);
  }
  return {
    role: ROLES.encode(state.role),
    disk: DISKS.encode(state.disk),
    dataSizeBytes: toWireUint64(state.dataSizeBytes, 'dataSizeBytes'),
    uuids: {
      current: toWireUint64(state.uuids.current, 'uuids.current'),
      bitmap: toWireUint64(state.uuids.bitmap, 'uuids.bitmap'),
      history: state.uuids.history.map((uuid, index) => toWireUint64(uuid, `uuids.history[${index}]`)),
    },
    flags: state.flags >>> 0,
    protocol: PROTOCOLS.encode(state.protocol),
  };
}

function nodeStateFromWire(wire: Wire): NodeState {
  const uuids = (wire.uuids ?? {}) as Wire;
  const history = Array.isArray(uuids.history) ? uuids.history : [];
  if (history.length !== generationHistoryUuids) {
    throw new ProtocolError(`node state must carry ${generationHistoryUuids} history UUIDs, found ${history.length}`);
  }
  return {
    role: ROLES.decode(wire.role),
    disk: DISKS.decode(wire.disk),
    dataSizeBytes: fromWireUint64(wire.dataSizeBytes ?? 0),
    uuids: {
      current: fromWireUint64(uuids.current ?? 0),
      bitmap: fromWireUint64(uuids.bitmap ?? 0),
      history: [fromWireUint64(history[0]), fromWireUint64(history[1])],
    },
    flags: Number(wire.flags ?? 0) >>> 0,
    protocol: PROTOCOLS.decode(wire.protocol),
  };
}

// ------------------------------------------------- envelope members

/**
 * A Hello names nobody: protocol 2.x decoders require a resource and a node
 * name in it, so they get this filler and then refuse the version, as they
 * check it first.
 */
export const HELLO_NAME_FILLER = 'hidden-until-auth';

function helloToWire(hello: Hello): Wire {
  return {
    protocolMajor: hello.version.major >>> 0,
    protocolMajorMin: hello.version.major >>> 0,
    protocolMinor: hello.version.minor >>> 0,
    resource: HELLO_NAME_FILLER,
    nodeName: HELLO_NAME_FILLER,
    nonce: hello.nonce,
  };
}

function bodyToWire(message: ControlMessage): Wire {
  switch (message.type) {
    case 'hello':
      return helloToWire(message.body);
    case 'nodeState':
      return nodeStateToWire(message.body);
    case 'request':
      return requestToWire(message.body);
    case 'response':
      return responseToWire(message.body);
    case 'notice':
      return noticeToWire(message.body);
    case 'auth':
    case 'identity':
    case 'sessionStart':
    case 'ping':
    case 'pong':
    case 'dataLinkAccepted':
    case 'goodbye':
      return message.body as unknown as Wire;
  }
}

function bodyFromWire(type: ControlMessageType, wire: Wire): ControlMessage {
  switch (type) {
    case 'hello':
      return {
        type,
        body: {
          version: { major: Number(wire.protocolMajor ?? 0), minor: Number(wire.protocolMinor ?? 0) },
          nonce: expectBytes(wire.nonce, controlNonceBytes, 'Hello nonce'),
        },
      };
    case 'identity': {
      const features = Array.isArray(wire.features) ? (wire.features as unknown[]) : [];
      if (features.length > controlFeaturesMax) {
        throw new ProtocolError(`Identity may list at most ${controlFeaturesMax} features, found ${features.length}`);
      }
      return {
        type,
        body: {
          resource: expectName(wire.resource, nameCharsMax, 'Identity resource'),
          nodeName: expectName(wire.nodeName, nameCharsMax, 'Identity node name'),
          features: features.map((feature) => expectName(feature, controlFeatureNameBytesMax, 'Identity feature name')),
        },
      };
    }
    case 'auth':
      return { type, body: { hmac: expectBytes(wire.hmac, controlHmacBytes, 'Auth hmac') } };
    case 'sessionStart':
      return { type, body: { dataToken: expectBytes(wire.dataToken, dataTokenBytes, 'SessionStart data token') } };
    case 'nodeState':
      return { type, body: nodeStateFromWire(wire) };
    case 'ping':
      return { type, body: { seq: Number(wire.seq ?? 0) } };
    case 'pong':
      return { type, body: { seq: Number(wire.seq ?? 0) } };
    case 'request':
      return { type, body: requestFromWire(wire) };
    case 'response':
      return { type, body: responseFromWire(wire) };
    case 'notice':
      return { type, body: noticeFromWire(wire) };
    case 'dataLinkAccepted':
      return { type, body: {} };
    case 'goodbye':
      return { type, body: { reason: String(wire.reason ?? '') } };
  }
}

// ----------------------------------------------------------- framing

/** One control message as it goes on the wire: u32 LE length, then the Envelope. */
export function encodeFrame(message: ControlMessage): Buffer {
  const envelope = EnvelopeType.encode({ [message.type]: bodyToWire(message) }).finish();
  if (envelope.length > controlMessageBytesMax) {
    throw new ProtocolError(
      `control message ${message.type} encodes to ${envelope.length} bytes, more than the limit of ` +
        `${controlMessageBytesMax}; send it in smaller pieces`,
    );
  }
  const frame = Buffer.allocUnsafe(controlLengthPrefixBytes + envelope.length);
  frame.writeUInt32LE(envelope.length, 0);
  frame.set(envelope, controlLengthPrefixBytes);
  return frame;
}

/** Decodes one Envelope (without its length prefix). */
export function decodeEnvelope(bytes: Uint8Array): ControlMessage {
  let decoded: protobuf.Message;
  try {
    decoded = EnvelopeType.decode(bytes);
  } catch (error) {
    throw new ProtocolError(
      `expected a protobuf Envelope of ${bytes.length} bytes, found bytes that do not decode ` +
        `(${(error as Error).message}); the peer is not nraid or is broken`,
    );
  }
  const wire = decoded as unknown as Wire;
  const present = MESSAGE_TYPES.filter((name) => wire[name] !== undefined && wire[name] !== null);
  if (present.length > 1) {
    throw new ProtocolError(`expected an Envelope holding one message, found ${present.length} (${present.join(', ')})`);
  }
  const type = present[0];
  if (type === undefined) {
    throw new ProtocolError(
      `expected an Envelope holding one message, found an empty or unknown one (${bytes.length} bytes); ` +
        'the peer may run a newer nraid',
    );
  }
  return bodyFromWire(type, wire[type] as Wire);
}
