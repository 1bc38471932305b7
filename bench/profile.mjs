// Profiles the Worker's isolate with V8's sampling CPU profiler (over workerd's inspector)
// while the load generator drives one path, and prints where the time goes: self time per
// function (Wasm functions by their Rust names), and time inside a few groups.
//
//   node bench/profile.mjs [--key free|rpm|all] [--concurrency 8] [--seconds 5] [--stream]
//                          [--tokens N --pad-bytes B] [--top 25]
//                          [--out target/bench-profile.cpuprofile]
//
// --tokens / --pad-bytes make every answer that long (the simulator's defaults), e.g.
// `--stream --tokens 1000 --pad-bytes 10000` for ~10 MB streams.
//
// The .cpuprofile it writes opens in Chrome DevTools (Performance → Load profile). What the
// profiler cannot see: workerd's own C++ (HTTP, sockets, Durable Object storage) outside any
// JavaScript call, which shows up as "(program)" or "(idle)".
import fs from 'node:fs';
import path from 'node:path';
import WebSocket from 'ws';

import { ROOT, KEYS, MESSAGE, log, cpuSeconds, startSim, startWorker, benchVars, loadgen, post, round, snapshotBuild } from './lib.mjs';

const argv = process.argv.slice(2);
const option = (name, fallback) => {
  const i = argv.indexOf(name);
  return i >= 0 && i + 1 < argv.length ? argv[i + 1] : fallback;
};
const keyName = option('--key', 'free');
const concurrency = Number(option('--concurrency', '8'));
const seconds = Number(option('--seconds', '5'));
const top = Number(option('--top', '25'));
const stream = argv.includes('--stream');
const out = path.resolve(option('--out', path.join(ROOT, 'target/bench-profile.cpuprofile')));

/** A minimal Chrome DevTools Protocol client. */
async function devtools(url) {
  const ws = new WebSocket(url);
  await new Promise((resolve, reject) => {
    ws.once('open', resolve);
    ws.once('error', reject);
  });
  let id = 0;
  const pending = new Map();
  ws.on('message', (data) => {
    const msg = JSON.parse(data.toString());
    if (msg.id && pending.has(msg.id)) {
      const { resolve, reject } = pending.get(msg.id);
      pending.delete(msg.id);
      if (msg.error) reject(new Error(JSON.stringify(msg.error)));
      else resolve(msg.result);
    }
  });
  return {
    send: (method, params = {}) =>
      new Promise((resolve, reject) => {
        id += 1;
        pending.set(id, { resolve, reject });
        ws.send(JSON.stringify({ id, method, params }));
      }),
    close: () => ws.close(),
  };
}

