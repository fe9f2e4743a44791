//! GELU (the erf form BERT uses) for inference on the CPU backend.
//!
//! burn-flex computes GELU with a scalar libm `erff` per element on one thread; in MiniLM the
//! feed-forward activations are `[batch·seq, 1536]` per layer, and that one pass was a large
//! share of the encoder's time at batch 32. Here the same function runs as a branch-free
//! loop the compiler vectorises, split across cores natively. Autodiff tensors and GPU
//! tensors keep burn's op (its gradient, its kernels).

use burn::tensor::activation;
use burn::tensor::{DType, Device, Tensor, TensorData};

/// `x · Φ(x)`, with Φ the standard normal CDF, element-wise.
pub fn gelu<const D: usize>(x: Tensor<D>) -> Tensor<D> {
    let device = x.device();
    if x.is_autodiff() || x.dtype() != DType::F32 || device != Device::flex() {
        return activation::gelu(x);
    }
    let shape = x.shape();
    let Some(mut values) = x
        .clone()
        .try_into_data()
        .ok()
        .and_then(|d| d.try_into_vec::<f32>().ok())
    else {
        return activation::gelu(x);
    };
    drop(x);
    gelu_in_place(&mut values);
    Tensor::from_data(TensorData::new(values, shape), &device)
}

/// GELU over a slice, in place (in parallel natively).
pub fn gelu_in_place(values: &mut [f32]) {
    // Large enough that a task outweighs its scheduling, small enough to stay in cache.
    const CHUNK: usize = 16 * 1024;
    #[cfg(not(target_arch = "wasm32"))]
    {
        use rayon::prelude::*;
        values.par_chunks_mut(CHUNK).for_each(gelu_chunk);
    }
    #[cfg(target_arch = "wasm32")]
    values.chunks_mut(CHUNK).for_each(gelu_chunk);
}

/// One chunk, on the calling thread, with the widest vectors the CPU has: the crate targets baseline x86-64 (SSE2,
/// 4 lanes), where this loop was ~10% of the encoder's time at batch 32 (`perf` on `bench
/// filter --batches 32`). The same code is compiled for each instruction set; no FMA
/// contraction happens in Rust, so every path gives the same bits.
pub(crate) fn gelu_chunk(chunk: &mut [f32]) {
    #[cfg(target_arch = "x86_64")]
    {
        if crate::models::qdot::avx512f_allowed() {
            // SAFETY: the CPU has AVX-512F (checked above).
            return unsafe { gelu_chunk_avx512(chunk) };
        }
        if std::arch::is_x86_feature_detected!("avx2") {
            // SAFETY: the CPU has AVX2 (checked above).
            return unsafe { gelu_chunk_avx2(chunk) };
        }
    }
    gelu_chunk_portable(chunk)
}

#[cfg(target_arch = "x86_64")]
#[target_feature(enable = "avx512f")]
fn gelu_chunk_avx512(chunk: &mut [f32]) {
    gelu_chunk_portable(chunk)
}

#[cfg(target_arch = "x86_64")]
#[target_feature(enable = "avx2")]
fn gelu_chunk_avx2(chunk: &mut [f32]) {
    gelu_chunk_portable(chunk)
}

#[inline(always)]
fn gelu_chunk_portable(chunk: &mut [f32]) {
    for x in chunk {
        *x = gelu_f32(*x);
    }
}

/// `0.5 · x · (1 + erf(x / √2))`.
#[inline(always)]
pub fn gelu_f32(x: f32) -> f32 {
    0.5 * x * (1.0 + erf_f32(x * std::f32::consts::FRAC_1_SQRT_2))
}

/// erf with absolute error below 2e-7 (Abramowitz & Stegun 7.1.26, a rational-times-Gaussian
/// fit, with an exp of our own so that the whole loop has no calls and no branches).
#[inline(always)]
fn erf_f32(x: f32) -> f32 {
    const P: f32 = 0.327_591_1;
    const A: [f32; 5] = [
        0.254_829_6,
        -0.284_496_72,
        1.421_413_8,
        -1.453_152,
        1.061_405_4,
    ];
    // erf(4) rounds to 1 in f32; clamping keeps exp's argument in range.
    let a = x.abs().min(4.0);
    let t = 1.0 / (1.0 + P * a);
    let poly = t * (A[0] + t * (A[1] + t * (A[2] + t * (A[3] + t * A[4]))));
    let y = 1.0 - poly * exp_f32(-a * a);
    y.copysign(x)
}

