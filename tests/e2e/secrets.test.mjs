// Secrets stay secret: distinctive client keys, an upstream key, a JWT secret and tokens, and
// a passthrough key go through every path (success, streaming, every error, 429s of both
// scopes, bad configuration), and none of them shows up anywhere it should not: in any
// header or body a client receives, in any line the Worker logs, in the Durable Objects'
// storage on disk; and the caller's credential never reaches the upstream.
import { test, before, after } from 'node:test';
import assert from 'node:assert/strict';
import { mkdtempSync, rmSync, readdirSync, readFileSync, statSync } from 'node:fs';
import { tmpdir } from 'node:os';
import path from 'node:path';
import {
  startSim, startWorker, messageBody, readEvents, sleep, mintToken,
} from './harness.mjs';

const CLIENT = 'ck_SENTINEL_client_Qm7Zr2Wx9Kp4';
const UPSTREAM = 'sk-ant-SENTINEL-upstream-Vb3Nt8Lc1Hs6';
const JWT_SECRET = 'SENTINEL-jwt-secret-Jd5Rf0Ya7Ue2';
const PASSTHROUGH = 'sk-ant-api03-SENTINEL-passthrough-Xo4Gi9Tk';
const NEAR_MISS = `${CLIENT}x`;

let sim;
let worker;
let persistDir;
const workers = [];
let token;
let tightToken;
let secrets;
/** Everything any client received: status line, every header, every body. */
const received = [];

function vars(overrides = {}) {
  return {
    UPSTREAM_URL: sim.url,
    ANTHROPIC_API_KEY: UPSTREAM,
    CLIENT_KEYS: JSON.stringify({ [CLIENT]: { id: 'secrets-caller' } }),
    JWT_SECRET,
    ALLOW_PASSTHROUGH_KEYS: 'true',
    ALLOWED_ORIGINS: 'https://chat.example',
    RATE_LIMITS: JSON.stringify({ default: { rpm: 1000, output_tpm: 100_000, concurrency: 8 }, tight: { rpm: 1 } }),
    MAX_BODY_BYTES: '20000',
    ATTEMPT_TIMEOUT_MS: '300',
    MAX_ATTEMPTS: '2',
    BACKOFF_BASE_MS: '20',
    BACKOFF_MAX_MS: '40',
    ...overrides,
  };
}

async function start(overrides, options) {
  const w = await startWorker(vars(overrides), options);
  workers.push(w);
  return w;
}

before(async () => {
  sim = await startSim();
  persistDir = mkdtempSync(path.join(tmpdir(), 'breakwater-secrets-'));
  worker = await start({}, { persistDir });
  const exp = Math.floor(Date.now() / 1000) + 300;
  token = await mintToken(JWT_SECRET, { sub: 'secrets-user', exp });
  tightToken = await mintToken(JWT_SECRET, { sub: 'secrets-tight-user', tier: 'tight', exp });
  secrets = {
    'client key': CLIENT,
    'near-miss key': NEAR_MISS,
    'upstream key': UPSTREAM,
    'JWT secret': JWT_SECRET,
    'passthrough key': PASSTHROUGH,
    token,
    'token signature': token.split('.')[2],
    'tight token': tightToken,
  };
});

after(async () => {
  for (const w of workers) await w.stop();
  await sim?.stop();
  if (persistDir) rmSync(persistDir, { recursive: true, force: true });
});

/** Sends a request and records all the client received. */
async function call(w, pathname, { method = 'POST', credential, body, headers = {} } = {}) {
  const auth = credential === undefined ? {} : credential.header === 'bearer'
    ? { authorization: `Bearer ${credential.value}` }
    : { 'x-api-key': credential.value };
  const res = await fetch(`${w.url}${pathname}`, {
    method,
    headers: { 'content-type': 'application/json', 'anthropic-version': '2023-06-01', ...auth, ...headers },
    body: method === 'GET' ? undefined : typeof body === 'string' ? body : JSON.stringify(body ?? messageBody()),
  });
  const text = res.headers.get('content-type')?.startsWith('text/event-stream')
    ? (await readEvents(res)).map((e) => `${e.name} ${e.data}`).join('\n')
    : await res.text().catch((e) => `<body failed: ${e.message}>`);
  received.push(`${res.status}\n${[...res.headers].map(([k, v]) => `${k}: ${v}`).join('\n')}\n\n${text}`);
  return { status: res.status, text };
}

const fault = (f) => ({ 'x-sim-fault': JSON.stringify(f) });

function assertNowhere(where, haystack) {
  for (const [name, secret] of Object.entries(secrets)) {
    assert.ok(!haystack.includes(secret), `the ${name} appeared in ${where}`);
  }
}

