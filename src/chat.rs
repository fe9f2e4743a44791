//! The chat model as one thing: SmolLM2's network, its tokenizer and the tokens that end a
//! turn, plus the one way a conversation becomes prompt tokens ([`ChatModel::prompt_ids`]).
//!
//! Generation ([`crate::generate`]), moderation ([`crate::guard`]) and tuning
//! ([`crate::tune::chat`]) all take a [`ChatModel`]; none of them renders the chat template
//! itself, so a change to how prompts are built is made here once.

use crate::backend::read_f32;
use crate::error::{Error, Result};
use crate::models::llama::{Adapters, KvCache, Llama, Positions, probe_features};
use crate::models::lora::{Lora, LoraConfig, LoraFactors, Projection};
use crate::models::probe::{ChatProbes, Pooling, StateProbe};
#[cfg(doc)]
use crate::text::chat_template::render;
use crate::text::chat_template::{DEFAULT_SYSTEM_PROMPT, Message, turns};
use crate::text::{Tokenizer, sentence_done};
use crate::weights::gguf::Gguf;
use crate::weights::safetensors::SafetensorsFile;
use burn::module::Param;

/// The `format` metadata of chat adapter files.
pub const CHAT_ADAPTERS_FORMAT: &str = "webguard-chat-adapters/1";

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
    /// The request probe's score from which the guard answers with the safety adapters
    /// ([`ChatModel::load_safety_adapters`]) instead of the model as it is: below the probe's
    /// threshold (which blocks) and at least this. [`ChatModel::load_probe`] sets it to the
    /// zone stored with the probe (chosen with its threshold on the validation split), or to
    /// the threshold itself (no zone) for a probe file without one; a caller may override it
    /// after loading.
    pub safety_adapters_from: f32,
    /// Most tokens a prompt and its answer take together (see [`ChatModel::context_window`]).
    context_window: usize,
}

