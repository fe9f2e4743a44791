//! Generated tokens and short prompts through the blocks on the CPU backend, in plain loops
//! over host vectors.
//!
//! Why: a decode step is a single position, so each of burn's ops on it (the RMSNorms, RoPE's
//! slices and stack, attention's two matmuls and softmax, the KV cache's `cat`, SwiGLU) is a
//! tiny tensor op paying its own allocation and dispatch. Profiled with `perf` (`bench chat
//! --backends cpu --prompt-tokens 4 --new-tokens 512`, 2 threads, AMD EPYC), the calling thread
//! spent about 45% of each token outside the packed products while the pool's helper waited;
//! the `cat` that grew the cache by one position copied the whole cache every step (5% of all
//! samples). Here the same arithmetic runs as loops over `Vec<f32>`, the products are the same
//! packed products ([`PackedMatrix::matmul`], so the same numbers), and keys and values are
//! appended to per-layer buffers that grow [`GROW_POSITIONS`] at a time.
//!
//! A prompt whose products all take the packed tiles, up to [`HOST_LOOPS_MAX_POSITIONS`], runs
//! here too: there burn's ops ran on one core while the other waited (a sixth of a 128-token
//! prefill), and the masked scores' `exp(-1e9)` took libm's slow underflow path. Here
//! attention's (position, head) rows and SwiGLU's positions split over the pool.
//!
//! It takes a step only where its result is the burn path's up to f32 rounding of sums: the
//! CPU backend, no adapters for the sequence (LoRA stays in burn), one position or a prompt
//! whose every product takes the tiles. The cache moves between the two forms as the path
//! changes ([`Llama::cache_to_host`], [`Llama::cache_to_tensors`]), so a prompt prefilled by
//! burn continues here, and a later prompt on the same cache goes back to burn.

use super::{HOST_LOOPS_MAX_POSITIONS, KvCache, Llama, Taps, Weight, within};
use crate::error::{Error, Result};
use crate::models::lora::Projection;
use crate::models::packed::{PackedMatrix, for_row_ranges_of};
use burn::tensor::{Device, Tensor, TensorData};
use std::sync::atomic::Ordering;

/// Positions a layer's buffers grow by when full: a bounded over-allocation (at most this
/// many positions per layer, 2.9 MB over SmolLM2's 30 layers), where doubling would hold up to
/// twice the cache (issue 15's peak-memory bound is tight).
const GROW_POSITIONS: usize = 64;

/// One layer's keys and values on the host, position-major: `[positions, kv_heads · head_dim]`
/// each (a new position is one append).
#[derive(Clone, Default)]
pub(super) struct LayerKv {
    pub(super) keys: Vec<f32>,
    pub(super) values: Vec<f32>,
}

impl LayerKv {
    /// Appends positions' keys and values (`width` values per position each).
    fn push(&mut self, k: &[f32], v: &[f32], width: usize) {
        for (buffer, new) in [(&mut self.keys, k), (&mut self.values, v)] {
            if buffer.capacity() - buffer.len() < new.len() {
                buffer.reserve_exact(new.len().max(GROW_POSITIONS * width));
            }
            buffer.extend_from_slice(new);
        }
    }
}

/// `x / sqrt(mean(x²) + eps) · weight`, as `rms_norm` computes it in f32.
fn rms_norm(x: &[f32], weight: &[f32], eps: f64) -> Vec<f32> {
    let mean = x.iter().map(|v| v * v).sum::<f32>() / x.len() as f32;
    let rms = (mean + eps as f32).sqrt();
    x.iter().zip(weight).map(|(v, w)| v / rms * w).collect()
}

/// [`rms_norm`] of each `weight.len()`-wide row of `x`.
fn rms_norm_rows(x: &[f32], weight: &[f32], eps: f64) -> Vec<f32> {
    x.chunks_exact(weight.len())
        .flat_map(|row| rms_norm(row, weight, eps))
        .collect()
}

