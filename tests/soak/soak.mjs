// Soak and chaos run with a ledger check: six callers at and above their limits and two that
// keep their buckets about half drained send JSON and SSE messages and token counts through the
// real Worker (workerd via Miniflare) while the simulator injects every kind of upstream fault,
// clients go away before and during answers, and the Worker is restarted in the middle on the
// same Durable Object storage. Checked:
// - the ledger, every 15 s through the run, just before and just after the restart, and after
//   the traffic: each caller's buckets (rpm, input_tpm, output_tpm) as its object reports them
//   lie inside a replay of what it should have charged, computed from the simulator's log. A
//   bucket forgets what is older than its refill only when it fills up; the steady callers'
//   buckets never do, so their probes hold the whole history, the restart included;
// - every concurrency slot came back; no settlement failed; workerd's memory stayed flat.
//
// Usage: node tests/soak/soak.mjs [seconds]   (default 600; scripts/soak.sh wraps it)
//
// The replay (see docs/hardening.md, Soak): a bucket of quota Q drains Q units per ms (a
// unit is 1/60 000 token) and never below empty; every admitted request is charged, at its
// admission, what it settles to (capped at its reservation: a refund is retroactive), and any
// usage beyond the reservation at its settlement. With every charge positive, the level at
// time T is monotone in each charge's time and amount, so bounding each admission time
// (between the client's send and the first upstream attempt or the answer's headers) and each
// amount (exact, or, for an answer whose fate the client cannot know, between "settled" and
// "reservation kept"; for one not certainly settled by T, between its settlement and its
// reservation) bounds the level. The check is that the object's figure lies inside. The
// reservations are read from the request as the simulator logged it: `max_tokens`, and the
// input estimate by the documented rule (docs/estimate.md: the text's weight, 4 per message, 5).
import fs from 'node:fs';
import os from 'node:os';
import path from 'node:path';
import { startSim, startWorker, workerVars, ROOT } from '../e2e/harness.mjs';

const SECONDS = Number(process.argv[2] ?? process.env.SOAK_SECONDS ?? 600);
const QUIET_MS = 22_000; // longer than a waiting request's 15 s lease and a stream's 5 s one
const PROBE_EVERY_MS = 15_000;
// After its body ends, an answer is settled within this long (on credit, the settlement waits
// 250 ms for a ride); a request that ended longer ago than this is settled.
const SETTLE_SLACK_MS = 2_000;
// workerd's RSS (it also holds the JavaScript heap, collected when the runtime sees fit) may
// grow by this much from an instance's first third to its last: what runs measured, with room.
// Runs of 60 s and 120 s grew at most 25 MiB; 600 s runs 98–138 MiB, in the JavaScript heap
// (the WebAssembly memory stayed flat), which one run cannot tell from garbage not yet
// collected. See docs/hardening.md, Soak.
const RSS_GROWTH_MIB = SECONDS <= 120 ? 64 : 192;
const UNITS = 60_000; // the limiter counts 1/60 000 of a token
const ATTEMPT_TIMEOUT_MS = 800;
const MAX_ATTEMPTS = 3;
const MODEL = 'claude-sonnet-5-5';

const TIERS = {
  default: {},
  small: { rpm: 40, input_tpm: 4_000, output_tpm: 1_500, concurrency: 2 },
  medium: { rpm: 80, input_tpm: 9_000, output_tpm: 3_000, concurrency: 3 },
  large: { rpm: 140, input_tpm: 20_000, output_tpm: 6_000, concurrency: 4 },
  // Sized so that one request drains each dimension by about the same share. Its dollar quota
  // never binds: it is there for the money ledger (every charge of a steady caller is known).
  steady: { rpm: 30, input_tpm: 5_000, output_tpm: 1_200, concurrency: 2, usd_per_day: 1000 },
  calibrate: { input_tpm: 1_000_000 },
};
// Callers: two per tier; the "pushy" ones retry a denial after 200 ms whatever it said. The
// "steady" ones send only while every bucket of theirs is at least half full, never leave an
// answer, and pause for each probe of the ledger, so their buckets stay partly drained and
// every charge of theirs is known: their probes are the exact ones.
const CALLERS = [
  { id: 'soak-small-a', tier: 'small', pushy: false },
  { id: 'soak-small-b', tier: 'small', pushy: true },
  { id: 'soak-medium-a', tier: 'medium', pushy: false },
  { id: 'soak-medium-b', tier: 'medium', pushy: true },
  { id: 'soak-large-a', tier: 'large', pushy: false },
  { id: 'soak-large-b', tier: 'large', pushy: true },
  { id: 'soak-steady-a', tier: 'steady', steady: true },
  { id: 'soak-steady-b', tier: 'steady', steady: true },
].map((c) => ({ ...c, key: `ck_${c.id.replace(/-/g, '_')}_9d2f61`, limits: TIERS[c.tier] }));

const WORDS = 'the proxy keeps every caller inside its limits while the upstream fails in every way it can'.split(' ');
const prompt = (n) => Array.from({ length: n }, (_, i) => WORDS[(i * 7 + n) % WORDS.length]).join(' ');
const PROMPTS = [prompt(30), prompt(110), prompt(260)];
const CALIBRATE_KEYS = PROMPTS.map((_, i) => `ck_soak_calibrate_${i}_44e0b7`);

/** The weight of a text, in sixteenths of a token, by the rule `docs/estimate.md` documents
 * (`text_units` in `src/request/estimate.rs`), for ASCII text: the soak's bodies are. */
