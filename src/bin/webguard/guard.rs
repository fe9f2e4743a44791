//! `guard` and `eval-guard`: the whole moderated pipeline (input screen -> answer -> output
//! screen), for one prompt and for a labelled file of prompts. `eval-guard` is how a user
//! judges a policy on their own prompts: how much unsafe text gets through, how much safe text
//! is stopped.

use std::collections::BTreeMap;
use std::io::Write;
use std::path::{Path, PathBuf};

use serde::{Deserialize, Serialize};
use webguard::generate::GenerateOptions;
use webguard::guard::{ModeratedReply, OtherLanguages, Policy, moderated_chat};
use webguard::text::chat_template::Message;
use webguard::text::refusal::is_refusal;
use webguard::{ChatModel, Error, Filter, Result};

use crate::common::{Progress, check_safe_or_unsafe, read, read_jsonl};
use crate::models::{FilterArgs, load_chat};

/// The chat side of a moderated turn.
#[derive(clap::Args)]
pub struct AnswerArgs {
    /// Most new tokens per answer.
    #[arg(long, default_value_t = 128)]
    max_tokens: usize,
    /// 0 for greedy decoding (repeatable evaluations).
    #[arg(long, default_value_t = GenerateOptions::default().temperature)]
    temperature: f32,
    /// Chat adapters written by `tune-chat` (e.g. safety adapters).
    #[arg(long)]
    chat_adapters: Option<PathBuf>,
    /// System prompt (default: the model's own).
    #[arg(long)]
    system: Option<String>,
    /// The chat model's harmful-request probe (`train-probe`).
    #[arg(long, default_value = concat!(env!("CARGO_MANIFEST_DIR"), "/assets/chat-probe.safetensors"))]
    probe: PathBuf,
    /// Screen with the filter alone (no chat-model probe).
    #[arg(long)]
    no_probe: bool,
    /// Safety adapters the model answers with when its probe scores the conversation at
    /// least `--safety-adapters-from` but below the probe's threshold and their answer
    /// refuses (the second line; otherwise the model answers without them).
    #[arg(long, default_value = concat!(env!("CARGO_MANIFEST_DIR"), "/assets/chat-safety-adapters.safetensors"))]
    safety_adapters: PathBuf,
    /// Answer every conversation with the model as it is (no safety adapters).
    #[arg(long)]
    no_safety_adapters: bool,
    /// The probe score from which the safety adapters answer (default: the zone stored in
    /// the probe file, chosen with its threshold).
    #[arg(long)]
    safety_adapters_from: Option<f32>,
    /// What a user or system message in a language other than English does: "block" (refuse
    /// it, naming the language), "judge" (as if English) or "allow" (the chat model's probe
    /// does not judge it; the filter and the answer screens still do).
    #[arg(long, default_value_t = OtherLanguages::default())]
    other_languages: OtherLanguages,
}

impl AnswerArgs {
    fn options(&self) -> Result<GenerateOptions> {
        let options = GenerateOptions {
            max_new_tokens: self.max_tokens,
            temperature: self.temperature,
            ..GenerateOptions::default()
        };
        options.validate()?;
        Ok(options)
    }

    fn messages(&self, prompt: &str) -> Vec<Message> {
        self.conversation(vec![Message::new("user", prompt)])
    }

    /// `turns` behind the `--system` prompt, unless they bring their own.
    fn conversation(&self, turns: Vec<Message>) -> Vec<Message> {
        let mut messages = Vec::new();
        if let Some(s) = &self.system
            && turns.first().is_none_or(|m| m.role != "system")
        {
            messages.push(Message::new("system", s));
        }
        messages.extend(turns);
        messages
    }
}

/// Everything a moderated turn needs, loaded once.
struct Pipeline {
    filter: Filter,
    policy: Policy,
    chat: ChatModel,
    options: GenerateOptions,
}

impl Pipeline {
    fn load(models: &Path, filter: &FilterArgs, answer: &AnswerArgs) -> Result<Self> {
        let options = answer.options()?;
        let filter = filter.load(models)?;
        let mut policy = Policy::new(&filter);
        policy.set_other_languages(answer.other_languages);
        let (mut chat, backend) = load_chat(models, "cpu", answer.chat_adapters.as_deref())?;
        let second_line = !answer.no_probe && !answer.no_safety_adapters;
        if !answer.no_probe {
            chat.load_probe(&read(&answer.probe)?)?;
        }
        if second_line {
            if let Some(from) = answer.safety_adapters_from
                && !(0.0..=1.0).contains(&from)
            {
                return Err(Error::InvalidInput(format!(
                    "--safety-adapters-from {from} is outside 0 to 1"
                )));
            }
            pollster::block_on(chat.load_safety_adapters(&read(&answer.safety_adapters)?))?;
            if let Some(from) = answer.safety_adapters_from {
                chat.safety_adapters_from = from;
            }
        }
        eprintln!(
            "chat on {backend}{}{}",
            if answer.no_probe {
                ""
            } else {
                ", with its probe"
            },
            if second_line {
                format!(
                    " and safety adapters from score {:.3}",
                    chat.safety_adapters_from
                )
            } else {
                String::new()
            }
        );
        Ok(Pipeline {
            filter,
            policy,
            chat,
            options,
        })
    }

