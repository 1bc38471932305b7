// Fair share of a scarce key (bench/run.mjs's `fair` section, scenarios f and g): several
// client keys share one upstream key whose own Anthropic limits bind (the simulator's
// `key_limits` mode). A job sends its whole backlog at once; people send one request at a time
// with short budgets. Measured per class (light: the people; heavy: the job): successes within
// the budget, how long each success waited before the Worker sent it (the simulator logs when
// each attempt arrived), and the job's goodput, against the fair oracle (bench/oracle.mjs).
//
// The clients are this Node process (one fetch per request, a header naming the request so
// its upstream attempts can be found in the simulator's log): the waits measured are seconds,
// far above what the client's own timing could blur.
import { KEYS, MESSAGE, log, startSim, startWorker, benchVars, post, summarize, round, sleep, accountForeignLoad } from './lib.mjs';
import { fairOracle, keyBuckets } from './oracle.mjs';

/** The request body and what it costs the key (the simulator's count for MESSAGE). */
const COST = { inputTokens: 3, maxTokens: MESSAGE.max_tokens, outputTokens: 12 };
const GRACE_MS = 5000;
const REQUEST_HEADER = 'x-bench-request';

/**
 * A scenario's requests, in planned order: the job's backlog at 0, then each light caller's
 * requests every `intervalMs` for `durationMs`, the callers spread evenly over one interval
 * and the first a second after the backlog.
 */
export function fairRequests(scenario) {
  const out = [];
  const { job, users } = scenario;
  for (let i = 0; i < job.requests; i += 1) {
    out.push({ id: `job-${i}`, caller: 'job', cls: 'heavy', arrivalMs: 0, budgetMs: job.budgetMs, priority: job.tier.priority ?? 'interactive' });
  }
  for (let u = 0; u < users.count; u += 1) {
    const first = 1000 + Math.round((u * users.intervalMs) / users.count);
    for (let t = 0; t < users.durationMs; t += users.intervalMs) {
      out.push({ id: `user${u + 1}-${t / users.intervalMs}`, caller: `user${u + 1}`, cls: 'light', arrivalMs: first + t, budgetMs: users.budgetMs, priority: 'interactive' });
    }
  }
  return out;
}

/** The scenario's oracle: its requests on the key's buckets, empty at the start. */
export function fairScenarioOracle(scenario) {
  const requests = fairRequests(scenario);
  const r = fairOracle({ requests, buckets: keyBuckets({ ...scenario.keyLimits, initial_fill: 0 }, COST) });
  const rows = requests.map((q, i) => ({ ...q, start: r.starts[i] }));
  return { upstream_calls: r.upstream_calls, ...classes(rows.map((q) => ({ ...q, ok: q.start !== null, waitMs: q.start === null ? null : q.start - q.arrivalMs }))), rows };
}

/** Per class: requests, successes, success rate, and the waits of the successes. */
function classes(rows) {
  const out = {};
  for (const cls of ['light', 'heavy']) {
    const mine = rows.filter((r) => r.cls === cls);
    const ok = mine.filter((r) => r.ok);
    const waits = summarize(ok.filter((r) => r.waitMs !== null).map((r) => r.waitMs));
    out[cls] = {
      requests: mine.length,
      successes: ok.length,
      success_rate: round(ok.length / Math.max(1, mine.length), 4),
      wait_ms: waits && { p50: round(waits.p50, 1), p95: round(percentile95(ok.map((r) => r.waitMs)), 1), max: round(waits.max, 1), mean: round(waits.mean, 1) },
    };
  }
  return out;
}

function percentile95(values) {
  const s = values.filter((v) => v !== null).sort((a, b) => a - b);
  return s.length ? s[Math.min(s.length, Math.max(1, Math.ceil(0.95 * s.length))) - 1] : null;
}

