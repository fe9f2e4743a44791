// The chat panel: a moderated conversation streamed from the Guard, each message with its
// scores, a mark when it was blocked, and the buttons that teach from it.
import { $ } from "./dom.js";
import { scoreBars } from "./scores.js";
import { setReady, state } from "./state.js";
import { teachActions } from "./teach.js";

function addMessage(role, text) {
  const li = document.createElement("li");
  li.className = `message ${role}`;
  const who = document.createElement("p");
  who.className = "who";
  who.textContent = role === "user" ? "You" : "Assistant";
  const body = document.createElement("p");
  body.className = "text";
  body.textContent = text;
  li.append(who, body);
  $("messages").append(li);
  li.scrollIntoView({ block: "end" });
  return li;
}

/** Marks `li` blocked with the reason in words; the chat model's score of the conversation is
 *  added when it judged and the reason does not already give it. */
function markBlocked(li, reason, chatJudge = null) {
  li.classList.add("blocked");
  const mark = document.createElement("p");
  mark.className = "blocked-mark";
  let text = reason ?? "blocked";
  if (typeof chatJudge === "number" && !/by the chat model/.test(text)) {
    const threshold = state.guard?.chatProbe?.threshold;
    text += ` (the chat model judged the conversation ${chatJudge.toFixed(2)}${threshold === undefined ? "" : `, blocks at ${threshold.toFixed(2)}`})`;
  }
  mark.textContent = text;
  li.append(mark);
}

function generationOptions() {
  return {
    temperature: Number($("temperature").value),
    topP: Number($("top-p").value),
    maxTokens: Number($("max-tokens").value) || 160,
    seed: Number($("seed").value) || 0,
  };
}

async function send(event) {
  event?.preventDefault();
  const text = $("prompt").value.trim();
  if (!text || state.busy || !state.guard) return;
  state.busy = true;
  setReady(true);
  $("stop").disabled = false;
  $("prompt").value = "";
  const userLi = addMessage("user", text);
  const assistantLi = addMessage("assistant", "");
  assistantLi.classList.add("streaming");
  const body = assistantLi.querySelector(".text");
  state.abort = new AbortController();
  const history = [...state.messages, { role: "user", content: text }];
  $("chat-stats").textContent = "checking your message…";
  try {
    const reply = await state.guard.chat(history, {
      ...generationOptions(),
      signal: state.abort.signal,
      onToken: (piece) => {
        body.textContent += piece;
        $("chat-stats").textContent = "generating…";
        assistantLi.scrollIntoView({ block: "end" });
      },
    });
    if (reply.input) {
      userLi.append(scoreBars(reply.input.scores, [...reply.input.blocked, ...reply.input.warned], {
        score: reply.chatJudge,
        threshold: state.guard?.chatProbe?.threshold,
        title: "The chat model's own judgement of the conversation (a probe over its states)",
      }));
    }
    body.textContent = reply.text;
    if (reply.blocked) {
      // Blocked before answering (the filter or the chat model judged the conversation): the
      // user's message carries the mark; otherwise the answer does.
      const beforeAnswer = !reply.output && !reply.tokens;
      markBlocked(beforeAnswer ? userLi : assistantLi, reply.reason, reply.chatJudge);
      assistantLi.classList.add("refusal");
    } else {
      state.messages = [...history, { role: "assistant", content: reply.text }];
    }
    if (reply.output) {
      assistantLi.append(scoreBars(reply.output.scores, [...reply.output.blocked, ...reply.output.warned], {
        score: reply.answerJudge,
        threshold: state.guard?.chatProbe?.answerThreshold,
        title: "The chat model's own judgement of its answer at each sentence end (a probe over its states)",
      }));
    }
    if (reply.safetyAdapters) {
      // The second line: the probe found the conversation close to its threshold, so the
      // model answered with the adapters that teach it to refuse harmful requests.
      const note = document.createElement("p");
      note.className = "warn-mark";
      const from = state.guard?.chatProbe?.safetyAdaptersFrom;
      note.textContent = `Answered with the safety adapters: the chat model judged the conversation ${reply.chatJudge.toFixed(2)}${typeof from === "number" ? ` (from ${from.toFixed(2)} it answers with them)` : ""}`;
      assistantLi.append(note);
    }
    if (reply.warnings.length) {
      const warn = document.createElement("p");
      warn.className = "warn-mark";
      warn.textContent = `Flagged (warn): ${reply.warnings.join(", ")}`;
      assistantLi.append(warn);
    }
    assistantLi.append(teachActions(reply.blocked ? "" : reply.text, reply.blocked || !reply.text.trim() ? ["answer"] : ["flag", "answer"], text));
    $("chat-stats").textContent = reply.tokens
      ? `${reply.tokens} tokens · ${reply.tokensPerSecond.toFixed(1)} tokens/s${reply.stopReason === "cancelled" ? " · stopped" : ""}`
      : reply.blocked ? "blocked before generation" : "";
  } catch (e) {
    body.textContent = "";
    markBlocked(assistantLi, `error: ${e.message}`);
    $("chat-stats").textContent = "";
  } finally {
    userLi.append(teachActions(text, ["flag", "unflag"]));
    assistantLi.classList.remove("streaming");
    state.busy = false;
    state.abort = null;
    $("stop").disabled = true;
    setReady(Boolean(state.guard));
    $("prompt").focus();
  }
}

/** Wires the chat form: Enter sends, Stop cancels, New chat clears. */
export function initChat() {
  $("chat-form").addEventListener("submit", send);
  $("prompt").addEventListener("keydown", (e) => {
    if (e.key === "Enter" && !e.shiftKey) send(e);
  });
  $("stop").addEventListener("click", () => state.abort?.abort());
  $("clear").addEventListener("click", () => { state.messages = []; $("messages").replaceChildren(); });
}