    fn turn(
        &self,
        messages: &[Message],
        on_text: impl FnMut(&str) -> bool,
    ) -> Result<ModeratedReply> {
        pollster::block_on(moderated_chat(
            &self.filter,
            &self.policy,
            &self.chat,
            messages,
            &self.options,
            on_text,
            || false,
        ))
    }
}

#[derive(clap::Args)]
pub struct GuardArgs {
    #[command(flatten)]
    filter: FilterArgs,
    #[command(flatten)]
    answer: AnswerArgs,
    /// Print the whole reply (scores, reasons) as one JSON object instead.
    #[arg(long)]
    json: bool,
    /// The user's message.
    prompt: String,
}

/// `guard PROMPT`: one moderated turn; prints what the user sees, then why.
pub fn run_guard(models: &Path, args: GuardArgs) -> Result<()> {
    let pipeline = Pipeline::load(models, &args.filter, &args.answer)?;
    let reply = pipeline.turn(&args.answer.messages(&args.prompt), |_| true)?;
    let mut out = std::io::stdout().lock();
    let text = if args.json {
        serde_json::to_string_pretty(&reply).map_err(|e| Error::InvalidInput(e.to_string()))?
    } else {
        let mut lines = vec![reply.text.clone(), String::new()];
        lines.push(match &reply.reason {
            Some(reason) => format!("blocked: {reason}"),
            None => "shown: nothing was flagged".into(),
        });
        for (what, screening) in [("input", &reply.input), ("output", &reply.output)] {
            if let Some(s) = screening {
                let scores: Vec<String> = s
                    .scores
                    .iter()
                    .map(|(l, v)| format!("{l} {v:.2}"))
                    .collect();
                lines.push(format!("{what} scores: {}", scores.join(", ")));
            }
        }
        for (what, score) in [
            (
                "the chat model's judgement of the conversation",
                reply.chat_judge,
            ),
            (
                "the chat model's judgement of its answer",
                reply.answer_judge,
            ),
        ] {
            if let Some(score) = score {
                lines.push(format!("{what}: {score:.2}"));
            }
        }
        if reply.safety_adapters {
            lines.push(
                "answered with the safety adapters (the conversation scored close to the probe's \
                 threshold, and their answer refuses)"
                    .into(),
            );
        }
        if let Some(language) = &reply.other_language {
            lines.push(format!(
                "a message is in {language} (--other-languages {})",
                args.answer.other_languages
            ));
        }
        if !reply.warnings.is_empty() {
            lines.push(format!("warnings: {}", reply.warnings.join(", ")));
        }
        lines.join("\n")
    };
    writeln!(out, "{text}").map_err(|e| Error::io("stdout", e))
}

/// One line of an `eval-guard` prompts file.
#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
pub struct LabelledPrompt {
    pub id: serde_json::Value,
    /// The user's message (a one-turn conversation); or `messages` instead.
    #[serde(default)]
    pub prompt: Option<String>,
    /// A whole conversation, `[{"role", "content"}, ...]`, ending with the user's turn: every
    /// turn is screened, the last one answered.
    #[serde(default)]
    pub messages: Option<Vec<Turn>>,
    /// `safe` or `unsafe`.
    pub label: String,
    /// Optional grouping for the summary (`past_tense`, `dangerous_sounding`, ...).
    #[serde(default, rename = "type")]
    pub kind: Option<String>,
}

/// One turn of a `messages` conversation.
#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Turn {
    pub role: String,
    pub content: String,
}

impl LabelledPrompt {
    /// The conversation to answer (behind `--system`), or why the line cannot be one.
    fn conversation(&self, answer: &AnswerArgs) -> std::result::Result<Vec<Message>, String> {
        self.turns().map(|turns| answer.conversation(turns))
    }

