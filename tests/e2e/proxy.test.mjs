// The proxy end to end: routes, forwarding, credentials, streaming, the official SDK, and
// every bad input of the contract, against the real Worker in workerd and the simulator.
import { test, before, after } from 'node:test';
import assert from 'node:assert/strict';
import Anthropic from '@anthropic-ai/sdk';
import {
  startSim, startWorker, workerVars, postMessage, messageBody, readEvents,
  CLIENT_KEY, UPSTREAM_KEY,
} from './harness.mjs';

let sim;
let worker;

before(async () => {
  sim = await startSim();
  worker = await startWorker(workerVars(sim, {
    MAX_BODY_BYTES: '20000',
    ALLOWED_ORIGINS: 'https://chat.example',
  }));
});

after(async () => {
  await worker?.stop();
  await sim?.stop();
});

const lastUpstreamRequest = async () => (await sim.log()).at(-1);

test('healthz answers without credentials', async () => {
  const res = await fetch(`${worker.url}/healthz`);
  assert.equal(res.status, 200);
  const body = await res.json();
  assert.equal(body.status, 'ok');
  assert.match(body.version, /^\d+\.\d+\.\d+/);
});

test('a JSON message reaches the upstream byte for byte with the real key', async () => {
  await sim.reset();
  // Odd spacing and key order must survive: the proxy never re-serializes the body.
  const raw = '{ "max_tokens": 32,\n  "model": "claude-sonnet-5", "messages": [{"role": "user", "content": "héllo \\u00e9 ✓"}] }';
  const res = await postMessage(worker, raw, { 'anthropic-beta': 'prompt-caching-2024-07-31' });
  assert.equal(res.status, 200);
  const body = await res.json();
  assert.equal(body.type, 'message');
  assert.ok(body.usage.output_tokens > 0);
  assert.equal(res.headers.get('x-proxy-attempts'), '1');
  assert.match(res.headers.get('request-id'), /^req_sim_/);
  // The upstream key's own limits are not the caller's business.
  assert.equal(res.headers.get('anthropic-ratelimit-requests-limit'), null);

  const seen = await lastUpstreamRequest();
  assert.equal(seen.body, raw);
  assert.equal(seen.headers['x-api-key'], UPSTREAM_KEY);
  assert.equal(seen.headers['anthropic-version'], '2023-06-01');
  assert.equal(seen.headers['anthropic-beta'], 'prompt-caching-2024-07-31');
  assert.equal(seen.headers.authorization, undefined);
  assert.ok(!JSON.stringify(seen.headers).includes(CLIENT_KEY), 'client key leaked upstream');
});

test('Authorization: Bearer is accepted and never forwarded', async () => {
  await sim.reset();
  const res = await fetch(`${worker.url}/v1/messages`, {
    method: 'POST',
    headers: { authorization: `Bearer ${CLIENT_KEY}`, 'content-type': 'application/json', 'anthropic-version': '2023-06-01' },
    body: JSON.stringify(messageBody()),
  });
  assert.equal(res.status, 200);
  const seen = await lastUpstreamRequest();
  assert.equal(seen.headers.authorization, undefined);
  assert.equal(seen.headers['x-api-key'], UPSTREAM_KEY);
});

test('query strings, count_tokens and models are forwarded', async () => {
  await sim.reset();
  const count = await fetch(`${worker.url}/v1/messages/count_tokens?beta=true`, {
    method: 'POST',
    headers: { 'x-api-key': CLIENT_KEY, 'content-type': 'application/json', 'anthropic-version': '2023-06-01' },
    body: JSON.stringify({ model: 'claude-sonnet-5-5', messages: [{ role: 'user', content: 'count me' }] }),
  });
  assert.equal(count.status, 200);
  assert.ok((await count.json()).input_tokens > 0);
  assert.equal((await lastUpstreamRequest()).path.split('?')[0], '/v1/messages/count_tokens');

  const models = await fetch(`${worker.url}/v1/models`, { headers: { 'x-api-key': CLIENT_KEY } });
  assert.equal(models.status, 200);
  const list = await models.json();
  assert.ok(list.data.length > 0);
  const one = await fetch(`${worker.url}/v1/models/${list.data[0].id}`, { headers: { 'x-api-key': CLIENT_KEY } });
  assert.equal(one.status, 200);
  assert.equal((await one.json()).id, list.data[0].id);
  const missing = await fetch(`${worker.url}/v1/models/no-such-model`, { headers: { 'x-api-key': CLIENT_KEY } });
  assert.equal(missing.status, 404);
  assert.equal((await missing.json()).error.type, 'not_found_error');
});

