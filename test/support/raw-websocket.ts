import { once } from 'node:events';
import { connect, type Socket } from 'node:net';

/**
 * A WebSocket client written on a bare TCP socket, for clients that break the rules a library
 * would keep: ignoring the server's close frame and writing on, sending fragments of a message and
 * never the rest. It writes frames exactly as given and only collects what the server sends.
 */

export class RawWebSocket {
  /** Everything the server sent after the 101 response. */
  received = Buffer.alloc(0);
  /** Set once the TCP connection is gone, with the time it went (performance.now()). */
  endedAt: number | undefined;
  readonly ended: Promise<void>;

  private constructor(readonly socket: Socket) {
    this.ended = new Promise((resolve) => {
      socket.once('close', () => {
        this.endedAt = performance.now();
        resolve();
      });
    });
  }

  /** Opens the TCP connection and completes the upgrade; rejects unless the server answers 101. */
  static async open(url: string, headers: Record<string, string> = {}, protocol = 'seqgate.v1'): Promise<RawWebSocket> {
    const { hostname, port, pathname, search } = new URL(url);
    const socket = connect(Number(port), hostname);
    socket.on('error', () => undefined);
    await once(socket, 'connect');
    const raw = new RawWebSocket(socket);
    let head = Buffer.alloc(0);
    let upgraded = false;
    const answered = new Promise<string>((resolve, reject) => {
      socket.on('data', (d: Buffer) => {
        if (upgraded) {
          raw.received = Buffer.concat([raw.received, d]);
          return;
        }
        head = Buffer.concat([head, d]);
        const end = head.indexOf('\r\n\r\n');
        if (end === -1) return;
        upgraded = true;
        raw.received = head.subarray(end + 4);
        resolve(head.subarray(0, end).toString('latin1'));
      });
      socket.once('close', () => reject(new Error('connection closed before the upgrade was answered')));
    });
    socket.write(
      [
        `GET ${pathname}${search} HTTP/1.1`,
        `Host: ${hostname}:${port}`,
        'Upgrade: websocket',
        'Connection: Upgrade',
        'Sec-WebSocket-Key: dGhlIHNhbXBsZSBub25jZQ==',
        'Sec-WebSocket-Version: 13',
        `Sec-WebSocket-Protocol: ${protocol}`,
        ...Object.entries(headers).map(([k, v]) => `${k}: ${v}`),
        '',
        '',
      ].join('\r\n'),
    );
    const status = await answered;
    if (!status.startsWith('HTTP/1.1 101')) throw new Error(`upgrade refused: ${status.split('\r\n')[0]}`);
    return raw;
  }

  /** Writes one masked frame (opcode 2 binary, 1 text, 0 continuation; `fin` false leaves the message open). */
  send(payload: Buffer, opcode = 2, fin = true): boolean {
    return this.socket.write(frame(payload, opcode, fin));
  }

  /** Close frames the server sent: their codes, in order. */
  closeCodes(): number[] {
    return serverFrames(this.received)
      .filter((f) => f.opcode === 8 && f.payload.length >= 2)
      .map((f) => f.payload.readUInt16BE(0));
  }

  /** Data frames the server sent (whole messages only; the server never fragments). */
  messages(): Buffer[] {
    return serverFrames(this.received)
      .filter((f) => f.opcode === 1 || f.opcode === 2)
      .map((f) => f.payload);
  }

  destroy(): void {
    this.socket.destroy();
  }
}

/** A masked client frame. The mask key is zero, so the payload goes out as it is. */
export function frame(payload: Buffer, opcode = 2, fin = true): Buffer {
  const len = payload.length;
  const header = len < 126 ? Buffer.alloc(2) : len <= 0xffff ? Buffer.alloc(4) : Buffer.alloc(10);
  header[0] = (fin ? 0x80 : 0) | opcode;
  if (len < 126) header[1] = 0x80 | len;
  else if (len <= 0xffff) {
    header[1] = 0x80 | 126;
    header.writeUInt16BE(len, 2);
  } else {
    header[1] = 0x80 | 127;
    header.writeBigUInt64BE(BigInt(len), 2);
  }
  return Buffer.concat([header, Buffer.alloc(4), payload]);
}

/** Parses unmasked server frames; an incomplete last frame is left out. */
function serverFrames(buf: Buffer): Array<{ opcode: number; payload: Buffer }> {
  const out: Array<{ opcode: number; payload: Buffer }> = [];
  let pos = 0;
  while (pos + 2 <= buf.length) {
    const opcode = buf[pos]! & 0x0f;
    let len = buf[pos + 1]! & 0x7f;
    let at = pos + 2;
    if (len === 126) {
      if (at + 2 > buf.length) break;
      len = buf.readUInt16BE(at);
      at += 2;
    } else if (len === 127) {
      if (at + 8 > buf.length) break;
      len = Number(buf.readBigUInt64BE(at));
      at += 8;
    }
    if (at + len > buf.length) break;
    out.push({ opcode, payload: buf.subarray(at, at + len) });
    pos = at + len;
  }
  return out;
}