    /// The line's turns as given (a `prompt` is one user turn), or why they cannot be a
    /// conversation to answer.
    pub fn turns(&self) -> std::result::Result<Vec<Message>, String> {
        match (&self.prompt, &self.messages) {
            (Some(p), None) => Ok(vec![Message::new("user", p)]),
            (None, Some(turns)) => {
                if let Some(t) = turns
                    .iter()
                    .find(|t| !["system", "user", "assistant"].contains(&t.role.as_str()))
                {
                    return Err(format!("role {:?}: use system, user or assistant", t.role));
                }
                if turns.last().is_none_or(|t| t.role != "user") {
                    return Err("\"messages\" must end with a user turn".into());
                }
                Ok(turns
                    .iter()
                    .map(|t| Message::new(&t.role, &t.content))
                    .collect())
            }
            _ => Err("give either \"prompt\" or \"messages\"".into()),
        }
    }
}

/// Which prompt an `eval-guard` line is about: its first fields.
#[derive(Serialize)]
struct PromptKey<'a> {
    id: &'a serde_json::Value,
    label: &'a str,
    #[serde(rename = "type", skip_serializing_if = "Option::is_none")]
    kind: Option<&'a str>,
}

impl LabelledPrompt {
    fn key(&self) -> PromptKey<'_> {
        PromptKey {
            id: &self.id,
            label: &self.label,
            kind: self.kind.as_deref(),
        }
    }
}

/// What `eval-guard` writes per prompt.
#[derive(Serialize)]
struct Outcome<'a> {
    #[serde(flatten)]
    prompt: PromptKey<'a>,
    blocked: bool,
    reason: Option<&'a str>,
    /// Highest input score per label.
    input_scores: Option<&'a BTreeMap<String, f32>>,
    output_scores: Option<&'a BTreeMap<String, f32>>,
    answer: &'a str,
    /// The model answered with a refusal (the answer layer said no by itself).
    refused: bool,
    /// The chat model's request probe score (absent when the filter blocked first).
    chat_judge: Option<f32>,
    /// The answer probe's highest score over the answer's sentence ends.
    answer_judge: Option<f32>,
    /// The answer came from the safety adapters (the second line).
    safety_adapters: bool,
    /// The language other than English a message was found in (`--other-languages`).
    #[serde(skip_serializing_if = "Option::is_none")]
    other_language: Option<&'a str>,
}

/// What `eval-guard` writes for a prompt the guard refused as invalid input (empty, too long,
/// too much to screen): the same refusal a page gets as an `InvalidInput` error.
#[derive(Serialize)]
struct InvalidOutcome<'a> {
    #[serde(flatten)]
    prompt: PromptKey<'a>,
    invalid_input: &'a str,
}

/// A moderated turn's result for `eval-guard`: the reply, or why the guard refused the
/// conversation as input (`Err`: one prompt's problem, so the run goes on; any other error,
/// e.g. a failing backend, still stops the run).
fn reply_or_invalid(
    turn: Result<ModeratedReply>,
) -> Result<std::result::Result<ModeratedReply, String>> {
    match turn {
        Ok(reply) => Ok(Ok(reply)),
        Err(Error::InvalidInput(why)) => Ok(Err(why)),
        Err(e) => Err(e),
    }
}

/// Counts for one group of prompts.
#[derive(Default, Serialize, Clone, Copy)]
struct Tally {
    prompts: usize,
    blocked: usize,
    refused: usize,
    /// Refused by the guard as invalid input: counted here, left out of the fractions (no
    /// answer was judged either way).
    invalid: usize,
}

impl Tally {
    fn add(&mut self, blocked: bool, refused: bool) {
        self.prompts += 1;
        self.blocked += usize::from(blocked);
        self.refused += usize::from(refused && !blocked);
    }

    fn add_invalid(&mut self) {
        self.prompts += 1;
        self.invalid += 1;
    }

    /// Blocked or refused, as a fraction of the prompts the guard took as input.
    fn stopped(&self) -> f64 {
        let judged = self.prompts - self.invalid;
        if judged == 0 {
            return 0.0;
        }
        (self.blocked + self.refused) as f64 / judged as f64
    }
}

#[derive(clap::Args)]
pub struct EvalGuardArgs {
    #[command(flatten)]
    filter: FilterArgs,
    #[command(flatten)]
    answer: AnswerArgs,
    /// JSONL, one {"id", "prompt", "label": "safe"|"unsafe", "type"?} per line; a line may give
    /// a whole conversation as "messages": [{"role", "content"}, ...] instead of "prompt".
    #[arg(long)]
    prompts: PathBuf,
    /// Write one JSON line per prompt here (default: none).
    #[arg(long)]
    out: Option<PathBuf>,
    /// Print the summary as one JSON object.
    #[arg(long)]
    json: bool,
    /// Only the first N prompts (0: all).
    #[arg(long, default_value_t = 0)]
    limit: usize,
}

