// The demo chat page: a transcript, streaming answers, a countdown while a limit is waited
// out, and (when the upstream is the simulator) buttons that make the upstream misbehave.
//
// Configuration: `config.js` (written by scripts/dev.sh), overridden by query parameters:
//   ?proxy=http://127.0.0.1:8787&key=ck_…&sim=http://127.0.0.1:8788&model=claude-sonnet-4-6
// `sim=` (empty) hides the simulator controls.
import { streamChat } from './breakwater-client.js';

const params = new URLSearchParams(location.search);
const fileConfig = await import('./config.js').then((m) => m.default ?? {}, () => ({}));
const config = {
  proxyURL: params.get('proxy') ?? fileConfig.proxyURL ?? 'http://127.0.0.1:8787',
  apiKey: params.get('key') ?? fileConfig.apiKey ?? '',
  simURL: (params.has('sim') ? params.get('sim') : fileConfig.simURL) || null,
  model: params.get('model') ?? fileConfig.model ?? 'claude-sonnet-4-6',
  maxTokens: Number(params.get('max_tokens') ?? fileConfig.maxTokens ?? 1024),
  upstream: fileConfig.upstream ?? null,
  /** How long the "Overload" button keeps the simulator overloaded. */
  overloadSeconds: Number(params.get('overload_s') ?? fileConfig.overloadSeconds ?? 6),
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
      result.requestId ? `request ${result.requestId}` : '',
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
      setStatus('error', what, [error.message, error.requestId && `request ${error.requestId}`].filter(Boolean).join(' · '));
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

document.body.dataset.ready = 'true';
