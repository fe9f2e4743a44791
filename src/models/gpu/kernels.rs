//! The CubeCL kernels of the GPU engine (compiled to SPIR-V natively, to WGSL in a browser).
//!
//! Every kernel is f32 arithmetic on u32 words: the GGUF's Q4_1 and Q8_0 blocks stay packed
//! (4 or 8 words of quants per 32 values) and their f16 scales/minimums, two to a word, are
//! widened with integer bit operations ([`half::unpack`]), so no kernel needs `shader-f16`
//! (SwiftShader and many browsers lack it) nor subgroups (an optional WebGPU feature):
//! reductions go through workgroup memory.
//!
//! Products run **one invocation per output row** (a workgroup of [`ROWS`] rows): a row's dot
//! product reads its blocks one after the other, 16 bytes (a Q4_1 block, half a Q8_0 block)
//! per load, the input vectors sit in workgroup memory, and there is no cross-invocation
//! reduction at all. For prefill the same kernels take `tile`
//! positions per workgroup (a comptime constant: 1 when decoding, up to 4 in prefill; at most
//! 12 KB of inputs, under WebGPU's 16 KB): each weight is unpacked once and multiplied with
//! every staged position, and the grid's second dimension covers the positions, so a prefill
//! is still one dispatch per product (a simple mat-mat: no tiling over columns).
//!
//! **Why the products are unrolled** over a row (the width is a comptime constant, and no
//! branch encloses the dot product): CPU implementations of Vulkan (lavapipe's llvmpipe, Mesa
//! 22.3 here) run 8 invocations per SIMD vector and turn every load whose address is not a
//! compile-time constant, or that sits in a loop or a branch, into a loop over the 8
//! invocations with a branch per value; a load at a constant address outside control flow is
//! one scalar load broadcast to all 8. Unrolled, every read of the staged input (32 per block
//! and row, the bulk of the loads) is a constant address; only the weights' 16-byte loads and
//! scales stay per invocation. A GPU sees the same straight-line code (and fewer, wider loads).
//!
//! **Split rows, on GPUs** (a comptime `split`, [`super::DecodeLayout::SplitRows`]): one row
//! per invocation leaves a GPU nearly idle when decoding (the block products have 576 to
//! 1,536 rows: 9 to 24 workgroups for a GPU's hundred-odd cores, each invocation running 18
//! to 48 blocks one after the other). With `split` invocations per row, each takes every
//! `split`-th block and the partial sums meet in workgroup memory: `split` times the
//! workgroups and `1/split` of each invocation's serial chain. Neighbouring invocations still
//! read neighbouring rows' blocks (invocation `lane · rows_per_group + r`). CPU implementations
//! keep one row per invocation (the unrolled constant-address reads above are what they need).
//!
//! Fusions (each a single dispatch): RMSNorm + projection (the workgroup normalises its
//! position itself: 576 values, cheaper than a dispatch), projection + residual add, RMSNorm +
//! gate/up + SwiGLU, RoPE + KV-cache write (in prefill; a decoded position's RoPE and cache
//! write are done in its attention kernel), the whole attention of one head and position
//! (scores, softmax, weighted values) and argmax over the vocabulary. The final RMSNorm is
//! its own small dispatch ([`final_norm`]): the logits' 768 workgroups then read it directly
//! instead of each normalising the input again.

// `#[cube(launch_unchecked)]` generates a module and launch items per kernel that cannot carry docs.
#![allow(missing_docs)]

use cubecl::prelude::*;

use super::half;

/// Rows (invocations) per workgroup of the products (the logits' included). Each workgroup
/// stages (normalises) its input itself, so narrower workgroups stage it more often, and on
/// lavapipe wider ones ran slower: the logits took 94 ms a token with 256 rows per
/// workgroup, 34 ms with 64 and 64 ms with 32 (the block products 1.6x slower with 32).
pub const ROWS: u32 = 64;
/// Invocations of the reductions (RMSNorm statistics, attention, argmax).
pub const LANES: u32 = 64;
/// Values per quantisation block.
pub const BLOCK: usize = 32;

/// Four u32 words read with one load: a Q4_1 block's quants, half a Q8_0 block's.
pub type Quad = Vector<u32, Const<4>>;

/// Sum of `v` over the workgroup's `lanes` invocations, through `scratch` (every invocation
/// gets the total). Unrolled: every read is at a constant address (see the module docs).
#[cube]
fn workgroup_sum(v: f32, scratch: &mut Shared<[f32]>, #[comptime] lanes: usize) -> f32 {
    let tid = UNIT_POS as usize;
    scratch[tid] = v;
    sync_cube();
    let mut total = 0.0f32;
    #[unroll]
    for i in 0..lanes {
        total += scratch[i];
    }
    sync_cube();
    total
}

