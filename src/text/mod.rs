//! Text: tokenizers for both models, the chat template, and the form judges read.

pub mod chat_template;
pub mod normalize;
pub mod tokenizer;

pub use tokenizer::{StreamDecoder, Tokenizer, TokenizerKind};
