// A/B between builds of the Worker, and against the floors, by interleaving: one client sends
// each request to every path in turn (A, B, C, D, A, B, C, D, …), each path its own workerd
// process, and each path's workerd CPU time over a round is divided by the requests it served
// and taken as a ratio to the JavaScript floor's in the same round. Whatever drifts on the
// machine (frequency, other load, cache pressure) hits every path alike, so the ratios hold
// where single-path figures vary by tens of percent. See bench/README.md.
//
//   node bench/ab.mjs                                  # floors + build/, 7 rounds of 400
//   node bench/ab.mjs --build other=target/other-build # and another build, in the same rounds
//   node bench/ab.mjs --rounds 3 --requests 200 --key rpm --out target/ab.json
import http from 'node:http';
import os from 'node:os';
import fs from 'node:fs';
import path from 'node:path';
import { createHash } from 'node:crypto';
import {
  ROOT, KEYS, MESSAGE, PASS_THROUGH_WORKER, RUST_FLOOR_BUILD, CLK_TCK, startSim, startWorker, startRustFloor,
  benchVars, cpuSeconds, machineBusySeconds, snapshotBuild, median, percentile, round, log, cleanup,
} from './lib.mjs';

const USAGE = `usage: node bench/ab.mjs [options]
  --rounds R          measured rounds (default 7)
  --requests N        requests per path per round (default 400)
  --warmup W          warm-up requests per path, interleaved, before the rounds (default 300)
  --build NAME=DIR    another build of the proxy (index.js + index_bg.wasm), in place; repeatable
  --script NAME=FILE  a JavaScript Worker (one ES module) as one more path, given the floors'
                      variables and CLIENT_KEY (e.g. one that answers at once: what the runtime
                      alone costs); repeatable
  --key free|rpm|all  the client key the proxy paths use (default free: no admission)
  --no-proxy          leave out the project's build/ (path "proxy")
  --proxy-dir DIR     run path "proxy" from DIR in place instead of a fresh copy of build/
                      (bench/run.mjs passes the copy its other sections run)
  --clock sched|stat  workerd CPU from the threads' schedstat (ns; the default where the kernel
                      has it) or from /proc/<pid>/stat (user+sys, in clock ticks)
  --out FILE          where the JSON goes (default target/bench-ab.json)`;

// ------------------------------------------------------------------ options

/** A build's directory, checked: inside the project (Miniflare loads a Worker's modules from
 * there only), with the module and its glue. */
function builtDir(flag, name, dir) {
  const resolved = path.resolve(dir);
  if (!resolved.startsWith(ROOT + path.sep)) throw new Error(`${flag} ${name}: ${resolved} is outside ${ROOT}; copy it under target/`);
  for (const f of ['index.js', 'index_bg.wasm']) {
    if (!fs.existsSync(path.join(resolved, f))) throw new Error(`${flag} ${name}: no ${f} in ${resolved}`);
  }
  return resolved;
}

