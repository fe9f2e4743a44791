//! A weight matrix for burn's GPU path, widened to f32 on the device only when that path first
//! needs it.
//!
//! Why: on a GPU, generation runs in the quantised engine ([`crate::models::gpu`]); burn's
//! op-by-op path is left for LoRA adapters, per-block states (the guard's probes) and
//! training. Widening every matrix at load put 538 MB of f32 weights on the GPU whether or not
//! that path ever ran; kept in the GGUF's blocks on the host (the file's 98 MB) and widened on
//! first use, a plain chat never allocates them, and a caller of the burn path pays that once,
//! as before.

use std::sync::OnceLock;

use burn::tensor::{Device, Tensor, TensorData};

use crate::models::packed::PackedMatrix;

/// The blocks on the host, and their f32 copy on `device` once asked for.
pub struct DenseCache {
    packed: PackedMatrix,
    device: Device,
    dense: OnceLock<Tensor<2>>,
}

impl DenseCache {
    /// Keeps `packed` for `device`; nothing is allocated there yet.
    pub fn new(packed: PackedMatrix, device: &Device) -> Self {
        DenseCache {
            packed,
            device: device.clone(),
            dense: OnceLock::new(),
        }
    }

    /// The f32 matrix on the device (widened and uploaded on the first call).
    pub fn get(&self) -> &Tensor<2> {
        self.dense.get_or_init(|| {
            Tensor::from_data(
                TensorData::new(self.packed.dequantize(), self.packed.shape()),
                &self.device,
            )
        })
    }

    /// `[rows, cols]`.
    pub fn shape(&self) -> [usize; 2] {
        self.packed.shape()
    }

    /// Bytes of the f32 copy on the device: 0 until [`DenseCache::get`] made it.
    pub fn widened_bytes(&self) -> usize {
        let [rows, cols] = self.shape();
        self.dense.get().map_or(0, |_| rows * cols * 4)
    }

    /// Bytes held: the blocks on the host, plus the f32 copy on the device once made.
    pub fn resident_bytes(&self) -> usize {
        self.packed.resident_bytes() + self.widened_bytes()
    }
}
