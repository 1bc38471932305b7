// Model fallback, seen from the demo page: its "Overload only this model" button makes the
// simulator refuse the page's model; the Worker answers with the fallback, and the page says
// which model answered.
import { test, before, after } from 'node:test';
import assert from 'node:assert/strict';
import { startWorker, workerVars, CLIENT_KEY } from '../e2e/harness.mjs';
import {
  pageURL, openPage, sendMessage, waitForState, lastAnswer, screenshot, startAll, stopAll } from './browser.mjs';

const OPUS = 'claude-opus-5-5';
const SONNET = 'claude-sonnet-5-5';

let sim;
let site;
let browser;

before(async () => { ({ sim, site, browser } = await startAll()); });
after(() => stopAll({ sim, site, browser }));

test('an answer from a fallback model is marked as such on the page', { timeout: 60_000 }, async () => {
  const worker = await startWorker(workerVars(sim, {
    ALLOWED_ORIGINS: site.url,
    MODEL_FALLBACKS: JSON.stringify({ [OPUS]: [SONNET] }),
    MAX_ATTEMPTS: '2',
  }));
  try {
    await sim.reset();
    const { page, record } = await openPage(
      browser,
      pageURL(site, { proxy: worker.url, key: CLIENT_KEY, sim: sim.url, model: OPUS, overload_s: '30' }),
    );
    // Healthy: the model asked for answers, and nothing is marked.
    await sendMessage(page, 'Hello while all is well');
    const own = await waitForState(page, ['done', 'error']);
    assert.equal(own.state, 'done', own.text);
    assert.doesNotMatch(own.text, /fallback/);
    assert.equal(await page.$$eval('.turn.assistant.fallback', (els) => els.length), 0);

    await page.click('[data-sim="overloadModel"]');
    await page.waitForFunction(() => document.getElementById('sim-state').dataset.mode === 'overloadModel');
    await sendMessage(page, 'Hello while opus is overloaded');
    const done = await waitForState(page, ['done', 'error']);
    assert.equal(done.state, 'done', `${done.text} ${done.detail}`);
    assert.match(done.text, new RegExp(`by ${SONNET} \\(fallback for ${OPUS}\\)`));
    assert.ok((await lastAnswer(page)).length > 0);
    const note = await page.$eval('.turn.assistant.fallback .fallback-note', (el) => el.textContent);
    assert.equal(note, `answered by ${SONNET}: ${OPUS} was overloaded`);
    assert.equal(await page.$eval('.turn.assistant.fallback', (el) => el.dataset.model), SONNET);
    // The page read the header the Worker exposed to it.
    const answered = record.responses.filter((r) => r.method === 'POST' && r.status === 200);
    assert.equal(answered.at(-1).headers['x-proxy-model'], SONNET);
    await screenshot(page, 'fallback-answer');
    // The simulator saw the overloaded model refused, then the fallback.
    const models = (await sim.log()).filter((r) => r.path === '/v1/messages').map((r) => JSON.parse(r.body).model);
    assert.deepEqual(models.slice(-3), [OPUS, OPUS, SONNET]);
  } finally {
    await worker.stop();
  }
});
