import { describe, expect, it } from 'vitest';
import { ERRORS, errorBody, type ErrorCode } from '../src/errors.js';

describe('errorBody', () => {
  it.each(Object.keys(ERRORS) as ErrorCode[])("builds %s with the registry's retryable flag, fixed fields first", (code) => {
    const body = errorBody(code, 'what happened', { head: { epoch: 1, seq: 2 } });
    expect(body.retryable).toBe(ERRORS[code].retryable);
    // Vectors compare bytes, so the field order is part of the contract.
    expect(Object.keys(body)).toEqual(['code', 'message', 'retryable', 'head']);
  });
});