/// Rotates the adjacent pairs of every `head_dim` slice of `x` by the angles `cos`/`sin`
/// (`head_dim / 2` each), as `Llama::rope` does.
fn rope(x: &mut [f32], cos: &[f32], sin: &[f32]) {
    let hd = cos.len() * 2;
    for head in x.chunks_exact_mut(hd) {
        for (pair, (c, s)) in head.chunks_exact_mut(2).zip(cos.iter().zip(sin)) {
            let (x0, x1) = (pair[0], pair[1]);
            pair[0] = x0 * c - x1 * s;
            pair[1] = x0 * s + x1 * c;
        }
    }
}

/// `a · b` in eight running sums (a single running sum is a chain of dependent adds that the
/// compiler may not reorder into vector lanes). Inlined so a caller built for wider vectors
/// ([`attention_chunk`]) gets them here too.
#[inline(always)]
fn dot(a: &[f32], b: &[f32]) -> f32 {
    let mut lanes = [0.0f32; 8];
    let (a8, b8) = (a.chunks_exact(8), b.chunks_exact(8));
    let tail: f32 = a8
        .remainder()
        .iter()
        .zip(b8.remainder())
        .map(|(x, y)| x * y)
        .sum();
    for (x, y) in a8.zip(b8) {
        for i in 0..8 {
            lanes[i] += x[i] * y[i];
        }
    }
    lanes.iter().sum::<f32>() + tail
}

/// Replaces each score by `e^(score - max)` and returns `(max, sum of the exponentials)`: a
/// softmax's numerators, kept in range by the largest score.
#[inline(always)]
fn exponentiate_from_max(scores: &mut [f32]) -> (f32, f32) {
    let max = scores.iter().copied().fold(f32::NEG_INFINITY, f32::max);
    let mut sum = 0.0;
    for s in scores.iter_mut() {
        *s = (*s - max).exp();
        sum += *s;
    }
    (max, sum)
}

/// `x / (1 + e^-x)`.
fn silu(x: f32) -> f32 {
    x / (1.0 + (-x).exp())
}

