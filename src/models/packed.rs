//! Weight matrices kept in their GGUF blocks (Q4_1, Q8_0, ...) on the CPU and multiplied
//! without inflating them.
//!
//! Decoding one token is a chain of matrix-vector products whose cost is reading the weights:
//! f32 copies of SmolLM2's Q4_1 blocks are 5.5x the bytes (540 MB instead of 98 MB). A
//! [`PackedMatrix`] holds the file's bytes and dequantises one row at a time into a small
//! buffer that stays in L1, so the products read the packed bytes once and the model's resident
//! size stays that of the file. Values are the exact dequantised weights; only the order of the
//! f32 sums differs from a dense product.

use half::f16;

use crate::error::{Error, Result};
use crate::weights::gguf::Gguf;
use crate::weights::quant::GgmlType;

/// A row-major `[rows, cols]` matrix in quantised blocks of 32 values.
#[derive(Debug, Clone)]
pub struct PackedMatrix {
    rows: usize,
    cols: usize,
    blocks: Blocks,
}

/// The blocks, with their f16 scales widened to f32 at load (2 or 4 more bytes per 32 values)
/// so the inner loops do no conversions.
#[derive(Debug, Clone)]
enum Blocks {
    /// Q4_1: value = scale * nibble + min; a block's 16 bytes hold values 0..16 in their low
    /// nibbles and 16..32 in their high nibbles.
    Q4_1 {
        scales: Vec<f32>,
        mins: Vec<f32>,
        nibbles: Vec<u8>,
    },
    /// Q8_0: value = scale * signed byte.
    Q8_0 { scales: Vec<f32>, quants: Vec<i8> },
    /// Other types, dequantised once (a f32 copy: only for files this model family does not
    /// ship).
    Dense(Vec<f32>),
}

const BLOCK: usize = 32;

impl Blocks {
    /// Q4_1 or Q8_0 blocks of rows `cols` long, from the file's bytes; `None` for other types.
    fn from_bytes(ty: GgmlType, cols: usize, bytes: &[u8]) -> Option<Self> {
        let f16_at = |b: &[u8], at: usize| f16::from_le_bytes([b[at], b[at + 1]]).to_f32();
        if !cols.is_multiple_of(BLOCK) {
            return None;
        }
        match ty {
            GgmlType::Q4_1 => {
                let blocks = bytes.chunks_exact(20);
                Some(Blocks::Q4_1 {
                    scales: blocks.clone().map(|b| f16_at(b, 0)).collect(),
                    mins: blocks.clone().map(|b| f16_at(b, 2)).collect(),
                    nibbles: blocks.flat_map(|b| b[4..20].iter().copied()).collect(),
                })
            }
            GgmlType::Q8_0 => {
                let blocks = bytes.chunks_exact(34);
                Some(Blocks::Q8_0 {
                    scales: blocks.clone().map(|b| f16_at(b, 0)).collect(),
                    quants: blocks
                        .flat_map(|b| b[2..34].iter().map(|&q| q as i8))
                        .collect(),
                })
            }
            _ => None,
        }
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
        let blocks = Blocks::from_bytes(info.ggml_type, shape[1], gguf.tensor_bytes(info));
        let blocks = match blocks {
            Some(b) => b,
            None => Blocks::Dense(gguf.dequantize(name)?),
        };
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
            } => (scales.len() + mins.len()) * 4 + nibbles.len(),
            Blocks::Q8_0 { scales, quants } => scales.len() * 4 + quants.len(),
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
                    let (d, m) = (scales[first + b], mins[first + b]);
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
                    let d = scales[first + b];
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
                    let d = scales[first + b];
                    for j in 0..16 {
                        acc[j] = madd(d, p[j], acc[j]);
                    }
                    offsets += mins[first + b] * block_sums[b];
                }
                acc.iter().sum::<f32>() + offsets
            }
            Blocks::Q8_0 { scales, quants } => {
                let mut acc = [0.0f32; BLOCK];
                let blocks = quants[first * BLOCK..(first + per_row) * BLOCK].chunks_exact(BLOCK);
                for (b, (qs, xs)) in blocks.zip(x.chunks_exact(BLOCK)).enumerate() {
                    let d = scales[first + b];
                    for j in 0..BLOCK {
                        acc[j] = madd(d, f32::from(qs[j]) * xs[j], acc[j]);
                    }
                }
                acc.iter().sum()
            }
            Blocks::Dense(v) => dot(&v[r * self.cols..(r + 1) * self.cols], x),
        }
    }

    /// `x [n, cols] · selfᵀ -> [n, rows]`, row-major. Meant for small `n` (decoding): the rows
    /// are split across the cores and each is read once for all `n` vectors.
    pub fn matmul(&self, x: &[f32], n: usize) -> Vec<f32> {
        assert_eq!(x.len(), n * self.cols, "input is not [n, cols]");
        let sums: Vec<f32> = x.chunks(BLOCK).map(|b| b.iter().sum()).collect();
        let per_vector = self.cols.div_ceil(BLOCK);
        // Computed as [rows, n] so that parallel tasks own contiguous rows, then transposed.
        let mut by_row = vec![0.0; self.rows * n];
        let rows_per_task = self.rows.div_ceil(tasks(n * self.rows * self.cols)).max(1);
        for_each_chunk(&mut by_row, rows_per_task * n, |task, out| {
            for (i, out) in out.chunks_exact_mut(n).enumerate() {
                let r = task * rows_per_task + i;
                for (t, o) in out.iter_mut().enumerate() {
                    let xs = &x[t * self.cols..(t + 1) * self.cols];
                    let bs = &sums[t * per_vector..(t + 1) * per_vector];
                    *o = self.row_dot(r, xs, bs);
                }
            }
        });
        if n == 1 {
            return by_row;
        }
        let mut out = vec![0.0; n * self.rows];
        for (r, vals) in by_row.chunks_exact(n).enumerate() {
            for (t, &v) in vals.iter().enumerate() {
                out[t * self.rows + r] = v;
            }
        }
        out
    }
}

