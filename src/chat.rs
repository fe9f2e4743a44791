//! The chat model as one thing: SmolLM2's network, its tokenizer and the tokens that end a
//! turn, plus the one way a conversation becomes prompt tokens ([`ChatModel::prompt_ids`]).
//!
//! Generation ([`crate::generate`]), moderation ([`crate::guard`]) and tuning
//! ([`crate::tune::chat`]) all take a [`ChatModel`]; none of them renders the chat template
//! itself, so a change to how prompts are built is made here once.

use crate::backend::read_f32;
use crate::error::{Error, Result};
use crate::models::llama::{KvCache, Llama};
use crate::models::probe::{ChatProbes, StateProbe};
#[cfg(doc)]
use crate::text::chat_template::render;
use crate::text::chat_template::{Message, turns};
use crate::text::{Tokenizer, sentence_done};
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
    /// Judges the answer so far at each sentence end, from the states generation computes
    /// anyway (it reads the layers `probe` reads).
    pub answer_probe: Option<StateProbe>,
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
            answer_probe: None,
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

    /// Installs the probes of a probe file (the request probe, and the answer probe when the
    /// file has one), checked against this model's blocks and width.
    pub fn load_probe(&mut self, bytes: &[u8]) -> Result<()> {
        let c = self.model.config();
        let probes = ChatProbes::load(bytes, c.layers, c.dim)?;
        self.probe = Some(probes.request);
        self.answer_probe = probes.answer;
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

    /// Where the guard judges `answer` (token ids following a prompt) as it streams: the
    /// index of each token after which the text not judged yet ends a sentence
    /// ([`sentence_done`]), and the last token.
    pub fn sentence_ends(&self, answer: &[u32]) -> Result<Vec<usize>> {
        let mut decoder = self.tokenizer.stream_decoder()?;
        let (mut text, mut judged, mut ends) = (String::new(), 0, Vec::new());
        for (i, &t) in answer.iter().enumerate() {
            text.push_str(&decoder.push(t)?);
            if sentence_done(&text[judged..]) {
                ends.push(i);
                judged = text.len();
            }
        }
        if !answer.is_empty() && ends.last() != Some(&(answer.len() - 1)) {
            ends.push(answer.len() - 1);
        }
        Ok(ends)
    }

    /// The states the probes read for `answer` (token ids) following `prompt` (from
    /// [`ChatModel::prompt_ids`]): at the last prompt token (the request probe's), and at each
    /// [`ChatModel::sentence_ends`] entry (the answer probe's), each the output of `layers`
    /// concatenated. One forward pass over both; equal (to rounding) to what prefill and
    /// generation compute token by token.
    pub async fn answer_states(
        &self,
        prompt: &[u32],
        answer: &[u32],
        layers: &[usize],
    ) -> Result<AnswerStates> {
        if prompt.is_empty() {
            return Err(Error::InvalidInput("the prompt is empty".into()));
        }
        let ends = self.sentence_ends(answer)?;
        let ids: Vec<u32> = prompt.iter().chain(answer).copied().collect();
        let (_, states) =
            self.model
                .forward_with_all_states(&ids, &mut self.model.new_cache(), layers)?;
        let dim = self.model.config().dim;
        let mut per_layer = Vec::with_capacity(states.len());
        for s in states {
            per_layer.push(read_f32(s).await?);
        }
        let row = |position: usize| -> Vec<f32> {
            let at = position * dim;
            per_layer
                .iter()
                .flat_map(|l| l[at..at + dim].iter().copied())
                .collect()
        };
        Ok(AnswerStates {
            prompt_end: row(prompt.len() - 1),
            sentence_ends: ends.iter().map(|&e| row(prompt.len() + e)).collect(),
        })
    }
}

/// What [`ChatModel::answer_states`] returns.
pub struct AnswerStates {
    /// At the last prompt token.
    pub prompt_end: Vec<f32>,
    /// At each sentence end of the answer, in order.
    pub sentence_ends: Vec<Vec<f32>>,
}
