//! Both tokenizers against PyPI's `tokenizers` (tests/reference/tokens_*.json, made by
//! scripts/make-references.py) on a corpus of 340 strings: ASCII, accents, CJK, emoji, ZWJ
//! sequences, code, runs of spaces and newlines, and the chat special tokens.

mod common;

use webguard::text::Tokenizer;
use webguard::weights::Gguf;

fn corpus() -> Vec<String> {
    serde_json::from_value(common::reference("tokenizer_corpus.json")).unwrap()
}

struct Row {
    ids: Vec<u32>,
    decoded: String,
}

fn rows(name: &str) -> Vec<Row> {
    common::reference(name)
        .as_array()
        .unwrap()
        .iter()
        .map(|r| Row {
            ids: serde_json::from_value(r["ids"].clone()).unwrap(),
            decoded: r["decoded"].as_str().unwrap().to_owned(),
        })
        .collect()
}

fn smollm2() -> Tokenizer {
    let bytes = common::read_model(webguard::SMOLLM2_GGUF);
    Tokenizer::from_gguf(&Gguf::parse(&bytes).unwrap()).unwrap()
}

fn minilm() -> Tokenizer {
    let bytes = common::read_model(&format!("{}/tokenizer.json", webguard::MINILM_DIR));
    Tokenizer::from_tokenizer_json(&bytes).unwrap()
}

#[test]
fn corpus_is_large_and_varied() {
    let corpus = corpus();
    assert!(corpus.len() >= 300);
    let has = |f: &dyn Fn(&str) -> bool| corpus.iter().any(|s| f(s));
    assert!(has(&|s| s.contains('\u{200d}')), "ZWJ sequences");
    assert!(
        has(&|s| s.chars().any(|c| ('\u{4e00}'..='\u{9fff}').contains(&c))),
        "CJK"
    );
    assert!(has(&|s| s.contains("<|im_start|>")), "chat special tokens");
    assert!(
        has(&|s| s.contains("   ")) && has(&|s| s.contains("\n\n")),
        "whitespace runs"
    );
}

/// Asserts `tok`'s vocabulary size, and its ids and decoding of every corpus text against the
/// Python reference `file`; gives each text with its decoding.
fn assert_matches_python(tok: &Tokenizer, vocab_size: usize, file: &str) -> Vec<(String, String)> {
    assert_eq!(tok.vocab_size(), vocab_size);
    let mut decodings = Vec::new();
    for (text, row) in corpus().into_iter().zip(rows(file)) {
        let ids = tok.encode(&text).unwrap();
        assert_eq!(ids, row.ids, "ids of {text:?}");
        let decoded = tok.decode(&ids).unwrap();
        assert_eq!(decoded, row.decoded, "decode of {text:?}");
        decodings.push((text, decoded));
    }
    decodings
}

#[test]
fn smollm2_ids_match_python_tokenizers() {
    for (text, decoded) in assert_matches_python(&smollm2(), 49152, "tokens_smollm2.json") {
        // Byte-level BPE loses nothing.
        assert_eq!(decoded, text, "round trip of {text:?}");
    }
}

#[test]
fn smollm2_chat_tokens_are_single_ids() {
    let tok = smollm2();
    assert_eq!(tok.token_to_id("<|im_start|>"), Some(1));
    assert_eq!(tok.token_to_id("<|im_end|>"), Some(2));
    let ids = tok.encode("<|im_start|>user\nHi<|im_end|>").unwrap();
    assert_eq!(ids.first(), Some(&1));
    assert_eq!(ids.last(), Some(&2));
}

#[test]
fn minilm_ids_match_python_tokenizers() {
    assert_matches_python(&minilm(), 30522, "tokens_minilm.json");
}

#[test]
fn stream_decoding_equals_whole_decoding_and_splits_characters_safely() {
    let tok = smollm2();
    let mut split_characters = 0;
    for row in rows("tokens_smollm2.json") {
        let mut stream = tok.stream_decoder().unwrap();
        let mut text = String::new();
        for &id in &row.ids {
            let piece = stream.push(id).unwrap();
            let whole = tok.decode(&[id]).unwrap();
            if piece != whole {
                split_characters += 1; // this token ended inside a character
            }
            text.push_str(&piece);
        }
        text.push_str(&stream.finish());
        assert_eq!(text, row.decoded);
    }
    assert!(
        split_characters > 0,
        "the corpus must contain characters split across tokens"
    );
}

#[test]
fn bad_ids_and_huge_text() {
    let tok = smollm2();
    let err = tok.decode(&[5, 49152]).unwrap_err().to_string();
    assert!(err.contains("49152"), "{err}");
    assert!(tok.stream_decoder().unwrap().push(u32::MAX).is_err());
    assert!(minilm().stream_decoder().is_err());
    assert_eq!(tok.encode("").unwrap(), Vec::<u32>::new());
    // 1 MB of text tokenizes (it is the model's job to window it, not the tokenizer's).
    let big = "word ".repeat(200_000);
    let ids = tok.encode(&big).unwrap();
    // "word", then " word" 199,999 times, then the trailing space alone.
    assert_eq!(ids.len(), 200_001);
}

#[test]
fn broken_tokenizer_files_are_errors() {
    assert!(Tokenizer::from_tokenizer_json(b"{not json").is_err());
    assert!(Tokenizer::from_tokenizer_json(b"{}").is_err());
}