test('every path, with every kind of credential', async () => {
  const credentials = {
    'client key in x-api-key': { header: 'x-api-key', value: CLIENT },
    'client key as Bearer': { header: 'bearer', value: CLIENT },
    'signed token': { header: 'bearer', value: token },
    'passthrough key': { header: 'x-api-key', value: PASSTHROUGH },
  };
  for (const [kind, credential] of Object.entries(credentials)) {
    const expect = async (status, pathname, options) => {
      const res = await call(worker, pathname, { credential, ...options });
      assert.equal(res.status, status, `${kind}, ${pathname} ${JSON.stringify(options?.headers ?? {})}: ${res.text.slice(0, 200)}`);
      return res;
    };
    await expect(200, '/v1/messages');
    const stream = await expect(200, '/v1/messages', { body: messageBody({ stream: true }) });
    assert.match(stream.text, /message_stop/);
    await expect(200, '/v1/messages/count_tokens', { body: { model: 'm', messages: [{ role: 'user', content: 'hi' }] } });
    await expect(200, '/v1/models', { method: 'GET' });
    await expect(404, '/v1/models/no-such-model', { method: 'GET' });
    await expect(400, '/v1/messages', { body: '{"model": 5}' });
    await expect(413, '/v1/messages', { body: messageBody({ pad: 'x'.repeat(30_000) }) });
    await expect(403, '/v1/messages', { headers: { origin: 'https://evil.example' } });
    await expect(200, '/v1/messages', { headers: { origin: 'https://chat.example' } });
    await expect(404, '/v1/complete');
    await expect(405, '/v1/messages', { method: 'GET' });
    await expect(400, '/v1/messages', { headers: fault({ status: 400 }) });
    await expect(500, '/v1/messages', { headers: fault({ status: 500 }) });
    await expect(503, '/v1/messages', { body: messageBody({ model: `overloaded-${kind}` }), headers: fault({ status: 529 }) });
    await expect(504, '/v1/messages', { body: messageBody({ stream: true }), headers: fault({ hang: true }) });
    const cut = await expect(200, '/v1/messages', { body: messageBody({ stream: true }), headers: fault({ reset: 'after_headers', after_events: 2 }) });
    assert.match(cut.text, /api_error/);
    const stalled = await expect(200, '/v1/messages', { body: messageBody({ stream: true }), headers: fault({ stall_after_events: 3 }) });
    assert.match(stalled.text, /went silent/);
    await expect(200, '/v1/messages', { headers: fault({ malformed: 'json' }) });
  }
});

test('refused credentials', async () => {
  const exp = Math.floor(Date.now() / 1000) + 300;
  const forged = await mintToken('not-the-secret-at-all-000000000', { sub: 'secrets-user', exp });
  const expired = await mintToken(JWT_SECRET, { sub: 'secrets-user', exp: exp - 3600 });
  const unknownTier = await mintToken(JWT_SECRET, { sub: 'secrets-user', tier: 'gold', exp });
  secrets['forged token'] = forged;
  secrets['expired token'] = expired;
  secrets['unknown-tier token'] = unknownTier;
  for (const [name, options] of [
    ['near miss', { credential: { header: 'x-api-key', value: NEAR_MISS } }],
    ['near miss as Bearer', { credential: { header: 'bearer', value: NEAR_MISS } }],
    ['forged token', { credential: { header: 'bearer', value: forged } }],
    ['expired token', { credential: { header: 'bearer', value: expired } }],
    ['token of an undefined tier', { credential: { header: 'bearer', value: unknownTier } }],
    ['two different credentials', { credential: { header: 'x-api-key', value: CLIENT }, headers: { authorization: `Bearer ${token}` } }],
    ['a passthrough-looking key with a bad character', { credential: { header: 'x-api-key', value: `${PASSTHROUGH}!` } }],
  ]) {
    const res = await call(worker, '/v1/messages', options);
    assert.equal(res.status, 401, `${name}: ${res.status}`);
  }
  // The deployment's own upstream key presented by a caller is not a client key; with
  // passthrough off it is refused like any other.
  const strict = await start({ ALLOW_PASSTHROUGH_KEYS: 'false' });
  const res = await call(strict, '/v1/messages', { credential: { header: 'x-api-key', value: UPSTREAM } });
  assert.equal(res.status, 401);
});

test('429s of both scopes', async () => {
  // The caller's own limit (a token of the tier with rpm 1).
  const credential = { header: 'bearer', value: tightToken };
  assert.equal((await call(worker, '/v1/messages', { credential })).status, 200);
  const own = await call(worker, '/v1/messages', { credential });
  assert.equal(own.status, 429);
  assert.equal(JSON.parse(own.text).limit.scope, 'key');
  // The upstream's, outlasting the budget: for the managed key, then a passthrough key.
  for (const value of [CLIENT, PASSTHROUGH]) {
    const res = await call(worker, '/v1/messages', {
      credential: { header: 'x-api-key', value },
      headers: { 'x-proxy-budget-ms': '200', ...fault({ status: 429, headers: { 'retry-after': '30' } }) },
    });
    assert.equal(res.status, 429);
    assert.equal(JSON.parse(res.text).limit.scope, 'upstream');
    // And the cooldown that follows, answered without the upstream.
    const again = await call(worker, '/v1/messages', { credential: { header: 'x-api-key', value }, headers: { 'x-proxy-budget-ms': '200' } });
    assert.equal(again.status, 429);
  }
});

