import { createServer, connect, type Server, type Socket } from 'node:net';

/**
 * A fault-injecting TCP proxy on loopback, for WebSocket traffic. It forwards the HTTP upgrade
 * untouched, then splits each direction into WebSocket frames (RFC 6455 framing is simple enough to
 * parse: no decoding of the payload is needed), so faults can hit exact frame boundaries:
 *
 * - cut: destroy both sockets instead of forwarding a frame. Hitting a server→client frame means
 *   the server sent (and committed) it, and the client never sees it.
 * - truncate: forward a random prefix of a frame, then cut.
 * - stall: stop forwarding for good on that connection (data is held, never delivered), so the
 *   client has to notice by its own timeouts.
 * - delay: hold each chunk for a random time, keeping the order.
 * - duplicate / reorder (server→client only): deliver a frame twice, or after the next one.
 *   TCP never does this; it checks that a client matches answers by id and ignores repeats.
 *
 * Faults are drawn per frame from `faults` (changeable at any time), or decided by `onFrame`, which
 * sees every frame with its unmasked payload. Connections go to `target`, which can be changed to
 * move clients to another server (for restart tests).
 */

export type Direction = 'toServer' | 'toClient';
export type FrameAction = 'forward' | 'drop' | 'cut' | 'truncate' | 'stall' | 'duplicate' | 'hold';

export interface FrameInfo {
  readonly connection: ProxyConnection;
  readonly direction: Direction;
  /** Index of this frame among the frames of its direction on its connection, from 0. */
  readonly index: number;
  readonly opcode: number;
  readonly payload: Buffer;
  /** The frame's bytes as they travel (masked for client→server frames). */
  readonly raw: Buffer;
}

export interface Faults {
  /** Per frame, either direction: probability of cutting the connection instead of forwarding it. */
  cut?: number;
  /** Per server→client data frame: probability of cutting after the server sent it, before delivery. */
  cutToClient?: number;
  /** Per frame: probability of forwarding a random prefix of it, then cutting. */
  truncate?: number;
  /** Per frame: probability that the connection stops forwarding for good, from this frame on. */
  stall?: number;
  /** Per server→client frame: probability of delivering it twice. */
  duplicate?: number;
  /** Per server→client frame: probability of delivering it after the next frame. */
  reorder?: number;
  /** Added to each chunk, uniform in [min, max] milliseconds; order is kept. */
  delayMs?: { readonly min: number; readonly max: number };
}

export interface ProxyStats {
  connections: number;
  cuts: number;
  truncations: number;
  stalls: number;
  duplicates: number;
  reorders: number;
  frames: { toServer: number; toClient: number };
}

interface Pending {
  readonly bytes: Buffer;
  readonly at: number;
  readonly then?: 'cut';
}

class Pipe {
  private buf: Buffer = Buffer.alloc(0);
  private inHttp = true;
  private index = 0;
  private readonly queue: Pending[] = [];
  private lastAt = 0;
  private timer: NodeJS.Timeout | undefined;
  private held: Buffer | undefined;
  stalled = false;

  constructor(
    private readonly conn: ProxyConnection,
    readonly direction: Direction,
    private readonly out: Socket,
  ) {}

  receive(chunk: Buffer): void {
    this.buf = this.buf.length === 0 ? chunk : Buffer.concat([this.buf, chunk]);
    for (;;) {
      if (this.conn.closed) return;
      if (this.inHttp) {
        const end = this.buf.indexOf('\r\n\r\n');
        if (end === -1) return;
        this.enqueue(this.buf.subarray(0, end + 4));
        this.buf = this.buf.subarray(end + 4);
        this.inHttp = false;
        continue;
      }
      const frame = parseFrame(this.buf);
      if (frame === null) return;
      this.buf = this.buf.subarray(frame.raw.length);
      this.onFrame(frame.raw, frame.opcode, frame.payload);
    }
  }