function textUnits(text) {
  const kind = (b) => {
    if ((b >= 97 && b <= 122) || (b >= 65 && b <= 90)) return ['letter', 2, 29];
    if (b >= 48 && b <= 57) return ['digit', 8, 0];
    if (b === 32 || b === 10 || b === 9 || b === 13) return ['space', 2, 0];
    if (b <= 0x1f || b === 0x7f) return ['control', 16, 13];
    if (b <= 0x7e) return ['punct', 10, 14];
    throw new Error('the soak weighs ASCII text only');
  };
  const consonant = (b) => /[a-z]/i.test(String.fromCharCode(b)) && !'aeiouy'.includes(String.fromCharCode(b | 0x20));
  let units = 0;
  let run = null;
  let before = 0;
  let lone = false;
  for (const b of Buffer.from(text)) {
    const [k, weight, start] = kind(b);
    units += weight;
    if (k === 'letter' && run === 'letter') {
      units += 8 * (((b ^ before) >> 5) & 1);
      units += 5 * Number(consonant(b) && consonant(before));
    }
    if (k === 'space') lone = run !== 'space' && b === 32;
    if (k !== run) {
      units += run === 'space' && lone ? 5 : start;
      run = k;
    }
    before = b;
  }
  return units;
}

/** The input a body is reserved, by the rule `docs/estimate.md` documents: the text's weight
 * in whole tokens, 4 per message, 5 per request. The soak's bodies are text. */
function ruleEstimate(body) {
  const units = (c) => (typeof c === 'string' ? textUnits(c) : Array.isArray(c) ? c.reduce((n, b) => n + textUnits(b?.text ?? ''), 0) : 0);
  const messages = body.messages ?? [];
  const text = units(body.system ?? '') + messages.reduce((n, m) => n + units(m.content), 0);
  return Math.ceil(text / 16) + 4 * messages.length + 5;
}

// Faults sent with a request (every attempt of it gets the same one), by kind.
const STREAM_FAULTS = {
  'none': [null, 30],
  '529 every attempt': [{ status: 529 }, 3],
  '429 retry-after-ms every attempt': [{ status: 429, headers: { 'retry-after-ms': '300' } }, 2],
  'hang every attempt': [{ hang: true }, 2],
  'reset before headers every attempt': [{ reset: 'before_headers' }, 2],
  'overloaded in a 200 every attempt': [{ error_event_after: 0 }, 2],
  'error event mid-stream': [{ error_event_after: 5 }, 4],
  'stall mid-stream': [{ stall_after_events: 4 }, 3],
  'reset mid-stream': [{ reset: 'after_headers', after_events: 3 }, 4],
  'malformed SSE': [{ malformed: 'sse' }, 3],
  'slow stream': [{ tokens: 40, token_delay_ms: 25 }, 6],
  'cache read': [{ usage: { cache_read_input_tokens: 20_000 } }, 4],
  'cache creation': [{ usage: { cache_creation_input_tokens: 6 } }, 4],
};
const JSON_FAULTS = {
  'none': [null, 30],
  '529 every attempt': [{ status: 529 }, 3],
  '429 retry-after-ms every attempt': [{ status: 429, headers: { 'retry-after-ms': '300' } }, 2],
  // A non-streaming answer is waited for as long as the SDKs wait: slower than the attempt
  // timeout, it still arrives in one attempt.
  'slow headers past the attempt timeout': [{ delay_ms: 2 * ATTEMPT_TIMEOUT_MS }, 2],
  'reset before headers every attempt': [{ reset: 'before_headers' }, 2],
  'reset mid-JSON': [{ reset: 'after_headers' }, 4],
  'truncated JSON': [{ malformed: 'json' }, 4],
  'slow answer': [{ tokens: 30, token_delay_ms: 20 }, 5],
  'cache read': [{ usage: { cache_read_input_tokens: 20_000 } }, 4],
  'cache creation': [{ usage: { cache_creation_input_tokens: 6 } }, 4],
};
// Faults put in the simulator's queue now and then: taken by whichever requests come next
// without a fault of their own, so a retry meets a normal answer after them.
const QUEUE_FAULTS = {
  '529 burst (queue)': { path: '/v1/messages', status: 529, times: 3 },
  '429 retry-after 1 s (queue)': { path: '/v1/messages', status: 429, headers: { 'retry-after': '1' } },
  // A stream times out on these and retries; a JSON request waits for its answer.
  'slow headers, then an answer (queue)': { path: '/v1/messages', delay_ms: 2 * ATTEMPT_TIMEOUT_MS, times: 2 },
  'reset before headers (queue)': { path: '/v1/messages', reset: 'before_headers', times: 2 },
  '500 on count_tokens (queue)': { path: '/v1/messages/count_tokens', status: 500, times: 2 },
};

// Seeded randomness, so a run can be replayed in spirit (timing still varies).
let seed = Number(process.env.SOAK_SEED ?? 20261201) >>> 0;
const rand = () => {
  seed = (seed + 0x6d2b79f5) >>> 0;
  let t = seed;
  t = Math.imul(t ^ (t >>> 15), t | 1);
  t ^= t + Math.imul(t ^ (t >>> 7), t | 61);
  return ((t ^ (t >>> 14)) >>> 0) / 4294967296;
};
const pick = (table) => {
  const entries = Object.entries(table);
  let r = rand() * entries.reduce((s, [, [, w]]) => s + w, 0);
  for (const [name, [fault, w]] of entries) {
    if ((r -= w) < 0) return [name, fault];
  }
  return entries[0].slice(0, 1).concat([entries[0][1][0]]);
};
const sleep = (ms) => new Promise((r) => setTimeout(r, ms));
const SOAK_ADMIN_KEY = 'adm_soak_memory_probe_5e2b71';
const say = (...a) => console.error(`[soak ${new Date().toISOString().slice(11, 19)}]`, ...a);

// ------------------------------------------------------------------ processes and memory

