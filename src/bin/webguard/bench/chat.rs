//! `bench chat`: SmolLM2's prefill, then greedy decode through the KV cache, timed per phase
//! and per backend, next to llama.cpp on the same GGUF. On a GPU both paths run: burn's
//! op-by-op path (f32 weights) and the quantised engine (`models::gpu`), each with what a
//! decoded token costs there: kernel launches (counted by a cubecl launch observer, so burn's
//! are counted too), bytes read back, and GPU memory in use (cubecl's memory report).

use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::Instant;

use webguard::backend::{Backend, BackendChoice, BackendKind, read_f32, wgpu_tasks_per_submission};
use webguard::models::gpu::engine::device_bytes_in_use;
use webguard::models::gpu::{DecodeLayout, KvPrecision};
use webguard::models::llama::Llama;
use webguard::models::packed::Precision;
use webguard::text::Tokenizer;
use webguard::weights::Gguf;
use webguard::{Error, Result, SMOLLM2_GGUF};

use super::{peer_json, sync_read, threads};
use crate::common::{map, peak_rss_mb, release_startup_pages};

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
    /// One JSON object per backend and path instead of text.
    #[arg(long)]
    json: bool,
    /// The GPU engine's KV cache: f16 (the default: half the memory, prefill exact) or f32
    /// (every step exact).
    #[arg(long, default_value = "f16")]
    kv: String,
    /// On a GPU, measure the engine only (burn's path widens 538 MB and takes minutes on
    /// lavapipe).
    #[arg(long)]
    engine_only: bool,
    /// On a GPU, after the measured run, time each of the engine's kernels over this many more
    /// decoded tokens (one at a time: the device waits for each) and print where a token's
    /// time goes.
    #[arg(long, default_value_t = 0)]
    profile_tokens: usize,
    /// On a GPU, how the engine lays out a decoded position's products: auto (picked from the
    /// adapter), rows (one invocation per row), split (8 per row), or a comma-separated list
    /// measured one after the other in this run (e.g. `rows,split,rows,split`).
    #[arg(long, default_value = "auto")]
    gpu_layouts: String,
}

/// Counts every kernel launch, burn's included.
#[derive(Default)]
struct Launches(AtomicU64);

impl cubecl::logging::LaunchObserver for Launches {
    fn launched(&self, _kernel: &'static str) {
        self.0.fetch_add(1, Ordering::Relaxed);
    }
}

/// Times every launch one at a time (the issuing thread waits for each), in order.
#[derive(Default)]
struct KernelTimes {
    names: std::sync::Mutex<Vec<&'static str>>,
    times: std::sync::Mutex<Vec<(f64, cubecl::logging::TimingMethod)>>,
}

impl cubecl::logging::LaunchObserver for KernelTimes {
    fn launched(&self, kernel: &'static str) {
        self.names.lock().unwrap().push(kernel);
    }

    fn timing(&self) -> cubecl::logging::TimingRequest {
        cubecl::logging::TimingRequest::Resolved
    }

    fn timed(
        &self,
        _kernel: &'static str,
        duration: cubecl::logging::Duration,
        method: cubecl::logging::TimingMethod,
    ) {
        self.times
            .lock()
            .unwrap()
            .push((duration.as_secs_f64(), method));
    }
}

