//! `chat`: one answer from SmolLM2, streamed to stdout.

use std::io::Write;
use std::path::Path;

use webguard::backend::{Backend, BackendChoice};
use webguard::generate::{GenerateOptions, generate};
use webguard::guard::ChatModel;
use webguard::text::chat_template::{Message, render};
use webguard::weights::Gguf;
use webguard::{Error, Result, SMOLLM2_GGUF};

use crate::cli::read;

/// Loads SmolLM2 on `backend`, with chat adapters from `tune-chat` when given.
pub fn load_chat(
    models: &Path,
    backend: &str,
    adapters: Option<&Path>,
) -> Result<(ChatModel, Backend)> {
    let backend = Backend::init_blocking(backend.parse::<BackendChoice>()?)?;
    let bytes = read(&models.join(SMOLLM2_GGUF))?;
    let gguf = Gguf::parse(&bytes)?;
    let mut chat = ChatModel::load(&gguf, &backend.device)?;
    if let Some(path) = adapters {
        pollster::block_on(chat.import_adapters(&read(path)?))?;
    }
    Ok((chat, backend))
}

pub fn chat(
    models: &Path,
    backend: &str,
    adapters: Option<&Path>,
    system: Option<&str>,
    prompt: &str,
    options: &GenerateOptions,
) -> Result<()> {
    options.validate()?;
    let (chat, backend) = load_chat(models, backend, adapters)?;
    let (tok, model) = (&chat.tokenizer, &chat.model);
    let mut messages = Vec::new();
    if let Some(s) = system {
        messages.push(Message::new("system", s));
    }
    messages.push(Message::new("user", prompt));
    let ids = tok.encode(&render(&messages, true)?)?;
    let end = &chat.end_tokens;
    eprintln!("chat on {backend}, {} prompt tokens", ids.len());
    let start = std::time::Instant::now();
    let mut out = std::io::stdout().lock();
    let mut write_error = None;
    let generation =
        pollster::block_on(generate(model, tok, &ids, end, options, |piece| match out
            .write_all(piece.as_bytes())
            .and_then(|_| out.flush())
        {
            Ok(()) => true,
            Err(e) => {
                write_error = Some(e);
                false
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
