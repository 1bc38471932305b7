// Connections held by answers nobody reads. A Worker may hold only six connections open per
// invocation; the body of an attempt that is retried is never delivered, and unless it is
// cancelled its connection stays open until the runtime collects it. The simulator's 529s
// here send their head and then hold the body open forever, and the simulator counts the
// connections open to it: while the last attempt is still running, only that one is left.
import { test, before, after } from 'node:test';
import assert from 'node:assert/strict';
import {
  startSim, startWorker, workerVars, postMessage, messageBody, readEvents, sleep,
} from './harness.mjs';

let sim;
let worker;

before(async () => {
  sim = await startSim();
  worker = await startWorker(workerVars(sim, {
    ATTEMPT_TIMEOUT_MS: '1000',
    MAX_ATTEMPTS: '4',
    REQUEST_BUDGET_MS: '20000',
  }));
});

after(async () => {
  await worker?.stop();
  await sim?.stop();
});

const attempts = async () => (await sim.log()).filter((r) => r.path === '/v1/messages').length;
const open = async () => (await sim.stats()).connections_open;

/** Polls until `predicate` holds (or fails after `ms`). */
async function until(predicate, ms, what) {
  const end = performance.now() + ms;
  while (!(await predicate())) {
    assert.ok(performance.now() < end, `timed out waiting for ${what}`);
    await sleep(25);
  }
}

/**
 * Three 529s whose bodies never end, then a fourth attempt that takes its time: while the
 * fourth runs, the connections the Worker holds to the upstream are counted.
 */
async function whileTheLastAttemptRuns(body, last) {
  await sim.reset();
  // The control calls' own keep-alive connection is part of the baseline.
  const baseline = await open();
  await sim.script([{ status: 529, stall_after_bytes: 0, times: 3 }, last]);
  const answer = postMessage(worker, body);
  await until(async () => (await attempts()) >= 4, 15_000, 'the fourth attempt');
  await sleep(200);
  const during = await open();
  return { baseline, during, answer: await answer };
}

test('the bodies of retried 529s are cancelled: only the running attempt holds a connection (JSON)', async () => {
  const { baseline, during, answer } = await whileTheLastAttemptRuns(messageBody(), { delay_ms: 1500 });
  assert.equal(answer.status, 200);
  assert.equal((await answer.json()).type, 'message');
  assert.equal(answer.headers.get('x-proxy-attempts'), '4');
  // Uncancelled, the three 529s would still hold theirs: baseline + 4.
  assert.ok(during <= baseline + 1, `${during} connections open during the last attempt (baseline ${baseline})`);
});

test('the same for a stream', async () => {
  const { baseline, during, answer } = await whileTheLastAttemptRuns(
    messageBody({ stream: true }), { tokens: 10, token_delay_ms: 150 },
  );
  assert.equal(answer.status, 200);
  const events = await readEvents(answer);
  assert.equal(events.at(-1).name, 'message_stop');
  assert.ok(during <= baseline + 1, `${during} connections open during the last attempt (baseline ${baseline})`);
});

test('a 429 whose body stalls is cut at the attempt timeout and retried, also without streaming', async () => {
  // The proxy reads a 429's body (to tell a spend limit from a rate limit); one that never
  // ends must not hold a non-streaming request for its whole ten minutes.
  await sim.reset();
  await sim.script([{ status: 429, headers: { 'retry-after-ms': '100' }, stall_after_bytes: 10 }]);
  const t0 = performance.now();
  const res = await postMessage(worker);
  const elapsed = performance.now() - t0;
  assert.equal(res.status, 200);
  assert.equal((await res.json()).type, 'message');
  assert.equal(res.headers.get('x-proxy-attempts'), '2');
  assert.ok(elapsed >= 1000 && elapsed < 10_000, `answered after ${Math.round(elapsed)} ms`);
});

test('after the requests, no connection is left to the upstream but the pooled ones', async () => {
  await sim.reset();
  const baseline = await open();
  await sim.script([{ status: 529, stall_after_bytes: 0, times: 3 }]);
  const res = await postMessage(worker);
  assert.equal(res.status, 200);
  await res.arrayBuffer();
  await until(async () => (await open()) <= baseline + 1, 5000, 'the stalled connections to close');
});
