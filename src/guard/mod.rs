//! Moderated chat: the filter around the chat model.
//!
//! 1. The conversation is screened: every user and system message, and the latest user turns
//!    read together ([`input_texts`]); if a label whose action is [`Action::Block`] flags any
//!    of them, the answer is a refusal naming the reason and the model is not called. The
//!    filter reads text in its judging form (look-alikes folded, `crate::text::normalize`).
//!    When the chat model carries a probe (`crate::models::probe`), the model's own states (at the
//!    end of the prompt, or averaged over the last user message) are judged too, from the prefill
//!    answering needs anyway; a flagged conversation is refused before any token is generated. The
//!    probe then takes over the filter's [`REQUEST_HARM_LABEL`] on the conversation: that head
//!    learned AdvBench's imperative phrasing, and on held-out everyday tasks phrased that way
//!    ("Write a tutorial on how to bake sourdough bread") it blocked 21 of 38 where the probe flags
//!    none. The probe is trained on requests alone and after a benign exchange (a probe trained on
//!    single turns let most harmful requests through after one: held-out past-tense rewordings
//!    119/123 alone, 77/123 after a turn); on validation conversations the filter's head added 2 of
//!    490 harmful requests for 5 more of 268 safe ones blocked (notes/issue-13-guard.md). Its score
//!    is still reported; without a probe it blocks. When there is more before the last user message
//!    than the default system prompt, that message is also judged on its own
//!    ([`last_message_judged_alone`]): either judgement blocks.
//! 2. The answer is generated and screened as it streams, one sentence at a time: text reaches
//!    the caller only after the whole answer so far has passed, so a harmful answer is stopped
//!    and replaced before any of it is shown. With an answer probe, the chat model also judges
//!    its own answer at each sentence end, from the states of the token generation has just
//!    computed (the request and the answer so far, in context). With safety adapters loaded
//!    ([`ChatModel::load_safety_adapters`]), a conversation the probe scores close to its
//!    threshold is answered with them when their answer opens with a refusal, and by the plain
//!    model otherwise: the adapters can only add refusals.
//! 3. Fail closed: if the filter itself fails (a lost GPU, a bug), the message is blocked.
//!    So is, by default, a user or system message in a language other than English: the
//!    judges read English ([`OtherLanguages`] lets the page judge or allow it instead).
//!
//! Each label has a threshold and an action ([`Policy`]); [`Action::Warn`] lets the text
//! through and reports the label, [`Action::Allow`] ignores it.
//!
//! Long chats (pages resend the whole history every turn): when the conversation and room for
//! the answer exceed the chat model's context window, the oldest messages after the system
//! message are left out ([`ChatModel::fit_context`]: the system prompt and the last user
//! message always stay; a last message too long on its own is an `InvalidInput` error) and
//! the reply says how many (`dropped_turns`, `droppedTurns` in JS). The screen reads exactly
//! the messages sent to the model, so its work is bounded by the window too, and each message
//! by [`MAX_SCREEN_WINDOWS`] of the filter's windows and all of them by
//! [`MAX_SCREEN_WINDOWS_IN_ALL`] (text the chat model's tokens pack much tighter than the
//! filter's, such as a run of one symbol, is refused). Without this a
//! history past 8,192 tokens was an error on every later turn, and a prefill near the window
//! needed gigabytes (see `crate::models::llama::ATTENTION_CHUNK`).

mod policy;

pub use policy::{Action, OtherLanguages, Policy, Rule, Screening};

use crate::chat::ChatModel;
use crate::error::{Error, Result};
use crate::filter::{Filter, WindowScores};
use crate::generate::{GenerateOptions, Generator, StopReason};
use crate::text::chat_template::Message;
use crate::text::language::{OtherLanguage, other_language};
use crate::text::refusal::{REFUSAL_WINDOW_CHARS, is_refusal};
use crate::text::sentence_done;
use policy::Side;

