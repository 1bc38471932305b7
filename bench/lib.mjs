// Shared by the benchmark runner (run.mjs) and the profiler (profile.mjs): the simulator,
// the built Worker in workerd (through Miniflare), the load generator, process accounting and
// a few statistics.
import { spawn, execFileSync } from 'node:child_process';
import { createHash } from 'node:crypto';
import { createInterface } from 'node:readline';
import { fileURLToPath } from 'node:url';
import fs from 'node:fs';
import path from 'node:path';
import { startSim as startHarnessSim } from '../tests/e2e/harness.mjs';

Object.assign(process.env, {
  WRANGLER_SEND_METRICS: 'false',
  CLOUDFLARE_CF_FETCH_ENABLED: 'false',
  WRANGLER_HIDE_BANNER: 'true',
  CI: 'true',
});
const { Miniflare } = await import('miniflare');

export const ROOT = path.resolve(path.dirname(fileURLToPath(import.meta.url)), '..');
export const LOADGEN = process.env.BREAKWATER_LOADGEN_BIN || path.join(ROOT, 'target/release/breakwater-loadgen');
export const SIM_BIN = process.env.BREAKWATER_SIM_BIN || path.join(ROOT, 'target/release/breakwater-sim');
export const BUILD = process.env.BREAKWATER_BUILD_DIR || path.join(ROOT, 'build');

/**
 * Copies the built Worker to a private directory and runs everything from there, so that a
 * rebuild of build/ while the benchmarks run cannot mix two builds in one set of figures.
 * Also writes a wrangler.toml for the copy (the project's, with `main` pointing at it and no
 * [build] step). Returns the copy's directory and the module's SHA-256.
 */
