//! `Tokenizer`: either model's tokenizer on its own (the test pages compare ids with PyPI's
//! `tokenizers`).

use wasm_bindgen::prelude::*;

use super::convert::JsResult;
use crate::text::Tokenizer;
use crate::weights::gguf::Gguf;

/// A tokenizer for one of the two models, usable from JavaScript.
#[wasm_bindgen(js_name = Tokenizer)]
pub struct WasmTokenizer {
    inner: Tokenizer,
}

#[wasm_bindgen(js_class = Tokenizer)]
impl WasmTokenizer {
    /// SmolLM2's tokenizer from the bytes of its GGUF file.
    #[wasm_bindgen(js_name = fromGguf)]
    pub fn from_gguf(bytes: &[u8]) -> Result<WasmTokenizer, JsValue> {
        let gguf = Gguf::parse(bytes).js()?;
        let inner = Tokenizer::from_gguf(&gguf).js()?;
        Ok(WasmTokenizer { inner })
    }

    /// MiniLM's tokenizer from the bytes of its `tokenizer.json`.
    #[wasm_bindgen(js_name = fromTokenizerJson)]
    pub fn from_tokenizer_json(bytes: &[u8]) -> Result<WasmTokenizer, JsValue> {
        let inner = Tokenizer::from_tokenizer_json(bytes).js()?;
        Ok(WasmTokenizer { inner })
    }

    /// Token ids of `text`.
    pub fn encode(&self, text: &str) -> Result<Vec<u32>, JsValue> {
        self.inner.encode(text).js()
    }

    /// Text of `ids`.
    pub fn decode(&self, ids: Vec<u32>) -> Result<String, JsValue> {
        self.inner.decode(&ids).js()
    }

    /// Number of ids.
    #[wasm_bindgen(getter, js_name = vocabSize)]
    pub fn vocab_size(&self) -> usize {
        self.inner.vocab_size()
    }
}
