// The fault matrix end to end: every way the upstream can fail, scripted in the simulator,
// each answered as the contract says — and nothing lost. Every row runs as its own caller
// (per-caller limits: concurrency 2, output_tpm 100000, rpm 1000), and after the row the
// caller's object (read through the operator's view, which charges nothing) must show the
// settlement itself, well before anything else could make its figures look settled: the
// settlement call counted by the object, both slots free before the request's lease could
// lapse (15 s from its admission), and the output tokens refunded to the real usage (beyond
// what the bucket's refill could explain) or, when the answer was cut short or unreadable,
// kept. The table's "settled?" column is what was observed. Last, the upstream key's
// cooldown is shown to survive a restart.
import { test, before, after } from 'node:test';
import assert from 'node:assert/strict';
import { mkdtempSync, rmSync } from 'node:fs';
import { tmpdir } from 'node:os';
import path from 'node:path';
import {
  startSim, startWorker, workerVars, messageBody, readEvents, sleep, logLineOf,
} from './harness.mjs';

const LIMIT = 100_000;
const RESERVE = 30_000; // max_tokens of every row's request: a lost settlement stands out
const ATTEMPT_TIMEOUT_MS = 500;
const MAX_ATTEMPTS = 3;
const ADMIN_KEY = 'adm_fault_matrix_6c0d2e91';
// A request's slot is leased for at least 15 s from its admission (renewed while it waits or
// streams), and a kept reservation of RESERVE comes back by refill only after RESERVE / LIMIT
// minutes (18 s). Seen before this, a free slot and a refund can only be the settlement's doing.
const PROOF_WITHIN_MS = 12_000;

let sim;
let worker;
const matrix = [];
const rows = [];

const keyOf = (i) => `ck_fault_row_${String(i).padStart(2, '0')}_7f3a9c2e`;

before(async () => {
  sim = await startSim();
  const keys = {};
  for (let i = 0; i < 40; i++) keys[keyOf(i)] = { id: `fault-row-${i}` };
  worker = await startWorker(workerVars(sim, {
    RATE_LIMITS: JSON.stringify({ default: { concurrency: 2, output_tpm: LIMIT, rpm: 1000 } }),
    CLIENT_KEYS: JSON.stringify(keys),
    ATTEMPT_TIMEOUT_MS: String(ATTEMPT_TIMEOUT_MS),
    MAX_ATTEMPTS: String(MAX_ATTEMPTS),
    REQUEST_BUDGET_MS: '10000',
    ADMIN_KEY,
    BACKOFF_BASE_MS: '50',
    BACKOFF_MAX_MS: '400',
  }));
});

after(async () => {
  await worker?.stop();
  await sim?.stop();
});

function send(key, body, headers = {}) {
  return fetch(`${worker.url}/v1/messages`, {
    method: 'POST',
    headers: { 'content-type': 'application/json', 'x-api-key': key, 'anthropic-version': '2023-06-01', ...headers },
    body: JSON.stringify(body),
  });
}

/** The same request straight to the simulator, for byte-for-byte comparisons. */
async function direct(body, fault) {
  const res = await fetch(`${sim.url}/v1/messages`, {
    method: 'POST',
    headers: { 'content-type': 'application/json', 'x-api-key': 'k', 'x-sim-fault': JSON.stringify(fault) },
    body: JSON.stringify(body),
  });
  return Buffer.from(await res.arrayBuffer());
}

/** The row's requests that reached the upstream through the Worker (not the direct ones). */
const upstreamCalls = async (model) =>
  (await sim.log()).filter((r) => r.headers['x-api-key'] !== 'k' && r.body.includes(`"${model}"`));

/** Events of a stream, without the empty blocks an extra blank line makes. */
const eventsOf = async (res, t0) => (await readEvents(res, t0)).filter((e) => e.name !== 'message' || e.data);

/** The caller's figures as its object holds them now, by dimension, and its call counts. */
async function callerFigures(id) {
  const res = await fetch(`${worker.url}/proxy/status?caller=${encodeURIComponent(id)}`, { headers: { authorization: `Bearer ${ADMIN_KEY}` } });
  assert.equal(res.status, 200, `status: ${res.status}`);
  const { usage } = (await res.json()).caller;
  return { ...Object.fromEntries(usage.dimensions.map((d) => [d.dimension, d.remaining])), object: usage.object };
}

