//! SmolLM2 (the llama architecture) built from its GGUF file.
//!
//! ```text
//! ids -> token embedding
//!     -> 30 x [ RMSNorm -> grouped-query attention (9 query heads, 3 KV heads, RoPE) -> +residual
//!               RMSNorm -> SwiGLU feed-forward (gate, up 576->1536, down 1536->576) -> +residual ]
//!     -> RMSNorm -> logits against the token embedding (tied output)
//! ```
//! RoPE rotates adjacent pairs `(x[2i], x[2i+1])`: the GGUF converter permuted the Q and K
//! weights for that convention, which is llama.cpp's. On the CPU the projection matrices stay
//! in the file's Q4_1/Q8_0 blocks ([`PackedMatrix`]: the resident size is the file's, and
//! decoding reads 5.5x fewer bytes than f32); on a GPU they are dequantised to f32 at load. A
//! [`KvCache`] holds each layer's keys and values so each generated token costs one position,
//! not the whole prompt again. Attention runs [`ATTENTION_CHUNK`] query positions at a time,
//! so a long prompt's prefill holds `O(chunk x positions)` scores, not `O(positions²)`. On the
//! CPU a generated token or a short prompt (no adapters) skips burn's ops: `host_loops` runs
//! the same arithmetic in plain loops, with the cache's keys and values in host buffers.

use burn::tensor::activation::{silu, softmax};
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Mutex, PoisonError};

use burn::tensor::{Device, Int, Tensor, TensorData};

use crate::error::{Error, Result};
use crate::models::dense_cache::DenseCache;
use crate::models::gpu::{DecodeLayout, Engine, KvPrecision};
use crate::models::lora::{Lora, LoraConfig, Projection};
use crate::models::packed::{PackedMatrix, Precision};
use crate::weights::gguf::Gguf;

mod host_loops;

/// Hyper-parameters read from the GGUF metadata.
#[derive(Debug, Clone, PartialEq)]
pub struct LlamaConfig {
    /// Vocabulary size.
    pub vocab_size: usize,
    /// Model width.
    pub dim: usize,
    /// Transformer blocks.
    pub layers: usize,
    /// Query heads.
    pub heads: usize,
    /// Key/value heads (grouped-query attention).
    pub kv_heads: usize,
    /// Feed-forward width.
    pub ffn_dim: usize,
    /// RoPE base frequency.
    pub rope_base: f64,
    /// RMSNorm epsilon.
    pub rms_eps: f64,
    /// Longest sequence the model was trained for.
    pub context_length: usize,
}

impl LlamaConfig {
    /// Reads and checks the `llama.*` metadata.
    pub fn from_gguf(gguf: &Gguf<'_>) -> Result<Self> {
        let arch = gguf.require_str("general.architecture")?;
        if arch != "llama" {
            return Err(Error::ModelFile(format!(
                "GGUF architecture {arch:?}; only llama models are supported"
            )));
        }
        let u =
            |k: &str| -> Result<usize> { Ok(gguf.require_u64(&format!("llama.{k}"))? as usize) };
        let embd = gguf.tensor_info("token_embd.weight")?.shape();
        let c = LlamaConfig {
            vocab_size: embd.first().copied().unwrap_or(0),
            dim: u("embedding_length")?,
            layers: u("block_count")?,
            heads: u("attention.head_count")?,
            kv_heads: u("attention.head_count_kv")?,
            ffn_dim: u("feed_forward_length")?,
            rope_base: gguf.require_f64("llama.rope.freq_base")?,
            rms_eps: gguf.require_f64("llama.attention.layer_norm_rms_epsilon")?,
            context_length: u("context_length")?,
        };
        let bad = c.heads == 0
            || c.kv_heads == 0
            || !c.dim.is_multiple_of(c.heads)
            || !c.heads.is_multiple_of(c.kv_heads)
            || !(c.dim / c.heads).is_multiple_of(2)
            || c.layers == 0
            || c.layers > 1024
            || c.vocab_size == 0;
        if bad {
            return Err(Error::ModelFile(format!(
                "inconsistent llama hyper-parameters: {c:?}"
            )));
        }
        Ok(c)
    }

    /// Width of one attention head.
    pub fn head_dim(&self) -> usize {
        self.dim / self.heads
    }
}

/// A weight matrix `[out, in]`.
enum Weight {
    /// For a GPU: the blocks on the host, widened to f32 on the device when burn's path first
    /// needs them (generation runs in [`crate::models::gpu`]; see [`DenseCache`]).
    Dense(Box<DenseCache>),
    /// The GGUF's blocks in host memory (CPU backend).
    Packed(PackedMatrix),
}

/// Query positions per attention chunk. Attention over `s` new positions after `start` cached
/// ones is computed this many query rows at a time, each chunk against the keys it can see,
/// so its scores are `[heads, rows, keys]` rather than `[heads, s, start + s]`: peak memory
/// O(rows x positions) instead of O(positions²). An 8,191-token prompt needed a 2.4 GB scores
/// tensor (9 heads x 8,191² x 4 bytes; softmax holds about two more of that size), past
/// wasm32's 4 GiB with the model loaded; in chunks of 256 it is at most 75 MB. Keys a row cannot
/// see add exactly 0 to its softmax (`exp(-1e9)` underflows), so chunked and whole attention
/// agree to rounding (`tests/context.rs`). Prompts up to this long run as one chunk, as before.
pub const ATTENTION_CHUNK: usize = 256;

/// Up to this many positions, packed products run row by row on the blocks; longer prompts
/// (prefill) dequantise one matrix at a time and use the backend's matrix multiply, which is
/// faster there and holds at most one f32 matrix (3.5 MB) at a time...
const PACKED_MATVEC_MAX_POSITIONS: usize = 4;

/// ...except up to this many positions where the CPU has the tiled integer kernel for the
/// matrix ([`PackedMatrix::tiles_prompts`]: 16-bit activations on Q4_1, x86-64 with AVX2 or
/// wasm32's SIMD128). Dequantising every matrix costs ~145 ms per prefill whatever its length;
/// the tiles cost more per position than the dense product but need no dequantisation.
/// Natively, `bench chat --prompt-tokens N --new-tokens 2`: 45 positions 182 -> 300 tokens/s,
/// 128 positions 240 -> 288, 256 even, 512 slower (notes/issue-15-kernels.md). In wasm the
/// dense product (gemm's SIMD128 f32 kernels) did not catch up at any length measured (up to
/// 2,100 positions, below): every prompt takes the tiles (and the host loops), whatever its
/// length (`None`: no limit).
#[cfg(not(target_arch = "wasm32"))]
const PROMPT_TILES_MAX_POSITIONS: Option<usize> = Some(256);
#[cfg(target_arch = "wasm32")]
const PROMPT_TILES_MAX_POSITIONS: Option<usize> = None;

