// How long an attempt may run, end to end. ATTEMPT_TIMEOUT_MS bounds a stream's wait for its
// first event; a non-streaming answer, whose headers come only once the whole message is
// written, is waited for as long as the official SDKs wait (10 minutes), so a long answer is
// not cut into a 504. ATTEMPT_TIMEOUT_MS is 1 s here, and every slow answer takes longer.
import { test, before, after } from 'node:test';
import assert from 'node:assert/strict';
import Anthropic from '@anthropic-ai/sdk';
import {
  startSim, startWorker, workerVars, postMessage, messageBody, readEvents, CLIENT_KEY,
} from './harness.mjs';

const ATTEMPT_TIMEOUT_MS = 1000;

let sim;
let worker;

before(async () => {
  sim = await startSim();
  worker = await startWorker(workerVars(sim, {
    ATTEMPT_TIMEOUT_MS: String(ATTEMPT_TIMEOUT_MS),
    MAX_ATTEMPTS: '3',
    REQUEST_BUDGET_MS: '10000',
  }));
});

after(async () => {
  await worker?.stop();
  await sim?.stop();
});

async function scripted(faults) {
  await sim.reset();
  await sim.script(faults);
}

const upstreamCalls = async () => (await sim.log()).filter((r) => r.path === '/v1/messages').length;

test('a non-streaming answer written slower than ATTEMPT_TIMEOUT_MS arrives whole, in one attempt', async () => {
  // The simulator answers a JSON request once its 8 tokens are "written": 8 × 300 ms.
  await scripted([{ tokens: 8, token_delay_ms: 300 }]);
  const t0 = performance.now();
  const res = await postMessage(worker);
  const elapsed = performance.now() - t0;
  assert.equal(res.status, 200);
  const message = await res.json();
  assert.equal(message.type, 'message');
  assert.equal(message.usage.output_tokens, 8);
  assert.equal(res.headers.get('x-proxy-attempts'), '1');
  assert.equal(await upstreamCalls(), 1);
  assert.ok(elapsed >= 2 * ATTEMPT_TIMEOUT_MS, `answered after ${Math.round(elapsed)} ms`);
});

test('a non-streaming answer whose headers come late is not retried', async () => {
  await scripted([{ delay_ms: 2500 }]);
  const res = await postMessage(worker);
  assert.equal(res.status, 200);
  assert.equal((await res.json()).type, 'message');
  assert.equal(res.headers.get('x-proxy-attempts'), '1');
  assert.equal(await upstreamCalls(), 1);
});

test('the official SDK gets a slow non-streaming answer through the proxy', async () => {
  await scripted([{ tokens: 5, token_delay_ms: 400 }]);
  const client = new Anthropic({ baseURL: worker.url, apiKey: CLIENT_KEY, maxRetries: 0 });
  const message = await client.messages.create(messageBody());
  assert.equal(message.type, 'message');
  assert.equal(message.usage.output_tokens, 5);
  assert.equal(await upstreamCalls(), 1);
});

test('a stream whose first event is later than ATTEMPT_TIMEOUT_MS is retried, and answered by the next attempt', async () => {
  await scripted([{ delay_ms: 2500 }]);
  const t0 = performance.now();
  const res = await postMessage(worker, messageBody({ stream: true }));
  assert.equal(res.status, 200);
  const events = await readEvents(res);
  assert.equal(events.at(-1).name, 'message_stop');
  assert.equal(res.headers.get('x-proxy-attempts'), '2');
  assert.equal(await upstreamCalls(), 2);
  assert.ok(performance.now() - t0 >= ATTEMPT_TIMEOUT_MS);
});

test('a stream whose first event never comes in time on any attempt is a 504 timeout_error', async () => {
  // Headers at once, then silence: the first event, not the headers, is what is waited for.
  await scripted([{ stall_after_events: 0, times: 10 }]);
  const t0 = performance.now();
  const res = await postMessage(worker, messageBody({ stream: true }));
  const elapsed = performance.now() - t0;
  assert.equal(res.status, 504);
  const body = await res.json();
  assert.equal(body.error.type, 'timeout_error');
  assert.equal(res.headers.get('x-proxy-attempts'), '3');
  assert.equal(await upstreamCalls(), 3);
  // Three attempts of 1 s and two short waits; a generous bound on the mechanism.
  assert.ok(elapsed >= 3 * ATTEMPT_TIMEOUT_MS && elapsed < 10_000, `answered after ${Math.round(elapsed)} ms`);
});

test('a stream keeps going past ATTEMPT_TIMEOUT_MS once its first event came', async () => {
  // 6 deltas, 400 ms apart: 2.4 s in all, each gap well inside the 1 s silence bound.
  await scripted([{ tokens: 6, token_delay_ms: 400 }]);
  const res = await postMessage(worker, messageBody({ stream: true }));
  assert.equal(res.status, 200);
  const events = await readEvents(res);
  assert.equal(events.filter((e) => e.name === 'content_block_delta').length, 6);
  assert.equal(events.at(-1).name, 'message_stop');
  assert.equal(res.headers.get('x-proxy-attempts'), '1');
});

test('count_tokens keeps the configured timeout for its headers', async () => {
  await sim.reset();
  await sim.script([{ path: '/v1/messages/count_tokens', delay_ms: 2500, times: 10 }]);
  const res = await fetch(`${worker.url}/v1/messages/count_tokens`, {
    method: 'POST',
    headers: { 'content-type': 'application/json', 'x-api-key': CLIENT_KEY, 'anthropic-version': '2023-06-01' },
    body: JSON.stringify({ model: 'claude-sonnet-5-5', messages: [{ role: 'user', content: 'hi' }] }),
  });
  assert.equal(res.status, 504);
  assert.equal((await res.json()).error.type, 'timeout_error');
  assert.equal(res.headers.get('x-proxy-attempts'), '3');
});
