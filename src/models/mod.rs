//! The neural networks, as burn modules on a runtime-chosen device.

pub mod bert;
pub mod dense_cache;
pub mod gelu;
pub mod gpu;
pub mod llama;
pub mod lora;
pub mod packed;
pub mod probe;
pub mod qdot;
#[cfg(not(target_arch = "wasm32"))]
pub mod spin;
