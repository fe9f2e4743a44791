//! Weight matrices kept in their GGUF blocks (Q4_1, Q8_0, ...) on the CPU and multiplied
//! without inflating them.
//!
//! Decoding one token is a chain of matrix-vector products whose cost is reading the weights:
//! f32 copies of SmolLM2's Q4_1 blocks are 5.5x the bytes (540 MB instead of 98 MB). A
//! [`PackedMatrix`] holds the file's bytes and dequantises one row at a time into a small
//! buffer that stays in L1, so the products read the packed bytes once and the model's resident
//! size stays that of the file. Values are the exact dequantised weights; only the order of the
//! f32 sums differs from a dense product.
//!
//! Products of a few vectors have two modes ([`Precision`]): exact (each row dequantised to
//! f32 inside the dot product) and, the default, 8-bit activations with integer dot products
//! per block ([`crate::models::qdot`]; faster, see notes/issue-15-kernels.md for how much and
//! how far the answers move).
//!
//! Memory (notes/issue-15-kernels.md, "peak memory" sections): the blocks keep the file's f16
//! scales and minimums (20 bytes per 32 Q4_1 weights, as in the file; widened to f32 they were
//! 24, 14 MB more for SmolLM2), and [`PackedMatrix::from_gguf`] copies a tensor about 1 MiB at
//! a time, handing each part's file pages back before the next: the 30 MB token embedding's
//! pages were all resident at once beside its copy, the chat's loading peak.

use crate::error::{Error, Result};
use crate::models::qdot::{self, Isa, Quantized, f16, widen};
use crate::weights::gguf::Gguf;
use crate::weights::quant::GgmlType;

/// A row-major `[rows, cols]` matrix in quantised blocks of 32 values.
#[derive(Debug, Clone)]
pub struct PackedMatrix {
    rows: usize,
    cols: usize,
    blocks: Blocks,
}

/// The blocks, split into arrays (scales, minimums, quants) so the kernels load each kind of
/// value in runs; scales and minimums stay the file's f16 (widened exactly where used,
/// [`qdot::widen`]).
#[derive(Debug, Clone)]
enum Blocks {
    /// Q4_1: value = scale * nibble + min; a block's 16 bytes hold values 0..16 in their low
    /// nibbles and 16..32 in their high nibbles.
    Q4_1 {
        scales: Vec<f16>,
        mins: Vec<f16>,
        nibbles: Vec<u8>,
    },
    /// Q8_0: value = scale * signed byte.
    Q8_0 { scales: Vec<f16>, quants: Vec<i8> },
    /// Other types, dequantised once (a f32 copy: only for files this model family does not
    /// ship).
    Dense(Vec<f32>),
}

const BLOCK: usize = 32;

/// How [`PackedMatrix::matmul`] rounds.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub enum Precision {
    /// Each row dequantised to f32 and multiplied in f32: the GGUF's values exactly (up to the
    /// order of f32 sums); logits within 4e-5 of a float64 evaluation.
    Exact,
    /// The activation vector rounded to 16 bits per block of 32 (`max |x| / 32767` steps),
    /// integer products per block (i16 × i16, [`qdot`]). Weights are read as they are in every
    /// mode.
    #[default]
    Int16,
    /// Rounded to 8 bits (`max |x| / 127` steps), u8 × i8 products, as llama.cpp does (but
    /// with exact f32 block sums for Q4_1's offsets): the fastest, and the least exact.
    Int8,
}

impl Precision {
    /// [`Precision::Exact`] when the environment variable `WEBGUARD_EXACT` is set to anything
    /// but `0` or the empty string, the default otherwise (a switch for whole runs, e.g. the
    /// test suite, without code changes).
    pub fn from_env() -> Self {
        match std::env::var("WEBGUARD_EXACT") {
            Ok(v) if !v.is_empty() && v != "0" => Precision::Exact,
            _ => Precision::default(),
        }
    }
}

/// File bytes [`PackedMatrix::from_gguf`] copies before handing their pages back (rounded down
/// to whole blocks; a part need not end on a page: releases round out to whole granules, and a
/// page of the next part dropped early just faults in again).
const PACK_CHUNK_BYTES: usize = 1 << 20;