/// Maximum of `v` over the workgroup's `lanes` invocations (as [`workgroup_sum`]).
#[cube]
fn workgroup_max(v: f32, scratch: &mut Shared<[f32]>, #[comptime] lanes: usize) -> f32 {
    let tid = UNIT_POS as usize;
    scratch[tid] = v;
    sync_cube();
    let mut best = scratch[0];
    #[unroll]
    for i in 1..lanes {
        best = max(best, scratch[i]);
    }
    sync_cube();
    best
}

/// Copies position `p` of `x` (`cols` wide) into slot `slot` of `xs` (`cols` per slot),
/// RMS-normalised with `norm_w` when `norm`, and (when `block_sums`) each block's sum into
/// slot `slot` of `sums`. Every invocation of the workgroup (`lanes` of them) takes part (it
/// has barriers: call it uniformly).
#[cube]
#[allow(clippy::too_many_arguments)]
fn stage_input(
    x: &[f32],
    norm_w: &[f32],
    xs: &mut Shared<[f32]>,
    sums: &mut Shared<[f32]>,
    scratch: &mut Shared<[f32]>,
    p: usize,
    eps: f32,
    #[comptime] slot: usize,
    #[comptime] cols: usize,
    #[comptime] lanes: usize,
    #[comptime] norm: bool,
    #[comptime] block_sums: bool,
) {
    let tid = UNIT_POS as usize;
    let base = p * cols;
    let to = slot * cols;
    if norm {
        let mut squares = 0.0f32;
        let mut c = tid;
        while c < cols {
            let v = x[base + c];
            squares += v * v;
            c += lanes;
        }
        let total = workgroup_sum(squares, scratch, lanes);
        let rms = f32::sqrt(total / f32::cast_from(cols) + eps);
        let mut c = tid;
        while c < cols {
            xs[to + c] = x[base + c] / rms * norm_w[c];
            c += lanes;
        }
    } else {
        let mut c = tid;
        while c < cols {
            xs[to + c] = x[base + c];
            c += lanes;
        }
    }
    sync_cube();
    if block_sums {
        // Each block's sum (Q4_1's minimums multiply it): once here, not once per row.
        let mut b = tid;
        while b < cols / BLOCK {
            let mut s = 0.0f32;
            for i in 0..BLOCK {
                s += xs[to + b * BLOCK + i];
            }
            sums[slot * (cols / BLOCK) + b] = s;
            b += lanes;
        }
        sync_cube();
    }
}

/// Row `row` of a Q4_1 matrix (`rows` x `cols`) · each of the `tile` staged inputs, into
/// `acc[0..tile]`: value = scale · nibble + min; a block's 4 words (one [`Quad`]) hold values
/// 0..16 in their bytes' low nibbles and 16..32 in the high ones, and its scale and minimum
/// are the f16 halves of one word of `scales`. Each weight is unpacked once and used for
/// every staged position (prefill: `tile` positions per weight read; decode: 1). Stored
/// column-major by block (see [`super::weights`]): neighbouring invocations (rows) read
/// neighbouring blocks. Unrolled over the row, so every `xs`/`sums` index is a constant (see
/// the module docs); call it outside any branch.
#[cube]
#[allow(clippy::too_many_arguments)]
fn dot_q4_1(
    words: &[Quad],
    scales: &[u32],
    xs: &Shared<[f32]>,
    sums: &Shared<[f32]>,
    row: usize,
    rows: usize,
    acc: &mut Array<f32>,
    qx: &mut Array<f32>,
    #[comptime] cols: usize,
    #[comptime] tile: usize,
) {
    let per_row = cols / BLOCK;
    #[unroll]
    for t in 0..tile {
        acc[t] = 0.0;
    }
    #[unroll]
    for b in 0..per_row {
        let quad = words[b * rows + row];
        let dm = scales[b * rows + row];
        #[unroll]
        for t in 0..tile {
            qx[t] = 0.0;
        }
        #[unroll]
        for w in 0..4usize {
            let word = quad.extract(w);
            #[unroll]
            for k in 0..4usize {
                let byte = (word >> (8 * k as u32)) & 0xff;
                let lo = f32::cast_from(byte & 0x0f);
                let hi = f32::cast_from(byte >> 4);
                #[unroll]
                for t in 0..tile {
                    let at = t * cols + b * BLOCK + 4 * w + k;
                    qx[t] += lo * xs[at] + hi * xs[at + 16];
                }
            }
        }
        let d = half::unpack(dm, false);
        let m = half::unpack(dm, true);
        #[unroll]
        for t in 0..tile {
            acc[t] += d * qx[t] + m * sums[t * per_row + b];
        }
    }
}

