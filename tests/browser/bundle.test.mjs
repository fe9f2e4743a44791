// pkg/ as the npm package a page author installs: `npm pack`, the tarball installed into a
// scratch project, a page that imports "webguard" bundled with esbuild, the package's files
// hosted as the README says, and the page classifying and chatting in Chromium. Two ways to
// host them: next to an ESM bundle (guard.js finds them from import.meta.url, which is the
// bundle's), and in a folder of their own named by `assetsUrl` (an IIFE bundle, which has no
// import.meta).
import assert from "node:assert/strict";
import { execFileSync } from "node:child_process";
import { copyFileSync, createReadStream, existsSync, mkdirSync, mkdtempSync, readFileSync, rmSync, statSync, writeFileSync } from "node:fs";
import { createServer } from "node:http";
import { tmpdir } from "node:os";
import { extname, join, resolve, sep } from "node:path";
import { after, before, test } from "node:test";
import { fileURLToPath } from "node:url";
import { build } from "esbuild";
import { openBrowser } from "./browser.mjs";
import { models } from "./native.mjs";

const ROOT = fileURLToPath(new URL("../../", import.meta.url));
// What the README tells a page author to host from node_modules/webguard/.
const HOSTED = ["guard-worker.js", "webguard.js", "webguard_bg.wasm", "webguard_tune.js", "webguard_tune_bg.wasm", "all-MiniLM-L6-v2.int8.safetensors",
  "filter-heads.safetensors", "chat-probe.safetensors", "chat-safety-adapters.safetensors", "guard-thread.js", "webguard_threads.js", "webguard_threads_bg.wasm"];
// These pages are cross-origin isolated: with more than one core, the Guard runs the threaded
// module (and its helper worker) instead of webguard.js; with one, the reverse.
const SINGLE = ["webguard.js", "webguard_bg.wasm"];
const THREADED = ["guard-thread.js", "webguard_threads.js", "webguard_threads_bg.wasm"];
/** The hosted files a page that loaded the module it did must have asked for. */
const expected = (paths, prefix) => HOSTED.filter((f) => !(paths.includes(`${prefix}webguard_threads_bg.wasm`) ? SINGLE : THREADED).includes(f));
const TYPES = { ".html": "text/html", ".js": "text/javascript", ".json": "application/json", ".wasm": "application/wasm" };

/** A static server for `mounts` ({ "/prefix/": folder }), cross-origin isolated like serve.mjs. */
function serve(mounts) {
  const server = createServer((req, res) => {
    const path = decodeURIComponent(new URL(req.url, "http://x").pathname);
    const [prefix, dir] = Object.entries(mounts).find(([p]) => path.startsWith(p)) ?? [];
    const file = dir && resolve(dir, `.${sep}${path.slice(prefix.length)}`);
    if (!file?.startsWith(resolve(dir) + sep) || !existsSync(file) || !statSync(file).isFile()) {
      res.writeHead(404).end();
      return;
    }
    res.writeHead(200, {
      "Content-Type": TYPES[extname(file)] ?? "application/octet-stream",
      "Cross-Origin-Opener-Policy": "same-origin", "Cross-Origin-Embedder-Policy": "require-corp",
    });
    createReadStream(file).pipe(res);
  });
  return new Promise((ok) => server.listen(0, "127.0.0.1", () => ok(server)));
}

const PAGE = (setup, script) => `<!doctype html><meta charset="utf-8"><p id="status">loading…</p><script>${setup}</script>${script}`;
// The page's code, as an author writes it (no top-level await: an IIFE bundle cannot have
// one); the page says where the package's files are and whether to load the chat model.
const MAIN = `import { Guard } from "webguard";
const status = document.getElementById("status");
(async () => {
  const guard = await Guard.create({ filterUrl: "/models/all-MiniLM-L6-v2/", backend: "cpu", assetsUrl: window.ASSETS,
    chatUrl: window.CHAT ? "/models/SmolLM2-135M-Instruct.Q4_1.gguf" : undefined });
  const [bad, good] = await guard.classify(["You are a worthless fucking idiot.", "Have a nice day!"]);
  const chat = guard.hasChat && await guard.chat.completions.create({ messages: [{ role: "user", content: "What is the capital of France?" }], max_tokens: 16 });
  // Tuning loads the second module (webguard_tune.js) from the same folder.
  await guard.tuneFilter([{ text: "Snape kills Dumbledore.", label: "spoiler", value: true },
    { text: "I loved the book.", label: "spoiler", value: false }], { steps: 2 });
  window.result = { bad: bad.flagged, good: good.flagged, text: chat && chat.choices[0].message.content,
    tuned: guard.tuning && guard.labels.includes("spoiler") };
  status.textContent = "ready";
})().catch((e) => { status.textContent = e.name + ": " + e.message; });
`;

