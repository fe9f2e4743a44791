// A small static server for the demo and the browser tests: 127.0.0.1 only, with the
// COOP/COEP headers that give pages cross-origin isolation (SharedArrayBuffer, threads).
//
//   node scripts/serve.mjs [--port 8080]      serves www/, pkg/ and models/ from the repo root
//
// Only a few top-level folders are served, and paths are resolved and checked to stay inside
// them, so nothing else on disk is reachable.
import { createReadStream, statSync } from "node:fs";
import { createServer } from "node:http";
import { extname, join, normalize, resolve, sep } from "node:path";
import { fileURLToPath } from "node:url";

const ROOT = resolve(fileURLToPath(new URL("..", import.meta.url)));
// wllama (npm, with its own wasm) is served for the browser benchmark's side-by-side peer.
const SERVED = ["www", "pkg", "models", "assets", "tests/browser/pages", "tests/reference", "tests/data/tune",
  "tests/browser/node_modules/@wllama/wllama/esm"];
const TYPES = {
  ".html": "text/html; charset=utf-8",
  ".js": "text/javascript; charset=utf-8",
  ".mjs": "text/javascript; charset=utf-8",
  ".css": "text/css; charset=utf-8",
  ".json": "application/json; charset=utf-8",
  ".wasm": "application/wasm",
  ".png": "image/png",
  ".svg": "image/svg+xml",
  ".ts": "text/plain; charset=utf-8",
};

function resolvePath(urlPath) {
  let rel;
  try {
    rel = normalize(decodeURIComponent(urlPath)).replace(/^[/\\]+/, "");
  } catch {
    return null;
  }
  for (const dir of SERVED) {
    const base = join(ROOT, dir);
    const full = resolve(ROOT, rel);
    if (full === base || full.startsWith(base + sep)) return full;
  }
  return null;
}

/** Starts the server; resolves to { server, url }. Port 0 picks a free port. */
export function startServer({ port = 8080, host = "127.0.0.1", log = false } = {}) {
  const server = createServer((req, res) => {
    const url = new URL(req.url, "http://localhost");
    res.setHeader("Cross-Origin-Opener-Policy", "same-origin");
    res.setHeader("Cross-Origin-Embedder-Policy", "require-corp");
    res.setHeader("Cross-Origin-Resource-Policy", "same-origin");
    res.setHeader("Cache-Control", "no-cache");
    if (url.pathname === "/") {
      res.writeHead(302, { Location: "/www/index.html" }).end();
      return;
    }
    let file = resolvePath(url.pathname);
    let stat;
    try {
      stat = file && statSync(file);
      if (stat && stat.isDirectory()) {
        file = join(file, "index.html");
        stat = statSync(file);
      }
    } catch {
      stat = null;
    }
    if (log) console.log(`${req.method} ${url.pathname} ${stat ? 200 : 404}`);
    if (!stat || req.method !== "GET" && req.method !== "HEAD") {
      res.writeHead(stat ? 405 : 404, { "Content-Type": "text/plain" }).end(stat ? "method not allowed" : "not found");
      return;
    }
    res.writeHead(200, {
      "Content-Type": TYPES[extname(file)] ?? "application/octet-stream",
      "Content-Length": stat.size,
    });
    if (req.method === "HEAD") res.end();
    else createReadStream(file).pipe(res);
  });
  return new Promise((ok, fail) => {
    server.once("error", fail);
    server.listen(port, host, () => {
      const { port: actual } = server.address();
      ok({ server, url: `http://${host}:${actual}` });
    });
  });
}

if (process.argv[1] && resolve(process.argv[1]) === fileURLToPath(import.meta.url)) {
  const i = process.argv.indexOf("--port");
  const port = i > 0 ? Number(process.argv[i + 1]) : 8080;
  const { url } = await startServer({ port, log: true });
  console.log(`webguard demo: ${url}/www/index.html  (Ctrl-C to stop)`);
}
