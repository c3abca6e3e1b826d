/**
 * Codecs of the typed requests, their answers and the notices (the members of
 * control.proto's Request, Response and Notice oneofs), one table per message,
 * keyed by kind; and the check at load that the .proto and these tables name
 * the same kinds.
 */
import { InternalError, ProtocolError } from '../errors';
import { controlErrorMessageCharsMax } from '../limits';
import {
  Answer,
  ControlNoticeKind,
  ControlNotices,
  ControlRequestKind,
  ControlRequests,
  Notice,
  PromoteVote,
  Request,
  Response,
  ResponseBodies,
} from './control-messages';
import { controlSchema } from './control-schema';
import {
  Wire,
  fromSafeNumber,
  fromWireUint64,
  historyFromWire,
  historyToWire,
  toBuffer,
  toSafeNumber,
  toWireUint64,
} from './wire-values';

/** Converts one typed body to the plain object protobufjs encodes, and back, checking what the proto cannot. */
interface Codec<T> {
  toWire(value: T): Wire;
  fromWire(wire: Wire): T;
}

const EMPTY: Codec<Record<string, never>> = {
  toWire: () => ({}),
  fromWire: () => ({}),
};

const PROMOTE_VOTE: Codec<PromoteVote> = {
  toWire: (vote) => ({ ok: Boolean(vote.ok), reason: String(vote.reason ?? '').slice(0, controlErrorMessageCharsMax) }),
  fromWire: (wire) => ({ ok: Boolean(wire.ok), reason: String(wire.reason ?? '') }),
};

const REQUEST_ID: Codec<{ requestId: bigint }> = {
  toWire: (body) => ({ requestId: toWireUint64(body.requestId, 'requestId') }),
  fromWire: (wire) => ({ requestId: fromWireUint64(wire.requestId ?? 0) }),
};

const REQUEST_CODECS: { [K in ControlRequestKind]: Codec<ControlRequests[K]['request']> } = {
  bitmap: EMPTY,
  splitBrainFacts: EMPTY,
  promotePrepare: {
    toWire: (body) => ({ requestId: toWireUint64(body.requestId, 'requestId'), current: toWireUint64(body.current, 'current') }),
    fromWire: (wire) => ({ requestId: fromWireUint64(wire.requestId ?? 0), current: fromWireUint64(wire.current ?? 0) }),
  },
  switchover: EMPTY,
  switchoverPromote: {
    toWire: (body) => ({ current: toWireUint64(body.current, 'current') }),
    fromWire: (wire) => ({ current: fromWireUint64(wire.current ?? 0) }),
  },
  resyncStart: {
    toWire: (body) => ({
      bytes: toWireUint64(body.bytes, 'bytes'),
      current: toWireUint64(body.current, 'current'),
      history: historyToWire(body.history, 'resyncStart.history'),
    }),
    fromWire: (wire) => ({
      bytes: fromWireUint64(wire.bytes ?? 0),
      current: fromWireUint64(wire.current ?? 0),
      history: historyFromWire(wire.history, 'resyncStart.history'),
    }),
  },
};

const RESPONSE_CODECS: { [K in ControlRequestKind]: Codec<ResponseBodies[K]> } = {
  bitmap: {
    toWire: (chunk) => ({
      granularityBytes: chunk.granularityBytes >>> 0,
      totalBytes: fromSafeNumber(chunk.totalBytes, 'bitmap totalBytes'),
      offsetBytes: fromSafeNumber(chunk.offsetBytes, 'bitmap offsetBytes'),
      wordsBytes: chunk.wordsBytes >>> 0,
      words: chunk.words,
      lz4: chunk.lz4,
      last: chunk.last,
    }),
    fromWire: (wire) => ({
      granularityBytes: Number(wire.granularityBytes ?? 0),
      totalBytes: toSafeNumber(wire.totalBytes, 'bitmap chunk totalBytes'),
      offsetBytes: toSafeNumber(wire.offsetBytes, 'bitmap chunk offsetBytes'),
      wordsBytes: Number(wire.wordsBytes ?? 0),
      words: toBuffer(wire.words),
      lz4: Boolean(wire.lz4),
      last: Boolean(wire.last),
    }),
  },
  splitBrainFacts: {
    toWire: (facts) => ({
      node: String(facts.node),
      primary: Boolean(facts.primary),
      primarySinceMs: fromSafeNumber(facts.primarySinceMs, 'primarySinceMs'),
      changedBytes: fromSafeNumber(facts.changedBytes, 'changedBytes'),
      discardMyData: Boolean(facts.discardMyData),
    }),
    fromWire: (wire) => ({
      node: String(wire.node ?? ''),
      primary: Boolean(wire.primary),
      primarySinceMs: toSafeNumber(wire.primarySinceMs, 'primarySinceMs'),
      changedBytes: toSafeNumber(wire.changedBytes, 'changedBytes'),
      discardMyData: Boolean(wire.discardMyData),
    }),
  },
  promotePrepare: PROMOTE_VOTE,
  switchover: EMPTY,
  switchoverPromote: PROMOTE_VOTE,
  resyncStart: {
    toWire: (reply) => ({ ok: Boolean(reply.ok) }),
    fromWire: (wire) => ({ ok: Boolean(wire.ok) }),
  },
};