/**
 * After a row: the caller's object shows the request settled, before `PROOF_WITHIN_MS` from
 * its admission (so before its lease or the refill could fake it). `usage` is the output the
 * answer really used (refunded rows), or `kept` when the answer was cut short or unreadable and
 * its output reservation stands. Returns what was seen, for the table.
 */
async function assertSettled(id, { admittedAt, endedAt, usage = 0, kept = false }) {
  const deadline = admittedAt + PROOF_WITHIN_MS;
  const refill = (t) => ((t - admittedAt) / 60_000) * LIMIT;
  let seen;
  let at;
  for (;;) {
    seen = await callerFigures(id);
    at = performance.now();
    const slotsFree = seen.concurrency === 2;
    // Admission is one call; the settlement another (renewals counted apart).
    const settleCall = seen.object.calls - seen.object.renewals >= 2;
    const refunded = kept || seen.output_tpm >= LIMIT - usage - 1;
    if (slotsFree && settleCall && refunded) break;
    assert.ok(at < deadline,
      `no settlement ${Math.round((at - admittedAt) / 1000)} s after admission: slots free ${seen.concurrency} of 2, ` +
      `object calls ${JSON.stringify(seen.object)}, output ${seen.output_tpm} of ${LIMIT} left` +
      (kept ? '' : ` (settled: ≥ ${LIMIT - usage - 1})`));
    await sleep(100);
  }
  // A lost settlement would show the whole reservation, refilled since the admission at most.
  const unsettled = Math.floor(LIMIT - RESERVE + refill(at));
  if (kept) {
    assert.ok(seen.output_tpm <= unsettled + 100,
      `an incomplete answer was refunded: ${seen.output_tpm} left, expected about ${unsettled}`);
  } else {
    assert.ok(seen.output_tpm > unsettled + 100, `the refund (${seen.output_tpm} left) cannot be told from the refill (${unsettled})`);
  }
  return { afterMs: Math.round(at - endedAt), sinceAdmissionMs: Math.round(at - admittedAt), remaining: seen.output_tpm, unsettled, calls: seen.object };
}

/**
 * One row of the matrix: `run` sends the row's request(s) as its own caller and returns what
 * the client got; the row is recorded for the table and checked for lost limits.
 */
function row(name, upstream, run) {
  const i = rows.length;
  rows.push(name);
  test(`${name}`, async () => {
    await sim.reset();
    const key = keyOf(i);
    const model = `fault-model-${i}`;
    const admittedAt = performance.now();
    const got = await run({ key, model, body: (extra = {}) => messageBody({ model, max_tokens: RESERVE, ...extra }) });
    const endedAt = performance.now();
    const calls = (await upstreamCalls(model)).length;
    await sim.reset(); // faults left in the queue must not reach the checks below
    const seen = await assertSettled(`fault-row-${i}`, { admittedAt, endedAt, usage: got.usage ?? 0, kept: got.kept });
    const when = `${(seen.afterMs / 1000).toFixed(1)} s after the answer (${(seen.sinceAdmissionMs / 1000).toFixed(1)} s after admission)`;
    matrix.push({
      name,
      upstream,
      client: got.client,
      retried: calls > 1 ? `yes (${calls} upstream attempts)` : 'no',
      settled: got.kept
        ? `yes, ${when}: settlement call, slots free; output reservation kept (${seen.remaining} left, unsettled ≤ ${seen.unsettled})`
        : `yes, ${when}: settlement call, slots free; output refunded to the ${got.usage ?? 0} used (${seen.remaining} left, unsettled ≤ ${seen.unsettled})`,
    });
  });
}

// ---------------------------------------------------------------- overload

row('529 burst', 'two `529 overloaded_error`, then a normal answer', async ({ key, body }) => {
  await sim.script([{ status: 529, times: 2 }]);
  const res = await send(key, body());
  assert.equal(res.status, 200);
  assert.equal((await res.json()).type, 'message');
  assert.equal(res.headers.get('x-proxy-attempts'), '3');
  return { client: '`200` message', usage: 12 };
});