/// `eval-guard --prompts FILE`: the pipeline over every prompt, per-prompt lines and a summary.
pub fn run_eval_guard(models: &Path, args: EvalGuardArgs) -> Result<()> {
    let mut prompts: Vec<LabelledPrompt> = read_jsonl(
        &args.prompts,
        "{\"id\", \"prompt\" or \"messages\", \"label\"}",
    )?;
    if args.limit > 0 {
        prompts.truncate(args.limit);
    }
    let conversations = prompts
        .iter()
        .enumerate()
        .map(|(i, p)| {
            p.conversation(&args.answer).map_err(|why| {
                Error::InvalidInput(format!(
                    "{}: prompt {} (line {}): {why}",
                    args.prompts.display(),
                    p.id,
                    i + 1
                ))
            })
        })
        .collect::<Result<Vec<_>>>()?;
    check_safe_or_unsafe(
        &args.prompts,
        "prompt",
        prompts.iter().map(|p| (&p.id, p.label.as_str())),
    )?;
    let pipeline = Pipeline::load(models, &args.filter, &args.answer)?;
    let mut lines = match &args.out {
        Some(path) => Some(std::io::BufWriter::new(
            std::fs::File::create(path).map_err(|e| Error::io(path, e))?,
        )),
        None => None,
    };
    let mut by_label: BTreeMap<&str, Tally> = BTreeMap::new();
    let mut by_type: BTreeMap<(String, &str), Tally> = BTreeMap::new();
    let mut progress = Progress::new("eval-guard", prompts.len());
    for (i, (p, messages)) in prompts.iter().zip(&conversations).enumerate() {
        let reply = match reply_or_invalid(pipeline.turn(messages, |_| true))? {
            Ok(reply) => reply,
            Err(why) => {
                eprintln!(
                    "eval-guard: prompt {} (line {}) refused as invalid input: {why}",
                    p.id,
                    i + 1
                );
                count(&mut by_label, &mut by_type, p, Tally::add_invalid);
                if let Some(out) = lines.as_mut() {
                    let outcome = InvalidOutcome {
                        prompt: p.key(),
                        invalid_input: &why,
                    };
                    write_line(out, &outcome)?;
                }
                progress.update(i + 1, "");
                continue;
            }
        };
        let refused = !reply.blocked && is_refusal(&reply.text);
        count(&mut by_label, &mut by_type, p, |t| {
            t.add(reply.blocked, refused)
        });
        if let Some(out) = lines.as_mut() {
            let outcome = Outcome {
                prompt: p.key(),
                blocked: reply.blocked,
                reason: reply.reason.as_deref(),
                input_scores: reply.input.as_ref().map(|s| &s.scores),
                output_scores: reply.output.as_ref().map(|s| &s.scores),
                answer: &reply.text,
                refused,
                chat_judge: reply.chat_judge,
                answer_judge: reply.answer_judge,
                safety_adapters: reply.safety_adapters,
                other_language: reply.other_language.as_deref(),
            };
            write_line(out, &outcome)?;
        }
        progress.update(i + 1, "");
    }
    if let Some(mut out) = lines {
        out.flush().map_err(|e| Error::io("eval-guard output", e))?;
    }
    let fraction = |label: &str| by_label.get(label).map_or(0.0, Tally::stopped);
    let invalid: usize = by_label.values().map(|t| t.invalid).sum();
    let summary = serde_json::json!({
        "prompts": prompts.len(),
        "invalid_input": invalid,
        "unsafe_blocked_or_refused": fraction("unsafe"),
        "safe_blocked_or_refused": fraction("safe"),
        "by_label": by_label,
        "by_type": by_type
            .iter()
            .map(|((kind, label), t)| {
                (format!("{kind}/{label}"), serde_json::json!({
                    "label": label,
                    "prompts": t.prompts,
                    "blocked": t.blocked,
                    "refused": t.refused,
                    "invalid_input": t.invalid,
                    "blocked_or_refused": t.stopped(),
                }))
            })
            .collect::<serde_json::Map<_, _>>(),
    });
    let mut out = std::io::stdout().lock();
    let text = if args.json {
        summary.to_string()
    } else {
        let mut rows = vec![format!(
            "{} prompts: unsafe blocked or refused {:.1}%, safe blocked or refused {:.1}%",
            prompts.len(),
            100.0 * fraction("unsafe"),
            100.0 * fraction("safe")
        )];
        if invalid > 0 {
            rows.push(format!(
                "  {invalid} refused as invalid input (left out of the percentages; see stderr)"
            ));
        }
        for ((kind, label), t) in &by_type {
            rows.push(format!(
                "  {kind:<34} {label:<7} {:>5} prompts  blocked {:>5}  refused {:>5}  stopped {:>5.1}%{}",
                t.prompts,
                t.blocked,
                t.refused,
                100.0 * t.stopped(),
                if t.invalid > 0 {
                    format!("  invalid input {}", t.invalid)
                } else {
                    String::new()
                }
            ));
        }
        rows.join("\n")
    };
    writeln!(out, "{text}").map_err(|e| Error::io("stdout", e))
}

