// Checks of the overload oracle (node --test bench/oracle.test.mjs).
import assert from 'node:assert/strict';
import test from 'node:test';

import { oracle, uniformArrivalsMs, capacityBucket, keyBuckets } from './oracle.mjs';

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
