// Model fallback end to end: the simulator overloads one model while the others serve; the
// Worker answers with the next model of MODEL_FALLBACKS, says so in x-proxy-model, and
// otherwise gives the requested model's structured 503.
import { test, before, after, beforeEach, afterEach } from 'node:test';
import assert from 'node:assert/strict';
import Anthropic from '@anthropic-ai/sdk';
import {
  startSim, startWorker, workerVars, postMessage, messageBody, readEvents, sleep, CLIENT_KEY,
} from './harness.mjs';

const OPUS = 'claude-opus-5-5';
const SONNET = 'claude-sonnet-5-5';
const HAIKU = 'claude-haiku-5-5';
const ORIGIN = 'https://chat.example.com';

let sim;
let worker;

before(async () => {
  sim = await startSim();
});

// A fresh Worker per test: what one test taught the key's shared state about a model must
// not decide the next.
beforeEach(async () => {
  await sim.reset();
  worker = await startWorker(workerVars(sim, {
    MODEL_FALLBACKS: JSON.stringify({ [OPUS]: [SONNET, HAIKU] }),
    ALLOWED_ORIGINS: ORIGIN,
    MAX_ATTEMPTS: '3',
    BACKOFF_BASE_MS: '20',
    BACKOFF_MAX_MS: '100',
  }));
});

afterEach(async () => {
  await worker?.stop();
});

after(async () => {
  await sim?.stop();
});

/** Opus answers 529 (JSON) or an overloaded first SSE event, for as long as the test runs. */
async function overloadOpus({ stream = false } = {}) {
  const fault = stream ? { error_event_after: 0 } : { status: 529 };
  await sim.script([{ model: OPUS, times: 1000, ...fault }]);
}

const messagesSent = async () => (await sim.log()).filter((r) => r.path === '/v1/messages');

async function logLine(res) {
  await sleep(50);
  const ids = [res.headers.get('request-id')];
  const lines = worker.logs.filter((l) => l.startsWith('{')).map((l) => JSON.parse(l));
  return lines.reverse().find((l) => ids.includes(l.upstream_request_id) || ids.includes(l.request_id));
}

/** The overloaded model was tried (its attempts, or fewer once its overload was known), then
 * the first fallback answered. */
function assertOverloadedThenFallback(sent) {
  const models = sent.map((r) => JSON.parse(r.body).model);
  assert.equal(models.at(-1), SONNET, JSON.stringify(models));
  const tried = models.slice(0, -1);
  assert.ok(tried.length >= 1 && tried.length <= 3 && tried.every((m) => m === OPUS), JSON.stringify(models));
}

function client() {
  return new Anthropic({ apiKey: CLIENT_KEY, baseURL: worker.url, maxRetries: 0 });
}

test('JSON through the SDK: an overloaded model is answered by its first fallback', async () => {
  await overloadOpus();
  const { data, response } = await client().messages.create(messageBody({ model: OPUS })).withResponse();
  assert.equal(response.status, 200);
  assert.equal(data.type, 'message');
  assert.equal(data.model, SONNET, 'the upstream answered for the fallback');
  assert.equal(response.headers.get('x-proxy-model'), SONNET);
  const sent = await messagesSent();
  assertOverloadedThenFallback(sent);
  assert.equal(response.headers.get('x-proxy-attempts'), String(sent.length));
  const line = await logLine(response);
  // Why it left: its attempts ran out on overload, or the key's object already knew the model
  // was in an outage (it learns that from the first shed answers).
  assert.ok(['overloaded', 'outage'].includes(line.fallback.why), JSON.stringify(line.fallback));
  assert.deepEqual({ ...line.fallback, why: undefined }, { from: OPUS, to: SONNET, why: undefined, tried: [] });
  assert.equal(line.model, SONNET);
});

test('streaming through the SDK: an overloaded first event falls back before any byte', async () => {
  await overloadOpus({ stream: true });
  const { data: stream, response } = await client().messages
    .create(messageBody({ model: OPUS, stream: true }))
    .withResponse();
  assert.equal(response.status, 200);
  assert.equal(response.headers.get('x-proxy-model'), SONNET);
  const events = [];
  for await (const event of stream) events.push(event);
  assert.equal(events[0].type, 'message_start');
  assert.equal(events[0].message.model, SONNET);
  assert.equal(events.at(-1).type, 'message_stop');
  assert.ok(!events.some((e) => e.type === 'error'), 'the overloaded events never reached the client');
  assertOverloadedThenFallback(await messagesSent());
});

test('only the top-level model is rewritten: the rest of the body arrives byte for byte', async () => {
  await overloadOpus();
  // Odd spacing, a nested "model" key, escapes and non-ASCII text: the bytes must survive.
  const raw = `{ "metadata" : {"user_id":"u-1"}, "system":"say \\"model\\": \\"${OPUS}\\" é",\n`
    + `  "messages":[{"role":"user","content":[{"type":"text","text":"héllo ${OPUS}"}]}],\t`
    + `"model"  :  "${OPUS}"  , "max_tokens":64, "x_model":{"model":"${OPUS}"} }`;
  const res = await postMessage(worker, raw);
  assert.equal(res.status, 200);
  assert.equal(res.headers.get('x-proxy-model'), SONNET);
  await res.arrayBuffer();
  const sent = await messagesSent();
  assertOverloadedThenFallback(sent);
  assert.equal(sent[0].body, raw, 'the requested model got the body as sent');
  assert.equal(sent.at(-1).body, raw.replace(`"model"  :  "${OPUS}"`, `"model"  :  "${SONNET}"`));
  assert.equal(sent.at(-1).body_len, Buffer.byteLength(raw) + SONNET.length - OPUS.length);
});

