// The retry engine end to end: one test per row of the contract's retry table, against the
// real Worker and a simulator scripted with 529s, 429s, hangs, resets and in-stream errors.
import { test, before, after, beforeEach, afterEach } from 'node:test';
import assert from 'node:assert/strict';
import Anthropic from '@anthropic-ai/sdk';
import {
  startSim, startWorker, workerVars, postMessage, messageBody, readEvents, sleep, logLineOf, CLIENT_KEY,
} from './harness.mjs';

let sim;
let worker;
const BASE = 50;
const MAX = 400;

before(async () => {
  sim = await startSim();
});

// A fresh Worker per test: the shared upstream state (cooldowns, overload) of one row must
// not leak into the next.
beforeEach(async () => {
  worker = await startWorker(workerVars(sim, {
    BACKOFF_BASE_MS: String(BASE),
    BACKOFF_MAX_MS: String(MAX),
    ATTEMPT_TIMEOUT_MS: '400',
    MAX_ATTEMPTS: '4',
  }));
});

afterEach(async () => {
  await worker?.stop();
});

after(async () => {
  await sim?.stop();
});

async function scripted(faults) {
  await sim.reset();
  await sim.script(faults);
}

const upstreamCalls = async () => (await sim.log()).filter((r) => r.path.startsWith('/v1/messages')).length;

/** The worker's log line for the request that answered with `requestId`. */
async function logLine(res) {
  await sleep(50);
  const id = res.headers.get('request-id');
  const lines = worker.logs.filter((l) => l.startsWith('{')).map((l) => JSON.parse(l));
  return lines.reverse().find((l) => l.upstream_request_id === id || l.request_id === id);
}

test('529 then success: the client sees only the success', async () => {
  await scripted([{ status: 529 }]);
  const res = await postMessage(worker);
  assert.equal(res.status, 200);
  assert.equal((await res.json()).type, 'message');
  assert.equal(res.headers.get('x-proxy-attempts'), '2');
  assert.equal(await upstreamCalls(), 2);
});

test('529 forever: a structured 503 inside the budget, attempts capped', async () => {
  await scripted([{ status: 529, times: 100 }]);
  const res = await postMessage(worker);
  assert.equal(res.status, 503);
  assert.equal(res.headers.get('x-proxy-attempts'), '4');
  assert.equal(await upstreamCalls(), 4);
  const retryAfter = Number(res.headers.get('retry-after'));
  const retryAfterMs = Number(res.headers.get('retry-after-ms'));
  assert.ok(retryAfter >= 1 && retryAfter === Math.max(1, Math.ceil(retryAfterMs / 1000)));
  assert.equal(res.headers.get('x-should-retry'), 'true');
  const body = await res.json();
  assert.equal(body.type, 'error');
  assert.equal(body.error.type, 'overloaded_error');
  assert.equal(body.retry_after_ms, retryAfterMs);
  assert.match(body.request_id, /^req_/);
  // Three backoff waits, each within its cap (50, 100, 200 ms); besides them only the key's
  // shared state may hold the request (it has seen the model overloaded), and all of it was
  // slept between the attempts the simulator saw.
  const line = await logLine(res);
  const backoffs = line.waits.filter((w) => w.cause === 'overloaded').map((w) => w.ms);
  assert.equal(backoffs.length, 3, JSON.stringify(line.waits));
  backoffs.forEach((ms, i) => assert.ok(ms <= BASE * 2 ** i, `wait ${i + 1} of ${ms} ms above its cap of ${BASE * 2 ** i} ms`));
  const others = line.waits.filter((w) => w.cause !== 'overloaded');
  assert.ok(others.every((w) => w.cause === 'model_overloaded'), JSON.stringify(line.waits));
  const slept = line.waits.reduce((sum, w) => sum + w.ms, 0);
  const arrivals = (await sim.log()).map((r) => r.received_at_ms);
  const span = arrivals.at(-1) - arrivals[0];
  assert.ok(span >= slept - 1, `four attempts within ${span} ms, less than the ${slept} ms slept between them`);
});

test('429 with a retry-after beyond the budget: answered at once, upstream asked once', async () => {
  await scripted([{ status: 429, headers: { 'retry-after': '60' }, times: 10 }]);
  const res = await postMessage(worker);
  assert.equal(res.status, 429);
  assert.equal(await upstreamCalls(), 1);
  assert.equal(res.headers.get('x-proxy-attempts'), '1');
  // At once: the proxy slept nothing, knowing the wait outlasts the budget.
  const line = await logLine(res);
  assert.deepEqual(line.waits, [], 'the proxy slept a wait it knew would outlast the budget');
  const body = await res.json();
  assert.equal(body.error.type, 'rate_limit_error');
  assert.equal(body.limit.scope, 'upstream');
  assert.ok(body.retry_after_ms >= 59_000 && body.retry_after_ms <= 60_000, String(body.retry_after_ms));
  assert.equal(res.headers.get('retry-after'), '60');
});

