// The oracle for the overload scenarios: the best any client policy could do knowing the
// upstream's capacity, the key's limits and when each outage ends. It serves the arrivals in
// order (FIFO, which for equal budgets is earliest-deadline-first), each at the earliest moment
// the upstream would admit it: every bucket holds it and no outage is in force. A request that
// cannot start before its deadline is dropped without an upstream call, and consumes nothing.
// One upstream call per success, no 429 and no 529. Deterministic, no network.

/** Arrival offsets (ms) of the load generator's uniform open loop: exactly its arithmetic
 * (`t += 1/rate` from 0 while `t < duration`, in seconds, in f64). */
export function uniformArrivalsMs(rate, durationMs) {
  const out = [];
  const end = durationMs / 1000;
  for (let t = 0; t < end; t += 1 / rate) out.push(t * 1000);
  return out;
}

/**
 * A bucket for the oracle: `capacity`, refilled at `perMs` tokens a millisecond up to it,
 * holding `level` at time 0 (the scenario's origin). A request may start when the bucket holds
 * `need`; it then takes `cost` (for the output bucket: `need` is `max_tokens`, `cost` what the
 * answer produced, since the rest comes back at once when the answer is short).
 */
export function bucket({ capacity, perMs, level = capacity, need = 1, cost = need }) {
  return { capacity, perMs, level: Math.min(level, capacity), need, cost };
}

/** The sim's `capacity` mode as a bucket: `rps` a second, burst `max(1, rps/10)`, full at 0. */
export const capacityBucket = (rps) => bucket({ capacity: Math.max(1, rps / 10), perMs: rps / 1000 });

/** The sim's `key_limits` mode as buckets (one minute's quota each, refilled over 60 s), for
 * requests of `inputTokens` input, `maxTokens` max_tokens and `outputTokens` produced. */
export function keyBuckets({ rpm, input_tpm: inputTpm, output_tpm: outputTpm, initial_fill: fill = 1 }, { inputTokens, maxTokens, outputTokens }) {
  const b = (quota, need, cost) => bucket({ capacity: quota, perMs: quota / 60_000, level: quota * fill, need, cost });
  const out = [];
  if (rpm) out.push(b(rpm, 1, 1));
  if (inputTpm) out.push(b(inputTpm, inputTokens, inputTokens));
  if (outputTpm) out.push(b(outputTpm, maxTokens, outputTokens));
  return out;
}

/**
 * Runs the oracle. `arrivalsMs` ascending, `budgetMs` each, `buckets` as above, `outages`
 * `[{start_ms, duration_ms}]` during which nothing is admitted (buckets keep refilling, as in
 * the simulator). Returns successes, calls and the start time of each request (null: dropped).
 */
export function oracle({ arrivalsMs, budgetMs, buckets = [], outages = [] }) {
  const state = buckets.map((b) => ({ ...b, at: 0 }));
  const levelAt = (b, t) => Math.min(b.capacity, b.level + Math.max(0, t - b.at) * b.perMs);
  const windows = outages.map((o) => [o.start_ms, o.start_ms + o.duration_ms]).sort((x, y) => x[0] - y[0]);
  const starts = [];
  let previous = -Infinity;
  let successes = 0;
  for (const arrival of arrivalsMs) {
    let t = Math.max(arrival, previous);
    for (const b of state) {
      if (b.need > b.capacity || (b.perMs <= 0 && levelAt(b, t) < b.need)) t = Infinity;
      else {
        const short = b.need - levelAt(b, t);
        if (short > 0) t = Math.max(t, Math.max(t, b.at) + short / b.perMs);
      }
    }
    // Levels only rise with time, so moving past an outage keeps every bucket satisfied.
    for (const [s, e] of windows) if (t >= s && t < e) t = e;
    if (!(t <= arrival + budgetMs)) {
      starts.push(null);
      continue;
    }
    for (const b of state) {
      b.level = levelAt(b, t) - b.cost;
      b.at = Math.max(b.at, t);
    }
    previous = t;
    successes += 1;
    starts.push(t);
  }
  const n = arrivalsMs.length;
  return {
    requests: n,
    successes,
    success_rate: successes / Math.max(1, n),
    upstream_calls: successes,
    calls_per_request: successes / Math.max(1, n),
    successes_per_call: successes ? 1 : null,
    starts,
  };
}
