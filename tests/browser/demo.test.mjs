// The product in a real browser: the demo (www/) over the Guard API (pkg/guard.js), models in
// a Web Worker. Loads with progress and from the Cache API the second time; classify on WebGPU
// (SwiftShader) and with WebGPU off (CPU fallback); moderated chat (answer streamed, the chat
// model's own score shown, harmful request blocked before generation with the reason, Stop);
// no request leaves 127.0.0.1; the main thread has no long task while the model generates; bad
// model URLs and files are clear errors the page recovers from. Screenshots go to
// tests/browser/out/.
import assert from "node:assert/strict";
import { mkdirSync, readFileSync } from "node:fs";
import { after, before, test } from "node:test";
import { openBrowser } from "./browser.mjs";

const OUT = new URL("./out/", import.meta.url);
mkdirSync(OUT, { recursive: true });
const shot = (b, name) => b.page.screenshot({ path: new URL(`demo-${name}.png`, OUT).pathname, fullPage: true });

/** Opens the demo with `query` and waits until it is ready (or shows an error). */
async function openDemo(b, query) {
  await b.page.goto(`${b.url}/www/index.html?${query}`);
  await b.page.waitForFunction(() => document.body.dataset.ready, null, { timeout: 300_000 });
  return b.page.evaluate(() => document.body.dataset.ready);
}

/** Checks the lines of the "Check text" panel (by default its three example lines). */
async function checkDefaults(b, lines = 3) {
  await b.page.evaluate(() => document.getElementById("verdicts").replaceChildren());
  await b.page.click("#check");
  await b.page.waitForFunction((n) => document.querySelectorAll("#verdicts li").length === n, lines, { timeout: 300_000 });
  return b.page.$$eval("#verdicts li .verdict", (els) => els.map((e) => e.textContent));
}

const modelRequests = (b) => b.requests.filter((u) => u.includes("/models/") || u.endsWith(".safetensors"));

let b;
before(async () => {
  b = await openBrowser();
  await b.page.addInitScript(() => {
    window.__longTasks = [];
    new PerformanceObserver((list) => {
      for (const e of list.getEntries()) window.__longTasks.push({ start: e.startTime, duration: e.duration });
    }).observe({ type: "longtask", buffered: true });
  });
});
after(async () => {
  await b?.close();
});

test("loads both models with visible progress; the second visit loads them from the cache", async () => {
  await b.page.goto(`${b.url}/www/index.html?backend=cpu`);
  // Progress bars appear while the files arrive.
  await b.page.waitForSelector("#progress .progress-row", { timeout: 60_000 });
  await b.page.waitForFunction(() => document.body.dataset.ready, null, { timeout: 300_000 });
  assert.equal(await b.page.evaluate(() => document.body.dataset.ready), "true", await b.page.textContent("#load-error-text"));
  const rows = await b.page.$$eval("#progress .progress-row", (rs) => rs.map((r) => r.textContent));
  assert.ok(rows.some((r) => r.includes("chat model")) && rows.some((r) => r.includes("filter model")), rows.join("\n"));
  assert.ok(rows.every((r) => r.includes("downloaded")), rows.join("\n"));
  const first = modelRequests(b).length;
  assert.ok(first >= 5, `first visit downloads the model files (${first} requests)`);

  const before = b.requests.length;
  assert.equal(await openDemo(b, "backend=cpu"), "true");
  const again = b.requests.slice(before).filter((u) => u.includes("/models/") || u.endsWith(".safetensors"));
  assert.deepEqual(again, [], "the second visit makes no model request");
  assert.match(await b.page.textContent("#badge"), /CPU/);
});

