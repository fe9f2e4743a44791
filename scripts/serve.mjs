// A small static server for the demo and the browser tests: 127.0.0.1 only, with the
// COOP/COEP headers that give pages cross-origin isolation (SharedArrayBuffer, threads).
//
//   node scripts/serve.mjs [--port 8080]      serves www/, pkg/ and models/ from the repo root
//                                             (models/ from $WEBGUARD_MODELS when it is set)
//
// Only a few top-level folders are served, and paths are resolved and checked to stay inside
// them, so nothing else on disk is reachable.
import { closeSync, createReadStream, fstatSync, openSync } from "node:fs";
import { createServer } from "node:http";
import { extname, join, normalize, resolve, sep } from "node:path";
import { fileURLToPath } from "node:url";

const ROOT = resolve(fileURLToPath(new URL("..", import.meta.url)));
// wllama (npm, with its own wasm) is served for the browser benchmark's side-by-side peer.
const SERVED = ["www", "pkg", "models", "assets", "tests/browser/pages", "tests/reference", "tests/data/tune",
  "tests/browser/node_modules/@wllama/wllama/esm"];
// /models/ is the folder the models were fetched to: $WEBGUARD_MODELS, as in build.sh and the
// command-line tool, or the checkout's models/.
const MODELS = resolve(process.env.WEBGUARD_MODELS ?? join(ROOT, "models"));
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
    const base = dir === "models" ? MODELS : join(ROOT, dir);
    // The rest of the path inside this folder (`rel` is normalised: no `..` but leading ones).
    const inside = rel === dir ? "" : rel.startsWith(`${dir}${sep}`) ? rel.slice(dir.length + 1) : null;
    if (inside === null) continue;
    const full = resolve(base, inside);
    if (full === base || full.startsWith(base + sep)) return full;
  }
  return null;
}

/** Opens `file` (or its index.html when it is a folder): `{ fd, size, file }`, or null when
 * there is no such file. The descriptor is opened before its size is read, so a file swapped
 * for a folder or removed between the two cannot make the read stream fail later. */
function openFile(file) {
  for (const candidate of [file, join(file, "index.html")]) {
    let fd;
    try {
      fd = openSync(candidate, "r");
      const stat = fstatSync(fd);
      if (stat.isFile()) return { fd, size: stat.size, file: candidate };
    } catch {
      // missing, unreadable, or a name the file system refuses (a NUL byte): not found
    }
    if (fd !== undefined) closeSync(fd);
  }
  return null;
}

/** `opened`, or its brotli copy (`FILE.br`, written by `scripts/sizes.mjs --precompress` in
 * `./build.sh build`) when the client accepts brotli and the copy is at least as new: the
 * wasm modules are 2.36 MB on the wire that way instead of 3.8 MB gzipped (17 MB raw). */
function brotliCopy(req, opened) {
  if (!/\bbr\b/.test(String(req.headers["accept-encoding"] ?? ""))) return null;
  const copy = openFile(`${opened.file}.br`);
  if (!copy) return null;
  if (copy.file !== `${opened.file}.br` || fstatSync(copy.fd).mtimeMs < fstatSync(opened.fd).mtimeMs) {
    closeSync(copy.fd);
    return null;
  }
  return copy;
}

/** Sends one file; every way it can end (done, short read, read error, client gone) ends the
 * response and closes the descriptor. */
function sendFile(req, res, opened) {
  const brotli = brotliCopy(req, opened);
  if (brotli) closeSync(opened.fd);
  const { fd, size } = brotli ?? opened;
  const file = opened.file;
  res.writeHead(200, {
    "Content-Type": TYPES[extname(file)] ?? "application/octet-stream",
    "Content-Length": size,
    ...(brotli ? { "Content-Encoding": "br" } : {}),
    Vary: "Accept-Encoding",
  });
  if (req.method === "HEAD" || size === 0) {
    closeSync(fd);
    res.end();
    return;
  }
  const stream = createReadStream(null, { fd, start: 0, end: size - 1 }); // closes fd when done or destroyed
  // The client went away (an aborted download): stop reading, which closes the descriptor.
  res.on("close", () => stream.destroy());
  // The headers are out, so a failed read can only close the connection.
  stream.on("error", () => res.destroy());
  // A file that shrank mid-request ends early: close rather than leave the client waiting
  // for the bytes Content-Length promised.
  stream.on("end", () => { if (stream.bytesRead !== size) res.destroy(); });
  stream.pipe(res);
}

function handle(req, res, log) {
  res.setHeader("Cross-Origin-Opener-Policy", "same-origin");
  res.setHeader("Cross-Origin-Embedder-Policy", "require-corp");
  res.setHeader("Cross-Origin-Resource-Policy", "same-origin");
  res.setHeader("X-Content-Type-Options", "nosniff");
  res.setHeader("Cache-Control", "no-cache");
  // The path as sent, without parsing it as a URL: "//%5B" is a valid request path but not a
  // valid URL relative to anything (new URL throws "Invalid URL").
  const path = String(req.url ?? "").split(/[?#]/)[0];
  if (log) console.log(`${req.method} ${path}`);
  if (!path.startsWith("/")) {
    res.writeHead(400, { "Content-Type": "text/plain" }).end("bad request");
    return;
  }
  if (path === "/") {
    res.writeHead(302, { Location: "/www/index.html" }).end();
    return;
  }
  const full = resolvePath(path);
  const opened = full && openFile(full);
  if (!opened) {
    res.writeHead(404, { "Content-Type": "text/plain" }).end("not found");
    return;
  }
  if (req.method !== "GET" && req.method !== "HEAD") {
    closeSync(opened.fd);
    res.writeHead(405, { "Content-Type": "text/plain", Allow: "GET, HEAD" }).end("method not allowed");
    return;
  }
  sendFile(req, res, opened);
}

/** Starts the server; resolves to { server, url }. Port 0 picks a free port. */
export function startServer({ port = 8080, host = "127.0.0.1", log = false } = {}) {
  const server = createServer((req, res) => {
    // Nothing a request does may stop the server: anything unforeseen is a 500 (or, once
    // the headers are out, a closed connection).
    try {
      handle(req, res, log);
    } catch (e) {
      console.error(`serve.mjs: ${req.method} ${req.url}: ${e?.stack ?? e}`);
      if (res.headersSent) res.destroy();
      else res.writeHead(500, { "Content-Type": "text/plain" }).end("internal error");
    }
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
