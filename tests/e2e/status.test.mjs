// The operator's view, GET /proxy/status: only for ADMIN_KEY (a 404 without one), a stable
// shape, what an overload and the key's own limits look like in it, a caller's usage, no
// secret anywhere in it, and the same CORS rule as every route. And METRICS: one Analytics
// Engine data point per request.
import { test, before, after } from 'node:test';
import assert from 'node:assert/strict';
import path from 'node:path';
import { Miniflare } from 'miniflare';
import {
  startSim, startWorker, workerVars, postMessage, messageBody, mintToken, readEvents, sleep, ROOT, CLIENT_KEY, UPSTREAM_KEY,
} from './harness.mjs';

const ADMIN_KEY = 'adm_status_e2e_4c1d9e7f2a';
const JWT_SECRET = 'status-e2e-jwt-secret-0123456789abcdef';
const ORIGIN = 'https://ops.example.com';

let sim;
before(async () => { sim = await startSim(); });
after(async () => { await sim?.stop(); });

const getStatus = (worker, { key = ADMIN_KEY, query = '', headers = {} } = {}) =>
  fetch(`${worker.url}/proxy/status${query}`, {
    headers: { ...(key === null ? {} : { authorization: `Bearer ${key}` }), ...headers },
  });

async function status(worker, query = '') {
  const res = await getStatus(worker, { query });
  assert.equal(res.status, 200, await res.clone().text());
  return res.json();
}

const poolOf = (doc, name = 'messages:claude-sonnet-5') =>
  doc.upstream_keys[0].state.pools.find((p) => p.pool === name);

test('without ADMIN_KEY the route does not exist; with one, only that key opens it', async () => {
  const plain = await startWorker(workerVars(sim));
  try {
    const res = await getStatus(plain);
    assert.equal(res.status, 404);
    assert.equal((await res.json()).error.type, 'not_found_error');
  } finally {
    await plain.stop();
  }
  const worker = await startWorker(workerVars(sim, { ADMIN_KEY }));
  try {
    for (const [key, headers] of [
      [null, {}],
      [`${ADMIN_KEY}x`, {}],
      [CLIENT_KEY, {}],
      [UPSTREAM_KEY, {}],
      [null, { 'x-api-key': ADMIN_KEY }],
    ]) {
      const res = await getStatus(worker, { key, headers });
      assert.equal(res.status, 401, `key ${key} ${JSON.stringify(headers)}`);
      const body = await res.json();
      assert.equal(body.type, 'error');
      assert.equal(body.error.type, 'authentication_error');
      assert.ok(body.request_id);
    }
    // Not a proxied route: a client key gets no further than a 401 either.
    const res = await fetch(`${worker.url}/proxy/status`, { headers: { 'x-api-key': CLIENT_KEY } });
    assert.equal(res.status, 401);
    assert.equal((await getStatus(worker)).status, 200);
    const wrongMethod = await fetch(`${worker.url}/proxy/status`, { method: 'POST', headers: { authorization: `Bearer ${ADMIN_KEY}` } });
    assert.equal(wrongMethod.status, 405);
    const bad = await getStatus(worker, { key: 'short' });
    assert.equal(bad.status, 401);
  } finally {
    await worker.stop();
  }
  // An ADMIN_KEY too short to be a key is refused as configuration, naming only the variable.
  const weak = await startWorker(workerVars(sim, { ADMIN_KEY: 'admin' }));
  try {
    const res = await getStatus(weak, { key: 'admin' });
    assert.equal(res.status, 500);
    assert.match((await res.json()).error.message, /ADMIN_KEY/);
  } finally {
    await weak.stop();
  }
});