/// Counts prompt `p` in its label's tally and, when it has a type, in its type's.
fn count<'p>(
    by_label: &mut BTreeMap<&'p str, Tally>,
    by_type: &mut BTreeMap<(String, &'p str), Tally>,
    p: &'p LabelledPrompt,
    record: impl Fn(&mut Tally),
) {
    record(by_label.entry(&p.label).or_default());
    if let Some(kind) = &p.kind {
        record(by_type.entry((kind.clone(), p.label.as_str())).or_default());
    }
}

/// One JSON line of `eval-guard --out`.
fn write_line(out: &mut impl Write, outcome: &impl Serialize) -> Result<()> {
    let line = serde_json::to_string(outcome).map_err(|e| Error::InvalidInput(e.to_string()))?;
    writeln!(out, "{line}").map_err(|e| Error::io("eval-guard output", e))
}

#[derive(clap::Args)]
pub struct SafetyPromptsArgs {
    /// The shared data folder.
    #[arg(long, default_value = concat!(env!("CARGO_MANIFEST_DIR"), "/../shared/data"))]
    data: PathBuf,
    /// train, val or held-out.
    #[arg(long, default_value = "held-out")]
    split: String,
    /// Seed of the split (the one `train-filter` used).
    #[arg(long, default_value_t = webguard::filter::train::TrainConfig::default().seed)]
    seed: u64,
    /// Each request as a conversation after a benign exchange of its split's pool (from the
    /// list `--exchanges` names; what `train-probe` reports "after a turn").
    #[arg(long)]
    after_a_turn: bool,
    /// With `--after-a-turn`: everyday (`data/guard/context-exchanges.jsonl`) or varied
    /// (`data/guard/context-exchanges-varied.jsonl`, reported "after a varied turn").
    #[arg(long, default_value = "everyday")]
    exchanges: String,
}

/// `safety-prompts`: the labelled requests of one split as `eval-guard` input, on stdout.
pub fn run_safety_prompts(args: SafetyPromptsArgs) -> Result<()> {
    use webguard::filter::safety::{ExchangeList, Split, context_for, exchanges, requests};
    let split = Split::parse(&args.split)?;
    let root = &webguard::source_checkout();
    let (all, _) = requests(&args.data, root, args.seed)?;
    let list = ExchangeList::parse(&args.exchanges)?;
    let exchanges = if args.after_a_turn {
        exchanges(root, list)?.0
    } else {
        Vec::new()
    };
    let mut out = std::io::BufWriter::new(std::io::stdout().lock());
    for (i, q) in all.iter().filter(|q| q.split == split).enumerate() {
        let label = if q.harmful { "unsafe" } else { "safe" };
        let line = if args.after_a_turn {
            let e = &exchanges[context_for(q, exchanges.len(), list)];
            serde_json::json!({
                "id": format!("{}-after-{i}", q.kind),
                "messages": [
                    {"role": "user", "content": e.user},
                    {"role": "assistant", "content": e.assistant},
                    {"role": "user", "content": q.text},
                ],
                "label": label,
                "type": format!("{} ({})", q.kind, list.label()),
            })
        } else {
            serde_json::json!({
                "id": format!("{}-{i}", q.kind),
                "prompt": q.text,
                "label": label,
                "type": q.kind,
            })
        };
        writeln!(out, "{line}").map_err(|e| Error::io("stdout", e))?;
    }
    out.flush().map_err(|e| Error::io("stdout", e))
}