/// Products smaller than this many multiply-adds run on the calling thread: handing work to
/// another core costs tens of microseconds (a wake-up each way), more than it saves on the
/// per-layer products of decoding (measured in notes/issue-4-chat.md); the output projection
/// (28 M) is split.
const PARALLEL_MIN_MACS: usize = 4 << 20;

/// Parallel tasks for a product of `macs` multiply-adds: one per core when it is large.
fn tasks(macs: usize) -> usize {
    if macs >= PARALLEL_MIN_MACS {
        cores()
    } else {
        1
    }
}

/// Threads available for parallel work (1 on wasm32).
fn cores() -> usize {
    #[cfg(not(target_arch = "wasm32"))]
    return rayon::current_num_threads();
    #[cfg(target_arch = "wasm32")]
    return 1;
}

/// Runs `f(chunk index, chunk)` over `chunk`-sized pieces of `out`: on every core natively
/// when there is more than one piece, in order otherwise (and always on wasm32: no threads).
fn for_each_chunk(out: &mut [f32], chunk: usize, f: impl Fn(usize, &mut [f32]) + Send + Sync) {
    #[cfg(not(target_arch = "wasm32"))]
    if out.len() > chunk {
        use rayon::prelude::*;
        out.par_chunks_mut(chunk)
            .enumerate()
            .for_each(|(i, c)| f(i, c));
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
                let d = 0.01 * (1 + (r * 7 + b * 3) % 11) as f32;
                let m = -0.05 * ((r + b) % 5) as f32;
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
        let blocks = Blocks::from_bytes(ty, cols, &data).unwrap();
        (PackedMatrix { rows, cols, blocks }, dense)
    }

    #[test]
    fn matmul_matches_dense_product() {
        for ty in [GgmlType::Q4_1, GgmlType::Q8_0] {
            for n in [1, 3] {
                check_matmul(ty, n);
            }
        }
    }

    fn check_matmul(ty: GgmlType, n: usize) {
        let (rows, cols) = (70, 96);
        let (m, dense) = matrix(ty, rows, cols);
        assert_eq!(m.dequantize(), dense);
        let x: Vec<f32> = (0..n * cols)
            .map(|i| ((i * 37 % 19) as f32 - 9.0) / 7.0)
            .collect();
        let got = m.matmul(&x, n);
        for t in 0..n {
            for r in 0..rows {
                let want: f64 = (0..cols)
                    .map(|c| f64::from(dense[r * cols + c]) * f64::from(x[t * cols + c]))
                    .sum();
                let g = f64::from(got[t * rows + r]);
                let close = (g - want).abs() <= 1e-4 * (1.0 + want.abs());
                assert!(close, "{ty} n={n} [{t},{r}]: {g} vs {want}");
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
