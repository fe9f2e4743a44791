//! Model files: GGUF (SmolLM2) and safetensors (MiniLM), parsed with bounds checks.

pub mod gguf;
pub mod int8;
#[cfg(not(target_arch = "wasm32"))]
pub mod mapped;
pub mod quant;
pub mod safetensors;

pub use gguf::{Array, Gguf, GgufError, Strings, TensorInfo, Value, ValueType};
pub use quant::GgmlType;
