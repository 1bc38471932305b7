// Model fallback under an outage of one model: the simulator refuses every request for
// claude-opus-5-5 for 20 s (529) while claude-sonnet-5-5 serves. Open-loop arrivals of opus
// requests, side by side through two Workers on two simulators (same schedule, same seed):
// one without MODEL_FALLBACKS, one with {"claude-opus-5-5": ["claude-sonnet-5-5"]}.
// Success within the budget, latency, upstream calls per request, and which model answered.
//
//   node bench/fallback.mjs [--quick] [--out DIR]   (needs build/, the simulator and loadgen)
import fs from 'node:fs';
import path from 'node:path';
import {
  ROOT, KEYS, SEED, MESSAGE, log, sleep, startSim, startWorker, benchVars, loadgen, post, summarize, round,
} from './lib.mjs';

const argv = process.argv.slice(2);
const QUICK = argv.includes('--quick');
const outAt = argv.indexOf('--out');
const OUT = path.resolve(outAt >= 0 ? argv[outAt + 1] : path.join(ROOT, 'bench/results'));

const OPUS = 'claude-opus-5-5';
const SONNET = 'claude-sonnet-5-5';
const OUTAGE_MS = 20_000;
const DURATION_MS = QUICK ? 30_000 : 40_000;
const RATE = QUICK ? 5 : 10;
const BUDGET_MS = 10_000;

const VARIANTS = [
  { id: 'without', label: 'without fallback', vars: {} },
  { id: 'with', label: `with fallback (${OPUS} → ${SONNET})`, vars: { MODEL_FALLBACKS: JSON.stringify({ [OPUS]: [SONNET] }) } },
];

function summarizeRun(run, stats, workerLog) {
  const rows = run.requests; // [arrival_ms, end_ms, status, attempts, ok]
  const ok = rows.filter((r) => r[4] === 1);
  const lat = (rs) => {
    const s = summarize(rs.map((r) => r[1] - r[0]));
    return s && { p50: round(s.p50, 1), p90: round(s.p90, 1), p99: round(s.p99, 1), max: round(s.max, 1) };
  };
  const during = rows.filter((r) => r[0] < OUTAGE_MS);
  const after = rows.filter((r) => r[0] >= OUTAGE_MS);
  const share = (rs) => (rs.length ? round(rs.filter((r) => r[4] === 1).length / rs.length, 4) : null);
  const finals = {};
  for (const r of rows) finals[r[2]] = (finals[r[2]] ?? 0) + 1;
  return {
    requests: rows.length,
    success_rate: share(rows),
    success_rate_during_outage: share(during),
    success_rate_after_outage: share(after),
    latency_ok_ms: lat(ok),
    latency_ok_during_outage_ms: lat(during.filter((r) => r[4] === 1)),
    finals,
    upstream_calls: stats.requests ?? null,
    calls_per_request: stats.requests ? round(stats.requests / rows.length, 3) : null,
    answered_by: workerLog.answered_by,
    fallback_why: workerLog.why,
  };
}

async function main() {
  log(`fallback: ${OPUS} in a ${OUTAGE_MS / 1000} s outage, ${SONNET} healthy; ${RATE} req/s for ${DURATION_MS / 1000} s, ${BUDGET_MS / 1000} s budgets`);
  const results = [];
  const sims = await Promise.all(VARIANTS.map(() => startSim()));
  const logs = VARIANTS.map(() => ({ answered_by: {}, why: {}, counting: false }));
  const workers = await Promise.all(VARIANTS.map((v, i) => startWorker(
    benchVars(sims[i], {
      RATE_LIMITS: JSON.stringify({ default: {} }),
      CLIENT_KEYS: JSON.stringify({ [KEYS.free]: { id: 'bench' } }),
      REQUEST_BUDGET_MS: String(BUDGET_MS),
      ...v.vars,
    }),
    {
      onLine: (line) => {
        const l = logs[i];
        if (!l.counting || !line.startsWith('{')) return;
        let entry;
        try {
          entry = JSON.parse(line);
        } catch {
          return;
        }
        if (entry.route !== 'messages') return;
        const model = entry.status === 200 ? entry.model : `${entry.status} (${entry.model})`;
        l.answered_by[model] = (l.answered_by[model] ?? 0) + 1;
        if (entry.fallback) l.why[entry.fallback.why] = (l.why[entry.fallback.why] ?? 0) + 1;
      },
    },
  )));
  // Warm each Worker up with one request for the healthy model.
  for (const w of workers) await post(w.url, KEYS.free, MESSAGE);
  await sleep(100);
  const origin = Math.ceil(Date.now() / 1000) * 1000 + 2000;
  for (const sim of sims) {
    await sim.reset();
    await sim.mode({ capacity: { rps: 100_000, models: [OPUS], outages: [{ start_ms: 0, duration_ms: OUTAGE_MS }], origin } });
  }
  for (const l of logs) l.counting = true;
  const body = JSON.stringify({ ...MESSAGE, model: OPUS });
  const runs = await Promise.all(VARIANTS.map((v, i) => loadgen('open', {
    url: workers[i].url,
    key: KEYS.free,
    policy: 'ours',
    rate: RATE,
    'duration-ms': DURATION_MS,
    'budget-ms': BUDGET_MS,
    'grace-ms': 5000,
    seed: SEED,
    'start-unix-ms': origin,
    body,
  })));
  await sleep(300);
  for (const [i, v] of VARIANTS.entries()) {
    const stats = await sims[i].stats();
    const summary = { variant: v.id, label: v.label, ...summarizeRun(runs[i], stats, logs[i]) };
    results.push(summary);
    log(`fallback (${v.id.padEnd(7)}) success ${(100 * summary.success_rate).toFixed(1)} % (during the outage ${(100 * summary.success_rate_during_outage).toFixed(1)} %)  p50 ${summary.latency_ok_ms?.p50} ms  p99 ${summary.latency_ok_ms?.p99} ms  calls/request ${summary.calls_per_request}  answered by ${JSON.stringify(summary.answered_by)}`);
  }
  await Promise.all(workers.map((w) => w.stop()));
  await Promise.all(sims.map((s) => s.stop()));
  const out = {
    date: new Date().toISOString(),
    outage_ms: OUTAGE_MS,
    duration_ms: DURATION_MS,
    rate: RATE,
    budget_ms: BUDGET_MS,
    seed: SEED,
    requested_model: OPUS,
    fallback_model: SONNET,
    variants: results,
  };
  fs.mkdirSync(OUT, { recursive: true });
  fs.writeFileSync(path.join(OUT, 'fallback.json'), `${JSON.stringify(out, null, 2)}\n`);
  console.log(JSON.stringify(out, null, 2));
}

main().catch((e) => {
  console.error(e);
  process.exit(1);
});
