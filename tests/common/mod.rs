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

/// A committed reference file from `tests/reference/` (made by scripts/make-references.py).
pub fn reference(name: &str) -> serde_json::Value {
    let path = webguard::source_checkout()
        .join("tests/reference")
        .join(name);
    let text = std::fs::read_to_string(&path).expect("reference file readable");
    serde_json::from_str(&text).expect("reference file is JSON")
}
