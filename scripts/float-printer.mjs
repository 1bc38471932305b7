#!/usr/bin/env node
// Puts a function that writes "a number" in place of the float printer (`<f64 as Display>::fmt`
// and serde's `WithDecimalPoint`, which calls it), before wasm-opt, which then drops the
// printer's code and tables (docs/dependencies.md). Nothing in the Worker prints a float: the
// one way to the printer is serde's message for an unexpected value (`<Unexpected as
// Display>::fmt`, its `Float` case), which the module reaches only from serde_json's own
// message (`JsonUnexpected`), and that prints a float itself and hands serde the other kinds.
//
// The build stops unless the module shows that chain. Every instruction of every function is
// read; a function refers to another by calling it, by `ref.func`, or by the number of a table
// slot that holds it: an `i32.const` of that number stored to memory (how a `{}` puts its
// formatter in `fmt::Arguments`), kept in a local or a global, returned or called through the
// table. In the data, that number as an aligned word after a vtable's alignment (a `&dyn
// Display`) or next to an address of the data (arguments made at compile time) counts too.
// The printer may only be referred to by `WithDecimalPoint`, that only by `Unexpected`, and
// that only by `JsonUnexpected`.
//
// What this does not see: which case of `Unexpected` a caller builds (that `JsonUnexpected`
// never passes a float on is read in serde_json's source; tests/e2e/hardening.test.mjs reads
// its message from the Worker); a slot's number handed on in another way (as a call's
// argument, or two words stored as one `i64`; a `{}` of a float put in the crate to try this
// compiled to the stored form); and the number in the data in another shape. A constant or a word that merely equals a slot's
// number and is used as one of these can stop a build, never let one through.
//   node scripts/float-printer.mjs build/index_bg.wasm
import fs from 'node:fs';
import { fileURLToPath } from 'node:url';
import { lebReader, sleb, uleb } from './wasm-leb.mjs';

export const PLACEHOLDER = 'a number';
const PRINTER = /^<f64 as core(\[[0-9a-f]+\])?::fmt::Display>::fmt(::h[0-9a-f]+)?$/;
const WITH_DECIMAL_POINT = /^<serde_core::de::WithDecimalPoint as core::fmt::Display>::fmt(::h[0-9a-f]+)?$/;
const UNEXPECTED = /^<serde_core::de::Unexpected as core::fmt::Display>::fmt(::h[0-9a-f]+)?$/;
const JSON_UNEXPECTED = /^<serde_json::error::JsonUnexpected as core::fmt::Display>::fmt(::h[0-9a-f]+)?$/;
const WRITE_STR = /^<core(\[[0-9a-f]+\])?::fmt::Formatter>::write_str(::h[0-9a-f]+)?$/;

const I32 = 0x7f;

