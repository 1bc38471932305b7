// Ways one caller, or one upstream answer, could make the proxy work against its operator:
// flooding the unmetered routes, redirects that would carry the upstream key away, betas a
// tier should not use, made-up passthrough keys that leave stored objects behind, and large
// bodies piling up in one isolate.
import { test, before, after } from 'node:test';
import assert from 'node:assert/strict';
import { createHash } from 'node:crypto';
import { existsSync, mkdtempSync, readdirSync, rmSync } from 'node:fs';
import { execFileSync } from 'node:child_process';
import net from 'node:net';
import { tmpdir } from 'node:os';
import path from 'node:path';
import {
  startSim, startWorker, workerVars, postMessage, messageBody, readEvents, sleep, CLIENT_KEY, UPSTREAM_KEY,
} from './harness.mjs';

const BOB = 'ck_test_bob_a81f2c93d4e5';

let sim;
before(async () => { sim = await startSim(); });
after(async () => { await sim?.stop(); });

/** What the simulator's log keeps of a whole body: its SHA-256, hex. */
const sha256 = (text) => createHash('sha256').update(text).digest('hex');

const twoCallers = (extra = {}) => JSON.stringify({ [CLIENT_KEY]: { id: 'alice' }, [BOB]: { id: 'bob', ...extra } });

function countTokens(w, key = CLIENT_KEY, headers = {}) {
  return fetch(`${w.url}/v1/messages/count_tokens`, {
    method: 'POST',
    headers: { 'content-type': 'application/json', 'x-api-key': key, 'anthropic-version': '2023-06-01', ...headers },
    body: JSON.stringify({ model: 'claude-sonnet-5-5', messages: [{ role: 'user', content: 'Hello there' }] }),
  });
}

const listModels = (w, key = CLIENT_KEY, headers = {}) =>
  fetch(`${w.url}/v1/models`, { headers: { 'x-api-key': key, 'anthropic-version': '2023-06-01', ...headers } });

test('count_tokens and the model listings count against the caller\'s rpm', async () => {
  const w = await startWorker(workerVars(sim, {
    RATE_LIMITS: JSON.stringify({ default: { rpm: 5, concurrency: 1 } }),
    CLIENT_KEYS: twoCallers(),
  }));
  try {
    await sim.reset();
    // One low-tier caller floods count_tokens.
    const flood = await Promise.all(Array.from({ length: 12 }, () => countTokens(w)));
    const statuses = flood.map((r) => r.status);
    assert.equal(statuses.filter((s) => s === 200).length, 5, `statuses: ${statuses}`);
    assert.equal(statuses.filter((s) => s === 429).length, 7, `statuses: ${statuses}`);
    const denied = flood.find((r) => r.status === 429);
    const body = await denied.json();
    assert.equal(body.error.type, 'rate_limit_error');
    assert.deepEqual({ ...body.limit }, { scope: 'key', dimension: 'rpm', limit: 5, remaining: 0 });
    assert.ok(Number(denied.headers.get('retry-after')) >= 1);
    await Promise.all(flood.map((r) => (r.bodyUsed ? null : r.arrayBuffer())));
    assert.equal((await sim.log()).length, 5, 'a denied token count reached the upstream');
    // The same rpm covers the model listings and the messages.
    assert.equal((await listModels(w)).status, 429);
    assert.equal((await postMessage(w)).status, 429);
    // Another caller is untouched.
    const bob = await postMessage(w, messageBody(), { 'x-api-key': BOB });
    assert.equal(bob.status, 200);
    assert.equal((await countTokens(w, BOB)).status, 200);
    assert.equal((await listModels(w, BOB)).status, 200);
  } finally {
    await w.stop();
  }
});

