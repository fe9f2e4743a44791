//! The JavaScript surface (`wasm32` only), built into `pkg/` by `build.sh` with wasm-bindgen.
//!
//! Every function returns `Result<_, JsError>`: a failure becomes a JS `Error` with a readable
//! message, never a trap that would kill the module.

use js_sys::{Promise, Reflect};
use wasm_bindgen::prelude::*;
use wasm_bindgen_futures::JsFuture;

use crate::backend::{Backend, BackendChoice, BackendKind, probe_computation};
use std::cell::RefCell;
use std::rc::Rc;

use crate::error::Error;
use crate::guard::{Action, ChatModel, Policy, Rule};
use crate::text::Tokenizer;
use crate::weights::gguf::Gguf;

fn js_err(e: Error) -> JsError {
    JsError::new(&e.to_string())
}

#[wasm_bindgen(start)]
fn start() {
    // A panic is a bug; this makes its message reach the console instead of "unreachable".
    console_error_panic_hook::set_once();
}

/// The backend named `choice` (`"auto"`, `"webgpu"` or `"cpu"`), set up.
async fn init_backend(choice: &str) -> Result<Backend, JsError> {
    let choice: BackendChoice = choice.parse().map_err(js_err)?;
    Backend::init(choice).await.map_err(js_err)
}

/// The crate version.
#[wasm_bindgen]
pub fn version() -> String {
    crate::VERSION.to_string()
}

/// Checks that WebGPU exists here and gives an adapter, before wgpu is asked for one: without
/// `navigator.gpu`, creating wgpu's instance panics, and a panic kills the module. Returns the
/// adapter's name from `GPUAdapter.info` (wgpu reports an empty name in browsers).
pub(crate) async fn webgpu_available() -> Result<String, String> {
    let navigator = Reflect::get(&js_sys::global(), &"navigator".into())
        .map_err(|_| "no navigator object".to_string())?;
    let gpu = Reflect::get(&navigator, &"gpu".into()).unwrap_or(JsValue::UNDEFINED);
    if gpu.is_undefined() || gpu.is_null() {
        return Err("this browser has no WebGPU (navigator.gpu is missing)".into());
    }
    let request = Reflect::get(&gpu, &"requestAdapter".into())
        .ok()
        .and_then(|f| f.dyn_into::<js_sys::Function>().ok())
        .ok_or("navigator.gpu.requestAdapter is not a function")?;
    let promise: Promise = request
        .call0(&gpu)
        .map_err(|e| format!("requestAdapter failed: {e:?}"))?
        .dyn_into()
        .map_err(|_| "requestAdapter did not return a promise".to_string())?;
    let adapter = JsFuture::from(promise)
        .await
        .map_err(|e| format!("requestAdapter failed: {e:?}"))?;
    if adapter.is_null() || adapter.is_undefined() {
        return Err("WebGPU gave no adapter".into());
    }
    let info = Reflect::get(&adapter, &"info".into()).unwrap_or(JsValue::UNDEFINED);
    let field = |k: &str| {
        Reflect::get(&info, &k.into())
            .ok()
            .and_then(|v| v.as_string())
            .filter(|s| !s.is_empty())
    };
    let name: Vec<String> = ["vendor", "architecture", "device", "description"]
        .iter()
        .filter_map(|k| field(k))
        .collect();
    Ok(name.join(" "))
}

/// Sets up a backend (`"auto"`, `"webgpu"` or `"cpu"`) and runs a small fixed computation on it.
/// Resolves to `{ kind, adapter, reason, check }` where `check` holds the computation's
/// 16 numbers (see `probe_computation` in the Rust docs).
#[wasm_bindgen(js_name = probeBackend)]
pub async fn probe_backend(choice: String) -> Result<JsValue, JsError> {
    let backend = init_backend(&choice).await?;
    let check = probe_computation(&backend.device).await.map_err(js_err)?;
    let out = js_sys::Object::new();
    let kind = match backend.kind {
        BackendKind::Wgpu => "webgpu",
        BackendKind::Cpu => "cpu",
    };
    let set = |k: &str, v: JsValue| Reflect::set(&out, &k.into(), &v).map(|_| ());
    let adapter = backend.adapter.as_ref().map(|a| a.name.clone());
    set("kind", kind.into())
        .and(set("adapter", adapter.into()))
        .and(set("reason", backend.fallback_reason.clone().into()))
        .and(set("description", backend.to_string().into()))
        .and(set(
            "check",
            js_sys::Float32Array::from(check.as_slice()).into(),
        ))
        .map_err(|_| JsError::new("could not build the result object"))?;
    Ok(out.into())
}

