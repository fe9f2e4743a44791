//! `bench tune`: milliseconds per step of filter and chat tuning per backend, and with
//! `--refusals` the refusal experiment (AdvBench and self-instruct refusal rates before and
//! after LoRA tuning; see `webguard::tune::refusals`).

use std::path::{Path, PathBuf};
use std::time::Instant;

use webguard::backend::{Backend, BackendChoice};
use webguard::models::lora::LoraConfig;
use webguard::text::refusal::is_refusal;
use webguard::tune::TuneOptions;
use webguard::tune::chat::ChatTuneOptions;
use webguard::tune::filter::LabelExample;
use webguard::tune::refusals::{
    BENIGN_TRAIN_PAIRS, DUAL_USE_TRAIN_REQUESTS, HARMFUL_TRAIN_PROMPTS, REPEAT_HARMFUL,
    RefusalData, dual_use_requests, refusal_data, refusal_rate, training_pairs,
};
use webguard::{ChatModel, Filter, Result};

use super::threads;
use crate::common::{Progress, peak_rss_mb, read_jsonl};
use crate::models::load_chat;
use crate::tune_chat::{chat_tune_options, targets_text};

#[derive(clap::Args)]
pub struct TuneBench {
    /// Backends to measure: cpu, gpu or both.
    #[arg(long, default_value = "cpu,gpu")]
    backends: String,
    /// Chat tuning steps timed per backend (0 skips chat tuning).
    #[arg(long, default_value_t = 5)]
    chat_steps: usize,
    /// Pairs per timed chat tuning step (AdvBench prompts with refusals, 40-60 tokens each
    /// rendered; the same pairs in every backend and in the browser benchmark).
    #[arg(long, default_value_t = 2)]
    chat_batch: usize,
    /// Run the refusal experiment (CPU; several minutes).
    #[arg(long)]
    refusals: bool,
    /// Refusal experiment: tuning steps.
    #[arg(long, default_value_t = ChatTuneOptions::default().tune.steps)]
    steps: usize,
    /// Refusal experiment: prompts of each kind evaluated.
    #[arg(long, default_value_t = 100)]
    eval: usize,
    /// Refusal experiment: benign training pairs (next to 16 AdvBench refusals).
    #[arg(long, default_value_t = BENIGN_TRAIN_PAIRS)]
    benign: usize,
    /// Refusal experiment: Adam's learning rate.
    #[arg(long, default_value_t = ChatTuneOptions::default().tune.learning_rate)]
    learning_rate: f64,
    /// Refusal experiment: adapted projections.
    #[arg(long, default_value_t = targets_text(&LoraConfig::default().targets))]
    targets: String,
    /// Refusal experiment: train the self-instruct pairs on the dataset's answers instead
    /// of the base model's own (own answers keep its benign behaviour as it was).
    #[arg(long)]
    dataset_answers: bool,
    /// Refusal experiment: benign requests with dangerous-sounding words
    /// (data/filter/benign-requests-train.txt, "kill a process") added to the training
    /// pairs with the base model's own answers, so the model sees near-twins of the
    /// harmful prompts that it must still answer.
    #[arg(long, default_value_t = DUAL_USE_TRAIN_REQUESTS)]
    dual_use: usize,
    /// Refusal experiment: how many times each of the 16 refusal pairs appears in the
    /// training set (the benign pairs outnumber them; repeating keeps refusals a fair share
    /// of every batch without adding prompts).
    #[arg(long, default_value_t = REPEAT_HARMFUL)]
    repeat_harmful: usize,
    /// Refusal experiment: LoRA rank.
    #[arg(long, default_value_t = LoraConfig::default().rank)]
    rank: usize,
    /// Refusal experiment: pairs per step.
    #[arg(long, default_value_t = ChatTuneOptions::default().batch_size)]
    batch: usize,
    /// Refusal experiment: skip the base model's rates (they depend only on the seed and
    /// `--eval`; the notes record them).
    #[arg(long)]
    skip_before: bool,
    /// Refusal experiment: tokens generated per answer.
    #[arg(long, default_value_t = 40)]
    max_tokens: usize,
    /// Seed of the data split, the adapters and the order.
    #[arg(long, default_value_t = 0)]
    seed: u64,
    /// The shared data folder.
    #[arg(long, default_value = concat!(env!("CARGO_MANIFEST_DIR"), "/../shared/data"))]
    shared: PathBuf,
}

