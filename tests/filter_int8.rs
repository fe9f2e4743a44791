//! The filter encoder in 8 bits (`webguard::weights::int8`, what the browser downloads): the
//! file is byte-deterministic and is the one the worker's manifest pins; the filter's scores
//! with it stay within `SCORE_TOLERANCE` of the f32 filter's on the reference texts (the f32
//! filter itself is checked against PyTorch in tests/filter_reference.rs); odd or corrupt
//! 8-bit files are refused with errors that say what is wrong.

mod common;

use burn::tensor::Device;
use webguard::Filter;
use webguard::error::ErrorKind;
use webguard::models::bert::{Bert, BertConfig, quantise_weights};
use webguard::weights::int8::{EncoderWeights, FORMAT, FORMAT_V1};

/// Largest |score(8-bit) - score(f32)| allowed on the reference texts. Measured worst 0.036
/// since the word-embedding table is 4-bit (7.3e-3 when all was 8-bit): text 17's `harmful`,
/// 0.600 -> 0.564, where the sigmoid is steepest and far from its 0.954 threshold; the mean is
/// 0.004, and the verdicts must be the same (notes/issue-13-filter-size.md).
const SCORE_TOLERANCE: f64 = 0.04;
/// Smallest cosine allowed between the 8-bit encoder's embeddings and sentence-transformers'
/// (the f32 encoder's test asks 0.9999). Measured worst 0.9968 with the 4-bit word embeddings
/// (0.99921 when all was 8-bit).
const MIN_COSINE: f64 = 0.996;
/// The filter's first-visit download budget (issue 13), bytes: the encoder, the heads,
/// tokenizer.json and config.json together.
const BUDGET: usize = 25_000_000;

fn f32_file() -> Vec<u8> {
    common::read_model(&format!("{}/model.safetensors", webguard::MINILM_DIR))
}

fn minilm(name: &str) -> Vec<u8> {
    common::read_model(&format!("{}/{name}", webguard::MINILM_DIR))
}

/// `MODEL_INT8` in pkg/guard-worker.js.
fn manifest_hash() -> String {
    let worker =
        std::fs::read_to_string(webguard::source_checkout().join("pkg/guard-worker.js")).unwrap();
    let at = worker
        .find("const MODEL_INT8 = \"")
        .expect("pkg/guard-worker.js has MODEL_INT8");
    worker[at + 20..at + 84].to_owned()
}

#[test]
fn the_8bit_file_is_deterministic_small_and_in_the_manifest() {
    let f32 = f32_file();
    let a = quantise_weights(&f32).unwrap();
    let b = quantise_weights(&f32).unwrap();
    assert!(a == b, "two runs gave different bytes");
    let heads = std::fs::read(Filter::default_heads_path()).unwrap().len();
    let (tok, config) = (minilm("tokenizer.json").len(), minilm("config.json").len());
    let download = a.len() + heads + tok + config;
    assert!(
        download <= BUDGET,
        "{download} bytes: encoder {} + heads {heads} + tokenizer.json {tok} + config.json {config}",
        a.len()
    );
    assert_eq!(
        common::sha256(&a),
        manifest_hash(),
        "the 8-bit file changed: update MODEL_INT8 in pkg/guard-worker.js"
    );
    let w = EncoderWeights::parse(&a).unwrap();
    assert!(w.is_int8());
    assert_eq!(w.metadata()["source_sha256"], common::sha256(&f32));
    eprintln!(
        "8-bit encoder: {} bytes ({:.1}% of {}); the filter's first visit: {download} bytes",
        a.len(),
        100.0 * a.len() as f64 / f32.len() as f64,
        f32.len()
    );
}