function parseArgs(argv) {
  const opts = { rounds: 7, requests: 400, warmup: 300, builds: [], scripts: [], key: 'free', proxy: true, proxyDir: null, out: 'target/bench-ab.json', clock: null };
  const value = (i, name) => {
    if (i + 1 >= argv.length) throw new Error(`${name} needs a value`);
    return argv[i + 1];
  };
  const count = (s, name, min) => {
    const n = Number(s);
    if (!Number.isInteger(n) || n < min) throw new Error(`${name} must be an integer >= ${min}, not ${s}`);
    return n;
  };
  for (let i = 0; i < argv.length; i += 1) {
    const a = argv[i];
    const [flag, inline] = a.startsWith('--') && a.includes('=') ? [a.slice(0, a.indexOf('=')), a.slice(a.indexOf('=') + 1)] : [a, undefined];
    const take = () => (inline !== undefined ? inline : value(i++, flag));
    // `--build NAME=DIR`, `--script NAME=FILE` (or `--build=NAME=DIR`).
    const named = (what) => {
      const spec = take();
      const eq = spec.indexOf('=');
      if (eq <= 0 || eq === spec.length - 1) throw new Error(`${flag} wants NAME=${what}, not ${spec}`);
      return [spec.slice(0, eq), spec.slice(eq + 1)];
    };
    switch (flag) {
      case '--rounds': opts.rounds = count(take(), flag, 1); break;
      case '--requests': opts.requests = count(take(), flag, 1); break;
      case '--warmup': opts.warmup = count(take(), flag, 0); break;
      case '--key': {
        opts.key = take();
        if (!(opts.key in KEYS)) throw new Error(`--key must be one of ${Object.keys(KEYS).join(', ')}`);
        break;
      }
      case '--no-proxy': opts.proxy = false; break;
      case '--proxy-dir': opts.proxyDir = builtDir('--proxy-dir', 'proxy', take()); break;
      case '--out': opts.out = take(); break;
      case '--clock': {
        opts.clock = take();
        if (!['sched', 'stat'].includes(opts.clock)) throw new Error('--clock must be sched or stat');
        break;
      }
      case '--help': case '-h': console.log(USAGE); process.exit(0); break;
      case '--script': {
        const [name, file] = named('FILE');
        opts.scripts.push({ name, source: fs.readFileSync(file, 'utf8') });
        break;
      }
      case '--build': {
        const [name, dir] = named('DIR');
        opts.builds.push({ name, dir: builtDir(flag, name, dir) });
        break;
      }
      default: throw new Error(`unknown option ${a}\n${USAGE}`);
    }
  }
  const names = ['js-at-once', 'js-floor', 'js-same-io', 'rust-floor', 'proxy', ...opts.builds.map((b) => b.name), ...opts.scripts.map((s) => s.name)];
  const dup = names.find((n, i) => names.indexOf(n) !== i);
  if (dup) throw new Error(`path name ${dup} is used twice (the floors and "proxy" are taken)`);
  return opts;
}

// ------------------------------------------------------------------ the same-I/O floor

/** The I/O the proxy does on a request, in plain JavaScript, with no decisions: every request
 * header read, the client key compared with one configured key, the whole body read, the
 * upstream headers built (all but credentials and hop-by-hop ones, the upstream key set), a
 * 60 s abort timer around the upstream call (cleared when the head arrives), the answer's
 * headers filtered through an allow-list plus its own request id, and one JSON log line. */
export const SAME_IO_WORKER = `const DROPPED = new Set([
  'x-api-key', 'authorization', 'host', 'content-length', 'connection', 'keep-alive',
  'proxy-authenticate', 'proxy-authorization', 'proxy-connection', 'te', 'trailer',
  'transfer-encoding', 'upgrade', 'cookie', 'origin', 'referer', 'accept-encoding',
  'forwarded', 'x-real-ip', 'true-client-ip', 'cdn-loop',
]);
const DROPPED_PREFIXES = ['cf-', 'x-forwarded-', 'sec-', 'x-proxy-'];
const ANSWER_ALLOWED = new Set([
  'content-type', 'request-id', 'retry-after', 'retry-after-ms', 'x-should-retry', 'cache-control',
]);
const forwardUp = (name) => !DROPPED.has(name) && !DROPPED_PREFIXES.some((p) => name.startsWith(p));
const forwardDown = (name) =>
  ANSWER_ALLOWED.has(name) || (name.startsWith('anthropic-') && !name.startsWith('anthropic-ratelimit-') &&
    !name.startsWith('anthropic-priority-') && name !== 'anthropic-organization-id');

export default {
  async fetch(request, env) {
    const started = Date.now();
    const id = crypto.randomUUID();
    let key = null;
    let headerCount = 0;
    for (const [name, value] of request.headers) {
      headerCount += 1;
      if (name === 'x-api-key') key = value;
    }
    if (key !== env.CLIENT_KEY) {
      console.log(JSON.stringify({ id, status: 401, ms: Date.now() - started }));
      return new Response('{"type":"error","error":{"type":"authentication_error","message":"invalid x-api-key"}}', {
        status: 401,
        headers: { 'content-type': 'application/json', 'x-proxy-request-id': id },
      });
    }
    const body = await request.arrayBuffer();
    const headers = new Headers();
    for (const [name, value] of request.headers) if (forwardUp(name)) headers.append(name, value);
    headers.set('x-api-key', env.ANTHROPIC_API_KEY);
    const url = new URL(request.url);
    const controller = new AbortController();
    const timer = setTimeout(() => controller.abort(), 60000);
    let upstream;
    try {
      upstream = await fetch(env.UPSTREAM_URL + url.pathname + url.search, {
        method: request.method,
        headers,
        body,
        redirect: 'manual',
        signal: controller.signal,
      });
    } finally {
      clearTimeout(timer);
    }
    const answer = new Headers();
    for (const [name, value] of upstream.headers) if (forwardDown(name)) answer.append(name, value);
    answer.set('x-proxy-request-id', id);
    console.log(JSON.stringify({
      id,
      method: request.method,
      path: url.pathname,
      status: upstream.status,
      request_bytes: body.byteLength,
      headers: headerCount,
      upstream_request_id: upstream.headers.get('request-id'),
      ms: Date.now() - started,
    }));
    return new Response(upstream.body, { status: upstream.status, headers: answer });
  },
};`;

