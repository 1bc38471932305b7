// The Worker's input estimate against an independent count, end to end: each request goes
// through the real Worker (which reserves its estimate in the caller's Durable Object before
// sending) to the simulator (which counts with the Claude tokenizer's BPE and Anthropic's image
// rule). The reservation is read from the caller's full bucket, so it is the estimate itself;
// it must never be below the count the answer reports. The simulator's text count is checked
// against the tokenizer package's own `countTokens` on the same texts.
import { test, before, after } from 'node:test';
import assert from 'node:assert/strict';
import { createRequire } from 'node:module';
import { randomBytes } from 'node:crypto';
import { startSim, startWorker, workerVars, postMessage } from './harness.mjs';

const { countTokens } = createRequire(import.meta.url)('@anthropic-ai/tokenizer');

const INPUT_TPM = 50_000_000;
/** What the simulator adds to a one-message request: the user and assistant turn markers. */
const TURN_MARKERS = countTokens('\n\nHuman:') + countTokens('\n\nAssistant:');

/** A PNG of this size: its header, then filler (the simulator reads only the header). */
function png(width, height, fileBytes) {
  const file = Buffer.alloc(Math.max(24, fileBytes), 0x5a);
  Buffer.from('89504e470d0a1a0a0000000d49484452', 'hex').copy(file, 0);
  file.writeUInt32BE(width, 16);
  file.writeUInt32BE(height, 20);
  return { type: 'image', source: { type: 'base64', media_type: 'image/png', data: file.toString('base64') } };
}

const TEXTS = {
  'English prose': 'Please summarize the following report in three sentences, keeping the names of the people involved. '.repeat(20),
  CJK: '東京は日本の首都であり、世界で最も人口の多い都市圏の一つです。我们明天早上九点在火车站见面。이 문서는 서버의 설정 방법을 설명합니다。'.repeat(10)
    + '鿏鿐鿑𠀀𠀁𠀂𪛖𪛕'.repeat(20),
  emoji: '👨‍👩‍👧‍👦 🏳️‍🌈 🇯🇵🇫🇷 👍🏽 🦀🪐🫠 ✈️ '.repeat(40),
  code: 'fn main() {\n    let xs: Vec<u64> = (0..10).map(|x| x * x).collect();\n    println!("{xs:?}");\n}\n'.repeat(15)
    + 'export const f=(a,b)=>a?.b??[...b].map(({x:y})=>y<<2|1);\n'.repeat(15),
  'long numbers': Array.from({ length: 30 }, (_, i) => `${'31415926535897932384626433832795'.repeat(1 + (i % 4))}.${i * 7919} `).join('')
    + '0xdeadbeefcafebabe 1,234,567,890 -0.000000000001e-308 '.repeat(20),
  JSON: JSON.stringify(Array.from({ length: 40 }, (_, i) => ({ id: i, name: `item_${i}`, tags: ['a', 'b'], price: i * 1.25, ok: i % 2 === 0, nested: { x: null } }))),
  base64: randomBytes(3000).toString('base64'),
  'mixed scripts': 'Привет мир Γειά σου κόσμε مرحبا بالعالم שלום עולם नमस्ते दुनिया สวัสดีชาวโลก Ça va? 你好世界 😀 '.repeat(20),
  'compatibility forms': 'ﷺ ﷻ ㍿ ㈱ ⑳ ⒇ ½ ﬃ （テスト） ｶﾀｶﾅ 𝐀𝐁𝐂 '.repeat(30),
};

let sim;
let worker;
const keys = Array.from({ length: 40 }, (_, i) => `ck_test_estimate_${String(i).padStart(2, '0')}_7c1e9a`);
let nextKey = 0;

before(async () => {
  sim = await startSim();
  worker = await startWorker(workerVars(sim, {
    RATE_LIMITS: JSON.stringify({ default: { input_tpm: INPUT_TPM } }),
    CLIENT_KEYS: JSON.stringify(Object.fromEntries(keys.map((k, i) => [k, { id: `estimate-${i}` }]))),
  }));
});

after(async () => {
  await worker?.stop();
  await sim?.stop();
});

/** Sends `body` as a caller of its own (a full bucket): its estimate, and the count. */
async function estimateAndCount(body) {
  const key = keys[nextKey];
  nextKey += 1;
  const res = await postMessage(worker, body, { 'x-api-key': key });
  assert.equal(res.status, 200, await res.clone().text());
  const remaining = Number(res.headers.get('anthropic-ratelimit-input-tokens-remaining'));
  const { usage } = await res.json();
  return { estimate: INPUT_TPM - remaining, count: usage.input_tokens };
}

function message(content) {
  return { model: 'claude-sonnet-5-5', max_tokens: 16, messages: [{ role: 'user', content }] };
}

test('the simulator counts text as the tokenizer package does', async () => {
  for (const [name, text] of Object.entries(TEXTS)) {
    const res = await fetch(`${sim.url}/v1/messages/count_tokens`, {
      method: 'POST',
      headers: { 'content-type': 'application/json', 'x-api-key': 'k', 'anthropic-version': '2023-06-01' },
      body: JSON.stringify(message(text)),
    });
    const { input_tokens: counted } = await res.json();
    assert.equal(counted, countTokens(text) + TURN_MARKERS, name);
  }
});

test('the estimate is never below the count, on every kind of text', async () => {
  const rows = [];
  for (const [name, text] of Object.entries(TEXTS)) {
    const { estimate, count } = await estimateAndCount(message(text));
    rows.push(`${name}: estimate ${estimate}, count ${count}, ratio ${(estimate / count).toFixed(2)}`);
    assert.ok(estimate >= count, `${name}: estimate ${estimate} below the count ${count}`);
  }
  console.log(rows.join('\n'));
});

test('images of several sizes: never below the count, never charged by their bytes', async () => {
  const rows = [];
  for (const [w, h, bytes] of [[16, 16, 600], [200, 200, 30_000], [1000, 1000, 400_000], [1092, 1092, 900_000], [4000, 3000, 2_000_000], [8000, 40, 50_000]]) {
    const { estimate, count } = await estimateAndCount(message([png(w, h, bytes), { type: 'text', text: 'What is in this picture?' }]));
    rows.push(`${w}x${h}: estimate ${estimate}, count ${count}, ratio ${(estimate / count).toFixed(2)}`);
    assert.ok(estimate >= count, `${w}x${h}: estimate ${estimate} below the count ${count}`);
    assert.ok(estimate < 1_700, `${w}x${h}: ${bytes} bytes estimated at ${estimate}`);
  }
  console.log(rows.join('\n'));
});
