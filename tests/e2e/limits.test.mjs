// Per-caller rate limits end to end: the real Durable Object in workerd, exact under
// concurrency, settled from the answer's usage, honest about when to come back, durable.
import { test, before, after } from 'node:test';
import assert from 'node:assert/strict';
import { mkdtempSync, readdirSync, rmSync } from 'node:fs';
import { execFileSync } from 'node:child_process';
import { tmpdir } from 'node:os';
import path from 'node:path';
import Anthropic from '@anthropic-ai/sdk';
import {
  startSim, startWorker, workerVars, postMessage, messageBody, readEvents, sleep, mintToken, CLIENT_KEY,
} from './harness.mjs';

const BOB = 'ck_test_bob_a81f2c93d4e5';
const ADMIN_KEY = 'adm_limits_e2e_91b3c7d5e2';

let sim;
before(async () => { sim = await startSim(); });
after(async () => { await sim?.stop(); });

function limitedWorker(limits, extra = {}, options = {}) {
  return startWorker(workerVars(sim, {
    RATE_LIMITS: JSON.stringify({ default: limits }),
    CLIENT_KEYS: JSON.stringify({ [CLIENT_KEY]: { id: 'alice' }, [BOB]: { id: 'bob' } }),
    ...extra,
  }), options);
}

async function settleSoon() {
  // Settlement runs under waitUntil once the body has been read; give it a moment.
  await sleep(150);
}

/** The caller's figures as its object holds them now (GET /proxy/status, which charges nothing). */
async function callerUsage(w, id = 'alice') {
  const res = await fetch(`${w.url}/proxy/status?caller=${id}`, { headers: { authorization: `Bearer ${ADMIN_KEY}` } });
  assert.equal(res.status, 200, await res.clone().text());
  const { usage } = (await res.json()).caller;
  return Object.fromEntries(usage.dimensions.map((d) => [d.dimension, d]));
}

/** Waits until every concurrency slot of the caller is back: its requests have settled. */
async function settled(w, id = 'alice') {
  for (let i = 0; i < 100; i += 1) {
    const { concurrency } = await callerUsage(w, id);
    if (concurrency.remaining === concurrency.limit) return;
    await sleep(50);
  }
  assert.fail(`${id}: the slots did not come back, so the requests never settled`);
}

test('parallel requests on one key: exactly the quota is admitted, the rest get an honest 429', async () => {
  const w = await limitedWorker({ rpm: 30 });
  try {
    await sim.reset();
    const results = await Promise.all(Array.from({ length: 45 }, () => postMessage(w)));
    const admitted = results.filter((r) => r.status === 200);
    const denied = results.filter((r) => r.status === 429);
    assert.equal(admitted.length, 30);
    assert.equal(denied.length, 15);
    assert.equal((await sim.log()).length, 30, 'a denied request reached the upstream');

    const res = denied[0];
    const body = await res.json();
    assert.equal(body.error.type, 'rate_limit_error');
    assert.deepEqual({ ...body.limit }, { scope: 'key', dimension: 'rpm', limit: 30, remaining: 0 });
    const ms = Number(res.headers.get('retry-after-ms'));
    assert.equal(body.retry_after_ms, ms);
    assert.ok(ms > 0 && ms <= 2000, `one request refills every 2 s, got ${ms}`);
    assert.equal(Number(res.headers.get('retry-after')), Math.max(1, Math.ceil(ms / 1000)));
    assert.equal(res.headers.get('x-should-retry'), 'true');
    assert.match(res.headers.get('ratelimit-policy'), /"rpm";q=30;w=60/);
    assert.match(res.headers.get('ratelimit'), /"rpm";r=0;t=\d+/);
    await Promise.all(results.map((r) => r.bodyUsed ? null : r.arrayBuffer()));

    // Honest: come back when it says, and get in.
    const retryAfters = await Promise.all(denied.slice(1).map(async (r) => Number(r.headers.get('retry-after-ms'))));
    const wait = Math.min(ms, ...retryAfters);
    await sleep(wait + 20);
    const again = await postMessage(w);
    assert.equal(again.status, 200, `denied again after waiting the ${wait} ms it was told`);
  } finally {
    await w.stop();
  }
});

