//! Text generation with the chat model: prefill the prompt once, then one position per new
//! token through the KV cache; greedy or sampled (temperature, top-k, top-p, repetition
//! penalty, seeded); stops on the end-of-turn tokens, caller stop strings or the token budget;
//! streams valid UTF-8 pieces to a callback that can cancel.

use burn::tensor::Tensor;

use crate::backend::read_f32;
use crate::chat::ChatModel;
use crate::error::{Error, Result};
use crate::models::gpu::{Candidates, MAX_TOP_CANDIDATES, Sequence};
use crate::models::llama::{KvCache, Llama, Positions, probe_features};
use crate::rng::Rng;
use crate::text::tokenizer::StreamDecoder;

/// How to generate. In JS these are `Chat.generate`'s and `guard.chat`'s options (camelCase;
/// `maxTokens` for `max_new_tokens`); absent fields take [`Default`]'s values.
#[derive(Debug, Clone, PartialEq, serde::Serialize, serde::Deserialize)]
#[serde(rename_all = "camelCase", deny_unknown_fields, default)]
pub struct GenerateOptions {
    /// Most tokens to generate.
    #[serde(rename = "maxTokens")]
    pub max_new_tokens: usize,
    /// 0 for greedy decoding; otherwise logits are divided by it before sampling.
    pub temperature: f32,
    /// Sample among the `top_k` most likely tokens (0: no limit).
    pub top_k: usize,
    /// Sample among the most likely tokens whose probabilities add up to `top_p` (1: no limit).
    pub top_p: f32,
    /// > 1 makes tokens already in the prompt or the answer less likely (llama.cpp's rule).
    pub repetition_penalty: f32,
    /// Seeds sampling.
    pub seed: u64,
    /// Generation ends before any of these strings (they are not part of the answer).
    pub stop: Vec<String>,
}

impl Default for GenerateOptions {
    fn default() -> Self {
        GenerateOptions {
            max_new_tokens: 256,
            temperature: 0.0,
            top_k: 0,
            top_p: 1.0,
            repetition_penalty: 1.0,
            seed: 0,
            stop: Vec::new(),
        }
    }
}

impl GenerateOptions {
    /// Checks every value is in range.
    pub fn validate(&self) -> Result<()> {
        let bad = |what: String| Err(Error::InvalidInput(what));
        if self.max_new_tokens == 0 {
            return bad("max_new_tokens must be at least 1".into());
        }
        if !(self.temperature.is_finite() && self.temperature >= 0.0 && self.temperature <= 10.0) {
            return bad(format!(
                "temperature {} is outside 0 to 10",
                self.temperature
            ));
        }
        if !(self.top_p > 0.0 && self.top_p <= 1.0) {
            return bad(format!("top_p {} is outside (0, 1]", self.top_p));
        }
        if !(self.repetition_penalty.is_finite()
            && self.repetition_penalty >= 1.0
            && self.repetition_penalty <= 10.0)
        {
            return bad(format!(
                "repetition_penalty {} is outside 1 to 10",
                self.repetition_penalty
            ));
        }
        if self.stop.iter().any(String::is_empty) {
            return bad("stop strings must not be empty".into());
        }
        Ok(())
    }
}

/// Why generation ended.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum StopReason {
    /// An end-of-turn token.
    EndOfTurn,
    /// One of the caller's stop strings.
    StopString(String),
    /// `max_new_tokens` reached.
    MaxTokens,
    /// The callback asked to stop.
    Cancelled,
}

impl StopReason {
    /// The name replies report (`stopReason` in JS): `"endOfTurn"`, `"stop:<the string>"`,
    /// `"maxTokens"` or `"cancelled"`.
    pub fn name(&self) -> String {
        match self {
            StopReason::EndOfTurn => "endOfTurn".into(),
            StopReason::StopString(s) => format!("stop:{s}"),
            StopReason::MaxTokens => "maxTokens".into(),
            StopReason::Cancelled => "cancelled".into(),
        }
    }
}