#[derive(clap::Args)]
pub struct CalibrateAnswersArgs {
    /// `eval-guard --out` or `eval-answers --out` lines of splits not used for reporting
    /// (training, validation); repeatable. Safe prompts' `output_scores` calibrate the answer
    /// thresholds, their `input_scores` the conversation thresholds.
    #[arg(long, required = true)]
    outcomes: Vec<PathBuf>,
    /// The heads file to read and rewrite with its chat thresholds.
    #[arg(long, default_value = concat!(env!("CARGO_MANIFEST_DIR"), "/assets/filter-heads.safetensors"))]
    heads: PathBuf,
    /// Most of the safe prompts' answers a label may flag.
    #[arg(long, default_value_t = 0.02)]
    max_flagged: f64,
    /// Most of the safe prompts themselves a label may flag in a conversation.
    #[arg(long, default_value_t = 0.02)]
    max_flagged_conversations: f64,
    /// Also set this probe file's answer-probe threshold from the same answers' `answer_judge`
    /// (at most `--max-flagged` of them flagged; never below the threshold it has).
    #[arg(long)]
    answer_probe: Option<PathBuf>,
    /// Keep each chat threshold the heads file already has as a floor (instead of the head's own
    /// threshold), and add to the calibration's provenance instead of replacing it: for adding
    /// answers of a new length or source when the earlier outcome files are not at hand.
    #[arg(long)]
    raise_only: bool,
    /// A label that only reports on answers: its answer threshold is set to 1 (only a
    /// saturated score flags). For a head with no measured catch on harmful answers that the
    /// rest of the guard misses, and false positives on long benign ones (the shipped `hate`:
    /// notes/issue-13-guard.md). Repeatable; conversations keep their calibration.
    #[arg(long)]
    not_on_answers: Vec<String>,
    /// A label that only reports on the messages of a conversation (the chat path's input
    /// side): its conversation threshold is set to 1. For a head whose flags on requests the
    /// request probe already covers and whose false positives it does not (the shipped
    /// `offensive` on venting users and questions about slurs and stereotypes:
    /// notes/issue-13-guard.md). Repeatable; answers keep their calibration, and a page's
    /// own rule for the label still applies to every side.
    #[arg(long)]
    not_on_conversations: Vec<String>,
}

/// One `eval-guard` (or `eval-answers`) line, as far as calibration reads it.
#[derive(Deserialize)]
struct ScreenedAnswer {
    label: String,
    /// The conversation's scores (`eval-guard` writes them for every prompt).
    #[serde(default)]
    input_scores: Option<BTreeMap<String, f32>>,
    #[serde(default)]
    output_scores: Option<BTreeMap<String, f32>>,
    /// The answer probe's highest score over the answer's sentence ends.
    #[serde(default)]
    answer_judge: Option<f32>,
}

/// Per label, the least threshold at or above `floor` (the label's own threshold, or with
/// `--raise-only` the chat threshold it has) at which at most `max_flagged` of `benign` score
/// sets flag.
fn calibrate(
    what: &str,
    labels: &[String],
    floor: &[f32],
    benign: &[BTreeMap<String, f32>],
    max_flagged: f64,
) -> Vec<f32> {
    let allowed = (max_flagged * benign.len() as f64).floor() as usize;
    labels
        .iter()
        .zip(floor)
        .map(|(label, &floor)| {
            let mut scores: Vec<f32> = benign
                .iter()
                .filter_map(|a| a.get(label).copied())
                .collect();
            scores.sort_by(|a, b| b.total_cmp(a));
            // Just above the (allowed + 1)-th highest benign score, so at most `allowed` flag.
            let above = scores.get(allowed).map_or(0.0, |&s| (s + 1e-4).min(1.0));
            let t = floor.max(above);
            eprintln!(
                "{label}: floor {floor:.3}; {what} flagged at it {}/{}; {what} threshold {t:.3}",
                scores.iter().filter(|&&s| s >= floor).count(),
                scores.len()
            );
            t
        })
        .collect()
}