/// Lane `lane`'s part of row `row` of a Q4_1 matrix · the staged input (slot 0): blocks
/// `lane`, `lane + lanes`, … (as [`dot_q4_1`] otherwise; a runtime loop, for GPUs).
#[cube]
#[allow(clippy::too_many_arguments)]
fn dot_q4_1_part(
    words: &[Quad],
    scales: &[u32],
    xs: &Shared<[f32]>,
    sums: &Shared<[f32]>,
    row: usize,
    rows: usize,
    lane: usize,
    #[comptime] cols: usize,
    #[comptime] lanes: usize,
) -> f32 {
    let per_row = cols / BLOCK;
    let mut acc = 0.0f32;
    let mut b = lane;
    while b < per_row {
        let quad = words[b * rows + row];
        let dm = scales[b * rows + row];
        let mut qx = 0.0f32;
        #[unroll]
        for w in 0..4usize {
            let word = quad.extract(w);
            #[unroll]
            for k in 0..4usize {
                let byte = (word >> (8 * k as u32)) & 0xff;
                let at = b * BLOCK + 4 * w + k;
                qx +=
                    f32::cast_from(byte & 0x0f) * xs[at] + f32::cast_from(byte >> 4) * xs[at + 16];
            }
        }
        acc += half::unpack(dm, false) * qx + half::unpack(dm, true) * sums[b];
        b += lanes;
    }
    acc
}

/// The sum of the `lanes` parts of the row of invocation `UNIT_POS` (invocation
/// `lane · (ROWS / lanes) + r` holds row `r`'s part `lane`), through `scratch`; every
/// invocation gets its row's total. Has barriers: call it uniformly.
#[cube]
fn row_parts_sum(part: f32, scratch: &mut Shared<[f32]>, #[comptime] lanes: usize) -> f32 {
    let tid = UNIT_POS as usize;
    let per = ROWS as usize / lanes;
    scratch[tid] = part;
    sync_cube();
    let r = tid % per;
    let mut total = 0.0f32;
    #[unroll]
    for l in 0..lanes {
        total += scratch[l * per + r];
    }
    sync_cube();
    total
}

/// Row `row` of a Q8_0 matrix · `xs`: value = scale · signed byte, 8 words (two [`Quad`]s)
/// per block; the f16 scales of blocks `2j` and `2j + 1` share word `j` of the row in
/// `scales` (`cols` is a whole number of block pairs). Unrolled as [`dot_q4_1`].
#[cube]
fn dot_q8_0(
    words: &[Quad],
    scales: &[u32],
    xs: &[f32],
    row: usize,
    rows: usize,
    #[comptime] cols: usize,
) -> f32 {
    let mut acc = 0.0f32;
    #[unroll]
    for pair in 0..cols / (2 * BLOCK) {
        let dd = scales[pair * rows + row];
        #[unroll]
        for h in 0..2usize {
            let b = 2 * pair + h;
            let mut qx = 0.0f32;
            #[unroll]
            for half_block in 0..2usize {
                let quad = words[(2 * b + half_block) * rows + row];
                #[unroll]
                for w in 0..4usize {
                    let word = i32::reinterpret(quad.extract(w));
                    #[unroll]
                    for k in 0..4usize {
                        // Byte k, sign-extended: shifted to the top, then arithmetically down.
                        let q = f32::cast_from((word << (24 - 8 * k as i32)) >> 24);
                        qx += q * xs[b * BLOCK + 16 * half_block + 4 * w + k];
                    }
                }
            }
            acc += half::unpack(dd, h == 1) * qx;
        }
    }
    acc
}

