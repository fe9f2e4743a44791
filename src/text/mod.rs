//! Text: tokenizers for both models.

pub mod chat_template;
pub mod tokenizer;

pub use tokenizer::{StreamDecoder, Tokenizer, TokenizerKind};