test('a token count takes no concurrency slot and leaves nothing held', async () => {
  const w = await startWorker(workerVars(sim, {
    RATE_LIMITS: JSON.stringify({ default: { rpm: 100, concurrency: 1 } }),
  }));
  try {
    await sim.reset();
    // The caller's one slot is taken by a slow stream.
    const slow = await postMessage(w, messageBody({ stream: true }), { 'x-sim-fault': JSON.stringify({ tokens: 20, token_delay_ms: 50 }) });
    assert.equal(slow.status, 200);
    const count = await countTokens(w);
    assert.equal(count.status, 200, 'a token count waited for the concurrency slot');
    assert.equal(typeof (await count.json()).input_tokens, 'number');
    assert.equal((await listModels(w)).status, 200);
    await readEvents(slow);
    await sleep(200);
    // Dozens of counts later, the slot is free: counts never held one.
    for (let i = 0; i < 20; i++) assert.equal((await countTokens(w)).status, 200);
    assert.equal((await postMessage(w)).status, 200);
  } finally {
    await w.stop();
  }
});

test('an upstream redirect is never followed: the Location host never sees the key', async () => {
  const elsewhere = await startSim();
  const w = await startWorker(workerVars(sim));
  try {
    await sim.reset();
    for (const status of [301, 302, 307, 308]) {
      const location = `${elsewhere.url}/v1/messages`;
      await sim.script([{ status, headers: { location } }]);
      const res = await postMessage(w);
      assert.equal(res.status, 502, `${status}`);
      assert.equal(res.headers.get('location'), null);
      assert.equal(res.headers.get('x-should-retry'), 'false');
      const body = await res.json();
      assert.equal(body.error.type, 'api_error');
      assert.match(body.error.message, new RegExp(`redirect \\(${status}\\)`));
    }
    // Streaming, token counts and the model listings the same way.
    const fault = (status) => ({ 'x-sim-fault': JSON.stringify({ status, headers: { location: `${elsewhere.url}/v1/models` } }) });
    assert.equal((await postMessage(w, messageBody({ stream: true }), fault(307))).status, 502);
    assert.equal((await countTokens(w, CLIENT_KEY, fault(307))).status, 502);
    assert.equal((await listModels(w, CLIENT_KEY, fault(302))).status, 502);
    assert.deepEqual(await elsewhere.log(), [], 'the redirect was followed, with the upstream key');
    // Each was asked of the upstream once: a redirect is not retried.
    assert.equal((await sim.log()).length, 7);
    // 304 is not a redirect; the next ordinary request is served as ever.
    assert.equal((await postMessage(w)).status, 200);
  } finally {
    await w.stop();
    await elsewhere.stop();
  }
});

test('anthropic-beta: a tier with a list allows only its betas', async () => {
  const w = await startWorker(workerVars(sim, {
    RATE_LIMITS: JSON.stringify({ default: { betas: ['prompt-caching-2024-07-31'] }, open: {} }),
    CLIENT_KEYS: twoCallers({ tier: 'open' }),
  }));
  try {
    await sim.reset();
    const ok = await postMessage(w, messageBody(), { 'anthropic-beta': 'prompt-caching-2024-07-31' });
    assert.equal(ok.status, 200);
    const [entry] = await sim.log();
    assert.equal(entry.headers['anthropic-beta'], 'prompt-caching-2024-07-31');

    const refused = await postMessage(w, messageBody(), { 'anthropic-beta': 'prompt-caching-2024-07-31,files-api-2025-04-14' });
    assert.equal(refused.status, 400);
    assert.equal(refused.headers.get('x-should-retry'), 'false');
    const body = await refused.json();
    assert.equal(body.error.type, 'invalid_request_error');
    assert.equal(body.error.message, 'anthropic-beta: "files-api-2025-04-14" is not enabled for this key');
    assert.equal((await countTokens(w, CLIENT_KEY, { 'anthropic-beta': 'files-api-2025-04-14' })).status, 400);
    assert.equal((await listModels(w, CLIENT_KEY, { 'anthropic-beta': 'files-api-2025-04-14' })).status, 400);
    assert.equal((await sim.log()).length, 1, 'a refused beta reached the upstream');

    // A tier without a list allows every beta, as before.
    const bob = await postMessage(w, messageBody(), { 'x-api-key': BOB, 'anthropic-beta': 'files-api-2025-04-14' });
    assert.equal(bob.status, 200);
  } finally {
    await w.stop();
  }
});

