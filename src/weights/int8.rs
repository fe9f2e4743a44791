//! The filter encoder's weights in 8 bits (the word-embedding table in 4): what the browser
//! downloads instead of MiniLM's f32 `model.safetensors` (19.0 MB instead of 90.9 MB).
//!
//! The file is an ordinary safetensors file with `format` metadata [`FORMAT`]:
//! - every 2-D tensor `[rows, cols]` (the embedding tables and the linear layers' `[out, in]`
//!   weights) is stored as `I8` under its own name, with `F32` scales `[rows, groups]` under
//!   `NAME.scale`: each row is cut into `groups` runs of `cols / groups` consecutive values,
//!   each with its own scale: `value = q * scale`, `scale = max |run| / 127`,
//!   `q = round(value / scale)` (half away from zero) in `[-127, 127]`; symmetric. The shipped
//!   file uses runs of [`GROUP`] values (one scale per row was measured too: 4x the encoder's
//!   error for 5% fewer bytes; notes/issue-13-filter-size.md);
//! - except the 2-D tensors chosen for 4 bits (the shipped file: the word-embedding table
//!   only, which is only ever looked up by row, never multiplied): `U8` of shape
//!   `[rows, cols / 2]`, two values a byte (the even column in the low nibble), each a 4-bit
//!   two's-complement `q` in `[-7, 7]` (`-8` is refused), with `F16` scales `[rows, groups]`
//!   under `NAME.scale`: `scale = f16(max |run| / 7)`, `q = round(value / scale)` clamped,
//!   runs of [`GROUP4`] values (format version 2; version 1 files, all 8-bit, are still read);
//! - 1-D tensors (biases, LayerNorm) stay `F32`;
//! - tensors the encoder never reads (`pooler.*`, `position_ids`) are left out.
//!
//! Made by [`quantise`] (through `models::bert::quantise_weights`: `webguard quantize-filter`,
//! run by `./build.sh build`), a pure function of the f32 file: the same input gives the same
//! bytes on every machine (IEEE f32 division and rounding, tensors and header keys in a fixed
//! order, no timestamps), so the worker's manifest can pin the result's sha256. [`EncoderWeights`] reads either kind of file
//! and dequantises to `f32` at load time: the encoder's compute path, its speed and its
//! device memory stay what they were; only the download shrinks.

use std::collections::BTreeMap;

use half::f16;
use safetensors::{Dtype, SafeTensors};

use crate::error::{Error, Result};
use crate::weights::safetensors::{SafetensorsFile, shape_checked_tensor};

/// The `format` metadata of an 8-bit encoder file (and its version): version 2 adds 4-bit
/// tensors.
pub const FORMAT: &str = "webguard-int8-rows/2";
/// The first version (8-bit tensors only), still read.
pub const FORMAT_V1: &str = "webguard-int8-rows/1";
/// Suffix of a quantised tensor's scales.
pub const SCALE_SUFFIX: &str = ".scale";
/// Values per scale of 8-bit tensors in the shipped file (rows whose length it does not divide
/// get one scale).
pub const GROUP: usize = 64;
/// Values per scale of 4-bit tensors in the shipped file (the same rule).
pub const GROUP4: usize = 16;

fn bad(msg: String) -> Error {
    Error::Safetensors(format!("8-bit encoder file: {msg}"))
}

/// Encoder weights from either an f32 (or f16/bf16) safetensors file or an 8-bit one made by
/// [`quantise`]; which one is read from the file's `format` metadata, not its name.
pub struct EncoderWeights<'a> {
    file: SafetensorsFile<'a>,
    raw: SafeTensors<'a>,
    int8: bool,
    /// Whether 4-bit tensors may appear (format version 2).
    int4: bool,
}

impl<'a> EncoderWeights<'a> {
    /// Parses the header of `bytes`.
    pub fn parse(bytes: &'a [u8]) -> Result<Self> {
        let file = SafetensorsFile::parse(bytes)?;
        let raw = SafeTensors::deserialize(bytes).map_err(|e| Error::Safetensors(e.to_string()))?;
        let (int8, int4) = match file.metadata().get("format").map(String::as_str) {
            Some(FORMAT) => (true, true),
            Some(FORMAT_V1) => (true, false),
            Some(f) if f.starts_with("webguard-int8") => {
                return Err(bad(format!(
                    "format {f:?} is not supported (this build reads {FORMAT:?} and \
                     {FORMAT_V1:?}); make it again with `webguard quantize-filter`"
                )));
            }
            _ => (false, false),
        };
        Ok(Self {
            file,
            raw,
            int8,
            int4,
        })
    }