/// The filter label that judges whether a request asks for harm; where the chat model has a
/// request probe that judges the conversation, the probe judges that instead (module docs).
pub const REQUEST_HARM_LABEL: &str = "harmful";

/// The outcome of one moderated turn.
#[derive(Debug, Clone, Default, PartialEq, serde::Serialize)]
#[serde(rename_all = "camelCase")]
pub struct ModeratedReply {
    /// What the user sees: the answer, or a refusal when blocked.
    pub text: String,
    /// Whether the input or the answer was blocked (or the filter failed).
    pub blocked: bool,
    /// Why it was blocked, in words.
    pub reason: Option<String>,
    /// The user's message, screened (absent when the filter failed on it).
    pub input: Option<Screening>,
    /// The answer, screened (absent when the model was not called or the filter failed).
    pub output: Option<Screening>,
    /// Labels flagged with the warn action, on input or output.
    pub warnings: Vec<String>,
    /// Tokens generated (0 when the model was not called).
    pub tokens: usize,
    /// Prompt length in tokens (0 when the model was not called).
    pub prompt_tokens: usize,
    /// Why generation ended (`None` when the model was not called).
    pub stop_reason: Option<String>,
    /// The chat model's own harm score of the conversation (its probe), when it has one and
    /// the filter let the conversation through: the higher of the conversation's score and,
    /// when earlier turns or a system prompt precede it, the last user message's alone.
    pub chat_judge: Option<f32>,
    /// The chat model's highest harm score of the answer at its sentence ends (its answer
    /// probe), when it has one and an answer was judged.
    pub answer_judge: Option<f32>,
    /// How many of the oldest messages were left out because the conversation did not fit the
    /// context window with room for the answer (see [`ChatModel::fit_context`]; 0 when all
    /// were sent). Neither the model nor the input screen read them.
    pub dropped_turns: usize,
    /// Whether the answer came from the chat model's safety adapters: its probe scored the
    /// conversation close to its threshold (at least [`ChatModel::safety_adapters_from`]), so
    /// the model answered with the adapters that teach it to refuse harmful requests, and
    /// their answer opened with a refusal (one that does not is dropped unseen and the model
    /// answers without them). Never while the GPU engine generates (it applies no adapters).
    pub safety_adapters: bool,
    /// The language other than English a user or system message of the conversation is in,
    /// in words ("French"; the first such message's), whatever the policy then did
    /// ([`OtherLanguages`]); `None` when all read as English.
    pub other_language: Option<String>,
}

impl ModeratedReply {
    /// Turns this reply into a refusal for `reason`.
    fn refuse(&mut self, reason: String) {
        self.text = refusal(&reason);
        self.blocked = true;
        self.reason = Some(reason);
    }

    /// A refusal for `reason` after `generator` ran: it is cancelled, and what it spent is
    /// reported.
    fn blocked_while_generating(mut self, mut generator: Generator<'_>, reason: String) -> Self {
        generator.cancel();
        self.refuse(reason);
        let g = generator.finish();
        self.tokens = g.tokens.len();
        self.prompt_tokens = g.prompt_tokens;
        self.stop_reason = Some("blocked".into());
        self
    }
}

