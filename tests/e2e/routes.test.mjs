// Every client works through the proxy: the `openai` SDK on the OpenAI-compatible route (JSON,
// streaming, retried through 529s, RateLimitError on the caller's own limit), and the official
// Anthropic SDK's Files API and Message Batches, against the real Worker and the simulator.
import { test, before, after, beforeEach, afterEach } from 'node:test';
import assert from 'node:assert/strict';
import OpenAI, { RateLimitError } from 'openai';
import Anthropic, { toFile } from '@anthropic-ai/sdk';
import { startSim, startWorker, workerVars, sleep, CLIENT_KEY, UPSTREAM_KEY } from './harness.mjs';

let sim;
let worker;

before(async () => {
  sim = await startSim();
});

beforeEach(async () => {
  await sim.reset();
  worker = await startWorker(workerVars(sim));
});

afterEach(async () => {
  await worker?.stop();
});

after(async () => {
  await sim?.stop();
});

const openai = (w = worker) => new OpenAI({ apiKey: CLIENT_KEY, baseURL: `${w.url}/v1`, maxRetries: 0 });
const anthropic = () => new Anthropic({ apiKey: CLIENT_KEY, baseURL: worker.url, maxRetries: 0 });
const chat = (extra = {}) => ({
  model: 'claude-sonnet-5-5',
  max_completion_tokens: 5,
  messages: [
    { role: 'system', content: 'Be brief.' },
    { role: 'user', content: 'Hello there' },
  ],
  ...extra,
});
const calls = async (prefix) => (await sim.log()).filter((r) => r.path.startsWith(prefix));

test('openai SDK: a JSON chat completion goes to the upstream route with the upstream key', async () => {
  const { data, response } = await openai().chat.completions.create(chat()).withResponse();
  assert.equal(data.object, 'chat.completion');
  assert.ok(data.choices[0].message.content.length > 0);
  assert.equal(data.usage.completion_tokens, 5);
  assert.equal(data.choices[0].finish_reason, 'length');
  assert.equal(response.headers.get('x-proxy-attempts'), '1');
  const [call] = await calls('/v1/chat/completions');
  assert.equal(call.method, 'POST');
  assert.equal(call.headers['x-api-key'], UPSTREAM_KEY);
  assert.equal(call.headers.authorization, undefined, 'the client credential never goes upstream');
  assert.equal(JSON.parse(call.body).max_completion_tokens, 5, 'the body goes as sent');
});

test('openai SDK: a stream arrives chunk by chunk, usage in its last chunk', async () => {
  const stream = await openai().chat.completions.create(
    chat({ stream: true, stream_options: { include_usage: true } }),
  );
  let text = '';
  let usage;
  let chunks = 0;
  for await (const chunk of stream) {
    chunks += 1;
    text += chunk.choices[0]?.delta?.content ?? '';
    usage = chunk.usage ?? usage;
  }
  assert.ok(chunks >= 7, `${chunks} chunks`);
  assert.equal(text.trim().split(/\s+/).length, 5);
  assert.equal(usage.completion_tokens, 5);
});

test('openai SDK: 529s are retried by the proxy before the first byte, JSON and stream', async () => {
  await sim.script([{ status: 529 }, { status: 529 }]);
  const { data, response } = await openai().chat.completions.create(chat()).withResponse();
  assert.equal(data.object, 'chat.completion');
  assert.equal(response.headers.get('x-proxy-attempts'), '3');
  assert.equal((await calls('/v1/chat/completions')).length, 3);

  await sim.reset();
  await sim.script([{ status: 529 }]);
  const { data: stream, response: streamed } = await openai()
    .chat.completions.create(chat({ stream: true }))
    .withResponse();
  let text = '';
  for await (const chunk of stream) text += chunk.choices[0]?.delta?.content ?? '';
  assert.equal(streamed.headers.get('x-proxy-attempts'), '2');
  assert.equal(text.trim().split(/\s+/).length, 5);
});

