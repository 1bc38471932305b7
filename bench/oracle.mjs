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

/**
 * The oracle for the fair-share scenarios: requests from several callers, each with its own
 * arrival, budget and priority, share the key's buckets. At each moment the buckets hold a
 * request it serves one of those waiting: interactive before background, then the caller with
 * the fewest served so far (equal weights), then the oldest. A request whose deadline has passed
 * is dropped without an upstream call. `requests` are `{arrivalMs, budgetMs, caller, priority}`
 * (`priority` `"interactive"` unless `"background"`); returns, per request in the order given,
 * its start time or null (dropped), and the totals.
 */
export function fairOracle({ requests, buckets = [] }) {
  const state = buckets.map((b) => ({ ...b, at: 0 }));
  const levelAt = (b, t) => Math.min(b.capacity, b.level + Math.max(0, t - b.at) * b.perMs);
  /** The earliest time from `t` at which every bucket holds its request (Infinity: never). */
  const readyAt = (t) => {
    let ready = t;
    for (const b of state) {
      if (b.need > b.capacity || (b.perMs <= 0 && levelAt(b, t) < b.need)) return Infinity;
      const short = b.need - levelAt(b, ready);
      if (short > 0) ready = Math.max(ready, b.at) + short / b.perMs;
    }
    return ready;
  };
  const order = requests.map((r, i) => ({ ...r, i, deadline: r.arrivalMs + r.budgetMs, background: r.priority === 'background' }))
    .sort((x, y) => x.arrivalMs - y.arrivalMs || x.i - y.i);
  const starts = new Array(requests.length).fill(null);
  const served = new Map();
  let waiting = [];
  let next = 0;
  let t = 0;
  while (next < order.length || waiting.length) {
    if (!waiting.length) t = Math.max(t, order[next].arrivalMs);
    // Everything that arrived by the moment the buckets hold a request competes for it.
    t = readyAt(t);
    if (t === Infinity) break;
    while (next < order.length && order[next].arrivalMs <= t) waiting.push(order[next++]);
    waiting = waiting.filter((r) => r.deadline >= t);
    if (!waiting.length) continue;
    let best = waiting[0];
    for (const r of waiting) {
      const key = (x) => [x.background ? 1 : 0, served.get(x.caller) ?? 0, x.arrivalMs, x.i];
      const [a, b] = [key(r), key(best)];
      const k = a.findIndex((v, j) => v !== b[j]);
      if (k >= 0 && a[k] < b[k]) best = r;
    }
    waiting = waiting.filter((r) => r !== best);
    for (const b of state) {
      b.level = levelAt(b, t) - b.cost;
      b.at = Math.max(b.at, t);
    }
    served.set(best.caller, (served.get(best.caller) ?? 0) + 1);
    starts[best.i] = t;
  }
  const successes = starts.filter((s) => s !== null).length;
  return { requests: requests.length, successes, upstream_calls: successes, starts };
}
