//! The JavaScript surface (`wasm32` only), built into `pkg/` by `build.sh` with wasm-bindgen.
//!
//! - `guard`: the `Guard` class, the filter and the chat model under one policy: what
//!   `pkg/guard.js` runs in its worker;
//! - `filter`, `chat`, `tokenizer`: the lower-level classes (`Filter`, `Chat`, `Tokenizer`)
//!   the test pages use;
//! - `convert`: JS values into the library's types and back, errors, callbacks.
//!
//! Every function returns `Result<_, JsValue>`: a failure becomes a JS `Error` with a message a
//! person can act on and a `name` that says its kind (`"InvalidInputError"`, `"BackendError"`,
//! ...: [`crate::error::ErrorKind`]), never a trap that would kill the module. Option objects
//! are the library's own option types deserialised (`GenerateOptions`, `TuneOptions`,
//! `ChatTuneOptions`), so each name and default is written once, in Rust.

mod chat;
mod convert;
mod filter;
mod guard;
mod tokenizer;

pub use chat::WasmChat;
pub use filter::WasmFilter;
pub use guard::WasmGuard;
pub use tokenizer::WasmTokenizer;

use wasm_bindgen::prelude::*;

use crate::backend::{Backend, BackendChoice, BackendKind, probe_computation};
use crate::chat::ChatModel;
use crate::filter::{Filter, Verdict};
use crate::weights::gguf::Gguf;
use convert::{JsResult, internal, to_js};

#[wasm_bindgen(start)]
fn start() {
    // A panic is a bug; this makes its message reach the console instead of "unreachable".
    console_error_panic_hook::set_once();
}

/// Sets this module's thread pool to `threads` threads (the calling worker and `threads - 1`
/// helpers; clamped to 1..=16) and returns the count it has (the first call's wins). Only the
/// threaded build (`+atomics`, shared memory) has helpers to give: the single-threaded build
/// answers 1. The helpers are Web Workers that instantiate this module on the same memory and
/// call `runThreadHelper` (pkg/guard-thread.js).
#[wasm_bindgen(js_name = startThreads)]
pub fn start_threads(threads: usize) -> usize {
    #[cfg(target_feature = "atomics")]
    return crate::models::spin::Pool::init_global(threads.clamp(1, 16));
    #[cfg(not(target_feature = "atomics"))]
    {
        let _ = threads;
        1
    }
}

/// A helper thread's loop (never returns while the pool has helpers): what each helper Web
/// Worker of the threaded build calls once the module is instantiated on the shared memory.
#[wasm_bindgen(js_name = runThreadHelper)]
pub fn run_thread_helper() {
    #[cfg(target_feature = "atomics")]
    crate::models::spin::Pool::global().serve();
}

/// How many times a helper thread joined a product so far (all helpers together; 0 in the
/// single-threaded build): the benchmark's proof that the helpers take part.
#[wasm_bindgen(js_name = threadJobsJoined)]
pub fn thread_jobs_joined() -> f64 {
    #[cfg(target_feature = "atomics")]
    return crate::models::spin::Pool::global().jobs_joined() as f64;
    #[cfg(not(target_feature = "atomics"))]
    0.0
}

/// The compiled module and its memory, for helper workers to instantiate the same module on
/// the same (shared) memory: `[module, memory]`.
#[cfg(target_feature = "atomics")]
#[wasm_bindgen(js_name = threadModuleAndMemory)]
pub fn thread_module_and_memory() -> js_sys::Array {
    js_sys::Array::of2(&wasm_bindgen::module(), &wasm_bindgen::memory())
}

/// The crate version.
#[wasm_bindgen]
pub fn version() -> String {
    crate::VERSION.to_string()
}

/// The backend named `choice` (`"auto"`, `"webgpu"` or `"cpu"`), set up.
async fn init_backend(choice: &str) -> Result<Backend, JsValue> {
    let choice = choice.parse::<BackendChoice>().js()?;
    Backend::init(choice).await.js()
}

/// `"webgpu"` or `"cpu"`: what the classes' `backend` getters say.
fn backend_kind(b: &Backend) -> &'static str {
    match b.kind {
        BackendKind::Wgpu => "webgpu",
        BackendKind::Cpu => "cpu",
    }
}

/// Sets up a backend (`"auto"`, `"webgpu"` or `"cpu"`) and runs a small fixed computation on it.
/// Resolves to `{ kind, adapter, reason, check }` where `check` holds the computation's
/// 16 numbers (see `probe_computation` in the Rust docs).
#[wasm_bindgen(js_name = probeBackend)]
pub async fn probe_backend(choice: String) -> Result<JsValue, JsValue> {
    let backend = init_backend(&choice).await?;
    let check = probe_computation(&backend.device).await.js()?;
    let out = js_sys::Object::new();
    let set = |k: &str, v: JsValue| js_sys::Reflect::set(&out, &k.into(), &v).map(|_| ());
    let adapter = backend.adapter.as_ref().map(|a| a.name.clone());
    set("kind", backend_kind(&backend).into())
        .and(set("adapter", adapter.into()))
        .and(set("reason", backend.fallback_reason.clone().into()))
        .and(set("description", backend.to_string().into()))
        .and(set(
            "check",
            js_sys::Float32Array::from(check.as_slice()).into(),
        ))
        .map_err(|_| internal("could not build the result object"))?;
    Ok(out.into())
}

/// Loads SmolLM2 from GGUF bytes on `backend`.
fn load_chat(gguf: &[u8], backend: &Backend) -> crate::Result<ChatModel> {
    ChatModel::load(&Gguf::parse(gguf)?, &backend.device)
}

/// One verdict per text under `thresholds` (label order), as JS: `Filter.classify` and
/// `Guard.classify` both.
async fn classify(
    filter: &Filter,
    texts: &[String],
    thresholds: &[f32],
) -> Result<JsValue, JsValue> {
    let refs: Vec<&str> = texts.iter().map(String::as_str).collect();
    let scores = filter.scores(&refs).await.js()?;
    let verdicts: Vec<Verdict> = (scores.iter().zip(texts))
        .map(|(s, text)| filter.verdict_with(s, thresholds).of_text(text))
        .collect();
    to_js(&verdicts)
}
