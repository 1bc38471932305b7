// breakwater-client.js: a small browser client for a breakwater proxy.
//
// Why it exists: a page that streams Claude answers has to cope with limits. The proxy
// already retries what it can inside its own time budget; when a limit outlasts that budget
// it answers with a structured retry-after (429 for a rate limit, 503 for an overloaded
// upstream, 502/504 for an unreachable or slow one) that page code can read through CORS.
// This module turns those answers into something a page can show ("retrying in 7 s…") and
// waits them out by itself, so the page's own code stays a loop of `onText` calls.
//
// Plain ES module, no dependencies: `fetch`, `ReadableStream`, `TextDecoder`, `AbortSignal`.

/** Statuses retried by default (after the wait the answer asks for). */
export const RETRYABLE_STATUSES = new Set([429, 502, 503, 504, 529]);

const DEFAULT_MAX_WAITS = 5;
const DEFAULT_MAX_WAIT_MS = 120_000;

/** An error answer from the proxy (or the upstream), or a failure to reach it. */
export class BreakwaterError extends Error {
  /**
   * @param {object} init
   * @param {number} init.status HTTP status (0 when no answer arrived, the stream's 200 for an
   *   error event inside a stream)
   * @param {string} init.type `error.type` of the envelope (`rate_limit_error`,
   *   `overloaded_error`, `authentication_error`, …); when no answer could be read,
   *   `cors_error` (the proxy answered, but not to this page's origin) or `network_error`
   * @param {string} init.message the envelope's message
   * @param {string|null} [init.requestId] the answer's `request-id`
   * @param {number|null} [init.retryAfterMs] the wait the answer asked for, if any
   * @param {boolean|null} [init.shouldRetry] the answer's `x-should-retry`, if any
   * @param {object|null} [init.body] the parsed envelope
   * @param {Array<object>} [init.quotas] the caller's quotas as the answer stated them
   */
  constructor({ status, type, message, requestId = null, retryAfterMs = null, shouldRetry = null, body = null, quotas = [], cause }) {
    super(message, cause === undefined ? undefined : { cause });
    this.name = 'BreakwaterError';
    this.status = status;
    this.type = type;
    this.requestId = requestId;
    this.retryAfterMs = retryAfterMs;
    this.shouldRetry = shouldRetry;
    this.body = body;
    /** The caller's daily and monthly quotas as the answer stated them (see `quotas`). */
    this.quotas = quotas;
    /** `key` (the caller's own limit) or `upstream`, for rate limits that say so. */
    this.scope = body?.limit?.scope ?? null;
  }
}

/**
 * An incremental parser of `text/event-stream`: feed it decoded text in chunks of any size
 * and it calls `onEvent({ event, data, id })` once per complete event. Events may span
 * chunks; lines may end in `\n`, `\r\n` or `\r` (also split across chunks).
 */
export function createSSEParser(onEvent) {
  let buffer = '';
  let event = '';
  let data = [];
  let id = null;
  let pendingCR = false;

  const dispatch = () => {
    if (data.length > 0) onEvent({ event: event || 'message', data: data.join('\n'), id });
    event = '';
    data = [];
  };
  const line = (text) => {
    if (text === '') return dispatch();
    if (text.startsWith(':')) return; // a comment
    const colon = text.indexOf(':');
    const field = colon < 0 ? text : text.slice(0, colon);
    let value = colon < 0 ? '' : text.slice(colon + 1);
    if (value.startsWith(' ')) value = value.slice(1);
    if (field === 'event') event = value;
    else if (field === 'data') data.push(value);
    else if (field === 'id') id = value;
    // `retry` and unknown fields are ignored.
  };

  return {
    push(text) {
      if (pendingCR && text.startsWith('\n')) text = text.slice(1);
      pendingCR = false;
      buffer += text;
      let start = 0;
      for (let i = 0; i < buffer.length; i++) {
        const c = buffer[i];
        if (c !== '\n' && c !== '\r') continue;
        line(buffer.slice(start, i));
        if (c === '\r') {
          if (i + 1 === buffer.length) pendingCR = true;
          else if (buffer[i + 1] === '\n') i++;
        }
        start = i + 1;
      }
      buffer = buffer.slice(start);
    },
    /** The stream ended: an unterminated last event is dropped, as the spec says. */
    end() {
      buffer = '';
      event = '';
      data = [];
    },
  };
}

