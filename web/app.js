// The demo chat page: a transcript, streaming answers, a countdown while a limit is waited
// out, and (when the upstream is the simulator) buttons that make the upstream misbehave.
//
// Configuration: `config.js` (written by scripts/dev.sh), overridden by query parameters:
//   ?proxy=http://127.0.0.1:8787&key=ck_…&sim=http://127.0.0.1:8788&model=claude-sonnet-5-5
// `sim=` (empty) hides the simulator controls. `admin=<ADMIN_KEY>` shows the fleet panel, which
// polls the proxy's /proxy/status (scripts/dev.sh sets a local ADMIN_KEY and passes it on).
// `neighbour_key=ck_…` (a second client key, of a background tier) shows the noisy neighbour.
import { streamChat } from './breakwater-client.js';

const params = new URLSearchParams(location.search);
const fileConfig = await import('./config.js').then((m) => m.default ?? {}, () => ({}));
const config = {
  proxyURL: params.get('proxy') ?? fileConfig.proxyURL ?? 'http://127.0.0.1:8787',
  apiKey: params.get('key') ?? fileConfig.apiKey ?? '',
  simURL: (params.has('sim') ? params.get('sim') : fileConfig.simURL) || null,
  model: params.get('model') ?? fileConfig.model ?? 'claude-sonnet-5-5',
  maxTokens: Number(params.get('max_tokens') ?? fileConfig.maxTokens ?? 1024),
  upstream: fileConfig.upstream ?? null,
  adminKey: params.get('admin') ?? fileConfig.adminKey ?? '',
  /** How long the "Overload" button keeps the simulator overloaded. */
  overloadSeconds: Number(params.get('overload_s') ?? fileConfig.overloadSeconds ?? 6),
  /** The noisy neighbour's client key: another caller, whose tier is background. */
  neighbourKey: params.get('neighbour_key') ?? fileConfig.neighbourKey ?? '',
  /** How many requests the noisy neighbour's job sends. */
  neighbourRequests: Number(params.get('neighbour_n') ?? fileConfig.neighbourRequests ?? 60),
};

const $ = (id) => document.getElementById(id);
const transcript = $('transcript');
const statusBox = $('status');
const statusText = statusBox.querySelector('.status-text');
const statusDetail = statusBox.querySelector('.status-detail');
const form = $('composer');
const input = $('input');
const sendButton = $('send');
const stopButton = $('stop');

/** The conversation so far, as the Messages API wants it (only completed turns). */
const history = [];
let controller = null;
let countdown = null;

// ---- configuration panel -------------------------------------------------------------------
$('cfg-proxy').value = config.proxyURL;
$('cfg-key').value = config.apiKey;
$('cfg-model').value = config.model;
$('cfg-proxy').addEventListener('change', (e) => { config.proxyURL = e.target.value.trim(); showTarget(); });
$('cfg-key').addEventListener('change', (e) => { config.apiKey = e.target.value.trim(); });
$('cfg-model').addEventListener('change', (e) => { config.model = e.target.value.trim(); });
if (!config.apiKey) $('settings').open = true;

function showTarget() {
  const upstream = config.simURL ? `the simulated upstream (${config.simURL})` : config.upstream;
  $('target').textContent = `Proxy ${config.proxyURL}${upstream ? ` → ${upstream}` : ''} · model ${config.model}`;
}
showTarget();

// ---- status line ---------------------------------------------------------------------------
const WAIT_WORDING = {
  rate_limit: (w) => (w.scope === 'upstream' ? 'Rate limited upstream' : 'Rate limited'),
  overloaded: () => 'Upstream overloaded',
  timeout: () => 'Upstream timed out',
  unavailable: () => 'Upstream unavailable',
};

/** What is left of the caller's daily quotas, as a person reads it: "3 messages, $0.12 left today". */
function quotaLeft(quotas) {
  const daily = quotas.filter((q) => q.windowS === 86_400);
  const said = daily.map((q) => (
    q.name === 'rpd' ? `${q.remaining} ${q.remaining === 1 ? 'message' : 'messages'}`
    : q.name === 'usd_per_day' ? `$${(q.remaining / 1e6).toFixed(2)}`
    : `${q.remaining} ${q.name === 'input_tpd' ? 'input' : 'output'} tokens`));
  return said.length ? `${said.join(', ')} left today` : '';
}

