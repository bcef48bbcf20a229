import { utf8Length } from './utf8.js';

/** Names may not hold C0 controls or DEL (PROTOCOL.md §4): they end up in logs, metrics and paths. */
function hasControl(s: string): boolean {
  for (let i = 0; i < s.length; i++) {
    const c = s.charCodeAt(i);
    if (c < 0x20 || c === 0x7f) return true;
  }
  return false;
}

export interface NameProblem {
  readonly code: 'INVALID_FIELD' | 'LIMIT_EXCEEDED';
  readonly message: string;
}

/** Why a stream or document key would be refused (PROTOCOL.md §4), or null. */
export function nameProblem(value: unknown, field: string, maxBytes: number): NameProblem | null {
  if (typeof value !== 'string') return { code: 'INVALID_FIELD', message: `${field} must be a string` };
  if (value.length === 0) return { code: 'INVALID_FIELD', message: `${field} must not be empty` };
  // A string of n UTF-16 units has at most 3n UTF-8 bytes: most names need no count.
  if (value.length * 3 > maxBytes && utf8Length(value) > maxBytes) return { code: 'LIMIT_EXCEEDED', message: `${field} exceeds ${maxBytes} UTF-8 bytes` };
  if (hasControl(value)) return { code: 'INVALID_FIELD', message: `${field} must not contain control characters` };
  return null;
}