/** How many caller objects under `dir` have a stored state. */
function storedCallers(dir) {
  const objects = path.join(dir, '-Limiter');
  if (!existsSync(objects)) return 0;
  const script = `
import sqlite3, sys
db = sqlite3.connect(sys.argv[1])
try:
    print(db.execute("select count(*) from _cf_KV where key = 'limiter'").fetchone()[0])
except sqlite3.OperationalError:
    print(0)
`;
  return readdirSync(objects)
    .filter((f) => /^[0-9a-f]{64}\.sqlite$/.test(f))
    .map((f) => Number(execFileSync('python3', ['-c', script, path.join(objects, f)]).toString().trim()))
    .reduce((a, b) => a + b, 0);
}

test('passthrough keys: a made-up key leaves no stored object; an accepted one is stored', async () => {
  const strict = await startSim(['--api-key', UPSTREAM_KEY]);
  const dir = mkdtempSync(path.join(tmpdir(), 'breakwater-do-'));
  const vars = workerVars(strict, { ALLOW_PASSTHROUGH_KEYS: 'true', RATE_LIMITS: JSON.stringify({ default: { rpm: 1 } }) });
  const madeUp = 'sk-ant-made-up-not-a-key-0001';
  const asCaller = (w, key) => postMessage(w, messageBody(), { 'x-api-key': key });
  try {
    let w = await startWorker(vars, { persistDir: dir });
    try {
      assert.equal((await asCaller(w, madeUp)).status, 401, 'the upstream refuses a made-up key');
      // Limited all the same while its object lives.
      const again = await asCaller(w, madeUp);
      assert.equal(again.status, 429);
      assert.equal((await again.json()).limit.scope, 'key');
      for (let i = 0; i < 5; i++) await asCaller(w, `sk-ant-made-up-${i}-abcdefgh`);
      await sleep(300);
      assert.equal(storedCallers(dir), 0, 'a made-up key left a stored object');
      // The upstream's own key, passed through, is accepted: stored from then on.
      assert.equal((await asCaller(w, UPSTREAM_KEY)).status, 200);
      await sleep(300);
      assert.equal(storedCallers(dir), 1);
    } finally {
      await w.stop();
    }
    w = await startWorker(vars, { persistDir: dir });
    try {
      assert.equal((await asCaller(w, madeUp)).status, 401, 'the made-up key\'s state outlived its object');
      assert.equal((await asCaller(w, UPSTREAM_KEY)).status, 429, 'the accepted key\'s state was not stored');
    } finally {
      await w.stop();
    }
  } finally {
    await strict.stop();
    rmSync(dir, { recursive: true, force: true });
  }
});

