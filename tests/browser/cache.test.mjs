// Issue 17, item 5: the model cache checks what it serves. Every model file fetched from a URL
// must have the sha256 of the worker's manifest (the hashes scripts/fetch-models.sh checks,
// and the shipped heads and probe); a corrupt or stale cached copy is evicted and downloaded
// again; a download that does not match is a ModelFileError and is never cached; a gzipped
// download is not mistaken for a short one.
import assert from "node:assert/strict";
import { createHash } from "node:crypto";
import { readFileSync } from "node:fs";
import { createServer } from "node:http";
import { join } from "node:path";
import { gzipSync } from "node:zlib";
import { test } from "node:test";
import { pageUrl, usePage } from "./browser.mjs";
import { models as modelsDir } from "./native.mjs";

const ROOT = new URL("../../", import.meta.url);
const sha256 = (path) => createHash("sha256").update(readFileSync(new URL(path, ROOT))).digest("hex");

test("the worker's manifest is fetch-models.sh's hashes and the shipped files'", () => {
  const worker = readFileSync(new URL("pkg/guard-worker.js", ROOT), "utf8");
  const manifest = Object.fromEntries([...worker.matchAll(/^ {2}(\w+): "([0-9a-f]{64})", \/\/ (\S+)$/gm)].map((m) => [m[1], { hash: m[2], file: m[3] }]));
  assert.deepEqual(Object.keys(manifest).sort(), ["chat", "chatProbe", "config", "heads", "model", "safetyAdapters", "tokenizer"]);
  const script = readFileSync(new URL("scripts/fetch-models.sh", ROOT), "utf8");
  const fetched = Object.fromEntries([...script.matchAll(/^\s+\[([^\]]+)\]=([0-9a-f]{64})$/gm)].map((m) => [m[1], m[2]]));
  for (const key of ["tokenizer", "config", "model", "chat"]) {
    assert.equal(manifest[key].hash, fetched[manifest[key].file], `${key}: ${manifest[key].file}`);
  }
  assert.equal(manifest.heads.hash, sha256("assets/filter-heads.safetensors"));
  assert.equal(manifest.chatProbe.hash, sha256("assets/chat-probe.safetensors"));
  assert.equal(manifest.safetyAdapters.hash, sha256("assets/chat-safety-adapters.safetensors"));
});

let serve = null; // (url) => a route.fulfill argument, or null for the real file
const b = usePage("hardening", {
  webgpu: false,
  setup: (b) => b.page.context().route("**/all-MiniLM-L6-v2/config.json", async (route) => {
    const replaced = serve?.(route.request().url());
    if (replaced) await route.fulfill(replaced);
    else await route.fallback();
  }),
});

const CONFIG = readFileSync(join(modelsDir, "all-MiniLM-L6-v2/config.json"));
const configRequests = (from) => b.requests.slice(from).filter((u) => u.endsWith("/all-MiniLM-L6-v2/config.json")).length;
const headers = { "content-type": "application/json", "cross-origin-resource-policy": "same-origin" };

/** Creates a filter-only Guard in the page (and disposes it): "ok" or the error. */
const create = (options = {}) => b.page.evaluate(async (options) => {
  const r = await settle(Guard.create({ filterUrl: models.filterUrl, backend: "cpu", ...options }).then((g) => {
    g.dispose();
    return "ok";
  }), 120_000);
  return r.ok ? "ok" : r.error;
}, options);

/** The cached copy of the encoder's config, as text (null when none). */
const cachedConfig = () => b.page.evaluate(async () => {
  const cache = await caches.open("webguard-models-v1");
  const r = await cache.match(new URL(`${models.filterUrl}config.json`, location.href).href);
  return r ? r.text() : null;
});
const putConfig = (text) => b.page.evaluate(async (text) => {
  const cache = await caches.open("webguard-models-v1");
  await cache.put(new URL(`${models.filterUrl}config.json`, location.href).href, new Response(text));
}, text);

test("a corrupt cached copy is evicted and downloaded again", async () => {
  assert.equal(await create(), "ok");
  assert.equal(await cachedConfig(), CONFIG.toString());
  await putConfig("{ not json");
  const from = b.requests.length;
  assert.equal(await create(), "ok");
  assert.equal(configRequests(from), 1);
  assert.equal(await cachedConfig(), CONFIG.toString());
});

test("a stale cached copy (valid, but not the manifest's file) is replaced too", async () => {
  // Same JSON, other bytes: it would load, and it is not the file the manifest names.
  await putConfig(CONFIG.toString().replace(/\n/g, "\n  "));
  const from = b.requests.length;
  assert.equal(await create(), "ok");
  assert.equal(configRequests(from), 1);
  assert.equal(await cachedConfig(), CONFIG.toString());
});

test("a download that is not the manifest's file is a ModelFileError and is not cached", async () => {
  await b.page.evaluate(() => caches.delete("webguard-models-v1"));
  serve = () => ({ status: 200, body: `${CONFIG.toString()}\n`, headers });
  try {
    const error = await create();
    assert.match(error, /^ModelFileError: the filter config could not be loaded: .*config\.json is not the file expected \(sha256 [0-9a-f]{64}, expected 953f9c0d/);
    assert.equal(await cachedConfig(), null);
    // A page that serves its own files says so: `integrity` with its hash, or off.
    const own = createHash("sha256").update(`${CONFIG.toString()}\n`).digest("hex");
    assert.equal(await create({ integrity: { config: own } }), "ok");
    assert.equal(await create({ integrity: false }), "ok");
    assert.match(await create({ integrity: { config: "abc" } }), /^TypeError: integrity.config: expected a sha256/);
    assert.match(await create({ integrity: { gguf: null } }), /^TypeError: integrity: unknown option "gguf"/);
  } finally {
    serve = null;
  }
});

test("a gzipped download is not mistaken for a short one (Content-Length counts compressed bytes)", async () => {
  // The page from a small proxy in front of the test server that gzips the encoder's config
  // (the browser decodes it; the route API cannot send encoded bodies).
  const gz = gzipSync(CONFIG);
  const proxy = createServer(async (req, res) => {
    const upstream = await fetch(b.url + req.url);
    const head = Object.fromEntries([...upstream.headers].filter(([k]) => !["content-encoding", "content-length", "transfer-encoding"].includes(k)));
    if (req.url.endsWith("/all-MiniLM-L6-v2/config.json")) {
      res.writeHead(200, { ...head, "content-encoding": "gzip", "content-length": gz.length }).end(gz);
    } else {
      const body = Buffer.from(await upstream.arrayBuffer());
      res.writeHead(upstream.status, { ...head, "content-length": body.length }).end(body);
    }
  });
  await new Promise((ok) => proxy.listen(0, "127.0.0.1", ok));
  try {
    await b.page.goto(`http://127.0.0.1:${proxy.address().port}${pageUrl("hardening")}`);
    await b.page.waitForFunction(() => document.getElementById("status")?.textContent === "ready");
    assert.equal(await create(), "ok");
    assert.equal(await cachedConfig(), CONFIG.toString());
  } finally {
    proxy.close();
  }
  assert.ok(!b.logs.some((l) => l.startsWith("pageerror")), b.logs.join("\n"));
});