/// `out[p, r] (+)= W[r] · norm?(x[p])` for a Q4_1 matrix (`rows` a multiple of [`ROWS`]):
/// grid `(rows / (ROWS / split), positions / tile)`, `tile` positions per workgroup, `split`
/// invocations per row (`split > 1` only with `tile == 1`: decoding on a GPU). `residual` adds
/// to `out` (the residual stream) instead of writing it; `tap` (with `residual`) also copies the
/// last position's new row into row `slot` of `states` (what the probes read after a block:
/// the down projection writes it, so no separate copy dispatch is needed; untapped launches
/// bind any buffer).
#[cube(launch_unchecked)]
#[allow(clippy::too_many_arguments)]
pub fn matvec_q4_1(
    x: &[f32],
    norm_w: &[f32],
    words: &[Quad],
    scales: &[u32],
    out: &mut [f32],
    states: &mut [f32],
    n: usize,
    rows: usize,
    eps: f32,
    slot: usize,
    #[comptime] cols: usize,
    #[comptime] norm: bool,
    #[comptime] residual: bool,
    #[comptime] tile: usize,
    #[comptime] tap: bool,
    #[comptime] split: usize,
) {
    let mut xs = Shared::new_slice(tile * cols);
    let mut sums = Shared::new_slice(tile * cols / BLOCK);
    let mut scratch = Shared::new_slice(ROWS as usize);
    let p0 = CUBE_POS_Y as usize * tile;
    #[unroll]
    for t in 0..tile {
        // Past the last position: stage the last one again (barriers stay uniform).
        let p = min(p0 + t, n - 1);
        stage_input(
            x,
            norm_w,
            &mut xs,
            &mut sums,
            &mut scratch,
            p,
            eps,
            t,
            cols,
            ROWS as usize,
            norm,
            true,
        );
    }
    // Every row exists (rows is a multiple of ROWS): no branch around the dot product.
    let per = ROWS as usize / split;
    let tid = UNIT_POS as usize;
    let row = CUBE_POS_X as usize * per + tid % per;
    let mut acc = Array::<f32>::new(tile);
    let mut qx = Array::<f32>::new(tile);
    if split == 1 {
        dot_q4_1(
            words, scales, &xs, &sums, row, rows, &mut acc, &mut qx, cols, tile,
        );
    } else {
        let part = dot_q4_1_part(words, scales, &xs, &sums, row, rows, tid / per, cols, split);
        acc[0] = row_parts_sum(part, &mut scratch, split);
    }
    // The first `per` invocations write (all of them when split is 1).
    let writes = tid < per;
    #[unroll]
    for t in 0..tile {
        let p = p0 + t;
        if p < n && writes {
            if residual {
                let v = out[p * rows + row] + acc[t];
                out[p * rows + row] = v;
                if tap && p == n - 1 {
                    states[slot * rows + row] = v;
                }
            } else {
                out[p * rows + row] = acc[t];
            }
        }
    }
}

/// `h[p, r] = silu(G[r] · n) · (U[r] · n)` with `n = RMSNorm(x[p])`: the feed-forward's first
/// half in one dispatch (grid `(rows / (ROWS / split), positions / tile)`, as
/// [`matvec_q4_1`]). `G` and `U` are one stacked `[2·rows, cols]` matrix (gate rows first), so
/// the kernel binds 5 storage buffers.
#[cube(launch_unchecked)]
#[allow(clippy::too_many_arguments)]
pub fn swiglu_q4_1(
    x: &[f32],
    norm_w: &[f32],
    words: &[Quad],
    scales: &[u32],
    h: &mut [f32],
    n: usize,
    rows: usize,
    eps: f32,
    #[comptime] cols: usize,
    #[comptime] tile: usize,
    #[comptime] split: usize,
) {
    let mut xs = Shared::new_slice(tile * cols);
    let mut sums = Shared::new_slice(tile * cols / BLOCK);
    let mut scratch = Shared::new_slice(ROWS as usize);
    let p0 = CUBE_POS_Y as usize * tile;
    #[unroll]
    for t in 0..tile {
        let p = min(p0 + t, n - 1);
        stage_input(
            x,
            norm_w,
            &mut xs,
            &mut sums,
            &mut scratch,
            p,
            eps,
            t,
            cols,
            ROWS as usize,
            true,
            true,
        );
    }
    let per = ROWS as usize / split;
    let tid = UNIT_POS as usize;
    let row = CUBE_POS_X as usize * per + tid % per;
    let mut g = Array::<f32>::new(tile);
    let mut u = Array::<f32>::new(tile);
    let mut qx = Array::<f32>::new(tile);
    let stacked = 2 * rows;
    if split == 1 {
        dot_q4_1(
            words, scales, &xs, &sums, row, stacked, &mut g, &mut qx, cols, tile,
        );
        dot_q4_1(
            words,
            scales,
            &xs,
            &sums,
            rows + row,
            stacked,
            &mut u,
            &mut qx,
            cols,
            tile,
        );
    } else {
        let lane = tid / per;
        let gate = dot_q4_1_part(words, scales, &xs, &sums, row, stacked, lane, cols, split);
        let up = dot_q4_1_part(
            words,
            scales,
            &xs,
            &sums,
            rows + row,
            stacked,
            lane,
            cols,
            split,
        );
        g[0] = row_parts_sum(gate, &mut scratch, split);
        u[0] = row_parts_sum(up, &mut scratch, split);
    }
    let writes = tid < per;
    #[unroll]
    for t in 0..tile {
        let p = p0 + t;
        if p < n && writes {
            h[p * rows + row] = g[t] / (1.0 + f32::exp(-g[t])) * u[t];
        }
    }
}

