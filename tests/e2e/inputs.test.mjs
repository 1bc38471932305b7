// Bad input end to end: every row of the contract's "Bad input", and the inputs around it
// (bodies that are not UTF-8 or nest too deeply, content types that are not JSON, two
// credentials at once, enormous headers, odd Unicode and control characters in keys and
// origins). Each gets the Anthropic envelope with the right status, and the Worker keeps
// serving. Requests a fetch client cannot send are written on a raw socket.
import { test, before, after } from 'node:test';
import assert from 'node:assert/strict';
import net from 'node:net';
import {
  startSim, startWorker, workerVars, postMessage, messageBody, sleep, mintToken, CLIENT_KEY,
} from './harness.mjs';

const MAX_BODY = 100_000;
let sim;
let worker;

before(async () => {
  sim = await startSim();
  worker = await startWorker(workerVars(sim, {
    ALLOWED_ORIGINS: 'https://chat.example',
    MAX_BODY_BYTES: String(MAX_BODY),
    JWT_SECRET: 'jwt-secret-for-the-inputs-suite-01',
    RATE_LIMITS: JSON.stringify({ default: { rpm: 1000, concurrency: 8, output_tpm: 100_000 } }),
  }));
});

after(async () => {
  await worker?.stop();
  await sim?.stop();
});

const JSON_HEADERS = { 'x-api-key': CLIENT_KEY, 'content-type': 'application/json', 'anthropic-version': '2023-06-01' };
const GOOD = JSON.stringify(messageBody());

/** An HTTP/1.1 request written byte for byte; resolves to status, headers and body. */
function raw(head, body = Buffer.alloc(0), { method = 'POST', path = '/v1/messages', chunked = false } = {}) {
  const url = new URL(worker.url);
  const bodyBytes = Buffer.isBuffer(body) ? body : Buffer.from(body);
  const framing = chunked
    ? 'transfer-encoding: chunked\r\n'
    : `content-length: ${bodyBytes.length}\r\n`;
  const payload = chunked
    ? Buffer.concat([...chunksOf(bodyBytes, 16_384).flatMap((c) => [Buffer.from(`${c.length.toString(16)}\r\n`), c, Buffer.from('\r\n')]), Buffer.from('0\r\n\r\n')])
    : bodyBytes;
  const request = Buffer.concat([
    Buffer.from(`${method} ${path} HTTP/1.1\r\nhost: proxy.test\r\nconnection: close\r\n${framing}`, 'latin1'),
    Buffer.isBuffer(head) ? head : Buffer.from(head, 'utf8'),
    Buffer.from('\r\n'),
    payload,
  ]);
  return new Promise((resolve, reject) => {
    const socket = net.connect(Number(url.port), url.hostname, () => socket.end(request));
    const chunks = [];
    socket.on('data', (d) => chunks.push(d));
    // A runtime that refuses the head early may reset the connection while the rest is sent.
    socket.on('error', (e) => (chunks.length ? resolve(parse(Buffer.concat(chunks))) : reject(e)));
    socket.on('close', () => resolve(parse(Buffer.concat(chunks))));
  });
}

function chunksOf(buf, size) {
  const out = [];
  for (let i = 0; i < buf.length; i += size) out.push(buf.subarray(i, i + size));
  return out.length ? out : [buf];
}

function parse(response) {
  const split = response.indexOf('\r\n\r\n');
  const lines = response.subarray(0, split).toString('latin1').split('\r\n');
  const status = Number(lines[0].split(' ')[1]);
  const headers = new Map(lines.slice(1).map((l) => [l.slice(0, l.indexOf(':')).toLowerCase(), l.slice(l.indexOf(':') + 1).trim()]));
  let body = response.subarray(split + 4);
  if (headers.get('transfer-encoding') === 'chunked') {
    const parts = [];
    let at = 0;
    for (;;) {
      const eol = body.indexOf('\r\n', at);
      const size = parseInt(body.subarray(at, eol).toString(), 16);
      if (!size) break;
      parts.push(body.subarray(eol + 2, eol + 2 + size));
      at = eol + 2 + size + 2;
    }
    body = Buffer.concat(parts);
  }
  return { status, headers: { get: (name) => headers.get(name.toLowerCase()) ?? null }, text: body.toString('utf8') };
}

/** A fetch answer in the shape `raw` gives. */
async function viaFetch(path, init) {
  const res = await fetch(`${worker.url}${path}`, init);
  return { status: res.status, headers: res.headers, text: await res.text() };
}

