// www/examples/comment-box.html, the moderation-only embed: it loads the filter alone (no
// request for the chat model or its probe), shows a bar per label, refuses to post an
// offensive comment and posts a benign one.
import assert from "node:assert/strict";
import { after, before, test } from "node:test";
import { openBrowser } from "./browser.mjs";

let b;
before(async () => {
  b = await openBrowser({ webgpu: false });
});
after(async () => {
  await b?.close();
});

const status = () => b.page.textContent("#status");

test("comment box: filter only, blocks an offensive comment, posts a benign one", async () => {
  await b.page.goto(`${b.url}/www/examples/comment-box.html`);
  await b.page.waitForFunction(() => document.getElementById("status").textContent !== "loading…", null, { timeout: 120_000 });
  assert.equal(await status(), "ready", b.logs.join("\n"));

  await b.page.fill("#text", "You are a worthless fucking idiot.");
  await b.page.waitForFunction(() => document.getElementById("status").textContent.startsWith("blocked: "), null, { timeout: 60_000 });
  assert.match(await status(), /^blocked: .*offensive/);
  assert.equal(await b.page.isDisabled("#post"), true);
  const bars = await b.page.$$eval("#bars meter", (ms) => ms.map((m) => ({ label: m.previousSibling.textContent, value: m.value, high: m.high })));
  console.log(`# ${JSON.stringify(bars)}`);
  assert.deepEqual(bars.map((m) => m.label), ["offensive", "hate", "harmful"]);
  const offensive = bars.find((m) => m.label === "offensive");
  assert.ok(offensive.value >= offensive.high, JSON.stringify(offensive));

  const benign = "Thanks for the recipe, my family loved it.";
  await b.page.fill("#text", benign);
  await b.page.waitForFunction(() => !document.getElementById("post").disabled, null, { timeout: 60_000 });
  assert.equal(await status(), "ready");
  assert.ok((await b.page.$$eval("#bars meter", (ms) => ms.map((m) => m.value < m.high))).every(Boolean));
  await b.page.click("#post");
  await b.page.waitForSelector("#comments li");
  assert.deepEqual(await b.page.$$eval("#comments li", (lis) => lis.map((li) => li.textContent)), [benign]);

  // The filter's files were downloaded (the worker's requests are seen), the chat model's not.
  const files = b.requests.map((u) => new URL(u).pathname);
  console.log(`# ${files.length} requests: ${files.filter((f) => !f.endsWith(".js")).join(" ")}`);
  for (const f of ["/pkg/webguard_bg.wasm", "/pkg/all-MiniLM-L6-v2.int8.safetensors", "/pkg/filter-heads.safetensors", "/models/all-MiniLM-L6-v2/tokenizer.json"]) {
    assert.ok(files.includes(f), `no request for ${f}: ${files.join(" ")}`);
  }
  // Nor the tuning module: a page that never tunes loads only the smaller one.
  assert.deepEqual(files.filter((f) => /\.gguf$|chat-probe|safety-adapters|SmolLM|webguard_tune/i.test(f)), []);
  assert.ok(!b.logs.some((l) => l.startsWith("pageerror")), b.logs.join("\n"));
});
