/**
 * A change as a reader decodes it from the JSON change feed (protocol/HTTP.md), typed the way a
 * client written from the documents would type it, not with the server's own types: what the
 * changefeed tests read and compare.
 */
export interface JsonChange {
  offset: string;
  key: string;
  version: number;
  deleted: boolean;
  state: unknown;
  origin: { stream?: string; epoch?: number; seq?: number; route?: string };
  committedAt: number;
}

/** The log position an offset names: its zero-padded decimal digits before the incarnation tag. */
export function offsetPosition(offset: string): number {
  return Number(offset.slice(0, 16));
}
