/**
 * One sample of every MessagePack extension form, as raw bytes, for the tests that prove the
 * server refuses extension types wherever they appear (PROTOCOL.md §2.2): the frame scanner's
 * unit tests and the live bad-input suite use the same list.
 */
const hex = (s: string): Buffer => Buffer.from(s.replace(/\s+/g, ''), 'hex');

export const MSGPACK_EXTENSIONS: ReadonlyArray<readonly [name: string, bytes: Buffer]> = [
  ['fixext 1', hex('d4 01 00')],
  ['fixext 2', hex('d5 01 0000')],
  ['fixext 4', hex('d6 01 00000000')],
  ['fixext 8', hex('d7 01 0000000000000000')],
  ['fixext 16', hex('d8 01 00000000000000000000000000000000')],
  ['ext 8', hex('c7 01 01 00')],
  ['ext 16', hex('c8 0001 01 00')],
  ['ext 32', hex('c9 00000001 01 00')],
  ['timestamp 32 (type -1)', hex('d6 ff 00000000')],
  // msgpackr decodes this one as `undefined`, so it is easy to miss.
  ['msgpackr undefined (fixext 1, type 0)', hex('d4 00 00')],
];
