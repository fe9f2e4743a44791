//! The webguard source files the fuzz targets run, compiled here directly: the parsers of
//! every file a page can hand the library (GGUF, safetensors, filter heads and adapters) and
//! the chat template, without burn, wgpu or tokenizers (which would otherwise be rebuilt with
//! coverage instrumentation). `burn` here is `burn-stub/`, for safetensors.rs's one tensor.
//! `alloc` is the counting allocator the GGUF target (and tests/gguf_hostile.rs) bound the
//! parser's peak heap with.
#![allow(dead_code)]

pub mod filter;
pub mod text;
pub mod weights;

#[path = "../../src/error.rs"]
pub mod error;

pub mod alloc;
pub use alloc::{Counting, peak_since, reset_peak};