test('keys have their own limits, and see their own limit headers', async () => {
  const w = await limitedWorker({ rpm: 2, output_tpm: 5000 });
  try {
    for (let i = 0; i < 2; i++) assert.equal((await postMessage(w)).status, 200);
    assert.equal((await postMessage(w)).status, 429);
    const bob = await postMessage(w, messageBody(), { 'x-api-key': BOB });
    assert.equal(bob.status, 200);
    assert.equal(bob.headers.get('anthropic-ratelimit-requests-limit'), '2');
    assert.equal(bob.headers.get('anthropic-ratelimit-requests-remaining'), '1');
    assert.equal(bob.headers.get('anthropic-ratelimit-output-tokens-limit'), '5000');
    assert.match(bob.headers.get('anthropic-ratelimit-requests-reset'), /^\d{4}-\d\d-\d\dT\d\d:\d\d:\d\dZ$/);
  } finally {
    await w.stop();
  }
});

// The documented default tier, as a deployment without RATE_LIMITS gets it: 50 rpm, 40 000 input
// and 8 000 output tokens a minute, 4 at once.
function defaultWorker() {
  const vars = workerVars(sim, { ADMIN_KEY });
  delete vars.RATE_LIMITS;
  return startWorker(vars);
}

// Claude Code asks for max_tokens 32 000 (64 000 on Opus). Anthropic serves that on a key whose
// output limit is 8 000 a minute: the request reserves the whole (full) bucket and settles to
// what it produced. So does the proxy, and a request that used little leaves room for the next.
test('the default tier serves Claude Code: max_tokens 32 000 and 64 000 above output_tpm 8 000', async () => {
  const w = await defaultWorker();
  try {
    await sim.reset();
    const first = await postMessage(w, messageBody({ max_tokens: 32_000, stream: true }));
    assert.equal(first.status, 200, await first.clone().text());
    // Reserved: the whole bucket, not 32 000 tokens of debt.
    assert.equal(first.headers.get('anthropic-ratelimit-output-tokens-limit'), '8000');
    assert.equal(first.headers.get('anthropic-ratelimit-output-tokens-remaining'), '0');
    const events = await readEvents(first);
    assert.equal(events.at(-1).name, 'message_stop');
    assert.match(events.find((e) => e.name === 'message_delta').data, /"output_tokens":12\b/);
    await settled(w);
    // Settled to the 12 tokens produced: the rest of the bucket is back.
    const output = (await callerUsage(w)).output_tpm;
    assert.ok(output.remaining >= 8000 - 12 && output.remaining <= 8000, JSON.stringify(output));

    // A small request (Claude Code's side requests) goes at once.
    const small = await postMessage(w, messageBody({ max_tokens: 1024 }));
    assert.equal(small.status, 200);
    await small.arrayBuffer();
    await settled(w);

    // The next large one needs the bucket full again: at most the 24 tokens used so far, 7.5 ms
    // each, are still refilling. It goes at once, or is told that short wait and then goes.
    let opus = await postMessage(w, messageBody({ model: 'claude-opus-5', max_tokens: 64_000 }));
    console.log(`# max_tokens 64 000 after 24 tokens used: ${opus.status}${opus.status === 429 ? `, retry after ${opus.headers.get('retry-after-ms')} ms` : ''}`);
    if (opus.status === 429) {
      const body = await opus.json();
      assert.equal(body.limit.dimension, 'output_tpm');
      const ms = Number(opus.headers.get('retry-after-ms'));
      assert.ok(ms >= 1 && ms <= Math.ceil(24 * 7.5), `a wait of ${ms} ms for 24 tokens at 8 000 a minute`);
      await sleep(ms);
      opus = await postMessage(w, messageBody({ model: 'claude-opus-5', max_tokens: 64_000 }));
    }
    assert.equal(opus.status, 200, await opus.clone().text());
    assert.equal((await opus.json()).usage.output_tokens, 12);
    // The upstream saw the requests as sent, max_tokens and all.
    const sent = (await sim.log()).map((entry) => JSON.parse(entry.body).max_tokens);
    assert.deepEqual(sent, [32_000, 1024, 64_000]);
  } finally {
    await w.stop();
  }
});

