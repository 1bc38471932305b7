// web/breakwater-client.js on its own (in Node, against scripted answers): the SSE parser
// across chunk boundaries, retry-after parsing, and what streamChat retries or throws.
import { test } from 'node:test';
import assert from 'node:assert/strict';
import {
  createSSEParser, retryAfterMs, streamChat, createChatClient, BreakwaterError, quotas,
} from '../../web/breakwater-client.js';

const STREAM = [
  'event: message_start',
  'data: {"type":"message_start","message":{"id":"msg_1","role":"assistant","model":"m","content":[],"usage":{"input_tokens":3,"output_tokens":1}}}',
  '',
  ': a comment line',
  'event: content_block_start',
  'data: {"type":"content_block_start","index":0,"content_block":{"type":"text","text":""}}',
  '',
  'event: ping',
  'data: {"type":"ping"}',
  '',
  'event: content_block_delta',
  'data: {"type":"content_block_delta","index":0,"delta":{"type":"text_delta","text":"Héllo "}}',
  '',
  'event: content_block_delta',
  'data: {"type":"content_block_delta","index":0,"delta":{"type":"text_delta","text":"wörld"}}',
  '',
  'event: content_block_stop',
  'data: {"type":"content_block_stop","index":0}',
  '',
  'event: message_delta',
  'data: {"type":"message_delta","delta":{"stop_reason":"end_turn"},"usage":{"output_tokens":2}}',
  '',
  'event: message_stop',
  'data: {"type":"message_stop"}',
  '',
  '',
].join('\n');

function parseAll(chunks) {
  const events = [];
  const parser = createSSEParser((e) => events.push(e));
  for (const c of chunks) parser.push(c);
  parser.end();
  return events;
}

test('SSE: the same events whatever the chunking and line endings', () => {
  const whole = parseAll([STREAM]);
  assert.deepEqual(whole.map((e) => e.event), [
    'message_start', 'content_block_start', 'ping', 'content_block_delta', 'content_block_delta',
    'content_block_stop', 'message_delta', 'message_stop',
  ]);
  for (const text of [STREAM, STREAM.replaceAll('\n', '\r\n'), STREAM.replaceAll('\n', '\r')]) {
    for (let cut = 0; cut <= text.length; cut++) {
      assert.deepEqual(parseAll([text.slice(0, cut), text.slice(cut)]), whole, `cut at ${cut}`);
    }
    assert.deepEqual(parseAll([...text]), whole, 'one character at a time');
  }
});

test('SSE: multi-line data, no space after the colon, default event name, unterminated tail', () => {
  const events = parseAll(['data:a\ndata: b\n\nevent:x\ndata: {}\n\ndata: cut off']);
  assert.deepEqual(events.map(({ event, data }) => ({ event, data })), [
    { event: 'message', data: 'a\nb' },
    { event: 'x', data: '{}' },
  ]);
});

test('retry-after: retry-after-ms first, then Retry-After seconds or date, then the body', () => {
  const h = (o) => new Headers(o);
  assert.equal(retryAfterMs(h({ 'retry-after-ms': '1234.5', 'retry-after': '9' })), 1234.5);
  assert.equal(retryAfterMs(h({ 'retry-after': '3' })), 3000);
  assert.equal(retryAfterMs(h({ 'retry-after': '0.5' })), 500);
  const date = retryAfterMs(h({ 'retry-after': new Date(Date.now() + 10_000).toUTCString() }));
  assert.ok(date > 8000 && date <= 10_000, String(date));
  assert.equal(retryAfterMs(h({}), { retry_after_ms: 700 }), 700);
  assert.equal(retryAfterMs(h({ 'retry-after': 'soon' })), null);
});

/** A fetch that answers from a list, recording what it was asked. */
function scripted(answers) {
  const calls = [];
  const fetch = async (url, init) => {
    calls.push({ url, init });
    const next = answers.shift();
    if (next instanceof Error) throw next;
    return typeof next === 'function' ? next() : next;
  };
  return { fetch, calls };
}

const sse = (text = STREAM) => new Response(text, { status: 200, headers: { 'content-type': 'text/event-stream', 'request-id': 'req_ok' } });
const envelope = (status, type, message, headers = {}, extra = {}) => new Response(
  JSON.stringify({ type: 'error', error: { type, message }, request_id: 'req_e', ...extra }),
  { status, headers: { 'content-type': 'application/json', 'request-id': 'req_e', ...headers } },
);
const body = { model: 'm', max_tokens: 16, messages: [{ role: 'user', content: 'hi' }] };