/** The contract's envelope, with the right status and type. */
function assertEnvelope(name, res, status, type) {
  assert.equal(res.status, status, `${name}: status ${res.status}: ${res.text.slice(0, 200)}`);
  const body = JSON.parse(res.text);
  assert.equal(body.type, 'error', name);
  assert.equal(body.error.type, type, name);
  assert.ok(body.error.message.length > 0, name);
  assert.match(body.request_id, /^req_/, name);
  assert.equal(res.headers.get('request-id'), body.request_id, name);
  return body;
}

const deep = (n) => `${'['.repeat(n)}${']'.repeat(n)}`;

test('the contract\'s bad inputs: each its envelope and status', async () => {
  const post = (body, headers = JSON_HEADERS) => viaFetch('/v1/messages', { method: 'POST', headers, body });
  const cases = [
    ['not JSON', () => post('hello'), 400, 'invalid_request_error'],
    ['a JSON array', () => post('[1,2]'), 400, 'invalid_request_error'],
    ['a JSON string', () => post('"model"'), 400, 'invalid_request_error'],
    ['an empty body', () => post(''), 400, 'invalid_request_error'],
    ['truncated JSON', () => post('{"model": "m", '), 400, 'invalid_request_error'],
    ['no model', () => post('{"max_tokens": 5, "messages": []}'), 400, 'invalid_request_error'],
    ['no max_tokens', () => post('{"model": "m", "messages": []}'), 400, 'invalid_request_error'],
    ['max_tokens 0', () => post('{"model": "m", "max_tokens": 0}'), 400, 'invalid_request_error'],
    ['max_tokens negative', () => post('{"model": "m", "max_tokens": -1}'), 400, 'invalid_request_error'],
    ['max_tokens fractional', () => post('{"model": "m", "max_tokens": 1.5}'), 400, 'invalid_request_error'],
    ['max_tokens as a string', () => post('{"model": "m", "max_tokens": "64"}'), 400, 'invalid_request_error'],
    ['max_tokens astronomically large', () => post('{"model": "m", "max_tokens": 1e30}'), 400, 'invalid_request_error'],
    ['model not a string', () => post('{"model": 7, "max_tokens": 5}'), 400, 'invalid_request_error'],
    ['stream not a boolean', () => post('{"model": "m", "max_tokens": 5, "stream": "yes"}'), 400, 'invalid_request_error'],
    ['count_tokens body not an object', () => viaFetch('/v1/messages/count_tokens', { method: 'POST', headers: JSON_HEADERS, body: '[]' }), 400, 'invalid_request_error'],
    ['over MAX_BODY_BYTES (content-length)', () => post(JSON.stringify(messageBody({ pad: 'x'.repeat(MAX_BODY) }))), 413, 'request_too_large'],
    ['over MAX_BODY_BYTES (chunked, no length)', () => raw(`x-api-key: ${CLIENT_KEY}\r\ncontent-type: application/json\r\n`, JSON.stringify(messageBody({ pad: 'x'.repeat(MAX_BODY) })), { chunked: true }), 413, 'request_too_large'],
    ['wrong method on messages', () => viaFetch('/v1/messages', { method: 'GET', headers: JSON_HEADERS }), 405, 'invalid_request_error'],
    ['wrong method on models', () => viaFetch('/v1/models', { method: 'DELETE', headers: JSON_HEADERS }), 405, 'invalid_request_error'],
    ['no credential', () => post(GOOD, { 'content-type': 'application/json' }), 401, 'authentication_error'],
    ['unknown key', () => post(GOOD, { ...JSON_HEADERS, 'x-api-key': 'ck_nobody_0000000000' }), 401, 'authentication_error'],
    ['Authorization: Basic', () => post(GOOD, { 'content-type': 'application/json', authorization: 'Basic dXNlcjpwYXNz' }), 401, 'authentication_error'],
    ['Bearer with nothing after it', () => post(GOOD, { 'content-type': 'application/json', authorization: 'Bearer ' }), 401, 'authentication_error'],
    ['a malformed token', () => post(GOOD, { ...JSON_HEADERS, 'x-api-key': 'eyJhbGciOiJIUzI1NiJ9.eyJzdWIiOiJ4In0.bm90LWEtc2lnbmF0dXJl' }), 401, 'authentication_error'],
    ['origin not allowed', () => post(GOOD, { ...JSON_HEADERS, origin: 'https://evil.example' }), 403, 'permission_error'],
    ['unknown route', () => viaFetch('/v1/complete', { method: 'POST', headers: JSON_HEADERS, body: GOOD }), 404, 'not_found_error'],
    ['path climbing', () => viaFetch('/v1/models/..%2F..%2Fadmin', { headers: JSON_HEADERS }), 404, 'not_found_error'],
    ['a trailing slash', () => viaFetch('/v1/messages/', { method: 'POST', headers: JSON_HEADERS, body: GOOD }), 404, 'not_found_error'],
    ['an encoded route', () => viaFetch('/v1/%6Dessages', { method: 'POST', headers: JSON_HEADERS, body: GOOD }), 404, 'not_found_error'],
  ];
  await sim.reset();
  for (const [name, send, status, type] of cases) {
    const res = await send();
    assertEnvelope(name, res, status, type);
    if (name.startsWith('wrong method on messages')) assert.equal(res.headers.get('allow'), 'POST');
    if (name.startsWith('wrong method on models')) assert.equal(res.headers.get('allow'), 'GET');
    if (name === 'origin not allowed') assert.equal(res.headers.get('access-control-allow-origin'), null);
  }
  assert.equal((await sim.log()).length, 0, 'a bad request reached the upstream');
});