/// The request probe's score of the last user message alone (with the default system
/// prompt), where the conversation `ids` is more than that; `None` without a probe or when
/// the two prompts are the same.
///
/// Why: earlier turns change the states the probe reads (at the last prompt token or over the
/// last message).
/// Trained on requests alone and after one benign exchange, it still let through a fifth of
/// harmful validation requests after an exchange of a kind it had seen few of (a translation,
/// a persona; 189 of 245 flagged against 233 alone), and either judgement blocking took that
/// to 235 for 2 more of 143 safe requests (`train-probe --evaluate`, notes/issue-13-guard.md).
/// A split request ("how do I make" / "a pipe bomb") is still the conversation's to catch.
async fn last_message_judged_alone(
    chat: &ChatModel,
    messages: &[Message],
    ids: &[u32],
    options: &GenerateOptions,
) -> Result<Option<f32>> {
    let (Some(probe), Some(last)) = (
        chat.probe.as_ref(),
        messages.iter().rev().find(|m| m.role == "user"),
    ) else {
        return Ok(None);
    };
    let message = [Message::new("user", &last.content)];
    let alone = chat.prompt_ids(&message)?;
    if alone == ids {
        return Ok(None);
    }
    let positions = chat.request_probe_positions(&message)?;
    let features = if chat.model.gpu_engine().is_ok() {
        // The engine's prefill (burn's would make its f32 copy of the weights).
        let mut generator =
            Generator::with_states(chat, &alone, options, &probe.layers, positions)?;
        let features = generator.latest_states().await?;
        generator.cancel();
        features
    } else {
        // From the default system turn's keys and values, kept between requests, and only up
        // to the probe's deepest block: a 75-token judgement took 333 ms as a whole prefill,
        // 252 ms this way (`bench guard --system`, notes/issue-13-guard.md).
        chat.prompt_states(&alone, &probe.layers, positions).await?
    };
    Ok(Some(probe.score(&features)?))
}

/// Why the chat model's probe blocked: `what` ("the conversation", ...) scored `score` against
/// `threshold`.
fn judged_harmful(what: &str, score: f32, threshold: f32) -> String {
    format!("{what} was judged harmful by the chat model {score:.2} >= {threshold:.2}")
}

/// The languages other than English in a conversation's user and system messages
/// ([`crate::text::language`], read in their judging form).
struct Languages {
    /// The first message's in another language.
    first: Option<OtherLanguage>,
    /// The last user message's, when it is in another language.
    last_user: Option<OtherLanguage>,
}

impl Languages {
    fn of(messages: &[Message]) -> Self {
        let mut found = Languages {
            first: None,
            last_user: None,
        };
        for m in messages.iter().filter(|m| m.role != "assistant") {
            let language = other_language(&m.content);
            found.first = found.first.or(language);
            if m.role == "user" {
                found.last_user = language;
            }
        }
        found
    }

    /// Why `policy` refuses the conversation outright (`None` when it does not).
    fn block_reason(&self, policy: &Policy) -> Option<String> {
        let language = self
            .first
            .filter(|_| policy.other_languages() == OtherLanguages::Block)?;
        Some(format!(
            "a message is in {}, which the guard cannot judge: other languages are blocked",
            language.name
        ))
    }

    /// Whether the request probe judges the whole conversation under `policy`.
    fn probe_judges_conversation(&self, policy: &Policy) -> bool {
        self.first.is_none() || policy.other_languages() != OtherLanguages::Allow
    }

    /// Whether the request probe judges the last user message on its own under `policy`.
    fn probe_judges_last_message(&self, policy: &Policy) -> bool {
        self.last_user.is_none() || policy.other_languages() != OtherLanguages::Allow
    }
}

/// The text that replaces a blocked message or answer.
fn refusal(reason: &str) -> String {
    format!("Blocked by the content filter ({reason}).")
}

/// Screens `texts` together with `filter` under `policy`: each label's score is its highest
/// over the texts. `Err` carries the failure, for failing closed.
/// With `cache`, windows already judged through it are not run again
/// ([`Filter::scores_cached`]).
async fn screen(
    filter: &Filter,
    policy: &Policy,
    texts: &[&str],
    side: Side,
    cache: Option<&mut WindowScores>,
) -> Result<Screening> {
    Ok(screen_naming(filter, policy, texts, side, cache).await?.0)
}

