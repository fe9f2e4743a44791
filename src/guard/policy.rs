//! What a moderated turn does with the filter's scores: a rule per label (a threshold and an
//! action), and the thresholds the chat model's answers are held to.

use std::collections::BTreeMap;
use std::fmt;
use std::str::FromStr;

use crate::error::{Error, Result};
use crate::filter::{Filter, Verdict, score_map};

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

/// What a moderated turn does when a user or system message is in a language other than
/// English ([`crate::text::language`]): the judges read English, and the chat model's probe
/// reads other languages as "unfamiliar" more than as harmful or not (notes/issue-13-guard.md).
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub enum OtherLanguages {
    /// Refuse the turn, naming the language. The default: a judge that cannot read the text
    /// fails closed, as the guard does when the filter fails.
    #[default]
    Block,
    /// Judge it as if it were English (what the guard did before it could tell): on 200
    /// requests in eight other languages the whole pipeline stopped 70% of the harmless ones
    /// and 92.5% of the harmful ones (the probe alone flagged 67% of the harmless ones).
    Judge,
    /// The chat model's probe does not judge a conversation with such a message (nor the last
    /// message alone, when that is the one); the filter's heads (its `harmful` head too, as
    /// without a probe) and the answer screens still do. For pages whose users write in other
    /// languages and who accept that a request written (or disguised) in one passes the probe.
    Allow,
}

impl FromStr for OtherLanguages {
    type Err = Error;
    fn from_str(s: &str) -> Result<Self> {
        match s {
            "block" => Ok(OtherLanguages::Block),
            "judge" => Ok(OtherLanguages::Judge),
            "allow" => Ok(OtherLanguages::Allow),
            other => Err(Error::InvalidInput(format!(
                "unknown choice for other languages {other:?}: use \"block\", \"judge\" or \"allow\""
            ))),
        }
    }
}

impl fmt::Display for OtherLanguages {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(match self {
            OtherLanguages::Block => "block",
            OtherLanguages::Judge => "judge",
            OtherLanguages::Allow => "allow",
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
    /// Per label, the threshold a chat conversation's messages are held to: the filter's
    /// conversation threshold (calibrated on safe requests to the chat model, never below the
    /// label's own) until the rule is set, then the rule's.
    conversation_thresholds: Vec<f32>,
    /// What a message in another language does.
    other_languages: OtherLanguages,
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
            answer_thresholds: calibrated(filter, filter.answer_thresholds()),
            conversation_thresholds: calibrated(filter, filter.conversation_thresholds()),
            other_languages: OtherLanguages::default(),
        }
    }

    /// This policy for `filter`'s current labels (after tuning added or reset some): rules of
    /// labels that still exist stay; new labels get the filter's threshold and block.
    pub fn synced(&self, filter: &Filter) -> Policy {
        let answers = calibrated(filter, filter.answer_thresholds());
        let conversations = calibrated(filter, filter.conversation_thresholds());
        let mut synced = Policy {
            labels: filter.labels().to_vec(),
            rules: Vec::new(),
            answer_thresholds: Vec::new(),
            conversation_thresholds: Vec::new(),
            other_languages: self.other_languages,
        };
        for (i, (label, &threshold)) in filter.labels().iter().zip(filter.thresholds()).enumerate()
        {
            let (rule, answer, conversation) = match self.labels.iter().position(|l| l == label) {
                Some(j) => (
                    self.rules[j],
                    self.answer_thresholds[j],
                    self.conversation_thresholds[j],
                ),
                None => (
                    Rule {
                        threshold,
                        action: Action::Block,
                    },
                    answers[i],
                    conversations[i],
                ),
            };
            synced.rules.push(rule);
            synced.answer_thresholds.push(answer);
            synced.conversation_thresholds.push(conversation);
        }
        synced
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
            self.conversation_thresholds[i] = rule.threshold;
        }
        self.rules[i] = rule;
        Ok(())
    }

    /// What a message in another language does.
    pub fn other_languages(&self) -> OtherLanguages {
        self.other_languages
    }

    /// Sets what a message in another language does.
    pub fn set_other_languages(&mut self, choice: OtherLanguages) {
        self.other_languages = choice;
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
            Side::Conversation => self.conversation_thresholds[i],
            Side::Answer => self.answer_thresholds[i],
        }
    }

    pub(crate) fn screen_as(&self, scores: &[f32], side: Side) -> Screening {
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
    pub(crate) fn block_reason(
        &self,
        what: &str,
        screening: &Screening,
        side: Side,
    ) -> Option<String> {
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

    /// [`Policy::block_reason`] where the labels may come from different texts: `source`
    /// names the text behind a label ("the system message was", ...), and the labels of each
    /// text are listed after its name, texts in the order of their first label.
    pub(crate) fn block_reason_by_source<'a>(
        &self,
        screening: &Screening,
        side: Side,
        source: impl Fn(&str) -> &'a str,
    ) -> Option<String> {
        let mut texts: Vec<(&str, Vec<String>)> = Vec::new();
        for label in &screening.blocked {
            let what = source(label);
            match texts.iter_mut().find(|(w, _)| *w == what) {
                Some((_, labels)) => labels.push(label.clone()),
                None => texts.push((what, vec![label.clone()])),
            }
        }
        let parts: Vec<String> = texts
            .into_iter()
            .filter_map(|(what, blocked)| {
                let part = Screening {
                    blocked,
                    ..screening.clone()
                };
                self.block_reason(what, &part, side)
            })
            .collect();
        (!parts.is_empty()).then(|| parts.join("; "))
    }
}

