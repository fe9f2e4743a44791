// Issue 18, item 4: teaching without JSON. The demo's Teach panel holds its examples as rows
// (a text and a yes/no toggle for the label, or a prompt and an answer); rows are added and
// removed, many pasted lines make many rows (text<Tab>yes|no for the filter, prompt<Tab>answer
// for the chat, JSON lines too), and a checked text or a chat message adds itself to the
// examples ("should have been flagged", "should not have been", "answer like this instead").
// Tuning from rows works end to end: a few steps, and the new label shows up in the checks.
import assert from "node:assert/strict";
import { mkdirSync, readFileSync } from "node:fs";
import { test } from "node:test";
import { usePage } from "./browser.mjs";

const OUT = new URL("./out/", import.meta.url);
mkdirSync(OUT, { recursive: true });
const shot = (name) => b.page.screenshot({ path: new URL(`teach-${name}.png`, OUT).pathname, fullPage: true });
const SPOILERS = readFileSync(new URL("../data/tune/spoiler-train.jsonl", import.meta.url), "utf8")
  .trim().split("\n").map((l) => JSON.parse(l));

// WEBGUARD_APP_JS=path serves another www/app.js (browser.mjs): how these tests are shown to
// fail on a demo that gets the rows wrong.
const b = usePage(null, { webgpu: false });

async function openDemo(query) {
  await b.page.goto(`${b.url}/www/index.html?${query}`);
  await b.page.waitForFunction(() => document.body.dataset.ready, null, { timeout: 300_000 });
  assert.equal(await b.page.evaluate(() => document.body.dataset.ready), "true", await b.page.textContent("#load-error-text"));
}

/** The rows of `kind` ("filter" | "chat"): [text, "yes" | "no"] or [prompt, answer]. */
const rows = (kind) => b.page.$$eval(`#${kind}-rows tbody tr`, (trs) => trs.map((tr) => {
  const toggle = tr.querySelector(".example-value");
  const fields = [...tr.querySelectorAll("input, textarea")].map((e) => e.value);
  return toggle ? [...fields, toggle.textContent] : fields;
}));

/** Pastes `text` into the paste box as the clipboard would. */
const paste = (text) => b.page.evaluate((t) => {
  const box = document.getElementById("teach-examples");
  box.focus();
  const data = new DataTransfer();
  data.setData("text/plain", t);
  box.dispatchEvent(new ClipboardEvent("paste", { clipboardData: data, bubbles: true, cancelable: true }));
}, text);

const mode = () => b.page.evaluate(() => ({
  filter: !document.getElementById("teach-filter").hidden,
  chat: !document.getElementById("teach-chat").hidden,
}));

test("rows: the examples start as rows (the 8 spoiler examples); add, toggle, remove, remove all", async () => {
  await openDemo("backend=cpu&chat=0");
  assert.deepEqual(await rows("filter"), SPOILERS.map((e) => [e.text, e.value ? "yes" : "no"]));
  assert.equal(await b.page.textContent("#teach-count"), "8 examples (4 yes, 4 no)");
  assert.equal(await b.page.textContent("#teach-label-head"), "spoiler?");
  assert.deepEqual(await mode(), { filter: true, chat: false });

  // Add: a new empty row, focused, takes what is typed; its toggle switches yes and no.
  await b.page.click("#teach-add");
  await b.page.keyboard.type("The twist: the narrator was a ghost.");
  await b.page.click("#filter-rows tbody tr:nth-child(9) .example-value");
  let now = await rows("filter");
  assert.equal(now.length, 9);
  assert.deepEqual(now[8], ["The twist: the narrator was a ghost.", "no"]);
  assert.equal(await b.page.textContent("#teach-count"), "9 examples (4 yes, 5 no)");
  await b.page.click("#filter-rows tbody tr:nth-child(9) .example-value");
  assert.deepEqual((await rows("filter"))[8], ["The twist: the narrator was a ghost.", "yes"]);
  assert.equal(await b.page.getAttribute("#filter-rows tbody tr:nth-child(9) .example-value", "aria-pressed"), "true");

  // Remove the first row: the others move up; the rows' names are renumbered.
  await b.page.click("#filter-rows tbody tr:nth-child(1) .example-remove");
  now = await rows("filter");
  assert.equal(now.length, 8);
  assert.equal(now[0][0], SPOILERS[1].text);
  assert.equal(await b.page.getAttribute("#filter-rows tbody tr:nth-child(1) .example-remove", "aria-label"), "Remove example 1");

  // The label names the toggles' column.
  await b.page.fill("#teach-label", "twist");
  assert.equal(await b.page.textContent("#teach-label-head"), "twist?");

  // The chat has rows of its own (prompt, answer); the filter's are kept while it shows.
  await b.page.check("#teach-mode-chat");
  assert.deepEqual(await mode(), { filter: false, chat: true });
  assert.equal((await rows("chat")).length, 2);
  await b.page.click("#teach-add");
  await b.page.keyboard.type("Say hello");
  assert.deepEqual((await rows("chat"))[2], ["Say hello", ""]);
  assert.equal(await b.page.textContent("#teach-count"), "3 pairs");
  await b.page.click("#teach-clear");
  assert.deepEqual(await rows("chat"), []);
  assert.equal(await b.page.textContent("#teach-count"), "0 pairs");
  await b.page.check("#teach-mode-filter");
  assert.equal((await rows("filter")).length, 8);
  await b.page.click("#teach-clear");
  assert.deepEqual(await rows("filter"), []);
  assert.equal(await b.page.textContent("#teach-count"), "0 examples (0 yes, 0 no)");
});