/// What was generated.
#[derive(Debug, Clone, PartialEq)]
pub struct Generation {
    /// The answer's text (without a stop string).
    pub text: String,
    /// Generated token ids (end-of-turn token excluded).
    pub tokens: Vec<u32>,
    /// Why it ended.
    pub stop_reason: StopReason,
    /// Prompt length in tokens.
    pub prompt_tokens: usize,
}

/// Picks the next token from `logits` (changed in place by the penalty).
fn pick(logits: &mut [f32], history: &[u32], o: &GenerateOptions, rng: &mut Rng) -> u32 {
    if o.repetition_penalty > 1.0 {
        for &t in history {
            if let Some(l) = logits.get_mut(t as usize) {
                *l = if *l > 0.0 {
                    *l / o.repetition_penalty
                } else {
                    *l * o.repetition_penalty
                };
            }
        }
    }
    let argmax = || {
        logits
            .iter()
            .enumerate()
            .max_by(|a, b| a.1.total_cmp(b.1))
            .map_or(0, |(i, _)| i as u32)
    };
    if o.temperature == 0.0 {
        return argmax();
    }
    let mut order: Vec<u32> = (0..logits.len() as u32).collect();
    order.sort_unstable_by(|&a, &b| logits[b as usize].total_cmp(&logits[a as usize]));
    if o.top_k > 0 {
        order.truncate(o.top_k);
    }
    let ranked: Vec<f32> = order.iter().map(|&i| logits[i as usize]).collect();
    draw_ranked(&order, &ranked, o, None, rng).unwrap_or_else(argmax)
}

/// The seeded draw [`pick`] and [`pick_from_candidates`] share, so that the two draw alike by
/// construction: over a pool ranked best first (`ids`, with their `logits`), the
/// probabilities at the temperature divided by `normaliser` (the whole vocabulary's, from the
/// GPU) or else by the pool's own sum, cut to the nucleus `top_p`, then one draw from what is
/// left. `None` for an empty pool, or when a nucleus measured against `normaliser` does not
/// close within the pool (the rest of the row is needed); against the pool's own sum it
/// always closes, up to rounding, and then the whole pool is kept.
fn draw_ranked(
    ids: &[u32],
    logits: &[f32],
    o: &GenerateOptions,
    normaliser: Option<f64>,
    rng: &mut Rng,
) -> Option<u32> {
    let max = *logits.first()?;
    let mut probs: Vec<f64> = logits
        .iter()
        .map(|&l| (((l - max) / o.temperature) as f64).exp())
        .collect();
    let total = normaliser.unwrap_or_else(|| probs.iter().sum());
    probs.iter_mut().for_each(|p| *p /= total);
    if o.top_p < 1.0 {
        let mut acc = 0.0;
        match probs.iter().position(|p| {
            acc += p;
            acc >= o.top_p as f64
        }) {
            Some(i) => probs.truncate(i + 1),
            None if normaliser.is_some() => return None,
            None => {}
        }
    }
    let total: f64 = probs.iter().sum();
    let mut r = rng.next_f64() * total;
    for (p, &i) in probs.iter().zip(ids) {
        r -= p;
        if r <= 0.0 {
            return Some(i);
        }
    }
    ids.get(probs.len() - 1).copied()
}

/// [`pick`] from the GPU's most likely tokens ([`crate::models::gpu::Engine::top_candidates`])
/// instead of the whole row, for options without a repetition penalty and with a temperature:
/// the same draw whenever those tokens are all the options need. With a top-k of at most the
/// candidates' count the pool is exactly theirs (bit for bit `pick`'s arithmetic); with a
/// top-p alone, the nucleus is judged against the GPU's normaliser over the whole vocabulary
/// (f32, where `pick` sums in f64: a draw can differ only when the nucleus's edge falls within
/// that rounding). `None`, with nothing drawn, when the nucleus is wider than the candidates or
/// the whole vocabulary is the pool: the caller reads the row back and calls `pick`.
fn pick_from_candidates(c: &Candidates, o: &GenerateOptions, rng: &mut Rng) -> Option<u32> {
    if o.top_k > c.ids.len() || (o.top_k == 0 && o.top_p >= 1.0) {
        return None;
    }
    // With a top-k the pool is those k, normalised by their own sum as `pick` does; with a
    // top-p alone, the candidates judged against the whole vocabulary's normaliser.
    let (pool, normaliser) = match o.top_k {
        0 => (c.ids.len(), Some(f64::from(c.normaliser))),
        k => (k, None),
    };
    draw_ranked(
        c.ids.get(..pool)?,
        c.logits.get(..pool)?,
        o,
        normaliser,
        rng,
    )
}

