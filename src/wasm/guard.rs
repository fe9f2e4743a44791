//! `Guard`: the filter and the chat model on one backend under one policy, with moderated chat
//! and tuning: what `pkg/guard.js` runs in its worker.

use std::cell::RefCell;
use std::collections::BTreeMap;
use std::rc::Rc;

use js_sys::Promise;
use wasm_bindgen::prelude::*;

use super::convert::{self, JsResult, asks_to_stop, busy, call_on_token, invalid_input, to_js};
use super::{backend_kind, classify, init_backend, load_chat};
use crate::backend::Backend;
use crate::chat::ChatModel;
use crate::filter::Filter;
use crate::generate::GenerateOptions;
use crate::guard::{Action, OtherLanguages, Policy, Rule};
#[cfg(feature = "tune")]
use crate::tune::TuneOptions;
use crate::tune::chat::CHAT_ADAPTERS_FORMAT;
#[cfg(feature = "tune")]
use crate::tune::chat::{ChatPair, ChatTuneOptions};
use crate::tune::filter::ImportOptions;
#[cfg(feature = "tune")]
use {super::convert::step_callback, crate::tune::filter::LabelExample};

/// The moderated chat and the filter together on one backend: what `pkg/guard.js` runs in its
/// worker. `await Guard.create(backend, tokenizerJson, configJson, model, heads, gguf?,
/// chatProbe?)`; without `gguf` only `classify` works, and `chatProbe` (a probe file, see
/// `crate::models::probe`) needs `gguf`.
#[wasm_bindgen(js_name = Guard)]
pub struct WasmGuard {
    /// Borrowed for each call; tuning borrows it mutably. The worker runs one call at a
    /// time, and an overlapping call gets a "busy" error instead of a panic.
    filter: Rc<RefCell<Filter>>,
    /// Borrowed like the filter (tuning borrows it mutably).
    chat: Option<Rc<RefCell<ChatModel>>>,
    /// Copied into each call, so changing it never races a call in flight.
    policy: Rc<RefCell<Policy>>,
    backend: Backend,
    /// Where the chat model runs: `backend`, or the CPU for `auto` on a software adapter.
    chat_backend: Backend,
}

/// What `Guard.chatProbe` says about a loaded probe.
#[derive(serde::Serialize)]
#[serde(rename_all = "camelCase")]
struct ProbeInfo {
    threshold: f32,
    layers: Vec<usize>,
    /// Where it reads the prompt: `"last-token"` or `"user-message"` (averaged over the last
    /// user message's text).
    pooling: &'static str,
    /// The answer probe's threshold, when the file has one.
    answer_threshold: Option<f32>,
    /// The score from which moderated chat answers with the safety adapters, when they are
    /// loaded.
    safety_adapters_from: Option<f32>,
}

// The filter's `RefCell` is held across awaits on purpose: every access uses `try_borrow*`,
// so an overlapping call gets a "busy" error rather than a panic (see `busy`).
#[allow(clippy::await_holding_refcell_ref)]
#[wasm_bindgen(js_class = Guard)]
impl WasmGuard {
    /// Sets up `backend` (`"auto"`, `"webgpu"` or `"cpu"`) and loads the filter (MiniLM's
    /// `tokenizer.json`, `config.json`, `model.safetensors`, the heads file) and, when `gguf`
    /// is given, the chat model, with the harmful-request probe over its states when
    /// `chat_probe` is given (a malformed one, or one for another model, is a `ModelFileError`).
    pub async fn create(
        backend: String,
        tokenizer_json: Vec<u8>,
        config_json: Vec<u8>,
        model_safetensors: Vec<u8>,
        heads_safetensors: Vec<u8>,
        gguf: Option<Vec<u8>>,
        chat_probe: Option<Vec<u8>>,
    ) -> Result<WasmGuard, JsValue> {
        if chat_probe.is_some() && gguf.is_none() {
            return Err(invalid_input(
                "a chat probe was given without a chat model: it judges with the chat model's states",
            ));
        }
        let backend = init_backend(&backend).await?;
        let filter = Filter::for_backend(
            &tokenizer_json,
            &config_json,
            &model_safetensors,
            &heads_safetensors,
            &backend,
        )
        .await
        .js_context("the filter could not be loaded")?;
        let chat_backend = backend.for_chat();
        let chat = match gguf {
            Some(bytes) => {
                let mut chat = load_chat(&bytes, &chat_backend)
                    .js_context("the chat model could not be loaded")?;
                if let Some(probe) = chat_probe {
                    chat.load_probe(&probe)
                        .js_context("the chat probe could not be loaded")?;
                }
                Some(Rc::new(RefCell::new(chat)))
            }
            None => None,
        };
        Ok(WasmGuard {
            policy: Rc::new(RefCell::new(Policy::new(&filter))),
            filter: Rc::new(RefCell::new(filter)),
            chat,
            backend,
            chat_backend,
        })
    }