function setStatus(state, text, detail = '') {
  statusBox.dataset.state = state;
  statusText.textContent = text;
  statusDetail.textContent = detail;
}

function stopCountdown() {
  if (countdown) clearInterval(countdown);
  countdown = null;
}

/** Shows "Rate limited — retrying in 7 s…" and counts it down to the retry. */
function startCountdown(wait) {
  stopCountdown();
  const until = performance.now() + wait.ms;
  const lead = (WAIT_WORDING[wait.reason] ?? WAIT_WORDING.unavailable)(wait);
  const detail = [wait.message, wait.requestId && `request ${wait.requestId}`].filter(Boolean).join(' · ');
  statusBox.dataset.reason = wait.reason;
  statusBox.dataset.waitMs = String(Math.round(wait.ms));
  const tick = (left = until - performance.now()) => {
    if (left <= 0) {
      stopCountdown();
      setStatus('retrying', `${lead} — retrying now…`, detail);
      return;
    }
    setStatus('waiting', `${lead} — retrying in ${Math.max(1, Math.ceil(left / 1000))} s…`, detail);
  };
  tick(wait.ms);
  countdown = setInterval(tick, 250);
}

// ---- transcript ----------------------------------------------------------------------------
function addTurn(role, text = '') {
  $('empty')?.remove();
  const turn = document.createElement('article');
  turn.className = `turn ${role}`;
  const who = document.createElement('span');
  who.className = 'who';
  who.textContent = role === 'user' ? 'You' : 'Claude';
  const body = document.createElement('div');
  body.className = 'text';
  body.textContent = text;
  turn.append(who, body);
  transcript.append(turn);
  transcript.scrollTop = transcript.scrollHeight;
  return { turn, body };
}

function busy(on) {
  sendButton.disabled = on;
  stopButton.hidden = !on;
  input.disabled = on;
  if (!on) input.focus();
}

async function send(text) {
  const userTurn = { role: 'user', content: text };
  addTurn('user', text);
  const answer = addTurn('assistant');
  answer.turn.classList.add('streaming');
  controller = new AbortController();
  busy(true);
  setStatus('sending', 'Sending…');
  let waitedMs = 0;
  try {
    const result = await streamChat({
      baseURL: config.proxyURL,
      apiKey: config.apiKey,
      body: { model: config.model, max_tokens: config.maxTokens, messages: [...history, userTurn] },
      signal: controller.signal,
      onText(delta) {
        if (statusBox.dataset.state !== 'streaming') setStatus('streaming', 'Streaming…');
        answer.body.textContent += delta;
        transcript.scrollTop = transcript.scrollHeight;
      },
      onWait(wait) {
        waitedMs += wait.ms;
        startCountdown(wait);
      },
    });
    stopCountdown();
    history.push(userTurn, { role: 'assistant', content: result.text });
    const waits = result.waits.length;
    if (result.model) answer.turn.dataset.model = result.model;
    if (result.fallback) {
      // The model asked for was overloaded: the proxy answered with its fallback.
      answer.turn.classList.add('fallback');
      const note = document.createElement('p');
      note.className = 'fallback-note';
      note.textContent = `answered by ${result.model}: ${config.model} was overloaded`;
      answer.turn.append(note);
    }
    const by = result.fallback ? ` by ${result.model} (fallback for ${config.model})` : '';
    setStatus(
      'done',
      (waits ? `Answered after ${waits} ${waits === 1 ? 'wait' : 'waits'} (${Math.ceil(waitedMs / 1000)} s)` : 'Answered') + by,
      [quotaLeft(result.quotas), result.requestId && `request ${result.requestId}`].filter(Boolean).join(' · '),
    );
  } catch (error) {
    stopCountdown();
    answer.turn.classList.add('failed');
    if (error.name === 'AbortError') {
      setStatus('stopped', 'Stopped');
    } else {
      const what =
        error.type === 'cors_error' ? 'Refused: this page\'s origin is not allowed by the proxy'
        : error.type === 'network_error' ? 'Proxy unreachable'
        : `Error ${error.status || ''} ${error.type ?? ''}`.trim();
      setStatus('error', what, [error.message, quotaLeft(error.quotas ?? []), error.requestId && `request ${error.requestId}`].filter(Boolean).join(' · '));
      answer.body.textContent ||= error.message;
    }
  } finally {
    answer.turn.classList.remove('streaming');
    controller = null;
    busy(false);
  }
}

