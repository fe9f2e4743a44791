//! GGML storage types and dequantisation to `f32`.
//!
//! Block formats (little-endian, `d` and `m` are IEEE half floats):
//! - `Q8_0`: 34 bytes per 32 values: `d`, then 32 × `i8`; `x = d·q`.
//! - `Q4_0`: 18 bytes per 32 values: `d`, then 16 bytes of nibbles; `x = d·(q − 8)`.
//! - `Q4_1`: 20 bytes per 32 values: `d`, `m`, then 16 bytes of nibbles; `x = d·q + m`.
//!
//! In the 4-bit formats byte `j` holds value `j` in its low nibble and value `j + 16` in its
//! high nibble. Arithmetic is done in `f32` in the same order as ggml and the Python `gguf`
//! package (`d·q` rounded, then `+ m` rounded), so results are bit-identical to theirs.

use std::fmt;

use half::{bf16, f16};

/// A GGML tensor storage type (ids as in ggml.h).
#[allow(non_camel_case_types, missing_docs)]
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum GgmlType {
    F32,
    F16,
    Q4_0,
    Q4_1,
    Q5_0,
    Q5_1,
    Q8_0,
    Q8_1,
    Q2_K,
    Q3_K,
    Q4_K,
    Q5_K,
    Q6_K,
    Q8_K,
    I8,
    I16,
    I32,
    I64,
    F64,
    BF16,
}

impl GgmlType {
    /// The type for a ggml type id, if this crate knows its layout.
    pub fn from_id(id: u32) -> Option<Self> {
        use GgmlType::*;
        Some(match id {
            0 => F32,
            1 => F16,
            2 => Q4_0,
            3 => Q4_1,
            6 => Q5_0,
            7 => Q5_1,
            8 => Q8_0,
            9 => Q8_1,
            10 => Q2_K,
            11 => Q3_K,
            12 => Q4_K,
            13 => Q5_K,
            14 => Q6_K,
            15 => Q8_K,
            24 => I8,
            25 => I16,
            26 => I32,
            27 => I64,
            28 => F64,
            30 => BF16,
            _ => return None,
        })
    }

    /// `(values per block, bytes per block)`.
    pub fn block_layout(self) -> (u64, u64) {
        use GgmlType::*;
        match self {
            F32 | I32 => (1, 4),
            F16 | BF16 | I16 => (1, 2),
            I8 => (1, 1),
            I64 | F64 => (1, 8),
            Q4_0 => (32, 18),
            Q4_1 => (32, 20),
            Q5_0 => (32, 22),
            Q5_1 => (32, 24),
            Q8_0 => (32, 34),
            Q8_1 => (32, 36),
            Q2_K => (256, 84),
            Q3_K => (256, 110),
            Q4_K => (256, 144),
            Q5_K => (256, 176),
            Q6_K => (256, 210),
            Q8_K => (256, 292),
        }
    }
}

impl fmt::Display for GgmlType {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        fmt::Debug::fmt(self, f)
    }
}

fn f16_at(bytes: &[u8], at: usize) -> f32 {
    f16::from_le_bytes([bytes[at], bytes[at + 1]]).to_f32()
}

/// Dequantises `data` (whole blocks of `ty`) to `f32`; `None` for a type this crate does not
/// dequantise. A trailing partial block is ignored (`Gguf::parse` refuses such tensors).
pub fn dequantize(ty: GgmlType, data: &[u8]) -> Option<Vec<f32>> {
    let (block, size) = ty.block_layout();
    let mut out = vec![0.0; data.len() / size as usize * block as usize];
    dequantize_into(ty, data, &mut out).then_some(out)
}

/// Whether [`dequantize`] reads `ty`.
pub fn can_dequantize(ty: GgmlType) -> bool {
    use GgmlType::*;
    matches!(ty, F32 | F16 | BF16 | Q8_0 | Q4_0 | Q4_1)
}

