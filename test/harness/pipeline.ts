/**
 * The options binding.pipelineCreate takes, from a metadata layout: what the
 * daemon passes (src/daemon.ts), for tests that drive a pipeline directly.
 */
import { computeLayout } from '../../src/metadata';
import { Binding, NativeEventType } from '../../src/native';

export type PipelineOptions = Parameters<Binding['pipelineCreate']>[1];
export type PipelineLayout = Omit<PipelineOptions, 'onEvent'>;

export function pipelineLayout(layout: ReturnType<typeof computeLayout>): PipelineLayout {
  return {
    dataSizeBytes: layout.dataSizeBytes,
    bitmapGranularityBytes: layout.bitmapGranularityBytes,
    bitmapOffsetBytes: layout.bitmapOffsetBytes,
    activityLogOffsetBytes: layout.activityLogOffsetBytes,
    activityLogSizeBytes: layout.activityLogSizeBytes,
    activityExtentBytes: layout.activityExtentBytes,
  };
}

export function pipelineOptions(
  layout: ReturnType<typeof computeLayout>,
  onEvent: (type: NativeEventType, detail: string) => void = () => {},
): PipelineOptions {
  return { ...pipelineLayout(layout), onEvent };
}