row('529 on every attempt', '`529` for every attempt', async ({ key, body, model }) => {
  await sim.script([{ status: 529, times: 10 }]);
  const res = await send(key, body());
  assert.equal(res.status, 503);
  const answer = await res.json();
  assert.equal(answer.error.type, 'overloaded_error');
  assert.equal(res.headers.get('x-proxy-attempts'), String(MAX_ATTEMPTS));
  assert.ok(Number(res.headers.get('retry-after')) >= 1);
  assert.equal((await upstreamCalls(model)).length, MAX_ATTEMPTS);
  return { client: '`503 overloaded_error`, `Retry-After` ≥ 1 s, after 3 attempts' };
});

row('overloaded in a 200 stream', '`200` SSE whose first event is `error: overloaded_error`, then a normal stream', async ({ key, body }) => {
  await sim.script([{ error_event_after: 0, error_type: 'overloaded_error' }]);
  const res = await send(key, body({ stream: true }));
  assert.equal(res.status, 200);
  const events = await eventsOf(res);
  assert.equal(events[0].name, 'message_start');
  assert.equal(events.at(-1).name, 'message_stop');
  assert.ok(!events.some((e) => e.name === 'error'));
  return { client: '`200` stream, complete, no error event', usage: 12 };
});

row('error event mid-stream', '`200` SSE, 5 events, then `error: overloaded_error`', async ({ key, body }) => {
  await sim.script([{ error_event_after: 5, error_type: 'overloaded_error' }]);
  const res = await send(key, body({ stream: true }));
  assert.equal(res.status, 200);
  const events = await eventsOf(res);
  assert.equal(events.length, 6);
  assert.equal(JSON.parse(events.at(-1).data).error.type, 'overloaded_error');
  // The stream reported one output token so far; that is what it is settled with.
  return { client: '`200` stream: 5 events, then the upstream\'s `error` event', usage: 1 };
});

// ---------------------------------------------------------------- 429 and its retry-after forms

async function retryAfterRow({ key, body, model }, headers, floorMs) {
  await sim.script([{ status: 429, headers }]);
  const res = await send(key, body());
  assert.equal(res.status, 200);
  await res.arrayBuffer();
  const calls = await upstreamCalls(model);
  assert.equal(calls.length, 2);
  const gap = calls[1].received_at_ms - calls[0].received_at_ms;
  const floor = typeof floorMs === 'function' ? floorMs(calls[0].received_at_ms) : floorMs;
  assert.ok(gap >= floor - 5, `retried after ${Math.round(gap)} ms, before the upstream's ${floor} ms`);
  assert.ok(gap < floor + 1500, `waited ${Math.round(gap)} ms for a ${floor} ms retry-after`);
  return Math.round(gap);
}

row('429, retry-after in seconds', '`429` with `retry-after: 1`', async (ctx) => {
  const gap = await retryAfterRow(ctx, { 'retry-after': '1' }, 1000);
  return { client: `\`200\` message; retried after ${gap} ms (≥ 1000)`, usage: 12 };
});

row('429, retry-after in fractional seconds', '`429` with `retry-after: 0.6`', async (ctx) => {
  const gap = await retryAfterRow(ctx, { 'retry-after': '0.6' }, 600);
  return { client: `\`200\` message; retried after ${gap} ms (≥ 600)`, usage: 12 };
});

row('429, retry-after as an HTTP date', '`429` with `retry-after: <HTTP-date 2 s ahead>`', async (ctx) => {
  const at = Math.ceil((Date.now() + 2000) / 1000) * 1000;
  const gap = await retryAfterRow(ctx, { 'retry-after': new Date(at).toUTCString() }, (first) => at - first);
  return { client: `\`200\` message; retried after ${gap} ms (at the date)`, usage: 12 };
});

row('429, retry-after-ms', '`429` with `retry-after-ms: 700`', async (ctx) => {
  const gap = await retryAfterRow(ctx, { 'retry-after-ms': '700' }, 700);
  return { client: `\`200\` message; retried after ${gap} ms (≥ 700)`, usage: 12 };
});

row('429 outlasting the budget', '`429` with `retry-after: 2`, request budget 800 ms', async ({ key, body, model }) => {
  await sim.script([{ status: 429, headers: { 'retry-after': '2' }, times: 5 }]);
  const res = await send(key, body(), { 'x-proxy-budget-ms': '800' });
  assert.equal(res.status, 429);
  assert.deepEqual((await logLineOf(worker, res)).waits, [], 'the proxy slept a wait it knew would outlast the budget');
  const answer = await res.json();
  assert.equal(answer.error.type, 'rate_limit_error');
  assert.equal(answer.limit.scope, 'upstream');
  assert.equal(res.headers.get('retry-after'), '2');
  assert.equal((await upstreamCalls(model)).length, 1);
  // The key is in cooldown for the next 2 s; let it pass so the next rows start clean.
  await sleep(answer.retry_after_ms + 100);
  await sim.reset();
  return { client: '`429 rate_limit_error`, `limit.scope: upstream`, `Retry-After: 2`, at once' };
});

