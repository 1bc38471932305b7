// Limits, seen from the page: a 429 for the caller's own limit and a 503 for an overloaded
// upstream both show a countdown taken from the Worker's retry-after, then recover by
// themselves.
import { test, before, after } from 'node:test';
import assert from 'node:assert/strict';
import { startWorker, workerVars, postMessage, messageBody, CLIENT_KEY } from '../e2e/harness.mjs';
import {
  pageURL, openPage, sendMessage, waitForState, lastAnswer, screenshot, statusLog, eventually, startAll, stopAll } from './browser.mjs';

let sim;
let site;
let browser;

before(async () => { ({ sim, site, browser } = await startAll()); });
after(() => stopAll({ sim, site, browser }));

const posts = (record) => record.responses.filter((r) => r.method === 'POST');
const seconds = (text, lead) => {
  const m = text.match(new RegExp(`^${lead} — retrying in (\\d+) s…$`));
  return m ? Number(m[1]) : null;
};

test('the caller\'s own limit: a countdown from Retry-After, then the answer by itself', { timeout: 60_000 }, async () => {
  // 10 requests a minute: one more every 6 s once the minute's burst is spent.
  const worker = await startWorker(workerVars(sim, {
    ALLOWED_ORIGINS: site.url,
    RATE_LIMITS: JSON.stringify({ default: { rpm: 10 } }),
  }));
  try {
    await sim.reset();
    const { page, record } = await openPage(browser, pageURL(site, { proxy: worker.url, key: CLIENT_KEY, sim: sim.url }));
    // Spend all but one of the burst elsewhere (same key, so the same limit).
    const drained = await Promise.all(Array.from({ length: 9 }, () => postMessage(worker, messageBody())));
    assert.deepEqual(drained.map((r) => r.status), Array(9).fill(200));
    await Promise.all(drained.map((r) => r.arrayBuffer()));

    await sendMessage(page, 'First message');
    await waitForState(page, 'done');
    await sendMessage(page, 'Second message, over the limit');

    // The countdown shows the seconds the Worker's Retry-After said.
    const first = await eventually(async () => (await statusLog(page)).find((s) => s.state === 'waiting'), {
      timeout: 5000, message: 'no countdown shown',
    });
    await screenshot(page, 'rate-limited-countdown');
    const limited = posts(record).find((r) => r.status === 429);
    assert.ok(limited, 'the Worker answered 429');
    const retryAfter = Number(limited.headers['retry-after']);
    const retryAfterMs = Number(limited.headers['retry-after-ms']);
    assert.ok(retryAfter >= 1 && retryAfter <= 6, `Retry-After ${retryAfter}`);
    assert.equal(seconds(first.text, 'Rate limited'), retryAfter, `shown: ${first.text}`);
    // The page read the envelope and the exposed request-id too.
    assert.match(first.detail, /rpm limit of 10 reached for this key/);
    assert.ok(first.detail.includes(limited.headers['request-id']), first.detail);

    const done = await waitForState(page, ['done', 'error'], 15_000);
    assert.equal(done.state, 'done', `${done.text} ${done.detail}`);
    assert.match(done.text, /^Answered after 1 wait/);
    await screenshot(page, 'rate-limited-recovered');
    assert.ok((await lastAnswer(page)).trim().length > 0);

    // It counted down, and retried no earlier than it was told.
    const shown = (await statusLog(page)).map((s) => seconds(s.text, 'Rate limited')).filter((n) => n !== null);
    assert.equal(shown[0], retryAfter);
    assert.equal(shown.at(-1), 1, `countdown ${shown}`);
    assert.ok(shown.every((n, i) => i === 0 || n < shown[i - 1]), `countdown ${shown}`);
    assert.ok(shown.length >= Math.min(retryAfter, 2), `countdown ${shown}`);
    const statuses = posts(record).map((r) => r.status);
    assert.deepEqual(statuses, [200, 429, 200]);
    const retried = posts(record)[2];
    assert.ok(retried.at - limited.at >= retryAfterMs - 20, `retried after ${retried.at - limited.at} ms, told ${retryAfterMs}`);
    assert.deepEqual(record.errors, []);
    await page.close();
  } finally {
    await worker.stop();
  }
});

test('an overloaded upstream: the page flips the simulator, counts down, and recovers', { timeout: 60_000 }, async () => {
  // Two attempts per request and a short budget, so the Worker answers 503 soon.
  const worker = await startWorker(workerVars(sim, {
    ALLOWED_ORIGINS: site.url,
    MAX_ATTEMPTS: '2',
    REQUEST_BUDGET_MS: '2000',
    BACKOFF_BASE_MS: '500',
    BACKOFF_MAX_MS: '2000',
  }));
  try {
    await sim.reset();
    const { page, record } = await openPage(
      browser,
      pageURL(site, { proxy: worker.url, key: CLIENT_KEY, sim: sim.url, overload_s: '3' }),
    );
    await page.click('[data-sim="overload"]');
    await page.waitForSelector('#sim-state[data-mode="overload"]');
    assert.equal((await sim.mode({})).overload_probability, 1, 'the page set the simulator\'s mode');
    await sendMessage(page, 'Are you there?');

    const first = await eventually(async () => (await statusLog(page)).find((s) => s.state === 'waiting'), {
      timeout: 8000, message: 'no countdown shown',
    });
    await screenshot(page, 'overloaded-countdown');
    const overloaded = posts(record).find((r) => r.status === 503);
    assert.ok(overloaded, `the Worker answered 503, saw ${posts(record).map((r) => r.status)}`);
    assert.equal(seconds(first.text, 'Upstream overloaded'), Number(overloaded.headers['retry-after']), `shown: ${first.text}`);
    assert.equal(overloaded.headers['x-proxy-attempts'], '2');
    assert.equal(overloaded.headers['x-should-retry'], 'true');

    // The page puts the simulator back after 3 s; the next retry gets through.
    const done = await waitForState(page, ['done', 'error'], 20_000);
    assert.equal(done.state, 'done', `${done.text} ${done.detail}`);
    assert.match(done.text, /^Answered after \d+ waits?/);
    await page.waitForSelector('#sim-state[data-mode="normal"]');
    await screenshot(page, 'overloaded-recovered');
    assert.ok((await lastAnswer(page)).trim().length > 0);
    const statuses = posts(record).map((r) => r.status);
    assert.equal(statuses.at(-1), 200);
    assert.ok(statuses.slice(0, -1).every((s) => s === 503), `statuses ${statuses}`);
    assert.deepEqual(record.errors, []);
    await page.close();
  } finally {
    await worker.stop();
  }
});
