// Origins: the same page served from two loopback origins; the Worker allows one. From the
// other, Chromium refuses the answer (the preflight got a 403 without a grant) and the page
// says so; the request never reaches the upstream.
import { test, before, after } from 'node:test';
import assert from 'node:assert/strict';
import { startSim, startWorker, workerVars, CLIENT_KEY } from '../e2e/harness.mjs';
import {
  launchBrowser, servePage, pageURL, openPage, sendMessage, waitForState, lastAnswer, screenshot, eventually,
} from './browser.mjs';

let sim;
let allowedSite;
let otherSite;
let worker;
let browser;

before(async () => {
  [sim, allowedSite, otherSite, browser] = await Promise.all([startSim(), servePage(), servePage(), launchBrowser()]);
  worker = await startWorker(workerVars(sim, { ALLOWED_ORIGINS: `https://chat.example, ${allowedSite.url}` }));
});

after(async () => {
  await browser?.close();
  await allowedSite?.close();
  await otherSite?.close();
  await worker?.stop();
  await sim?.stop();
});

const logLines = () => worker.logs.flatMap((line) => {
  try {
    return [JSON.parse(line)];
  } catch {
    return [];
  }
});

test('an allowed origin gets its answer', { timeout: 60_000 }, async () => {
  await sim.reset();
  const { page, record } = await openPage(browser, pageURL(allowedSite, { proxy: worker.url, key: CLIENT_KEY }));
  await sendMessage(page, 'Hello from an allowed origin');
  await waitForState(page, 'done');
  assert.ok((await lastAnswer(page)).length > 0);
  assert.equal(record.responses.at(-1).headers['access-control-allow-origin'], allowedSite.url);
  await page.close();
});

test('an origin not in ALLOWED_ORIGINS is refused: the Worker answers 403, the page shows it', { timeout: 60_000 }, async () => {
  await sim.reset();
  const before = logLines().length;
  const { page, record } = await openPage(browser, pageURL(otherSite, { proxy: worker.url, key: CLIENT_KEY }));
  await sendMessage(page, 'Hello from somewhere else');
  const status = await waitForState(page, 'error');
  assert.equal(status.text, 'Refused: this page\'s origin is not allowed by the proxy');
  assert.ok(status.detail.includes(`its origin (${otherSite.url}) is not allowed`), status.detail);
  await screenshot(page, 'cors-refused-origin');

  // Chromium blocked it as a CORS failure.
  const failed = await eventually(() => record.failures.find((f) => new URL(f.url).pathname === '/v1/messages'), {
    message: 'no failed request recorded',
  });
  assert.equal(failed.error, 'net::ERR_FAILED');
  const blocked = await eventually(() => record.console.find((m) => /blocked by CORS policy/.test(m.text)), {
    message: `no CORS console error: ${JSON.stringify(record.console)}`,
  });
  assert.ok(blocked.text.includes(otherSite.url), blocked.text);
  assert.equal(record.responses.filter((r) => r.method === 'POST').length, 0, 'the POST itself was never answered');

  // The Worker answered the preflight 403 permission_error, and nothing went upstream.
  const refused = await eventually(
    () => logLines().slice(before).find((l) => l.route === 'preflight' && l.status === 403),
    { message: `no 403 in the Worker's log: ${worker.logs.slice(-5).join('\n')}` },
  );
  assert.equal(refused.error_type, 'permission_error');
  assert.equal((await sim.log()).length, 0);
  // What the page could not read, a server can: the refusal in the usual envelope.
  const direct = await fetch(`${worker.url}/v1/messages`, {
    method: 'OPTIONS',
    headers: { origin: otherSite.url, 'access-control-request-method': 'POST' },
  });
  assert.equal(direct.status, 403);
  assert.equal(direct.headers.get('access-control-allow-origin'), null);
  assert.equal((await direct.json()).error.type, 'permission_error');
  await page.close();
});