test("openai SDK: the caller's own limit raises RateLimitError with Retry-After", async () => {
  const limited = await startWorker(workerVars(sim, { RATE_LIMITS: JSON.stringify({ default: { rpm: 1 } }) }));
  try {
    await openai(limited).chat.completions.create(chat());
    const refused = await openai(limited).chat.completions.create(chat()).then(
      () => assert.fail('the second request in a minute must be refused'),
      (e) => e,
    );
    assert.ok(refused instanceof RateLimitError, refused?.constructor?.name);
    assert.equal(refused.status, 429);
    assert.equal(refused.code, 'rate_limit_exceeded');
    assert.ok(Number(refused.headers.get('retry-after')) >= 1);
    assert.match(refused.message, /rpm/);
    // The proxy's other errors wear the OpenAI envelope on this route too.
    const bad = await fetch(`${limited.url}/v1/chat/completions`, {
      method: 'POST',
      headers: { authorization: `Bearer ${CLIENT_KEY}`, 'content-type': 'application/json' },
      body: JSON.stringify({ messages: [] }),
    });
    assert.equal(bad.status, 400);
    const body = await bad.json();
    assert.equal(body.error.type, 'invalid_request_error');
    assert.ok('param' in body.error && 'code' in body.error);
  } finally {
    await limited.stop();
  }
  assert.equal((await calls('/v1/chat/completions')).length, 1);
});

test('Anthropic SDK: a file is uploaded, listed, described, downloaded and deleted', async () => {
  const client = anthropic();
  const content = `line one\nline two ${'x'.repeat(200_000)}\n`;
  const uploaded = await client.beta.files.upload({
    file: await toFile(Buffer.from(content), 'notes.txt', { type: 'text/plain' }),
  });
  assert.match(uploaded.id, /^file_/);
  assert.equal(uploaded.size_bytes, Buffer.byteLength(content));
  const [upload] = await calls('/v1/files');
  assert.equal(upload.headers['x-api-key'], UPSTREAM_KEY);
  assert.match(upload.headers['content-type'], /^multipart\/form-data; boundary=/);
  assert.ok(upload.body_len > Buffer.byteLength(content));

  const listed = [];
  for await (const file of client.beta.files.list()) listed.push(file.id);
  assert.deepEqual(listed, [uploaded.id]);
  assert.equal((await client.beta.files.retrieveMetadata(uploaded.id)).filename, 'notes.txt');
  const downloaded = await client.beta.files.download(uploaded.id);
  assert.equal(await downloaded.text(), content);
  assert.equal((await client.beta.files.delete(uploaded.id)).type, 'file_deleted');
  const gone = await client.beta.files.retrieveMetadata(uploaded.id).catch((e) => e);
  assert.equal(gone.status, 404);
});

test('an upload whose body went upstream is sent once; the client is told to retry it', async () => {
  const form = new FormData();
  form.append('file', new Blob(['hello']), 'a.txt');
  const res = await fetch(`${worker.url}/v1/files`, {
    method: 'POST',
    headers: { 'x-api-key': CLIENT_KEY, 'x-sim-fault': JSON.stringify({ status: 529 }) },
    body: form,
  });
  // Overloaded once, with no second attempt possible: the structured 503 the SDKs retry.
  assert.equal(res.status, 503);
  assert.equal((await res.json()).error.type, 'overloaded_error');
  assert.equal(res.headers.get('x-should-retry'), 'true');
  assert.equal(res.headers.get('x-proxy-attempts'), '1');
  assert.equal((await calls('/v1/files')).length, 1);
});

test('Anthropic SDK: a batch is created, ends, and its results come through the proxy', async () => {
  const client = anthropic();
  const created = await client.messages.batches.create({
    requests: ['a', 'b', 'c'].map((id) => ({
      custom_id: id,
      params: { model: 'claude-sonnet-5-5', max_tokens: 4, messages: [{ role: 'user', content: `hi ${id}` }] },
    })),
  });
  assert.equal(created.processing_status, 'in_progress');
  let batch = created;
  for (let i = 0; i < 50 && batch.processing_status !== 'ended'; i += 1) {
    await sleep(100);
    batch = await client.messages.batches.retrieve(created.id);
  }
  assert.equal(batch.processing_status, 'ended');
  assert.equal(batch.results_url, `${worker.url}/v1/messages/batches/${created.id}/results`);
  const listed = [];
  for await (const b of client.messages.batches.list()) listed.push(b);
  assert.equal(listed[0].results_url, batch.results_url);

  const results = [];
  for await (const line of await client.messages.batches.results(created.id)) results.push(line);
  assert.deepEqual(results.map((r) => r.custom_id), ['a', 'b', 'c']);
  assert.equal(results[0].result.type, 'succeeded');
  assert.equal(results[0].result.message.usage.output_tokens, 4);
  // Every call went through the proxy, none around it.
  const paths = (await calls('/v1/messages/batches')).map((r) => `${r.method} ${r.path}`);
  assert.ok(paths.includes(`GET /v1/messages/batches/${created.id}/results`), paths.join('\n'));
  assert.equal((await client.messages.batches.delete(created.id)).type, 'message_batch_deleted');
});