// An answer longer than the whole bucket (10 000 tokens of 8 000 a minute) is charged in full
// when it settles: the caller is in debt, and the next request is told exactly how long to wait.
test('output beyond the bucket puts the caller in debt, and the next 429 says how long it lasts', async () => {
  const w = await defaultWorker();
  try {
    const long = { 'x-sim-fault': JSON.stringify({ tokens: 10_000 }) };
    const sentAt = Date.now();
    const res = await postMessage(w, messageBody({ max_tokens: 32_000, stream: true }), long);
    assert.equal(res.status, 200);
    const events = await readEvents(res);
    assert.match(events.find((e) => e.name === 'message_delta').data, /"output_tokens":10000\b/);
    await settled(w);

    const small = messageBody({ max_tokens: 1 });
    const denied = await postMessage(w, small);
    const deniedAt = Date.now();
    assert.equal(denied.status, 429);
    assert.equal(denied.headers.get('x-should-retry'), 'true');
    const body = await denied.json();
    assert.equal(body.error.type, 'rate_limit_error');
    assert.match(body.error.message, /^output_tpm limit of 8000 reached for this key; retry in \d+ s$/);
    assert.deepEqual({ ...body.limit }, { scope: 'key', dimension: 'output_tpm', limit: 8000, remaining: 0 });
    // 10 000 tokens charged when the stream was admitted (8 000) and settled (2 000 more): the
    // next token fits once 2 001 tokens have refilled, 15 007.5 ms at 8 000 a minute, counted
    // from the admission. The margin: the time from sending the first request to this answer,
    // during which the bucket refilled, and 1 ms of rounding.
    const ms = Number(denied.headers.get('retry-after-ms'));
    const elapsed = deniedAt - sentAt;
    console.log(`# in debt: retry after ${ms} ms, expected ${15_008 - elapsed - 1}..15008`);
    assert.equal(body.retry_after_ms, ms);
    assert.ok(ms <= 15_008 && ms >= 15_008 - elapsed - 1, `retry after ${ms} ms, ${elapsed} ms after the first request`);
    assert.equal(Number(denied.headers.get('retry-after')), Math.ceil(ms / 1000));
    assert.match(denied.headers.get('ratelimit'), /"output_tpm";r=0;t=\d+/);

    // A request larger than the bucket waits for all of it: the debt and a whole minute more.
    const big = await postMessage(w, messageBody({ max_tokens: 32_000 }));
    const bigAt = Date.now();
    assert.equal(big.status, 429);
    const bigMs = Number(big.headers.get('retry-after-ms'));
    assert.ok(bigMs <= 75_000 && bigMs >= 75_000 - (bigAt - sentAt) - 1, `retry after ${bigMs} ms`);
    await big.arrayBuffer();

    // The operator sees the same debt: nothing left, full again when the 429s said.
    const output = (await callerUsage(w)).output_tpm;
    assert.equal(output.remaining, 0);
    assert.ok(output.reset_ms <= 75_000 && output.reset_ms >= 75_000 - (Date.now() - sentAt) - 1, JSON.stringify(output));
  } finally {
    await w.stop();
  }
});

