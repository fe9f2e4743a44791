//! The webguard command line: the library's code paths, natively, without a browser.

#[cfg(target_arch = "wasm32")]
fn main() {}

#[cfg(not(target_arch = "wasm32"))]
fn main() -> std::process::ExitCode {
    keep_freed_memory();
    match cli::run() {
        Ok(()) => std::process::ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("error: {e}");
            std::process::ExitCode::FAILURE
        }
    }
}

/// glibc gives large freed blocks back to the kernel (munmap, or trimming the heap) and the
/// next allocation of the same size faults every page in again; the models allocate and free
/// buffers of several MB per layer, which made page faults ~15% of the filter's time on the
/// CPU backend. Raise both thresholds so freed buffers are reused (the most glibc allows for
/// mmap: 32 MiB).
#[cfg(not(target_arch = "wasm32"))]
fn keep_freed_memory() {
    #[cfg(all(target_os = "linux", target_env = "gnu"))]
    // SAFETY: mallopt only changes allocator tuning; called before any thread starts.
    unsafe {
        libc::mallopt(libc::M_MMAP_THRESHOLD, 32 << 20);
        libc::mallopt(libc::M_TRIM_THRESHOLD, 512 << 20);
    }
}

#[cfg(not(target_arch = "wasm32"))]
mod chat_cmd;
#[cfg(not(target_arch = "wasm32"))]
mod filter_cmds;
#[cfg(not(target_arch = "wasm32"))]
mod progress;
mod tune_cmds;

#[cfg(not(target_arch = "wasm32"))]
mod cli {
    use std::path::{Path, PathBuf};

    use clap::{Parser, Subcommand, ValueEnum};
    use webguard::backend::{Backend, BackendChoice, probe_computation};
    use webguard::filter::train::TrainConfig;
    use webguard::text::Tokenizer;
    use webguard::weights::{Gguf, Value};
    use webguard::{Error, MINILM_DIR, Result, SMOLLM2_GGUF};