function workerdPids() {
  const table = new Map();
  for (const d of fs.readdirSync('/proc')) {
    if (!/^\d+$/.test(d)) continue;
    try {
      const m = fs.readFileSync(`/proc/${d}/stat`, 'utf8').match(/^\d+ \((.*)\) \S (\d+)/s);
      if (m) table.set(Number(d), { ppid: Number(m[2]), comm: m[1] });
    } catch {
      // gone
    }
  }
  const below = (pid) => {
    for (let p = table.get(pid)?.ppid; p; p = table.get(p)?.ppid) if (p === process.pid) return true;
    return false;
  };
  return [...table.entries()].filter(([pid, p]) => p.comm.startsWith('workerd') && below(pid)).map(([pid]) => pid);
}
function rssKib(pids) {
  let total = 0;
  for (const pid of pids) {
    try {
      total += Number(fs.readFileSync(`/proc/${pid}/status`, 'utf8').match(/VmRSS:\s+(\d+)/)?.[1] ?? 0);
    } catch {
      // gone
    }
  }
  return total;
}

// ------------------------------------------------------------------ the run

const persistDir = fs.mkdtempSync(path.join(os.tmpdir(), 'breakwater-soak-'));
const sim = await startSim(['--seed', '7']);
const clientKeys = {};
for (const c of CALLERS) clientKeys[c.key] = { id: c.id, tier: c.tier };
CALIBRATE_KEYS.forEach((k, i) => { clientKeys[k] = { id: `soak-calibrate-${i}`, tier: 'calibrate' }; });
const vars = workerVars(sim, {
  CLIENT_KEYS: JSON.stringify(clientKeys),
  RATE_LIMITS: JSON.stringify(TIERS),
  ATTEMPT_TIMEOUT_MS: String(ATTEMPT_TIMEOUT_MS),
  MAX_ATTEMPTS: String(MAX_ATTEMPTS),
  REQUEST_BUDGET_MS: '6000',
  BACKOFF_BASE_MS: '50',
  BACKOFF_MAX_MS: '400',
  ADMIN_KEY: SOAK_ADMIN_KEY,
});

const workerLogs = [];
let worker;
let instance = 0;
async function launchWorker() {
  worker = await startWorker(vars, { persistDir });
  instance += 1;
  worker.instance = instance;
  worker.pids = workerdPids();
}
await launchWorker();

// The simulator's log, gathered as the run goes (it keeps the last 10 000 entries). Entries
// are re-read for 40 s after they arrive, so that each one's answer (status, usage) is final.
const simLog = new Map();
let settledSeq = 0;
async function pollLog() {
  const res = await fetch(`${sim.url}/_sim/log?after=${settledSeq}`);
  const entries = await res.json();
  const now = Date.now();
  for (const e of entries) {
    simLog.set(e.seq, e);
    if (e.seq === settledSeq + 1 && now - e.received_at_ms > 40_000) settledSeq = e.seq;
  }
}

const records = [];
let nextId = 0;
let paused = null; // a promise while the Worker restarts
let steadyHeld = null; // a promise while the steady callers pause for a probe
const inflight = new Set();

function headersFor(caller, id, fault) {
  return {
    'content-type': 'application/json',
    'x-api-key': caller.key,
    'anthropic-version': '2023-06-01',
    'x-soak-id': String(id),
    ...(fault ? { 'x-sim-fault': JSON.stringify(fault) } : {}),
  };
}

/** One request, recorded with what the ledger needs. */
async function one(caller) {
  while (paused || (caller.steady && steadyHeld)) await (paused ?? steadyHeld);
  const id = ++nextId;
  const r = { id, caller: caller.id, instance: worker.instance };
  records.push(r);
  const count = rand() < 0.12;
  r.route = count ? 'count' : 'messages';
  r.prompt = Math.floor(rand() * PROMPTS.length);
  const body = { model: MODEL, messages: [{ role: 'user', content: PROMPTS[r.prompt] }] };
  let fault = null;
  let abort = null;
  if (!count) {
    r.stream = rand() < 0.5;
    r.maxTokens = [16, 64, 200, 400][Math.floor(rand() * 4)];
    body.max_tokens = r.maxTokens;
    if (r.stream) body.stream = true;
    [r.fault, fault] = pick(r.stream ? STREAM_FAULTS : JSON_FAULTS);
    const roll = caller.steady ? 1 : rand();
    if (caller.steady && (!fault || fault.usage)) {
      // Answers long enough to drain the output bucket as much as the others.
      fault = { ...fault, tokens: 10 + Math.floor(rand() * 90) };
    }
    if (roll < 0.04) {
      // The client gives up while the request waits for its first byte.
      r.fault = 'client leaves before headers';
      // A stream's attempt times out on a hang; a JSON one would be waited for (as long as
      // the SDKs wait), so its answer comes late instead, after the client has gone.
      fault = r.stream ? { hang: true } : { delay_ms: 3 * ATTEMPT_TIMEOUT_MS };
      abort = 'before';
    } else if (r.stream && roll < 0.09) {
      r.fault = 'client leaves mid-stream';
      fault = { tokens: 80, token_delay_ms: 30 };
      abort = 'mid';
    }
  } else {
    r.fault = 'count_tokens';
  }
  const ctl = new AbortController();
  const url = `${worker.url}/v1/messages${count ? '/count_tokens' : ''}`;
  r.sentAt = Date.now();
  const done = (async () => {
    let timer;
    if (abort === 'before') timer = setTimeout(() => ctl.abort(), 500);
    // Nothing the proxy does should take 30 s here (6 s budgets, 0.8 s attempt timeouts).
    const watchdog = setTimeout(() => { r.hung = true; ctl.abort(); }, 30_000);
    try {
      const res = await fetch(url, { method: 'POST', headers: headersFor(caller, id, fault), body: JSON.stringify(body), signal: ctl.signal });
      r.headersAt = Date.now();
      r.status = res.status;
      if (res.status !== 200) {
        const text = await res.text();
        try {
          r.scope = JSON.parse(text).limit?.scope;
          r.retryAfterMs = JSON.parse(text).retry_after_ms;
        } catch {
          // not JSON
        }
      } else if (abort === 'mid') {
        const reader = res.body.getReader();
        let bytes = 0;
        while (bytes < 600) {
          const { value, done: end } = await reader.read();
          if (end) break;
          bytes += value.length;
        }
        await reader.cancel();
        r.outcome = 'left mid-stream';
      } else {
        await res.arrayBuffer().catch(() => { r.bodyBroke = true; });
      }
      r.outcome ??= 'answered';
    } catch (e) {
      r.outcome = r.hung ? 'hung' : ctl.signal.aborted ? 'left before headers' : `network error: ${e.cause?.code ?? e.message}`;
    } finally {
      if (r.hung) r.outcome = 'hung';
      clearTimeout(timer);
      clearTimeout(watchdog);
      r.endedAt = Date.now();
    }
  })();
  inflight.add(done);
  await done;
  inflight.delete(done);
  return r;
}

