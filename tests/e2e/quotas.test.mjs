// Daily dollar quotas end to end: the caller's real Durable Object in workerd reserves each
// request's worst case, settles it to the usage the answer reported, priced, refuses at the
// cap until the tier's day ends (its `quota_tz` puts that at the next whole minute here, so
// the test sees a real reset without any test-only setting), and says so in its headers.
import { test, before, after } from 'node:test';
import assert from 'node:assert/strict';
import {
  startSim, startWorker, workerVars, postMessage, messageBody, sleep,
} from './harness.mjs';

let sim;
before(async () => { sim = await startSim(); });
after(async () => { await sim?.stop(); });

const ADMIN_KEY = 'adm_quotas_e2e_5c81d2f3a9';
const MINUTE_MS = 60_000;
const DAY_MINUTES = 1440;

/** A fixed offset whose local midnight falls at `atMs` (a whole UTC minute), and `atMs`. */
function zoneWhoseDayEndsAt(atMs) {
  let offset = ((-(atMs / MINUTE_MS)) % DAY_MINUTES + DAY_MINUTES) % DAY_MINUTES;
  if (offset > 14 * 60) offset -= DAY_MINUTES;
  const sign = offset < 0 ? '-' : '+';
  const abs = Math.abs(offset);
  const two = (n) => String(n).padStart(2, '0');
  return `${sign}${two(Math.floor(abs / 60))}:${two(abs % 60)}`;
}

/** The `"name";k=v;…` item of a structured header, as an object of its parameters. */
function item(header, name) {
  const found = (header ?? '').split(', ').find((part) => part.startsWith(`"${name}";`));
  if (!found) return undefined;
  return Object.fromEntries(found.split(';').slice(1).map((p) => p.split('=')).map(([k, v]) => [k, Number(v)]));
}