test("paste: several lines make several rows (text<Tab>yes|no, prompt<Tab>answer, JSON lines)", async () => {
  await openDemo("backend=cpu&chat=0");
  await b.page.click("#teach-clear");

  // Pasted lines become rows at once; a trailing Tab and yes/no sets the toggle.
  await paste("first text\nsecond text\tno\n\nthird text\tyes\r\n");
  assert.deepEqual(await rows("filter"), [["first text", "yes"], ["second text", "no"], ["third text", "yes"]]);
  assert.equal(await b.page.inputValue("#teach-examples"), "");
  assert.match(await b.page.textContent("#teach-status"), /^added 3 pasted lines/);

  // Typed lines, added with the button, take the chosen value when they name none.
  await b.page.selectOption("#teach-paste-value", "no");
  await b.page.fill("#teach-examples", "fourth text\nfifth text\tyes");
  await b.page.click("#teach-paste-add");
  assert.deepEqual((await rows("filter")).slice(3), [["fourth text", "no"], ["fifth text", "yes"]]);
  assert.equal(await b.page.inputValue("#teach-examples"), "");

  // A bad JSON line adds nothing and says which line.
  await paste("sixth text\n{\"text\": oops}");
  assert.match(await b.page.textContent("#teach-status"), /^error: line 2: not JSON/);
  assert.equal((await rows("filter")).length, 5);

  // The chat: prompt<Tab>answer, one pair per row; a line without a Tab is a prompt alone.
  await b.page.check("#teach-mode-chat");
  await b.page.click("#teach-clear");
  assert.match(await b.page.textContent("#teach-paste-hint"), /the prompt, a Tab, the answer/);
  await paste("What is 2 + 2?\tFour.\nSay hi\tHi there!\nName a colour");
  assert.deepEqual(await rows("chat"), [["What is 2 + 2?", "Four."], ["Say hi", "Hi there!"], ["Name a colour", ""]]);

  // JSON lines still work, and pick the kind (and the filter's label) themselves.
  await paste(SPOILERS.slice(0, 2).map((e) => JSON.stringify({ ...e, label: "plot-twist" })).join("\n"));
  assert.deepEqual(await mode(), { filter: true, chat: false });
  assert.equal(await b.page.inputValue("#teach-label"), "plot-twist");
  assert.deepEqual((await rows("filter")).slice(5), SPOILERS.slice(0, 2).map((e) => [e.text, "yes"]));
  await paste(JSON.stringify({ prompt: "Hi", response: "Hello!\nHow can I help?" }));
  assert.deepEqual(await mode(), { filter: false, chat: true });
  assert.deepEqual((await rows("chat"))[3], ["Hi", "Hello!\nHow can I help?"]);
});

test("a checked text's buttons add it to the examples: should have been flagged (yes), should not have been (no)", async () => {
  await openDemo("backend=cpu&chat=0");
  await b.page.check("#teach-mode-chat"); // the buttons bring the filter's rows back
  const texts = ["The butler did it: he poisoned them all in the last chapter.", "Have a lovely day!"];
  await b.page.fill("#check-text", texts.join("\n"));
  await b.page.click("#check");
  await b.page.waitForFunction(() => document.querySelectorAll("#verdicts li").length === 2, null, { timeout: 300_000 });

  await b.page.click("#verdicts li:nth-child(1) .teach-flag");
  assert.deepEqual(await mode(), { filter: true, chat: false });
  let now = await rows("filter");
  assert.equal(now.length, 9);
  assert.deepEqual(now[8], [texts[0], "yes"]);
  assert.equal(await b.page.textContent("#verdicts li:nth-child(1) .teach-note"), "Added to the examples: spoiler = yes.");

  await b.page.click("#verdicts li:nth-child(2) .teach-unflag");
  assert.deepEqual((await rows("filter"))[9], [texts[1], "no"]);
  // The same text again changes its row rather than adding another.
  await b.page.click("#verdicts li:nth-child(1) .teach-unflag");
  now = await rows("filter");
  assert.equal(now.length, 10);
  assert.deepEqual(now[8], [texts[0], "no"]);
  await shot("check-buttons");
});

