// Peak memory of the Worker's workerd process while large request bodies pass through:
// rounds of N concurrent posts of ~30 MB each to /v1/messages, with and without a retry
// (the first `--retries` attempts of every request answered 529), VmRSS sampled every 5 ms.
//
//   node bench/bodies.mjs [--concurrency 4] [--mb 30] [--rounds 3] [--retries 1]
//   BREAKWATER_BUILD_DIR=/some/other/build node bench/bodies.mjs   # compare two builds
//   MAX_INFLIGHT_BODY_BYTES=268435456 node bench/bodies.mjs         # the Worker's cap on bodies held
import {
  startSim, startWorker, benchVars, snapshotBuild, workerdPids, rssKib, sleep, log, KEYS, cleanup,
} from './lib.mjs';

const arg = (name, fallback) => {
  const i = process.argv.indexOf(`--${name}`);
  return i >= 0 ? Number(process.argv[i + 1]) : fallback;
};
const CONCURRENCY = arg('concurrency', 4);
const MB = arg('mb', 30);
const ROUNDS = arg('rounds', 3);
const RETRIES = arg('retries', 1);

function bigBody(mb) {
  const text = 'lorem ipsum '.repeat(Math.ceil((mb * 1_000_000) / 12)).slice(0, mb * 1_000_000 - 200);
  return JSON.stringify({ model: 'claude-sonnet-4-5', max_tokens: 16, messages: [{ role: 'user', content: text }] });
}

const build = snapshotBuild();
const sim = await startSim();
const before = new Set(workerdPids());
const CAP = process.env.MAX_INFLIGHT_BODY_BYTES;
// Every post is one caller's: its share of the isolate is lifted to the whole budget.
const SHARE = CAP ?? String(64 * 1024 * 1024);
const worker = await startWorker(benchVars(sim, { MAX_BODY_BYTES: String(32 * 1024 * 1024), ...(CAP ? { MAX_INFLIGHT_BODY_BYTES: CAP } : {}), MAX_INFLIGHT_BODY_BYTES_PER_CALLER: SHARE, BACKOFF_BASE_MS: '10', BACKOFF_MAX_MS: '20' }));
const pids = worker.pids.length ? worker.pids : workerdPids().filter((p) => !before.has(p));
const body = bigBody(MB);
log(`build ${build.wasm_sha256.slice(0, 12)}, body ${(body.length / 1e6).toFixed(1)} MB x ${CONCURRENCY}, pids ${pids.join(',')}`);

async function round(retry) {
  await sim.reset();
  if (retry) await sim.script([{ status: 529, times: CONCURRENCY * RETRIES }]);
  const start = rssKib(pids);
  let peak = start;
  let sampling = true;
  const sampler = (async () => {
    while (sampling) {
      peak = Math.max(peak, rssKib(pids));
      await sleep(5);
    }
  })();
  const t0 = performance.now();
  const results = await Promise.all(Array.from({ length: CONCURRENCY }, async () => {
    const res = await fetch(`${worker.url}/v1/messages`, {
      method: 'POST',
      headers: { 'content-type': 'application/json', 'x-api-key': KEYS.free, 'anthropic-version': '2023-06-01' },
      body,
    });
    await res.arrayBuffer();
    return [res.status, res.headers.get('x-proxy-attempts')];
  }));
  const ms = performance.now() - t0;
  sampling = false;
  await sampler;
  await sleep(300);
  const after = rssKib(pids);
  return { retry, statuses: results.map((r) => r.join('/')).join(' '), ms: Math.round(ms), start_mib: +(start / 1024).toFixed(1), peak_mib: +(peak / 1024).toFixed(1), growth_mib: +((peak - start) / 1024).toFixed(1), after_mib: +(after / 1024).toFixed(1) };
}

const rows = [];
const idle = rssKib(pids);
log(`idle RSS ${(idle / 1024).toFixed(1)} MiB`);
for (let i = 0; i < ROUNDS; i++) {
  for (const retry of [false, true]) {
    const row = await round(retry);
    rows.push(row);
    log(JSON.stringify(row));
  }
}
const peak = Math.max(...rows.map((r) => r.peak_mib));
log(`peak RSS over the run ${peak} MiB (idle ${(idle / 1024).toFixed(1)} MiB)`);
console.log(JSON.stringify({ build: build.wasm_sha256.slice(0, 12), peak_mib: peak, idle_mib: +(idle / 1024).toFixed(1), concurrency: CONCURRENCY, mb: MB, retries: RETRIES, rows }, null, 1));
await worker.stop();
await sim.stop();
cleanup();
