//! Matrix-vector products of GGUF blocks with activations quantised to 8 bits: integer dot
//! products per block of 32, one f32 multiply-add per block.
//!
//! Why: decoding is a chain of matrix-vector products over Q4_1/Q8_0 blocks. Dequantising
//! every weight to f32 costs ~6 instructions per 8 weights on AVX2; with the activation vector
//! rounded to 8 bits once per product (`x ≈ dx · q`, `dx = max|x| / 127` per block), a block
//! of 32 is one load, one `maddubs` (32 u8×i8 products summed in pairs) and one `madd` (or a
//! single `vpdpbusd` with VNNI), then one f32 FMA for `dw · dx · Σ w·q`. That is the scheme
//! llama.cpp uses; what differs here:
//! - Q4_1's offset term `m · Σx` uses the *exact* f32 block sums of `x` (llama.cpp's q8_1
//!   stores `dx · Σq`, adding a second rounding), so the only error is the 8-bit rounding of
//!   `x`, at most `dx / 2` per element.
//! - Everything around the products (norms, RoPE, attention, the KV cache) stays f32; prefill
//!   longer than a few positions stays exact (dequantised f32 matrix products).
//! - The exact f32 path stays selectable ([`crate::models::packed::Precision::Exact`]).
//!
//! Paths, picked at run time on x86-64 (builds target SSE2): AVX-512 VNNI (with VL, 256-bit
//! `vpdpbusd`), AVX2 (any x86-64 since 2013), and a portable one; wasm32 uses SIMD128
//! `i32x4.dot_i16x8` (the crate's wasm target enables `+simd128`). Every path computes each
//! block's integer sum exactly, so they differ only in the order of the f32 per-block sums.
//!
//! Block scales and minimums stay the file's IEEE half floats ([`f16`]): widened to f32 in f32
//! they took 24 bytes per Q4_1 block instead of 20 (+14 MB for SmolLM2, the largest item over
//! the file's size in the chat's peak memory; notes/issue-15-kernels.md). Widening is exact,
//! so products are bit-identical to those of widened arrays. The kernels widen 8 (x86: one
//! F16C `vcvtph2ps`) or 4 (wasm: [`widen`]'s integer steps in SIMD128) scales at a time,
//! multiply them by the activations' scales in one vector multiply and broadcast each from its
//! lane with a constant index: 3-7% faster per row than the f32 arrays' scalar load and
//! multiply per block (measured on 18- and 48-block rows; storing the 8 scales and reloading
//! them, or a variable lane index, was 13-34% slower).

pub use half::f16;

/// Values per quantisation block (GGUF's Q4_1 and Q8_0 both use 32).
pub const BLOCK: usize = 32;

/// `h` widened to f32, exactly (zeros, subnormals, infinities and NaN payloads included), with
/// integer steps, one float subtraction and selects instead of branches, so loops of it
/// vectorise (the F. Giesen method): the exponent and mantissa move to f32's positions and the
/// exponent is rebased; infinities and NaN get f32's all-ones exponent; subnormals (and zero)
/// are rebuilt as `2^-14 · (1 + m/1024) - 2^-14`, exact in f32.
#[inline(always)]
pub fn widen(h: f16) -> f32 {
    const EXP: u32 = 0x7c00 << 13;
    let h = u32::from(h.to_bits());
    let em = (h & 0x7fff) << 13;
    let exp = em & EXP;
    let rebased = em + ((127 - 15) << 23);
    let bits = if exp == EXP {
        rebased + ((128 - 16) << 23)
    } else {
        rebased
    };
    let value = if exp == 0 {
        f32::from_bits(bits + (1 << 23)) - f32::from_bits(113 << 23)
    } else {
        f32::from_bits(bits)
    };
    f32::from_bits(value.to_bits() | ((h & 0x8000) << 16))
}

/// Up to 8 f16 values widened ([`widen`]), the rest of the 8 lanes 0.
#[inline(always)]
fn widen8(h: &[f16]) -> [f32; 8] {
    let mut out = [0.0; 8];
    for (o, &h) in out.iter_mut().zip(h) {
        *o = widen(h);
    }
    out
}

/// 1.5 · 2^23: `(v + ROUND) - ROUND` is `v` rounded to an integer for |v| < 2^22.
const ROUND: f32 = 12_582_912.0;

/// An integer type activations are rounded to: `i8` (llama.cpp's choice: u8×i8 products,
/// 32 per instruction) or `i16` (i16×i16 products, 16 per instruction, 256x finer steps).
pub trait Level: Copy + Default + Send + Sync + 'static {
    /// The largest magnitude used: the range is symmetric, `-MAX..=MAX`.
    const MAX: f32;
    /// `v`, already within the range (a truncating integer cast, which vectorises).
    fn from_i32(v: i32) -> Self;
    /// The value as an i32.
    fn to_i32(self) -> i32;
}

impl Level for i8 {
    const MAX: f32 = 127.0;
    fn from_i32(v: i32) -> Self {
        v as i8
    }
    fn to_i32(self) -> i32 {
        i32::from(self)
    }
}

impl Level for i16 {
    const MAX: f32 = 32767.0;
    fn from_i32(v: i32) -> Self {
        v as i16
    }
    fn to_i32(self) -> i32 {
        i32::from(self)
    }
}

/// Activation vectors quantised per block of 32: `x[i] ≈ scales[i / 32] · q[i]`.
#[derive(Debug, Clone, Default)]
pub struct Quantized<T: Level> {
    /// Values per vector (a multiple of 32).
    pub cols: usize,
    /// `n · cols` rounded values in `-T::MAX..=T::MAX`.
    pub q: Vec<T>,
    /// One scale per block (`max |x| / T::MAX` over the block; 0 for an all-zero block).
    pub scales: Vec<f32>,
    /// The exact f32 sum of `x` over each block (Q4_1's offsets multiply it).
    pub sums: Vec<f32>,
}

impl<T: Level> Quantized<T> {
    /// Quantises `n` vectors of `cols` values (`x.len() == n · cols`, `cols` a multiple of 32).
    /// A prompt's vectors are split across the decode pool's threads (blocks are independent,
    /// so the result is the same however they are split): quantised on one core, they were 4%
    /// of a 128-token prefill's samples, all of it time the other core waited.
    pub fn new(x: &[f32], cols: usize) -> Self {
        assert!(
            cols.is_multiple_of(BLOCK) && cols > 0,
            "cols must be a multiple of 32"
        );
        assert!(x.len().is_multiple_of(cols), "input is not [n, cols]");
        let blocks = x.len() / BLOCK;
        let mut out = Quantized {
            cols,
            q: vec![T::default(); x.len()],
            scales: vec![0.0; blocks],
            sums: vec![0.0; blocks],
        };
        #[cfg(any(not(target_arch = "wasm32"), target_feature = "atomics"))]
        if x.len() >= PARALLEL_QUANTISE_MIN {
            let pool = crate::models::spin::Pool::global();
            let per_task = blocks.div_ceil(pool.threads() * 4);
            /// The outputs' addresses, shared with the tasks (each writes only its own blocks).
            struct Out<T>(*mut T, *mut f32, *mut f32);
            // SAFETY: tasks write disjoint block ranges of the three buffers, and `run`
            // returns only when they have all finished.
            unsafe impl<T> Sync for Out<T> {}
            let ptr = Out(
                out.q.as_mut_ptr(),
                out.scales.as_mut_ptr(),
                out.sums.as_mut_ptr(),
            );
            pool.run(blocks.div_ceil(per_task), &|task| {
                let first = task * per_task;
                let count = per_task.min(blocks - first);
                let ptr = &ptr;
                // SAFETY: blocks first..first + count of each buffer belong to this task
                // alone, in bounds.
                let (qs, scales, sums) = unsafe {
                    (
                        std::slice::from_raw_parts_mut(ptr.0.add(first * BLOCK), count * BLOCK),
                        std::slice::from_raw_parts_mut(ptr.1.add(first), count),
                        std::slice::from_raw_parts_mut(ptr.2.add(first), count),
                    )
                };
                let xs = &x[first * BLOCK..(first + count) * BLOCK];
                quantise_blocks(xs, qs, scales, sums);
            });
            return out;
        }
        quantise_blocks(x, &mut out.q, &mut out.scales, &mut out.sums);
        out
    }

    /// Vectors held.
    pub fn n(&self) -> usize {
        self.q.len() / self.cols
    }

    /// Blocks per vector.
    fn blocks(&self) -> usize {
        self.cols / BLOCK
    }

    /// Vector `t`'s quants, scales and block sums.
    fn vector(&self, t: usize) -> (&[T], &[f32], &[f32]) {
        let nb = self.blocks();
        (
            &self.q[t * self.cols..(t + 1) * self.cols],
            &self.scales[t * nb..(t + 1) * nb],
            &self.sums[t * nb..(t + 1) * nb],
        )
    }

    /// The dequantised values `scales[b] · q[i]` (what the integer products compute with).
    pub fn dequantize(&self) -> Vec<f32> {
        self.q
            .iter()
            .enumerate()
            .map(|(i, &q)| self.scales[i / BLOCK] * q.to_i32() as f32)
            .collect()
    }
}

/// Inputs at least this long are quantised on the decode pool's threads (8 positions of the
/// narrowest input); one decoded position's vector is quantised on the calling thread.
#[cfg(any(not(target_arch = "wasm32"), target_feature = "atomics"))]
const PARALLEL_QUANTISE_MIN: usize = 8 * 576;

/// Quantises whole blocks: `xs` (a multiple of 32 values) into `qs`, one scale and one sum
/// per block. On x86-64 with AVX2 the same code is compiled for 8-lane vectors (the build
/// targets SSE2; Rust contracts no multiply-adds, so both give the same bits): on SSE2 the
/// rounding and the saturating conversions were 1.7 ns per value, 4% of a prefill's samples.
fn quantise_blocks<T: Level>(xs: &[f32], qs: &mut [T], scales: &mut [f32], sums: &mut [f32]) {
    #[cfg(target_arch = "x86_64")]
    if std::arch::is_x86_feature_detected!("avx2") {
        // SAFETY: the CPU has AVX2 (checked above).
        unsafe { quantise_blocks_avx2(xs, qs, scales, sums) };
        return;
    }
    quantise_blocks_portable(xs, qs, scales, sums);
}

