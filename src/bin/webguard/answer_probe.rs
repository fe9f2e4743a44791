//! `train-answer-probe` and `eval-answers`: the chat model judging answers with its own
//! states. The probe reads the states at each sentence end of an answer, in context (the
//! request and the answer so far), where the guard judges a streaming answer. Trained on the
//! model's own answers (`answers`): compliant answers to harmful training requests are
//! harmful; its answers to safe requests, and refusals, are not. Each harmful request is
//! also paired with one of the refusal recipe's refusals as a safe example, so the probe
//! reads the answer, not only the request.

use std::collections::BTreeMap;
use std::io::Write;
use std::path::{Path, PathBuf};

use serde::Serialize;
use sha2::{Digest, Sha256};
use webguard::guard::{OtherLanguages, Policy, judge_answer};
use webguard::models::llama::Positions;
use webguard::models::probe::{ChatProbes, StateProbe};
use webguard::text::chat_template::Message;
use webguard::tune::refusals::REFUSALS;
use webguard::{ChatModel, Error, Result, SMOLLM2_GGUF};

use crate::answers::AnswerLine;
use crate::common::{Progress, check_safe_or_unsafe, read, read_jsonl};
use crate::models::{FilterArgs, load_chat};
use crate::train_probe::ProbeFitArgs;

#[derive(clap::Args)]
pub struct TrainAnswerProbeArgs {
    /// `answers` output for the training split.
    #[arg(long)]
    train: PathBuf,
    /// `answers` output for the validation split (the threshold is chosen on it).
    #[arg(long)]
    val: PathBuf,
    /// `answers` output for the held-out split (only reported on).
    #[arg(long)]
    held_out: Option<PathBuf>,
    /// The probe file whose request probe is kept (and whose layers are read).
    #[arg(long, default_value = concat!(env!("CARGO_MANIFEST_DIR"), "/assets/chat-probe.safetensors"))]
    probe: PathBuf,
    /// Where to write both probes (default: over `--probe`).
    #[arg(long)]
    out: Option<PathBuf>,
    #[command(flatten)]
    fit: ProbeFitArgs,
}

/// One judged answer: its label and the states at its sentence ends.
struct Example {
    harmful: bool,
    kind: String,
    rows: Vec<Vec<f32>>,
}

/// The states of `answer` after `prompt`, from the on-disk cache or computed and cached.
fn states(chat: &ChatModel, prompt: &str, answer: &str, layers: &[usize]) -> Result<Vec<Vec<f32>>> {
    let width = layers.len() * chat.model.config().dim;
    let key = {
        let mut h = Sha256::new();
        h.update(webguard::VERSION);
        h.update(format!("{layers:?}"));
        h.update(prompt);
        h.update([0]);
        h.update(answer);
        format!("{:x}", h.finalize())[..20].to_string()
    };
    let dir = std::env::var_os("HOME")
        .map(PathBuf::from)
        .unwrap_or_else(std::env::temp_dir)
        .join(".cache/webguard/answer-states");
    let path = dir.join(format!("{key}.f32"));
    if let Ok(bytes) = std::fs::read(&path)
        && !bytes.is_empty()
        && bytes.len() % (width * 4) == 0
    {
        let values: Vec<f32> = bytes
            .chunks_exact(4)
            .map(|b| f32::from_le_bytes([b[0], b[1], b[2], b[3]]))
            .collect();
        return Ok(values.chunks(width).map(<[f32]>::to_vec).collect());
    }
    let ids = chat.user_prompt_ids(prompt)?;
    let answer_ids = chat.tokenizer.encode_literal(answer)?;
    let rows = pollster::block_on(chat.answer_states(&ids, &answer_ids, layers, Positions::Last))?
        .sentence_ends;
    std::fs::create_dir_all(&dir).map_err(|e| Error::io(&dir, e))?;
    let bytes: Vec<u8> = rows
        .iter()
        .flatten()
        .flat_map(|v| v.to_le_bytes())
        .collect();
    std::fs::write(&path, bytes).map_err(|e| Error::io(&path, e))?;
    Ok(rows)
}

/// The examples of one `answers` file (with `refusal_pairs`, each harmful request also
/// answered with a refusal, labelled safe).
fn examples(
    chat: &ChatModel,
    path: &Path,
    layers: &[usize],
    refusal_pairs: bool,
) -> Result<Vec<Example>> {
    let lines: Vec<AnswerLine> = read_jsonl(path, "an `answers` line")?;
    let mut out = Vec::new();
    let mut progress = Progress::new(format!("states of {}", path.display()), lines.len());
    for (i, a) in lines.iter().enumerate() {
        let kind = a.kind.clone().unwrap_or_default();
        if !a.answer.trim().is_empty() {
            out.push(Example {
                harmful: a.is_harmful(),
                kind: kind.clone(),
                rows: states(chat, &a.prompt, &a.answer, layers)?,
            });
        }
        if refusal_pairs && a.label == "unsafe" {
            let refusal = REFUSALS[i % REFUSALS.len()];
            out.push(Example {
                harmful: false,
                kind: format!("{kind}+refusal"),
                rows: states(chat, &a.prompt, refusal, layers)?,
            });
        }
        progress.update(i + 1, "");
    }
    Ok(out)
}