/// `xn = RMSNorm(x[p])` (`cols` values; one workgroup of [`LANES`]): the logits' input,
/// normalised once for all of [`logits_q8_0`]'s workgroups.
#[cube(launch_unchecked)]
pub fn final_norm(
    x: &[f32],
    norm_w: &[f32],
    xn: &mut [f32],
    p: usize,
    eps: f32,
    #[comptime] cols: usize,
) {
    let mut scratch = Shared::new_slice(LANES as usize);
    let tid = UNIT_POS as usize;
    let base = p * cols;
    let mut squares = 0.0f32;
    let mut c = tid;
    while c < cols {
        let v = x[base + c];
        squares += v * v;
        c += LANES as usize;
    }
    let total = workgroup_sum(squares, &mut scratch, LANES as usize);
    let rms = f32::sqrt(total / f32::cast_from(cols) + eps);
    let mut c = tid;
    while c < cols {
        xn[c] = x[base + c] / rms * norm_w[c];
        c += LANES as usize;
    }
}

/// `out[r] = W[r] · xn` for a Q8_0 matrix (the logits against the tied embedding; `rows` a
/// multiple of [`ROWS`]): grid `(rows / ROWS)` of [`ROWS`] invocations. `xn` is read at
/// constant addresses straight from its buffer (one load broadcast to 8 invocations on
/// lavapipe): no workgroup memory and no barrier. Staging and normalising the input in each
/// of the 768 workgroups, as the block products do, made the logits 2x slower on lavapipe
/// (34 vs 17 ms a token); the block products have 9 to 24 workgroups, and reading their
/// input this way (no staging) did not make them faster there.
#[cube(launch_unchecked)]
pub fn logits_q8_0(
    xn: &[f32],
    words: &[Quad],
    scales: &[u32],
    out: &mut [f32],
    rows: usize,
    #[comptime] cols: usize,
) {
    let row = CUBE_POS_X as usize * ROWS as usize + UNIT_POS as usize;
    out[row] = dot_q8_0(words, scales, xn, row, rows, cols);
}

/// `x[p] = embedding row tokens[p]` (Q8_0, stored as for [`logits_q8_0`]: `words` is the
/// same buffer read a word at a time): grid `(positions)`.
#[cube(launch_unchecked)]
pub fn embed_q8_0(
    tokens: &[u32],
    words: &[u32],
    scales: &[u32],
    x: &mut [f32],
    rows: usize,
    cols: usize,
) {
    let p = CUBE_POS_X as usize;
    let id = tokens[p] as usize;
    let mut c = UNIT_POS as usize;
    while c < cols {
        let b = c / BLOCK;
        let within = c % BLOCK;
        // Word `j` of the row is component `j % 4` of its group `j / 4`.
        let j = b * 8 + within / 4;
        let word = words[((j / 4) * rows + id) * 4 + j % 4];
        let byte = (word >> (8 * (within % 4) as u32)) & 0xff;
        let mut q = f32::cast_from(byte);
        if byte > 127 {
            q -= 256.0;
        }
        x[p * cols + c] = half::unpack(scales[(b / 2) * rows + id], b % 2 == 1) * q;
        c += LANES as usize;
    }
}

/// Stores values `at` and `at + 1` (`at` even) of a KV cache: as f16 packed in one word when
/// `f16` (see [`half`]), else as two f32's bits.
#[cube]
fn store_pair(cache: &mut [u32], at: usize, a: f32, b: f32, #[comptime] f16: bool) {
    if f16 {
        cache[at / 2] = half::pack(a, b);
    } else {
        cache[at] = u32::reinterpret(a);
        cache[at + 1] = u32::reinterpret(b);
    }
}

/// Element `second` (0 or 1) of the adjacent pair `(x0, x1)` rotated by the angle whose cosine
/// and sine are `c` and `s`: [`rope_kv`] and a decoded position's [`attention`] both rotate
/// with it, so the two paths give the same values.
#[cube]
fn rotated(x0: f32, x1: f32, c: f32, s: f32, #[comptime] second: bool) -> f32 {
    if second {
        x0 * s + x1 * c
    } else {
        x0 * c - x1 * s
    }
}

/// Value `at` of a KV cache stored by [`store_pair`]. (The cache is bound writable: the
/// attention kernel both reads it and writes a decoded position into it.)
#[cube]
fn load(cache: &mut [u32], at: usize, #[comptime] f16: bool) -> f32 {
    if f16 {
        half::unpack(cache[at / 2], at % 2 == 1)
    } else {
        f32::reinterpret(cache[at])
    }
}

