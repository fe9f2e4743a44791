//! Loading the engine, running positions through it, reading results back, and counting
//! what that cost (dispatches, read-back bytes).
//!
//! One step over `n` new positions is, per block: RMSNorm + QKV (one stacked Q4_1 matrix),
//! RoPE + KV write, attention, output projection + residual, RMSNorm + gate/up + SwiGLU, down
//! projection + residual: 6 dispatches; decoding (`n = 1`) 5, the attention kernel rotating
//! its position and writing the caches itself. Around the blocks:
//! the embedding lookup, the final RMSNorm of the last position, its logits, and (greedy) the
//! argmax. Nothing is read back until the caller asks for the token (8 bytes) or the logits.
//! The KV cache is `max_positions` long from the start (2,048), so a step never reallocates
//! nor copies it; the RoPE angles are an f64-computed table (GPUs' `sin`/`cos` are only
//! accurate near zero, and 2,048 radians is not near zero).

use std::ops::Range;
use std::sync::atomic::{AtomicU64, Ordering};

use burn::tensor::Device;
use cubecl::prelude::*;
use cubecl::server::Handle;

use super::kernels::{self, LANES, ROWS};
use super::weights::{self, HostBlocks, QMatrix, Quant};
use super::{Candidates, DecodeLayout, KvPrecision, MAX_TOP_CANDIDATES};
use crate::error::{Error, Result};
use crate::models::llama::{LlamaConfig, Positions};
use crate::weights::gguf::Gguf;

/// Positions a [`Sequence`]'s KV cache holds.
pub const MAX_POSITIONS: usize = 2048;

struct Layer {
    attn_norm: Handle,
    ffn_norm: Handle,
    /// Q, K and V stacked: `[q_dim + 2·kv_dim, dim]`.
    qkv: QMatrix,
    o: QMatrix,
    /// Gate and up stacked: `[2·ffn, dim]` (one buffer pair: WebGPU allows 8 storage
    /// buffers per shader by default, and separate matrices with f32 scales and minimums made
    /// the SwiGLU kernel bind 9).
    gate_up: QMatrix,
    down: QMatrix,
}

/// What the engine launched and read back since it was loaded (or [`Engine::reset_stats`]).
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct EngineStats {
    /// Kernel launches.
    pub dispatches: u64,
    /// Bytes read back to the host.
    pub readback_bytes: u64,
    /// Bytes uploaded after loading (token ids).
    pub upload_bytes: u64,
}

/// SmolLM2 on the GPU, weights in their GGUF blocks. See the [module docs](super).
pub struct Engine {
    client: Client,
    config: LlamaConfig,
    layers: Vec<Layer>,
    embedding: QMatrix,
    output_norm: Handle,
    cos: Handle,
    sin: Handle,
    max_positions: usize,
    kv_precision: KvPrecision,
    decode_layout: DecodeLayout,
    /// One f32, bound as the products' `states` where they keep none (every launch binds it).
    no_states: Handle,
    weight_bytes: usize,
    table_bytes: usize,
    dispatches: AtomicU64,
    readback: AtomicU64,
    uploads: AtomicU64,
}

/// One sequence's state on the GPU: its KV cache (allocated once, [`MAX_POSITIONS`] long) and
/// the logits of its last position.
pub struct Sequence {
    k: Handle,
    v: Handle,
    kv_precision: KvPrecision,
    len: usize,
    logits: Handle,
    picked: Handle,
    /// Whether `logits` holds the last position's logits (a step ran).
    ready: bool,
    /// The token `picked` holds (the last [`Engine::argmax`], not yet run).
    picked_token: Option<u32>,
    /// Blocks whose output at the last position of each step is kept in `states`.
    taps: Vec<usize>,
    /// `[taps.len(), dim]` f32: the residual stream after each tapped block (none untapped);
    /// twice the rows for a sequence from [`Engine::prefill_tapped`] keeping both.
    states: Option<Handle>,
    /// Where the next step keeps the tapped states: the last position, a mean over a range
    /// ([`Engine::step_averaging`]), or both ([`Engine::prefill_tapped`]: the means go to the
    /// slots after the last positions', so `states` holds twice the taps).
    keep: Positions,
    /// Rows of `states` the last step wrote (the taps, or twice them after a step that kept
    /// both).
    kept_rows: usize,
}