/** The caller's figures as its object holds them now (the operator's view charges nothing). */
async function figures(caller) {
  const res = await fetch(`${worker.url}/proxy/status?caller=${encodeURIComponent(caller.id)}`, { headers: { authorization: `Bearer ${SOAK_ADMIN_KEY}` } });
  const doc = res.status === 200 ? await res.json() : null;
  return doc && Object.fromEntries((doc.caller?.usage?.dimensions ?? []).map((d) => [d.dimension, d.remaining]));
}

/** A steady caller's lanes: send while every bucket is at least half full, else wait. */
async function driveSteady(caller, until) {
  const lanes = Array.from({ length: caller.limits.concurrency }, async () => {
    while (Date.now() < until) {
      while (paused || steadyHeld) await (paused ?? steadyHeld);
      const seen = await figures(caller).catch(() => null);
      if (!seen || ['rpm', 'input_tpm', 'output_tpm'].some((d) => !(seen[d] >= caller.limits[d] / 2))) {
        await sleep(250);
        continue;
      }
      await one(caller);
      await sleep(rand() * 150);
    }
  });
  await Promise.all(lanes);
}

/** A caller's workers: one more than its concurrency, back to back. */
async function drive(caller, until) {
  const lanes = Array.from({ length: caller.limits.concurrency + 1 }, async () => {
    while (Date.now() < until) {
      const r = await one(caller);
      if (r.status === 429 && r.scope === 'key') {
        await sleep(caller.pushy ? 200 : Math.min(r.retryAfterMs ?? 1000, 3000));
      } else {
        await sleep(rand() * 150);
      }
    }
  });
  await Promise.all(lanes);
}

// The proxy's own input estimate for each prompt (a fresh bucket, charged once), set beside
// the documented rule the replay reserves with: a drift of either shows here first.
const estimates = [];
for (let i = 0; i < PROMPTS.length; i++) {
  const body = { model: MODEL, max_tokens: 1, messages: [{ role: 'user', content: PROMPTS[i] }] };
  const res = await fetch(`${worker.url}/v1/messages`, { method: 'POST', headers: { ...headersFor({ key: CALIBRATE_KEYS[i] }, 0, { tokens: 1 }) }, body: JSON.stringify(body) });
  await res.arrayBuffer();
  estimates.push(TIERS.calibrate.input_tpm - Number(res.headers.get('anthropic-ratelimit-input-tokens-remaining')));
}
const ruled = PROMPTS.map((p) => ruleEstimate({ messages: [{ role: 'user', content: p }] }));
say(`input estimates of the prompts: ${estimates.join(', ')} (the rule: ${ruled.join(', ')}); run of ${SECONDS} s`);
const failures = [];
if (estimates.some((e, i) => e !== ruled[i])) failures.push(`the proxy reserves ${estimates.join(', ')} input tokens for the prompts; the documented rule ${ruled.join(', ')}`);

const t0 = Date.now();
const until = t0 + SECONDS * 1000;
const memory = [];
const sampler = setInterval(() => {
  memory.push({ t: Date.now() - t0, instance: worker.instance, kib: rssKib(worker.pids) });
}, 1000);
// The isolate's WebAssembly memory (its high-water mark), from the status, every 5 s.
const wasmMemory = [];
const wasmSampler = setInterval(() => {
  const at = { t: Date.now() - t0, instance: worker.instance };
  fetch(`${worker.url}/proxy/status`, { headers: { authorization: `Bearer ${SOAK_ADMIN_KEY}` } })
    .then((r) => r.json())
    .then((doc) => wasmMemory.push({ ...at, bytes: doc.edge.wasm_memory_bytes }))
    .catch(() => {});
}, 5000);
const poller = setInterval(() => { pollLog().catch((e) => say(`log poll: ${e.message}`)); }, 3000);
const queued = {};
const chaos = (async () => {
  const names = Object.keys(QUEUE_FAULTS);
  while (Date.now() < until - 2000) {
    await sleep(2000 + rand() * 4000);
    const name = names[Math.floor(rand() * names.length)];
    queued[name] = (queued[name] ?? 0) + 1;
    await sim.script([QUEUE_FAULTS[name]]).catch(() => {});
  }
})();

// Probes of the ledger: every caller's figures with the instants they are known between. The
// replay they are compared with is computed after the run, when every request's fate is known.
const probes = [];
let probing = Promise.resolve(); // probes and the restart take turns
function serially(fn) {
  const next = probing.then(fn, fn);
  probing = next.catch(() => {});
  return next;
}
/** Pauses the steady callers until their answers are all over and settled. */
async function holdSteady() {
  let release;
  steadyHeld = new Promise((r) => { release = r; });
  const steadyIds = new Set(CALLERS.filter((c) => c.steady).map((c) => c.id));
  while (records.some((r) => steadyIds.has(r.caller) && r.endedAt === undefined)) await sleep(50);
  await sleep(SETTLE_SLACK_MS);
  return () => { steadyHeld = null; release(); };
}
async function probe(label) {
  const p = { label, t: Date.now() - t0, instance: worker.instance, callers: {} };
  await Promise.all(CALLERS.map(async (c) => {
    const sent = Date.now();
    const seen = await figures(c).catch(() => null);
    p.callers[c.id] = { sent, back: Date.now(), seen };
  }));
  probes.push(p);
  return p;
}
const probesDuringRun = (async () => {
  for (let k = 1; ; k += 1) {
    const at = t0 + k * PROBE_EVERY_MS;
    if (at > until) return;
    await sleep(at - Date.now());
    await serially(async () => {
      const release = await holdSteady();
      try {
        await probe(`${Math.round((Date.now() - t0) / 1000)} s`);
      } finally {
        release();
      }
    });
  }
})();

