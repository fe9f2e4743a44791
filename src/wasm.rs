//! The JavaScript surface (`wasm32` only), built into `pkg/` by `build.sh` with wasm-bindgen.
//!
//! Every function returns `Result<_, JsError>`: a failure becomes a JS `Error` with a readable
//! message, never a trap that would kill the module.

use js_sys::{Promise, Reflect};
use wasm_bindgen::prelude::*;
use wasm_bindgen_futures::JsFuture;

use crate::backend::{Backend, BackendChoice, BackendKind, probe_computation};
use crate::error::Error;
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
    let choice: BackendChoice = choice.parse().map_err(js_err)?;
    let backend = Backend::init(choice).await.map_err(js_err)?;
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