impl Sequence {
    /// Positions cached.
    pub fn len(&self) -> usize {
        self.len
    }

    /// Whether nothing is cached.
    pub fn is_empty(&self) -> bool {
        self.len == 0
    }

    /// The token the last [`Engine::argmax`] picked, while it has not been run.
    pub fn picked(&self) -> Option<u32> {
        self.picked_token
    }

    /// The blocks whose states each step keeps ([`Engine::new_tapped_sequence`]).
    pub fn taps(&self) -> &[usize] {
        &self.taps
    }
}

/// The cubecl client of burn's wgpu `device`, or why there is none.
pub fn wgpu_client(device: &Device) -> Result<Client> {
    use burn::backend::DispatchDevice;
    match device.as_dispatch() {
        DispatchDevice::Cube(cube @ cubecl::Device::Wgpu(_)) => Ok(cube.client()),
        other => Err(Error::Backend(format!(
            "the GPU engine runs on burn's wgpu device, not {other:?}"
        ))),
    }
}

/// Bytes cubecl's pools hold in use on burn's wgpu `device` now (burn's tensors and the
/// engine's buffers alike); `None` off wgpu.
pub fn device_bytes_in_use(device: &Device) -> Option<u64> {
    let client = wgpu_client(device).ok()?;
    Some(
        client
            .memory_report(cubecl::MemoryScope::Device)
            .usage()
            .bytes_in_use,
    )
}

fn arg(handle: &Handle, len: usize) -> BufferArg {
    // SAFETY: every handle passed is at least `len` elements long (allocated here for that).
    unsafe { BufferArg::from_raw_parts(handle.clone(), len) }
}

impl Engine {
    /// Uploads the model's blocks to burn's wgpu `device`. Errors (so the caller keeps the
    /// burn path) when the device is not wgpu, a matrix is not Q4_1/Q8_0 as the kernels need,
    /// or the head width differs from the attention kernel's 64.
    pub fn load(gguf: &Gguf<'_>, config: &LlamaConfig, device: &Device) -> Result<Self> {
        let client = wgpu_client(device)?;
        let c = config;
        let (d, kv) = (c.dim, c.kv_heads * c.head_dim());
        if c.head_dim() != LANES as usize {
            return Err(Error::Backend(format!(
                "the GPU engine's attention needs heads of {LANES}; this model's are {}",
                c.head_dim()
            )));
        }
        let mut layers = Vec::with_capacity(c.layers);
        let mut weight_bytes = 0;
        for i in 0..c.layers {
            let n = |part: &str| format!("blk.{i}.{part}.weight");
            let mut gate_up = HostBlocks::default();
            gate_up.push(gguf, &n("ffn_gate"), [c.ffn_dim, d])?;
            gate_up.push(gguf, &n("ffn_up"), [c.ffn_dim, d])?;
            let mut qkv = HostBlocks::default();
            qkv.push(gguf, &n("attn_q"), [d, d])?;
            qkv.push(gguf, &n("attn_k"), [kv, d])?;
            qkv.push(gguf, &n("attn_v"), [kv, d])?;
            let layer = Layer {
                attn_norm: weights::upload_f32(&client, gguf, &n("attn_norm"), d)?,
                ffn_norm: weights::upload_f32(&client, gguf, &n("ffn_norm"), d)?,
                qkv: qkv.upload(&client)?,
                o: weights::upload(&client, gguf, &n("attn_output"), [d, d])?,
                gate_up: gate_up.upload(&client)?,
                down: weights::upload(&client, gguf, &n("ffn_down"), [d, c.ffn_dim])?,
            };
            for m in [&layer.qkv, &layer.o, &layer.gate_up, &layer.down] {
                if m.quant != Quant::Q4_1 {
                    return Err(Error::Backend(format!(
                        "the GPU engine's block kernels read Q4_1; block {i} has {:?}",
                        m.quant
                    )));
                }
                // The products have no branch for rows past the end (see `kernels`).
                if !m.rows.is_multiple_of(ROWS as usize) {
                    return Err(Error::Backend(format!(
                        "the GPU engine's products need rows in multiples of {ROWS}; block {i} has a matrix of {}",
                        m.rows
                    )));
                }
                weight_bytes += m.bytes;
            }
            weight_bytes += 2 * d * 4;
            layers.push(layer);
        }
        let embedding = weights::upload(&client, gguf, "token_embd.weight", [c.vocab_size, d])?;
        if embedding.quant != Quant::Q8_0 {
            return Err(Error::Backend(format!(
                "the GPU engine reads the embedding as Q8_0; this file's is {:?}",
                embedding.quant
            )));
        }
        // The logits kernel has no branch for rows past the end and reads blocks in pairs.
        if !c.vocab_size.is_multiple_of(ROWS as usize) || !d.is_multiple_of(64) {
            return Err(Error::Backend(format!(
                "the GPU engine's logits need a vocabulary in multiples of {ROWS} and a width in multiples of 64 ({} and {d} here)",
                c.vocab_size
            )));
        }
        weight_bytes += embedding.bytes + d * 4;
        let output_norm = weights::upload_f32(&client, gguf, "output_norm.weight", d)?;
        let max_positions = MAX_POSITIONS.min(c.context_length);
        let (cos, sin) = rope_tables(c, max_positions);
        let table_bytes = (cos.len() + sin.len()) * 4;
        Ok(Engine {
            no_states: client.empty(4),
            cos: client.create_from_slice(f32::as_bytes(&cos)),
            sin: client.create_from_slice(f32::as_bytes(&sin)),
            client,
            config: c.clone(),
            layers,
            embedding,
            output_norm,
            max_positions,
            kv_precision: KvPrecision::default(),
            decode_layout: crate::backend::gpu_adapter()
                .map(|a| DecodeLayout::for_adapter(&a.name, &a.device_type))
                .unwrap_or(DecodeLayout::RowPerInvocation),
            weight_bytes,
            table_bytes,
            dispatches: AtomicU64::new(0),
            readback: AtomicU64::new(0),
            uploads: AtomicU64::new(0),
        })
    }

