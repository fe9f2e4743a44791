//! `tune-filter`: the filter taught from labelled examples (a new label gets its own head),
//! the tuned heads written as adapters for `--adapters`.

use std::path::{Path, PathBuf};

use webguard::tune::TuneOptions;
use webguard::tune::filter::LabelExample;
use webguard::{Error, Result};

use crate::common::read_jsonl;
use crate::models::FilterArgs;

#[derive(clap::Args)]
pub struct TuneFilterArgs {
    /// The examples.
    #[arg(long)]
    examples: PathBuf,
    /// Where to write the adapters (safetensors).
    #[arg(long)]
    out: PathBuf,
    /// Optimiser steps.
    #[arg(long, default_value_t = TuneOptions::default().steps)]
    steps: usize,
    /// Adam's learning rate.
    #[arg(long, default_value_t = TuneOptions::default().learning_rate)]
    learning_rate: f64,
    /// Seeds the new heads' initial weights.
    #[arg(long, default_value_t = TuneOptions::default().seed)]
    seed: u64,
    #[command(flatten)]
    filter: FilterArgs,
}

/// Examples from JSONL, a line per step, adapters written to `--out`.
pub fn run(models: &Path, args: TuneFilterArgs) -> Result<()> {
    let mut filter = args.filter.load(models)?;
    let options = TuneOptions {
        steps: args.steps,
        learning_rate: args.learning_rate,
        seed: args.seed,
        ..TuneOptions::default()
    };
    let examples: Vec<LabelExample> = read_jsonl(&args.examples, r#"{"text", "label", "value"}"#)?;
    let report = pollster::block_on(filter.tune(&examples, &options, |s| {
        eprintln!(
            "step {:>4}/{}  loss {:.5}  {:.0} ms",
            s.step, s.steps, s.loss, s.millis
        );
        true
    }))?;
    let bytes = pollster::block_on(filter.export_adapters())?;
    let out = &args.out;
    std::fs::write(out, &bytes).map_err(|e| Error::io(out, e))?;
    let new = if report.new_labels.is_empty() {
        "none".to_string()
    } else {
        report.new_labels.join(", ")
    };
    eprintln!(
        "tuned {} (new: {new}) on {} examples; wrote {} ({} bytes); use with --adapters",
        report.labels.join(", "),
        report.examples,
        out.display(),
        bytes.len()
    );
    Ok(())
}
