/**
 * The backing device as the control plane sees it: metadata I/O through the
 * addon (O_DIRECT, aligned), native errors turned into messages that say what
 * to check.
 */
import { DiskError, InternalError, errnoDetail, isErrnoException, toNraidError } from './errors';
import { DiskHandle, binding } from './native';
import type { DiskIO } from './metadata';

export class BackingDisk implements DiskIO {
  readonly path: string;
  readonly sizeBytes: number;
  readonly isBlockDevice: boolean;
  readonly logicalBlockBytes: number;
  private handleOrNull: DiskHandle | null;

  private constructor(handle: DiskHandle) {
    const info = binding.diskInfo(handle);
    this.handleOrNull = handle;
    this.path = info.path;
    this.sizeBytes = info.sizeBytes;
    this.isBlockDevice = info.isBlockDevice;
    this.logicalBlockBytes = info.logicalBlockBytes;
  }

  /** `configKey` names where the path came from, for the message (e.g. "nodes.alpha.disk in /etc/nraid/r0.toml"). */
  static open(path: string, options: { readOnly?: boolean; configKey: string }): BackingDisk {
    try {
      return new BackingDisk(binding.diskOpen(path, options.readOnly ?? false));
    } catch (error) {
      throw diskOpenError(path, options.configKey, error);
    }
  }

  get handle(): DiskHandle {
    if (this.handleOrNull === null) {
      throw new InternalError(`backing device ${this.path}: expected an open handle, found it closed; this is a bug in nraid (I/O after close)`);
    }
    return this.handleOrNull;
  }

  read(offsetBytes: number, lengthBytes: number): Buffer {
    return this.wrap('read', () => binding.diskRead(this.handle, offsetBytes, lengthBytes));
  }

  write(offsetBytes: number, data: Buffer): void {
    this.wrap('write', () => binding.diskWrite(this.handle, offsetBytes, data));
  }

  flush(): void {
    this.wrap('flush', () => binding.diskFlush(this.handle));
  }

  close(): void {
    if (this.handleOrNull === null) return;
    binding.diskClose(this.handleOrNull);
    this.handleOrNull = null;
  }

  private wrap<T>(what: string, action: () => T): T {
    try {
      return action();
    } catch (error) {
      if (!isErrnoException(error)) throw toNraidError(error);
      throw new DiskError(`${what} on backing device ${this.path} failed: ${error.code} (${error.message}); check the disk (dmesg) and its cabling`, {
        detail: errnoDetail(error),
        cause: error,
      });
    }
  }
}

function diskOpenError(path: string, configKey: string, error: unknown): Error {
  if (!isErrnoException(error)) return toNraidError(error);
  const system = { detail: errnoDetail(error), cause: error };
  switch (error.code) {
    case 'ENOENT':
      return new DiskError(`backing device ${path} does not exist (it may have vanished); check ${configKey}`, system);
    case 'EBUSY':
      return new DiskError(
        `backing device ${path} is busy: it is mounted, or held by another program or a running nraid daemon; ` +
          'unmount it or stop what holds it (lsblk, fuser -v)',
        system,
      );
    case 'EACCES':
    case 'EPERM':
      return new DiskError(`no permission to open backing device ${path} (${error.code}); nraid runs as root`, system);
    case 'EINVAL':
      return new DiskError(
        `backing device ${path} does not support direct I/O (O_DIRECT); use a block device or a file on a filesystem that supports it`,
        system,
      );
    default:
      return new DiskError(`cannot open backing device ${path}: ${error.code} (${error.message}); check ${configKey}`, system);
  }
}