/// RoPE on the queries and keys of `qkv[p] = [q (heads·hd) | k (kv·hd) | v (kv·hd)]` (adjacent
/// pairs, angles from the host's f64 tables), queries and keys rotated in place, keys and
/// values also written to the caches at position `start + p` of layer `layer` (f16 pairs in a
/// word when `f16`, else f32 bits): grid `(positions)`. The step's own attention reads its
/// positions' keys and values from `qkv` (f32), the cache only for earlier steps'.
#[cube(launch_unchecked)]
#[allow(clippy::too_many_arguments)]
pub fn rope_kv(
    qkv: &mut [f32],
    cos: &[f32],
    sin: &[f32],
    k_cache: &mut [u32],
    v_cache: &mut [u32],
    start: usize,
    layer: usize,
    q_dim: usize,
    kv_dim: usize,
    head_dim: usize,
    max_positions: usize,
    #[comptime] f16: bool,
) {
    let p = CUBE_POS_X as usize;
    let pos = start + p;
    let width = q_dim + 2 * kv_dim;
    let half = head_dim / 2;
    let row = p * width;
    let cache_row = (layer * max_positions + pos) * kv_dim;
    // Pairs of the queries and keys, then pairs of the values.
    let pairs = (q_dim + kv_dim) / 2;
    let mut j = UNIT_POS as usize;
    while j < pairs + kv_dim / 2 {
        if j < pairs {
            let i = j % half;
            let c = cos[pos * half + i];
            let s = sin[pos * half + i];
            let x0 = qkv[row + 2 * j];
            let x1 = qkv[row + 2 * j + 1];
            let r0 = rotated(x0, x1, c, s, false);
            let r1 = rotated(x0, x1, c, s, true);
            qkv[row + 2 * j] = r0;
            qkv[row + 2 * j + 1] = r1;
            if 2 * j >= q_dim {
                store_pair(k_cache, cache_row + 2 * j - q_dim, r0, r1, f16);
            }
        } else {
            let at = 2 * (j - pairs);
            let v = row + q_dim + kv_dim + at;
            store_pair(v_cache, cache_row + at, qkv[v], qkv[v + 1], f16);
        }
        j += LANES as usize;
    }
}

/// Position groups of the attention kernel when decoding on a GPU
/// ([`super::DecodeLayout::SplitRows`]): 4 groups of [`LANES`] invocations (256, WebGPU's
/// default limit per workgroup) each take every 4th position.
pub const ATTENTION_GROUPS: u32 = 4;