/** The module read: its sections, function types, names, table slots and data. */
function read(wasm, what) {
  if (wasm.length < 8 || wasm.readUInt32LE(0) !== 0x6d736100) throw new Error(`${what} is not a Wasm module`);
  const leb = lebReader(wasm, what);
  const sleb32 = (at) => {
    let value = 0;
    let shift = 0;
    let i = at;
    let byte;
    do {
      byte = wasm[i++];
      if (byte === undefined) throw new Error(`${what}: truncated`);
      if (shift < 32) value |= (byte & 0x7f) << shift;
      shift += 7;
    } while (byte & 0x80);
    if (shift < 32 && byte & 0x40) value |= -1 << shift;
    return [value | 0, i];
  };
  const skipLeb = (at) => {
    let i = at;
    while (wasm[i] & 0x80) i += 1;
    return i + 1;
  };
  const constOffset = (at) => {
    if (wasm[at] !== 0x41) throw new Error(`${what}: a segment's offset is not a constant`);
    const [offset, next] = sleb32(at + 1);
    if (wasm[next] !== 0x0b) throw new Error(`${what}: a segment's offset is not a constant`);
    return [offset, next + 1];
  };

  const m = { wasm, sections: [], types: [], funcTypes: [], importedFuncs: 0, names: new Map(), slots: new Map(), data: [], bodies: [] };
  for (let i = 8; i < wasm.length;) {
    const id = wasm[i];
    const [size, body] = leb(i + 1);
    const end = body + size;
    m.sections.push({ id, start: i, body, end });
    if (id === 1) {
      let [count, at] = leb(body);
      for (; count > 0; count -= 1) {
        if (wasm[at] !== 0x60) throw new Error(`${what}: a type that is not a function's`);
        const [np, p] = leb(at + 1);
        const params = [...wasm.subarray(p, p + np)];
        const [nr, r] = leb(p + np);
        const results = [...wasm.subarray(r, r + nr)];
        m.types.push({ params, results });
        at = r + nr;
      }
    } else if (id === 2) {
      let [count, at] = leb(body);
      for (; count > 0; count -= 1) {
        const [ml, ms] = leb(at);
        const [nl, ns] = leb(ms + ml);
        const kind = wasm[ns + nl];
        at = ns + nl + 1;
        if (kind === 0) {
          const [type, next] = leb(at);
          m.funcTypes.push(type);
          m.importedFuncs += 1;
          at = next;
        } else if (kind === 1 || kind === 2) {
          if (kind === 1) at += 1;
          const flags = wasm[at];
          at = skipLeb(at + 1);
          if (flags & 1) at = skipLeb(at);
        } else if (kind === 3) at += 2;
        else if (kind === 4) at = skipLeb(at + 1);
        else throw new Error(`${what}: import of unknown kind ${kind}`);
      }
    } else if (id === 3) {
      let [count, at] = leb(body);
      for (; count > 0; count -= 1) {
        const [type, next] = leb(at);
        m.funcTypes.push(type);
        at = next;
      }
    } else if (id === 9) {
      let [count, at] = leb(body);
      for (; count > 0; count -= 1) {
        const flags = wasm[at];
        if (flags !== 0) throw new Error(`${what}: an element segment of form ${flags}`);
        const [offset, next] = constOffset(at + 1);
        let [n, p] = leb(next);
        for (let k = 0; k < n; k += 1) {
          const [func, q] = leb(p);
          m.slots.set(offset + k, func);
          p = q;
        }
        at = p;
      }
    } else if (id === 10) {
      let [count, at] = leb(body);
      for (let k = 0; k < count; k += 1) {
        const [bodySize, start] = leb(at);
        m.bodies.push({ start: at, code: start, end: start + bodySize });
        at = start + bodySize;
      }
    } else if (id === 11) {
      let [count, at] = leb(body);
      for (; count > 0; count -= 1) {
        const flags = wasm[at];
        let offset = null;
        let next = at + 1;
        if (flags === 0) [offset, next] = constOffset(at + 1);
        else if (flags === 2) [offset, next] = constOffset(skipLeb(at + 1));
        else if (flags !== 1) throw new Error(`${what}: a data segment of form ${flags}`);
        const [n, p] = leb(next);
        m.data.push({ offset, bytes: wasm.subarray(p, p + n) });
        at = p + n;
      }
    } else if (id === 0) {
      const [nl, ns] = leb(body);
      if (wasm.subarray(ns, ns + nl).toString('utf8') === 'name') {
        for (let at = ns + nl; at < end;) {
          const [subSize, sub] = leb(at + 1);
          if (wasm[at] === 1) {
            let [n, p] = leb(sub);
            for (; n > 0; n -= 1) {
              const [index, q] = leb(p);
              const [len, s] = leb(q);
              m.names.set(index, wasm.subarray(s, s + len).toString('utf8'));
              p = s + len;
            }
          }
          at = sub + subSize;
        }
      }
    }
    i = end;
  }
  m.leb = leb;
  m.sleb32 = sleb32;
  m.skipLeb = skipLeb;
  return m;
}

/** Whether an instruction right after an `i32.const` takes it as a function's table slot
 * may be taken: stored to memory (how a `{}` puts its formatter in `fmt::Arguments`), kept in
 * a local or a global, returned, or called through the table. */
const asSlot = (op) => op === 0x36 || op === 0x11 || op === 0x13 || op === 0x21 || op === 0x22 || op === 0x24 || op === 0x0f;

/** Every function each function refers to, by a call, `ref.func`, or an `i32.const` that is
 * the number of a slot of the table: a map from the referred function to its referrers. */