impl Blocks {
    /// Q4_1 or Q8_0 blocks of rows `cols` long, from the file's bytes; `None` for other types.
    /// `done(range)` is told each range of `bytes` once it has been copied, about
    /// [`PACK_CHUNK_BYTES`] at a time, in order.
    fn from_bytes(
        ty: GgmlType,
        cols: usize,
        bytes: &[u8],
        mut done: impl FnMut(std::ops::Range<usize>),
    ) -> Option<Self> {
        let f16_at = |b: &[u8], at: usize| f16::from_le_bytes([b[at], b[at + 1]]);
        if !cols.is_multiple_of(BLOCK) {
            return None;
        }
        // Bytes per block, and of them the quants'.
        let (size, quants) = match ty {
            GgmlType::Q4_1 => (20, 16),
            GgmlType::Q8_0 => (34, 32),
            _ => return None,
        };
        let n = bytes.len() / size;
        let per_chunk = (PACK_CHUNK_BYTES / size).max(1);
        // Sized up front: a `collect` of unknown length grows by doubling and leaves the freed
        // smaller buffers behind in the heap (up to 28 MB for the embedding's quants).
        let mut scales = Vec::with_capacity(n);
        let mut rest = Vec::with_capacity(n * quants);
        let mut mins = Vec::with_capacity(if size == 20 { n } else { 0 });
        for (c, chunk) in bytes[..n * size].chunks(per_chunk * size).enumerate() {
            for b in chunk.chunks_exact(size) {
                scales.push(f16_at(b, 0));
                if size == 20 {
                    mins.push(f16_at(b, 2));
                    rest.extend_from_slice(&b[4..20]);
                } else {
                    rest.extend_from_slice(&b[2..34]);
                }
            }
            let start = c * per_chunk * size;
            done(start..start + chunk.len());
        }
        Some(match ty {
            GgmlType::Q4_1 => Blocks::Q4_1 {
                scales,
                mins,
                nibbles: rest,
            },
            _ => Blocks::Q8_0 {
                scales,
                quants: rest.into_iter().map(|q| q as i8).collect(),
            },
        })
    }
}

impl PackedMatrix {
    /// Reads GGUF tensor `name` (shape `[rows, cols]` row-major), keeping Q4_1 and Q8_0 in
    /// blocks. Errors when the shape differs or the type is one this crate cannot dequantise.
    pub fn from_gguf(gguf: &Gguf<'_>, name: &str, shape: [usize; 2]) -> Result<Self> {
        let info = gguf.tensor_info(name)?;
        if info.shape() != shape {
            return Err(Error::ModelFile(format!(
                "GGUF tensor {name} has shape {:?}; the model needs {shape:?}",
                info.shape()
            )));
        }
        // Copied part by part: a mapped file's pages need not stay resident beside the copy
        // (the loading peak was file + packed copy, then the embedding's 30 MB of pages).
        let bytes = gguf.tensor_bytes(info);
        let blocks = Blocks::from_bytes(info.ggml_type, shape[1], bytes, |part| {
            gguf.release_part(info, part)
        });
        let blocks = match blocks {
            Some(b) => b,
            None => Blocks::Dense(gguf.dequantize(name)?),
        };
        gguf.release(info);
        let [rows, cols] = shape;
        Ok(PackedMatrix { rows, cols, blocks })
    }

    /// `[rows, cols]`.
    pub fn shape(&self) -> [usize; 2] {
        [self.rows, self.cols]
    }

    /// Bytes held.
    pub fn resident_bytes(&self) -> usize {
        match &self.blocks {
            Blocks::Q4_1 {
                scales,
                mins,
                nibbles,
            } => (scales.len() + mins.len()) * 2 + nibbles.len(),
            Blocks::Q8_0 { scales, quants } => scales.len() * 2 + quants.len(),
            Blocks::Dense(v) => v.len() * 4,
        }
    }

    /// Dequantises row `r` into `out` (`cols` values).
    pub fn row_into(&self, r: usize, out: &mut [f32]) {
        let per_row = self.cols / BLOCK;
        let first = r * per_row;
        match &self.blocks {
            Blocks::Q4_1 {
                scales,
                mins,
                nibbles,
            } => {
                for (b, out) in out.chunks_exact_mut(BLOCK).enumerate() {
                    let (d, m) = (widen(scales[first + b]), widen(mins[first + b]));
                    let qs = &nibbles[(first + b) * 16..(first + b + 1) * 16];
                    let (lo, hi) = out.split_at_mut(16);
                    for ((l, h), &q) in lo.iter_mut().zip(hi).zip(qs) {
                        *l = d * f32::from(q & 0x0f) + m;
                        *h = d * f32::from(q >> 4) + m;
                    }
                }
            }
            Blocks::Q8_0 { scales, quants } => {
                for (b, out) in out.chunks_exact_mut(BLOCK).enumerate() {
                    let d = widen(scales[first + b]);
                    let qs = &quants[(first + b) * BLOCK..(first + b + 1) * BLOCK];
                    for (o, &q) in out.iter_mut().zip(qs) {
                        *o = d * f32::from(q);
                    }
                }
            }
            Blocks::Dense(v) => out.copy_from_slice(&v[r * self.cols..(r + 1) * self.cols]),
        }
    }

    /// The whole matrix as f32, row-major (a transient copy for batched products).
    pub fn dequantize(&self) -> Vec<f32> {
        let mut out = vec![0.0; self.rows * self.cols];
        // Only prefill asks for this, once per matrix and prompt: always worth the cores.
        let rows_per_task = self.rows.div_ceil(cores()).max(1);
        for_each_chunk(&mut out, rows_per_task * self.cols, |task, rows| {
            for (i, row) in rows.chunks_exact_mut(self.cols).enumerate() {
                self.row_into(task * rows_per_task + i, row);
            }
        });
        out
    }