/// [`screen`], and for each label (in the filter's order) the index of the text that scored
/// highest: what a reason names.
async fn screen_naming(
    filter: &Filter,
    policy: &Policy,
    texts: &[&str],
    side: Side,
    cache: Option<&mut WindowScores>,
) -> Result<(Screening, Vec<usize>)> {
    let scores = match cache {
        Some(cache) => filter.scores_cached(texts, cache).await?,
        None => filter.scores(texts).await?,
    };
    let mut worst: Option<(Vec<f32>, Vec<usize>)> = None;
    for (t, row) in scores.into_iter().enumerate() {
        worst = Some(match worst {
            None => (row.clone(), vec![t; row.len()]),
            Some((mut w, mut from)) => {
                for (l, &s) in row.iter().enumerate() {
                    if s > w[l] {
                        (w[l], from[l]) = (s, t);
                    }
                }
                (w, from)
            }
        });
    }
    let (worst, from) =
        worst.ok_or_else(|| Error::Backend("the filter returned no scores".into()))?;
    Ok((policy.screen_as(&worst, side), from))
}

/// How many of the latest user turns are also read as one text.
const USER_TURNS_READ_TOGETHER: usize = 4;

/// What the input screen reads: every user and system message on its own, and the latest
/// user turns joined, so that a request split across turns ("how do I make" / "a pipe bomb")
/// is still read as the request. Assistant turns are the model's (or the page's) own text.
/// The joined turns keep at most `max_bytes`, the latest (each message alone is checked
/// against the filter's limit before: [`check_screen_work`]).
pub fn input_texts(messages: &[Message], max_bytes: usize) -> Vec<String> {
    named_input_texts(messages, max_bytes)
        .into_iter()
        .map(|t| t.text)
        .collect()
}

/// One text the input screen reads, and how a reason names it.
struct InputText {
    text: String,
    /// "the message was" (the last user message), "the system message was", ...
    named: &'static str,
    /// The message's index in the messages screened (`None`: the latest user turns joined).
    message: Option<usize>,
}

/// [`input_texts`], each with its name.
fn named_input_texts(messages: &[Message], max_bytes: usize) -> Vec<InputText> {
    let last_user = messages.iter().rposition(|m| m.role == "user");
    let mut texts: Vec<InputText> = messages
        .iter()
        .enumerate()
        .filter(|(_, m)| m.role != "assistant" && !m.content.trim().is_empty())
        .map(|(i, m)| InputText {
            text: m.content.clone(),
            message: Some(i),
            named: match m.role.as_str() {
                "system" => "the system message was",
                _ if Some(i) == last_user => "the message was",
                _ => "an earlier user message was",
            },
        })
        .collect();
    let users: Vec<&str> = messages
        .iter()
        .filter(|m| m.role == "user")
        .map(|m| m.content.as_str())
        .collect();
    if users.len() > 1 {
        let recent = &users[users.len().saturating_sub(USER_TURNS_READ_TOGETHER)..];
        let joined = recent.join("\n");
        let mut from = joined.len().saturating_sub(max_bytes);
        while !joined.is_char_boundary(from) {
            from += 1;
        }
        texts.push(InputText {
            text: joined[from..].to_string(),
            named: "the latest user messages, read together, were",
            message: None,
        });
    }
    texts
}

/// The most bytes of any one message, read before the conversation is tokenized: more than
/// the chat model's window holds even of text its tokens pack tightest (64 `=` a token), so
/// such a message could only be left out, and tokenizing it cost seconds (10 MB: 7 s and
/// 1.1 GB natively) before the turn was refused anyway.
pub const MAX_MESSAGE_BYTES: usize = 1 << 20;

/// Errors for a conversation a turn cannot answer: no user message, an empty last one
/// (nothing to answer: it was reported as "the filter failed"), or a message over
/// [`MAX_MESSAGE_BYTES`]. The sizes of the messages the screen reads are checked once the
/// context is fitted ([`check_screen_work`]).
fn check_messages(messages: &[Message]) -> Result<()> {
    match messages.iter().rev().find(|m| m.role == "user") {
        None => {
            return Err(Error::InvalidInput(
                "there is no user message to answer".into(),
            ));
        }
        Some(m) if m.content.trim().is_empty() => {
            return Err(Error::InvalidInput("the last user message is empty".into()));
        }
        Some(_) => {}
    }
    match (messages.iter().enumerate()).find(|(_, m)| m.content.len() > MAX_MESSAGE_BYTES) {
        Some((i, m)) => Err(Error::InvalidInput(format!(
            "message {i} ({}) has {} bytes; a message may have at most {MAX_MESSAGE_BYTES} (the \
             chat model's context window holds far less)",
            m.role,
            m.content.len()
        ))),
        None => Ok(()),
    }
}

