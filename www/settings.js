// The settings drawer: the backend, a threshold and an action per label and what messages in
// other languages do (the Guard's policy, changed live), the sampling options.
import { $ } from "./dom.js";
import { state } from "./state.js";

export function renderRules() {
  const box = $("rules");
  box.querySelectorAll(".rule").forEach((r) => r.remove());
  const policy = state.guard.policy;
  for (const label of state.guard.labels) {
    const rule = policy[label];
    const row = document.createElement("div");
    row.className = "rule";
    // Built node by node: labels taught in the page are the user's own text.
    const id = `rule-${state.guard.labels.indexOf(label)}`;
    const title = document.createElement("label");
    title.htmlFor = id;
    const value = document.createElement("output");
    value.textContent = rule.threshold.toFixed(2);
    title.append(`${label} `, value);
    const range = document.createElement("input");
    Object.assign(range, { id, type: "range", min: "0", max: "1", step: "0.01", value: String(rule.threshold) });
    const actionLabel = document.createElement("label");
    actionLabel.className = "inline";
    actionLabel.htmlFor = `${id}-action`;
    actionLabel.textContent = "action";
    const action = document.createElement("select");
    action.id = `${id}-action`;
    for (const a of ["block", "warn", "allow"]) {
      const option = document.createElement("option");
      option.value = a;
      option.textContent = a;
      action.append(option);
    }
    action.value = rule.action;
    row.append(title, range, actionLabel, action);
    box.append(row);
    const apply = async () => {
      value.textContent = Number(range.value).toFixed(2);
      await state.guard.setRule(label, { threshold: Number(range.value), action: action.value });
    };
    range.addEventListener("change", apply);
    range.addEventListener("input", () => { value.textContent = Number(range.value).toFixed(2); });
    action.addEventListener("change", apply);
  }
  const probe = state.guard.chatProbe;
  $("chat-probe-note").textContent = !state.guard.hasChat ? ""
    : probe ? `The chat model also judges each conversation before answering, from its own states: it blocks at a score of ${probe.threshold.toFixed(2)} or more.`
      : "The chat model's own judgement is off (chatProbe=0).";
  $("other-languages-row").hidden = !state.guard.hasChat;
  $("other-languages").value = state.guard.otherLanguages;
}

function toggleSettings(open) {
  $("settings").hidden = !open;
  $("open-settings").setAttribute("aria-expanded", String(open));
  (open ? $("close-settings") : $("open-settings")).focus();
}

/** The drawer opens and closes (Escape too); the sliders show their values. */
export function initSettings() {
  $("open-settings").addEventListener("click", () => toggleSettings($("settings").hidden));
  $("close-settings").addEventListener("click", () => toggleSettings(false));
  document.addEventListener("keydown", (e) => { if (e.key === "Escape" && !$("settings").hidden) toggleSettings(false); });
  $("other-languages").addEventListener("change", async (e) => {
    await state.guard?.setOtherLanguages(e.target.value);
  });
  for (const id of ["temperature", "top-p"]) {
    $(id).addEventListener("input", () => { $(`${id}-value`).textContent = $(id).value; });
  }
}