/** A Worker that answers `{}` at once: what the runtime alone costs per request (its HTTP, an
 * isolate's entry and a response), under every other path. */
export const AT_ONCE_WORKER = `export default {
  async fetch() {
    return new Response('{}', { headers: { 'content-type': 'application/json' } });
  },
};`;

// ------------------------------------------------------------------ the client

const BODY = Buffer.from(JSON.stringify(MESSAGE));
const REQUEST_TIMEOUT_MS = 30_000;

/** One POST /v1/messages on the path's own keep-alive connection, read to the last byte. */
function send(p) {
  return new Promise((resolve) => {
    const t0 = performance.now();
    const req = http.request(
      {
        agent: p.agent,
        host: p.host,
        port: p.port,
        method: 'POST',
        path: '/v1/messages',
        headers: {
          'content-type': 'application/json',
          'anthropic-version': '2023-06-01',
          'x-api-key': p.key,
          'content-length': BODY.length,
        },
      },
      (res) => {
        res.on('data', () => {});
        res.on('end', () => resolve({ status: res.statusCode, ms: performance.now() - t0 }));
        res.on('error', (e) => resolve({ status: 0, error: e.message, ms: performance.now() - t0 }));
      },
    );
    req.setTimeout(REQUEST_TIMEOUT_MS, () => req.destroy(new Error('timed out')));
    req.on('error', (e) => resolve({ status: 0, error: e.message, ms: performance.now() - t0 }));
    req.end(BODY);
  });
}

function record(p, r) {
  p.sent += 1;
  if (r.status === 200) return true;
  p.failed += 1;
  const what = r.error ?? String(r.status);
  p.failures[what] = (p.failures[what] ?? 0) + 1;
  return false;
}

function checkFailures(paths, stage) {
  for (const p of paths) {
    if (p.failed > 0.01 * p.sent) {
      throw new Error(`${p.id}: ${p.failed} of ${p.sent} requests failed during ${stage} (${JSON.stringify(p.failures)}); the run is aborted`);
    }
  }
}

// ------------------------------------------------------------------ measuring

/** CPU time of the processes' threads in seconds, to the nanosecond: the first field of
 * /proc/<pid>/task/<tid>/schedstat (time on CPU, user and system together). /proc/<pid>/stat
 * counts in clock ticks (10 ms here), which over a round of a few hundred requests of a few
 * hundred µs each is a step of several percent; this one is not. A thread that ends within a
 * round takes its time with it, so the threads are counted at both ends and a round in which
 * one ended says so (and /proc/<pid>/stat's figure is kept beside it either way). */