/// [`quantise_blocks_portable`] compiled for AVX2.
#[cfg(target_arch = "x86_64")]
#[target_feature(enable = "avx2")]
unsafe fn quantise_blocks_avx2<T: Level>(
    xs: &[f32],
    qs: &mut [T],
    scales: &mut [f32],
    sums: &mut [f32],
) {
    quantise_blocks_portable(xs, qs, scales, sums);
}

/// See [`quantise_blocks`].
#[inline(always)]
fn quantise_blocks_portable<T: Level>(
    xs: &[f32],
    qs: &mut [T],
    scales: &mut [f32],
    sums: &mut [f32],
) {
    for (b, (xs, qs)) in xs
        .chunks_exact(BLOCK)
        .zip(qs.chunks_exact_mut(BLOCK))
        .enumerate()
    {
        // Eight lanes of maxima and partial sums: one chain of 32 dependent additions per
        // block was the quantisation's floor; eight the compiler keeps in vector registers.
        // (A comparison, not `f32::max`, whose NaN rule kept the maxima scalar; NaN is
        // skipped either way.)
        let mut amax = [0.0f32; 8];
        let mut sum = [0.0f32; 8];
        for part in xs.chunks_exact(8) {
            for i in 0..8 {
                let a = part[i].abs();
                if a > amax[i] {
                    amax[i] = a;
                }
                sum[i] += part[i];
            }
        }
        let amax = amax.iter().fold(0.0f32, |m, &v| if v > m { v } else { m });
        let d = amax / T::MAX;
        let inv = if d > 0.0 { 1.0 / d } else { 0.0 };
        for (q, &v) in qs.iter_mut().zip(xs) {
            // Adding 1.5 · 2^23 rounds to the nearest integer (ties to even) for |v| < 2^22 and
            // leaves that integer in the low mantissa bits: plain arithmetic the compiler
            // vectorises, where `f32::round` is a libm call per value on baseline x86-64 (4% of
            // decoding) and a saturating float-to-int cast is scalar. The clamp (before the
            // rounding, the same result as after it, MAX being an integer) keeps a rounding
            // overshoot of `inv` in range. A NaN input gives an arbitrary quant.
            let r = (v * inv).clamp(-T::MAX, T::MAX) + ROUND;
            *q = T::from_i32(r.to_bits() as i32 - ROUND.to_bits() as i32);
        }
        scales[b] = d;
        sums[b] = ((sum[0] + sum[4]) + (sum[1] + sum[5])) + ((sum[2] + sum[6]) + (sum[3] + sum[7]));
    }
}

/// Which instructions the integer products use.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Isa {
    /// Plain Rust: one i32 sum per block (what the SIMD paths compute, in lanes).
    Portable,
    /// x86-64 AVX2 (with FMA and F16C): `vpmaddubsw` + `vpmaddwd`.
    Avx2,
    /// x86-64 AVX-512 VNNI with VL: `vpdpbusd` on 256-bit registers.
    Avx512Vnni,
    /// wasm32 SIMD128: `i32x4.dot_i16x8_s` on widened values.
    Simd128,
}

impl Isa {
    /// Whether [`q4_1_tiles16`] has a tiled kernel on this path: then a prompt's products
    /// over Q4_1 blocks are faster through it than dequantised to f32 for a dense product.
    pub fn tiles_prompts(self) -> bool {
        matches!(self, Isa::Avx2 | Isa::Avx512Vnni | Isa::Simd128)
    }

    /// The fastest path this CPU runs (detected once), within [`limit_to_avx2`]'s limit.
    pub fn best() -> Isa {
        #[cfg(target_arch = "x86_64")]
        {
            static BEST: std::sync::OnceLock<Isa> = std::sync::OnceLock::new();
            let best =
                *BEST.get_or_init(|| Isa::available().last().copied().unwrap_or(Isa::Portable));
            if best == Isa::Avx512Vnni && AVX2_ONLY.load(std::sync::atomic::Ordering::Relaxed) {
                return Isa::Avx2;
            }
            best
        }
        #[cfg(target_arch = "wasm32")]
        return Isa::Simd128;
        #[cfg(not(any(target_arch = "x86_64", target_arch = "wasm32")))]
        return Isa::Portable;
    }

    /// Every path this CPU runs, slowest first (tests force each one).
    pub fn available() -> Vec<Isa> {
        #[allow(unused_mut)]
        let mut isas = vec![Isa::Portable];
        #[cfg(target_arch = "x86_64")]
        {
            use std::arch::is_x86_feature_detected as has;
            // F16C (the scales' widening) came with AVX2 on every x86-64 CPU that has it.
            if has!("avx2") && has!("fma") && has!("f16c") {
                isas.push(Isa::Avx2);
                if has!("avx512vnni") && has!("avx512vl") {
                    isas.push(Isa::Avx512Vnni);
                }
            }
        }
        #[cfg(target_arch = "wasm32")]
        isas.push(Isa::Simd128);
        isas
    }

    /// Whether this CPU runs the path (the detection macros cache their answer).
    fn runs_here(self) -> bool {
        #[cfg(target_arch = "x86_64")]
        use std::arch::is_x86_feature_detected as has;
        match self {
            Isa::Portable => true,
            #[cfg(target_arch = "x86_64")]
            Isa::Avx2 => has!("avx2") && has!("fma") && has!("f16c"),
            #[cfg(target_arch = "x86_64")]
            Isa::Avx512Vnni => Isa::Avx2.runs_here() && has!("avx512vnni") && has!("avx512vl"),
            Isa::Simd128 => cfg!(target_arch = "wasm32"),
            #[allow(unreachable_patterns)]
            _ => false,
        }
    }
}

/// Set by [`limit_to_avx2`].
static AVX2_ONLY: std::sync::atomic::AtomicBool = std::sync::atomic::AtomicBool::new(false);

/// Keeps this process on the paths an x86-64 CPU without AVX-512 takes (the integer
/// products' AVX2 tiles, GELU and the encoder's loops in 8-lane vectors), so that their speed
/// can be measured on a CPU that has AVX-512 (`bench --avx2-only`). gemm's own choice (the
/// encoder's dense products) is not affected: it has no such switch.
pub fn limit_to_avx2() {
    AVX2_ONLY.store(true, std::sync::atomic::Ordering::Relaxed);
}

/// Whether AVX-512F code may run: the CPU has it and [`limit_to_avx2`] was not called.
#[cfg(target_arch = "x86_64")]
pub(crate) fn avx512f_allowed() -> bool {
    !AVX2_ONLY.load(std::sync::atomic::Ordering::Relaxed)
        && std::arch::is_x86_feature_detected!("avx512f")
}

/// Q4_1 blocks of a matrix: per block a scale, a minimum and 16 bytes of nibbles (values 0..16
/// in the low nibbles, 16..32 in the high ones).
#[derive(Clone, Copy)]
pub struct Q4_1<'a> {
    /// Per block (the file's half floats).
    pub scales: &'a [f16],
    /// Per block (the file's half floats).
    pub mins: &'a [f16],
    /// 16 bytes per block.
    pub nibbles: &'a [u8],
}

/// Q8_0 blocks: per block a scale and 32 signed bytes.
#[derive(Clone, Copy)]
pub struct Q8_0<'a> {
    /// Per block (the file's half floats).
    pub scales: &'a [f16],
    /// 32 per block.
    pub quants: &'a [i8],
}

/// `out[i · n + t] = row (first + i) · x_t` for every vector `t` of `x`, with Q4_1 rows
/// `x.cols` long.
///
/// Panics when `isa` does not run on this CPU (a safety check, not an error path: callers pass
/// [`Isa::best`] or one of [`Isa::available`]).
pub fn q4_1_rows(isa: Isa, w: Q4_1<'_>, first: usize, x: &Quantized<i8>, out: &mut [f32]) {
    assert!(isa.runs_here(), "{isa:?} does not run on this CPU");
    let nb = x.blocks();
    assert!((first * nb + out.len() / x.n() * nb) <= w.scales.len());
    match isa {
        #[cfg(target_arch = "x86_64")]
        // SAFETY: the CPU has AVX2, FMA and F16C (checked above).
        Isa::Avx2 => unsafe { x86::q4_1_rows_avx2(w, first, x, out) },
        #[cfg(target_arch = "x86_64")]
        // SAFETY: the CPU has AVX2, FMA, F16C, AVX-512 VNNI and VL (checked above).
        Isa::Avx512Vnni => unsafe { x86::q4_1_rows_vnni(w, first, x, out) },
        #[cfg(target_arch = "wasm32")]
        Isa::Simd128 => wasm::q4_1_rows(w, first, x, out),
        _ => rows(first, x, out, |r, t| q4_1_dot_portable(w, r, x, t)),
    }
}

/// `out[i · n + t] = row (first + i) · x_t` for Q8_0 rows (see [`q4_1_rows`]).
pub fn q8_0_rows(isa: Isa, w: Q8_0<'_>, first: usize, x: &Quantized<i8>, out: &mut [f32]) {
    assert!(isa.runs_here(), "{isa:?} does not run on this CPU");
    let nb = x.blocks();
    assert!((first * nb + out.len() / x.n() * nb) <= w.scales.len());
    match isa {
        #[cfg(target_arch = "x86_64")]
        // SAFETY: the CPU has AVX2, FMA and F16C (checked above).
        Isa::Avx2 => unsafe { x86::q8_0_rows_avx2(w, first, x, out) },
        #[cfg(target_arch = "x86_64")]
        // SAFETY: the CPU has AVX2, FMA, F16C, AVX-512 VNNI and VL (checked above).
        Isa::Avx512Vnni => unsafe { x86::q8_0_rows_vnni(w, first, x, out) },
        #[cfg(target_arch = "wasm32")]
        Isa::Simd128 => wasm::q8_0_rows(w, first, x, out),
        _ => rows(first, x, out, |r, t| q8_0_dot_portable(w, r, x, t)),
    }
}