/// e^z for z in [-87, 0] ([`erf_f32`] needs [-16, 0], a softmax the rest), relative error
/// about 1e-7: z = n·ln2 + r with |r| <= ln2/2, e^r by its Taylor series to r^7, 2^n put
/// into the exponent bits. A branch-free loop the compiler vectorises, where libm's `expf`
/// is a call per element.
#[inline(always)]
pub(crate) fn exp_f32(z: f32) -> f32 {
    // ln 2 split in two so that n·LN2_HI is exact in f32 (Cody and Waite).
    const LN2_HI: f32 = 0.693_145_75;
    const LN2_LO: f32 = 1.428_606_8e-6;
    // Nearest integer for z <= 0 by truncating z·log2(e) - 0.5 toward zero: a conversion
    // instruction, where `round` is a libm call that keeps the loop from vectorising.
    let n = ((z * std::f32::consts::LOG2_E - 0.5) as i32) as f32;
    let r = (z - n * LN2_HI) - n * LN2_LO;
    let p = 1.0
        + r * (1.0
            + r * (0.5
                + r * (1.0 / 6.0
                    + r * (1.0 / 24.0
                        + r * (1.0 / 120.0 + r * (1.0 / 720.0 + r * (1.0 / 5040.0)))))));
    // n is in [-126, 0]: a normal power of two.
    p * f32::from_bits(((n as i32 + 127) as u32) << 23)
}

#[cfg(test)]
mod tests {
    use super::*;

    /// The reference: libm's erf in f64 (an independent implementation).
    fn gelu_f64(x: f64) -> f64 {
        0.5 * x * (1.0 + libm::erf(x / std::f64::consts::SQRT_2))
    }

    #[test]
    fn matches_the_erf_form_to_float_precision() {
        let mut worst = 0.0f64;
        for i in -200_000..=200_000 {
            let x = i as f32 * 1e-4; // [-20, 20]
            let err = (gelu_f32(x) as f64 - gelu_f64(x as f64)).abs() / (x.abs() as f64).max(1.0);
            worst = worst.max(err);
        }
        assert!(worst < 3e-7, "worst error {worst}");
        assert_eq!(gelu_f32(0.0), 0.0);
        assert_eq!(gelu_f32(100.0), 100.0);
        assert_eq!(gelu_f32(-100.0), 0.0);
    }

    #[test]
    fn exp_is_accurate_over_its_whole_range() {
        for i in 0..=87_000 {
            let z = -(i as f32) * 1e-3;
            let rel = (exp_f32(z) as f64 / (z as f64).exp() - 1.0).abs();
            assert!(rel < 3e-7, "exp({z}): relative error {rel}");
        }
    }

    #[test]
    #[cfg(target_arch = "x86_64")]
    fn every_instruction_set_gives_the_same_bits() {
        let input: Vec<f32> = (0..40_001)
            .map(|i| (i as f32 - 20_000.0) * 7.3e-4)
            .collect();
        let mut portable = input.clone();
        gelu_chunk_portable(&mut portable);
        let mut checked = 0;
        type Path = unsafe fn(&mut [f32]);
        let wide: [(&str, bool, Path); 2] = [
            (
                "avx2",
                std::arch::is_x86_feature_detected!("avx2"),
                gelu_chunk_avx2,
            ),
            (
                "avx512f",
                std::arch::is_x86_feature_detected!("avx512f"),
                gelu_chunk_avx512,
            ),
        ];
        for (name, present, path) in wide {
            if !present {
                continue;
            }
            let mut out = input.clone();
            // SAFETY: the CPU has the path's instruction set (checked above).
            unsafe { path(&mut out) };
            assert!(
                out.iter()
                    .zip(&portable)
                    .all(|(a, b)| a.to_bits() == b.to_bits()),
                "the {name} path differs from the baseline"
            );
            checked += 1;
        }
        // Every x86-64 machine these tests run on has AVX2.
        assert!(checked >= 1, "no wide path ran");
    }

    #[test]
    fn the_tensor_path_equals_burns_gelu() {
        let device = Device::flex();
        let values: Vec<f32> = (0..3 * 1000).map(|i| (i as f32 - 1500.0) * 7e-3).collect();
        let x = Tensor::<2>::from_data(TensorData::new(values, [3, 1000]), &device);
        let ours = gelu(x.clone()).into_data().try_into_vec::<f32>().unwrap();
        let burns = activation::gelu(x)
            .into_data()
            .try_into_vec::<f32>()
            .unwrap();
        let worst = ours
            .iter()
            .zip(&burns)
            .map(|(a, b)| (a - b).abs())
            .fold(0.0f32, f32::max);
        assert!(worst < 2e-6, "worst difference {worst}");
    }
}