/** One request through the Worker, sent at `atUnixMs`: what the client saw. */
async function send(url, key, request, atUnixMs) {
  const now = () => performance.timeOrigin + performance.now();
  await sleep(Math.max(0, atUnixMs - now()));
  const sentAt = now();
  const abort = new AbortController();
  const timer = setTimeout(() => abort.abort(), request.budgetMs + GRACE_MS);
  const headers = {
    'content-type': 'application/json',
    'x-api-key': key,
    'anthropic-version': '2023-06-01',
    'x-proxy-budget-ms': String(request.budgetMs),
    [REQUEST_HEADER]: request.id,
  };
  try {
    const res = await fetch(`${url}/v1/messages`, { method: 'POST', headers, body: JSON.stringify(MESSAGE), signal: abort.signal });
    const headersAt = now();
    const text = await res.text();
    const endAt = now();
    let scope = null;
    let bodyRequestId = null;
    try {
      const body = JSON.parse(text);
      scope = body.limit?.scope ?? null;
      bodyRequestId = body.request_id ?? null;
    } catch {
      // not JSON
    }
    return {
      sentAt, headersAt, endAt, status: res.status, scope,
      attempts: Number(res.headers.get('x-proxy-attempts')) || null,
      // The Worker's log line names its own request id (in an error's body) and the upstream's
      // (the `request-id` header it passes on).
      requestIds: [res.headers.get('x-proxy-request-id'), res.headers.get('request-id'), bodyRequestId].filter(Boolean),
    };
  } catch (e) {
    return { sentAt, headersAt: null, endAt: now(), status: abort.signal.aborted ? 1 : 0, scope: null, attempts: null, error: String(e.message ?? e) };
  } finally {
    clearTimeout(timer);
  }
}

/**
 * Requests the Worker refused that the key had room for: replaying the key's request bucket
 * from the simulator's log (empty at the origin, charged at each admitted arrival), a refused
 * request counts when one more charge at some moment between its arrival and its deadline
 * would have left every admitted request its room. Refused requests are tried in deadline
 * order and each one counted takes its room, so two cannot count on the same room.
 */
export function refusedWithRoom({ rpm, chargesMs, refused, stepMs = 50 }) {
  const perMs = rpm / 60_000;
  let charges = [...chargesMs].sort((a, b) => a - b);
  const fits = (list) => {
    let level = 0;
    let at = 0;
    for (const c of list) {
      level = Math.min(rpm, level + (c - at) * perMs);
      at = c;
      if (level < 1 - 1e-9) return false;
      level -= 1;
    }
    return true;
  };
  let count = 0;
  for (const r of [...refused].sort((a, b) => a.deadlineMs - b.deadlineMs)) {
    for (let s = Math.max(0, r.arrivalMs); s <= r.deadlineMs; s += stepMs) {
      const trial = [...charges, s].sort((a, b) => a - b);
      if (fits(trial)) {
        charges = trial;
        count += 1;
        break;
      }
    }
  }
  return count;
}