/// [`q4_1_rows`] with 16-bit activations.
pub fn q4_1_rows16(isa: Isa, w: Q4_1<'_>, first: usize, x: &Quantized<i16>, out: &mut [f32]) {
    assert!(isa.runs_here(), "{isa:?} does not run on this CPU");
    let nb = x.blocks();
    assert!((first * nb + out.len() / x.n() * nb) <= w.scales.len());
    match isa {
        #[cfg(target_arch = "x86_64")]
        // SAFETY: the CPU has AVX2, FMA and F16C (checked above; VNNI adds nothing for i16 here).
        Isa::Avx2 | Isa::Avx512Vnni => unsafe { x86::q4_1_rows16_avx2(w, first, x, out) },
        #[cfg(target_arch = "wasm32")]
        Isa::Simd128 => wasm::q4_1_rows16(w, first, x, out),
        _ => rows(first, x, out, |r, t| q4_1_dot_portable(w, r, x, t)),
    }
}

/// [`q4_1_rows16`] for a prompt's positions: on x86-64 (AVX2) and wasm (SIMD128) each block
/// is widened once per row for 4 vectors or more ([`Isa::tiles_prompts`]); elsewhere the
/// one-vector kernels.
pub fn q4_1_tiles16(isa: Isa, w: Q4_1<'_>, first: usize, x: &Quantized<i16>, out: &mut [f32]) {
    assert!(isa.runs_here(), "{isa:?} does not run on this CPU");
    let nb = x.blocks();
    assert!((first * nb + out.len() / x.n() * nb) <= w.scales.len());
    match isa {
        #[cfg(target_arch = "x86_64")]
        // SAFETY: the CPU has AVX2, FMA and F16C (checked above).
        Isa::Avx2 => unsafe { x86::q4_1_tiles16_avx2(w, first, x, out) },
        #[cfg(target_arch = "x86_64")]
        // SAFETY: the CPU has AVX-512 VNNI and VL besides (checked above).
        Isa::Avx512Vnni => unsafe { x86::q4_1_tiles16_vnni(w, first, x, out) },
        #[cfg(target_arch = "wasm32")]
        Isa::Simd128 => wasm::q4_1_tiles16(w, first, x, out),
        _ => q4_1_rows16(isa, w, first, x, out),
    }
}

/// [`q8_0_rows`] with 16-bit activations.
pub fn q8_0_rows16(isa: Isa, w: Q8_0<'_>, first: usize, x: &Quantized<i16>, out: &mut [f32]) {
    assert!(isa.runs_here(), "{isa:?} does not run on this CPU");
    let nb = x.blocks();
    assert!((first * nb + out.len() / x.n() * nb) <= w.scales.len());
    match isa {
        #[cfg(target_arch = "x86_64")]
        // SAFETY: the CPU has AVX2, FMA and F16C (checked above).
        Isa::Avx2 | Isa::Avx512Vnni => unsafe { x86::q8_0_rows16_avx2(w, first, x, out) },
        #[cfg(target_arch = "wasm32")]
        Isa::Simd128 => wasm::q8_0_rows16(w, first, x, out),
        _ => rows(first, x, out, |r, t| q8_0_dot_portable(w, r, x, t)),
    }
}

/// Fills `out` (`[rows, n]`) with `dot(first + i, t)`.
#[inline(always)]
fn rows<T: Level>(
    first: usize,
    x: &Quantized<T>,
    out: &mut [f32],
    mut dot: impl FnMut(usize, usize) -> f32,
) {
    let n = x.n();
    for (i, out) in out.chunks_exact_mut(n).enumerate() {
        for (t, o) in out.iter_mut().enumerate() {
            *o = dot(first + i, t);
        }
    }
}

/// `Σ_b m_b · s_b` (Q4_1's offsets against the block sums), 8 partial sums wide; `wide`
/// widens 8 minimums at a time and `one` a single one (exact conversions: every path sums the
/// same values, only the instructions differ).
#[inline(always)]
fn offsets(
    mins: &[f16],
    sums: &[f32],
    wide: impl Fn(&[f16]) -> [f32; 8],
    one: impl Fn(f16) -> f32,
) -> f32 {
    let mut acc = [0.0f32; 8];
    let (m8, m_tail) = mins.split_at(mins.len() / 8 * 8);
    let (s8, s_tail) = sums.split_at(m8.len());
    for (m, s) in m8.chunks_exact(8).zip(s8.chunks_exact(8)) {
        let m = wide(m);
        for j in 0..8 {
            acc[j] += m[j] * s[j];
        }
    }
    let tail: f32 = m_tail.iter().zip(s_tail).map(|(&m, s)| one(m) * s).sum();
    acc.iter().sum::<f32>() + tail
}

/// Row `r` of Q4_1 blocks · vector `t`: the integer sum per block, one f32 multiply-add each.
fn q4_1_dot_portable<T: Level>(w: Q4_1<'_>, r: usize, x: &Quantized<T>, t: usize) -> f32 {
    let nb = x.blocks();
    let (xq, xd, xs) = x.vector(t);
    let blocks = r * nb..(r + 1) * nb;
    let nibbles = &w.nibbles[blocks.start * 16..blocks.end * 16];
    let mut acc = 0.0f32;
    for (b, (qs, xs)) in nibbles
        .chunks_exact(16)
        .zip(xq.chunks_exact(BLOCK))
        .enumerate()
    {
        let (lo, hi) = xs.split_at(16);
        let mut sum = 0i32;
        for j in 0..16 {
            sum += i32::from(qs[j] & 0x0f) * lo[j].to_i32();
            sum += i32::from(qs[j] >> 4) * hi[j].to_i32();
        }
        acc += widen(w.scales[blocks.start + b]) * xd[b] * sum as f32;
    }
    acc + offsets(&w.mins[blocks], xs, widen8, widen)
}

/// Row `r` of Q8_0 blocks · vector `t`.
fn q8_0_dot_portable<T: Level>(w: Q8_0<'_>, r: usize, x: &Quantized<T>, t: usize) -> f32 {
    let nb = x.blocks();
    let (xq, xd, _) = x.vector(t);
    let first = r * nb;
    let quants = &w.quants[first * BLOCK..(first + nb) * BLOCK];
    let mut acc = 0.0f32;
    for (b, (ws, xs)) in quants
        .chunks_exact(BLOCK)
        .zip(xq.chunks_exact(BLOCK))
        .enumerate()
    {
        let sum: i32 = ws
            .iter()
            .zip(xs)
            .map(|(&a, &b)| i32::from(a) * b.to_i32())
            .sum();
        acc += widen(w.scales[first + b]) * xd[b] * sum as f32;
    }
    acc
}

/// Rows per group of the tiled kernels: every tile of vectors runs through a group's rows
/// before the next tile, so a tile's activations are read from L1 for 16 rows (row by row, all
/// of a pass's 64 vectors, 74-196 KB, came from L2 for each row).
#[cfg(any(target_arch = "x86_64", target_arch = "wasm32"))]
const TILE_ROW_GROUP: usize = 16;

/// The order of the prompt tiles, shared by every tiled kernel: [`TILE_ROW_GROUP`] rows at a
/// time, each tile of `size` vectors through all of the group's rows; then each row's last
/// vectors, in a tile of 4 when `size` is larger, and one of 3, 2 or 1. Runs `body` with `i`
/// (a row of `0..rows`), `t` and `len` bound, for row `i` times vectors `t..t + len`; `len` is
/// `size`, 4, 3, 2 or 1. A macro, not a function taking a closure: as a function, the closure
/// (the tile products) was compiled out of line, one call per tile, and the AVX2 prefill ran
/// 30% slower (185-216 against 288-296 tokens/s, `bench chat --avx2-only --prompt-tokens
/// 256`, twenty-seventh session); as a macro it is as fast as the loops it replaced.
#[cfg(any(target_arch = "x86_64", target_arch = "wasm32"))]
macro_rules! walk_tiles {
    ($rows:expr, $n:expr, $size:expr, |$i:ident, $t:ident, $len:ident| $body:block) => {{
        let (rows, n, size): (usize, usize, usize) = ($rows, $n, $size);
        for g0 in (0..rows).step_by(TILE_ROW_GROUP) {
            let group = g0..(g0 + TILE_ROW_GROUP).min(rows);
            let mut t = 0;
            while t + size <= n {
                for $i in group.clone() {
                    let ($t, $len) = (t, size);
                    $body
                }
                t += size;
            }
            for $i in group {
                let mut t = t;
                if size > 4 && n - t >= 4 {
                    let ($t, $len) = (t, 4);
                    $body
                    t += 4;
                }
                if t < n {
                    let ($t, $len) = (t, n - t);
                    $body
                }
            }
        }
    }};
}

#[cfg(target_arch = "x86_64")]
mod x86 {
    //! One block of 32 per step into 8 i32 lanes, scaled into 8 f32 lanes; two accumulators
    //! so consecutive blocks' FMAs do not wait on each other.
    use std::arch::x86_64::*;

    use super::{BLOCK, Q4_1, Q8_0, Quantized, TILE_ROW_GROUP, f16, offsets, rows};

    /// The 32 nibbles of a Q4_1 block as bytes 0..16, in value order (low nibbles then high).
    #[inline(always)]
    unsafe fn nibbles(p: *const u8) -> __m256i {
        // SAFETY: the caller passes 16 readable bytes; the CPU has AVX2.
        unsafe {
            let raw = _mm_loadu_si128(p.cast());
            let both = _mm256_set_m128i(_mm_srli_epi16(raw, 4), raw);
            _mm256_and_si256(both, _mm256_set1_epi8(0x0f))
        }
    }

    /// The 32 nibbles of a Q4_1 block (16 bytes at `p`) widened to i16: the low nibbles
    /// (values 0..16) and the high ones (16..32).
    #[inline(always)]
    unsafe fn widened_halves(p: *const u8) -> (__m256i, __m256i) {
        // SAFETY: the caller passes 16 readable bytes; the CPU has AVX2.
        unsafe {
            let raw = _mm_loadu_si128(p.cast());
            let mask = _mm_set1_epi8(0x0f);
            (
                _mm256_cvtepu8_epi16(_mm_and_si128(raw, mask)),
                _mm256_cvtepu8_epi16(_mm_and_si128(_mm_srli_epi16(raw, 4), mask)),
            )
        }
    }