test('Anthropic SDK: a batch is canceled; ?beta=true forms reach the upstream with their query', async () => {
  const client = anthropic();
  const created = await client.messages.batches.create({
    requests: [{ custom_id: 'x', params: { model: 'claude-sonnet-5-5', max_tokens: 4, messages: [{ role: 'user', content: 'hi' }] } }],
  });
  const canceled = await client.messages.batches.cancel(created.id);
  assert.equal(canceled.processing_status, 'canceling');
  const beta = await fetch(`${worker.url}/v1/messages/batches/${created.id}?beta=true`, {
    headers: { 'x-api-key': CLIENT_KEY, 'anthropic-beta': 'message-batches-2024-09-24' },
  });
  assert.equal(beta.status, 200);
  assert.equal((await beta.json()).id, created.id);
  const last = (await calls('/v1/messages/batches')).at(-1);
  assert.equal(last.query, 'beta=true', 'the query is kept');
  assert.equal(last.headers['anthropic-beta'], 'message-batches-2024-09-24');
});

test('nothing reaches another upstream path: traversal, encoded slashes, odd ids', async () => {
  for (const path of [
    '/v1/files/..%2F..%2Fmessages',
    '/v1/files/a%2Fb/content',
    '/v1/files/%2e%2e',
    '/v1/files/a.b',
    '/v1/files/a%20b',
    '/v1/files/f/content/x',
    '/v1/messages/batches/%2e%2e%2fmodels/results',
    '/v1/messages/batches/b/retry',
    '/v1/messages/batches/b%3Fx/results',
    '/v1/chat/completions/x',
    '/v1/embeddings',
  ]) {
    const res = await fetch(`${worker.url}${path}`, { headers: { 'x-api-key': CLIENT_KEY } });
    assert.equal(res.status, 404, path);
    assert.equal((await res.json()).error.type, 'not_found_error', path);
  }
  assert.equal((await sim.log()).length, 0, 'no request reached the upstream');
});

test("a chat completion settles the caller's reservation to the usage it reports", async () => {
  // 100 output tokens a minute: a reservation of 90 left standing would refuse the next 80
  // (the bucket refills far slower than the budget allows); settled to what was produced, it
  // leaves room at once.
  const limited = await startWorker(workerVars(sim, {
    RATE_LIMITS: JSON.stringify({ default: { output_tpm: 100 } }),
  }));
  try {
    const stream = await openai(limited).chat.completions.create(
      chat({ max_completion_tokens: 90, stream: true, stream_options: { include_usage: true } }),
    );
    let usage;
    for await (const chunk of stream) usage = chunk.usage ?? usage;
    assert.equal(usage.completion_tokens, 12);
    await sleep(300);
    const json = await openai(limited).chat.completions.create(chat({ max_completion_tokens: 80 }));
    assert.equal(json.usage.completion_tokens, 12);
    await sleep(300);
    const third = await openai(limited).chat.completions.create(chat({ max_completion_tokens: 70 }));
    assert.equal(third.usage.completion_tokens, 12);
    // Without settlement the bucket holds less than a fourth asks: refused, as the SDK sees it.
    const refused = await openai(limited)
      .chat.completions.create(chat({ max_completion_tokens: 99 }))
      .catch((e) => e);
    assert.ok(refused instanceof RateLimitError, refused?.constructor?.name);
  } finally {
    await limited.stop();
  }
});