let restartedAt = null;
let killedInFlight = 0;
const restart = (async () => {
  await sleep(SECONDS * 1000 * 0.45);
  await serially(async () => {
    // The steady callers finish first, so that their ledger across the restart stays exact.
    const releaseSteady = await holdSteady();
    await probe('before the restart');
    let release;
    paused = new Promise((r) => { release = r; });
    killedInFlight = inflight.size;
    say(`restarting the Worker with ${killedInFlight} requests in flight`);
    const old = worker;
    workerLogs.push(...old.logs);
    await old.stop();
    await launchWorker();
    restartedAt = Date.now() - t0;
    await probe('after the restart');
    paused = null;
    release();
    releaseSteady();
  });
})();

await Promise.all([...CALLERS.map((c) => (c.steady ? driveSteady(c, until) : drive(c, until))), chaos, restart, probesDuringRun]);
await Promise.all([...inflight]);
const stoppedAt = Date.now();
say(`traffic over after ${((stoppedAt - t0) / 1000).toFixed(0)} s: ${records.length} requests`);
clearInterval(poller);

// After the traffic: 3 s (every complete answer has settled by then; an answer whose fate is
// unknown is allowed either state), then after the quiet period the slots need.
await sleep(3000);
await probe('3 s after the traffic');
say(`quiet for ${QUIET_MS / 1000} s`);
await sleep(QUIET_MS);
await probe(`${QUIET_MS / 1000 + 3} s after the traffic`);

/** Reads the log's tail again (answers are over, so every entry is final). */
async function finalLog() {
  const entries = await (await fetch(`${sim.url}/_sim/log?after=${settledSeq}`)).json();
  for (const e of entries) simLog.set(e.seq, e);
}
await finalLog();

// ------------------------------------------------------------------ the ledger

const attemptsOf = new Map();
function indexLog() {
  attemptsOf.clear();
  for (const e of [...simLog.values()].sort((a, b) => a.seq - b.seq)) {
    const id = Number(e.headers['x-soak-id']);
    if (!id) continue;
    if (!attemptsOf.has(id)) attemptsOf.set(id, []);
    attemptsOf.get(id).push(e);
  }
}
indexLog();

/** The reservation of a request, read from its body as the simulator logged it (the client's
 * own body when no attempt reached the upstream): `max_tokens`, and the input by the rule. */
function reservationOf(r) {
  const logged = attemptsOf.get(r.id)?.[0];
  let body;
  try {
    body = logged ? JSON.parse(logged.body) : null;
  } catch {
    body = null;
  }
  body ??= { max_tokens: r.maxTokens, messages: [{ role: 'user', content: PROMPTS[r.prompt] }] };
  return { input: ruleEstimate(body), output: body.max_tokens ?? 0 };
}

/**
 * What a request should have been charged, per dimension: its admission window {lo, hi}, the
 * amount range once settled `a`, the amount while not yet settled `pending`, and `doneBy`, the
 * instant by which it was certainly settled.
 */
function charges(r, limits) {
  const out = [];
  if (r.status === 429 && r.scope === 'key') return out; // denied: nothing charged
  const attempts = attemptsOf.get(r.id) ?? [];
  const reached = attempts.length > 0;
  const known = r.status !== undefined; // the client got an answer (not a caller denial)
  const admitted = known || reached ? 1 : 0; // else it may have gone before its admission
  const admitLo = r.sentAt;
  const admitHi = Math.min(reached ? attempts[0].received_at_ms : Infinity, r.headersAt ?? Infinity, r.endedAt);
  const at = { lo: admitLo, hi: admitHi };
  out.push({ dim: 'rpm', ...at, a: [admitted, 1], pending: [admitted, 1], doneBy: -Infinity });
  if (r.route === 'count') return out;
  const reserved = reservationOf(r);
  const resIn = Math.min(reserved.input, limits.input_tpm);
  const resOut = reserved.output;
  const final = attempts.at(-1);
  const u = final?.usage;
  const usedIn = u ? u.input_tokens + u.cache_creation_input_tokens : null;
  const f = final?.fault ?? {};
  let settled; // [[inLo, inHi], [outLo, outHi]]
  let extraAt = null;
  // The fate of an answer the client left, or lost with the Worker, is never certain.
  let doneBy = r.endedAt + SETTLE_SLACK_MS;
  if (!known || r.outcome !== 'answered') {
    // The client went away, or lost the Worker: settled as cut short (or as no answer), or
    // dropped by the runtime with the reservation kept. Either is allowed.
    const cut = r.outcome === 'left mid-stream' && usedIn !== null;
    settled = [[cut ? usedIn : 0, resIn], [cut ? resOut : 0, resOut]];
    if (!admitted) settled = [[0, resIn], [0, resOut]];
    doneBy = Infinity;
  } else if (r.status !== 200) {
    settled = [[0, 0], [0, 0]];
  } else if (u === null || u === undefined || (f.reset === 'after_headers' && !r.stream)) {
    settled = [[resIn, resIn], [resOut, resOut]]; // usage unreadable: the reservation stands
  } else if (f.reset === 'after_headers' || f.stall_after_events !== undefined) {
    settled = [[usedIn, usedIn], [resOut, resOut]]; // cut short: input settled, output kept
  } else if (f.error_event_after !== undefined) {
    settled = [[usedIn, usedIn], [1, 1]]; // ended by the upstream's error: the output so far
  } else {
    settled = [[usedIn, usedIn], [u.output_tokens, u.output_tokens]];
    extraAt = { lo: final.received_at_ms, hi: r.endedAt + SETTLE_SLACK_MS };
  }
  for (const [dim, [lo, hi], res] of [['input_tpm', settled[0], resIn], ['output_tpm', settled[1], resOut]]) {
    const adm = admitted ? 1 : 0;
    out.push({ dim, ...at, a: [Math.min(lo, res) * adm, Math.min(hi, res)], pending: [res * adm, res], doneBy });
    if (hi > res) out.push({ dim, ...(extraAt ?? at), a: [Math.max(0, lo - res), hi - res], pending: [0, 0], doneBy, extra: true });
  }
  return out;
}

