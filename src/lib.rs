//! # webguard
//!
//! A small instruction-tuned chat model (SmolLM2-135M-Instruct) and a toxicity filter
//! (all-MiniLM-L6-v2 with trained heads) that run inside a web page on the visitor's GPU
//! through WebGPU, with a CPU fallback, and natively through Vulkan or the CPU. Nothing leaves
//! the machine it runs on.
//!
//! The pieces, from bytes to answers:
//! - [`weights`]: bounds-checked GGUF and safetensors parsing, dequantisation;
//! - [`text`]: the two models' tokenizers;
//! - [`models`]: the networks (the MiniLM encoder, SmolLM2);
//! - [`chat`]: the chat model (SmolLM2 + its tokenizer) and how a conversation becomes a prompt;
//! - [`generate`]: text generation with SmolLM2 (KV cache, sampling, stop strings, streaming);
//! - [`filter`]: the toxicity filter (encoder + trained heads -> [`Verdict`] per text);
//! - [`guard`]: moderated chat (the filter around the chat model, a policy per label);
//! - [`tune`]: few-step tuning of both models in place (filter labels, chat LoRA);
//! - `wasm` (on `wasm32` only): the JavaScript API; the CLI is `src/bin/webguard`.
//!
//! Beside the stack: [`backend`] (WebGPU/Vulkan through burn-wgpu, or burn's CPU backend, and
//! WebGPU detection), [`rng`] (the one seeded generator), [`clock`] (milliseconds, natively and
//! in the browser), [`error`].
//!
//! Dependencies point one way, down this list: nothing below `wasm` and the CLI imports them,
//! and `tune`, `generate`, `models` and `filter` never import `guard` (`build.sh test` checks).
//!
//! Every fallible call returns [`Result`] with an [`Error`] a person can read; nothing in the
//! library panics on bad input.
#![warn(missing_docs)]

pub mod backend;
pub mod chat;
pub mod clock;
pub mod error;
pub mod filter;
pub mod generate;
pub mod guard;
pub mod models;
pub mod rng;
pub mod text;
pub mod tune;
pub mod weights;

#[cfg(target_arch = "wasm32")]
pub mod wasm;

pub use backend::{Backend, BackendChoice, BackendKind};
pub use chat::ChatModel;
pub use error::{Error, Result};
pub use filter::{Filter, FilterOptions, Verdict};

/// The crate version, as in Cargo.toml.
pub const VERSION: &str = env!("CARGO_PKG_VERSION");

/// Where the fetched models live natively: `$WEBGUARD_MODELS`, or `models/` in the current
/// directory (what `scripts/fetch-models.sh` fills).
#[cfg(not(target_arch = "wasm32"))]
pub fn models_dir() -> std::path::PathBuf {
    std::env::var_os("WEBGUARD_MODELS")
        .map(Into::into)
        .unwrap_or_else(|| "models".into())
}

/// The source checkout natively: `CARGO_MANIFEST_DIR` as cargo sets it when it runs a program
/// (`cargo test`, `cargo run`), else the checkout this was compiled in. Run time first because
/// developers and CI share one target directory and cargo reuses a test binary compiled in
/// another checkout, with that checkout's path baked in (a CI run once made the local tests read
/// from the CI clone's deleted folder; the reverse would let CI read a developer's files).
#[cfg(not(target_arch = "wasm32"))]
pub fn source_checkout() -> std::path::PathBuf {
    std::env::var_os("CARGO_MANIFEST_DIR")
        .map(Into::into)
        .unwrap_or_else(|| env!("CARGO_MANIFEST_DIR").into())
}

/// File name of the chat model inside [`models_dir`].
pub const SMOLLM2_GGUF: &str = "SmolLM2-135M-Instruct.Q4_1.gguf";
/// Folder of the filter encoder inside [`models_dir`].
pub const MINILM_DIR: &str = "all-MiniLM-L6-v2";