test('bodies: not UTF-8, nested too deeply, duplicate fields', async () => {
  const post = (body) => viaFetch('/v1/messages', { method: 'POST', headers: JSON_HEADERS, body });
  await sim.reset();
  let body = assertEnvelope('Latin-1 body', await post(Buffer.from('{"model":"caf\xe9","max_tokens":5}', 'latin1')), 400, 'invalid_request_error');
  assert.match(body.error.message, /UTF-8/);
  body = assertEnvelope('UTF-16 body', await post(Buffer.from(`\ufeff${GOOD}`, 'utf16le')), 400, 'invalid_request_error');
  body = assertEnvelope('invalid bytes', await post(Buffer.from([0x7b, 0xc3, 0x28, 0x7d])), 400, 'invalid_request_error');
  // A field the proxy reads, nested past any sane depth: refused, and said so.
  body = assertEnvelope('deep model', await post(`{"model":${deep(20_000)},"max_tokens":5}`), 400, 'invalid_request_error');
  assert.match(body.error.message, /nested too deeply/);
  // Two values for a field the proxy reads: the proxy and the upstream could disagree.
  body = assertEnvelope('duplicate model', await post('{"model":"a","model":"b","max_tokens":5}'), 400, 'invalid_request_error');
  assert.match(body.error.message, /duplicate/);
  assert.equal((await sim.log()).length, 0);

  // Nesting in fields the proxy does not read is skipped without recursion and left to the
  // upstream, whose own envelope comes back.
  const res = await post(`{"model":"m","max_tokens":5,"messages":[{"role":"user","content":"hi"}],"metadata":${deep(30_000)}}`);
  body = assertEnvelope('deep unread field', res, 400, 'invalid_request_error');
  assert.match(body.request_id, /^req_sim_/, 'expected the upstream\'s own answer');
  assert.equal(res.headers.get('x-proxy-attempts'), '1');
});

test('content types: the body is read as JSON whatever the label, and the label goes upstream as sent', async () => {
  await sim.reset();
  const send = (contentType, body = GOOD) => viaFetch('/v1/messages', {
    method: 'POST',
    headers: { 'x-api-key': CLIENT_KEY, 'anthropic-version': '2023-06-01', ...(contentType ? { 'content-type': contentType } : {}) },
    body,
  });
  // A JSON object labelled text/plain (or not labelled at all) is forwarded unchanged: the
  // upstream, which documents application/json, answers it exactly as it would directly.
  for (const type of ['text/plain', 'text/plain;charset=UTF-8', 'application/x-www-form-urlencoded', null]) {
    // fetch would add a content type to a string body; the raw socket sends none.
    const res = type ? await send(type) : await raw(`x-api-key: ${CLIENT_KEY}\r\n`, GOOD);
    assert.equal(res.status, 200, `${type}: ${res.text.slice(0, 200)}`);
    const seen = (await sim.log()).at(-1);
    assert.equal(seen.headers['content-type'], type ?? undefined, 'the content type was rewritten');
    assert.equal(seen.body, GOOD);
  }
  // Whatever the label, a body that is not a JSON object never reaches the upstream.
  const before = (await sim.log()).length;
  assertEnvelope('form body', await send('application/x-www-form-urlencoded', 'model=m&max_tokens=5'), 400, 'invalid_request_error');
  assertEnvelope('plain text', await send('text/plain', 'hello'), 400, 'invalid_request_error');
  assert.equal((await sim.log()).length, before);
});