    /// The whole matrix as f32, transposed: `[cols, rows]` row-major (`wᵀ`, the layout in
    /// which a matrix product `x · wᵀ` packs its right-hand side from contiguous memory: the
    /// product's packing pass took 18% of a 128-token prefill with `[rows, cols]` and a
    /// transposed view, 3% with this; prefill +7-11% measured alternating, notes/issue-15-kernels.md).
    /// Tasks own groups of [`TRANSPOSE_TILE`] rows, whose values for one input column fill
    /// one cache line of the output.
    pub fn dequantize_transposed(&self) -> Vec<f32> {
        let (rows, cols) = (self.rows, self.cols);
        let mut out = vec![0.0; rows * cols];
        let tiles = rows.div_ceil(TRANSPOSE_TILE);
        let per_task = tiles.div_ceil(cores() * 4).max(1);
        let tasks = tiles.div_ceil(per_task);
        /// The output's address, shared with the tasks.
        struct Out(*mut f32);
        // SAFETY: each task writes only output columns `r` of its own rows (see `work`), and
        // the tasks finish before `out` is returned.
        unsafe impl Sync for Out {}
        let ptr = Out(out.as_mut_ptr());
        let work = |task: usize| {
            let ptr = &ptr;
            let first = task * per_task * TRANSPOSE_TILE;
            let last = ((task + 1) * per_task * TRANSPOSE_TILE).min(rows);
            for r in first..last {
                // SAFETY: element `(c, r)` of `[cols, rows]` for `c < cols`: in bounds, and
                // row `r` belongs to this task alone.
                unsafe { self.row_into_column(r, ptr.0.add(r), rows) };
            }
        };
        #[cfg(not(target_arch = "wasm32"))]
        {
            use rayon::prelude::*;
            (0..tasks).into_par_iter().for_each(work);
        }
        // The threaded wasm build's helpers (Web Workers) take tasks as they come free.
        #[cfg(all(target_arch = "wasm32", target_feature = "atomics"))]
        crate::models::spin::Pool::global().run(tasks, &work);
        #[cfg(all(target_arch = "wasm32", not(target_feature = "atomics")))]
        (0..tasks).for_each(work);
        out
    }

    /// Row `r` dequantised to `dst[c · stride]` for `c < cols`. The same values as
    /// [`PackedMatrix::row_into`], kept apart from it: that one writes each block's two
    /// halves contiguously, which the compiler vectorises; a shared per-value callback would
    /// give that up for the embedding lookups and training's dequantisation.
    ///
    /// # Safety
    /// `dst` must be valid for writes at every `c · stride`, `c < cols`.
    unsafe fn row_into_column(&self, r: usize, dst: *mut f32, stride: usize) {
        let per_row = self.cols / BLOCK;
        let first = r * per_row;
        // SAFETY: per the contract; `c` stays below `cols`.
        let put = |c: usize, v: f32| unsafe { *dst.add(c * stride) = v };
        match &self.blocks {
            Blocks::Q4_1 {
                scales,
                mins,
                nibbles,
            } => {
                for b in 0..per_row {
                    let (d, m) = (widen(scales[first + b]), widen(mins[first + b]));
                    let qs = &nibbles[(first + b) * 16..(first + b + 1) * 16];
                    for (i, &q) in qs.iter().enumerate() {
                        put(b * BLOCK + i, d * f32::from(q & 0x0f) + m);
                        put(b * BLOCK + 16 + i, d * f32::from(q >> 4) + m);
                    }
                }
            }
            Blocks::Q8_0 { scales, quants } => {
                for b in 0..per_row {
                    let d = widen(scales[first + b]);
                    let qs = &quants[(first + b) * BLOCK..(first + b + 1) * BLOCK];
                    for (i, &q) in qs.iter().enumerate() {
                        put(b * BLOCK + i, d * f32::from(q));
                    }
                }
            }
            Blocks::Dense(v) => {
                for (c, &x) in v[r * self.cols..(r + 1) * self.cols].iter().enumerate() {
                    put(c, x);
                }
            }
        }
    }

    /// Row `r` · `x`, reading the blocks directly. `block_sums` holds the sum of `x` over each
    /// block (Q4_1's offsets multiply it).
    fn row_dot(&self, r: usize, x: &[f32], block_sums: &[f32]) -> f32 {
        // Builds for x86-64 target plain SSE2; the same loops compiled for AVX2 run twice as
        // wide where the CPU has it (nearly every x86-64 CPU since 2013).
        #[cfg(target_arch = "x86_64")]
        if std::arch::is_x86_feature_detected!("avx2") && std::arch::is_x86_feature_detected!("fma")
        {
            // SAFETY: the CPU supports AVX2 and FMA, checked just above.
            return unsafe { self.row_dot_avx2(r, x, block_sums) };
        }
        self.row_dot_portable::<false>(r, x, block_sums)
    }