form.addEventListener('submit', (e) => {
  e.preventDefault();
  const text = input.value.trim();
  if (!text || controller) return;
  input.value = '';
  send(text);
});
input.addEventListener('keydown', (e) => {
  if (e.key === 'Enter' && !e.shiftKey && !e.isComposing) {
    e.preventDefault();
    form.requestSubmit();
  }
});
stopButton.addEventListener('click', () => controller?.abort());

// ---- simulator controls ----------------------------------------------------------------------
const SIM_ACTIONS = {
  overload: {
    mode: { overload_probability: 1, seed: 1 },
    label: `overloaded (every request 529) for ${config.overloadSeconds} s`,
    restoreAfterMs: config.overloadSeconds * 1000,
    restore: { overload_probability: null },
  },
  overloadModel: {
    // Only the page's model is overloaded; with MODEL_FALLBACKS the proxy answers with the next.
    get mode() {
      const outages = [{ start_ms: 0, duration_ms: config.overloadSeconds * 1000 }];
      return { capacity: { rps: 100000, models: [config.model], outages, origin: 'now' } };
    },
    get label() {
      return `${config.model} overloaded for ${config.overloadSeconds} s (other models serve)`;
    },
    restoreAfterMs: config.overloadSeconds * 1000,
    restore: { capacity: null },
  },
  ratelimit: { mode: { rate_limit: { rpm: 3 } }, label: 'rate-limited upstream: 3 requests/min' },
  slow: { mode: { token_delay_ms: 80, tokens: 60 }, label: 'slow: 60 tokens, 80 ms apart' },
  normal: { reset: true, label: 'normal' },
};
let restoreTimer = null;

async function simControl(route, body) {
  const res = await fetch(`${config.simURL}/_sim/${route}`, {
    method: 'POST',
    headers: { 'content-type': 'application/json' },
    body: JSON.stringify(body ?? {}),
  });
  if (!res.ok) throw new Error(`simulator answered ${res.status}`);
  return res.json();
}

if (config.simURL) {
  $('sim-panel').hidden = false;
  document.querySelector('[data-sim="overload"]').textContent = `Overload it for ${config.overloadSeconds} s`;
  const simState = $('sim-state');
  for (const button of document.querySelectorAll('[data-sim]')) {
    button.addEventListener('click', async () => {
      const action = SIM_ACTIONS[button.dataset.sim];
      clearTimeout(restoreTimer);
      try {
        // Back to normal clears the key limit too: the neighbour has nothing left to show.
        if (action.reset) neighbour?.stop();
        if (action.reset) await simControl('reset');
        else await simControl('mode', action.mode);
        simState.textContent = `mode: ${action.label}`;
        simState.dataset.mode = button.dataset.sim;
        if (action.restoreAfterMs) {
          restoreTimer = setTimeout(async () => {
            await simControl('mode', action.restore).catch(() => {});
            simState.textContent = 'mode: normal';
            simState.dataset.mode = 'normal';
          }, action.restoreAfterMs);
        }
      } catch (e) {
        simState.textContent = `simulator: ${e.message}`;
      }
    });
  }
}

// ---- noisy neighbour -------------------------------------------------------------------------
// Another caller floods a small key while you chat, to show the proxy's fair share: its job's
// requests are background (its tier says so, and each request says it again with
// `x-proxy-priority: background`) with a long budget, so they wait for the room your chat
// leaves instead of making it wait out their backlog. The job runs in this page with its own
// dev client key. A browser opens at most six connections to one host, so the job keeps
// NEIGHBOUR_IN_FLIGHT requests open at a time (enough to keep the key's queue full) and leaves
// the other connections to the chat and the fleet panel.
const NEIGHBOUR_KEY_LIMITS = { rpm: 20, initial_fill: 0.25 };
const NEIGHBOUR_IN_FLIGHT = 4;

/** One run of the neighbour's job: `total` requests, counters, and a way to stop it. */
class NeighbourJob {
  constructor(total, onChange) {
    this.total = total;
    this.sent = 0;
    this.served = 0;
    this.refused = 0;
    this.state = 'running';
    this.controller = new AbortController();
    this.onChange = onChange;
  }

  get waiting() {
    return this.sent - this.served - this.refused;
  }