    /// Whether this is an 8-bit file.
    pub fn is_int8(&self) -> bool {
        self.int8
    }

    /// The header's metadata.
    pub fn metadata(&self) -> &std::collections::HashMap<String, String> {
        self.file.metadata()
    }

    /// Tensor `name` as `f32` values and its shape; an 8-bit or 4-bit tensor is dequantised.
    pub fn f32_values(&self, name: &str) -> Result<(Vec<f32>, Vec<usize>)> {
        let view = self
            .raw
            .tensor(name)
            .map_err(|_| Error::Safetensors(format!("no tensor named {name:?}")))?;
        let bits = match view.dtype() {
            Dtype::I8 => 8,
            Dtype::U8 => 4,
            _ => return self.file.f32_values(name),
        };
        if !self.int8 {
            return Err(Error::Safetensors(format!(
                "tensor {name:?} is {bits}-bit but the file is not a webguard 8-bit encoder \
                 file (its format metadata is not {FORMAT:?})"
            )));
        }
        if bits == 4 && !self.int4 {
            return Err(bad(format!(
                "tensor {name:?} is 4-bit (U8), which format {FORMAT_V1:?} does not have"
            )));
        }
        let stored = view.shape().to_vec();
        let [rows, stored_cols] = stored[..] else {
            return Err(bad(format!(
                "tensor {name:?} is {bits}-bit with shape {stored:?}; only matrices are quantised"
            )));
        };
        // A 4-bit tensor's bytes hold two values each.
        let cols = if bits == 4 {
            stored_cols.checked_mul(2).ok_or_else(|| {
                bad(format!(
                    "tensor {name:?} has {stored_cols} columns of 4-bit pairs: too many"
                ))
            })?
        } else {
            stored_cols
        };
        let shape = vec![rows, cols];
        let scale_name = format!("{name}{SCALE_SUFFIX}");
        let scales = self
            .raw
            .tensor(&scale_name)
            .map_err(|_| bad(format!("tensor {name:?} has no scales ({scale_name:?})")))?;
        let groups = match scales.shape() {
            [r, g] if *r == rows && *g > 0 && cols.is_multiple_of(*g) => *g,
            other => {
                return Err(bad(format!(
                    "scales {scale_name:?} have shape {other:?}; expected [{rows}, groups] \
                     with groups dividing {cols}"
                )));
            }
        };
        let want = if bits == 4 { Dtype::F16 } else { Dtype::F32 };
        if scales.dtype() != want {
            return Err(bad(format!(
                "scales {scale_name:?} are {:?}; expected {want:?}",
                scales.dtype()
            )));
        }
        let run = cols / groups;
        if bits == 4 && !run.is_multiple_of(2) {
            return Err(bad(format!(
                "scales {scale_name:?} have shape {:?}: runs of {run} 4-bit values are not \
                 whole bytes",
                scales.shape()
            )));
        }
        if bits == 4 {
            return dequantise4(name, &scale_name, view.data(), scales.data(), run, groups)
                .map(|values| (values, shape));
        }
        let q: Vec<i8> = view.data().iter().map(|&b| b as i8).collect();
        let scales: Vec<f32> = scales
            .data()
            .chunks_exact(4)
            .map(|s| f32::from_le_bytes([s[0], s[1], s[2], s[3]]))
            .collect();
        let values = dequantise(&q, &scales, run).map_err(|fault| {
            bad(match fault {
                BadInt8::MinusOneTwentyEight { index } => format!(
                    "tensor {name:?} row {} holds -128 (the format is symmetric: -127..127)",
                    index / cols
                ),
                BadInt8::Scale { index, value } => format!(
                    "{scale_name:?} row {} group {} is {value}",
                    index / groups,
                    index % groups
                ),
                BadInt8::Length { .. } => format!("tensor {name:?} and {scale_name:?}: {fault}"),
            })
        })?;
        Ok((values, shape))
    }