    #[derive(Parser)]
    #[command(
        name = "webguard",
        version,
        about = "Private chat and moderation models, natively"
    )]
    struct Cli {
        /// Folder with the fetched models (default: $WEBGUARD_MODELS or ./models).
        #[arg(long, global = true)]
        models: Option<PathBuf>,
        #[command(subcommand)]
        command: Command,
    }

    #[derive(Subcommand)]
    enum Command {
        /// Print a GGUF file's metadata and tensor table.
        Info {
            /// GGUF file (default: the SmolLM2 model).
            file: Option<PathBuf>,
            /// Also list every tensor.
            #[arg(long)]
            tensors: bool,
        },
        /// Print the token ids of each TEXT (or of each stdin line).
        Tokenize {
            /// Which model's tokenizer.
            #[arg(long, value_enum, default_value = "smollm2")]
            model: ModelName,
            /// Texts to tokenize.
            text: Vec<String>,
        },
        /// Measure speed and memory (see `bench --help`).
        Bench {
            #[command(subcommand)]
            what: BenchWhat,
        },
        /// Answer PROMPT with SmolLM2-135M-Instruct, streaming to stdout.
        Chat {
            /// System prompt (default: the model's own).
            #[arg(long)]
            system: Option<String>,
            /// 0 for greedy decoding.
            #[arg(long, default_value_t = 0.0)]
            temperature: f32,
            /// Nucleus sampling mass.
            #[arg(long, default_value_t = 1.0)]
            top_p: f32,
            /// Sample among the K most likely tokens (0: all).
            #[arg(long, default_value_t = 0)]
            top_k: usize,
            /// Penalty for repeating tokens (1: none).
            #[arg(long, default_value_t = 1.0)]
            repetition_penalty: f32,
            /// Sampling seed.
            #[arg(long, default_value_t = 0)]
            seed: u64,
            /// Most new tokens.
            #[arg(long, default_value_t = 256)]
            max_tokens: usize,
            /// auto, gpu (webgpu/vulkan) or cpu.
            #[arg(long, default_value = "cpu")]
            backend: String,
            /// Chat adapters written by `tune-chat`.
            #[arg(long)]
            adapters: Option<PathBuf>,
            /// The user's message.
            prompt: String,
        },
        /// Score texts with the toxicity filter (each TEXT, or each stdin line).
        Classify {
            /// One JSON object per line instead of a table.
            #[arg(long)]
            json: bool,
            #[command(flatten)]
            filter: FilterArgs,
            /// Texts to classify.
            text: Vec<String>,
        },
        /// Teach the filter from labelled examples (JSONL: {"text", "label", "value"} per
        /// line; a new label gets its own head) and write the tuned heads (adapters).
        TuneFilter {
            /// The examples.
            #[arg(long)]
            examples: PathBuf,
            /// Where to write the adapters (safetensors).
            #[arg(long)]
            out: PathBuf,
            /// Optimiser steps.
            #[arg(long, default_value_t = 30)]
            steps: usize,
            /// Adam's learning rate.
            #[arg(long, default_value_t = 1e-3)]
            learning_rate: f64,
            /// Seeds the new heads' initial weights.
            #[arg(long, default_value_t = 0)]
            seed: u64,
            #[command(flatten)]
            filter: FilterArgs,
        },
        /// Instruction-tune the chat model with LoRA from JSONL pairs ({"prompt", "response"}
        /// per line) and write the adapters (use them with `chat --adapters`).
        TuneChat {
            /// The pairs.
            #[arg(long)]
            pairs: PathBuf,
            /// Where to write the adapters (safetensors).
            #[arg(long)]
            out: PathBuf,
            /// Optimiser steps.
            #[arg(long, default_value_t = 50)]
            steps: usize,
            /// Adam's learning rate.
            #[arg(long, default_value_t = 1e-3)]
            learning_rate: f64,
            /// Pairs per step.
            #[arg(long, default_value_t = 4)]
            batch: usize,
            /// LoRA rank.
            #[arg(long, default_value_t = 8)]
            rank: usize,
            /// Adapted projections, comma-separated (q, k, v, o, gate, up, down).
            #[arg(long, default_value = "q,v")]
            targets: String,
            /// Seeds the adapters' initial weights and the pair order.
            #[arg(long, default_value_t = 0)]
            seed: u64,
            /// auto, gpu or cpu.
            #[arg(long, default_value = "cpu")]
            backend: String,
        },
        /// Accuracy, precision, recall, macro-F1 and ROC-AUC of one filter label on labelled
        /// texts (one text per line; labels 0/1, one per line).
        EvalFilter {
            /// Texts, one per line.
            #[arg(long)]
            texts: PathBuf,
            /// 0/1 labels, one per line.
            #[arg(long)]
            labels: PathBuf,
            /// Which label the 0/1 labels are for.
            #[arg(long)]
            label: String,
            /// Print the figures as JSON.
            #[arg(long)]
            json: bool,
            #[command(flatten)]
            filter: FilterArgs,
        },
        /// Train the filter's heads from the shared data (see ../shared/data/README.md) and
        /// write the heads file with its provenance and validation figures.
        TrainFilter {
            /// The shared data folder.
            #[arg(long, default_value = concat!(env!("CARGO_MANIFEST_DIR"), "/../shared/data"))]
            data: PathBuf,
            /// Where to write the heads.
            #[arg(long, default_value = concat!(env!("CARGO_MANIFEST_DIR"), "/assets/filter-heads.safetensors"))]
            out: PathBuf,
            /// Poolings the heads read: embedding, mean:N, max:N (N = hidden state 0..=6).
            #[arg(long, default_value = "embedding,max:6")]
            features: String,
            /// Backend that runs the encoder (the heads train on the CPU backend).
            #[arg(long, default_value = "cpu")]
            backend: String,
            /// Hidden width of each head.
            #[arg(long, default_value_t = TrainConfig::default().hidden)]
            hidden: usize,
            /// Dropout while training.
            #[arg(long, default_value_t = TrainConfig::default().dropout)]
            dropout: f64,
            /// Passes over the training data.
            #[arg(long, default_value_t = TrainConfig::default().epochs)]
            epochs: usize,
            /// Rows per step.
            #[arg(long, default_value_t = TrainConfig::default().batch_size)]
            batch: usize,
            /// Adam learning rate.
            #[arg(long, default_value_t = TrainConfig::default().learning_rate)]
            lr: f64,
            /// Weight decay.
            #[arg(long, default_value_t = TrainConfig::default().weight_decay)]
            weight_decay: f32,
            /// Seed of the weights, the row order and the AdvBench/self-instruct splits.
            #[arg(long, default_value_t = TrainConfig::default().seed)]
            seed: u64,
            /// Where encoder features are cached between runs.
            #[arg(long)]
            cache: Option<PathBuf>,
            /// LoRA rank in the encoder, trained with the heads (0: frozen encoder, heads only).
            #[arg(long, default_value_t = 0)]
            lora_rank: usize,
            /// LoRA alpha (the update is scaled by alpha / rank).
            #[arg(long, default_value_t = 16.0)]
            lora_alpha: f64,
            /// First encoder layer that gets adapters (0..=5).
            #[arg(long, default_value_t = 0)]
            lora_from_layer: usize,
            /// Passes over the data when tuning with LoRA.
            #[arg(long, default_value_t = 1)]
            lora_epochs: usize,
            /// Windows per step when tuning with LoRA.
            #[arg(long, default_value_t = 32)]
            lora_batch: usize,
            /// Learning rate when tuning with LoRA.
            #[arg(long, default_value_t = 1e-3)]
            lora_lr: f64,
        },
        /// Say which backend runs here and run a small computation on it.
        Backend {
            /// auto, gpu (webgpu/vulkan) or cpu.
            #[arg(long, default_value = "auto")]
            backend: String,
        },
    }

    #[derive(Subcommand)]
    enum BenchWhat {
        /// MiniLM sentence embeddings (the filter's encoder): texts/s at each batch size for
        /// texts of a fixed token length, per backend, next to sentence-transformers when
        /// `--python` points at an interpreter that has it (scripts/bench-embeddings.py).
        Embed {
            #[command(flatten)]
            args: EncoderBench,
        },
        /// SmolLM2: prefill tokens/s, decode tokens/s, time to first token and peak memory per
        /// backend, next to llama.cpp on the same GGUF with the same thread count when
        /// `--python` points at an interpreter with llama-cpp-python (scripts/llamacpp-peer.py).
        Chat {
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
        },
        /// Tuning: milliseconds per step of filter tuning (a new label from 8 examples) and of
        /// chat LoRA tuning (batch and sequence length printed) per backend, and peak memory;
        /// with `--refusals`, the refusal experiment (see `tune/refusals.rs`): AdvBench and
        /// self-instruct refusal rates before and after tuning on 16 refusals + benign pairs.
        Tune {
            #[command(flatten)]
            args: crate::tune_cmds::BenchTune,
        },
        /// The whole filter (tokenize, window, encode, pool, heads) on texts of a fixed token
        /// length: texts/s per batch size and backend, next to the same filter in PyTorch
        /// (scripts/filter-torch.py) on the same texts when `--python` is given.
        Filter {
            #[command(flatten)]
            args: EncoderBench,
            /// Heads file (default: the shipped one).
            #[arg(long)]
            heads: Option<PathBuf>,
        },
    }

    /// Options shared by the encoder benchmarks.
    #[derive(clap::Args)]
    struct EncoderBench {
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

    /// Which filter to run and how.
    #[derive(clap::Args)]
    struct FilterArgs {
        /// auto, gpu (webgpu/vulkan) or cpu.
        #[arg(long, default_value = "cpu")]
        backend: String,
        /// Heads file (default: the shipped assets/filter-heads.safetensors).
        #[arg(long)]
        heads: Option<PathBuf>,
        /// Override a label's threshold, e.g. --threshold offensive=0.7 (repeatable).
        #[arg(long = "threshold")]
        thresholds: Vec<String>,
        /// Tuned filter heads written by `tune-filter` (adds its labels).
        #[arg(long)]
        adapters: Option<PathBuf>,
    }

    impl FilterArgs {
        /// The filter these options describe.
        fn load(&self, models: &Path) -> Result<webguard::Filter> {
            crate::filter_cmds::load_filter(
                models,
                self.heads.as_deref(),
                &self.backend,
                &self.thresholds,
                self.adapters.as_deref(),
            )
        }
    }

    #[derive(Clone, Copy, ValueEnum)]
    enum ModelName {
        Smollm2,
        Minilm,
    }

    pub(crate) fn read(path: &Path) -> Result<Vec<u8>> {
        std::fs::read(path).map_err(|e| match e.kind() {
            std::io::ErrorKind::NotFound => Error::Io {
                path: path.display().to_string(),
                message: "not found (scripts/fetch-models.sh fetches the models; --models or $WEBGUARD_MODELS points elsewhere)".into(),
            },
            _ => Error::io(path, e),
        })
    }

    pub fn run() -> Result<()> {
        let cli = Cli::parse();
        let models = cli.models.unwrap_or_else(webguard::models_dir);
        match cli.command {
            Command::Info { file, tensors } => {
                let path = file.unwrap_or_else(|| models.join(SMOLLM2_GGUF));
                let bytes = read(&path)?;
                let gguf = Gguf::parse(&bytes)?;
                println!(
                    "GGUF v{}, {} metadata keys, {} tensors, alignment {}, data at byte {}",
                    gguf.version,
                    gguf.metadata.len(),
                    gguf.tensors.len(),
                    gguf.alignment,
                    gguf.data_offset
                );
                for (key, value) in &gguf.metadata {
                    println!("  {key} = {}", show(value));
                }
                if tensors {
                    for t in &gguf.tensors {
                        println!("  {} {} {:?} @{}", t.name, t.ggml_type, t.shape(), t.offset);
                    }
                }
            }
            Command::Tokenize { model, text } => {
                let tokenizer = match model {
                    ModelName::Smollm2 => {
                        let bytes = read(&models.join(SMOLLM2_GGUF))?;
                        Tokenizer::from_gguf(&Gguf::parse(&bytes)?)?
                    }
                    ModelName::Minilm => Tokenizer::from_tokenizer_json(&read(
                        &models.join(MINILM_DIR).join("tokenizer.json"),
                    )?)?,
                };
                let texts: Vec<String> = if text.is_empty() {
                    std::io::stdin()
                        .lines()
                        .map_while(std::io::Result::ok)
                        .collect()
                } else {
                    text
                };
                for t in texts {
                    println!("{:?}", tokenizer.encode(&t)?);
                }
            }
            Command::Bench { what } => match what {
                BenchWhat::Embed { args } => bench::run(bench::Subject::Embed, &models, &args)?,
                BenchWhat::Chat {
                    backends,
                    prompt_tokens,
                    new_tokens,
                    python,
                } => bench::chat(
                    &models,
                    &backends,
                    prompt_tokens,
                    new_tokens,
                    python.as_deref(),
                )?,
                BenchWhat::Tune { args } => crate::tune_cmds::bench(&models, &args)?,
                BenchWhat::Filter { args, heads } => bench::run(
                    bench::Subject::Filter(
                        heads.unwrap_or_else(webguard::Filter::default_heads_path),
                    ),
                    &models,
                    &args,
                )?,
            },
            Command::Chat {
                system,
                temperature,
                top_p,
                top_k,
                repetition_penalty,
                seed,
                max_tokens,
                backend,
                adapters,
                prompt,
            } => {
                let options = webguard::generate::GenerateOptions {
                    max_new_tokens: max_tokens,
                    temperature,
                    top_k,
                    top_p,
                    repetition_penalty,
                    seed,
                    stop: Vec::new(),
                };
                crate::chat_cmd::chat(
                    &models,
                    &backend,
                    adapters.as_deref(),
                    system.as_deref(),
                    &prompt,
                    &options,
                )?;
            }
            Command::Classify { json, filter, text } => {
                let f = filter.load(&models)?;
                let texts: Vec<String> = if text.is_empty() {
                    std::io::stdin()
                        .lines()
                        .map_while(std::io::Result::ok)
                        .collect()
                } else {
                    text
                };
                crate::filter_cmds::classify(&f, texts, json)?;
            }
            Command::EvalFilter {
                texts,
                labels,
                label,
                json,
                filter,
            } => {
                let f = filter.load(&models)?;
                crate::filter_cmds::eval(&f, &texts, &labels, &label, json)?;
            }
            Command::TuneChat {
                pairs,
                out,
                steps,
                learning_rate,
                batch,
                rank,
                targets,
                seed,
                backend,
            } => {
                let options = crate::tune_cmds::chat_options(
                    steps,
                    learning_rate,
                    batch,
                    rank,
                    &targets,
                    seed,
                )?;
                crate::tune_cmds::tune_chat(&models, &backend, &pairs, &options, &out)?;
            }
            Command::TuneFilter {
                examples,
                out,
                steps,
                learning_rate,
                seed,
                filter,
            } => {
                let mut f = filter.load(&models)?;
                let options = webguard::tune::TuneOptions {
                    steps,
                    learning_rate,
                    seed,
                    ..Default::default()
                };
                crate::tune_cmds::tune_filter(&mut f, &examples, &options, &out)?;
            }
            Command::TrainFilter {
                data,
                out,
                features,
                backend,
                hidden,
                dropout,
                epochs,
                batch,
                lr,
                weight_decay,
                seed,
                cache,
                lora_rank,
                lora_alpha,
                lora_from_layer,
                lora_epochs,
                lora_batch,
                lora_lr,
            } => {
                let cache = cache.unwrap_or_else(|| {
                    std::env::var_os("HOME")
                        .map(PathBuf::from)
                        .unwrap_or_else(std::env::temp_dir)
                        .join(".cache/webguard/filter-features")
                });
                // The exact invocation, for the heads file's provenance.
                let command_line = std::env::args().skip(1).collect::<Vec<_>>().join(" ");
                let config = TrainConfig {
                    hidden,
                    dropout,
                    epochs,
                    batch_size: batch,
                    learning_rate: lr,
                    weight_decay,
                    seed,
                };
                let lora = (lora_rank > 0).then(|| crate::filter_cmds::LoraArgs {
                    rank: lora_rank,
                    alpha: lora_alpha,
                    from_layer: lora_from_layer,
                    config: TrainConfig {
                        epochs: lora_epochs,
                        batch_size: lora_batch,
                        learning_rate: lora_lr,
                        ..config.clone()
                    },
                });
                crate::filter_cmds::train(
                    &models,
                    crate::filter_cmds::TrainArgs {
                        lora,
                        data,
                        out,
                        features,
                        backend,
                        config,
                        cache,
                        command_line: format!("webguard {command_line}"),
                    },
                )?;
            }
            Command::Backend { backend } => {
                let choice: BackendChoice = backend.parse()?;
                let backend = Backend::init_blocking(choice)?;
                println!("backend: {backend}");
                let check = pollster::block_on(probe_computation(&backend.device))?;
                println!("check: {check:?}");
            }
        }
        Ok(())
    }

    pub(crate) use bench::peak_rss_mb;

    mod bench {
        use std::path::Path;
        use std::time::Instant;

        use webguard::backend::{Backend, BackendChoice};
        use webguard::models::bert::{Bert, BertConfig};
        use webguard::text::Tokenizer;
        use webguard::{Error, MINILM_DIR, Result};

        use super::read;

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

        /// Peak resident memory of this process (Linux), in MB.
        pub(crate) fn peak_rss_mb() -> f64 {
            std::fs::read_to_string("/proc/self/status")
                .ok()
                .and_then(|s| {
                    s.lines()
                        .find(|l| l.starts_with("VmHWM:"))
                        .and_then(|l| l.split_whitespace().nth(1)?.parse::<f64>().ok())
                })
                .map_or(f64::NAN, |kb| kb / 1024.0)
        }

        /// Waits for a result by reading it back, so each timing covers the whole computation.
        fn sync_read(t: burn::tensor::Tensor<2>) -> Result<()> {
            pollster::block_on(t.into_data_async())
                .map(|_| ())
                .map_err(|e| Error::Backend(format!("{e:?}")))
        }

        /// `bench chat`: prefill, then greedy decode through the KV cache, timed per phase.
        pub fn chat(
            models: &Path,
            backends: &str,
            prompt_tokens: usize,
            new_tokens: usize,
            python: Option<&Path>,
        ) -> Result<()> {
            use webguard::filter::read_f32;
            use webguard::models::llama::Llama;
            use webguard::weights::Gguf;
            if prompt_tokens == 0 || new_tokens == 0 {
                return Err(Error::InvalidInput(
                    "prompt and new tokens must be at least 1".into(),
                ));
            }
            let bytes = read(&models.join(webguard::SMOLLM2_GGUF))?;
            let gguf = Gguf::parse(&bytes)?;
            let tok = Tokenizer::from_gguf(&gguf)?;
            // A prompt of exactly `prompt_tokens` tokens, from repeated ordinary text.
            let base = tok.encode(
                "The history of the printing press begins with movable type, paper and ink. ",
            )?;
            let prompt: Vec<u32> = base.iter().cycle().take(prompt_tokens).copied().collect();
            let threads = std::thread::available_parallelism().map_or(1, |n| n.get());
            let mut ours = Vec::new();
            println!(
                "bench chat: SmolLM2-135M-Instruct Q4_1, {prompt_tokens}-token prompt, {new_tokens} new tokens, {threads} threads"
            );
            for name in backends.split(',') {
                let backend = Backend::init_blocking(name.trim().parse::<BackendChoice>()?)?;
                let load_start = Instant::now();
                let model = Llama::load(&gguf, &backend.device)?;
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
                    "  webguard {backend}: load {load:.1} s, weights {:.0} MB resident, prefill {:.1} tokens/s, time to first token {:.0} ms, decode {:.1} tokens/s",
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
            if let Some(python) = python {
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

        /// What is measured.
        pub enum Subject {
            /// MiniLM sentence embeddings from token ids.
            Embed,
            /// `Filter::scores` from text, with this heads file.
            Filter(std::path::PathBuf),
        }

        pub fn run(subject: Subject, models: &Path, args: &super::EncoderBench) -> Result<()> {
            let (backends, batches, tokens, seconds) =
                (&args.backends, &args.batches, args.tokens, args.seconds);
            let python = args.python.as_deref();
            let dir = models.join(MINILM_DIR);
            let config = BertConfig::from_json(&read(&dir.join("config.json"))?)?;
            let weights = read(&dir.join("model.safetensors"))?;
            let tok = Tokenizer::from_tokenizer_json(&read(&dir.join("tokenizer.json"))?)?;
            let batches: Vec<usize> = batches
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
            let threads = std::thread::available_parallelism().map_or(1, |n| n.get());
            let what = match &subject {
                Subject::Embed => "embed: all-MiniLM-L6-v2 sentence embeddings",
                Subject::Filter(_) => "filter: text -> verdict scores (MiniLM + heads)",
            };
            println!(
                "bench {what}, {tokens}-token texts, {threads} threads, {seconds} s per figure"
            );
            let mut ours = Vec::new();
            for name in backends.split(',') {
                let backend = Backend::init_blocking(name.trim().parse::<BackendChoice>()?)?;
                let mut once: Box<dyn FnMut(usize) -> Result<()>> = match &subject {
                    Subject::Embed => {
                        let bert = Bert::load(&config, &weights, &backend.device)?;
                        let ids = ids.clone();
                        let device = backend.device.clone();
                        Box::new(move |batch| {
                            sync_read(bert.embed_sequences(&ids[..batch], &device)?)
                        })
                    }
                    Subject::Filter(heads) => {
                        let filter = webguard::Filter::load(models, heads, &backend.device)?;
                        let texts = texts.clone();
                        Box::new(move |batch| {
                            let refs: Vec<&str> =
                                texts[..batch].iter().map(String::as_str).collect();
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
            if let Some(python) = python {
                let file = std::env::temp_dir()
                    .join(format!("webguard-bench-{}.json", std::process::id()));
                std::fs::write(&file, serde_json::to_string(&texts).unwrap_or_default())
                    .map_err(|e| Error::io(&file, e))?;
                let scripts = Path::new(env!("CARGO_MANIFEST_DIR")).join("scripts");
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
    }

    /// A metadata value for people: long arrays are summarised.
    fn show(value: &Value) -> String {
        match value {
            Value::String(s) if s.len() > 80 => format!(
                "{:?}... ({} bytes)",
                &s[..s.floor_char_boundary(80)],
                s.len()
            ),
            Value::Array(ty, items) if items.len() > 8 => {
                let head: Vec<String> = items.iter().take(4).map(show).collect();
                format!(
                    "[{}, ...] ({} × {})",
                    head.join(", "),
                    items.len(),
                    ty.name()
                )
            }
            Value::Array(_, items) => {
                format!(
                    "[{}]",
                    items.iter().map(show).collect::<Vec<_>>().join(", ")
                )
            }
            Value::String(s) => format!("{s:?}"),
            other => format!("{other:?}"),
        }
    }
}