/// Length of the longest suffix of `text` that is a proper prefix of a stop string: that much
/// is held back from the stream until it is known not to start a stop string.
fn held_back(text: &str, stop: &[String]) -> usize {
    let mut keep = 0;
    for s in stop {
        for (i, _) in s.char_indices().skip(1) {
            if text.ends_with(&s[..i]) {
                keep = keep.max(i);
            }
        }
    }
    keep
}

/// Generation one piece at a time, for callers that act between pieces (the moderation in
/// [`crate::guard`] screens the text before showing it). [`generate`] is the simple loop.
pub struct Generator<'a> {
    model: &'a Llama,
    options: &'a GenerateOptions,
    end_tokens: &'a [u32],
    cache: KvCache,
    decoder: StreamDecoder<'a>,
    rng: Rng,
    /// Prompt and generated ids (the repetition penalty's history).
    history: Vec<u32>,
    tokens: Vec<u32>,
    text: String,
    /// Bytes of `text` handed out so far.
    emitted: usize,
    /// Logits for the next pick, or the token whose forward pass is due first.
    next_input: NextInput,
    remaining: usize,
    reason: Option<StopReason>,
    prompt_tokens: usize,
    /// Blocks whose states [`Generator::latest_states`] returns.
    layers: Vec<usize>,
    /// Their states from burn's path (set whenever `layers` is not empty: at the prefill's
    /// positions, then at each token fed); the engine keeps its own.
    last_states: Vec<Tensor<2>>,
    /// On a GPU without LoRA adapters (burn's path adds those): the sequence in the quantised
    /// engine ([`crate::models::gpu`]), which then holds the cache, the logits and the states
    /// of `layers` instead, so burn's f32 copy of the weights is never made for generation.
    gpu: Option<Sequence>,
    /// Where the installed adapters (a page's tuning) change one of `layers`: a second
    /// sequence of the same tokens through the model as loaded, whose states `last_states`
    /// are, since the probes were fitted on those (tuned adapters read through moved a harmful
    /// request's score from 0.99 to 0.35). Tokens wait in `judging_due` until states are
    /// asked for (at a sentence end), then run as one short prefill, which reads the weights
    /// once for them all rather than once a token.
    judging: Option<KvCache>,
    /// Tokens fed to `cache` and not yet to `judging`.
    judging_due: Vec<u32>,
}

enum NextInput {
    /// Burn's path: the logits for the next pick. Boxed: a tensor handle is several hundred
    /// bytes.
    Logits(Box<Tensor<2>>),
    /// The token whose forward pass is due first.
    Token(u32),
    /// The engine's sequence holds the logits for the next pick.
    OnGpu,
}

impl<'a> Generator<'a> {
    /// Checks the options and runs the prompt (token ids, e.g. a rendered chat) through the
    /// model. `end_tokens` end the turn (for SmolLM2: `<|im_end|>` and `<|endoftext|>`).
    pub fn new(chat: &'a ChatModel, prompt: &[u32], options: &'a GenerateOptions) -> Result<Self> {
        Self::with_states(chat, prompt, options, &[], Positions::Last)
    }

