// Pacing the upstream, end to end and in small form: demand at twice a finite upstream
// capacity is served at that capacity rather than refused or retried in a storm, and demand at
// twice the key's own request limit is sent at the limit, so the upstream's 429s stay rare.
// Each test would fail for a proxy that only retries: it either runs out of attempts (success
// share) or pays for every success with several calls (calls per request, 429 share).
import { test, before, after, beforeEach, afterEach } from 'node:test';
import assert from 'node:assert/strict';
import { startSim, startWorker, workerVars, postMessage, messageBody, sleep } from './harness.mjs';

let sim;
let worker;

before(async () => { sim = await startSim(); });
after(async () => { await sim?.stop(); });
beforeEach(async () => {
  await sim.reset();
  // The product's backoff (0.5 s doubling to 8 s), as deployed.
  worker = await startWorker(workerVars(sim, { BACKOFF_BASE_MS: '500', BACKOFF_MAX_MS: '8000' }));
});
afterEach(async () => { await worker?.stop(); });

/** Sends `n` requests at `rate` a second with a budget each; their statuses, once all ended. */
async function offer(n, rate, budgetMs) {
  const pending = [];
  for (let i = 0; i < n; i++) {
    pending.push(postMessage(worker, messageBody(), { 'x-proxy-budget-ms': String(budgetMs) })
      .then(async (r) => { await r.arrayBuffer(); return r.status; }));
    await sleep(1000 / rate);
  }
  return Promise.all(pending);
}

/** Upstream calls per second from the first, as `served/shed`. */
function perSecond(calls) {
  const t0 = calls[0]?.received_at_ms ?? 0;
  const seconds = [];
  for (const c of calls) {
    const i = Math.floor((c.received_at_ms - t0) / 1000);
    while (seconds.length <= i) seconds.push([0, 0]);
    seconds[i][c.status === 200 ? 0 : 1] += 1;
  }
  return seconds.map(([a, b]) => `${a}/${b}`).join(' ');
}

const messageCalls = async () => (await sim.log()).filter((r) => r.path.startsWith('/v1/messages'));

test('twice the upstream capacity is served at that capacity, not refused and not stormed', async () => {
  // 10 requests a second served, 20 offered for 4 s: 80 requests that all fit their 15 s
  // budgets at capacity (the last one starts 8 s in).
  await sim.mode({ capacity: { rps: 10, outages: [], origin: 'now' } });
  const N = 80;
  const t0 = performance.now();
  const statuses = await offer(N, 20, 15_000);
  const seconds = (performance.now() - t0) / 1000;
  const ok = statuses.filter((s) => s === 200).length;
  const calls = await messageCalls();
  const shed = calls.filter((c) => c.status === 529).length;
  console.log(`# ${ok}/${N} served in ${seconds.toFixed(1)} s; ${calls.length} upstream calls (${(calls.length / N).toFixed(2)} per request), ${shed} shed`);
  console.log(`# upstream calls (served/shed) per second: ${perSecond(calls)}`);
  // Retries alone: about half are refused by the retry budget or run out of attempts.
  assert.equal(ok, N, `only ${ok} of ${N} served: ${statuses.filter((s) => s !== 200)}`);
  // Brute-force retrying serves them at 2–3 calls a request. docs/behaviour.md: 1.13–1.18 calls per
  // request (the first second's sheds, before the capacity is learned); asserted at 1.18 with
  // a margin of three calls.
  assert.ok(calls.length <= 1.18 * N + 3, `${(calls.length / N).toFixed(3)} upstream calls per request (1.13–1.18 quoted)`);
});

test("twice the key's own request limit is sent at the limit: upstream 429s stay rare", async () => {
  // A key of 240 requests a minute whose bucket is empty (it has been busy): it refills 4 a
  // second. 8 a second offered for 4 s: the last of 32 requests starts 8 s in, within 15 s.
  await sim.mode({ key_limits: { rpm: 240, initial_fill: 0, origin: 'now' } });
  const N = 32;
  const statuses = await offer(N, 8, 15_000);
  const ok = statuses.filter((s) => s === 200).length;
  const calls = await messageCalls();
  const limited = calls.filter((c) => c.status === 429).length;
  console.log(`# ${ok}/${N} served; ${calls.length} upstream calls (${(calls.length / N).toFixed(2)} per request), ${limited} got 429`);
  assert.equal(ok, N, `not served: ${statuses.filter((s) => s !== 200)}`);
  // A shared cooldown alone: every release sends a herd that meets an empty bucket again
  // (about one 429 per five calls); an SDK's retries most of its calls. docs/behaviour.md: 1.03 calls per
  // request, one upstream 429; asserted with a margin of one call.
  assert.ok(calls.length <= N + 2, `${(calls.length / N).toFixed(3)} upstream calls per request (1.03 quoted)`);
  assert.ok(limited <= 2, `${limited} of ${calls.length} upstream calls got 429 (1 quoted)`);
  // The calls went at the key's pace, not in herds: no second holds much above its 4.
  const t0 = calls[0].received_at_ms;
  const perSecond = new Map();
  for (const c of calls) {
    const s = Math.floor((c.received_at_ms - t0) / 1000);
    perSecond.set(s, (perSecond.get(s) ?? 0) + 1);
  }
  assert.ok(Math.max(...perSecond.values()) <= 6, `upstream calls per second: ${[...perSecond]}`);
});
