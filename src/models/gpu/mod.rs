//! The chat model's GPU engine: SmolLM2 with its weights kept in the GGUF's Q4_1/Q8_0 blocks on
//! the GPU and a decoded token in a few fused dispatches (5 per block, 154 for 30 blocks), with
//! a KV cache allocated once and greedy picks made on the GPU (8 bytes read back per token).
//!
//! Why its own engine rather than burn ops: burn's path widens the weights to f32 (538 MB of
//! GPU memory for a 98 MB file) and runs each token as hundreds of small ops with the whole
//! logits row read back; burn's own quantisation is symmetric only (Q4_1 has a minimum per
//! block) and its 4-bit matmul is reported to exceed WebGPU's workgroup memory for more than
//! one row (burn#4492). So the engine multiplies the file's blocks with kernels of its own
//! ([`kernels`]), on the very wgpu device (and memory pools) burn set up.
//!
//! - [`weights`]: uploading the blocks (u32 words, f16 scales two to a word).
//! - [`kernels`]: the CubeCL kernels.
//! - [`half`]: f16 packed two per u32 word (the scales, the KV cache), converted with bit
//!   operations.
//! - [`engine`]: loading, the decode/prefill step, read-backs and counters.
//!
//! [`crate::models::llama::Llama`] uses it for inference on a wgpu device (prefill and
//! decode through [`crate::generate`], the guard's probe states included: a tapped sequence
//! keeps the residual stream after chosen blocks); with LoRA adapters, states at every
//! position of a burn KV-cache prefix, or training, the burn path runs as before.

#[cfg(feature = "webgpu")]
pub mod engine;
#[cfg(feature = "webgpu")]
pub mod half;
#[cfg(feature = "webgpu")]
pub mod kernels;
#[cfg(feature = "webgpu")]
pub mod weights;

#[cfg(feature = "webgpu")]
pub use engine::{Engine, EngineStats, Sequence};

/// How a [`Sequence`]'s KV cache stores keys and values.
///
/// f16 is the default: it halves the cache (the whole model then fits in 1.5x the GGUF file)
/// and a step attends to its own positions' keys and values in f32 (`kernels::attention`), so
/// the logits after a prompt are the f32 cache's (within 6e-5 of the CPU backend on the
/// reference prompts); only later steps read earlier keys and values rounded to f16, which
/// moved logits by up to 7.5e-3 after 31 greedy steps (the continuations themselves are
/// unchanged). f32 keeps every step within 6e-5, at 47 MB more. Figures and commands:
/// notes/issue-14-gpu.md.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub enum KvPrecision {
    /// f32, 4 bytes a value (94 MB for 2,048 positions of SmolLM2): the CPU backend's values.
    F32,
    /// f16 packed two per u32 word, 2 bytes a value (47 MB), converted with bit operations in
    /// the kernels so that no `shader-f16` is needed (`half`). Rounds each cached key and
    /// value to 11 significant bits.
    #[default]
    F16,
}

impl KvPrecision {
    /// Bytes per cached value.
    pub fn bytes(self) -> usize {
        match self {
            KvPrecision::F32 => 4,
            KvPrecision::F16 => 2,
        }
    }
}

/// How a decoded position's products spread their rows over a workgroup's invocations.
///
/// The engine picks by adapter ([`DecodeLayout::for_adapter`]); prefill always runs one row per
/// invocation (its workgroups already multiply up to 4 positions per weight read).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum DecodeLayout {
    /// One invocation per row, its dot product unrolled at constant input addresses: what CPU
    /// implementations of Vulkan/WebGPU (lavapipe, SwiftShader) run fastest (see `kernels`).
    RowPerInvocation,
    /// [`DecodeLayout::SPLIT`] (8) invocations per row, partial sums added in workgroup memory: 8x
    /// the workgroups and an eighth of each invocation's serial work; and the attention in
    /// `kernels::ATTENTION_GROUPS` (4) position groups. For GPUs: on an NVIDIA H200 it decoded
    /// 1.4-2.7x faster than one row per invocation (notes/issue-14-gpu.md).
    SplitRows,
}

impl DecodeLayout {
    /// [`DecodeLayout::RowPerInvocation`] for a software adapter (wgpu's `Cpu` device type,
    /// or a name naming SwiftShader, lavapipe's llvmpipe or Windows' WARP ("Microsoft Basic
    /// Render Driver"), which browsers report without a type), [`DecodeLayout::SplitRows`]
    /// otherwise.
    pub fn for_adapter(name: &str, device_type: &str) -> Self {
        let name = name.to_ascii_lowercase();
        let software = device_type == "Cpu"
            || [
                "swiftshader",
                "llvmpipe",
                "lavapipe",
                "basic render",
                "software",
            ]
            .iter()
            .any(|s| name.contains(s));
        if software {
            DecodeLayout::RowPerInvocation
        } else {
            DecodeLayout::SplitRows
        }
    }

    /// Invocations per row in [`DecodeLayout::SplitRows`]: 8 rows of 8 invocations per
    /// workgroup of 64 (72 to 192 workgroups for SmolLM2's products).
    pub const SPLIT: usize = 8;

    /// Invocations per row.
    pub fn split(self) -> usize {
        match self {
            DecodeLayout::RowPerInvocation => 1,
            DecodeLayout::SplitRows => Self::SPLIT,
        }
    }
}