/// Attention of query head `CUBE_POS_X` at position `start + CUBE_POS_Y` over every key up to
/// it (causal): scores, softmax and the weighted values in one workgroup of `groups` ·
/// `head_dim` invocations; the scores stay in workgroup memory (`max_positions` f32: 8 KB for
/// 2,048). Writes `ctx[p, head·hd..]`. `head_dim` must equal [`LANES`].
///
/// Invocation `g · head_dim + d` scores keys `tid`, `tid + lanes`, … and sums value `d` over
/// positions `g`, `g + groups`, …; the groups' sums meet in workgroup memory. One group (a
/// prefill, where heads × positions workgroups fill the device, and CPU adapters) is the
/// plain kernel; a decoded position has only as many workgroups as heads (9), so on a GPU its
/// serial chain of value loads (one per position, each waiting on memory) is what takes the
/// time: with 4 groups and 4 loads in flight per iteration (and split rows in the products)
/// attention took 0.59 instead of 1.15 ms a token on an NVIDIA H200 (notes/issue-14-gpu.md).
///
/// `rope` (a decoded position): the kernel rotates the query and the new key itself and
/// writes the new key and value to the caches, so a decoded token needs no [`rope_kv`]
/// dispatch (5 per block instead of 6); a prefill's positions are rotated once each by
/// [`rope_kv`] first (here every workgroup would rotate every earlier new key again).
///
/// Keys and values of earlier steps (positions before `start`) come from the caches, those of
/// this step's positions from `qkv` in f32 (rotated by [`rope_kv`] or here). With an f16
/// cache this keeps a prefill exact (every position it attends to is its own: the logits after a prompt
/// equal the f32 cache's) and rounds only what later steps read back; with an f32 cache both
/// sources hold the same values.
#[cube(launch_unchecked)]
#[allow(clippy::too_many_arguments, clippy::manual_is_multiple_of)] // (no is_multiple_of in kernels)
pub fn attention(
    qkv: &[f32],
    k_cache: &mut [u32],
    v_cache: &mut [u32],
    ctx: &mut [f32],
    cos: &[f32],
    sin: &[f32],
    start: usize,
    layer: usize,
    q_dim: usize,
    kv_dim: usize,
    group: usize,
    scale: f32,
    #[comptime] max_positions: usize,
    #[comptime] head_dim: usize,
    #[comptime] f16: bool,
    #[comptime] groups: usize,
    #[comptime] rope: bool,
) {
    let lanes = groups * head_dim;
    let mut scores = Shared::new_slice(max_positions);
    let mut q = Shared::new_slice(head_dim);
    let mut k_rotated = Shared::new_slice(head_dim);
    let mut scratch = Shared::new_slice(lanes);
    let h = CUBE_POS_X as usize;
    let p = CUBE_POS_Y as usize;
    let tid = UNIT_POS as usize;
    let dim = tid % head_dim;
    let g = tid / head_dim;
    let kvh = h / group;
    let total = start + p + 1;
    let width = q_dim + 2 * kv_dim;
    // This step's keys and values in `qkv`: position `start + i` at row `i`.
    let k_new = q_dim + kvh * head_dim;
    let v_new = k_new + kv_dim;
    if g == 0 {
        if rope {
            // One decoded position (p = 0): its query and key rotated here, as `rope_kv`
            // does (the same f32 expressions), instead of in a dispatch of their own.
            let i = dim / 2;
            let c = cos[start * (head_dim / 2) + i];
            let s = sin[start * (head_dim / 2) + i];
            let qa = h * head_dim + 2 * i;
            let ka = k_new + 2 * i;
            let (x0, x1) = (qkv[qa], qkv[qa + 1]);
            let (y0, y1) = (qkv[ka], qkv[ka + 1]);
            if dim % 2 == 0 {
                q[dim] = rotated(x0, x1, c, s, false);
                k_rotated[dim] = rotated(y0, y1, c, s, false);
            } else {
                q[dim] = rotated(x0, x1, c, s, true);
                k_rotated[dim] = rotated(y0, y1, c, s, true);
            }
        } else {
            q[dim] = qkv[p * width + h * head_dim + dim];
        }
    }
    sync_cube();
    if rope && g == 0 && h % group == 0 && dim % 2 == 0 {
        // The first query head of each key/value head writes that head's new key and value
        // to the caches (no workgroup of this dispatch reads them there: each reads this
        // step's own position from `k_rotated` and `qkv`).
        let at = (layer * max_positions + start) * kv_dim + kvh * head_dim + dim;
        store_pair(k_cache, at, k_rotated[dim], k_rotated[dim + 1], f16);
        store_pair(v_cache, at, qkv[v_new + dim], qkv[v_new + dim + 1], f16);
    }
    let cache0 = layer * max_positions * kv_dim + kvh * head_dim;
    let mut best = f32::new(-3.0e38);
    let mut t = tid;
    while t < total {
        let k0 = cache0 + t * kv_dim;
        let mut s = 0.0f32;
        if t >= start {
            if rope {
                for d in 0..head_dim {
                    s += q[d] * k_rotated[d];
                }
            } else {
                let k1 = (t - start) * width + k_new;
                for d in 0..head_dim {
                    s += q[d] * qkv[k1 + d];
                }
            }
        } else if f16 {
            // A word holds two neighbouring key values.
            for d in 0..head_dim / 2 {
                let w = k_cache[k0 / 2 + d];
                s += q[2 * d] * half::unpack(w, false) + q[2 * d + 1] * half::unpack(w, true);
            }
        } else {
            for d in 0..head_dim {
                s += q[d] * f32::reinterpret(k_cache[k0 + d]);
            }
        }
        s /= scale;
        scores[t] = s;
        best = max(best, s);
        t += lanes;
    }
    let best = workgroup_max(best, &mut scratch, lanes);
    let mut sum = 0.0f32;
    let mut t = tid;
    while t < total {
        let e = f32::exp(scores[t] - best);
        scores[t] = e;
        sum += e;
        t += lanes;
    }
    let sum = workgroup_sum(sum, &mut scratch, lanes);
    let mut acc = 0.0f32;
    let col = cache0 + dim;
    if groups == 1 {
        for t in 0..start {
            acc += scores[t] * load(v_cache, col + t * kv_dim, f16);
        }
    } else {
        // Four positions per iteration, so four loads are in flight at once.
        let step = 4 * groups;
        let mut t = g;
        while t + 3 * groups < start {
            let a = load(v_cache, col + t * kv_dim, f16);
            let b = load(v_cache, col + (t + groups) * kv_dim, f16);
            let c = load(v_cache, col + (t + 2 * groups) * kv_dim, f16);
            let e = load(v_cache, col + (t + 3 * groups) * kv_dim, f16);
            acc += scores[t] * a
                + scores[t + groups] * b
                + scores[t + 2 * groups] * c
                + scores[t + 3 * groups] * e;
            t += step;
        }
        while t < start {
            acc += scores[t] * load(v_cache, col + t * kv_dim, f16);
            t += groups;
        }
    }
    let mut t = start + g;
    while t < total {
        acc += scores[t] * qkv[(t - start) * width + v_new + dim];
        t += groups;
    }
    if groups > 1 {
        scratch[tid] = acc;
        sync_cube();
        acc = 0.0;
        #[unroll]
        for j in 0..groups {
            acc += scratch[j * head_dim + dim];
        }
    }
    if g == 0 {
        ctx[p * q_dim + h * head_dim + dim] = acc / sum;
    }
}