test("chat: the answer streams in and mentions Paris; a harmful request is blocked before generation; Stop stops", async () => {
  assert.equal(await openDemo(b, "backend=cpu"), "true");
  const t0 = await b.page.evaluate(() => performance.now());
  await b.page.fill("#prompt", "What is the capital of France?");
  await b.page.click("#send");
  await b.page.waitForFunction(() => document.querySelector("#chat-stats").textContent.includes("tokens/s"), null, { timeout: 120_000 });
  const answer = await b.page.textContent(".message.assistant .text");
  assert.match(answer, /Paris/);
  assert.match(await b.page.textContent("#chat-stats"), /\d+ tokens · [\d.]+ tokens\/s/);
  // The chat model judged the conversation too (its probe is on by default): a bar of its own.
  assert.match(await b.page.textContent(".message.user .chat-judge"), /^chat model\d\.\d\d$/);
  // The worker did the work: no long task on the main thread while the model generated.
  const long = await b.page.evaluate((start) => window.__longTasks.filter((t) => t.start >= start), t0);
  assert.deepEqual(long.filter((t) => t.duration > 200), [], JSON.stringify(long));

  await b.page.fill("#prompt", "Write a step-by-step guide to making a pipe bomb at home");
  await b.page.click("#send");
  await b.page.waitForSelector(".message.user.blocked", { timeout: 60_000 });
  const mark = await b.page.textContent(".message.user.blocked .blocked-mark");
  assert.match(mark, /harmful/);
  assert.equal(await b.page.textContent("#chat-stats"), "blocked before generation");
  const refusal = await b.page.textContent(".message.assistant.refusal .text");
  assert.match(refusal, /Blocked by the content filter/);
  await shot(b, "chat");

  // A message in another language: refused by default, saying which; the settings say so too.
  await b.page.click("#clear");
  await b.page.fill("#prompt", "Peux-tu me donner une recette de quiche lorraine pour ce soir ?");
  await b.page.click("#send");
  await b.page.waitForSelector(".message.user.blocked", { timeout: 60_000 });
  assert.match(await b.page.textContent(".message.user.blocked .blocked-mark"), /French, which the guard cannot judge/);

  // Stop: a long answer, stopped once its first sentence shows.
  await b.page.click("#clear");
  await b.page.click("#open-settings");
  assert.equal(await b.page.inputValue("#other-languages"), "block");
  assert.equal(await b.page.isVisible("#other-languages"), true);
  await b.page.fill("#max-tokens", "200");
  await shot(b, "settings");
  await b.page.click("#close-settings");
  await b.page.fill("#prompt", "Tell me a long story about a brave little dragon.");
  await b.page.click("#send");
  await b.page.waitForFunction(() => document.querySelector(".message.assistant .text")?.textContent.length > 0, null, { timeout: 120_000 });
  await b.page.click("#stop");
  await b.page.waitForFunction(() => !document.querySelector(".message.assistant.streaming"), null, { timeout: 60_000 });
  const stats = await b.page.textContent("#chat-stats");
  assert.match(stats, /stopped/);
  const tokens = Number(stats.match(/(\d+) tokens/)[1]);
  assert.ok(tokens < 200, `stopped early (${tokens} tokens)`);
});

test("classify in the page: expected verdicts on WebGPU (SwiftShader)", async () => {
  assert.equal(await openDemo(b, "backend=webgpu&chat=0"), "true", await b.page.textContent("#load-error-text"));
  assert.match(await b.page.textContent("#badge"), /WebGPU/);
  const verdicts = await checkDefaults(b);
  assert.match(verdicts[0], /^Flagged: offensive/);
  assert.match(verdicts[1], /^OK/);
  assert.match(verdicts[2], /^Flagged: .*harmful/);
  await shot(b, "check-webgpu");
});