/// Dequantises whole blocks of `ty` from `data` into `out`, which holds exactly their elements
/// (callers reuse one buffer per matrix row). `false` for a type this crate does not
/// dequantise.
pub fn dequantize_into(ty: GgmlType, data: &[u8], out: &mut [f32]) -> bool {
    let (block, size) = ty.block_layout();
    let (block, size) = (block as usize, size as usize);
    let pairs = data.chunks_exact(size).zip(out.chunks_exact_mut(block));
    match ty {
        GgmlType::F32 => {
            for (b, o) in pairs {
                o[0] = f32::from_le_bytes([b[0], b[1], b[2], b[3]]);
            }
        }
        GgmlType::F16 => pairs.for_each(|(b, o)| o[0] = f16_at(b, 0)),
        GgmlType::BF16 => {
            pairs.for_each(|(b, o)| o[0] = bf16::from_le_bytes([b[0], b[1]]).to_f32())
        }
        GgmlType::Q8_0 => {
            for (b, o) in pairs {
                let d = f16_at(b, 0);
                for (o, &q) in o.iter_mut().zip(&b[2..34]) {
                    *o = d * f32::from(q as i8);
                }
            }
        }
        GgmlType::Q4_0 => {
            for (b, o) in pairs {
                let d = f16_at(b, 0);
                let (lo, hi) = o.split_at_mut(16);
                for ((l, h), &q) in lo.iter_mut().zip(hi).zip(&b[2..18]) {
                    *l = d * (f32::from(q & 0x0f) - 8.0);
                    *h = d * (f32::from(q >> 4) - 8.0);
                }
            }
        }
        GgmlType::Q4_1 => {
            for (b, o) in pairs {
                let (d, m) = (f16_at(b, 0), f16_at(b, 2));
                let (lo, hi) = o.split_at_mut(16);
                for ((l, h), &q) in lo.iter_mut().zip(hi).zip(&b[4..20]) {
                    *l = d * f32::from(q & 0x0f) + m;
                    *h = d * f32::from(q >> 4) + m;
                }
            }
        }
        _ => return false,
    }
    true
}

#[cfg(test)]
mod tests {
    use super::*;

    fn half(v: f32) -> [u8; 2] {
        f16::from_f32(v).to_le_bytes()
    }

    #[test]
    fn q4_1_known_block() {
        // d = 0.5, m = -1, nibbles: low = j % 16, high = 15 - j % 16.
        let mut block = Vec::new();
        block.extend(half(0.5));
        block.extend(half(-1.0));
        block.extend((0..16u8).map(|j| j | ((15 - j) << 4)));
        let x = dequantize(GgmlType::Q4_1, &block).unwrap();
        assert_eq!(x.len(), 32);
        for j in 0..16 {
            assert_eq!(x[j], 0.5 * j as f32 - 1.0);
            assert_eq!(x[j + 16], 0.5 * (15 - j) as f32 - 1.0);
        }
    }

    #[test]
    fn q8_0_and_q4_0_known_blocks() {
        let mut block = Vec::new();
        block.extend(half(0.25));
        block.extend((0..32).map(|j| (j as i8 - 16) as u8));
        let x = dequantize(GgmlType::Q8_0, &block).unwrap();
        assert_eq!(
            x,
            (0..32).map(|j| 0.25 * (j - 16) as f32).collect::<Vec<_>>()
        );

        let mut block = Vec::new();
        block.extend(half(2.0));
        block.extend([0x80u8; 16]); // low nibble 0 -> -8, high nibble 8 -> 0
        let x = dequantize(GgmlType::Q4_0, &block).unwrap();
        assert!(x[..16].iter().all(|&v| v == -16.0));
        assert!(x[16..].iter().all(|&v| v == 0.0));
    }

    #[test]
    fn f16_and_bf16() {
        let data: Vec<u8> = [1.5f32, -2.0, 65504.0]
            .iter()
            .flat_map(|&v| half(v))
            .collect();
        assert_eq!(
            dequantize(GgmlType::F16, &data).unwrap(),
            vec![1.5, -2.0, 65504.0]
        );
        let data: Vec<u8> = [1.0f32, -3.0]
            .iter()
            .flat_map(|&v| bf16::from_f32(v).to_le_bytes())
            .collect();
        assert_eq!(dequantize(GgmlType::BF16, &data).unwrap(), vec![1.0, -3.0]);
    }

    #[test]
    fn unsupported_types_say_so() {
        assert!(dequantize(GgmlType::Q6_K, &[0u8; 210]).is_none());
    }
}