/// Prompts up to this many positions whose every product takes the tiles run in the host
/// loops (`host_loops`: the tiles, and attention and SwiGLU over both cores), longer ones in
/// burn's ops. `bench chat --prompt-tokens N --new-tokens 2`, burn's ops / the loops, tokens/s:
/// 128 positions 360 / 470, 512 positions 340 / 360; at 1,024 the loops' attention (plain
/// dot products, no blocking) is slower than burn's (310 / 260). In wasm, where burn's ops run
/// on one thread and its products on dequantised matrices, the loops win at every length
/// measured: `node scripts/bench-browser.mjs --threads 1,2 --no-wllama --message-repeat K`,
/// prefill tokens/s on 1 / 2 threads, these limits at 256 and 512 against no limit: 570
/// positions 56.6 / 56.7 -> 67.8 / 120.3, 1,065 positions 57.3 / 48.9 -> 59.0 / 100.9, 2,100
/// positions 38.6 / 35.8 -> 41.3 / 73.6 (twenty-seventh session, notes/issue-15-kernels.md).
#[cfg(not(target_arch = "wasm32"))]
const HOST_LOOPS_MAX_POSITIONS: Option<usize> = Some(512);
#[cfg(target_arch = "wasm32")]
const HOST_LOOPS_MAX_POSITIONS: Option<usize> = None;

/// Whether `positions` is within `limit` (`None`: no limit).
fn within(positions: usize, limit: Option<usize>) -> bool {
    limit.is_none_or(|max| positions <= max)
}

impl Weight {
    fn load(gguf: &Gguf<'_>, name: &str, shape: [usize; 2], device: &Device) -> Result<Self> {
        if *device == Device::flex() {
            Ok(Weight::Packed(PackedMatrix::from_gguf(gguf, name, shape)?))
        } else {
            let packed = PackedMatrix::from_gguf(gguf, name, shape)?;
            Ok(Weight::Dense(Box::new(DenseCache::new(packed, device))))
        }
    }

    fn resident_bytes(&self) -> usize {
        match self {
            Weight::Dense(t) => t.resident_bytes(),
            Weight::Packed(p) => p.resident_bytes(),
        }
    }

    /// `x [b, s, in] · wᵀ`, packed products rounded as `precision` says (at every length, so
    /// a prompt's states do not depend on how it was split into prefill and decode steps).
    fn project(&self, x: Tensor<3>, precision: Precision) -> Result<Tensor<3>> {
        let [b, s, d] = x.dims();
        let device = x.device();
        // The CPU backend reads synchronously.
        let read = |x: Tensor<3>| {
            x.into_data()
                .try_to_vec::<f32>()
                .map_err(|e| Error::Backend(format!("unexpected tensor data: {e:?}")))
        };
        match self {
            Weight::Dense(w) => Ok(project_dense(x, w.get())),
            Weight::Packed(w)
                if b * s <= PACKED_MATVEC_MAX_POSITIONS
                    || (within(b * s, PROMPT_TILES_MAX_POSITIONS)
                        && w.tiles_prompts(precision)) =>
            {
                let [out, _] = w.shape();
                let y = w.matmul(&read(x)?, b * s, precision);
                Ok(Tensor::from_data(TensorData::new(y, [b, s, out]), &device))
            }
            Weight::Packed(w) => {
                let x = if w.rounds_inputs(precision) {
                    let values = w.round_inputs(read(x)?, precision);
                    Tensor::from_data(TensorData::new(values, [b, s, d]), &device)
                } else {
                    x
                };
                let [out, _] = w.shape();
                let wt = Tensor::<2>::from_data(
                    TensorData::new(w.dequantize_transposed(), [d, out]),
                    &device,
                );
                Ok(x.reshape([b * s, d]).matmul(wt).reshape([b, s, out]))
            }
        }
    }

    /// The matrix as f32 on `device` (a transient copy for training).
    fn dense_on(&self, device: &Device) -> Tensor<2> {
        match self {
            Weight::Dense(w) => w.get().clone().to_device(device),
            Weight::Packed(w) => {
                Tensor::from_data(TensorData::new(w.dequantize(), w.shape()), device)
            }
        }
    }

    /// `[out, in]`.
    fn shape(&self) -> [usize; 2] {
        match self {
            Weight::Dense(w) => w.shape(),
            Weight::Packed(w) => w.shape(),
        }
    }

    /// Rows `ids` (the token embedding lookup): `[ids.len(), in]`.
    fn rows(&self, ids: &[u32], device: &Device) -> Tensor<2> {
        match self {
            Weight::Dense(w) => {
                let ids = Tensor::<1, Int>::from_data(
                    TensorData::new(
                        ids.iter().map(|&i| i as i64).collect::<Vec<_>>(),
                        [ids.len()],
                    ),
                    device,
                );
                w.get().clone().select(0, ids)
            }
            Weight::Packed(w) => {
                let [_, d] = w.shape();
                let mut values = vec![0.0; ids.len() * d];
                for (&id, row) in ids.iter().zip(values.chunks_exact_mut(d)) {
                    w.row_into(id as usize, row);
                }
                Tensor::from_data(TensorData::new(values, [ids.len(), d]), device)
            }
        }
    }
}

struct Block {
    attn_norm: Tensor<1>,
    ffn_norm: Tensor<1>,
    /// The two norms' weights as host vectors (attention, feed-forward), for `host_loops`.
    host_norms: [Vec<f32>; 2],
    /// In [`Projection::ALL`] order.
    projections: Vec<Weight>,
}

/// Where the blocks get their weights: the model as loaded (generation), or f32 copies on an
/// autodiff device plus trainable adapters (tuning). One forward pass serves both.
trait BlockWeights {
    fn device(&self) -> &Device;
    /// Block `layer`'s attention (`false`) or feed-forward (`true`) RMSNorm weight.
    fn norm(&self, layer: usize, ffn: bool) -> Tensor<1>;
    /// `x [b, s, in]` through block `layer`'s projection `p`.
    fn project(&self, layer: usize, p: Projection, x: Tensor<3>) -> Result<Tensor<3>>;
}

/// The adapters the model applies, with their configuration.
#[derive(Debug, Clone)]
pub struct Adapters {
    /// Rank, scale and targets.
    pub config: LoraConfig,
    /// The factors, on the model's device.
    pub lora: Lora,
}