    shape_checked_tensor!();
}

/// Why stored 8-bit values cannot be read.
#[derive(Debug, Clone, Copy, PartialEq)]
pub enum BadInt8 {
    /// An integer is -128: the format is symmetric (-127..127), so -128 is never written and
    /// a file holding it is not one of ours.
    MinusOneTwentyEight {
        /// Which integer.
        index: usize,
    },
    /// A scale is negative or not finite.
    Scale {
        /// Which scale.
        index: usize,
        /// Its value.
        value: f32,
    },
    /// The integers do not make one run per scale.
    Length {
        /// How many integers.
        integers: usize,
        /// How many scales.
        scales: usize,
        /// Integers per scale.
        run: usize,
    },
}

impl std::fmt::Display for BadInt8 {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            BadInt8::MinusOneTwentyEight { index } => {
                write!(
                    f,
                    "value {index} is -128 (the format is symmetric: -127..127)"
                )
            }
            BadInt8::Scale { index, value } => {
                write!(
                    f,
                    "scale {index} is {value}; scales are finite and not negative"
                )
            }
            BadInt8::Length {
                integers,
                scales,
                run,
            } => write!(
                f,
                "{integers} values are not {scales} runs of {run} (one per scale)"
            ),
        }
    }
}

/// The values 8-bit integers `q` stand for, one scale per `run` consecutive integers:
/// `q × scale`. The one reader of webguard's 8-bit tensors (the encoder file's, a run per
/// group of a row; the chat probes' first layers, a run per row), the inverse of
/// [`quantise_row`].
pub fn dequantise(q: &[i8], scales: &[f32], run: usize) -> std::result::Result<Vec<f32>, BadInt8> {
    if scales.len().checked_mul(run) != Some(q.len()) {
        return Err(BadInt8::Length {
            integers: q.len(),
            scales: scales.len(),
            run,
        });
    }
    let mut values = Vec::with_capacity(q.len());
    for (i, &scale) in scales.iter().enumerate() {
        if !scale.is_finite() || scale < 0.0 {
            return Err(BadInt8::Scale {
                index: i,
                value: scale,
            });
        }
        for (j, &v) in q[i * run..(i + 1) * run].iter().enumerate() {
            if v == i8::MIN {
                return Err(BadInt8::MinusOneTwentyEight { index: i * run + j });
            }
            values.push(f32::from(v) * scale);
        }
    }
    Ok(values)
}

/// The values of a 4-bit tensor: `data` two values a byte (low nibble first), `scales` F16
/// bytes, one per `run` values (`groups` a row).
fn dequantise4(
    name: &str,
    scale_name: &str,
    data: &[u8],
    scales: &[u8],
    run: usize,
    groups: usize,
) -> Result<Vec<f32>> {
    let mut values = Vec::with_capacity(2 * data.len());
    for (i, s) in scales.chunks_exact(2).enumerate() {
        let (r, g) = (i / groups, i % groups);
        let scale = f16::from_le_bytes([s[0], s[1]]).to_f32();
        if !scale.is_finite() || scale < 0.0 {
            return Err(bad(format!("{scale_name:?} row {r} group {g} is {scale}")));
        }
        for &b in &data[i * run / 2..(i + 1) * run / 2] {
            for nibble in [b & 0x0f, b >> 4] {
                if nibble == 0x08 {
                    return Err(bad(format!(
                        "tensor {name:?} row {r} holds the 4-bit -8 (the format is symmetric: \
                         -7..7)"
                    )));
                }
                // Sign-extend the nibble: 0..7 stay, 9..15 are -7..-1.
                let q = ((nibble << 4) as i8) >> 4;
                values.push(f32::from(q) * scale);
            }
        }
    }
    Ok(values)
}

