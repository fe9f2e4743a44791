// Issue 17, item 7: scripts/serve.mjs survives bad requests. It runs as its own process here
// (as `./build.sh serve` runs it), is sent requests that used to kill it or leak descriptors,
// and must answer or close each one, stay up, and hold no more open files than before.
import assert from "node:assert/strict";
import { spawn } from "node:child_process";
import { mkdirSync, readdirSync, rmSync, truncateSync, utimesSync, writeFileSync } from "node:fs";
import { brotliCompressSync } from "node:zlib";
import { connect } from "node:net";
import { join } from "node:path";
import { after, afterEach, before, beforeEach, test } from "node:test";
import { pathToFileURL } from "node:url";
import { models } from "./native.mjs";

const ROOT = new URL("../../", import.meta.url);
// Scratch files in the models folder the server serves as /models/ (ignored by git).
const SCRATCH = pathToFileURL(join(models, "serve-test/"));

let child;
let port;
before(() => {
  rmSync(SCRATCH, { recursive: true, force: true });
  // A folder whose index.html is itself a folder: stat says "exists", reading fails (EISDIR).
  mkdirSync(new URL("dir.js/index.html/", SCRATCH), { recursive: true });
});
after(() => rmSync(SCRATCH, { recursive: true, force: true }));
// A fresh server per test, so one failure does not hide the next.
beforeEach(async () => {
  child = spawn(process.execPath, ["scripts/serve.mjs", "--port", "0"], { cwd: ROOT, stdio: ["ignore", "pipe", "pipe"] });
  child.stderr.on("data", (d) => process.stdout.write(`# server stderr: ${d}`));
  port = await new Promise((ok, fail) => {
    let out = "";
    child.stdout.on("data", (d) => {
      out += d;
      const m = out.match(/http:\/\/127\.0\.0\.1:(\d+)/);
      if (m) ok(Number(m[1]));
    });
    child.once("exit", (code) => fail(new Error(`server exited (${code}) before listening: ${out}`)));
  });
});
afterEach(() => child?.kill());

const alive = () => child.exitCode === null && child.signalCode === null;
const openFds = () => readdirSync(`/proc/${child.pid}/fd`).length;

/** Sends `raw` on a new connection; resolves to what came back when the server closes it or
 *  the first response's head is in ({ head, closed }), or rejects after `ms`. */
function rawRequest(raw, { ms = 5000, whole = false } = {}) {
  return new Promise((ok, fail) => {
    const socket = connect(port, "127.0.0.1");
    let data = "";
    const timer = setTimeout(() => { socket.destroy(); fail(new Error(`no answer in ${ms} ms to ${JSON.stringify(raw.slice(0, 80))}`)); }, ms);
    const done = (closed) => { clearTimeout(timer); socket.destroy(); ok({ head: data.split("\r\n\r\n")[0], closed }); };
    socket.on("data", (d) => {
      data += d.toString("latin1");
      if (!whole && data.includes("\r\n\r\n")) done(false);
    });
    socket.on("close", () => done(true));
    socket.on("error", () => {});
    socket.write(raw);
  });
}
const get = (path, headers = "") => rawRequest(`GET ${path} HTTP/1.1\r\nHost: x\r\n${headers}\r\n`);

test("bad request paths are answered and the server stays up", async () => {
  const cases = {
    "//%5B": /^HTTP\/1.1 404/, // was: uncaught "Invalid URL", the process exited
    "/%": /^HTTP\/1.1 404/, // malformed escape
    "/www/%00.js": /^HTTP\/1.1 404/, // NUL: the file system refuses the name
    "/pkg/..%2f..%2f..%2fetc%2fpasswd": /^HTTP\/1.1 404/,
    "/models/../../../etc/passwd": /^HTTP\/1.1 404/,
    "*": /^HTTP\/1.1 400/,
    [`/${"a".repeat(6000)}`]: /^HTTP\/1.1 (404|431)/,
    "/models/serve-test/dir.js": /^HTTP\/1.1 404/, // was: EISDIR on the read stream, the process exited
  };
  for (const [path, expected] of Object.entries(cases)) {
    const { head } = await get(path);
    assert.match(head, expected, path);
    assert.ok(alive(), `the server exited after GET ${path}`);
  }
  assert.match((await rawRequest("NONSENSE\r\n\r\n")).head, /^HTTP\/1.1 400/);
  assert.match((await rawRequest("POST /www/index.html HTTP/1.1\r\nHost: x\r\nContent-Length: 0\r\n\r\n")).head, /^HTTP\/1.1 405/);
  assert.ok(alive());
});