test('request bodies held at once are capped per isolate: 503 with Retry-After, then served', async () => {
  const w = await startWorker(workerVars(sim, { MAX_BODY_BYTES: '1000000', MAX_INFLIGHT_BODY_BYTES: '1500000', MAX_INFLIGHT_BODY_BYTES_PER_CALLER: '1500000' }));
  try {
    await sim.reset();
    const big = JSON.stringify(messageBody({ messages: [{ role: 'user', content: 'x'.repeat(900_000) }] }));
    // The first is held while the upstream takes its time; the second does not fit beside it.
    await sim.script([{ delay_ms: 800 }]);
    const first = postMessage(w, big);
    await sleep(300);
    const second = await postMessage(w, big);
    assert.equal(second.status, 503);
    assert.equal(second.headers.get('retry-after'), '1');
    assert.equal(second.headers.get('x-should-retry'), 'true');
    const body = await second.json();
    assert.equal(body.error.type, 'overloaded_error');
    assert.match(body.error.message, /too many request bodies/);
    assert.equal((await first).status, 200);
    // Released: the same body fits again, and a retried one goes up byte for byte each time.
    await sim.script([{ status: 529 }]);
    const third = await postMessage(w, big);
    assert.equal(third.status, 200);
    assert.equal(third.headers.get('x-proxy-attempts'), '2');
    const log = await sim.log();
    const bodies = log.filter((e) => e.body_len === Buffer.byteLength(big));
    assert.equal(bodies.length, 3, 'one upstream request for the first, two for the third');
    // Whole bodies, not their first 64 KiB: the digest of what was sent against what arrived.
    for (const entry of bodies) assert.equal(entry.body_sha256, sha256(big), `upstream request ${entry.seq} differs from the body sent`);

    // A body without a declared length (chunked) is held as it arrives, in the same budget.
    const chunked = (text, headers = {}) => {
      const bytes = Buffer.from(text);
      const stream = new ReadableStream({
        start(controller) {
          for (let i = 0; i < bytes.length; i += 64 * 1024) controller.enqueue(bytes.subarray(i, i + 64 * 1024));
          controller.close();
        },
      });
      return fetch(`${w.url}/v1/messages`, {
        method: 'POST',
        duplex: 'half',
        headers: { 'content-type': 'application/json', 'x-api-key': CLIENT_KEY, 'anthropic-version': '2023-06-01', ...headers },
        body: stream,
      });
    };
    await sim.reset();
    const small = JSON.stringify(messageBody({ messages: [{ role: 'user', content: 'y'.repeat(300_000) }] }));
    const whole = await chunked(small);
    assert.equal(whole.status, 200);
    const [sent] = await sim.log();
    assert.equal(sent.body_len, Buffer.byteLength(small));
    assert.equal(sent.body_sha256, sha256(small), 'the chunked body arrived changed');
    await sim.script([{ delay_ms: 800 }]);
    const held = postMessage(w, big);
    await sleep(300);
    const over = await chunked(big);
    assert.equal(over.status, 503, 'a chunked body did not count against the isolate\'s budget');
    assert.equal((await over.json()).error.type, 'overloaded_error');
    assert.equal((await held).status, 200);
  } finally {
    await w.stop();
  }
});

/**
 * A POST to /v1/messages opened on a raw socket, declaring `length` bytes of body: `answer`
 * resolves to the status, the headers, the envelope and when it came (ms after the opening),
 * once the whole answer has arrived; `sent()` is called then, to note how much had been sent.
 */
function openPost(w, key, length, sent = () => undefined) {
  const url = new URL(w.url);
  const t0 = performance.now();
  const socket = net.connect(Number(url.port), url.hostname);
  let answered = false;
  const answer = new Promise((resolve, reject) => {
    let got = Buffer.alloc(0);
    socket.on('data', (d) => {
      got = Buffer.concat([got, d]);
      const split = got.indexOf('\r\n\r\n');
      if (split < 0) return;
      const head = got.subarray(0, split).toString('latin1');
      const size = Number(/content-length: *(\d+)/i.exec(head)?.[1] ?? NaN);
      if (got.length - split - 4 < size) return;
      answered = true;
      const headers = Object.fromEntries(head.split('\r\n').slice(1).map((l) => {
        const i = l.indexOf(':');
        return [l.slice(0, i).trim().toLowerCase(), l.slice(i + 1).trim()];
      }));
      resolve({
        status: Number(head.split(' ')[1]),
        headers,
        body: JSON.parse(got.subarray(split + 4, split + 4 + size)),
        ms: performance.now() - t0,
        sent: sent(),
      });
      socket.destroy();
    });
    socket.on('error', reject);
    socket.on('close', () => { if (!answered) reject(new Error('closed without an answer')); });
  });
  socket.write(`POST /v1/messages HTTP/1.1\r\nhost: proxy.test\r\nx-api-key: ${key}\r\ncontent-type: application/json\r\nanthropic-version: 2023-06-01\r\ncontent-length: ${length}\r\n\r\n`);
  return { answer, socket, answered: () => answered };
}

