/**
 * One small hierarchy, after undici's lib/core/errors.js: every failure an
 * operator can meet is an NraidError with a stable `code`. Messages say what
 * was expected, what was found and what to do.
 */
export class NraidError extends Error {
  readonly code: string = 'NRAID_ERR';
  constructor(message: string) {
    super(message);
    this.name = new.target.name;
  }
}

/** A command line that does not parse: unknown command or flag, missing value. */
export class UsageError extends NraidError {
  override readonly code = 'NRAID_ERR_USAGE';
}

/** The config file is missing, is not TOML, or names a bad key or value. */
export class ConfigError extends NraidError {
  override readonly code = 'NRAID_ERR_CONFIG';
}

/** The command needs root (mount, loop devices, O_DIRECT on block devices). */
export class NotRootError extends NraidError {
  override readonly code = 'NRAID_ERR_NOT_ROOT';
}

/** The kernel lacks what nraid needs: /dev/fuse, loop devices, direct I/O on loop. */
export class PrerequisiteError extends NraidError {
  override readonly code = 'NRAID_ERR_PREREQUISITE';
}

/** The backing device is missing, unreadable, too small, or failed an I/O. */
export class DiskError extends NraidError {
  override readonly code = 'NRAID_ERR_DISK';
}

/** The backing device holds data nraid would destroy (a filesystem, another resource). */
export class DiskHasDataError extends NraidError {
  override readonly code = 'NRAID_ERR_DISK_HAS_DATA';
}

/** No valid nraid metadata where it should be, or a superblock that fails its checksum. */
export class MetadataError extends NraidError {
  override readonly code = 'NRAID_ERR_METADATA';
}

/** `up` for a resource whose daemon already runs on this node. */
export class AlreadyUpError extends NraidError {
  override readonly code = 'NRAID_ERR_ALREADY_UP';
}

/** A command that needs the daemon, sent to a node where it does not run. */
export class NotUpError extends NraidError {
  override readonly code = 'NRAID_ERR_NOT_UP';
}

/** The command is not allowed in the current state (role, connection, disk). */
export class StateError extends NraidError {
  override readonly code = 'NRAID_ERR_STATE';
}

/** Promotion of a disk that is not UpToDate without --force. */
export class NotUpToDateError extends NraidError {
  override readonly code = 'NRAID_ERR_NOT_UP_TO_DATE';
}

/** The device is open or mounted, so it cannot be taken away. */
export class DeviceBusyError extends NraidError {
  override readonly code = 'NRAID_ERR_DEVICE_BUSY';
}

/** The peer and this node both wrote since their last common generation. */
export class SplitBrainError extends NraidError {
  override readonly code = 'NRAID_ERR_SPLIT_BRAIN';
}

/** The peer failed authentication, spoke garbage, or disagrees on sizes or versions. */
export class PeerError extends NraidError {
  override readonly code = 'NRAID_ERR_PEER';
}

/** A frame or message that breaks the protocol: bad length, type, checksum, sequence. */
export class ProtocolError extends NraidError {
  override readonly code = 'NRAID_ERR_PROTOCOL';
}

/** A planned switchover whose outcome is not known: the peer may have promoted. */
export class SwitchoverOutcomeUnknownError extends NraidError {
  override readonly code = 'NRAID_ERR_SWITCHOVER_UNKNOWN';
}

/** Both nodes asked to become Primary at once; the two-phase exchange let neither or one win. */
export class PromotionConflictError extends NraidError {
  override readonly code = 'NRAID_ERR_PROMOTION_CONFLICT';
}

/** The peer speaks a protocol version this node cannot talk to. */
export class VersionError extends NraidError {
  override readonly code = 'NRAID_ERR_VERSION';
}

/** Something did not answer within its bound (a drain, a peer reply, a hook). */
export class TimeoutError extends NraidError {
  override readonly code = 'NRAID_ERR_TIMEOUT';
}

/** A system call failed: the errno name and number are kept as fields. */
export class SystemError extends NraidError {
  override readonly code = 'NRAID_ERR_SYSTEM';
  readonly errno: string;
  readonly errnoNumber: number;
  readonly syscall: string | null;
  constructor(message: string, errno: string, errnoNumber: number, syscall: string | null = null) {
    super(message);
    this.errno = errno;
    this.errnoNumber = errnoNumber;
    this.syscall = syscall;
  }
}

/** A broken invariant of nraid itself: a bug, never an operating error. */
export class InternalError extends NraidError {
  override readonly code = 'NRAID_ERR_INTERNAL';
}

/** What the admin socket carries back for an error: enough to rebuild it on the CLI side. */
export interface ErrorReply {
  code: string;
  message: string;
}

export function errorReply(error: unknown): ErrorReply {
  if (error instanceof NraidError) return { code: error.code, message: error.message };
  const message = error instanceof Error ? error.message : String(error);
  return { code: 'NRAID_ERR_INTERNAL', message };
}

/** An error that crossed the admin socket: same code and message as on the daemon side. */
export class RemoteError extends NraidError {
  override readonly code: string;
  constructor(reply: ErrorReply) {
    super(reply.message);
    this.code = reply.code;
  }
}
