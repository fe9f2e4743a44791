//! The GGUF's quantised blocks uploaded as they are: per matrix one buffer of u32 words (the
//! quants) and one or two of f32 (scales, and Q4_1's minimums), each stored column-major
//! (word `w` of every row, then word `w + 1`): the products run one row per invocation, so
//! neighbouring invocations then read neighbouring words (coalesced), where row-major blocks
//! made every load a gather.
//!
//! Why this layout: WebGPU storage buffers are arrays of 4-byte words, so the quants are
//! regrouped word-aligned (a Q8_0 block is 34 bytes in the file: 2 of scale, 32 of quants) and
//! the f16 scales are widened to f32 here, once, so no kernel needs `shader-f16`. The cost is
//! 4 bytes per 32 values over the file (SmolLM2: 111.5 MB on the GPU for a 98 MB file, 1.14x).

use cubecl::prelude::*;
use cubecl::server::Handle;
use half::f16;

use crate::error::{Error, Result};
use crate::weights::gguf::Gguf;
use crate::weights::quant::GgmlType;

use super::kernels::BLOCK;

/// Which blocks a [`QMatrix`] holds.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Quant {
    /// 4 words of nibbles per block, a scale and a minimum.
    Q4_1,
    /// 8 words of signed bytes per block, a scale.
    Q8_0,
}

/// A `[rows, cols]` row-major matrix in its GGUF blocks, on the GPU.
pub struct QMatrix {
    /// The block type.
    pub quant: Quant,
    /// Rows.
    pub rows: usize,
    /// Values per row (whole blocks).
    pub cols: usize,
    /// The quants, 4 (Q4_1) or 8 (Q8_0) words per block.
    pub words: Handle,
    /// One f32 scale per block.
    pub scales: Handle,
    /// Q4_1's minimums (for Q8_0: the scales again, never read).
    pub mins: Handle,
    /// Bytes on the GPU.
    pub bytes: usize,
}

/// The host-side regrouping of a matrix's blocks (several matrices can be stacked by rows
/// before upload: Q, K and V become one `[q + 2·kv, dim]` matrix, one dispatch).
#[derive(Default)]
pub struct HostBlocks {
    quant: Option<Quant>,
    rows: usize,
    cols: usize,
    words: Vec<u32>,
    scales: Vec<f32>,
    mins: Vec<f32>,
}

fn f16_at(b: &[u8], at: usize) -> f32 {
    f16::from_le_bytes([b[at], b[at + 1]]).to_f32()
}

fn word(b: &[u8]) -> u32 {
    u32::from_le_bytes([b[0], b[1], b[2], b[3]])
}

impl HostBlocks {
    /// Appends GGUF tensor `name` (`[rows, cols]`) below what is held. Errors for another
    /// shape, a type other than Q4_1/Q8_0, or a type differing from what is held.
    pub fn push(&mut self, gguf: &Gguf<'_>, name: &str, shape: [usize; 2]) -> Result<()> {
        let info = gguf.tensor_info(name)?;
        if info.shape() != shape {
            return Err(Error::ModelFile(format!(
                "GGUF tensor {name} has shape {:?}; the model needs {shape:?}",
                info.shape()
            )));
        }
        let quant = match info.ggml_type {
            GgmlType::Q4_1 => Quant::Q4_1,
            GgmlType::Q8_0 => Quant::Q8_0,
            other => {
                return Err(Error::Backend(format!(
                    "the GPU engine multiplies Q4_1 and Q8_0 blocks; {name} is {other:?}"
                )));
            }
        };
        if self.quant.is_some_and(|q| q != quant) || (self.rows > 0 && self.cols != shape[1]) {
            return Err(Error::Backend(format!(
                "{name} cannot be stacked with the matrices before it (type or width differs)"
            )));
        }
        if !shape[1].is_multiple_of(BLOCK) {
            return Err(Error::ModelFile(format!(
                "{name}: rows of {} values are not whole blocks of {BLOCK}",
                shape[1]
            )));
        }
        let bytes = gguf.tensor_bytes(info);
        match quant {
            Quant::Q4_1 => {
                for b in bytes.chunks_exact(20) {
                    self.scales.push(f16_at(b, 0));
                    self.mins.push(f16_at(b, 2));
                    self.words.extend(b[4..20].chunks_exact(4).map(word));
                }
            }
            Quant::Q8_0 => {
                for b in bytes.chunks_exact(34) {
                    self.scales.push(f16_at(b, 0));
                    self.words.extend(b[2..34].chunks_exact(4).map(word));
                }
            }
        }
        self.quant = Some(quant);
        self.rows += shape[0];
        self.cols = shape[1];
        Ok(())
    }

    /// Uploads what is held.
    pub fn upload(self, client: &Client) -> Result<QMatrix> {
        let quant = self
            .quant
            .ok_or_else(|| Error::Backend("no matrix to upload".into()))?;
        // Column-major by word and by block: invocation `r` of a product reads row `r`, so
        // neighbouring invocations read neighbouring words.
        let rows = self.rows;
        let words = client.create_from_slice(u32::as_bytes(&transpose(&self.words, rows)));
        let scales = client.create_from_slice(f32::as_bytes(&transpose(&self.scales, rows)));
        let (mins, min_bytes) = match quant {
            Quant::Q4_1 => (
                client.create_from_slice(f32::as_bytes(&transpose(&self.mins, rows))),
                self.mins.len() * 4,
            ),
            Quant::Q8_0 => (scales.clone(), 0),
        };
        Ok(QMatrix {
            quant,
            rows: self.rows,
            cols: self.cols,
            words,
            scales,
            mins,
            bytes: self.words.len() * 4 + self.scales.len() * 4 + min_bytes,
        })
    }
}

/// `values` (`rows` rows, row-major) column-major.
fn transpose<T: Copy>(values: &[T], rows: usize) -> Vec<T> {
    let per_row = values.len() / rows;
    (0..per_row)
        .flat_map(|c| (0..rows).map(move |r| values[r * per_row + c]))
        .collect()
}

/// GGUF tensor `name` (`[rows, cols]`), uploaded.
pub fn upload(client: &Client, gguf: &Gguf<'_>, name: &str, shape: [usize; 2]) -> Result<QMatrix> {
    let mut blocks = HostBlocks::default();
    blocks.push(gguf, name, shape)?;
    blocks.upload(client)
}

/// An f32 vector (a norm's weights), uploaded.
pub fn upload_f32(client: &Client, gguf: &Gguf<'_>, name: &str, len: usize) -> Result<Handle> {
    let info = gguf.tensor_info(name)?;
    if info.shape() != [len] {
        return Err(Error::ModelFile(format!(
            "GGUF tensor {name} has shape {:?}; the model needs [{len}]",
            info.shape()
        )));
    }
    Ok(client.create_from_slice(f32::as_bytes(&gguf.dequantize(name)?)))
}
