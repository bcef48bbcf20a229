// The canonical form of PROTOCOL.md §6, written from the spec alone and on purpose independent of
// the code in packages/client/src/wire: generate.mjs derives the vectors from it, and
// test/wire.test.ts compares it with the shared encoder on random values.
//
// Input is plain JS as a decoder sees it: null, booleans, numbers, bigint, strings, Buffer,
// arrays, Map (any key type). Throws on what the canonical form cannot hold.

export function header(len, fix, fixMax, op8, op16, op32) {
  if (len <= fixMax) return Buffer.of(fix | len);
  if (op8 !== null && len <= 0xff) return Buffer.of(op8, len);
  if (len <= 0xffff) {
    const b = Buffer.alloc(3);
    b[0] = op16;
    b.writeUInt16BE(len, 1);
    return b;
  }
  const b = Buffer.alloc(5);
  b[0] = op32;
  b.writeUInt32BE(len, 1);
  return b;
}

export function intBytes(n) {
  n = BigInt(n);
  if (n >= 0n) {
    if (n < 0x80n) return Buffer.of(Number(n));
    if (n <= 0xffn) return Buffer.of(0xcc, Number(n));
    if (n <= 0xffffn) {
      const b = Buffer.alloc(3);
      b[0] = 0xcd;
      b.writeUInt16BE(Number(n), 1);
      return b;
    }
    if (n <= 0xffffffffn) {
      const b = Buffer.alloc(5);
      b[0] = 0xce;
      b.writeUInt32BE(Number(n), 1);
      return b;
    }
    if (n <= 0xffffffffffffffffn) {
      const b = Buffer.alloc(9);
      b[0] = 0xcf;
      b.writeBigUInt64BE(n, 1);
      return b;
    }
    throw new Error(`integer ${n} beyond uint64`);
  }
  if (n >= -32n) return Buffer.of(Number(n) & 0xff);
  if (n >= -0x80n) {
    const b = Buffer.alloc(2);
    b[0] = 0xd0;
    b.writeInt8(Number(n), 1);
    return b;
  }
  if (n >= -0x8000n) {
    const b = Buffer.alloc(3);
    b[0] = 0xd1;
    b.writeInt16BE(Number(n), 1);
    return b;
  }
  if (n >= -0x80000000n) {
    const b = Buffer.alloc(5);
    b[0] = 0xd2;
    b.writeInt32BE(Number(n), 1);
    return b;
  }
  if (n >= -(2n ** 63n)) {
    const b = Buffer.alloc(9);
    b[0] = 0xd3;
    b.writeBigInt64BE(n, 1);
    return b;
  }
  throw new Error(`integer ${n} beyond int64`);
}

export function float64Bytes(v) {
  const b = Buffer.alloc(9);
  b[0] = 0xcb;
  b.writeDoubleBE(v, 1);
  return b;
}

export function strBytes(s) {
  const utf8 = Buffer.from(s, 'utf8');
  return Buffer.concat([header(utf8.length, 0xa0, 31, 0xd9, 0xda, 0xdb), utf8]);
}

export function canonical(v) {
  if (v === null) return Buffer.of(0xc0);
  if (typeof v === 'boolean') return Buffer.of(v ? 0xc3 : 0xc2);
  if (typeof v === 'bigint') return intBytes(v);
  if (typeof v === 'number') {
    if (Number.isInteger(v) && Math.abs(v) <= 2 ** 53) return intBytes(v === 0 ? 0 : v);
    return float64Bytes(Number.isNaN(v) ? NaN : v);
  }
  if (typeof v === 'string') return strBytes(v);
  if (Buffer.isBuffer(v)) return Buffer.concat([header(v.length, 0, -1, 0xc4, 0xc5, 0xc6), v]);
  if (Array.isArray(v)) return Buffer.concat([header(v.length, 0x90, 15, null, 0xdc, 0xdd), ...v.map(canonical)]);
  const keyed = [...v.entries()].map(([k, x]) => {
    const isInt = (typeof k === 'number' && Number.isInteger(k) && Math.abs(k) <= 2 ** 53) || typeof k === 'bigint';
    if (typeof k !== 'string' && !isInt) throw new Error('map key is not a string or an integer');
    return [canonical(k), canonical(x)];
  });
  keyed.sort((a, b) => Buffer.compare(a[0], b[0]));
  for (let i = 1; i < keyed.length; i++) if (keyed[i - 1][0].equals(keyed[i][0])) throw new Error('duplicate map key');
  return Buffer.concat([header(keyed.length, 0x80, 15, null, 0xde, 0xdf), ...keyed.flat()]);
}
