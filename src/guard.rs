//! Moderated chat: the filter around the chat model.
//!
//! 1. The conversation is screened: every user and system message, and the latest user turns
//!    read together ([`input_texts`]); if a label whose action is [`Action::Block`] flags any
//!    of them, the answer is a refusal naming the reason and the model is not called. The
//!    filter reads text in its judging form (look-alikes folded, `crate::text::normalize`).
//!    When the chat model carries a probe (`crate::models::probe`), the model's own states at
//!    the end of the prompt are judged too, from the prefill answering needs anyway; a
//!    flagged conversation is refused before any token is generated.
//! 2. The answer is generated and screened as it streams, one sentence at a time: text reaches
//!    the caller only after the whole answer so far has passed, so a harmful answer is stopped
//!    and replaced before any of it is shown.
//! 3. Fail closed: if the filter itself fails (a lost GPU, a bug), the message is blocked.
//!
//! Each label has a threshold and an action ([`Policy`]); [`Action::Warn`] lets the text
//! through and reports the label, [`Action::Allow`] ignores it.

use std::collections::BTreeMap;
use std::fmt;
use std::str::FromStr;

use crate::backend::read_f32;
use crate::chat::ChatModel;
use crate::error::{Error, Result};
use crate::filter::{Filter, Verdict, score_map};
use crate::generate::{GenerateOptions, Generator, StopReason};
use crate::text::chat_template::Message;

/// What a flagged label does.
#[derive(Debug, Clone, Copy, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum Action {
    /// Refuse the message, or stop and replace the answer.
    Block,
    /// Let it through, reporting the label.
    Warn,
    /// Ignore the label.
    Allow,
}

impl FromStr for Action {
    type Err = Error;
    fn from_str(s: &str) -> Result<Self> {
        match s {
            "block" => Ok(Action::Block),
            "warn" => Ok(Action::Warn),
            "allow" => Ok(Action::Allow),
            other => Err(Error::InvalidInput(format!(
                "unknown action {other:?}: use \"block\", \"warn\" or \"allow\""
            ))),
        }
    }
}

impl fmt::Display for Action {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(match self {
            Action::Block => "block",
            Action::Warn => "warn",
            Action::Allow => "allow",
        })
    }
}

/// One label's rule.
#[derive(Debug, Clone, Copy, PartialEq, serde::Serialize, serde::Deserialize)]
pub struct Rule {
    /// Scores at or above this flag the label (0 to 1).
    pub threshold: f32,
    /// What a flag does.
    pub action: Action,
}

/// A rule per filter label, in the filter's label order.
#[derive(Debug, Clone, PartialEq)]
pub struct Policy {
    labels: Vec<String>,
    rules: Vec<Rule>,
    /// Per label, the threshold the chat model's answers are held to: the filter's answer
    /// threshold (calibrated on the model's benign answers, never below the label's own) until
    /// the rule is set, then the rule's.
    answer_thresholds: Vec<f32>,
}

impl Policy {
    /// The filter's own thresholds (chosen on validation data), every label blocking.
    pub fn new(filter: &Filter) -> Self {
        Policy {
            labels: filter.labels().to_vec(),
            rules: filter
                .thresholds()
                .iter()
                .map(|&threshold| Rule {
                    threshold,
                    action: Action::Block,
                })
                .collect(),
            answer_thresholds: answer_thresholds(filter),
        }
    }

    /// This policy for `filter`'s current labels (after tuning added or reset some): rules of
    /// labels that still exist stay; new labels get the filter's threshold and block.
    pub fn synced(&self, filter: &Filter) -> Policy {
        let answers = answer_thresholds(filter);
        let (rules, answer_thresholds) = filter
            .labels()
            .iter()
            .zip(filter.thresholds())
            .zip(answers)
            .map(|((label, &threshold), answer)| {
                match self.labels.iter().position(|l| l == label) {
                    Some(i) => (self.rules[i], self.answer_thresholds[i]),
                    None => (
                        Rule {
                            threshold,
                            action: Action::Block,
                        },
                        answer,
                    ),
                }
            })
            .unzip();
        Policy {
            labels: filter.labels().to_vec(),
            rules,
            answer_thresholds,
        }
    }