/** A POST that declares `declared` bytes and sends only `first` of them, then waits. */
function trickle(w, key, declared, first) {
  const post = openPost(w, key, declared);
  post.socket.write(Buffer.alloc(first, 'x'));
  return post;
}

test('slow or unmetered uploads cannot fill an isolate: bodies charged as they arrive, per caller, cut with 408', async () => {
  const GRACE_MS = 3000;
  const w = await startWorker(workerVars(sim, {
    MAX_BODY_BYTES: '1000000',
    MAX_INFLIGHT_BODY_BYTES: '2000000',
    BODY_READ_TIMEOUT_MS: String(GRACE_MS),
    MIN_BODY_BYTES_PER_S: '1000000',
    RATE_LIMITS: JSON.stringify({ default: {}, trickler: { concurrency: 2 } }),
    CLIENT_KEYS: twoCallers({ tier: 'trickler' }),
  }));
  const post = (key, body) => fetch(`${w.url}/v1/messages`, {
    method: 'POST',
    headers: { 'content-type': 'application/json', 'x-api-key': key, 'anthropic-version': '2023-06-01' },
    body,
  });
  const big = (n) => JSON.stringify(messageBody({ messages: [{ role: 'user', content: 'x'.repeat(n) }] }));
  const opened = [];
  try {
    await sim.reset();
    // Bob declares the largest body twice and sends a little of each: nothing is held for
    // what is declared, only for what came.
    const first = trickle(w, BOB, 1_000_000, 600_000);
    const second = trickle(w, BOB, 1_000_000, 100);
    opened.push(first, second);
    await sleep(500);
    // His tier's concurrency (2) is taken by the bodies he is sending: a third is refused at
    // once, before it is read.
    const third = await post(BOB, big(100_000));
    assert.equal(third.status, 429, 'a third body of the caller was read beside the two it is sending');
    const refused = await third.json();
    assert.equal(refused.error.type, 'rate_limit_error');
    assert.deepEqual([refused.limit.scope, refused.limit.dimension], ['key', 'concurrency']);
    // Alice is served meanwhile: the isolate holds only the 600 KB that came.
    const alice = await post(CLIENT_KEY, big(900_000));
    assert.equal(alice.status, 200, 'the declared lengths took the isolate\'s budget');
    await alice.arrayBuffer();
    // Both stalled bodies end with a 408 in the envelope, once behind their pace.
    for (const [name, { answer }, earned] of [['first', first, 600], ['second', second, 0]]) {
      const got = await answer;
      assert.equal(got.status, 408, name);
      assert.equal(got.body.type, 'error');
      assert.equal(got.body.error.type, 'request_timeout', name);
      assert.ok(got.ms >= GRACE_MS + earned - 300, `${name}: cut after ${Math.round(got.ms)} ms`);
    }
    // One caller holds at most its share of the isolate (by default half of it, here one
    // largest body): 600 KB arriving, and 600 KB more is his own 429, while Alice still fits.
    const held = trickle(w, BOB, 1_000_000, 600_000);
    opened.push(held);
    await sleep(500);
    const over = await post(BOB, big(600_000));
    assert.equal(over.status, 429);
    const overBody = await over.json();
    assert.deepEqual([overBody.limit.scope, overBody.limit.dimension], ['key', 'inflight_body_bytes']);
    assert.equal((await post(CLIENT_KEY, big(900_000))).status, 200);
    assert.equal((await held.answer).status, 408);
    // Nothing stays held: Bob's own bodies go through again.
    assert.equal((await post(BOB, big(900_000))).status, 200);
  } finally {
    for (const { socket } of opened) socket.destroy();
    await w.stop();
  }
});