    /// How far ahead of the block being multiplied a decode product fetches the weights
    /// into L1, in bytes: without it the loads of the weights stall (on an Intel Xeon VM,
    /// `perf` put the samples on the instructions waiting for them, one core reading 5.4 GB/s
    /// where a plain read runs at 18); 1 to 4 KB ahead decode 25% faster there, less did less
    /// (notes/issue-15-kernels.md).
    const PREFETCH_AHEAD: usize = 1024;

    /// Asks for the cache line at `p` (never faults, whatever the address).
    #[inline(always)]
    fn prefetch(p: *const u8) {
        // SAFETY: a prefetch reads nothing architecturally; SSE is baseline on x86-64.
        unsafe { _mm_prefetch::<_MM_HINT_T0>(p.cast()) }
    }

    #[inline(always)]
    unsafe fn hsum(v: __m256) -> f32 {
        // SAFETY: AVX is implied by the callers' AVX2.
        unsafe {
            let s = _mm_add_ps(_mm256_castps256_ps128(v), _mm256_extractf128_ps(v, 1));
            let s = _mm_add_ps(s, _mm_movehl_ps(s, s));
            let s = _mm_add_ss(s, _mm_movehdup_ps(s));
            _mm_cvtss_f32(s)
        }
    }

    /// Up to 8 f16 values widened with F16C (the rest of the 8 lanes 0).
    #[inline(always)]
    pub(super) unsafe fn widen8(h: &[f16]) -> [f32; 8] {
        let mut out = [0.0f32; 8];
        let mut padded = [f16::ZERO; 8];
        let src = if h.len() >= 8 {
            h.as_ptr()
        } else {
            padded[..h.len()].copy_from_slice(h);
            padded.as_ptr()
        };
        // SAFETY: 8 values at `src`, 8 lanes in `out`; the CPU has F16C and AVX.
        unsafe {
            _mm256_storeu_ps(
                out.as_mut_ptr(),
                _mm256_cvtph_ps(_mm_loadu_si128(src.cast())),
            )
        };
        out
    }

    /// One f16 value widened with F16C.
    #[inline(always)]
    unsafe fn widen1(h: f16) -> f32 {
        // SAFETY: the CPU has F16C.
        unsafe { _mm_cvtss_f32(_mm_cvtph_ps(_mm_cvtsi32_si128(i32::from(h.to_bits())))) }
    }

    /// Σ over blocks of `wd_b · xd_b · lanes_b` (`wd`: the weights' f16 scales, `xd` the
    /// activations' scales), for `dot(b)` giving block `b`'s 8 i32 lanes. Per 8 blocks one
    /// `vcvtph2ps` and one multiply give the 8 scales, each then broadcast from its lane with a
    /// constant index (a loop over lanes with a variable index, or the scales stored and
    /// reloaded, measured 10-30% slower on 18-block rows than f32 arrays; this is 3-7%
    /// faster); the last `nb % 8` blocks widen one at a time. Blocks pair up from even
    /// indices into two accumulators as before: the same sums in the same order.
    #[inline(always)]
    unsafe fn blocks(wd: &[f16], xd: &[f32], dot: impl Fn(usize) -> __m256i) -> f32 {
        let nb = wd.len();
        assert!(xd.len() >= nb);
        // SAFETY: the callers run with AVX2, FMA and F16C; full groups read `g..g + 8 <= nb`
        // of `wd` and `xd`.
        unsafe {
            let (mut a0, mut a1) = (_mm256_setzero_ps(), _mm256_setzero_ps());
            let mut g = 0;
            while g + 8 <= nb {
                let w = _mm256_cvtph_ps(_mm_loadu_si128(wd.as_ptr().add(g).cast()));
                let s = _mm256_mul_ps(w, _mm256_loadu_ps(xd.as_ptr().add(g)));
                macro_rules! pair {
                    ($i:literal, $j:literal) => {
                        let p0 = _mm256_cvtepi32_ps(dot(g + $i));
                        let p1 = _mm256_cvtepi32_ps(dot(g + $j));
                        let s0 = _mm256_permutevar8x32_ps(s, _mm256_set1_epi32($i));
                        let s1 = _mm256_permutevar8x32_ps(s, _mm256_set1_epi32($j));
                        a0 = _mm256_fmadd_ps(p0, s0, a0);
                        a1 = _mm256_fmadd_ps(p1, s1, a1);
                    };
                }
                pair!(0, 1);
                pair!(2, 3);
                pair!(4, 5);
                pair!(6, 7);
                g += 8;
            }
            let scale = |b: usize| widen1(wd[b]) * xd[b];
            let mut b = g;
            while b + 1 < nb {
                let p0 = _mm256_cvtepi32_ps(dot(b));
                let p1 = _mm256_cvtepi32_ps(dot(b + 1));
                a0 = _mm256_fmadd_ps(p0, _mm256_set1_ps(scale(b)), a0);
                a1 = _mm256_fmadd_ps(p1, _mm256_set1_ps(scale(b + 1)), a1);
                b += 2;
            }
            if b < nb {
                let p = _mm256_cvtepi32_ps(dot(b));
                a0 = _mm256_fmadd_ps(p, _mm256_set1_ps(scale(b)), a0);
            }
            hsum(_mm256_add_ps(a0, a1))
        }
    }

    /// u8 × i8 products of a block, summed into 8 i32 lanes (AVX2: pairs into i16, which
    /// cannot overflow here: Q4_1's 15 · 127 · 2 and Q8_0's 128 · 127 · 2 are below 32,767).
    #[inline(always)]
    unsafe fn dot_avx2(u: __m256i, s: __m256i) -> __m256i {
        // SAFETY: the callers run with AVX2.
        unsafe { _mm256_madd_epi16(_mm256_maddubs_epi16(u, s), _mm256_set1_epi16(1)) }
    }

    #[inline(always)]
    unsafe fn dot_vnni(u: __m256i, s: __m256i) -> __m256i {
        // SAFETY: the callers run with AVX-512 VNNI and VL.
        unsafe { _mm256_dpbusd_epi32(_mm256_setzero_si256(), u, s) }
    }

    macro_rules! kernels {
        ($q4:ident, $q8:ident, $features:literal, $dot:ident) => {
            #[target_feature(enable = $features)]
            pub(super) fn $q4(w: Q4_1<'_>, first: usize, x: &Quantized<i8>, out: &mut [f32]) {
                let nb = x.blocks();
                rows(first, x, out, |r, t| {
                    let (xq, xd, xs) = x.vector(t);
                    let row = r * nb;
                    let ws = &w.nibbles[row * 16..(row + nb) * 16];
                    let scales = &w.scales[row..row + nb];
                    // SAFETY: blocks `b < nb` lie inside `ws` (16 bytes each) and `xq` (32
                    // each), both sliced to exactly `nb` blocks above.
                    let dots = unsafe {
                        blocks(scales, xd, |b| {
                            let u = nibbles(ws.as_ptr().add(16 * b));
                            let s = _mm256_loadu_si256(xq.as_ptr().add(BLOCK * b).cast());
                            $dot(u, s)
                        })
                    };
                    // SAFETY: as above (F16C).
                    dots + offsets(
                        &w.mins[row..row + nb],
                        xs,
                        |m| unsafe { widen8(m) },
                        |m| unsafe { widen1(m) },
                    )
                });
            }

            #[target_feature(enable = $features)]
            pub(super) fn $q8(w: Q8_0<'_>, first: usize, x: &Quantized<i8>, out: &mut [f32]) {
                let nb = x.blocks();
                rows(first, x, out, |r, t| {
                    let (xq, xd, _) = x.vector(t);
                    let row = r * nb;
                    let ws = &w.quants[row * BLOCK..(row + nb) * BLOCK];
                    let scales = &w.scales[row..row + nb];
                    // SAFETY: as above, 32 bytes per block in both slices.
                    unsafe {
                        blocks(scales, xd, |b| {
                            let a = _mm256_loadu_si256(ws.as_ptr().add(BLOCK * b).cast());
                            let v = _mm256_loadu_si256(xq.as_ptr().add(BLOCK * b).cast());
                            // i8 · i8 as |a| · (v with a's sign): u8 × i8.
                            $dot(_mm256_sign_epi8(a, a), _mm256_sign_epi8(v, a))
                        })
                    }
                });
            }
        };
    }

    kernels!(q4_1_rows_avx2, q8_0_rows_avx2, "avx2,fma,f16c", dot_avx2);

    /// 16-bit activations: weights widened to i16, `vpmaddwd` sums pairs of i16 products into
    /// i32 (15 · 32,767 · 2 and 128 · 32,767 · 2 fit easily).
    #[target_feature(enable = "avx2,fma,f16c")]
    pub(super) fn q4_1_rows16_avx2(w: Q4_1<'_>, first: usize, x: &Quantized<i16>, out: &mut [f32]) {
        let nb = x.blocks();
        rows(first, x, out, |r, t| {
            let (xq, xd, xs) = x.vector(t);
            let row = r * nb;
            let ws = &w.nibbles[row * 16..(row + nb) * 16];
            let scales = &w.scales[row..row + nb];
            // SAFETY: blocks `b < nb` lie inside `ws` (16 bytes each) and `xq` (32 i16 each).
            let dots = unsafe {
                blocks(scales, xd, |b| {
                    prefetch(ws.as_ptr().wrapping_add(16 * b + PREFETCH_AHEAD));
                    let (lo, hi) = widened_halves(ws.as_ptr().add(16 * b));
                    let xp = xq.as_ptr().add(BLOCK * b);
                    let x0 = _mm256_loadu_si256(xp.cast());
                    let x1 = _mm256_loadu_si256(xp.add(16).cast());
                    _mm256_add_epi32(_mm256_madd_epi16(lo, x0), _mm256_madd_epi16(hi, x1))
                })
            };
            // SAFETY: the CPU has F16C (this function's features).
            dots + offsets(
                &w.mins[row..row + nb],
                xs,
                |m| unsafe { widen8(m) },
                |m| unsafe { widen1(m) },
            )
        });
    }

