// Browsers: preflights, the CORS grant on every answer (429s included), refused origins.
import { test, before, after } from 'node:test';
import assert from 'node:assert/strict';
import { startSim, startWorker, workerVars, postMessage, messageBody } from './harness.mjs';

const SITE = 'https://chat.example';
let sim;
let worker;

before(async () => {
  sim = await startSim();
  worker = await startWorker(workerVars(sim, {
    ALLOWED_ORIGINS: `${SITE}, http://localhost:5173`,
    RATE_LIMITS: JSON.stringify({ default: { rpm: 1 } }),
  }));
});

after(async () => {
  await worker?.stop();
  await sim?.stop();
});

const CONTRACT_EXPOSED = ['retry-after', 'retry-after-ms', 'ratelimit', 'ratelimit-policy', 'request-id', 'x-proxy-attempts', 'x-should-retry'];

function assertGrant(res, origin = SITE) {
  assert.equal(res.headers.get('access-control-allow-origin'), origin);
  const exposed = res.headers.get('access-control-expose-headers').toLowerCase().split(',').map((h) => h.trim());
  for (const h of CONTRACT_EXPOSED) assert.ok(exposed.includes(h), `${h} not exposed`);
  assert.match(res.headers.get('vary'), /Origin/);
}

test('a preflight from an allowed origin is granted what it asks', async () => {
  const res = await fetch(`${worker.url}/v1/messages`, {
    method: 'OPTIONS',
    headers: {
      origin: SITE,
      'access-control-request-method': 'POST',
      'access-control-request-headers': 'content-type, x-api-key, anthropic-version, anthropic-beta, x-proxy-budget-ms, authorization',
    },
  });
  assert.equal(res.status, 204);
  assert.equal(res.headers.get('access-control-allow-origin'), SITE);
  assert.match(res.headers.get('access-control-allow-methods'), /POST/);
  const allowed = res.headers.get('access-control-allow-headers').toLowerCase();
  for (const h of ['content-type', 'x-api-key', 'authorization', 'anthropic-version', 'anthropic-beta', 'x-proxy-budget-ms']) {
    assert.ok(allowed.includes(h), `${h} not allowed`);
  }
  assert.ok(Number(res.headers.get('access-control-max-age')) > 0);
  assert.match(res.headers.get('vary'), /Origin/);
});

test('a preflight from another origin is refused without a grant', async () => {
  const res = await fetch(`${worker.url}/v1/messages`, {
    method: 'OPTIONS',
    headers: { origin: 'https://evil.example', 'access-control-request-method': 'POST' },
  });
  assert.equal(res.status, 403);
  assert.equal(res.headers.get('access-control-allow-origin'), null);
  assert.equal((await res.json()).error.type, 'permission_error');
});

test('answers and errors alike carry the grant, so page code can read a 429', async () => {
  const ok = await postMessage(worker, messageBody(), { origin: SITE });
  assert.equal(ok.status, 200);
  assertGrant(ok);
  const limited = await postMessage(worker, messageBody(), { origin: SITE });
  assert.equal(limited.status, 429);
  assertGrant(limited);
  assert.ok(Number(limited.headers.get('retry-after')) >= 1);
  const unauthorized = await postMessage(worker, messageBody(), { origin: 'http://localhost:5173', 'x-api-key': 'wrong' });
  assert.equal(unauthorized.status, 401);
  assertGrant(unauthorized, 'http://localhost:5173');
  const missing = await fetch(`${worker.url}/nope`, { headers: { origin: SITE } });
  assert.equal(missing.status, 404);
  assertGrant(missing);
});

test('requests without Origin are not browsers and need no grant', async () => {
  const res = await fetch(`${worker.url}/healthz`);
  assert.equal(res.status, 200);
  assert.equal(res.headers.get('access-control-allow-origin'), null);
});

test('ALLOWED_ORIGINS=* grants any origin', async () => {
  const w = await startWorker(workerVars(sim, { ALLOWED_ORIGINS: '*' }));
  try {
    const res = await postMessage(w, messageBody(), { origin: 'https://anything.example' });
    assert.equal(res.status, 200);
    assertGrant(res, 'https://anything.example');
  } finally {
    await w.stop();
  }
});