/// Generation: the loaded weights, plus the adapters the sequence runs with (the installed
/// ones, or the safety adapters for a cache made by [`Llama::new_safety_cache`]).
struct Inference<'a>(&'a Llama, Option<&'a Adapters>);

impl<'a> Inference<'a> {
    /// The installed adapters (none while there are none).
    fn installed(model: &'a Llama) -> Self {
        Inference(model, model.adapters.as_ref())
    }
}

impl BlockWeights for Inference<'_> {
    fn device(&self) -> &Device {
        &self.0.device
    }

    fn norm(&self, layer: usize, ffn: bool) -> Tensor<1> {
        let b = &self.0.blocks[layer];
        if ffn {
            b.ffn_norm.clone()
        } else {
            b.attn_norm.clone()
        }
    }

    fn project(&self, layer: usize, p: Projection, x: Tensor<3>) -> Result<Tensor<3>> {
        let adapter = self
            .1
            .and_then(|a| Some((a, a.config.factor_index(layer, p)?)));
        match adapter {
            Some((a, i)) => {
                let delta = a.lora.delta(i, x.clone(), a.config.scale());
                let w = &self.0.blocks[layer].projections[p.index()];
                Ok(w.project(x, self.0.precision)? + delta)
            }
            None => self.0.blocks[layer].projections[p.index()].project(x, self.0.precision),
        }
    }
}

/// Tuning: f32 copies of the frozen weights on the autodiff device, and trainable adapters.
struct Training<'a> {
    model: &'a Llama,
    lora: &'a Lora,
    config: &'a LoraConfig,
    device: Device,
}

impl BlockWeights for Training<'_> {
    fn device(&self) -> &Device {
        &self.device
    }

    fn norm(&self, layer: usize, ffn: bool) -> Tensor<1> {
        Inference::installed(self.model)
            .norm(layer, ffn)
            .to_device(&self.device)
    }

    fn project(&self, layer: usize, p: Projection, x: Tensor<3>) -> Result<Tensor<3>> {
        // Dequantised per use: at most one f32 matrix (3.5 MB) beyond the packed weights.
        let w = self.model.blocks[layer].projections[p.index()].dense_on(&self.device);
        let y = project_dense(x.clone(), &w);
        Ok(match self.config.factor_index(layer, p) {
            Some(i) => y + self.lora.delta(i, x, self.config.scale()),
            None => y,
        })
    }
}

/// The model, on one device.
pub struct Llama {
    config: LlamaConfig,
    /// `[vocab, dim]`; also the output projection.
    embedding: Weight,
    blocks: Vec<Block>,
    output_norm: Tensor<1>,
    device: Device,
    /// LoRA adapters applied on top of the weights (tuning), if any.
    adapters: Option<Adapters>,
    /// Adapters that only sequences started with [`Llama::new_safety_cache`] run with (the
    /// guard's second line: see `crate::guard`), instead of `adapters`.
    safety: Option<Adapters>,
    /// Query rows per attention chunk ([`ATTENTION_CHUNK`] unless a test sets another).
    attention_chunk: usize,
    /// Elements of the largest attention scores tensor built (see
    /// [`Llama::largest_attention_scores`]).
    attention_peak: AtomicUsize,
    /// How packed decode products round ([`Precision::from_env`] at load).
    precision: Precision,
    /// Whether generated tokens and short prompts run in `host_loops` where they apply (see
    /// [`Llama::set_host_steps`]).
    host_steps: bool,
    /// On a GPU: the quantised engine generation runs in, or why there is none.
    gpu: std::result::Result<Engine, String>,
    /// One prompt prefix's ids and keys and values, computed once for the probe's prefills
    /// that start with it ([`Llama::kept_prefix`]: the guard judges each request alone after
    /// the same default system turn). Every setter that changes what the blocks compute drops
    /// it ([`Llama::forget_kept_prefix`]).
    kept_prefix: Mutex<Option<(Vec<u32>, KvCache)>>,
}

/// Which blocks' outputs [`Llama::forward_with_states`] keeps, and what it kept.
struct Taps<'a> {
    layers: &'a [usize],
    positions: Positions,
    /// Stop after the deepest of `layers`: only the states are wanted (no logits), and the
    /// cache, missing the later blocks' keys, is thrown away.
    states_only: bool,
    states: Vec<Option<Tensor<2>>>,
}

/// Which positions of the ids run a tapped block's output is kept at.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Positions {
    /// The last (`[1, dim]`).
    Last,
    /// Every one (`[ids.len(), dim]`).
    All,
    /// The mean over these (`[1, dim]`): a probe reading a whole message
    /// ([`crate::models::probe::Pooling::UserMessage`]). A range outside the ids, or empty,
    /// is an error.
    Mean(std::ops::Range<usize>),
    /// The last, then the mean over these (`[2, dim]`): a pair of probes, one reading each
    /// ([`crate::models::probe::Pooling::Both`]), from one prefill.
    LastAndMean(std::ops::Range<usize>),
}

impl Positions {
    /// The same positions counted from the `n`th (the first `n` computed apart, as a kept
    /// prefix); `None` for a mean that starts before it.
    pub fn after(&self, n: usize) -> Option<Positions> {
        match self {
            Positions::Mean(r) | Positions::LastAndMean(r) if r.start < n => None,
            Positions::Mean(r) => Some(Positions::Mean(r.start - n..r.end - n)),
            Positions::LastAndMean(r) => Some(Positions::LastAndMean(r.start - n..r.end - n)),
            other => Some(other.clone()),
        }
    }

    /// The range averaged over, if any.
    fn averaged(&self) -> Option<&std::ops::Range<usize>> {
        match self {
            Positions::Mean(r) | Positions::LastAndMean(r) => Some(r),
            Positions::Last | Positions::All => None,
        }
    }

    /// Errors when an averaged range is empty or past the `n` ids run.
    pub fn check(&self, n: usize) -> Result<()> {
        match self.averaged() {
            Some(r) if r.is_empty() || r.end > n => Err(Error::InvalidInput(format!(
                "states averaged over positions {r:?} of {n} tokens"
            ))),
            _ => Ok(()),
        }
    }

    /// [`Positions::check`], and an error for [`Positions::All`]: what a probe reads is one
    /// row per block and per reading (the last, the mean, or both).
    pub fn check_for_probe(&self, n: usize) -> Result<()> {
        if *self == Positions::All {
            return Err(Error::InvalidInput(
                "a probe reads one row of states per block".into(),
            ));
        }
        self.check(n)
    }