function referrers(m, what) {
  const { wasm, leb, sleb32, skipLeb } = m;
  const refs = new Map();
  const note = (to, from) => {
    if (!refs.has(to)) refs.set(to, new Set());
    refs.get(to).add(from);
  };
  m.bodies.forEach(({ code, end }, k) => {
    const self = m.importedFuncs + k;
    let [groups, at] = leb(code);
    for (; groups > 0; groups -= 1) at = skipLeb(at) + 1; // count, value type
    while (at < end) {
      const op = wasm[at++];
      if (op === 0x10 || op === 0x12 || op === 0xd2) {
        const [func, next] = leb(at);
        note(func, self);
        at = next;
      } else if (op === 0x41) {
        const [value, next] = sleb32(at);
        if (m.slots.has(value) && asSlot(wasm[next])) note(m.slots.get(value), self);
        at = next;
      } else if (op === 0x42) at = skipLeb(at);
      else if (op === 0x43) at += 4;
      else if (op === 0x44) at += 8;
      else if (op <= 0x01 || op === 0x05 || op === 0x0a || op === 0x0b || op === 0x0f || op === 0x19 || op === 0x1a || op === 0x1b || op === 0xd1 || (op >= 0x45 && op <= 0xc4)) {
        // no immediate
      } else if ((op >= 0x02 && op <= 0x04) || op === 0x06) at = skipLeb(at); // block type
      else if ((op >= 0x07 && op <= 0x09) || op === 0x0c || op === 0x0d || op === 0x18 || (op >= 0x20 && op <= 0x26) || op === 0xd0) at = skipLeb(at);
      else if (op === 0x0e) {
        let [n, next] = leb(at);
        for (n += 1; n > 0; n -= 1) next = skipLeb(next);
        at = next;
      } else if (op === 0x1f) {
        // try_table: block type, then each catch: its kind, a tag (the first two kinds), a label
        let [n, next] = leb(skipLeb(at));
        for (; n > 0; n -= 1) {
          const kind = wasm[next];
          next = kind <= 1 ? skipLeb(skipLeb(next + 1)) : skipLeb(next + 1);
        }
        at = next;
      } else if (op === 0x11 || op === 0x13) at = skipLeb(skipLeb(at));
      else if (op === 0x1c) {
        const [n, next] = leb(at);
        at = next + n;
      } else if (op >= 0x28 && op <= 0x3e) at = skipLeb(skipLeb(at));
      else if (op === 0x3f || op === 0x40) at += 1;
      else if (op === 0xfc) {
        const [sub, next] = leb(at);
        at = next;
        if (sub <= 7) {
          // saturating truncations
        } else if (sub === 8) at = skipLeb(at) + 1;
        else if (sub === 9 || sub === 13 || (sub >= 15 && sub <= 17)) at = skipLeb(at);
        else if (sub === 10) at += 2;
        else if (sub === 11) at += 1;
        else if (sub === 12 || sub === 14) at = skipLeb(skipLeb(at));
        else throw new Error(`${what}: instruction 0xfc ${sub} in function ${self}`);
      } else throw new Error(`${what}: instruction 0x${op.toString(16)} in function ${self}`);
    }
  });
  return refs;
}

/** The data's addresses that hold `slot`'s number as a 4-aligned word that reads as a
 * function pointer: after a power-of-two alignment of at most 16 (a vtable's method, for a
 * `&dyn Display`), or next to an address within the data (a format's argument made at compile
 * time: a pointer to the value and its formatter). */
function dataMentions(m, slot) {
  const placed = m.data.filter((d) => d.offset !== null);
  const low = Math.min(...placed.map((d) => d.offset));
  const high = Math.max(...placed.map((d) => d.offset + d.bytes.length));
  const inData = (word) => word >= low && word < high;
  const found = [];
  for (const { offset, bytes } of placed) {
    for (let k = (4 - (offset % 4)) % 4; k + 4 <= bytes.length; k += 4) {
      if (bytes.readUInt32LE(k) !== slot) continue;
      const before = k >= 4 ? bytes.readUInt32LE(k - 4) : null;
      const after = k + 8 <= bytes.length ? bytes.readUInt32LE(k + 4) : null;
      const align = before !== null && before >= 1 && before <= 16 && (before & (before - 1)) === 0;
      if (align || (before !== null && inData(before)) || (after !== null && inData(after))) found.push(offset + k);
    }
  }
  return found;
}

/** `wasm` with the float printer's two functions writing [`PLACEHOLDER`] instead: the new
 * module's bytes, or the module as it was (`replaced` false) if it has no float printer.
 * Throws if something other than the chain above refers to them, or if a piece is missing. */