test('an unreachable upstream and bad configuration', async () => {
  const unreachable = await start({ UPSTREAM_URL: 'http://127.0.0.1:9' });
  for (const value of [CLIENT, PASSTHROUGH, token]) {
    const res = await call(unreachable, '/v1/messages', { credential: { header: 'bearer', value } });
    assert.equal(res.status, 502);
  }
  for (const [overrides, variable] of [
    [{ RATE_LIMITS: '{"default": {"rpm": "fifty"}}' }, 'RATE_LIMITS'],
    [{ CLIENT_KEYS: JSON.stringify({ [CLIENT]: { id: 'a', tier: 'gold' } }) }, 'CLIENT_KEYS'],
    [{ CLIENT_KEYS: `{"${CLIENT}": {"id": }` }, 'CLIENT_KEYS'],
    [{ CLIENT_KEYS: JSON.stringify({ [CLIENT]: { id: 'a', key: CLIENT } }) }, 'CLIENT_KEYS'],
    [{ CLIENT_KEYS: JSON.stringify({ [CLIENT]: CLIENT }) }, 'CLIENT_KEYS'],
    [{ UPSTREAM_URL: `https://${UPSTREAM}@api.example` }, 'UPSTREAM_URL'],
    [{ ALLOW_PASSTHROUGH_KEYS: JWT_SECRET }, 'ALLOW_PASSTHROUGH_KEYS'],
    [{ MAX_ATTEMPTS: UPSTREAM }, 'MAX_ATTEMPTS'],
  ]) {
    const w = await start(overrides);
    for (const value of [CLIENT, token, PASSTHROUGH]) {
      const res = await call(w, '/v1/messages', { credential: { header: 'x-api-key', value } });
      assert.equal(res.status, 500, `${variable}: ${res.status}`);
      assert.match(JSON.parse(res.text).error.message, new RegExp(variable));
    }
  }
  const keyless = vars();
  delete keyless.ANTHROPIC_API_KEY;
  const w = await startWorker(keyless);
  workers.push(w);
  assert.equal((await call(w, '/v1/messages', { credential: { header: 'x-api-key', value: CLIENT } })).status, 500);
});

test('none of it appears anywhere', async () => {
  await sleep(300); // settlements and their log lines
  assert.ok(received.length > 100, `only ${received.length} answers recorded`);
  console.log(`# ${received.length} answers, ${workers.length} Workers' logs, ${(await sim.log()).length} upstream requests checked`);
  for (const answer of received) assertNowhere(`an answer:\n${answer.slice(0, 300)}`, answer);
  for (const w of workers) {
    assert.ok(w.logs.length > 0);
    assertNowhere('a Worker log line', w.logs.join('\n'));
  }

  // The upstream saw the upstream key (or the caller's own passthrough key), never a
  // client key, a token or the JWT secret, in any header or body.
  const log = await sim.log();
  assert.ok(log.length > 50);
  for (const entry of log) {
    const seen = JSON.stringify(entry.headers) + entry.body;
    for (const name of ['client key', 'near-miss key', 'JWT secret', 'token', 'token signature', 'tight token']) {
      assert.ok(!seen.includes(secrets[name]), `the ${name} reached the upstream`);
    }
    assert.equal(entry.headers.authorization, undefined);
    assert.ok([UPSTREAM, PASSTHROUGH].includes(entry.headers['x-api-key']), `upstream got x-api-key ${entry.headers['x-api-key']}`);
  }
  assert.ok(log.some((e) => e.headers['x-api-key'] === PASSTHROUGH), 'no passthrough request was seen');

  // The Durable Objects' storage on disk: names are fingerprints, state has no keys.
  await worker.stop();
  workers.splice(workers.indexOf(worker), 1);
  const files = [];
  const walk = (dir) => {
    for (const name of readdirSync(dir)) {
      const p = path.join(dir, name);
      if (statSync(p).isDirectory()) walk(p);
      else files.push(p);
    }
  };
  walk(persistDir);
  assert.ok(files.length > 0, 'nothing was persisted');
  for (const file of files) {
    const bytes = readFileSync(file).toString('latin1');
    assertNowhere(`stored file ${path.relative(persistDir, file)}`, `${file}\n${bytes}`);
  }
});