    /// `"webgpu"` or `"cpu"`.
    #[wasm_bindgen(getter)]
    pub fn backend(&self) -> String {
        backend_kind(&self.backend).into()
    }

    /// The chat model, or an error naming why there is none.
    fn chat_model(&self) -> Result<Rc<RefCell<ChatModel>>, JsValue> {
        self.chat
            .clone()
            .ok_or_else(|| invalid_input("this Guard was created without a chat model"))
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

    /// Which device encodes the filter's batches: `{ gpuFromBatch, reason, measured }` (see
    /// `Filter.route`).
    #[wasm_bindgen(getter, js_name = filterRoute)]
    pub fn filter_route(&self) -> Result<JsValue, JsValue> {
        to_js(busy(self.filter.try_borrow())?.route())
    }

    /// Where the chat model runs (`"webgpu"` or `"cpu"`), or `null` without one.
    #[wasm_bindgen(getter, js_name = chatBackend)]
    pub fn chat_backend(&self) -> Option<String> {
        self.chat.as_ref()?;
        Some(backend_kind(&self.chat_backend).into())
    }

    /// Why the chat model runs on the CPU when the filter does not (`auto` on a software
    /// adapter), else `null`.
    #[wasm_bindgen(getter, js_name = chatFallbackReason)]
    pub fn chat_fallback_reason(&self) -> Option<String> {
        self.chat.as_ref()?;
        (self.chat_backend.kind != self.backend.kind)
            .then(|| self.chat_backend.fallback_reason.clone())
            .flatten()
    }

    /// Whether the chat model is loaded.
    #[wasm_bindgen(getter, js_name = hasChat)]
    pub fn has_chat(&self) -> bool {
        self.chat.is_some()
    }

    /// The chat model's probes: `{ threshold, layers, pooling, answerThreshold }` (moderated
    /// chat blocks a conversation it scores at or above `threshold`, reported as `chatJudge`,
    /// judging the last user message on its own too after earlier turns or a system prompt; it
    /// stops an answer scored at or above `answerThreshold` at a sentence end, reported as
    /// `answerJudge`), or `null` when none is loaded.
    #[wasm_bindgen(getter, js_name = chatProbe)]
    pub fn chat_probe(&self) -> Result<JsValue, JsValue> {
        let Some(chat) = &self.chat else {
            return Ok(JsValue::NULL);
        };
        let chat = busy(chat.try_borrow())?;
        match &chat.probe {
            Some(p) => to_js(&ProbeInfo {
                threshold: p.threshold,
                layers: p.layers.clone(),
                pooling: p.pooling.name(),
                answer_threshold: chat.answer_probe.as_ref().map(|a| a.threshold),
                safety_adapters_from: chat
                    .model
                    .safety_adapters()
                    .map(|_| chat.safety_adapters_from),
            }),
            None => Ok(JsValue::NULL),
        }
    }

    /// Loads safety adapters (a chat adapters file that adapts only blocks after those the
    /// probe reads): moderated chat answers with them when the probe scores a conversation at
    /// or above `from` (default: the zone stored with the probe, chosen with its threshold) but
    /// below its threshold. A bad file, one for another model, or `from` outside 0 to 1 is an
    /// error and changes nothing.
    #[wasm_bindgen(js_name = loadSafetyAdapters)]
    pub async fn load_safety_adapters(
        &self,
        bytes: Vec<u8>,
        from: Option<f32>,
    ) -> Result<(), JsValue> {
        if let Some(from) = from
            && !(0.0..=1.0).contains(&from)
        {
            return Err(invalid_input(format!(
                "safetyAdaptersFrom {from} is outside 0 to 1"
            )));
        }
        let chat = self.chat_model()?;
        let mut chat = busy(chat.try_borrow_mut())?;
        if chat.probe.is_none() {
            return Err(invalid_input(
                "safety adapters need the chat probe: they answer conversations it scores close to its threshold",
            ));
        }
        chat.load_safety_adapters(&bytes)
            .await
            .js_context("the safety adapters could not be loaded")?;
        if let Some(from) = from {
            chat.safety_adapters_from = from;
        }
        Ok(())
    }

    /// Label names, in score order.
    #[wasm_bindgen(getter)]
    pub fn labels(&self) -> Result<Vec<String>, JsValue> {
        Ok(busy(self.filter.try_borrow())?.labels().to_vec())
    }

    /// Where each label came from: `{ label: "shipped" | "taught" | "imported" }`.
    #[wasm_bindgen(getter, js_name = labelOrigins)]
    pub fn label_origins(&self) -> Result<JsValue, JsValue> {
        let origins: BTreeMap<String, crate::filter::LabelOrigin> = busy(self.filter.try_borrow())?
            .label_origins()
            .into_iter()
            .collect();
        to_js(&origins)
    }

    /// `{ label: { threshold, action } }`.
    #[wasm_bindgen(getter)]
    pub fn policy(&self) -> Result<JsValue, JsValue> {
        let rules: BTreeMap<String, Rule> = self
            .policy
            .borrow()
            .rules()
            .map(|(l, r)| (l.to_string(), r))
            .collect();
        to_js(&rules)
    }

    /// Sets one label's threshold (0 to 1) and action (`"block"`, `"warn"` or `"allow"`).
    /// Arguments of other types are an `InvalidInputError`.
    #[wasm_bindgen(js_name = setRule)]
    pub fn set_rule(
        &self,
        label: JsValue,
        threshold: JsValue,
        action: JsValue,
    ) -> Result<(), JsValue> {
        let label = convert::string(&label, "the label")?;
        let threshold = convert::number(&threshold, "the threshold")? as f32;
        let action = convert::string(&action, "the action")?;
        let action = action.parse::<Action>().js()?;
        self.policy
            .borrow_mut()
            .set(&label, Rule { threshold, action })
            .js()
    }

    /// What a user or system message in a language other than English does in `chat`:
    /// `"block"` (the default), `"judge"` or `"allow"` (see `OtherLanguages`).
    #[wasm_bindgen(getter, js_name = otherLanguages)]
    pub fn other_languages(&self) -> String {
        self.policy.borrow().other_languages().to_string()
    }

    /// Sets what a message in another language does; anything but `"block"`, `"judge"` or
    /// `"allow"` is an `InvalidInputError`.
    #[wasm_bindgen(js_name = setOtherLanguages)]
    pub fn set_other_languages(&self, choice: JsValue) -> Result<(), JsValue> {
        let choice = convert::string(&choice, "otherLanguages")?;
        let choice = choice.parse::<OtherLanguages>().js()?;
        self.policy.borrow_mut().set_other_languages(choice);
        Ok(())
    }

    /// Resolves to one verdict per text: `{ scores: { offensive, hate, harmful }, labels,
    /// flagged }`, under the current thresholds.
    pub fn classify(&self, texts: JsValue) -> Result<Promise, JsValue> {
        let texts = convert::texts(&texts)?;
        let filter = self.filter.clone();
        let thresholds = self.policy.borrow().thresholds();
        Ok(wasm_bindgen_futures::future_to_promise(async move {
            classify(&*busy(filter.try_borrow())?, &texts, &thresholds).await
        }))
    }

    /// One moderated turn (see `src/guard/mod.rs`): resolves to `{ text, blocked, reason, input,
    /// output, warnings, tokens, promptTokens, stopReason, chatJudge, answerJudge, droppedTurns,
    /// safetyAdapters, otherLanguage }` (`droppedTurns`: the oldest messages left out to fit
    /// the context window; `otherLanguage`: the language other than English a message is in). `options`
    /// are `Chat.generate`'s;
    /// `onToken(piece)` receives screened text and may return `false` to stop; `shouldStop()`
    /// is asked after each piece (the worker checks an abort flag there).
    pub fn chat(
        &self,
        messages: JsValue,
        options: JsValue,
        on_token: Option<js_sys::Function>,
        should_stop: Option<js_sys::Function>,
    ) -> Result<Promise, JsValue> {
        let chat = self.chat_model()?;
        let messages = convert::messages(messages)?;
        let options: GenerateOptions = convert::options(&options, "options")?;
        options.validate().js()?;
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
            .js()?;
            to_js(&reply)
        }))
    }

    /// Teaches the filter from `examples` (`[{ text, label, value }]`; a new label gets its
    /// own head) with `options` (`TuneOptions`: `{ steps, learningRate, seed }`); `onStep({
    /// step, steps, loss, millis })` after each step may return `false` to cancel, as may
    /// `shouldStop()`. Resolves to `{ labels, newLabels, finalLoss, examples }`; on any error
    /// the filter is as it was.
    #[cfg(feature = "tune")]
    #[wasm_bindgen(js_name = tuneFilter)]
    pub fn tune_filter(
        &self,
        examples: JsValue,
        options: JsValue,
        on_step: Option<js_sys::Function>,
        should_stop: Option<js_sys::Function>,
    ) -> Result<Promise, JsValue> {
        let examples: Vec<LabelExample> =
            convert::array_of(examples, "examples", "{ text, label, value }")?;
        let options: TuneOptions = convert::options(&options, "tuning options")?;
        options.validate().js()?;
        let (filter, policy) = (self.filter.clone(), self.policy.clone());
        Ok(wasm_bindgen_futures::future_to_promise(async move {
            let mut f = busy(filter.try_borrow_mut())?;
            let report = f
                .tune(&examples, &options, |step| {
                    step_callback(on_step.as_ref(), should_stop.as_ref(), step)
                })
                .await
                .js()?;
            let synced = policy.borrow().synced(&f);
            *policy.borrow_mut() = synced;
            to_js(&report)
        }))
    }

    /// Instruction-tunes the chat model with LoRA from `pairs` (`[{ prompt, response }]`) with
    /// `options` (`ChatTuneOptions`: `{ steps, learningRate, seed, rank, targets, batchSize
    /// }`); `onStep` and `shouldStop` as for `tuneFilter`. Resolves to `{ pairs, firstLoss,
    /// finalLoss, parameters }`; on any error the model is as it was.
    #[cfg(feature = "tune")]
    #[wasm_bindgen(js_name = tuneChat)]
    pub fn tune_chat(
        &self,
        pairs: JsValue,
        options: JsValue,
        on_step: Option<js_sys::Function>,
        should_stop: Option<js_sys::Function>,
    ) -> Result<Promise, JsValue> {
        let chat = self.chat_model()?;
        let pairs: Vec<ChatPair> = convert::array_of(pairs, "pairs", "{ prompt, response }")?;
        let options: ChatTuneOptions = convert::options(&options, "tuning options")?;
        options.tune.validate().js()?;
        options.lora.validate().js()?;
        Ok(wasm_bindgen_futures::future_to_promise(async move {
            let mut chat = busy(chat.try_borrow_mut())?;
            let report = chat
                .tune(&pairs, &options, |step| {
                    step_callback(on_step.as_ref(), should_stop.as_ref(), step)
                })
                .await
                .js()?;
            to_js(&report)
        }))
    }

    /// In a module built without tuning (`webguard.js`; guard.js loads `webguard_tune.js` when
    /// a page first tunes): a `TuningError` saying so.
    #[cfg(not(feature = "tune"))]
    #[wasm_bindgen(js_name = tuneFilter)]
    pub fn tune_filter(
        &self,
        _examples: JsValue,
        _options: JsValue,
        _on_step: Option<js_sys::Function>,
        _should_stop: Option<js_sys::Function>,
    ) -> Result<Promise, JsValue> {
        Err(no_tuning()).js()
    }

    /// As `tuneFilter`: a `TuningError` in a module built without tuning.
    #[cfg(not(feature = "tune"))]
    #[wasm_bindgen(js_name = tuneChat)]
    pub fn tune_chat(
        &self,
        _pairs: JsValue,
        _options: JsValue,
        _on_step: Option<js_sys::Function>,
        _should_stop: Option<js_sys::Function>,
    ) -> Result<Promise, JsValue> {
        Err(no_tuning()).js()
    }

    /// Whether this module can tune (`tuneFilter`, `tuneChat`): `webguard_tune.js` can,
    /// `webguard.js` (the smaller first download) cannot.
    #[wasm_bindgen(getter = canTune)]
    pub fn can_tune(&self) -> bool {
        cfg!(feature = "tune")
    }

    /// Tuned adapters as safetensors bytes: `kind` `"filter"` (the tuned filter heads) or
    /// `"chat"` (the chat model's LoRA adapters).
    #[wasm_bindgen(js_name = exportAdapters)]
    pub fn export_adapters(&self, kind: JsValue) -> Result<Promise, JsValue> {
        let kind = convert::string(&kind, "the adapters kind")?;
        let (filter, chat) = (self.filter.clone(), self.chat.clone());
        Ok(wasm_bindgen_futures::future_to_promise(async move {
            let bytes = match kind.as_str() {
                "filter" => busy(filter.try_borrow())?.export_adapters().await,
                "chat" => match &chat {
                    Some(c) => busy(c.try_borrow())?.export_adapters().await,
                    None => return Err(invalid_input("this Guard has no chat model")),
                },
                other => {
                    return Err(invalid_input(format!(
                        "unknown adapters kind {other:?}: \"filter\" or \"chat\""
                    )));
                }
            }
            .js()?;
            Ok(js_sys::Uint8Array::from(bytes.as_slice()).into())
        }))
    }

    /// Loads adapters exported from a Guard with the same base models; which model they are
    /// for is read from the file. Resolves to `"filter"` or `"chat"`. `options` (filter
    /// adapters only; `ImportOptions`): `{ replaceShippedLabels }`, false by default, so that
    /// adapters changing a shipped label's head or threshold are refused.
    #[wasm_bindgen(js_name = importAdapters)]
    pub fn import_adapters(&self, bytes: Vec<u8>, options: JsValue) -> Result<Promise, JsValue> {
        let options: ImportOptions = convert::options(&options, "import options")?;
        let (filter, chat, policy) = (self.filter.clone(), self.chat.clone(), self.policy.clone());
        Ok(wasm_bindgen_futures::future_to_promise(async move {
            let format = crate::weights::safetensors::SafetensorsFile::parse(&bytes)
                .ok()
                .and_then(|f| f.metadata().get("format").cloned())
                .unwrap_or_default();
            if format == CHAT_ADAPTERS_FORMAT {
                let chat = chat.ok_or_else(|| {
                    invalid_input("these are chat adapters and this Guard has no chat model")
                })?;
                busy(chat.try_borrow_mut())?
                    .import_adapters(&bytes)
                    .await
                    .js()?;
                return Ok("chat".into());
            }
            let mut f = busy(filter.try_borrow_mut())?;
            f.import_adapters_with(&bytes, &options).await.js()?;
            let synced = policy.borrow().synced(&f);
            *policy.borrow_mut() = synced;
            Ok("filter".into())
        }))
    }

    /// Forgets tuning: `kind` `"filter"`, `"chat"`, or `"all"`.
    #[wasm_bindgen(js_name = resetAdapters)]
    pub fn reset_adapters(&self, kind: JsValue) -> Result<(), JsValue> {
        let kind = convert::string(&kind, "the adapters kind")?;
        if !["filter", "chat", "all"].contains(&kind.as_str()) {
            return Err(invalid_input(format!(
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

/// Why a module built without the `tune` feature cannot tune.
#[cfg(not(feature = "tune"))]
fn no_tuning() -> crate::Error {
    crate::Error::Tuning(
        "this module (webguard.js) is built without tuning, to keep the first download small: \
         load webguard_tune.js instead (guard.js does so when a page first tunes)"
            .into(),
    )
}
