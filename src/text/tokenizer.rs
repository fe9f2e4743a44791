//! Tokenizers for both models, built on the HF `tokenizers` crate.
//!
//! - SmolLM2: a byte-level BPE built in code from the GGUF metadata (`tokenizer.ggml.*`): the
//!   vocabulary, the merges, the control tokens (`<|im_start|>`, ...) as special tokens, and
//!   llama.cpp's `smollm` pre-tokenizer (each digit alone, then the GPT-2 byte-level split).
//! - MiniLM: WordPiece from its `tokenizer.json`, with the file's truncation and padding turned
//!   off: long texts are split into windows by the filter, not cut here.
//!
//! [`StreamDecoder`] turns a stream of byte-level token ids into text pieces that are always
//! valid UTF-8, holding back the bytes of a character split across tokens.

use std::collections::HashMap;

use tokenizers::decoders::byte_level::ByteLevel as ByteLevelDecoder;
use tokenizers::models::bpe::BPE;
use tokenizers::pre_tokenizers::byte_level::ByteLevel;
use tokenizers::pre_tokenizers::digits::Digits;
use tokenizers::pre_tokenizers::sequence::Sequence;
use tokenizers::{AddedToken, PreTokenizerWrapper};

use crate::error::{Error, Result};
use crate::weights::gguf::Gguf;

/// GGUF token type of control tokens (llama.cpp's `LLAMA_TOKEN_TYPE_CONTROL`).
const TOKEN_TYPE_CONTROL: i64 = 3;

/// Which kind of tokenizer this is; decides how ids become text.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum TokenizerKind {
    /// GPT-2 style byte-level BPE (SmolLM2).
    ByteLevelBpe,
    /// BERT WordPiece (MiniLM).
    WordPiece,
}

/// A tokenizer for one of webguard's models.
pub struct Tokenizer {
    inner: tokenizers::Tokenizer,
    kind: TokenizerKind,
    /// Whether `encode` adds the model's special tokens (`[CLS]`/`[SEP]` for MiniLM).
    add_special_tokens: bool,
    /// Raw bytes of every token, for byte-level BPE (the inverse of the GPT-2 byte alphabet).
    token_bytes: Vec<Vec<u8>>,
    /// The text of every added (special) token, which `encode` turns into its id wherever it
    /// appears and [`Tokenizer::encode_literal`] never does.
    specials: Vec<String>,
}

/// The texts of a tokenizer's added tokens, longest first.
fn added_token_texts(inner: &tokenizers::Tokenizer) -> Vec<String> {
    let mut texts: Vec<String> = inner
        .get_added_tokens_decoder()
        .into_values()
        .map(|t| t.content)
        .filter(|t| !t.is_empty())
        .collect();
    texts.sort_by_key(|t| std::cmp::Reverse(t.len()));
    texts
}

impl std::fmt::Debug for Tokenizer {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Tokenizer")
            .field("kind", &self.kind)
            .field("vocab_size", &self.vocab_size())
            .finish()
    }
}

fn tok_err(e: impl std::fmt::Display) -> Error {
    Error::Tokenizer(e.to_string())
}

/// GPT-2's map from bytes to printable characters, inverted: character -> byte.
fn byte_level_alphabet() -> HashMap<char, u8> {
    let printable = |b: u8| (b'!'..=b'~').contains(&b) || (0xA1..=0xAC).contains(&b) || b >= 0xAE;
    let mut map = HashMap::with_capacity(256);
    let mut next = 256u32;
    for b in 0..=255u8 {
        let c = if printable(b) {
            char::from(b)
        } else {
            let c = char::from_u32(next).expect("code points 256..324 are valid");
            next += 1;
            c
        };
        map.insert(c, b);
    }
    map
}

