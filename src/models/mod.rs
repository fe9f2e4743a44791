//! The neural networks, as burn modules on a runtime-chosen device.

pub mod bert;
pub(crate) mod column_product;
// Natively (burn-flex's buffers through burn's `extension` feature; rayon).
#[cfg(not(target_arch = "wasm32"))]
pub mod cpu_linear;
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
