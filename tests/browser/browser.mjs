// Shared set-up for the browser tests: the project's server plus Debian's Chromium, headless,
// with SwiftShader WebGPU. Every request the page makes is recorded, to prove none leaves
// 127.0.0.1.
import { mkdtempSync, readFileSync, rmSync } from "node:fs";
import { tmpdir } from "node:os";
import { join } from "node:path";
import { after, before } from "node:test";
import { chromium } from "playwright-core";
import { startServer } from "../../scripts/serve.mjs";

export const CHROMIUM = process.env.CHROMIUM ?? "/usr/bin/chromium";

/** WEBGUARD_PKG_DIR=dir serves pkg/guard.js and pkg/guard-worker.js from `dir` instead (e.g.
 *  copies from an older commit: how a test is shown to fail before a fix). */
export function pkgOverride(file) {
  const dir = process.env.WEBGUARD_PKG_DIR;
  return dir ? readFileSync(join(dir, file), "utf8") : null;
}

export async function openBrowser({ webgpu = true } = {}) {
  const { server, url } = await startServer({ port: 0 });
  const profile = mkdtempSync(join(tmpdir(), "webguard-chromium-"));
  const args = [
    "--headless=new", "--no-sandbox", "--no-first-run", "--disable-background-networking",
    "--disable-component-update", "--disable-sync", "--disable-quic",
  ];
  if (webgpu) args.push("--enable-unsafe-webgpu");
  const context = await chromium.launchPersistentContext(profile, {
    executablePath: CHROMIUM, headless: true, args,
  });
  for (const file of process.env.WEBGUARD_PKG_DIR ? ["guard.js", "guard-worker.js"] : []) {
    await context.route(`**/pkg/${file}`, async (route) => route.fulfill({ response: await route.fetch(), body: pkgOverride(file) }));
  }
  // WEBGUARD_APP_JS=path serves another www/app.js (how a demo test is shown to fail on a
  // demo without the fix).
  if (process.env.WEBGUARD_APP_JS) {
    const body = readFileSync(process.env.WEBGUARD_APP_JS, "utf8");
    await context.route("**/www/app.js", (r) => r.fulfill({ body, contentType: "text/javascript", headers: { "cross-origin-resource-policy": "same-origin" } }));
  }
  const requests = [];
  context.on("request", (r) => requests.push(r.url()));
  const page = context.pages()[0] ?? (await context.newPage());
  const logs = [];
  page.on("console", (m) => logs.push(`${m.type()}: ${m.text()}`));
  page.on("pageerror", (e) => logs.push(`pageerror: ${e.message}`));
  return {
    url, page, requests, logs,
    async close() {
      await context.close();
      server.close();
      rmSync(profile, { recursive: true, force: true });
    },
  };
}

/** The test harness's address for `page` (pages/harness.html imports pages/PAGE.mjs). */
export const pageUrl = (page) => `/tests/browser/pages/harness.html?page=${page}`;

/** Serves the test harness from now on without COOP/COEP, so the pages `load` opens are not
 *  cross-origin isolated (no SharedArrayBuffer: no threads, no shared abort flag). */
export async function withoutIsolation(b) {
  await b.page.context().route("**/tests/browser/pages/harness.html*", async (route) => {
    const response = await route.fetch();
    const headers = { ...response.headers() };
    delete headers["cross-origin-opener-policy"];
    delete headers["cross-origin-embedder-policy"];
    await route.fulfill({ response, headers });
  });
}

/** Opens a test page ("chat": pages/chat.mjs in the harness) or any other path starting with
 *  "/", and waits until the page says "ready" (or fails with the page's own words). */
export async function load(b, page) {
  const moved = page.match(/^\/tests\/browser\/pages\/([a-z0-9-]+)\.html$/);
  if (moved && moved[1] !== "harness") throw new Error(`${page} is now pages/${moved[1]}.mjs in the harness: load(b, "${moved[1]}")`);
  const path = page.startsWith("/") ? page : pageUrl(page);
  await b.page.goto(b.url + path);
  await b.page.waitForFunction(() => document.getElementById("status")?.textContent !== "loading…", null, { timeout: 120_000 });
  const status = await b.page.textContent("#status");
  if (status !== "ready") throw new Error(`${path}: ${status}\n${b.logs.join("\n")}`);
}

/** A test file's browser: opened (WebGPU on unless `webgpu: false`) before its tests, `setup(b)`
 *  run (routes, exposed functions) before `page` loads (none when `page` is null), closed after
 *  the tests. Returns the object `openBrowser` gives, filled in once the file's `before` hooks
 *  run. */
export function usePage(page, { webgpu = true, setup } = {}) {
  const b = {};
  before(async () => {
    Object.assign(b, await openBrowser({ webgpu }));
    await setup?.(b);
    if (page) await load(b, page);
  });
  after(async () => {
    await b.close?.();
  });
  return b;
}