  private onFrame(raw: Buffer, opcode: number, payload: Buffer): void {
    const proxy = this.conn.proxy;
    const info: FrameInfo = { connection: this.conn, direction: this.direction, index: this.index++, opcode, payload, raw };
    proxy.stats.frames[this.direction]++;
    const action = proxy.onFrame?.(info) ?? proxy.drawFault(info);
    switch (action) {
      case 'drop':
        return;
      case 'cut':
        proxy.stats.cuts++;
        this.conn.cut();
        return;
      case 'truncate': {
        proxy.stats.truncations++;
        const keep = 1 + Math.floor(Math.random() * Math.max(1, raw.length - 1));
        this.enqueue(raw.subarray(0, keep), 'cut');
        return;
      }
      case 'stall':
        proxy.stats.stalls++;
        this.conn.stall();
        return;
      case 'duplicate':
        proxy.stats.duplicates++;
        this.enqueue(raw);
        this.enqueue(raw);
        return;
      case 'hold':
        if (this.held === undefined) {
          proxy.stats.reorders++;
          this.held = raw;
          // If no later frame comes to overtake it, it goes out on its own.
          setTimeout(() => this.releaseHeld(raw), 20);
          return;
        }
        this.enqueue(raw);
        return;
      default:
        this.enqueue(raw);
    }
  }

  private enqueue(bytes: Buffer, then?: 'cut'): void {
    const delay = this.conn.proxy.faults.delayMs;
    const now = Date.now();
    const extra = delay === undefined ? 0 : delay.min + Math.random() * (delay.max - delay.min);
    const at = Math.max(this.lastAt, now + extra);
    this.lastAt = at;
    this.queue.push(then === undefined ? { bytes, at } : { bytes, at, then });
    if (this.held !== undefined && then === undefined) {
      const held = this.held;
      this.held = undefined;
      this.queue.push({ bytes: held, at });
    }
    this.flush();
  }

  private releaseHeld(raw: Buffer): void {
    if (this.held !== raw) return;
    this.held = undefined;
    this.enqueue(raw);
  }

  flush(): void {
    if (this.timer !== undefined) {
      clearTimeout(this.timer);
      this.timer = undefined;
    }
    while (this.queue.length > 0 && !this.stalled && !this.conn.closed) {
      const head = this.queue[0]!;
      const wait = head.at - Date.now();
      if (wait > 0) {
        this.timer = setTimeout(() => this.flush(), wait);
        return;
      }
      this.queue.shift();
      this.out.write(head.bytes);
      if (head.then === 'cut') {
        this.conn.proxy.stats.cuts++;
        // Let the prefix reach the peer before the connection goes.
        setImmediate(() => this.conn.cut());
        return;
      }
    }
  }

  dispose(): void {
    if (this.timer !== undefined) clearTimeout(this.timer);
    this.queue.length = 0;
  }
}

function parseFrame(buf: Buffer): { raw: Buffer; opcode: number; payload: Buffer } | null {
  if (buf.length < 2) return null;
  const opcode = buf[0]! & 0x0f;
  const masked = (buf[1]! & 0x80) !== 0;
  let len = buf[1]! & 0x7f;
  let off = 2;
  if (len === 126) {
    if (buf.length < 4) return null;
    len = buf.readUInt16BE(2);
    off = 4;
  } else if (len === 127) {
    if (buf.length < 10) return null;
    len = Number(buf.readBigUInt64BE(2));
    off = 10;
  }
  const maskAt = off;
  if (masked) off += 4;
  if (buf.length < off + len) return null;
  const raw = buf.subarray(0, off + len);
  let payload = buf.subarray(off, off + len);
  if (masked) {
    const mask = buf.subarray(maskAt, maskAt + 4);
    payload = Buffer.from(payload);
    for (let i = 0; i < payload.length; i++) payload[i]! ^= mask[i & 3]!;
  }
  return { raw, opcode, payload };
}

export class ProxyConnection {
  closed = false;
  private readonly toServer: Pipe;
  private readonly toClient: Pipe;

  constructor(
    readonly proxy: FaultProxy,
    /** 1 for the first connection the proxy accepted. */
    readonly id: number,
    private readonly client: Socket,
    private readonly server: Socket,
  ) {
    this.toServer = new Pipe(this, 'toServer', server);
    this.toClient = new Pipe(this, 'toClient', client);
    client.on('data', (d: Buffer) => this.toServer.receive(d));
    server.on('data', (d: Buffer) => this.toClient.receive(d));
    for (const s of [client, server]) {
      s.on('error', () => this.cut());
      s.on('close', () => this.cut());
      s.on('end', () => this.cut());
    }
    if (proxy.stalledAll) this.stall();
  }