    /// [`q4_1_rows16_avx2`] for a prompt's positions: each block's nibbles are widened once
    /// per row and multiplied with a tile's `$size` vectors in turn, one accumulator each,
    /// instead of being widened again for every vector. A prefill of this is faster than dequantising
    /// every matrix to f32 for a dense product (notes/issue-15-kernels.md); the sums are the
    /// same integers, added in another order than the one-vector kernel's.
    macro_rules! tile_kernel {
        ($name:ident, $features:literal, $dot:ident, $tile:ident, $size:literal) => {
            #[target_feature(enable = $features)]
            pub(super) fn $name(w: Q4_1<'_>, first: usize, x: &Quantized<i16>, out: &mut [f32]) {
                let (nb, n) = (x.blocks(), x.n());
                let rows = out.len() / n;
                let row = |i: usize| {
                    let row = (first + i) * nb;
                    Q4_1 {
                        scales: &w.scales[row..row + nb],
                        mins: &w.mins[row..row + nb],
                        nibbles: &w.nibbles[row * 16..(row + nb) * 16],
                    }
                };
                // SAFETY (the tiles below): `row(i)` holds exactly `nb` blocks and `x` has `nb`
                // blocks per vector; `walk_tiles!` gives vectors `t..t + len` with
                // `t + len <= n`. The CPU has this function's features.
                walk_tiles!(rows, n, $size, |i, t, len| {
                    let out = &mut out[i * n + t..i * n + t + len];
                    // SAFETY: as above.
                    unsafe {
                        let dot = |lo, hi, x0, x1| $dot(lo, hi, x0, x1);
                        match len {
                            len if len == $size => $tile::<$size>(row(i), x, t, out, dot),
                            4 => $tile::<4>(row(i), x, t, out, dot),
                            3 => $tile::<3>(row(i), x, t, out, dot),
                            2 => $tile::<2>(row(i), x, t, out, dot),
                            1 => $tile::<1>(row(i), x, t, out, dot),
                            _ => unreachable!("tiles are of {}, 4, 3, 2 or 1 vectors", $size),
                        }
                    }
                });
            }
        };
    }

    // AVX2: 4 vectors per tile (4 accumulators, the block's two widened halves and two
    // activation loads fit its 16 registers). AVX-512 VL: 8 vectors per tile through 8 blocks
    // at a time (16 widened halves, 8 accumulators: 32 registers); 8 vectors were 2% faster
    // than 4 there.
    tile_kernel!(q4_1_tiles16_avx2, "avx2,fma,f16c", dot16_avx2, tile16, 4);
    tile_kernel!(
        q4_1_tiles16_vnni,
        "avx2,fma,f16c,avx512vnni,avx512vl",
        dot16_vnni,
        tile16_grouped,
        8
    );

    /// A block's 8 i32 lanes of Σ widened nibbles · activations: `lo`/`hi` the low and high
    /// nibbles as i16, `x0`/`x1` the activations they multiply.
    #[inline(always)]
    unsafe fn dot16_avx2(lo: __m256i, hi: __m256i, x0: __m256i, x1: __m256i) -> __m256i {
        // SAFETY: the callers run with AVX2.
        unsafe { _mm256_add_epi32(_mm256_madd_epi16(lo, x0), _mm256_madd_epi16(hi, x1)) }
    }

    /// [`dot16_avx2`] with VNNI's multiply-accumulate: two instructions instead of three.
    #[inline(always)]
    unsafe fn dot16_vnni(lo: __m256i, hi: __m256i, x0: __m256i, x1: __m256i) -> __m256i {
        // SAFETY: the callers run with AVX-512 VNNI and VL.
        unsafe { _mm256_dpwssd_epi32(_mm256_madd_epi16(lo, x0), hi, x1) }
    }

    /// One row of Q4_1 blocks (`w`, exactly `nb` blocks) times vectors `t0..t0 + P` of `x`,
    /// into `out[..P]`.
    #[inline(always)]
    unsafe fn tile16<const P: usize>(
        w: Q4_1<'_>,
        x: &Quantized<i16>,
        t0: usize,
        out: &mut [f32],
        dot: impl Fn(__m256i, __m256i, __m256i, __m256i) -> __m256i,
    ) {
        // SAFETY: see the caller.
        unsafe {
            let mut acc = [_mm256_setzero_ps(); P];
            blocks_one_by_one(w, x, t0, 0, &mut acc, dot);
            finish_tile(w, x, t0, &acc, out);
        }
    }

    /// Adds blocks `from..` of the row (`w`) times vectors `t0..t0 + P` into `acc`, a block at
    /// a time: its nibbles widened once, then for each vector one product, one scale and one
    /// FMA.
    #[inline(always)]
    unsafe fn blocks_one_by_one<const P: usize>(
        w: Q4_1<'_>,
        x: &Quantized<i16>,
        t0: usize,
        from: usize,
        acc: &mut [__m256; P],
        dot: impl Fn(__m256i, __m256i, __m256i, __m256i) -> __m256i,
    ) {
        let nb = x.blocks();
        // SAFETY: the callers run with AVX2, FMA and F16C and pass a row of exactly `nb`
        // blocks and vectors `t0..t0 + P` of `x`; every index below is `< nb` blocks of each.
        unsafe {
            for b in from..nb {
                let (lo, hi) = widened_halves(w.nibbles.as_ptr().add(16 * b));
                let dw = widen1(*w.scales.get_unchecked(b));
                for (j, acc) in acc.iter_mut().enumerate() {
                    let t = t0 + j;
                    let xp = x.q.as_ptr().add(t * x.cols + BLOCK * b);
                    let x0 = _mm256_loadu_si256(xp.cast());
                    let x1 = _mm256_loadu_si256(xp.add(16).cast());
                    let d = dot(lo, hi, x0, x1);
                    let s = _mm256_set1_ps(dw * *x.scales.get_unchecked(t * nb + b));
                    *acc = _mm256_fmadd_ps(_mm256_cvtepi32_ps(d), s, *acc);
                }
            }
        }
    }

    /// `out[j]`: vector `t0 + j`'s accumulated lanes summed, plus Q4_1's offset term.
    #[inline(always)]
    unsafe fn finish_tile<const P: usize>(
        w: Q4_1<'_>,
        x: &Quantized<i16>,
        t0: usize,
        acc: &[__m256; P],
        out: &mut [f32],
    ) {
        // SAFETY: the callers run with AVX2 and F16C; `out` holds at least `P` values.
        unsafe {
            for (j, acc) in acc.iter().enumerate() {
                let (_, _, xs) = x.vector(t0 + j);
                *out.get_unchecked_mut(j) =
                    hsum(*acc) + offsets(w.mins, xs, |m| widen8(m), |m| widen1(m));
            }
        }
    }

    /// [`tile16`] with the scale work done once per 8 blocks: each block's 8 i32 lanes are
    /// summed across lanes first (a tree of `vphaddd`, 9 instructions for 8 blocks), then the
    /// 8 block sums are converted, scaled and accumulated as one vector, where `tile16` spends
    /// a load, a multiply, a broadcast, a conversion and an FMA per block and vector. A
    /// block's sum (at most 32 · 15 · 32,767 < 2^24) converts to f32 exactly. The 8 blocks'
    /// widened nibbles stay in registers for the tile's vectors: 16 of them, so this is for
    /// AVX-512 VL's 32 registers (AVX2's 16 would spill).
    #[inline(always)]
    unsafe fn tile16_grouped<const P: usize>(
        w: Q4_1<'_>,
        x: &Quantized<i16>,
        t0: usize,
        out: &mut [f32],
        dot: impl Fn(__m256i, __m256i, __m256i, __m256i) -> __m256i,
    ) {
        let nb = x.blocks();
        let full = nb / 8 * 8;
        // SAFETY: see the caller; every index below is `< nb` blocks of `w` and of vectors
        // `t0..t0 + P`.
        unsafe {
            let mut acc = [_mm256_setzero_ps(); P];
            for g in (0..full).step_by(8) {
                let mut lo = [_mm256_setzero_si256(); 8];
                let mut hi = [_mm256_setzero_si256(); 8];
                for k in 0..8 {
                    (lo[k], hi[k]) = widened_halves(w.nibbles.as_ptr().add(16 * (g + k)));
                }
                let dw = _mm256_cvtph_ps(_mm_loadu_si128(w.scales.as_ptr().add(g).cast()));
                for (j, acc) in acc.iter_mut().enumerate() {
                    let t = t0 + j;
                    let xp = x.q.as_ptr().add(t * x.cols + BLOCK * g);
                    let d = |k: usize| {
                        let x0 = _mm256_loadu_si256(xp.add(BLOCK * k).cast());
                        let x1 = _mm256_loadu_si256(xp.add(BLOCK * k + 16).cast());
                        dot(lo[k], hi[k], x0, x1)
                    };
                    let s01 = _mm256_hadd_epi32(d(0), d(1));
                    let s23 = _mm256_hadd_epi32(d(2), d(3));
                    let s45 = _mm256_hadd_epi32(d(4), d(5));
                    let s67 = _mm256_hadd_epi32(d(6), d(7));
                    // [b0 b1 b2 b3 | b0 b1 b2 b3]: each half's lanes summed per block.
                    let s0123 = _mm256_hadd_epi32(s01, s23);
                    let s4567 = _mm256_hadd_epi32(s45, s67);
                    let sums = _mm256_add_epi32(
                        _mm256_permute2x128_si256(s0123, s4567, 0x20),
                        _mm256_permute2x128_si256(s0123, s4567, 0x31),
                    );
                    let xs = _mm256_loadu_ps(x.scales.as_ptr().add(t * nb + g));
                    *acc = _mm256_fmadd_ps(_mm256_cvtepi32_ps(sums), _mm256_mul_ps(dw, xs), *acc);
                }
            }
            blocks_one_by_one(w, x, t0, full, &mut acc, dot);
            finish_tile(w, x, t0, &acc, out);
        }
    }

