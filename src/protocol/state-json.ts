import { Unpackr } from 'msgpackr';

/**
 * A stored state (canonical msgpack) as JSON text, for the HTTP API and the changefeed's JSON
 * forms. Integers beyond 2^53 keep their digits. Undefined when JSON cannot carry the state
 * faithfully (binary, NaN or infinities, integer map keys): a state is never altered silently.
 */

const stateReader = new Unpackr({ useRecords: false, mapsAsObjects: false, int64AsType: 'auto' as 'bigint' });

export function stateJsonText(state: Buffer): string | undefined {
  return valueToJson(stateReader.unpack(state));
}

function valueToJson(value: unknown): string | undefined {
  if (typeof value === 'number' && !Number.isFinite(value)) return undefined;
  if (value === null || typeof value === 'boolean' || typeof value === 'number' || typeof value === 'string') {
    return JSON.stringify(value);
  }
  if (typeof value === 'bigint') return value.toString();
  if (value instanceof Uint8Array) return undefined;
  if (Array.isArray(value)) {
    const items = value.map(valueToJson);
    return items.includes(undefined) ? undefined : `[${items.join(',')}]`;
  }
  if (value instanceof Map) {
    const out: string[] = [];
    for (const [k, v] of value) {
      const text = valueToJson(v);
      if (text === undefined || typeof k !== 'string') return undefined;
      out.push(`${JSON.stringify(k)}:${text}`);
    }
    return `{${out.join(',')}}`;
  }
  return JSON.stringify(value);
}