test('streams text deltas and assembles the message', async () => {
  const { fetch, calls } = scripted([sse()]);
  const texts = [];
  const events = [];
  const result = await streamChat({
    baseURL: 'https://proxy.example/', apiKey: 'ck_key', body, fetch,
    onText: (t) => texts.push(t), onEvent: (e) => events.push(e.event),
  });
  assert.deepEqual(texts, ['Héllo ', 'wörld']);
  assert.equal(result.text, 'Héllo wörld');
  assert.equal(result.message.content[0].text, 'Héllo wörld');
  assert.equal(result.message.stop_reason, 'end_turn');
  assert.deepEqual(result.message.usage, { input_tokens: 3, output_tokens: 2 });
  assert.equal(result.requestId, 'req_ok');
  assert.equal(events.length, 8);
  assert.equal(calls[0].url, 'https://proxy.example/v1/messages');
  assert.equal(calls[0].init.headers.authorization, 'Bearer ck_key');
  assert.equal(JSON.parse(calls[0].init.body).stream, true);
});

test('a stream arriving one byte at a time (UTF-8 split mid-character) reads the same', async () => {
  const bytes = new TextEncoder().encode(STREAM);
  let i = 0;
  const stream = new ReadableStream({
    pull(controller) {
      if (i < bytes.length) controller.enqueue(bytes.slice(i, ++i));
      else controller.close();
    },
  });
  const texts = [];
  const result = await streamChat({
    baseURL: 'http://p', apiKey: 'k', body, onText: (t) => texts.push(t),
    fetch: scripted([new Response(stream, { status: 200, headers: { 'content-type': 'text/event-stream' } })]).fetch,
  });
  assert.deepEqual(texts, ['Héllo ', 'wörld']);
  assert.equal(result.message.stop_reason, 'end_turn');
});

test('429 and 503 are waited out for the time they ask, then retried', async () => {
  const { fetch, calls } = scripted([
    envelope(429, 'rate_limit_error', 'rpm limit', { 'retry-after': '1', 'retry-after-ms': '30', 'x-should-retry': 'true' }, { limit: { scope: 'key' } }),
    envelope(503, 'overloaded_error', 'overloaded', { 'retry-after': '1', 'retry-after-ms': '20' }),
    sse(),
  ]);
  const waits = [];
  let token = 0;
  const t0 = Date.now();
  const result = await streamChat({ baseURL: 'http://p', apiKey: () => `tok_${++token}`, body, fetch, onWait: (w) => waits.push(w) });
  assert.ok(Date.now() - t0 >= 50);
  assert.equal(result.text, 'Héllo wörld');
  assert.deepEqual(waits.map(({ ms, status, reason, attempt, scope }) => ({ ms, status, reason, attempt, scope })), [
    { ms: 30, status: 429, reason: 'rate_limit', attempt: 1, scope: 'key' },
    { ms: 20, status: 503, reason: 'overloaded', attempt: 2, scope: null },
  ]);
  assert.equal(waits[0].message, 'rpm limit');
  assert.equal(waits[0].requestId, 'req_e');
  // A credential function is asked again for every attempt.
  assert.deepEqual(calls.map((c) => c.init.headers.authorization), ['Bearer tok_1', 'Bearer tok_2', 'Bearer tok_3']);
  assert.equal(result.waits.length, 2);
  assert.equal(result.attempts, 3);
});

test('x-should-retry: false is thrown at once with the envelope\'s message', async () => {
  const { fetch, calls } = scripted([envelope(429, 'rate_limit_error', 'never fits', { 'retry-after': '1', 'x-should-retry': 'false' })]);
  let waited = false;
  await assert.rejects(
    streamChat({ baseURL: 'http://p', apiKey: 'k', body, fetch, onWait: () => { waited = true; } }),
    (e) => e instanceof BreakwaterError && e.status === 429 && e.type === 'rate_limit_error' && e.message === 'never fits'
      && e.requestId === 'req_e' && e.shouldRetry === false,
  );
  assert.equal(waited, false);
  assert.equal(calls.length, 1);
});

test('daily and monthly quotas are read from the RateLimit headers, on answers and refusals', async () => {
  const headers = new Headers({
    'ratelimit-policy': '"rpm";q=30;w=60, "rpd";q=50;w=86400, "usd_per_month";q=20000000;w=2678400',
    ratelimit: '"rpm";r=29;t=2, "rpd";r=3;t=3600, "usd_per_month";r=19990000;t=86400',
  });
  assert.deepEqual(quotas(headers), [
    { name: 'rpd', limit: 50, remaining: 3, windowS: 86_400, resetS: 3600 },
    { name: 'usd_per_month', limit: 20_000_000, remaining: 19_990_000, windowS: 2_678_400, resetS: 86_400 },
  ]);
  assert.deepEqual(quotas(new Headers({ ratelimit: '"rpm";r=1;t=1' })), []);
  const ok = new Response(STREAM, { status: 200, headers: { 'content-type': 'text/event-stream', ...Object.fromEntries(headers) } });
  const result = await streamChat({ baseURL: 'http://p', apiKey: 'k', body, fetch: scripted([ok]).fetch });
  assert.equal(result.quotas[0].remaining, 3);
  const spent = envelope(429, 'rate_limit_error', 'rpd quota of 50 reached', {
    'retry-after': '3600', 'x-should-retry': 'false',
    'ratelimit-policy': '"rpd";q=50;w=86400', ratelimit: '"rpd";r=0;t=3600',
  });
  await assert.rejects(
    streamChat({ baseURL: 'http://p', apiKey: 'k', body, fetch: scripted([spent]).fetch }),
    (e) => e.shouldRetry === false && e.quotas.length === 1 && e.quotas[0].remaining === 0,
  );
});