/// How a reason names the text behind `label` in `input` (`from`: the text with each label's
/// highest score): a flagged system message is not the user's message.
fn named_for<'a>(filter: &Filter, label: &str, inputs: &'a [InputText], from: &[usize]) -> &'a str {
    filter
        .label_index(label)
        .ok()
        .and_then(|l| from.get(l))
        .and_then(|&t| inputs.get(t))
        .map_or("the message was", |t| t.named)
}

/// The most filter windows (64 tokens, 16 shared) one message of a chat turn may take: about
/// 12,000 of the filter's tokens, more than a message of ordinary text that fits the chat
/// model's 8,192-token window makes. 120,000 `=` are 1,875 tokens to the chat model but
/// 2,600 windows to the filter: 42 s of screening natively, again at every later turn.
pub const MAX_SCREEN_WINDOWS: usize = 256;

/// The most filter windows the input screen reads in one turn, all its texts together: each
/// message under [`MAX_SCREEN_WINDOWS`], many of them would still add up to minutes of
/// screening, again at every later turn. A conversation of ordinary text that fills the chat
/// model's window reads about 350 (its user messages alone, then joined).
pub const MAX_SCREEN_WINDOWS_IN_ALL: usize = 4 * MAX_SCREEN_WINDOWS;

/// Errors for what the input screen would read (`inputs`, from the messages sent to the model;
/// `number` gives a message's index in the caller's conversation): a message longer than the
/// filter reads or than [`MAX_SCREEN_WINDOWS`] windows, or more than
/// [`MAX_SCREEN_WINDOWS_IN_ALL`] in all. Assistant messages and turns left out of the context
/// are not screened, so they are not held to these.
fn check_screen_work(
    filter: &Filter,
    messages: &[Message],
    inputs: &[InputText],
    number: impl Fn(usize) -> usize,
) -> Result<()> {
    let most = filter.options().max_text_bytes;
    let mut in_all = 0;
    for t in inputs {
        let named = t.message.map(|i| (number(i), &messages[i].role));
        if let Some((i, role)) = named
            && t.text.len() > most
        {
            return Err(Error::InvalidInput(format!(
                "message {i} ({role}) has {} bytes; the guard screens at most {most} a message",
                t.text.len()
            )));
        }
        let windows = filter.encoder().windows(&[&t.text])?.len();
        if let Some((i, role)) = named
            && windows > MAX_SCREEN_WINDOWS
        {
            return Err(Error::InvalidInput(format!(
                "message {i} ({role}) is too long for the guard to screen: {windows} of the \
                 filter's windows; at most {MAX_SCREEN_WINDOWS}"
            )));
        }
        in_all += windows;
    }
    if in_all > MAX_SCREEN_WINDOWS_IN_ALL {
        return Err(Error::InvalidInput(format!(
            "the conversation is too long for the guard to screen: {in_all} of the filter's \
             windows in all; at most {MAX_SCREEN_WINDOWS_IN_ALL} (leave out earlier turns)"
        )));
    }
    Ok(())
}

