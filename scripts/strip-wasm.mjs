#!/usr/bin/env node
// Drops the custom sections a Wasm module carries for tools (`name`, `producers`, debug info)
// and the runtime never reads: the `name` section alone is some 40 KB of the gzipped Worker.
// Function indices are unchanged, so a copy kept with its names (KEEP=path) still tells whose
// code is whose (the benchmark's breakdown by crate reads it).
//   node scripts/strip-wasm.mjs build/index_bg.wasm [KEEP]
import fs from 'node:fs';
import path from 'node:path';
import { lebReader } from './wasm-leb.mjs';

const [file, keep] = process.argv.slice(2);
const wasm = fs.readFileSync(file);
if (wasm.readUInt32LE(0) !== 0x6d736100) throw new Error(`${file} is not a Wasm module`);
const leb = lebReader(wasm, file);
const kept = [wasm.subarray(0, 8)];
let dropped = 0;
for (let i = 8; i < wasm.length;) {
  const start = i;
  const id = wasm[i];
  const [size, body] = leb(i + 1);
  const end = body + size;
  if (id === 0) dropped += end - start;
  else kept.push(wasm.subarray(start, end));
  i = end;
}
if (dropped > 0) {
  if (keep) {
    fs.mkdirSync(path.dirname(keep), { recursive: true });
    fs.copyFileSync(file, keep);
  }
  fs.writeFileSync(file, Buffer.concat(kept));
}
console.log(`strip-wasm: ${file}: ${dropped} bytes of custom sections dropped`);
