//! The neural networks, as burn modules on a runtime-chosen device.

pub mod bert;
pub mod dense_cache;
pub mod gelu;
pub mod gpu;
pub mod llama;
pub mod lora;
pub mod packed;
pub mod probe;