  async run() {
    const lane = async () => {
      while (this.sent < this.total && this.state === 'running') {
        this.sent += 1;
        const n = this.sent;
        this.onChange(this);
        const ok = await this.send(n);
        if (this.state !== 'running') return;
        if (ok) this.served += 1;
        else this.refused += 1;
        this.onChange(this);
      }
    };
    await Promise.all(Array.from({ length: NEIGHBOUR_IN_FLIGHT }, lane));
    if (this.state === 'running') {
      this.state = 'done';
      this.onChange(this);
    }
  }

  /** Sends request `n`; true when it was served. Any other answer, or none, is a refusal. */
  async send(n) {
    try {
      const res = await fetch(`${config.proxyURL}/v1/messages`, {
        method: 'POST',
        headers: {
          'content-type': 'application/json',
          'anthropic-version': '2023-06-01',
          'x-api-key': config.neighbourKey,
          'x-proxy-priority': 'background',
        },
        body: JSON.stringify({
          model: config.model,
          max_tokens: 64,
          messages: [{ role: 'user', content: `Noisy neighbour, batch item ${n}` }],
        }),
        signal: this.controller.signal,
      });
      await res.arrayBuffer();
      return res.ok;
    } catch {
      return false;
    }
  }

  stop() {
    if (this.state !== 'running') return;
    this.state = 'stopped';
    this.controller.abort();
    this.onChange(this);
  }
}

let neighbour = null;

function showNeighbour(job) {
  const button = $('neighbour');
  const line = $('neighbour-state');
  const running = job.state === 'running';
  button.dataset.running = String(running);
  button.textContent = running ? 'Calm the neighbour' : 'Noisy neighbour';
  const counts = `sent ${job.sent}/${job.total} · served ${job.served} · refused ${job.refused}`;
  const tail = running ? ` · waiting ${job.waiting}` : job.state === 'stopped' ? ` · ${job.waiting} cancelled` : '';
  line.textContent = `neighbour ${job.state}: ${counts}${tail}`;
  Object.assign(line.dataset, { state: job.state, sent: job.sent, served: job.served, refused: job.refused });
}

async function startNeighbour() {
  const simState = $('sim-state');
  await simControl('mode', { key_limits: NEIGHBOUR_KEY_LIMITS });
  simState.textContent = `mode: a small key, ${NEIGHBOUR_KEY_LIMITS.rpm} requests/min, shared with a noisy neighbour`;
  simState.dataset.mode = 'neighbour';
  const job = new NeighbourJob(config.neighbourRequests, showNeighbour);
  neighbour = job;
  showNeighbour(job);
  // A job that ran to its end gives the key back as the calm control would.
  job.run().then(() => {
    if (job.state === 'done' && neighbour === job) simControl('mode', { key_limits: null }).then(showCalm, () => {});
  });
}

function showCalm() {
  const simState = $('sim-state');
  simState.textContent = 'mode: normal';
  simState.dataset.mode = 'normal';
}

async function calmNeighbour() {
  neighbour?.stop();
  await simControl('mode', { key_limits: null });
  showCalm();
}

if (config.simURL && config.neighbourKey) {
  $('neighbour-box').hidden = false;
  const button = $('neighbour');
  button.addEventListener('click', async () => {
    button.disabled = true;
    try {
      if (neighbour?.state === 'running') await calmNeighbour();
      else await startNeighbour();
    } catch (e) {
      $('neighbour-state').textContent = `simulator: ${e.message}`;
    } finally {
      button.disabled = false;
    }
  });
}

// ---- fleet panel -----------------------------------------------------------------------------
// Polls the operator's view once a second and draws, per second, what this proxy answered and
// waited (differences of its counters), the upstream's 529s and 429s, and the requests waiting
// now, over the last 30 s; beneath, the busiest pool's phase, learned rate and key limits.
const FLEET_SECONDS = 30;
const REFUSALS = ['caller_limit', 'upstream_rate_limit', 'overloaded', 'timeout', 'unreachable'];
const fleet = { history: [], last: null };
window.__fleet = fleet.history;

