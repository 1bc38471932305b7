// Checks of the overload oracle (node --test bench/oracle.test.mjs).
import assert from 'node:assert/strict';
import test from 'node:test';

import { oracle, fairOracle, uniformArrivalsMs, capacityBucket, keyBuckets } from './oracle.mjs';

test('arrivals follow the load generator', () => {
  assert.equal(uniformArrivalsMs(4, 30_000).length, 120);
  assert.equal(uniformArrivalsMs(10, 12_000).length, 121); // float accumulation, as the loadgen
});

test('under capacity everything is served at once', () => {
  const r = oracle({ arrivalsMs: uniformArrivalsMs(10, 10_000), budgetMs: 30_000, buckets: [capacityBucket(20)] });
  assert.equal(r.success_rate, 1);
  assert.ok(r.starts.every((s, i) => Math.abs(s - i * 100) < 1e-6));
});

test('an outage longer than the budget drops what cannot wait for its end', () => {
  // 10/s for 36 s, outage 2–34 s: arrivals in [2, 4) s expire before 34 s.
  const r = oracle({ arrivalsMs: uniformArrivalsMs(10, 36_000), budgetMs: 30_000, buckets: [capacityBucket(20)], outages: [{ start_ms: 2000, duration_ms: 32_000 }] });
  assert.ok(r.successes >= 335 && r.successes <= 342, String(r.successes));
  assert.equal(r.calls_per_request, r.success_rate);
});

test('an empty key bucket paces at its refill rate and drops past the deadline', () => {
  // 120 rpm from empty: request n starts at (n + 1)/2 s; it arrived at n/4 s.
  const buckets = keyBuckets({ rpm: 120, initial_fill: 0 }, { inputTokens: 3, maxTokens: 64, outputTokens: 12 });
  const r = oracle({ arrivalsMs: uniformArrivalsMs(4, 30_000), budgetMs: 30_000, buckets });
  assert.ok(Math.abs(r.starts[0] - 500) < 1e-6);
  assert.ok(Math.abs(r.starts[10] - 5500) < 1e-6);
  // n/4 + 30 ≥ (n + 1)/2 ⇔ n ≤ 118.
  assert.equal(r.successes, 119);
});

test('a request larger than a bucket never fits', () => {
  const buckets = keyBuckets({ output_tpm: 100 }, { inputTokens: 1, maxTokens: 200, outputTokens: 12 });
  assert.equal(oracle({ arrivalsMs: [0, 10], budgetMs: 30_000, buckets }).successes, 0);
});

// The fair-share oracle: one request a second from an empty 60-rpm key.
const rpm60 = () => keyBuckets({ rpm: 60, initial_fill: 0 }, { inputTokens: 3, maxTokens: 64, outputTokens: 12 });
const near = (a, b) => a !== null && Math.abs(a - b) < 1e-6;

test('fair: a caller alone is served at the key refill rate, in order', () => {
  const requests = Array.from({ length: 10 }, () => ({ arrivalMs: 0, budgetMs: 100_000, caller: 'job' }));
  const r = fairOracle({ requests, buckets: rpm60() });
  assert.equal(r.successes, 10);
  assert.ok(r.starts.every((s, i) => near(s, 1000 * (i + 1))), String(r.starts));
});

test('fair: a light caller goes before a backlog that arrived first', () => {
  const job = Array.from({ length: 30 }, () => ({ arrivalMs: 0, budgetMs: 100_000, caller: 'job' }));
  const chat = { arrivalMs: 5500, budgetMs: 2000, caller: 'chat' };
  const r = fairOracle({ requests: [...job, chat], buckets: rpm60() });
  assert.ok(near(r.starts[30], 6000), String(r.starts[30]));
  assert.ok(near(r.starts[5], 7000), 'the job resumes after it, in its own order');
  assert.equal(r.successes, 31);
});

test('fair: two backlogged callers alternate', () => {
  const requests = ['a', 'b'].flatMap((caller) => Array.from({ length: 4 }, () => ({ arrivalMs: 0, budgetMs: 100_000, caller })));
  const r = fairOracle({ requests, buckets: rpm60() });
  const byStart = r.starts.map((s, i) => [s, requests[i].caller]).sort((x, y) => x[0] - y[0]).map((x) => x[1]);
  assert.deepEqual(byStart, ['a', 'b', 'a', 'b', 'a', 'b', 'a', 'b']);
});

test('fair: background takes only what interactive leaves', () => {
  const requests = [
    ...Array.from({ length: 3 }, () => ({ arrivalMs: 0, budgetMs: 100_000, caller: 'batch', priority: 'background' })),
    ...Array.from({ length: 3 }, (_, i) => ({ arrivalMs: 0, budgetMs: 100_000, caller: `chat${i}` })),
  ];
  const r = fairOracle({ requests, buckets: rpm60() });
  assert.ok(r.starts.slice(3).every((s) => s <= 3000) && r.starts.slice(0, 3).every((s) => s > 3000), String(r.starts));
});

test('fair: a request past its deadline is dropped and takes nothing', () => {
  // The bucket holds one at 1 s: the first request's deadline (0.5 s) has passed by then.
  const requests = [{ arrivalMs: 0, budgetMs: 500, caller: 'a' }, { arrivalMs: 0, budgetMs: 5000, caller: 'b' }];
  const r = fairOracle({ requests, buckets: rpm60() });
  assert.equal(r.starts[0], null);
  assert.ok(near(r.starts[1], 1000));
  assert.equal(r.upstream_calls, 1);
});
