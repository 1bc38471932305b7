// A tiny static file server for the demo page (no dependencies): serves this folder, never
// anything above it, with no caching. Used by `scripts/dev.sh` and the browser tests.
//
//   node web/serve.mjs [--port 8789] [--host 127.0.0.1]
//
// As a module: `startStaticServer({ port: 0, config })` — `config`, when given, is served as
// `/config.js` instead of the file (so tests never touch the working tree).
import { createServer } from 'node:http';
import { readFile, stat } from 'node:fs/promises';
import path from 'node:path';
import { fileURLToPath } from 'node:url';

export const WEB_ROOT = path.dirname(fileURLToPath(import.meta.url));

const TYPES = {
  '.html': 'text/html; charset=utf-8',
  '.js': 'text/javascript; charset=utf-8',
  '.mjs': 'text/javascript; charset=utf-8',
  '.css': 'text/css; charset=utf-8',
  '.json': 'application/json',
  '.svg': 'image/svg+xml',
  '.png': 'image/png',
  '.ico': 'image/x-icon',
  '.md': 'text/plain; charset=utf-8',
};

/** The page's configuration as the ES module `/config.js`. */
export function configModule(config) {
  return `// Written by scripts/dev.sh; query parameters override it.\nexport default ${JSON.stringify(config, null, 2)};\n`;
}

/**
 * Serves `root` on `host:port` (port 0 picks a free one).
 * @returns {Promise<{url: string, server: import('node:http').Server, close: () => Promise<void>}>}
 */
export async function startStaticServer({ root = WEB_ROOT, host = '127.0.0.1', port = 0, config } = {}) {
  const base = path.resolve(root);
  const server = createServer(async (req, res) => {
    const send = (status, body, type = 'text/plain; charset=utf-8') => {
      res.writeHead(status, { 'content-type': type, 'cache-control': 'no-store', 'x-content-type-options': 'nosniff' });
      res.end(req.method === 'HEAD' ? undefined : body);
    };
    if (req.method !== 'GET' && req.method !== 'HEAD') return send(405, 'method not allowed\n');
    let pathname;
    try {
      pathname = decodeURIComponent(new URL(req.url, 'http://x').pathname);
    } catch {
      return send(400, 'bad path\n');
    }
    if (pathname.endsWith('/')) pathname += 'index.html';
    if (pathname === '/config.js' && config !== undefined) {
      return send(200, configModule(config), TYPES['.js']);
    }
    const file = path.resolve(base, `.${pathname}`);
    if (file !== base && !file.startsWith(base + path.sep)) return send(403, 'forbidden\n');
    if (path.basename(file).startsWith('.')) return send(404, 'not found\n');
    try {
      if (!(await stat(file)).isFile()) return send(404, 'not found\n');
      const type = TYPES[path.extname(file)] ?? 'application/octet-stream';
      return send(200, await readFile(file), type);
    } catch {
      if (pathname === '/config.js') return send(200, configModule({}), TYPES['.js']);
      return send(404, 'not found\n');
    }
  });
  await new Promise((resolve, reject) => {
    server.once('error', reject);
    server.listen(port, host, resolve);
  });
  const { port: actual } = server.address();
  return {
    url: `http://${host}:${actual}`,
    server,
    close: () => new Promise((resolve) => {
      server.closeAllConnections?.();
      server.close(() => resolve());
    }),
  };
}

if (process.argv[1] && path.resolve(process.argv[1]) === fileURLToPath(import.meta.url)) {
  const arg = (name, fallback) => {
    const i = process.argv.indexOf(`--${name}`);
    return i > 0 ? process.argv[i + 1] : fallback;
  };
  const { url, close } = await startStaticServer({
    host: arg('host', '127.0.0.1'),
    port: Number(arg('port', '8789')),
  });
  console.log(`serving ${WEB_ROOT} on ${url}`);
  const stop = () => close().then(() => process.exit(0));
  process.on('SIGINT', stop);
  process.on('SIGTERM', stop);
}
