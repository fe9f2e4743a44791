//! Instruction-tuning the chat model with LoRA from `{ prompt, response }` pairs.
//!
//! Each pair is rendered through the chat template (`prompt` as the user turn, `response` as
//! the assistant's, ended by `<|im_end|>`); the loss is the cross-entropy of the response
//! tokens only, so the model learns how to answer, not to predict the question. Adapters
//! ([`crate::models::lora`]) on the chosen projections are trained with Adam on mini-batches
//! (seeded order); the base weights never change, and the adapters are installed only when the
//! run finished.
//!
//! Memory: a training pass holds its logits (`positions x 49,152 x 4` bytes, and as much again
//! for their log-softmax and its gradient), every block's activations for the backward pass,
//! and f32 copies of the frozen weights. Measured natively with a counting allocator
//! (`tests/context.rs`, pairs of 369 tokens, so 368 positions each): one pair per pass peaked
//! at 1.46 GB, two in one pass 2.40 GB, four 4.29 GB: about 0.52 GB plus 2.56 MB per position.
//! `batchSize: 32` with 384-token pairs ran as one pass of 12,288 positions (about 31 GB by
//! that rule; even the default 4 such pairs passed wasm32's 4 GiB). Now a mini-batch of more
//! than [`MAX_PASS_TOKENS`] positions runs as several passes ([`plan_passes`]) whose gradients
//! are added before the one optimiser step, each pass's loss divided by the whole batch's
//! response tokens: the same step as one pass, to rounding, in at most about 1.5 GB (four
//! long pairs as four passes peaked at 1.46 GB, and took less time than one pass: 28.7 s
//! against 48.4 s on this shared 2-core machine).

use safetensors::Dtype;

use crate::backend::read_f32;
use crate::chat::ChatModel;
use crate::error::{Error, Result};
use crate::models::lora::LoraConfig;
use crate::tune::TuneOptions;
#[cfg(feature = "tune")]
use {
    crate::models::llama::Adapters,
    crate::models::lora::Lora,
    crate::tune::{Step, check_final_loss, now_ms, report_step, step_loss},
    burn::grad_clipping::GradientClippingConfig,
    burn::module::Module,
    burn::optim::{AdamConfig, GradientsAccumulator, GradientsParams},
    burn::tensor::Int,
    burn::tensor::activation::log_softmax,
    burn::tensor::{Device, Tensor, TensorData},
};

/// One example answer.
#[derive(Debug, Clone, PartialEq, serde::Deserialize, serde::Serialize)]
pub struct ChatPair {
    /// The user's message.
    pub prompt: String,
    /// The answer to learn.
    pub response: String,
}

/// How to tune the chat model. In JS these are `tuneChat`'s options, one flat object (camelCase:
/// `steps`, `learningRate`, `seed`, `rank`, `targets`, `batchSize`). A flattened field takes
/// its own type's defaults when absent (30 steps, not 50), so the wasm layer fills every field
/// from this type's [`Default`] before deserialising.
#[derive(Debug, Clone, PartialEq, serde::Serialize, serde::Deserialize)]
#[serde(rename_all = "camelCase", deny_unknown_fields, default)]
pub struct ChatTuneOptions {
    /// Steps, learning rate, seed, clipping.
    #[serde(flatten)]
    pub tune: TuneOptions,
    /// Adapter rank, scale and target projections.
    #[serde(flatten)]
    pub lora: LoraConfig,
    /// Pairs per step (1 to 32).
    pub batch_size: usize,
    /// Longest rendered pair, in tokens (prompt + response). Not a JS option.
    #[serde(skip)]
    pub max_pair_tokens: usize,
    /// Most tokens (pairs x padded length) in one forward and backward pass: a batch larger
    /// than that is split into passes whose gradients add up to the batch's (the same step,
    /// to rounding). At least `max_pair_tokens`. Not a JS option (default
    /// [`MAX_PASS_TOKENS`]).
    #[serde(skip)]
    pub max_pass_tokens: usize,
}

impl Default for ChatTuneOptions {
    fn default() -> Self {
        ChatTuneOptions {
            tune: TuneOptions {
                steps: 50,
                learning_rate: 1e-3,
                ..TuneOptions::default()
            },
            lora: LoraConfig::default(),
            batch_size: 4,
            max_pair_tokens: 384,
            max_pass_tokens: MAX_PASS_TOKENS,
        }
    }
}

