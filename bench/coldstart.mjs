// Time to compile and instantiate the Worker's WebAssembly module in a fresh V8 (Node), with
// every import stubbed: what an isolate pays for the module before the first request, without
// the runtime around it. Prints one JSON line. Needs a V8 with Wasm exception references
// (Node ≥ 24); run in a fresh process for each sample.
//
//   node bench/coldstart.mjs build/index_bg.wasm
import fs from 'node:fs';

const file = process.argv[2] ?? 'build/index_bg.wasm';
const bytes = fs.readFileSync(file);
const t0 = performance.now();
const module = new WebAssembly.Module(bytes);
const t1 = performance.now();
const imports = {};
for (const imp of WebAssembly.Module.imports(module)) {
  imports[imp.module] ??= {};
  let value;
  if (imp.kind === 'function') value = () => {};
  else if (imp.kind === 'tag') value = WebAssembly.JSTag ?? new WebAssembly.Tag({ parameters: ['externref'] });
  imports[imp.module][imp.name] = value;
}
const instance = new WebAssembly.Instance(module, imports);
const t2 = performance.now();
console.log(JSON.stringify({
  node: process.version,
  v8: process.versions.v8,
  lazy: !process.execArgv.includes('--no-wasm-lazy-compilation'),
  bytes: bytes.length,
  compile_ms: t1 - t0,
  instantiate_ms: t2 - t1,
  total_ms: t2 - t0,
  exports: Object.keys(instance.exports).length,
}));