async function main() {
  snapshotBuild();
  const sim = await startSim();
  // A key limit far above the load, so the Worker never paces the key (see run.mjs).
  const tokens = option('--tokens', undefined);
  const padBytes = option('--pad-bytes', undefined);
  await sim.mode({
    key_limits: { rpm: 1_000_000_000 },
    ...(tokens ? { tokens: Number(tokens) } : {}),
    ...(padBytes ? { pad_bytes: Number(padBytes) } : {}),
  });
  const worker = await startWorker(benchVars(sim), { miniflare: { inspectorPort: 0 } });
  const key = KEYS[keyName];
  if (!key) throw new Error(`--key is one of ${Object.keys(KEYS)}`);
  const body = stream ? { ...MESSAGE, stream: true } : MESSAGE;
  const warm = await post(worker.url, key, body);
  if (warm.status !== 200) throw new Error(`warm-up answered ${warm.status}: ${warm.text}`);

  // One inspector target per isolate; the Worker's is named after it ("core:user:…").
  const inspector = await worker.mf.getInspectorURL();
  const targets = await (await fetch(new URL('/json/list', inspector.toString().replace('ws:', 'http:')))).json();
  const target = targets.find((t) => /core:user/.test(t.id ?? t.title ?? '')) ?? targets[0];
  log(`profiling ${target.id ?? target.title} (${targets.length} inspector targets)`);
  const dt = await devtools(target.webSocketDebuggerUrl ?? `${inspector.toString().replace(/\/$/, '')}/${target.id}`);
  await dt.send('Profiler.enable');
  await dt.send('Profiler.setSamplingInterval', { interval: 200 });

  // Warm up (tier-up of hot Wasm functions) before sampling.
  await loadgen('closed', { url: worker.url, key, concurrency, 'warmup-ms': 0, 'duration-ms': 2000, body: JSON.stringify(body) });
  await dt.send('Profiler.start');
  const cpu0 = cpuSeconds(worker.pids);
  const run = await loadgen('closed', { url: worker.url, key, concurrency, 'warmup-ms': 0, 'duration-ms': seconds * 1000, body: JSON.stringify(body) });
  const cpu = cpuSeconds(worker.pids) - cpu0;
  const { profile } = await dt.send('Profiler.stop');
  dt.close();
  fs.mkdirSync(path.dirname(out), { recursive: true });
  fs.writeFileSync(out, JSON.stringify(profile));
  await worker.stop();
  await sim.stop();

  // Self time per node, then per function name.
  const byId = new Map(profile.nodes.map((n) => [n.id, n]));
  const self = new Map();
  const deltas = profile.timeDeltas ?? [];
  profile.samples.forEach((idSample, i) => {
    const next = deltas[i + 1] ?? 0;
    self.set(idSample, (self.get(idSample) ?? 0) + next);
  });
  const parent = new Map();
  for (const n of profile.nodes) for (const c of n.children ?? []) parent.set(c, n.id);
  const name = (n) => {
    const f = n.callFrame;
    const file = f.url ? path.basename(f.url) : '';
    return `${f.functionName || '(anonymous)'}${file ? ` [${file}]` : ''}`;
  };
  const total = [...self.values()].reduce((a, b) => a + b, 0);
  const selfByName = new Map();
  const inclusiveByName = new Map();
  for (const [id, us] of self) {
    const n = byId.get(id);
    selfByName.set(name(n), (selfByName.get(name(n)) ?? 0) + us);
    // Inclusive: every distinct function on the stack gets the sample once.
    const seen = new Set();
    for (let cur = id; cur !== undefined; cur = parent.get(cur)) {
      const nm = name(byId.get(cur));
      if (seen.has(nm)) continue;
      seen.add(nm);
      inclusiveByName.set(nm, (inclusiveByName.get(nm) ?? 0) + us);
    }
  }
  const busy = total - (selfByName.get('(idle)') ?? 0);
  const pct = (us) => `${((100 * us) / Math.max(1, busy)).toFixed(1).padStart(5)} %`;
  console.log(`\n${run.requests} requests at ${concurrency} clients (${round(run.rps, 0)} req/s); workerd CPU ${round((1e6 * cpu) / Math.max(1, run.requests), 0)} µs per request; isolate busy ${round(busy / 1e6, 2)} s of ${round(total / 1e6, 2)} s sampled (${round(busy / Math.max(1, run.requests), 0)} µs per request)\n`);
  console.log('self time (share of the busy isolate):');
  for (const [nm, us] of [...selfByName].filter(([nm]) => nm !== '(idle)').sort((a, b) => b[1] - a[1]).slice(0, top)) {
    console.log(`  ${pct(us)}  ${nm}`);
  }
  console.log('\ninclusive time, top functions:');
  for (const [nm, us] of [...inclusiveByName].filter(([nm]) => !['(root)', '(idle)', '(program)'].includes(nm)).sort((a, b) => b[1] - a[1]).slice(0, top)) {
    console.log(`  ${pct(us)}  ${nm}`);
  }
  console.log(`\nprofile written to ${path.relative(process.cwd(), out)}`);
}

await main();
process.exit(0);