/** A charge as of instant `T`: times and amounts for the lower and the upper bound of the level. */
function asOf(e, T) {
  if (e.lo > T) return null; // not made yet
  const settled = e.doneBy <= T;
  const a = settled ? e.a : [Math.min(e.a[0], e.pending[0]), Math.max(e.a[1], e.pending[1])];
  // Made for sure only once its window is over.
  return { min: { t: e.lo, a: e.hi <= T ? a[0] : 0 }, max: { t: Math.min(e.hi, T), a: a[1] } };
}

/** The bucket's used level (units) at `t` after these charges (time ms, amount tokens). */
function level(events, quota, t) {
  let used = 0;
  let last = -Infinity;
  for (const e of [...events].sort((a, b) => a.t - b.t)) {
    if (e.t > t) break;
    used = Math.max(0, used - (e.t - last) * quota) + e.a * UNITS;
    last = e.t;
  }
  return Math.max(0, used - (t - last) * quota);
}

/** Compares one probe with the replay as of its instants. */
function checkProbe(p) {
  const rows = [];
  for (const c of CALLERS) {
    const { sent, back, seen } = p.callers[c.id];
    const evs = records.filter((r) => r.caller === c.id).flatMap((r) => charges(r, c.limits));
    if (!seen) failures.push(`${p.label}: ${c.id}: the probe got no figures`);
    const row = { caller: c.id, tier: c.tier, steady: !!c.steady };
    for (const dim of ['rpm', 'input_tpm', 'output_tpm']) {
      const quota = c.limits[dim];
      const mine = evs.filter((e) => e.dim === dim);
      // The object read its figures somewhere between the probe's sending and its answer:
      // the lower bound of the level is as of the answer; the upper is the highest the level
      // stood at any instant of the probe's flight (at its sending, or as a charge made
      // during the flight landed: admissions go on while the probe travels).
      const atBack = mine.map((e) => asOf(e, back)).filter(Boolean);
      const usedMin = level(atBack.map((x) => x.min), quota, back);
      const highs = atBack.map((x) => x.max);
      const instants = [sent, ...highs.map((x) => x.t).filter((t) => t > sent && t <= back)];
      const usedMax = Math.max(...instants.map((t) => level(highs, quota, t)));
      const cap = quota * UNITS;
      const hi = Math.floor(Math.max(0, cap - usedMin) / UNITS) + 1; // +1: whole-ms clocks
      const lo = Math.max(0, Math.floor(Math.max(0, cap - usedMax) / UNITS) - 1);
      const s = seen?.[dim] ?? NaN;
      const diff = !Number.isFinite(s) ? NaN : s < lo ? s - lo : s > hi ? s - hi : 0;
      // Informative: the figure is neither a full bucket (any history matches one) nor empty.
      row[dim] = { seen: s, lo, hi, width: hi - lo, diff, informative: s > 0 && s < quota };
      if (diff !== 0) failures.push(`${p.label}: ${c.id} ${dim}: the object shows ${s} remaining, the replay ${lo}..${hi}`);
    }
    rows.push(row);
  }
  return rows;
}
const ledgers = probes.map((p) => ({ label: p.label, t: p.t, rows: checkProbe(p) }));

// The money ledger: what a steady caller's object settled against its dollar quota equals,
// to the micro-dollar, the usage the simulator reported, priced as the built-in table prices
// MODEL ($ per MTok, so micro-dollars per token), each answer rounded up once; an answer whose
// usage could not be read keeps its worst case (its estimate written to the cache for an hour,
// and max_tokens out), one that failed costs nothing.
const PRICE = { input: 2, output: 10, cacheWrite5m: 2.5, cacheWrite1h: 4, cacheRead: 0.1 };
function moneyOf(r) {
  if ((r.status === 429 && r.scope === 'key') || r.route === 'count') return 0;
  if (r.outcome !== 'answered') return null; // its fate is not known
  if (r.status !== 200) return 0;
  const final = (attemptsOf.get(r.id) ?? []).at(-1);
  const u = final?.usage;
  const f = final?.fault ?? {};
  const reserved = reservationOf(r);
  const worst = reserved.input * PRICE.cacheWrite1h + reserved.output * PRICE.output;
  if (!u || f.reset === 'after_headers' || f.stall_after_events !== undefined) return worst;
  const output = f.error_event_after !== undefined ? 1 : u.output_tokens;
  const millionths = u.input_tokens * PRICE.input * 1e6 + output * PRICE.output * 1e6
    + (u.cache_creation_input_tokens ?? 0) * PRICE.cacheWrite5m * 1e6
    + (u.cache_read_input_tokens ?? 0) * PRICE.cacheRead * 1e6;
  return Math.ceil(millionths / 1e6);
}
const money = [];
const sameDay = Math.floor(t0 / 86_400_000) === Math.floor(Date.now() / 86_400_000);
for (const c of CALLERS.filter((x) => x.limits.usd_per_day)) {
  const costs = records.filter((r) => r.caller === c.id).map(moneyOf);
  const res = await fetch(`${worker.url}/proxy/status?caller=${encodeURIComponent(c.id)}`, { headers: { authorization: `Bearer ${SOAK_ADMIN_KEY}` } });
  const doc = res.status === 200 ? await res.json() : null;
  const settledMicros = doc?.caller?.quotas?.find((q) => q.dimension === 'usd_per_day')?.used;
  const expected = costs.every((x) => x !== null) ? costs.reduce((a, b) => a + b, 0) : null;
  money.push({ caller: c.id, requests: costs.length, settled_micros: settledMicros, priced_micros: expected });
  if (!sameDay) continue; // the day changed during the run: the window holds only its part
  if (expected === null) failures.push(`${c.id}: a request's fate is unknown, so its money cannot be checked`);
  else if (settledMicros !== expected) failures.push(`${c.id}: usd_per_day settled ${settledMicros} µ$, the usage priced ${expected} µ$`);
}