for (const encoding of ['identity', 'gzip, deflate, br']) {
  test(`SSE streams event by event (Accept-Encoding: ${encoding})`, async () => {
    const t0 = performance.now();
    const res = await postMessage(worker, messageBody({ stream: true }), {
      'accept-encoding': encoding,
      'x-sim-fault': JSON.stringify({ tokens: 12, token_delay_ms: 60 }),
    });
    assert.equal(res.status, 200);
    assert.match(res.headers.get('content-type'), /^text\/event-stream/);
    const events = await readEvents(res, t0);
    const names = events.map((e) => e.name);
    assert.deepEqual(names.slice(0, 3), ['message_start', 'content_block_start', 'ping']);
    assert.deepEqual(names.slice(-3), ['content_block_stop', 'message_delta', 'message_stop']);
    assert.equal(names.filter((n) => n === 'content_block_delta').length, 12);
    const first = events[0].at;
    const last = events.at(-1).at;
    // 12 tokens 60 ms apart: the first event must arrive long before the last.
    assert.ok(last - first >= 500, `events arrived together: first ${first} ms, last ${last} ms`);
  });
}

test('the official SDK creates, streams event by event, and gets typed errors', async () => {
  const client = new Anthropic({ apiKey: CLIENT_KEY, baseURL: worker.url, maxRetries: 0 });
  const message = await client.messages.create(messageBody());
  assert.equal(message.type, 'message');
  assert.equal(message.content[0].type, 'text');

  const t0 = performance.now();
  const arrivals = [];
  const stream = client.messages.stream(messageBody(), {
    headers: { 'x-sim-fault': JSON.stringify({ tokens: 10, token_delay_ms: 80 }) },
  });
  stream.on('text', () => arrivals.push(performance.now() - t0));
  const final = await stream.finalMessage();
  assert.equal(arrivals.length, 10);
  assert.ok(arrivals.at(-1) - arrivals[0] >= 500, `text arrived together: ${arrivals.map(Math.round)}`);
  assert.equal(final.usage.output_tokens, 10);

  const stranger = new Anthropic({ apiKey: 'ck_not_a_known_key_000', baseURL: worker.url, maxRetries: 0 });
  await assert.rejects(stranger.messages.create(messageBody()), Anthropic.AuthenticationError);
  await assert.rejects(client.messages.create({ model: 'claude-sonnet-5-5', messages: [] }), Anthropic.BadRequestError);
  await assert.rejects(client.models.retrieve('no-such-model'), Anthropic.NotFoundError);
});

test('every bad input gets its envelope and the Worker keeps serving', async () => {
  const headers = { 'x-api-key': CLIENT_KEY, 'content-type': 'application/json' };
  const cases = [
    ['not JSON', { method: 'POST', path: '/v1/messages', headers, body: 'hello' }, 400, 'invalid_request_error'],
    ['JSON array', { method: 'POST', path: '/v1/messages', headers, body: '[1,2]' }, 400, 'invalid_request_error'],
    ['truncated JSON', { method: 'POST', path: '/v1/messages', headers, body: '{"model": "m", ' }, 400, 'invalid_request_error'],
    ['no model', { method: 'POST', path: '/v1/messages', headers, body: '{"max_tokens": 5, "messages": []}' }, 400, 'invalid_request_error'],
    ['no max_tokens', { method: 'POST', path: '/v1/messages', headers, body: '{"model": "m", "messages": []}' }, 400, 'invalid_request_error'],
    ['non-UTF-8', { method: 'POST', path: '/v1/messages', headers, body: Buffer.from([0x7b, 0xff, 0xfe, 0x7d]) }, 400, 'invalid_request_error'],
    ['too large', { method: 'POST', path: '/v1/messages', headers, body: JSON.stringify(messageBody({ pad: 'x'.repeat(30_000) })) }, 413, 'request_too_large'],
    ['wrong method', { method: 'GET', path: '/v1/messages', headers }, 405, 'invalid_request_error'],
    ['no credential', { method: 'POST', path: '/v1/messages', headers: { 'content-type': 'application/json' }, body: JSON.stringify(messageBody()) }, 401, 'authentication_error'],
    ['bad credential', { method: 'POST', path: '/v1/messages', headers: { ...headers, 'x-api-key': 'nope' }, body: JSON.stringify(messageBody()) }, 401, 'authentication_error'],
    ['two different credentials', { method: 'POST', path: '/v1/messages', headers: { ...headers, authorization: 'Bearer other' }, body: JSON.stringify(messageBody()) }, 401, 'authentication_error'],
    ['origin not allowed', { method: 'POST', path: '/v1/messages', headers: { ...headers, origin: 'https://evil.example' }, body: JSON.stringify(messageBody()) }, 403, 'permission_error'],
    ['unknown route', { method: 'GET', path: '/v1/complete', headers }, 404, 'not_found_error'],
    ['path climbing', { method: 'GET', path: '/v1/models/..%2F..%2Fadmin', headers }, 404, 'not_found_error'],
  ];
  for (const [name, req, status, type] of cases) {
    const res = await fetch(`${worker.url}${req.path}`, { method: req.method, headers: req.headers, body: req.body });
    assert.equal(res.status, status, name);
    const body = await res.json();
    assert.equal(body.type, 'error', name);
    assert.equal(body.error.type, type, name);
    assert.ok(body.error.message.length > 0, name);
    assert.match(body.request_id, /^req_/, name);
    assert.match(res.headers.get('request-id'), /^req_/, name);
    if (name === 'origin not allowed') assert.equal(res.headers.get('access-control-allow-origin'), null);
    if (name === 'wrong method') assert.equal(res.headers.get('allow'), 'POST');
  }
  const again = await postMessage(worker);
  assert.equal(again.status, 200, 'the Worker stopped serving after bad input');
});