    #[cfg(target_arch = "x86_64")]
    #[target_feature(enable = "avx2,fma")]
    fn row_dot_avx2(&self, r: usize, x: &[f32], block_sums: &[f32]) -> f32 {
        self.row_dot_portable::<true>(r, x, block_sums)
    }

    /// `FMA`: fuse multiply-adds (only where the CPU has the instruction; elsewhere `mul_add`
    /// is a slow library call).
    #[inline(always)]
    fn row_dot_portable<const FMA: bool>(&self, r: usize, x: &[f32], block_sums: &[f32]) -> f32 {
        let madd = |a: f32, b: f32, c: f32| if FMA { a.mul_add(b, c) } else { a * b + c };
        let per_row = self.cols / BLOCK;
        let first = r * per_row;
        match &self.blocks {
            Blocks::Q4_1 {
                scales,
                mins,
                nibbles,
            } => {
                let mut acc = [0.0f32; 16];
                let mut offsets = 0.0f32;
                let blocks = nibbles[first * 16..(first + per_row) * 16].chunks_exact(16);
                for (b, (qs, xs)) in blocks.zip(x.chunks_exact(BLOCK)).enumerate() {
                    let (lo, hi) = xs.split_at(16);
                    let mut p = [0.0f32; 16];
                    for j in 0..16 {
                        p[j] = madd(
                            f32::from(qs[j] & 0x0f),
                            lo[j],
                            f32::from(qs[j] >> 4) * hi[j],
                        );
                    }
                    let d = widen(scales[first + b]);
                    for j in 0..16 {
                        acc[j] = madd(d, p[j], acc[j]);
                    }
                    offsets += widen(mins[first + b]) * block_sums[b];
                }
                acc.iter().sum::<f32>() + offsets
            }
            Blocks::Q8_0 { scales, quants } => {
                let mut acc = [0.0f32; BLOCK];
                let blocks = quants[first * BLOCK..(first + per_row) * BLOCK].chunks_exact(BLOCK);
                for (b, (qs, xs)) in blocks.zip(x.chunks_exact(BLOCK)).enumerate() {
                    let d = widen(scales[first + b]);
                    for j in 0..BLOCK {
                        acc[j] = madd(d, f32::from(qs[j]) * xs[j], acc[j]);
                    }
                }
                acc.iter().sum()
            }
            Blocks::Dense(v) => dot(&v[r * self.cols..(r + 1) * self.cols], x),
        }
    }

    /// `x [n, cols] · selfᵀ -> [n, rows]`, row-major, rounded as `precision` says: the rows
    /// are split across the cores and each is read once for all `n` vectors. For decoding,
    /// and for prompts where [`PackedMatrix::tiles_prompts`]; a long prompt runs
    /// [`PROMPT_CHUNK`] positions at a time (each position's result is the same either way).
    pub fn matmul(&self, x: &[f32], n: usize, precision: Precision) -> Vec<f32> {
        if n <= PROMPT_CHUNK {
            return self.matmul_on(x, n, precision, Isa::best());
        }
        let mut out = Vec::with_capacity(n * self.rows);
        for part in x.chunks(PROMPT_CHUNK * self.cols) {
            let m = part.len() / self.cols;
            out.extend(self.matmul_on(part, m, precision, Isa::best()));
        }
        out
    }

    /// Whether a product with many vectors (a prompt) is faster through
    /// [`PackedMatrix::matmul`]'s integer kernels than dequantised to f32 for a dense product:
    /// 16-bit activations on Q4_1 blocks where the CPU has the tiled kernel.
    pub fn tiles_prompts(&self, precision: Precision) -> bool {
        precision == Precision::Int16
            && matches!(self.blocks, Blocks::Q4_1 { .. })
            && Isa::best().tiles_prompts()
    }

    /// Whether products in `precision` round the inputs (the integer modes on Q4_1/Q8_0
    /// blocks).
    pub fn rounds_inputs(&self, precision: Precision) -> bool {
        precision != Precision::Exact && !matches!(self.blocks, Blocks::Dense(_))
    }

    /// `x [n, cols]` rounded as the integer products in `precision` see it (`step · q` per
    /// block of 32). A dense f32 product of these values with the dequantised matrix equals
    /// the integer products up to f32 rounding (Q4_1's offsets use the exact block sums in
    /// both): prefill uses it so that a prompt's states are the same whether it was prefilled
    /// at once or token by token.
    pub fn round_inputs(&self, x: Vec<f32>, precision: Precision) -> Vec<f32> {
        match precision {
            Precision::Exact => x,
            Precision::Int16 => Quantized::<i16>::new(&x, self.cols).dequantize(),
            Precision::Int8 => Quantized::<i8>::new(&x, self.cols).dequantize(),
        }
    }

