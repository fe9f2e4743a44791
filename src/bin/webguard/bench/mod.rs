//! `bench`: speed and memory of the library's code paths, natively, each next to a peer
//! (sentence-transformers, PyTorch, llama.cpp) on the same input when `--python` points at an
//! interpreter that has it. One file per benchmark; the peers' scripts are in scripts/.

mod chat;
mod encoder;
mod guard;
mod tune;

use std::path::Path;

use webguard::{Error, Result};

#[derive(clap::Args)]
pub struct BenchArgs {
    #[command(subcommand)]
    what: BenchWhat,
    /// Only the paths an x86-64 CPU without AVX-512 takes (integer products, GELU, the
    /// encoder's loops; gemm keeps its own choice), to measure them on a CPU with AVX-512.
    /// The peers are not limited: point `--python` at one built without AVX-512.
    #[arg(long, global = true)]
    avx2_only: bool,
}

#[derive(clap::Subcommand)]
enum BenchWhat {
    /// MiniLM sentence embeddings (the filter's encoder): texts/s at each batch size for
    /// texts of a fixed token length, per backend, next to sentence-transformers when
    /// `--python` points at an interpreter that has it (scripts/bench-embeddings.py).
    Embed(encoder::EncoderBench),
    /// SmolLM2: prefill tokens/s, decode tokens/s, time to first token and peak memory per
    /// backend, next to llama.cpp on the same GGUF with the same thread count when
    /// `--python` points at an interpreter with llama-cpp-python (scripts/llamacpp-peer.py).
    Chat(chat::ChatBench),
    /// Tuning: milliseconds per step of filter tuning (a new label from 8 examples) and of
    /// chat LoRA tuning (batch and sequence length printed) per backend, and peak memory;
    /// with `--refusals`, the refusal experiment (see `tune/refusals.rs`): AdvBench and
    /// self-instruct refusal rates before and after tuning on 16 refusals + benign pairs.
    Tune(tune::TuneBench),
    /// The whole filter (tokenize, window, encode, pool, heads) on texts of a fixed token
    /// length: texts/s per batch size and backend, next to the same filter in PyTorch
    /// (scripts/filter-torch.py) on the same texts when `--python` is given.
    Filter(encoder::FilterBench),
    /// A moderated chat turn (input screen, probes, the answer screened at every sentence end)
    /// next to the chat model alone, same prompt and answer: tokens/s of each, the ratio
    /// (budget 1.2), and what the screens cost on their own.
    Guard(guard::GuardBench),
}

pub fn run(models: &Path, args: BenchArgs) -> Result<()> {
    if args.avx2_only {
        webguard::models::qdot::limit_to_avx2();
    }
    // On stderr, so that `--json` output stays one object per line.
    eprintln!(
        "CPU: {}; integer products: {:?}",
        cpu_model(),
        webguard::models::qdot::Isa::best()
    );
    match args.what {
        BenchWhat::Embed(args) => encoder::run_embed(models, &args),
        BenchWhat::Chat(args) => chat::run(models, &args),
        BenchWhat::Tune(args) => tune::run(models, &args),
        BenchWhat::Filter(args) => encoder::run_filter(models, &args),
        BenchWhat::Guard(args) => guard::run(models, &args),
    }
}

/// Runs a peer benchmark script and parses the one JSON object it prints.
fn peer_json(
    command: &mut std::process::Command,
    python: &Path,
    peer: &str,
) -> Result<serde_json::Value> {
    let out = command.output().map_err(|e| Error::io(python, e))?;
    if !out.status.success() {
        return Err(Error::Backend(format!(
            "{peer} peer run failed: {}",
            String::from_utf8_lossy(&out.stderr)
        )));
    }
    serde_json::from_slice(&out.stdout)
        .map_err(|e| Error::Backend(format!("{peer} peer output: {e}")))
}

/// Waits for a result by reading it back, so each timing covers the whole computation.
fn sync_read(t: burn::tensor::Tensor<2>) -> Result<()> {
    pollster::block_on(t.into_data_async())
        .map(|_| ())
        .map_err(|e| Error::Backend(format!("{e:?}")))
}

/// The threads the CPU backend and the peers use: every core.
fn threads() -> usize {
    std::thread::available_parallelism().map_or(1, |n| n.get())
}

/// The CPU's model name (Linux), for the figures' record.
fn cpu_model() -> String {
    std::fs::read_to_string("/proc/cpuinfo")
        .ok()
        .and_then(|info| {
            info.lines()
                .find(|l| l.starts_with("model name"))
                .and_then(|l| l.split(':').nth(1))
                .map(|m| m.trim().to_string())
        })
        .unwrap_or_else(|| "unknown".into())
}
