// A real browser on another origin streams an answer through the Worker, token by token;
// a signed browser token works the same way, and an expired one is refused without retries.
import { test, before, after } from 'node:test';
import assert from 'node:assert/strict';
import { startSim, startWorker, workerVars, mintToken, CLIENT_KEY } from '../e2e/harness.mjs';
import {
  launchBrowser, servePage, pageURL, openPage, sendMessage, waitForState, lastAnswer, screenshot, statusLog,
} from './browser.mjs';

const JWT_SECRET = 'browser-test-secret-0123456789abcdef';
let sim;
let worker;
let site;
let browser;

before(async () => {
  [sim, site, browser] = await Promise.all([startSim(), servePage(), launchBrowser()]);
  worker = await startWorker(workerVars(sim, { ALLOWED_ORIGINS: site.url, JWT_SECRET }));
});

after(async () => {
  await browser?.close();
  await site?.close();
  await worker?.stop();
  await sim?.stop();
});

test('a streamed answer appears token by token', { timeout: 60_000 }, async () => {
  await sim.reset();
  await sim.mode({ token_delay_ms: 80, tokens: 15 });
  const { page, record } = await openPage(browser, pageURL(site, { proxy: worker.url, key: CLIENT_KEY, sim: sim.url }));

  // Sample the answer as it renders, inside the page (every 30 ms, no round trips).
  await page.evaluate(() => {
    window.__samples = [];
    window.__sampler = setInterval(() => {
      const els = document.querySelectorAll('.turn.assistant .text');
      const text = els.length ? els[els.length - 1].textContent : '';
      if (window.__samples.at(-1)?.text !== text) window.__samples.push({ at: performance.now(), text });
    }, 30);
  });
  await sendMessage(page, 'Tell me something, slowly.');
  await page.waitForFunction(() => {
    const els = document.querySelectorAll('.turn.assistant .text');
    return els.length && els[els.length - 1].textContent.trim().split(/\s+/).length >= 6;
  }, null, { polling: 20, timeout: 10_000 });
  await screenshot(page, 'stream-mid-answer');
  const final = await waitForState(page, 'done');
  assert.equal(final.text, 'Answered');
  await screenshot(page, 'stream-complete');
  const samples = await page.evaluate(() => {
    clearInterval(window.__sampler);
    return window.__samples;
  });

  const text = await lastAnswer(page);
  assert.equal(text.trim().split(/\s+/).length, 15, `15 tokens, got ${JSON.stringify(text)}`);
  // It grew in many visible steps over the stream's ~1.2 s, each extending the one before:
  // not one block at the end.
  const partial = samples.filter((s) => s.text.length > 0 && s.text !== text);
  assert.ok(partial.length >= 5, `only ${partial.length} partial renderings: ${JSON.stringify(samples)}`);
  for (let i = 1; i < samples.length; i++) {
    assert.ok(samples[i].text.startsWith(samples[i - 1].text), `rendering ${i} does not extend the previous one`);
  }
  const growing = samples.filter((s) => s.text.length > 0);
  assert.ok(growing.at(-1).at - growing[0].at >= 600, `the text grew over ${growing.at(-1).at - growing[0].at} ms only`);
  assert.equal(record.responses.length, 1);
  assert.equal(record.responses[0].status, 200);
  assert.match(record.responses[0].headers['content-type'], /text\/event-stream/);
  assert.equal(record.responses[0].headers['access-control-allow-origin'], site.url);
  assert.ok(!(await statusLog(page)).some((s) => s.state === 'waiting'), 'no wait expected');
  assert.deepEqual(record.errors, []);
  await page.close();
});

test('a second turn sends the conversation so far', { timeout: 60_000 }, async () => {
  await sim.reset();
  const { page } = await openPage(browser, pageURL(site, { proxy: worker.url, key: CLIENT_KEY, sim: sim.url }));
  await sendMessage(page, 'First question');
  await waitForState(page, 'done');
  const first = await lastAnswer(page);
  await sendMessage(page, 'Second question');
  await waitForState(page, 'done');
  const log = await sim.log();
  assert.equal(log.length, 2);
  const body = JSON.parse(log[1].body);
  assert.equal(body.stream, true);
  assert.deepEqual(body.messages.map((m) => m.role), ['user', 'assistant', 'user']);
  assert.equal(body.messages[1].content, first);
  // The browser's credential and origin never reach the upstream.
  assert.equal(log[1].headers.authorization, undefined);
  assert.equal(log[1].headers.origin, undefined);
  assert.notEqual(log[1].headers['x-api-key'], CLIENT_KEY);
  await page.close();
});

test('a signed browser token works like a key; an expired one is refused at once', { timeout: 60_000 }, async () => {
  await sim.reset();
  const now = Math.floor(Date.now() / 1000);
  const token = await mintToken(JWT_SECRET, { sub: 'user-42', tier: 'default', iat: now, exp: now + 300 });
  const ok = await openPage(browser, pageURL(site, { proxy: worker.url, key: token, sim: sim.url }));
  await sendMessage(ok.page, 'Hello with a token');
  await waitForState(ok.page, 'done');
  assert.ok((await lastAnswer(ok.page)).length > 0);
  await ok.page.close();

  const expired = await mintToken(JWT_SECRET, { sub: 'user-42', iat: now - 600, exp: now - 300 });
  const bad = await openPage(browser, pageURL(site, { proxy: worker.url, key: expired, sim: sim.url }));
  await sendMessage(bad.page, 'Hello with an old token');
  const status = await waitForState(bad.page, 'error');
  assert.match(status.text, /401 authentication_error/);
  assert.equal(bad.record.responses.filter((r) => r.method === 'POST').length, 1, 'a 401 is not retried');
  assert.ok(!(await statusLog(bad.page)).some((s) => s.state === 'waiting'));
  await screenshot(bad.page, 'token-expired-refused');
  await bad.page.close();
});