/// A tokenizer for one of the two models, usable from JavaScript.
#[wasm_bindgen(js_name = Tokenizer)]
pub struct WasmTokenizer {
    inner: Tokenizer,
}

#[wasm_bindgen(js_class = Tokenizer)]
impl WasmTokenizer {
    /// SmolLM2's tokenizer from the bytes of its GGUF file.
    #[wasm_bindgen(js_name = fromGguf)]
    pub fn from_gguf(bytes: &[u8]) -> Result<WasmTokenizer, JsError> {
        let gguf = Gguf::parse(bytes).map_err(|e| js_err(e.into()))?;
        let inner = Tokenizer::from_gguf(&gguf).map_err(js_err)?;
        Ok(WasmTokenizer { inner })
    }

    /// MiniLM's tokenizer from the bytes of its `tokenizer.json`.
    #[wasm_bindgen(js_name = fromTokenizerJson)]
    pub fn from_tokenizer_json(bytes: &[u8]) -> Result<WasmTokenizer, JsError> {
        let inner = Tokenizer::from_tokenizer_json(bytes).map_err(js_err)?;
        Ok(WasmTokenizer { inner })
    }

    /// Token ids of `text`.
    pub fn encode(&self, text: &str) -> Result<Vec<u32>, JsError> {
        self.inner.encode(text).map_err(js_err)
    }

    /// Text of `ids`.
    pub fn decode(&self, ids: Vec<u32>) -> Result<String, JsError> {
        self.inner.decode(&ids).map_err(js_err)
    }

    /// Number of ids.
    #[wasm_bindgen(getter, js_name = vocabSize)]
    pub fn vocab_size(&self) -> usize {
        self.inner.vocab_size()
    }
}

/// The toxicity filter, usable from JavaScript: `await Filter.create(backend, tokenizerJson,
/// configJson, modelSafetensors, headsSafetensors)`, then `await filter.classify(texts)`.
#[wasm_bindgen(js_name = Filter)]
pub struct WasmFilter {
    inner: std::rc::Rc<crate::filter::Filter>,
    /// The caller's thresholds, apart from the filter so that changing them never waits for
    /// (or races) a classification in flight.
    thresholds: std::rc::Rc<std::cell::RefCell<Vec<f32>>>,
    backend: Backend,
}

fn backend_kind(b: &Backend) -> &'static str {
    match b.kind {
        BackendKind::Wgpu => "webgpu",
        BackendKind::Cpu => "cpu",
    }
}

/// Strings from a JS array, refusing anything else and text that is not valid UTF-16 (a lone
/// surrogate would otherwise be silently replaced and scored as something else).
fn js_texts(texts: &JsValue) -> Result<Vec<String>, JsError> {
    let array: &js_sys::Array = texts
        .dyn_ref()
        .ok_or_else(|| JsError::new("classify expects an array of strings"))?;
    array
        .iter()
        .enumerate()
        .map(|(i, v)| {
            let s: &js_sys::JsString = v.dyn_ref().ok_or_else(|| {
                JsError::new(&format!(
                    "text {i} is not a string (got {})",
                    v.js_typeof().as_string().unwrap_or_default()
                ))
            })?;
            if !s.is_valid_utf16() {
                return Err(JsError::new(&format!(
                    "text {i} is not valid UTF-16 (it holds a lone surrogate)"
                )));
            }
            Ok(String::from(s))
        })
        .collect()
}

#[wasm_bindgen(js_class = Filter)]
impl WasmFilter {
    /// Sets up `backend` (`"auto"`, `"webgpu"` or `"cpu"`) and loads the encoder and heads from
    /// their files' bytes.
    pub async fn create(
        backend: String,
        tokenizer_json: Vec<u8>,
        config_json: Vec<u8>,
        model_safetensors: Vec<u8>,
        heads_safetensors: Vec<u8>,
    ) -> Result<WasmFilter, JsError> {
        let backend = init_backend(&backend).await?;
        let inner = crate::filter::Filter::new(
            &tokenizer_json,
            &config_json,
            &model_safetensors,
            &heads_safetensors,
            &backend.device,
        )
        .map_err(js_err)?;
        Ok(WasmFilter {
            thresholds: std::rc::Rc::new(std::cell::RefCell::new(inner.thresholds().to_vec())),
            inner: std::rc::Rc::new(inner),
            backend,
        })
    }