    /// Bytes of the weights on the GPU (blocks, f16 scales, f32 norms).
    pub fn weight_bytes(&self) -> usize {
        self.weight_bytes
    }

    /// Bytes of one new [`Sequence`] (KV cache, logits).
    pub fn sequence_bytes(&self) -> usize {
        let kv = self.config.kv_heads * self.config.head_dim();
        2 * self.config.layers * self.max_positions * kv * self.kv_precision.bytes()
            + self.config.vocab_size * 4
            + 8
    }

    /// How new sequences store their KV cache.
    pub fn kv_precision(&self) -> KvPrecision {
        self.kv_precision
    }

    /// Sets how sequences made from now on store their KV cache (default
    /// [`KvPrecision::F32`]).
    pub fn set_kv_precision(&mut self, kv: KvPrecision) {
        self.kv_precision = kv;
    }

    /// How decode steps lay out their products (picked from the adapter at load).
    pub fn decode_layout(&self) -> DecodeLayout {
        self.decode_layout
    }

    /// Sets how decode steps lay out their products (both give the same values to f32
    /// rounding; the speed differs by device, see [`DecodeLayout`]).
    pub fn set_decode_layout(&mut self, layout: DecodeLayout) {
        self.decode_layout = layout;
    }

    /// Bytes of the RoPE tables.
    pub fn table_bytes(&self) -> usize {
        self.table_bytes
    }

    /// Positions a sequence can hold.
    pub fn max_positions(&self) -> usize {
        self.max_positions
    }

    /// Bytes cubecl's memory pools hold on the device now (burn's tensors included: the
    /// engine shares burn's client).
    pub fn device_bytes_in_use(&self) -> u64 {
        self.client
            .memory_report(cubecl::MemoryScope::Device)
            .usage()
            .bytes_in_use
    }

    /// Bytes cubecl has reserved on the device now (in use, padding and free pool space).
    pub fn device_bytes_reserved(&self) -> u64 {
        self.client
            .memory_report(cubecl::MemoryScope::Device)
            .usage()
            .bytes_reserved
    }

    /// What was launched and read back so far.
    pub fn stats(&self) -> EngineStats {
        EngineStats {
            dispatches: self.dispatches.load(Ordering::Relaxed),
            readback_bytes: self.readback.load(Ordering::Relaxed),
            upload_bytes: self.uploads.load(Ordering::Relaxed),
        }
    }