test('credentials: two at once, enormous, odd characters', async () => {
  await sim.reset();
  const head = (lines) => `${lines.join('\r\n')}\r\ncontent-type: application/json\r\n`;
  // The same credential in both headers is one credential.
  let res = await viaFetch('/v1/messages', { method: 'POST', headers: { ...JSON_HEADERS, authorization: `Bearer ${CLIENT_KEY}` }, body: GOOD });
  assert.equal(res.status, 200);
  assertEnvelope('two different credentials', await viaFetch('/v1/messages', { method: 'POST', headers: { ...JSON_HEADERS, authorization: 'Bearer ck_someone_else_00000' }, body: GOOD }), 401, 'authentication_error');
  assertEnvelope('x-api-key twice', await raw(head([`x-api-key: ${CLIENT_KEY}`, `x-api-key: ${CLIENT_KEY}`]), GOOD), 401, 'authentication_error');
  assertEnvelope('Authorization twice', await raw(head([`authorization: Bearer ${CLIENT_KEY}`, `authorization: Bearer ${CLIENT_KEY}`]), GOOD), 401, 'authentication_error');
  let body = assertEnvelope('a 60 KB key', await raw(head([`x-api-key: ${'k'.repeat(60_000)}`]), GOOD), 401, 'authentication_error');
  assert.match(body.error.message, /too long/);
  assertEnvelope('a 60 KB token', await raw(head([`authorization: Bearer eyJ${'a'.repeat(30_000)}.${'b'.repeat(30_000)}.c`]), GOOD), 401, 'authentication_error');
  assertEnvelope('a key with an emoji', await raw(head(['x-api-key: ck_🔑_test_alice_4f1c2a9b7e']), GOOD), 401, 'authentication_error');
  assertEnvelope('a key with a control character', await raw(head([`x-api-key: ${CLIENT_KEY.replace('alice', 'ali\x01ce')}`]), GOOD), 401, 'authentication_error');
  assertEnvelope('a key with a DEL', await raw(head([`x-api-key: ${CLIENT_KEY}\x7f`]), GOOD), 401, 'authentication_error');
  assertEnvelope('a Latin-1 key', await raw(Buffer.from(head([`x-api-key: ${CLIENT_KEY}é`]), 'latin1'), GOOD), 401, 'authentication_error');
  const token = await mintToken('jwt-secret-for-the-inputs-suite-01', { sub: 'user-\u0007', exp: Math.floor(Date.now() / 1000) + 60 });
  body = assertEnvelope('a token whose sub has a control character', await raw(head([`authorization: Bearer ${token}`]), GOOD), 401, 'authentication_error');
  assert.match(body.error.message, /invalid sub claim/);
  // A NUL byte in a header is refused by the runtime before the Worker runs (no envelope).
  res = await raw(head([`x-api-key: ${CLIENT_KEY}\x00`]), GOOD);
  assert.equal(res.status, 400);
  assert.equal((await sim.log()).length, 1, 'only the valid request reached the upstream');
});

test('origins: Unicode, punycode, enormous', async () => {
  const head = (origin, encoding = 'utf8') => Buffer.from(`x-api-key: ${CLIENT_KEY}\r\norigin: ${origin}\r\ncontent-type: application/json\r\n`, encoding);
  for (const [name, origin, encoding] of [
    ['UTF-8 Unicode host', 'https://exämple.com', 'utf8'],
    ['Latin-1 Unicode host', 'https://exämple.com', 'latin1'],
    ['an emoji host', 'https://🦀.example', 'utf8'],
    ['punycode, not listed', 'https://xn--exmple-cua.com', 'utf8'],
    ['the allowed origin with a control character', 'https://chat.example\x01', 'utf8'],
    ['a 60 KB origin', `https://${'a'.repeat(60_000)}.example`, 'utf8'],
    ['the literal null origin', 'null', 'utf8'],
  ]) {
    const res = await raw(head(origin, encoding), GOOD);
    assertEnvelope(name, res, 403, 'permission_error');
    assert.equal(res.headers.get('access-control-allow-origin'), null, `${name} got a grant`);
  }
  const ok = await raw(head('https://chat.example'), GOOD);
  assert.equal(ok.status, 200);
  assert.equal(ok.headers.get('access-control-allow-origin'), 'https://chat.example');

  // A Unicode origin in ALLOWED_ORIGINS could never match what a browser sends (the
  // punycode form): refused as configuration, naming the variable.
  const w = await startWorker(workerVars(sim, { ALLOWED_ORIGINS: 'https://exämple.com' }));
  try {
    const res = await postMessage(w);
    const body = assertEnvelope('Unicode ALLOWED_ORIGINS', { status: res.status, headers: res.headers, text: await res.text() }, 500, 'api_error');
    assert.match(body.error.message, /ALLOWED_ORIGINS/);
  } finally {
    await w.stop();
  }
});

