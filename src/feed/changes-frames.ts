import { encodeMessage, type WireFormat } from '../protocol/codec.js';
import type { CorrelationId } from '../protocol/messages.js';
import type { ChangePage } from '../store/change-log.js';
import { changeForMsgpack, changeJson } from './change-wire.js';
import { formatOffset } from './offset.js';

/**
 * The `changes` messages of one page of the log, encoded once and shared. Subscribers woken by
 * the same commit read the same page object (ChangeFeed.read shares it), so its changes are
 * encoded once per wire format, and the finished message bytes once per subscription id: a
 * thousand subscribers with the same id are sent the very same Buffer, and ws writes it without
 * copying. A page is cut into several messages when its changes exceed the byte budget.
 *
 * The cache hangs off the page object (WeakMap), so it lives exactly as long as some subscriber
 * still holds the page, and a slow subscriber's unsent frames are references, not copies.
 */

export interface ChangesMessage {
  /** The offset this message brings its reader to (its `next`). */
  readonly through: number;
  /** How many changes it carries. */
  readonly count: number;
  /** The whole message for subscription `id`, in the format the slices were made for. */
  frame(id: CorrelationId): Buffer;
}

/** msgpack bytes of the key "changes" (a fixstr), spliced between a message's head and tail. */
const CHANGES_KEY = (encodeMessage(['changes'], 'msgpack') as Buffer).subarray(1);

export class ChangesFrames {
  private readonly cache = new WeakMap<ChangePage, Partial<Record<WireFormat, ChangesMessage[]>>>();

  constructor(
    private readonly incarnation: string,
    /** Byte budget of one message; at least one change is always sent. */
    private readonly maxMessageBytes: number,
  ) {}

  /** The messages that deliver `page` (non-empty changes) in `format`, in order. */
  messages(page: ChangePage, format: WireFormat): readonly ChangesMessage[] {
    let byFormat = this.cache.get(page);
    if (byFormat === undefined) this.cache.set(page, (byFormat = {}));
    return (byFormat[format] ??= this.cut(page, format));
  }

  private cut(page: ChangePage, format: WireFormat): ChangesMessage[] {
    const { changes } = page;
    const json = format === 'json';
    const upToDate = page.next >= page.tail;
    const out: ChangesMessage[] = [];
    let start = 0;
    while (start < changes.length) {
      let end = start;
      let bytes = 0;
      while (end < changes.length) {
        // An estimate (JSON may escape a byte into two): exact sizes would cost the encoding twice.
        const size = (changes[end]!.state?.length ?? 0) * (json ? 2 : 1) + changes[end]!.key.length + 200;
        if (end > start && bytes + size > this.maxMessageBytes) break;
        bytes += size;
        end++;
      }
      const last = end === changes.length;
      const through = last ? page.next : changes[end - 1]!.offset;
      const slice = changes.slice(start, end);
      const tailFields = { next: formatOffset(through, this.incarnation), upToDate: last && upToDate };
      out.push(json ? this.jsonMessage(slice, through, tailFields) : this.msgpackMessage(slice, through, tailFields));
      start = end;
    }
    return out;
  }

  private jsonMessage(slice: ChangePage['changes'], through: number, tail: { next: string; upToDate: boolean }): ChangesMessage {
    const body = `"changes":[${slice.map((c) => changeJson(c, this.incarnation)).join(',')}],"next":"${tail.next}","upToDate":${tail.upToDate}}`;
    return perId(through, slice.length, (id) => Buffer.from(`{"type":"changes","id":${JSON.stringify(id)},${body}`));
  }

  private msgpackMessage(slice: ChangePage['changes'], through: number, tail: { next: string; upToDate: boolean }): ChangesMessage {
    // msgpack is concatenative: a map is a header giving its size followed by its entries, so the
    // changes (the bulk) are encoded once and only the small head with the id per subscription id.
    const changes = encodeMessage(
      slice.map((c) => changeForMsgpack(c, this.incarnation)),
      'msgpack',
    ) as Buffer;
    const rest = entries(encodeMessage(tail, 'msgpack') as Buffer);
    return perId(through, slice.length, (id) => {
      const head = encodeMessage({ type: 'changes', id }, 'msgpack') as Buffer;
      return Buffer.concat([mapHeader(head, 5), entries(head), CHANGES_KEY, changes, rest]);
    });
  }
}

/** A map's header bytes: fixmap (1), map16 (3, what msgpackr writes for objects) or map32 (5). */
function headerLength(map: Buffer): number {
  const first = map[0]!;
  if (first >= 0x80 && first <= 0x8f) return 1;
  if (first === 0xde) return 3;
  if (first === 0xdf) return 5;
  throw new Error(`not a msgpack map: 0x${first.toString(16)}`);
}

function entries(map: Buffer): Buffer {
  return map.subarray(headerLength(map));
}

/** A header of the same kind as `like`'s, for a map of `size` entries. */
function mapHeader(like: Buffer, size: number): Buffer {
  const header = Buffer.from(like.subarray(0, headerLength(like)));
  if (header.length === 1) header[0] = 0x80 | size;
  else if (header.length === 3) header.writeUInt16BE(size, 1);
  else header.writeUInt32BE(size, 1);
  return header;
}

function perId(through: number, count: number, build: (id: CorrelationId) => Buffer): ChangesMessage {
  const frames = new Map<string, Buffer>();
  return {
    through,
    count,
    frame(id) {
      const slot = JSON.stringify(id);
      let frame = frames.get(slot);
      if (frame === undefined) frames.set(slot, (frame = build(id)));
      return frame;
    },
  };
}
