#!/usr/bin/env node
// Drops the exports of classes the Worker never makes, before wasm-opt (which then drops their
// code). wasm-bindgen exports every `#[wasm_bindgen]` struct of every crate linked in, used or
// not: `worker`'s `ContainerStartupOptions`, `MinifyConfig` and `R2Range`, and the stream
// adapters of `wasm_streams` (`IntoUnderlyingSource`, `…ByteSource`, `…Sink`), which only a
// stream made in Rust (`ReadableStream::from_stream` and the like) would hand to JavaScript.
// The glue keeps their JavaScript classes; nothing constructs one, so nothing calls into
// the dropped exports. An object of such a class can only reach JavaScript through an import
// wasm-bindgen adds for it (`__wbg_<class>_new`); if the module has one, the class is in use
// and the build stops here.
//   node scripts/unused-exports.mjs build/index_bg.wasm
import fs from 'node:fs';
import { fileURLToPath } from 'node:url';
import { lebReader, uleb } from './wasm-leb.mjs';

export const UNUSED_CLASSES = [
  'containerstartupoptions',
  'minifyconfig',
  'r2range',
  'intounderlyingsource',
  'intounderlyingbytesource',
  'intounderlyingsink',
];
// `<class>_<method>`, `__wbg_<class>_free`, `__wbg_get_<class>_<field>`, `__wbg_set_<class>_<field>`.
const classOf = (name) => {
  const m = /^(?:__wbg_(?:get_|set_)?)?([a-z0-9]+)_/.exec(name);
  return m && UNUSED_CLASSES.includes(m[1]) ? m[1] : null;
};

/** `wasm` without the exports of [`UNUSED_CLASSES`]: the new module's bytes and the names
 * dropped. Throws if the module imports a constructor of one of them (`what` names it). */
export function dropUnusedExports(wasm, what = 'module') {
  if (wasm.readUInt32LE(0) !== 0x6d736100) throw new Error(`${what} is not a Wasm module`);
  const leb = lebReader(wasm, what);
  const nameAt = (at) => {
    const [length, start] = leb(at);
    return [wasm.subarray(start, start + length).toString('utf8'), start + length];
  };
  const limits = (at) => {
    const flags = wasm[at];
    let [, next] = leb(at + 1);
    if (flags & 1) [, next] = leb(next);
    return next;
  };

  const parts = [wasm.subarray(0, 8)];
  const dropped = [];
  for (let i = 8; i < wasm.length;) {
    const start = i;
    const id = wasm[i];
    const [size, body] = leb(i + 1);
    const end = body + size;
    if (id === 2) {
      // Imports: a class in use has its constructor imported.
      let [count, at] = leb(body);
      for (; count > 0; count -= 1) {
        const [, afterModule] = nameAt(at);
        const [name, afterName] = nameAt(afterModule);
        const used = UNUSED_CLASSES.find((c) => name.startsWith(`__wbg_${c}_`));
        if (used) throw new Error(`${what}: class ${used} is made (import ${name}); take it off UNUSED_CLASSES`);
        const kind = wasm[afterName];
        at = afterName + 1;
        if (kind === 0) [, at] = leb(at); // function: its type
        else if (kind === 1) at = limits(at + 1); // table: element type, limits
        else if (kind === 2) at = limits(at); // memory: limits
        else if (kind === 3) at += 2; // global: value type, mutability
        else if (kind === 4) [, at] = leb(at + 1); // tag: attribute, type
        else throw new Error(`${what}: import of unknown kind ${kind}`);
      }
      parts.push(wasm.subarray(start, end));
    } else if (id === 7) {
      let [count, at] = leb(body);
      const kept = [];
      for (; count > 0; count -= 1) {
        const entry = at;
        const [name, afterName] = nameAt(at);
        [, at] = leb(afterName + 1);
        if (classOf(name)) dropped.push(name);
        else kept.push(wasm.subarray(entry, at));
      }
      const section = Buffer.concat([uleb(kept.length), ...kept]);
      parts.push(Buffer.from([7]), uleb(section.length), section);
    } else {
      parts.push(wasm.subarray(start, end));
    }
    i = end;
  }
  return { wasm: Buffer.concat(parts), dropped };
}

if (process.argv[1] === fileURLToPath(import.meta.url)) {
  const [file] = process.argv.slice(2);
  const { wasm, dropped } = dropUnusedExports(fs.readFileSync(file), file);
  fs.writeFileSync(file, wasm);
  console.log(`unused-exports: ${file}: ${dropped.length} exports of unused classes dropped`);
}