    /// Starts [`Engine::stats`] again from 0.
    pub fn reset_stats(&self) {
        self.dispatches.store(0, Ordering::Relaxed);
        self.readback.store(0, Ordering::Relaxed);
        self.uploads.store(0, Ordering::Relaxed);
    }

    fn launched(&self, n: u64) {
        self.dispatches.fetch_add(n, Ordering::Relaxed);
    }

    /// An empty sequence (its KV cache allocated now, once).
    pub fn new_sequence(&self) -> Sequence {
        let kv = self.config.kv_heads * self.config.head_dim();
        let cache = self.config.layers * self.max_positions * kv * self.kv_precision.bytes();
        Sequence {
            k: self.client.empty(cache),
            v: self.client.empty(cache),
            kv_precision: self.kv_precision,
            len: 0,
            logits: self.client.empty(self.config.vocab_size * 4),
            picked: self.client.empty(8),
            ready: false,
            picked_token: None,
            taps: Vec::new(),
            states: None,
            keep: Positions::Last,
            kept_rows: 0,
        }
    }

    /// [`Engine::new_sequence`] whose steps also keep the residual stream after each block
    /// in `layers` at their last position ([`Engine::states`]: what the guard's probes
    /// read), at no extra dispatch: a tapped block's down projection copies it (a block
    /// listed twice costs one small copy dispatch per repeat). Errors for a layer past the
    /// last block.
    pub fn new_tapped_sequence(&self, layers: &[usize]) -> Result<Sequence> {
        if let Some(l) = layers.iter().find(|&&l| l >= self.layers.len()) {
            return Err(Error::InvalidInput(format!(
                "layer {l} is past the model's {} blocks",
                self.layers.len()
            )));
        }
        let mut seq = self.new_sequence();
        if !layers.is_empty() {
            seq.states = Some(self.client.empty(layers.len() * self.config.dim * 4));
            seq.taps = layers.to_vec();
        }
        Ok(seq)
    }

    /// Runs `ids` (following the cached positions) through the model; the logits of the last
    /// one stay on the GPU for [`Engine::argmax`] or [`Engine::logits`]. Only enqueues work.
    /// Errors for empty input, ids outside the vocabulary or past the cache's length.
    pub fn step(&self, seq: &mut Sequence, ids: &[u32]) -> Result<()> {
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
        if seq.len + ids.len() > self.max_positions {
            return Err(Error::InvalidInput(format!(
                "{} cached + {} new tokens exceed the GPU engine's cache of {} positions",
                seq.len,
                ids.len(),
                self.max_positions
            )));
        }
        let tokens = self.client.create_from_slice(u32::as_bytes(ids));
        self.uploads
            .fetch_add(4 * ids.len() as u64, Ordering::Relaxed);
        self.run(seq, &tokens, ids.len());
        Ok(())
    }

    /// [`Engine::step`] keeping the tapped states averaged over positions `over` of `ids`
    /// instead of at the last (what a probe reading a whole message reads): one small dispatch
    /// per tapped block. Errors as `step` does, and for a range that is empty or past `ids`.
    pub fn step_averaging(
        &self,
        seq: &mut Sequence,
        ids: &[u32],
        over: Range<usize>,
    ) -> Result<()> {
        self.step_keeping(seq, ids, Positions::Mean(over))
    }

    /// [`Engine::step`] keeping the tapped states at `keep` (one of the probe positions).
    /// [`Positions::LastAndMean`] writes twice the taps' rows: only for a sequence whose
    /// `states` buffer [`Engine::prefill_tapped`] made that large (the kernels run unchecked).
    fn step_keeping(&self, seq: &mut Sequence, ids: &[u32], keep: Positions) -> Result<()> {
        keep.check_for_probe(ids.len())?;
        seq.keep = keep;
        let stepped = self.step(seq, ids);
        seq.keep = Positions::Last;
        stepped
    }