test('429 with a short retry-after: the wait is honoured, then success', async () => {
  await scripted([{ status: 429, headers: { 'retry-after-ms': '600' } }]);
  const res = await postMessage(worker);
  assert.equal(res.status, 200);
  const log = await sim.log();
  assert.equal(log.length, 2);
  const gap = log[1].received_at_ms - log[0].received_at_ms;
  assert.ok(gap >= 600, `retried after ${gap} ms, before the upstream's retry-after`);
});

test('a 200 stream opening with overloaded_error is retried transparently', async () => {
  await scripted([{ error_event_after: 0, error_type: 'overloaded_error' }]);
  const res = await postMessage(worker, messageBody({ stream: true }));
  assert.equal(res.status, 200);
  assert.equal(res.headers.get('x-proxy-attempts'), '2');
  const events = await readEvents(res);
  assert.equal(events[0].name, 'message_start');
  assert.ok(!events.some((e) => e.name === 'error'));
  assert.equal(events.at(-1).name, 'message_stop');
  assert.equal(await upstreamCalls(), 2);
});

test('an error after several events is passed through, never retried', async () => {
  await scripted([{ error_event_after: 5, error_type: 'overloaded_error' }]);
  const res = await postMessage(worker, messageBody({ stream: true }));
  assert.equal(res.status, 200);
  const events = await readEvents(res);
  assert.equal(events.length, 6);
  assert.equal(events[0].name, 'message_start');
  assert.equal(events.at(-1).name, 'error');
  assert.equal(JSON.parse(events.at(-1).data).error.type, 'overloaded_error');
  assert.equal(await upstreamCalls(), 1);
});

test('x-should-retry: false is obeyed', async () => {
  await scripted([{ status: 529, headers: { 'x-should-retry': 'false' } }]);
  const res = await postMessage(worker);
  assert.equal(res.status, 529);
  assert.equal((await res.json()).error.type, 'overloaded_error');
  assert.equal(res.headers.get('x-proxy-attempts'), '1');
  assert.equal(await upstreamCalls(), 1);
});

test('x-should-retry: true makes a 400 retryable', async () => {
  await scripted([{ status: 400, headers: { 'x-should-retry': 'true' } }]);
  const res = await postMessage(worker);
  assert.equal(res.status, 200);
  assert.equal(await upstreamCalls(), 2);
});

test('a hang times out a streaming attempt, and the retry succeeds', async () => {
  await scripted([{ hang: true }]);
  const t0 = performance.now();
  const res = await postMessage(worker, messageBody({ stream: true }));
  assert.equal(res.status, 200);
  assert.equal((await readEvents(res)).at(-1).name, 'message_stop');
  assert.ok(performance.now() - t0 >= 400);
  assert.equal(res.headers.get('x-proxy-attempts'), '2');
});

test('a non-streaming answer is waited for past the attempt timeout (headers come when it is written)', async () => {
  await scripted([{ delay_ms: 1200 }]);
  const res = await postMessage(worker);
  assert.equal(res.status, 200);
  assert.equal((await res.json()).type, 'message');
  assert.equal(res.headers.get('x-proxy-attempts'), '1');
  assert.equal(await upstreamCalls(), 1);
});

test('a stream that stalls before its first event times out and is retried', async () => {
  await scripted([{ stall_after_events: 0 }]);
  const res = await postMessage(worker, messageBody({ stream: true }));
  assert.equal(res.status, 200);
  const events = await readEvents(res);
  assert.equal(events.at(-1).name, 'message_stop');
  assert.equal(res.headers.get('x-proxy-attempts'), '2');
});

test('every attempt timing out is a 504 timeout_error', async () => {
  await scripted([{ hang: true, times: 10 }]);
  const res = await postMessage(worker, messageBody({ stream: true }));
  assert.equal(res.status, 504);
  assert.equal((await res.json()).error.type, 'timeout_error');
  assert.ok(Number(res.headers.get('retry-after')) >= 1);
});

test('a connection reset before headers is retried', async () => {
  await scripted([{ reset: 'before_headers' }]);
  const res = await postMessage(worker);
  assert.equal(res.status, 200);
  assert.equal(res.headers.get('x-proxy-attempts'), '2');
});

test('an unreachable upstream is a 502 api_error', async () => {
  const w = await startWorker(workerVars(sim, { UPSTREAM_URL: 'http://127.0.0.1:9', MAX_ATTEMPTS: '2', BACKOFF_BASE_MS: '10' }));
  try {
    const res = await postMessage(w);
    assert.equal(res.status, 502);
    assert.equal((await res.json()).error.type, 'api_error');
    assert.equal(res.headers.get('x-proxy-attempts'), '2');
  } finally {
    await w.stop();
  }
});

