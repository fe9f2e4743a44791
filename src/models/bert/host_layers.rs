//! The encoder's layers on the CPU backend as loops over host buffers, with gemm for the
//! products and the spin pool for the threads (natively, and in the threaded wasm module,
//! whose pool is Web Workers; the single-threaded module runs the same loops on one thread).
//!
//! Why: at batch 32 (2,048 rows of 64 tokens) burn's ops around the products cost a third
//! of the encoder's time (`perf` on `bench filter --batches 32`, AMD EPYC Zen 4, 2 threads:
//! gemm's microkernel 63%, GELU 7%, attention 7.5%, layout copies and zeroed buffers 11%),
//! and gemm split each product across the threads with fork-joins of its own. Here:
//! - **whole sequences per thread**: a batch of at least `2 × threads` sequences is cut into
//!   one group per thread (more for long batches, [`ROWS_PER_GROUP`]), and each thread takes
//!   its group through every layer (attention never looks across sequences): no fork-join
//!   inside a layer, and gemm packs a weight once per group;
//! - **few sequences** (batch 1 is one 64-token window) split inside each op instead: a
//!   product's columns, attention's (sequence, head) pairs, rows of the norms and of GELU;
//! - the query, key and value projections write side by side into `[rows, 3·d]` rows that
//!   attention reads in place (no head permutes); a head's two products are gemm calls over
//!   the real tokens' keys and values (padding keys skipped, where burn's mask gives them
//!   zero weight); the residual is added inside the LayerNorm's pass over a row.
//!
//! `bench filter --backends cpu --batches 1,32`, the two binaries alternating (3 rounds):
//! batch 32 87-97 → 118-123 texts/s, batch 1 69-72 → 82-93. In headless Chromium
//! (`bench-browser.mjs --threads 1,1t,2`, the Guard's 8-bit filter in a worker): the threaded
//! module on 2 threads classifies 32 texts in 282-286 ms (was 523-530: burn's path ran on one
//! thread there) and 1 text in 14 ms (was 25-26); the other modes within a few percent.
//!
//! The arithmetic is burn's up to f32 rounding of sums (the same formulas; gemm's products
//! blocked differently); [`Bert::hidden_states_by_ops`] keeps burn's path for autodiff, the
//! GPU, adapters and whatever this path does not take, and the test
//! `host_layers_equal_burns_ops` (tests/bert_reference.rs) compares the two.

use std::sync::Mutex;

use burn::backend::Flex;
use burn::backend::flex::FlexTensor;
use burn::nn::{LayerNorm, Linear};
use burn::tensor::{Bool, DType, Device, Int, Tensor, TensorData};

use super::{Bert, BertLayer};
use crate::models::column_product::{self, COLUMN_STEP, SharedOut, Strided};
use crate::models::gelu::{exp_f32, gelu_chunk};

/// Rows a thread takes through the layers at a time when whole sequences are split over the
/// threads. gemm packs the weight on every call, so larger groups pack less often: at batch
/// 32 (2,048 rows, 2 threads) groups of 128 rows spent 8.6% of the samples in packing and ran
/// 113 texts/s, groups of 1,024 rows 1.3% and 122 texts/s (256: 116, 512: 120).
const ROWS_PER_GROUP: usize = 1024;

/// The spin pool's thread count where the build has threads (natively, the threaded wasm
/// module); one in the single-threaded wasm module.
#[cfg(any(not(target_arch = "wasm32"), target_feature = "atomics"))]
fn threads() -> usize {
    crate::models::spin::Pool::global().threads()
}

/// `f(t)` for every task `t` in `0..tasks`, over the spin pool where the build has threads.
#[cfg(any(not(target_arch = "wasm32"), target_feature = "atomics"))]
fn run(tasks: usize, f: &(dyn Fn(usize) + Sync)) {
    crate::models::spin::Pool::global().run(tasks, f)
}

#[cfg(all(target_arch = "wasm32", not(target_feature = "atomics")))]
fn threads() -> usize {
    1
}