    /// [`Generator::new`], also keeping the residual stream after each block in `layers` (what
    /// the chat model's probes read): right away, [`Generator::latest_states`] gives them at
    /// `positions` of the prompt (the last token, or a mean over a message), from the same
    /// prefill; after each token, at that token. On a GPU the engine keeps them (a 14 KB
    /// read-back for 6 blocks).
    pub fn with_states(
        chat: &'a ChatModel,
        prompt: &[u32],
        options: &'a GenerateOptions,
        layers: &[usize],
        positions: Positions,
    ) -> Result<Self> {
        Self::start(chat, prompt, options, layers, positions, false)
    }

    /// [`Generator::with_states`] running the chat model's safety adapters
    /// ([`ChatModel::load_safety_adapters`]) instead of the installed adapters: the guard's
    /// second line for requests its probe scored close to the threshold. They take burn's
    /// path (the GPU engine applies no adapters; the guard uses them only where the engine
    /// does not run). Errors when the model has none.
    pub fn with_safety_adapters(
        chat: &'a ChatModel,
        prompt: &[u32],
        options: &'a GenerateOptions,
        layers: &[usize],
        positions: Positions,
    ) -> Result<Self> {
        Self::start(chat, prompt, options, layers, positions, true)
    }

    fn start(
        chat: &'a ChatModel,
        prompt: &[u32],
        options: &'a GenerateOptions,
        layers: &[usize],
        positions: Positions,
        safety: bool,
    ) -> Result<Self> {
        let (model, tokenizer, end_tokens) = (&chat.model, &chat.tokenizer, &chat.end_tokens[..]);
        options.validate()?;
        if prompt.is_empty() {
            return Err(Error::InvalidInput("the prompt is empty".into()));
        }
        positions.check_for_probe(prompt.len())?;
        let window = chat.context_window();
        let room = window.saturating_sub(prompt.len());
        if room == 0 {
            return Err(Error::InvalidInput(format!(
                "the prompt has {} tokens; the context window is {window}",
                prompt.len(),
            )));
        }
        let mut cache = if safety {
            model.new_safety_cache()?
        } else {
            model.new_cache()
        };
        let remaining = options.max_new_tokens.min(room);
        // The engine's cache holds `max_positions` (2,048); a longer turn takes burn's path.
        let engine = model
            .gpu_engine()
            .ok()
            .filter(|e| !safety && prompt.len() + remaining <= e.max_positions());
        // (The safety adapters start after every block a probe reads: checked when loaded.)
        let mut judging = (!safety && chat.adapters_change(layers)).then(|| model.new_base_cache());
        let (next_input, last_states, gpu) = match (engine, judging.as_mut()) {
            (Some(engine), _) => {
                let seq = engine.prefill_tapped(layers, prompt, &positions)?;
                (NextInput::OnGpu, Vec::new(), Some(seq))
            }
            (None, Some(base)) => {
                let (logits, _) =
                    model.forward_with_states_at(prompt, &mut cache, &[], Positions::Last)?;
                let (_, states) = model.forward_with_states_at(prompt, base, layers, positions)?;
                (NextInput::Logits(Box::new(logits)), states, None)
            }
            (None, None) => {
                let (logits, states) =
                    model.forward_with_states_at(prompt, &mut cache, layers, positions)?;
                (NextInput::Logits(Box::new(logits)), states, None)
            }
        };
        Ok(Generator {
            gpu,
            judging,
            judging_due: Vec::new(),
            layers: layers.to_vec(),
            last_states,
            model,
            options,
            end_tokens,
            cache,
            decoder: tokenizer.stream_decoder()?,
            rng: Rng::new(options.seed),
            history: prompt.to_vec(),
            tokens: Vec::new(),
            text: String::new(),
            emitted: 0,
            next_input,
            remaining,
            reason: None,
            prompt_tokens: prompt.len(),
        })
    }