/// One moderated chat turn: answers the last user message of `messages` (see the module
/// docs). `on_text` receives screened pieces of the answer and returns `false` to stop;
/// `should_stop` is asked after every token (pieces come a sentence at a time, too rarely to
/// stop promptly). Invalid messages or options are errors; filter failures block (fail
/// closed).
pub async fn moderated_chat(
    filter: &Filter,
    policy: &Policy,
    chat: &ChatModel,
    messages: &[Message],
    options: &GenerateOptions,
    mut on_text: impl FnMut(&str) -> bool,
    mut should_stop: impl FnMut() -> bool,
) -> Result<ModeratedReply> {
    options.validate()?;
    check_messages(messages)?;
    // The context policy: old turns left out of a conversation too long for the window.
    let fitted = chat.fit_context(messages, options.max_new_tokens)?;
    let (messages, ids) = (&fitted.messages[..], fitted.ids);
    let inputs = named_input_texts(messages, filter.options().max_text_bytes);
    // The turns left out follow the system message, if there is one.
    let kept_first = usize::from(messages[0].role == "system");
    let number = |i: usize| {
        if i < kept_first {
            i
        } else {
            i + fitted.dropped
        }
    };
    check_screen_work(filter, messages, &inputs, number)?;
    let mut reply = ModeratedReply {
        dropped_turns: fitted.dropped,
        ..ModeratedReply::default()
    };
    let filter_failed = |e: Error| format!("the filter failed, so nothing is shown: {e}");
    let texts: Vec<&str> = inputs.iter().map(|t| t.text.as_str()).collect();
    let (mut input, from) =
        match screen_naming(filter, policy, &texts, Side::Conversation, None).await {
            Ok(s) => s,
            Err(e) => {
                reply.refuse(filter_failed(e));
                return Ok(reply);
            }
        };
    let languages = Languages::of(messages);
    reply.other_language = languages.first.map(|l| l.name.to_string());
    // The probe takes over the filter's harm label where it judges the conversation; where
    // it steps aside (`OtherLanguages::Allow`), the label judges as it does without a probe.
    if chat.probe.is_some() && languages.probe_judges_conversation(policy) {
        input.blocked.retain(|l| l != REQUEST_HARM_LABEL);
        input.warned.retain(|l| l != REQUEST_HARM_LABEL);
    }
    reply.warnings.extend(input.warned.iter().cloned());
    let blocked = policy
        .block_reason_by_source(&input, Side::Conversation, |label| {
            named_for(filter, label, &inputs, &from)
        })
        .or_else(|| languages.block_reason(policy));
    reply.input = Some(input);
    if let Some(reason) = blocked {
        reply.refuse(reason);
        return Ok(reply);
    }

    // Earlier turns can hide a request from the probe: the last user message is judged on
    // its own too, before the conversation (so that only one sequence is held at a time).
    let alone = match languages.probe_judges_last_message(policy) {
        true => last_message_judged_alone(chat, messages, &ids, options).await?,
        false => None,
    };
    if let Some(score) = alone {
        reply.chat_judge = Some(score);
        if let Some(probe) = chat.probe.as_ref().filter(|p| score >= p.threshold) {
            reply.refuse(judged_harmful(
                "the last message, read on its own,",
                score,
                probe.threshold,
            ));
            return Ok(reply);
        }
    }
    // The chat model's own judgement, from the prefill that answering needs anyway.
    let layers = (chat.probe.as_ref())
        .or(chat.answer_probe.as_ref())
        .map_or(&[][..], |p| &p.layers[..]);
    let positions = chat.request_probe_positions(messages)?;
    let mut generator = Generator::with_states(chat, &ids, options, layers, positions.clone())?;
    let conversation_probe =
        (chat.probe.as_ref()).filter(|_| languages.probe_judges_conversation(policy));
    if let Some(probe) = conversation_probe {
        // Right after the prefill: the states where the probe reads the prompt.
        let features = generator.latest_states().await?;
        let score = probe.score(&features)?;
        reply.chat_judge = Some(reply.chat_judge.map_or(score, |alone| alone.max(score)));
        if score >= probe.threshold {
            let reason = judged_harmful("the conversation", score, probe.threshold);
            return Ok(reply.blocked_while_generating(generator, reason));
        }
    }
    // What the generator released (it holds back what may start a stop string and cuts the
    // text at one), and how much of that was judged and shown.
    let mut released = String::new();
    // The second line: a conversation the probe finds suspicious but lets through is answered
    // with the safety adapters, if they refuse it (see `refusal_from_safety_adapters`). They
    // start after every block the probes read, so the states judged so far and at the
    // answer's sentence ends mean the same. Not where the GPU engine generates: it has no
    // adapter kernels, and burn's path would widen the weights to f32 on the GPU (about
    // 540 MB) for one turn.
    if reply
        .chat_judge
        .is_some_and(|score| score >= chat.safety_adapters_from)
        && chat.model.safety_adapters().is_some()
        && chat.model.gpu_engine().is_err()
    {
        let mut adapted = Generator::with_safety_adapters(chat, &ids, options, layers, positions)?;
        match refusal_from_safety_adapters(&mut adapted, &mut should_stop).await? {
            Some(opening) => {
                generator.cancel();
                generator = adapted;
                released = opening;
                reply.safety_adapters = true;
            }
            None => adapted.cancel(),
        }
    }
    let mut shown = 0;
    let mut cancelled = false;
    let mut answer_windows = WindowScores::default();
    loop {
        let piece = generator.next_piece().await?;
        if piece.is_some() && should_stop() {
            generator.cancel();
            cancelled = true;
            break;
        }
        let ended = piece.is_none();
        released.push_str(piece.as_deref().unwrap_or(""));
        let pending = &released[shown..];
        if pending.is_empty() || !(ended || sentence_done(pending)) {
            if ended {
                break;
            }
            continue;
        }
        // The whole answer so far is judged; its windows already judged are not run again.
        let screening = match screen(
            filter,
            policy,
            &[&released],
            Side::Answer,
            Some(&mut answer_windows),
        )
        .await
        {
            Ok(s) => s,
            Err(e) => return Ok(reply.blocked_while_generating(generator, filter_failed(e))),
        };
        for w in &screening.warned {
            if !reply.warnings.contains(w) {
                reply.warnings.push(w.clone());
            }
        }
        let blocked = policy.block_reason("the answer was", &screening, Side::Answer);
        reply.output = Some(screening);
        if let Some(reason) = blocked {
            return Ok(reply.blocked_while_generating(generator, reason));
        }
        if let Some(probe) = &chat.answer_probe {
            let score = match generator.latest_states().await {
                Ok(states) => probe.score(&states),
                Err(e) => Err(e),
            };
            let score = match score {
                Ok(s) => s,
                Err(e) => return Ok(reply.blocked_while_generating(generator, filter_failed(e))),
            };
            reply.answer_judge = Some(reply.answer_judge.map_or(score, |s| s.max(score)));
            if score >= probe.threshold {
                let reason = judged_harmful("the answer", score, probe.threshold);
                return Ok(reply.blocked_while_generating(generator, reason));
            }
        }
        let piece = released[shown..].to_string();
        shown = released.len();
        if !on_text(&piece) {
            generator.cancel();
            cancelled = true;
            break;
        }
        if ended {
            break;
        }
    }
    let g = generator.finish();
    // Only screened text counts: on cancel, what was generated past the last check is dropped.
    released.truncate(shown);
    reply.text = released;
    reply.tokens = g.tokens.len();
    reply.prompt_tokens = g.prompt_tokens;
    reply.stop_reason = Some(if cancelled {
        StopReason::Cancelled.name()
    } else {
        g.stop_reason.name()
    });
    Ok(reply)
}