function fleetSample(doc) {
  const e = doc.edge;
  const prev = fleet.last;
  fleet.last = { at: performance.now(), e };
  if (!prev || e.since_ms !== prev.e.since_ms) return null;
  const dt = Math.max(0.2, (fleet.last.at - prev.at) / 1000);
  const rate = (now, then) => Math.max(0, now - then) / dt;
  const refusals = Object.fromEntries(REFUSALS.map((k) => [k, rate(e.answers[k], prev.e.answers[k])]));
  const pools = doc.upstream_keys.flatMap((k) => k.state?.pools ?? []);
  const troubled = (p) => (p.phase === 'overloaded' ? 3 : p.phase === 'recovering' ? 2 : 0)
    + (p.learned_rate_rps ? 1 : 0) + p.waiting.overloaded + p.waiting.scheduled;
  const pool = pools.slice().sort((a, b) => troubled(b) - troubled(a))[0] ?? null;
  const queued = pools.reduce((n, p) => n + p.waiting.overloaded + p.waiting.scheduled, 0);
  const tightest = pool?.limits?.slice().sort((a, b) => a.remaining / a.limit - b.remaining / b.limit)[0] ?? null;
  return {
    success: rate(e.answers.success, prev.e.answers.success),
    waits: rate(e.waits, prev.e.waits),
    refused: Object.values(refusals).reduce((a, b) => a + b, 0),
    refusals,
    u529: rate(e.upstream_overloaded, prev.e.upstream_overloaded),
    u429: rate(e.upstream_rate_limited, prev.e.upstream_rate_limited),
    queue: Math.max(e.waiting, queued),
    pool: pool?.pool ?? null,
    phase: pool?.phase ?? 'healthy',
    rate: pool?.learned_rate_rps ?? null,
    limit: tightest,
  };
}

function drawFleet() {
  const h = fleet.history.slice(-FLEET_SECONDS);
  const top = Math.max(4, ...h.flatMap((s) => [s.success, s.waits, s.refused, s.u529 + s.u429, s.queue]));
  const x = (i) => (240 * (i + FLEET_SECONDS - h.length)) / (FLEET_SECONDS - 1);
  const y = (v) => 100 - (96 * v) / top;
  const line = (f) => h.map((s, i) => `${x(i).toFixed(1)},${y(f(s)).toFixed(1)}`).join(' ');
  const chart = $('fleet-chart');
  chart.querySelector('.success').setAttribute('points', line((s) => s.success));
  chart.querySelector('.waits').setAttribute('points', line((s) => s.waits));
  chart.querySelector('.refused').setAttribute('points', line((s) => s.refused));
  chart.querySelector('.shed').setAttribute('points', line((s) => s.u529 + s.u429));
  chart.querySelector('.queue').setAttribute('points', line((s) => s.queue));
  chart.querySelector('.top').textContent = `${Math.round(top)}/s`;
  const now = h.at(-1);
  if (!now) return;
  const panel = $('fleet');
  const show = (k, v) => { panel.querySelector(`[data-k="${k}"]`).textContent = v; };
  const r = (v) => (v >= 10 ? v.toFixed(0) : v.toFixed(1).replace(/\.0$/, ''));
  for (const k of ['success', 'waits', 'refused', 'u529', 'u429']) show(k, r(now[k]));
  show('queue', String(now.queue));
  show('refusals', Object.entries(now.refusals).filter(([, v]) => v > 0).map(([k, v]) => `${k.replace(/_/g, ' ')} ${r(v)}`).join(', '));
  show('pool', now.pool ?? '–');
  show('phase', now.phase);
  show('rate', now.rate === null ? 'not paced' : `${r(now.rate)} req/s`);
  show('limit', now.limit ? `${now.limit.remaining}/${now.limit.limit} ${now.limit.dimension}` : '–');
  panel.dataset.phase = now.phase;
  panel.dataset.queue = String(now.queue);
}

async function pollFleet() {
  const error = $('fleet-error');
  try {
    const res = await fetch(`${config.proxyURL}/proxy/status`, { headers: { authorization: `Bearer ${config.adminKey}` } });
    if (!res.ok) throw new Error(`the proxy answered ${res.status}${res.status === 401 ? ' (wrong admin key)' : ''}`);
    const sample = fleetSample(await res.json());
    error.hidden = true;
    if (sample) {
      fleet.history.push({ t: Date.now(), ...sample });
      if (fleet.history.length > 5 * FLEET_SECONDS) fleet.history.splice(0, fleet.history.length - FLEET_SECONDS);
      drawFleet();
    }
  } catch (e) {
    error.hidden = false;
    error.textContent = `status: ${e.message}`;
  }
}

if (config.adminKey) {
  $('fleet').hidden = false;
  pollFleet();
  setInterval(pollFleet, 1000);
}

document.body.dataset.ready = 'true';