    /// `"webgpu"` or `"cpu"`.
    #[wasm_bindgen(getter)]
    pub fn backend(&self) -> String {
        backend_kind(&self.backend).into()
    }

    /// What runs, in words (adapter name, or why the CPU was chosen).
    #[wasm_bindgen(getter, js_name = backendDescription)]
    pub fn backend_description(&self) -> String {
        self.backend.to_string()
    }

    /// Label names, in score order.
    #[wasm_bindgen(getter)]
    pub fn labels(&self) -> Vec<String> {
        self.inner.labels().to_vec()
    }

    /// Current thresholds, in label order.
    #[wasm_bindgen(getter)]
    pub fn thresholds(&self) -> Vec<f32> {
        self.thresholds.borrow().clone()
    }

    /// Overrides one label's threshold (0 to 1).
    #[wasm_bindgen(js_name = setThreshold)]
    pub fn set_threshold(&self, label: &str, threshold: f32) -> Result<(), JsError> {
        let i = self
            .inner
            .check_threshold(label, threshold)
            .map_err(js_err)?;
        self.thresholds.borrow_mut()[i] = threshold;
        Ok(())
    }

    /// Resolves to one verdict per text: `{ scores: { offensive, hate, harmful }, labels,
    /// flagged }`.
    pub fn classify(&self, texts: JsValue) -> Result<Promise, JsError> {
        let texts = js_texts(&texts)?;
        let filter = self.inner.clone();
        let thresholds = self.thresholds.borrow().clone();
        Ok(wasm_bindgen_futures::future_to_promise(async move {
            let refs: Vec<&str> = texts.iter().map(String::as_str).collect();
            let scores = filter
                .scores(&refs)
                .await
                .map_err(|e| JsValue::from(js_err(e)))?;
            let verdicts: Vec<crate::filter::Verdict> = scores
                .iter()
                .map(|s| filter.verdict_with(s, &thresholds))
                .collect();
            let serializer = serde_wasm_bindgen::Serializer::json_compatible();
            serde::Serialize::serialize(&verdicts, &serializer)
                .map_err(|e| JsValue::from(JsError::new(&e.to_string())))
        }))
    }
}

/// The chat model, usable from JavaScript: `await Chat.create(backend, ggufBytes)`, then
/// `await chat.generate(messages, options, onToken)`.
#[wasm_bindgen(js_name = Chat)]
pub struct WasmChat {
    chat: Rc<ChatModel>,
    backend: Backend,
}

/// The option names `Chat.generate` accepts.
const GENERATE_OPTION_NAMES: [&str; 7] = [
    "maxTokens",
    "temperature",
    "topK",
    "topP",
    "repetitionPenalty",
    "seed",
    "stop",
];

/// Generation options as JS passes them (all optional).
#[derive(serde::Deserialize, Default)]
#[serde(rename_all = "camelCase", default)]
struct JsGenerateOptions {
    max_tokens: Option<usize>,
    temperature: Option<f32>,
    top_k: Option<usize>,
    top_p: Option<f32>,
    repetition_penalty: Option<f32>,
    seed: Option<u64>,
    stop: Option<Vec<String>>,
}

/// Chat messages from JS (`[{ role, content }]`).
fn js_messages(messages: JsValue) -> Result<Vec<crate::text::chat_template::Message>, JsError> {
    if !js_sys::Array::is_array(&messages) {
        return Err(JsError::new(
            "messages must be an array of { role, content } objects",
        ));
    }
    serde_wasm_bindgen::from_value(messages).map_err(|e| JsError::new(&format!("messages: {e}")))
}

/// Checked generation options from JS (`undefined`, `null` or an object of
/// [`GENERATE_OPTION_NAMES`]).
fn js_generate_options(options: JsValue) -> Result<crate::generate::GenerateOptions, JsError> {
    let o: JsGenerateOptions = if options.is_undefined() || options.is_null() {
        JsGenerateOptions::default()
    } else {
        // serde-wasm-bindgen only reads the fields it knows, so a misspelt option would
        // be ignored silently: check the keys first.
        let object: &js_sys::Object = options
            .dyn_ref()
            .ok_or_else(|| JsError::new("options must be an object"))?;
        for key in js_sys::Object::keys(object).iter() {
            let key = key.as_string().unwrap_or_default();
            if !GENERATE_OPTION_NAMES.contains(&key.as_str()) {
                return Err(JsError::new(&format!(
                    "options: unknown option {key:?} (known: {})",
                    GENERATE_OPTION_NAMES.join(", ")
                )));
            }
        }
        serde_wasm_bindgen::from_value(options)
            .map_err(|e| JsError::new(&format!("options: {e}")))?
    };
    let d = crate::generate::GenerateOptions::default();
    let options = crate::generate::GenerateOptions {
        max_new_tokens: o.max_tokens.unwrap_or(d.max_new_tokens),
        temperature: o.temperature.unwrap_or(d.temperature),
        top_k: o.top_k.unwrap_or(d.top_k),
        top_p: o.top_p.unwrap_or(d.top_p),
        repetition_penalty: o.repetition_penalty.unwrap_or(d.repetition_penalty),
        seed: o.seed.unwrap_or(d.seed),
        stop: o.stop.unwrap_or_default(),
    };
    options.validate().map_err(js_err)?;
    Ok(options)
}

