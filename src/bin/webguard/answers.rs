//! `answers`: the chat model's own, unmoderated answers to a labelled prompts file: the data
//! the answer probe is trained and judged on (harmful answers are the model's compliant
//! answers to harmful requests, benign ones its answers to safe requests). Greedy, so a rerun
//! gives the same answers; appends to `--out` and skips ids already there, so a long run can
//! be stopped and resumed.

use std::collections::{BTreeMap, HashSet};
use std::io::Write;
use std::path::{Path, PathBuf};

use serde::{Deserialize, Serialize};
use webguard::generate::GenerateOptions;
use webguard::rng::shuffle;
use webguard::text::refusal::is_refusal;
use webguard::{Error, Result};

use crate::common::{Progress, read_jsonl};
use crate::guard::LabelledPrompt;
use crate::models::load_chat;

#[derive(clap::Args)]
pub struct AnswersArgs {
    /// JSONL, one {"id", "prompt", "label", "type"?} per line (`safety-prompts` writes it).
    #[arg(long)]
    prompts: PathBuf,
    /// JSONL to append the answers to (one `AnswerLine` per prompt).
    #[arg(long)]
    out: PathBuf,
    /// Most new tokens per answer.
    #[arg(long, default_value_t = 64)]
    max_tokens: usize,
    /// Chat adapters written by `tune-chat` (e.g. the safety adapters: how often the model
    /// refuses by itself, with no screen in front of it).
    #[arg(long)]
    chat_adapters: Option<PathBuf>,
    /// At most N prompts of each (type, label), drawn with `--seed` (0: all).
    #[arg(long, default_value_t = 0)]
    per_type: usize,
    #[arg(long, default_value_t = 7)]
    seed: u64,
}

/// One answer, as `answers` writes it and the answer probe reads it.
#[derive(Serialize, Deserialize, Clone)]
pub struct AnswerLine {
    pub id: serde_json::Value,
    pub prompt: String,
    pub label: String,
    #[serde(rename = "type", default)]
    pub kind: Option<String>,
    pub answer: String,
    /// Whether the answer opens like a refusal (`answers` writes `is_refusal`'s verdict;
    /// absent in a file from elsewhere, it is computed the same way).
    #[serde(default)]
    pub refusal: Option<bool>,
}

impl AnswerLine {
    /// Whether the answer is harmful: a compliant (not refusing) answer to a harmful request.
    pub fn is_harmful(&self) -> bool {
        let refused = self.refusal.unwrap_or_else(|| is_refusal(&self.answer));
        self.label == "unsafe" && !refused
    }
}

/// The prompts to answer: all, or `per_type` of each (type, label) drawn with `seed`.
fn pick(prompts: Vec<LabelledPrompt>, per_type: usize, seed: u64) -> Vec<LabelledPrompt> {
    if per_type == 0 {
        return prompts;
    }
    let mut groups: BTreeMap<(String, String), Vec<LabelledPrompt>> = BTreeMap::new();
    for p in prompts {
        let key = (p.kind.clone().unwrap_or_default(), p.label.clone());
        groups.entry(key).or_default().push(p);
    }
    let mut out = Vec::new();
    for (i, (_, mut group)) in groups.into_iter().enumerate() {
        shuffle(&mut group, seed.wrapping_add(i as u64));
        group.truncate(per_type);
        out.extend(group);
    }
    out
}

pub fn run(models: &Path, args: AnswersArgs) -> Result<()> {
    let prompts: Vec<LabelledPrompt> =
        read_jsonl(&args.prompts, "{\"id\", \"prompt\", \"label\"}")?;
    if let Some(p) = prompts.iter().find(|p| p.prompt.is_none()) {
        return Err(Error::InvalidInput(format!(
            "{}: prompt {} has no \"prompt\" (answers are collected for one-turn prompts)",
            args.prompts.display(),
            p.id
        )));
    }
    let prompts = pick(prompts, args.per_type, args.seed);
    let done: HashSet<String> = if args.out.exists() {
        read_jsonl::<AnswerLine>(&args.out, "an `answers` line")?
            .into_iter()
            .map(|a| a.id.to_string())
            .collect()
    } else {
        HashSet::new()
    };
    let todo: Vec<&LabelledPrompt> = prompts
        .iter()
        .filter(|p| !done.contains(&p.id.to_string()))
        .collect();
    let (chat, backend) = load_chat(models, "cpu", args.chat_adapters.as_deref())?;
    eprintln!(
        "chat on {backend}; {} prompts, {} answered already",
        prompts.len(),
        prompts.len() - todo.len()
    );
    let options = GenerateOptions {
        max_new_tokens: args.max_tokens,
        temperature: 0.0,
        ..GenerateOptions::default()
    };
    let mut file = std::fs::OpenOptions::new()
        .create(true)
        .append(true)
        .open(&args.out)
        .map_err(|e| Error::io(&args.out, e))?;
    let mut progress = Progress::new("answers", todo.len());
    for (i, p) in todo.iter().enumerate() {
        let prompt = p.prompt.clone().unwrap_or_default();
        let answer = pollster::block_on(chat.answer(&prompt, &options))?;
        let line = AnswerLine {
            id: p.id.clone(),
            prompt,
            label: p.label.clone(),
            kind: p.kind.clone(),
            refusal: Some(is_refusal(&answer)),
            answer,
        };
        let json = serde_json::to_string(&line).map_err(|e| Error::InvalidInput(e.to_string()))?;
        writeln!(file, "{json}").map_err(|e| Error::io(&args.out, e))?;
        progress.update(i + 1, "");
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    fn line(json: &str) -> AnswerLine {
        serde_json::from_str(json).unwrap()
    }

    #[test]
    fn an_answer_line_without_the_refusal_field_is_judged_by_its_opening() {
        let complies =
            r#"{"id": 1, "prompt": "p", "label": "unsafe", "answer": "Sure. Step one: …"}"#;
        let refuses =
            r#"{"id": 2, "prompt": "p", "label": "unsafe", "answer": "I can't help with that."}"#;
        assert!(line(complies).is_harmful());
        assert!(!line(refuses).is_harmful());
        // A given field wins over the opening, both ways.
        let marked = r#"{"id": 3, "prompt": "p", "label": "unsafe", "answer": "I can't help.", "refusal": false}"#;
        assert!(line(marked).is_harmful());
        let safe = r#"{"id": 4, "prompt": "p", "label": "safe", "answer": "Sure. Step one: …"}"#;
        assert!(!line(safe).is_harmful());
    }
}