test('the shape: each configured upstream key by fingerprint, its pools, and this isolate\'s answers', async () => {
  await sim.reset();
  await sim.mode({ key_limits: { rpm: 120, input_tpm: 100000, output_tpm: 20000 } });
  const worker = await startWorker(workerVars(sim, { ADMIN_KEY }));
  try {
    for (let i = 0; i < 3; i++) {
      const res = await postMessage(worker);
      assert.equal(res.status, 200);
      await res.arrayBuffer();
    }
    const doc = await status(worker);
    assert.equal(typeof doc.version, 'string');
    assert.ok(Math.abs(doc.at_ms - Date.now()) < 5000);
    assert.deepEqual(doc.fallbacks, [], 'no MODEL_FALLBACKS, none listed');
    assert.equal(doc.upstream_keys.length, 1);
    const key = doc.upstream_keys[0];
    assert.match(key.key, /^[0-9a-f]{32}$/);
    assert.equal(key.source, 'ANTHROPIC_API_KEY');
    assert.equal(key.error, undefined);
    assert.deepEqual(Object.keys(key.state).sort(), ['at_ms', 'cooldown_remaining_ms', 'pools', 'retry_budget']);
    assert.deepEqual(Object.keys(key.state.retry_budget).sort(), ['allowance', 'requests', 'retries']);
    // The happy path never asks the object, so it knows nothing yet: but the edge counted.
    assert.deepEqual(Object.keys(doc.edge).sort(), [
      'answers', 'attempts', 'in_flight', 'requests', 'since_ms', 'upstream_overloaded', 'upstream_rate_limited',
      'wait_ms', 'waited', 'waiting', 'waits', 'wasm_memory_bytes',
    ]);
    assert.ok(doc.edge.wasm_memory_bytes >= 65_536 && doc.edge.wasm_memory_bytes % 65_536 === 0, String(doc.edge.wasm_memory_bytes));
    assert.equal(doc.edge.answers.success, 3);
    assert.equal(doc.edge.requests, 3, 'the status requests themselves are not traffic');
    assert.equal(doc.edge.in_flight, 0);
    assert.equal(doc.edge.attempts, 3);
    assert.equal(doc.caller, undefined);
    assert.equal((await getStatus(worker)).headers.get('cache-control'), 'no-store');

    // Near the key's own limit (under 25 % left), edges ask, and the pool shows the limits.
    await sim.mode({ key_limits: { rpm: 120, initial_fill: 0.2 } });
    for (let i = 0; i < 3; i++) await (await postMessage(worker)).arrayBuffer();
    const near = await status(worker);
    const pool = poolOf(near);
    assert.ok(pool, JSON.stringify(near.upstream_keys[0].state));
    assert.deepEqual(Object.keys(pool).sort(), [
      'callers', 'cooldown_remaining_ms', 'learned_rate_rps', 'limits', 'overload_streak', 'phase', 'pool', 'probe',
      'release_ends_in_ms', 'served_last_s', 'waiting',
    ]);
    assert.deepEqual(pool.callers, [], 'nobody waits a turn');
    assert.equal(pool.phase, 'healthy');
    const rpm = pool.limits.find((l) => l.dimension === 'requests');
    assert.equal(rpm.limit, 120);
    assert.ok(rpm.remaining < 30, JSON.stringify(rpm));
    assert.deepEqual(Object.keys(pool.waiting).sort(), ['overloaded', 'queued', 'scheduled']);
    assert.deepEqual(Object.keys(pool.probe).sort(), ['failed', 'in_flight', 'next_in_ms']);
  } finally {
    await worker.stop();
    await sim.mode({ key_limits: null });
  }
});

test('after a scripted overload the status shows it, and then the recovery', { timeout: 60_000 }, async () => {
  await sim.reset();
  // Attempts spread over more than half a second, so the streak of 529s marks the model.
  // A fallback configured for another model of the same pool (the requests name
  // claude-sonnet-5 and never fall back), to see it in force while the pool is overloaded.
  const worker = await startWorker(workerVars(sim, {
    ADMIN_KEY, MAX_ATTEMPTS: '6', REQUEST_BUDGET_MS: '6000', BACKOFF_BASE_MS: '200', BACKOFF_MAX_MS: '1000',
    MODEL_FALLBACKS: JSON.stringify({ 'claude-sonnet-5-1': ['claude-haiku-5-5'] }),
  }));
  try {
    await sim.mode({ overload_probability: 1, seed: 3 });
    const pending = Array.from({ length: 8 }, () => postMessage(worker).then(async (r) => ({ status: r.status, body: await r.text() })));
    // While they wait: the pool is overloaded, requests are waiting, a probe is planned.
    let during;
    for (let i = 0; i < 40; i++) {
      await sleep(100);
      const doc = await status(worker);
      const pool = poolOf(doc);
      if (pool?.phase === 'overloaded' && pool.waiting.overloaded > 0 && doc.edge.in_flight > 0) {
        during = doc;
        break;
      }
    }
    assert.ok(during, 'the status never showed the overload');
    assert.deepEqual(during.fallbacks, [
      { model: 'claude-sonnet-5-1', to: ['claude-haiku-5-5'], in_force: true, phase: 'overloaded' },
    ]);
    const pool = poolOf(during);
    assert.equal(pool.overload_streak, 0, 'marked: the streak is spent');
    assert.ok(pool.probe.in_flight || pool.probe.next_in_ms !== null, JSON.stringify(pool.probe));
    assert.ok(during.edge.upstream_overloaded >= 5, JSON.stringify(during.edge));
    assert.ok(during.edge.waits >= 5, JSON.stringify(during.edge));
    assert.ok(during.upstream_keys[0].state.retry_budget.requests >= 1);
    const answers = await Promise.all(pending);
    assert.ok(answers.every((a) => a.status === 503), answers.map((a) => a.status).join());
    const after = await status(worker);
    assert.equal(after.edge.answers.overloaded, 8);
    assert.equal(after.edge.in_flight, 0);
    assert.equal(after.edge.waiting, 0);
    assert.ok(after.edge.waited >= 1 && after.edge.wait_ms > 0, JSON.stringify(after.edge));

    // Back to normal: the next probe gets through, and the pool recovers.
    await sim.mode({ overload_probability: null });
    let recovered;
    for (let i = 0; i < 60 && !recovered; i++) {
      const res = await postMessage(worker);
      await res.arrayBuffer();
      const doc = await status(worker);
      const phase = poolOf(doc)?.phase ?? 'healthy';
      if (res.status === 200 && phase !== 'overloaded') recovered = doc;
      else await sleep(200);
    }
    assert.ok(recovered, 'never recovered');
    assert.ok(recovered.edge.answers.success >= 1);
  } finally {
    await worker.stop();
  }
});