    /// The rows of one block's states over `n` positions (`values`, row-major, `dim` wide, at
    /// least one position) these positions keep: how many, and their values.
    pub fn keep(&self, values: &[f32], dim: usize) -> (usize, Vec<f32>) {
        let n = values.len() / dim;
        let last = || values[(n - 1) * dim..].to_vec();
        match self {
            Positions::All => (n, values.to_vec()),
            Positions::Last => (1, last()),
            Positions::Mean(r) => (1, mean_of_rows(values, dim, r.clone())),
            Positions::LastAndMean(r) => {
                let mut rows = last();
                rows.extend(mean_of_rows(values, dim, r.clone()));
                (2, rows)
            }
        }
    }
}

/// The mean of rows `over` of `values` (row-major, `dim` wide).
pub fn mean_of_rows(values: &[f32], dim: usize, over: std::ops::Range<usize>) -> Vec<f32> {
    let mut mean = vec![0.0; dim];
    for row in values[over.start * dim..over.end * dim].chunks_exact(dim) {
        mean.iter_mut().zip(row).for_each(|(m, v)| *m += v);
    }
    mean.iter_mut().for_each(|m| *m /= over.len() as f32);
    mean
}

/// What a probe reads from the states kept at probe [`Positions`] (one or two rows per
/// tapped block, `per_block` in tap order): every block's first row, then every block's
/// second (the layout [`crate::models::probe::StateProbe`] reads: with
/// [`Positions::LastAndMean`], the last token's features, then the mean's).
pub fn probe_features(per_block: &[Vec<f32>], dim: usize) -> Vec<f32> {
    let rows = per_block.first().map_or(0, |b| b.len() / dim);
    (0..rows)
        .flat_map(|r| {
            per_block
                .iter()
                .flat_map(move |b| &b[r * dim..(r + 1) * dim])
        })
        .copied()
        .collect()
}

/// Keys and values of the positions seen so far, per layer: `[1, kv_heads, t, head_dim]`.
/// Cloning shares the tensors (a shared prefix is computed once).
#[derive(Clone)]
pub struct KvCache {
    keys: Vec<Option<Tensor<4>>>,
    values: Vec<Option<Tensor<4>>>,
    len: usize,
    /// The same keys and values as host buffers after `host_loops` ran (then `keys` and
    /// `values` are `None`); converted back when burn's path runs next.
    host: Option<Vec<host_loops::LayerKv>>,
    /// Which adapters the sequence runs with (fixed for the cache's life: its keys and values
    /// depend on it).
    weights: SequenceWeights,
}

/// The adapters a sequence runs with.
#[derive(Clone, Copy, PartialEq, Eq, Debug)]
enum SequenceWeights {
    /// The installed ones ([`Llama::set_adapters`]), if any.
    Installed,
    /// The safety adapters ([`Llama::set_safety_adapters`]).
    Safety,
    /// None: the model as loaded ([`Llama::new_base_cache`]).
    Base,
}

impl KvCache {
    /// Whether the keys and values are host buffers: the CPU's plain loops (`host_loops`)
    /// ran last on this cache.
    pub fn on_host(&self) -> bool {
        self.host.is_some()
    }

    /// Positions cached.
    pub fn len(&self) -> usize {
        self.len
    }

    /// Whether nothing is cached yet.
    pub fn is_empty(&self) -> bool {
        self.len == 0
    }
}

/// A GGUF tensor dequantised to f32 on `device`, checked against the shape the model needs
/// (row-major, PyTorch's `[out, in]` for projections).
fn load<const D: usize>(
    gguf: &Gguf<'_>,
    name: &str,
    shape: [usize; D],
    device: &Device,
) -> Result<Tensor<D>> {
    Ok(Tensor::from_data(
        TensorData::new(load_values(gguf, name, shape)?, shape),
        device,
    ))
}

/// [`load`]'s values, on the host (a GPU tensor cannot be read back synchronously in wasm).
fn load_values<const D: usize>(gguf: &Gguf<'_>, name: &str, shape: [usize; D]) -> Result<Vec<f32>> {
    let info = gguf.tensor_info(name)?;
    if info.shape() != shape {
        return Err(Error::ModelFile(format!(
            "GGUF tensor {name} has shape {:?}; the model needs {shape:?}",
            info.shape()
        )));
    }
    let values = gguf.dequantize(name)?;
    gguf.release(info);
    Ok(values)
}

fn rms_norm(x: Tensor<3>, weight: &Tensor<1>, eps: f64) -> Tensor<3> {
    let [_, _, d] = x.dims();
    let rms = x
        .clone()
        .powf_scalar(2.0)
        .mean_dim(2)
        .add_scalar(eps)
        .sqrt();
    (x / rms) * weight.clone().reshape([1, 1, d])
}

/// `x [b, s, in] · wᵀ` for `w [out, in]`, as one 2-D product.
fn project_dense(x: Tensor<3>, w: &Tensor<2>) -> Tensor<3> {
    let [b, s, d] = x.dims();
    let out = w.dims()[0];
    x.reshape([b * s, d])
        .matmul(w.clone().transpose())
        .reshape([b, s, out])
}

impl Llama {
    /// Builds the model from a parsed GGUF.
    pub fn load(gguf: &Gguf<'_>, device: &Device) -> Result<Self> {
        let c = LlamaConfig::from_gguf(gguf)?;
        let (d, kv) = (c.dim, c.kv_heads * c.head_dim());
        let mut blocks = Vec::with_capacity(c.layers);
        for i in 0..c.layers {
            let n = |part: &str| format!("blk.{i}.{part}.weight");
            let projections = Projection::ALL
                .iter()
                .map(|&p| {
                    let (name, shape) = match p {
                        Projection::Q => ("attn_q", [d, d]),
                        Projection::K => ("attn_k", [kv, d]),
                        Projection::V => ("attn_v", [kv, d]),
                        Projection::O => ("attn_output", [d, d]),
                        Projection::Gate => ("ffn_gate", [c.ffn_dim, d]),
                        Projection::Up => ("ffn_up", [c.ffn_dim, d]),
                        Projection::Down => ("ffn_down", [d, c.ffn_dim]),
                    };
                    Weight::load(gguf, &n(name), shape, device)
                })
                .collect::<Result<Vec<_>>>()?;
            let attn_norm = load_values(gguf, &n("attn_norm"), [d])?;
            let ffn_norm = load_values(gguf, &n("ffn_norm"), [d])?;
            let tensor = |v: &[f32]| Tensor::from_data(TensorData::new(v.to_vec(), [d]), device);
            blocks.push(Block {
                attn_norm: tensor(&attn_norm),
                ffn_norm: tensor(&ffn_norm),
                host_norms: [attn_norm, ffn_norm],
                projections,
            });
        }
        let gpu = if *device == Device::flex() {
            Err("the CPU backend runs".to_string())
        } else {
            Engine::load(gguf, &c, device).map_err(|e| e.to_string())
        };
        let embedding = Weight::load(gguf, "token_embd.weight", [c.vocab_size, d], device)?;
        let output_norm = load(gguf, "output_norm.weight", [d], device)?;
        // Everything is copied: a mapped file's pages go back (see `Gguf::release_all`).
        gguf.release_all();
        Ok(Llama {
            gpu,
            embedding,
            output_norm,
            blocks,
            config: c,
            device: device.clone(),
            adapters: None,
            safety: None,
            attention_chunk: ATTENTION_CHUNK,
            attention_peak: AtomicUsize::new(0),
            precision: Precision::from_env(),
            host_steps: true,
            kept_prefix: Mutex::new(None),
        })
    }