/// What a chat tuning run did.
#[derive(Debug, Clone, PartialEq, serde::Serialize)]
#[serde(rename_all = "camelCase")]
pub struct ChatTuneReport {
    /// Pairs used.
    pub pairs: usize,
    /// Loss of the first step (its batch, before any update).
    pub first_loss: f32,
    /// Loss of the installed adapters (after the last update) on the first step's batch.
    pub final_loss: f32,
    /// Trainable parameters (the adapters).
    pub parameters: usize,
}

pub use crate::chat::CHAT_ADAPTERS_FORMAT;
/// Most pairs per call.
pub const MAX_PAIRS: usize = 1000;
/// Longest prompt or response, in bytes.
pub const MAX_TEXT_BYTES: usize = 16 * 1024;
/// Most positions (pairs x padded length) one training pass runs (see
/// [`ChatTuneOptions::max_pass_tokens`]): one pair of the longest kind (384 tokens), or
/// several shorter ones; about 1.5 GB at most (see the module docs).
pub const MAX_PASS_TOKENS: usize = 384;

/// Splits a batch of sequences of `lengths` tokens into consecutive passes of at most
/// `max_tokens` tokens each, counting every sequence of a pass at the pass's longest (they
/// are padded to it): the ranges of the batch each pass takes. A sequence longer than
/// `max_tokens` gets a pass of its own (callers refuse those first).
pub fn plan_passes(lengths: &[usize], max_tokens: usize) -> Vec<std::ops::Range<usize>> {
    let mut passes = Vec::new();
    let (mut from, mut longest) = (0, 0);
    for (i, &len) in lengths.iter().enumerate() {
        let wider = longest.max(len);
        if i > from && wider * (i + 1 - from) > max_tokens {
            passes.push(from..i);
            (from, longest) = (i, len);
        } else {
            longest = wider;
        }
    }
    if from < lengths.len() {
        passes.push(from..lengths.len());
    }
    passes
}

#[cfg(feature = "tune")]
/// A pair as ids: the rendered prompt (through the assistant prefix) and the response with
/// its end-of-turn token.
struct TokenPair {
    prompt: Vec<u32>,
    response: Vec<u32>,
}

#[cfg(feature = "tune")]
impl TokenPair {
    /// Positions a training pass runs for it (every token but the last).
    fn len(&self) -> usize {
        self.prompt.len() + self.response.len() - 1
    }
}

