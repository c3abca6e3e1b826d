'use strict';
/**
 * The fio workloads every row runs, and reading fio's JSON output.
 *
 * All jobs: libaio, O_DIRECT, one job, time based. No prefill (writes only).
 * No iodepth_batch tuning: fio's defaults submit and reap the same way on
 * every row, which is what a ratio against the raw row needs.
 */
const { runCommand } = require('./system');

/** Seconds per job: runtime is measured, ramp is run first and discarded. */
const TIMING_FULL = { runtimeSeconds: 10, rampSeconds: 2 };
const TIMING_QUICK = { runtimeSeconds: 3, rampSeconds: 0 };
/** Extra time a job may take beyond runtime + ramp before it is killed. */
const FIO_GRACE_MS = 60_000;

/**
 * `metrics` name what the table shows for the workload; each metric has a
 * direction so that ratios can be read as "better" or "worse" later.
 */
const WORKLOADS = [
  {
    id: 'randwrite-4k-qd32',
    title: '4k randwrite QD32',
    fio: { rw: 'randwrite', bs: '4k', iodepth: 32 },
    metrics: [{ id: 'iops', title: 'IOPS', unit: 'iops', higherIsBetter: true }],
  },
  {
    id: 'write-1m-qd8',
    title: '1M seq write QD8',
    fio: { rw: 'write', bs: '1M', iodepth: 8 },
    metrics: [{ id: 'bandwidthMBps', title: 'MB/s', unit: 'MB/s', higherIsBetter: true }],
  },
  {
    id: 'randwrite-4k-qd1',
    title: '4k randwrite QD1',
    fio: { rw: 'randwrite', bs: '4k', iodepth: 1 },
    metrics: [
      { id: 'clatP50Us', title: 'p50', unit: 'us', higherIsBetter: false },
      { id: 'clatP99Us', title: 'p99', unit: 'us', higherIsBetter: false },
    ],
  },
];

function fioArgs(workload, device, timing) {
  const args = [
    `--name=${workload.id}`,
    `--filename=${device}`,
    '--ioengine=libaio',
    '--direct=1',
    `--rw=${workload.fio.rw}`,
    `--bs=${workload.fio.bs}`,
    `--iodepth=${workload.fio.iodepth}`,
    '--numjobs=1',
    '--time_based=1',
    `--runtime=${timing.runtimeSeconds}s`,
    '--percentile_list=50:99',
    '--output-format=json',
  ];
  if (timing.rampSeconds > 0) args.push(`--ramp_time=${timing.rampSeconds}s`);
  return args;
}

/** fio may print warnings before its JSON document. */
function parseFioJson(stdout) {
  const start = stdout.indexOf('{');
  if (start < 0) throw new Error(`fio printed no JSON: ${stdout.trim().slice(0, 400)}`);
  return JSON.parse(stdout.slice(start));
}

function percentileUs(clat, key) {
  const ns = clat && clat.percentile ? clat.percentile[key] : undefined;
  return typeof ns === 'number' ? ns / 1000 : null;
}

/** The numbers we keep from one fio job (its write side). */
function summarize(report) {
  const job = report.jobs[0];
  if (job.error) throw new Error(`fio job ${job.jobname} failed with error ${job.error}`);
  const write = job.write;
  if (!write || write.total_ios === 0) throw new Error(`fio job ${job.jobname} completed no write`);
  return {
    iops: write.iops,
    bandwidthMBps: write.bw_bytes / 1e6,
    clatP50Us: percentileUs(write.clat_ns, '50.000000'),
    clatP99Us: percentileUs(write.clat_ns, '99.000000'),
    clatMeanUs: write.clat_ns.mean / 1000,
    ios: write.total_ios,
    ioBytes: write.io_bytes,
    runtimeMs: write.runtime,
    cpuUserPct: job.usr_cpu,
    cpuSystemPct: job.sys_cpu,
  };
}

async function runFio(workload, device, timing) {
  const args = fioArgs(workload, device, timing);
  const timeoutMs = (timing.runtimeSeconds + timing.rampSeconds) * 1000 + FIO_GRACE_MS;
  const result = await runCommand('fio', args, { timeoutMs, check: true });
  return { ...summarize(parseFioJson(result.stdout)), fioArgs: args };
}

module.exports = { TIMING_FULL, TIMING_QUICK, WORKLOADS, fioArgs, parseFioJson, runFio, summarize };