    /// Whether generated tokens and short prompts on the CPU backend run in plain loops over
    /// host vectors (default) or through burn's ops (the reference the tests compare the loops
    /// with; the two agree up to f32 rounding of sums). Drops the kept prefix, computed the
    /// other way.
    pub fn set_host_steps(&mut self, on: bool) {
        self.host_steps = on;
        self.forget_kept_prefix();
    }

    /// How the CPU's packed products of a few positions (decoding) round.
    pub fn precision(&self) -> Precision {
        self.precision
    }

    /// Sets how packed products round ([`Precision::Exact`]: the GGUF's weights times f32
    /// activations; [`Precision::Int8`]: 8-bit activations, faster). GPU weights are f32 either
    /// way.
    pub fn set_precision(&mut self, precision: Precision) {
        self.precision = precision;
        self.forget_kept_prefix();
    }

    /// The GPU engine generation runs in ([`crate::models::gpu`]), or why it does not run:
    /// none on the CPU backend or when the file's blocks are not what its kernels read, and
    /// none while LoRA adapters are applied (burn's path adds them).
    pub fn gpu_engine(&self) -> std::result::Result<&Engine, String> {
        match (&self.gpu, &self.adapters) {
            (Ok(_), Some(_)) => Err("LoRA adapters are applied (burn's path adds them)".into()),
            (Ok(engine), None) => Ok(engine),
            (Err(reason), _) => Err(reason.clone()),
        }
    }

    /// Sets how the GPU engine's sequences made from now on store their KV cache (nothing
    /// without an engine).
    pub fn set_gpu_kv_precision(&mut self, kv: KvPrecision) {
        if let Ok(engine) = &mut self.gpu {
            engine.set_kv_precision(kv);
        }
    }

    /// Sets how the GPU engine lays out a decoded position's products (nothing without an
    /// engine; the default is picked from the adapter).
    pub fn set_gpu_decode_layout(&mut self, layout: DecodeLayout) {
        if let Ok(engine) = &mut self.gpu {
            engine.set_decode_layout(layout);
        }
    }

    /// Query rows per attention chunk.
    pub fn attention_chunk(&self) -> usize {
        self.attention_chunk
    }

    /// Computes attention `rows` query positions at a time from now on (default
    /// [`ATTENTION_CHUNK`]). The results are the same for any value, to rounding; smaller
    /// values hold smaller scores tensors and run more, smaller products. 0 is an error.
    pub fn set_attention_chunk(&mut self, rows: usize) -> Result<()> {
        if rows == 0 {
            return Err(Error::InvalidInput(
                "attention chunks need at least one query row".into(),
            ));
        }
        self.attention_chunk = rows;
        self.forget_kept_prefix();
        Ok(())
    }

    /// The number of elements of the largest attention scores tensor (`[batch, heads, rows,
    /// keys]`, f32) built since loading or the last [`Llama::reset_attention_peak`]: at most
    /// `batch x heads x attention_chunk x positions`, whatever the prompt's length.
    pub fn largest_attention_scores(&self) -> usize {
        self.attention_peak.load(Ordering::Relaxed)
    }

    /// Starts [`Llama::largest_attention_scores`] again from 0.
    pub fn reset_attention_peak(&self) {
        self.attention_peak.store(0, Ordering::Relaxed);
    }

    /// `[out, in]` of projection `p` (the same in every block).
    pub fn projection_shape(&self, p: Projection) -> [usize; 2] {
        self.blocks[0].projections[p.index()].shape()
    }

    /// The `[out, in]` shapes of the factors `config` needs, block-major (see [`Lora`]); none
    /// when its first block is past the last.
    pub fn lora_shapes(&self, config: &LoraConfig) -> Vec<[usize; 2]> {
        (config.first_block..self.blocks.len())
            .flat_map(|_| config.targets.iter().map(|&p| self.projection_shape(p)))
            .collect()
    }

    /// Checks that `config` adapts at least one of this model's blocks.
    pub fn check_lora_blocks(&self, config: &LoraConfig) -> Result<()> {
        if config.first_block >= self.blocks.len() {
            return Err(Error::InvalidInput(format!(
                "LoRA's first block {} is past the model's last ({})",
                config.first_block,
                self.blocks.len() - 1
            )));
        }
        Ok(())
    }

    /// The final RMSNorm weight `[dim]`.
    pub fn output_norm(&self) -> Tensor<1> {
        self.output_norm.clone()
    }

    /// The adapters applied, if any.
    pub fn adapters(&self) -> Option<&Adapters> {
        self.adapters.as_ref()
    }

    /// Applies `adapters` from now on (`None`: the base model). Errors, changing nothing, when
    /// their shapes do not fit this model.
    pub fn set_adapters(&mut self, adapters: Option<Adapters>) -> Result<()> {
        if let Some(a) = &adapters {
            self.check_adapters(a)?;
        }
        self.adapters = adapters;
        self.forget_kept_prefix();
        Ok(())
    }

    /// The safety adapters, if any.
    pub fn safety_adapters(&self) -> Option<&Adapters> {
        self.safety.as_ref()
    }

    /// Keeps `adapters` for sequences started with [`Llama::new_safety_cache`] (`None`:
    /// none); the installed adapters and other sequences are unaffected. Errors, changing
    /// nothing, when their shapes do not fit this model.
    pub fn set_safety_adapters(&mut self, adapters: Option<Adapters>) -> Result<()> {
        if let Some(a) = &adapters {
            self.check_adapters(a)?;
        }
        self.safety = adapters;
        Ok(())
    }

