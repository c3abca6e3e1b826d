/**
 * Kernel requirements (issue 14): `nraid up` refuses a kernel that lacks a
 * required feature with an error naming it, and accepts this machine's.
 */
import { KernelError } from '../../src/errors';
import { checkKernel, KERNEL_FEATURES, OLDEST_KERNEL, parseKernelRelease, readKernelFacts, requireKernel } from '../../src/kernel';

const facts = (release: string, over: { fuseDevice?: boolean; loopControl?: boolean } = {}) => ({ release, fuseDevice: true, loopControl: true, ...over });

function errorOf(release: string, over: { fuseDevice?: boolean; loopControl?: boolean } = {}): KernelError {
  try {
    requireKernel(facts(release, over));
  } catch (error) {
    expect(error).toBeInstanceOf(KernelError);
    return error as KernelError;
  }
  throw new Error(`expected a KernelError for ${release}`);
}

describe('kernel requirements', () => {
  test('releases parse to MAJOR.MINOR, whatever follows', () => {
    expect(parseKernelRelease('6.18.44-fc-v1045')).toEqual([6, 18]);
    expect(parseKernelRelease('5.10.0-28-amd64')).toEqual([5, 10]);
    expect(parseKernelRelease('5.8')).toEqual([5, 8]);
    expect(parseKernelRelease('linux')).toBeNull();
  });

  test('the oldest supported kernel is 5.8 (LOOP_CONFIGURE), the newest required feature', () => {
    expect(OLDEST_KERNEL).toEqual([5, 8]);
    expect(KERNEL_FEATURES.filter((f) => f.required).map((f) => f.name)).toEqual(['LOOP_CONFIGURE', 'FUSE_MAX_PAGES']);
  });

  test('5.4 is refused, naming LOOP_CONFIGURE, the release and the way out; the code is NRAID_ERR_KERNEL', () => {
    const error = errorOf('5.4.0-150-generic');
    expect(error.code).toBe('NRAID_ERR_KERNEL');
    expect(error.message).toContain('this kernel (5.4.0-150-generic) lacks LOOP_CONFIGURE, in Linux 5.8 and newer');
    expect(error.message).toContain('nraid needs Linux 5.8 or newer');
    expect(error.message).not.toContain('FUSE_MAX_PAGES');
  });

  test('4.19 lacks FUSE 7.28 too: both are named', () => {
    const message = errorOf('4.19.0-26-amd64').message;
    expect(message).toContain('LOOP_CONFIGURE');
    expect(message).toContain('FUSE_MAX_PAGES (FUSE 7.28), in Linux 4.20 and newer');
  });

  test('5.8 and 5.10 pass; what they lack is optional and said', () => {
    for (const release of ['5.8.0', '5.10.0-28-amd64']) {
      const check = checkKernel(facts(release));
      expect(check.problems).toEqual([]);
      expect(check.missingOptional.join('; ')).toContain('FOPEN_PARALLEL_DIRECT_WRITES (FUSE 7.38), in Linux 6.1 and newer');
      expect(check.missingOptional.join('; ')).toContain('FUSE_NOTIFY_RESEND (FUSE 7.40), in Linux 6.9 and newer');
    }
    expect(checkKernel(facts('6.9.1')).missingOptional.map((m) => m.split(' ')[0])).toEqual(['FUSE']);
    expect(checkKernel(facts('6.14.0')).missingOptional).toEqual([]);
  });

  test('no /dev/fuse or /dev/loop-control is named with the module to load; an unreadable release is refused', () => {
    expect(errorOf('6.18.1', { fuseDevice: false }).message).toContain('no /dev/fuse: load the fuse module (modprobe fuse)');
    expect(errorOf('6.18.1', { loopControl: false }).message).toContain('no /dev/loop-control: load the loop module (modprobe loop)');
    expect(errorOf('weird').message).toContain('cannot read the kernel version from the release "weird"');
  });

  test('this machine passes', () => {
    const real = readKernelFacts();
    expect({ release: real.release, problems: checkKernel(real).problems }).toEqual({ release: real.release, problems: [] });
    expect(() => requireKernel(real)).not.toThrow();
  });
});