#[cfg(all(target_arch = "wasm32", not(target_feature = "atomics")))]
fn run(tasks: usize, f: &(dyn Fn(usize) + Sync)) {
    (0..tasks).for_each(f)
}

/// `Bert::hidden_states` on host buffers, or `None` where this path does not apply: another
/// backend, autodiff or LoRA adapters in the weights, a layout or dtype it does not read,
/// a mask not the ids' shape, token ids outside the tables, or a sequence without a real
/// token.
pub(super) fn hidden_states(
    bert: &Bert,
    ids: &Tensor<2, Int>,
    mask: &Tensor<2, Bool>,
) -> Option<Vec<Tensor<3>>> {
    let device = ids.device();
    if device != Device::flex() {
        return None;
    }
    let encoder = Encoder::of(bert)?;
    let [batch, seq] = ids.dims();
    if mask.dims() != [batch, seq] {
        return None;
    }
    let ids: Vec<i64> = ids.to_data().iter::<i64>().collect();
    let mask: Vec<bool> = mask.to_data().iter::<bool>().collect();
    let vocab = encoder.word.len() / encoder.d;
    let in_tables = ids.iter().all(|&id| id >= 0 && (id as usize) < vocab)
        && seq <= encoder.position.len() / encoder.d;
    let every_sequence_real = mask.chunks(seq).all(|m| m.contains(&true));
    if batch == 0
        || seq == 0
        || ids.len() != batch * seq
        || mask.len() != batch * seq
        || !in_tables
        || !every_sequence_real
    {
        return None;
    }

    let d = encoder.d;
    let mut states: Vec<Vec<f32>> = (0..=encoder.layers.len())
        .map(|_| vec![0.0f32; batch * seq * d])
        .collect();
    let threads = threads();
    if threads > 1 && batch >= 2 * threads {
        // Whole sequences per thread: a multiple of `threads` groups of about
        // ROWS_PER_GROUP rows each.
        let rounds = (batch * seq).div_ceil(threads * ROWS_PER_GROUP).max(1);
        let per_group = batch.div_ceil(threads * rounds).max(1);
        let rows = per_group * seq;
        let mut outputs: Vec<Vec<&mut [f32]>> = Vec::new();
        for state in states.iter_mut() {
            for (g, part) in state.chunks_mut(rows * d).enumerate() {
                if outputs.len() <= g {
                    outputs.push(Vec::new());
                }
                outputs[g].push(part);
            }
        }
        let slots: Vec<Mutex<Vec<&mut [f32]>>> = outputs.into_iter().map(Mutex::new).collect();
        run(slots.len(), &|g| {
            let mut out = slots[g].lock().unwrap_or_else(|e| e.into_inner());
            let at = g * rows..((g + 1) * rows).min(batch * seq);
            encoder.run(&ids[at.clone()], &mask[at], seq, Split::Serial, &mut out);
        });
    } else {
        let mut out: Vec<&mut [f32]> = states.iter_mut().map(Vec::as_mut_slice).collect();
        let split = if threads > 1 {
            Split::Pool
        } else {
            Split::Serial
        };
        encoder.run(&ids, &mask, seq, split, &mut out);
    }
    Some(
        states
            .into_iter()
            .map(|s| Tensor::from_data(TensorData::new(s, [batch, seq, d]), &device))
            .collect(),
    )
}

/// How an op's work is shared: all on the calling thread (a group of whole sequences), or
/// split over the pool (few sequences).
#[derive(Clone, Copy, PartialEq, Eq)]
enum Split {
    Serial,
    Pool,
}

/// A contiguous f32 tensor's values, read in place from the CPU backend's buffer.
struct Values {
    tensor: FlexTensor,
    offset: usize,
    len: usize,
}