// ---------------------------------------------------------------- timeouts and stalls

row('hang before headers (stream)', 'accepts the request, never answers', async ({ key, body }) => {
  await sim.script([{ hang: true }]);
  const t0 = performance.now();
  const res = await send(key, body({ stream: true }));
  assert.equal(res.status, 200);
  const events = await eventsOf(res, t0);
  assert.equal(events.at(-1).name, 'message_stop');
  assert.ok(performance.now() - t0 >= ATTEMPT_TIMEOUT_MS);
  assert.equal(res.headers.get('x-proxy-attempts'), '2');
  return { client: `\`200\` stream, after the ${ATTEMPT_TIMEOUT_MS} ms attempt timeout`, usage: 12 };
});

row('slow message (JSON)', 'answers once the message is written, after 3 × the attempt timeout', async ({ key, body }) => {
  await sim.script([{ delay_ms: 3 * ATTEMPT_TIMEOUT_MS }]);
  const t0 = performance.now();
  const res = await send(key, body());
  assert.equal(res.status, 200);
  assert.equal((await res.json()).usage.output_tokens, 12);
  assert.ok(performance.now() - t0 >= 3 * ATTEMPT_TIMEOUT_MS);
  assert.equal(res.headers.get('x-proxy-attempts'), '1');
  return { client: '`200` message: a non-streaming answer is waited for as long as the SDKs wait', usage: 12 };
});

row('stall mid-JSON', '`200` JSON headers and 20 bytes, then silence, connection open', async ({ key, body }) => {
  await sim.script([{ stall_after_bytes: 20 }]);
  // A watched JSON answer is read whole within the attempt's time for a body: the stalled one
  // is an attempt timeout, retried, instead of a request that hangs while its slot is renewed.
  const t0 = performance.now();
  const res = await fetch(`${worker.url}/v1/messages`, {
    method: 'POST',
    headers: { 'content-type': 'application/json', 'x-api-key': key, 'anthropic-version': '2023-06-01', 'accept-encoding': 'identity' },
    body: JSON.stringify(body()),
    signal: AbortSignal.timeout(15_000),
  });
  assert.equal(res.status, 200);
  const answer = await res.json();
  assert.equal(answer.type, 'message');
  assert.equal(res.headers.get('x-proxy-attempts'), '2');
  assert.ok(performance.now() - t0 >= ATTEMPT_TIMEOUT_MS);
  return { client: `\`200\` message after the ${ATTEMPT_TIMEOUT_MS} ms attempt timeout`, usage: answer.usage.output_tokens };
});

row('hang on every attempt (stream)', 'never answers, every attempt', async ({ key, body }) => {
  await sim.script([{ hang: true, times: 10 }]);
  const res = await send(key, body({ stream: true }));
  assert.equal(res.status, 504);
  assert.equal((await res.json()).error.type, 'timeout_error');
  assert.equal(res.headers.get('x-proxy-attempts'), String(MAX_ATTEMPTS));
  return { client: '`504 timeout_error`, `Retry-After` ≥ 1 s' };
});

row('stall mid-stream', '`200` SSE, 5 events, then silence with the connection open', async ({ key, body }) => {
  await sim.script([{ stall_after_events: 5 }]);
  const t0 = performance.now();
  const res = await send(key, body({ stream: true }));
  assert.equal(res.status, 200);
  const events = await eventsOf(res, t0);
  assert.equal(events.length, 6, events.map((e) => e.name).join(' '));
  const last = events.at(-1);
  assert.equal(last.name, 'error');
  assert.equal(JSON.parse(last.data).error.type, 'api_error');
  assert.match(JSON.parse(last.data).error.message, /went silent/);
  const silence = last.at - events[4].at;
  assert.ok(silence >= ATTEMPT_TIMEOUT_MS - 20 && silence < ATTEMPT_TIMEOUT_MS + 1000, `error event after ${silence} ms of silence`);
  assert.equal(res.headers.get('x-proxy-attempts'), '1');
  return { client: `\`200\` stream: 5 events, then \`error\` (\`api_error\`) after ${ATTEMPT_TIMEOUT_MS} ms of silence; stream ends`, kept: true };
});

