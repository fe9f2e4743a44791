//! `bench embed` and `bench filter`: texts/s through the MiniLM encoder (embeddings alone, or
//! the whole filter) per batch size and backend, next to the same work in PyTorch on the same
//! texts.

use std::path::{Path, PathBuf};
use std::time::Instant;

use webguard::backend::{Backend, BackendChoice};
use webguard::models::bert::{Bert, BertConfig};
use webguard::text::Tokenizer;
use webguard::{Error, Filter, MINILM_DIR, Result};

use super::{peer_json, sync_read, threads};
use crate::common::{peak_rss_mb, read};

/// Options shared by the encoder benchmarks.
#[derive(clap::Args)]
pub struct EncoderBench {
    /// Backends to measure: cpu, gpu or both.
    #[arg(long, default_value = "cpu,gpu")]
    backends: String,
    /// Batch sizes.
    #[arg(long, default_value = "1,32")]
    batches: String,
    /// Tokens per text, [CLS] and [SEP] included.
    #[arg(long, default_value_t = 64)]
    tokens: usize,
    /// Seconds per measurement.
    #[arg(long, default_value_t = 5.0)]
    seconds: f64,
    /// Python with the PyTorch peer (sentence-transformers), for the side-by-side run.
    #[arg(long)]
    python: Option<PathBuf>,
}

/// `bench filter`: the encoder options and which heads.
#[derive(clap::Args)]
pub struct FilterBench {
    #[command(flatten)]
    encoder: EncoderBench,
    /// Heads file (default: the shipped one).
    #[arg(long)]
    heads: Option<PathBuf>,
}

/// What is measured.
enum Subject {
    /// MiniLM sentence embeddings from token ids.
    Embed,
    /// `Filter::scores` from text, with this heads file.
    Filter(PathBuf),
}

pub fn run_embed(models: &Path, args: &EncoderBench) -> Result<()> {
    run(Subject::Embed, models, args)
}

pub fn run_filter(models: &Path, args: &FilterBench) -> Result<()> {
    let heads = args
        .heads
        .clone()
        .unwrap_or_else(Filter::default_heads_path);
    run(Subject::Filter(heads), models, &args.encoder)
}

/// Texts of exactly `tokens` tokens ([CLS] and [SEP] included), all different.
fn texts_of(tok: &Tokenizer, tokens: usize, n: usize) -> Result<Vec<String>> {
    let words = [
        "the", "filter", "reads", "every", "message", "before", "it", "is", "shown", "and",
        "flags", "insults", "or", "threats", "quickly", "today",
    ];
    (0..n)
        .map(|i| {
            let mut text = String::new();
            let mut k = i;
            while tok.encode(&text)?.len() < tokens {
                text.push_str(words[k % words.len()]);
                text.push(' ');
                k = k * 7 + 3;
            }
            while tok.encode(&text)?.len() > tokens {
                text = text
                    .trim_end()
                    .rsplit_once(' ')
                    .map(|(a, _)| a.to_string())
                    .unwrap_or_default();
            }
            Ok(text)
        })
        .collect()
}