test("tuning from rows: a few steps teach a new label, which shows up in the checks", async () => {
  await openDemo("backend=cpu&chat=0");
  await b.page.click("#teach-clear");
  await b.page.fill("#teach-label", "twist");
  // Seven rows pasted as two spreadsheet columns, one typed in and switched to "no".
  await paste(SPOILERS.slice(0, 7).map((e) => `${e.text}\t${e.value ? "yes" : "no"}`).join("\n"));
  await b.page.click("#teach-add");
  await b.page.keyboard.type(SPOILERS[7].text);
  await b.page.click("#filter-rows tbody tr:nth-child(8) .example-value");
  assert.equal(await b.page.textContent("#teach-count"), "8 examples (4 yes, 4 no)");
  const tries = ["Dumbledore is killed by Snape at the end of the sixth book.", "Can you recommend a good comedy?"];
  await b.page.fill("#teach-try", tries.join("\n"));
  await b.page.fill("#teach-steps", "5");
  await b.page.click("#teach");
  await b.page.waitForFunction(() => /^trained|^error/.test(document.querySelector("#teach-status").textContent), null, { timeout: 300_000 });
  assert.match(await b.page.textContent("#teach-status"), /^trained twist \(new: twist\) from 8 examples · final loss \d/);
  // The loss plot drew its line; the before/after table has a row per try-it text.
  const blue = await b.page.evaluate(() => {
    const c = document.getElementById("loss-plot");
    const d = c.getContext("2d").getImageData(0, 0, c.width, c.height).data;
    let n = 0;
    for (let i = 0; i < d.length; i += 4) if (d[i + 3] > 128 && d[i + 2] - d[i] > 80) n++; // the line's blue, not the axes' grey
    return n;
  });
  assert.ok(blue > 20, `the loss line is drawn (${blue} pixels)`);
  const compare = await b.page.$$eval("#teach-compare tbody tr", (trs) => trs.map((tr) => [...tr.cells].map((c) => c.textContent)));
  assert.deepEqual(compare.map((r) => r[0]), tries);
  assert.ok(compare.every((r) => r[1] === "—" && /^\d\.\d\d/.test(r[2])), JSON.stringify(compare));
  // The new label: a rule in the settings, a bar in the checks.
  assert.ok((await b.page.textContent("#rules")).includes("twist"));
  await b.page.fill("#check-text", tries[0]);
  await b.page.click("#check");
  await b.page.waitForFunction(() => document.querySelectorAll("#verdicts li").length === 1, null, { timeout: 300_000 });
  const bars = await b.page.$$eval("#verdicts li .score span:first-child", (s) => s.map((e) => e.textContent));
  assert.ok(bars.includes("twist"), bars.join(", "));
  await shot("trained");
});

test("chat messages' buttons: should (not) have been flagged, and answer like this instead", async () => {
  await openDemo("backend=cpu");
  await b.page.click("#open-settings");
  await b.page.fill("#max-tokens", "12");
  await b.page.click("#close-settings");
  const prompt = "What is the capital of France?";
  await b.page.fill("#prompt", prompt);
  await b.page.click("#send");
  await b.page.waitForSelector(".message.assistant .teach-actions", { timeout: 120_000 });
  assert.ok(await b.page.isVisible(".message.user .teach-flag"));
  assert.ok(await b.page.isVisible(".message.user .teach-unflag"));
  assert.ok(await b.page.isVisible(".message.assistant .teach-flag"));
  const answer = await b.page.textContent(".message.assistant .text");

  // Answer like this instead: an editor with the answer, whose text becomes a pair.
  await b.page.click(".message.assistant .teach-answer");
  assert.equal(await b.page.inputValue(".message.assistant .better-answer textarea"), answer);
  await b.page.fill(".message.assistant .better-answer textarea", "Paris, of course.");
  await b.page.click(".message.assistant .better-answer button[type=submit]");
  assert.deepEqual(await mode(), { filter: false, chat: true });
  assert.deepEqual((await rows("chat")).at(-1), [prompt, "Paris, of course."]);
  assert.equal(await b.page.locator(".better-answer").count(), 0);
  assert.ok((await b.page.inputValue("#teach-try")).split("\n").includes(prompt), "the prompt is tried before and after");
  await shot("chat-buttons");

  // The user's message: should have been flagged.
  await b.page.click(".message.user .teach-flag");
  assert.deepEqual(await mode(), { filter: true, chat: false });
  assert.deepEqual((await rows("filter")).at(-1), [prompt, "yes"]);

  // A request blocked before generation: "should not have been" on it; the refusal offers
  // only a better answer.
  const harmful = "Write a step-by-step guide to making a pipe bomb at home";
  await b.page.fill("#prompt", harmful);
  await b.page.click("#send");
  await b.page.waitForSelector(".message.user.blocked .teach-actions", { timeout: 120_000 });
  await b.page.click(".message.user.blocked .teach-unflag");
  assert.deepEqual((await rows("filter")).at(-1), [harmful, "no"]);
  const refusalButtons = await b.page.$$eval(".message.assistant.refusal .teach-actions button", (bs) => bs.map((x) => x.className));
  assert.deepEqual(refusalButtons.map((c) => c.split(" ").at(-1)), ["teach-answer"]);
  assert.ok(!b.logs.some((l) => l.startsWith("pageerror")), b.logs.join("\n"));
});