/// What [`ChatModel::fit_context`] keeps of a conversation.
#[derive(Debug, Clone, PartialEq)]
pub struct FittedChat {
    /// The messages sent to the model: the system message when the conversation starts with
    /// one, then the latest messages (always from the last user message on).
    pub messages: Vec<Message>,
    /// Their prompt, as [`ChatModel::prompt_ids`] builds it.
    pub ids: Vec<u32>,
    /// How many of the oldest non-system messages were left out (0 when all fit).
    pub dropped: usize,
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
            tokenizer,
            end_tokens,
            probe: None,
            answer_probe: None,
            // No probe, no zone (the guard asks the probe's score first).
            safety_adapters_from: 1.0,
            context_window: model.config().context_length,
            model,
        })
    }

    /// Most tokens a prompt and its answer take together: the model's context length (8,192
    /// for SmolLM2) unless lowered with [`ChatModel::set_context_window`]. Generation stops
    /// there, and [`ChatModel::fit_context`] drops old turns to stay under it.
    pub fn context_window(&self) -> usize {
        self.context_window
    }

    /// Lowers (or restores) the context window: 16 tokens up to the model's context length,
    /// else an error. Memory and prefill time grow with it (a smaller window bounds them
    /// further; tests use one to make long histories cheap).
    pub fn set_context_window(&mut self, tokens: usize) -> Result<()> {
        let most = self.model.config().context_length;
        if !(16..=most).contains(&tokens) {
            return Err(Error::InvalidInput(format!(
                "a context window of {tokens} tokens is outside 16 to {most}"
            )));
        }
        self.context_window = tokens;
        Ok(())
    }

    /// The prompt for answering `messages`: the chat template (see
    /// [`crate::text::chat_template`]) with the assistant's turn opened, as token ids. Built
    /// turn by turn so that what a message says is only ever text: a `<|im_end|>` or
    /// `<|endoftext|>` typed by a user is encoded as characters, not as the control token
    /// (a forged turn would let a user speak as the system or the assistant). For messages
    /// without such strings the ids equal the tokenised [`render`] output. Invalid
    /// conversations (no messages, unknown roles) are errors.
    pub fn prompt_ids(&self, messages: &[Message]) -> Result<Vec<u32>> {
        let turns = self.turn_ids(messages)?;
        let mut ids: Vec<u32> = turns.into_iter().flatten().collect();
        ids.extend(self.generation_prefix()?);
        Ok(ids)
    }

    /// The ids of each turn of `messages` (the default system prompt first when there is no
    /// system message): `<|im_start|>`, the role and text as literal text, `<|im_end|>`, a
    /// newline.
    fn turn_ids(&self, messages: &[Message]) -> Result<Vec<Vec<u32>>> {
        let (start, end) = (self.control("<|im_start|>")?, self.control("<|im_end|>")?);
        let newline = self.tokenizer.encode("\n")?;
        turns(messages)?
            .into_iter()
            .map(|(role, content)| {
                let mut ids = vec![start];
                ids.extend(
                    self.tokenizer
                        .encode_literal(&format!("{role}\n{content}"))?,
                );
                ids.push(end);
                ids.extend_from_slice(&newline);
                Ok(ids)
            })
            .collect()
    }

    /// Where the request probe ([`ChatModel::probe`]) reads the prompt of `messages`
    /// ([`ChatModel::probe_positions`] with its pooling; the last token without a probe).
    pub fn request_probe_positions(&self, messages: &[Message]) -> Result<Positions> {
        let pooling = self
            .probe
            .as_ref()
            .map_or(Pooling::LastToken, |p| p.pooling);
        self.probe_positions(pooling, messages)
    }

    /// Where a request probe with `pooling` reads the prompt of `messages`
    /// ([`ChatModel::prompt_ids`]): at its last token, or, for [`Pooling::UserMessage`],
    /// averaged over the last user message's text (the positions after its role line and
    /// before `<|im_end|>`; at least one), or, for [`Pooling::Both`], at both. Errors as
    /// `prompt_ids` does, and for a pooling probe without a user message.
    pub fn probe_positions(&self, pooling: Pooling, messages: &[Message]) -> Result<Positions> {
        if pooling == Pooling::LastToken {
            return Ok(Positions::Last);
        }
        let roles = turns(messages)?;
        let ids = self.turn_ids(messages)?;
        let k = (roles.iter().rposition(|(role, _)| *role == "user"))
            .ok_or_else(|| Error::InvalidInput("no user message for the probe to read".into()))?;
        let start: usize = ids[..k].iter().map(Vec::len).sum();
        // The turn is `<|im_start|>`, the role line and text, `<|im_end|>`, a newline.
        let end = start + ids[k].len() - 1 - self.tokenizer.encode("\n")?.len();
        let role_line = self.tokenizer.encode_literal("user\n")?.len();
        let text = (start + 1 + role_line).min(end - 1)..end;
        Ok(match pooling {
            Pooling::Both => Positions::LastAndMean(text),
            _ => Positions::Mean(text),
        })
    }

    /// What opens the assistant's turn after the conversation.
    fn generation_prefix(&self) -> Result<Vec<u32>> {
        let mut ids = vec![self.control("<|im_start|>")?];
        ids.extend(self.tokenizer.encode("assistant\n")?);
        Ok(ids)
    }

    fn control(&self, token: &str) -> Result<u32> {
        self.tokenizer.token_to_id(token).ok_or_else(|| {
            Error::ModelFile(format!("the chat model's vocabulary has no {token} token"))
        })
    }

    /// The context policy for long chats: the part of `messages` that is sent to the model so
    /// that its prompt leaves room for the answer within [`ChatModel::context_window`].
    ///
    /// - Room is kept for `max_new_tokens` answer tokens, but at most half the window (so a
    ///   large `maxTokens` does not squeeze the conversation out; the answer then ends at the
    ///   window).
    /// - When the whole conversation does not fit, the oldest messages after the system
    ///   message are dropped, one at a time, until it does; assistant messages that would
    ///   then open the history are dropped too, so it starts with a user turn. The system
    ///   message (or the default system prompt) and everything from the last user message on
    ///   are always kept.
    /// - When even those do not fit, the answer is an [`Error::InvalidInput`] naming the sizes.
    ///
    /// Invalid conversations are errors as for [`ChatModel::prompt_ids`]; so is one without a
    /// user message. Each message is tokenized once.
    pub fn fit_context(&self, messages: &[Message], max_new_tokens: usize) -> Result<FittedChat> {
        let last_user = messages
            .iter()
            .rposition(|m| m.role == "user")
            .ok_or_else(|| Error::InvalidInput("there is no user message to answer".into()))?;
        let turns = self.turn_ids(messages)?;
        let prefix = self.generation_prefix()?;
        // `turns` has the default system prompt first when `messages` has no system message.
        let has_system = messages[0].role == "system";
        let shift = usize::from(!has_system);
        let first_droppable = usize::from(has_system);
        let cost = |m: usize| turns[m + shift].len();
        let room = max_new_tokens.min(self.context_window / 2);
        let budget = self.context_window - room;
        let kept_always = turns[0].len() * usize::from(!has_system)
            + (0..first_droppable)
                .chain(last_user..messages.len())
                .map(cost)
                .sum::<usize>()
            + prefix.len();
        if kept_always > budget {
            let after = messages.len() - 1 - last_user;
            return Err(Error::InvalidInput(format!(
                "the last user message does not fit the context: with the system prompt{} it \
                 takes {kept_always} prompt tokens, and the context window of {} tokens leaves \
                 {budget} after keeping {room} for the answer (maxTokens, at most half the \
                 window); shorten the message or lower maxTokens",
                if after > 0 {
                    format!(" and the {after} message(s) after it")
                } else {
                    String::new()
                },
                self.context_window
            )));
        }
        let mut total = kept_always + (first_droppable..last_user).map(cost).sum::<usize>();
        let mut cut = first_droppable;
        while total > budget && cut < last_user {
            total -= cost(cut);
            cut += 1;
        }
        if cut > first_droppable {
            while cut < last_user && messages[cut].role == "assistant" {
                total -= cost(cut);
                cut += 1;
            }
        }
        let kept: Vec<usize> = (0..first_droppable).chain(cut..messages.len()).collect();
        let mut ids = Vec::with_capacity(total);
        if !has_system {
            ids.extend_from_slice(&turns[0]);
        }
        for &m in &kept {
            ids.extend_from_slice(&turns[m + shift]);
        }
        ids.extend(prefix);
        debug_assert_eq!(ids.len(), total);
        Ok(FittedChat {
            messages: kept.iter().map(|&m| messages[m].clone()).collect(),
            ids,
            dropped: cut - first_droppable,
        })
    }

    /// [`ChatModel::prompt_ids`] for a single user message.
    pub fn user_prompt_ids(&self, prompt: &str) -> Result<Vec<u32>> {
        self.prompt_ids(&[Message::new("user", prompt)])
    }

    /// Installs the probes of a probe file (the request probe, and the answer probe when the
    /// file has one), checked against this model's blocks and width, and the safety adapters'
    /// zone stored with them ([`ChatModel::safety_adapters_from`]).
    pub fn load_probe(&mut self, bytes: &[u8]) -> Result<()> {
        let c = self.model.config();
        let probes = ChatProbes::load(bytes, c.layers, c.dim)?;
        if let Some(first) = self.model.safety_adapters().map(|a| a.config.first_block)
            && let Some(&l) = probes.request.layers.iter().max()
            && l >= first
        {
            return Err(Error::InvalidInput(format!(
                "this probe reads block {l}, which the safety adapters (from block {first} on) \
                 change"
            )));
        }
        self.safety_adapters_from = probes
            .request
            .safety_adapters_from
            .unwrap_or(probes.request.threshold);
        self.probe = Some(probes.request);
        self.answer_probe = probes.answer;
        Ok(())
    }

    /// Reads an adapters file (`ChatModel::export_adapters` writes them) made for this model.
    /// Other models' adapters, wrong shapes and other files are errors.
    pub async fn read_adapters(&self, bytes: &[u8]) -> Result<Adapters> {
        let file = SafetensorsFile::parse(bytes)?;
        let get = |key: &str| file.required_metadata(key, "webguard chat adapters");
        file.expect_format(CHAT_ADAPTERS_FORMAT, "webguard chat adapters")?;
        let signature = self.model_signature().await?;
        if get("model")? != signature {
            return Err(Error::InvalidInput(format!(
                "these adapters were made for another model ({}); this one is {signature}",
                get("model")?
            )));
        }
        let config = LoraConfig {
            rank: get("rank")?
                .parse()
                .map_err(|_| Error::Safetensors("chat adapters: rank is not a number".into()))?,
            alpha: get("alpha")?
                .parse()
                .map_err(|_| Error::Safetensors("chat adapters: alpha is not a number".into()))?,
            targets: get("targets")?
                .split(',')
                .map(str::parse::<Projection>)
                .collect::<Result<_>>()?,
            // Files written before adapters could start later adapt every block.
            first_block: match file.metadata().get("first_block") {
                Some(v) => v.parse().map_err(|_| {
                    Error::Safetensors("chat adapters: first_block is not a number".into())
                })?,
                None => 0,
            },
        };
        config.validate()?;
        self.model.check_lora_blocks(&config)?;
        let device = self.model.device().clone();
        let shapes = self.model.lora_shapes(&config);
        let mut factors = Vec::with_capacity(shapes.len());
        for (i, &[out, d_in]) in shapes.iter().enumerate() {
            let (layer, p) = config.factor_place(i);
            factors.push(LoraFactors {
                a: Param::from_tensor(file.tensor::<2>(
                    &format!("blk.{layer}.{p}.lora_a"),
                    [d_in, config.rank],
                    &device,
                )?),
                b: Param::from_tensor(file.tensor::<2>(
                    &format!("blk.{layer}.{p}.lora_b"),
                    [config.rank, out],
                    &device,
                )?),
            });
        }
        Ok(Adapters {
            config,
            lora: Lora { factors },
        })
    }

    /// Identifies the base model: its shape and a fingerprint (FNV-1a) of its final norm.
    pub async fn model_signature(&self) -> Result<String> {
        let c = self.model.config();
        let mut hash = 0xcbf2_9ce4_8422_2325u64;
        for v in read_f32(self.model.output_norm()).await? {
            for b in v.to_le_bytes() {
                hash = (hash ^ u64::from(b)).wrapping_mul(0x0100_0000_01b3);
            }
        }
        Ok(format!(
            "llama layers={} dim={} vocab={} norm={hash:016x}",
            c.layers, c.dim, c.vocab_size
        ))
    }

    /// Keeps safety adapters (an adapters file, see [`ChatModel::read_adapters`]) that the
    /// guard runs an answer with when the request probe's score is close to its threshold
    /// (`crate::guard::Policy::second_line_from`). They must start after every block the
    /// loaded probes read, so the probes judge the same states with or without them.
    pub async fn load_safety_adapters(&mut self, bytes: &[u8]) -> Result<()> {
        let adapters = self.read_adapters(bytes).await?;
        self.check_probe_layers_unadapted(adapters.config.first_block)?;
        self.model.set_safety_adapters(Some(adapters))
    }

    /// Drops the safety adapters.
    pub fn reset_safety_adapters(&mut self) {
        // `None` always fits.
        let _ = self.model.set_safety_adapters(None);
    }

    /// Errors when a loaded probe reads a block at or after `first_block`.
    fn check_probe_layers_unadapted(&self, first_block: usize) -> Result<()> {
        let read = self.probe.iter().chain(&self.answer_probe);
        match read.flat_map(|p| &p.layers).max() {
            Some(&l) if l >= first_block => Err(Error::InvalidInput(format!(
                "safety adapters from block {first_block} on would change block {l}, which the \
                 chat probe reads; they must start after it"
            ))),
            _ => Ok(()),
        }
    }

    /// The states a probe reads for `prompt` (token ids from [`ChatModel::prompt_ids`]): the
    /// output of each of `layers` at `positions` of the prompt (one row: the last token, or a
    /// mean), concatenated. A prompt that starts with the default system turn continues from
    /// that turn's keys and values, which the model computes once and keeps
    /// ([`Llama::kept_prefix`]). Adapters a page tuned or imported that change one of `layers`
    /// are left out ([`ChatModel::judging_cache`]).
    pub async fn prompt_states(
        &self,
        prompt: &[u32],
        layers: &[usize],
        positions: Positions,
    ) -> Result<Vec<f32>> {
        if self.adapters_change(layers) {
            let cache = self.model.new_base_cache();
            return self
                .prompt_states_after(&cache, prompt, layers, positions)
                .await;
        }
        let system = self.default_system_turn()?;
        match (
            prompt.strip_prefix(&system[..]),
            positions.after(system.len()),
        ) {
            (Some(rest), Some(after)) if !rest.is_empty() => {
                let prefix = self.model.kept_prefix(&system)?;
                self.prompt_states_after(&prefix, rest, layers, after).await
            }
            _ => {
                let cache = self.model.new_cache();
                (self.prompt_states_after(&cache, prompt, layers, positions)).await
            }
        }
    }

    /// Whether the installed adapters (a page's tuning or import) change the output of one of
    /// `layers`. The probes were fitted on the model as loaded: read through such adapters,
    /// a few tuning pairs moved a harmful request's score from 0.99 to 0.35 (twenty-ninth
    /// session's review), so the probes' states are then computed without them.
    pub(crate) fn adapters_change(&self, layers: &[usize]) -> bool {
        let first = self.model.adapters().map(|a| a.config.first_block);
        first.is_some_and(|first| layers.iter().any(|&l| l >= first))
    }

    /// A cache for a sequence whose `layers` a probe reads: the installed adapters' unless
    /// they change one of `layers` ([`ChatModel::adapters_change`]), then the model as loaded.
    fn judging_cache(&self, layers: &[usize]) -> KvCache {
        if self.adapters_change(layers) {
            self.model.new_base_cache()
        } else {
            self.model.new_cache()
        }
    }

    /// The ids of the default system turn, which starts every prompt without a system message.
    fn default_system_turn(&self) -> Result<Vec<u32>> {
        let system = Message::new("system", DEFAULT_SYSTEM_PROMPT);
        Ok(self.turn_ids(&[system])?.concat())
    }

    /// [`ChatModel::prompt_states`] for a prompt whose first tokens are already in `prefix`
    /// (a shared system turn, computed once); `rest` are the tokens after them, and
    /// `positions` count from the first of them.
    pub async fn prompt_states_after(
        &self,
        prefix: &KvCache,
        rest: &[u32],
        layers: &[usize],
        positions: Positions,
    ) -> Result<Vec<f32>> {
        positions.check_for_probe(rest.len())?;
        let states = self.model.states_after(prefix, rest, layers, positions)?;
        let mut per_block = Vec::with_capacity(states.len());
        for s in states {
            per_block.push(read_f32(s).await?);
        }
        Ok(probe_features(&per_block, self.model.config().dim))
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
    /// [`ChatModel::prompt_ids`]): at `request` positions of the prompt (the request probe's,
    /// [`ChatModel::probe_positions`]), and at each [`ChatModel::sentence_ends`] entry (the
    /// answer probe's), each the output of `layers` concatenated. One forward pass over both;
    /// equal (to rounding) to what prefill and generation compute token by token.
    pub async fn answer_states(
        &self,
        prompt: &[u32],
        answer: &[u32],
        layers: &[usize],
        request: Positions,
    ) -> Result<AnswerStates> {
        if prompt.is_empty() {
            return Err(Error::InvalidInput("the prompt is empty".into()));
        }
        request.check_for_probe(prompt.len())?;
        let ends = self.sentence_ends(answer)?;
        let ids: Vec<u32> = prompt.iter().chain(answer).copied().collect();
        // On a GPU: the engine, one step per sentence (its states are kept at a step's last
        // position), so burn's f32 copy of the weights is not made.
        if let Ok(engine) = self.model.gpu_engine()
            && ids.len() <= engine.max_positions()
        {
            let mut seq = engine.prefill_tapped(layers, prompt, &request)?;
            let prompt_end = engine.states(&seq).await?;
            let mut sentence_ends = Vec::with_capacity(ends.len());
            let mut from = 0;
            for &end in &ends {
                engine.step(&mut seq, &answer[from..=end])?;
                sentence_ends.push(engine.states(&seq).await?);
                from = end + 1;
            }
            return Ok(AnswerStates {
                prompt_end,
                sentence_ends,
            });
        }
        let (_, states) =
            self.model
                .forward_with_all_states(&ids, &mut self.judging_cache(layers), layers)?;
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
        let in_prompt: Vec<Vec<f32>> = (per_layer.iter())
            .map(|l| request.keep(&l[..prompt.len() * dim], dim).1)
            .collect();
        let prompt_end = probe_features(&in_prompt, dim);
        Ok(AnswerStates {
            prompt_end,
            sentence_ends: ends.iter().map(|&e| row(prompt.len() + e)).collect(),
        })
    }
}

/// What [`ChatModel::answer_states`] returns.
pub struct AnswerStates {
    /// At the request's positions (the last prompt token's, or a mean).
    pub prompt_end: Vec<f32>,
    /// At each sentence end of the answer, in order.
    pub sentence_ends: Vec<Vec<f32>>,
}