test('settlement gives unused output tokens back (JSON and stream)', async () => {
  const w = await limitedWorker({ output_tpm: 1000 });
  try {
    // Each request reserves 600 of 1000 output tokens but the answer uses 12.
    for (const stream of [false, true, false, true]) {
      const res = await postMessage(w, messageBody({ max_tokens: 600, stream }));
      assert.equal(res.status, 200, `request ${stream ? 'stream' : 'json'} denied: settlement did not return tokens`);
      await res.arrayBuffer();
      await settleSoon();
    }
    // Without settlement the second reservation would already be denied.
    const hold = await postMessage(w, messageBody({ max_tokens: 600 }), { 'x-sim-fault': JSON.stringify({ tokens: 590 }) });
    assert.equal(hold.status, 200);
    await hold.arrayBuffer();
    await settleSoon();
    const denied = await postMessage(w, messageBody({ max_tokens: 600 }));
    assert.equal(denied.status, 429, 'a used-up answer must keep its tokens charged');
    assert.equal((await denied.json()).limit.dimension, 'output_tpm');
  } finally {
    await w.stop();
  }
});

// A hot caller far from its limits is admitted mostly from local credit: tickets its object
// granted in advance, so answers of one grant carry the same limit figures. Once the tickets'
// second is up and the settlements are in, the object holds exactly what went: every slot is
// back, and `rpm` shows the requests made and nothing for the tickets left unused.
test('a hot caller is admitted on credit, and the ledger is exact once the returns are in', async () => {
  const rpm = 3000;
  const w = await limitedWorker({ rpm, output_tpm: 600_000, concurrency: 640 }, { ADMIN_KEY });
  try {
    await sim.reset();
    const remaining = [];
    const firstAt = performance.now();
    const lane = async () => {
      for (let i = 0; i < 40; i += 1) {
        const res = await postMessage(w);
        assert.equal(res.status, 200);
        remaining.push(res.headers.get('anthropic-ratelimit-requests-remaining'));
        assert.match(res.headers.get('ratelimit'), /"rpm";r=\d+;t=\d+, "output_tpm";r=\d+;t=\d+, "concurrency";r=\d+/);
        await res.arrayBuffer();
      }
    };
    await Promise.all(Array.from({ length: 8 }, lane));
    assert.equal((await sim.log()).length, 320);
    // Asked of the object, each answer shows its own figure; on credit, a grant's answers share one.
    const seen = {};
    for (const r of remaining) seen[r] = (seen[r] ?? 0) + 1;
    const shared = remaining.filter((r) => seen[r] > 1).length;
    console.log(`# ${shared} of 320 answers share their figures with another (admitted on credit)`);
    assert.ok(shared > 160, `only ${shared} of 320 answers were admitted on credit`);

    await sleep(2500);
    // The operator's view charges nothing: it shows the ledger.
    const ledger = await callerUsage(w);
    const probeAt = performance.now();
    assert.equal(ledger.concurrency.remaining, 640, 'a slot was not given back');
    assert.deepEqual([ledger.output_tpm.remaining, ledger.output_tpm.reset_ms], [600_000, 0], 'output tokens were not given back');
    // 320 requests charged, the bucket refilling at rpm/60 a second from the first charge on (it
    // never ran dry): what is left is known to the time between the first charge (just after the
    // first send) and the probe's (just before its answer). Tickets left unused and not given
    // back would fall below this.
    const left = ledger.rpm.remaining;
    const refill = (ms) => (rpm / 60_000) * ms;
    const low = Math.floor(rpm - 320 + refill(probeAt - 150 - (firstAt + 150)));
    const high = Math.ceil(rpm - 320 + refill(probeAt - firstAt));
    console.log(`# rpm remaining ${left}, expected ${low}..${high}`);
    assert.ok(left >= low && left <= high, `rpm remaining ${left} outside ${low}..${high}`);
  } finally {
    await w.stop();
  }
});

