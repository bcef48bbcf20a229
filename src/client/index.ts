/**
 * `seqgate/client` is kept for programs written before the client became its own package: it
 * re-exports `@seqgate/client`. New code should depend on `@seqgate/client` alone (a web or React
 * Native app then installs no server dependency); see docs/CLIENT.md, "Packages".
 */
export * from '@seqgate/client';