test("every response says nosniff; files still serve", async () => {
  const { head } = await get("/www/index.html");
  assert.match(head, /^HTTP\/1.1 200/);
  assert.match(head, /\r\nX-Content-Type-Options: nosniff/i);
  assert.match(head, /\r\nContent-Type: text\/html/i);
  assert.match(head, /\r\nCross-Origin-Embedder-Policy: require-corp/i);
  assert.match((await get("/nope")).head, /\r\nX-Content-Type-Options: nosniff/i);
  const res = await fetch(`http://127.0.0.1:${port}/pkg/package.json`);
  assert.equal(res.status, 200);
  assert.equal(JSON.parse(await res.text()).name !== undefined, true);
});

test("aborted downloads close their descriptors", async () => {
  writeFileSync(new URL("big.bin", SCRATCH), Buffer.alloc(32 << 20, 7));
  const before = openFds();
  for (let i = 0; i < 30; i++) {
    // Read the head and a little of the body, then hang up.
    await rawRequest("GET /models/serve-test/big.bin HTTP/1.1\r\nHost: x\r\n\r\n");
  }
  // Give the server a moment to notice the closed sockets.
  let now = openFds();
  for (let i = 0; i < 50 && now > before + 2; i++) {
    await new Promise((r) => setTimeout(r, 100));
    now = openFds();
  }
  console.log(`# open descriptors: ${before} before, ${now} after 30 aborted downloads`);
  assert.ok(now <= before + 2, `${now - before} descriptors leaked`);
  assert.ok(alive());
});

test("a file that shrinks mid-download: the connection is closed, not left waiting", async () => {
  const file = new URL("shrink.bin", SCRATCH);
  writeFileSync(file, Buffer.alloc(64 << 20, 1));
  const closed = new Promise((ok, fail) => {
    const socket = connect(port, "127.0.0.1");
    let bytes = 0;
    let cut = false;
    const timer = setTimeout(() => { socket.destroy(); fail(new Error(`not closed; ${bytes} bytes read`)); }, 10_000);
    socket.on("data", (d) => {
      bytes += d.length;
      if (!cut) {
        cut = true;
        // Slow down so the server is mid-file when it shrinks.
        socket.pause();
        truncateSync(file, 1 << 20);
        setTimeout(() => socket.resume(), 200);
      }
    });
    socket.on("close", () => { clearTimeout(timer); ok(bytes); });
    socket.on("error", () => {});
    socket.write("GET /models/serve-test/shrink.bin HTTP/1.1\r\nHost: x\r\n\r\n");
  });
  const bytes = await closed;
  assert.ok(bytes < 64 << 20, `${bytes} bytes`);
  assert.ok(alive());
});

test("a file's brotli copy is sent to clients that accept brotli, and only while it is not stale", async () => {
  const dir = new URL("br/", SCRATCH);
  mkdirSync(dir, { recursive: true });
  const text = "webguard ".repeat(1000);
  writeFileSync(new URL("a.js", dir), text);
  const packed = brotliCompressSync(Buffer.from(text));
  writeFileSync(new URL("a.js.br", dir), packed);
  const length = (head) => Number(head.match(/content-length: (\d+)/i)?.[1]);
  let { head } = await get("/models/serve-test/br/a.js", "Accept-Encoding: gzip, deflate, br\r\n");
  assert.match(head, /content-encoding: br/i);
  assert.match(head, /content-type: text\/javascript/i);
  assert.equal(length(head), packed.length);
  ({ head } = await get("/models/serve-test/br/a.js", "Accept-Encoding: gzip\r\n"));
  assert.doesNotMatch(head, /content-encoding/i);
  assert.equal(length(head), text.length);
  // The file changed after its copy was made: the copy is not sent.
  const later = new Date(Date.now() + 5000);
  utimesSync(new URL("a.js", dir), later, later);
  ({ head } = await get("/models/serve-test/br/a.js", "Accept-Encoding: br\r\n"));
  assert.doesNotMatch(head, /content-encoding/i);
  assert.equal(length(head), text.length);
});