/// `calibrate-answers`: the thresholds of the chat path, from the scores of safe prompts and
/// of the chat model's answers to them, written into the heads file's metadata
/// (`answer_thresholds`, `conversation_thresholds`; see `HeadsInfo`).
pub fn run_calibrate_answers(models: &Path, args: CalibrateAnswersArgs) -> Result<()> {
    use webguard::filter::heads::{ANSWER_THRESHOLDS, CONVERSATION_THRESHOLDS, Heads};
    let (mut answers, mut conversations, mut judged) = (Vec::new(), Vec::new(), Vec::new());
    for path in &args.outcomes {
        let text = std::fs::read_to_string(path).map_err(|e| Error::io(path, e))?;
        for line in text.lines().filter(|l| !l.trim().is_empty()) {
            let a: ScreenedAnswer = serde_json::from_str(line)
                .map_err(|e| Error::InvalidInput(format!("{}: {e}", path.display())))?;
            if a.label == "safe" {
                answers.extend(a.output_scores);
                conversations.extend(a.input_scores);
                judged.extend(a.answer_judge);
            }
        }
    }
    if answers.len() < 20 {
        return Err(Error::InvalidInput(format!(
            "{} answers to safe prompts; calibration needs at least 20",
            answers.len()
        )));
    }
    let bytes = read(&args.heads)?;
    let device = webguard::backend::Backend::cpu(None).device;
    let (heads, mut info) = Heads::load(&bytes, &device)?;
    let adapters = Heads::load_adapters(&bytes, &device)?;
    let mut write = |key: &str, what: &str, benign: &[BTreeMap<String, f32>], max: f64| {
        let floor = match args.raise_only {
            true => info.calibrated_thresholds(key)?.ok_or_else(|| {
                Error::InvalidInput(format!("--raise-only: the heads file has no {key}"))
            })?,
            false => info.thresholds.clone(),
        };
        let mut t = calibrate(what, &info.labels, &floor, benign, max);
        let (option, report_only) = match key {
            ANSWER_THRESHOLDS => ("--not-on-answers", &args.not_on_answers),
            _ => ("--not-on-conversations", &args.not_on_conversations),
        };
        for label in report_only {
            let i = info.labels.iter().position(|l| l == label).ok_or_else(|| {
                Error::InvalidInput(format!(
                    "{option} {label:?}: the heads' labels are {:?}",
                    info.labels
                ))
            })?;
            eprintln!("{label}: does not stop {what} (threshold 1)");
            t[i] = 1.0;
        }
        let json = serde_json::to_string(&t).map_err(|e| Error::InvalidInput(e.to_string()))?;
        info.provenance.insert(key.into(), json);
        let command = std::env::args().collect::<Vec<_>>().join(" ");
        let this = match benign.len() {
            0 => format!("{command} (no {what} scored: thresholds kept, report-only labels at 1)"),
            n => format!(
                "{command} ({n} {what} of safe prompts, at most {:.1}% flagged per label)",
                100.0 * max
            ),
        };
        let history = format!("{key}_calibration");
        let text = match (args.raise_only, info.provenance.get(&history)) {
            (true, Some(before)) => format!("{before}; then raised by {this}"),
            _ => this,
        };
        info.provenance.insert(history, text);
        Ok::<(), Error>(())
    };
    write(ANSWER_THRESHOLDS, "answers", &answers, args.max_flagged)?;
    // `eval-answers` lines carry no conversation scores: then only `--not-on-conversations`
    // changes the conversation thresholds, from the ones the file has (`--raise-only`).
    let report_only_kept = args.raise_only && !args.not_on_conversations.is_empty();
    if conversations.len() < 20 && !args.not_on_conversations.is_empty() && !args.raise_only {
        return Err(Error::InvalidInput(format!(
            "--not-on-conversations: {} safe prompts with conversation scores (eval-guard \
             outcomes) where calibration needs 20; add --raise-only to keep the other labels' \
             conversation thresholds as they are",
            conversations.len()
        )));
    }
    if conversations.len() >= 20 || report_only_kept {
        write(
            CONVERSATION_THRESHOLDS,
            "conversations",
            &conversations,
            args.max_flagged_conversations,
        )?;
    }
    info.provenance.remove("answer_calibration");
    let out = pollster::block_on(heads.save(&info, &adapters))?;
    std::fs::write(&args.heads, out).map_err(|e| Error::io(&args.heads, e))?;
    eprintln!("wrote {}", args.heads.display());
    if let Some(path) = &args.answer_probe {
        calibrate_answer_probe(models, path, &judged, args.max_flagged)?;
    }
    Ok(())
}

