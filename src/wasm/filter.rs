//! `Filter`: the toxicity filter alone, with per-label thresholds (the filter test page).

use std::cell::RefCell;
use std::rc::Rc;

use js_sys::Promise;
use wasm_bindgen::prelude::*;

use super::convert::{self, JsResult, to_js};
use super::{backend_kind, classify, init_backend};
use crate::backend::Backend;
use crate::filter::Filter;

/// The toxicity filter, usable from JavaScript: `await Filter.create(backend, tokenizerJson,
/// configJson, modelSafetensors, headsSafetensors)`, then `await filter.classify(texts)`.
#[wasm_bindgen(js_name = Filter)]
pub struct WasmFilter {
    inner: Rc<Filter>,
    /// The caller's thresholds, apart from the filter so that changing them never waits for
    /// (or races) a classification in flight.
    thresholds: Rc<RefCell<Vec<f32>>>,
    backend: Backend,
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
    ) -> Result<WasmFilter, JsValue> {
        let backend = init_backend(&backend).await?;
        let inner = Filter::for_backend(
            &tokenizer_json,
            &config_json,
            &model_safetensors,
            &heads_safetensors,
            &backend,
        )
        .await
        .js()?;
        Ok(WasmFilter {
            thresholds: Rc::new(RefCell::new(inner.thresholds().to_vec())),
            inner: Rc::new(inner),
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

    /// Which device encodes which batches: `{ gpuFromBatch, reason, measured }` (with
    /// `"auto"` on WebGPU, measured at load: batches of at least `gpuFromBatch` windows run on
    /// the GPU, smaller ones on the CPU; `null`: every batch on the CPU).
    #[wasm_bindgen(getter)]
    pub fn route(&self) -> Result<JsValue, JsValue> {
        to_js(self.inner.route())
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
    pub fn set_threshold(&self, label: &str, threshold: f32) -> Result<(), JsValue> {
        let i = self.inner.check_threshold(label, threshold).js()?;
        self.thresholds.borrow_mut()[i] = threshold;
        Ok(())
    }

    /// Resolves to one verdict per text: `{ scores: { offensive, hate, harmful }, labels,
    /// flagged }`.
    pub fn classify(&self, texts: JsValue) -> Result<Promise, JsValue> {
        let texts = convert::texts(&texts)?;
        let filter = self.inner.clone();
        let thresholds = self.thresholds.borrow().clone();
        Ok(wasm_bindgen_futures::future_to_promise(async move {
            classify(&filter, &texts, &thresholds).await
        }))
    }
}