// ---------------------------------------------------------------- resets

row('reset before headers', 'TCP reset, no response', async ({ key, body }) => {
  await sim.script([{ reset: 'before_headers' }]);
  const res = await send(key, body());
  assert.equal(res.status, 200);
  await res.arrayBuffer();
  assert.equal(res.headers.get('x-proxy-attempts'), '2');
  return { client: '`200` message', usage: 12 };
});

row('reset mid-stream (stream_cut_by_upstream_ended_silently)', '`200` SSE, 3 events, then a TCP reset', async ({ key, body }) => {
  await sim.script([{ reset: 'after_headers', after_events: 3 }]);
  const res = await send(key, body({ stream: true }));
  assert.equal(res.status, 200);
  const events = await eventsOf(res);
  assert.deepEqual(events.slice(0, 3).map((e) => e.name), ['message_start', 'content_block_start', 'ping']);
  // Regression: the stream used to just stop, as cleanly as a complete one.
  assert.equal(events.length, 4);
  assert.equal(events[3].name, 'error');
  assert.equal(JSON.parse(events[3].data).error.type, 'api_error');
  assert.match(JSON.parse(events[3].data).error.message, /connection was lost/);
  assert.equal(res.headers.get('x-proxy-attempts'), '1');
  return { client: '`200` stream: 3 events, then `error` (`api_error`); stream ends, no retry', kept: true };
});

row('reset mid-JSON', '`200` JSON headers, then a TCP reset', async ({ key, body }) => {
  await sim.script([{ reset: 'after_headers' }]);
  // A watched JSON answer of known length is read whole in its attempt: nothing of the cut
  // body has reached the client, so it is retried like a lost connection.
  const res = await send(key, body(), { 'accept-encoding': 'identity' });
  assert.equal(res.status, 200);
  const answer = await res.json();
  assert.equal(answer.type, 'message');
  assert.equal(res.headers.get('x-proxy-attempts'), '2');
  return { client: '`200` message, complete', usage: answer.usage.output_tokens };
});

// ---------------------------------------------------------------- malformed bodies

row('malformed SSE', '`200` SSE with broken events, invalid UTF-8, a cut-off end', async ({ key, body }) => {
  await sim.script([{ malformed: 'sse' }]);
  const res = await send(key, body({ stream: true }));
  assert.equal(res.status, 200);
  const got = Buffer.from(await res.arrayBuffer());
  const want = await direct(body({ stream: true }), { malformed: 'sse' });
  assert.ok(got.equals(want), 'the broken stream was not passed through byte for byte');
  assert.equal(res.headers.get('x-proxy-attempts'), '1');
  return { client: `\`200\`, the ${got.length} broken bytes passed through unchanged`, kept: true };
});

row('truncated JSON', '`200` `application/json` cut in the middle', async ({ key, body }) => {
  await sim.script([{ malformed: 'json' }]);
  const res = await send(key, body());
  assert.equal(res.status, 200);
  const text = await res.text();
  assert.throws(() => JSON.parse(text));
  const want = await direct(body(), { malformed: 'json' });
  assert.equal(Buffer.byteLength(text), want.length);
  return { client: `\`200\`, the ${want.length} bytes passed through (not valid JSON)`, kept: true };
});

// ---------------------------------------------------------------- size and the client going away

row('huge answer', '`200` SSE of 3000 deltas padded to ~30 MB', async ({ key, body }) => {
  const fault = { tokens: 3000, pad_bytes: 10_000 };
  const res = await send(key, body({ stream: true }), { 'x-sim-fault': JSON.stringify(fault) });
  assert.equal(res.status, 200);
  let bytes = 0;
  let deltas = 0;
  let text = 0;
  const decoder = new TextDecoder();
  let buf = '';
  for await (const chunk of res.body) {
    bytes += chunk.length;
    buf += decoder.decode(chunk, { stream: true });
    let idx;
    while ((idx = buf.indexOf('\n\n')) >= 0) {
      const raw = buf.slice(0, idx);
      buf = buf.slice(idx + 2);
      if (raw.startsWith('event: content_block_delta')) {
        deltas += 1;
        text += JSON.parse(raw.slice(raw.indexOf('data: ') + 6)).delta.text.length;
      }
    }
  }
  const want = await direct(body({ stream: true }), fault);
  assert.equal(bytes, want.length, 'bytes lost or added on the way');
  assert.ok(bytes > 30_000_000, `only ${bytes} bytes`);
  assert.equal(deltas, 3000);
  assert.ok(text >= 3000 * 10_000);
  return { client: `\`200\` stream, all ${(bytes / 1e6).toFixed(1)} MB (${deltas} deltas), byte count equal to the upstream's`, usage: 3000 };
});