test('prompt caching: cache reads are free against input_tpm, cache writes are charged (JSON and stream)', async () => {
  const w = await limitedWorker({ input_tpm: 2000 });
  try {
    // 20 000 tokens read from the cache, ten times the tier's minute: the next request goes at once.
    const reads = { 'x-sim-fault': JSON.stringify({ usage: { cache_read_input_tokens: 20_000 } }) };
    for (const stream of [false, true, false]) {
      const res = await postMessage(w, messageBody({ stream }), reads);
      assert.equal(res.status, 200, `${stream ? 'stream' : 'json'}: locked out by an earlier cache read`);
      const text = await res.text();
      assert.match(text, /"cache_read_input_tokens":20000/);
      await settleSoon();
    }
    const next = await postMessage(w);
    assert.equal(next.status, 200, 'cache reads were charged against input_tpm');
    const remaining = Number(next.headers.get('anthropic-ratelimit-input-tokens-remaining'));
    assert.ok(remaining > 1900, `only ${remaining} of 2000 input tokens left after cache reads`);
    await next.arrayBuffer();

    // 5 000 tokens written to the cache count as input: the tier is in debt and says for how long.
    for (const stream of [false, true]) {
      const key = stream ? BOB : CLIENT_KEY;
      const writes = { 'x-api-key': key, 'x-sim-fault': JSON.stringify({ usage: { cache_creation_input_tokens: 5000 } }) };
      const res = await postMessage(w, messageBody({ stream }), writes);
      assert.equal(res.status, 200);
      await res.arrayBuffer();
      await settleSoon();
      const denied = await postMessage(w, messageBody(), { 'x-api-key': key });
      assert.equal(denied.status, 429, `${stream ? 'stream' : 'json'}: cache writes were not charged`);
      const body = await denied.json();
      assert.equal(body.limit.dimension, 'input_tpm');
      // About 3 000 tokens of debt at 2 000 a minute: some 90 s.
      const ms = Number(denied.headers.get('retry-after-ms'));
      assert.ok(ms > 80_000 && ms < 100_000, `retry after ${ms} ms`);
    }
  } finally {
    await w.stop();
  }
});

test('a 1 MB image is estimated at about 1 600 input tokens, not by its bytes', async () => {
  const w = await limitedWorker({ input_tpm: 2000 });
  try {
    const image = { type: 'image', source: { type: 'base64', media_type: 'image/jpeg', data: '/9j/'.repeat(333_334) } };
    const body = messageBody({ messages: [{ role: 'user', content: [image, { type: 'text', text: 'What is in this picture?' }] }] });
    const res = await postMessage(w, body);
    assert.equal(res.status, 200);
    // Reserved before the answer: one token per three bytes would have taken the whole bucket.
    const remaining = Number(res.headers.get('anthropic-ratelimit-input-tokens-remaining'));
    assert.ok(remaining >= 360 && remaining <= 400, `${remaining} of 2000 input tokens left after the reservation`);
    const answer = await res.json();
    // The simulator reads no size from this data: the most an image costs, the question's 6
    // tokens and the two turn markers' 8.
    assert.equal(answer.usage.input_tokens, 1600 + 6 + 8);
  } finally {
    await w.stop();
  }
});

test('concurrency slots are held while streaming and freed at the end', async () => {
  const w = await limitedWorker({ concurrency: 2 });
  try {
    const slow = { 'x-sim-fault': JSON.stringify({ tokens: 10, token_delay_ms: 80 }) };
    const a = await postMessage(w, messageBody({ stream: true }), slow);
    const b = await postMessage(w, messageBody({ stream: true }), slow);
    assert.equal(a.status, 200);
    assert.equal(b.status, 200);
    const third = await postMessage(w);
    assert.equal(third.status, 429);
    assert.equal((await third.json()).limit.dimension, 'concurrency');
    await Promise.all([readEvents(a), readEvents(b)]);
    await settleSoon();
    assert.equal((await postMessage(w)).status, 200);

  } finally {
    await w.stop();
  }
});

/** What the caller's object did since it was loaded: calls, renewals, writes. */
async function objectCalls(w, id = 'alice') {
  const res = await fetch(`${w.url}/proxy/status?caller=${id}`, { headers: { authorization: `Bearer ${ADMIN_KEY}` } });
  assert.equal(res.status, 200, await res.clone().text());
  return (await res.json()).caller.usage.object;
}

