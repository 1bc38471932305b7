// Browser test helpers: headless Chromium (the system's, driven by playwright-core), the demo
// page served from its own loopback origin, screenshots under artifacts/browser/.
import { existsSync, mkdirSync, mkdtempSync, rmSync } from 'node:fs';
import { tmpdir } from 'node:os';
import path from 'node:path';
import { execFileSync } from 'node:child_process';
import { chromium } from 'playwright-core';
import { ROOT, startSim } from '../e2e/harness.mjs';
import { startStaticServer } from '../../web/serve.mjs';

export const ARTIFACTS = path.join(ROOT, 'artifacts/browser');

/** The Chromium to drive: $CHROMIUM_PATH, else /usr/bin/chromium, else `chromium` on PATH. */
export function chromiumPath() {
  if (process.env.CHROMIUM_PATH) return process.env.CHROMIUM_PATH;
  if (existsSync('/usr/bin/chromium')) return '/usr/bin/chromium';
  try {
    return execFileSync('sh', ['-c', 'command -v chromium || command -v chromium-browser'], { encoding: 'utf8' }).trim();
  } catch {
    throw new Error('Chromium not found: run ./scripts/setup.sh (installs Debian\'s chromium) or set CHROMIUM_PATH');
  }
}

/**
 * Launches headless Chromium with a fresh profile. The flags keep it from reaching out to
 * anything but the pages it is given (no background networking, updates, sync or QUIC).
 */
export async function launchBrowser() {
  const profile = mkdtempSync(path.join(tmpdir(), 'breakwater-chromium-'));
  const context = await chromium.launchPersistentContext(profile, {
    executablePath: chromiumPath(),
    headless: true,
    viewport: { width: 1100, height: 760 },
    args: [
      '--headless',
      '--no-sandbox',
      '--disable-gpu',
      '--disable-quic',
      '--no-first-run',
      '--disable-background-networking',
      '--disable-component-update',
      '--disable-sync',
    ],
  });
  return {
    context,
    async close() {
      await context.close().catch(() => {});
      rmSync(profile, { recursive: true, force: true });
    },
  };
}

/** Serves web/ on a free loopback port: its own origin, distinct from the Worker's. */
export function servePage() {
  return startStaticServer({ host: '127.0.0.1', port: 0, config: {} });
}

/** The demo page's URL with its configuration in the query string. */
export function pageURL(site, { proxy, key, sim = '', model = 'claude-sonnet-5-5', ...rest }) {
  const q = new URLSearchParams({ proxy, key, sim, model, ...rest });
  return `${site.url}/?${q}`;
}

/**
 * Opens the page and records, in the page, every text the status line shows (with its
 * state and a timestamp), every answer of /v1/messages and every failed request.
 */
export async function openPage(browser, url) {
  const page = await browser.context.newPage();
  const record = { responses: [], failures: [], console: [], errors: [] };
  page.on('response', (res) => {
    if (new URL(res.url()).pathname === '/v1/messages') {
      record.responses.push({ method: res.request().method(), status: res.status(), headers: res.headers(), at: Date.now() });
    }
  });
  page.on('requestfailed', (req) => record.failures.push({ url: req.url(), method: req.method(), error: req.failure()?.errorText }));
  page.on('console', (msg) => record.console.push({ type: msg.type(), text: msg.text() }));
  page.on('pageerror', (err) => record.errors.push(String(err)));
  await page.goto(url);
  await page.waitForSelector('body[data-ready="true"]');
  await page.evaluate(() => {
    const box = document.getElementById('status');
    window.__statusLog = [];
    const note = () => {
      const text = box.querySelector('.status-text').textContent;
      const last = window.__statusLog.at(-1);
      if (!last || last.text !== text || last.state !== box.dataset.state) {
        window.__statusLog.push({ at: performance.now(), state: box.dataset.state, text, detail: box.querySelector('.status-detail').textContent });
      }
    };
    new MutationObserver(note).observe(box, { subtree: true, childList: true, characterData: true, attributes: true });
  });
  return { page, record };
}

export const statusLog = (page) => page.evaluate(() => window.__statusLog);

/** Types a message into the composer and sends it. */
export async function sendMessage(page, text) {
  await page.fill('#input', text);
  await page.click('#send');
}

/** Waits until the status line is in one of `states` (e.g. done, error). */
export async function waitForState(page, states, timeout = 20_000) {
  const wanted = [].concat(states);
  await page.waitForFunction((w) => w.includes(document.getElementById('status').dataset.state), wanted, { timeout, polling: 50 });
  return page.$eval('#status', (el) => ({ state: el.dataset.state, text: el.querySelector('.status-text').textContent, detail: el.querySelector('.status-detail').textContent }));
}

/** The text of the last assistant turn. */
export const lastAnswer = (page) => page.$$eval('.turn.assistant .text', (els) => els.at(-1)?.textContent ?? '');

/** Saves a screenshot as artifacts/browser/NAME.png. */
export async function screenshot(page, name) {
  mkdirSync(ARTIFACTS, { recursive: true });
  const file = path.join(ARTIFACTS, `${name}.png`);
  await page.screenshot({ path: file, fullPage: true });
  return file;
}

/** Waits for `predicate()` to be truthy, polling. */
export async function eventually(predicate, { timeout = 3000, interval = 50, message = 'condition not met' } = {}) {
  const end = Date.now() + timeout;
  for (;;) {
    const value = await predicate();
    if (value) return value;
    if (Date.now() > end) throw new Error(message);
    await new Promise((r) => setTimeout(r, interval));
  }
}

/** The simulator, the demo page's site and a browser, started together for a test file. */
export async function startAll() {
  const [sim, site, browser] = await Promise.all([startSim(), servePage(), launchBrowser()]);
  return { sim, site, browser };
}

/** Stops what [`startAll`] started (any part of it may be missing after a failed start). */
export async function stopAll({ sim, site, browser }) {
  await browser?.close();
  await site?.close();
  await sim?.stop();
}