/// `tokens` greedy decode steps with every kernel timed, summed per kernel (the engine's
/// three Q4_1 products per block told apart by their order: QKV, output, down), printed.
fn profile_engine(
    engine: &webguard::models::gpu::Engine,
    seq: &mut webguard::models::gpu::Sequence,
    tokens: usize,
) -> Result<()> {
    let times = Arc::new(KernelTimes::default());
    let observing = cubecl::logging::LaunchObservation::new(times.clone());
    for _ in 0..tokens {
        engine.step_picked(seq)?;
        pollster::block_on(engine.argmax(seq))?;
    }
    drop(observing);
    let names = times.names.lock().unwrap().clone();
    let timed = times.times.lock().unwrap().clone();
    if names.len() != timed.len() {
        return Err(Error::Backend(format!(
            "{} launches but {} timings",
            names.len(),
            timed.len()
        )));
    }
    let mut rows: Vec<(String, usize, f64)> = Vec::new();
    let mut products = 0;
    for (name, (secs, _)) in names.iter().zip(&timed) {
        // `...::kernels::matvec_q4_1::...` → `matvec_q4_1`.
        let mut short = name
            .split("::")
            .skip_while(|part| *part != "kernels")
            .nth(1)
            .unwrap_or(name)
            .to_string();
        if short == "embed_q8_0" {
            products = 0;
        }
        if short == "matvec_q4_1" {
            short += [" (QKV)", " (output)", " (down)"][products % 3];
            products += 1;
        }
        match rows.iter_mut().find(|r| r.0 == short) {
            Some(row) => {
                row.1 += 1;
                row.2 += secs;
            }
            None => rows.push((short, 1, *secs)),
        }
    }
    let total: f64 = rows.iter().map(|r| r.2).sum();
    let method = timed.first().map(|t| format!("{:?}", t.1));
    println!(
        "  per-kernel profile over {tokens} decoded tokens ({} timing, kernels one at a time): {:.1} ms/token",
        method.unwrap_or_default(),
        total * 1e3 / tokens as f64
    );
    rows.sort_by(|a, b| b.2.total_cmp(&a.2));
    for (name, launches, secs) in rows {
        println!(
            "    {name:<24} {:>5.1} launches/token {:>8.2} ms/token {:>5.1}%",
            launches as f64 / tokens as f64,
            secs * 1e3 / tokens as f64,
            100.0 * secs / total
        );
    }
    Ok(())
}

/// One backend and path's figures.
struct Run {
    backend: String,
    /// "engine" or "burn" on a GPU; on the CPU, how the packed products round.
    path: String,
    device: String,
    load_s: f64,
    prefill: f64,
    ttft_ms: f64,
    decode: f64,
    weight_bytes: usize,
    /// GPU memory in use for this path (None on the CPU).
    total_bytes: Option<u64>,
    dispatches_per_token: Option<f64>,
    submissions_per_token: Option<f64>,
    readback_bytes_per_token: Option<f64>,
    /// The engine's KV cache storage (f32 or f16).
    kv_cache: Option<String>,
    /// The engine's decode layout.
    layout: Option<String>,
}

impl Run {
    fn json(&self) -> serde_json::Value {
        serde_json::json!({
            "backend": self.backend,
            "path": self.path,
            "kv_cache": self.kv_cache,
            "decode_layout": self.layout,
            "device": self.device,
            "load_s": self.load_s,
            "prefill_tokens_per_s": self.prefill,
            "ttft_ms": self.ttft_ms,
            "decode_tokens_per_s": self.decode,
            "weight_bytes": self.weight_bytes,
            "total_bytes": self.total_bytes,
            "dispatches_per_token": self.dispatches_per_token,
            "submissions_per_token": self.submissions_per_token,
            "submissions_estimated": self.submissions_per_token.is_some(),
            "readback_bytes_per_token": self.readback_bytes_per_token,
        })
    }

    fn print(&self) {
        let mb = |b: f64| b / 1e6;
        let mut line = format!(
            "  webguard {} [{}]: load {:.1} s, weights {:.1} MB, prefill {:.1} tokens/s, time to first token {:.0} ms, decode {:.1} tokens/s",
            self.device,
            self.path,
            self.load_s,
            mb(self.weight_bytes as f64),
            self.prefill,
            self.ttft_ms,
            self.decode
        );
        if let Some(total) = self.total_bytes {
            line += &format!(", GPU memory in use {:.1} MB", mb(total as f64));
        }
        if let Some(kv) = &self.kv_cache {
            line += &format!(" ({kv} KV cache)");
        }
        if let Some(layout) = &self.layout {
            line += &format!(", decode layout {layout}");
        }
        if let Some(d) = self.dispatches_per_token {
            line += &format!(", {d:.0} dispatches/token");
        }
        if let Some(s) = self.submissions_per_token {
            line += &format!(", ~{s:.1} submissions/token (estimated)");
        }
        if let Some(r) = self.readback_bytes_per_token {
            line += &format!(", {r:.0} bytes read back/token");
        }
        println!("{line}");
    }
}

fn argmax(v: &[f32]) -> u32 {
    v.iter()
        .enumerate()
        .max_by(|a, b| a.1.total_cmp(b.1))
        .map_or(0, |(i, _)| i as u32)
}