    /// [`PackedMatrix::matmul`] with the 8-bit products on `isa` (tests force each one).
    fn matmul_on(&self, x: &[f32], n: usize, precision: Precision, isa: Isa) -> Vec<f32> {
        assert_eq!(x.len(), n * self.cols, "input is not [n, cols]");
        // Computed as [rows, n] so that parallel tasks own contiguous rows; each task then
        // writes its rows' values into the [n, rows] result itself (a serial transposition
        // after the product was 2% of a prefill while the other core waited). A prompt's
        // [rows, n] values go to this thread's scratch buffer, and the result is written once
        // without being zeroed first (zeroing both was 2-4% of a prefill).
        let mut scratch = if n > 1 { SCRATCH.take() } else { Vec::new() };
        if scratch.len() < self.rows * n {
            scratch.resize(self.rows * n, 0.0);
        }
        let by_row = &mut scratch[..self.rows * n];
        let mut result: Vec<f32> = Vec::with_capacity(if n > 1 { n * self.rows } else { 0 });
        /// The result's address, shared with the tasks (each writes only its own rows' columns).
        struct Transposed(*mut f32);
        // SAFETY: tasks write disjoint rows' entries of the buffer, and `for_row_ranges`
        // returns only when they have all finished.
        unsafe impl Sync for Transposed {}
        let result_ptr = Transposed(result.as_mut_ptr());
        let rows = self.rows;
        let transpose = |first: usize, by_row: &[f32]| {
            if n == 1 {
                return;
            }
            let result_ptr = &result_ptr;
            // 16 rows at a time: each position's 16 values are one 64-byte line of the result
            // (one row at a time wrote every value to another line).
            for (g, group) in by_row.chunks(TRANSPOSE_TILE * n).enumerate() {
                let r0 = first + g * TRANSPOSE_TILE;
                for t in 0..n {
                    for (i, vals) in group.chunks_exact(n).enumerate() {
                        // SAFETY: row `r0 + i` is this task's; `t · rows + r0 + i` is inside
                        // the `n · rows` result.
                        unsafe { *result_ptr.0.add(t * rows + r0 + i) = vals[t] };
                    }
                }
            }
        };
        let macs = n * self.rows * self.cols;
        if self.rounds_inputs(precision) {
            let (x8, x16) = match precision {
                Precision::Int8 => (Some(Quantized::<i8>::new(x, self.cols)), None),
                _ => (None, Some(Quantized::<i16>::new(x, self.cols))),
            };
            for_row_ranges(by_row, self.rows, macs, |first, out| {
                match (&self.blocks, &x8, &x16) {
                    (
                        Blocks::Q4_1 {
                            scales,
                            mins,
                            nibbles,
                        },
                        Some(x),
                        _,
                    ) => {
                        let w = qdot::Q4_1 {
                            scales,
                            mins,
                            nibbles,
                        };
                        qdot::q4_1_rows(isa, w, first, x, out);
                    }
                    (
                        Blocks::Q4_1 {
                            scales,
                            mins,
                            nibbles,
                        },
                        _,
                        Some(x),
                    ) => {
                        let w = qdot::Q4_1 {
                            scales,
                            mins,
                            nibbles,
                        };
                        if n > 1 {
                            qdot::q4_1_tiles16(isa, w, first, x, out);
                        } else {
                            qdot::q4_1_rows16(isa, w, first, x, out);
                        }
                    }
                    (Blocks::Q8_0 { scales, quants }, Some(x), _) => {
                        qdot::q8_0_rows(isa, qdot::Q8_0 { scales, quants }, first, x, out);
                    }
                    (Blocks::Q8_0 { scales, quants }, _, Some(x)) => {
                        qdot::q8_0_rows16(isa, qdot::Q8_0 { scales, quants }, first, x, out);
                    }
                    _ => unreachable!("dense matrices take the exact path"),
                }
                transpose(first, out);
            });
        } else {
            let sums: Vec<f32> = x.chunks(BLOCK).map(|b| b.iter().sum()).collect();
            let per_vector = self.cols.div_ceil(BLOCK);
            for_row_ranges(by_row, self.rows, macs, |first, out| {
                for (i, out) in out.chunks_exact_mut(n).enumerate() {
                    let r = first + i;
                    for (t, o) in out.iter_mut().enumerate() {
                        let xs = &x[t * self.cols..(t + 1) * self.cols];
                        let bs = &sums[t * per_vector..(t + 1) * per_vector];
                        *o = self.row_dot(r, xs, bs);
                    }
                }
                transpose(first, out);
            });
        }
        if n == 1 {
            return scratch;
        }
        // SAFETY: the tasks together covered every row, and `transpose` wrote each row's `n`
        // entries of the `n · rows` result (the capacity reserved above).
        unsafe { result.set_len(n * self.rows) };
        if scratch.len() <= SCRATCH_KEPT {
            SCRATCH.set(scratch);
        }
        result
    }
}