  /** Destroys both sockets at once, dropping whatever the proxy still holds. */
  cut(): void {
    if (this.closed) return;
    this.closed = true;
    this.toServer.dispose();
    this.toClient.dispose();
    this.client.destroy();
    this.server.destroy();
    this.proxy.connections.delete(this);
  }

  /** Stops forwarding in both directions; bytes are held until the connection is cut. */
  stall(): void {
    this.toServer.stalled = true;
    this.toClient.stalled = true;
  }

  /** Stops forwarding one direction only. */
  stallDirection(direction: Direction): void {
    (direction === 'toServer' ? this.toServer : this.toClient).stalled = true;
  }

  resume(): void {
    this.toServer.stalled = false;
    this.toClient.stalled = false;
    this.toServer.flush();
    this.toClient.flush();
  }
}

export class FaultProxy {
  faults: Faults = {};
  /** Decides the fate of each frame; return undefined to fall back to `faults`. */
  onFrame: ((frame: FrameInfo) => FrameAction | undefined) | undefined;
  readonly stats: ProxyStats = {
    connections: 0,
    cuts: 0,
    truncations: 0,
    stalls: 0,
    duplicates: 0,
    reorders: 0,
    frames: { toServer: 0, toClient: 0 },
  };
  readonly connections = new Set<ProxyConnection>();
  stalledAll = false;

  private constructor(
    private readonly server: Server,
    public target: { host: string; port: number },
  ) {}

  /** Starts a proxy on a free loopback port in front of `targetUrl` (ws://host:port). */
  static async start(targetUrl: string, faults: Faults = {}): Promise<FaultProxy> {
    const u = new URL(targetUrl);
    const server = createServer();
    const proxy = new FaultProxy(server, { host: u.hostname, port: Number(u.port) });
    proxy.faults = faults;
    server.on('connection', (client) => proxy.accept(client));
    await new Promise<void>((resolve) => server.listen(0, '127.0.0.1', resolve));
    return proxy;
  }

  get port(): number {
    const address = this.server.address();
    if (address === null || typeof address === 'string') throw new Error('proxy not listening');
    return address.port;
  }

  get url(): string {
    return `ws://127.0.0.1:${this.port}`;
  }

  /** Sends new connections to another server (existing ones keep theirs). */
  setTarget(url: string): void {
    const u = new URL(url);
    this.target = { host: u.hostname, port: Number(u.port) };
  }

  private accept(client: Socket): void {
    client.setNoDelay(true);
    const upstream = connect(this.target.port, this.target.host);
    upstream.setNoDelay(true);
    const conn = new ProxyConnection(this, ++this.stats.connections, client, upstream);
    this.connections.add(conn);
  }

  /** The fault for one frame, drawn from `faults`. */
  drawFault(frame: FrameInfo): FrameAction {
    const f = this.faults;
    const data = frame.opcode === 1 || frame.opcode === 2;
    if (f.stall !== undefined && Math.random() < f.stall) return 'stall';
    if (f.cut !== undefined && Math.random() < f.cut) return 'cut';
    if (f.truncate !== undefined && Math.random() < f.truncate) return 'truncate';
    if (frame.direction === 'toClient' && data) {
      if (f.cutToClient !== undefined && Math.random() < f.cutToClient) return 'cut';
      if (f.duplicate !== undefined && Math.random() < f.duplicate) return 'duplicate';
      if (f.reorder !== undefined && Math.random() < f.reorder) return 'hold';
    }
    return 'forward';
  }

  /** Stalls every connection, and every new one until resumeAll(). */
  stallAll(): void {
    this.stalledAll = true;
    for (const c of this.connections) c.stall();
  }

  resumeAll(): void {
    this.stalledAll = false;
    for (const c of this.connections) c.resume();
  }

  cutAll(): void {
    for (const c of [...this.connections]) c.cut();
  }

  async close(): Promise<void> {
    this.cutAll();
    await new Promise<void>((resolve) => this.server.close(() => resolve()));
  }
}