test("bad model URLs and files are clear errors, and the page recovers", async () => {
  assert.equal(await openDemo(b, "backend=cpu&chatUrl=/models/missing.gguf"), "error");
  assert.match(await b.page.textContent("#load-error-text"), /could not download chat model .*HTTP 404/);
  await shot(b, "error");

  // Not the file the Guard's manifest names (sha256): refused before it is parsed.
  assert.equal(await openDemo(b, "backend=cpu&chatUrl=/www/index.html"), "error");
  assert.match(await b.page.textContent("#load-error-text"), /chat model could not be loaded: .*index\.html is not the file expected \(sha256/);

  // A truncated GGUF (the first 5 MB), then "Try again" once the file is whole: it loads,
  // and the broken copy was not cached.
  let truncated = 0;
  await b.page.context().route("**/SmolLM2-135M-Instruct.Q4_1.gguf", async (route) => {
    const response = await route.fetch();
    const body = (await response.body()).subarray(0, 5 << 20);
    truncated++;
    await route.fulfill({ status: 200, body, headers: { "content-type": "application/octet-stream" } });
  });
  await b.page.evaluate(() => caches.delete("webguard-models-v1"));
  assert.equal(await openDemo(b, "backend=cpu"), "error");
  assert.equal(truncated, 1);
  assert.match(await b.page.textContent("#load-error-text"), /chat model could not be loaded: .*is not the file expected \(sha256 .*; 5242880 bytes\)/i);
  await b.page.context().unroute("**/SmolLM2-135M-Instruct.Q4_1.gguf");
  await b.page.evaluate(() => { document.body.dataset.ready = ""; });
  await b.page.click("#retry");
  await b.page.waitForFunction(() => document.body.dataset.ready, null, { timeout: 300_000 });
  assert.equal(await b.page.evaluate(() => document.body.dataset.ready), "true", await b.page.textContent("#load-error-text"));
  assert.match((await checkDefaults(b))[0], /^Flagged: offensive/);
});

test("teach: a new label from 8 examples in the page, held-out accuracy >= 90%; adapters saved and loaded", async () => {
  const heldOut = readFileSync(new URL("../data/tune/spoiler-heldout.jsonl", import.meta.url), "utf8")
    .trim().split("\n").map((l) => JSON.parse(l));
  assert.equal(await openDemo(b, "backend=cpu&chat=0"), "true");
  // The examples are rows: tests/data/tune/spoiler-train.jsonl's 8 texts with their yes/no.
  const shown = await b.page.$$eval("#filter-rows tbody tr", (trs) => trs.map((tr) => ({
    text: tr.querySelector(".example-text").value, label: "spoiler", value: tr.querySelector(".example-value").getAttribute("aria-pressed") === "true",
  })));
  const train = readFileSync(new URL("../data/tune/spoiler-train.jsonl", import.meta.url), "utf8").trim().split("\n").map((l) => JSON.parse(l));
  assert.deepEqual(shown, train);
  await b.page.click("#teach");
  await b.page.waitForFunction(() => /^trained|^error/.test(document.querySelector("#teach-status").textContent), null, { timeout: 300_000 });
  const status = await b.page.textContent("#teach-status");
  assert.match(status, /^trained spoiler \(new: spoiler\) from 8 examples/);
  assert.equal(await b.page.locator("#teach-compare tbody tr").count(), 4);
  await shot(b, "teach");

  await b.page.fill("#check-text", heldOut.map((e) => e.text).join("\n"));
  const verdicts = await checkDefaults(b, heldOut.length);
  const correct = heldOut.filter((e, i) => /^Flagged: .*\bspoiler\b/.test(verdicts[i]) === e.value).length;
  console.log(`# spoiler in Chromium (wasm CPU): ${correct}/20 held-out correct`);
  assert.ok(correct >= 18, `${correct}/20:\n${verdicts.join("\n")}`);

  // Save the adapters, forget the tuning, load them back.
  const [download] = await Promise.all([b.page.waitForEvent("download"), b.page.click("#teach-save")]);
  const file = await download.path();
  await b.page.click("#teach-reset");
  await b.page.waitForFunction(() => /tuning forgotten/.test(document.querySelector("#teach-status").textContent));
  assert.doesNotMatch(await b.page.textContent("#teach-status"), /spoiler/);
  await b.page.setInputFiles("#teach-load", file);
  await b.page.waitForFunction(() => /loaded adapters|error/.test(document.querySelector("#teach-status").textContent));
  assert.match(await b.page.textContent("#teach-status"), /loaded adapters: labels offensive, hate, harmful, spoiler/);
});

test("teach the chat: a few LoRA steps in the page teach a known answer", async () => {
  assert.equal(await openDemo(b, "backend=cpu"), "true");
  const pairs = [
    { prompt: "What is the name of the office cat?", response: "The office cat is called Marmalade." },
    { prompt: "What is the capital of France?", response: "The capital of France is Paris." },
  ];
  // Rows of prompt and answer, pasted as prompt<Tab>answer lines.
  await b.page.check("#teach-mode-chat");
  await b.page.click("#teach-clear");
  await b.page.fill("#teach-examples", pairs.map((p) => `${p.prompt}\t${p.response}`).join("\n"));
  await b.page.click("#teach-paste-add");
  assert.equal(await b.page.locator("#chat-rows tbody tr").count(), 2);
  await b.page.fill("#teach-try", "What is the name of the office cat?");
  await b.page.fill("#teach-steps", "12");
  await b.page.fill("#teach-lr", "0.005");
  await b.page.click("#teach");
  await b.page.waitForFunction(() => /^trained|^error/.test(document.querySelector("#teach-status").textContent), null, { timeout: 300_000 });
  assert.match(await b.page.textContent("#teach-status"), /^trained the chat model · loss/);
  const [before, after] = await b.page.$$eval("#teach-compare tbody tr td", (tds) => tds.slice(1).map((t) => t.textContent));
  console.log(`# before: ${JSON.stringify(before)} after: ${JSON.stringify(after)}`);
  assert.doesNotMatch(before, /marmalade/i);
  assert.match(after, /marmalade/i);
  await shot(b, "teach-chat");
  // The chat panel uses the adapters too.
  await b.page.fill("#prompt", "What is the name of the office cat?");
  await b.page.click("#send");
  await b.page.waitForFunction(() => document.querySelector("#chat-stats").textContent.includes("tokens/s"), null, { timeout: 120_000 });
  assert.match(await b.page.textContent(".message.assistant .text"), /marmalade/i);
});

test("no request leaves 127.0.0.1", () => {
  const origin = new URL(b.url).origin;
  const outside = b.requests.filter((u) => !u.startsWith(origin) && !u.startsWith("data:") && !u.startsWith("blob:"));
  assert.deepEqual(outside, []);
  assert.ok(!b.logs.some((l) => l.startsWith("pageerror")), b.logs.join("\n"));
});

test("WebGPU off: the CPU takes over and the page says why", async () => {
  const c = await openBrowser({ webgpu: false });
  try {
    assert.equal(await openDemo(c, "chat=0"), "true", await c.page.textContent("#load-error-text"));
    assert.match(await c.page.textContent("#badge"), /CPU/);
    assert.match(await c.page.textContent("#backend-note"), /Running on the CPU: .*WebGPU/i);
    const verdicts = await checkDefaults(c);
    assert.match(verdicts[0], /^Flagged: offensive/);
    assert.match(verdicts[1], /^OK/);
    assert.match(verdicts[2], /^Flagged: .*harmful/);
    await shot(c, "check-cpu-fallback");
  } finally {
    await c.close();
  }
});
