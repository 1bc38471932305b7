// The LEB128 numbers a Wasm module is written in, for the build's passes over the module
// (scripts/unused-exports.mjs, scripts/float-printer.mjs, scripts/strip-wasm.mjs).

/** `n` (unsigned) as LEB128 bytes. */
export const uleb = (n) => {
  const out = [];
  do {
    let byte = n % 128;
    n = Math.floor(n / 128);
    if (n > 0) byte |= 0x80;
    out.push(byte);
  } while (n > 0);
  return Buffer.from(out);
};

/** `n` (signed, 32 bits) as LEB128 bytes. */
export const sleb = (n) => {
  const out = [];
  for (;;) {
    const byte = n & 0x7f;
    n >>= 7;
    if ((n === 0 && !(byte & 0x40)) || (n === -1 && byte & 0x40)) {
      out.push(byte);
      return Buffer.from(out);
    }
    out.push(byte | 0x80);
  }
};

/** A reader of the unsigned numbers of `wasm`: `leb(at)` is `[value, the offset after it]`;
 * a number cut off by the module's end throws (`what` names the module). */
export const lebReader = (wasm, what) => (at) => {
  let value = 0;
  let shift = 0;
  let i = at;
  for (;;) {
    const byte = wasm[i++];
    if (byte === undefined) throw new Error(`${what}: truncated`);
    value += (byte & 0x7f) * 2 ** shift;
    shift += 7;
    if (byte < 0x80) return [value, i];
  }
};
