// Hardening, end to end: configurations that used to be accepted and are now refused (naming
// only the variable to the public), the limits on signed tokens (audience, issuer,
// lifetime), the length of a model id, the allow-list of upstream response headers, and the
// keyed tag that names a caller in the log.
import { test, before, after } from 'node:test';
import assert from 'node:assert/strict';
import { createHash, createHmac } from 'node:crypto';
import {
  startSim, startWorker, workerVars, postMessage, messageBody, sleep, mintToken, CLIENT_KEY,
  UPSTREAM_KEY,
} from './harness.mjs';

// 32 bytes, the shortest JWT_SECRET accepted.
const JWT_SECRET = 'hardening-jwt-secret-0123456789a';
const AUDIENCE = 'https://chat.example';
const ISSUER = 'https://auth.example';

let sim;
let worker;

before(async () => {
  assert.equal(Buffer.byteLength(JWT_SECRET), 32);
  sim = await startSim();
  worker = await startWorker(workerVars(sim, {
    JWT_SECRET,
    JWT_AUDIENCE: AUDIENCE,
    JWT_ISSUER: ISSUER,
    JWT_MAX_LIFETIME_S: '600',
  }));
});

after(async () => {
  await worker?.stop();
  await sim?.stop();
});

test('bad configuration: a generic 500 naming the variable, the detail only in the log', async () => {
  const SHORT_SECRET = 'SENTINEL-short-jwt-secret-8Hq2';
  const cases = [
    // Item: RATE_LIMITS without a default tier left default callers unlimited.
    [{ RATE_LIMITS: JSON.stringify({ pro: { rpm: 5 } }) }, 'RATE_LIMITS', /default/],
    [{ RATE_LIMITS: '{}' }, 'RATE_LIMITS', /default/],
    [{ RATE_LIMITS: '{"default": {"rpm": "fifty"}}' }, 'RATE_LIMITS', /positive integers/],
    // serde_json's message for a float where an integer goes prints the float itself: the
    // module's own float printer only writes a placeholder (scripts/float-printer.mjs).
    [{ RATE_LIMITS: '{"default": {"rpm": 2.5}}' }, 'RATE_LIMITS', /invalid type: floating point `2\.5`, expected a nonzero u32/],
    // Item: an HS256 secret shorter than the hash.
    [{ JWT_SECRET: SHORT_SECRET }, 'JWT_SECRET', /32 bytes/],
    [{ JWT_MAX_LIFETIME_S: 'a week' }, 'JWT_MAX_LIFETIME_S', /seconds/],
    [{ JWT_AUDIENCE: 'chat\u0007' }, 'JWT_AUDIENCE', /control/],
    // Item: the upstream key in the clear to a host that is not this machine.
    [{ UPSTREAM_URL: sim.url.replace('127.0.0.1', 'upstream.example') }, 'UPSTREAM_URL', /loopback/],
    // Item: a client id shaped like a token's identity.
    [{ CLIENT_KEYS: JSON.stringify({ [CLIENT_KEY]: { id: 'token:alice' } }) }, 'CLIENT_KEYS', /reserved/],
    [{ CLIENT_KEYS: JSON.stringify({ [CLIENT_KEY]: { id: 'passthrough:0123' } }) }, 'CLIENT_KEYS', /reserved/],
  ];
  for (const [overrides, variable, detail] of cases) {
    const w = await startWorker(workerVars(sim, overrides));
    try {
      for (const [path, init] of [['/v1/messages', { method: 'POST', body: JSON.stringify(messageBody()) }], ['/healthz', {}]]) {
        const res = await fetch(`${w.url}${path}`, { ...init, headers: { 'x-api-key': CLIENT_KEY, 'content-type': 'application/json' } });
        assert.equal(res.status, 500, `${variable} on ${path}`);
        const text = await res.text();
        const body = JSON.parse(text);
        assert.equal(body.error.type, 'api_error');
        assert.equal(body.error.message, `the proxy is misconfigured: ${variable}`, `${variable} on ${path}`);
        assert.doesNotMatch(text, detail, `${variable}: the detail reached the public`);
        assert.ok(!text.includes(SHORT_SECRET));
      }
      await sleep(50);
      const line = w.logs.find((l) => l.includes('config_error'));
      assert.ok(line, `${variable}: no config_error line`);
      assert.equal(JSON.parse(line.slice(line.indexOf('{'))).variable, variable);
      assert.match(line, detail, `${variable}: the log line lacks the detail`);
      assert.ok(!w.logs.join('\n').includes(SHORT_SECRET), 'the short secret reached the log');
    } finally {
      await w.stop();
    }
  }
});

