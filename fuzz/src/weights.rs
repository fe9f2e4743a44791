//! `src/weights/`: the GGUF and safetensors readers.

#[path = "../../src/weights/gguf.rs"]
pub mod gguf;
#[path = "../../src/weights/quant.rs"]
pub mod quant;
#[path = "../../src/weights/safetensors.rs"]
pub mod safetensors;