test('enormous headers: forwarded up to the runtime\'s limit, refused by the runtime past it', async () => {
  await sim.reset();
  // A 60 KB header the API might understand goes upstream like any other.
  let res = await raw(`x-api-key: ${CLIENT_KEY}\r\ncontent-type: application/json\r\nx-client-note: ${'n'.repeat(60_000)}\r\n`, GOOD);
  assert.equal(res.status, 200);
  assert.equal((await sim.log()).at(-1).headers['x-client-note'].length, 60_000);
  // Far past it, workerd answers 431 itself, before the Worker runs.
  res = await raw(`x-api-key: ${CLIENT_KEY}\r\ncontent-type: application/json\r\nx-client-note: ${'n'.repeat(200_000)}\r\n`, GOOD);
  assert.equal(res.status, 431);
  // The proxy's own control header, garbled, is ignored rather than trusted. Each request meets
  // a 429 asking for 300 ms: with the configured 30 s budget the proxy waits and retries; with
  // any budget read out of the garble (0 from ' ' or '-1', 1 from '1e9', 123 from '١٢٣') it
  // would answer the 429 at once, as it does for the well-formed 100 ms here first.
  const withBudget = (budget) => raw(`x-api-key: ${CLIENT_KEY}\r\ncontent-type: application/json\r\nx-proxy-budget-ms: ${budget}\r\n`, GOOD);
  const asksForLater = [{ status: 429, headers: { 'retry-after-ms': '300' } }];
  await sim.reset();
  await sim.script(asksForLater);
  res = await withBudget('100');
  assert.equal(res.status, 429, 'a well-formed 100 ms budget was not applied');
  assert.equal(res.headers.get('x-proxy-attempts'), '1');
  for (const budget of ['abc', '-1', '1e9', '99999999999999999999999', ' ', '١٢٣']) {
    // Past the cooldown the last 429 left on the key.
    await sleep(350);
    await sim.reset();
    await sim.script(asksForLater);
    res = await withBudget(budget);
    assert.equal(res.status, 200, `x-proxy-budget-ms ${JSON.stringify(budget)}: ${res.status} ${res.text}`);
    assert.equal(res.headers.get('x-proxy-attempts'), '2', `x-proxy-budget-ms ${JSON.stringify(budget)}`);
    const sent = await sim.log();
    assert.equal(sent.length, 2);
    assert.equal(sent[1].headers['x-proxy-budget-ms'], undefined, 'the control header went upstream');
  }
});

test('after all of it the Worker still serves, and never panicked', async () => {
  const res = await postMessage(worker);
  assert.equal(res.status, 200);
  assert.equal((await res.json()).type, 'message');
  const stream = await postMessage(worker, messageBody({ stream: true }));
  assert.equal(stream.status, 200);
  assert.match(await stream.text(), /event: message_stop/);
  await sleep(50);
  const trouble = worker.logs.filter((l) => /panic|Critical|Reinitializing|Uncaught/i.test(l));
  assert.deepEqual(trouble, [], 'the Worker logged a crash');
});

test('a body over MAX_BODY_BYTES by its declared length: the client still sending reads the 413', async () => {
  // Forty times the limit behind its content-length: the answer is due before the body has
  // been read, and the client (fetch, as the SDKs use) must read it, not a reset connection.
  for (let i = 0; i < 5; i++) {
    let res;
    try {
      res = await fetch(`${worker.url}/v1/messages`, { method: 'POST', headers: JSON_HEADERS, body: Buffer.alloc(40 * MAX_BODY, 'x') });
    } catch (e) {
      assert.fail(`attempt ${i + 1}: ${e.cause?.code ?? e.message} instead of the 413`);
    }
    const body = await res.json();
    assert.equal(res.status, 413, `attempt ${i + 1}`);
    assert.equal(body.error.type, 'request_too_large');
  }
  assert.equal((await postMessage(worker, GOOD)).status, 200, 'the Worker stopped serving');
});
