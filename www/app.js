// The demo: moderated chat and a text checker over webguard's Guard (pkg/guard.js), which runs
// the models in a Web Worker; this thread only renders. This module wires the panels together
// and loads the models:
//
//   loading.js     the Guard from the query string's choices (model URLs on this site only), progress
//   chat-view.js   the moderated chat;  check-view.js  the text checker;  scores.js  their score bars
//   teach-rows.js  the Teach panel's examples as rows (and pasted lines);  teach.js  its feedback
//                  buttons, training, loss plot and adapters
//   settings.js    the drawer (backend, rules, sampling);  state.js  shared state;  dom.js  helpers
//
// Query parameters (used by the tests, handy for trying things): backend=auto|webgpu|cpu,
// filterUrl=, chatUrl=, chat=0 (filter only), chatProbe=0 (the chat model does not judge).
import { initChat } from "./chat-view.js";
import { initCheck } from "./check-view.js";
import { $ } from "./dom.js";
import { load, params } from "./loading.js";
import { initSettings } from "./settings.js";
import { initTeach } from "./teach.js";
import { initRows } from "./teach-rows.js";

function main() {
  const backend = params.get("backend");
  if (backend) $("backend").value = backend;
  initChat();
  initCheck();
  initRows();
  initTeach();
  $("retry").addEventListener("click", load);
  $("reload").addEventListener("click", load);
  initSettings();
  load();
}

main();