export function replaceFloatPrinter(wasm, what = 'module') {
  const m = read(wasm, what);
  if (m.names.size === 0) throw new Error(`${what}: no function names (the name section is needed)`);
  const find = (pattern, label) => {
    const hits = [...m.names].filter(([, name]) => pattern.test(name)).map(([index]) => index);
    if (hits.length > 1) throw new Error(`${what}: ${hits.length} functions named like ${label}`);
    return hits[0];
  };
  const printer = find(PRINTER, '<f64 as Display>::fmt');
  if (printer === undefined) return { wasm, replaced: false };
  const chain = [
    [printer, find(WITH_DECIMAL_POINT, "WithDecimalPoint's Display::fmt"), '<f64 as Display>::fmt'],
    [find(WITH_DECIMAL_POINT, ''), find(UNEXPECTED, "Unexpected's Display::fmt"), "WithDecimalPoint's Display::fmt"],
    [find(UNEXPECTED, ''), find(JSON_UNEXPECTED, "JsonUnexpected's Display::fmt"), "Unexpected's Display::fmt"],
  ];
  const writeStr = find(WRITE_STR, 'Formatter::write_str');
  for (const [, only, label] of chain) if (only === undefined) throw new Error(`${what}: no function found for the chain from ${label}`);
  if (writeStr === undefined) throw new Error(`${what}: no Formatter::write_str to write the placeholder with`);

  const refs = referrers(m, what);
  const nameOf = (f) => m.names.get(f) ?? `function ${f}`;
  for (const [target, only, label] of chain) {
    const others = [...(refs.get(target) ?? [])].filter((f) => f !== only && f !== target);
    const slots = [...m.slots].filter(([, func]) => func === target).map(([slot]) => slot);
    if (others.length > 0) {
      const shown = others.slice(0, 8).map(nameOf).join(', ');
      throw new Error(
        `${what}: ${label} is referred to by ${others.length} other function(s): ${shown}${others.length > 8 ? ', …' : ''}; ` +
          `a float may be printed. If none of them prints one, the number of its table slot (${slots.join(', ')}) is a ` +
          'constant they use for something else, which this check cannot tell apart (docs/dependencies.md)',
      );
    }
    for (const slot of slots) {
      const places = dataMentions(m, slot);
      if (places.length > 0) throw new Error(`${what}: ${label}'s table slot ${slot} is in the data at ${places.join(', ')} (a vtable?); a float may be printed`);
    }
  }

  const typeOf = (f) => m.types[m.funcTypes[f]];
  const same = (t, params, results) => t.params.join() === params.join() && t.results.join() === results.join();
  for (const f of [chain[0][0], chain[1][0]]) {
    if (f < m.importedFuncs || !same(typeOf(f), [I32, I32], [I32])) throw new Error(`${what}: ${nameOf(f)} is not fn(&self, &mut Formatter) -> fmt::Result`);
  }
  if (!same(typeOf(writeStr), [I32, I32, I32], [I32])) throw new Error(`${what}: ${nameOf(writeStr)} is not fn(&mut Formatter, &str) -> fmt::Result`);

  // The placeholder's bytes, from a constant string already in the data.
  const text = Buffer.from(PLACEHOLDER);
  let address = null;
  for (const { offset, bytes } of m.data) {
    const at = offset === null ? -1 : bytes.indexOf(text);
    if (at >= 0) {
      address = offset + at;
      break;
    }
  }
  if (address === null) throw new Error(`${what}: no "${PLACEHOLDER}" in the data to write`);

  // fmt(&self, f) { f.write_str(PLACEHOLDER) }: no locals; local 1 is the formatter.
  const code = Buffer.concat([
    Buffer.from([0x00, 0x20, 0x01, 0x41]),
    sleb(address),
    Buffer.from([0x41]),
    sleb(text.length),
    Buffer.from([0x10]),
    uleb(writeStr),
    Buffer.from([0x0b]),
  ]);
  const replace = new Set([chain[0][0] - m.importedFuncs, chain[1][0] - m.importedFuncs]);
  const codeSection = m.sections.find((s) => s.id === 10);
  const [count] = m.leb(codeSection.body);
  const entries = m.bodies.map((b, k) => (replace.has(k) ? Buffer.concat([uleb(code.length), code]) : wasm.subarray(b.start, b.end)));
  const content = Buffer.concat([uleb(count), ...entries]);
  return {
    wasm: Buffer.concat([
      wasm.subarray(0, codeSection.start),
      Buffer.from([10]),
      uleb(content.length),
      content,
      wasm.subarray(codeSection.end),
    ]),
    replaced: true,
  };
}

if (process.argv[1] === fileURLToPath(import.meta.url)) {
  const [file] = process.argv.slice(2);
  const { wasm, replaced } = replaceFloatPrinter(fs.readFileSync(file), file);
  fs.writeFileSync(file, wasm);
  console.log(`float-printer: ${file}: ${replaced ? `the float printer writes "${PLACEHOLDER}"` : 'no float printer'}`);
}