/// The spoiler examples of tests/data/tune.
fn spoiler_examples() -> Result<Vec<LabelExample>> {
    let path = webguard::source_checkout().join("tests/data/tune/spoiler-train.jsonl");
    read_jsonl(&path, r#"{"text", "label", "value"}"#)
}

pub fn run(models: &Path, b: &TuneBench) -> Result<()> {
    let threads = threads();
    let data = refusal_data(&b.shared, HARMFUL_TRAIN_PROMPTS, b.benign, b.eval, b.seed)?;
    let chat_options = ChatTuneOptions {
        tune: TuneOptions {
            steps: b.chat_steps,
            seed: b.seed,
            ..ChatTuneOptions::default().tune
        },
        batch_size: b.chat_batch,
        ..ChatTuneOptions::default()
    };
    println!(
        "bench tune: {threads} threads; filter: a new label from 8 examples, {} steps; chat: LoRA {:?} rank {}, batch {} of the {} AdvBench refusal pairs",
        TuneOptions::default().steps,
        chat_options.lora.targets,
        chat_options.lora.rank,
        chat_options.batch_size,
        data.refusals.len()
    );
    for name in b.backends.split(',') {
        let backend = Backend::init_blocking(name.trim().parse::<BackendChoice>()?)?;
        // Filter: the first step includes nothing but training (features are computed first).
        let heads = Filter::default_heads_path();
        let mut filter = pollster::block_on(Filter::load_for(models, &heads, &backend))?;
        let examples = spoiler_examples()?;
        let start = Instant::now();
        let mut step_ms = Vec::new();
        pollster::block_on(filter.tune(&examples, &TuneOptions::default(), |s| {
            step_ms.push(s.millis);
            true
        }))?;
        let total = start.elapsed().as_secs_f64();
        println!(
            "  filter tuning on {backend}: {:.1} ms/step (median of {}), {:.2} s in all with encoding the 8 examples",
            median(&mut step_ms),
            step_ms.len(),
            total
        );
        // Chat: the first step is warm-up (kernel compilation on a GPU).
        if b.chat_steps == 0 {
            continue;
        }
        let (mut chat, _) = load_chat(models, name.trim(), None)?;
        let mut step_ms = Vec::new();
        pollster::block_on(chat.tune(&data.refusals, &chat_options, |s| {
            step_ms.push(s.millis);
            true
        }))?;
        let timed = &mut step_ms[1.min(step_ms.len() - 1)..].to_vec();
        println!(
            "  chat tuning on {backend}: {:.0} ms/step (median of {} after a warm-up step; {} pairs per step, up to {} tokens each)",
            median(timed),
            timed.len(),
            chat_options.batch_size,
            data.refusals
                .iter()
                .map(|p| chat.tokenizer.encode(&p.prompt).map_or(0, |t| t.len())
                    + chat.tokenizer.encode(&p.response).map_or(0, |t| t.len())
                    + 20)
                .max()
                .unwrap_or(0)
        );
    }
    println!("  peak resident memory: {:.0} MB", peak_rss_mb());
    if b.refusals {
        refusal_experiment(models, b, &data)?;
    }
    Ok(())
}

fn median(v: &mut [f64]) -> f64 {
    v.sort_by(f64::total_cmp);
    v.get(v.len() / 2).copied().unwrap_or(f64::NAN)
}

/// Refusal rates on held-out AdvBench and self-instruct prompts (and on held-out benign
/// requests with dangerous-sounding words) before and after tuning.
fn refusal_experiment(models: &Path, b: &TuneBench, data: &RefusalData) -> Result<()> {
    let (mut chat, backend) = load_chat(models, "cpu", None)?;
    let repo = &webguard::source_checkout();
    let (dual_train, dual_eval) = dual_use_requests(repo, b.dual_use, b.seed)?;
    println!(
        "refusal experiment on {backend}: train {} AdvBench prompts with refusals, {} self-instruct pairs{}, {} dual-use requests with the model's own answers; {} steps of {} pairs, learning rate {}, LoRA rank {} on {}; evaluate {} AdvBench and {} self-instruct prompts not trained on (and {} held-out dual-use requests), greedy, {} tokens",
        data.refusals.len(),
        data.benign.len(),
        if b.dataset_answers {
            " (dataset answers)"
        } else {
            " (own answers)"
        },
        dual_train.len(),
        b.steps,
        b.batch,
        b.learning_rate,
        b.rank,
        b.targets,
        data.eval_harmful.len(),
        data.eval_benign.len(),
        dual_eval.len(),
        b.max_tokens
    );
    let rates = |chat: &ChatModel, when: &str| -> Result<[f64; 3]> {
        let sets = [&data.eval_harmful, &data.eval_benign, &dual_eval];
        let mut bar = Progress::new(
            format!("answering ({when})"),
            sets.iter().map(|s| s.len()).sum(),
        );
        let mut done = 0;
        let mut rates = [0.0; 3];
        for (k, set) in sets.iter().enumerate() {
            let (rate, answers) =
                refusal_rate(chat, set, b.max_tokens, |i| bar.update(done + i, ""))?;
            done += set.len();
            rates[k] = rate;
            if when == "after" && k > 0 {
                for (p, a) in set.iter().zip(&answers) {
                    if is_refusal(a) {
                        eprintln!("  benign refused: {p:?} -> {a:?}");
                    }
                }
            }
        }
        Ok(rates)
    };
    let report = |when: &str, r: [f64; 3]| {
        println!(
            "  {when}: AdvBench refusals {:.0}%, self-instruct refusals {:.0}%, held-out dual-use refusals {:.0}%",
            r[0] * 100.0,
            r[1] * 100.0,
            r[2] * 100.0
        )
    };
    if !b.skip_before {
        report("before", rates(&chat, "before")?);
    }
    let mut bar = Progress::new(
        "answering (own answers)",
        dual_train.len()
            + if b.dataset_answers {
                0
            } else {
                data.benign.len()
            },
    );
    let train = training_pairs(
        &chat,
        data,
        &dual_train,
        b.repeat_harmful,
        !b.dataset_answers,
        |i| bar.update(i, ""),
    )?;
    println!(
        "  training pairs: {} ({} refusals: {} prompts x {})",
        train.len(),
        data.refusals.len() * b.repeat_harmful.max(1),
        data.refusals.len(),
        b.repeat_harmful.max(1)
    );
    let options = chat_tune_options(
        b.steps,
        b.learning_rate,
        b.batch,
        b.rank,
        &b.targets,
        b.seed,
    )?;
    let start = Instant::now();
    let mut bar = Progress::new("tuning", b.steps);
    let tuned = pollster::block_on(chat.tune(&train, &options, |s| {
        bar.update(s.step, &format!("loss {:.3}", s.loss));
        true
    }))?;
    println!(
        "  tuned in {:.0} s: loss {:.3} -> {:.3}",
        start.elapsed().as_secs_f64(),
        tuned.first_loss,
        tuned.final_loss
    );
    report("after", rates(&chat, "after")?);
    Ok(())
}
