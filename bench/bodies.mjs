// Peak memory of the Worker's workerd process while large request bodies pass through:
// rounds of N concurrent posts of ~30 MB each to /v1/messages, with and without a retry
// (the first `--retries` attempts of every request answered 529), VmRSS sampled every 5 ms,
// and the Worker isolate's own heap (V8's `Runtime.getHeapUsage` through the inspector: the
// JavaScript heap, the runtime's objects in it, and ArrayBuffer backing stores, Wasm memory
// among them), which is what the platform's 128 MB limit per isolate counts; garbage not yet
// collected counts too.
//
//   node bench/bodies.mjs [--concurrency 4] [--mb 30] [--rounds 3] [--retries 1]
//   BREAKWATER_BUILD_DIR=/some/other/build node bench/bodies.mjs   # compare two builds
//   MAX_INFLIGHT_BODY_BYTES=268435456 node bench/bodies.mjs         # the Worker's cap on bodies held
import net from 'node:net';
import {
  startSim, startWorker, benchVars, snapshotBuild, workerdPids, rssKib, sleep, log, KEYS, cleanup,
} from './lib.mjs';

/** A free loopback port, for the inspector. */
async function freePort() {
  const server = net.createServer();
  await new Promise((resolve) => server.listen(0, '127.0.0.1', resolve));
  const { port } = server.address();
  await new Promise((resolve) => server.close(resolve));
  return port;
}

/** The user Worker's heap through the inspector: `heapMib()` is used + runtime + backing stores. */
async function heapProbe(port) {
  const WebSocketClass = globalThis.WebSocket ?? (await import('undici')).WebSocket;
  const targets = await (await fetch(`http://127.0.0.1:${port}/json`)).json();
  const target = targets.find((t) => t.title === 'workerd: worker core:user:');
  const ws = new WebSocketClass(target.webSocketDebuggerUrl);
  await new Promise((resolve, reject) => { ws.onopen = resolve; ws.onerror = reject; });
  let id = 0;
  const pending = new Map();
  ws.onmessage = (m) => {
    const d = JSON.parse(m.data);
    pending.get(d.id)?.(d.result);
    pending.delete(d.id);
  };
  const call = (method) => new Promise((resolve) => {
    id += 1;
    pending.set(id, resolve);
    ws.send(JSON.stringify({ id, method }));
  });
  return {
    async heapMib() {
      const u = await call('Runtime.getHeapUsage');
      return (u.usedSize + (u.embedderHeapUsedSize ?? 0) + (u.backingStorageSize ?? 0)) / 1024 / 1024;
    },
    close: () => ws.close(),
  };
}

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
  return JSON.stringify({ model: 'claude-sonnet-5-5', max_tokens: 16, messages: [{ role: 'user', content: text }] });
}

const build = snapshotBuild();
const sim = await startSim();
const before = new Set(workerdPids());
const CAP = process.env.MAX_INFLIGHT_BODY_BYTES;
// Every post is one caller's: its share of the isolate is lifted to the whole budget.
const SHARE = CAP ?? String(64 * 1024 * 1024);
const inspectorPort = await freePort();
const worker = await startWorker(benchVars(sim, { MAX_BODY_BYTES: String(32 * 1024 * 1024), ...(CAP ? { MAX_INFLIGHT_BODY_BYTES: CAP } : {}), MAX_INFLIGHT_BODY_BYTES_PER_CALLER: SHARE, BACKOFF_BASE_MS: '10', BACKOFF_MAX_MS: '20' }), { miniflare: { inspectorPort } });
const heap = await heapProbe(inspectorPort);
const pids = worker.pids.length ? worker.pids : workerdPids().filter((p) => !before.has(p));
const body = bigBody(MB);
log(`build ${build.wasm_sha256.slice(0, 12)}, body ${(body.length / 1e6).toFixed(1)} MB x ${CONCURRENCY}, pids ${pids.join(',')}`);

async function round(retry) {
  await sim.reset();
  if (retry) await sim.script([{ status: 529, times: CONCURRENCY * RETRIES }]);
  const start = rssKib(pids);
  let peak = start;
  const heapStart = await heap.heapMib();
  let heapPeak = heapStart;
  let sampling = true;
  const sampler = (async () => {
    while (sampling) {
      peak = Math.max(peak, rssKib(pids));
      await sleep(5);
    }
  })();
  const heapSampler = (async () => {
    while (sampling) {
      heapPeak = Math.max(heapPeak, await heap.heapMib());
      // The inspector's calls run on the isolate's thread: leave it time for the requests.
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
  await heapSampler;
  await sleep(300);
  const after = rssKib(pids);
  return { retry, statuses: results.map((r) => r.join('/')).join(' '), ms: Math.round(ms), start_mib: +(start / 1024).toFixed(1), peak_mib: +(peak / 1024).toFixed(1), growth_mib: +((peak - start) / 1024).toFixed(1), after_mib: +(after / 1024).toFixed(1), heap_start_mib: +heapStart.toFixed(1), heap_peak_mib: +heapPeak.toFixed(1) };
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
const heapPeak = Math.max(...rows.map((r) => r.heap_peak_mib));
heap.close();
log(`peak RSS over the run ${peak} MiB (idle ${(idle / 1024).toFixed(1)} MiB)`);
console.log(JSON.stringify({ build: build.wasm_sha256.slice(0, 12), peak_mib: peak, heap_peak_mib: heapPeak, idle_mib: +(idle / 1024).toFixed(1), concurrency: CONCURRENCY, mb: MB, retries: RETRIES, rows }, null, 1));
await worker.stop();
await sim.stop();
cleanup();