impl ChatModel {
    #[cfg(feature = "tune")]
    /// Tunes LoRA adapters on `pairs` (continuing from the installed adapters when they have
    /// the same configuration). `on_step` receives each step and returns `false` to cancel.
    /// Errors (bad pairs or options, a diverging loss, cancellation) leave the model as it was.
    pub async fn tune(
        &mut self,
        pairs: &[ChatPair],
        options: &ChatTuneOptions,
        mut on_step: impl FnMut(&Step) -> bool,
    ) -> Result<ChatTuneReport> {
        options.tune.validate()?;
        options.lora.validate()?;
        self.model.check_lora_blocks(&options.lora)?;
        if !(1..=32).contains(&options.batch_size) {
            return Err(Error::InvalidInput(format!(
                "batch size {} is outside 1 to 32",
                options.batch_size
            )));
        }
        if options.max_pair_tokens > options.max_pass_tokens {
            return Err(Error::InvalidInput(format!(
                "pairs of up to {} tokens do not fit the memory budget of {} tokens per \
                 training pass",
                options.max_pair_tokens, options.max_pass_tokens
            )));
        }
        let tokens = self.tokenize_pairs(pairs, options.max_pair_tokens)?;
        let device = self.model.device().clone();
        let ad = device.clone().autodiff();
        ad.seed(options.tune.seed);
        let mut lora = match self.model.adapters() {
            Some(a) if a.config == options.lora => a.lora.clone().fork(&ad),
            _ => Lora::new(
                options.lora.rank,
                &self.model.lora_shapes(&options.lora),
                &ad,
            ),
        };
        let parameters = lora
            .factors
            .iter()
            .map(|f| {
                f.a.val().dims().iter().product::<usize>()
                    + f.b.val().dims().iter().product::<usize>()
            })
            .sum();
        let mut optim = AdamConfig::new()
            .with_grad_clipping(Some(GradientClippingConfig::Norm(options.tune.clip_norm)))
            .init();
        let mut order: Vec<usize> = Vec::new();
        let mut first_loss = f32::NAN;
        let mut first_batch = Vec::new();
        for step in 1..=options.tune.steps {
            let started = now_ms();
            let mut batch = Vec::with_capacity(options.batch_size);
            while batch.len() < options.batch_size.min(tokens.len()) {
                if order.is_empty() {
                    order = (0..tokens.len()).collect();
                    crate::rng::shuffle(&mut order, options.tune.seed.wrapping_add(step as u64));
                }
                let i = order.pop().unwrap_or(0);
                if step == 1 {
                    first_batch.push(i);
                }
                batch.push(&tokens[i]);
            }
            // The batch's loss is the mean over all its response tokens; each pass adds its
            // share (its sum over that count), and the gradients add up the same way.
            let count: usize = batch.iter().map(|p| p.response.len()).sum();
            let lengths: Vec<usize> = batch.iter().map(|p| p.len()).collect();
            let mut grads = GradientsAccumulator::new();
            let mut value = 0.0;
            for pass in plan_passes(&lengths, options.max_pass_tokens) {
                let loss = self.response_loss(&batch[pass], count, &lora, &options.lora, &ad)?;
                value += step_loss(loss.clone(), step, "The model").await?;
                grads.accumulate(&lora, GradientsParams::from_grads(loss.backward(), &lora));
            }
            if step == 1 {
                first_loss = value;
            }
            lora = optim.step(options.tune.learning_rate, lora, grads.grads());
            let report = Step {
                step,
                steps: options.tune.steps,
                loss: value,
                millis: now_ms() - started,
            };
            report_step(report, "The model", &mut on_step)?;
        }
        // What is installed is the last update's result, which no step's loss has seen: the
        // first batch is scored again with it. A learning rate the options allow can still
        // wreck the model in one step (1.0: the loss reported level, then "were were were…").
        let batch: Vec<&TokenPair> = first_batch.iter().map(|&i| &tokens[i]).collect();
        let count: usize = batch.iter().map(|p| p.response.len()).sum();
        let lengths: Vec<usize> = batch.iter().map(|p| p.len()).collect();
        // On the plain device: an autodiff graph nobody runs backward on is freed late, and
        // held the passes' activations at once (tests/context.rs' long pairs: peak heap 2.9-5.2
        // GB there, 1.4 GB here).
        let installed = lora.valid().fork(&device);
        let mut final_loss = 0.0;
        for pass in plan_passes(&lengths, options.max_pass_tokens) {
            let loss =
                self.response_loss(&batch[pass], count, &installed, &options.lora, &device)?;
            final_loss += step_loss(loss, options.tune.steps, "The model").await?;
        }
        check_final_loss(first_loss, final_loss, "The model")?;
        self.model.set_adapters(Some(Adapters {
            config: options.lora.clone(),
            lora: installed,
        }))?;
        Ok(ChatTuneReport {
            pairs: pairs.len(),
            first_loss,
            final_loss,
            parameters,
        })
    }

    #[cfg(feature = "tune")]
    /// Checks and tokenizes the pairs.
    fn tokenize_pairs(&self, pairs: &[ChatPair], max_tokens: usize) -> Result<Vec<TokenPair>> {
        if pairs.is_empty() {
            return Err(Error::InvalidInput("no pairs to learn from".into()));
        }
        if pairs.len() > MAX_PAIRS {
            return Err(Error::InvalidInput(format!(
                "{} pairs; at most {MAX_PAIRS} per call",
                pairs.len()
            )));
        }
        let end = *self
            .end_tokens
            .first()
            .ok_or_else(|| Error::ModelFile("the model has no end-of-turn token".into()))?;
        pairs
            .iter()
            .enumerate()
            .map(|(i, p)| {
                for (what, text) in [("prompt", &p.prompt), ("response", &p.response)] {
                    if text.trim().is_empty() {
                        return Err(Error::InvalidInput(format!(
                            "pair {i}: the {what} is empty"
                        )));
                    }
                    if text.len() > MAX_TEXT_BYTES {
                        return Err(Error::InvalidInput(format!(
                            "pair {i}: the {what} has {} bytes; at most {MAX_TEXT_BYTES}",
                            text.len()
                        )));
                    }
                }
                let prompt = self.user_prompt_ids(&p.prompt)?;
                // As text: a typed `<|im_start|>` must not teach the model to open a turn.
                let mut response = self.tokenizer.encode_literal(&p.response)?;
                response.push(end);
                if prompt.len() + response.len() > max_tokens {
                    return Err(Error::InvalidInput(format!(
                        "pair {i} has {} tokens; at most {max_tokens}",
                        prompt.len() + response.len()
                    )));
                }
                Ok(TokenPair { prompt, response })
            })
            .collect()
    }