#[test]
fn the_8bit_filter_scores_within_tolerance_of_the_f32_filter() {
    let reference = common::reference("filter_scores.json");
    let texts: Vec<String> = serde_json::from_value(reference["texts"].clone()).unwrap();
    let refs: Vec<&str> = texts.iter().map(String::as_str).collect();
    let heads = std::fs::read(Filter::default_heads_path()).unwrap();
    let (tok, config) = (minilm("tokenizer.json"), minilm("config.json"));
    let device = Device::flex();
    let f32 = f32_file();
    let q8 = quantise_weights(&f32).unwrap();
    let scores = |weights: &[u8]| {
        let filter = Filter::new(&tok, &config, weights, &heads, &device).unwrap();
        (
            pollster::block_on(filter.scores(&refs)).unwrap(),
            filter.labels().to_vec(),
            filter.thresholds().to_vec(),
        )
    };
    let (want, labels, thresholds) = scores(&f32);
    let (got, _, _) = scores(&q8);
    let mut worst = (0.0f64, String::new());
    for (i, (g, w)) in got.iter().zip(&want).enumerate() {
        for ((label, t), (a, b)) in labels.iter().zip(&thresholds).zip(g.iter().zip(w)) {
            // The same verdict at the shipped thresholds, and a score close to the f32 one.
            assert_eq!(
                a >= t,
                b >= t,
                "text {i} {label}: 8-bit {a} vs f32 {b}, threshold {t}"
            );
            let diff = f64::from(a - b).abs();
            if diff > worst.0 {
                worst = (diff, format!("text {i} {label}: {a} vs f32 {b}"));
            }
            assert!(
                diff <= SCORE_TOLERANCE,
                "text {i} {label}: 8-bit {a} vs f32 {b}"
            );
        }
    }
    eprintln!(
        "worst |8-bit - f32| over {} texts x {} labels: {:.2e} ({})",
        texts.len(),
        labels.len(),
        worst.0,
        worst.1
    );
}

#[test]
fn the_8bit_encoder_embeds_like_sentence_transformers() {
    // The encoder alone against the f32 PyTorch embeddings of tests/bert_reference.rs
    // (which asks 0.9999 of the f32 encoder).
    let reference = common::reference("embeddings_minilm.json");
    let ids: Vec<Vec<u32>> = serde_json::from_value(reference["token_ids"].clone()).unwrap();
    let want: Vec<Vec<f64>> = serde_json::from_value(reference["embeddings"].clone()).unwrap();
    let device = Device::flex();
    let config = BertConfig::from_json(&minilm("config.json")).unwrap();
    let bert = Bert::load(&config, &quantise_weights(&f32_file()).unwrap(), &device).unwrap();
    let got = bert.embed_sequences(&ids, &device).unwrap();
    let got: Vec<f32> = got.into_data().try_to_vec().unwrap();
    let mut worst = 1.0f64;
    for (g, w) in got.chunks_exact(want[0].len()).zip(&want) {
        let dot: f64 = g.iter().zip(w).map(|(a, b)| f64::from(*a) * b).sum();
        let na = g.iter().map(|a| f64::from(*a).powi(2)).sum::<f64>().sqrt();
        let nb = w.iter().map(|b| b.powi(2)).sum::<f64>().sqrt();
        worst = worst.min(dot / (na * nb));
    }
    eprintln!("worst cosine, 8-bit encoder vs sentence-transformers: {worst:.6}");
    assert!(worst >= MIN_COSINE, "{worst}");
}

/// Splits a safetensors file into its header (JSON) and data.
fn split(bytes: &[u8]) -> (serde_json::Value, &[u8]) {
    let n = u64::from_le_bytes(bytes[..8].try_into().unwrap()) as usize;
    (
        serde_json::from_slice(&bytes[8..8 + n]).unwrap(),
        &bytes[8 + n..],
    )
}

fn join(header: &serde_json::Value, data: &[u8]) -> Vec<u8> {
    let json = serde_json::to_vec(header).unwrap();
    let mut out = (json.len() as u64).to_le_bytes().to_vec();
    out.extend_from_slice(&json);
    out.extend_from_slice(data);
    out
}

/// The 8-bit file with its header edited by `edit` and its data by `poke(header, data)`.
fn variant(
    q8: &[u8],
    edit: impl Fn(&mut serde_json::Value),
    poke: impl Fn(&serde_json::Value, &mut Vec<u8>),
) -> Vec<u8> {
    let (mut header, data) = split(q8);
    let mut data = data.to_vec();
    poke(&header, &mut data);
    edit(&mut header);
    join(&header, &data)
}

fn offset(header: &serde_json::Value, name: &str) -> usize {
    header[name]["data_offsets"][0].as_u64().unwrap() as usize
}