/// Most candidates [`Engine::top_candidates`] computes: sampling with a wider top-k, or a
/// nucleus (top-p) that needs more tokens, reads the whole row back instead.
pub const MAX_TOP_CANDIDATES: usize = 64;

/// The most likely next tokens, best first ([`Engine::top_candidates`]).
#[derive(Debug, Clone, PartialEq)]
pub struct Candidates {
    /// Token ids, most likely first (equal logits: the lower id first).
    pub ids: Vec<u32>,
    /// Their logits.
    pub logits: Vec<f32>,
    /// `sum(exp((logit - logits[0]) / temperature))` over the whole vocabulary.
    pub normaliser: f32,
}

#[cfg(not(feature = "webgpu"))]
pub use without_webgpu::{Engine, Sequence};

/// A build without the `webgpu` feature (the threaded wasm module) has no GPU engine: there is
/// no GPU device to load one on, so [`Engine::load`] always says so and no `Engine` is ever
/// made; the other methods exist for the callers' types and answer with the same error.
#[cfg(not(feature = "webgpu"))]
mod without_webgpu {
    use crate::error::{Error, Result};
    use crate::models::llama::LlamaConfig;
    use crate::weights::gguf::Gguf;
    use burn::tensor::Device;

    /// Never made: this build has no GPU engine.
    pub struct Engine {
        _private: (),
    }
    /// A GPU sequence: never made either.
    pub struct Sequence {
        _private: (),
    }

    fn none() -> Error {
        Error::Backend("this build has no WebGPU (the `webgpu` feature is off)".into())
    }

    impl Engine {
        /// Always an error: this build has no GPU backend.
        pub fn load(_gguf: &Gguf<'_>, _config: &LlamaConfig, _device: &Device) -> Result<Self> {
            Err(none())
        }
        /// A sequence (never called: there is no `Engine`).
        pub fn new_sequence(&self) -> Sequence {
            Sequence { _private: () }
        }
        /// The same error as [`Engine::load`].
        pub fn new_tapped_sequence(&self, _layers: &[usize]) -> Result<Sequence> {
            Err(none())
        }
        /// Nothing to set.
        pub fn set_kv_precision(&mut self, _kv: super::KvPrecision) {}
        /// Nothing to set.
        pub fn set_decode_layout(&mut self, _layout: super::DecodeLayout) {}
        /// No positions.
        pub fn max_positions(&self) -> usize {
            0
        }
        /// No weights.
        pub fn weight_bytes(&self) -> usize {
            0
        }
        /// The same error as [`Engine::load`].
        pub async fn states(&self, _seq: &Sequence) -> Result<Vec<f32>> {
            Err(none())
        }
        /// The same error as [`Engine::load`].
        pub fn step(&self, _seq: &mut Sequence, _ids: &[u32]) -> Result<()> {
            Err(none())
        }
        /// The same error as [`Engine::load`].
        pub fn step_averaging(
            &self,
            _seq: &mut Sequence,
            _ids: &[u32],
            _over: std::ops::Range<usize>,
        ) -> Result<()> {
            Err(none())
        }
        /// The same error as [`Engine::load`].
        pub fn prefill_tapped(
            &self,
            _layers: &[usize],
            _prompt: &[u32],
            _positions: &crate::models::llama::Positions,
        ) -> Result<Sequence> {
            Err(none())
        }
        /// The same error as [`Engine::load`].
        pub fn step_picked(&self, _seq: &mut Sequence) -> Result<u32> {
            Err(none())
        }
        /// The same error as [`Engine::load`].
        pub async fn argmax(&self, _seq: &mut Sequence) -> Result<(u32, f32)> {
            Err(none())
        }
        /// The same error as [`Engine::load`].
        pub async fn logits(&self, _seq: &Sequence) -> Result<Vec<f32>> {
            Err(none())
        }
        /// The same error as [`Engine::load`].
        pub async fn top_candidates(
            &self,
            _seq: &Sequence,
            _k: usize,
            _temperature: f32,
        ) -> Result<super::Candidates> {
            Err(none())
        }
    }

    impl Sequence {
        /// None: nothing is ever picked.
        pub fn picked(&self) -> Option<u32> {
            None
        }
    }
}

#[cfg(test)]
mod tests {
    use super::DecodeLayout::{RowPerInvocation, SplitRows};
    use super::*;

    #[test]
    fn software_adapters_decode_one_row_per_invocation_and_gpus_split_rows() {
        // Names as wgpu reports them natively, and as a browser's adapter info gives them.
        let cases = [
            ("llvmpipe (LLVM 15.0.6, 256 bits)", "Cpu", RowPerInvocation),
            ("SwiftShader Device", "Other", RowPerInvocation),
            ("Google SwiftShader", "Other", RowPerInvocation),
            ("Microsoft Basic Render Driver", "Other", RowPerInvocation),
            ("NVIDIA H200", "DiscreteGpu", SplitRows),
            ("Apple M2", "IntegratedGpu", SplitRows),
            (
                "ANGLE (Intel, Intel(R) UHD Graphics 620)",
                "Other",
                SplitRows,
            ),
        ];
        for (name, kind, want) in cases {
            assert_eq!(
                DecodeLayout::for_adapter(name, kind),
                want,
                "{name} ({kind})"
            );
        }
        assert_eq!(RowPerInvocation.split(), 1);
        assert_eq!(SplitRows.split(), 8);
    }
}
