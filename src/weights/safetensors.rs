//! safetensors files (MiniLM's weights) into burn tensors.
//!
//! Parsing is done by the `safetensors` crate, which validates the header and every offset;
//! this module adds typed lookups, conversion of F16/BF16 to `f32`, and shape checks so that a
//! file with the right names but the wrong shapes is refused before a model uses it.

use half::{bf16, f16};
use safetensors::{Dtype, SafeTensors};

use crate::error::{Error, Result};

/// Defines `tensor`, the shape-checked lookup, in the `impl` of a reader that has
/// `f32_values(name) -> Result<(Vec<f32>, Vec<usize>)>`: [`SafetensorsFile`] and the 8-bit
/// encoder file's `EncoderWeights` (`weights::int8`) share it.
macro_rules! shape_checked_tensor {
    () => {
        /// Tensor `name` on `device`, checked to have exactly `expected` shape.
        pub fn tensor<const D: usize>(
            &self,
            name: &str,
            expected: [usize; D],
            device: &burn::tensor::Device,
        ) -> $crate::error::Result<burn::tensor::Tensor<D>> {
            let (values, shape) = self.f32_values(name)?;
            if shape != expected {
                return Err($crate::error::Error::Safetensors(format!(
                    "tensor {name:?} has shape {shape:?}; the model needs {expected:?}"
                )));
            }
            let data = burn::tensor::TensorData::new(values, expected);
            Ok(burn::tensor::Tensor::from_data(data, device))
        }
    };
}
// For `weights::int8` (the fuzz crate compiles this file without it).
#[allow(unused_imports)]
pub(crate) use shape_checked_tensor;

/// A parsed safetensors file borrowing its bytes.
pub struct SafetensorsFile<'a> {
    inner: SafeTensors<'a>,
    metadata: std::collections::HashMap<String, String>,
}

impl<'a> SafetensorsFile<'a> {
    /// Parses the header of `bytes` (tensor data is read on demand).
    pub fn parse(bytes: &'a [u8]) -> Result<Self> {
        let inner =
            SafeTensors::deserialize(bytes).map_err(|e| Error::Safetensors(e.to_string()))?;
        let (_, header) =
            SafeTensors::read_metadata(bytes).map_err(|e| Error::Safetensors(e.to_string()))?;
        let metadata = header.metadata().clone().unwrap_or_default();
        Ok(Self { inner, metadata })
    }

    /// The header's free-form `__metadata__` strings (empty when there are none).
    pub fn metadata(&self) -> &std::collections::HashMap<String, String> {
        &self.metadata
    }

    /// Metadata `key`; its absence means the file is not `what` ("a webguard filter heads
    /// file"), and the error says so.
    pub fn required_metadata(&self, key: &str, what: &str) -> Result<&str> {
        self.metadata
            .get(key)
            .map(String::as_str)
            .ok_or_else(|| Error::Safetensors(format!("not {what}: metadata {key:?} is missing")))
    }

    /// Checks that the `format` metadata is `format`, for files that must be `what`.
    pub fn expect_format(&self, format: &str, what: &str) -> Result<()> {
        let found = self.required_metadata("format", what)?;
        if found != format {
            return Err(Error::Safetensors(format!(
                "not {what}: format {found:?}, expected {format:?}"
            )));
        }
        Ok(())
    }

    /// Names of all tensors, sorted.
    pub fn names(&self) -> Vec<String> {
        let mut names: Vec<String> = self.inner.names().into_iter().map(str::to_owned).collect();
        names.sort();
        names
    }

    /// Shape of tensor `name`.
    pub fn shape(&self, name: &str) -> Result<Vec<usize>> {
        Ok(self.view(name)?.shape().to_vec())
    }

    fn view(&self, name: &str) -> Result<safetensors::tensor::TensorView<'a>> {
        self.inner
            .tensor(name)
            .map_err(|_| Error::Safetensors(format!("no tensor named {name:?}")))
    }

    /// Tensor `name` as `f32` values (F32, F16 and BF16 are accepted; every value finite) and
    /// its shape.
    pub fn f32_values(&self, name: &str) -> Result<(Vec<f32>, Vec<usize>)> {
        let view = self.view(name)?;
        let data = view.data();
        let values: Vec<f32> = match view.dtype() {
            Dtype::F32 => data
                .chunks_exact(4)
                .map(|b| f32::from_le_bytes([b[0], b[1], b[2], b[3]]))
                .collect(),
            Dtype::F16 => data
                .chunks_exact(2)
                .map(|b| f16::from_le_bytes([b[0], b[1]]).to_f32())
                .collect(),
            Dtype::BF16 => data
                .chunks_exact(2)
                .map(|b| bf16::from_le_bytes([b[0], b[1]]).to_f32())
                .collect(),
            other => {
                return Err(Error::Safetensors(format!(
                    "tensor {name:?} has dtype {other:?}; expected F32, F16 or BF16"
                )));
            }
        };
        // A NaN weight makes every score NaN: the filter would fail closed on every text (and a
        // shared adapters file would look like a lost GPU), so the file is refused instead.
        if let Some(i) = values.iter().position(|v| !v.is_finite()) {
            return Err(Error::Safetensors(format!(
                "tensor {name:?} holds a value that is not finite ({} at index {i})",
                values[i]
            )));
        }
        Ok((values, view.shape().to_vec()))
    }

    /// Tensor `name` as `i8` values (only I8 is accepted) and its shape.
    pub fn i8_values(&self, name: &str) -> Result<(Vec<i8>, Vec<usize>)> {
        let view = self.view(name)?;
        if view.dtype() != Dtype::I8 {
            return Err(Error::Safetensors(format!(
                "tensor {name:?} has dtype {:?}; expected I8",
                view.dtype()
            )));
        }
        let values = view.data().iter().map(|&b| b as i8).collect();
        Ok((values, view.shape().to_vec()))
    }

    /// The dtype of tensor `name`.
    pub fn dtype(&self, name: &str) -> Result<Dtype> {
        Ok(self.view(name)?.dtype())
    }

    shape_checked_tensor!();
}
