//! The GGUF's quantised blocks uploaded as they are: per matrix one buffer of u32 words (the
//! quants) and one of the blocks' f16 scales (and Q4_1's minimums) packed two to a u32 word,
//! each stored column-major: the quants by groups of 4 words (16 bytes: a Q4_1 block, half a
//! Q8_0 block; group `g` of every row, then group `g + 1`), the scales by word. The products
//! run one row per invocation and read a group per load, so neighbouring invocations read
//! neighbouring groups (coalesced), where row-major blocks made every load a gather.
//!
//! Why this layout: WebGPU storage buffers are arrays of 4-byte words, so the quants are
//! regrouped word-aligned (a Q8_0 block is 34 bytes in the file: 2 of scale, 32 of quants).
//! The scales keep the file's f16 bits, two per word (a Q4_1 block's scale in the low half and
//! its minimum in the high half; a Q8_0 row's blocks `2j` and `2j + 1` in one word), and the
//! kernels widen them with integer bit operations ([`super::half::unpack`]), so no kernel
//! needs `shader-f16` and the values multiplied are the file's, exactly (widening f16 to f32
//! loses nothing). SmolLM2: 96,576,768 bytes on the GPU, exactly the file's tensor data (its
//! 98.4 MB less 1.8 MB of metadata and tokenizer); widening the scales to f32 at load, as the
//! engine first did, took 111.6 MB.

use cubecl::prelude::*;
use cubecl::server::Handle;

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
    /// f16 bits two per word: Q4_1, one word per block (scale low, minimum high); Q8_0, one
    /// word per pair of blocks of a row (block `2j` low, `2j + 1` high; a last odd block's
    /// high half is 0).
    pub scales: Handle,
    /// Words in `scales`.
    pub scale_words: usize,
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
    /// One word per block (Q4_1) or per pair of a row's blocks (Q8_0), as in [`QMatrix`].
    scales: Vec<u32>,
}

/// The f16 at `b[at..at + 2]` (little-endian), its bits unchanged.
fn f16_bits(b: &[u8], at: usize) -> u32 {
    u32::from(u16::from_le_bytes([b[at], b[at + 1]]))
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
                    self.scales.push(f16_bits(b, 0) | (f16_bits(b, 2) << 16));
                    self.words.extend(b[4..20].chunks_exact(4).map(word));
                }
            }
            Quant::Q8_0 => {
                // Pairs of blocks within a row (a row never shares a word with the next).
                for row in bytes.chunks_exact(34 * shape[1] / BLOCK) {
                    for pair in row.chunks(68) {
                        let hi = if pair.len() == 68 {
                            f16_bits(pair, 34)
                        } else {
                            0
                        };
                        self.scales.push(f16_bits(pair, 0) | (hi << 16));
                    }
                    for b in row.chunks_exact(34) {
                        self.words.extend(b[2..34].chunks_exact(4).map(word));
                    }
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
        // Column-major by 4-word group (a Q4_1 block, half a Q8_0 block) and by scale word:
        // invocation `r` of a product reads row `r` a group at a time (one 16-byte load), so
        // neighbouring invocations read neighbouring groups.
        let rows = self.rows;
        let words = client.create_from_slice(u32::as_bytes(&transpose(&self.words, rows, 4)));
        let scales = client.create_from_slice(u32::as_bytes(&transpose(&self.scales, rows, 1)));
        Ok(QMatrix {
            quant,
            rows: self.rows,
            cols: self.cols,
            words,
            scales,
            scale_words: self.scales.len(),
            bytes: (self.words.len() + self.scales.len()) * 4,
        })
    }
}

/// `values` (`rows` rows, row-major) column-major by groups of `group` values: group `g` of
/// every row, then group `g + 1` (each group's values stay in order).
fn transpose<T: Copy>(values: &[T], rows: usize, group: usize) -> Vec<T> {
    let per_row = values.len() / rows;
    (0..per_row / group)
        .flat_map(|g| {
            (0..rows).flat_map(move |r| {
                let at = r * per_row + g * group;
                values[at..at + group].iter().copied()
            })
        })
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