impl Values {
    fn of<const D: usize>(t: &Tensor<D>) -> Option<Values> {
        if t.is_autodiff() || t.device() != Device::flex() {
            return None;
        }
        let len = t.shape().num_elements();
        let tensor = t.clone().try_into_primitive::<Flex>().ok()?;
        if tensor.dtype() != DType::F32 || !tensor.is_contiguous() {
            return None;
        }
        let offset = tensor.layout().start_offset();
        if offset.checked_add(len)? > tensor.storage::<f32>().len() {
            return None;
        }
        Some(Values {
            tensor,
            offset,
            len,
        })
    }

    fn get(&self) -> &[f32] {
        &self.tensor.storage::<f32>()[self.offset..self.offset + self.len]
    }

    fn len(&self) -> usize {
        self.len
    }
}

/// A linear layer's `[d_in, d_out]` weight (row-major) and bias.
struct Projection {
    weight: Values,
    bias: Option<Values>,
    d_in: usize,
    d_out: usize,
}

impl Projection {
    fn of(layer: &Linear, d_in: usize, d_out: usize) -> Option<Projection> {
        if layer.weight.adapter().is_some() || layer.weight.dims() != [d_in, d_out] {
            return None;
        }
        let bias = match &layer.bias {
            Some(b) if b.dims() == [d_out] => Some(Values::of(&b.val())?),
            Some(_) => return None,
            None => None,
        };
        Some(Projection {
            weight: Values::of(&layer.weight.val())?,
            bias,
            d_in,
            d_out,
        })
    }
}

/// A LayerNorm's scale, shift and epsilon.
struct Norm {
    gamma: Values,
    beta: Values,
    eps: f32,
}

impl Norm {
    fn of(norm: &LayerNorm, d: usize, eps: f64) -> Option<Norm> {
        let beta = norm.beta.as_ref()?;
        if norm.gamma.dims() != [d] || beta.dims() != [d] {
            return None;
        }
        Some(Norm {
            gamma: Values::of(&norm.gamma.val())?,
            beta: Values::of(&beta.val())?,
            eps: eps as f32,
        })
    }
}

struct Layer {
    query: Projection,
    key: Projection,
    value: Projection,
    attention_out: Projection,
    attention_norm: Norm,
    intermediate: Projection,
    output: Projection,
    output_norm: Norm,
    heads: usize,
}

impl Layer {
    fn of(l: &BertLayer, d: usize, eps: f64) -> Option<Layer> {
        let ff = l.intermediate.weight.dims()[1];
        if l.heads == 0 || !d.is_multiple_of(l.heads) {
            return None;
        }
        Some(Layer {
            query: Projection::of(&l.query, d, d)?,
            key: Projection::of(&l.key, d, d)?,
            value: Projection::of(&l.value, d, d)?,
            attention_out: Projection::of(&l.attention_out, d, d)?,
            attention_norm: Norm::of(&l.attention_norm, d, eps)?,
            intermediate: Projection::of(&l.intermediate, d, ff)?,
            output: Projection::of(&l.output, ff, d)?,
            output_norm: Norm::of(&l.output_norm, d, eps)?,
            heads: l.heads,
        })
    }
}

/// The whole encoder's weights, read in place.
struct Encoder {
    d: usize,
    word: Values,
    position: Values,
    token_type: Values,
    embedding_norm: Norm,
    layers: Vec<Layer>,
}

impl Encoder {
    fn of(bert: &Bert) -> Option<Encoder> {
        let d = bert.width();
        let eps = bert.layer_norm_eps;
        let table = |e: &burn::nn::Embedding| {
            (e.weight.dims()[1] == d && e.weight.adapter().is_none())
                .then(|| Values::of(&e.weight.val()))
                .flatten()
        };
        Some(Encoder {
            d,
            word: table(&bert.word)?,
            position: table(&bert.position)?,
            token_type: table(&bert.token_type)?,
            embedding_norm: Norm::of(&bert.embedding_norm, d, eps)?,
            layers: bert
                .layers
                .iter()
                .map(|l| Layer::of(l, d, eps))
                .collect::<Option<Vec<_>>>()?,
        })
    }