impl Tokenizer {
    /// Builds SmolLM2's byte-level BPE from GGUF metadata.
    pub fn from_gguf(gguf: &Gguf<'_>) -> Result<Self> {
        let model = gguf.require_str("tokenizer.ggml.model")?;
        if model != "gpt2" {
            return Err(Error::Tokenizer(format!(
                "tokenizer.ggml.model {model:?} is not supported (only byte-level BPE, \"gpt2\")"
            )));
        }
        let pre = gguf
            .get("tokenizer.ggml.pre")
            .and_then(|v| v.as_str())
            .unwrap_or("default");
        // llama.cpp's pre-tokenizers that are "single digits, then the GPT-2 regex".
        let split_digits = match pre {
            "smollm" | "starcoder" | "refact" | "codeshell" => true,
            "gpt2" => false,
            other => {
                return Err(Error::Tokenizer(format!(
                    "GGUF pre-tokenizer {other:?} is not supported (supported: smollm, starcoder, refact, codeshell, gpt2)"
                )));
            }
        };
        let tokens = gguf.require_strings("tokenizer.ggml.tokens")?;
        let merges = gguf.require_strings("tokenizer.ggml.merges")?;
        let types: Vec<i64> = match gguf.get("tokenizer.ggml.token_type") {
            Some(v) => v
                .as_array()
                .ok_or_else(|| tok_err("tokenizer.ggml.token_type is not an array"))?
                .iter()
                .map(|t| {
                    t.as_i64()
                        .ok_or_else(|| tok_err("token type is not an integer"))
                })
                .collect::<Result<_>>()?,
            None => vec![1; tokens.len()],
        };
        if types.len() != tokens.len() {
            return Err(tok_err(format!(
                "{} token types for {} tokens",
                types.len(),
                tokens.len()
            )));
        }

        let mut vocab = tokenizers::models::bpe::Vocab::default();
        for (id, tok) in tokens.iter().enumerate() {
            if vocab.insert((*tok).to_owned(), id as u32).is_some() {
                return Err(tok_err(format!(
                    "token {tok:?} appears twice in the vocabulary"
                )));
            }
        }
        let merges = merges
            .iter()
            .map(|m| {
                m.split_once(' ')
                    .map(|(a, b)| (a.to_owned(), b.to_owned()))
                    .ok_or_else(|| {
                        tok_err(format!(
                            "merge {m:?} is not two tokens separated by a space"
                        ))
                    })
            })
            .collect::<Result<Vec<_>>>()?;
        let bpe = BPE::builder()
            .vocab_and_merges(vocab, merges)
            .fuse_unk(false)
            .byte_fallback(false)
            .build()
            .map_err(tok_err)?;

        let mut inner = tokenizers::Tokenizer::new(bpe);
        let byte_level = ByteLevel::new(false, true, true);
        let pre_tokenizer: PreTokenizerWrapper = if split_digits {
            Sequence::new(vec![Digits::new(true).into(), byte_level.into()]).into()
        } else {
            byte_level.into()
        };
        inner.with_pre_tokenizer(Some(pre_tokenizer));
        inner.with_decoder(Some(ByteLevelDecoder::default()));
        let special: Vec<AddedToken> = tokens
            .iter()
            .zip(&types)
            .filter(|(_, ty)| **ty == TOKEN_TYPE_CONTROL)
            .map(|(tok, _)| AddedToken::from((*tok).to_owned(), true))
            .collect();
        inner.add_special_tokens(special).map_err(tok_err)?;

        let alphabet = byte_level_alphabet();
        let token_bytes = tokens
            .iter()
            .zip(&types)
            .map(|(tok, ty)| {
                if *ty == TOKEN_TYPE_CONTROL {
                    // Control tokens are literal text, not byte-level encoded.
                    return tok.as_bytes().to_vec();
                }
                // A character outside the byte alphabet cannot occur in a well-formed
                // byte-level vocabulary; keep its UTF-8 so nothing is silently dropped.
                let mut out = Vec::with_capacity(tok.len());
                for c in tok.chars() {
                    match alphabet.get(&c) {
                        Some(&b) => out.push(b),
                        None => out.extend(c.to_string().as_bytes()),
                    }
                }
                out
            })
            .collect();

        Ok(Tokenizer {
            specials: added_token_texts(&inner),
            inner,
            kind: TokenizerKind::ByteLevelBpe,
            add_special_tokens: false,
            token_bytes,
        })
    }

    /// Loads a WordPiece tokenizer (MiniLM) from the bytes of its `tokenizer.json`.
    pub fn from_tokenizer_json(bytes: &[u8]) -> Result<Self> {
        let mut inner = tokenizers::Tokenizer::from_bytes(bytes).map_err(tok_err)?;
        inner.with_truncation(None).map_err(tok_err)?;
        inner.with_padding(None);
        let is_wordpiece = matches!(inner.get_model(), tokenizers::ModelWrapper::WordPiece(_));
        if !is_wordpiece {
            return Err(tok_err("tokenizer.json does not hold a WordPiece model"));
        }
        Ok(Tokenizer {
            specials: added_token_texts(&inner),
            inner,
            kind: TokenizerKind::WordPiece,
            add_special_tokens: true,
            token_bytes: Vec::new(),
        })
    }

    /// The kind of tokenizer.
    pub fn kind(&self) -> TokenizerKind {
        self.kind
    }

    /// Number of ids, added tokens included.
    pub fn vocab_size(&self) -> usize {
        self.inner.get_vocab_size(true)
    }

    /// The id of a token, e.g. `"<|im_end|>"`.
    pub fn token_to_id(&self, token: &str) -> Option<u32> {
        self.inner.token_to_id(token)
    }

    /// Token ids for `text`. Special tokens written in the text (`<|im_start|>`) become their
    /// ids; MiniLM's `[CLS]` and `[SEP]` are added around the text.
    pub fn encode(&self, text: &str) -> Result<Vec<u32>> {
        let encoding = self
            .inner
            .encode_fast(text, self.add_special_tokens)
            .map_err(tok_err)?;
        Ok(encoding.get_ids().to_vec())
    }