#[wasm_bindgen(js_class = Chat)]
impl WasmChat {
    /// Sets up `backend` (`"auto"`, `"webgpu"` or `"cpu"`) and loads SmolLM2 from its GGUF bytes.
    pub async fn create(backend: String, gguf: Vec<u8>) -> Result<WasmChat, JsError> {
        let backend = init_backend(&backend).await?;
        let chat = load_chat(&gguf, &backend)?;
        Ok(WasmChat {
            chat: Rc::new(chat),
            backend,
        })
    }

    /// `"webgpu"` or `"cpu"`.
    #[wasm_bindgen(getter)]
    pub fn backend(&self) -> String {
        backend_kind(&self.backend).into()
    }

    /// What runs, in words.
    #[wasm_bindgen(getter, js_name = backendDescription)]
    pub fn backend_description(&self) -> String {
        self.backend.to_string()
    }

    /// Resolves to `{ text, tokens, stopReason, promptTokens }` for `messages`
    /// (`[{ role, content }]`) with `options` (`{ maxTokens, temperature, topK, topP,
    /// repetitionPenalty, seed, stop }`); `onToken(piece)` gets each text piece and may return
    /// `false` to stop.
    pub fn generate(
        &self,
        messages: JsValue,
        options: JsValue,
        on_token: Option<js_sys::Function>,
    ) -> Result<Promise, JsError> {
        let messages = js_messages(messages)?;
        let options = js_generate_options(options)?;
        let prompt = crate::text::chat_template::render(&messages, true).map_err(js_err)?;
        let ids = self.chat.tokenizer.encode(&prompt).map_err(js_err)?;
        let chat = self.chat.clone();
        Ok(wasm_bindgen_futures::future_to_promise(async move {
            let generation = crate::generate::generate(
                &chat.model,
                &chat.tokenizer,
                &ids,
                &chat.end_tokens,
                &options,
                |piece| call_on_token(on_token.as_ref(), piece),
            )
            .await
            .map_err(|e| JsValue::from(js_err(e)))?;
            let out = js_sys::Object::new();
            let set = |k: &str, v: JsValue| Reflect::set(&out, &k.into(), &v).map(|_| ());
            let reason = match &generation.stop_reason {
                crate::generate::StopReason::EndOfTurn => "endOfTurn".to_string(),
                crate::generate::StopReason::StopString(s) => format!("stop:{s}"),
                crate::generate::StopReason::MaxTokens => "maxTokens".to_string(),
                crate::generate::StopReason::Cancelled => "cancelled".to_string(),
            };
            set("text", generation.text.clone().into())
                .and(set(
                    "tokens",
                    js_sys::Uint32Array::from(generation.tokens.as_slice()).into(),
                ))
                .and(set("stopReason", reason.into()))
                .and(set(
                    "promptTokens",
                    (generation.prompt_tokens as u32).into(),
                ))
                .map_err(|_| JsValue::from(JsError::new("could not build the result object")))?;
            Ok(out.into())
        }))
    }
}

/// Loads SmolLM2 from GGUF bytes on `backend`.
fn load_chat(gguf: &[u8], backend: &Backend) -> Result<ChatModel, JsError> {
    let parsed = Gguf::parse(gguf).map_err(|e| js_err(e.into()))?;
    ChatModel::load(&parsed, &backend.device).map_err(js_err)
}

/// Hands `piece` to the caller's `onToken`; `false` stops generating. A callback that throws
/// stops it too (its error is not lost: the console shows it).
fn call_on_token(on_token: Option<&js_sys::Function>, piece: &str) -> bool {
    match on_token {
        Some(f) => match f.call1(&JsValue::NULL, &JsValue::from_str(piece)) {
            Ok(r) => r.as_bool() != Some(false),
            Err(e) => {
                web_sys::console::error_2(&"webguard: onToken threw; stopping".into(), &e);
                false
            }
        },
        None => true,
    }
}

