// Score bars: one meter per label with the threshold marked, under a checked text or a chat
// message (and the chat model's own judgement when it gave one).
import { state } from "./state.js";

/** One bar: a name, a meter with the threshold marked, the score. */
function scoreRow(name, score, threshold, over) {
  const row = document.createElement("div");
  row.className = "score" + (over ? " over" : "");
  const label = document.createElement("span");
  label.textContent = name;
  const meter = document.createElement("meter");
  meter.min = 0; meter.max = 1; meter.value = score;
  if (threshold !== undefined) meter.high = threshold;
  meter.setAttribute("aria-label", `${name} score`);
  const value = document.createElement("span");
  value.textContent = score.toFixed(2);
  row.append(label, meter, value);
  return row;
}

/** Small bars, one per label, with the threshold marked; `judge` (the chat model's own score,

 *  `{ score, threshold, title }`) adds a "chat model" bar. */
export function scoreBars(scores, flaggedLabels = [], judge = null) {
  const wrap = document.createElement("div");
  wrap.className = "scores";
  const policy = state.guard?.policy ?? {};
  const order = state.guard?.labels ?? Object.keys(scores);
  for (const label of order.filter((l) => l in scores)) {
    wrap.append(scoreRow(label, scores[label], policy[label]?.threshold, flaggedLabels.includes(label)));
  }
  if (typeof judge?.score === "number") {
    const { score, threshold, title } = judge;
    const row = scoreRow("chat model", score, threshold ?? undefined, typeof threshold === "number" && score >= threshold);
    row.classList.add("chat-judge");
    row.title = title;
    wrap.append(row);
  }
  return wrap;
}