    #[cfg(feature = "tune")]
    /// Cross-entropy of the response tokens of `batch`, summed and divided by `count` (the
    /// response tokens of the whole step's batch), `[1]`, on the autodiff `device`.
    fn response_loss(
        &self,
        batch: &[&TokenPair],
        count: usize,
        lora: &Lora,
        config: &LoraConfig,
        device: &Device,
    ) -> Result<Tensor<1>> {
        // Inputs are each sequence but its last token, targets each but its first; shorter
        // sequences are padded at the end (causal attention: padding never affects them).
        let len = batch.iter().map(|p| p.len()).max().unwrap_or(0);
        let pad = *self.end_tokens.first().unwrap_or(&0);
        let (mut inputs, mut targets, mut mask) = (Vec::new(), Vec::new(), Vec::new());
        for p in batch {
            let ids: Vec<u32> = p.prompt.iter().chain(&p.response).copied().collect();
            let n = ids.len() - 1;
            let mut input = ids[..n].to_vec();
            input.resize(len, pad);
            inputs.push(input);
            for t in 0..len {
                targets.push(if t < n { i64::from(ids[t + 1]) } else { 0 });
                // Position t predicts token t + 1: a response token when t + 1 >= prompt length.
                mask.push(if t < n && t + 1 >= p.prompt.len() {
                    1.0f32
                } else {
                    0.0
                });
            }
        }
        let b = batch.len();
        let logits = self.model.forward_train(&inputs, lora, config, device)?;
        let targets = Tensor::<3, Int>::from_data(TensorData::new(targets, [b, len, 1]), device);
        let mask = Tensor::<2>::from_data(TensorData::new(mask, [b, len]), device);
        let picked = log_softmax(logits, 2).gather(2, targets).reshape([b, len]);
        Ok(-(picked * mask).sum().div_scalar(count as f64))
    }

    /// The installed adapters as safetensors bytes (factors `blk.{l}.{q|k|v|o|gate|up|down}
    /// .lora_a/.lora_b`, the configuration (`first_block` too), and a fingerprint of the base
    /// model). Errors when
    /// none are installed.
    pub async fn export_adapters(&self) -> Result<Vec<u8>> {
        let a = self.model.adapters().ok_or_else(|| {
            Error::InvalidInput("nothing to export: the chat model has not been tuned".into())
        })?;
        let mut tensors: Vec<(String, Vec<usize>, Vec<u8>)> = Vec::new();
        for (i, f) in a.lora.factors.iter().enumerate() {
            let (layer, p) = a.config.factor_place(i);
            for (part, t) in [("lora_a", f.a.val()), ("lora_b", f.b.val())] {
                let shape = t.dims().to_vec();
                let values = read_f32(t).await?;
                tensors.push((
                    format!("blk.{layer}.{p}.{part}"),
                    shape,
                    values.iter().flat_map(|v| v.to_le_bytes()).collect(),
                ));
            }
        }
        let views = tensors
            .iter()
            .map(|(name, shape, bytes)| {
                safetensors::tensor::TensorView::new(Dtype::F32, shape.clone(), bytes)
                    .map(|v| (name.clone(), v))
                    .map_err(|e| Error::Safetensors(e.to_string()))
            })
            .collect::<Result<Vec<_>>>()?;
        let targets: Vec<&str> = a.config.targets.iter().map(|p| p.name()).collect();
        let meta = [
            ("format", CHAT_ADAPTERS_FORMAT.to_string()),
            ("rank", a.config.rank.to_string()),
            ("alpha", a.config.alpha.to_string()),
            ("targets", targets.join(",")),
            ("first_block", a.config.first_block.to_string()),
            ("model", self.model_signature().await?),
        ]
        .into_iter()
        .map(|(k, v)| (k.to_string(), v))
        .collect();
        safetensors::serialize(views, Some(meta)).map_err(|e| Error::Safetensors(e.to_string()))
    }

    /// Installs adapters from [`ChatModel::export_adapters`] made for this model. Other
    /// models' adapters, wrong shapes and other files are errors, and the model is unchanged.
    pub async fn import_adapters(&mut self, bytes: &[u8]) -> Result<()> {
        let adapters = self.read_adapters(bytes).await?;
        self.model.set_adapters(Some(adapters))
    }

    /// Back to the base model.
    pub fn reset_adapters(&mut self) {
        // `None` always fits.
        let _ = self.model.set_adapters(None);
    }
}