// A closed tab: the client reads the first delta of a slow stream and goes away. The request's
// settlement gives the slot back within 10 s (at the watch's next look). Local workerd
// sometimes drops such a request whole, settlement included (as an isolate killed for its CPU
// would be): its slot comes back when its lease ends, this early in the answer the waiting
// lease of 15 s. Which of the two happened is read from the object: a settled request made
// two calls (admission and settlement) besides its renewals, one dropped whole only one.
// Twenty callers at once (concurrency 1 each).
test('every client that walks away mid-stream gets its slot back: within 10 s when settled, else when its lease ends', async () => {
  const N = 20;
  const keys = Array.from({ length: N }, (_, i) => `ck_test_tab_${String(i).padStart(2, '0')}_7c1d9e`);
  const w = await startWorker(workerVars(sim, {
    ADMIN_KEY,
    RATE_LIMITS: JSON.stringify({ default: { concurrency: 1 } }),
    CLIENT_KEYS: JSON.stringify(Object.fromEntries(keys.map((k, i) => [k, { id: `tab-${i}` }]))),
  }));
  try {
    const slow = { 'x-sim-fault': JSON.stringify({ tokens: 400, token_delay_ms: 50 }) };
    const streams = await Promise.all(keys.map((key) => postMessage(w, messageBody({ stream: true }), { 'x-api-key': key, ...slow })));
    for (const res of streams) assert.equal(res.status, 200);
    // Each reads its first delta, then its tab closes.
    await Promise.all(streams.map(async (res) => {
      const reader = res.body.getReader();
      await reader.read();
      await reader.cancel();
    }));
    const leftAt = performance.now();
    // Looked at through the operator's view, which charges nothing and makes no call count.
    const back = await Promise.all(keys.map(async (_, i) => {
      for (;;) {
        const { concurrency } = await callerUsage(w, `tab-${i}`);
        if (concurrency.remaining === 1) return performance.now() - leftAt;
        if (performance.now() - leftAt > 20_000) return Infinity;
        await sleep(250);
      }
    }));
    const calls = await Promise.all(keys.map((_, i) => objectCalls(w, `tab-${i}`)));
    const settledWithin = [];
    const droppedWithin = [];
    calls.forEach((c, i) => (c.calls - c.renewals >= 2 ? settledWithin : droppedWithin).push(back[i]));
    const ms = (list) => list.map((t) => Math.round(t)).sort((a, b) => a - b).join(', ');
    console.log(`# settled: slots back after ${ms(settledWithin)} ms; dropped whole: ${ms(droppedWithin) || 'none'}`);
    const late = settledWithin.filter((t) => t > 10_000).length;
    assert.equal(late, 0, `${late} settled requests did not give their slot back within 10 s`);
    const lost = droppedWithin.filter((t) => t > 15_000).length;
    assert.equal(lost, 0, `${lost} requests dropped whole kept their slot past their 15 s lease`);
  } finally {
    await w.stop();
  }
});

// Every renewal is a request to the caller's object, which the Workers Free plan counts
// (100,000 a day): a streamed answer of 15 s made 10 renewals and 12 writes when it renewed
// every 1.5 s. Now: its admission, one renewal (at 6 s), its settlement; only admission and
// settlement write.
test('a 15 s stream makes three calls to its object and writes twice', async () => {
  const w = await limitedWorker({ concurrency: 2, output_tpm: 100_000 }, { ADMIN_KEY });
  try {
    await sim.reset();
    const slow = { 'x-sim-fault': JSON.stringify({ tokens: 150, token_delay_ms: 100 }) };
    const res = await postMessage(w, messageBody({ stream: true, max_tokens: 1000 }), slow);
    assert.equal(res.status, 200);
    const t0 = performance.now();
    const events = await readEvents(res);
    const took = performance.now() - t0;
    assert.ok(took > 12_000, `the stream took ${Math.round(took)} ms`);
    assert.ok(events.some((e) => e.name === 'message_stop'));
    await settled(w);
    const seen = await objectCalls(w);
    console.log(`# a ${Math.round(took / 1000)} s stream: ${JSON.stringify(seen)}`);
    assert.ok(seen.renewals >= 1 && seen.renewals <= 2, JSON.stringify(seen));
    assert.equal(seen.calls, seen.renewals + 2, JSON.stringify(seen));
    assert.equal(seen.writes, 2, JSON.stringify(seen));
  } finally {
    await w.stop();
  }
});