    /// Checks that `a`'s configuration and factors fit this model.
    fn check_adapters(&self, a: &Adapters) -> Result<()> {
        a.config.validate()?;
        self.check_lora_blocks(&a.config)?;
        let want = self.lora_shapes(&a.config);
        let got: Vec<[usize; 2]> = a
            .lora
            .factors
            .iter()
            .map(|f| {
                let [d_in, r] = f.a.val().dims();
                let [r2, out] = f.b.val().dims();
                if r == a.config.rank && r2 == r {
                    [out, d_in]
                } else {
                    [0, 0]
                }
            })
            .collect();
        if got != want {
            return Err(Error::InvalidInput(format!(
                "these adapters do not fit this model: {} factors of rank {} for {} blocks \
                 x {:?} were expected",
                want.len(),
                a.config.rank,
                self.blocks.len() - a.config.first_block,
                a.config.targets
            )));
        }
        Ok(())
    }

    /// The hyper-parameters.
    pub fn config(&self) -> &LlamaConfig {
        &self.config
    }

    /// Bytes of f32 weights burn's path has widened onto the GPU so far (0 on the CPU
    /// backend, and on a GPU while only the engine ran: see [`DenseCache`]).
    pub fn widened_weight_bytes(&self) -> usize {
        let widened = |w: &Weight| match w {
            Weight::Dense(w) => w.widened_bytes(),
            Weight::Packed(_) => 0,
        };
        let matrices: usize = self
            .blocks
            .iter()
            .flat_map(|b| &b.projections)
            .map(widened)
            .sum();
        matrices + widened(&self.embedding)
    }

    /// Bytes burn's path holds for the weights: the GGUF's blocks (on the host), plus on a GPU
    /// the f32 copies made once that path ran (the engine's are [`Engine::weight_bytes`]).
    pub fn resident_weight_bytes(&self) -> usize {
        let norms = (self.blocks.len() * 2 + 1) * self.config.dim * 4;
        let matrices: usize = self
            .blocks
            .iter()
            .flat_map(|b| &b.projections)
            .map(Weight::resident_bytes)
            .sum();
        norms + matrices + self.embedding.resident_bytes()
    }

    /// The device it runs on.
    pub fn device(&self) -> &Device {
        &self.device
    }

    /// An empty cache for one sequence.
    pub fn new_cache(&self) -> KvCache {
        KvCache {
            keys: vec![None; self.config.layers],
            values: vec![None; self.config.layers],
            len: 0,
            host: None,
            weights: SequenceWeights::Installed,
        }
    }

    /// An empty cache for a sequence that runs with the safety adapters (see
    /// [`Llama::set_safety_adapters`]) instead of the installed ones; errors when there are
    /// none.
    pub fn new_safety_cache(&self) -> Result<KvCache> {
        if self.safety.is_none() {
            return Err(Error::InvalidInput(
                "the chat model has no safety adapters".into(),
            ));
        }
        Ok(KvCache {
            weights: SequenceWeights::Safety,
            ..self.new_cache()
        })
    }

    /// An empty cache for a sequence that runs the model as loaded, whatever adapters are
    /// installed: what the guard's probes read, since they were fitted on those states.
    pub fn new_base_cache(&self) -> KvCache {
        KvCache {
            weights: SequenceWeights::Base,
            ..self.new_cache()
        }
    }