test('x-proxy-budget-ms shortens the budget: no sleep ends past it', async () => {
  await scripted([{ status: 529, times: 100 }]);
  const w = await startWorker(workerVars(sim, { BACKOFF_BASE_MS: '400', BACKOFF_MAX_MS: '400', MAX_ATTEMPTS: '10' }));
  try {
    const res = await postMessage(w, messageBody(), { 'x-proxy-budget-ms': '500' });
    assert.equal(res.status, 503);
    const attempts = Number(res.headers.get('x-proxy-attempts'));
    assert.ok(attempts >= 1 && attempts < 10);
    // The waits slept fit the 500 ms budget (with 400 ms waits and 10 attempts, the configured
    // 30 s budget would have let all nine run), and it stopped because the next would not.
    const line = await logLineOf(w, res);
    const slept = line.waits.reduce((sum, x) => sum + x.ms, 0);
    assert.ok(slept <= 500, `slept ${slept} ms in a 500 ms budget: ${JSON.stringify(line.waits)}`);
    assert.equal(line.waits.length, attempts - 1);
    assert.equal(line.stopped, 'budget_exhausted', JSON.stringify(line));
    // A client cannot lengthen the budget past the configured one.
    const log = await sim.log();
    assert.equal(log.length, attempts);
    assert.equal(log[0].headers['x-proxy-budget-ms'], undefined, 'proxy control header leaked upstream');
  } finally {
    await w.stop();
  }
});

test('waits are jittered and capped across requests', async () => {
  await sim.reset();
  const before = worker.logs.length;
  // 14 requests, 28 retries: inside the retry budget's floor of 30 per 10 s.
  const N = 14;
  await sim.script(Array.from({ length: N }, () => [{ status: 529, times: 2 }, {}]).flat());
  // Sequential requests, so each takes two 529s and one success from the queue.
  for (let i = 0; i < N; i++) {
    const res = await postMessage(worker);
    assert.equal(res.status, 200);
    await res.arrayBuffer();
  }
  await sleep(50);
  const lines = worker.logs.slice(before).filter((l) => l.startsWith('{')).map((l) => JSON.parse(l));
  // The backoff sleeps (a wait the shared state gives, e.g. pacing, has a cause of its own).
  const backoffs = lines.map((l) => l.waits.filter((w) => w.cause === 'overloaded'));
  const first = backoffs.map((w) => w[0].ms);
  const second = backoffs.map((w) => w[1].ms);
  assert.equal(first.length, N);
  assert.ok(first.every((w) => w >= 0 && w <= BASE), `first waits above ${BASE}: ${first}`);
  assert.ok(second.every((w) => w >= 0 && w <= 2 * BASE), `second waits above ${2 * BASE}: ${second}`);
  assert.ok(new Set(first).size >= N / 3, `first waits not spread: ${first}`);
  assert.ok(new Set(second).size >= N / 3, `second waits not spread: ${second}`);
  console.log(`# waits before retry 1 (cap ${BASE} ms): ${first.join(' ')}`);
  console.log(`# waits before retry 2 (cap ${2 * BASE} ms): ${second.join(' ')}`);
});

test('the official SDK with retries off gets a clean answer through two 529s', async () => {
  await scripted([{ status: 529, times: 2 }]);
  const client = new Anthropic({ apiKey: CLIENT_KEY, baseURL: worker.url, maxRetries: 0 });
  const message = await client.messages.create(messageBody());
  assert.equal(message.type, 'message');
  assert.equal(await upstreamCalls(), 3);
  // And the SDK reads our structured 503 as the typed error it knows.
  await scripted([{ status: 529, times: 100 }]);
  await assert.rejects(client.messages.create(messageBody()), (e) => e instanceof Anthropic.InternalServerError && e.status === 503);
});

test('a spend-limit 429 is never retried and reaches the client unchanged with x-should-retry: false', async () => {
  const spend = {
    type: 'error',
    error: { type: 'rate_limit_error', message: 'You have reached your specified API usage limits.', details: { error_code: 'enforced_spend_limit_reached' } },
  };
  await scripted([{ status: 429, body: spend, times: 5 }]);
  const res = await postMessage(worker);
  assert.equal(res.status, 429);
  assert.equal(res.headers.get('x-should-retry'), 'false');
  assert.equal(res.headers.get('x-proxy-attempts'), '1');
  assert.deepEqual(await res.json(), spend, 'the body reached the client changed');
  assert.equal(await upstreamCalls(), 1);
  // The SDK, told not to retry, raises the API's own error after one request.
  let sdkRequests = 0;
  const counted = (...args) => { sdkRequests += 1; return fetch(...args); };
  const client = new Anthropic({ apiKey: CLIENT_KEY, baseURL: worker.url, maxRetries: 2, fetch: counted });
  await assert.rejects(client.messages.create(messageBody()), Anthropic.RateLimitError);
  assert.equal(sdkRequests, 1, 'the SDK retried a spend limit');
  assert.equal(await upstreamCalls(), 2);
  // An ordinary 429 is still retried.
  await scripted([{ status: 429, headers: { 'retry-after-ms': '100' } }]);
  const retried = await postMessage(worker);
  assert.equal(retried.status, 200);
  assert.equal(retried.headers.get('x-proxy-attempts'), '2');
});
