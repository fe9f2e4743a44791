// Issue 17, items 3 and 6: the demo never turns data into markup, and a crafted link cannot
// make it load models from elsewhere.
//
// Item 3: the demo never turns data into markup. A label, a checked text, a try-it
// text, a chat message and an error message that each carry an HTML payload are shown as
// text: no element is parsed out of them and no handler runs. (The Rust side restricts label
// names separately; whether it accepts or refuses the label below, the demo must render what
// it gets as text.) Also a static check that www/ has no HTML sink at all.
import assert from "node:assert/strict";
import { readdirSync, readFileSync } from "node:fs";
import { test } from "node:test";
import { usePage } from "./browser.mjs";

// Short enough (under 48 characters) to pass as a label name where Rust allows it.
const PAYLOAD = (n) => `<img src=x onerror=__pwned${n}=1><b id=pwned${n}>`;

test("www/ has no HTML sink (innerHTML, outerHTML, insertAdjacentHTML, document.write)", () => {
  const dir = new URL("../../www/", import.meta.url);
  for (const f of readdirSync(dir).filter((f) => f.endsWith(".js"))) {
    const js = readFileSync(new URL(f, dir), "utf8");
    assert.doesNotMatch(js, /innerHTML|outerHTML|insertAdjacentHTML|document\.write|createContextualFragment/, `www/${f}`);
  }
});

// The demo is opened by each test. WEBGUARD_APP_JS=path serves another app.js (browser.mjs):
// how this test was shown to fail on the demo before it built nodes with textContent.
const b = usePage(null, { webgpu: false });

/** The payload markers that made it into the DOM as elements, and handlers that ran. */
const damage = () => b.page.evaluate(() => ({
  pwned: Object.keys(window).filter((k) => k.startsWith("__pwned")),
  elements: document.querySelectorAll("img, [id^=pwned]").length,
}));

test("demo: labels, texts, chat messages and errors with markup are shown as text", async () => {
  await b.page.goto(`${b.url}/www/index.html?backend=cpu`);
  await b.page.waitForFunction(() => document.body.dataset.ready, null, { timeout: 300_000 });
  assert.equal(await b.page.evaluate(() => document.body.dataset.ready), "true", await b.page.textContent("#load-error-text"));

  // Teach a label named by the payload (8 examples, both classes; 3 steps is enough to render).
  const label = PAYLOAD(1);
  const examples = [];
  for (let i = 0; i < 4; i++) {
    examples.push({ text: `spoiler ${i}: the butler did it ${PAYLOAD(2)}`, label, value: true });
    examples.push({ text: `a nice day ${i}`, label, value: false });
  }
  await b.page.fill("#teach-examples", examples.map((e) => JSON.stringify(e)).join("\n"));
  await b.page.fill("#teach-try", `${PAYLOAD(3)}\nhello`);
  await b.page.fill("#teach-steps", "3");
  await b.page.click("#teach");
  await b.page.waitForFunction(() => /^trained|^error/.test(document.querySelector("#teach-status").textContent), null, { timeout: 300_000 });
  const status = await b.page.textContent("#teach-status");
  console.log(`# teach: ${status}`);
  await b.page.waitForTimeout(300); // an injected onerror would fire once the image fails
  assert.deepEqual(await damage(), { pwned: [], elements: 0 }, "markup from the label or texts ran");
  if (status.startsWith("trained")) {
    // Accepted: the label shows as text in the rules and the before/after table.
    assert.ok((await b.page.textContent("#rules")).includes(label));
    assert.ok((await b.page.textContent("#teach-compare")).includes(PAYLOAD(3)));
  }

  // Check text: verdict lines carry the text (and any new label) as text.
  await b.page.fill("#check-text", `${PAYLOAD(4)}\n${PAYLOAD(5)} you idiot`);
  await b.page.click("#check");
  await b.page.waitForFunction(() => document.querySelectorAll("#verdicts li").length === 2, null, { timeout: 120_000 });
  assert.ok((await b.page.textContent("#verdicts")).includes(PAYLOAD(4)));

  // Chat: the user's message and whatever comes back (answer, refusal or error).
  await b.page.click("#open-settings");
  await b.page.fill("#max-tokens", "4");
  await b.page.click("#close-settings");
  await b.page.fill("#prompt", `Repeat this exactly: ${PAYLOAD(6)}`);
  await b.page.click("#send");
  await b.page.waitForFunction(() => !document.querySelector(".message.assistant.streaming")
    && document.querySelectorAll(".message").length === 2, null, { timeout: 120_000 });
  assert.ok((await b.page.textContent(".message.user .text")).includes(PAYLOAD(6)));

  // Errors: an adapters file that is not one; its name and the error are shown as text.
  await b.page.setInputFiles("#teach-load", { name: `${PAYLOAD(7)}.safetensors`, mimeType: "application/octet-stream", buffer: Buffer.from(PAYLOAD(8)) });
  await b.page.waitForFunction(() => /loaded|error/.test(document.querySelector("#teach-status").textContent));

  await b.page.waitForTimeout(500); // an injected onerror would fire once the image fails
  assert.deepEqual(await damage(), { pwned: [], elements: 0 });
  assert.ok(!b.logs.some((l) => l.startsWith("pageerror")), b.logs.join("\n"));
});

test("demo: model URLs from the query string must be on this site (and be the manifest's files)", async () => {
  const other = b.url.replace("127.0.0.1", "localhost"); // the same server, another origin
  for (const param of ["chatUrl", "filterUrl"]) {
    const from = b.requests.length;
    const file = param === "chatUrl" ? "SmolLM2-135M-Instruct.Q4_1.gguf" : "all-MiniLM-L6-v2/";
    await b.page.goto(`${b.url}/www/index.html?backend=cpu&${param}=${encodeURIComponent(`${other}/models/${file}`)}`);
    await b.page.waitForFunction(() => document.body.dataset.ready, null, { timeout: 300_000 });
    assert.equal(await b.page.evaluate(() => document.body.dataset.ready), "error");
    assert.match(await b.page.textContent("#load-error-text"), new RegExp(`${param} http://localhost:\\d+/models/.* is not on this site`));
    assert.deepEqual(b.requests.slice(from).filter((u) => u.startsWith(other)), [], "no request to the other origin");
  }
  // On this site, but not a model the manifest names: refused before it is parsed or cached.
  await b.page.goto(`${b.url}/www/index.html?backend=cpu&chatUrl=/www/style.css`);
  await b.page.waitForFunction(() => document.body.dataset.ready, null, { timeout: 300_000 });
  assert.match(await b.page.textContent("#load-error-text"), /chat model could not be loaded: .*style\.css is not the file expected \(sha256/);
  assert.equal(await b.page.evaluate(async () => (await caches.open("webguard-models-v1")).match(new URL("/www/style.css", location.href).href).then(Boolean)), false);
});