/// The answer probe's threshold: the least at or above its own at which at most `max_flagged`
/// of the safe prompts' answers flag. Why: the probe's own threshold was chosen on 64-token
/// answers, and an answer's score is its highest over its sentence ends, so longer answers
/// (the product's) flag more often at the same threshold.
fn calibrate_answer_probe(
    models: &Path,
    path: &Path,
    judged: &[f32],
    max_flagged: f64,
) -> Result<()> {
    use webguard::models::probe::ChatProbes;
    if judged.len() < 20 {
        return Err(Error::InvalidInput(format!(
            "{} safe answers with an answer_judge (eval-guard or eval-answers with the probe); \
             calibration needs at least 20",
            judged.len()
        )));
    }
    let gguf_bytes = read(&models.join(webguard::SMOLLM2_GGUF))?;
    let config = webguard::models::llama::LlamaConfig::from_gguf(
        &webguard::weights::gguf::Gguf::parse(&gguf_bytes)?,
    )?;
    let mut probes = ChatProbes::load(&read(path)?, config.layers, config.dim)?;
    let Some(answer) = probes.answer.as_mut() else {
        return Err(Error::InvalidInput(format!(
            "{}: no answer probe to calibrate",
            path.display()
        )));
    };
    let scores: Vec<BTreeMap<String, f32>> = judged
        .iter()
        .map(|&s| BTreeMap::from([("answer probe".to_string(), s)]))
        .collect();
    let t = calibrate(
        "answers",
        &["answer probe".to_string()],
        &[answer.threshold],
        &scores,
        max_flagged,
    )[0];
    answer.threshold = t;
    answer.provenance.insert(
        "threshold_calibration".into(),
        format!(
            "{} ({} answers of safe prompts, at most {:.1}% flagged)",
            std::env::args().collect::<Vec<_>>().join(" "),
            judged.len(),
            100.0 * max_flagged
        ),
    );
    std::fs::write(path, probes.save()?).map_err(|e| Error::io(path, e))?;
    eprintln!("wrote {}", path.display());
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    fn answer_args(system: Option<&str>) -> AnswerArgs {
        AnswerArgs {
            max_tokens: 8,
            temperature: 0.0,
            chat_adapters: None,
            system: system.map(String::from),
            probe: PathBuf::new(),
            no_probe: true,
            safety_adapters: PathBuf::new(),
            no_safety_adapters: true,
            safety_adapters_from: None,
            other_languages: OtherLanguages::default(),
        }
    }

    fn conversation(line: &str, system: Option<&str>) -> std::result::Result<Vec<Message>, String> {
        let p: LabelledPrompt = serde_json::from_str(line).map_err(|e| e.to_string())?;
        p.conversation(&answer_args(system))
    }

    #[test]
    fn eval_guard_lines_give_a_prompt_or_a_conversation_ending_with_the_user() {
        let one = conversation(
            r#"{"id": 1, "prompt": "Hi", "label": "safe"}"#,
            Some("Be brief."),
        );
        assert_eq!(
            one.unwrap(),
            [
                Message::new("system", "Be brief."),
                Message::new("user", "Hi")
            ]
        );
        let turns = r#"{"id": 2, "label": "unsafe", "messages": [
            {"role": "user", "content": "Hi"}, {"role": "assistant", "content": "Hello!"},
            {"role": "user", "content": "And now?"}]}"#;
        assert_eq!(
            conversation(turns, None).unwrap(),
            [
                Message::new("user", "Hi"),
                Message::new("assistant", "Hello!"),
                Message::new("user", "And now?")
            ]
        );
        // The conversation's own system turn wins over --system.
        let own = r#"{"id": 3, "label": "safe", "messages": [
            {"role": "system", "content": "Mine."}, {"role": "user", "content": "Hi"}]}"#;
        assert_eq!(
            conversation(own, Some("Be brief.")).unwrap()[0].content,
            "Mine."
        );

        for (bad, why) in [
            (r#"{"id": 4, "label": "safe"}"#, "either"),
            (
                r#"{"id": 5, "label": "safe", "prompt": "Hi", "messages": [{"role": "user", "content": "Hi"}]}"#,
                "either",
            ),
            (
                r#"{"id": 6, "label": "safe", "messages": [{"role": "user", "content": "Hi"}, {"role": "assistant", "content": "Hello"}]}"#,
                "end with a user turn",
            ),
            (
                r#"{"id": 7, "label": "safe", "messages": []}"#,
                "end with a user turn",
            ),
            (
                r#"{"id": 8, "label": "safe", "messages": [{"role": "tool", "content": "x"}]}"#,
                "role \"tool\"",
            ),
        ] {
            let err = conversation(bad, None).unwrap_err();
            assert!(err.contains(why), "{bad}: {err}");
        }
    }

    #[test]
    fn eval_guard_goes_on_past_a_prompt_refused_as_invalid_input_and_stops_on_other_errors() {
        let invalid = reply_or_invalid(Err(Error::InvalidInput(
            "the last user message is empty".into(),
        )));
        assert_eq!(
            invalid.unwrap().unwrap_err(),
            "the last user message is empty"
        );
        let failed = reply_or_invalid(Err(Error::Backend("device lost".into())));
        assert!(matches!(failed, Err(Error::Backend(_))));
    }

    #[test]
    fn eval_guard_fractions_leave_out_prompts_refused_as_invalid_input() {
        let mut t = Tally::default();
        t.add(true, false);
        t.add(false, true);
        t.add(false, false);
        t.add_invalid();
        assert_eq!((t.prompts, t.blocked, t.refused, t.invalid), (4, 1, 1, 1));
        assert_eq!(t.stopped(), 2.0 / 3.0);
        let mut all_invalid = Tally::default();
        all_invalid.add_invalid();
        assert_eq!(all_invalid.stopped(), 0.0);
    }
}