test('passthrough keys go upstream only when allowed', async () => {
  const own = 'sk-ant-api03-callers-own-key-abcdef';
  const off = await postMessage(worker, messageBody(), { 'x-api-key': own });
  assert.equal(off.status, 401);

  const w = await startWorker(workerVars(sim, { ALLOW_PASSTHROUGH_KEYS: 'true' }));
  try {
    await sim.reset();
    const res = await fetch(`${w.url}/v1/messages`, {
      method: 'POST',
      headers: { 'x-api-key': own, 'content-type': 'application/json', 'anthropic-version': '2023-06-01' },
      body: JSON.stringify(messageBody()),
    });
    assert.equal(res.status, 200);
    assert.equal((await lastUpstreamRequest()).headers['x-api-key'], own);
    await new Promise((r) => setTimeout(r, 50));
    assert.ok(!w.logs.join('\n').includes(own), 'a passthrough key reached the log');
  } finally {
    await w.stop();
  }
});

test('bad configuration is one clear error naming the variable', async () => {
  const w = await startWorker(workerVars(sim, { RATE_LIMITS: '{"default": {"rpm": "fifty"}}' }));
  try {
    const res = await postMessage(w);
    assert.equal(res.status, 500);
    const body = await res.json();
    assert.equal(body.error.type, 'api_error');
    assert.match(body.error.message, /RATE_LIMITS/);
    await new Promise((r) => setTimeout(r, 50));
    assert.ok(w.logs.some((l) => l.includes('config_error') && l.includes('RATE_LIMITS')));
  } finally {
    await w.stop();
  }
});

test('a managed caller without ANTHROPIC_API_KEY gets a clear 500', async () => {
  const vars = workerVars(sim);
  delete vars.ANTHROPIC_API_KEY;
  const w = await startWorker(vars);
  try {
    const res = await postMessage(w);
    assert.equal(res.status, 500);
    assert.match((await res.json()).error.message, /ANTHROPIC_API_KEY/);
  } finally {
    await w.stop();
  }
});

test('one log line per request, with the identity hashed', async () => {
  const before = worker.logs.length;
  await postMessage(worker);
  await new Promise((r) => setTimeout(r, 50));
  const lines = worker.logs.slice(before).filter((l) => l.startsWith('{'));
  assert.equal(lines.length, 1);
  const line = JSON.parse(lines[0]);
  assert.equal(line.route, 'messages');
  assert.equal(line.status, 200);
  assert.equal(line.attempts, 1);
  assert.match(line.identity, /^[0-9a-f]{32}$/);
  assert.ok(!lines[0].includes(CLIENT_KEY) && !lines[0].includes(UPSTREAM_KEY) && !lines[0].includes('alice'));
});

test('REQUEST_LOG=problems keeps the lines of retried and failed requests only', async () => {
  const w = await startWorker(workerVars(sim, { REQUEST_LOG: 'problems', MAX_ATTEMPTS: '2' }));
  const requestLines = () => w.logs.filter((l) => l.startsWith('{"request_id"')).map((l) => JSON.parse(l));
  try {
    await sim.reset();
    assert.equal((await postMessage(w)).status, 200);
    await sim.script([{ status: 529, times: 1 }]);
    assert.equal((await postMessage(w)).status, 200);
    await sim.script([{ status: 400, times: 1 }]);
    assert.equal((await postMessage(w)).status, 400);
    await new Promise((r) => setTimeout(r, 50));
    const lines = requestLines();
    assert.deepEqual(lines.map((l) => [l.status, l.attempts]), [[200, 2], [400, 1]]);
  } finally {
    await w.stop();
  }
});
