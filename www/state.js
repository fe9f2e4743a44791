// The demo's shared state (the Guard, the conversation, what is running) and the buttons it
// enables: every panel reads it, and setReady is the one place that says what may be clicked.
import { $ } from "./dom.js";

export const state = { guard: null, messages: [], busy: false, abort: null, teaching: false, teachAbort: null };

export function setReady(ready) {
  $("send").disabled = !ready || state.busy || !state.guard?.hasChat;
  $("check").disabled = !ready;
  for (const id of ["teach", "teach-reset", "teach-save"]) $(id).disabled = !ready || state.teaching;
}