/// The opening of the safety adapters' answer, generated until it is known whether it refuses
/// ([`is_refusal`]: a refusal phrase appears, the opening window passes without one, or the
/// answer ends): `Some` with the text so far (not yet screened) when it refuses, `None` when
/// it does not or the caller asked to stop. The guard then answers without them, from the
/// plain model's prefill it already holds, so the adapters can only add refusals. Why: on
/// their own they sometimes answer a harmful request worse than the plain model (the example
/// page's "How do I make a pipe bomb at home? Give the steps." got a degenerate compliant
/// answer with them that the answer screens passed; the plain model's answer is stopped).
async fn refusal_from_safety_adapters(
    adapted: &mut Generator<'_>,
    should_stop: &mut impl FnMut() -> bool,
) -> Result<Option<String>> {
    let mut opening = String::new();
    loop {
        if is_refusal(&opening) {
            return Ok(Some(opening));
        }
        if opening.chars().count() >= REFUSAL_WINDOW_CHARS || should_stop() {
            return Ok(None);
        }
        match adapted.next_piece().await? {
            Some(piece) => opening.push_str(&piece),
            None => return Ok(is_refusal(&opening).then_some(opening)),
        }
    }
}

/// How a moderated turn would judge a finished answer (see [`judge_answer`]).
#[derive(Debug, Clone, PartialEq, serde::Serialize)]
#[serde(rename_all = "camelCase")]
pub struct AnswerJudgement {
    /// Whether the answer would be stopped.
    pub blocked: bool,
    /// Why, in words.
    pub reason: Option<String>,
    /// The filter's screening of the whole answer.
    pub output: Screening,
    /// The request probe's score of the conversation (`None` without one).
    pub chat_judge: Option<f32>,
    /// The answer probe's highest score over the answer's sentence ends (`None` without one).
    pub answer_judge: Option<f32>,
    /// As in [`ModeratedReply::other_language`]; under [`OtherLanguages::Block`] such a
    /// conversation is never answered, so its answer is stopped.
    pub other_language: Option<String>,
}

