// Fair share of a scarce key, through the real Worker and its objects: a job's backlog does
// not make a chat user wait it out, background requests take only what interactive ones leave,
// and the operator sees who waits.
import { test, before, after } from 'node:test';
import assert from 'node:assert/strict';
import { startSim, startWorker, workerVars, messageBody, sleep } from './harness.mjs';

const JOB_KEY = 'ck_fair_job_9b2e4c7a1d';
const CHAT_KEY = 'ck_fair_chat_3f8a6d2b0e';
const BATCH_KEY = 'ck_fair_batch_7c1e5a9d3b';
const ADMIN_KEY = 'adm_fair_e2e_5d2a8c4f1e';

let sim;
before(async () => { sim = await startSim(); });
after(async () => { await sim?.stop(); });

function send(worker, key, headers = {}) {
  return fetch(`${worker.url}/v1/messages`, {
    method: 'POST',
    headers: { 'content-type': 'application/json', 'x-api-key': key, 'anthropic-version': '2023-06-01', ...headers },
    body: JSON.stringify(messageBody()),
  });
}

async function outcome(response) {
  const res = await response;
  const body = await res.json();
  return { status: res.status, attempts: Number(res.headers.get('x-proxy-attempts')), body };
}

function fairWorker(extra = {}) {
  return startWorker(workerVars(sim, {
    CLIENT_KEYS: JSON.stringify({
      [JOB_KEY]: { id: 'job', tier: 'default' },
      [CHAT_KEY]: { id: 'chat', tier: 'default' },
      [BATCH_KEY]: { id: 'batch', tier: 'batch' },
    }),
    RATE_LIMITS: JSON.stringify({ default: {}, batch: { priority: 'background', budget_ms: 60000 } }),
    ADMIN_KEY,
    ...extra,
  }));
}

test('a job flooding a scarce key leaves every chat request its turn', async () => {
  // 60 requests a minute, 5 in the bucket: the key runs dry at once.
  await sim.mode({ key_limits: { rpm: 60, initial_fill: 5 / 60 } });
  const worker = await fairWorker();
  try {
    // The first answer tells the Worker the key is near its limit.
    assert.equal((await outcome(send(worker, JOB_KEY))).status, 200);
    // The job asks for 30 at once (30 s budgets): more than the key serves in that time.
    const job = Array.from({ length: 30 }, () => outcome(send(worker, JOB_KEY)));
    await sleep(500);
    // A chat user sends one request every 2 s, each with a 6 s budget. Arrival order would
    // put each behind the job's whole backlog (about 25 s of it) and refuse it.
    const chat = [];
    for (let i = 0; i < 5; i++) {
      chat.push(outcome(send(worker, CHAT_KEY, { 'x-proxy-budget-ms': '6000' })));
      if (i === 2) {
        const res = await fetch(`${worker.url}/proxy/status`, { headers: { authorization: `Bearer ${ADMIN_KEY}` } });
        const doc = await res.json();
        const pool = doc.upstream_keys[0].state.pools.find((p) => p.pool === 'messages:claude-sonnet-5');
        assert.ok(pool, JSON.stringify(doc.upstream_keys[0].state));
        const jobWaits = pool.callers.find((c) => c.caller === 'job');
        assert.ok(jobWaits && jobWaits.waiting > 5, JSON.stringify(pool.callers));
        assert.equal(jobWaits.priority, 'interactive');
        assert.ok(pool.waiting.queued >= jobWaits.waiting, JSON.stringify(pool.waiting));
      }
      await sleep(2000);
    }
    const chats = await Promise.all(chat);
    assert.deepEqual(chats.map((c) => c.status), [200, 200, 200, 200, 200], JSON.stringify(chats.map((c) => c.body)));
    assert.ok(chats.every((c) => c.attempts === 1), 'each chat request is sent once, at its turn');
    const jobs = await Promise.all(job);
    const served = jobs.filter((j) => j.status === 200).length;
    // The job had the rest: about 5 + 30 s of one a second, less the 5 chat requests.
    assert.ok(served >= 20, `the job got ${served}`);
    for (const refused of jobs.filter((j) => j.status !== 200)) {
      assert.equal(refused.status, 429, JSON.stringify(refused.body));
      assert.equal(refused.body.limit.scope, 'upstream');
      assert.ok(refused.body.retry_after_ms > 0);
    }
    // Paced, not retried into the empty bucket: the upstream refused at most a stray one.
    const stats = await (await fetch(`${sim.url}/_sim/stats`)).json();
    assert.ok(stats.key_limits.limited <= 1, JSON.stringify(stats.key_limits));
  } finally {
    await worker.stop();
    await sim.mode({ key_limits: null });
  }
});

test('background requests use only what interactive ones leave, and a request may lower itself', async () => {
  await sim.mode({ key_limits: { rpm: 60, initial_fill: 3 / 60 } });
  const worker = await fairWorker();
  try {
    assert.equal((await outcome(send(worker, CHAT_KEY))).status, 200);
    // A batch tier's job (background, 60 s budgets) and a chat caller's own background
    // request, then interactive requests: the interactive ones go first.
    const finished = [];
    const track = (label, promise) => promise.then((o) => { finished.push(label); return o; });
    const batch = Array.from({ length: 6 }, (_, i) => track(`batch${i}`, outcome(send(worker, BATCH_KEY))));
    const lowered = track('lowered', outcome(send(worker, CHAT_KEY, { 'x-proxy-priority': 'background' })));
    await sleep(300);
    const chat = [0, 1, 2].map((i) => track(`chat${i}`, outcome(send(worker, CHAT_KEY, { 'x-proxy-priority': 'interactive' }))));
    const all = await Promise.all([...batch, lowered, ...chat]);
    assert.ok(all.every((o) => o.status === 200), JSON.stringify(all.map((o) => o.status)));
    // The bucket's three went at once to the first background ones; after that every chat
    // request finished before the rest of the background ones.
    const lastChat = Math.max(...['chat0', 'chat1', 'chat2'].map((l) => finished.indexOf(l)));
    const laterBackground = finished.filter((l, i) => !l.startsWith('chat') && i > lastChat);
    assert.ok(laterBackground.length >= 3, finished.join(' '));
  } finally {
    await worker.stop();
    await sim.mode({ key_limits: null });
  }
});

test('tier options that cannot be are refused as configuration', async () => {
  const worker = await startWorker(workerVars(sim, { RATE_LIMITS: JSON.stringify({ default: { priority: 'urgent' } }) }));
  try {
    const res = await send(worker, 'ck_test_alice_4f1c2a9b7e');
    assert.equal(res.status, 500);
    assert.match((await res.json()).error.message, /RATE_LIMITS/);
  } finally {
    await worker.stop();
  }
});