/// Whether the caller's `shouldStop()` returns something truthy.
fn asks_to_stop(should_stop: Option<&js_sys::Function>) -> bool {
    should_stop
        .and_then(|f| f.call0(&JsValue::NULL).ok())
        .is_some_and(|r| r.is_truthy())
}

fn to_js<T: serde::Serialize>(value: &T) -> Result<JsValue, JsValue> {
    let serializer = serde_wasm_bindgen::Serializer::json_compatible();
    value
        .serialize(&serializer)
        .map_err(|e| JsValue::from(JsError::new(&e.to_string())))
}

/// The moderated chat and the filter together on one backend: what `pkg/guard.js` runs in its
/// worker. `await Guard.create(backend, tokenizerJson, configJson, model, heads, gguf?)`;
/// without `gguf` only `classify` works.
#[wasm_bindgen(js_name = Guard)]
pub struct WasmGuard {
    /// Borrowed for each call; tuning borrows it mutably. The worker runs one call at a
    /// time, and an overlapping call gets a "busy" error instead of a panic.
    filter: Rc<RefCell<crate::filter::Filter>>,
    /// Borrowed like the filter (tuning borrows it mutably).
    chat: Option<Rc<RefCell<ChatModel>>>,
    /// Copied into each call, so changing it never races a call in flight.
    policy: Rc<RefCell<Policy>>,
    backend: Backend,
}

// The filter's `RefCell` is held across awaits on purpose: every access uses `try_borrow*`,
// so an overlapping call gets a "busy" error rather than a panic (see `busy`).
#[allow(clippy::await_holding_refcell_ref)]
#[wasm_bindgen(js_class = Guard)]
impl WasmGuard {
    /// Sets up `backend` (`"auto"`, `"webgpu"` or `"cpu"`) and loads the filter (MiniLM's
    /// `tokenizer.json`, `config.json`, `model.safetensors`, the heads file) and, when `gguf`
    /// is given, the chat model.
    pub async fn create(
        backend: String,
        tokenizer_json: Vec<u8>,
        config_json: Vec<u8>,
        model_safetensors: Vec<u8>,
        heads_safetensors: Vec<u8>,
        gguf: Option<Vec<u8>>,
    ) -> Result<WasmGuard, JsError> {
        let backend = init_backend(&backend).await?;
        let filter = crate::filter::Filter::new(
            &tokenizer_json,
            &config_json,
            &model_safetensors,
            &heads_safetensors,
            &backend.device,
        )
        .map_err(|e| JsError::new(&format!("the filter could not be loaded: {e}")))?;
        let chat = match gguf {
            Some(bytes) => Some(Rc::new(RefCell::new(load_chat(&bytes, &backend).map_err(
                |e| {
                    JsError::new(&format!(
                        "the chat model could not be loaded: {}",
                        String::from(js_sys::Error::from(JsValue::from(e)).message())
                    ))
                },
            )?))),
            None => None,
        };
        Ok(WasmGuard {
            policy: Rc::new(RefCell::new(Policy::new(&filter))),
            filter: Rc::new(RefCell::new(filter)),
            chat,
            backend,
        })
    }

    /// `"webgpu"` or `"cpu"`.
    #[wasm_bindgen(getter)]
    pub fn backend(&self) -> String {
        backend_kind(&self.backend).into()
    }

    /// The chat model, or an error naming why there is none.
    fn chat_model(&self) -> Result<Rc<RefCell<ChatModel>>, JsError> {
        self.chat
            .clone()
            .ok_or_else(|| JsError::new("this Guard was created without a chat model"))
    }

    /// The GPU adapter's name, when WebGPU runs.
    #[wasm_bindgen(getter)]
    pub fn adapter(&self) -> Option<String> {
        self.backend.adapter.as_ref().map(|a| a.name.clone())
    }

    /// Why the CPU runs (no WebGPU, no adapter, a failed device, or asked for).
    #[wasm_bindgen(getter, js_name = fallbackReason)]
    pub fn fallback_reason(&self) -> Option<String> {
        self.backend.fallback_reason.clone()
    }

    /// Whether the chat model is loaded.
    #[wasm_bindgen(getter, js_name = hasChat)]
    pub fn has_chat(&self) -> bool {
        self.chat.is_some()
    }