test('x-proxy-fallback: off gives the structured 503 of the requested model', async () => {
  await overloadOpus();
  const res = await postMessage(worker, messageBody({ model: OPUS }), { 'x-proxy-fallback': 'off' });
  assert.equal(res.status, 503);
  const body = await res.json();
  assert.equal(body.error.type, 'overloaded_error');
  assert.ok(Number(res.headers.get('retry-after')) >= 1);
  assert.equal(res.headers.get('x-proxy-model'), OPUS);
  assert.equal(res.headers.get('x-proxy-attempts'), '3');
  const sent = await messagesSent();
  assert.deepEqual(sent.map((r) => JSON.parse(r.body).model), [OPUS, OPUS, OPUS]);
  assert.ok(sent.every((r) => !('x-proxy-fallback' in r.headers)), 'the opt-out never goes upstream');
  // Through the SDK too: it raises the overloaded error.
  const err = await client().messages
    .create(messageBody({ model: OPUS }), { headers: { 'x-proxy-fallback': 'off' } })
    .catch((e) => e);
  assert.ok(err instanceof Anthropic.APIError, String(err));
  assert.equal(err.status, 503);
});

test('a fallback that refuses the request itself (400) gives the 503, not its error', async () => {
  await worker.stop();
  worker = await startWorker(workerVars(sim, {
    MODEL_FALLBACKS: JSON.stringify({ [OPUS]: [SONNET] }),
    MAX_ATTEMPTS: '2',
    BACKOFF_BASE_MS: '20',
    BACKOFF_MAX_MS: '100',
  }));
  await sim.script([
    { model: OPUS, times: 1000, status: 529 },
    { model: SONNET, status: 400, message: 'max_tokens: 64000 > 32000, the maximum for this model' },
  ]);
  const res = await postMessage(worker, messageBody({ model: OPUS }));
  assert.equal(res.status, 503);
  const body = await res.json();
  assert.equal(body.error.type, 'overloaded_error');
  assert.doesNotMatch(JSON.stringify(body), /max_tokens: 64000/);
  assert.equal(res.headers.get('x-proxy-model'), OPUS);
  const line = await logLine(res);
  assert.deepEqual(line.fallback, {
    from: OPUS, to: null, why: 'overloaded', tried: [{ model: SONNET, ended: 'status_400' }],
  });
  // An unknown model (404) is the same.
  await sim.reset();
  await sim.script([
    { model: OPUS, times: 1000, status: 529 },
    { model: SONNET, status: 404 },
  ]);
  const unknown = await postMessage(worker, messageBody({ model: OPUS }));
  assert.equal(unknown.status, 503);
  assert.equal((await unknown.json()).error.type, 'overloaded_error');
});

test('a healthy model is answered by itself, named in x-proxy-model and readable by a page', async () => {
  const res = await postMessage(worker, messageBody({ model: OPUS }), { origin: ORIGIN });
  assert.equal(res.status, 200);
  assert.equal(res.headers.get('x-proxy-model'), OPUS);
  assert.match(res.headers.get('access-control-expose-headers'), /x-proxy-model/);
  await res.arrayBuffer();
  // A model without a fallback list, and an error the proxy answers, name the model too.
  const other = await postMessage(worker, messageBody({ model: HAIKU }));
  assert.equal(other.headers.get('x-proxy-model'), HAIKU);
  await other.arrayBuffer();
  const preflight = await fetch(`${worker.url}/v1/messages`, {
    method: 'OPTIONS',
    headers: {
      origin: ORIGIN,
      'access-control-request-method': 'POST',
      'access-control-request-headers': 'content-type, x-api-key, x-proxy-fallback',
    },
  });
  assert.equal(preflight.status, 204);
  assert.match(preflight.headers.get('access-control-allow-headers'), /x-proxy-fallback/);
});

test('once the model is known to be in an outage, requests go to the fallback at once', async () => {
  await overloadOpus();
  // Enough overloaded answers to mark the model overloaded in the key's shared state.
  for (let i = 0; i < 3; i += 1) {
    const res = await postMessage(worker, messageBody({ model: OPUS }));
    assert.equal(res.headers.get('x-proxy-model'), SONNET);
    await res.arrayBuffer();
    await sleep(200);
  }
  await sim.reset();
  await overloadOpus();
  const res = await postMessage(worker, messageBody({ model: OPUS }));
  assert.equal(res.status, 200);
  assert.equal(res.headers.get('x-proxy-model'), SONNET);
  await res.arrayBuffer();
  const sent = (await messagesSent()).map((r) => JSON.parse(r.body).model);
  assert.ok(sent.filter((m) => m === OPUS).length <= 1, `at most a probe for the overloaded model: ${sent}`);
  // At once: left for the outage the shared state knows of, nothing slept on the way, unless
  // this request carried the model's probe: then one backoff after the probe's 529.
  const line = await logLine(res);
  assert.equal(line.fallback.to, SONNET);
  assert.equal(line.fallback.why, 'outage', JSON.stringify(line));
  const probed = sent.filter((m) => m === OPUS).length;
  assert.equal(line.waits.length, probed, JSON.stringify(line));
  assert.ok(line.waits.every((w) => w.cause === 'overloaded'), JSON.stringify(line));
});
