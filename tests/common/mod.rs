//! Helpers shared by the integration tests: where the models and the committed references are.
#![allow(dead_code)]

use std::path::PathBuf;

/// The fetched models (`scripts/fetch-models.sh`); a missing file fails the test with a hint.
pub fn model_path(relative: &str) -> PathBuf {
    let dir = std::env::var_os("WEBGUARD_MODELS")
        .map(PathBuf::from)
        .unwrap_or_else(|| webguard::source_checkout().join("models"));
    let path = dir.join(relative);
    assert!(
        path.exists(),
        "{} is missing: run scripts/fetch-models.sh (or ./build.sh setup) first",
        path.display()
    );
    path
}

pub fn read_model(relative: &str) -> Vec<u8> {
    std::fs::read(model_path(relative)).expect("model file readable")
}

/// The folder of fetched models, as `Filter::load` takes it (MiniLM's must be there).
pub fn models_dir() -> PathBuf {
    model_path(webguard::MINILM_DIR)
        .parent()
        .unwrap()
        .to_path_buf()
}

/// Asserts that `result` is the error of a tuning run cancelled at `step`.
pub fn assert_cancelled_at<T: std::fmt::Debug>(result: webguard::Result<T>, step: usize) {
    let err = result.unwrap_err().to_string();
    let expected = format!("cancelled: tuning stopped at step {step}");
    assert!(err.starts_with(&expected), "{err}");
}

/// SmolLM2 as a chat model, on the default device.
pub fn chat_model() -> webguard::ChatModel {
    let bytes = read_model(webguard::SMOLLM2_GGUF);
    let gguf = webguard::weights::Gguf::parse(&bytes).unwrap();
    webguard::ChatModel::load(&gguf, &burn::tensor::Device::flex()).unwrap()
}

/// The filter with the shipped heads, on the default device.
pub fn shipped_filter() -> webguard::Filter {
    let heads = webguard::Filter::default_heads_path();
    webguard::Filter::load(&models_dir(), &heads, &burn::tensor::Device::flex()).unwrap()
}

/// A committed reference file from `tests/reference/` (made by scripts/make-references.py).
pub fn reference(name: &str) -> serde_json::Value {
    let path = webguard::source_checkout()
        .join("tests/reference")
        .join(name);
    let text = std::fs::read_to_string(&path).expect("reference file readable");
    serde_json::from_str(&text).expect("reference file is JSON")
}

/// Largest absolute difference between two equally long slices.
pub fn max_diff(a: &[f32], b: &[f32]) -> f32 {
    assert_eq!(a.len(), b.len());
    a.iter()
        .zip(b)
        .map(|(x, y)| (x - y).abs())
        .fold(0.0, f32::max)
}

/// A file's sha256 as the worker's manifest and `fetch-models.sh` write it (lowercase hex).
pub fn sha256(bytes: &[u8]) -> String {
    use sha2::{Digest, Sha256};
    Sha256::digest(bytes)
        .iter()
        .map(|b| format!("{b:02x}"))
        .collect()
}