const NOTICE_CODECS: { [K in ControlNoticeKind]: Codec<ControlNotices[K]> } = {
  resyncNone: EMPTY,
  resyncDone: EMPTY,
  adjust: EMPTY,
  promoteCommit: REQUEST_ID,
  promoteAbort: REQUEST_ID,
  turnaround: EMPTY,
  resyncPause: {
    toWire: (body) => ({ paused: Boolean(body.paused) }),
    fromWire: (wire) => ({ paused: Boolean(wire.paused) }),
  },
};

/** Every request kind, in the order of control.proto. */
export const CONTROL_REQUEST_KINDS = Object.keys(REQUEST_CODECS) as ControlRequestKind[];
/** Every notice kind, in the order of control.proto. */
export const CONTROL_NOTICE_KINDS = Object.keys(NOTICE_CODECS) as ControlNoticeKind[];

// The proto's oneofs and the TypeScript kinds name the same members.
for (const [message, kinds] of [
  ['Request', CONTROL_REQUEST_KINDS],
  ['Response', CONTROL_REQUEST_KINDS],
  ['Notice', CONTROL_NOTICE_KINDS],
] as const) {
  const oneof = controlSchema.lookupType(`nraid.control.${message}`).oneofs?.kind;
  const members = oneof ? [...oneof.oneof].sort() : [];
  const expected = [...kinds].sort();
  if (members.join(',') !== expected.join(',')) {
    throw new InternalError(`control.proto ${message}.kind has ${members.join(', ')}; control-request-codecs.ts expects ${expected.join(', ')}`);
  }
}

/** The oneof member a decoded Request/Response/Notice holds, or throws naming what was found. */
function presentKind<K extends string>(wire: Wire, kinds: readonly K[], what: string): K {
  const kind = wire.kind;
  if (typeof kind === 'string' && (kinds as readonly string[]).includes(kind)) return kind as K;
  throw new ProtocolError(
    `expected a ${what} of one of the kinds ${kinds.join(', ')}, found none this node knows; ` +
      'the peer sends a kind its session version does not have (a bug of the newer node)',
  );
}

export function requestToWire(request: Request): Wire {
  const codec = REQUEST_CODECS[request.kind] as Codec<unknown> | undefined;
  if (!codec) throw new ProtocolError(`request kind must be one of ${CONTROL_REQUEST_KINDS.join(', ')}, found ${String(request.kind)}`);
  return { id: request.id >>> 0, [request.kind]: codec.toWire(request.body) };
}

export function requestFromWire(wire: Wire): Request {
  const kind = presentKind(wire, CONTROL_REQUEST_KINDS, 'Request');
  const body = (REQUEST_CODECS[kind] as Codec<unknown>).fromWire((wire[kind] ?? {}) as Wire);
  return { id: Number(wire.id ?? 0), kind, body } as Request;
}

export function responseToWire(response: Response): Wire {
  if (!response.ok) {
    return {
      id: response.id >>> 0,
      ok: false,
      errorCode: response.errorCode,
      errorMessage: response.errorMessage.slice(0, controlErrorMessageCharsMax),
    };
  }
  const { kind, body } = response.answer;
  const codec = RESPONSE_CODECS[kind] as Codec<unknown> | undefined;
  if (!codec) throw new ProtocolError(`response kind must be one of ${CONTROL_REQUEST_KINDS.join(', ')}, found ${String(kind)}`);
  return { id: response.id >>> 0, ok: true, [kind]: codec.toWire(body) };
}

export function responseFromWire(wire: Wire): Response {
  const id = Number(wire.id ?? 0);
  if (!wire.ok) {
    return { id, ok: false, errorCode: String(wire.errorCode ?? ''), errorMessage: String(wire.errorMessage ?? '') };
  }
  const kind = presentKind(wire, CONTROL_REQUEST_KINDS, 'Response');
  const body = (RESPONSE_CODECS[kind] as Codec<unknown>).fromWire((wire[kind] ?? {}) as Wire);
  return { id, ok: true, answer: { kind, body } as Answer };
}

export function noticeToWire(notice: Notice): Wire {
  const { kind, ...body } = notice;
  const codec = NOTICE_CODECS[kind] as Codec<unknown> | undefined;
  if (!codec) throw new ProtocolError(`notice kind must be one of ${CONTROL_NOTICE_KINDS.join(', ')}, found ${String(kind)}`);
  return { [kind]: codec.toWire(body) };
}

export function noticeFromWire(wire: Wire): Notice {
  const kind = presentKind(wire, CONTROL_NOTICE_KINDS, 'Notice');
  const body = (NOTICE_CODECS[kind] as Codec<object>).fromWire((wire[kind] ?? {}) as Wire);
  return { ...body, kind } as Notice;
}