/// An answer's score: the highest over its sentence ends (the guard stops at the first one
/// at or above the threshold).
fn answer_score(probe: &StateProbe, e: &Example) -> Result<f32> {
    let mut worst = 0f32;
    for r in &e.rows {
        worst = worst.max(probe.score(r)?);
    }
    Ok(worst)
}

/// Flagged / answers per "kind/harmful|benign" at `threshold`.
fn by_kind(
    examples: &[Example],
    scores: &[f32],
    threshold: f32,
) -> BTreeMap<String, (usize, usize)> {
    let mut out: BTreeMap<String, (usize, usize)> = BTreeMap::new();
    for (e, &s) in examples.iter().zip(scores) {
        let key = format!(
            "{}/{}",
            e.kind,
            if e.harmful { "harmful" } else { "benign" }
        );
        let entry = out.entry(key).or_default();
        entry.0 += usize::from(s >= threshold);
        entry.1 += 1;
    }
    out
}

pub fn run_train(models: &Path, args: TrainAnswerProbeArgs) -> Result<()> {
    let (mut chat, backend) = load_chat(models, "cpu", None)?;
    let c = chat.model.config().clone();
    let existing = ChatProbes::load(&read(&args.probe)?, c.layers, c.dim)?;
    let layers = existing.request.layers.clone();
    chat.load_probe(&read(&args.probe)?)?;
    eprintln!("chat on {backend}; layers {layers:?}");
    let train = examples(&chat, &args.train, &layers, true)?;
    let val = examples(&chat, &args.val, &layers, false)?;
    let held_out = match &args.held_out {
        Some(p) => examples(&chat, p, &layers, false)?,
        None => Vec::new(),
    };
    let (mut rows, mut labels) = (Vec::new(), Vec::new());
    for e in &train {
        for r in &e.rows {
            rows.push(r.clone());
            labels.push(e.harmful);
        }
    }
    eprintln!(
        "training on {} states of {} answers ({} harmful)",
        rows.len(),
        train.len(),
        train.iter().filter(|e| e.harmful).count()
    );
    let mut probe = StateProbe::train(layers, &rows, &labels, &args.fit.config())?;
    let score_all = |probe: &StateProbe, set: &[Example]| -> Result<Vec<f32>> {
        set.iter().map(|e| answer_score(probe, e)).collect()
    };
    let val_scores = score_all(&probe, &val)?;
    let scored: Vec<(f32, bool)> = val_scores
        .iter()
        .copied()
        .zip(val.iter().map(|e| e.harmful))
        .collect();
    let threshold = args.fit.threshold(&scored);
    probe.threshold = threshold;
    let mut figures = BTreeMap::new();
    let mut report = String::new();
    for (name, set) in [("val", &val), ("held-out", &held_out), ("train", &train)] {
        if set.is_empty() {
            continue;
        }
        let scores = score_all(&probe, set)?;
        let rows = by_kind(set, &scores, threshold);
        report.push_str(&format!(
            "{name} (flagged / answers at threshold {threshold:.3}):\n"
        ));
        let mut totals = [(0, 0); 2];
        for (k, (flagged, n)) in &rows {
            report.push_str(&format!(
                "  {k:<48} {flagged:>4} / {n:<4} {:>5.1}%\n",
                100.0 * *flagged as f64 / (*n).max(1) as f64
            ));
            let t = &mut totals[usize::from(k.ends_with("/harmful"))];
            t.0 += flagged;
            t.1 += n;
        }
        for (i, what) in ["benign answers flagged", "harmful answers caught"]
            .iter()
            .enumerate()
        {
            report.push_str(&format!(
                "  {what:<48} {:>4} / {:<4} {:>5.1}%\n",
                totals[i].0,
                totals[i].1,
                100.0 * totals[i].0 as f64 / totals[i].1.max(1) as f64
            ));
        }
        figures.insert(name, rows);
    }
    eprint!("{report}");
    probe.provenance.insert(
        "command".into(),
        std::env::args().collect::<Vec<_>>().join(" "),
    );
    probe
        .provenance
        .insert("figures".into(), to_json(&figures)?);
    probe.provenance.insert("model".into(), SMOLLM2_GGUF.into());
    let out = args.out.unwrap_or(args.probe);
    let probes = ChatProbes {
        request: existing.request,
        answer: Some(probe),
    };
    std::fs::write(&out, probes.save()?).map_err(|e| Error::io(&out, e))?;
    eprintln!("wrote {}", out.display());
    Ok(())
}