test('?caller= adds that caller\'s usage against its tier, for client keys and tokens alike', async () => {
  await sim.reset();
  const worker = await startWorker(workerVars(sim, {
    ADMIN_KEY,
    JWT_SECRET,
    CLIENT_KEYS: JSON.stringify({ [CLIENT_KEY]: { id: 'alice', tier: 'pro' } }),
    RATE_LIMITS: JSON.stringify({ default: { rpm: 5 }, pro: { rpm: 20, output_tpm: 10000, concurrency: 3 } }),
  }));
  try {
    for (let i = 0; i < 2; i++) await (await postMessage(worker)).arrayBuffer();
    const doc = await status(worker, '?caller=alice');
    assert.equal(doc.caller.id, 'alice');
    assert.equal(doc.caller.kind, 'client_key');
    assert.equal(doc.caller.tier, 'pro');
    assert.match(doc.caller.identity, /^[0-9a-f]{32}$/);
    const usage = doc.caller.usage;
    assert.equal(usage.idle, false);
    assert.deepEqual(usage.limits, { rpm: 20, input_tpm: null, output_tpm: 10000, concurrency: 3 });
    const dim = (name) => usage.dimensions.find((d) => d.dimension === name);
    assert.equal(dim('rpm').remaining, 18);
    assert.equal(dim('concurrency').remaining, 3, 'slots are back once the answers are settled');
    // Settled with the real usage: 64 reserved per request, 12 used.
    assert.ok(dim('output_tpm').remaining >= 10000 - 2 * 12 - 1, JSON.stringify(dim('output_tpm')));

    // A token's user: token:<sub>, measured by the tier its object was last used with.
    const now = Math.floor(Date.now() / 1000);
    const token = await mintToken(JWT_SECRET, { sub: 'bob', tier: 'default', exp: now + 600 });
    const res = await postMessage(worker, messageBody(), { 'x-api-key': token });
    assert.equal(res.status, 200);
    await res.arrayBuffer();
    const bob = (await status(worker, '?caller=token%3Abob')).caller;
    assert.equal(bob.kind, 'token');
    assert.equal(bob.tier, undefined);
    assert.equal(bob.usage.limits.rpm, 5);
    assert.equal(bob.usage.dimensions.find((d) => d.dimension === 'rpm').remaining, 4);
    // Someone never seen: an idle, empty answer, and nothing stored for asking.
    const nobody = (await status(worker, '?caller=nobody')).caller;
    assert.equal(nobody.kind, 'unknown');
    assert.equal(nobody.usage.idle, true);
    assert.equal((await getStatus(worker, { query: '?caller=%zz' })).status, 400);
  } finally {
    await worker.stop();
  }
});