    /// Label names, in score order.
    #[wasm_bindgen(getter)]
    pub fn labels(&self) -> Result<Vec<String>, JsError> {
        Ok(busy(self.filter.try_borrow())?.labels().to_vec())
    }

    /// `{ label: { threshold, action } }`.
    #[wasm_bindgen(getter)]
    pub fn policy(&self) -> Result<JsValue, JsError> {
        let rules: std::collections::BTreeMap<String, Rule> = self
            .policy
            .borrow()
            .rules()
            .map(|(l, r)| (l.to_string(), r))
            .collect();
        to_js(&rules).map_err(|_| JsError::new("could not build the policy object"))
    }

    /// Sets one label's threshold (0 to 1) and action (`"block"`, `"warn"` or `"allow"`).
    #[wasm_bindgen(js_name = setRule)]
    pub fn set_rule(&self, label: &str, threshold: f32, action: &str) -> Result<(), JsError> {
        let action: Action = action.parse().map_err(js_err)?;
        self.policy
            .borrow_mut()
            .set(label, Rule { threshold, action })
            .map_err(js_err)
    }

    /// Resolves to one verdict per text: `{ scores: { offensive, hate, harmful }, labels,
    /// flagged }`, under the current thresholds.
    pub fn classify(&self, texts: JsValue) -> Result<Promise, JsError> {
        let texts = js_texts(&texts)?;
        let filter = self.filter.clone();
        let policy = self.policy.borrow().clone();
        Ok(wasm_bindgen_futures::future_to_promise(async move {
            let refs: Vec<&str> = texts.iter().map(String::as_str).collect();
            let filter = busy(filter.try_borrow())?;
            let scores = filter
                .scores(&refs)
                .await
                .map_err(|e| JsValue::from(js_err(e)))?;
            let verdicts: Vec<crate::filter::Verdict> =
                scores.iter().map(|s| policy.verdict(s)).collect();
            to_js(&verdicts)
        }))
    }

    /// One moderated turn (see `guard.rs`): resolves to `{ text, blocked, reason, input,
    /// output, warnings, tokens, promptTokens, stopReason }`. `options` are `Chat.generate`'s;
    /// `onToken(piece)` receives screened text and may return `false` to stop; `shouldStop()`
    /// is asked after each piece (the worker checks an abort flag there).
    pub fn chat(
        &self,
        messages: JsValue,
        options: JsValue,
        on_token: Option<js_sys::Function>,
        should_stop: Option<js_sys::Function>,
    ) -> Result<Promise, JsError> {
        let chat = self.chat_model()?;
        let messages = js_messages(messages)?;
        let options = js_generate_options(options)?;
        let filter = self.filter.clone();
        let policy = self.policy.borrow().clone();
        Ok(wasm_bindgen_futures::future_to_promise(async move {
            let filter = busy(filter.try_borrow())?;
            let chat = busy(chat.try_borrow())?;
            let reply = crate::guard::moderated_chat(
                &filter,
                &policy,
                &chat,
                &messages,
                &options,
                |piece| call_on_token(on_token.as_ref(), piece),
                || asks_to_stop(should_stop.as_ref()),
            )
            .await
            .map_err(|e| JsValue::from(js_err(e)))?;
            to_js(&reply)
        }))
    }

    /// Teaches the filter from `examples` (`[{ text, label, value }]`; a new label gets its
    /// own head) with `options` (`{ steps, learningRate, seed }`); `onStep({ step, steps,
    /// loss, millis })` after each step may return `false` to cancel, as may `shouldStop()`.
    /// Resolves to `{ labels, newLabels, finalLoss, examples }`; on any error the filter is as
    /// it was.
    #[wasm_bindgen(js_name = tuneFilter)]
    pub fn tune_filter(
        &self,
        examples: JsValue,
        options: JsValue,
        on_step: Option<js_sys::Function>,
        should_stop: Option<js_sys::Function>,
    ) -> Result<Promise, JsError> {
        if !js_sys::Array::is_array(&examples) {
            return Err(JsError::new(
                "examples must be an array of { text, label, value } objects",
            ));
        }
        let examples: Vec<crate::tune::filter::LabelExample> =
            serde_wasm_bindgen::from_value(examples)
                .map_err(|e| JsError::new(&format!("examples: {e}")))?;
        let options = js_tune_options(options)?;
        let (filter, policy) = (self.filter.clone(), self.policy.clone());
        Ok(wasm_bindgen_futures::future_to_promise(async move {
            let mut f = busy(filter.try_borrow_mut())?;
            let report = f
                .tune(&examples, &options, |step| {
                    step_callback(on_step.as_ref(), should_stop.as_ref(), step)
                })
                .await
                .map_err(|e| JsValue::from(js_err(e)))?;
            let synced = policy.borrow().synced(&f);
            *policy.borrow_mut() = synced;
            to_js(&report)
        }))
    }

