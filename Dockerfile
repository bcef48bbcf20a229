# syntax=docker/dockerfile:1
# Build stage: the full image has python3, make and g++ for better-sqlite3's native build.
FROM node:20-bookworm AS build
WORKDIR /app
# The client package is an npm workspace the server depends on (its wire module is shared), and
# `prepare` builds on install, so the sources come before `npm ci`.
COPY package.json package-lock.json tsconfig.json tsconfig.build.json ./
COPY packages ./packages
COPY src ./src
COPY examples ./examples
RUN npm ci && npm run build && npm prune --omit=dev

FROM node:20-bookworm-slim
ENV NODE_ENV=production \
    SEQGATE_HOST=0.0.0.0 \
    SEQGATE_PORT=8787 \
    SEQGATE_DB_PATH=/data/seqgate.db \
    SEQGATE_LOG_FORMAT=json
WORKDIR /app
COPY --from=build /app/package.json ./
COPY --from=build /app/node_modules ./node_modules
# node_modules/@seqgate/client links to the workspace folder.
COPY --from=build /app/packages/client/package.json ./packages/client/package.json
COPY --from=build /app/packages/client/dist ./packages/client/dist
COPY --from=build /app/dist/src ./dist/src
RUN mkdir -p /data && chown node:node /data
USER node
VOLUME ["/data"]
EXPOSE 8787
HEALTHCHECK --interval=10s --timeout=3s --start-period=10s --retries=3 \
  CMD ["node", "-e", "fetch('http://127.0.0.1:8787/healthz').then(r => process.exit(r.ok ? 0 : 1), () => process.exit(1))"]
# SIGTERM from `docker stop` triggers the orderly shutdown: answer what was read, close with 1001.
STOPSIGNAL SIGTERM
# The young generation's size: see README.md, "Node flags". package.json's start script uses the same.
CMD ["node", "--max-semi-space-size=64", "dist/src/cli.js"]