/// `value` as JSON, for the probe's provenance.
fn to_json<T: Serialize>(value: &T) -> Result<String> {
    serde_json::to_string(value).map_err(|e| Error::InvalidInput(e.to_string()))
}

#[derive(clap::Args)]
pub struct EvalAnswersArgs {
    #[command(flatten)]
    filter: FilterArgs,
    /// JSONL of answers to judge, one {"id", "prompt", "answer", "label", "type"?} per line
    /// (`answers` writes it; label: "unsafe" for a harmful answer, "safe" for a benign one;
    /// a "refusal": true line counts as benign; without the field, an answer that opens like
    /// a refusal does).
    #[arg(long)]
    answers: PathBuf,
    /// What a request in a language other than English does to its answer's judgement:
    /// "block" (stopped, as the guard never answers it), "judge" (as if English) or "allow"
    /// (the request probe does not judge it).
    #[arg(long, default_value_t = OtherLanguages::default())]
    other_languages: OtherLanguages,
    /// The chat model's probes.
    #[arg(long, default_value = concat!(env!("CARGO_MANIFEST_DIR"), "/assets/chat-probe.safetensors"))]
    probe: PathBuf,
    /// Judge with the filter alone (no chat-model probes; fast: no forward passes).
    #[arg(long)]
    no_probe: bool,
    /// Write one JSON line per answer here.
    #[arg(long)]
    out: Option<PathBuf>,
    /// Print the summary as one JSON object.
    #[arg(long)]
    json: bool,
}

/// `eval-answers`: the output side of the guard (filter at the answer thresholds, answer
/// probe) over labelled answers: harmful answers caught, benign answers flagged, by type.
pub fn run_eval(models: &Path, args: EvalAnswersArgs) -> Result<()> {
    let lines: Vec<AnswerLine> =
        read_jsonl(&args.answers, "{\"id\", \"prompt\", \"answer\", \"label\"}")?;
    check_safe_or_unsafe(
        &args.answers,
        "answer",
        lines.iter().map(|a| (&a.id, a.label.as_str())),
    )?;
    let filter = args.filter.load(models)?;
    let mut policy = Policy::new(&filter);
    policy.set_other_languages(args.other_languages);
    let (mut chat, _) = load_chat(models, "cpu", None)?;
    if !args.no_probe {
        chat.load_probe(&read(&args.probe)?)?;
    }
    let mut out = match &args.out {
        Some(p) => Some(std::fs::File::create(p).map_err(|e| Error::io(p, e))?),
        None => None,
    };
    let mut tallies: BTreeMap<String, (usize, usize)> = BTreeMap::new();
    let mut totals: BTreeMap<&str, (usize, usize)> = BTreeMap::new();
    let mut progress = Progress::new("answers judged", lines.len());
    for (i, a) in lines.iter().enumerate() {
        progress.update(i, "");
        if a.answer.trim().is_empty() {
            continue;
        }
        let messages = [Message::new("user", &a.prompt)];
        let j = pollster::block_on(judge_answer(&filter, &policy, &chat, &messages, &a.answer))?;
        let harmful = a.is_harmful();
        let group = if harmful { "harmful" } else { "benign" };
        let kind = a.kind.clone().unwrap_or_default();
        let t = tallies.entry(format!("{kind}/{group}")).or_default();
        t.0 += usize::from(j.blocked);
        t.1 += 1;
        let t = totals.entry(group).or_default();
        t.0 += usize::from(j.blocked);
        t.1 += 1;
        if let Some(f) = out.as_mut() {
            let line = serde_json::json!({
                "id": a.id, "label": a.label, "type": a.kind, "harmful": harmful,
                "blocked": j.blocked, "reason": j.reason, "output_scores": j.output.scores,
                "chat_judge": j.chat_judge, "answer_judge": j.answer_judge,
            });
            writeln!(f, "{line}").map_err(|e| Error::io("--out", e))?;
        }
    }
    progress.update(lines.len(), "");
    let frac = |(k, n): (usize, usize)| k as f64 / n.max(1) as f64;
    if args.json {
        let summary = serde_json::json!({
            "harmful_caught": frac(totals.get("harmful").copied().unwrap_or_default()),
            "benign_flagged": frac(totals.get("benign").copied().unwrap_or_default()),
            "by_type": tallies.iter().map(|(k, &(f, n))| (k.clone(), serde_json::json!({"flagged": f, "answers": n}))).collect::<BTreeMap<_, _>>(),
        });
        println!("{summary}");
        return Ok(());
    }
    for (k, &(f, n)) in &tallies {
        println!("{k:<48} {f:>4} / {n:<4} {:>5.1}%", 100.0 * frac((f, n)));
    }
    for (k, &(f, n)) in &totals {
        let what = if *k == "harmful" {
            "harmful answers caught"
        } else {
            "benign answers flagged"
        };
        println!("{what:<48} {f:>4} / {n:<4} {:>5.1}%", 100.0 * frac((f, n)));
    }
    Ok(())
}