/// One run of values at 4 bits: `(q, scale)` with `scale = f16(max|row| / 7)` and
/// `q[i] = round(row[i] / scale)` clamped to `[-7, 7]` (the scale is rounded to f16 first, so
/// the values read back are exactly `q * scale`). `None` if the scale overflows f16.
pub fn quantise_row4(row: &[f32]) -> Option<(Vec<i8>, f16)> {
    let max = row.iter().fold(0.0f32, |m, v| m.max(v.abs()));
    let scale = f16::from_f32(max / 7.0);
    if !scale.is_finite() {
        return None;
    }
    let s = scale.to_f32();
    if s == 0.0 {
        return Some((vec![0; row.len()], scale));
    }
    let q = row
        .iter()
        .map(|v| (v / s).round().clamp(-7.0, 7.0) as i8)
        .collect();
    Some((q, scale))
}

/// One run of values quantised: `(q, scale)` with `q[i] = round(row[i] / scale)`,
/// `scale = max|row| / 127` (a run too small for a scale is all 0).
/// Quantising the values a run stands for (`q × scale`) gives the same `q` and scale back (f32
/// rounds `127 × scale` to within a unit of the largest value, and the division back to the
/// scale), so a model rounded to its grid at training is the one its file holds.
pub fn quantise_row(row: &[f32]) -> (Vec<i8>, f32) {
    let max = row.iter().fold(0.0f32, |m, v| m.max(v.abs()));
    let scale = max / 127.0;
    if scale == 0.0 {
        return (vec![0; row.len()], 0.0);
    }
    let q = row
        .iter()
        .map(|v| (v / scale).round().clamp(-127.0, 127.0) as i8)
        .collect();
    (q, scale)
}

/// How [`quantise`] stores 2-D tensors: `group` values per scale at 8 bits, and the tensors
/// `four_bit` picks at 4 bits with `group4` values per scale (per row where a group size does
/// not divide the row).
pub struct Recipe<'f> {
    /// Values per scale of 8-bit tensors.
    pub group: usize,
    /// Values per scale of 4-bit tensors (even).
    pub group4: usize,
    /// Which 2-D tensors (by name) are stored at 4 bits.
    pub four_bit: &'f dyn Fn(&str) -> bool,
}