thread_local! {
    /// [`PackedMatrix::matmul_on`]'s [rows, n] values of a prompt, kept between products.
    static SCRATCH: std::cell::Cell<Vec<f32>> = const { std::cell::Cell::new(Vec::new()) };
}

/// The largest scratch buffer kept between products (f32 values): a pass of 64 positions
/// through the widest block matrix (1,536 rows) is 98,304.
const SCRATCH_KEPT: usize = 1 << 17;

/// Products smaller than this many multiply-adds run on the calling thread. The decode pool
/// ([`crate::models::spin`]) hands work over in well under a microsecond while its helpers
/// spin, so every product of decoding (the smallest, K and V, are 0.11 M) is split; below
/// this the split would cost more than the product.
#[cfg(any(not(target_arch = "wasm32"), target_feature = "atomics"))]
const PARALLEL_MIN_MACS: usize = 32 << 10;

/// Positions per pass of a prompt's integer products: every row reads all of a pass's
/// quantised activations, which at 64 positions (196 KB for the widest matrix) stay in the
/// core's L2 cache (512 positions in one pass: 210 tokens/s of prefill, in passes of 64: 240;
/// notes/issue-15-kernels.md).
const PROMPT_CHUNK: usize = 64;

/// Rows per group in [`PackedMatrix::dequantize_transposed`] and in the transposition of
/// [`PackedMatrix::matmul`]'s result: 16 f32 are one 64-byte line of the transposed output.
const TRANSPOSE_TILE: usize = 16;

/// Tasks per thread of the decode pool a product is split into.
#[cfg(any(not(target_arch = "wasm32"), target_feature = "atomics"))]
const TASKS_PER_THREAD: usize = 4;

/// Runs `f(first row, out rows)` over `out` (`[rows, n]`, row-major) in contiguous row ranges,
/// one per thread of the decode pool when the product (`macs` multiply-adds) is large enough,
/// all on the calling thread otherwise (and always in the single-threaded wasm build). The
/// threaded wasm build (`+atomics`) has the pool its Web Workers join (src/wasm).
pub(crate) fn for_row_ranges(
    out: &mut [f32],
    rows: usize,
    macs: usize,
    f: impl Fn(usize, &mut [f32]) + Send + Sync,
) {
    for_row_ranges_of(out, rows, macs, 8, f);
}

/// [`for_row_ranges`] with tasks of at least `min_rows` rows (a product's rows are cheap and
/// take 8; attention's rows are whole heads).
pub(crate) fn for_row_ranges_of(
    out: &mut [f32],
    rows: usize,
    macs: usize,
    min_rows: usize,
    f: impl Fn(usize, &mut [f32]) + Send + Sync,
) {
    #[cfg(any(not(target_arch = "wasm32"), target_feature = "atomics"))]
    if macs >= PARALLEL_MIN_MACS && rows > 1 && crate::models::spin::Pool::global().threads() > 1 {
        let n = out.len() / rows;
        let pool = crate::models::spin::Pool::global();
        // A few tasks per thread, claimed as threads come free: a thread slowed by other work
        // on the machine does less of the product instead of holding it up.
        let per_task = rows
            .div_ceil(pool.threads() * TASKS_PER_THREAD)
            .max(min_rows);
        let tasks = rows.div_ceil(per_task);
        /// The output's address, shared with the tasks (each writes only its own rows).
        struct Out(*mut f32);
        // SAFETY: tasks write disjoint row ranges of the buffer, and `run` returns only when
        // they have all finished.
        unsafe impl Sync for Out {}
        let ptr = Out(out.as_mut_ptr());
        pool.run(tasks, &|task| {
            let first = (task * per_task).min(rows);
            let last = ((task + 1) * per_task).min(rows);
            if first < last {
                let ptr = &ptr;
                // SAFETY: rows first..last of `out` belong to this task alone, in bounds.
                let out = unsafe {
                    std::slice::from_raw_parts_mut(ptr.0.add(first * n), (last - first) * n)
                };
                f(first, out);
            }
        });
        return;
    }
    let _ = (rows, macs, min_rows);
    f(0, out);
}

/// Threads available for parallel work (the module's pool in wasm32: 1 unless the threaded
/// build started helpers).
fn cores() -> usize {
    #[cfg(not(target_arch = "wasm32"))]
    return rayon::current_num_threads();
    #[cfg(all(target_arch = "wasm32", target_feature = "atomics"))]
    return crate::models::spin::Pool::global().threads();
    #[cfg(all(target_arch = "wasm32", not(target_feature = "atomics")))]
    return 1;
}