    /// A new sequence tapping `layers` whose first step runs `prompt` keeping the states at
    /// `positions` of it, as [`Engine::states`] then gives them: the last position's, the mean
    /// over a range, or both (every block's last, then every block's mean: one small dispatch
    /// per tapped block more than the last alone). Later steps keep the last position.
    /// [`Positions::All`] is an error (a step keeps one row per tap).
    pub fn prefill_tapped(
        &self,
        layers: &[usize],
        prompt: &[u32],
        positions: &Positions,
    ) -> Result<Sequence> {
        let mut seq = self.new_tapped_sequence(layers)?;
        if matches!(positions, Positions::LastAndMean(_)) && !layers.is_empty() {
            seq.states = Some(self.client.empty(2 * layers.len() * self.config.dim * 4));
        }
        self.step_keeping(&mut seq, prompt, positions.clone())?;
        Ok(seq)
    }

    /// Runs the token the last [`Engine::argmax`] picked (greedy decoding), reading it from
    /// the GPU: nothing is uploaded. Returns it. Errors when no pick is pending or the cache
    /// is full.
    pub fn step_picked(&self, seq: &mut Sequence) -> Result<u32> {
        let token = seq.picked_token.ok_or_else(|| {
            Error::InvalidInput("no picked token to run: call argmax after a step first".into())
        })?;
        if seq.len + 1 > self.max_positions {
            return Err(Error::InvalidInput(format!(
                "{} cached + 1 new token exceed the GPU engine's cache of {} positions",
                seq.len, self.max_positions
            )));
        }
        let picked = seq.picked.clone();
        self.run(seq, &picked, 1);
        Ok(token)
    }

