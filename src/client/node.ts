/** `seqgate/client/node`: re-exports `@seqgate/client/node` (see src/client/index.ts). */
export * from '@seqgate/client/node';