row('client disconnects mid-stream', 'a slow stream (200 deltas, 20 ms apart)', async ({ key, body }) => {
  const res = await send(key, body({ stream: true }), { 'x-sim-fault': JSON.stringify({ tokens: 200, token_delay_ms: 20 }) });
  assert.equal(res.status, 200);
  const reader = res.body.getReader();
  let seen = 0;
  while (seen < 2_000) {
    const { value, done } = await reader.read();
    assert.ok(!done);
    seen += value.length;
  }
  await reader.cancel();
  return { client: '`200` stream; the client reads ~2 KB and goes away', kept: true };
});

test('after the matrix: every caller has both slots, and the table', async () => {
  // All callers at once, two overlapping requests each: a slot lost anywhere shows here.
  const probe = { model: 'probe-model', max_tokens: 1, messages: [{ role: 'user', content: 'probe' }] };
  const slow = { 'x-sim-fault': JSON.stringify({ tokens: 2, token_delay_ms: 200 }) };
  const results = await Promise.all(rows.flatMap((_, i) => [send(keyOf(i), probe, slow), send(keyOf(i), probe, slow)]));
  await Promise.all(results.map((r) => r.arrayBuffer()));
  assert.deepEqual(results.map((r) => r.status).filter((s) => s !== 200), []);
  // And the Worker logged no settlement failure.
  assert.ok(!worker.logs.some((l) => l.includes('settle_failed')), 'a settlement failed');

  console.log('| row | what the upstream did | what the client got | retried? | settled? |');
  console.log('|---|---|---|---|---|');
  for (const r of matrix) {
    console.log(`| ${r.name} | ${r.upstream} | ${r.client} | ${r.retried} | ${r.settled} |`);
  }
});

test('durability: the upstream key\'s cooldown survives a restart of the Worker and its objects', async () => {
  const dir = mkdtempSync(path.join(tmpdir(), 'breakwater-upstream-'));
  const key = keyOf(39);
  const fast = { 'x-proxy-budget-ms': '1000' };
  try {
    let w = await startWorker(workerVars(sim, { CLIENT_KEYS: JSON.stringify({ [key]: { id: 'durable' } }) }), { persistDir: dir });
    await sim.reset();
    await sim.script([{ status: 429, headers: { 'retry-after': '30' } }]);
    const first = await fetch(`${w.url}/v1/messages`, { method: 'POST', headers: { 'x-api-key': key, 'content-type': 'application/json', ...fast }, body: JSON.stringify(messageBody()) });
    assert.equal(first.status, 429);
    await first.arrayBuffer();
    await w.stop();

    w = await startWorker(workerVars(sim, { CLIENT_KEYS: JSON.stringify({ [key]: { id: 'durable' } }) }), { persistDir: dir });
    try {
      await sim.reset();
      // A fresh isolate sends its first attempt without asking (the happy path); the 529 it
      // gets makes it consult the key's object, which still holds the cooldown.
      await sim.script([{ status: 529 }]);
      const res = await fetch(`${w.url}/v1/messages`, { method: 'POST', headers: { 'x-api-key': key, 'content-type': 'application/json', ...fast }, body: JSON.stringify(messageBody()) });
      const body = await res.json();
      assert.equal(res.status, 429, `the restarted object forgot the cooldown: ${JSON.stringify(body)}`);
      assert.equal(body.limit.scope, 'upstream');
      assert.ok(body.retry_after_ms > 20_000, `cooldown of ${body.retry_after_ms} ms left`);
      assert.equal((await sim.log()).length, 1, 'the retry reached the upstream during the cooldown');
    } finally {
      await w.stop();
    }
  } finally {
    rmSync(dir, { recursive: true, force: true });
  }
});