    /// Token ids for `text` taken as plain text: a special token's text typed inside it
    /// (`<|im_end|>`, `<|endoftext|>`) is encoded as ordinary characters, never as the control
    /// token, so text from a user can not end a turn or forge one. Text without such strings
    /// encodes exactly as with [`Tokenizer::encode`].
    pub fn encode_literal(&self, text: &str) -> Result<Vec<u32>> {
        // The tokenizer splits text at added tokens before anything else and encodes the
        // pieces independently; cutting every occurrence after its first character leaves
        // pieces that hold no whole special token.
        let mut cuts: Vec<usize> = self
            .specials
            .iter()
            .flat_map(|s| {
                let first = s.chars().next().map_or(0, char::len_utf8);
                text.match_indices(s.as_str()).map(move |(i, _)| i + first)
            })
            .collect();
        if cuts.is_empty() {
            return self.encode(text);
        }
        cuts.sort_unstable();
        cuts.dedup();
        let mut ids = Vec::new();
        let mut start = 0;
        for cut in cuts.into_iter().chain([text.len()]) {
            if cut > start {
                let piece = &text[start..cut];
                let encoding = self.inner.encode_fast(piece, false).map_err(tok_err)?;
                ids.extend_from_slice(encoding.get_ids());
            }
            start = cut;
        }
        if self.add_special_tokens {
            // WordPiece (MiniLM): the [CLS] ... [SEP] frame `encode` adds.
            let frame = |t: &str| {
                self.token_to_id(t)
                    .ok_or_else(|| tok_err(format!("no {t} token")))
            };
            ids.insert(0, frame("[CLS]")?);
            ids.push(frame("[SEP]")?);
        }
        Ok(ids)
    }

    /// Text for `ids`, special tokens included. Ids outside the vocabulary are an error.
    pub fn decode(&self, ids: &[u32]) -> Result<String> {
        self.check_ids(ids)?;
        self.inner.decode(ids, false).map_err(tok_err)
    }

    fn check_ids(&self, ids: &[u32]) -> Result<()> {
        let n = self.vocab_size();
        match ids.iter().find(|&&id| id as usize >= n) {
            Some(id) => Err(Error::InvalidInput(format!(
                "token id {id} is outside the vocabulary of {n}"
            ))),
            None => Ok(()),
        }
    }

    /// A decoder for streaming generation (byte-level BPE only).
    pub fn stream_decoder(&self) -> Result<StreamDecoder<'_>> {
        if self.kind != TokenizerKind::ByteLevelBpe {
            return Err(tok_err("streaming decode needs a byte-level BPE tokenizer"));
        }
        Ok(StreamDecoder {
            tokenizer: self,
            pending: Vec::new(),
        })
    }
}

/// Turns token ids into text pieces one id at a time; every piece is valid UTF-8 and the
/// pieces concatenate to exactly what [`Tokenizer::decode`] gives for the whole sequence.
#[derive(Debug)]
pub struct StreamDecoder<'t> {
    tokenizer: &'t Tokenizer,
    /// Bytes of a character that is not complete yet.
    pending: Vec<u8>,
}

impl StreamDecoder<'_> {
    /// Adds one token; returns the text that is complete now (may be empty).
    pub fn push(&mut self, id: u32) -> Result<String> {
        self.tokenizer.check_ids(&[id])?;
        self.pending
            .extend_from_slice(&self.tokenizer.token_bytes[id as usize]);
        // Emit everything that is complete; an invalid sequence (not merely an unfinished
        // one) becomes U+FFFD exactly as `String::from_utf8_lossy` does for the whole text.
        let mut text = String::new();
        loop {
            match std::str::from_utf8(&self.pending) {
                Ok(s) => {
                    text.push_str(s);
                    self.pending.clear();
                    return Ok(text);
                }
                Err(e) => {
                    let valid = e.valid_up_to();
                    text.push_str(std::str::from_utf8(&self.pending[..valid]).unwrap_or_default());
                    match e.error_len() {
                        Some(bad) => {
                            text.push(char::REPLACEMENT_CHARACTER);
                            self.pending.drain(..valid + bad);
                        }
                        None => {
                            self.pending.drain(..valid);
                            return Ok(text);
                        }
                    }
                }
            }
        }
    }

    /// Ends the stream; bytes of an unfinished character come out as U+FFFD.
    pub fn finish(&mut self) -> String {
        let text = String::from_utf8_lossy(&self.pending).into_owned();
        self.pending.clear();
        text
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn alphabet_is_a_bijection() {
        let map = byte_level_alphabet();
        assert_eq!(map.len(), 256);
        let mut bytes: Vec<u8> = map.values().copied().collect();
        bytes.sort();
        bytes.dedup();
        assert_eq!(bytes.len(), 256);
        assert_eq!(map[&'Ġ'], b' ');
        assert_eq!(map[&'Ċ'], b'\n');
        assert_eq!(map[&'a'], b'a');
    }
}