    /// Hidden states of whole sequences (`ids`/`mask` are `rows = k·seq` long) into `out`
    /// (the embeddings' output, then each layer's; `rows × d` each).
    fn run(&self, ids: &[i64], mask: &[bool], seq: usize, split: Split, out: &mut [&mut [f32]]) {
        let d = self.d;
        let rows = ids.len();
        let mut x = self.embed(ids, seq);
        out[0].copy_from_slice(&x);
        // Each sequence's real tokens: the keys its queries attend to.
        let keys: Vec<Vec<usize>> = mask
            .chunks(seq)
            .map(|m| (0..seq).filter(|&j| m[j]).collect())
            .collect();
        let mut qkv = vec![0.0f32; rows * 3 * d];
        let mut context = vec![0.0f32; rows * d];
        let mut sum = vec![0.0f32; rows * d];
        let mut hidden = Vec::new();
        for (l, layer) in self.layers.iter().enumerate() {
            let ff = layer.intermediate.d_out;
            hidden.resize(rows * ff, 0.0);
            product(&x, &layer.query, &mut qkv, 3 * d, 0, split);
            product(&x, &layer.key, &mut qkv, 3 * d, d, split);
            product(&x, &layer.value, &mut qkv, 3 * d, 2 * d, split);
            attention(&qkv, &keys, seq, d, layer.heads, &mut context, split);
            product(&context, &layer.attention_out, &mut sum, d, 0, split);
            add_and_norm(&mut x, &sum, &layer.attention_norm, split);
            product(&x, &layer.intermediate, &mut hidden, ff, 0, split);
            for_chunks(split, &mut hidden, ff, &|_, chunk| gelu_chunk(chunk));
            product(&hidden, &layer.output, &mut sum, d, 0, split);
            add_and_norm(&mut x, &sum, &layer.output_norm, split);
            out[l + 1].copy_from_slice(&x);
        }
    }

    /// word + position + token type 0, then LayerNorm (burn's order of the sums).
    fn embed(&self, ids: &[i64], seq: usize) -> Vec<f32> {
        let d = self.d;
        let (word, position, token_type) = (
            self.word.get(),
            self.position.get(),
            &self.token_type.get()[..d],
        );
        let mut x = vec![0.0f32; ids.len() * d];
        for (r, (row, &id)) in x.chunks_exact_mut(d).zip(ids).enumerate() {
            let w = &word[id as usize * d..][..d];
            let p = &position[(r % seq) * d..][..d];
            for (((y, w), p), t) in row.iter_mut().zip(w).zip(p).zip(token_type) {
                *y = w + p + t;
            }
        }
        let n = &self.embedding_norm;
        for row in x.chunks_exact_mut(d) {
            norm_row(row, n.gamma.get(), n.beta.get(), n.eps);
        }
        x
    }
}

/// `dst[:, at..at + d_out] = x · W + b` for `x [rows, d_in]`, `dst` `stride` wide.
fn product(x: &[f32], p: &Projection, dst: &mut [f32], stride: usize, at: usize, split: Split) {
    let (d_in, d_out) = (p.d_in, p.d_out);
    let rows = x.len() / d_in;
    assert!(
        x.len() == rows * d_in && dst.len() == rows * stride && at + d_out <= stride,
        "product shapes"
    );
    let weight = p.weight.get();
    let bias = p.bias.as_ref().map(Values::get);
    let out = SharedOut(dst.as_mut_ptr());
    let columns = |first: usize, n: usize| {
        let out = &out;
        // SAFETY: `x` is `rows × d_in` and `weight` `d_in × d_out`, both row-major (checked
        // above and by `Values`); `dst` is `rows × stride` with `at + d_out <= stride`; this
        // call reads and writes only columns `at + first .. at + first + n` of `dst`, and
        // concurrent calls take disjoint column ranges.
        unsafe {
            column_product::columns(
                rows,
                n,
                d_in,
                Strided {
                    ptr: x.as_ptr(),
                    row_stride: d_in as isize,
                    col_stride: 1,
                },
                Strided {
                    ptr: weight.as_ptr().add(first),
                    row_stride: d_out as isize,
                    col_stride: 1,
                },
                out.0.add(at + first),
                stride,
                bias.map(|b| &b[first..first + n]),
            );
        }
    };
    let parts = match split {
        Split::Serial => 1,
        Split::Pool => threads().min(d_out.div_ceil(COLUMN_STEP)).max(1),
    };
    if parts == 1 {
        columns(0, d_out);
        return;
    }
    let width = d_out.div_ceil(parts).next_multiple_of(COLUMN_STEP);
    run(d_out.div_ceil(width), &|t| {
        let first = t * width;
        columns(first, width.min(d_out - first));
    });
}