fn run(subject: Subject, models: &Path, args: &EncoderBench) -> Result<()> {
    let (tokens, seconds) = (args.tokens, args.seconds);
    let dir = models.join(MINILM_DIR);
    let config = BertConfig::from_json(&read(&dir.join("config.json"))?)?;
    let weights = read(&dir.join("model.safetensors"))?;
    let tok = Tokenizer::from_tokenizer_json(&read(&dir.join("tokenizer.json"))?)?;
    let batches: Vec<usize> = args
        .batches
        .split(',')
        .map(|b| {
            b.trim()
                .parse()
                .map_err(|_| Error::InvalidInput(format!("bad batch size {b:?}")))
        })
        .collect::<Result<_>>()?;
    let max_batch = batches.iter().copied().max().unwrap_or(1);
    let texts = texts_of(&tok, tokens, max_batch)?;
    let ids: Vec<Vec<u32>> = texts.iter().map(|t| tok.encode(t)).collect::<Result<_>>()?;
    let threads = threads();
    let what = match &subject {
        Subject::Embed => "embed: all-MiniLM-L6-v2 sentence embeddings",
        Subject::Filter(_) => "filter: text -> verdict scores (MiniLM + heads)",
    };
    println!("bench {what}, {tokens}-token texts, {threads} threads, {seconds} s per figure");
    let mut ours = Vec::new();
    for name in args.backends.split(',') {
        let backend = Backend::init_blocking(name.trim().parse::<BackendChoice>()?)?;
        let mut once: Box<dyn FnMut(usize) -> Result<()>> = match &subject {
            Subject::Embed => {
                let bert = Bert::load(&config, &weights, &backend.device)?;
                let ids = ids.clone();
                let device = backend.device.clone();
                Box::new(move |batch| sync_read(bert.embed_sequences(&ids[..batch], &device)?))
            }
            Subject::Filter(heads) => {
                let filter = pollster::block_on(Filter::load_for(models, heads, &backend))?;
                println!("  filter on {backend}: {}", filter.route().reason);
                let texts = texts.clone();
                Box::new(move |batch| {
                    let refs: Vec<&str> = texts[..batch].iter().map(String::as_str).collect();
                    pollster::block_on(filter.scores(&refs)).map(|_| ())
                })
            }
        };
        for &batch in &batches {
            // Warm-up: kernel compilation and autotuning are not what is measured.
            once(batch)?;
            let (mut done, start) = (0usize, Instant::now());
            while start.elapsed().as_secs_f64() < seconds {
                once(batch)?;
                done += batch;
            }
            let rate = done as f64 / start.elapsed().as_secs_f64();
            println!("  webguard {backend}: batch {batch:>3}: {rate:8.1} texts/s");
            ours.push((name.trim().to_string(), batch, rate));
        }
    }
    println!("  webguard peak resident memory: {:.0} MB", peak_rss_mb());
    if let Some(python) = &args.python {
        let file = std::env::temp_dir().join(format!("webguard-bench-{}.json", std::process::id()));
        std::fs::write(&file, serde_json::to_string(&texts).unwrap_or_default())
            .map_err(|e| Error::io(&file, e))?;
        let scripts = webguard::source_checkout().join("scripts");
        let mut command = std::process::Command::new(python);
        match &subject {
            Subject::Embed => command.arg(scripts.join("bench-embeddings.py")),
            Subject::Filter(heads) => command
                .arg(scripts.join("filter-torch.py"))
                .arg("bench")
                .arg("--heads")
                .arg(heads),
        };
        command
            .arg(&file)
            .args(["--threads", &threads.to_string()])
            .args([
                "--batches",
                &batches
                    .iter()
                    .map(|b| b.to_string())
                    .collect::<Vec<_>>()
                    .join(","),
            ])
            .args(["--models", &models.display().to_string()])
            .args(["--seconds", &seconds.to_string()]);
        let peer = peer_json(&mut command, python, "PyTorch");
        let _ = std::fs::remove_file(&file);
        let peer = peer?;
        let peer_name = match &subject {
            Subject::Embed => "sentence-transformers",
            Subject::Filter(_) => "the filter in PyTorch (scripts/filter-torch.py)",
        };
        println!(
            "  {peer_name} (torch {}, {} threads), same texts:",
            peer["torch"], peer["threads"]
        );
        for r in peer["results"].as_array().into_iter().flatten() {
            let batch = r["batch"].as_u64().unwrap_or(0) as usize;
            let rate = r["texts_per_s"].as_f64().unwrap_or(f64::NAN);
            println!("    batch {batch:>3}: {rate:8.1} texts/s");
            for (name, b, ours) in ours.iter().filter(|o| o.1 == batch) {
                println!(
                    "    ratio webguard {name} / PyTorch at batch {b}: {:.2}",
                    ours / rate
                );
            }
        }
        println!(
            "    peak resident memory: {:.0} MB",
            peer["peak_rss_mb"].as_f64().unwrap_or(f64::NAN)
        );
    }
    Ok(())
}
