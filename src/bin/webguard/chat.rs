//! `chat`: one answer from SmolLM2, streamed to stdout.

use std::io::Write;
use std::path::{Path, PathBuf};

use webguard::generate::{GenerateOptions, generate};
use webguard::text::chat_template::Message;
use webguard::{Error, Result};

use crate::models::load_chat;

#[derive(clap::Args)]
pub struct ChatArgs {
    /// System prompt (default: the model's own).
    #[arg(long)]
    system: Option<String>,
    /// 0 for greedy decoding.
    #[arg(long, default_value_t = GenerateOptions::default().temperature)]
    temperature: f32,
    /// Nucleus sampling mass.
    #[arg(long, default_value_t = GenerateOptions::default().top_p)]
    top_p: f32,
    /// Sample among the K most likely tokens (0: all).
    #[arg(long, default_value_t = GenerateOptions::default().top_k)]
    top_k: usize,
    /// Penalty for repeating tokens (1: none).
    #[arg(long, default_value_t = GenerateOptions::default().repetition_penalty)]
    repetition_penalty: f32,
    /// Sampling seed.
    #[arg(long, default_value_t = GenerateOptions::default().seed)]
    seed: u64,
    /// Most new tokens.
    #[arg(long, default_value_t = GenerateOptions::default().max_new_tokens)]
    max_tokens: usize,
    /// auto, gpu (webgpu/vulkan) or cpu.
    #[arg(long, default_value = "cpu")]
    backend: String,
    /// Chat adapters written by `tune-chat`.
    #[arg(long)]
    adapters: Option<PathBuf>,
    /// The user's message.
    prompt: String,
}

pub fn run(models: &Path, args: ChatArgs) -> Result<()> {
    let options = GenerateOptions {
        max_new_tokens: args.max_tokens,
        temperature: args.temperature,
        top_k: args.top_k,
        top_p: args.top_p,
        repetition_penalty: args.repetition_penalty,
        seed: args.seed,
        ..GenerateOptions::default()
    };
    options.validate()?;
    let (chat, backend) = load_chat(models, &args.backend, args.adapters.as_deref())?;
    let mut messages = Vec::new();
    if let Some(s) = &args.system {
        messages.push(Message::new("system", s));
    }
    messages.push(Message::new("user", &args.prompt));
    let ids = chat.prompt_ids(&messages)?;
    eprintln!("chat on {backend}, {} prompt tokens", ids.len());
    let start = std::time::Instant::now();
    let mut out = std::io::stdout().lock();
    let mut write_error = None;
    let generation = pollster::block_on(generate(&chat, &ids, &options, |piece| {
        match out.write_all(piece.as_bytes()).and_then(|_| out.flush()) {
            Ok(()) => true,
            Err(e) => {
                write_error = Some(e);
                false
            }
        }
    }))?;
    if let Some(e) = write_error {
        return Err(Error::io("stdout", e));
    }
    let secs = start.elapsed().as_secs_f64();
    writeln!(out).map_err(|e| Error::io("stdout", e))?;
    eprintln!(
        "{} tokens in {secs:.1} s ({:.1} tokens/s, prefill included), stopped: {:?}",
        generation.tokens.len(),
        generation.tokens.len() as f64 / secs,
        generation.stop_reason
    );
    Ok(())
}