/// `out[slot]` = the mean of `x[from..to]` (`cols` values each): keeps the residual stream
/// after a block for the probes, before the next block overwrites `x`: at the step's last
/// position (`to - from` = 1, an exact copy) where the down projection's own copy
/// ([`matvec_q4_1`]'s `tap`) already went to another slot (a block tapped twice), or averaged
/// over a message for a probe that reads it whole. Grid `(1)`.
#[cube(launch_unchecked)]
pub fn tap_state(x: &[f32], out: &mut [f32], from: usize, to: usize, slot: usize, cols: usize) {
    let mut c = UNIT_POS as usize;
    while c < cols {
        let mut sum = f32::new(0.0);
        let mut p = from;
        while p < to {
            sum += x[p * cols + c];
            p += 1;
        }
        out[slot * cols + c] = sum / f32::cast_from(to - from);
        c += LANES as usize;
    }
}

/// `out[0] = argmax(logits)` (the last of equal maxima, as the CPU's `max_by`), `out[1]` = its
/// logit's bits: one
/// workgroup, so a greedy token reads back 8 bytes instead of the whole row.
#[cube(launch_unchecked)]
pub fn argmax(logits: &[f32], out: &mut [u32], vocab: usize) {
    let mut values = Shared::new_slice(LANES as usize);
    let mut ids = Shared::new_slice(LANES as usize);
    let tid = UNIT_POS as usize;
    let mut best = f32::new(-3.0e38);
    let mut best_id = vocab;
    let mut i = tid;
    while i < vocab {
        let v = logits[i];
        if v >= best {
            best = v;
            best_id = i;
        }
        i += LANES as usize;
    }
    values[tid] = best;
    ids[tid] = best_id as u32;
    sync_cube();
    if tid == 0 {
        let mut b = values[0];
        let mut id = ids[0];
        for j in 1..LANES as usize {
            let v = values[j];
            if v > b || (v == b && ids[j] > id) {
                b = v;
                id = ids[j];
            }
        }
        out[0] = id;
        out[1] = u32::reinterpret(b);
    }
}

/// The `k` most likely tokens after the last step, best first: `out[r]` the id, `out[k + r]`
/// its logit's bits (equal logits: the lower id first), and `out[2k]` the bits of
/// `sum(exp((logit - best) * inv_temperature))` over the whole vocabulary (the normaliser
/// sampling at that temperature needs). One workgroup, `k` rounds: each is a pass over the
/// logits for the best one ranked after the previous round's pick, so about `k · vocab`
/// loads, which a GPU does in microseconds and which saves reading the 196 KB row back (on a
/// software rasteriser it is slower than the read: only sampling uses it, greedy picks use
/// [`argmax`]).
#[cube(launch_unchecked)]
pub fn top_candidates(
    logits: &[f32],
    out: &mut [u32],
    vocab: usize,
    k: usize,
    inv_temperature: f32,
) {
    let mut values = Shared::new_slice(LANES as usize);
    let mut ids = Shared::new_slice(LANES as usize);
    let tid = UNIT_POS as usize;
    let mut prev = f32::new(0.0);
    let mut prev_id = vocab as u32;
    let mut top = f32::new(0.0);
    let mut r = 0usize;
    while r < k {
        let mut best = f32::new(-3.0e38);
        let mut best_id = vocab as u32;
        let mut i = tid;
        while i < vocab {
            let v = logits[i];
            let id = i as u32;
            let after = r == 0 || v < prev || (v == prev && id > prev_id);
            let better = v > best || (v == best && id < best_id);
            if after && better {
                best = v;
                best_id = id;
            }
            i += LANES as usize;
        }
        values[tid] = best;
        ids[tid] = best_id;
        sync_cube();
        // Every invocation reduces the 64 candidates itself (constant addresses), so the
        // round's pick needs no broadcast.
        let mut b = values[0];
        let mut bid = ids[0];
        #[unroll]
        for j in 1..LANES as usize {
            let v = values[j];
            let id = ids[j];
            if v > b || (v == b && id < bid) {
                b = v;
                bid = id;
            }
        }
        sync_cube();
        if r == 0 {
            top = b;
        }
        prev = b;
        prev_id = bid;
        if tid == 0 {
            out[r] = bid;
            out[k + r] = u32::reinterpret(b);
        }
        r += 1;
    }
    let mut sum = 0.0f32;
    let mut i = tid;
    while i < vocab {
        sum += f32::exp((logits[i] - top) * inv_temperature);
        i += LANES as usize;
    }
    let mut scratch = Shared::new_slice(LANES as usize);
    let sum = workgroup_sum(sum, &mut scratch, LANES as usize);
    if tid == 0 {
        out[2 * k] = u32::reinterpret(sum);
    }
}