test('a daily dollar quota: remaining shown, refused at the cap until the day ends, then open again', async () => {
  // The tier's day ends at a whole minute far enough ahead to spend the quota first; the
  // other checks run while it comes.
  let dayEndsAt = (Math.floor(Date.now() / MINUTE_MS) + 1) * MINUTE_MS;
  if (dayEndsAt - Date.now() < 30_000) dayEndsAt += MINUTE_MS;
  const quota_tz = zoneWhoseDayEndsAt(dayEndsAt);
  // claude-sonnet-5-5 is $2 / $10 per MTok: a worst case (the prompt estimate written to
  // the cache for an hour at $4, and 64 tokens out at $10) is well under a tenth of a cent.
  const usdPerDay = 0.003;
  const w = await startWorker(workerVars(sim, {
    RATE_LIMITS: JSON.stringify({ default: { rpm: 1000, usd_per_day: usdPerDay, quota_tz } }),
    ALLOWED_ORIGINS: 'https://chat.example',
    ADMIN_KEY,
  }));
  try {
    await sim.reset();
    // An unpriced model is refused before anything is charged or sent.
    const unpriced = await postMessage(w, messageBody({ model: 'claude-unpriced-9' }));
    assert.equal(unpriced.status, 400);
    const refusedBody = await unpriced.json();
    assert.equal(refusedBody.error.type, 'invalid_request_error');
    assert.match(refusedBody.error.message, /claude-unpriced-9/);
    assert.equal((await sim.log()).length, 0, 'an unpriced request reached the upstream');

    // Each answer shows what is left, in micro-dollars, and when the day ends.
    const first = await postMessage(w, messageBody(), { origin: 'https://chat.example' });
    assert.equal(first.status, 200, await first.clone().text());
    await first.arrayBuffer();
    const policy = item(first.headers.get('ratelimit-policy'), 'usd_per_day');
    assert.deepEqual(policy, { q: usdPerDay * 1e6, w: 86_400 });
    const left = item(first.headers.get('ratelimit'), 'usd_per_day');
    assert.ok(left.r < usdPerDay * 1e6, `the first request's worst case is held: ${left.r}`);
    const toDayEnd = (dayEndsAt - Date.now()) / 1000;
    assert.ok(Math.abs(left.t - toDayEnd) <= 3, `t=${left.t}, the day ends in ${toDayEnd} s`);
    assert.match(first.headers.get('access-control-expose-headers') ?? '', /ratelimit/i);

    // Spend the day: the settled requests give back what their worst case held beyond what
    // they cost, so more fit than worst cases alone would allow; then one is refused.
    let refused;
    let admitted = 1;
    for (let i = 0; i < 40 && !refused; i += 1) {
      await sleep(100); // the previous settlement, under waitUntil
      const res = await postMessage(w);
      if (res.status === 429) refused = res;
      else {
        assert.equal(res.status, 200, await res.clone().text());
        await res.arrayBuffer();
        admitted += 1;
      }
    }
    assert.ok(refused, 'the quota never refused');
    assert.ok(admitted >= 2, `admitted ${admitted}`);
    const body = await refused.json();
    assert.equal(body.error.type, 'rate_limit_error');
    assert.equal(body.limit.scope, 'key');
    assert.equal(body.limit.dimension, 'usd_per_day');
    assert.equal(body.limit.limit, usdPerDay * 1e6);
    assert.equal(refused.headers.get('x-should-retry'), 'false');
    const retryMs = Number(refused.headers.get('retry-after-ms'));
    const expected = dayEndsAt - Date.now();
    assert.ok(Math.abs(retryMs - expected) <= 2_000, `retry-after-ms ${retryMs}, the day ends in ${expected} ms`);
    assert.equal(Number(refused.headers.get('retry-after')), Math.ceil(retryMs / 1000));
    const refusedLeft = item(refused.headers.get('ratelimit'), 'usd_per_day');
    assert.equal(refusedLeft.r, body.limit.remaining);
    assert.equal(refusedLeft.t, Math.ceil(retryMs / 1000));
    const sent = (await sim.log()).length;
    assert.equal(sent, admitted, 'a refused request reached the upstream');
    // The operator's view: the day's spend, what is left, and when it resets.
    const status = await fetch(`${w.url}/proxy/status?caller=alice`, { headers: { authorization: `Bearer ${ADMIN_KEY}` } });
    const [day] = (await status.json()).caller.quotas;
    assert.equal(day.dimension, 'usd_per_day');
    assert.equal(day.used + day.remaining, day.limit);
    assert.equal(day.remaining, body.limit.remaining);
    assert.equal(Date.parse(day.resets), dayEndsAt);

    // The day ends: the quota is whole again.
    await sleep(Math.max(0, dayEndsAt - Date.now()) + 500);
    const fresh = await postMessage(w);
    assert.equal(fresh.status, 200, await fresh.clone().text());
    await fresh.arrayBuffer();
    const afterReset = item(fresh.headers.get('ratelimit'), 'usd_per_day');
    assert.ok(afterReset.r > refusedLeft.r, `${afterReset.r} after the reset, ${refusedLeft.r} before`);
    assert.ok(afterReset.t > 86_000, `a new day: t=${afterReset.t}`);
  } finally {
    await w.stop();
  }
});

test('a request bigger than the whole quota is told it can never fit', async () => {
  const w = await startWorker(workerVars(sim, {
    RATE_LIMITS: JSON.stringify({ default: { usd_per_day: 0.001 } }),
  }));
  try {
    await sim.reset();
    // 1 000 tokens out at $10 / MTok is a cent: ten times the day.
    const res = await postMessage(w, messageBody({ max_tokens: 1000 }));
    assert.equal(res.status, 429);
    const body = await res.json();
    assert.equal(body.limit.dimension, 'usd_per_day');
    assert.match(body.error.message, /cannot be admitted/);
    assert.equal(res.headers.get('x-should-retry'), 'false');
    assert.equal((await sim.log()).length, 0);
  } finally {
    await w.stop();
  }
});