/// Runs `f(chunk index, chunk)` over `chunk`-sized pieces of `out`: on every core natively
/// when there is more than one piece (rayon), on the pool's threads in the threaded wasm
/// build, in order otherwise.
fn for_each_chunk(out: &mut [f32], chunk: usize, f: impl Fn(usize, &mut [f32]) + Send + Sync) {
    #[cfg(not(target_arch = "wasm32"))]
    if out.len() > chunk {
        use rayon::prelude::*;
        out.par_chunks_mut(chunk)
            .enumerate()
            .for_each(|(i, c)| f(i, c));
        return;
    }
    #[cfg(all(target_arch = "wasm32", target_feature = "atomics"))]
    if out.len() > chunk {
        let len = out.len();
        /// The output's address, shared with the tasks (each writes only its own chunk).
        struct Out(*mut f32);
        // SAFETY: tasks write disjoint chunks of the buffer, and `run` returns only when they
        // have all finished.
        unsafe impl Sync for Out {}
        let ptr = Out(out.as_mut_ptr());
        crate::models::spin::Pool::global().run(len.div_ceil(chunk), &|i| {
            let ptr = &ptr;
            let first = i * chunk;
            let size = chunk.min(len - first);
            // SAFETY: chunk `i` of `out` belongs to this task alone, in bounds.
            let c = unsafe { std::slice::from_raw_parts_mut(ptr.0.add(first), size) };
            f(i, c);
        });
        return;
    }
    out.chunks_mut(chunk).enumerate().for_each(|(i, c)| f(i, c));
}

/// Dot product with 16 independent partial sums: the compiler keeps them in SIMD registers
/// (AVX2 natively, SIMD128 in wasm) without reordering float additions on its own.
fn dot(a: &[f32], b: &[f32]) -> f32 {
    const LANES: usize = 16;
    let mut sums = [0.0f32; LANES];
    let (a_main, a_tail) = a.split_at(a.len() / LANES * LANES);
    let (b_main, b_tail) = b.split_at(a_main.len());
    for (x, y) in a_main.chunks_exact(LANES).zip(b_main.chunks_exact(LANES)) {
        for i in 0..LANES {
            sums[i] += x[i] * y[i];
        }
    }
    let tail: f32 = a_tail.iter().zip(b_tail).map(|(x, y)| x * y).sum();
    sums.iter().sum::<f32>() + tail
}

#[cfg(test)]
mod tests {
    use super::*;

    /// A matrix of `ty` blocks with varied scales, offsets and quants, and its dense values.
    fn matrix(ty: GgmlType, rows: usize, cols: usize) -> (PackedMatrix, Vec<f32>) {
        let mut data = Vec::new();
        for r in 0..rows {
            for b in 0..cols / 32 {
                // Some scales and minimums are f16 subnormals.
                let d = match (r * 3 + b) % 13 {
                    0 => 2.5e-6,
                    _ => 0.01 * (1 + (r * 7 + b * 3) % 11) as f32,
                };
                let m = match (r + b * 5) % 11 {
                    0 => -1.5e-6,
                    _ => -0.05 * ((r + b) % 5) as f32,
                };
                data.extend(f16::from_f32(d).to_le_bytes());
                let quants = match ty {
                    GgmlType::Q4_1 => {
                        data.extend(f16::from_f32(m).to_le_bytes());
                        16
                    }
                    _ => 32,
                };
                data.extend((0..quants).map(|j| ((r * 5 + b * 13 + j * 3) % 256) as u8));
            }
        }
        let dense = crate::weights::quant::dequantize(ty, &data).unwrap();
        let blocks = Blocks::from_bytes(ty, cols, &data, |_| {}).unwrap();
        (PackedMatrix { rows, cols, blocks }, dense)
    }

    /// The file's f16 scales and minimums are kept as they are: the packed values equal GGUF's
    /// plain block dequantisation (`quant::dequantize`, f16 widened by the `half` crate) bit
    /// for bit, for tensors copied in several parts, whose parts cover the bytes in order.
    #[test]
    fn packing_in_parts_keeps_the_file_values() {
        for (ty, size) in [(GgmlType::Q4_1, 20), (GgmlType::Q8_0, 34)] {
            let (rows, cols) = (PACK_CHUNK_BYTES / size / 40 * 2 + 3, 1280);
            let (m, dense) = matrix(ty, rows, cols);
            let got = m.dequantize();
            assert!(
                got.iter()
                    .zip(&dense)
                    .all(|(a, b)| a.to_bits() == b.to_bits())
            );
            let bytes = vec![0u8; rows * cols / BLOCK * size];
            let mut parts = Vec::new();
            Blocks::from_bytes(ty, cols, &bytes, |r| parts.push(r)).unwrap();
            assert!(parts.len() > 2, "{ty}: {} parts", parts.len());
            assert_eq!(parts[0].start, 0);
            assert!(parts.windows(2).all(|w| w[0].end == w[1].start));
            assert_eq!(parts.last().unwrap().end, bytes.len());
            assert_eq!(m.resident_bytes(), bytes.len());
        }
    }