let buildDir = BUILD;
export function snapshotBuild() {
  const dir = path.join(ROOT, 'target/bench-build');
  fs.rmSync(dir, { recursive: true, force: true });
  fs.cpSync(BUILD, dir, { recursive: true });
  const toml = fs.readFileSync(path.join(ROOT, 'wrangler.toml'), 'utf8').split('\n');
  const out = [];
  let skipping = false;
  for (const line of toml) {
    if (/^\s*\[/.test(line)) skipping = /^\s*\[build\]\s*$/.test(line);
    if (skipping) continue;
    out.push(/^\s*main\s*=/.test(line) ? 'main = "index.js"' : line);
  }
  fs.writeFileSync(path.join(dir, 'wrangler.toml'), out.join('\n'));
  buildDir = dir;
  const wasm = fs.readFileSync(path.join(dir, 'index_bg.wasm'));
  return {
    dir,
    wasm_sha256: createHash('sha256').update(wasm).digest('hex'),
    built_at: fs.statSync(path.join(BUILD, 'index_bg.wasm')).mtime.toISOString(),
  };
}
export const buildPath = (...parts) => path.join(buildDir, ...parts);


export const SEED = 20261127;
export const UPSTREAM_KEY = 'sk-ant-bench-upstream-key-0001';
/** Client keys, one per tier: the raw proxy path, and two hot keys with admission on. */
export const KEYS = {
  free: 'ck_bench_unlimited_key_0001',
  rpm: 'ck_bench_hot_rpm_key_0001',
  all: 'ck_bench_hot_all_key_0001',
};
export const CLIENT_KEYS = {
  [KEYS.free]: { id: 'bench-unlimited', tier: 'default' },
  [KEYS.rpm]: { id: 'bench-hot-rpm', tier: 'hot_rpm' },
  [KEYS.all]: { id: 'bench-hot-all', tier: 'hot_all' },
};
/** `default` is unlimited (no admission at all); the hot tiers admit everything, but ask. */
export const RATE_LIMITS = {
  default: {},
  hot_rpm: { rpm: 1_000_000_000 },
  hot_all: { rpm: 1_000_000_000, input_tpm: 4_000_000_000, output_tpm: 4_000_000_000, concurrency: 1_000_000 },
};
export const MESSAGE = { model: 'claude-sonnet-5-5', max_tokens: 64, messages: [{ role: 'user', content: 'Hello there' }] };

export const log = (...a) => console.error(`[bench ${new Date().toISOString().slice(11, 19)}]`, ...a);
export const sleep = (ms) => new Promise((r) => setTimeout(r, ms));

// ------------------------------------------------------------------ processes

/** Every process, as pid → {ppid, comm}. */
export function processTable() {
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
export function workerdPids() {
  const table = processTable();
  const below = (pid) => {
    for (let p = table.get(pid)?.ppid; p; p = table.get(p)?.ppid) if (p === process.pid) return true;
    return false;
  };
  return [...table.entries()].filter(([pid, p]) => p.comm.startsWith('workerd') && below(pid)).map(([pid]) => pid);
}

export const CLK_TCK = (() => {
  try {
    return Number(execFileSync('getconf', ['CLK_TCK']).toString().trim()) || 100;
  } catch {
    return 100;
  }
})();

/** CPU seconds (user + system) used so far by the processes. */
export function cpuSeconds(pids) {
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

/** CPU seconds the whole machine has been busy (all cores, every process) so far. */
export function machineBusySeconds() {
  const fields = fs.readFileSync('/proc/stat', 'utf8').split('\n')[0].trim().split(/\s+/).slice(1).map(Number);
  const total = fields.reduce((a, b) => a + b, 0);
  const idle = fields[3] + (fields[4] ?? 0);
  return (total - idle) / CLK_TCK;
}

/**
 * Measures what else loads the machine while `run` goes: the machine's busy CPU time minus
 * that of the benchmark's own processes (`pids`, this Node process, and the load generators,
 * whose own CPU time `run` returns as `ownExtra`). Returns `run`'s result with
 * `foreign_cpu_s` and `wall_s` added.
 */
export async function accountForeignLoad(pids, run) {
  const own = () => cpuSeconds(pids()) + (process.cpuUsage().user + process.cpuUsage().system) / 1e6;
  const box0 = machineBusySeconds();
  const own0 = own();
  const t0 = performance.now();
  const result = await run();
  const wall = (performance.now() - t0) / 1000;
  const ours = own() - own0 + (result.ownExtra ?? 0);
  const foreign = Math.max(0, machineBusySeconds() - box0 - ours);
  return { ...result, foreign_cpu_s: foreign, wall_s: wall };
}

export function rssKib(pids) {
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

export const children = new Set();
export function cleanup() {
  for (const child of children) child.kill('SIGTERM');
}
process.on('exit', cleanup);
for (const sig of ['SIGINT', 'SIGTERM']) process.on(sig, () => process.exit(130));

/** The test harness's simulator, seeded, and tracked so an interrupted run stops it. */
export async function startSim(args = []) {
  const sim = await startHarnessSim(['--seed', String(SEED), ...args]);
  children.add(sim.child);
  sim.child.once('exit', () => children.delete(sim.child));
  return { ...sim, pid: sim.child.pid };
}

/** What wrangler.toml declares (Durable Object classes, compatibility date, vars), so that
 * bindings added to it later are picked up without touching this file. */
let wranglerOptions;
export async function workerOptionsFromConfig() {
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

/** Starts the built Worker in workerd. `script` replaces it with a trivial one (cold start);
 * `build` names another build directory (to compare two builds in one run); `objects: false`
 * runs a build that is not the proxy (the Rust floor) with only `vars` and no Durable Objects. */
export async function startWorker(vars = {}, { script, build, objects = true, miniflare = {}, onLine } = {}) {
  const config = await workerOptionsFromConfig();
  const before = new Set(workerdPids());
  let lines = 0;
  const tail = [];
  const collect = (stream) =>
    createInterface({ input: stream }).on('line', (line) => {
      lines += 1;
      onLine?.(line);
      tail.push(line);
      if (tail.length > 50) tail.shift();
    });
  const common = {
    host: '127.0.0.1',
    port: 0,
    // A socket straight to the Worker, as production has: Miniflare's own entry worker (dev
    // conveniences: pretty errors, live reload, request logs) costs more CPU per request than
    // the proxy itself. Its URL is kept as `entryUrl` for one comparison row.
    unsafeDirectSockets: [{ host: '127.0.0.1', port: 0 }],
    compatibilityDate: config.compatibilityDate,
    compatibilityFlags: config.compatibilityFlags,
    handleRuntimeStdio(stdout, stderr) {
      collect(stdout);
      collect(stderr);
    },
    ...miniflare,
  };
  const t0 = performance.now();
  const mf = script
    ? new Miniflare({ ...common, modules: true, script, bindings: vars })
    : new Miniflare({
        ...common,
        scriptPath: build ? path.join(build, 'index.js') : buildPath('index.js'),
        modules: true,
        modulesRules: [{ type: 'CompiledWasm', include: ['**/*.wasm'], fallthrough: true }],
        ...(objects
          ? { bindings: { ...config.vars, ...vars }, durableObjects: config.durableObjects, durableObjectsPersist: false }
          : { bindings: vars }),
      });
  const entryUrl = (await mf.ready).toString().replace(/\/$/, '');
  const readyMs = performance.now() - t0;
  const url = (await mf.unsafeGetDirectURL()).toString().replace(/\/$/, '');
  const pids = workerdPids().filter((p) => !before.has(p));
  return { url, entryUrl, mf, pids, readyMs, t0, lines: () => lines, tail, stop: () => mf.dispose() };
}

/** The least a pass-through Worker can do: forward with the upstream key, return the answer.
 * Run in the same workerd, it is the floor under any proxy's overhead on this machine. */
export const PASS_THROUGH_WORKER = `export default {
  async fetch(request, env) {
    const url = new URL(request.url);
    const headers = new Headers(request.headers);
    headers.set('x-api-key', env.ANTHROPIC_API_KEY);
    return fetch(env.UPSTREAM_URL + url.pathname + url.search, { method: request.method, headers, body: request.body });
  },
};`;

/** Where scripts/bench.sh builds the Rust floor (`bench/rust-floor/`, the same as
 * PASS_THROUGH_WORKER written with workers-rs): inside the project, as Miniflare wants. */
export const RUST_FLOOR_BUILD = process.env.BREAKWATER_RUST_FLOOR_DIR || path.join(ROOT, 'target/bench-rust-floor');

/** Starts the Rust floor in its own workerd, or returns null (and says so) when it was not built. */
export async function startRustFloor(vars) {
  if (!fs.existsSync(path.join(RUST_FLOOR_BUILD, 'index.js'))) {
    log(`no Rust floor in ${path.relative(ROOT, RUST_FLOOR_BUILD)} (./scripts/bench.sh builds it); its row is skipped`);
    return null;
  }
  return startWorker(vars, { build: RUST_FLOOR_BUILD, objects: false });
}

export function benchVars(sim, extra = {}) {
  return {
    UPSTREAM_URL: sim.url,
    ANTHROPIC_API_KEY: UPSTREAM_KEY,
    CLIENT_KEYS: JSON.stringify(CLIENT_KEYS),
    RATE_LIMITS: JSON.stringify(RATE_LIMITS),
    ...extra,
  };
}

/** Runs the load generator and parses the JSON it prints. */
export function loadgen(mode, options) {
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

export async function post(url, key, body = MESSAGE, headers = {}) {
  const res = await fetch(`${url}/v1/messages`, {
    method: 'POST',
    headers: { 'content-type': 'application/json', 'x-api-key': key, 'anthropic-version': '2023-06-01', ...headers },
    body: JSON.stringify(body),
  });
  const text = await res.text();
  return { status: res.status, headers: res.headers, text };
}

// ------------------------------------------------------------------ statistics

export function percentile(sorted, q) {
  if (!sorted.length) return null;
  const rank = Math.min(sorted.length, Math.max(1, Math.ceil(q * sorted.length)));
  return sorted[rank - 1];
}
export function summarize(values) {
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
export const median = (xs) => {
  const s = [...xs].sort((a, b) => a - b);
  return s.length ? s[Math.floor((s.length - 1) / 2)] : null;
};
export const round = (x, d = 3) => (x === null || x === undefined || Number.isNaN(x) ? null : Math.round(x * 10 ** d) / 10 ** d);
