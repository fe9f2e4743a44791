//! Text: tokenizers for both models, the chat template, the form judges read, whether a text
//! is in a language the judges cannot read, and whether an answer refuses.

pub mod chat_template;
pub mod language;
pub mod normalize;
pub mod refusal;
pub mod tokenizer;

pub use tokenizer::{StreamDecoder, Tokenizer, TokenizerKind};

/// Whether `pending` (text not judged yet) ends a sentence, or is long enough to judge anyway:
/// where the guard screens a streaming answer, and where the answer probe reads its states.
pub fn sentence_done(pending: &str) -> bool {
    const LONGEST_UNSCREENED: usize = 240;
    pending.len() >= LONGEST_UNSCREENED
        || pending
            .trim_end_matches([' ', '"', '\'', ')'])
            .ends_with(['.', '!', '?', '\n', ':', ';'])
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn sentences_end_at_punctuation_or_length() {
        assert!(sentence_done("The capital is Paris."));
        assert!(sentence_done("Really?\" "));
        assert!(!sentence_done("The capital is"));
        assert!(sentence_done(&"word ".repeat(60)));
    }
}