    #[target_feature(enable = "avx2,fma,f16c")]
    pub(super) fn q8_0_rows16_avx2(w: Q8_0<'_>, first: usize, x: &Quantized<i16>, out: &mut [f32]) {
        let nb = x.blocks();
        rows(first, x, out, |r, t| {
            let (xq, xd, _) = x.vector(t);
            let row = r * nb;
            let ws = &w.quants[row * BLOCK..(row + nb) * BLOCK];
            let scales = &w.scales[row..row + nb];
            // SAFETY: blocks `b < nb` lie inside `ws` (32 bytes each) and `xq` (32 i16 each).
            unsafe {
                blocks(scales, xd, |b| {
                    let wp = ws.as_ptr().add(BLOCK * b);
                    prefetch(wp.wrapping_add(PREFETCH_AHEAD).cast());
                    let w0 = _mm256_cvtepi8_epi16(_mm_loadu_si128(wp.cast()));
                    let w1 = _mm256_cvtepi8_epi16(_mm_loadu_si128(wp.add(16).cast()));
                    let xp = xq.as_ptr().add(BLOCK * b);
                    let x0 = _mm256_loadu_si256(xp.cast());
                    let x1 = _mm256_loadu_si256(xp.add(16).cast());
                    _mm256_add_epi32(_mm256_madd_epi16(w0, x0), _mm256_madd_epi16(w1, x1))
                })
            }
        });
    }
    kernels!(
        q4_1_rows_vnni,
        q8_0_rows_vnni,
        "avx2,fma,f16c,avx512vnni,avx512vl",
        dot_vnni
    );
}

#[cfg(target_arch = "wasm32")]
mod wasm {
    //! SIMD128 has no u8×i8 product: values are widened to i16 and `i32x4.dot_i16x8_s` sums
    //! adjacent pairs, 4 of them per block of 32. Mirrors the portable path's per-block sums.
    use core::arch::wasm32::*;

    use super::{BLOCK, Q4_1, Q8_0, Quantized, TILE_ROW_GROUP, f16, offsets, rows};

    #[inline(always)]
    fn dot16(a: v128, b: v128) -> v128 {
        // a: 16 values already i16-ready as bytes (u8 or i8 handled by the caller's widening).
        i32x4_add(
            i32x4_dot_i16x8(i16x8_extend_low_i8x16(a), i16x8_extend_low_i8x16(b)),
            i32x4_dot_i16x8(i16x8_extend_high_i8x16(a), i16x8_extend_high_i8x16(b)),
        )
    }

    /// 4 f16 values at `h` widened to f32: [`super::widen`]'s steps on 4 lanes.
    ///
    /// # Safety
    /// `h` must have 4 readable values.
    #[inline(always)]
    unsafe fn widen4(h: *const f16) -> v128 {
        const EXP: u32 = 0x7c00 << 13;
        // SAFETY: per the contract (8 bytes).
        let h = u32x4_extend_low_u16x8(unsafe { v128_load64_zero(h.cast()) });
        let em = i32x4_shl(v128_and(h, u32x4_splat(0x7fff)), 13);
        let exp = v128_and(em, u32x4_splat(EXP));
        let rebased = i32x4_add(em, u32x4_splat((127 - 15) << 23));
        let special = v128_and(
            i32x4_eq(exp, u32x4_splat(EXP)),
            u32x4_splat((128 - 16) << 23),
        );
        let bits = i32x4_add(rebased, special);
        let small = f32x4_sub(
            i32x4_add(bits, u32x4_splat(1 << 23)),
            f32x4_splat(f32::from_bits(113 << 23)),
        );
        let value = v128_bitselect(small, bits, i32x4_eq(exp, u32x4_splat(0)));
        v128_or(value, i32x4_shl(v128_and(h, u32x4_splat(0x8000)), 16))
    }

    /// Up to 8 f16 values widened ([`widen4`]; the rest of the 8 lanes 0).
    #[inline(always)]
    pub(super) fn widen8(h: &[f16]) -> [f32; 8] {
        let mut padded = [f16::ZERO; 8];
        let src = if h.len() >= 8 {
            h.as_ptr()
        } else {
            padded[..h.len()].copy_from_slice(h);
            padded.as_ptr()
        };
        let mut out = [0.0f32; 8];
        // SAFETY: 8 values at `src`, 8 lanes in `out`.
        unsafe {
            v128_store(out.as_mut_ptr().cast(), widen4(src));
            v128_store(out.as_mut_ptr().add(4).cast(), widen4(src.add(4)));
        }
        out
    }

    /// Σ over blocks of `wd_b · xd_b · lanes_b` (`wd`: the weights' f16 scales, `xd` the
    /// activations' scales): per 4 blocks one widening and one multiply, each scale then
    /// splatted from its lane (constant lanes, as the x86 path); the last `nb % 4` blocks widen
    /// one at a time. Blocks pair up from even indices as with one scale at a time.
    #[inline(always)]
    fn sum_blocks(wd: &[f16], xd: &[f32], dot: impl Fn(usize) -> v128) -> f32 {
        let nb = wd.len();
        assert!(xd.len() >= nb);
        let (mut a0, mut a1) = (f32x4_splat(0.0), f32x4_splat(0.0));
        let mut g = 0;
        while g + 4 <= nb {
            // SAFETY: blocks g..g + 4 <= nb of `wd` and `xd`.
            let s = unsafe {
                f32x4_mul(
                    widen4(wd.as_ptr().add(g)),
                    v128_load(xd.as_ptr().add(g).cast()),
                )
            };
            let s0 = i32x4_shuffle::<0, 0, 0, 0>(s, s);
            let s1 = i32x4_shuffle::<1, 1, 1, 1>(s, s);
            let s2 = i32x4_shuffle::<2, 2, 2, 2>(s, s);
            let s3 = i32x4_shuffle::<3, 3, 3, 3>(s, s);
            a0 = f32x4_add(a0, f32x4_mul(f32x4_convert_i32x4(dot(g)), s0));
            a1 = f32x4_add(a1, f32x4_mul(f32x4_convert_i32x4(dot(g + 1)), s1));
            a0 = f32x4_add(a0, f32x4_mul(f32x4_convert_i32x4(dot(g + 2)), s2));
            a1 = f32x4_add(a1, f32x4_mul(f32x4_convert_i32x4(dot(g + 3)), s3));
            g += 4;
        }
        let scale = |b: usize| super::widen(wd[b]) * xd[b];
        let mut b = g;
        while b + 1 < nb {
            a0 = f32x4_add(
                a0,
                f32x4_mul(f32x4_convert_i32x4(dot(b)), f32x4_splat(scale(b))),
            );
            let p1 = f32x4_convert_i32x4(dot(b + 1));
            a1 = f32x4_add(a1, f32x4_mul(p1, f32x4_splat(scale(b + 1))));
            b += 2;
        }
        if b < nb {
            a0 = f32x4_add(
                a0,
                f32x4_mul(f32x4_convert_i32x4(dot(b)), f32x4_splat(scale(b))),
            );
        }
        let s = f32x4_add(a0, a1);
        f32x4_extract_lane::<0>(s)
            + f32x4_extract_lane::<1>(s)
            + f32x4_extract_lane::<2>(s)
            + f32x4_extract_lane::<3>(s)
    }

    /// Loads 16 bytes at `p`.
    ///
    /// # Safety
    /// `p` must have 16 readable bytes.
    #[inline(always)]
    unsafe fn load(p: *const u8) -> v128 {
        // SAFETY: per the contract; v128_load has no alignment requirement.
        unsafe { v128_load(p.cast()) }
    }

    pub(super) fn q4_1_rows(w: Q4_1<'_>, first: usize, x: &Quantized<i8>, out: &mut [f32]) {
        let nb = x.blocks();
        rows(first, x, out, |r, t| {
            let (xq, xd, xs) = x.vector(t);
            let row = r * nb;
            let ws = &w.nibbles[row * 16..(row + nb) * 16];
            let scales = &w.scales[row..row + nb];
            let dots = sum_blocks(scales, xd, |b| {
                // SAFETY: block b < nb lies inside ws (16 bytes) and xq (32 bytes).
                let (raw, x0, x1) = unsafe {
                    let xp = xq.as_ptr().add(BLOCK * b).cast::<u8>();
                    (load(ws.as_ptr().add(16 * b)), load(xp), load(xp.add(16)))
                };
                // Nibbles are 0..16: as i8 they widen to the same i16 values.
                let lo = v128_and(raw, u8x16_splat(0x0f));
                let hi = u8x16_shr(raw, 4);
                i32x4_add(dot16(lo, x0), dot16(hi, x1))
            });
            dots + offsets(&w.mins[row..row + nb], xs, widen8, super::widen)
        });
    }

    /// 8 i16 activations at `p`.
    ///
    /// # Safety
    /// `p` must have 8 readable values.
    #[inline(always)]
    unsafe fn load16(p: *const i16) -> v128 {
        // SAFETY: per the contract.
        unsafe { v128_load(p.cast()) }
    }

    /// A Q4_1 block's 32 nibbles (the 16 bytes at `p`) widened to i16, in the order of the
    /// block's values: the low nibbles' first and last 8, then the high nibbles'.
    ///
    /// # Safety
    /// `p` must have 16 readable bytes.
    #[inline(always)]
    unsafe fn widened_nibbles(p: *const u8) -> [v128; 4] {
        // SAFETY: per the contract.
        let raw = unsafe { load(p) };
        let lo = v128_and(raw, u8x16_splat(0x0f));
        let hi = u8x16_shr(raw, 4);
        [
            u16x8_extend_low_u8x16(lo),
            u16x8_extend_high_u8x16(lo),
            u16x8_extend_low_u8x16(hi),
            u16x8_extend_high_u8x16(hi),
        ]
    }