test('other errors are thrown typed; retries stop after maxWaits or a wait over maxWaitMs', async () => {
  await assert.rejects(
    streamChat({ baseURL: 'http://p', apiKey: 'k', body, fetch: scripted([envelope(400, 'invalid_request_error', 'bad')]).fetch }),
    { name: 'BreakwaterError', status: 400, type: 'invalid_request_error', message: 'bad' },
  );
  const busy = () => envelope(529, 'overloaded_error', 'busy', { 'retry-after-ms': '1' });
  const many = scripted([busy, busy, busy, busy]);
  await assert.rejects(streamChat({ baseURL: 'http://p', apiKey: 'k', body, fetch: many.fetch, maxWaits: 2 }), { status: 529, type: 'overloaded_error' });
  assert.equal(many.calls.length, 3);
  const long = scripted([envelope(429, 'rate_limit_error', 'daily', { 'retry-after': '3600' })]);
  await assert.rejects(streamChat({ baseURL: 'http://p', apiKey: 'k', body, fetch: long.fetch }), { status: 429, retryAfterMs: 3_600_000 });
  await assert.rejects(
    streamChat({ baseURL: 'http://p', apiKey: 'k', body, fetch: scripted([new TypeError('fetch failed')]).fetch }),
    { name: 'BreakwaterError', status: 0, type: 'network_error' },
  );
});

test('an error event inside the stream is thrown with its type', async () => {
  const text = 'event: message_start\ndata: {"type":"message_start","message":{"content":[]}}\n\n'
    + 'event: error\ndata: {"type":"error","error":{"type":"overloaded_error","message":"Overloaded"}}\n\n';
  await assert.rejects(
    streamChat({ baseURL: 'http://p', apiKey: 'k', body, fetch: scripted([sse(text)]).fetch }),
    { name: 'BreakwaterError', status: 200, type: 'overloaded_error', message: 'Overloaded', requestId: 'req_ok' },
  );
  await assert.rejects(
    streamChat({ baseURL: 'http://p', apiKey: 'k', body, fetch: scripted([sse('event: ping\ndata: {}\n\n')]).fetch }),
    { type: 'api_error', message: 'the stream ended before message_stop' },
  );
});

test('aborting cancels a wait', async () => {
  const controller = new AbortController();
  const { fetch, calls } = scripted([envelope(429, 'rate_limit_error', 'wait', { 'retry-after-ms': '60000' })]);
  const pending = streamChat({
    baseURL: 'http://p', apiKey: 'k', body, fetch, signal: controller.signal, onWait: () => controller.abort(),
  });
  await assert.rejects(pending, { name: 'AbortError' });
  assert.equal(calls.length, 1);
});

test('createChatClient binds the proxy and credential', async () => {
  const { fetch, calls } = scripted([sse()]);
  const client = createChatClient({ baseURL: 'http://p', apiKey: 'k', fetch });
  const result = await client.streamChat({ body });
  assert.equal(result.text, 'Héllo wörld');
  assert.equal(calls[0].init.headers.authorization, 'Bearer k');
});

test('the answering model comes from x-proxy-model; a fallback is flagged; opting out is a header', async () => {
  const answeredBy = (model) => new Response(STREAM, {
    status: 200, headers: { 'content-type': 'text/event-stream', 'x-proxy-model': model },
  });
  const { fetch, calls } = scripted([answeredBy('claude-sonnet-5-5'), answeredBy('m'), sse()]);
  const asked = { ...body, model: 'claude-opus-5-5' };
  const fellBack = await streamChat({ baseURL: 'http://p', apiKey: 'k', body: asked, fetch });
  assert.equal(fellBack.model, 'claude-sonnet-5-5');
  assert.equal(fellBack.fallback, true);
  assert.equal(calls[0].init.headers['x-proxy-fallback'], undefined);
  const own = await streamChat({ baseURL: 'http://p', apiKey: 'k', body, fetch, fallback: false });
  assert.equal(own.model, 'm');
  assert.equal(own.fallback, false);
  assert.equal(calls[1].init.headers['x-proxy-fallback'], 'off');
  // Without the header (another proxy, an older one): the stream's own model, no fallback claimed.
  const plain = await streamChat({ baseURL: 'http://p', apiKey: 'k', body, fetch });
  assert.equal(plain.model, 'm');
  assert.equal(plain.fallback, false);
});
