//! Text: tokenizers for both models.

pub mod tokenizer;

pub use tokenizer::{StreamDecoder, Tokenizer, TokenizerKind};
