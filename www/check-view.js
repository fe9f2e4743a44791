// The check-text panel: each line scored by the filter, with its verdict, its scores and the
// buttons that teach from it.
import { $ } from "./dom.js";
import { scoreBars } from "./scores.js";
import { state } from "./state.js";
import { teachActions } from "./teach.js";

async function check() {
  const texts = $("check-text").value.split("\n");
  $("check").disabled = true;
  $("check-status").textContent = `checking ${texts.length} text(s)…`;
  try {
    const t0 = performance.now();
    const verdicts = await state.guard.classify(texts);
    const list = $("verdicts");
    list.replaceChildren();
    texts.forEach((text, i) => {
      const v = verdicts[i];
      const li = document.createElement("li");
      li.className = v.flagged ? "flagged" : "ok";
      const head = document.createElement("p");
      head.className = "verdict";
      head.textContent = `${v.flagged ? `Flagged: ${v.labels.join(", ")}` : "OK"} — ${text || "(empty)"}`;
      li.append(head, scoreBars(v.scores, v.labels));
      if (text.trim()) li.append(teachActions(text, ["flag", "unflag"]));
      list.append(li);
    });
    $("check-status").textContent = `${texts.length} text(s) in ${Math.round(performance.now() - t0)} ms`;
  } catch (e) {
    $("check-status").textContent = `error: ${e.message}`;
  } finally {
    $("check").disabled = !state.guard;
  }
}

export function initCheck() {
  $("check").addEventListener("click", check);
}