/// The 8-bit file of an f32 (or f16/bf16) safetensors file: 2-D tensors int8 with a scale per
/// `recipe.group` consecutive values of a row (or 4-bit, see [`Recipe`]), 1-D tensors f32,
/// tensors whose name `keep` refuses left out, `metadata` added to the header (next to
/// `format`). Byte-deterministic: tensors are laid out f32 first, then f16, int8 and 4-bit, each
/// group sorted by name, and the header's keys are sorted.
pub fn quantise(
    bytes: &[u8],
    keep: impl Fn(&str) -> bool,
    recipe: &Recipe,
    metadata: &BTreeMap<String, String>,
) -> Result<Vec<u8>> {
    let src = SafetensorsFile::parse(bytes)?;
    let mut f32s: Vec<(String, Vec<usize>, Vec<u8>)> = Vec::new();
    let mut f16s: Vec<(String, Vec<usize>, Vec<u8>)> = Vec::new();
    let mut int8s: Vec<(String, Vec<usize>, Vec<u8>)> = Vec::new();
    let mut int4s: Vec<(String, Vec<usize>, Vec<u8>)> = Vec::new();
    let run_of = |group: usize, cols: usize| {
        if group > 0 && cols.is_multiple_of(group) {
            group
        } else {
            cols
        }
    };
    for name in src.names().into_iter().filter(|n| keep(n)) {
        if name.ends_with(SCALE_SUFFIX) {
            return Err(bad(format!(
                "the source has a tensor named {name:?}, which would clash with a scale"
            )));
        }
        let (values, shape) = src.f32_values(&name)?;
        if let Some(v) = values.iter().find(|v| !v.is_finite()) {
            return Err(bad(format!("source tensor {name:?} holds {v}")));
        }
        match shape[..] {
            [_] => f32s.push((name, shape, le_bytes(&values))),
            [rows, cols] if rows > 0 && cols > 0 && (recipe.four_bit)(&name) => {
                let run = run_of(recipe.group4, cols);
                if !run.is_multiple_of(2) {
                    return Err(bad(format!(
                        "source tensor {name:?} has shape {shape:?}: runs of {run} values \
                         cannot be packed two a byte"
                    )));
                }
                let mut packed = Vec::with_capacity(rows * cols / 2);
                let mut scales = Vec::with_capacity(2 * rows * cols / run);
                for part in values.chunks_exact(run) {
                    let (q, s) = quantise_row4(part).ok_or_else(|| {
                        bad(format!(
                            "source tensor {name:?} holds values too large for f16 scales"
                        ))
                    })?;
                    packed.extend(
                        q.chunks_exact(2)
                            .map(|p| (p[0] as u8 & 0x0f) | ((p[1] as u8) << 4)),
                    );
                    scales.extend_from_slice(&s.to_le_bytes());
                }
                f16s.push((
                    format!("{name}{SCALE_SUFFIX}"),
                    vec![rows, cols / run],
                    scales,
                ));
                int4s.push((name, vec![rows, cols / 2], packed));
            }
            [rows, cols] if rows > 0 && cols > 0 => {
                let run = run_of(recipe.group, cols);
                let mut q = Vec::with_capacity(rows * cols);
                let mut scales = Vec::with_capacity(rows * cols / run);
                for part in values.chunks_exact(run) {
                    let (qr, s) = quantise_row(part);
                    q.extend(qr.into_iter().map(|v| v as u8));
                    scales.push(s);
                }
                f32s.push((
                    format!("{name}{SCALE_SUFFIX}"),
                    vec![rows, cols / run],
                    le_bytes(&scales),
                ));
                int8s.push((name, shape, q));
            }
            _ => {
                return Err(bad(format!(
                    "source tensor {name:?} has shape {shape:?}; only 1-D and non-empty 2-D tensors are handled"
                )));
            }
        }
    }
    for group in [&mut f32s, &mut f16s, &mut int8s, &mut int4s] {
        group.sort_by(|a, b| a.0.cmp(&b.0));
    }

    let mut meta = metadata.clone();
    meta.insert("format".into(), FORMAT.into());
    let mut header = serde_json::Map::new();
    header.insert("__metadata__".into(), serde_json::to_value(&meta).unwrap());
    let mut offset = 0usize;
    let groups = [
        ("F32", &f32s),
        ("F16", &f16s),
        ("I8", &int8s),
        ("U8", &int4s),
    ];
    for (dtype, group) in groups {
        for (name, shape, data) in group.iter() {
            header.insert(
                name.clone(),
                serde_json::json!({
                    "dtype": dtype,
                    "shape": shape,
                    "data_offsets": [offset, offset + data.len()],
                }),
            );
            offset += data.len();
        }
    }
    // Deterministic either way: serde_json's Map is sorted, or (with `preserve_order` enabled
    // by another crate) in the fixed insertion order above; the metadata is a BTreeMap.
    let mut json = serde_json::to_vec(&serde_json::Value::Object(header)).unwrap();
    while !json.len().is_multiple_of(8) {
        json.push(b' ');
    }
    let mut out = Vec::with_capacity(8 + json.len() + offset);
    out.extend_from_slice(&(json.len() as u64).to_le_bytes());
    out.extend_from_slice(&json);
    for (_, group) in groups {
        for (_, _, data) in group.iter() {
            out.extend_from_slice(data);
        }
    }
    Ok(out)
}