/**
 * A POST of `body` sent in pieces: each `[bytes, pause_ms]` step sends the next `bytes` of it
 * and then waits. The answer's `sent` says whether the whole body had been sent when it came.
 */
function sendInPieces(w, key, body, steps) {
  const bytes = Buffer.from(body);
  let offset = 0;
  const post = openPost(w, key, bytes.length, () => offset >= bytes.length);
  (async () => {
    for (const [n, pause] of steps) {
      if (post.answered() || post.socket.destroyed) return;
      post.socket.write(bytes.subarray(offset, offset + n));
      offset += n;
      await sleep(pause);
    }
  })().catch(() => {});
  return post;
}

test('a body still arriving is counted against rpm on its way: a caller out of requests is refused before its body ends, and a counted request is not counted twice', async () => {
  const w = await startWorker(workerVars(sim, {
    RATE_LIMITS: JSON.stringify({ default: {}, counted: { rpm: 2 } }),
    CLIENT_KEYS: twoCallers({ tier: 'counted' }),
  }));
  const body = JSON.stringify(messageBody({ messages: [{ role: 'user', content: 'x'.repeat(20_000) }] }));
  const opened = [];
  try {
    await sim.reset();
    // Half now, the rest after 800 ms: counted while it arrives, and served.
    const slow = sendInPieces(w, BOB, body, [[10_000, 800], [body.length - 10_000, 0]]);
    opened.push(slow);
    const served = await slow.answer;
    assert.equal(served.status, 200, JSON.stringify(served.body));
    assert.equal(served.headers['ratelimit-policy']?.includes('2;w=60'), true, served.headers['ratelimit-policy']);
    // It was counted once: Bob's second request of the minute goes.
    const second = await postMessage(w, body, { 'x-api-key': BOB });
    assert.equal(second.status, 200, 'a request counted while its body arrived was counted again at its admission');
    await second.arrayBuffer();
    // His third trickles: refused on its way, while he is still sending, with the contract's
    // refusal (not a 408 when the body falls behind, not after it ends).
    const third = sendInPieces(w, BOB, body, Array.from({ length: 100 }, () => [100, 100]));
    opened.push(third);
    const refused = await third.answer;
    assert.equal(refused.status, 429, JSON.stringify(refused.body));
    assert.equal(refused.sent, false, 'the refusal waited for the body');
    assert.equal(refused.body.error.type, 'rate_limit_error');
    assert.deepEqual([refused.body.limit.scope, refused.body.limit.dimension], ['key', 'rpm']);
    assert.ok(Number(refused.headers['retry-after']) >= 1, `retry-after: ${refused.headers['retry-after']}`);
    // Alice, untouched, is served meanwhile.
    assert.equal((await postMessage(w, body)).status, 200);
  } finally {
    for (const { socket } of opened) socket.destroy();
    await w.stop();
  }
});

test('a body the client abandons mid-way: the log line keeps the runtime\'s cause', async () => {
  const w = await startWorker(workerVars(sim, { MAX_BODY_BYTES: '1000000' }));
  try {
    const cut = trickle(w, CLIENT_KEY, 1_000_000, 200_000);
    cut.answer.catch(() => {});
    await sleep(300);
    cut.socket.destroy();
    const deadline = performance.now() + 5000;
    let line;
    while (!line && performance.now() < deadline) {
      line = w.logs.map((l) => { try { return JSON.parse(l); } catch { return null; } })
        .find((l) => l?.event === 'request_body_failed');
      await sleep(100);
    }
    assert.ok(line, `no request_body_failed line in ${w.logs.length} log lines`);
    assert.equal(line.error, 'the request body could not be read');
    assert.ok(typeof line.cause === 'string' && line.cause.length > 0 && line.cause !== 'no message', `cause: ${line.cause}`);
    assert.equal((await postMessage(w)).status, 200, 'the Worker stopped serving');
  } finally {
    await w.stop();
  }
});