function threadCpu(pids) {
  const tids = new Map();
  for (const pid of pids) {
    let tasks = [];
    try {
      tasks = fs.readdirSync(`/proc/${pid}/task`);
    } catch {
      continue;
    }
    for (const tid of tasks) {
      try {
        tids.set(`${pid}/${tid}`, Number(fs.readFileSync(`/proc/${pid}/task/${tid}/schedstat`, 'utf8').split(' ')[0]) / 1e9);
      } catch {
        // gone
      }
    }
  }
  return tids;
}
function threadCpuDelta(before, after) {
  let s = 0;
  for (const [tid, v] of after) s += v - (before.get(tid) ?? 0);
  const ended = [...before.keys()].filter((tid) => !after.has(tid)).length;
  return { s, ended };
}
const schedstatWorks = (() => {
  try {
    const v = threadCpu([process.pid]);
    return [...v.values()].some((x) => x > 0);
  } catch {
    return false;
  }
})();

const spread = (xs) => ({ median: median(xs), min: Math.min(...xs), max: Math.max(...xs) });
const sha256 = (file) => createHash('sha256').update(fs.readFileSync(file)).digest('hex');

async function measureRound(paths, n, r, sim, allPids, clock) {
  // The order turns each round and runs backwards every other one, so that no path always opens
  // a round or always follows the same path.
  const base = r % 2 ? [...paths].reverse() : paths;
  const turn = Math.floor(r / 2) + (r % 2);
  const order = base.map((_, i) => base[(i + turn) % base.length]);
  const lat = new Map(paths.map((p) => [p.id, []]));
  const ok = new Map(paths.map((p) => [p.id, 0]));
  const busy0 = machineBusySeconds();
  const own0 = cpuSeconds(allPids) + process.cpuUsage().user / 1e6 + process.cpuUsage().system / 1e6;
  const sim0 = cpuSeconds([sim.pid]);
  const cpu0 = new Map(paths.map((p) => [p.id, cpuSeconds(p.pids)]));
  const th0 = new Map(paths.map((p) => [p.id, threadCpu(p.pids)]));
  const t0 = performance.now();
  for (let i = 0; i < n; i += 1) {
    for (const p of order) {
      const res = await send(p);
      if (record(p, res)) ok.set(p.id, ok.get(p.id) + 1);
      lat.get(p.id).push(res.ms);
    }
  }
  const wall = (performance.now() - t0) / 1000;
  const th1 = new Map(paths.map((p) => [p.id, threadCpu(p.pids)]));
  const cpu1 = new Map(paths.map((p) => [p.id, cpuSeconds(p.pids)]));
  const simCpu = cpuSeconds([sim.pid]) - sim0;
  const own1 = cpuSeconds(allPids) + process.cpuUsage().user / 1e6 + process.cpuUsage().system / 1e6;
  const foreign = Math.max(0, machineBusySeconds() - busy0 - (own1 - own0));
  const perPath = {};
  for (const p of paths) {
    const s = Float64Array.from(lat.get(p.id)).sort();
    const tickS = cpu1.get(p.id) - cpu0.get(p.id);
    const th = threadCpuDelta(th0.get(p.id), th1.get(p.id));
    const cpuS = clock === 'sched' ? th.s : tickS;
    perPath[p.id] = {
      requests: n,
      ok: ok.get(p.id),
      cpu_s: round(cpuS, 6),
      cpu_us_per_req: cpuS * 1e6 / n,
      stat_cpu_s: round(tickS, 3),
      ...(schedstatWorks ? { sched_cpu_s: round(th.s, 6), threads_ended: th.ended } : {}),
      p50_ms: percentile(s, 0.5),
      p90_ms: percentile(s, 0.9),
      max_ms: s[s.length - 1],
    };
  }
  return { round: r, order: order.map((p) => p.id), wall_s: round(wall, 2), sim_cpu_s: round(simCpu, 3), foreign_cpu_s: round(foreign, 3), paths: perPath };
}

// ------------------------------------------------------------------ run