    /// Instruction-tunes the chat model with LoRA from `pairs` (`[{ prompt, response }]`) with
    /// `options` (`{ steps, learningRate, seed, rank, targets, batchSize }`); `onStep` and
    /// `shouldStop` as for `tuneFilter`. Resolves to `{ pairs, firstLoss, finalLoss,
    /// parameters }`; on any error the model is as it was.
    #[wasm_bindgen(js_name = tuneChat)]
    pub fn tune_chat(
        &self,
        pairs: JsValue,
        options: JsValue,
        on_step: Option<js_sys::Function>,
        should_stop: Option<js_sys::Function>,
    ) -> Result<Promise, JsError> {
        let chat = self.chat_model()?;
        if !js_sys::Array::is_array(&pairs) {
            return Err(JsError::new(
                "pairs must be an array of { prompt, response } objects",
            ));
        }
        let pairs: Vec<crate::tune::chat::ChatPair> = serde_wasm_bindgen::from_value(pairs)
            .map_err(|e| JsError::new(&format!("pairs: {e}")))?;
        let options = js_chat_tune_options(options)?;
        Ok(wasm_bindgen_futures::future_to_promise(async move {
            let mut chat = busy(chat.try_borrow_mut())?;
            let report = chat
                .tune(&pairs, &options, |step| {
                    step_callback(on_step.as_ref(), should_stop.as_ref(), step)
                })
                .await
                .map_err(|e| JsValue::from(js_err(e)))?;
            to_js(&report)
        }))
    }

    /// Tuned adapters as safetensors bytes: `kind` `"filter"` (the tuned filter heads) or
    /// `"chat"` (the chat model's LoRA adapters).
    #[wasm_bindgen(js_name = exportAdapters)]
    pub fn export_adapters(&self, kind: String) -> Result<Promise, JsError> {
        let (filter, chat) = (self.filter.clone(), self.chat.clone());
        Ok(wasm_bindgen_futures::future_to_promise(async move {
            let bytes = match kind.as_str() {
                "filter" => busy(filter.try_borrow())?.export_adapters().await,
                "chat" => match &chat {
                    Some(c) => busy(c.try_borrow())?.export_adapters().await,
                    None => return Err(JsError::new("this Guard has no chat model").into()),
                },
                other => {
                    return Err(JsError::new(&format!(
                        "unknown adapters kind {other:?}: \"filter\" or \"chat\""
                    ))
                    .into());
                }
            }
            .map_err(|e| JsValue::from(js_err(e)))?;
            Ok(js_sys::Uint8Array::from(bytes.as_slice()).into())
        }))
    }

    /// Loads adapters exported from a Guard with the same base models; which model they are
    /// for is read from the file. Resolves to `"filter"` or `"chat"`.
    #[wasm_bindgen(js_name = importAdapters)]
    pub fn import_adapters(&self, bytes: Vec<u8>) -> Result<Promise, JsError> {
        let (filter, chat, policy) = (self.filter.clone(), self.chat.clone(), self.policy.clone());
        Ok(wasm_bindgen_futures::future_to_promise(async move {
            let format = crate::weights::safetensors::SafetensorsFile::parse(&bytes)
                .ok()
                .and_then(|f| f.metadata().get("format").cloned())
                .unwrap_or_default();
            if format == crate::tune::chat::CHAT_ADAPTERS_FORMAT {
                let chat = chat.ok_or_else(|| {
                    JsValue::from(JsError::new(
                        "these are chat adapters and this Guard has no chat model",
                    ))
                })?;
                busy(chat.try_borrow_mut())?
                    .import_adapters(&bytes)
                    .await
                    .map_err(|e| JsValue::from(js_err(e)))?;
                return Ok("chat".into());
            }
            let mut f = busy(filter.try_borrow_mut())?;
            f.import_adapters(&bytes)
                .await
                .map_err(|e| JsValue::from(js_err(e)))?;
            let synced = policy.borrow().synced(&f);
            *policy.borrow_mut() = synced;
            Ok("filter".into())
        }))
    }