// Slots: every caller runs `concurrency` overlapping requests.
const slotResults = await Promise.all(CALLERS.flatMap((c) => Array.from({ length: c.limits.concurrency }, async () => {
  const body = { model: MODEL, max_tokens: 1, stream: true, messages: [{ role: 'user', content: 'slot' }] };
  const res = await fetch(`${worker.url}/v1/messages`, { method: 'POST', headers: headersFor(c, 0, { tokens: 1, token_delay_ms: 300 }), body: JSON.stringify(body) });
  const text = await res.text();
  return { caller: c.id, status: res.status, text: res.status === 200 ? '' : text };
})));
for (const s of slotResults.filter((s) => s.status !== 200)) failures.push(`${s.caller}: a slot was still held (${s.status} ${s.text.slice(0, 160)})`);

const hung = records.filter((r) => r.outcome === 'hung');
if (hung.length) {
  failures.push(`${hung.length} requests had no complete answer after 30 s: ${hung.map((r) => `#${r.id} ${r.fault} (${r.stream ? 'SSE' : 'JSON'}, status ${r.status ?? 'none'}, ${attemptsOf.get(r.id)?.length ?? 0} upstream attempts, sent at ${Math.round((r.sentAt - t0) / 1000)} s, headers after ${r.headersAt ? `${r.headersAt - r.sentAt} ms` : 'none'})`).join('; ')}`);
}
workerLogs.push(...worker.logs);
fs.mkdirSync(path.join(ROOT, 'artifacts/soak'), { recursive: true });
fs.writeFileSync(path.join(ROOT, 'artifacts/soak/worker.log'), workerLogs.join('\n'));
// An exception the WebAssembly side did not catch restarts its instance and strands every
// request in flight in it: not one is allowed.
const critical = workerLogs.filter((l) => l.includes('Critical error') || l.includes('panicked'));
if (critical.length) failures.push(`${critical.length} critical errors in the Worker (instance restarts), e.g. ${critical[0]}`);
const settleFailed = workerLogs.filter((l) => l.includes('settle_failed'));
if (settleFailed.length) failures.push(`${settleFailed.length} settle_failed log lines, e.g. ${settleFailed[0]}`);
clearInterval(sampler);
clearInterval(wasmSampler);

// Memory: per Worker instance, the peak of its first and of its last third (from 5 s on).
const mem = [];
for (const i of [1, 2]) {
  const s = memory.filter((m) => m.instance === i && m.kib > 0);
  if (!s.length) continue;
  const start = s[0].t;
  const span = s.at(-1).t - start;
  const warm = s.filter((m) => m.t - start >= 5000 && m.t - start <= 5000 + span / 3);
  const late = s.filter((m) => m.t - start >= (2 * span) / 3);
  const mib = (k) => Math.round(k / 102.4) / 10;
  const peakOf = (xs) => Math.max(...xs.map((m) => m.kib));
  const row = {
    instance: i,
    first: mib(s[0].kib),
    warm: mib(peakOf(warm.length ? warm : s)),
    peak: mib(peakOf(s)),
    end: mib(s.at(-1).kib),
    late: mib(peakOf(late.length ? late : s)),
  };
  row.growth = Math.round((row.late - row.warm) * 10) / 10;
  const w = wasmMemory.filter((m) => m.instance === i);
  if (w.length) {
    row.wasm_warm = mib(Math.max(...w.filter((m) => m.t - start <= 5000 + span / 3).map((m) => m.bytes), w[0].bytes) / 1024);
    row.wasm_end = mib(w.at(-1).bytes / 1024);
  }
  mem.push(row);
  // The WebAssembly memory is the proxy's own heap, where a leak of its state would show: it
  // must stay flat. workerd's RSS also holds the JavaScript heap, which the runtime collects
  // when it sees fit; it only has to stay within a generous bound.
  if (row.wasm_warm !== undefined && row.wasm_end - row.wasm_warm > 2) failures.push(`instance ${i}: WebAssembly memory grew from ${row.wasm_warm} to ${row.wasm_end} MiB`);
  if (row.growth > RSS_GROWTH_MIB) failures.push(`workerd instance ${i} grew ${row.growth} MiB from its first third to its last (bound ${RSS_GROWTH_MIB} MiB)`);
}

await worker.stop();
await sim.stop();
fs.rmSync(persistDir, { recursive: true, force: true });

// ------------------------------------------------------------------ the report

const byKind = {};
for (const r of records) byKind[r.fault] = (byKind[r.fault] ?? 0) + 1;
for (const [k, n] of Object.entries(queued)) byKind[k] = n;
const statuses = {};
for (const r of records) {
  const k = r.status === 429 && r.scope === 'key' ? '429 (caller limit)' : r.status ?? r.outcome;
  statuses[k] = (statuses[k] ?? 0) + 1;
}
// The ranges' widths (tokens, and as a share of the bucket), for the steady callers and the
// others, over the probes during the run and over all of them.
const widthsOf = (pick) => {
  const cells = ledgers.filter((l) => pick.probe(l)).flatMap((l) => l.rows.filter(pick.row).flatMap((row) =>
    ['rpm', 'input_tpm', 'output_tpm'].map((dim) => ({ dim, width: row[dim].width, share: row[dim].width / TIERS[row.tier][dim], informative: row[dim].informative }))));
  const sorted = (xs) => [...xs].sort((a, b) => a - b);
  const shares = sorted(cells.map((c) => c.share));
  const pct = (x) => (x === undefined ? null : Math.round(x * 1000) / 10);
  return {
    cells: cells.length,
    informative: cells.filter((c) => c.informative).length,
    max_width: Math.max(0, ...cells.map((c) => c.width)),
    median_share_pct: pct(shares[Math.floor(shares.length / 2)]),
    max_share_pct: pct(shares.at(-1)),
  };
};
const during = (l) => !l.label.includes('after the traffic');
const widthSummary = {
  steady_during_run: widthsOf({ probe: during, row: (r) => r.steady }),
  others_during_run: widthsOf({ probe: during, row: (r) => !r.steady }),
  steady_all: widthsOf({ probe: () => true, row: (r) => r.steady }),
  others_all: widthsOf({ probe: () => true, row: (r) => !r.steady }),
};

const summary = {
  seconds: SECONDS,
  wall_s: Math.round((Date.now() - t0) / 1000),
  requests: records.length,
  upstream_attempts: [...attemptsOf.values()].reduce((s, a) => s + a.length, 0),
  left_before_headers: records.filter((r) => r.outcome === 'left before headers').length,
  left_before_headers_by_attempts_seen: records.filter((r) => r.outcome === 'left before headers')
    .reduce((m, r) => { const n = attemptsOf.get(r.id)?.length ?? 0; m[n] = (m[n] ?? 0) + 1; return m; }, {}),
  left_mid_stream: records.filter((r) => r.outcome === 'left mid-stream').length,
  hung: records.filter((r) => r.outcome === 'hung').length,
  killed_by_restart: records.filter((r) => r.outcome?.startsWith('network error')).length,
  restarts: 1,
  restarted_at_s: Math.round(restartedAt / 1000),
  in_flight_at_restart: killedInFlight,
  statuses,
  faults: byKind,
  ledger_probes: ledgers,
  ledger_widths: widthSummary,
  money_ledger: money,
  memory_mib: mem,
  settle_failed: settleFailed.length,
  critical_errors: critical.length,
  failures,
};
const outDir = path.join(ROOT, 'artifacts/soak');
fs.mkdirSync(outDir, { recursive: true });
if (process.env.SOAK_DEBUG) {
  const dump = records.map((r) => ({ ...r, attempts: (attemptsOf.get(r.id) ?? []).map((e) => ({ at: e.received_at_ms, status: e.status, fault: e.fault, usage: e.usage })), charges: charges(r, CALLERS.find((c) => c.id === r.caller).limits) }));
  fs.writeFileSync(path.join(outDir, 'records.json'), JSON.stringify({ estimates, dump }));
}
fs.writeFileSync(path.join(outDir, 'summary.json'), `${JSON.stringify(summary, null, 2)}\n`);

console.log(`soak: ${summary.requests} requests in ${SECONDS} s (${summary.upstream_attempts} upstream attempts), ` +
  `${summary.left_before_headers} clients left before headers, ${summary.left_mid_stream} mid-stream, ` +
  `1 restart at ${summary.restarted_at_s} s with ${killedInFlight} in flight`);
console.log(`statuses: ${Object.entries(statuses).map(([k, n]) => `${k}: ${n}`).join(', ')}`);
console.log(`faults: ${Object.entries(byKind).map(([k, n]) => `${k}: ${n}`).join(', ')}`);
console.log(`ledger: ${ledgers.length} probes (every ${PROBE_EVERY_MS / 1000} s, around the restart, after the traffic); remaining as the object reports it, the replay's range [width]`);
console.log('| probe | caller | rpm | input_tpm | output_tpm |');
console.log('|---|---|---|---|---|');
for (const l of ledgers) {
  for (const row of l.rows) {
    const cell = (d) => `${d.seen} in ${d.lo}..${d.hi} [${d.width}]${d.diff ? ` OUTSIDE by ${d.diff}` : ''}`;
    console.log(`| ${l.label} | ${row.caller} | ${cell(row.rpm)} | ${cell(row.input_tpm)} | ${cell(row.output_tpm)} |`);
  }
}
console.log('| ranges | cells | partly drained | widest (tokens) | median width, % of bucket | widest, % of bucket |');
console.log('|---|---|---|---|---|---|');
for (const [name, w] of Object.entries(widthSummary)) {
  console.log(`| ${name.replace(/_/g, ' ')} | ${w.cells} | ${w.informative} | ${w.max_width} | ${w.median_share_pct} | ${w.max_share_pct} |`);
}
console.log('| workerd instance | at start | warm (first third) | peak | last third | at end | growth | wasm memory, first third → end |');
console.log('|---|---|---|---|---|---|---|---|');
for (const m of mem) console.log(`| ${m.instance} | ${m.first} MiB | ${m.warm} MiB | ${m.peak} MiB | ${m.late} MiB | ${m.end} MiB | ${m.growth} MiB | ${m.wasm_warm ?? '?'} → ${m.wasm_end ?? '?'} MiB |`);
for (const m of money) console.log(`money: ${m.caller}: ${m.requests} requests, settled ${m.settled_micros} µ$, usage priced ${m.priced_micros} µ$`);
console.log(`settle_failed lines: ${settleFailed.length}; slots held at the end: ${slotResults.filter((s) => s.status !== 200).length}`);
if (failures.length) {
  console.log(`FAILED:\n  ${failures.join('\n  ')}`);
  process.exit(1);
}
console.log('soak: ledger, slots, settlements and memory all hold');
process.exit(0);