test('no secret appears in the status, whatever it shows', async () => {
  await sim.reset();
  const worker = await startWorker(workerVars(sim, {
    ADMIN_KEY,
    JWT_SECRET,
    ALLOW_PASSTHROUGH_KEYS: 'true',
    RATE_LIMITS: JSON.stringify({ default: { rpm: 50 } }),
  }));
  const own = 'sk-ant-caller-own-key-0123456789';
  try {
    await sim.script([{ status: 529 }, { status: 429, headers: { 'retry-after': '1' } }]);
    await (await postMessage(worker)).arrayBuffer();
    await (await postMessage(worker, messageBody(), { 'x-api-key': own })).arrayBuffer();
    const token = await mintToken(JWT_SECRET, { sub: 'carol', exp: Math.floor(Date.now() / 1000) + 600 });
    await (await postMessage(worker, messageBody(), { 'x-api-key': token })).arrayBuffer();
    for (const query of ['', '?caller=alice', '?caller=token%3Acarol', `?caller=${encodeURIComponent(own)}`]) {
      const text = await (await getStatus(worker, { query })).text();
      for (const secret of [ADMIN_KEY, UPSTREAM_KEY, CLIENT_KEY, JWT_SECRET, own, token]) {
        assert.ok(!text.includes(secret), `${query}: the status shows a secret`);
      }
    }
  } finally {
    await worker.stop();
  }
});

test('CORS: only an allowed origin is granted, as on every route', async () => {
  const worker = await startWorker(workerVars(sim, { ADMIN_KEY, ALLOWED_ORIGINS: ORIGIN }));
  try {
    const denied = await getStatus(worker, { headers: { origin: 'https://evil.example' } });
    assert.equal(denied.status, 403);
    assert.equal(denied.headers.get('access-control-allow-origin'), null);
    assert.equal((await denied.json()).error.type, 'permission_error');
    const granted = await getStatus(worker, { headers: { origin: ORIGIN } });
    assert.equal(granted.status, 200);
    assert.equal(granted.headers.get('access-control-allow-origin'), ORIGIN);
    const preflight = await fetch(`${worker.url}/proxy/status`, {
      method: 'OPTIONS',
      headers: { origin: ORIGIN, 'access-control-request-method': 'GET', 'access-control-request-headers': 'authorization' },
    });
    assert.equal(preflight.status, 204);
    assert.match(preflight.headers.get('access-control-allow-headers') ?? '', /authorization/i);
    const wrong = await getStatus(worker, { key: 'nope-nope-nope-nope', headers: { origin: ORIGIN } });
    assert.equal(wrong.status, 401);
    assert.equal(wrong.headers.get('access-control-allow-origin'), ORIGIN, 'an allowed page can read the 401');
  } finally {
    await worker.stop();
  }
  // No ALLOWED_ORIGINS: no browser at all.
  const closed = await startWorker(workerVars(sim, { ADMIN_KEY }));
  try {
    const res = await getStatus(closed, { headers: { origin: ORIGIN } });
    assert.equal(res.status, 403);
    assert.equal(res.headers.get('access-control-allow-origin'), null);
  } finally {
    await closed.stop();
  }
});

/**
 * The Worker with a METRICS binding that records what it is given. Miniflare's own Analytics
 * Engine binding accepts data points and drops them, so the test binds a wrapped binding of
 * the same shape (`writeDataPoint`) that hands each point to this process.
 */
async function startWorkerWithMetrics(vars) {
  const points = [];
  const mf = new Miniflare({
    host: '127.0.0.1',
    port: 0,
    workers: [
      {
        name: 'breakwater',
        scriptPath: path.join(ROOT, 'build/index.js'),
        modules: true,
        modulesRules: [{ type: 'CompiledWasm', include: ['**/*.wasm'], fallthrough: true }],
        compatibilityDate: '2026-04-20',
        bindings: vars,
        durableObjects: {
          LIMITER: { className: 'Limiter', useSQLite: true },
          UPSTREAM: { className: 'Upstream', useSQLite: true },
        },
        wrappedBindings: { METRICS: { scriptName: 'metrics-sink' } },
      },
      {
        name: 'metrics-sink',
        modules: true,
        script: `export default function (env) {
          return { writeDataPoint(point) { env.SINK.fetch('http://sink/', { method: 'POST', body: JSON.stringify(point) }); } };
        }`,
        serviceBindings: { SINK: async (req) => { points.push(await req.json()); return new Response('ok'); } },
      },
    ],
    handleRuntimeStdio() {},
  });
  const url = (await mf.ready).toString().replace(/\/$/, '');
  return { url, points, stop: () => mf.dispose() };
}