test('healthz reports a missing upstream key when managed callers are configured', async () => {
  const vars = workerVars(sim);
  delete vars.ANTHROPIC_API_KEY;
  const w = await startWorker(vars);
  try {
    const res = await fetch(`${w.url}/healthz`);
    assert.equal(res.status, 500);
    const body = await res.json();
    assert.equal(body.error.type, 'api_error');
    assert.match(body.error.message, /ANTHROPIC_API_KEY/);
  } finally {
    await w.stop();
  }
  // Passthrough only: nothing is missing.
  const passthrough = workerVars(sim, { ALLOW_PASSTHROUGH_KEYS: 'true' });
  delete passthrough.ANTHROPIC_API_KEY;
  delete passthrough.CLIENT_KEYS;
  const p = await startWorker(passthrough);
  try {
    assert.equal((await fetch(`${p.url}/healthz`)).status, 200);
  } finally {
    await p.stop();
  }
});

test('an explicit {"default": {}} is still unlimited', async () => {
  const w = await startWorker(workerVars(sim, { RATE_LIMITS: '{"default": {}, "pro": {"rpm": 1}}' }));
  try {
    for (let i = 0; i < 3; i++) assert.equal((await postMessage(w)).status, 200);
  } finally {
    await w.stop();
  }
});

test('signed tokens: audience, issuer and lifetime', async () => {
  const now = Math.floor(Date.now() / 1000);
  const good = { sub: 'hardening-user', aud: ['other', AUDIENCE], iss: ISSUER, exp: now + 300 };
  const send = async (claims) => postMessage(worker, messageBody(), { 'x-api-key': await mintToken(JWT_SECRET, claims) });

  assert.equal((await send(good)).status, 200);
  assert.equal((await send({ ...good, aud: AUDIENCE })).status, 200);
  for (const [name, claims, reason] of [
    ['no aud', { ...good, aud: undefined }, /audience/],
    ['another aud', { ...good, aud: 'https://evil.example' }, /audience/],
    ['no iss', { ...good, iss: undefined }, /issuer/],
    ['another iss', { ...good, iss: 'https://evil.example' }, /issuer/],
    ['an hour, above JWT_MAX_LIFETIME_S', { ...good, exp: now + 3600 }, /lifetime too long/],
    ['a year', { ...good, exp: now + 365 * 86400 }, /lifetime too long/],
  ]) {
    const res = await send(claims);
    assert.equal(res.status, 401, name);
    const body = await res.json();
    assert.equal(body.error.type, 'authentication_error', name);
    assert.match(body.error.message, reason, name);
  }
});

test('a model id over 256 bytes is a 400; 256 bytes go upstream', async () => {
  const before = (await sim.log()).length;
  const res = await postMessage(worker, messageBody({ model: 'm'.repeat(257) }));
  assert.equal(res.status, 400);
  const body = await res.json();
  assert.equal(body.error.type, 'invalid_request_error');
  assert.match(body.error.message, /256 bytes/);
  assert.equal((await sim.log()).length, before, 'the long model reached the upstream');

  await postMessage(worker, messageBody({ model: 'm'.repeat(256) }));
  const log = await sim.log();
  assert.equal(log.length, before + 1);
  assert.equal(JSON.parse(log.at(-1).body).model.length, 256);
});