async function runScenario(scenario, sim) {
  const oracle = fairScenarioOracle(scenario);
  const requests = fairRequests(scenario);
  const keyOf = (caller) => `ck_bench_fair_${caller.replace(/[^a-z0-9]/g, '')}_0001`;
  const callers = [...new Set(requests.map((r) => r.caller)), 'warmup'];
  const clientKeys = Object.fromEntries(callers.map((c) => [keyOf(c), { id: c, tier: c === 'job' ? 'job' : 'default' }]));
  clientKeys[KEYS.free] = { id: 'bench' };
  const rateLimits = { default: {}, job: scenario.job.tier };

  // The Worker's log lines, by the request id it answers with.
  const workerLog = new Map();
  const onLine = (line) => {
    if (!line.startsWith('{')) return;
    try {
      const entry = JSON.parse(line);
      if (entry.request_id && entry.route === 'messages') {
        workerLog.set(entry.request_id, entry);
        if (entry.upstream_request_id) workerLog.set(entry.upstream_request_id, entry);
      }
    } catch {
      // not a log line of ours
    }
  };
  const worker = await startWorker(benchVars(sim, { CLIENT_KEYS: JSON.stringify(clientKeys), RATE_LIMITS: JSON.stringify(rateLimits) }), { onLine });
  await sim.reset();
  // The key holds one request until the origin and nothing refills before it: the warm-up
  // takes it, and its answer tells the Worker the key is at its limit.
  const origin = Math.ceil(Date.now() / 1000) * 1000 + 3000;
  await sim.mode({ key_limits: { ...scenario.keyLimits, initial_fill: 1 / scenario.keyLimits.rpm, origin } });
  const warm = await post(worker.url, keyOf('warmup'));
  if (warm.status !== 200) throw new Error(`warm-up answered ${warm.status}: ${warm.text.slice(0, 200)}`);
  log(`fair (${scenario.id}): ${scenario.title}`);

  const accounted = await accountForeignLoad(
    () => [...worker.pids, sim.pid],
    async () => ({ results: await Promise.all(requests.map((r) => send(worker.url, keyOf(r.caller), r, origin + r.arrivalMs))) }),
  );
  const seen = accounted.results;
  await sleep(300);
  const simLog = await sim.log();
  await worker.stop();

  // Upstream attempts per request (the warm-up carries no request header).
  const attemptsOf = new Map();
  for (const e of simLog) {
    const id = e.headers?.[REQUEST_HEADER];
    if (!id || e.path !== '/v1/messages') continue;
    if (!attemptsOf.has(id)) attemptsOf.set(id, []);
    attemptsOf.get(id).push({ atMs: e.received_at_ms - origin, status: e.status });
  }
  const rows = requests.map((r, i) => {
    const c = seen[i];
    const ok = c.status >= 200 && c.status < 300 && c.endAt - c.sentAt <= r.budgetMs;
    const attempts = attemptsOf.get(r.id) ?? [];
    const sentOk = attempts.filter((a) => a.status >= 200 && a.status < 300).at(-1);
    const wl = (c.requestIds ?? []).map((id) => workerLog.get(id)).find(Boolean) ?? null;
    return {
      ...r,
      ok,
      status: c.status,
      scope: c.scope,
      lateMs: c.sentAt - origin - r.arrivalMs,
      // The wait: from the client's send to the upstream's receipt of the attempt that answered.
      waitMs: ok && sentOk ? sentOk.atMs - (c.sentAt - origin) : null,
      headersMs: c.headersAt === null ? null : c.headersAt - c.sentAt,
      // A 2xx after the budget: how far past it the answer came, and when its attempt reached
      // the upstream, both from the client's deadline.
      late: c.status >= 200 && c.status < 300 && !ok
        ? { id: r.id, answer_after_deadline_ms: round(c.endAt - c.sentAt - r.budgetMs, 1), upstream_at_ms: round(attempts.at(-1) ? attempts.at(-1).atMs - (c.sentAt - origin) - r.budgetMs : null, 1) }
        : null,
      upstreamAttempts: attempts.length,
      upstream429: attempts.filter((a) => a.status === 429).length,
      stopped: wl ? `${wl.status} ${wl.stopped ?? (wl.status === 200 ? 'delivered' : '')}`.trim() : null,
      waits: wl?.waits ?? [],
    };
  });

  const upstreamCalls = rows.reduce((n, r) => n + r.upstreamAttempts, 0);
  const upstream429 = rows.reduce((n, r) => n + r.upstream429, 0);
  const successes = rows.filter((r) => r.ok).length;
  const refused = rows.filter((r) => !r.ok && !r.upstreamAttempts).map((r) => ({ arrivalMs: r.arrivalMs, deadlineMs: r.arrivalMs + r.budgetMs }));
  const charges = simLog.filter((e) => e.path === '/v1/messages' && e.headers?.[REQUEST_HEADER] && e.mode !== 'key_limits' && e.status !== null)
    .map((e) => e.received_at_ms - origin);
  const byClass = classes(rows);
  for (const cls of ['light', 'heavy']) {
    const mine = rows.filter((r) => r.cls === cls);
    const finals = {};
    for (const r of mine) {
      const key = r.status === 0 ? 'connection_error' : r.status === 1 ? 'no_answer' : `${r.status}${r.scope ? ` ${r.scope}` : ''}${r.status === 200 && !r.ok ? ' after budget' : ''}`;
      finals[key] = (finals[key] ?? 0) + 1;
    }
    const stopped = {};
    for (const r of mine) if (r.stopped) stopped[r.stopped] = (stopped[r.stopped] ?? 0) + 1;
    const hs = summarize(mine.filter((r) => r.ok).map((r) => r.headersMs));
    Object.assign(byClass[cls], {
      final_answers: finals,
      worker_stopped: stopped,
      headers_ms: hs && { p50: round(hs.p50, 1), p95: round(percentile95(mine.filter((r) => r.ok).map((r) => r.headersMs)), 1), max: round(hs.max, 1) },
      upstream_calls: mine.reduce((n, r) => n + r.upstreamAttempts, 0),
      answered_after_budget: mine.filter((r) => r.late).map((r) => r.late),
      vs_oracle: oracle[cls].successes ? round(byClass[cls].successes / oracle[cls].successes, 3) : null,
    });
  }
  // Upstream sends per second by class, ours and the oracle's, for the plot.
  const horizon = Math.ceil((Math.max(...requests.map((r) => r.arrivalMs + r.budgetMs)) + GRACE_MS) / 1000);
  const perSecond = (points) => {
    const s = new Array(horizon).fill(0);
    for (const t of points) if (t >= 0 && t / 1000 < horizon) s[Math.floor(t / 1000)] += 1;
    return s;
  };
  const series = { t: Array.from({ length: horizon }, (_, i) => i) };
  for (const cls of ['light', 'heavy']) {
    series[`ours_${cls}`] = perSecond(rows.filter((r) => r.cls === cls).flatMap((r) => (attemptsOf.get(r.id) ?? []).filter((a) => a.status === 200).map((a) => a.atMs)));
    series[`oracle_${cls}`] = perSecond(oracle.rows.filter((r) => r.cls === cls && r.start !== null).map((r) => r.start));
  }
  const result = {
    ...scenario,
    origin_unix_ms: origin,
    foreign_load_cores: round(accounted.foreign_cpu_s / accounted.wall_s, 2),
    max_dispatch_lateness_ms: round(Math.max(...rows.map((r) => r.lateMs)), 1),
    ours: {
      ...byClass,
      successes,
      upstream_calls: upstreamCalls,
      upstream_429: upstream429,
      upstream_by_status: byStatus(rows, attemptsOf),
      worker_log_lines: rows.filter((r) => r.stopped).length,
      calls_per_success: successes ? round(upstreamCalls / successes, 3) : null,
      refused_with_room: refusedWithRoom({ rpm: scenario.keyLimits.rpm, chargesMs: charges, refused }),
      refused: refused.length,
      worker_waits: waitTally(rows),
    },
    oracle: { light: oracle.light, heavy: oracle.heavy, upstream_calls: oracle.upstream_calls, successes: oracle.light.successes + oracle.heavy.successes },
    series,
  };
  const o = result.oracle;
  const u = result.ours;
  log(`fair (${scenario.id}) light ${u.light.successes}/${u.light.requests} (oracle ${o.light.successes}), p95 wait ${u.light.wait_ms?.p95} ms (oracle ${o.light.wait_ms?.p95});`
    + ` heavy ${u.heavy.successes}/${u.heavy.requests} (oracle ${o.heavy.successes}); calls/success ${u.calls_per_success}, upstream 429 ${u.upstream_429}, refused with room ${u.refused_with_room}`);
  return result;
}

function byStatus(rows, attemptsOf) {
  const out = {};
  for (const r of rows) for (const a of attemptsOf.get(r.id) ?? []) out[a.status ?? 'none'] = (out[a.status ?? 'none'] ?? 0) + 1;
  return out;
}

function waitTally(rows) {
  const out = {};
  for (const r of rows) {
    for (const w of r.waits) {
      const k = `${r.cls} ${w.cause}`;
      out[k] ??= { waits: 0, ms: 0 };
      out[k].waits += 1;
      out[k].ms += w.ms ?? 0;
    }
  }
  return out;
}

/** The section: each chosen scenario on a fresh Worker and simulator. */
export async function sectionFair(plan, only = []) {
  const chosen = plan.scenarios.filter((s) => !only.length || only.includes(s.id));
  const sim = await startSim();
  const scenarios = [];
  try {
    for (const scenario of chosen) {
      const started = Date.now();
      const result = await runScenario(scenario, sim);
      scenarios.push({ ...result, seconds: round((Date.now() - started) / 1000, 1) });
    }
  } finally {
    await sim.stop();
  }
  return { grace_ms: GRACE_MS, request_cost: COST, scenarios };
}
