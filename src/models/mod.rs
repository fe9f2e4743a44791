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
// Natively, and in the threaded wasm build (its helpers are Web Workers).
#[cfg(any(not(target_arch = "wasm32"), target_feature = "atomics"))]
pub mod spin;