fn le_bytes(values: &[f32]) -> Vec<u8> {
    values.iter().flat_map(|v| v.to_le_bytes()).collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn rows_round_trip_within_half_a_step() {
        let row = [0.5f32, -1.27, 0.0, 1e-3, 0.9];
        let (q, s) = quantise_row(&row);
        assert_eq!(q[1], -127);
        for (v, q) in row.iter().zip(&q) {
            assert!((f32::from(*q) * s - v).abs() <= s / 2.0 + 1e-7);
        }
        assert_eq!(quantise_row(&[0.0, 0.0]), (vec![0, 0], 0.0));
    }

    #[test]
    fn runs_are_within_half_a_step_and_quantising_their_grid_again_gives_it_back() {
        let mut rng = crate::rng::Rng::new(9);
        // 2,000 runs of different sizes, one all zero and one of the smallest values.
        let mut runs: Vec<Vec<f32>> = (0..2000)
            .map(|i| {
                let size = [1.0, 1e-3, 250.0, 0.01][i % 4] * (1.0 + i as f32 / 1000.0);
                (0..37)
                    .map(|_| (rng.next_f64() as f32 - 0.5) * size)
                    .collect()
            })
            .collect();
        runs.push(vec![0.0; 37]);
        runs.push(vec![1e-40; 37]);
        for (r, run) in runs.iter().enumerate() {
            let (q, scale) = quantise_row(run);
            assert!(!q.contains(&i8::MIN), "run {r}");
            let largest = run.iter().fold(0f32, |m, v| m.max(v.abs()));
            let grid: Vec<f32> = q.iter().map(|&q| f32::from(q) * scale).collect();
            // Half a step (a run too small for a scale flushes to zero).
            let tolerance = if scale == 0.0 {
                largest
            } else {
                largest / 254.0 * 1.0001
            };
            for (v, g) in run.iter().zip(&grid) {
                assert!((v - g).abs() <= tolerance, "run {r}: {v} -> {g}");
            }
            assert_eq!(quantise_row(&grid), (q, scale), "run {r}");
        }
    }

    #[test]
    fn dequantise_gives_each_run_times_its_scale_and_refuses_what_quantise_never_writes() {
        let rows = [[0.5f32, -1.27, 0.0], [2.0, 0.25, -0.5]];
        let (mut q, mut scales) = (Vec::new(), Vec::new());
        for row in &rows {
            let (row_q, scale) = quantise_row(row);
            q.extend(row_q);
            scales.push(scale);
        }
        let values = dequantise(&q, &scales, 3).unwrap();
        for (i, v) in values.iter().enumerate() {
            assert_eq!(*v, f32::from(q[i]) * scales[i / 3]);
            assert!((v - rows[i / 3][i % 3]).abs() <= scales[i / 3] / 2.0 + 1e-7);
        }
        assert_eq!(dequantise(&[], &[], 0), Ok(vec![]));
        let mut minus = q.clone();
        minus[4] = i8::MIN;
        assert_eq!(
            dequantise(&minus, &scales, 3),
            Err(BadInt8::MinusOneTwentyEight { index: 4 })
        );
        for bad in [-0.5, f32::NAN, f32::INFINITY] {
            let err = dequantise(&q, &[scales[0], bad], 3).unwrap_err();
            assert!(matches!(err, BadInt8::Scale { index: 1, .. }), "{err}");
        }
        assert!(matches!(
            dequantise(&q, &scales, 2),
            Err(BadInt8::Length {
                integers: 6,
                scales: 2,
                run: 2
            })
        ));
        assert!(matches!(
            dequantise(&q, &scales, usize::MAX),
            Err(BadInt8::Length { .. })
        ));
    }

    #[test]
    fn four_bit_rows_round_trip_within_half_a_step() {
        let row = [0.5f32, -1.4, 0.0, 1e-3, 0.9, -0.21, 1.4, 0.07];
        let (q, s) = quantise_row4(&row).unwrap();
        assert_eq!((q[1], q[6]), (-7, 7));
        let packed: Vec<u8> = q
            .chunks_exact(2)
            .map(|p| (p[0] as u8 & 0x0f) | ((p[1] as u8) << 4))
            .collect();
        let back = dequantise4("t", "t.scale", &packed, &s.to_le_bytes(), 8, 1).unwrap();
        let s = s.to_f32();
        for ((v, b), q) in row.iter().zip(&back).zip(&q) {
            assert_eq!(*b, f32::from(*q) * s);
            // Half a step, plus what rounding the scale to f16 moved the ends.
            assert!((b - v).abs() <= s / 2.0 + 7.0 * s * 2e-3, "{v} -> {b}");
        }
        assert_eq!(quantise_row4(&[0.0; 4]).unwrap().0, vec![0; 4]);
        assert!(quantise_row4(&[1e6, 0.0]).is_none());
        let nibble8 = dequantise4("t", "t.scale", &[0x80], &s16(1.0), 2, 1);
        assert!(nibble8.unwrap_err().to_string().contains("the 4-bit -8"));
    }

    fn s16(v: f32) -> [u8; 2] {
        f16::from_f32(v).to_le_bytes()
    }
}