    /// A block's 32 i16 activations at `p`, 8 to a vector.
    ///
    /// # Safety
    /// `p` must have 32 readable values.
    #[inline(always)]
    unsafe fn block_activations(p: *const i16) -> [v128; 4] {
        // SAFETY: per the contract.
        unsafe {
            [
                load16(p),
                load16(p.add(8)),
                load16(p.add(16)),
                load16(p.add(24)),
            ]
        }
    }

    /// A block's 4 i32 lanes of Σ widened nibbles · activations.
    #[inline(always)]
    fn block_dot16(w: &[v128; 4], x: &[v128; 4]) -> v128 {
        i32x4_add(
            i32x4_add(i32x4_dot_i16x8(w[0], x[0]), i32x4_dot_i16x8(w[1], x[1])),
            i32x4_add(i32x4_dot_i16x8(w[2], x[2]), i32x4_dot_i16x8(w[3], x[3])),
        )
    }

    pub(super) fn q4_1_rows16(w: Q4_1<'_>, first: usize, x: &Quantized<i16>, out: &mut [f32]) {
        let nb = x.blocks();
        rows(first, x, out, |r, t| {
            let (xq, xd, xs) = x.vector(t);
            let row = r * nb;
            let ws = &w.nibbles[row * 16..(row + nb) * 16];
            let scales = &w.scales[row..row + nb];
            let dots = sum_blocks(scales, xd, |b| {
                // SAFETY: block b < nb lies inside ws (16 bytes) and xq (32 values).
                let (w, x) = unsafe {
                    (
                        widened_nibbles(ws.as_ptr().add(16 * b)),
                        block_activations(xq.as_ptr().add(BLOCK * b)),
                    )
                };
                block_dot16(&w, &x)
            });
            dots + offsets(&w.mins[row..row + nb], xs, widen8, super::widen)
        });
    }

    /// [`q4_1_rows16`] for a prompt's positions, as the x86 tiles do it: each block's nibbles
    /// widened to i16 once per row for 4 vectors (one accumulator each), in
    /// `walk_tiles!`' order. The integer block sums are the one-vector kernel's, added in
    /// another order.
    pub(super) fn q4_1_tiles16(w: Q4_1<'_>, first: usize, x: &Quantized<i16>, out: &mut [f32]) {
        let n = x.n();
        walk_tiles!(out.len() / n, n, 4, |i, t, len| {
            let out = &mut out[i * n + t..i * n + t + len];
            match len {
                4 => tile::<4>(w, first + i, x, t, out),
                3 => tile::<3>(w, first + i, x, t, out),
                2 => tile::<2>(w, first + i, x, t, out),
                1 => tile::<1>(w, first + i, x, t, out),
                _ => unreachable!("tiles are of 4, 3, 2 or 1 vectors"),
            }
        });
    }

    /// Row `r` of `w` times vectors `t0..t0 + P` of `x`, into `out[..P]`.
    #[inline(always)]
    fn tile<const P: usize>(w: Q4_1<'_>, r: usize, x: &Quantized<i16>, t0: usize, out: &mut [f32]) {
        let nb = x.blocks();
        let row = r * nb;
        let ws = &w.nibbles[row * 16..(row + nb) * 16];
        let scales = &w.scales[row..row + nb];
        assert!(t0 + P <= x.n() && out.len() >= P);
        let mut acc = [f32x4_splat(0.0); P];
        for (b, &scale) in scales.iter().enumerate() {
            // SAFETY: block b < nb lies inside ws (16 bytes).
            let w = unsafe { widened_nibbles(ws.as_ptr().add(16 * b)) };
            let dw = super::widen(scale);
            for (j, acc) in acc.iter_mut().enumerate() {
                let t = t0 + j;
                // SAFETY: vector t < n holds nb blocks of 32 values and b < nb, so the 32
                // values from there are inside `x.q`.
                let v = unsafe { block_activations(x.q.as_ptr().add(t * x.cols + BLOCK * b)) };
                let s = f32x4_splat(dw * x.scales[t * nb + b]);
                *acc = f32x4_add(*acc, f32x4_mul(f32x4_convert_i32x4(block_dot16(&w, &v)), s));
            }
        }
        for (j, acc) in acc.iter().enumerate() {
            let (_, _, xs) = x.vector(t0 + j);
            let lanes = f32x4_extract_lane::<0>(*acc)
                + f32x4_extract_lane::<1>(*acc)
                + f32x4_extract_lane::<2>(*acc)
                + f32x4_extract_lane::<3>(*acc);
            out[j] = lanes + offsets(&w.mins[row..row + nb], xs, widen8, super::widen);
        }
    }

    pub(super) fn q8_0_rows16(w: Q8_0<'_>, first: usize, x: &Quantized<i16>, out: &mut [f32]) {
        let nb = x.blocks();
        rows(first, x, out, |r, t| {
            let (xq, xd, _) = x.vector(t);
            let row = r * nb;
            let ws = &w.quants[row * BLOCK..(row + nb) * BLOCK];
            let scales = &w.scales[row..row + nb];
            sum_blocks(scales, xd, |b| {
                // SAFETY: block b < nb lies inside ws (32 bytes) and xq (32 values).
                let (w0, w1, x) = unsafe {
                    let wp = ws.as_ptr().add(BLOCK * b).cast::<u8>();
                    let xp = xq.as_ptr().add(BLOCK * b);
                    let x = [
                        load16(xp),
                        load16(xp.add(8)),
                        load16(xp.add(16)),
                        load16(xp.add(24)),
                    ];
                    (load(wp), load(wp.add(16)), x)
                };
                let a = i32x4_add(
                    i32x4_dot_i16x8(i16x8_extend_low_i8x16(w0), x[0]),
                    i32x4_dot_i16x8(i16x8_extend_high_i8x16(w0), x[1]),
                );
                let b = i32x4_add(
                    i32x4_dot_i16x8(i16x8_extend_low_i8x16(w1), x[2]),
                    i32x4_dot_i16x8(i16x8_extend_high_i8x16(w1), x[3]),
                );
                i32x4_add(a, b)
            })
        });
    }