    /// Forgets tuning: `kind` `"filter"`, `"chat"`, or `"all"`.
    #[wasm_bindgen(js_name = resetAdapters)]
    pub fn reset_adapters(&self, kind: String) -> Result<(), JsError> {
        if !["filter", "chat", "all"].contains(&kind.as_str()) {
            return Err(JsError::new(&format!(
                "unknown adapters kind {kind:?}: \"filter\", \"chat\" or \"all\""
            )));
        }
        if kind != "chat" {
            let mut f = busy(self.filter.try_borrow_mut())?;
            f.reset_adapters();
            let synced = self.policy.borrow().synced(&f);
            *self.policy.borrow_mut() = synced;
        }
        if let (true, Some(c)) = (kind != "filter", &self.chat) {
            busy(c.try_borrow_mut())?.reset_adapters();
        }
        Ok(())
    }
}

/// Hands a tuning step to `onStep` (which may return `false` to cancel) and asks `shouldStop`.
fn step_callback(
    on_step: Option<&js_sys::Function>,
    should_stop: Option<&js_sys::Function>,
    step: &crate::tune::Step,
) -> bool {
    let go_on = match on_step {
        Some(cb) => to_js(step)
            .and_then(|s| cb.call1(&JsValue::NULL, &s))
            .map(|r| r.as_bool() != Some(false))
            .unwrap_or(false),
        None => true,
    };
    go_on && !asks_to_stop(should_stop)
}

/// Checked chat tuning options from JS.
fn js_chat_tune_options(options: JsValue) -> Result<crate::tune::chat::ChatTuneOptions, JsError> {
    #[derive(serde::Deserialize, Default)]
    #[serde(rename_all = "camelCase", default, deny_unknown_fields)]
    struct JsChatTuneOptions {
        steps: Option<usize>,
        learning_rate: Option<f64>,
        seed: Option<u64>,
        rank: Option<usize>,
        targets: Option<Vec<String>>,
        batch_size: Option<usize>,
    }
    let o: JsChatTuneOptions = if options.is_undefined() || options.is_null() {
        JsChatTuneOptions::default()
    } else {
        serde_wasm_bindgen::from_value(options)
            .map_err(|e| JsError::new(&format!("tuning options: {e}")))?
    };
    let d = crate::tune::chat::ChatTuneOptions::default();
    let targets = match o.targets {
        Some(t) => t
            .iter()
            .map(|p| p.parse::<crate::models::lora::Projection>())
            .collect::<crate::error::Result<Vec<_>>>()
            .map_err(js_err)?,
        None => d.lora.targets.clone(),
    };
    let options = crate::tune::chat::ChatTuneOptions {
        tune: crate::tune::TuneOptions {
            steps: o.steps.unwrap_or(d.tune.steps),
            learning_rate: o.learning_rate.unwrap_or(d.tune.learning_rate),
            seed: o.seed.unwrap_or(d.tune.seed),
            ..d.tune.clone()
        },
        lora: crate::models::lora::LoraConfig {
            rank: o.rank.unwrap_or(d.lora.rank),
            targets,
            ..d.lora.clone()
        },
        batch_size: o.batch_size.unwrap_or(d.batch_size),
        ..d
    };
    options.tune.validate().map_err(js_err)?;
    options.lora.validate().map_err(js_err)?;
    Ok(options)
}

/// A `RefCell` borrow, or a JS error saying another call is using the models.
fn busy<T>(r: Result<T, impl std::fmt::Debug>) -> Result<T, JsError> {
    r.map_err(|_| JsError::new("the models are busy with another call; wait for it to finish"))
}

/// Checked tuning options from JS (`{ steps, learningRate, seed }`, all optional).
fn js_tune_options(options: JsValue) -> Result<crate::tune::TuneOptions, JsError> {
    #[derive(serde::Deserialize, Default)]
    #[serde(rename_all = "camelCase", default, deny_unknown_fields)]
    struct JsTuneOptions {
        steps: Option<usize>,
        learning_rate: Option<f64>,
        seed: Option<u64>,
    }
    let o: JsTuneOptions = if options.is_undefined() || options.is_null() {
        JsTuneOptions::default()
    } else {
        serde_wasm_bindgen::from_value(options)
            .map_err(|e| JsError::new(&format!("tuning options: {e}")))?
    };
    let d = crate::tune::TuneOptions::default();
    let options = crate::tune::TuneOptions {
        steps: o.steps.unwrap_or(d.steps),
        learning_rate: o.learning_rate.unwrap_or(d.learning_rate),
        seed: o.seed.unwrap_or(d.seed),
        ..d
    };
    options.validate().map_err(js_err)?;
    Ok(options)
}