/// The filter's thresholds for one side of a chat: its `calibrated` threshold per label,
/// never below the label's own.
fn calibrated(filter: &Filter, calibrated: Vec<f32>) -> Vec<f32> {
    filter
        .thresholds()
        .iter()
        .zip(calibrated)
        .map(|(&own, c)| own.max(c))
        .collect()
}

/// What is screened: a text (a comment, a message), a chat conversation, or the chat
/// model's answer.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Side {
    /// A text on its own ([`Policy::screen`]): the rules' thresholds.
    Input,
    /// The messages of a conversation the chat model is to answer.
    Conversation,
    /// The chat model's answer.
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
            conversation_thresholds: vec![0.7, 0.5, 0.5],
            other_languages: OtherLanguages::default(),
        }
    }

    #[test]
    fn other_languages_are_blocked_by_default_and_the_choice_reads_writes_and_refuses_unknowns() {
        let mut p = policy();
        assert_eq!(p.other_languages(), OtherLanguages::Block);
        for choice in [
            OtherLanguages::Block,
            OtherLanguages::Judge,
            OtherLanguages::Allow,
        ] {
            assert_eq!(
                choice.to_string().parse::<OtherLanguages>().unwrap(),
                choice
            );
            p.set_other_languages(choice);
            assert_eq!(p.other_languages(), choice);
        }
        let err = "Judge".parse::<OtherLanguages>().unwrap_err().to_string();
        assert!(err.contains("\"block\", \"judge\" or \"allow\""), "{err}");
    }

    #[test]
    fn conversations_have_their_own_thresholds_until_a_rule_is_set() {
        let mut p = policy();
        // offensive 0.6 flags a text on its own, not a chat message (0.7 there).
        assert_eq!(p.screen(&[0.6, 0.1, 0.1]).blocked, vec!["offensive"]);
        let s = p.screen_as(&[0.6, 0.1, 0.1], Side::Conversation);
        assert!(s.blocked.is_empty());
        let s = p.screen_as(&[0.75, 0.1, 0.1], Side::Conversation);
        assert_eq!(
            p.block_reason("the message was", &s, Side::Conversation)
                .unwrap(),
            "the message was flagged as offensive 0.75 >= 0.70"
        );
        // A rule the page sets holds everywhere.
        p.set(
            "offensive",
            Rule {
                threshold: 0.55,
                action: Action::Block,
            },
        )
        .unwrap();
        let s = p.screen_as(&[0.6, 0.1, 0.1], Side::Conversation);
        assert_eq!(s.blocked, vec!["offensive"]);
    }

    #[test]
    fn a_reason_names_each_flagged_text_with_its_own_labels() {
        let p = policy();
        let s = p.screen(&[0.9, 0.95, 0.8]);
        assert_eq!(s.blocked, vec!["offensive", "hate", "harmful"]);
        let source = |label: &str| match label {
            "hate" => "the message was",
            _ => "the system message was",
        };
        assert_eq!(
            p.block_reason_by_source(&s, Side::Input, source).unwrap(),
            "the system message was flagged as offensive 0.90 >= 0.50, harmful 0.80 >= 0.50; \
             the message was flagged as hate 0.95 >= 0.50"
        );
        let one = p.block_reason_by_source(&s, Side::Input, |_| "the message was");
        assert_eq!(one, p.block_reason("the message was", &s, Side::Input));
        let none = p.screen(&[0.1, 0.1, 0.1]);
        assert!(
            p.block_reason_by_source(&none, Side::Input, source)
                .is_none()
        );
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
    fn bad_rules_and_unknown_actions_are_errors_and_actions_parse_as_printed() {
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
        let err = "ban".parse::<Action>().unwrap_err().to_string();
        assert!(
            err.contains(r#"unknown action "ban": use "block", "warn" or "allow""#),
            "{err}"
        );
        for action in [Action::Block, Action::Warn, Action::Allow] {
            assert_eq!(action.to_string().parse::<Action>().unwrap(), action);
        }
    }
}