    pub(super) fn q8_0_rows(w: Q8_0<'_>, first: usize, x: &Quantized<i8>, out: &mut [f32]) {
        let nb = x.blocks();
        rows(first, x, out, |r, t| {
            let (xq, xd, _) = x.vector(t);
            let row = r * nb;
            let ws = &w.quants[row * BLOCK..(row + nb) * BLOCK];
            let scales = &w.scales[row..row + nb];
            sum_blocks(scales, xd, |b| {
                // SAFETY: block b < nb lies inside ws and xq (32 bytes each).
                let (w0, w1, x0, x1) = unsafe {
                    let wp = ws.as_ptr().add(BLOCK * b).cast::<u8>();
                    let xp = xq.as_ptr().add(BLOCK * b).cast::<u8>();
                    (load(wp), load(wp.add(16)), load(xp), load(xp.add(16)))
                };
                i32x4_add(dot16(w0, x0), dot16(w1, x1))
            })
        });
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Deterministic values in [-1, 1) (splitmix-style hash of the index).
    fn noise(i: usize, seed: u64) -> f32 {
        let mut z = (i as u64)
            .wrapping_add(seed)
            .wrapping_mul(0x9e37_79b9_7f4a_7c15);
        z = (z ^ (z >> 30)).wrapping_mul(0xbf58_476d_1ce4_e5b9);
        z ^= z >> 27;
        (z >> 40) as f32 / (1u64 << 23) as f32 - 1.0
    }

    #[test]
    fn quantised_values_are_within_half_a_step() {
        quantised_within_half_a_step::<i8>();
        quantised_within_half_a_step::<i16>();
    }

    #[test]
    fn a_prompt_quantised_at_once_equals_its_vectors_quantised_alone() {
        // 40 vectors: past `PARALLEL_QUANTISE_MIN`, so split across the pool's threads.
        let cols = 576;
        let x: Vec<f32> = (0..40 * cols).map(|i| 2.0 * noise(i, 7)).collect();
        let whole = Quantized::<i16>::new(&x, cols);
        for (t, v) in x.chunks_exact(cols).enumerate() {
            let alone = Quantized::<i16>::new(v, cols);
            let (q, scales, sums) = whole.vector(t);
            assert_eq!(q, &alone.q[..], "vector {t}");
            assert_eq!(scales, &alone.scales[..], "vector {t}");
            assert_eq!(sums, &alone.sums[..], "vector {t}");
        }
    }

    fn quantised_within_half_a_step<T: Level + PartialEq + std::fmt::Debug>() {
        let cols = 96;
        let mut x: Vec<f32> = (0..2 * cols).map(|i| 3.0 * noise(i, 1)).collect();
        x[40] = 0.0;
        x[64..96].fill(0.0); // an all-zero block: scale 0, quants 0
        let q = Quantized::<T>::new(&x, cols);
        assert_eq!(q.n(), 2);
        assert_eq!(q.scales[2], 0.0);
        assert!(q.q[64..96].iter().all(|&v| v.to_i32() == 0));
        let back = q.dequantize();
        for (i, (&v, &b)) in x.iter().zip(&back).enumerate() {
            let step = q.scales[i / BLOCK];
            assert!((v - b).abs() <= step * 0.5 * 1.0001, "{i}: {v} vs {b}");
        }
        // Each block's largest magnitude is ±MAX exactly; sums are of the f32 inputs (in lanes).
        for (b, qs) in q.q.chunks(BLOCK).enumerate() {
            if q.scales[b] > 0.0 {
                let max = qs.iter().map(|v| v.to_i32().abs()).max();
                assert_eq!(max, Some(T::MAX as i32));
            }
            let want: f64 = x[b * BLOCK..(b + 1) * BLOCK]
                .iter()
                .map(|&v| f64::from(v))
                .sum();
            assert!(
                (f64::from(q.sums[b]) - want).abs() <= 1e-5,
                "{b}: {} vs {want}",
                q.sums[b]
            );
        }
    }

    /// Every block's quants take extreme values somewhere (0/15 nibbles, ±127/-128 bytes):
    /// the i16 pair sums of the AVX2 path must not saturate.
    /// Scales and minimums are half floats as in the file, some of them subnormal (a block of
    /// nearly equal weights), some minimums zero.
    fn weights(rows: usize, nb: usize, seed: u64) -> (Vec<f16>, Vec<f16>, Vec<u8>, Vec<i8>) {
        let blocks = rows * nb;
        let half = |i: usize, v: f32| match i % 7 {
            3 => {
                f16::from_bits(1 + (i as u16 * 37) % 0x3ff)
                    * if v < 0.0 { -f16::ONE } else { f16::ONE }
            }
            5 => f16::ZERO,
            _ => f16::from_f32(v),
        };
        let scales = (0..blocks)
            .map(|i| half(i, 0.02 * (1.5 + noise(i, seed))))
            .collect();
        let mins = (0..blocks)
            .map(|i| half(i + 1, 0.1 * noise(i, seed + 1)))
            .collect();
        let mut nibbles: Vec<u8> = (0..blocks * 16)
            .map(|i| (noise(i, seed + 2).to_bits() & 0xff) as u8)
            .collect();
        let mut quants: Vec<i8> = (0..blocks * BLOCK)
            .map(|i| (noise(i, seed + 3) * 128.0) as i8)
            .collect();
        for b in 0..blocks {
            nibbles[b * 16] = 0xff;
            nibbles[b * 16 + 1] = 0x00;
            quants[b * BLOCK] = 127;
            quants[b * BLOCK + 1] = -128;
            quants[b * BLOCK + 2] = -127;
        }
        (scales, mins, nibbles, quants)
    }

    /// The dequantised weights of one row.
    fn q4_1_row(w: Q4_1<'_>, r: usize, nb: usize) -> Vec<f32> {
        (0..nb * BLOCK)
            .map(|c| {
                let b = r * nb + c / BLOCK;
                let j = c % BLOCK;
                let byte = w.nibbles[b * 16 + j % 16];
                let nib = if j < 16 { byte & 0x0f } else { byte >> 4 };
                w.scales[b].to_f32() * f32::from(nib) + w.mins[b].to_f32()
            })
            .collect()
    }

    fn q8_0_row(w: Q8_0<'_>, r: usize, nb: usize) -> Vec<f32> {
        (0..nb * BLOCK)
            .map(|c| {
                w.scales[r * nb + c / BLOCK].to_f32() * f32::from(w.quants[r * nb * BLOCK + c])
            })
            .collect()
    }

    fn dot64(a: &[f32], b: &[f32]) -> (f64, f64) {
        let dot = a
            .iter()
            .zip(b)
            .map(|(&a, &b)| f64::from(a) * f64::from(b))
            .sum();
        let mag = a
            .iter()
            .zip(b)
            .map(|(&a, &b)| (f64::from(a) * f64::from(b)).abs())
            .sum();
        (dot, mag)
    }

    /// Each path against float64 products, for `n` vectors, rows starting at `first`:
    /// - with the *quantised* activations x̂ (and, for Q4_1's offsets `m_b`, the exact block
    ///   sums of x) the products agree to f32 rounding: the integer sums are exact, only
    ///   per-block f32 scaling and summation round;
    /// - with the original activations they agree within the 8-bit step:
    ///   |Σ (w - m) (x - x̂)| <= Σ_b dx_b / 2 · Σ_{i in b} |w_i - m_b|.
    fn check(isa: Isa, nb: usize, rows: usize, first: usize, n: usize, wide: bool) {
        let cols = nb * BLOCK;
        let (scales, mins, nibbles, quants) = weights(first + rows, nb, nb as u64);
        let q4 = Q4_1 {
            scales: &scales,
            mins: &mins,
            nibbles: &nibbles,
        };
        let q8 = Q8_0 {
            scales: &scales,
            quants: &quants,
        };
        let x: Vec<f32> = (0..n * cols)
            .map(|i| noise(i, 7) * if i % 97 == 0 { 8.0 } else { 1.0 })
            .collect();
        let (x8, x16) = (
            Quantized::<i8>::new(&x, cols),
            Quantized::<i16>::new(&x, cols),
        );
        let (xd, steps) = match wide {
            false => (x8.dequantize(), &x8.scales),
            true => (x16.dequantize(), &x16.scales),
        };
        for (name, is_q4, tiled) in [
            ("Q4_1", true, false),
            ("Q4_1 in tiles", true, true),
            ("Q8_0", false, false),
        ] {
            let mut out = vec![f32::NAN; rows * n];
            match (is_q4, wide, tiled) {
                // Tiles are for 16-bit activations only.
                (_, false, true) => continue,
                (true, false, false) => q4_1_rows(isa, q4, first, &x8, &mut out),
                (false, false, _) => q8_0_rows(isa, q8, first, &x8, &mut out),
                (true, true, false) => q4_1_rows16(isa, q4, first, &x16, &mut out),
                (true, true, true) => q4_1_tiles16(isa, q4, first, &x16, &mut out),
                (false, true, _) => q8_0_rows16(isa, q8, first, &x16, &mut out),
            }
            for i in 0..rows {
                let r = first + i;
                let w = if is_q4 {
                    q4_1_row(q4, r, nb)
                } else {
                    q8_0_row(q8, r, nb)
                };
                // Q4_1's offsets per column (0 for Q8_0).
                let m: Vec<f32> = (0..cols)
                    .map(|c| {
                        if is_q4 {
                            q4.mins[r * nb + c / BLOCK].to_f32()
                        } else {
                            0.0
                        }
                    })
                    .collect();
                let scaled: Vec<f32> = w.iter().zip(&m).map(|(w, m)| w - m).collect();
                for t in 0..n {
                    let got = f64::from(out[i * n + t]);
                    let xs = &x[t * cols..(t + 1) * cols];
                    let (scaled_dot, mag) = dot64(&scaled, &xd[t * cols..(t + 1) * cols]);
                    let (offsets, offsets_mag) = dot64(&m, xs);
                    let (want, mag) = (scaled_dot + offsets, mag + offsets_mag);
                    let tol = 1e-6 * mag + 1e-30;
                    assert!(
                        (got - want).abs() <= tol,
                        "{isa:?} {name} nb={nb} row {r} vector {t}: {got} vs {want} (tol {tol})"
                    );
                    let (dense, _) = dot64(&w, &x[t * cols..(t + 1) * cols]);
                    let bound: f64 = (0..nb)
                        .map(|b| {
                            let step = f64::from(steps[t * nb + b]);
                            let wsum: f64 = scaled[b * BLOCK..(b + 1) * BLOCK]
                                .iter()
                                .map(|v| f64::from(v.abs()))
                                .sum();
                            step / 2.0 * wsum
                        })
                        .sum();
                    assert!(
                        (got - dense).abs() <= bound * 1.001 + tol,
                        "{isa:?} {name} nb={nb} row {r}: {got} vs dense {dense} (bound {bound})"
                    );
                }
            }
        }
    }

    #[test]
    fn every_path_matches_float64_products() {
        let isas = Isa::available();
        assert_eq!(isas[0], Isa::Portable);
        #[cfg(target_arch = "x86_64")]
        if std::arch::is_x86_feature_detected!("avx2") {
            assert!(isas.contains(&Isa::Avx2));
        }
        for isa in isas {
            // 1, odd and even block counts (the SIMD paths step two blocks at a time; the
            // AVX-512 tiles 8 at a time, then the rest one by one), one and several vectors
            // (in tiles of 4 or 8: full tiles, then 4, then the last 1, 2 or 3 alone), rows
            // past the first, more rows than a row group (16).
            for (nb, rows, first, n) in [
                (1, 3, 0, 1),
                (2, 5, 1, 1),
                (18, 7, 3, 1),
                (19, 4, 0, 3),
                (48, 2, 5, 4),
                (3, 3, 1, 6),
                (18, 2, 2, 9),
                (8, 17, 0, 7),
                (48, 3, 1, 13),
            ] {
                check(isa, nb, rows, first, n, false);
                check(isa, nb, rows, first, n, true);
            }
        }
    }

    /// [`widen`] against the `half` crate's conversion on every bit pattern, and the SIMD
    /// widening of 8 at a time (F16C on x86-64) against [`widen`].
    #[test]
    fn widening_is_exact_for_every_half_float() {
        for bits in 0..=u16::MAX {
            let h = f16::from_bits(bits);
            let (got, want) = (widen(h), h.to_f32());
            if want.is_nan() {
                assert!(got.is_nan(), "{bits:#06x}: {got}");
            } else {
                assert_eq!(
                    got.to_bits(),
                    want.to_bits(),
                    "{bits:#06x}: {got} vs {want}"
                );
            }
        }
        // NaN payloads aside (F16C quiets signalling NaNs), bit for bit.
        let bits = |v: [f32; 8]| v.map(|v| if v.is_nan() { u32::MAX } else { v.to_bits() });
        let all: Vec<f16> = (0..=u16::MAX).map(f16::from_bits).collect();
        for chunk in all.chunks(8).chain([&all[3..8], &all[..1]]) {
            let want = bits(widen8(chunk));
            #[cfg(target_arch = "x86_64")]
            if Isa::Avx2.runs_here() {
                // SAFETY: the CPU has F16C (checked just above).
                let got = unsafe { x86::widen8(chunk) };
                assert_eq!(bits(got), want, "{chunk:?}");
            }
            #[cfg(target_arch = "wasm32")]
            assert_eq!(bits(wasm::widen8(chunk)), want, "{chunk:?}");
        }
    }

    #[test]
    fn the_best_path_is_one_that_runs() {
        let best = Isa::best();
        assert_eq!(Isa::available().last(), Some(&best));
    }

    /// SIMD128 exists only on wasm32: natively it is refused before any unsafe code runs.
    #[cfg(not(target_arch = "wasm32"))]
    #[test]
    #[should_panic(expected = "does not run on this CPU")]
    fn a_path_this_cpu_lacks_is_refused() {
        let x = Quantized::<i8>::new(&[0.0; 32], 32);
        let w = Q8_0 {
            scales: &[f16::ONE],
            quants: &[0; 32],
        };
        q8_0_rows(Isa::Simd128, w, 0, &x, &mut [0.0]);
    }
}
