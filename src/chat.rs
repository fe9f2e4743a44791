//! The chat model as one thing: SmolLM2's network, its tokenizer and the tokens that end a
//! turn, plus the one way a conversation becomes prompt tokens ([`ChatModel::prompt_ids`]).
//!
//! Generation ([`crate::generate`]), moderation ([`crate::guard`]) and tuning
//! ([`crate::tune::chat`]) all take a [`ChatModel`]; none of them renders the chat template
//! itself, so a change to how prompts are built is made here once.

use crate::backend::read_f32;
use crate::error::{Error, Result};
use crate::models::llama::{KvCache, Llama};
use crate::models::probe::StateProbe;
use crate::text::Tokenizer;
#[cfg(doc)]
use crate::text::chat_template::render;
use crate::text::chat_template::{Message, turns};
use crate::weights::gguf::Gguf;

/// The chat model and what it needs to generate.
pub struct ChatModel {
    /// SmolLM2.
    pub model: Llama,
    /// Its tokenizer.
    pub tokenizer: Tokenizer,
    /// Tokens that end a turn.
    pub end_tokens: Vec<u32>,
    /// Judges prompts from the model's own states (the guard blocks what it flags).
    pub probe: Option<StateProbe>,
}

impl ChatModel {
    /// Builds the chat model from a parsed GGUF on `device`.
    pub fn load(gguf: &Gguf<'_>, device: &burn::tensor::Device) -> Result<Self> {
        let tokenizer = Tokenizer::from_gguf(gguf)?;
        let model = Llama::load(gguf, device)?;
        let end_tokens = ["<|im_end|>", "<|endoftext|>"]
            .iter()
            .filter_map(|t| tokenizer.token_to_id(t))
            .collect();
        Ok(ChatModel {
            model,
            tokenizer,
            end_tokens,
            probe: None,
        })
    }

    /// The prompt for answering `messages`: the chat template (see
    /// [`crate::text::chat_template`]) with the assistant's turn opened, as token ids. Built
    /// turn by turn so that what a message says is only ever text: a `<|im_end|>` or
    /// `<|endoftext|>` typed by a user is encoded as characters, not as the control token
    /// (a forged turn would let a user speak as the system or the assistant). For messages
    /// without such strings the ids equal the tokenised [`render`] output. Invalid
    /// conversations (no messages, unknown roles) are errors.
    pub fn prompt_ids(&self, messages: &[Message]) -> Result<Vec<u32>> {
        let control = |t: &str| {
            self.tokenizer.token_to_id(t).ok_or_else(|| {
                Error::ModelFile(format!("the chat model's vocabulary has no {t} token"))
            })
        };
        let (start, end) = (control("<|im_start|>")?, control("<|im_end|>")?);
        let newline = self.tokenizer.encode("\n")?;
        let mut ids = Vec::new();
        for (role, content) in turns(messages)? {
            ids.push(start);
            ids.extend(
                self.tokenizer
                    .encode_literal(&format!("{role}\n{content}"))?,
            );
            ids.push(end);
            ids.extend_from_slice(&newline);
        }
        ids.push(start);
        ids.extend(self.tokenizer.encode("assistant\n")?);
        Ok(ids)
    }

    /// [`ChatModel::prompt_ids`] for a single user message.
    pub fn user_prompt_ids(&self, prompt: &str) -> Result<Vec<u32>> {
        self.prompt_ids(&[Message::new("user", prompt)])
    }

    /// Installs the harmful-request probe from a probe file's bytes (checked against this
    /// model's blocks and width).
    pub fn load_probe(&mut self, bytes: &[u8]) -> Result<()> {
        let c = self.model.config();
        self.probe = Some(StateProbe::load(bytes, c.layers, c.dim)?);
        Ok(())
    }

    /// The states a probe reads for `prompt` (token ids from [`ChatModel::prompt_ids`]): the
    /// output of each of `layers` at the last prompt token, concatenated.
    pub async fn prompt_states(&self, prompt: &[u32], layers: &[usize]) -> Result<Vec<f32>> {
        self.prompt_states_after(&self.model.new_cache(), prompt, layers)
            .await
    }

    /// [`ChatModel::prompt_states`] for a prompt whose first tokens are already in `prefix`
    /// (a shared system turn, computed once); `rest` are the tokens after them.
    pub async fn prompt_states_after(
        &self,
        prefix: &KvCache,
        rest: &[u32],
        layers: &[usize],
    ) -> Result<Vec<f32>> {
        let mut cache = prefix.clone();
        let (_, states) = self.model.forward_with_states(rest, &mut cache, layers)?;
        let mut out = Vec::with_capacity(layers.len() * self.model.config().dim);
        for s in states {
            out.extend(read_f32(s).await?);
        }
        Ok(out)
    }
}