pub fn run(models: &Path, args: &ChatBench) -> Result<()> {
    let (prompt_tokens, new_tokens) = (args.prompt_tokens, args.new_tokens);
    if prompt_tokens == 0 || new_tokens < 2 {
        return Err(Error::InvalidInput(
            "the prompt needs at least 1 token and decoding at least 2".into(),
        ));
    }
    let file = map(&models.join(SMOLLM2_GGUF))?;
    // Parsed again per backend: the metadata (string tables, ~1.7 MB) is not kept while the
    // model runs, as in `load_chat`.
    let tok = Tokenizer::from_gguf(&Gguf::parse_mapped(&file)?)?;
    // A prompt of exactly `prompt_tokens` tokens, from repeated ordinary text.
    let base =
        tok.encode("The history of the printing press begins with movable type, paper and ink. ")?;
    let prompt: Vec<u32> = base.iter().cycle().take(prompt_tokens).copied().collect();
    let threads = threads();
    let mut runs: Vec<Run> = Vec::new();
    if !args.json {
        println!(
            "bench chat: SmolLM2-135M-Instruct Q4_1, {prompt_tokens}-token prompt, {new_tokens} new tokens, {threads} threads"
        );
    }
    let kv = match args.kv.as_str() {
        "f32" => KvPrecision::F32,
        "f16" => KvPrecision::F16,
        other => {
            return Err(Error::InvalidInput(format!(
                "--kv {other}: expected f32 or f16"
            )));
        }
    };
    let layouts = args
        .gpu_layouts
        .split(',')
        .map(|l| match l.trim() {
            "auto" => Ok(None),
            "rows" => Ok(Some(DecodeLayout::RowPerInvocation)),
            "split" => Ok(Some(DecodeLayout::SplitRows)),
            other => Err(Error::InvalidInput(format!(
                "--gpu-layouts {other}: expected auto, rows or split"
            ))),
        })
        .collect::<Result<Vec<_>>>()?;
    let launches = Arc::new(Launches::default());
    let _observing = cubecl::logging::LaunchObservation::new(launches.clone());
    let count = || launches.0.load(Ordering::Relaxed);
    for name in args.backends.split(',') {
        let backend = Backend::init_blocking(name.trim().parse::<BackendChoice>()?)?;
        let gpu = backend.kind == BackendKind::Wgpu;
        let in_use = || device_bytes_in_use(&backend.device);
        let load_start = Instant::now();
        let mut model = Llama::load(&Gguf::parse_mapped(&file)?, &backend.device)?;
        release_startup_pages();
        if args.exact {
            model.set_precision(Precision::Exact);
        }
        model.set_gpu_kv_precision(kv);
        let load = load_start.elapsed().as_secs_f64();
        let vocab = model.config().vocab_size;

        // The quantised engine first (before burn's path widens its weights on the GPU).
        // `auto`: the adapter's default (also after an explicit layout in the list).
        let adapter = backend.adapter.as_ref();
        let auto = adapter.map(|a| DecodeLayout::for_adapter(&a.name, &a.device_type));
        for (i, layout) in layouts.iter().enumerate() {
            if let Some(layout) = layout.or(auto) {
                model.set_gpu_decode_layout(layout);
            }
            let last_layout = i + 1 == layouts.len();
            match model.gpu_engine() {
                Ok(engine) => {
                    // Warm-up (kernel compilation: prefill's and one decode step's, whose
                    // products are other kernel variants), then the measured run.
                    let mut seq = engine.new_sequence();
                    engine.step(&mut seq, &prompt[..prompt_tokens.min(8)])?;
                    pollster::block_on(engine.argmax(&mut seq))?;
                    engine.step_picked(&mut seq)?;
                    pollster::block_on(engine.argmax(&mut seq))?;
                    drop(seq);
                    let mut seq = engine.new_sequence();
                    let start = Instant::now();
                    engine.step(&mut seq, &prompt)?;
                    pollster::block_on(engine.argmax(&mut seq))?;
                    let ttft = start.elapsed().as_secs_f64();
                    let (before, launched) = (engine.stats(), count());
                    let decode_start = Instant::now();
                    for _ in 1..new_tokens {
                        // Greedy: the pick stays on the GPU for the next step.
                        engine.step_picked(&mut seq)?;
                        pollster::block_on(engine.argmax(&mut seq))?;
                    }
                    let decode = decode_start.elapsed().as_secs_f64();
                    let (after, launched) = (engine.stats(), count() - launched);
                    let tokens = (new_tokens - 1) as f64;
                    let own = after.dispatches - before.dispatches;
                    if own != launched {
                        return Err(Error::Backend(format!(
                            "the engine counted {own} launches, cubecl's observer {launched}"
                        )));
                    }
                    // Nothing is uploaded per token (an upload would submit what is queued): the
                    // launches go in batches of `wgpu_tasks_per_submission()`, the last batch at
                    // the read.
                    if after.upload_bytes != before.upload_bytes {
                        return Err(Error::Backend("greedy decoding uploaded data".into()));
                    }
                    let per_token = (launched as f64 / (new_tokens - 1) as f64).ceil() as u64;
                    let submissions = per_token.div_ceil(wgpu_tasks_per_submission() as u64)
                        * (new_tokens - 1) as u64;
                    runs.push(Run {
                        backend: name.trim().into(),
                        path: "engine".into(),
                        kv_cache: Some(args.kv.clone()),
                        layout: Some(format!("{:?}", engine.decode_layout())),
                        device: backend.to_string(),
                        load_s: load,
                        prefill: prompt_tokens as f64 / ttft,
                        ttft_ms: ttft * 1000.0,
                        decode: tokens / decode,
                        weight_bytes: engine.weight_bytes(),
                        total_bytes: in_use(),
                        dispatches_per_token: Some(launched as f64 / tokens),
                        submissions_per_token: Some(submissions as f64 / tokens),
                        readback_bytes_per_token: Some(
                            (after.readback_bytes - before.readback_bytes) as f64 / tokens,
                        ),
                    });
                    if !args.json {
                        runs.last().map(Run::print);
                    }
                    if args.profile_tokens > 0 && last_layout {
                        if seq.len() + args.profile_tokens > engine.max_positions() {
                            return Err(Error::InvalidInput(
                                "--profile-tokens: past the engine's cache".into(),
                            ));
                        }
                        profile_engine(engine, &mut seq, args.profile_tokens)?;
                    }
                }
                Err(reason) if gpu && last_layout => {
                    eprintln!("  (the GPU engine does not run: {reason})");
                }
                Err(_) => {}
            }
        }

        if gpu && args.engine_only {
            continue;
        }
        // burn's path (the only one on the CPU).
        let before_burn = in_use().unwrap_or(0);
        let mut cache = model.new_cache();
        let l = model.forward(&prompt[..prompt_tokens.min(8)], &mut cache)?;
        sync_read(l)?;
        let mut cache = model.new_cache();
        let start = Instant::now();
        let logits = model.forward(&prompt, &mut cache)?;
        let mut next = argmax(&pollster::block_on(read_f32(logits.reshape([vocab])))?);
        let ttft = start.elapsed().as_secs_f64();
        let launched = count();
        let decode_start = Instant::now();
        for _ in 1..new_tokens {
            let l = model.forward(&[next], &mut cache)?;
            next = argmax(&pollster::block_on(read_f32(l.reshape([vocab])))?);
        }
        let decode = decode_start.elapsed().as_secs_f64();
        let launched = count() - launched;
        let tokens = (new_tokens - 1) as f64;
        runs.push(Run {
            backend: name.trim().into(),
            path: if gpu {
                "burn".into()
            } else {
                format!("{:?} products", model.precision())
            },
            device: backend.to_string(),
            load_s: load,
            prefill: prompt_tokens as f64 / ttft,
            ttft_ms: ttft * 1000.0,
            decode: tokens / decode,
            weight_bytes: model.resident_weight_bytes(),
            total_bytes: in_use().map(|b| b.saturating_sub(before_burn)),
            dispatches_per_token: gpu.then_some(launched as f64 / tokens),
            submissions_per_token: None,
            readback_bytes_per_token: Some((vocab * 4) as f64),
            kv_cache: None,
            layout: None,
        });
        if !args.json {
            runs.last().map(Run::print);
        }
    }
    if args.json {
        for r in &runs {
            println!("{}", r.json());
        }
        return Ok(());
    }
    // Both in the unit of `peak_rss_mb` (2^20 bytes), and their ratio (issue 15: at most 1.5).
    let file_mb = file.bytes().len() as f64 / f64::from(1 << 20);
    println!(
        "  webguard peak resident memory: {:.0} MB (GGUF file: {file_mb:.0} MB; {:.2}x the file; MB = 2^20 bytes)",
        peak_rss_mb(),
        peak_rss_mb() / file_mb
    );
    if let Some(python) = &args.python {
        let script = webguard::source_checkout().join("scripts/llamacpp-peer.py");
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
        for r in &runs {
            println!(
                "    ratio webguard {} [{}] / llama.cpp: prefill {:.2}, decode {:.2}",
                r.backend,
                r.path,
                r.prefill / prefill,
                r.decode / decode
            );
        }
    }
    Ok(())
}