// A client that gives up before the answer's first byte (the upstream hangs): whether the
// runtime cancels the request or lets it run to its budget, the slot comes back: settled when
// the attempts end, or freed by the short lease the waiting request renews while it runs.
test('a client that gives up before the first byte gets its slot back', async () => {
  const w = await limitedWorker({ concurrency: 1 }, { ATTEMPT_TIMEOUT_MS: '2000', MAX_ATTEMPTS: '2' });
  try {
    await sim.reset();
    await sim.script([{ hang: true, times: 2 }]);
    const controller = new AbortController();
    const gone = fetch(`${w.url}/v1/messages`, {
      method: 'POST',
      headers: { 'content-type': 'application/json', 'x-api-key': CLIENT_KEY, 'anthropic-version': '2023-06-01' },
      // Streaming, so the attempt timeout bounds the hang (a non-streaming attempt would be
      // waited for as long as the SDKs wait, and local workerd lets an abandoned request run).
      body: JSON.stringify(messageBody({ stream: true })),
      signal: controller.signal,
    }).catch(() => null);
    await sleep(300);
    controller.abort();
    await gone;
    const leftAt = performance.now();
    let back = Infinity;
    while (performance.now() - leftAt < 25_000) {
      const res = await postMessage(w);
      await res.arrayBuffer();
      if (res.status === 200) {
        back = performance.now() - leftAt;
        break;
      }
      await sleep(250);
    }
    console.log(`# slot back ${Math.round(back)} ms after the client gave up`);
    assert.ok(back <= 20_000, `the slot was not back within 20 s (${back} ms)`);
  } finally {
    await w.stop();
  }
});

test('limits survive a restart of the Worker and its objects', async () => {
  const dir = mkdtempSync(path.join(tmpdir(), 'breakwater-do-'));
  try {
    let w = await limitedWorker({ rpm: 3 }, {}, { persistDir: dir });
    for (let i = 0; i < 3; i++) assert.equal((await postMessage(w)).status, 200);
    await w.stop();
    w = await limitedWorker({ rpm: 3 }, {}, { persistDir: dir });
    try {
      const res = await postMessage(w);
      assert.equal(res.status, 429, 'the restarted object forgot the requests already made');
      assert.ok(Number(res.headers.get('retry-after-ms')) > 15_000);
    } finally {
      await w.stop();
    }
  } finally {
    rmSync(dir, { recursive: true, force: true });
  }
});

/** Reads (and with `replacement`, first overwrites) the stored limiter state of every caller
 * object under `dir`: the raw bytes of the value, hex. SQLite through Python's standard library. */
function storedLimiterState(dir, replacement) {
  const objects = path.join(dir, '-Limiter');
  const files = readdirSync(objects).filter((f) => /^[0-9a-f]{64}\.sqlite$/.test(f));
  assert.ok(files.length > 0, 'no stored caller object');
  const script = `
import sqlite3, sys
db = sqlite3.connect(sys.argv[1])
if len(sys.argv) > 2:
    db.execute("update _cf_KV set value = ? where key = 'limiter'", (bytes.fromhex(sys.argv[2]),))
    db.commit()
print(db.execute("select hex(value) from _cf_KV where key = 'limiter'").fetchone()[0])
`;
  return files.map((f) => execFileSync('python3', ['-c', script, path.join(objects, f), ...(replacement ? [replacement] : [])])
    .toString().trim());
}

