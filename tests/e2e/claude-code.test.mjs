// Claude Code, the pinned CLI (package.json devDependencies), run headless through the proxy on
// the default configuration (RATE_LIMITS unset: 50 rpm, 40 000 input and 8 000 output tokens a
// minute, 4 at once) against the simulated upstream. It asks for max_tokens far above the
// tier's output_tpm and sends a prompt of some 25 000 tokens; the proxy serves it as Anthropic
// would, and a second run right after is either admitted or told how long to wait, which the
// CLI waits out by itself.
import { test, before, after } from 'node:test';
import assert from 'node:assert/strict';
import { spawn } from 'node:child_process';
import { mkdtempSync, rmSync } from 'node:fs';
import { tmpdir } from 'node:os';
import path from 'node:path';
import { startSim, startWorker, workerVars, CLIENT_KEY, ROOT } from './harness.mjs';

const CLAUDE = path.join(ROOT, 'node_modules/.bin/claude');

let sim;
before(async () => { sim = await startSim(); });
after(async () => { await sim?.stop(); });

/** Runs `claude -p <prompt> --output-format json` with a home of its own; its exit code and output. */
function claude(baseUrl, home, args) {
  const env = {
    PATH: process.env.PATH,
    HOME: home,
    CLAUDE_CONFIG_DIR: path.join(home, '.claude'),
    ANTHROPIC_BASE_URL: baseUrl,
    ANTHROPIC_API_KEY: CLIENT_KEY,
    CLAUDE_CODE_DISABLE_NONESSENTIAL_TRAFFIC: '1',
    DISABLE_TELEMETRY: '1',
    DISABLE_AUTOUPDATER: '1',
  };
  const child = spawn(CLAUDE, ['-p', 'hello', '--output-format', 'json', ...args], { env, cwd: home, stdio: ['ignore', 'pipe', 'pipe'] });
  let stdout = '';
  let stderr = '';
  child.stdout.on('data', (d) => { stdout += d; });
  child.stderr.on('data', (d) => { stderr += d; });
  // A guard against a hang, not a bound: the CLI's own retries may wait out a minute's limit.
  const guard = setTimeout(() => child.kill('SIGKILL'), 180_000);
  return new Promise((resolve) => child.on('exit', (code) => {
    clearTimeout(guard);
    resolve({ code, stdout, stderr });
  }));
}

test('Claude Code runs headless through the proxy on the default configuration, twice in a row', async () => {
  const vars = workerVars(sim);
  delete vars.RATE_LIMITS;
  const w = await startWorker(vars);
  const home = mkdtempSync(path.join(tmpdir(), 'breakwater-claude-'));
  try {
    await sim.reset();
    const maxOutput = [];
    for (const args of [[], ['--model', 'opus']]) {
      const run = await claude(w.url, home, args);
      assert.equal(run.code, 0, `claude ${args.join(' ')} exited ${run.code}: ${run.stderr}${run.stdout}`);
      const result = JSON.parse(run.stdout);
      assert.equal(result.type, 'result');
      assert.equal(result.subtype, 'success');
      assert.equal(result.is_error, false);
      assert.equal(typeof result.result, 'string');
      assert.ok(result.result.length > 0, run.stdout);
      // The max_tokens the CLI asks of each model (the bodies are too long for the simulator's log).
      for (const [model, usage] of Object.entries(result.modelUsage)) maxOutput.push(`${model}: ${usage.maxOutputTokens}`);
      assert.ok(Object.values(result.modelUsage).some((usage) => usage.maxOutputTokens > 8000), run.stdout);
    }
    console.log(`# max_tokens the CLI asked: ${maxOutput.join(', ')}`);
    // What reached the upstream: Messages requests, each answered 200.
    const messages = (await sim.log()).filter((entry) => entry.path === '/v1/messages');
    assert.ok(messages.length >= 2, `${messages.length} Messages requests`);
    console.log(`# input tokens the simulator counted: ${messages.map((entry) => entry.usage?.input_tokens).join(', ')}`);
    assert.ok(messages.every((entry) => entry.status === 200), JSON.stringify(messages.map((e) => e.status)));
    // A refusal, if any, was the caller's own limit with a wait to honour, never a 400.
    const answers = w.logs.filter((line) => line.includes('"route":"messages"')).map((line) => JSON.parse(line.slice(line.indexOf('{'))));
    for (const answer of answers) assert.ok([200, 429].includes(answer.status), JSON.stringify(answer));
    const limited = answers.filter((answer) => answer.status === 429);
    console.log(`# answers: ${answers.map((a) => a.status).join(', ')}`);
    for (const answer of limited) assert.equal(answer.error_type, 'rate_limit_error');
  } finally {
    await w.stop();
    rmSync(home, { recursive: true, force: true });
  }
});