test('upstream response headers: an allow-list', async () => {
  const upstreamHeaders = {
    'anthropic-organization-id': 'org-SENTINEL-4b1f',
    'anthropic-priority-input-tokens-limit': '1000',
    'anthropic-ratelimit-requests-remaining': '49',
    'anthropic-newly-added': 'kept',
    'x-internal-debug': 'trace-SENTINEL',
    'set-cookie': 'session=SENTINEL',
    'x-envoy-upstream-service-time': '12',
    'cache-control': 'no-cache',
  };
  const fault = { 'x-sim-fault': JSON.stringify({ headers: upstreamHeaders }) };
  // The upstream does send every one of them: the same request straight to the simulator.
  const direct = await fetch(`${sim.url}/v1/messages`, {
    method: 'POST',
    headers: { 'content-type': 'application/json', 'x-api-key': UPSTREAM_KEY, 'anthropic-version': '2023-06-01', ...fault },
    body: JSON.stringify(messageBody()),
  });
  assert.equal(direct.status, 200);
  await direct.text();
  for (const [name, value] of Object.entries(upstreamHeaders)) {
    assert.equal(direct.headers.get(name), value, `the simulator did not send ${name}`);
  }
  const res = await postMessage(worker, messageBody(), fault);
  assert.equal(res.status, 200);
  await res.text();
  assert.ok((await sim.log()).at(-1).headers['x-sim-fault'].includes('org-SENTINEL'), 'the fault did not reach the simulator');
  for (const name of ['anthropic-organization-id', 'anthropic-priority-input-tokens-limit', 'anthropic-ratelimit-requests-remaining', 'x-internal-debug', 'set-cookie', 'x-envoy-upstream-service-time']) {
    assert.equal(res.headers.get(name), null, `${name} reached the client`);
  }
  assert.ok(![...res.headers.values()].some((v) => v.includes('SENTINEL')));
  assert.match(res.headers.get('request-id'), /^req_/);
  assert.match(res.headers.get('content-type'), /application\/json/);
  assert.equal(res.headers.get('cache-control'), 'no-cache');
  assert.equal(res.headers.get('anthropic-newly-added'), 'kept');
});

test('the log names a caller by a keyed tag, never by a hash of its identity', async () => {
  const EMAIL = 'alice@example.com';
  const FINGERPRINT_KEY = 'hardening-fingerprint-key-0123456789';
  const CLIENT = 'ck_hardening_email_caller_01';
  // The object's name: plain SHA-256 of `identity ‖ 0 ‖ id`, 32 hex digits.
  const plain = createHash('sha256').update(`identity\0${EMAIL}`).digest('hex').slice(0, 32);
  const tagWith = (key) => createHmac('sha256', key).update(`caller\0${plain}`).digest('hex').slice(0, 32);
  const derived = createHmac('sha256', UPSTREAM_KEY).update('breakwater fingerprint key').digest();
  for (const [fingerprintKey, expected] of [[FINGERPRINT_KEY, tagWith(FINGERPRINT_KEY)], [undefined, tagWith(derived)]]) {
    const vars = workerVars(sim, { CLIENT_KEYS: JSON.stringify({ [CLIENT]: { id: EMAIL } }) });
    if (fingerprintKey) vars.FINGERPRINT_KEY = fingerprintKey;
    const w = await startWorker(vars);
    try {
      assert.equal((await postMessage(w, messageBody(), { 'x-api-key': CLIENT })).status, 200);
      let line;
      for (let i = 0; i < 50 && !line; i++) {
        line = w.logs.map((l) => l.slice(l.indexOf('{'))).find((l) => l.includes('"identity"'));
        if (!line) await sleep(20);
      }
      assert.ok(line, 'no request log line');
      const { identity } = JSON.parse(line);
      assert.notEqual(identity, plain, 'the log carries the unkeyed fingerprint');
      assert.equal(identity, expected);
      assert.ok(!w.logs.join('\n').includes(plain));
    } finally {
      await w.stop();
    }
  }
});