/// Defines `fn $name(args)` running `$body(args)`, on x86-64 compiled a second time with
/// AVX2 and FMA and that copy taken where the CPU has them (the crate is built for baseline
/// x86-64: SSE2, four lanes). `$body` is `#[inline(always)]`, so each copy gets its own loops.
macro_rules! with_wide_vectors {
    ($(#[$doc:meta])* fn $name:ident = $body:ident($($arg:ident: $ty:ty),* $(,)?)) => {
        $(#[$doc])*
        fn $name($($arg: $ty),*) {
            #[cfg(target_arch = "x86_64")]
            if std::arch::is_x86_feature_detected!("avx2")
                && std::arch::is_x86_feature_detected!("fma")
            {
                #[target_feature(enable = "avx2,fma")]
                fn wide($($arg: $ty),*) {
                    $body($($arg),*)
                }
                // SAFETY: the CPU has AVX2 and FMA (checked above).
                return unsafe { wide($($arg),*) };
            }
            $body($($arg),*)
        }
    };
}

/// What a layer's attention reads: `heads` query heads of `head_dim` values sharing
/// `kv_heads` key/value heads in equal groups; scores are divided by `scale`.
struct AttentionShape {
    heads: usize,
    kv_heads: usize,
    head_dim: usize,
    scale: f32,
}

/// Positions of the cache one task of a decoded position's attention covers. A fixed count,
/// not one range per thread, so the result does not depend on how many threads ran it.
const ATTENTION_CHUNK: usize = 64;

/// A decoded position's attention over every cached position (`kv`, the new one included):
/// `context` (`[heads · head_dim]`) from the position's queries `q` (the same shape).
///
/// Why not one task per query head, as there was: SmolLM2's 9 query heads share 3 key/value
/// heads, so a head at a time read each key and value three times, and 9 heads split 5 and 4
/// over two threads. `perf` over 1,000 decoded tokens (AMD EPYC Zen 3, 2 threads) put
/// 38% of the samples in attention. Here a task takes [`ATTENTION_CHUNK`] positions for every
/// head, reading each key and value once, and keeps each head's running maximum, sum of
/// exponentials and weighted values; the chunks are then merged in order, rescaled to the
/// overall maximum (the softmax is the same up to f32 rounding).
fn decode_attention(q: &[f32], kv: &LayerKv, shape: &AttentionShape, context: &mut [f32]) {
    let (h, hd) = (shape.heads, shape.head_dim);
    let kvd = shape.kv_heads * hd;
    let seen = kv.keys.len() / kvd;
    let chunks = seen.div_ceil(ATTENTION_CHUNK);
    // Per chunk and head: the maximum score, the sum of exponentials, `hd` weighted values.
    let per_head = hd + 2;
    let mut partial = vec![0.0f32; chunks * h * per_head];
    for_row_ranges_of(&mut partial, chunks, h * hd * 2 * seen, 1, |first, out| {
        for (i, row) in out.chunks_exact_mut(h * per_head).enumerate() {
            let from = (first + i) * ATTENTION_CHUNK;
            let to = (from + ATTENTION_CHUNK).min(seen);
            attention_chunk(q, kv, shape, from..to, row);
        }
    });
    for head in 0..h {
        let of = |c: usize| &partial[(c * h + head) * per_head..(c * h + head + 1) * per_head];
        let max = (0..chunks)
            .map(|c| of(c)[0])
            .fold(f32::NEG_INFINITY, f32::max);
        let ctx = &mut context[head * hd..(head + 1) * hd];
        ctx.fill(0.0);
        let mut sum = 0.0;
        for c in 0..chunks {
            let row = of(c);
            let rescale = (row[0] - max).exp();
            sum += row[1] * rescale;
            for (o, v) in ctx.iter_mut().zip(&row[2..]) {
                *o += v * rescale;
            }
        }
        ctx.iter_mut().for_each(|o| *o /= sum);
    }
}

/// A prompt's attention: `context` (`[s, heads · head_dim]`) from the queries `q` (the same
/// shape) of the `s` positions after the first `start`, each seeing the keys up to its own.
/// Tasks are (position, key/value head) pairs over the pool, each reading its keys and
/// values once for the query heads that share them (as [`decode_attention`] does).
fn prompt_attention(
    q: &[f32],
    kv: &LayerKv,
    shape: &AttentionShape,
    start: usize,
    context: &mut [f32],
) {
    let (h, hd, kvh) = (shape.heads, shape.head_dim, shape.kv_heads);
    let s = q.len() / (h * hd);
    let width = h / kvh * hd;
    let macs = h * hd * 2 * (s * start + s * (s + 1) / 2);
    for_row_ranges_of(context, s * kvh, macs, 1, |first, out| {
        let mut scores = Vec::new();
        for (i, ctx) in out.chunks_exact_mut(width).enumerate() {
            let (t, g) = ((first + i) / kvh, (first + i) % kvh);
            let q = &q[(t * kvh + g) * width..(t * kvh + g + 1) * width];
            group_attention(q, kv, shape, g, start + t + 1, &mut scores, ctx);
        }
    });
}

with_wide_vectors! {
    /// The query heads of group `g` (`q`, `[group, head_dim]`) over the first `seen`
    /// positions: their contexts in `out` (the same shape); `scores` is scratch.
    fn group_attention = group_attention_body(
        q: &[f32],
        kv: &LayerKv,
        shape: &AttentionShape,
        g: usize,
        seen: usize,
        scores: &mut Vec<f32>,
        out: &mut [f32],
    )
}

#[inline(always)]
fn group_attention_body(
    q: &[f32],
    kv: &LayerKv,
    shape: &AttentionShape,
    g: usize,
    seen: usize,
    scores: &mut Vec<f32>,
    out: &mut [f32],
) {
    let hd = shape.head_dim;
    let (kvd, group) = (shape.kv_heads * hd, shape.heads / shape.kv_heads);
    // Head-major: `scores[head · seen + p]`.
    scores.clear();
    scores.resize(group * seen, 0.0);
    for (p, key) in kv.keys[..seen * kvd].chunks_exact(kvd).enumerate() {
        let key = &key[g * hd..(g + 1) * hd];
        for (head, qh) in q.chunks_exact(hd).enumerate() {
            scores[head * seen + p] = dot(qh, key) / shape.scale;
        }
    }
    for scores in scores.chunks_exact_mut(seen) {
        let (_, sum) = exponentiate_from_max(scores);
        scores.iter_mut().for_each(|s| *s /= sum);
    }
    out.fill(0.0);
    for (p, value) in kv.values[..seen * kvd].chunks_exact(kvd).enumerate() {
        let value = &value[g * hd..(g + 1) * hd];
        for (head, ctx) in out.chunks_exact_mut(hd).enumerate() {
            let w = scores[head * seen + p];
            for (o, v) in ctx.iter_mut().zip(value) {
                *o += w * v;
            }
        }
    }
}

with_wide_vectors! {
    /// One chunk of [`decode_attention`]: `out` gets, per head, `[max, sum, weighted
    /// values…]` over the positions `range`.
    fn attention_chunk = attention_chunk_body(
        q: &[f32],
        kv: &LayerKv,
        shape: &AttentionShape,
        range: std::ops::Range<usize>,
        out: &mut [f32],
    )
}

#[inline(always)]
fn attention_chunk_body(
    q: &[f32],
    kv: &LayerKv,
    shape: &AttentionShape,
    range: std::ops::Range<usize>,
    out: &mut [f32],
) {
    let (h, hd) = (shape.heads, shape.head_dim);
    let (kvd, group, len) = (shape.kv_heads * hd, h / shape.kv_heads, range.len());
    // Scores head-major: `scores[head · len + j]` for the chunk's `j`-th position.
    let mut scores = vec![0.0f32; h * len];
    for (j, key) in kv.keys[range.start * kvd..range.end * kvd]
        .chunks_exact(kvd)
        .enumerate()
    {
        for head in 0..h {
            let g = head / group;
            let qh = &q[head * hd..(head + 1) * hd];
            scores[head * len + j] = dot(qh, &key[g * hd..(g + 1) * hd]) / shape.scale;
        }
    }
    let per_head = hd + 2;
    for (head, row) in out.chunks_exact_mut(per_head).enumerate() {
        let (max, sum) = exponentiate_from_max(&mut scores[head * len..(head + 1) * len]);
        row[0] = max;
        row[1] = sum;
        row[2..].fill(0.0);
    }
    for (j, value) in kv.values[range.start * kvd..range.end * kvd]
        .chunks_exact(kvd)
        .enumerate()
    {
        for (head, row) in out.chunks_exact_mut(per_head).enumerate() {
            let g = head / group;
            let p = scores[head * len + j];
            for (o, v) in row[2..].iter_mut().zip(&value[g * hd..(g + 1) * hd]) {
                *o += p * v;
            }
        }
    }
}

impl Llama {
    /// Whether [`Llama::host_forward`] takes `positions` positions for a sequence whose
    /// adapters are `adapters_apply`: one position, or a prompt whose every product takes the
    /// packed tiles (as `Weight::project` would).
    pub(super) fn host_loops_apply(&self, positions: usize, adapters_apply: bool) -> bool {
        self.host_steps
            && !adapters_apply
            // The CPU backend is where `Weight::load` keeps every matrix packed; `host_forward`
            // still checks.
            && self.device == Device::flex()
            && (positions == 1
                || (within(positions, HOST_LOOPS_MAX_POSITIONS)
                    && self.blocks.iter().flat_map(|b| &b.projections).all(|w| {
                        matches!(w, Weight::Packed(p) if p.tiles_prompts(self.precision))
                    })))
    }

    /// The packed matrices the loops read: the embedding, and each block's projections in
    /// [`Projection::ALL`] order; `None` where any is dense (a GPU device).
    fn packed_weights(&self) -> Option<(&PackedMatrix, Vec<Vec<&PackedMatrix>>)> {
        fn packed(w: &Weight) -> Option<&PackedMatrix> {
            match w {
                Weight::Packed(p) => Some(p),
                Weight::Dense(_) => None,
            }
        }
        let blocks = self
            .blocks
            .iter()
            .map(|b| b.projections.iter().map(packed).collect::<Option<Vec<_>>>())
            .collect::<Option<Vec<_>>>()?;
        Some((packed(&self.embedding)?, blocks))
    }

    /// The cache's keys and values as host buffers (a no-op when they already are).
    pub(super) fn cache_to_host(&self, cache: &mut KvCache) -> Result<()> {
        if cache.host.is_some() {
            return Ok(());
        }
        let read = |t: Option<Tensor<4>>| -> Result<Vec<f32>> {
            match t {
                // [1, kv_heads, t, head_dim] -> [1, t, kv_heads, head_dim], row-major.
                Some(t) => t
                    .swap_dims(1, 2)
                    .into_data()
                    .try_to_vec::<f32>()
                    .map_err(|e| Error::Backend(format!("unexpected tensor data: {e:?}"))),
                None => Ok(Vec::new()),
            }
        };
        let mut host = Vec::with_capacity(self.blocks.len());
        for l in 0..self.blocks.len() {
            host.push(LayerKv {
                keys: read(cache.keys[l].take())?,
                values: read(cache.values[l].take())?,
            });
        }
        cache.host = Some(host);
        Ok(())
    }

    /// The cache's keys and values as tensors on the model's device, for burn's path (a no-op
    /// when they already are).
    pub(super) fn cache_to_tensors(&self, cache: &mut KvCache) {
        let Some(host) = cache.host.take() else {
            return;
        };
        let (t, kvh, hd) = (cache.len, self.config.kv_heads, self.config.head_dim());
        let tensor = |v: Vec<f32>| {
            (t > 0).then(|| {
                Tensor::<4>::from_data(TensorData::new(v, [1, t, kvh, hd]), &self.device)
                    .swap_dims(1, 2)
            })
        };
        for (l, layer) in host.into_iter().enumerate() {
            cache.keys[l] = tensor(layer.keys);
            cache.values[l] = tensor(layer.values);
        }
    }

    /// The residual stream `[1, s, dim]` after the blocks for the `s` tokens `ids` at
    /// positions `cache.len()..`, the cache `s` positions longer; the states `taps` asks for
    /// kept as in `blocks_forward` (which this follows: same products, same order of
    /// operations within a position). The caller checked [`Llama::host_loops_apply`] and the
    /// ids.
    pub(super) fn host_forward(
        &self,
        ids: &[u32],
        cache: &mut KvCache,
        taps: &mut Taps<'_>,
    ) -> Result<Tensor<3>> {
        self.cache_to_host(cache)?;
        let c = &self.config;
        let (d, hd, h, kvh) = (c.dim, c.head_dim(), c.heads, c.kv_heads);
        let (kvd, start, s) = (kvh * hd, cache.len, ids.len());
        let total = start + s;
        let (embedding, blocks) = self
            .packed_weights()
            .ok_or_else(|| Error::Backend("generation on the host needs packed weights".into()))?;
        let product =
            |l: usize, p: Projection, x: &[f32]| blocks[l][p.index()].matmul(x, s, self.precision);
        let mut x = vec![0.0; s * d];
        for (&id, row) in ids.iter().zip(x.chunks_exact_mut(d)) {
            embedding.row_into(id as usize, row);
        }
        let angles: Vec<(Vec<f32>, Vec<f32>)> =
            (start..total).map(|p| self.rope_angles(p)).collect();
        // `blocks_forward` divides the scores by sqrt(head_dim) computed in f64.
        let scale = (hd as f64).sqrt() as f32;
        let last_block = if taps.states_only {
            taps.layers.iter().max().map_or(0, |&l| l + 1)
        } else {
            self.blocks.len()
        };
        let Some(host) = cache.host.as_mut() else {
            return Err(Error::Backend("the cache has no host buffers".into()));
        };
        let mut context = vec![0.0f32; s * d];
        for (l, kv) in host.iter_mut().enumerate().take(last_block) {
            let block = &self.blocks[l];
            let a = rms_norm_rows(&x, &block.host_norms[0], c.rms_eps);
            let mut q = product(l, Projection::Q, &a);
            let mut k = product(l, Projection::K, &a);
            let v = product(l, Projection::V, &a);
            for (t, (cos, sin)) in angles.iter().enumerate() {
                rope(&mut q[t * d..(t + 1) * d], cos, sin);
                rope(&mut k[t * kvd..(t + 1) * kvd], cos, sin);
            }
            kv.push(&k, &v, kvd);
            self.attention_peak.fetch_max(h * total, Ordering::Relaxed);
            // Split over the pool's threads like a product's rows (the helpers would otherwise
            // wait through it: a tenth of a token at 500 positions).
            let kv = &*kv;
            let shape = AttentionShape {
                heads: h,
                kv_heads: kvh,
                head_dim: hd,
                scale,
            };
            if s == 1 {
                decode_attention(&q, kv, &shape, &mut context);
            } else {
                prompt_attention(&q, kv, &shape, start, &mut context);
            }
            for (x, o) in x.iter_mut().zip(product(l, Projection::O, &context)) {
                *x += o;
            }
            let f = rms_norm_rows(&x, &block.host_norms[1], c.rms_eps);
            let mut ff = product(l, Projection::Gate, &f);
            let up = product(l, Projection::Up, &f);
            // SwiGLU by positions over the pool (a prompt's exponentials on one core were 3%
            // of a prefill's samples).
            let width = ff.len() / s;
            for_row_ranges_of(&mut ff, s, s * width * 8, 1, |first, out| {
                let up = &up[first * width..first * width + out.len()];
                for (g, &u) in out.iter_mut().zip(up) {
                    *g = silu(*g) * u;
                }
            });
            for (x, o) in x.iter_mut().zip(product(l, Projection::Down, &ff)) {
                *x += o;
            }
            for (slot, _) in taps.layers.iter().enumerate().filter(|(_, t)| **t == l) {
                let (rows, values) = taps.positions.keep(&x, d);
                taps.states[slot] = Some(Tensor::from_data(
                    TensorData::new(values, [rows, d]),
                    &self.device,
                ));
            }
        }
        cache.len = total;
        Ok(Tensor::from_data(
            TensorData::new(x, [1, s, d]),
            &self.device,
        ))
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::rng::Rng;

    /// The reference for one position's queries `q` seeing the first `seen` positions: each
    /// head's softmax in f64, then the weighted sum of its group's values.
    fn attention_in_f64(q: &[f32], kv: &LayerKv, shape: &AttentionShape, seen: usize) -> Vec<f64> {
        let (h, hd) = (shape.heads, shape.head_dim);
        let (kvd, group) = (shape.kv_heads * hd, h / shape.kv_heads);
        let mut out = vec![0.0f64; h * hd];
        for head in 0..h {
            let g = head / group;
            let at = |buffer: &[f32], p: usize, i: usize| buffer[p * kvd + g * hd + i] as f64;
            let scores: Vec<f64> = (0..seen)
                .map(|p| {
                    let dot: f64 = (0..hd)
                        .map(|i| q[head * hd + i] as f64 * at(&kv.keys, p, i))
                        .sum();
                    dot / shape.scale as f64
                })
                .collect();
            let max = scores.iter().copied().fold(f64::NEG_INFINITY, f64::max);
            let weights: Vec<f64> = scores.iter().map(|s| (s - max).exp()).collect();
            let sum: f64 = weights.iter().sum();
            for i in 0..hd {
                out[head * hd + i] = (0..seen)
                    .map(|p| weights[p] * at(&kv.values, p, i))
                    .sum::<f64>()
                    / sum;
            }
        }
        out
    }

    /// A decoded position's attention, split into chunks of positions merged afterwards,
    /// equals one softmax over all positions: for one position, exactly one chunk, and
    /// several chunks with a partial last one, with scores large enough that most
    /// exponentials underflow within a chunk.
    #[test]
    fn decoded_attention_in_chunks_equals_one_softmax_over_every_position() {
        let shape = AttentionShape {
            heads: 9,
            kv_heads: 3,
            head_dim: 64,
            scale: 8.0,
        };
        let kvd = shape.kv_heads * shape.head_dim;
        let mut rng = Rng::new(7);
        for (seen, spread) in [
            (1, 1.0),
            (ATTENTION_CHUNK, 1.0),
            (3 * ATTENTION_CHUNK + 17, 1.0),
            (200, 12.0),
        ] {
            let mut draw = |len: usize, spread: f64| -> Vec<f32> {
                (0..len)
                    .map(|_| ((rng.next_f64() * 2.0 - 1.0) * spread) as f32)
                    .collect()
            };
            let q = draw(shape.heads * shape.head_dim, spread);
            let kv = LayerKv {
                keys: draw(seen * kvd, spread),
                values: draw(seen * kvd, 1.0),
            };
            let mut context = vec![f32::NAN; q.len()];
            decode_attention(&q, &kv, &shape, &mut context);
            let reference = attention_in_f64(&q, &kv, &shape, seen);
            let worst = context
                .iter()
                .zip(&reference)
                .map(|(a, b)| (*a as f64 - b).abs())
                .fold(0.0, f64::max);
            assert!(
                worst < 1e-5,
                "{seen} positions, spread {spread}: worst difference {worst}"
            );
        }
    }

    /// A prompt's attention, by (position, key/value head) over the pool, equals each
    /// position's softmax over the keys up to its own, after positions already cached.
    #[test]
    fn prompt_attention_equals_each_positions_softmax_over_the_keys_up_to_its_own() {
        let shape = AttentionShape {
            heads: 9,
            kv_heads: 3,
            head_dim: 64,
            scale: 8.0,
        };
        let (kvd, d) = (
            shape.kv_heads * shape.head_dim,
            shape.heads * shape.head_dim,
        );
        let mut rng = Rng::new(11);
        let mut draw = |len: usize| -> Vec<f32> {
            (0..len)
                .map(|_| (rng.next_f64() * 4.0 - 2.0) as f32)
                .collect()
        };
        for (start, s) in [(0, 7), (70, 6)] {
            let q = draw(s * d);
            let kv = LayerKv {
                keys: draw((start + s) * kvd),
                values: draw((start + s) * kvd),
            };
            let mut context = vec![f32::NAN; q.len()];
            prompt_attention(&q, &kv, &shape, start, &mut context);
            for t in 0..s {
                let reference =
                    attention_in_f64(&q[t * d..(t + 1) * d], &kv, &shape, start + t + 1);
                let worst = context[t * d..(t + 1) * d]
                    .iter()
                    .zip(&reference)
                    .map(|(a, b)| (*a as f64 - b).abs())
                    .fold(0.0, f64::max);
                assert!(
                    worst < 1e-5,
                    "start {start}, position {t}: worst difference {worst}"
                );
            }
        }
    }
}