async function main() {
  let opts;
  try {
    opts = parseArgs(process.argv.slice(2));
  } catch (e) {
    console.error(e.message);
    return 2;
  }
  if (opts.clock === 'sched' && !schedstatWorks) throw new Error('--clock sched: no /proc/<pid>/task/<tid>/schedstat here');
  opts.clock ??= schedstatWorks ? 'sched' : 'stat';
  const clientKey = KEYS[opts.key];
  const loadStart = os.loadavg();
  const started = new Date().toISOString();
  log(`ab: ${opts.rounds} round(s) of ${opts.requests} request(s) per path, ${opts.warmup} warm-up, key ${opts.key}, CPU clock ${opts.clock}`);

  const sim = await startSim();
  // The simulator's own per-key limit (4,000 requests a minute by default) far above what the
  // run sends: otherwise the proxy would rightly pace the key, and that is not what is measured.
  await sim.mode({ key_limits: { rpm: 1_000_000_000 } });
  const vars = benchVars(sim);
  const floorVars = { UPSTREAM_URL: vars.UPSTREAM_URL, ANTHROPIC_API_KEY: vars.ANTHROPIC_API_KEY };
  // The proxy's build: a fresh copy of build/, or a copy already made (`--proxy-dir`).
  const snapshot = !opts.proxy ? null : opts.proxyDir
    ? {
        dir: opts.proxyDir,
        wasm_sha256: sha256(path.join(opts.proxyDir, 'index_bg.wasm')),
        built_at: fs.statSync(path.join(opts.proxyDir, 'index_bg.wasm')).mtime.toISOString(),
      }
    : snapshotBuild();

  const workers = [];
  const paths = [];
  const add = (id, label, worker, key, extra = {}) => {
    workers.push(worker);
    const u = new URL(worker.url);
    paths.push({
      id, label, key, pids: worker.pids, host: u.hostname, port: Number(u.port),
      agent: new http.Agent({ keepAlive: true, maxSockets: 1 }),
      sent: 0, failed: 0, failures: {}, ...extra,
    });
  };
  try {
    // One workerd per path, started one after the other (each finds its own processes).
    add('js-at-once', 'a JavaScript Worker that answers at once', await startWorker({}, { script: AT_ONCE_WORKER }), 'ck_any');
    add('js-floor', 'minimal JavaScript pass-through Worker', await startWorker(floorVars, { script: PASS_THROUGH_WORKER }), 'ck_any');
    add('js-same-io', "the proxy's I/O in plain JavaScript, no decisions", await startWorker({ ...floorVars, CLIENT_KEY: clientKey }, { script: SAME_IO_WORKER }), clientKey);
    const rust = await startRustFloor(floorVars);
    if (rust) {
      add('rust-floor', 'minimal Rust (workers-rs) pass-through Worker', rust, 'ck_any', {
        build: { dir: path.relative(ROOT, RUST_FLOOR_BUILD), wasm_sha256: sha256(path.join(RUST_FLOOR_BUILD, 'index_bg.wasm')) },
      });
    }
    if (opts.proxy) {
      add('proxy', `breakwater, ${opts.proxyDir ? path.relative(ROOT, opts.proxyDir) : 'build/'} (key ${opts.key})`, await startWorker(vars, { build: snapshot.dir }), clientKey, {
        build: { dir: path.relative(ROOT, snapshot.dir), wasm_sha256: snapshot.wasm_sha256, built_at: snapshot.built_at },
      });
    }
    for (const b of opts.builds) {
      add(b.name, `breakwater, ${path.relative(ROOT, b.dir) || b.dir} (key ${opts.key})`, await startWorker(vars, { build: b.dir }), clientKey, {
        build: { dir: b.dir, wasm_sha256: sha256(path.join(b.dir, 'index_bg.wasm')) },
      });
    }
    for (const s of opts.scripts) {
      add(s.name, 'a JavaScript Worker (--script)', await startWorker({ ...floorVars, CLIENT_KEY: clientKey }, { script: s.source }), clientKey);
    }
    for (const p of paths) {
      if (!p.pids.length) throw new Error(`${p.id}: no workerd process found`);
      log(`${p.id}: ${p.port}, workerd ${p.pids.join(',')}`);
    }
    const allPids = [sim.pid, ...paths.flatMap((p) => p.pids)];
    // The reference build for the "× build" column: build/ if it runs, else the first --build.
    const buildIds = paths.filter((p) => p.id === 'proxy' || opts.builds.some((b) => b.name === p.id)).map((p) => p.id);
    const refBuild = buildIds.length > 1 ? buildIds[0] : null;

    log(`warm-up: ${opts.warmup} request(s) per path, interleaved`);
    for (let i = 0; i < opts.warmup; i += 1) for (const p of paths) record(p, await send(p));
    checkFailures(paths, 'the warm-up');
    for (const p of paths) Object.assign(p, { sent: 0, failed: 0, failures: {} });

    const rounds = [];
    for (let r = 0; r < opts.rounds; r += 1) {
      const res = await measureRound(paths, opts.requests, r, sim, allPids, opts.clock);
      checkFailures(paths, `round ${r + 1}`);
      const ended = Object.entries(res.paths).filter(([, x]) => x.threads_ended).map(([id, x]) => `${id} ${x.threads_ended}`);
      if (ended.length && opts.clock === 'sched') log(`round ${r + 1}: workerd threads ended within it (${ended.join(', ')}); their CPU is missing from it`);
      const floor = res.paths['js-floor'];
      for (const [id, x] of Object.entries(res.paths)) {
        x.x_js_floor = x.cpu_us_per_req / floor.cpu_us_per_req;
        if (res.paths['js-same-io']) x.x_js_same_io = x.cpu_us_per_req / res.paths['js-same-io'].cpu_us_per_req;
        if (res.paths['rust-floor']) x.x_rust_floor = x.cpu_us_per_req / res.paths['rust-floor'].cpu_us_per_req;
        if (refBuild && buildIds.includes(id)) x.x_ref_build = x.cpu_us_per_req / res.paths[refBuild].cpu_us_per_req;
        x.p50_added_ms = x.p50_ms - floor.p50_ms;
        // Above the runtime's own cost per request: the path's own work, and as a multiple of
        // the JS floor's own work (its fetch and pass-through).
        const atOnce = res.paths['js-at-once'];
        x.own_us_per_req = x.cpu_us_per_req - atOnce.cpu_us_per_req;
        x.own_x_js_floor = x.own_us_per_req / (floor.cpu_us_per_req - atOnce.cpu_us_per_req);
      }
      rounds.push(res);
      log(`round ${r + 1}/${opts.rounds} (${res.wall_s} s, other load ${res.foreign_cpu_s} CPU s): ` +
        paths.map((p) => `${p.id} ${Math.round(res.paths[p.id].cpu_us_per_req)} µs ×${res.paths[p.id].x_js_floor.toFixed(2)}`).join(', '));
    }

    // ---------------------------------------------------------------- summary
    const summary = {};
    for (const p of paths) {
      const of = (k) => rounds.map((r) => r.paths[p.id][k]).filter((v) => v !== undefined);
      const s = (k, d) => {
        const xs = of(k);
        if (!xs.length) return null;
        const m = spread(xs);
        return { median: round(m.median, d), min: round(m.min, d), max: round(m.max, d) };
      };
      summary[p.id] = {
        label: p.label,
        cpu_us_per_req: s('cpu_us_per_req', 1),
        x_js_floor: s('x_js_floor', 3),
        own_us_per_req: s('own_us_per_req', 1),
        own_x_js_floor: s('own_x_js_floor', 3),
        x_js_same_io: s('x_js_same_io', 3),
        x_rust_floor: s('x_rust_floor', 3),
        ...(refBuild && buildIds.includes(p.id) ? { x_ref_build: s('x_ref_build', 3) } : {}),
        // All rounds pooled: the path's CPU over all of them / the floor's over all of them.
        cpu_pooled_x_js_floor: round(
          rounds.reduce((t, r) => t + r.paths[p.id].cpu_us_per_req, 0) / rounds.reduce((t, r) => t + r.paths['js-floor'].cpu_us_per_req, 0),
          3,
        ),
        p50_ms: s('p50_ms', 3),
        p50_added_ms: s('p50_added_ms', 3),
        requests: p.sent,
        failed: p.failed,
        failures: p.failures,
      };
    }
    const loadEnd = os.loadavg();

    // ---------------------------------------------------------------- table
    const has = (k) => paths.some((p) => summary[p.id][k]);
    const cell = (v, d) => (v ? `${v.median.toFixed(d)} (${v.min.toFixed(d)}–${v.max.toFixed(d)})` : '');
    const cols = [
      ['path', (p) => p.id],
      ['CPU µs/req', (p) => cell(summary[p.id].cpu_us_per_req, 0)],
      ['× js-floor', (p) => cell(summary[p.id].x_js_floor, 2)],
      ['own µs/req', (p) => cell(summary[p.id].own_us_per_req, 0)],
      ['own × js-floor own', (p) => cell(summary[p.id].own_x_js_floor, 2)],
      ...(has('x_js_same_io') ? [['× js-same-io', (p) => cell(summary[p.id].x_js_same_io, 2)]] : []),
      ...(has('x_rust_floor') ? [['× rust-floor', (p) => cell(summary[p.id].x_rust_floor, 2)]] : []),
      ...(refBuild ? [[`× ${refBuild}`, (p) => cell(summary[p.id].x_ref_build, 3)]] : []),
      ['p50 ms', (p) => summary[p.id].p50_ms.median.toFixed(3)],
      ['p50 + js-floor ms', (p) => summary[p.id].p50_added_ms.median.toFixed(3)],
      ['failed', (p) => `${p.failed}/${p.sent}`],
    ];
    const rows = [cols.map((c) => c[0]), ...paths.map((p) => cols.map((c) => c[1](p)))];
    const widths = cols.map((_, i) => Math.max(...rows.map((r) => r[i].length)));
    const line = (r) => r.map((v, i) => (i === 0 ? v.padEnd(widths[i]) : v.padStart(widths[i]))).join('  ');
    console.log(`\nworkerd CPU per request, interleaved: ${opts.rounds} round(s) × ${opts.requests} request(s) per path; median (min–max over rounds)`);
    console.log(line(rows[0]));
    console.log(widths.map((w) => '-'.repeat(w)).join('  '));
    for (const r of rows.slice(1)) console.log(line(r));
    console.log(`\n${os.cpus().length} CPUs, load ${loadStart.map((x) => x.toFixed(2)).join(' ')} → ${loadEnd.map((x) => x.toFixed(2)).join(' ')}, ` +
      `node ${process.version}, CPU clock ${opts.clock === 'sched' ? 'schedstat (ns)' : `/proc/<pid>/stat (${1000 / CLK_TCK} ms ticks)`}` +
      (snapshot ? `, build/ wasm ${snapshot.wasm_sha256.slice(0, 16)}…` : ''));

    // ---------------------------------------------------------------- JSON
    const out = path.resolve(ROOT, opts.out);
    fs.mkdirSync(path.dirname(out), { recursive: true });
    fs.writeFileSync(out, JSON.stringify({
      started,
      finished: new Date().toISOString(),
      method: 'interleaved: one client, one request to each path in turn (start rotated each round); ' +
        "workerd user+sys CPU of each path's processes per round / requests; ratios within each round",
      options: { clock: opts.clock, rounds: opts.rounds, requests: opts.requests, warmup: opts.warmup, key: opts.key, proxy: opts.proxy, builds: opts.builds },
      machine: {
        cpus: os.cpus().length,
        cpu_model: os.cpus()[0]?.model,
        loadavg_start: loadStart,
        loadavg_end: loadEnd,
        node: process.version,
        clk_tck: CLK_TCK,
      },
      proxy_build: snapshot && { ...snapshot, dir: path.relative(ROOT, snapshot.dir) },
      reference_build: refBuild,
      paths: paths.map((p) => ({ id: p.id, label: p.label, key: p.key, pids: p.pids, build: p.build ?? null })),
      summary,
      rounds,
    }, null, 2));
    log(`wrote ${out.startsWith(ROOT + path.sep) ? path.relative(ROOT, out) : out}`);
  } finally {
    for (const p of paths) p.agent.destroy();
    for (const w of workers) await w.stop().catch(() => {});
    await sim.stop();
  }
}

let status = 0;
try {
  status = (await main()) ?? 0;
} catch (e) {
  log(e.stack ?? String(e));
  status = 1;
}
cleanup();
process.exit(status);
