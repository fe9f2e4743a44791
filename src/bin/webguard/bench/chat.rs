//! `bench chat`: SmolLM2's prefill, then greedy decode through the KV cache, timed per phase
//! and per backend, next to llama.cpp on the same GGUF.

use std::path::{Path, PathBuf};
use std::time::Instant;

use webguard::backend::{Backend, BackendChoice, read_f32};
use webguard::models::llama::Llama;
use webguard::models::packed::Precision;
use webguard::text::Tokenizer;
use webguard::weights::Gguf;
use webguard::{Error, Result, SMOLLM2_GGUF};

use super::{peer_json, sync_read, threads};
use crate::common::{peak_rss_mb, read};

#[derive(clap::Args)]
pub struct ChatBench {
    /// Backends to measure: cpu, gpu or both.
    #[arg(long, default_value = "cpu,gpu")]
    backends: String,
    /// Prompt length in tokens.
    #[arg(long, default_value_t = 128)]
    prompt_tokens: usize,
    /// Tokens to decode (end-of-turn is ignored so every run decodes this many).
    #[arg(long, default_value_t = 128)]
    new_tokens: usize,
    /// Python with llama-cpp-python, for the side-by-side peer run.
    #[arg(long)]
    python: Option<PathBuf>,
    /// Exact f32 products on the CPU instead of 8-bit activations (also `WEBGUARD_EXACT=1`).
    #[arg(long)]
    exact: bool,
}

pub fn run(models: &Path, args: &ChatBench) -> Result<()> {
    let (prompt_tokens, new_tokens) = (args.prompt_tokens, args.new_tokens);
    if prompt_tokens == 0 || new_tokens == 0 {
        return Err(Error::InvalidInput(
            "prompt and new tokens must be at least 1".into(),
        ));
    }
    let bytes = read(&models.join(SMOLLM2_GGUF))?;
    let gguf = Gguf::parse(&bytes)?;
    let tok = Tokenizer::from_gguf(&gguf)?;
    // A prompt of exactly `prompt_tokens` tokens, from repeated ordinary text.
    let base =
        tok.encode("The history of the printing press begins with movable type, paper and ink. ")?;
    let prompt: Vec<u32> = base.iter().cycle().take(prompt_tokens).copied().collect();
    let threads = threads();
    let mut ours = Vec::new();
    println!(
        "bench chat: SmolLM2-135M-Instruct Q4_1, {prompt_tokens}-token prompt, {new_tokens} new tokens, {threads} threads"
    );
    for name in args.backends.split(',') {
        let backend = Backend::init_blocking(name.trim().parse::<BackendChoice>()?)?;
        let load_start = Instant::now();
        let mut model = Llama::load(&gguf, &backend.device)?;
        if args.exact {
            model.set_precision(Precision::Exact);
        }
        let load = load_start.elapsed().as_secs_f64();
        let vocab = model.config().vocab_size;
        let argmax = |v: &[f32]| {
            v.iter()
                .enumerate()
                .max_by(|a, b| a.1.total_cmp(b.1))
                .map_or(0, |(i, _)| i as u32)
        };
        // Warm-up (kernel compilation on wgpu), then the measured run.
        let mut cache = model.new_cache();
        let l = model.forward(&prompt[..prompt_tokens.min(8)], &mut cache)?;
        sync_read(l)?;
        let mut cache = model.new_cache();
        let start = Instant::now();
        let logits = model.forward(&prompt, &mut cache)?;
        let mut next = argmax(&pollster::block_on(read_f32(logits.reshape([vocab])))?);
        let ttft = start.elapsed().as_secs_f64();
        let decode_start = Instant::now();
        for _ in 1..new_tokens {
            let l = model.forward(&[next], &mut cache)?;
            next = argmax(&pollster::block_on(read_f32(l.reshape([vocab])))?);
        }
        let decode = decode_start.elapsed().as_secs_f64();
        ours.push((
            name.trim().to_string(),
            prompt_tokens as f64 / ttft,
            (new_tokens - 1) as f64 / decode,
        ));
        println!(
            "  webguard {backend} ({:?} products): load {load:.1} s, weights {:.0} MB resident, prefill {:.1} tokens/s, time to first token {:.0} ms, decode {:.1} tokens/s",
            model.precision(),
            model.resident_weight_bytes() as f64 / 1e6,
            prompt_tokens as f64 / ttft,
            ttft * 1000.0,
            (new_tokens - 1) as f64 / decode
        );
    }
    println!(
        "  webguard peak resident memory: {:.0} MB (GGUF file: {:.0} MB)",
        peak_rss_mb(),
        bytes.len() as f64 / 1e6
    );
    if let Some(python) = &args.python {
        let script = Path::new(env!("CARGO_MANIFEST_DIR")).join("scripts/llamacpp-peer.py");
        let mut command = std::process::Command::new(python);
        command
            .arg(&script)
            .arg("bench")
            .args(["--prompt-tokens", &prompt_tokens.to_string()])
            .args(["--new-tokens", &new_tokens.to_string()])
            .args(["--threads", &threads.to_string()]);
        let peer = peer_json(&mut command, python, "llama.cpp")?;
        let prefill = peer["prefill_tokens_per_s"].as_f64().unwrap_or(f64::NAN);
        let decode = peer["decode_tokens_per_s"].as_f64().unwrap_or(f64::NAN);
        println!(
            "  llama.cpp (llama-cpp-python {}, {} threads), same GGUF: prefill {prefill:.1} tokens/s, time to first token {:.0} ms, decode {decode:.1} tokens/s, peak resident memory {:.0} MB",
            peer["llama_cpp_python"],
            peer["threads"],
            peer["ttft_ms"].as_f64().unwrap_or(f64::NAN),
            peer["peak_rss_mb"].as_f64().unwrap_or(f64::NAN)
        );
        for (name, p, d) in &ours {
            println!(
                "    ratio webguard {name} / llama.cpp: prefill {:.2}, decode {:.2}",
                p / prefill,
                d / decode
            );
        }
    }
    Ok(())
}