    /// The next piece of text (valid UTF-8; empty while text is held back because it may
    /// start a stop string), or `None` once generation has ended.
    pub async fn next_piece(&mut self) -> Result<Option<String>> {
        if self.reason.is_some() {
            return Ok(None);
        }
        if self.remaining == 0 {
            return Ok(self.end(StopReason::MaxTokens));
        }
        if let NextInput::Token(t) = self.next_input {
            self.feed(t)?;
        }
        let input = std::mem::replace(&mut self.next_input, NextInput::OnGpu);
        let next = match (self.gpu.as_mut(), &input) {
            (Some(seq), _) => {
                let engine = self.model.gpu_engine().map_err(Error::Backend)?;
                let o = self.options;
                if o.temperature == 0.0 && o.repetition_penalty <= 1.0 {
                    // Greedy: picked on the GPU, 8 bytes read back.
                    engine.argmax(seq).await?.0
                } else {
                    // Sampling: the most likely tokens come back (516 bytes) when they are
                    // all the options need, otherwise the whole row (196 KB).
                    let narrow = o.repetition_penalty <= 1.0
                        && o.top_k <= MAX_TOP_CANDIDATES
                        && (o.top_k > 0 || o.top_p < 1.0);
                    let picked = if narrow {
                        let k = if o.top_k > 0 {
                            o.top_k
                        } else {
                            MAX_TOP_CANDIDATES
                        };
                        let c = engine.top_candidates(seq, k, o.temperature).await?;
                        pick_from_candidates(&c, o, &mut self.rng)
                    } else {
                        None
                    };
                    match picked {
                        Some(t) => t,
                        None => {
                            let mut values = self.logits_row(&input).await?;
                            pick(&mut values, &self.history, o, &mut self.rng)
                        }
                    }
                }
            }
            (None, input) => {
                let mut values = self.logits_row(input).await?;
                pick(&mut values, &self.history, self.options, &mut self.rng)
            }
        };
        if self.end_tokens.contains(&next) {
            return Ok(self.end(StopReason::EndOfTurn));
        }
        self.remaining -= 1;
        self.tokens.push(next);
        self.history.push(next);
        self.next_input = NextInput::Token(next);
        self.text.push_str(&self.decoder.push(next)?);
        let stop = &self.options.stop;
        if let Some((at, s)) = stop
            .iter()
            .filter_map(|s| self.text.find(s.as_str()).map(|at| (at, s)))
            .min_by_key(|(at, _)| *at)
        {
            self.text.truncate(at);
            let piece = self.text[self.emitted.min(at)..].to_string();
            self.emitted = self.text.len();
            self.reason = Some(StopReason::StopString(s.clone()));
            return Ok(Some(piece));
        }
        let safe = self.text.len() - held_back(&self.text, stop);
        let piece = self.text[self.emitted.min(safe)..safe].to_string();
        self.emitted = self.emitted.max(safe);
        Ok(Some(piece))
    }

    /// The logits for the next pick, all `vocab_size` of them, without picking: after the
    /// prompt, or after the last token picked (run through the model now rather than at the
    /// next pick, so it costs nothing extra). On the GPU engine this reads the whole row back
    /// (196 KB), which greedy picks avoid.
    pub async fn next_logits(&mut self) -> Result<Vec<f32>> {
        if self.reason.is_some() {
            return Err(Error::InvalidInput(
                "generation has ended: there is no next pick".into(),
            ));
        }
        if let NextInput::Token(t) = self.next_input {
            self.feed(t)?;
        }
        self.logits_row(&self.next_input).await
    }

    /// The whole logits row for the next pick, read back from where it is: the engine's
    /// sequence, or burn's tensor in `input` (the one place either is turned into the row).
    async fn logits_row(&self, input: &NextInput) -> Result<Vec<f32>> {
        match (&self.gpu, input) {
            (Some(seq), _) => {
                let engine = self.model.gpu_engine().map_err(Error::Backend)?;
                engine.logits(seq).await
            }
            (None, NextInput::Logits(logits)) => {
                let vocab = self.model.config().vocab_size;
                read_f32((**logits).clone().reshape([vocab])).await
            }
            (None, _) => Err(Error::Backend(
                "generation lost its logits (burn's path without a forward pass)".into(),
            )),
        }
    }