    /// Enqueues the step over the `n` token ids in `tokens` (checked by the caller).
    fn run(&self, seq: &mut Sequence, tokens: &Handle, n: usize) {
        let c = &self.config;
        let client = &self.client;
        let (d, hd, ffn) = (c.dim, c.head_dim(), c.ffn_dim);
        let kv = c.kv_heads * hd;
        let width = d + 2 * kv;
        let eps = c.rms_eps as f32;
        let start = seq.len;
        // The caches' length in u32 words (f16 values are two to a word).
        let cache_len = c.layers * self.max_positions * kv * seq.kv_precision.bytes() / 4;
        let f16 = seq.kv_precision == KvPrecision::F16;
        let x = client.empty(n * d * 4);
        let qkv = client.empty(n * width * 4);
        let ctx = client.empty(n * d * 4);
        let h = client.empty(n * ffn * 4);
        let lanes = CubeDim::new_1d(LANES);
        let rows_dim = CubeDim::new_1d(ROWS);
        // Positions per workgroup in the products: 1 when decoding; in prefill as many as fit
        // in 12 KB of staged inputs (4 of 576 values, 2 of 1,536), under WebGPU's 16 KB.
        let tile = |cols: usize| if n == 1 { 1 } else { (3072 / cols).clamp(1, 4) };
        // Invocations per row: the decode layout's when decoding, 1 in prefill.
        let split = if n == 1 {
            self.decode_layout.split()
        } else {
            1
        };
        // A decoded position is rotated (and cached) by the attention kernel itself.
        let rope_in_attention = n == 1;
        // Position groups of a decoded position's attention (see `kernels::attention`).
        let attention_groups = if split > 1 {
            kernels::ATTENTION_GROUPS as usize
        } else {
            1
        };
        let grid = |rows: usize, cols: usize| {
            CubeCount::Static(
                rows.div_ceil(ROWS as usize / split) as u32,
                n.div_ceil(tile(cols)) as u32,
                1,
            )
        };
        let pos = n as u32;

        // SAFETY: every index the kernel computes is inside its buffers (sized above from
        // the same shapes), so the bounds checks `launch` adds are dropped.
        unsafe {
            kernels::embed_q8_0::launch_unchecked(
                client,
                CubeCount::Static(pos, 1, 1),
                lanes,
                arg(tokens, n),
                arg(&self.embedding.words, self.embedding.rows * d / 4),
                arg(&self.embedding.scales, self.embedding.scale_words),
                arg(&x, n * d),
                self.embedding.rows,
                d,
            )
        };
        self.launched(1);
        for (l, w) in self.layers.iter().enumerate() {
            let q4 = |m: &QMatrix| {
                (
                    arg(&m.words, m.rows * m.cols / 32),
                    arg(&m.scales, m.scale_words),
                )
            };
            let (qw, qs) = q4(&w.qkv);
            // SAFETY: every index the kernel computes is inside its buffers (sized above from
            // the same shapes), so the bounds checks `launch` adds are dropped.
            unsafe {
                kernels::matvec_q4_1::launch_unchecked(
                    client,
                    grid(width, d),
                    rows_dim,
                    arg(&x, n * d),
                    arg(&w.attn_norm, d),
                    qw,
                    qs,
                    arg(&qkv, n * width),
                    arg(&self.no_states, 1),
                    n,
                    width,
                    eps,
                    0,
                    d,
                    true,
                    false,
                    tile(d),
                    false,
                    split,
                )
            };
            if !rope_in_attention {
                // SAFETY: every index the kernel computes is inside its buffers (sized above
                // from the same shapes), so the bounds checks `launch` adds are dropped.
                unsafe {
                    kernels::rope_kv::launch_unchecked(
                        client,
                        CubeCount::Static(pos, 1, 1),
                        lanes,
                        arg(&qkv, n * width),
                        arg(&self.cos, self.max_positions * hd / 2),
                        arg(&self.sin, self.max_positions * hd / 2),
                        arg(&seq.k, cache_len),
                        arg(&seq.v, cache_len),
                        start,
                        l,
                        d,
                        kv,
                        hd,
                        self.max_positions,
                        f16,
                    )
                };
                self.launched(1);
            }
            // SAFETY: every index the kernel computes is inside its buffers (sized above from
            // the same shapes), so the bounds checks `launch` adds are dropped.
            unsafe {
                kernels::attention::launch_unchecked(
                    client,
                    CubeCount::Static(c.heads as u32, pos, 1),
                    CubeDim::new_1d(LANES * attention_groups as u32),
                    arg(&qkv, n * width),
                    arg(&seq.k, cache_len),
                    arg(&seq.v, cache_len),
                    arg(&ctx, n * d),
                    arg(&self.cos, self.max_positions * hd / 2),
                    arg(&self.sin, self.max_positions * hd / 2),
                    start,
                    l,
                    d,
                    kv,
                    c.heads / c.kv_heads,
                    (hd as f32).sqrt(),
                    self.max_positions,
                    hd,
                    f16,
                    attention_groups,
                    rope_in_attention,
                )
            };
            let (ow, os) = q4(&w.o);
            // SAFETY: every index the kernel computes is inside its buffers (sized above from
            // the same shapes), so the bounds checks `launch` adds are dropped.
            unsafe {
                kernels::matvec_q4_1::launch_unchecked(
                    client,
                    grid(d, d),
                    rows_dim,
                    arg(&ctx, n * d),
                    arg(&w.attn_norm, d),
                    ow,
                    os,
                    arg(&x, n * d),
                    arg(&self.no_states, 1),
                    n,
                    d,
                    eps,
                    0,
                    d,
                    false,
                    true,
                    tile(d),
                    false,
                    split,
                )
            };
            let (gw, gs) = q4(&w.gate_up);
            // SAFETY: every index the kernel computes is inside its buffers (sized above from
            // the same shapes), so the bounds checks `launch` adds are dropped.
            unsafe {
                kernels::swiglu_q4_1::launch_unchecked(
                    client,
                    grid(ffn, d),
                    rows_dim,
                    arg(&x, n * d),
                    arg(&w.ffn_norm, d),
                    gw,
                    gs,
                    arg(&h, n * ffn),
                    n,
                    ffn,
                    eps,
                    d,
                    tile(d),
                    split,
                )
            };
            let (dw, ds) = q4(&w.down);
            // The rows written for this block: (slot, first position, end) of the positions
            // averaged into the slot. The down projection (which writes the block's output)
            // copies the last position into the first slot that keeps it; the others are
            // written by a small dispatch each (a block tapped twice; a mean).
            let taps = seq.taps.len();
            let mut copies: Vec<(usize, usize, usize)> = Vec::new();
            for slot in (0..taps).filter(|&slot| seq.taps[slot] == l) {
                match &seq.keep {
                    Positions::Last | Positions::All => copies.push((slot, n - 1, n)),
                    Positions::Mean(r) => copies.push((slot, r.start, r.end)),
                    Positions::LastAndMean(r) => {
                        copies.push((slot, n - 1, n));
                        copies.push((taps + slot, r.start, r.end));
                    }
                }
            }
            let fused = (copies.iter()).position(|&(_, from, to)| (from, to) == (n - 1, n));
            let first = fused.map(|i| copies.remove(i).0);
            let state_rows = match seq.keep {
                Positions::LastAndMean(_) => 2 * taps,
                _ => taps,
            };
            let states = match (&seq.states, first) {
                (Some(states), Some(_)) => arg(states, state_rows * d),
                _ => arg(&self.no_states, 1),
            };
            // SAFETY: every index the kernel computes is inside its buffers (sized above from
            // the same shapes), so the bounds checks `launch` adds are dropped.
            unsafe {
                kernels::matvec_q4_1::launch_unchecked(
                    client,
                    grid(d, ffn),
                    rows_dim,
                    arg(&h, n * ffn),
                    arg(&w.ffn_norm, d),
                    dw,
                    ds,
                    arg(&x, n * d),
                    states,
                    n,
                    d,
                    eps,
                    first.unwrap_or(0),
                    ffn,
                    false,
                    true,
                    tile(ffn),
                    first.is_some(),
                    split,
                )
            };
            self.launched(5);
            if let Some(states) = &seq.states {
                for (slot, from, to) in copies {
                    // SAFETY: `x` holds `n` positions of `d` (`from..to` inside them:
                    // `step_keeping` checks it) and `states` `state_rows` rows.
                    unsafe {
                        kernels::tap_state::launch_unchecked(
                            client,
                            CubeCount::Static(1, 1, 1),
                            lanes,
                            arg(&x, n * d),
                            arg(states, state_rows * d),
                            from,
                            to,
                            slot,
                            d,
                        )
                    };
                    self.launched(1);
                }
            }
        }
        let e = &self.embedding;
        // The last position normalised once (1 dispatch), then the logits read it directly.
        let xn = client.empty(d * 4);
        // SAFETY: every index the kernel computes is inside its buffers (sized above from
        // the same shapes), so the bounds checks `launch` adds are dropped.
        unsafe {
            kernels::final_norm::launch_unchecked(
                client,
                CubeCount::Static(1, 1, 1),
                lanes,
                arg(&x, n * d),
                arg(&self.output_norm, d),
                arg(&xn, d),
                n - 1,
                eps,
                d,
            )
        };
        // SAFETY: as above.
        unsafe {
            kernels::logits_q8_0::launch_unchecked(
                client,
                CubeCount::Static(e.rows as u32 / ROWS, 1, 1),
                CubeDim::new_1d(ROWS),
                arg(&xn, d),
                arg(&e.words, e.rows * d / 16),
                arg(&e.scales, e.scale_words),
                arg(&seq.logits, c.vocab_size),
                e.rows,
                d,
            )
        };
        self.launched(2);
        seq.len += n;
        seq.ready = true;
        seq.picked_token = None;
        seq.kept_rows = match seq.keep {
            Positions::LastAndMean(_) => 2 * seq.taps.len(),
            _ => seq.taps.len(),
        };
    }

