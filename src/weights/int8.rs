//! The filter encoder's weights in 8 bits: what the browser downloads instead of MiniLM's f32
//! `model.safetensors` (24.1 MB instead of 90.9 MB).
//!
//! The file is an ordinary safetensors file with `format` metadata [`FORMAT`]:
//! - every 2-D tensor `[rows, cols]` (the embedding tables and the linear layers' `[out, in]`
//!   weights) is stored as `I8` under its own name, with `F32` scales `[rows, groups]` under
//!   `NAME.scale`: each row is cut into `groups` runs of `cols / groups` consecutive values,
//!   each with its own scale: `value = q * scale`, `scale = max |run| / 127`,
//!   `q = round(value / scale)` (half away from zero) in `[-127, 127]`; symmetric. The shipped
//!   file uses runs of [`GROUP`] values (one scale per row was measured too: 4x the encoder's
//!   error for 5% fewer bytes; notes/issue-13-filter-size.md);
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

use safetensors::{Dtype, SafeTensors};

use crate::error::{Error, Result};
use crate::weights::safetensors::{SafetensorsFile, shape_checked_tensor};

/// The `format` metadata of an 8-bit encoder file (and its version).
pub const FORMAT: &str = "webguard-int8-rows/1";
/// Suffix of a quantised tensor's scales.
pub const SCALE_SUFFIX: &str = ".scale";
/// Values per scale in the shipped file (rows whose length it does not divide get one scale).
pub const GROUP: usize = 64;

fn bad(msg: String) -> Error {
    Error::Safetensors(format!("8-bit encoder file: {msg}"))
}

/// Encoder weights from either an f32 (or f16/bf16) safetensors file or an 8-bit one made by
/// [`quantise`]; which one is read from the file's `format` metadata, not its name.
pub struct EncoderWeights<'a> {
    file: SafetensorsFile<'a>,
    raw: SafeTensors<'a>,
    int8: bool,
}

impl<'a> EncoderWeights<'a> {
    /// Parses the header of `bytes`.
    pub fn parse(bytes: &'a [u8]) -> Result<Self> {
        let file = SafetensorsFile::parse(bytes)?;
        let raw = SafeTensors::deserialize(bytes).map_err(|e| Error::Safetensors(e.to_string()))?;
        let int8 = match file.metadata().get("format").map(String::as_str) {
            Some(FORMAT) => true,
            Some(f) if f.starts_with("webguard-int8") => {
                return Err(bad(format!(
                    "format {f:?} is not supported (this build reads {FORMAT:?}); \
                     make it again with `webguard quantize-filter`"
                )));
            }
            _ => false,
        };
        Ok(Self { file, raw, int8 })
    }

    /// Whether this is an 8-bit file.
    pub fn is_int8(&self) -> bool {
        self.int8
    }

    /// The header's metadata.
    pub fn metadata(&self) -> &std::collections::HashMap<String, String> {
        self.file.metadata()
    }

    /// Tensor `name` as `f32` values and its shape; an 8-bit tensor is dequantised.
    pub fn f32_values(&self, name: &str) -> Result<(Vec<f32>, Vec<usize>)> {
        let view = self
            .raw
            .tensor(name)
            .map_err(|_| Error::Safetensors(format!("no tensor named {name:?}")))?;
        if view.dtype() != Dtype::I8 {
            return self.file.f32_values(name);
        }
        if !self.int8 {
            return Err(Error::Safetensors(format!(
                "tensor {name:?} is 8-bit but the file is not a webguard 8-bit encoder file \
                 (its format metadata is not {FORMAT:?})"
            )));
        }
        let shape = view.shape().to_vec();
        let [rows, cols] = shape[..] else {
            return Err(bad(format!(
                "tensor {name:?} is 8-bit with shape {shape:?}; only matrices are quantised"
            )));
        };
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
        if scales.dtype() != Dtype::F32 {
            return Err(bad(format!(
                "scales {scale_name:?} are {:?}; expected F32",
                scales.dtype()
            )));
        }
        let run = cols / groups;
        let data = view.data();
        let mut values = Vec::with_capacity(rows * cols);
        for (i, s) in scales.data().chunks_exact(4).enumerate() {
            let (r, g) = (i / groups, i % groups);
            let scale = f32::from_le_bytes([s[0], s[1], s[2], s[3]]);
            if !scale.is_finite() || scale < 0.0 {
                return Err(bad(format!("{scale_name:?} row {r} group {g} is {scale}")));
            }
            for &b in &data[i * run..(i + 1) * run] {
                let q = b as i8;
                if q == i8::MIN {
                    return Err(bad(format!(
                        "tensor {name:?} row {r} holds -128 (the format is symmetric: -127..127)"
                    )));
                }
                values.push(f32::from(q) * scale);
            }
        }
        Ok((values, shape))
    }

    shape_checked_tensor!();
}

/// One run of values quantised: `(q, scale)` with `q[i] = round(row[i] / scale)`,
/// `scale = max|row| / 127`.
pub fn quantise_row(row: &[f32]) -> (Vec<i8>, f32) {
    let max = row.iter().fold(0.0f32, |m, v| m.max(v.abs()));
    if max == 0.0 {
        return (vec![0; row.len()], 0.0);
    }
    let scale = max / 127.0;
    let q = row
        .iter()
        .map(|v| (v / scale).round().clamp(-127.0, 127.0) as i8)
        .collect();
    (q, scale)
}

/// The 8-bit file of an f32 (or f16/bf16) safetensors file: 2-D tensors int8 with a scale per
/// `group` consecutive values of a row (per row where `group` does not divide the row), 1-D
/// tensors f32, tensors whose name `keep` refuses left out, `metadata` added to the header
/// (next to `format`). Byte-deterministic: tensors are laid out f32 first then int8, each
/// group sorted by name, and the header's keys are sorted.
pub fn quantise(
    bytes: &[u8],
    keep: impl Fn(&str) -> bool,
    group: usize,
    metadata: &BTreeMap<String, String>,
) -> Result<Vec<u8>> {
    let src = SafetensorsFile::parse(bytes)?;
    let mut f32s: Vec<(String, Vec<usize>, Vec<u8>)> = Vec::new();
    let mut int8s: Vec<(String, Vec<usize>, Vec<u8>)> = Vec::new();
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
            [rows, cols] if rows > 0 && cols > 0 => {
                let run = if group > 0 && cols.is_multiple_of(group) {
                    group
                } else {
                    cols
                };
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
    f32s.sort_by(|a, b| a.0.cmp(&b.0));
    int8s.sort_by(|a, b| a.0.cmp(&b.0));

    let mut meta = metadata.clone();
    meta.insert("format".into(), FORMAT.into());
    let mut header = serde_json::Map::new();
    header.insert("__metadata__".into(), serde_json::to_value(&meta).unwrap());
    let mut offset = 0usize;
    let groups = [("F32", &f32s), ("I8", &int8s)];
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
}