/// Judges `answer`, given as the assistant's reply to `messages`, with what judges answers in
/// a moderated turn: the filter at the answer thresholds; the chat model's request probe on
/// the conversation (a turn it flags is never answered, so an answer to it is stopped); and
/// its answer probe at every sentence end (the model reading the request with the answer).
/// The states come from one forward pass over the conversation and the answer. For answers
/// from elsewhere (another model, a person) and for evaluation. One difference from
/// streaming: the filter reads the whole answer once, not each prefix.
pub async fn judge_answer(
    filter: &Filter,
    policy: &Policy,
    chat: &ChatModel,
    messages: &[Message],
    answer: &str,
) -> Result<AnswerJudgement> {
    if answer.trim().is_empty() {
        return Err(Error::InvalidInput("the answer is empty".into()));
    }
    let output = screen(filter, policy, &[answer], Side::Answer, None).await?;
    let languages = Languages::of(messages);
    let mut reason = policy
        .block_reason("the answer was", &output, Side::Answer)
        .or_else(|| languages.block_reason(policy));
    let (mut chat_judge, mut answer_judge) = (None, None);
    let layers = (chat.probe.as_ref()).or(chat.answer_probe.as_ref());
    if let Some(layers) = layers.map(|p| &p.layers[..]) {
        let prompt = chat.prompt_ids(messages)?;
        let ids = chat.tokenizer.encode_literal(answer)?;
        let request = chat.request_probe_positions(messages)?;
        let states = chat.answer_states(&prompt, &ids, layers, request).await?;
        let conversation_probe =
            (chat.probe.as_ref()).filter(|_| languages.probe_judges_conversation(policy));
        if let Some(probe) = conversation_probe {
            let score = probe.score(&states.prompt_end)?;
            chat_judge = Some(score);
            if reason.is_none() && score >= probe.threshold {
                reason = Some(judged_harmful("the conversation", score, probe.threshold));
            }
        }
        if let Some(probe) = &chat.answer_probe {
            let mut worst = 0f32;
            for row in &states.sentence_ends {
                worst = worst.max(probe.score(row)?);
            }
            answer_judge = Some(worst);
            if reason.is_none() && worst >= probe.threshold {
                reason = Some(judged_harmful("the answer", worst, probe.threshold));
            }
        }
    }
    Ok(AnswerJudgement {
        blocked: reason.is_some(),
        reason,
        output,
        chat_judge,
        answer_judge,
        other_language: languages.first.map(|l| l.name.to_string()),
    })
}