    fn check_ready(seq: &Sequence) -> Result<()> {
        if seq.ready {
            Ok(())
        } else {
            Err(Error::InvalidInput(
                "no logits yet: run a step on this sequence first".into(),
            ))
        }
    }

    /// The greedy pick after the last step and its logit, computed on the GPU: reads back 8
    /// bytes. [`Engine::step_picked`] runs it next without uploading it.
    pub async fn argmax(&self, seq: &mut Sequence) -> Result<(u32, f32)> {
        Self::check_ready(seq)?;
        let vocab = self.config.vocab_size;
        // SAFETY: every index the kernel computes is inside its buffers (sized above from
        // the same shapes), so the bounds checks `launch` adds are dropped.
        unsafe {
            kernels::argmax::launch_unchecked(
                &self.client,
                CubeCount::Static(1, 1, 1),
                CubeDim::new_1d(LANES),
                arg(&seq.logits, vocab),
                arg(&seq.picked, 2),
                vocab,
            )
        };
        self.launched(1);
        let bytes = self.read(seq.picked.clone()).await?;
        let words = u32::from_bytes(&bytes);
        seq.picked_token = Some(words[0]);
        Ok((words[0], f32::from_bits(words[1])))
    }

    /// The `k` most likely tokens after the last step, best first, with their logits and
    /// the normaliser `sum(exp((logit - best) / temperature))` over the whole vocabulary,
    /// computed on the GPU: reads back `(2k + 1) · 4` bytes (516 for 64) instead of the whole
    /// row. `k` is 1 to [`MAX_TOP_CANDIDATES`]; `temperature` above 0.
    pub async fn top_candidates(
        &self,
        seq: &Sequence,
        k: usize,
        temperature: f32,
    ) -> Result<Candidates> {
        Self::check_ready(seq)?;
        if !((1..=MAX_TOP_CANDIDATES).contains(&k) && temperature > 0.0 && temperature.is_finite())
        {
            return Err(Error::InvalidInput(format!(
                "top candidates: k {k} must be 1 to {MAX_TOP_CANDIDATES} and the temperature \
                 {temperature} above 0"
            )));
        }
        let vocab = self.config.vocab_size;
        let out = self.client.empty((2 * k + 1) * 4);
        // SAFETY: the kernel reads `vocab` logits and writes `2k + 1` words, the sizes of
        // the two buffers.
        unsafe {
            kernels::top_candidates::launch_unchecked(
                &self.client,
                CubeCount::Static(1, 1, 1),
                CubeDim::new_1d(LANES),
                arg(&seq.logits, vocab),
                arg(&out, 2 * k + 1),
                vocab,
                k,
                1.0 / temperature,
            )
        };
        self.launched(1);
        let bytes = self.read(out).await?;
        let words = u32::from_bytes(&bytes);
        Ok(Candidates {
            ids: words[..k].to_vec(),
            logits: words[k..2 * k].iter().map(|&w| f32::from_bits(w)).collect(),
            normaliser: f32::from_bits(words[2 * k]),
        })
    }

