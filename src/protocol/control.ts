/**
 * The control protocol, one import for its users: the connection preambles
 * here, and from the files that hold them
 *   control-version.ts         protocol version, compatibility rule, features
 *   control-messages.ts        the messages as TypeScript types (typed requests, answers, notices)
 *   control-codec.ts           a message to one length-prefixed Envelope and back
 *   control-frame-reader.ts    a byte stream to whole messages
 *   control-request-codecs.ts  the per-kind codecs of requests, answers and notices
 *   control-schema.ts          control.proto, parsed once at load
 *   wire-values.ts             checked conversions of uint64, bytes, names and enums
 */
import { InternalError } from '../errors';
import { controlPreambleBytes } from '../limits';

/** Opens a control connection. */
export const CONTROL_PREAMBLE = Buffer.from('NRAIDCTL', 'ascii');
/** Opens a data link connection; dataTokenBytes of token follow. */
export const DATA_PREAMBLE = Buffer.from('NRAIDDAT', 'ascii');

if (CONTROL_PREAMBLE.length !== controlPreambleBytes || DATA_PREAMBLE.length !== controlPreambleBytes) {
  throw new InternalError(`preambles must be ${controlPreambleBytes} bytes`);
}

export {
  CONTROL_FEATURES,
  PROTOCOL_VERSION,
  formatVersion,
  parseProtocolVersion,
  sessionVersion,
  versionsCompatible,
} from './control-version';
export type { ProtocolVersion } from './control-version';
export type {
  Answer,
  Auth,
  BitmapChunk,
  BitmapPart,
  BitmapReply,
  BitmapSource,
  HandlerResponses,
  RequestOptions,
  ControlMessage,
  ControlMessageType,
  ControlNotice,
  ControlNoticeKind,
  ControlNotices,
  ControlRequestKind,
  ControlRequests,
  DataLinkAccepted,
  DiskState,
  GenerationUuids,
  Goodbye,
  Hello,
  Identity,
  PeerHello,
  NodeState,
  Notice,
  Ping,
  Pong,
  PromoteVote,
  ReplicationProtocol,
  Request,
  Response,
  ResponseBodies,
  Role,
  SessionStart,
  SplitBrainFacts,
} from './control-messages';
export { CONTROL_NOTICE_KINDS, CONTROL_REQUEST_KINDS } from './control-request-codecs';
export { decodeEnvelope, encodeFrame } from './control-codec';
export { ControlFrameReader } from './control-frame-reader';