    /// Replaces the rule of `label`; a changed threshold then holds for answers too. Errors
    /// for an unknown label or a threshold outside 0..=1.
    pub fn set(&mut self, label: &str, rule: Rule) -> Result<()> {
        let i = self.labels.iter().position(|l| l == label).ok_or_else(|| {
            Error::InvalidInput(format!(
                "unknown label {label:?} (labels: {})",
                self.labels.join(", ")
            ))
        })?;
        if !(0.0..=1.0).contains(&rule.threshold) {
            return Err(Error::InvalidInput(format!(
                "threshold {} for {label} is outside 0 to 1",
                rule.threshold
            )));
        }
        // A new threshold is the caller's choice for answers too; re-applying the same rule
        // (the worker does after a GPU-to-CPU fallback) keeps the calibrated one.
        if rule.threshold != self.rules[i].threshold {
            self.answer_thresholds[i] = rule.threshold;
        }
        self.rules[i] = rule;
        Ok(())
    }

    /// `(label, rule)` pairs in label order.
    pub fn rules(&self) -> impl Iterator<Item = (&str, Rule)> {
        self.labels
            .iter()
            .map(String::as_str)
            .zip(self.rules.iter().copied())
    }

    /// The thresholds, in label order.
    pub fn thresholds(&self) -> Vec<f32> {
        self.rules.iter().map(|r| r.threshold).collect()
    }

    /// Applies the rules to one text's scores (label order).
    pub fn screen(&self, scores: &[f32]) -> Screening {
        self.screen_as(scores, Side::Input)
    }

    /// [`Policy::screen`] for an answer of the chat model, at the answer thresholds.
    pub fn screen_answer(&self, scores: &[f32]) -> Screening {
        self.screen_as(scores, Side::Answer)
    }

    /// The threshold label `i` is held to on `side`.
    fn threshold(&self, i: usize, side: Side) -> f32 {
        match side {
            Side::Input => self.rules[i].threshold,
            Side::Answer => self.answer_thresholds[i],
        }
    }

    fn screen_as(&self, scores: &[f32], side: Side) -> Screening {
        let mut s = Screening {
            scores: score_map(&self.labels, scores),
            blocked: Vec::new(),
            warned: Vec::new(),
        };
        for (i, (label, &score)) in self.labels.iter().zip(scores).enumerate() {
            if score >= self.threshold(i, side) {
                match self.rules[i].action {
                    Action::Block => s.blocked.push(label.clone()),
                    Action::Warn => s.warned.push(label.clone()),
                    Action::Allow => {}
                }
            }
        }
        s
    }

    /// A filter verdict under these thresholds (labels flagged whatever their action).
    pub fn verdict(&self, scores: &[f32]) -> Verdict {
        Verdict::new(&self.labels, scores, &self.thresholds())
    }

    /// Why `screening` (of `side`) blocks, in words (`None` when it does not).
    fn block_reason(&self, what: &str, screening: &Screening, side: Side) -> Option<String> {
        if screening.blocked.is_empty() {
            return None;
        }
        let parts: Vec<String> = screening
            .blocked
            .iter()
            .map(|l| {
                let i = self.labels.iter().position(|x| x == l).unwrap_or(0);
                format!(
                    "{l} {:.2} >= {:.2}",
                    screening.scores.get(l).copied().unwrap_or(f32::NAN),
                    self.threshold(i, side)
                )
            })
            .collect();
        Some(format!("{what} flagged as {}", parts.join(", ")))
    }
}

/// The filter's thresholds for answers: its calibrated answer threshold per label, never below
/// the label's own.
fn answer_thresholds(filter: &Filter) -> Vec<f32> {
    filter
        .thresholds()
        .iter()
        .zip(filter.answer_thresholds())
        .map(|(&own, answer)| own.max(answer))
        .collect()
}

/// What is screened: the conversation, or the chat model's answer.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Side {
    Input,
    Answer,
}

/// One text's scores under a [`Policy`].
#[derive(Debug, Clone, PartialEq, serde::Serialize)]
pub struct Screening {
    /// Score per label.
    pub scores: BTreeMap<String, f32>,
    /// Flagged labels whose action is block.
    pub blocked: Vec<String>,
    /// Flagged labels whose action is warn.
    pub warned: Vec<String>,
}

/// The outcome of one moderated turn.
#[derive(Debug, Clone, PartialEq, serde::Serialize)]
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
    /// the filter let the conversation through.
    pub chat_judge: Option<f32>,
}

/// The text that replaces a blocked message or answer.
fn refusal(reason: &str) -> String {
    format!("Blocked by the content filter ({reason}).")
}

/// Whether `pending` ends a sentence (or is long enough to screen anyway).
fn sentence_done(pending: &str) -> bool {
    const LONGEST_UNSCREENED: usize = 240;
    pending.len() >= LONGEST_UNSCREENED
        || pending
            .trim_end_matches([' ', '"', '\'', ')'])
            .ends_with(['.', '!', '?', '\n', ':', ';'])
}

