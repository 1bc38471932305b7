// Checks of scripts/float-printer.mjs on small modules written here byte by byte: the float
// printer and `WithDecimalPoint` write the placeholder through `Formatter::write_str` (run
// here), and the build stops when anything else refers to one of the chain, by a call, by a
// table slot's number or from the data. `node --test scripts/float-printer.test.mjs`
import test from 'node:test';
import assert from 'node:assert/strict';
import { PLACEHOLDER, replaceFloatPrinter } from './float-printer.mjs';

const bytes = (...parts) => Buffer.concat(parts.map((p) => (Buffer.isBuffer(p) ? p : Buffer.from(p))));
const uleb = (n) => (n < 0x80 ? [n] : [(n & 0x7f) | 0x80, n >> 7]); // below 2^14
const name = (text) => bytes(uleb(Buffer.byteLength(text)), Buffer.from(text));
const vec = (items) => bytes(uleb(items.length), ...items);
const section = (id, ...body) => {
  const content = bytes(...body);
  return bytes([id, ...uleb(content.length)], content);
};

const PRINTER = '<f64 as core[c5930c85a12de822]::fmt::Display>::fmt';
const WDP = '<serde_core::de::WithDecimalPoint as core::fmt::Display>::fmt::h51768c19b0581aa4';
const UNEXPECTED = '<serde_core::de::Unexpected as core::fmt::Display>::fmt::h08d1b30c45d3afd9';
const JSON_UNEXPECTED = '<serde_json::error::JsonUnexpected as core::fmt::Display>::fmt::h40e45d53d8891738';
const WRITE_STR = '<core[c5930c85a12de822]::fmt::Formatter>::write_str';

// Function 0 is the imported write_str; the table's slots 1 and 2 hold the printer and
// `WithDecimalPoint` (functions 1 and 2), the slot numbers a `{}` of them would use.
const PRINTER_SLOT = 1;
const call = (f) => [0x20, 0, 0x20, 1, 0x10, f, 0x0b]; // local 0, local 1, call f, end
// local 0, i32.const slot, i32.store (as a `{}` puts a formatter in its arguments), i32.const 0, end
const refersBySlot = (slot) => [0x20, 0, 0x41, slot, 0x36, 2, 0, 0x41, 0, 0x0b];
// i32.const slot, i32.const 1, i32.add: the same number as a number
const countsTo = (slot) => [0x41, slot, 0x41, 1, 0x6a, 0x0b];

/** The chain (printer ← WithDecimalPoint ← Unexpected ← JsonUnexpected), each function with
 * its name, plus `others` ([name, body]) after them, and `data` at address 16. */
function module({ others = [], data = Buffer.from(`..${PLACEHOLDER}..`), chain = true } = {}) {
  const functions = [
    ...(chain
      ? [
          [PRINTER, [0x41, 7, 0x0b]],
          [WDP, refersBySlot(PRINTER_SLOT)],
          [UNEXPECTED, call(2)],
          [JSON_UNEXPECTED, call(3)],
        ]
      : []),
    ...others,
  ];
  const types = [
    [0x60, 2, 0x7f, 0x7f, 1, 0x7f], // (i32, i32) -> i32: Display::fmt
    [0x60, 3, 0x7f, 0x7f, 0x7f, 1, 0x7f], // (i32, i32, i32) -> i32: write_str
  ];
  const imports = [
    bytes(name('env'), name('memory'), [2, 0, 1]),
    bytes(name('env'), name('write_str'), [0, 1]),
  ];
  const exportsOf = functions.map(([, ], i) => bytes(name(`f${i + 1}`), [0, i + 1]));
  const slots = chain ? [1, 2] : [];
  const names = [[0, WRITE_STR], ...functions.map(([n], i) => [i + 1, n])];
  return bytes(
    [0x00, 0x61, 0x73, 0x6d, 0x01, 0x00, 0x00, 0x00],
    section(1, vec(types.map((t) => Buffer.from(t)))),
    section(2, vec(imports)),
    section(3, vec(functions.map(() => Buffer.from([0])))),
    section(4, [1, 0x70, 0, 8]), // a funcref table of 8 slots
    section(7, vec(exportsOf)),
    section(9, [1, 0, 0x41, 1, 0x0b], vec(slots.map((f) => Buffer.from(uleb(f))))),
    section(10, vec(functions.map(([, body]) => bytes(uleb(body.length + 1), [0], body)))),
    section(11, [1, 0, 0x41, 16, 0x0b], uleb(data.length), data),
    section(0, name('name'), [1], (() => {
      const sub = vec(names.map(([i, n]) => bytes(uleb(i), name(n))));
      return bytes(uleb(sub.length), sub);
    })()),
  );
}

