// Checks of scripts/unused-exports.mjs on small modules written here byte by byte: the exports
// of the unused classes go, every other export stays, the module stays valid, and a module
// that makes one of those classes stops the build. `node --test scripts/unused-exports.test.mjs`
import test from 'node:test';
import assert from 'node:assert/strict';
import { dropUnusedExports } from './unused-exports.mjs';

const bytes = (...parts) => Buffer.concat(parts.map((p) => (Buffer.isBuffer(p) ? p : Buffer.from(p))));
const name = (text) => bytes([text.length], Buffer.from(text));
const uleb = (n) => (n < 0x80 ? [n] : [(n & 0x7f) | 0x80, n >> 7]); // below 2^14
const section = (id, ...body) => {
  const content = bytes(...body);
  return bytes([id, ...uleb(content.length)], content);
};

/** A module importing `imports` (memory, a global, then functions by name) and exporting a
 * function under each of `exports`. */
function module(exports, functionImports = []) {
  const importEntries = [
    bytes(name('env'), name('memory'), [2, 0, 1]), // memory, min 1 page
    bytes(name('env'), name('flag'), [3, 0x7f, 0]), // immutable i32 global
    ...functionImports.map((n) => bytes(name('./index_bg.js'), name(n), [0, 0])),
  ];
  return bytes(
    [0x00, 0x61, 0x73, 0x6d, 0x01, 0x00, 0x00, 0x00],
    section(1, [1, 0x60, 0, 0]), // one type: () -> ()
    section(2, [importEntries.length], ...importEntries),
    section(3, [exports.length], ...exports.map(() => [0])),
    section(7, [exports.length], ...exports.map((n, i) => bytes(name(n), [0, functionImports.length + i]))),
    section(10, [exports.length], ...exports.map(() => [2, 0, 0x0b])),
  );
}

const exportsOf = (wasm) => WebAssembly.Module.exports(new WebAssembly.Module(wasm)).map((e) => e.name);

test('the exports of the unused classes go and every other one stays', () => {
  const unused = [
    '__wbg_r2range_free',
    '__wbg_get_containerstartupoptions_env',
    '__wbg_set_minifyconfig_css',
    'intounderlyingsource_pull',
    'intounderlyingbytesource_autoAllocateChunkSize',
    'intounderlyingsink_write',
  ];
  const used = ['fetch', 'limiter_fetch', 'upstream_alarm', '__wbg_limiter_free', '__wbindgen_start', 'wasm_bindgen__convert__closures_____invoke__h1'];
  const input = module([used[0], ...unused.slice(0, 3), ...used.slice(1), ...unused.slice(3)]);
  const { wasm, dropped } = dropUnusedExports(input);
  assert.deepEqual(exportsOf(wasm), used);
  assert.deepEqual([...dropped].sort(), [...unused].sort());
});

test('a module without them comes back as it was', () => {
  const input = module(['fetch', 'limiter_new'], ['__wbg_new_0']);
  const { wasm, dropped } = dropUnusedExports(input);
  assert.deepEqual(dropped, []);
  assert.ok(wasm.equals(input));
});

test('a module that makes one of the classes stops the build', () => {
  const input = module(['fetch', '__wbg_intounderlyingsink_free'], ['__wbg_new_0', '__wbg_intounderlyingsink_new']);
  assert.throws(() => dropUnusedExports(input, 'index_bg.wasm'), /class intounderlyingsink is made \(import __wbg_intounderlyingsink_new\)/);
});

test('what is not a Wasm module is refused', () => {
  assert.throws(() => dropUnusedExports(Buffer.from('not wasm at all')), /not a Wasm module/);
});