/// Runs `f(start, chunk)` over chunks of `data` that hold whole `width`-wide rows (`start`:
/// the chunk's first index in `data`): one chunk on this thread, or one per thread over the
/// pool.
fn for_chunks(
    split: Split,
    data: &mut [f32],
    width: usize,
    f: &(dyn Fn(usize, &mut [f32]) + Sync),
) {
    let rows = data.len() / width;
    let threads = threads();
    if split == Split::Serial || threads == 1 || rows < 2 {
        f(0, data);
        return;
    }
    let per_task = rows.div_ceil(threads) * width;
    let parts: Vec<Mutex<&mut [f32]>> = data.chunks_mut(per_task).map(Mutex::new).collect();
    run(parts.len(), &|t| {
        let mut part = parts[t].lock().unwrap_or_else(|e| e.into_inner());
        f(t * per_task, &mut part);
    });
}

/// `x = LayerNorm(sum + x)`, row by row (`sum` holds the product with its bias).
fn add_and_norm(x: &mut [f32], sum: &[f32], norm: &Norm, split: Split) {
    let d = norm.gamma.len();
    let (gamma, beta) = (norm.gamma.get(), norm.beta.get());
    for_chunks(split, x, d, &|start, chunk| {
        let sum = &sum[start..start + chunk.len()];
        for (row, s) in chunk.chunks_exact_mut(d).zip(sum.chunks_exact(d)) {
            add_norm_row(row, s, gamma, beta, norm.eps);
        }
    });
}

/// Self-attention of every sequence: `context[i, head] = softmax(q_i·K/√hd over the real
/// keys) · V` from the `[rows, 3·d]` query-key-value rows.
fn attention(
    qkv: &[f32],
    keys: &[Vec<usize>],
    seq: usize,
    d: usize,
    heads: usize,
    context: &mut [f32],
    split: Split,
) {
    let hd = d / heads;
    let one = |s: usize, h: usize, out: &mut [f32], scratch: &mut Vec<f32>| {
        let block = &qkv[s * seq * 3 * d..(s + 1) * seq * 3 * d];
        attend(block, 3 * d, h * hd, hd, &keys[s], d, scratch, out);
    };
    let sequences = keys.len();
    let mut scratch = Vec::new();
    if split == Split::Serial || threads() == 1 {
        let mut out = vec![0.0f32; seq * hd];
        for s in 0..sequences {
            for h in 0..heads {
                one(s, h, &mut out, &mut scratch);
                scatter(&out, hd, context, s * seq, h * hd, d);
            }
        }
        return;
    }
    let results: Vec<Mutex<Vec<f32>>> = (0..sequences * heads)
        .map(|_| Mutex::new(vec![0.0f32; seq * hd]))
        .collect();
    run(results.len(), &|t| {
        let mut out = results[t].lock().unwrap_or_else(|e| e.into_inner());
        one(t / heads, t % heads, &mut out, &mut Vec::new());
    });
    for (t, out) in results.into_iter().enumerate() {
        let out = out.into_inner().unwrap_or_else(|e| e.into_inner());
        scatter(&out, hd, context, (t / heads) * seq, (t % heads) * hd, d);
    }
}