let scratch, server, origin, b, packed;
before(async () => {
  scratch = mkdtempSync(join(tmpdir(), "webguard-bundle-"));
  const [pack] = JSON.parse(execFileSync("npm", ["pack", "--json", "--pack-destination", scratch], { cwd: join(ROOT, "pkg"), encoding: "utf8" }));
  packed = pack.files.map((f) => f.path);
  const app = join(scratch, "app");
  mkdirSync(app);
  writeFileSync(join(app, "package.json"), JSON.stringify({ name: "page", private: true, type: "module" }));
  execFileSync("npm", ["install", "--offline", "--no-audit", "--no-fund", join(scratch, pack.filename)], { cwd: app, stdio: "pipe" });
  writeFileSync(join(app, "main.js"), MAIN);
  const installed = join(app, "node_modules", "webguard");
  // ESM: the bundle and the package's files in one folder.
  await build({ entryPoints: [join(app, "main.js")], bundle: true, format: "esm", outfile: join(scratch, "esm", "app.js"), logLevel: "error" });
  for (const f of HOSTED) copyFileSync(join(installed, f), join(scratch, "esm", f));
  writeFileSync(join(scratch, "esm", "index.html"), PAGE("window.CHAT = true", `<script type="module" src="app.js"></script>`));
  // IIFE: a classic script; the package's files in /webguard/, named by assetsUrl.
  await build({ entryPoints: [join(app, "main.js")], bundle: true, format: "iife", outfile: join(scratch, "iife", "app.js"), logLevel: "error" });
  mkdirSync(join(scratch, "webguard"));
  for (const f of HOSTED) copyFileSync(join(installed, f), join(scratch, "webguard", f));
  writeFileSync(join(scratch, "iife", "index.html"), PAGE(`window.ASSETS = "/webguard/"`, `<script src="app.js"></script>`));
  server = await serve({ "/esm/": join(scratch, "esm"), "/iife/": join(scratch, "iife"), "/webguard/": join(scratch, "webguard"), "/models/": models });
  origin = `http://127.0.0.1:${server.address().port}`;
  b = await openBrowser({ webgpu: false });
});
after(async () => {
  await b?.close();
  server?.close();
  if (scratch) rmSync(scratch, { recursive: true, force: true });
});

async function run(path) {
  await b.page.goto(origin + path);
  await b.page.waitForFunction(() => document.getElementById("status").textContent !== "loading…", null, { timeout: 180_000 });
  assert.equal(await b.page.textContent("#status"), "ready", b.logs.join("\n"));
  return b.page.evaluate(() => window.result);
}

test("the tarball has every file the package names and nothing of the build's", () => {
  const pkg = JSON.parse(readFileSync(join(ROOT, "pkg", "package.json"), "utf8"));
  assert.deepEqual([...packed].sort(), [...pkg.files, "package.json"].sort());
  for (const f of HOSTED) assert.ok(packed.includes(f), f);
});

test("an ESM bundle with the package's files beside it classifies and chats", async () => {
  const r = await run("/esm/index.html");
  console.log(`# ${JSON.stringify(r)}`);
  assert.deepEqual({ bad: r.bad, good: r.good, tuned: r.tuned }, { bad: true, good: false, tuned: true });
  assert.match(r.text, /Paris/);
  const paths = b.requests.map((u) => new URL(u).pathname);
  for (const f of expected(paths, "/esm/")) assert.ok(paths.includes(`/esm/${f}`), `no request for /esm/${f}`);
  assert.deepEqual(paths.filter((p) => p.includes("node_modules")), []);
});

test("an IIFE bundle finds the package's files through assetsUrl", async () => {
  const before = b.requests.length;
  const r = await run("/iife/index.html");
  console.log(`# ${JSON.stringify(r)}`);
  assert.deepEqual(r, { bad: true, good: false, text: false, tuned: true });
  const paths = b.requests.slice(before).map((u) => new URL(u).pathname);
  for (const f of expected(paths, "/webguard/").filter((f) => !["chat-probe.safetensors", "chat-safety-adapters.safetensors"].includes(f))) {
    assert.ok(paths.includes(`/webguard/${f}`), `no request for /webguard/${f}: ${paths.join(" ")}`);
  }
  assert.ok(!b.logs.some((l) => l.startsWith("pageerror")), b.logs.join("\n"));
});
