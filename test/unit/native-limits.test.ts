/**
 * The bounds the control plane shares with the data plane: every value that
 * src/limits.ts says "mirrors native/limits.h" equals its C++ twin, as the
 * addon reports it (binding.limits), and the native defaults the control
 * plane leaves to the data plane are the config's defaults.
 */
import * as limits from '../../src/limits';
import { binding } from '../../src/native';

describe('src/limits.ts mirrors native/limits.h', () => {
  test('blocks, requests, frontend threads, bitmap granularity, activity extent, lag defaults', () => {
    expect(binding.limits).toMatchObject({
      sectorBytes: limits.sectorBytes,
      blockBytes: limits.blockBytes,
      requestBytesMax: limits.requestBytesMax,
      frontendThreadsMin: limits.frontendThreadsMin,
      frontendThreadsDefault: limits.frontendThreadsDefault,
      frontendThreadsMax: limits.frontendThreadsMax,
      bitmapGranularityBytesMin: limits.bitmapGranularityBytesMin,
      bitmapGranularityBytesMax: limits.bitmapGranularityBytesMax,
      activityExtentBytes: limits.activityExtentBytes,
      maxLagBytesDefault: limits.maxLagBytesDefault,
      maxLagMsDefault: limits.maxLagMsDefault,
    });
  });

  test('the resync controller bounds and defaults (config units here, bytes there)', () => {
    expect(binding.limits).toMatchObject({
      resyncPlanAheadMsMin: limits.resyncPlanAheadMsMin,
      resyncPlanAheadMsMax: limits.resyncPlanAheadMsMax,
      resyncPlanAheadMsDefault: limits.resyncPlanAheadMsDefault,
      resyncFillTargetBytesMin: limits.resyncFillTargetKibMin * 1024,
      resyncFillTargetBytesMax: limits.resyncFillTargetKibMax * 1024,
      resyncFillTargetBytesDefault: limits.resyncFillTargetKibDefault * 1024,
      resyncRateBytesMin: limits.resyncRateMibMin * 1024 * 1024,
      resyncRateBytesMax: limits.resyncRateMibMax * 1024 * 1024,
      resyncMaxRateBytesDefault: limits.resyncMaxRateMibDefault * 1024 * 1024,
      resyncMinRateBytesDefault: limits.resyncMinRateMibDefault * 1024 * 1024,
    });
  });

  test('the boundary bounds are positive integers in a sane range', () => {
    expect(Number.isSafeInteger(binding.limits.metadataJobsMax) && binding.limits.metadataJobsMax >= 8).toBe(true);
    expect(Number.isSafeInteger(binding.limits.eventQueueMax) && binding.limits.eventQueueMax >= 16).toBe(true);
    expect(limits.superblockSlotBytes).toBe(binding.limits.blockBytes);
  });
});
