//! `Chat`: the chat model alone, unmoderated (the chat test page compares its tokens with the
//! float64 reference).

use std::rc::Rc;

use js_sys::{Promise, Reflect};
use wasm_bindgen::prelude::*;

use super::convert::{self, JsResult, call_on_token, internal};
use super::{backend_kind, init_backend, load_chat};
use crate::backend::Backend;
use crate::chat::ChatModel;
use crate::generate::GenerateOptions;

/// The chat model, usable from JavaScript: `await Chat.create(backend, ggufBytes)`, then
/// `await chat.generate(messages, options, onToken)`.
#[wasm_bindgen(js_name = Chat)]
pub struct WasmChat {
    chat: Rc<ChatModel>,
    backend: Backend,
}

#[wasm_bindgen(js_class = Chat)]
impl WasmChat {
    /// Sets up `backend` (`"auto"`, `"webgpu"` or `"cpu"`; `"auto"` on a software adapter runs
    /// on the CPU, see `Backend::for_chat`) and loads SmolLM2 from its GGUF bytes.
    pub async fn create(backend: String, gguf: Vec<u8>) -> Result<WasmChat, JsValue> {
        let backend = init_backend(&backend).await?.for_chat();
        let chat = load_chat(&gguf, &backend).js()?;
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

    /// Resolves to the model's logits (a `Float32Array` of the vocabulary's 49,152) for the
    /// token after `ids` (token ids, e.g. a rendered chat prompt): what scoring candidate next
    /// tokens needs, and how the test pages compare a backend with the float64 reference.
    #[wasm_bindgen(js_name = nextTokenLogits)]
    pub fn next_token_logits(
        &self,
        #[wasm_bindgen(unchecked_param_type = "Uint32Array | number[]")] ids: JsValue,
    ) -> Result<Promise, JsValue> {
        let ids = convert::token_ids(ids)?;
        let chat = self.chat.clone();
        Ok(wasm_bindgen_futures::future_to_promise(async move {
            let options = GenerateOptions::default();
            let mut generator = crate::generate::Generator::new(&chat, &ids, &options).js()?;
            let logits = generator.next_logits().await.js()?;
            Ok(js_sys::Float32Array::from(logits.as_slice()).into())
        }))
    }

    /// Resolves to `{ text, tokens, stopReason, promptTokens }` for `messages`
    /// (`[{ role, content }]`) with `options` (`GenerateOptions`: `{ maxTokens, temperature,
    /// topK, topP, repetitionPenalty, seed, stop }`); `onToken(piece)` gets each text piece and
    /// may return `false` to stop.
    pub fn generate(
        &self,
        messages: JsValue,
        options: JsValue,
        on_token: Option<js_sys::Function>,
    ) -> Result<Promise, JsValue> {
        let messages = convert::messages(messages)?;
        let options: GenerateOptions = convert::options(&options, "options")?;
        options.validate().js()?;
        let ids = self.chat.prompt_ids(&messages).js()?;
        let chat = self.chat.clone();
        Ok(wasm_bindgen_futures::future_to_promise(async move {
            let generation = crate::generate::generate(&chat, &ids, &options, |piece| {
                call_on_token(on_token.as_ref(), piece)
            })
            .await
            .js()?;
            let out = js_sys::Object::new();
            let set = |k: &str, v: JsValue| Reflect::set(&out, &k.into(), &v).map(|_| ());
            set("text", generation.text.clone().into())
                .and(set(
                    "tokens",
                    js_sys::Uint32Array::from(generation.tokens.as_slice()).into(),
                ))
                .and(set("stopReason", generation.stop_reason.name().into()))
                .and(set(
                    "promptTokens",
                    (generation.prompt_tokens as u32).into(),
                ))
                .map_err(|_| internal("could not build the result object"))?;
            Ok(out.into())
        }))
    }
}