    /// Every value at its transposed place, bit for bit, for rows that do not fill the last
    /// group of 16 and for more groups than tasks.
    #[test]
    fn transposed_dequantisation_is_the_dense_matrix_transposed() {
        for ty in [GgmlType::Q4_1, GgmlType::Q8_0] {
            for rows in [1, 17, 16 * 40 + 5] {
                let cols = 96;
                let (m, dense) = matrix(ty, rows, cols);
                let t = m.dequantize_transposed();
                assert_eq!(t.len(), rows * cols);
                for r in 0..rows {
                    for c in 0..cols {
                        assert_eq!(
                            t[c * rows + r].to_bits(),
                            dense[r * cols + c].to_bits(),
                            "{ty:?} {rows}x{cols} at ({r}, {c})"
                        );
                    }
                }
            }
        }
    }

    #[test]
    fn matmul_matches_dense_product() {
        for ty in [GgmlType::Q4_1, GgmlType::Q8_0] {
            // 70 vectors: a prompt, in two passes (`PROMPT_CHUNK`), through the tiles.
            for n in [1, 3, 70] {
                check_matmul(ty, n, 70);
            }
        }
    }

    /// Large enough to be split across the cores (`PARALLEL_MIN_MACS`), with an uneven last
    /// task: every task's rows land in the right place in both modes.
    #[test]
    fn split_products_match_dense_product() {
        let rows = (PARALLEL_MIN_MACS / 96).next_multiple_of(7) + 3;
        check_matmul(GgmlType::Q4_1, 1, rows);
        check_matmul(GgmlType::Q8_0, 2, rows);
    }

    /// Exact mode to f32 rounding; 8-bit mode (on every path this CPU has) within the 8-bit
    /// step of the activations: |Σ (w - m)·(x - x̂)| <= Σ_blocks step/2 · Σ |w - m| (`m`: Q4_1's
    /// block offsets, which multiply exact block sums).
    fn check_matmul(ty: GgmlType, n: usize, rows: usize) {
        let cols = 96;
        let (m, dense) = matrix(ty, rows, cols);
        assert_eq!(m.dequantize(), dense);
        let x: Vec<f32> = (0..n * cols)
            .map(|i| ((i * 37 % 19) as f32 - 9.0) / 7.0)
            .collect();
        let steps = |p: Precision| match p {
            Precision::Int8 => Quantized::<i8>::new(&x, cols).scales,
            _ => Quantized::<i16>::new(&x, cols).scales,
        };
        let exact = m.matmul(&x, n, Precision::Exact);
        let mut int: Vec<(Precision, Isa, Vec<f32>)> = Vec::new();
        for p in [Precision::Int8, Precision::Int16] {
            for isa in Isa::available() {
                int.push((p, isa, m.matmul_on(&x, n, p, isa)));
            }
            int.push((p, Isa::best(), m.matmul(&x, n, p)));
        }
        for t in 0..n {
            for r in 0..rows {
                let w = &dense[r * cols..(r + 1) * cols];
                let xs = &x[t * cols..(t + 1) * cols];
                let want: f64 = w
                    .iter()
                    .zip(xs)
                    .map(|(&a, &b)| f64::from(a) * f64::from(b))
                    .sum();
                let g = f64::from(exact[t * rows + r]);
                let close = (g - want).abs() <= 1e-4 * (1.0 + want.abs());
                assert!(close, "{ty} n={n} [{t},{r}]: {g} vs {want}");
                let bound = |steps: &[f32]| -> f64 {
                    (0..cols / BLOCK)
                        .map(|b| {
                            let step = f64::from(steps[t * cols / BLOCK + b]);
                            let off = match &m.blocks {
                                Blocks::Q4_1 { mins, .. } => mins[r * cols / BLOCK + b].to_f32(),
                                _ => 0.0,
                            };
                            let wsum: f64 = w[b * BLOCK..(b + 1) * BLOCK]
                                .iter()
                                .map(|v| f64::from((v - off).abs()))
                                .sum();
                            step / 2.0 * wsum
                        })
                        .sum()
                };
                for (p, isa, got) in &int {
                    let bound = bound(&steps(*p));
                    let g = f64::from(got[t * rows + r]);
                    let close = (g - want).abs() <= bound * 1.001 + 1e-5 * (1.0 + want.abs());
                    assert!(
                        close,
                        "{ty} {p:?} {isa:?} n={n} [{t},{r}]: {g} vs {want} (bound {bound})"
                    );
                }
            }
        }
    }

    #[test]
    fn dot_handles_tails() {
        let a: Vec<f32> = (0..37).map(|i| i as f32).collect();
        let b = vec![2.0; 37];
        assert_eq!(dot(&a, &b), 2.0 * (0..37).sum::<i32>() as f32);
    }
}