/// Screens `texts` together with `filter` under `policy`: each label's score is its highest
/// over the texts. `Err` carries the failure, for failing closed.
async fn screen(filter: &Filter, policy: &Policy, texts: &[&str], side: Side) -> Result<Screening> {
    let scores = filter.scores(texts).await?;
    let mut worst: Option<Vec<f32>> = None;
    for row in scores {
        worst = Some(match worst {
            None => row,
            Some(w) => w.iter().zip(&row).map(|(a, b)| a.max(*b)).collect(),
        });
    }
    let worst = worst.ok_or_else(|| Error::Backend("the filter returned no scores".into()))?;
    Ok(policy.screen_as(&worst, side))
}

/// How many of the latest user turns are also read as one text.
const USER_TURNS_READ_TOGETHER: usize = 4;

/// What the input screen reads: every user and system message on its own, and the latest
/// user turns joined, so that a request split across turns ("how do I make" / "a pipe bomb")
/// is still read as the request. Assistant turns are the model's (or the page's) own text.
pub fn input_texts(messages: &[Message]) -> Vec<String> {
    let mut texts: Vec<String> = messages
        .iter()
        .filter(|m| m.role != "assistant" && !m.content.trim().is_empty())
        .map(|m| m.content.clone())
        .collect();
    let users: Vec<&str> = messages
        .iter()
        .filter(|m| m.role == "user")
        .map(|m| m.content.as_str())
        .collect();
    if users.len() > 1 {
        let recent = &users[users.len().saturating_sub(USER_TURNS_READ_TOGETHER)..];
        texts.push(recent.join("\n"));
    }
    texts
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
    if !messages.iter().any(|m| m.role == "user") {
        return Err(Error::InvalidInput(
            "there is no user message to answer".into(),
        ));
    }
    let ids = chat.prompt_ids(messages)?;
    let mut reply = ModeratedReply {
        text: String::new(),
        blocked: false,
        reason: None,
        input: None,
        output: None,
        warnings: Vec::new(),
        tokens: 0,
        prompt_tokens: 0,
        stop_reason: None,
        chat_judge: None,
    };
    let fail_closed = |mut reply: ModeratedReply, e: Error| {
        let reason = format!("the filter failed, so nothing is shown: {e}");
        reply.text = refusal(&reason);
        reply.blocked = true;
        reply.reason = Some(reason);
        reply
    };
    let texts = input_texts(messages);
    let texts: Vec<&str> = texts.iter().map(String::as_str).collect();
    let input = match screen(filter, policy, &texts, Side::Input).await {
        Ok(s) => s,
        Err(e) => return Ok(fail_closed(reply, e)),
    };
    reply.warnings.extend(input.warned.iter().cloned());
    if let Some(reason) = policy.block_reason("the message was", &input, Side::Input) {
        reply.text = refusal(&reason);
        reply.blocked = true;
        reply.reason = Some(reason);
        reply.input = Some(input);
        return Ok(reply);
    }
    reply.input = Some(input);

    // The chat model's own judgement, from the prefill that answering needs anyway.
    let layers = chat.probe.as_ref().map_or(&[][..], |p| &p.layers[..]);
    let (mut generator, states) = Generator::with_states(chat, &ids, options, layers)?;
    if let Some(probe) = &chat.probe {
        let mut features = Vec::with_capacity(probe.width());
        for s in states {
            features.extend(read_f32(s).await?);
        }
        let score = probe.score(&features)?;
        reply.chat_judge = Some(score);
        if score >= probe.threshold {
            generator.cancel();
            let reason = format!(
                "the conversation was judged harmful by the chat model {score:.2} >= {:.2}",
                probe.threshold
            );
            reply.text = refusal(&reason);
            reply.blocked = true;
            reply.reason = Some(reason);
            reply.prompt_tokens = ids.len();
            reply.stop_reason = Some("blocked".into());
            return Ok(reply);
        }
    }
    let mut shown = 0;
    let mut cancelled = false;
    loop {
        let piece = generator.next_piece().await?;
        if piece.is_some() && should_stop() {
            generator.cancel();
            cancelled = true;
            break;
        }
        let ended = piece.is_none();
        let pending = &generator.text()[shown..];
        if pending.is_empty() || !(ended || sentence_done(pending)) {
            if ended {
                break;
            }
            continue;
        }
        let text = generator.text().to_string();
        let screening = match screen(filter, policy, &[&text], Side::Answer).await {
            Ok(s) => s,
            Err(e) => {
                generator.cancel();
                let mut reply = fail_closed(reply, e);
                let g = generator.finish();
                reply.tokens = g.tokens.len();
                reply.prompt_tokens = g.prompt_tokens;
                reply.stop_reason = Some("blocked".into());
                return Ok(reply);
            }
        };
        for w in &screening.warned {
            if !reply.warnings.contains(w) {
                reply.warnings.push(w.clone());
            }
        }
        if let Some(reason) = policy.block_reason("the answer was", &screening, Side::Answer) {
            generator.cancel();
            reply.text = refusal(&reason);
            reply.blocked = true;
            reply.reason = Some(reason);
            reply.output = Some(screening);
            let g = generator.finish();
            reply.tokens = g.tokens.len();
            reply.prompt_tokens = g.prompt_tokens;
            reply.stop_reason = Some("blocked".into());
            return Ok(reply);
        }
        reply.output = Some(screening);
        let piece = text[shown..].to_string();
        shown = text.len();
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
    reply.text = g.text[..shown.min(g.text.len())].to_string();
    reply.tokens = g.tokens.len();
    reply.prompt_tokens = g.prompt_tokens;
    reply.stop_reason = Some(if cancelled {
        StopReason::Cancelled.name()
    } else {
        g.stop_reason.name()
    });
    Ok(reply)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn policy() -> Policy {
        Policy {
            labels: vec!["offensive".into(), "hate".into(), "harmful".into()],
            rules: vec![
                Rule {
                    threshold: 0.5,
                    action: Action::Block,
                };
                3
            ],
            answer_thresholds: vec![0.5, 0.9, 0.5],
        }
    }

    #[test]
    fn screening_applies_thresholds_and_actions() {
        let mut p = policy();
        p.set(
            "offensive",
            Rule {
                threshold: 0.3,
                action: Action::Warn,
            },
        )
        .unwrap();
        p.set(
            "hate",
            Rule {
                threshold: 0.5,
                action: Action::Allow,
            },
        )
        .unwrap();
        let s = p.screen(&[0.4, 0.9, 0.5]);
        assert_eq!(s.warned, vec!["offensive"]);
        assert_eq!(
            s.blocked,
            vec!["harmful"],
            "0.5 >= 0.5 blocks; allow ignores hate"
        );
        let reason = p.block_reason("the message was", &s, Side::Input).unwrap();
        assert_eq!(reason, "the message was flagged as harmful 0.50 >= 0.50");
        assert!(
            p.block_reason("x", &p.screen(&[0.1, 0.1, 0.1]), Side::Input)
                .is_none()
        );
        // Answers have their own thresholds: hate 0.85 flags a message, not an answer.
        let mut p2 = policy();
        assert_eq!(p2.screen(&[0.1, 0.85, 0.1]).blocked, vec!["hate"]);
        assert!(p2.screen_answer(&[0.1, 0.85, 0.1]).blocked.is_empty());
        let s = p2.screen_answer(&[0.1, 0.95, 0.1]);
        assert_eq!(
            p2.block_reason("the answer was", &s, Side::Answer).unwrap(),
            "the answer was flagged as hate 0.95 >= 0.90"
        );
        // Setting a rule sets the threshold for answers too.
        p2.set(
            "hate",
            Rule {
                threshold: 0.97,
                action: Action::Block,
            },
        )
        .unwrap();
        assert!(p2.screen_answer(&[0.1, 0.95, 0.1]).blocked.is_empty());
        p2.set(
            "hate",
            Rule {
                threshold: 0.3,
                action: Action::Block,
            },
        )
        .unwrap();
        assert_eq!(p2.screen_answer(&[0.1, 0.4, 0.1]).blocked, vec!["hate"]);
        // Re-applying an unchanged rule keeps the answer threshold.
        let mut p3 = policy();
        p3.set(
            "hate",
            Rule {
                threshold: 0.5,
                action: Action::Warn,
            },
        )
        .unwrap();
        assert!(p3.screen_answer(&[0.1, 0.85, 0.1]).warned.is_empty());
        let v = p.verdict(&[0.4, 0.9, 0.1]);
        assert_eq!(v.labels, vec!["offensive", "hate"]);
    }

    #[test]
    fn bad_rules_are_errors() {
        let mut p = policy();
        let rule = Rule {
            threshold: 1.5,
            action: Action::Block,
        };
        assert!(p.set("harmful", rule).is_err());
        assert!(
            p.set(
                "spam",
                Rule {
                    threshold: 0.5,
                    ..rule
                }
            )
            .is_err()
        );
        assert!("ban".parse::<Action>().is_err());
        assert_eq!("warn".parse::<Action>().unwrap(), Action::Warn);
    }

    #[test]
    fn sentences_end_at_punctuation_or_length() {
        assert!(sentence_done("The capital is Paris."));
        assert!(sentence_done("Really?\" "));
        assert!(!sentence_done("The capital is"));
        assert!(sentence_done(&"word ".repeat(60)));
    }
}
