// The noisy neighbour: the page's button shrinks the simulator's key and floods it from another
// caller (a background tier with a long budget) while the user chats. The chat is answered
// without waiting out the job's backlog, the job's counters move, and the calm control stops
// the job and gives the key back.
import { test, before, after } from 'node:test';
import assert from 'node:assert/strict';
import { startWorker, workerVars, CLIENT_KEY, sleep } from '../e2e/harness.mjs';
import { pageURL, openPage, sendMessage, waitForState, lastAnswer, screenshot, eventually, startAll, stopAll } from './browser.mjs';

const NEIGHBOUR_KEY = 'ck_test_neighbour_8e3b1f6c2a';

let sim;
let site;
let browser;

before(async () => { ({ sim, site, browser } = await startAll()); });
after(() => stopAll({ sim, site, browser }));

/** The neighbour's counters, as the panel shows them. */
const counters = (page) => page.$eval('#neighbour-state', (el) => ({
  state: el.dataset.state,
  sent: Number(el.dataset.sent ?? 0),
  served: Number(el.dataset.served ?? 0),
  refused: Number(el.dataset.refused ?? 0),
  text: el.textContent,
}));

/** The job's item numbers that reached the upstream (its bodies say which). */
const neighbourItemsUpstream = async () => (await sim.log())
  .map((e) => e.path === '/v1/messages' && e.body.match(/Noisy neighbour, batch item (\d+)/))
  .filter(Boolean)
  .map((m) => Number(m[1]));

test('a noisy neighbour floods a small key; the chat is answered first, and calm stops the job', { timeout: 90_000 }, async () => {
  const worker = await startWorker(workerVars(sim, {
    ALLOWED_ORIGINS: site.url,
    CLIENT_KEYS: JSON.stringify({
      [CLIENT_KEY]: { id: 'alice' },
      [NEIGHBOUR_KEY]: { id: 'neighbour', tier: 'neighbour' },
    }),
    RATE_LIMITS: JSON.stringify({ default: {}, neighbour: { priority: 'background', budget_ms: 120000 } }),
  }));
  try {
    await sim.reset();
    const { page, record } = await openPage(
      browser,
      pageURL(site, { proxy: worker.url, key: CLIENT_KEY, sim: sim.url, neighbour_key: NEIGHBOUR_KEY }),
    );
    // Which of the page's requests were the chat's (a bearer credential) and which the job's.
    const chatAnswers = [];
    page.on('response', (res) => {
      const req = res.request();
      if (new URL(res.url()).pathname === '/v1/messages' && req.method() === 'POST' && req.headers().authorization) {
        chatAnswers.push(res.status());
      }
    });

    await page.click('#neighbour');
    await page.waitForSelector('#sim-state[data-mode="neighbour"]');
    const mode = await sim.mode({});
    assert.equal(mode.key_limits?.rpm, 20, JSON.stringify(mode));
    assert.equal(await page.textContent('#neighbour'), 'Calm the neighbour');

    // The key's few requests go at once; then the job has a backlog the key serves slowly.
    await eventually(async () => {
      const c = await counters(page);
      return c.served >= 5 && c.sent - c.served - c.refused >= 3;
    }, { timeout: 20_000, message: 'the job never filled the key' });

    const atSend = await counters(page);
    await sendMessage(page, 'Hello from the chat, next to a noisy neighbour');
    const done = await waitForState(page, ['done', 'error'], 30_000);
    const atDone = await counters(page);
    await screenshot(page, 'noisy-neighbour');
    assert.equal(done.state, 'done', `${done.text} ${done.detail}`);
    assert.ok((await lastAnswer(page)).trim().length > 0);
    assert.deepEqual(chatAnswers, [200], `the chat was answered 200, not refused or retried: ${chatAnswers}`);
    // Answered ahead of the job: requests the job had sent before the chat were still
    // waiting when the chat's answer came (in arrival order it would wait them all out).
    assert.equal(atDone.state, 'running', JSON.stringify(atDone));
    assert.ok(atDone.served + atDone.refused < atSend.sent, `job at send ${JSON.stringify(atSend)}, at done ${JSON.stringify(atDone)}`);

    // The job keeps going at the key's pace.
    await eventually(async () => (await counters(page)).served > atDone.served, {
      timeout: 15_000, message: 'the job\'s counters stopped moving',
    });

    // Calm: the job stops, its open requests are cancelled, and the key limit is cleared.
    await page.click('#neighbour');
    await page.waitForSelector('#neighbour-state[data-state="stopped"]');
    await page.waitForSelector('#sim-state[data-mode="normal"]');
    assert.equal((await sim.mode({})).key_limits, null);
    assert.equal(await page.textContent('#neighbour'), 'Noisy neighbour');
    const stopped = await counters(page);
    const cancelled = stopped.sent - stopped.served - stopped.refused;
    assert.ok(stopped.sent < 60 && cancelled > 0, JSON.stringify(stopped));
    // The page sends nothing more: no item past the last one it sent ever reaches the upstream.
    // (The items it cancelled may: local workerd lets a request whose client left run on, where
    // the deployed runtime cancels it.)
    await sleep(3000);
    assert.deepEqual(await counters(page), stopped, 'the job\'s counters moved after the stop');
    const items = await neighbourItemsUpstream();
    assert.ok(items.length >= stopped.served && items.every((n) => n <= stopped.sent), `stopped after ${stopped.sent}, upstream saw ${items}`);

    // "Back to normal" stops a running job too.
    await page.click('#neighbour');
    await page.waitForSelector('#neighbour-state[data-state="running"]');
    await page.click('[data-sim="normal"]');
    await page.waitForSelector('#neighbour-state[data-state="stopped"]');
    assert.equal((await sim.mode({})).key_limits, null);
    assert.deepEqual(record.errors, []);
    assert.ok(!record.console.some((m) => m.type === 'error' && /CORS/.test(m.text)), JSON.stringify(record.console));
    await page.close();
  } finally {
    await worker.stop();
  }
});