// A value as the runtime stores it (V8's serialization of a one-byte string).
const v8String = (text) => Buffer.concat([Buffer.from([0xff, 0x0f, 0x22, text.length]), Buffer.from(text)]).toString('hex').toUpperCase();

test('a stored state that cannot be read fails closed: 503, never reset to full buckets', async () => {
  for (const [kind, corrupt] of [['undecodable JSON', v8String('{"limiter": not json')], ['unreadable value', 'DEADBEEF']]) {
    const dir = mkdtempSync(path.join(tmpdir(), 'breakwater-do-'));
    try {
      let w = await limitedWorker({ rpm: 2 }, {}, { persistDir: dir });
      for (let i = 0; i < 2; i++) assert.equal((await postMessage(w)).status, 200);
      await w.stop();
      const [written] = storedLimiterState(dir, corrupt);
      assert.equal(written, corrupt);
      w = await limitedWorker({ rpm: 2 }, {}, { persistDir: dir });
      try {
        for (let i = 0; i < 3; i++) {
          const res = await postMessage(w);
          assert.equal(res.status, 503, `${kind}: a caller whose state is unreadable was let through`);
          assert.equal(res.headers.get('retry-after'), '1');
          const body = await res.json();
          assert.equal(body.error.type, 'api_error');
        }
        assert.ok(w.logs.some((l) => l.includes('object_state_unreadable')), `${kind}: no log line says why`);
      } finally {
        await w.stop();
      }
      assert.deepEqual(storedLimiterState(dir), [corrupt], `${kind}: the stored state was overwritten`);
    } finally {
      rmSync(dir, { recursive: true, force: true });
    }
  }
});

test('signed browser tokens: valid ones get their tier, expired and forged ones a 401', async () => {
  const secret = 'jwt-secret-for-the-e2e-suite-0001';
  const w = await startWorker(workerVars(sim, {
    JWT_SECRET: secret,
    RATE_LIMITS: JSON.stringify({ default: { rpm: 1 }, pro: { rpm: 3 } }),
  }));
  try {
    const now = Math.floor(Date.now() / 1000);
    const pro = await mintToken(secret, { sub: 'user-42', tier: 'pro', exp: now + 300 });
    const client = new Anthropic({ apiKey: null, authToken: pro, baseURL: w.url, maxRetries: 0 });
    for (let i = 0; i < 3; i++) assert.equal((await client.messages.create(messageBody())).type, 'message');
    await assert.rejects(client.messages.create(messageBody()), Anthropic.RateLimitError);
    await sim.reset();
    const seen = await postMessage(w, messageBody(), { 'x-api-key': await mintToken(secret, { sub: 'user-43', exp: now + 300 }) });
    assert.equal(seen.status, 200);
    const upstream = (await sim.log()).at(-1);
    assert.equal(upstream.headers.authorization, undefined);
    assert.ok(!JSON.stringify(upstream.headers).includes('eyJ'), 'the token reached the upstream');

    const expired = await mintToken(secret, { sub: 'user-42', exp: now - 600 });
    const forged = await mintToken('not-the-secret-0000000000000000', { sub: 'user-42', exp: now + 300 });
    const none = `${Buffer.from('{"alg":"none"}').toString('base64url')}.${Buffer.from(JSON.stringify({ sub: 'x', exp: now + 300 })).toString('base64url')}.`;
    for (const [name, token] of [['expired', expired], ['forged', forged], ['alg none', none]]) {
      const res = await postMessage(w, messageBody(), { 'x-api-key': token });
      assert.equal(res.status, 401, name);
      const body = await res.json();
      assert.equal(body.error.type, 'authentication_error', name);
      assert.ok(!JSON.stringify(body).includes(token), `${name}: token echoed`);
    }
  } finally {
    await w.stop();
  }
});
