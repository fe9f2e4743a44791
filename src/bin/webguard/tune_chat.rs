//! `tune-chat`: the chat model instruction-tuned with LoRA from prompt/response pairs, the
//! adapters written for `chat --adapters`.

use std::path::{Path, PathBuf};

use webguard::models::lora::{LoraConfig, Projection};
use webguard::tune::TuneOptions;
use webguard::tune::chat::{ChatPair, ChatTuneOptions};
use webguard::{Error, Result};

use crate::common::read_jsonl;
use crate::models::load_chat;

#[derive(clap::Args)]
pub struct TuneChatArgs {
    /// The pairs.
    #[arg(long)]
    pairs: PathBuf,
    /// Where to write the adapters (safetensors).
    #[arg(long)]
    out: PathBuf,
    /// Optimiser steps.
    #[arg(long, default_value_t = ChatTuneOptions::default().tune.steps)]
    steps: usize,
    /// Adam's learning rate.
    #[arg(long, default_value_t = ChatTuneOptions::default().tune.learning_rate)]
    learning_rate: f64,
    /// Pairs per step.
    #[arg(long, default_value_t = ChatTuneOptions::default().batch_size)]
    batch: usize,
    /// LoRA rank.
    #[arg(long, default_value_t = LoraConfig::default().rank)]
    rank: usize,
    /// Adapted projections, comma-separated (q, k, v, o, gate, up, down).
    #[arg(long, default_value_t = targets_text(&LoraConfig::default().targets))]
    targets: String,
    /// The first block with adapters (0: every block; the shipped safety adapters start after
    /// the last block the guard's probe reads).
    #[arg(long, default_value_t = LoraConfig::default().first_block)]
    first_block: usize,
    /// Seeds the adapters' initial weights and the pair order.
    #[arg(long, default_value_t = ChatTuneOptions::default().tune.seed)]
    seed: u64,
    /// auto, gpu or cpu.
    #[arg(long, default_value = "cpu")]
    backend: String,
}

/// Projections as `--targets` spells them (`q,v`).
pub fn targets_text(targets: &[Projection]) -> String {
    targets
        .iter()
        .map(|p| p.name())
        .collect::<Vec<_>>()
        .join(",")
}

/// Chat tuning options from the command line's values, the rest from the defaults.
pub fn chat_tune_options(
    steps: usize,
    learning_rate: f64,
    batch: usize,
    rank: usize,
    targets: &str,
    seed: u64,
) -> Result<ChatTuneOptions> {
    let d = ChatTuneOptions::default();
    Ok(ChatTuneOptions {
        tune: TuneOptions {
            steps,
            learning_rate,
            seed,
            ..d.tune
        },
        lora: LoraConfig {
            rank,
            targets: targets
                .split(',')
                .map(|t| t.trim().parse::<Projection>())
                .collect::<Result<_>>()?,
            ..d.lora
        },
        batch_size: batch,
        ..d
    })
}

/// Pairs from JSONL, a line per step, adapters written to `--out`.
pub fn run(models: &Path, args: TuneChatArgs) -> Result<()> {
    let mut options = chat_tune_options(
        args.steps,
        args.learning_rate,
        args.batch,
        args.rank,
        &args.targets,
        args.seed,
    )?;
    options.lora.first_block = args.first_block;
    let pairs: Vec<ChatPair> = read_jsonl(&args.pairs, r#"{"prompt", "response"}"#)?;
    let (mut chat, backend) = load_chat(models, &args.backend, None)?;
    eprintln!(
        "tuning on {backend}: {} pairs, {:?}",
        pairs.len(),
        options.lora
    );
    let report = pollster::block_on(chat.tune(&pairs, &options, |s| {
        eprintln!(
            "step {:>4}/{}  loss {:.4}  {:.0} ms",
            s.step, s.steps, s.loss, s.millis
        );
        true
    }))?;
    let bytes = pollster::block_on(chat.export_adapters())?;
    let out = &args.out;
    std::fs::write(out, &bytes).map_err(|e| Error::io(out, e))?;
    eprintln!(
        "loss {:.4} -> {:.4}; {} adapter parameters; wrote {} ({} bytes); use with chat --adapters",
        report.first_loss,
        report.final_loss,
        report.parameters,
        out.display(),
        bytes.len()
    );
    Ok(())
}