    /// Runs token `t` through the model: the logits for the next pick (and the states of `t`)
    /// are then ready, in the engine's sequence or in `next_input`.
    fn feed(&mut self, t: u32) -> Result<()> {
        match self.gpu.as_mut() {
            Some(seq) => {
                let engine = self.model.gpu_engine().map_err(Error::Backend)?;
                // A greedy pick is still on the GPU: run it from there (nothing uploaded).
                if seq.picked() == Some(t) {
                    engine.step_picked(seq)?;
                } else {
                    engine.step(seq, &[t])?;
                }
                self.next_input = NextInput::OnGpu;
            }
            None if self.judging.is_some() => {
                let (logits, _) = self.model.forward_with_states(&[t], &mut self.cache, &[])?;
                self.judging_due.push(t);
                self.next_input = NextInput::Logits(Box::new(logits));
            }
            None => {
                let (logits, states) =
                    self.model
                        .forward_with_states(&[t], &mut self.cache, &self.layers)?;
                self.last_states = states;
                self.next_input = NextInput::Logits(Box::new(logits));
            }
        }
        Ok(())
    }

    /// The states (after the blocks given to [`Generator::with_states`], concatenated) of the
    /// last step: before any token, at the positions of the prompt given there (what the
    /// request probe reads); then at the last token of the text so far (what the answer probe
    /// reads at a sentence end). Runs the pending token through the model now rather than at
    /// the next pick, so it costs nothing extra.
    pub async fn latest_states(&mut self) -> Result<Vec<f32>> {
        if self.layers.is_empty() {
            return Err(Error::InvalidInput(
                "this generator keeps no states (no layers given)".into(),
            ));
        }
        // A picked token not fed yet (none is pending once an end-of-turn token was picked:
        // the last text token was fed to pick it).
        if self.reason != Some(StopReason::EndOfTurn)
            && let NextInput::Token(t) = self.next_input
            && !self.tokens.is_empty()
        {
            self.feed(t)?;
        }
        if let Some(seq) = &self.gpu {
            let engine = self.model.gpu_engine().map_err(Error::Backend)?;
            return engine.states(seq).await;
        }
        if let Some(base) = self.judging.as_mut()
            && !self.judging_due.is_empty()
        {
            let due = std::mem::take(&mut self.judging_due);
            self.last_states = self.model.forward_with_states(&due, base, &self.layers)?.1;
        }
        let mut per_block = Vec::with_capacity(self.last_states.len());
        for s in &self.last_states {
            per_block.push(read_f32(s.clone()).await?);
        }
        Ok(probe_features(&per_block, self.model.config().dim))
    }

    /// Ends with `reason`; what was held back (or is an incomplete character) comes out last.
    fn end(&mut self, reason: StopReason) -> Option<String> {
        self.reason = Some(reason);
        self.text.push_str(&self.decoder.finish());
        let piece = self.text[self.emitted..].to_string();
        self.emitted = self.text.len();
        (!piece.is_empty()).then_some(piece)
    }

    /// The text generated so far.
    pub fn text(&self) -> &str {
        &self.text
    }

    /// Stops here: no more pieces, and the result says [`StopReason::Cancelled`].
    pub fn cancel(&mut self) {
        self.reason.get_or_insert(StopReason::Cancelled);
    }

    /// The result.
    pub fn finish(self) -> Generation {
        Generation {
            text: self.text,
            tokens: self.tokens,
            stop_reason: self.reason.unwrap_or(StopReason::Cancelled),
            prompt_tokens: self.prompt_tokens,
        }
    }
}

/// Generates a continuation of `prompt` (token ids, e.g. from [`ChatModel::prompt_ids`]) until
/// one of the chat model's end-of-turn tokens. `on_text` receives each new piece of valid UTF-8
/// text and returns `false` to cancel.
pub async fn generate(
    chat: &ChatModel,
    prompt: &[u32],
    options: &GenerateOptions,
    mut on_text: impl FnMut(&str) -> bool,
) -> Result<Generation> {
    let mut generator = Generator::new(chat, prompt, options)?;
    while let Some(piece) = generator.next_piece().await? {
        if !piece.is_empty() && !on_text(&piece) {
            generator.cancel();
            break;
        }
    }
    Ok(generator.finish())
}

