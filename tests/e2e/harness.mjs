// End-to-end harness: the real Worker in workerd (through Miniflare, the runtime wrangler dev
// uses) in front of the simulated Anthropic upstream, both on loopback ports.
import { spawn } from 'node:child_process';
import { createInterface } from 'node:readline';
import { fileURLToPath } from 'node:url';
import path from 'node:path';
import { Miniflare } from 'miniflare';

export const ROOT = path.resolve(path.dirname(fileURLToPath(import.meta.url)), '../..');
export const SIM_BIN = process.env.BREAKWATER_SIM_BIN || path.join(ROOT, 'target/release/breakwater-sim');
/** The built Worker the tests run: build/, or another build (BREAKWATER_BUILD_DIR, e.g. the
 * test build of scripts/mutants.sh, which must make the tests fail). */
export const BUILD_DIR = path.resolve(ROOT, process.env.BREAKWATER_BUILD_DIR || 'build');

/** A client key the tests use, and the upstream key the Worker holds. */
export const CLIENT_KEY = 'ck_test_alice_4f1c2a9b7e';
export const UPSTREAM_KEY = 'sk-ant-upstream-real-key-7d3e9a';

/** Starts the simulator on a free port. */
export async function startSim(args = []) {
  const child = spawn(SIM_BIN, ['--port', '0', ...args], { stdio: ['ignore', 'pipe', 'inherit'] });
  const lines = createInterface({ input: child.stdout });
  const url = await new Promise((resolve, reject) => {
    const timer = setTimeout(() => reject(new Error('simulator did not start')), 10_000);
    child.once('exit', (code) => reject(new Error(`simulator exited with ${code}`)));
    lines.on('line', (line) => {
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
    child,
    script: (faults) => control('script', faults),
    mode: (mode) => control('mode', mode),
    reset: () => control('reset', {}),
    log: () => control('log'),
    stats: () => control('stats'),
    stop: () => new Promise((resolve) => {
      if (child.exitCode !== null) return resolve();
      child.once('exit', resolve);
      child.kill('SIGTERM');
    }),
  };
}

/** Starts the built Worker (BUILD_DIR, normally build/) in workerd with the given variables. */
export async function startWorker(vars = {}, { persistDir } = {}) {
  const logs = [];
  const collect = (stream) => {
    createInterface({ input: stream }).on('line', (line) => logs.push(line));
  };
  const mf = new Miniflare({
    scriptPath: path.join(BUILD_DIR, 'index.js'),
    modules: true,
    modulesRules: [{ type: 'CompiledWasm', include: ['**/*.wasm'], fallthrough: true }],
    compatibilityDate: '2026-04-20',
    bindings: vars,
    host: '127.0.0.1',
    port: 0,
    durableObjects: {
      LIMITER: { className: 'Limiter', useSQLite: true },
      UPSTREAM: { className: 'Upstream', useSQLite: true },
    },
    durableObjectsPersist: persistDir ?? false,
    handleRuntimeStdio(stdout, stderr) {
      collect(stdout);
      collect(stderr);
    },
  });
  const ready = await mf.ready;
  const url = ready.toString().replace(/\/$/, '');
  return { url, mf, logs, stop: () => mf.dispose() };
}

/** The variables of a Worker in front of `sim`, overridable per test. */
export function workerVars(sim, overrides = {}) {
  return {
    UPSTREAM_URL: sim.url,
    ANTHROPIC_API_KEY: UPSTREAM_KEY,
    CLIENT_KEYS: JSON.stringify({ [CLIENT_KEY]: { id: 'alice' } }),
    RATE_LIMITS: JSON.stringify({ default: {} }),
    BACKOFF_BASE_MS: '50',
    BACKOFF_MAX_MS: '400',
    ...overrides,
  };
}

export function messageBody(extra = {}) {
  return {
    model: 'claude-sonnet-5-5',
    max_tokens: 64,
    messages: [{ role: 'user', content: 'Hello there' }],
    ...extra,
  };
}

/** POST /v1/messages through the Worker with the test client key. */
export function postMessage(worker, body = messageBody(), headers = {}) {
  return fetch(`${worker.url}/v1/messages`, {
    method: 'POST',
    headers: {
      'content-type': 'application/json',
      'x-api-key': CLIENT_KEY,
      'anthropic-version': '2023-06-01',
      ...headers,
    },
    body: typeof body === 'string' ? body : JSON.stringify(body),
  });
}

/** Reads an SSE response, recording when each event arrived (ms since `t0`). */
export async function readEvents(res, t0 = performance.now()) {
  const events = [];
  const decoder = new TextDecoder();
  let buf = '';
  for await (const chunk of res.body) {
    buf += decoder.decode(chunk, { stream: true });
    let idx;
    while ((idx = buf.indexOf('\n\n')) >= 0) {
      const raw = buf.slice(0, idx);
      buf = buf.slice(idx + 2);
      const name = raw.match(/^event: (.*)$/m)?.[1] ?? 'message';
      const data = raw.match(/^data: (.*)$/m)?.[1] ?? '';
      events.push({ name, data, at: performance.now() - t0 });
    }
  }
  return events;
}

export const sleep = (ms) => new Promise((r) => setTimeout(r, ms));

/** The Worker's log line for the request that answered `res` (by its `request-id`). */
export async function logLineOf(worker, res) {
  const id = res.headers.get('request-id');
  for (let i = 0; i < 20; i += 1) {
    const line = worker.logs.filter((l) => l.startsWith('{')).map((l) => JSON.parse(l))
      .findLast((l) => l.request_id === id || l.upstream_request_id === id);
    if (line) return line;
    await sleep(25);
  }
  throw new Error(`no log line for ${id}`);
}

/** Mints an HS256 token the way a site's backend would (node:crypto only). */
export async function mintToken(secret, claims) {
  const { createHmac } = await import('node:crypto');
  const b64 = (v) => Buffer.from(typeof v === 'string' ? v : JSON.stringify(v)).toString('base64url');
  const head = `${b64({ alg: 'HS256', typ: 'JWT' })}.${b64(claims)}`;
  return `${head}.${createHmac('sha256', secret).update(head).digest('base64url')}`;
}