test('METRICS: one data point per request, in the documented layout, tokens included', { timeout: 60_000 }, async () => {
  await sim.reset();
  const worker = await startWorkerWithMetrics(workerVars(sim, {
    ADMIN_KEY,
    CLIENT_KEYS: JSON.stringify({ [CLIENT_KEY]: { id: 'alice', tier: 'pro' } }),
    RATE_LIMITS: JSON.stringify({ default: { rpm: 50 }, pro: { rpm: 3, output_tpm: 10000 } }),
    MAX_ATTEMPTS: '2',
    BACKOFF_BASE_MS: '20',
    BACKOFF_MAX_MS: '40',
  }));
  const until = async (n) => {
    for (let i = 0; i < 100 && worker.points.length < n; i++) await sleep(50);
    return worker.points;
  };
  try {
    const plain = await postMessage(worker);
    assert.equal(plain.status, 200);
    await plain.arrayBuffer();
    const streamed = await postMessage(worker, messageBody({ stream: true, model: 'claude-haiku-5-5' }));
    await readEvents(streamed);
    // The first 529 asks for 25 ms, so the wait between the attempts is never a jitter of 0.
    await sim.script([{ status: 529, headers: { 'retry-after-ms': '25' } }, { status: 529 }]);
    const overloaded = await postMessage(worker);
    assert.equal(overloaded.status, 503);
    await overloaded.arrayBuffer();
    const limited = await postMessage(worker);
    assert.equal(limited.status, 429);
    await limited.arrayBuffer();
    // The operator's own polling is not traffic: no point for it.
    assert.equal((await getStatus(worker)).status, 200);
    const points = await until(4);
    await sleep(200);
    assert.equal(points.length, 4, JSON.stringify(points));
    const byKind = Object.fromEntries(points.map((p) => [`${p.blobs[1]}:${p.blobs[3]}`, p]));
    const alice = points[0].indexes[0];
    assert.match(alice, /^[0-9a-f]{32}$/);
    for (const p of points) {
      assert.deepEqual(p.indexes, [alice]);
      assert.equal(p.blobs.length, 7);
      assert.equal(p.doubles.length, 10);
      assert.equal(p.blobs[0], 'messages');
      assert.equal(p.blobs[5], 'pro');
      assert.equal(p.blobs[6], alice);
      assert.ok(p.doubles[3] >= 0, 'total ms');
    }
    const ok = byKind['claude-sonnet-5-5:success'];
    assert.ok(ok, JSON.stringify(points.map((p) => p.blobs)));
    assert.equal(ok.blobs[2], 'claude-sonnet-5-5', 'served by the model asked');
    assert.deepEqual(ok.doubles.slice(0, 2), [200, 1]);
    assert.equal(ok.doubles[5], 12, 'the output tokens the upstream reported');
    assert.ok(ok.doubles[4] > 0, 'input tokens');
    assert.equal(ok.doubles[8], 0);
    // Its cost at claude-sonnet-5-5's price, $2 in and $10 out per MTok: micro-dollars per token.
    assert.equal(ok.doubles[9], ok.doubles[4] * 2 + 12 * 10, 'the cost in micro-dollars');
    const sse = byKind['claude-haiku-5-5:success'];
    assert.equal(sse.doubles[8], 1, 'a stream');
    assert.equal(sse.doubles[5], 12, 'output tokens read from the stream');
    // claude-haiku-5-5: $0.10 in and $0.50 out per MTok, rounded up once.
    assert.equal(sse.doubles[9], Math.ceil((sse.doubles[4] * 100_000 + 12 * 500_000) / 1e6), 'the stream\'s cost');
    const shed = byKind['claude-sonnet-5-5:overloaded'];
    assert.equal(shed.blobs[4], 'overloaded_error');
    assert.deepEqual([shed.doubles[0], shed.doubles[1], shed.doubles[6]], [503, 2, 2], 'two attempts, two 529s');
    assert.ok(shed.doubles[2] > 0, 'it waited between them');
    assert.equal(shed.doubles[5], 0, 'no tokens');
    assert.equal(shed.doubles[9], 0, 'no cost');
    const refused = byKind['claude-sonnet-5-5:caller_limit'];
    assert.equal(refused.blobs[4], 'rate_limit_error');
    assert.deepEqual([refused.doubles[0], refused.doubles[1]], [429, 0]);
    const text = JSON.stringify(points);
    for (const secret of [ADMIN_KEY, UPSTREAM_KEY, CLIENT_KEY]) assert.ok(!text.includes(secret));
  } finally {
    await worker.stop();
  }
});
