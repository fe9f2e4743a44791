//! f16 values packed two to a u32 word, converted with integer bit operations inside the
//! kernels: the KV cache's storage. WebGPU without the `shader-f16` feature (SwiftShader,
//! many browsers) has no f16 type, and WGSL's `pack2x16float` is not exposed by CubeCL, so
//! the conversion is written out: round to nearest, ties to even, as IEEE 754 (and the `half`
//! crate) do; subnormals kept; overflow to ±inf; NaN stays NaN.

// `#[cube(launch_unchecked)]` generates a module and launch items that cannot carry docs.
#![allow(missing_docs)]

use cubecl::prelude::*;

/// The f16 bits (low 16 bits of the result) nearest to `x`.
#[cube]
pub fn f16_bits(x: f32) -> u32 {
    let b = u32::reinterpret(x);
    let sign = (b >> 16) & 0x8000;
    let e = (b >> 23) & 0xff;
    let m = b & 0x7f_ffff;
    let mut out = sign;
    if e == 0xff {
        // inf, or NaN (kept quiet and non-zero).
        out = sign | 0x7c00;
        if m != 0 {
            out = sign | 0x7e00;
        }
    } else if e >= 143 {
        // 2^16 and above: past f16's largest finite value (65,504, and rounding).
        out = sign | 0x7c00;
    } else if e > 112 {
        // Normal: rebias the exponent (127 → 15), keep 10 mantissa bits, round the 13 dropped
        // (a carry into the exponent is the right result, up to inf).
        let mut r = ((e - 112) << 10) | (m >> 13);
        let rem = m & 0x1fff;
        if rem > 0x1000 || (rem == 0x1000 && (r & 1) == 1) {
            r += 1;
        }
        out = sign | r;
    } else if e >= 102 {
        // Subnormal in f16 (below 2^-14): the mantissa with its implicit 1, shifted down.
        let full = m | 0x80_0000;
        let shift = 126 - e;
        let mut r = full >> shift;
        let rem = full & ((1u32 << shift) - 1);
        let half = 1u32 << (shift - 1);
        if rem > half || (rem == half && (r & 1) == 1) {
            r += 1;
        }
        out = sign | r;
    }
    // Else below 2^-25: rounds to a signed zero (`out` is the sign).
    out
}

/// The f32 value of the f16 `bits` (low 16 bits; exact: every f16 is an f32).
#[cube]
pub fn f16_value(bits: u32) -> f32 {
    let sign = (bits & 0x8000) << 16;
    let e = (bits >> 10) & 0x1f;
    let m = bits & 0x3ff;
    let mut out = f32::reinterpret(sign | ((e + 112) << 23) | (m << 13));
    if e == 0 {
        // Zero or subnormal: m · 2^-24 (both factors exact in f32).
        out = f32::cast_from(m) * 5.960_464_5e-8;
        if sign != 0 {
            out = -out;
        }
    } else if e == 0x1f {
        out = f32::reinterpret(sign | 0x7f80_0000 | (m << 13));
    }
    out
}

/// `lo` and `hi` as f16 in one word (`lo` in the low half).
#[cube]
pub fn pack(lo: f32, hi: f32) -> u32 {
    f16_bits(lo) | (f16_bits(hi) << 16)
}

/// The f16 in the high (`high`) or low half of `word`, as f32.
#[cube]
pub fn unpack(word: u32, high: bool) -> f32 {
    let mut bits = word & 0xffff;
    if high {
        bits = word >> 16;
    }
    f16_value(bits)
}

/// `out[2i], out[2i+1]` = `x[2i], x[2i+1]` through f16 and back (one word per invocation,
/// grid `(ceil(n / 2 / 64))` of 64): the conversion's test on a real device.
#[cube(launch_unchecked)]
pub fn round_trip(x: &[f32], words: &mut [u32], out: &mut [f32], pairs: usize) {
    let i = ABSOLUTE_POS;
    if i < pairs {
        let w = pack(x[2 * i], x[2 * i + 1]);
        words[i] = w;
        out[2 * i] = unpack(w, false);
        out[2 * i + 1] = unpack(w, true);
    }
}

/// `out[2i]`, `out[2i + 1]` = the low and high f16 of `words[i]`, as f32 (grid
/// `(ceil(n / 64))` of 64): the unpacking of the weights' scales, tested on a real device.
#[cube(launch_unchecked)]
pub fn unpack_words(words: &[u32], out: &mut [f32], n: usize) {
    let i = ABSOLUTE_POS;
    if i < n {
        out[2 * i] = unpack(words[i], false);
        out[2 * i + 1] = unpack(words[i], true);
    }
}