#[test]
fn odd_8bit_files_are_refused_with_clear_errors() {
    let (tok, config) = (minilm("tokenizer.json"), minilm("config.json"));
    let heads = std::fs::read(Filter::default_heads_path()).unwrap();
    let device = Device::flex();
    let q8 = quantise_weights(&f32_file()).unwrap();
    let word = webguard::models::bert::WORD_EMBEDDINGS;
    let query = "encoder.layer.0.attention.self.query.weight";
    let none = |_: &serde_json::Value, _: &mut Vec<u8>| {};
    let keep = |_: &mut serde_json::Value| {};
    let cases: Vec<(&str, Vec<u8>, &str)> = vec![
        ("truncated", q8[..q8.len() - 1000].to_vec(), "safetensors: "),
        (
            "a later format version",
            variant(
                &q8,
                |h| h["__metadata__"]["format"] = "webguard-int8-rows/3".into(),
                none,
            ),
            "format \"webguard-int8-rows/3\" is not supported",
        ),
        (
            "8-bit tensors without the format",
            variant(
                &q8,
                |h| {
                    h["__metadata__"].as_object_mut().unwrap().remove("format");
                },
                none,
            ),
            "-bit but the file is not a webguard 8-bit encoder file",
        ),
        (
            "scales missing",
            variant(
                &q8,
                |h| {
                    let o = h.as_object_mut().unwrap();
                    let v = o.remove(&format!("{word}.scale")).unwrap();
                    o.insert(format!("{word}.scales"), v);
                },
                none,
            ),
            "has no scales",
        ),
        (
            "scales of the wrong shape",
            variant(
                &q8,
                |h| h[format!("{word}.scale")]["shape"] = serde_json::json!([15261, 48]),
                none,
            ),
            "expected [30522, groups] with groups dividing 384",
        ),
        (
            "a NaN scale",
            variant(&q8, keep, |h, d| {
                let at = offset(h, &format!("{query}.scale")) + 4 * 7;
                d[at..at + 4].copy_from_slice(&f32::NAN.to_le_bytes());
            }),
            "row 1 group 1 is NaN",
        ),
        (
            "a NaN 4-bit scale",
            variant(&q8, keep, |h, d| {
                let at = offset(h, &format!("{word}.scale")) + 2 * 25;
                d[at..at + 2].copy_from_slice(&half::f16::NAN.to_le_bytes());
            }),
            "row 1 group 1 is NaN",
        ),
        (
            "a value outside the symmetric range",
            variant(&q8, keep, |h, d| d[offset(h, query) + 3] = 0x80),
            "holds -128",
        ),
        (
            "a 4-bit value outside the symmetric range",
            variant(&q8, keep, |h, d| d[offset(h, word) + 3] = 0x80),
            "holds the 4-bit -8",
        ),
        (
            "4-bit tensors in a version 1 file",
            variant(
                &q8,
                |h| h["__metadata__"]["format"] = FORMAT_V1.into(),
                none,
            ),
            "is 4-bit (U8), which format \"webguard-int8-rows/1\" does not have",
        ),
        (
            "4-bit scales stored as F32",
            variant(
                &q8,
                |h| {
                    let s = &mut h[format!("{word}.scale")];
                    s["dtype"] = "F32".into();
                    s["shape"] = serde_json::json!([30522, 12]);
                },
                none,
            ),
            "are F32; expected F16",
        ),
        (
            "a 3-D 8-bit tensor",
            variant(
                &q8,
                |h| h[query]["shape"] = serde_json::json!([384, 2, 192]),
                none,
            ),
            "only matrices are quantised",
        ),
        (
            "a 3-D 4-bit tensor",
            variant(
                &q8,
                |h| h[word]["shape"] = serde_json::json!([30522, 2, 96]),
                none,
            ),
            "only matrices are quantised",
        ),
    ];
    for (what, bytes, want) in cases {
        let err = Filter::new(&tok, &config, &bytes, &heads, &device)
            .err()
            .unwrap_or_else(|| panic!("{what}: loaded"));
        assert_eq!(err.kind(), ErrorKind::ModelFile, "{what}: {err}");
        let msg = err.to_string();
        assert!(msg.contains(want), "{what}: {msg}");
        eprintln!("{what}: {msg}");
    }
    // 4-bit runs of an odd length (a small file: the shipped one's sizes leave no such shape).
    let header = serde_json::json!({
        "__metadata__": { "format": FORMAT },
        "t": { "dtype": "U8", "shape": [2, 3], "data_offsets": [0, 6] },
        "t.scale": { "dtype": "F16", "shape": [2, 2], "data_offsets": [6, 14] },
    });
    let odd = join(&header, &[0; 14]);
    let err = EncoderWeights::parse(&odd)
        .unwrap()
        .f32_values("t")
        .unwrap_err();
    assert_eq!(err.kind(), ErrorKind::ModelFile, "{err}");
    assert!(
        err.to_string()
            .contains("runs of 3 4-bit values are not whole bytes"),
        "{err}"
    );
    // The f32 file is still accepted, and the 8-bit one is told apart by its metadata only.
    assert!(!EncoderWeights::parse(&f32_file()).unwrap().is_int8());
    assert_eq!(
        split(&q8).0["__metadata__"]["format"].as_str(),
        Some(FORMAT)
    );
}