impl ChatModel {
    /// An unmoderated answer to one user message, generated with `options` (the refusal
    /// experiment and tests compare raw answers).
    pub async fn answer(&self, prompt: &str, options: &GenerateOptions) -> Result<String> {
        let ids = self.user_prompt_ids(prompt)?;
        Ok(generate(self, &ids, options, |_| true).await?.text)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn greedy_takes_the_argmax_and_sampling_is_seeded() {
        let o = GenerateOptions::default();
        let mut l = vec![0.1, 3.0, -1.0, 2.9];
        assert_eq!(pick(&mut l, &[], &o, &mut Rng::new(1)), 1);
        let o = GenerateOptions {
            temperature: 1.0,
            top_k: 2,
            ..GenerateOptions::default()
        };
        let draws = |seed| {
            let mut rng = Rng::new(seed);
            (0..200)
                .map(|_| pick(&mut [0.1, 3.0, -1.0, 2.9], &[], &o, &mut rng))
                .collect::<Vec<_>>()
        };
        let a = draws(7);
        assert_eq!(a, draws(7));
        assert!(
            a.iter().all(|&t| t == 1 || t == 3),
            "top-k 2 keeps tokens 1 and 3"
        );
        assert!(a.contains(&1) && a.contains(&3));
    }

    /// What the GPU's `top_candidates` computes, on the host: the `k` largest logits (equal
    /// ones by id) and the f32 normaliser over the whole row.
    fn candidates(logits: &[f32], k: usize, temperature: f32) -> Candidates {
        let mut order: Vec<usize> = (0..logits.len()).collect();
        order.sort_by(|&a, &b| logits[b].total_cmp(&logits[a]).then(a.cmp(&b)));
        order.truncate(k);
        let top = logits[order[0]];
        Candidates {
            ids: order.iter().map(|&i| i as u32).collect(),
            logits: order.iter().map(|&i| logits[i]).collect(),
            normaliser: logits.iter().map(|l| ((l - top) / temperature).exp()).sum(),
        }
    }

    #[test]
    fn sampling_from_the_gpus_candidates_draws_what_the_whole_row_draws() {
        // 2,000 distinct logits, peaked like a language model's (a few likely tokens).
        let mut rng = Rng::new(3);
        let row: Vec<f32> = (0..2000)
            .map(|i| (rng.next_f64() as f32) * 4.0 - (i % 97) as f32 * 0.15)
            .collect();
        let cases = [
            (0.7, 40, 1.0), // top-k within the candidates: always drawn from them
            (1.0, 64, 0.9),
            (0.8, 20, 0.5),
            (0.3, 0, 0.9), // top-p alone: drawn when the nucleus closes within 64 tokens
            (1.5, 0, 0.95),
        ];
        for (temperature, top_k, top_p) in cases {
            let o = GenerateOptions {
                temperature,
                top_k,
                top_p,
                ..GenerateOptions::default()
            };
            let k = if top_k > 0 { top_k } else { MAX_TOP_CANDIDATES };
            let c = candidates(&row, k, temperature);
            let (mut drawn, mut same) = (0, 0);
            for seed in 0..300 {
                let (mut a, mut b) = (Rng::new(seed), Rng::new(seed));
                let want = pick(&mut row.clone(), &[], &o, &mut a);
                if let Some(got) = pick_from_candidates(&c, &o, &mut b) {
                    drawn += 1;
                    same += usize::from(got == want);
                    // One draw each: the generator's sequence goes on the same either way.
                    assert_eq!(a.next_u64(), b.next_u64());
                } else {
                    // Nothing drawn: the row's pick then takes this seed's draw.
                    assert_eq!(b.next_u64(), Rng::new(seed).next_u64());
                }
            }
            assert_eq!(
                same, drawn,
                "{o:?}: every draw from the candidates is the row's"
            );
            if top_k > 0 || temperature == 0.3 {
                // A top-k within the candidates always draws; so does this nucleus, which
                // closes within them (whether it does depends on the logits, not the seed).
                assert_eq!(drawn, 300, "{o:?}");
            }
        }
        // A flat distribution's nucleus does not, and sampling the whole vocabulary never can.
        let flat = vec![0.0f32; 2000];
        let o = GenerateOptions {
            temperature: 1.0,
            top_p: 0.9,
            ..GenerateOptions::default()
        };
        let c = candidates(&flat, MAX_TOP_CANDIDATES, 1.0);
        assert_eq!(pick_from_candidates(&c, &o, &mut Rng::new(0)), None);
        let o = GenerateOptions {
            temperature: 1.0,
            ..GenerateOptions::default()
        };
        assert_eq!(pick_from_candidates(&c, &o, &mut Rng::new(0)), None);
    }

    #[test]
    fn draws_follow_the_softmax_at_the_temperature() {
        // Logits ln 1, ln 3, ln 6: probabilities 0.1, 0.3, 0.6 at temperature 1; at temperature
        // 0.5 they square before normalising: 1/46, 9/46, 36/46.
        let logits = [1f32.ln(), 3f32.ln(), 6f32.ln()];
        for (temperature, want) in [
            (1.0, [0.1, 0.3, 0.6]),
            (0.5, [1.0 / 46.0, 9.0 / 46.0, 36.0 / 46.0]),
        ] {
            let o = GenerateOptions {
                temperature,
                ..GenerateOptions::default()
            };
            let mut rng = Rng::new(11);
            let mut counts = [0usize; 3];
            let n = 20_000;
            for _ in 0..n {
                counts[pick(&mut logits.clone(), &[], &o, &mut rng) as usize] += 1;
            }
            for (c, w) in counts.iter().zip(want) {
                // Four standard deviations of a binomial frequency.
                let sd = (w * (1.0 - w) / n as f64).sqrt();
                let got = *c as f64 / n as f64;
                assert!(
                    (got - w).abs() < 4.0 * sd,
                    "T {temperature}: {counts:?} vs {want:?}"
                );
            }
        }
    }

    #[test]
    fn repetition_penalty_and_top_p() {
        let o = GenerateOptions {
            repetition_penalty: 2.0,
            ..GenerateOptions::default()
        };
        let mut l = vec![1.0, 1.8, 0.5];
        // 1.8 / 2 = 0.9 < 1.0: the repeated token loses.
        assert_eq!(pick(&mut l, &[1], &o, &mut Rng::new(0)), 0);
        let o = GenerateOptions {
            temperature: 1.0,
            top_p: 0.5,
            ..GenerateOptions::default()
        };
        for seed in 0..50 {
            assert_eq!(pick(&mut [5.0, 0.0, 0.0], &[], &o, &mut Rng::new(seed)), 0);
        }
    }

    #[test]
    fn options_out_of_range_are_errors() {
        let ok = GenerateOptions::default();
        assert!(ok.validate().is_ok());
        for bad in [
            GenerateOptions {
                temperature: -1.0,
                ..ok.clone()
            },
            GenerateOptions {
                temperature: f32::NAN,
                ..ok.clone()
            },
            GenerateOptions {
                top_p: 0.0,
                ..ok.clone()
            },
            GenerateOptions {
                top_p: 1.5,
                ..ok.clone()
            },
            GenerateOptions {
                repetition_penalty: 0.5,
                ..ok.clone()
            },
            GenerateOptions {
                max_new_tokens: 0,
                ..ok.clone()
            },
            GenerateOptions {
                stop: vec![String::new()],
                ..ok.clone()
            },
        ] {
            assert!(bad.validate().is_err(), "{bad:?}");
        }
    }

    #[test]
    fn stream_holds_back_what_may_start_a_stop_string() {
        let stop = vec!["\nUser:".to_string()];
        assert_eq!(held_back("hello\nUs", &stop), 3);
        assert_eq!(held_back("hello", &stop), 0);
    }
}
