//! The chat model's GPU engine: SmolLM2 with its weights kept in the GGUF's Q4_1/Q8_0 blocks on
//! the GPU and a decoded token in a few fused dispatches (6 per block, 183 for 30 blocks), with
//! a KV cache allocated once and greedy picks made on the GPU (8 bytes read back per token).
//!
//! Why its own engine rather than burn ops: burn's path widens the weights to f32 (538 MB of
//! GPU memory for a 98 MB file) and runs each token as hundreds of small ops with the whole
//! logits row read back; burn's own quantisation is symmetric only (Q4_1 has a minimum per
//! block) and its 4-bit matmul is reported to exceed WebGPU's workgroup memory for more than
//! one row (burn#4492). So the engine multiplies the file's blocks with kernels of its own
//! ([`kernels`]), on the very wgpu device (and memory pools) burn set up.
//!
//! - [`weights`]: uploading the blocks (u32 words, f32 scales).
//! - [`kernels`]: the CubeCL kernels.
//! - [`half`]: f16 packed two per u32 word (the KV cache), converted with bit operations.
//! - [`engine`]: loading, the decode/prefill step, read-backs and counters.
//!
//! [`crate::models::llama::Llama`] uses it for inference on a wgpu device (prefill and
//! decode through [`crate::generate`], the guard's probe states included: a tapped sequence
//! keeps the residual stream after chosen blocks); with LoRA adapters, states at every
//! position of a burn KV-cache prefix, or training, the burn path runs as before.

pub mod engine;
pub mod half;
pub mod kernels;
pub mod weights;

pub use engine::{Engine, EngineStats, KvPrecision, Sequence};