/// Copies one (sequence, head) result `[seq, hd]` into its columns of `context [rows, d]`.
fn scatter(out: &[f32], hd: usize, context: &mut [f32], first_row: usize, column: usize, d: usize) {
    for (i, o) in out.chunks_exact(hd).enumerate() {
        context[(first_row + i) * d + column..][..hd].copy_from_slice(o);
    }
}

/// Defines `$name`, which runs `$portable` compiled for the widest x86 vector unit the CPU
/// has (the crate targets baseline x86-64, 4-lane SSE2), or as it is on other targets. Rust
/// does not contract multiply-adds, so every path gives the same bits.
macro_rules! widest {
    ($(#[$m:meta])* fn $name:ident = $portable:ident($($arg:ident: $ty:ty),* $(,)?)) => {
        $(#[$m])*
        fn $name($($arg: $ty),*) {
            #[cfg(target_arch = "x86_64")]
            {
                #[target_feature(enable = "avx512f")]
                fn avx512($($arg: $ty),*) {
                    $portable($($arg),*)
                }
                #[target_feature(enable = "avx2")]
                fn avx2($($arg: $ty),*) {
                    $portable($($arg),*)
                }
                if crate::models::qdot::avx512f_allowed() {
                    // SAFETY: the CPU has AVX-512F (checked above).
                    return unsafe { avx512($($arg),*) };
                }
                if std::arch::is_x86_feature_detected!("avx2") {
                    // SAFETY: the CPU has AVX2 (checked above).
                    return unsafe { avx2($($arg),*) };
                }
            }
            $portable($($arg),*)
        }
    };
}

widest!(
    /// One (sequence, head): `block` is the sequence's `[seq, stride]` query-key-value rows,
    /// the head's queries at column `q_at`, its keys at `q_at + d`, its values at
    /// `q_at + 2·d`; `out` gets `[seq, hd]`. Only the real tokens' keys take part.
    #[allow(clippy::too_many_arguments)]
    fn attend = attend_portable(
        block: &[f32],
        stride: usize,
        q_at: usize,
        hd: usize,
        keys: &[usize],
        d: usize,
        scratch: &mut Vec<f32>,
        out: &mut [f32],
    )
);

#[allow(clippy::too_many_arguments)]
#[inline(always)]
fn attend_portable(
    block: &[f32],
    stride: usize,
    q_at: usize,
    hd: usize,
    keys: &[usize],
    d: usize,
    scratch: &mut Vec<f32>,
    out: &mut [f32],
) {
    let n = keys.len();
    let seq = block.len() / stride;
    assert!(out.len() == seq * hd, "attention output size");
    scratch.resize(2 * n * hd + seq * n, 0.0);
    // The real tokens' keys (`[n, hd]`, or `[hd, n]` for the loops) and values (`[n, hd]`)
    // gathered, then the scores `[seq, n]`.
    let (k, rest) = scratch.split_at_mut(n * hd);
    let (v, scores) = rest.split_at_mut(n * hd);
    for (j, &key) in keys.iter().enumerate() {
        let row = &block[key * stride + q_at..];
        if head_products::KEYS_TRANSPOSED {
            for (c, &value) in row[d..d + hd].iter().enumerate() {
                k[c * n + j] = value;
            }
        } else {
            k[j * hd..(j + 1) * hd].copy_from_slice(&row[d..d + hd]);
        }
        v[j * hd..(j + 1) * hd].copy_from_slice(&row[2 * d..2 * d + hd]);
    }
    let scale = 1.0 / (hd as f32).sqrt();
    let queries = &block[q_at..];
    head_products::scores(queries, stride, k, hd, scale, scores);
    for row in scores.chunks_exact_mut(n) {
        softmax_row(row);
    }
    head_products::context(scores, v, hd, out);
}

/// A head's two products. Natively gemm calls: the same function over loops of our own took
/// 12% of `bench filter --batches 32` against 4.8%. In wasm loops: a short text's 144 pairs
/// of tiny gemm calls (25 × 25 × 32) cost more than the products (the threaded module on one
/// thread classified one text in 44 ms with them against 26 ms before this path).
#[cfg(not(target_arch = "wasm32"))]
mod head_products {
    use crate::models::column_product::Strided;

    /// gemm reads the keys as they are, `[n, hd]`.
    pub(super) const KEYS_TRANSPOSED: bool = false;

    /// `scores [seq, n] = scale · Q Kᵀ` for the queries at `queries[i · stride..][..hd]` and
    /// the keys `k [n, hd]`.
    #[inline(always)]
    pub(super) fn scores(
        queries: &[f32],
        stride: usize,
        k: &[f32],
        hd: usize,
        scale: f32,
        scores: &mut [f32],
    ) {
        let n = k.len() / hd;
        let seq = scores.len() / n;
        assert!(queries.len() >= (seq - 1) * stride + hd, "query rows");
        // SAFETY: the query rows are in `queries` (checked above), `k` is `[n, hd]` read as
        // its transpose `[hd, n]`, `scores` is `[seq, n]`, written whole.
        unsafe {
            gemm::gemm(
                seq,
                n,
                hd,
                scores.as_mut_ptr(),
                1,
                n as isize,
                false,
                queries.as_ptr(),
                1,
                stride as isize,
                k.as_ptr(),
                hd as isize,
                1,
                0.0,
                scale,
                false,
                false,
                false,
                gemm::Parallelism::None,
            );
        }
    }

    /// `out [seq, hd] = weights [seq, n] · v [n, hd]`.
    #[inline(always)]
    pub(super) fn context(weights: &[f32], v: &[f32], hd: usize, out: &mut [f32]) {
        let n = v.len() / hd;
        let seq = out.len() / hd;
        assert!(weights.len() == seq * n, "weights size");
        // SAFETY: all three row-major with the sizes checked above.
        unsafe {
            crate::models::column_product::columns(
                seq,
                hd,
                n,
                Strided {
                    ptr: weights.as_ptr(),
                    row_stride: n as isize,
                    col_stride: 1,
                },
                Strided {
                    ptr: v.as_ptr(),
                    row_stride: hd as isize,
                    col_stride: 1,
                },
                out.as_mut_ptr(),
                hd,
                None,
            );
        }
    }
}

#[cfg(target_arch = "wasm32")]
mod head_products {
    /// The loops read the keys transposed, `[hd, n]`: `BLOCK` keys' scores are then sums of
    /// whole vectors over the head's columns.
    pub(super) const KEYS_TRANSPOSED: bool = true;

    /// Keys scored at a time, each its own running sum (one running sum would wait on each
    /// add).
    const BLOCK: usize = 16;

    /// `scores [seq, n] = scale · Q Kᵀ` for the queries at `queries[i · stride..][..hd]` and
    /// the transposed keys `kt [hd, n]`.
    #[inline(always)]
    pub(super) fn scores(
        queries: &[f32],
        stride: usize,
        kt: &[f32],
        hd: usize,
        scale: f32,
        scores: &mut [f32],
    ) {
        let n = kt.len() / hd;
        for (i, row) in scores.chunks_exact_mut(n).enumerate() {
            let q = &queries[i * stride..][..hd];
            let mut first = 0;
            while first + BLOCK <= n {
                let mut acc = [0.0f32; BLOCK];
                for (c, &qc) in q.iter().enumerate() {
                    let keys: &[f32; BLOCK] =
                        kt[c * n + first..][..BLOCK].try_into().expect("BLOCK keys");
                    for (a, k) in acc.iter_mut().zip(keys) {
                        *a += qc * k;
                    }
                }
                for (s, a) in row[first..first + BLOCK].iter_mut().zip(acc) {
                    *s = a * scale;
                }
                first += BLOCK;
            }
            for (j, s) in row.iter_mut().enumerate().skip(first) {
                let dot = q
                    .iter()
                    .enumerate()
                    .fold(0.0f32, |acc, (c, &qc)| acc + qc * kt[c * n + j]);
                *s = dot * scale;
            }
        }
    }

    /// `out [seq, hd] = weights [seq, n] · v [n, hd]`, a row of `out` accumulated over `v`'s
    /// rows.
    #[inline(always)]
    pub(super) fn context(weights: &[f32], v: &[f32], hd: usize, out: &mut [f32]) {
        let n = v.len() / hd;
        for (o, w) in out.chunks_exact_mut(hd).zip(weights.chunks_exact(n)) {
            o.fill(0.0);
            for (&w, v) in w.iter().zip(v.chunks_exact(hd)) {
                for (o, v) in o.iter_mut().zip(v) {
                    *o += w * v;
                }
            }
        }
    }
}

/// Softmax of one row of scores in place.
#[inline(always)]
fn softmax_row(row: &mut [f32]) {
    let mut lanes = [f32::NEG_INFINITY; LANES];
    let mut chunks = row.chunks_exact(LANES);
    for chunk in &mut chunks {
        for (l, &s) in lanes.iter_mut().zip(chunk) {
            *l = l.max(s);
        }
    }
    let max = chunks
        .remainder()
        .iter()
        .chain(&lanes)
        .fold(f32::NEG_INFINITY, |m, &s| m.max(s));
    // exp below -87 would leave f32's normal range; such weights are below 1e-37 of the
    // largest, where burn's are as good as zero too.
    let mut chunks = row.chunks_exact_mut(LANES);
    for chunk in &mut chunks {
        for s in chunk {
            *s = exp_f32((*s - max).max(-87.0));
        }
    }
    for s in chunks.into_remainder() {
        *s = exp_f32((*s - max).max(-87.0));
    }
    let total = lane_sum(row);
    for s in row.iter_mut() {
        *s /= total;
    }
}

widest!(
    /// LayerNorm of one row in place: `(x - mean) / sqrt(var + eps) · gamma + beta`, the
    /// variance biased (divided by the width), as burn's.
    fn norm_row = norm_row_portable(row: &mut [f32], gamma: &[f32], beta: &[f32], eps: f32)
);

#[inline(always)]
fn norm_row_portable(row: &mut [f32], gamma: &[f32], beta: &[f32], eps: f32) {
    let n = row.len() as f32;
    let mean = lane_sum(row) / n;
    let mut lanes = [0.0f32; LANES];
    let chunks = row.chunks_exact(LANES);
    let mut rest = 0.0f32;
    for v in chunks.remainder() {
        rest += (v - mean) * (v - mean);
    }
    for chunk in chunks {
        for (l, v) in lanes.iter_mut().zip(chunk) {
            *l += (v - mean) * (v - mean);
        }
    }
    let var = (lanes.iter().sum::<f32>() + rest) / n;
    let std = (var + eps).sqrt();
    for ((y, g), b) in row.iter_mut().zip(gamma).zip(beta) {
        *y = (*y - mean) / std * g + b;
    }
}

widest!(
    /// `row = LayerNorm(sum + row)`.
    fn add_norm_row = add_norm_row_portable(
        row: &mut [f32],
        sum: &[f32],
        gamma: &[f32],
        beta: &[f32],
        eps: f32,
    )
);

#[inline(always)]
fn add_norm_row_portable(row: &mut [f32], sum: &[f32], gamma: &[f32], beta: &[f32], eps: f32) {
    for (y, s) in row.iter_mut().zip(sum) {
        *y += s;
    }
    norm_row_portable(row, gamma, beta, eps);
}

/// Partial sums in this many lanes, added at the end: a loop the compiler vectorises (one
/// running sum is a chain of dependent adds).
const LANES: usize = 16;

#[inline(always)]
fn lane_sum(values: &[f32]) -> f32 {
    let mut lanes = [0.0f32; LANES];
    let chunks = values.chunks_exact(LANES);
    let rest: f32 = chunks.remainder().iter().sum();
    for chunk in chunks {
        for (l, v) in lanes.iter_mut().zip(chunk) {
            *l += v;
        }
    }
    lanes.iter().sum::<f32>() + rest
}