function run(wasm, exportName) {
  const memory = new WebAssembly.Memory({ initial: 1 });
  const written = [];
  const write_str = (formatter, at, length) => {
    written.push([formatter, Buffer.from(memory.buffer, at, length).toString('utf8')]);
    return 0;
  };
  const { exports } = new WebAssembly.Instance(new WebAssembly.Module(wasm), { env: { memory, write_str } });
  const result = exports[exportName](8, 4242);
  return { result, written };
}

test('the printer and WithDecimalPoint write the placeholder to the formatter they are given', () => {
  const input = module();
  assert.deepEqual(run(input, 'f1'), { result: 7, written: [] });
  const { wasm, replaced } = replaceFloatPrinter(input);
  assert.equal(replaced, true);
  for (const f of ['f1', 'f2', 'f3', 'f4']) {
    assert.deepEqual(run(wasm, f), { result: 0, written: [[4242, PLACEHOLDER]] }, f);
  }
});

test('a module without a float printer comes back as it was', () => {
  const input = module({ chain: false, others: [['breakwater::status::render', [0x41, 0, 0x0b]]] });
  const { wasm, replaced } = replaceFloatPrinter(input);
  assert.equal(replaced, false);
  assert.ok(wasm.equals(input));
});

test('anything else that refers to the chain stops the build, naming it', () => {
  const cases = [
    // a `{}` of a float: the printer's slot handed on
    [['breakwater::metrics::ratio_line', refersBySlot(PRINTER_SLOT)], /<f64 as Display>::fmt is referred to by 1 other function\(s\): breakwater::metrics::ratio_line; a float may be printed/],
    // `f64::to_string`: the printer called
    [['alloc::string::ToString::to_string', call(1)], /<f64 as Display>::fmt is referred to by 1 other function\(s\): alloc::string::ToString::to_string;/],
    // another serde error type's message (`de::value::Error::invalid_type`)
    [['serde_core::de::value::Error::invalid_type', call(3)], /Unexpected's Display::fmt is referred to by 1 other function\(s\): serde_core::de::value::Error::invalid_type;/],
    [['serde_core::de::Unexpected::describe', refersBySlot(2)], /WithDecimalPoint's Display::fmt is referred to by 1 other function\(s\): serde_core::de::Unexpected::describe;/],
  ];
  for (const [other, message] of cases) {
    assert.throws(() => replaceFloatPrinter(module({ others: [other] }), 'index_bg.wasm'), message);
  }
});

test("a slot's number taken as a number is no reference", () => {
  const { replaced } = replaceFloatPrinter(module({ others: [['alloc::raw_vec::grow', countsTo(PRINTER_SLOT)]] }));
  assert.equal(replaced, true);
});

test("the printer's slot in the data (a vtable, a format's arguments made at compile time) stops the build", () => {
  // At 16: the placeholder's text, then at 32 a vtable: drop, size 8, align 8, fmt.
  const data = Buffer.alloc(32);
  data.write(PLACEHOLDER, 0);
  data.writeUInt32LE(0, 16);
  data.writeUInt32LE(8, 20);
  data.writeUInt32LE(8, 24);
  data.writeUInt32LE(PRINTER_SLOT, 28);
  assert.throws(() => replaceFloatPrinter(module({ data })), /<f64 as Display>::fmt's table slot 1 is in the data at 44/);
  // A format's argument made at compile time: the value's address (in the data), its formatter.
  data.writeUInt32LE(0, 20);
  data.writeUInt32LE(40, 24);
  assert.throws(() => replaceFloatPrinter(module({ data })), /<f64 as Display>::fmt's table slot 1 is in the data at 44/);
  // The same number after a count, or off the 4-byte alignment of a pointer, is no reference.
  data.writeUInt32LE(3, 24);
  assert.equal(replaceFloatPrinter(module({ data })).replaced, true);
  data.writeUInt32LE(8, 24);
  data.writeUInt32LE(0x0100, 28);
  assert.equal(replaceFloatPrinter(module({ data })).replaced, true);
});

test('a missing piece stops the build', () => {
  assert.throws(() => replaceFloatPrinter(module({ data: Buffer.from('no placeholder') })), /no "a number" in the data/);
  assert.throws(() => replaceFloatPrinter(Buffer.from('not wasm at all')), /not a Wasm module/);
});