/**
 * The caller's daily and monthly quotas as an answer's `RateLimit-Policy` and `RateLimit`
 * headers carry them (read through CORS): one entry per quota, e.g. `{ name: 'rpd', limit: 50,
 * remaining: 3, windowS: 86400, resetS: 3600 }`; dollar quotas (`usd_per_day`,
 * `usd_per_month`) count micro-dollars. Empty when the caller has no quota.
 */
export function quotas(headers) {
  const items = (value) => new Map((value ?? '').split(',').map((item) => {
    const [name, ...params] = item.trim().split(';');
    return [name.replace(/"/g, ''), Object.fromEntries(params.map((p) => p.split('=')).map(([k, v]) => [k, Number(v)]))];
  }));
  const policy = items(headers.get('ratelimit-policy'));
  const now = items(headers.get('ratelimit'));
  return [...policy].filter(([name, p]) => QUOTA_NAMES.has(name) && now.has(name)).map(([name, p]) => ({
    name, limit: p.q, remaining: now.get(name).r, windowS: p.w, resetS: now.get(name).t,
  }));
}

const QUOTA_NAMES = new Set(['rpd', 'input_tpd', 'output_tpd', 'usd_per_day', 'usd_per_month']);

/**
 * The wait an error answer asks for, in ms: `retry-after-ms`, else `Retry-After` (seconds or
 * an HTTP date), else the envelope's `retry_after_ms`; null when it names none.
 */
export function retryAfterMs(headers, body) {
  const ms = parseFloat(headers.get('retry-after-ms') ?? '');
  if (Number.isFinite(ms) && ms >= 0) return ms;
  const ra = headers.get('retry-after');
  if (ra != null && ra.trim() !== '') {
    const seconds = Number(ra.trim());
    if (Number.isFinite(seconds) && seconds >= 0) return seconds * 1000;
    const date = Date.parse(ra);
    if (Number.isFinite(date)) return Math.max(0, date - Date.now());
  }
  const fromBody = body?.retry_after_ms;
  if (typeof fromBody === 'number' && Number.isFinite(fromBody) && fromBody >= 0) return fromBody;
  return null;
}

/** What kind of wait an error answer is, for the page's wording. */
export function waitReason(status, type) {
  if (status === 429 || type === 'rate_limit_error') return 'rate_limit';
  if (status === 529 || type === 'overloaded_error') return 'overloaded';
  if (status === 504 || type === 'timeout_error') return 'timeout';
  return 'unavailable';
}

/**
 * Streams one Messages API answer through the proxy, waiting out limits by itself.
 *
 * @param {object} options
 * @param {string} options.baseURL the proxy, e.g. `https://breakwater.example.workers.dev`
 * @param {string | (() => string | Promise<string>)} options.apiKey a client key or a signed
 *   browser token, sent as `Authorization: Bearer`; a function is called before every attempt
 *   (so a short-lived token can be refreshed while waiting)
 * @param {object} options.body the Messages API request (`stream: true` is set for you)
 * @param {AbortSignal} [options.signal] cancels the request and any wait
 * @param {(text: string) => void} [options.onText] every `text_delta`, in order
 * @param {(event: {event: string, data: any}) => void} [options.onEvent] every SSE event, data parsed
 * @param {(wait: {ms: number, status: number, reason: string, attempt: number, type: string,
 *   message: string, requestId: string|null, scope: string|null, retryAt: number}) => void}
 *   [options.onWait] called before each wait; `ms` is the wait the answer asked for, `retryAt`
 *   (epoch ms) when the retry will start
 * @param {number} [options.maxWaits=5] waits before giving up with the last error
 * @param {number} [options.maxWaitMs=120000] a longer requested wait is not waited for: the
 *   error is thrown at once (a page may ask its user instead)
 * @param {number} [options.budgetMs] sent as `x-proxy-budget-ms`: shortens the proxy's own
 *   retry budget for this request
 * @param {Record<string,string>} [options.headers] extra request headers (`anthropic-beta`, …)
 * @param {boolean} [options.fallback=true] `false` sends `x-proxy-fallback: off`: the answer
 *   comes from the model asked for or not at all
 * @param {typeof fetch} [options.fetch] a `fetch` to use instead of the global one
 * @returns {Promise<{message: object, text: string, requestId: string|null, attempts: number,
 *   waits: Array<object>, model: string|null, fallback: boolean, quotas: Array<object>}>}
 *   the assembled message
 *   (content, stop_reason, usage); `model` is the model that answered (the proxy's
 *   `x-proxy-model`), and `fallback` is true when that is not the model asked for (the proxy
 *   answered with a model of its `MODEL_FALLBACKS` list because the one asked for was
 *   overloaded); `quotas` the caller's daily and monthly quotas left (see `quotas`)
 * @throws {BreakwaterError} for an answer that is not retried (or retries given up), a stream
 *   error event, a refused origin (`type: "cors_error"`) or an unreachable proxy
 *   (`type: "network_error"`); the signal's reason (an `AbortError`) when `signal` aborts
 */
export async function streamChat(options) {
  const {
    baseURL,
    apiKey,
    body,
    signal,
    onText = () => {},
    onEvent = () => {},
    onWait = () => {},
    maxWaits = DEFAULT_MAX_WAITS,
    maxWaitMs = DEFAULT_MAX_WAIT_MS,
    budgetMs,
    fallback = true,
    headers: extraHeaders = {},
    fetch: fetchImpl = globalThis.fetch.bind(globalThis),
  } = options;
  if (!baseURL) throw new TypeError('streamChat: baseURL is required');
  if (!body || typeof body !== 'object') throw new TypeError('streamChat: body must be an object');

  const url = `${String(baseURL).replace(/\/+$/, '')}/v1/messages`;
  const payload = JSON.stringify({ ...body, stream: true });
  const waits = [];

  for (let attempt = 1; ; attempt++) {
    signal?.throwIfAborted();
    const key = typeof apiKey === 'function' ? await apiKey() : apiKey;
    const headers = {
      'content-type': 'application/json',
      accept: 'text/event-stream',
      'anthropic-version': '2023-06-01',
      ...extraHeaders,
    };
    if (key) headers.authorization = `Bearer ${key}`;
    if (budgetMs != null) headers['x-proxy-budget-ms'] = String(budgetMs);
    if (fallback === false) headers['x-proxy-fallback'] = 'off';

    let res;
    try {
      res = await fetchImpl(url, { method: 'POST', headers, body: payload, signal });
    } catch (e) {
      if (signal?.aborted || e?.name === 'AbortError') throw e;
      throw await fetchFailure(baseURL, e, fetchImpl, signal);
    }

    const requestId = res.headers.get('request-id');
    if (res.ok) {
      const model = res.headers.get('x-proxy-model');
      const answered = { model, fallback: model !== null && model !== body.model, quotas: quotas(res.headers) };
      const result = await readStream(res, { requestId, attempts: attempt, waits, onText, onEvent, signal });
      return { ...result, ...answered, model: model ?? result.message.model ?? null };
    }

    const error = await errorFromResponse(res);
    const retry =
      error.shouldRetry === true || (error.shouldRetry === null && RETRYABLE_STATUSES.has(res.status));
    if (!retry || waits.length >= maxWaits) throw error;

    // No figure in the answer: 0.5 s plus full jitter over 1 s, 2 s, 4 s … (at most 30 s).
    const advised = error.retryAfterMs ?? Math.random() * Math.min(30_000, 1000 * 2 ** waits.length) + 500;
    if (advised > maxWaitMs) throw error;
    // A little slack after the advised instant, so the retry does not arrive a hair early.
    const actual = advised + 50 + Math.random() * 150;
    const wait = {
      ms: advised,
      status: res.status,
      reason: waitReason(res.status, error.type),
      attempt,
      type: error.type,
      message: error.message,
      requestId,
      scope: error.scope,
      retryAt: Date.now() + actual,
    };
    waits.push(wait);
    onWait(wait);
    await sleep(actual, signal);
  }
}

/**
 * A client bound to one proxy and credential: `client.streamChat({ body, onText, … })`.
 * Per-call options override the bound ones.
 */
export function createChatClient(defaults) {
  return {
    streamChat: (options) => streamChat({ ...defaults, ...options }),
  };
}

/**
 * A `fetch` that failed outright. Browsers do not tell page code why; a `no-cors` probe of
 * the proxy (which needs no CORS grant) tells a refused origin from an unreachable proxy.
 */
async function fetchFailure(baseURL, cause, fetchImpl, signal) {
  let reachable = false;
  if (typeof document !== 'undefined') {
    try {
      await fetchImpl(`${String(baseURL).replace(/\/+$/, '')}/healthz`, { mode: 'no-cors', cache: 'no-store', signal });
      reachable = true;
    } catch {
      // unreachable indeed
    }
  }
  return new BreakwaterError({
    status: 0,
    type: reachable ? 'cors_error' : 'network_error',
    message: reachable
      ? `${baseURL} answered, but not to this page: its origin (${globalThis.location?.origin}) is not allowed by the proxy (ALLOWED_ORIGINS)`
      : `could not reach ${baseURL} (${cause?.message ?? cause})`,
    cause,
  });
}

async function errorFromResponse(res) {
  const text = await res.text().catch(() => '');
  let body = null;
  try {
    body = JSON.parse(text);
  } catch {
    // not JSON: keep the text as the message
  }
  const shouldRetryHeader = res.headers.get('x-should-retry');
  return new BreakwaterError({
    status: res.status,
    type: body?.error?.type ?? (res.status === 429 ? 'rate_limit_error' : 'api_error'),
    message: body?.error?.message ?? (text.slice(0, 300) || `HTTP ${res.status}`),
    requestId: res.headers.get('request-id') ?? body?.request_id ?? null,
    retryAfterMs: retryAfterMs(res.headers, body),
    shouldRetry: shouldRetryHeader === 'true' ? true : shouldRetryHeader === 'false' ? false : null,
    body,
    quotas: quotas(res.headers),
  });
}

async function readStream(res, { requestId, attempts, waits, onText, onEvent, signal }) {
  const message = { content: [], stop_reason: null, usage: {} };
  let text = '';
  let streamError = null;
  let stopped = false;

  const handle = ({ event, data }) => {
    let parsed = data;
    try {
      parsed = JSON.parse(data);
    } catch {
      // leave non-JSON data as text
    }
    onEvent({ event, data: parsed });
    switch (event) {
      case 'message_start':
        Object.assign(message, parsed.message, { content: [] });
        break;
      case 'content_block_start':
        message.content[parsed.index] = { ...parsed.content_block };
        break;
      case 'content_block_delta': {
        const block = (message.content[parsed.index] ??= { type: 'text', text: '' });
        if (parsed.delta?.type === 'text_delta') {
          block.text = (block.text ?? '') + parsed.delta.text;
          text += parsed.delta.text;
          onText(parsed.delta.text);
        }
        break;
      }
      case 'message_delta':
        Object.assign(message, parsed.delta);
        message.usage = { ...message.usage, ...parsed.usage };
        break;
      case 'message_stop':
        stopped = true;
        break;
      case 'error':
        streamError = new BreakwaterError({
          status: res.status,
          type: parsed?.error?.type ?? 'api_error',
          message: parsed?.error?.message ?? String(data),
          requestId,
          body: typeof parsed === 'object' ? parsed : null,
        });
        break;
      default:
        break;
    }
  };

  const parser = createSSEParser(handle);
  const reader = res.body.getReader();
  const decoder = new TextDecoder();
  try {
    for (;;) {
      const { done, value } = await reader.read();
      if (done) break;
      parser.push(decoder.decode(value, { stream: true }));
      if (streamError) {
        await reader.cancel().catch(() => {});
        break;
      }
    }
    parser.push(decoder.decode());
    parser.end();
  } catch (e) {
    if (signal?.aborted || e?.name === 'AbortError') throw e;
    throw new BreakwaterError({
      status: res.status,
      type: 'network_error',
      message: `the stream broke off: ${e?.message ?? e}`,
      requestId,
      cause: e,
    });
  } finally {
    reader.releaseLock?.();
  }
  if (streamError) throw streamError;
  if (!stopped) {
    throw new BreakwaterError({
      status: res.status,
      type: 'api_error',
      message: 'the stream ended before message_stop',
      requestId,
    });
  }
  return { message, text, requestId, attempts, waits };
}

function sleep(ms, signal) {
  return new Promise((resolve, reject) => {
    if (signal?.aborted) return reject(signal.reason);
    const timer = setTimeout(() => {
      signal?.removeEventListener('abort', onAbort);
      resolve();
    }, ms);
    const onAbort = () => {
      clearTimeout(timer);
      reject(signal.reason);
    };
    signal?.addEventListener('abort', onAbort, { once: true });
  });
}
