// The fleet panel: the demo page polls /proxy/status with the admin key and draws, per second,
// successes, waits, refusals and the upstream's 529s, with the requests waiting now. Under a
// steady load, a person flips the simulator into overload from the page: the panel shows the
// 529s, the waiting and the overloaded pool, then the recovery.
import { test, before, after } from 'node:test';
import assert from 'node:assert/strict';
import { copyFileSync, mkdirSync } from 'node:fs';
import path from 'node:path';
import { startWorker, workerVars, postMessage, sleep, ROOT, CLIENT_KEY } from '../e2e/harness.mjs';
import { pageURL, openPage, screenshot, eventually, startAll, stopAll } from './browser.mjs';

const ADMIN_KEY = 'adm_fleet_panel_test_8e2b41';

let sim;
let site;
let browser;

before(async () => { ({ sim, site, browser } = await startAll()); });
after(() => stopAll({ sim, site, browser }));

const history = (page) => page.evaluate(() => window.__fleet.map((s) => ({ ...s })));

test('the fleet panel shows an overload and the recovery', { timeout: 90_000 }, async () => {
  const worker = await startWorker(workerVars(sim, {
    ADMIN_KEY,
    ALLOWED_ORIGINS: site.url,
    MAX_ATTEMPTS: '6',
    REQUEST_BUDGET_MS: '8000',
    BACKOFF_BASE_MS: '200',
    BACKOFF_MAX_MS: '1000',
  }));
  let loading = true;
  const load = [];
  try {
    await sim.reset();
    await sim.mode({ token_delay_ms: 20, tokens: 8 });
    const { page, record } = await openPage(
      browser,
      pageURL(site, { proxy: worker.url, key: CLIENT_KEY, sim: sim.url, admin: ADMIN_KEY, overload_s: '4' }),
    );
    assert.equal(await page.isVisible('#fleet'), true, 'the panel shows with an admin key');
    // Six clients, one request after another, all along.
    for (let i = 0; i < 6; i++) {
      load.push((async () => {
        const statuses = [];
        while (loading) {
          const res = await postMessage(worker);
          await res.arrayBuffer();
          statuses.push(res.status);
          if (res.status !== 200) await sleep(200);
        }
        return statuses;
      })());
    }
    // A few seconds of the healthy load on the chart.
    await eventually(async () => (await history(page)).filter((s) => s.success > 0).length >= 3, {
      timeout: 10_000, message: 'no successes drawn',
    });
    await page.click('[data-sim="overload"]');
    await page.waitForSelector('#sim-state[data-mode="overload"]');

    // The overload: 529s per second, requests waiting, the pool marked overloaded.
    const overloaded = await eventually(async () => (await history(page)).find((s) => s.phase === 'overloaded' && s.queue > 0), {
      timeout: 8_000, message: 'the panel never showed the overloaded pool with requests waiting',
    });
    assert.equal(overloaded.pool, 'messages:claude-sonnet-5');
    const during = await history(page);
    assert.ok(during.some((s) => s.u529 > 0), 'upstream 529s drawn');
    assert.ok(during.some((s) => s.waits > 0), 'waits drawn');
    assert.equal(await page.getAttribute('#fleet', 'data-phase'), 'overloaded');

    // The page puts the simulator back after 4 s: successes again, the queue drains.
    await page.waitForSelector('#sim-state[data-mode="normal"]', { timeout: 10_000 });
    const flipped = Date.now();
    const recovered = await eventually(async () => {
      const h = (await history(page)).filter((s) => s.t > flipped + 1000);
      const last = h.at(-1);
      return last && last.phase !== 'overloaded' && last.success > 0 && last.queue === 0 ? h : null;
    }, { timeout: 25_000, interval: 250, message: 'the panel never showed the recovery' });
    assert.ok(recovered.at(-1).success > 0);
    // Let the chart show a few seconds of the recovered load.
    await sleep(3000);
    const file = await screenshot(page, 'fleet-panel');
    // The README's copy is refreshed on request only, so a test run leaves the tree clean.
    if (process.env.UPDATE_SCREENSHOTS) {
      const shots = path.join(ROOT, 'web/screenshots');
      mkdirSync(shots, { recursive: true });
      copyFileSync(file, path.join(shots, 'fleet-panel.png'));
    }

    // What the panel read, it read through CORS, from the page's own origin.
    assert.deepEqual(record.errors, []);
    const text = await page.textContent('#fleet');
    assert.match(text, /successes \d/);
    assert.equal(await page.isVisible('#fleet-error'), false);
    await page.close();
  } finally {
    loading = false;
    const statuses = (await Promise.all(load)).flat();
    await worker.stop();
    await sim.mode({ token_delay_ms: null, tokens: null }).catch(() => {});
    assert.ok(statuses.filter((s) => s === 200).length > 20, `statuses ${statuses}`);
  }
});

test('without the admin key the panel stays hidden; with a wrong one it says so', { timeout: 30_000 }, async () => {
  const worker = await startWorker(workerVars(sim, { ADMIN_KEY, ALLOWED_ORIGINS: site.url }));
  try {
    const hidden = await openPage(browser, pageURL(site, { proxy: worker.url, key: CLIENT_KEY }));
    assert.equal(await hidden.page.isVisible('#fleet'), false);
    await hidden.page.close();
    const wrong = await openPage(browser, pageURL(site, { proxy: worker.url, key: CLIENT_KEY, admin: 'adm_not_the_key_000000' }));
    await wrong.page.waitForSelector('#fleet-error:not([hidden])', { timeout: 5000 });
    assert.match(await wrong.page.textContent('#fleet-error'), /401 \(wrong admin key\)/);
    await wrong.page.close();
  } finally {
    await worker.stop();
  }
});