    /// The residual stream after each tapped block at the last position of the last step,
    /// concatenated in the order the taps were given (`taps · dim` values: 14 KB for 6 taps
    /// of 576). Errors before a step or on an untapped sequence.
    pub async fn states(&self, seq: &Sequence) -> Result<Vec<f32>> {
        Self::check_ready(seq)?;
        let states = seq.states.clone().ok_or_else(|| {
            Error::InvalidInput("this sequence keeps no states (no layers tapped)".into())
        })?;
        // Only the rows the last step wrote: after a pair's prefill the buffer holds twice the
        // taps, and every later step (each sentence end of an answer) keeps the last rows.
        let kept = (seq.kept_rows * self.config.dim * 4) as u64;
        let unused = states.size().saturating_sub(kept);
        let bytes = self.read(states.offset_end(unused)).await?;
        let values = f32::from_bytes(&bytes);
        match values.get(..seq.kept_rows * self.config.dim) {
            Some(rows) => Ok(rows.to_vec()),
            None => Err(Error::Backend(format!(
                "the GPU engine read {} bytes of states; expected {kept}",
                bytes.len()
            ))),
        }
    }

    /// The logits after the last step (`vocab` values: reads back the whole row).
    pub async fn logits(&self, seq: &Sequence) -> Result<Vec<f32>> {
        Self::check_ready(seq)?;
        let bytes = self.read(seq.logits.clone()).await?;
        Ok(f32::from_bytes(&bytes).to_vec())
    }

    async fn read(&self, handle: Handle) -> Result<Vec<u8>> {
        let mut out = self.client.read_async(vec![handle]).await.map_err(|e| {
            Error::Backend(format!("reading the GPU engine's output failed: {e:?}"))
        })?;
        let bytes = out.remove(0);
        self.readback
            .fetch_add(bytes.len() as u64, Ordering::Relaxed);
        Ok(bytes.to_vec())
    }
}

/// cos and sin `[positions, head_dim / 2]`, computed in f64 as the burn path does.
fn rope_tables(c: &LlamaConfig, positions: usize) -> (Vec<f32>, Vec<f32>) {
    let half = c.head_dim() / 2;
    let mut cos = Vec::with_capacity(positions * half);
    let mut sin = Vec::with_capacity(positions * half);
    for p in 0..positions {
        for i in 0..half {
            let freq = c.rope_base.powf(-(2.0 * i as f64) / c.head_dim() as f64);
            let angle = p as f64 * freq;
            cos.push(angle.cos() as f32);
            sin.push(angle.sin() as f32);
        }
    }
    (cos, sin)
}
