'use strict';
/**
 * The end-to-end table (one row per stack, each value with its ratio to the
 * baseline row measured in the same run) and the JSON results file.
 */
const fs = require('node:fs');
const path = require('node:path');

const RESULTS_DIR = path.join(__dirname, 'results');

function formatCount(value) {
  if (value >= 1e6) return `${(value / 1e6).toFixed(value >= 1e7 ? 1 : 2)}M`;
  if (value >= 1e3) return `${(value / 1e3).toFixed(value >= 1e5 ? 0 : 1)}k`;
  return value.toFixed(0);
}

function formatMetric(metric, value) {
  if (value === null || value === undefined) return 'n/a';
  switch (metric.unit) {
    case 'iops':
      return formatCount(value);
    case 'MB/s':
      return `${value >= 100 ? value.toFixed(0) : value.toFixed(1)} MB/s`;
    case 'us':
      return `${value >= 100 ? value.toFixed(0) : value.toFixed(1)} us`;
    default:
      return String(value);
  }
}

/** One table column per metric of each workload. */
function columns(workloads) {
  return workloads.flatMap((w) =>
    w.metrics.map((m) => ({ workload: w, metric: m, title: `${w.title} ${m.title}` })),
  );
}

/** value / baseline value; for latency a ratio above 1 means slower. */
function ratio(row, baseline, column) {
  const value = row.results[column.workload.id]?.[column.metric.id];
  const base = baseline?.results[column.workload.id]?.[column.metric.id];
  if (typeof value !== 'number' || typeof base !== 'number' || base === 0) return null;
  return value / base;
}

function cell(row, baseline, column) {
  const result = row.results[column.workload.id];
  if (!result) return row.ok === false ? 'failed' : 'n/a';
  const value = formatMetric(column.metric, result[column.metric.id]);
  const r = ratio(row, baseline, column);
  return r === null ? value : `${value} (${r.toFixed(2)}x)`;
}

/**
 * Adds `ratios` (per workload and metric) to each row, against the baseline
 * row, and `comparedRatios` against the row named by its `compareTo` (a
 * target's pair, e.g. TLS against no TLS), when both ran.
 */
function addRatios(rows, workloads, baselineId) {
  const baseline = rows.find((r) => r.id === baselineId && r.ok);
  const ratiosAgainst = (row, base) => {
    const out = {};
    for (const column of columns(workloads)) {
      const r = ratio(row, base, column);
      if (r === null) continue;
      out[column.workload.id] ??= {};
      out[column.workload.id][column.metric.id] = r;
    }
    return out;
  };
  for (const row of rows) {
    row.ratios = ratiosAgainst(row, baseline);
    const compared = row.compareTo ? rows.find((r) => r.id === row.compareTo && r.ok) : null;
    if (compared) row.comparedRatios = { to: compared.id, ratios: ratiosAgainst(row, compared) };
  }
}

/** One line per row with a `compareTo` pair in this run: its value / the pair's, per column. */
function formatPairs(rows, workloads) {
  const lines = [];
  for (const row of rows) {
    const compared = row.compareTo ? rows.find((r) => r.id === row.compareTo && r.ok) : null;
    if (!row.ok || !compared) continue;
    const cells = columns(workloads)
      .map((c) => {
        const r = ratio(row, compared, c);
        return r === null ? null : `${c.title} ${r.toFixed(2)}x`;
      })
      .filter(Boolean);
    lines.push(`${row.id} / ${compared.id}: ${cells.join(', ')}`);
  }
  return lines;
}

function formatTable(rows, workloads, baselineId) {
  const baseline = rows.find((r) => r.id === baselineId && r.ok) || null;
  const cols = columns(workloads);
  const header = ['stack', ...cols.map((c) => c.title)];
  const body = rows.map((row) => [row.title, ...cols.map((c) => cell(row, baseline, c))]);
  const widths = header.map((h, i) => Math.max(h.length, ...body.map((line) => line[i].length)));
  const render = (line) => line.map((text, i) => text.padEnd(widths[i])).join('  ').trimEnd();
  const lines = [render(header), widths.map((w) => '-'.repeat(w)).join('  '), ...body.map(render)];
  lines.push('');
  lines.push(baseline
    ? `ratios are value / ${baseline.title} in this run; for latency (us) a ratio above 1 is slower`
    : `no ratios: the baseline row "${baselineId}" did not run or failed`);
  const pairs = formatPairs(rows, workloads);
  if (pairs.length > 0) lines.push('', 'pairs (value / the pair\'s value in this run):', ...pairs);
  for (const row of rows.filter((r) => r.error)) {
    const rounds = row.roundsPassed + row.roundsFailed > 1 ? ` in ${row.roundsFailed} of ${row.roundsPassed + row.roundsFailed} rounds` : '';
    lines.push(`${row.title}: FAILED${rounds}: ${row.error}`);
  }
  return lines.join('\n');
}

/** Writes bench/results/<timestamp>.json and bench/results/latest.json; returns the first path. */
function saveResults(report, startedAt) {
  fs.mkdirSync(RESULTS_DIR, { recursive: true });
  const stamp = startedAt.toISOString().replace(/\.\d+Z$/, 'Z').replace(/:/g, '-');
  const text = `${JSON.stringify(report, null, 2)}\n`;
  const file = path.join(RESULTS_DIR, `${stamp}.json`);
  for (const target of [file, path.join(RESULTS_DIR, 'latest.json')]) {
    const temporary = `${target}.${process.pid}.tmp`;
    fs.writeFileSync(temporary, text);
    fs.renameSync(temporary, target);
  }
  return file;
}

module.exports = { addRatios, formatMetric, formatTable, saveResults };