    /// The weights `cache`'s sequence runs with.
    fn weights_for(&self, cache: &KvCache) -> Inference<'_> {
        match cache.weights {
            SequenceWeights::Installed => Inference::installed(self),
            SequenceWeights::Safety => Inference(self, self.safety.as_ref()),
            SequenceWeights::Base => Inference(self, None),
        }
    }

    /// cos and sin `[s, head_dim / 2]` for positions `start..start + s`, on `device`.
    fn rope_tables(&self, start: usize, s: usize, device: &Device) -> (Tensor<2>, Tensor<2>) {
        let half = self.config.head_dim() / 2;
        let (mut cos, mut sin) = (Vec::with_capacity(s * half), Vec::with_capacity(s * half));
        for p in start..start + s {
            let (c, s) = self.rope_angles(p);
            cos.extend(c);
            sin.extend(s);
        }
        (
            Tensor::from_data(TensorData::new(cos, [s, half]), device),
            Tensor::from_data(TensorData::new(sin, [s, half]), device),
        )
    }

    /// cos and sin of position `p`'s angles (`head_dim / 2` each), computed in f64.
    fn rope_angles(&self, p: usize) -> (Vec<f32>, Vec<f32>) {
        let hd = self.config.head_dim();
        (0..hd / 2)
            .map(|i| {
                let freq = self.config.rope_base.powf(-(2.0 * i as f64) / hd as f64);
                let angle = p as f64 * freq;
                (angle.cos() as f32, angle.sin() as f32)
            })
            .unzip()
    }

    /// Rotates adjacent pairs of `x [b, h, s, head_dim]`.
    fn rope(x: Tensor<4>, cos: &Tensor<2>, sin: &Tensor<2>) -> Tensor<4> {
        let [b, h, s, hd] = x.dims();
        let half = hd / 2;
        let pairs = x.reshape([b, h, s, half, 2]);
        let x0 = pairs.clone().narrow(4, 0, 1).reshape([b, h, s, half]);
        let x1 = pairs.narrow(4, 1, 1).reshape([b, h, s, half]);
        let cos = cos.clone().reshape([1, 1, s, half]);
        let sin = sin.clone().reshape([1, 1, s, half]);
        let r0 = x0.clone() * cos.clone() - x1.clone() * sin.clone();
        let r1 = x0 * sin + x1 * cos;
        Tensor::stack::<5>(vec![r0, r1], 4).reshape([b, h, s, hd])
    }

    /// Checks ids against the vocabulary and the context window.
    fn check_ids(&self, ids: &[u32], cached: usize) -> Result<()> {
        let c = &self.config;
        if ids.is_empty() {
            return Err(Error::InvalidInput("no tokens to run".into()));
        }
        if let Some(id) = ids.iter().find(|&&i| i as usize >= c.vocab_size) {
            return Err(Error::InvalidInput(format!(
                "token id {id} is outside the vocabulary of {}",
                c.vocab_size
            )));
        }
        if cached + ids.len() > c.context_length {
            return Err(Error::InvalidInput(format!(
                "{} cached + {} new tokens exceed the context window of {}",
                cached,
                ids.len(),
                c.context_length
            )));
        }
        Ok(())
    }

    /// Logits `[1, vocab]` of the last of `ids`, which follow the cached positions (generation
    /// needs no others, and skipping them saves the largest product); the cache grows by
    /// `ids.len()`. Errors for empty input, ids outside the vocabulary and overflowing the
    /// context window.
    pub fn forward(&self, ids: &[u32], cache: &mut KvCache) -> Result<Tensor<2>> {
        Ok(self.forward_with_states(ids, cache, &[])?.0)
    }

    /// [`Llama::forward`], plus the residual stream at the last of `ids` after each block in
    /// `layers` (`[1, dim]` each, in the order asked): what a probe reads to judge the prompt
    /// the model is about to answer, at no extra cost. Layers past the last block are errors.
    pub fn forward_with_states(
        &self,
        ids: &[u32],
        cache: &mut KvCache,
        layers: &[usize],
    ) -> Result<(Tensor<2>, Vec<Tensor<2>>)> {
        self.forward_with_states_at(ids, cache, layers, Positions::Last)
    }

    /// [`Llama::forward_with_states`] keeping every position of `ids` (`[ids.len(), dim]` per
    /// layer): the answer probe reads an answer's states at its sentence ends.
    pub fn forward_with_all_states(
        &self,
        ids: &[u32],
        cache: &mut KvCache,
        layers: &[usize],
    ) -> Result<(Tensor<2>, Vec<Tensor<2>>)> {
        self.forward_with_states_at(ids, cache, layers, Positions::All)
    }

    /// The residual stream at `positions` of `ids` after each block in `layers` (in the order
    /// asked), continuing from `prefix` (which is not changed): what a probe reads. Unlike
    /// [`Llama::forward_with_states`] no logits are made and the blocks after the deepest of
    /// `layers` do not run (3 of SmolLM2's 30 for the shipped probe). The adapters `prefix`
    /// runs with apply (the installed ones, the safety adapters for a cache from
    /// [`Llama::new_safety_cache`], none for one from [`Llama::new_base_cache`]).
    pub fn states_after(
        &self,
        prefix: &KvCache,
        ids: &[u32],
        layers: &[usize],
        positions: Positions,
    ) -> Result<Vec<Tensor<2>>> {
        self.check_ids(ids, prefix.len)?;
        if layers.is_empty() {
            return Err(Error::InvalidInput("no layers to read states from".into()));
        }
        self.check_layers(layers)?;
        positions.check(ids.len())?;
        let mut cache = prefix.clone();
        let mut taps = Taps {
            layers,
            positions,
            states_only: true,
            states: vec![None; layers.len()],
        };
        let (s, d) = (ids.len(), self.config.dim);
        let start = cache.len;
        let weights = self.weights_for(&cache);
        if self.host_loops_apply(s, weights.1.is_some()) {
            self.host_forward(ids, &mut cache, &mut taps)?;
        } else {
            self.cache_to_tensors(&mut cache);
            let x = self.embedding.rows(ids, &self.device).reshape([1, s, d]);
            self.blocks_forward(&weights, x, start, Some(&mut cache), Some(&mut taps))?;
        }
        Ok(taps.states.into_iter().flatten().collect())
    }

    /// A cache holding `prefix` (token ids), computed the first time and kept until another
    /// prefix is asked for or a setting changes what the blocks compute: the guard judges
    /// every request after the same default system turn, whose 20 tokens are then run once.
    pub fn kept_prefix(&self, prefix: &[u32]) -> Result<KvCache> {
        let mut kept = self
            .kept_prefix
            .lock()
            .unwrap_or_else(PoisonError::into_inner);
        if let Some((ids, cache)) = kept.as_ref()
            && ids == prefix
        {
            return Ok(cache.clone());
        }
        let mut cache = self.new_cache();
        if !prefix.is_empty() {
            self.forward(prefix, &mut cache)?;
        }
        *kept = Some((prefix.to_vec(), cache.clone()));
        Ok(cache)
    }

    /// Errors when a layer asked for is past the last block.
    fn check_layers(&self, layers: &[usize]) -> Result<()> {
        match layers.iter().find(|&&l| l >= self.blocks.len()) {
            Some(l) => Err(Error::InvalidInput(format!(
                "layer {l} is past the model's {} blocks",
                self.blocks.len()
            ))),
            None => Ok(()),
        }
    }

    /// Drops the kept prefix (see [`Llama::kept_prefix`]): its keys and values no longer are
    /// what the blocks compute.
    fn forget_kept_prefix(&mut self) {
        *self
            .kept_prefix
            .get_mut()
            .unwrap_or_else(PoisonError::into_inner) = None;
    }

    /// [`Llama::forward_with_states`] keeping the states at `positions` of `ids` (a
    /// [`Positions::Mean`] range counts from the first of `ids`).
    pub fn forward_with_states_at(
        &self,
        ids: &[u32],
        cache: &mut KvCache,
        layers: &[usize],
        positions: Positions,
    ) -> Result<(Tensor<2>, Vec<Tensor<2>>)> {
        self.check_ids(ids, cache.len)?;
        self.check_layers(layers)?;
        positions.check(ids.len())?;
        let (s, d) = (ids.len(), self.config.dim);
        let start = cache.len;
        let mut taps = Taps {
            layers,
            positions,
            states_only: false,
            states: vec![None; layers.len()],
        };
        let weights = self.weights_for(cache);
        let x = if self.host_loops_apply(s, weights.1.is_some()) {
            self.host_forward(ids, cache, &mut taps)?
        } else {
            self.cache_to_tensors(cache);
            let x = self.embedding.rows(ids, &self.device).reshape([1, s, d]);
            self.blocks_forward(&weights, x, start, Some(cache), Some(&mut taps))?
        };
        let states = taps.states.into_iter().flatten().collect();
        let last = x.narrow(1, s - 1, 1);
        let last = rms_norm(last, &self.output_norm, self.config.rms_eps);
        let logits = self
            .embedding
            .project(last, self.precision)?
            .reshape([1, self.config.vocab_size]);
        Ok((logits, states))
    }

    /// Logits `[b, s, vocab]` at every position of `batch` (`b` sequences of equal length `s`)
    /// with `lora` (on the autodiff `device`) applied: the training forward pass. The frozen
    /// weights are copied to `device` as f32 one matrix at a time.
    pub fn forward_train(
        &self,
        batch: &[Vec<u32>],
        lora: &Lora,
        config: &LoraConfig,
        device: &Device,
    ) -> Result<Tensor<3>> {
        let s = batch.first().map_or(0, Vec::len);
        if batch.iter().any(|ids| ids.len() != s) {
            return Err(Error::InvalidInput(
                "training sequences must have one length".into(),
            ));
        }
        for ids in batch {
            self.check_ids(ids, 0)?;
        }
        let (b, d) = (batch.len(), self.config.dim);
        let ids: Vec<u32> = batch.concat();
        let x = self
            .embedding
            .rows(&ids, &self.device)
            .to_device(device)
            .reshape([b, s, d]);
        let weights = Training {
            model: self,
            lora,
            config,
            device: device.clone(),
        };
        let x = self.blocks_forward(&weights, x, 0, None, None)?;
        let norm = self.output_norm.clone().to_device(device);
        let x = rms_norm(x, &norm, self.config.rms_eps).reshape([b * s, d]);
        let logits = x.matmul(self.embedding.dense_on(device).transpose());
        Ok(logits.reshape([b, s, self.config.vocab_size]))
    }

    /// The blocks over `x [b, s, dim]` at positions `start..`, through the cache if given,
    /// keeping the states after the blocks `taps` asks for.
    fn blocks_forward(
        &self,
        w: &dyn BlockWeights,
        mut x: Tensor<3>,
        start: usize,
        mut cache: Option<&mut KvCache>,
        mut taps: Option<&mut Taps<'_>>,
    ) -> Result<Tensor<3>> {
        let c = &self.config;
        let [b, s, _] = x.dims();
        let (hd, h, kvh) = (c.head_dim(), c.heads, c.kv_heads);
        let device = w.device().clone();
        let (cos, sin) = self.rope_tables(start, s, &device);
        let total = start + s;
        // Causal attention in chunks of query rows (see `ATTENTION_CHUNK`). Rows `q0..q0 + n`
        // see every key before `start + q0` and, of the chunk's own keys, those up to their
        // position: one `[n, n]` triangle, the same for every chunk.
        let rows = self.attention_chunk.min(s);
        let triangle: Vec<f32> = (0..rows)
            .flat_map(|i| (0..rows).map(move |j| if j <= i { 0.0 } else { -1e9 }))
            .collect();
        let triangle = Tensor::<2>::from_data(TensorData::new(triangle, [rows, rows]), &device);
        let chunk_mask = |q0: usize, n: usize| -> Tensor<2> {
            let own = triangle.clone().narrow(0, 0, n).narrow(1, 0, n);
            match start + q0 {
                0 => own,
                seen => Tensor::cat(vec![Tensor::zeros([n, seen], &device), own], 1),
            }
        };
        let scale = (hd as f64).sqrt();
        let blocks = match taps.as_ref() {
            Some(t) if t.states_only => t.layers.iter().max().map_or(0, |&l| l + 1),
            _ => self.blocks.len(),
        };
        for l in 0..blocks {
            let a = rms_norm(x.clone(), &w.norm(l, false), c.rms_eps);
            let split = |t: Tensor<3>, n: usize| t.reshape([b, s, n, hd]).swap_dims(1, 2);
            let q = Self::rope(
                split(w.project(l, Projection::Q, a.clone())?, h),
                &cos,
                &sin,
            );
            let k = Self::rope(
                split(w.project(l, Projection::K, a.clone())?, kvh),
                &cos,
                &sin,
            );
            let v = split(w.project(l, Projection::V, a)?, kvh);
            let (k, v) = match cache.as_mut() {
                Some(cache) => {
                    let k = match cache.keys[l].take() {
                        Some(prev) => Tensor::cat(vec![prev, k], 2),
                        None => k,
                    };
                    let v = match cache.values[l].take() {
                        Some(prev) => Tensor::cat(vec![prev, v], 2),
                        None => v,
                    };
                    cache.keys[l] = Some(k.clone());
                    cache.values[l] = Some(v.clone());
                    (k, v)
                }
                None => (k, v),
            };
            // Each KV head serves `group` consecutive query heads (head j uses KV head j /
            // group): the query heads are stacked per KV head, [b, kvh, group · n, hd], rather
            // than the keys and values copied `group` times (which moved 3x the cache through
            // memory per layer and token: ~28 MB per token at 200 positions).
            let group = h / kvh;
            let keys_t = k.swap_dims(2, 3);
            let mut parts = Vec::with_capacity(s.div_ceil(rows));
            for q0 in (0..s).step_by(rows) {
                let n = rows.min(s - q0);
                let seen = start + q0 + n;
                self.attention_peak
                    .fetch_max(b * h * n * seen, Ordering::Relaxed);
                let scores = q
                    .clone()
                    .narrow(2, q0, n)
                    .reshape([b, kvh, group * n, hd])
                    .matmul(keys_t.clone().narrow(3, 0, seen))
                    .div_scalar(scale);
                // One row sees every key: nothing to mask (each generated token).
                let scores = if n == 1 {
                    scores
                } else {
                    let scores = scores.reshape([b, kvh, group, n, seen]);
                    let masked = scores + chunk_mask(q0, n).reshape([1, 1, 1, n, seen]);
                    masked.reshape([b, kvh, group * n, seen])
                };
                let ctx = softmax(scores, 3).matmul(v.clone().narrow(2, 0, seen));
                parts.push(ctx.reshape([b, h, n, hd]));
            }
            let ctx = if parts.len() == 1 {
                parts.remove(0)
            } else {
                Tensor::cat(parts, 2)
            };
            let ctx = ctx.swap_dims(1, 2).reshape([b, s, c.dim]);
            x = x + w.project(l, Projection::O, ctx)?;
            let f = rms_norm(x.clone(), &w.norm(l, true), c.rms_eps);
            let ff = silu(w.project(l, Projection::Gate, f.clone())?)
                * w.project(l, Projection::Up, f)?;
            x = x + w.project(l, Projection::Down, ff)?;
            if let Some(taps) = taps.as_mut() {
                for (slot, _) in taps.layers.iter().enumerate().filter(|(_, t)| **t == l) {
                    taps.states[slot] = Some(match &taps.positions {
                        Positions::All => x.clone().reshape([b * s, c.dim]),
                        Positions::Last => x.clone().narrow(1, s - 1, 1).reshape([b, c.dim]),
                        Positions::Mean(r) => (x.clone().narrow(1, r.start, r.len()))
                            .mean_dim(1)
                            .reshape([b, c.dim]),
                        Positions::LastAndMean(r) => Tensor::cat(
                            vec![
                                x.clone().narrow(1, s - 1, 1),
                                x.clone().narrow(1, r.start, r.len()).mean_dim(1),
                            ],
                            1,
                        )
                        .reshape([b * 2, c.dim]),
                    });
                }
            }
        }
        if let Some(cache) = cache {
            cache.len = total;
        }
        Ok(x)
    }
}
