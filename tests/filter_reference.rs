//! The filter's scores against the same filter re-implemented in PyTorch from the same files
//! (scripts/filter-torch.py -> tests/reference/filter_scores.json): windows, poolings, LoRA
//! merge, standardisation, heads and the max over windows all have to agree. Tolerance 1e-3
//! (measured worst: 2.3e-4): the embeddings agree to a cosine of 1 - 1e-7, but the heads divide
//! each feature by its standard deviation, some of which are small, so f32 rounding differences
//! between PyTorch and burn reach the scores amplified.

mod common;

use burn::tensor::Device;
use sha2::{Digest, Sha256};
use webguard::Filter;

#[test]
fn scores_match_the_pytorch_reimplementation() {
    let reference = common::reference("filter_scores.json");
    let heads_path = Filter::default_heads_path();
    let heads = std::fs::read(&heads_path).unwrap();
    assert_eq!(
        format!("{:x}", Sha256::digest(&heads)),
        reference["heads_sha256"].as_str().unwrap(),
        "assets/filter-heads.safetensors changed: regenerate the reference with \
         `~/.cache/webguard/venv-st/bin/python scripts/filter-torch.py reference`"
    );
    let texts: Vec<String> = serde_json::from_value(reference["texts"].clone()).unwrap();
    let want: Vec<Vec<f64>> = serde_json::from_value(reference["scores"].clone()).unwrap();
    let filter = Filter::load(&common::models_dir(), &heads_path, &Device::flex()).unwrap();
    let refs: Vec<&str> = texts.iter().map(String::as_str).collect();
    let got = pollster::block_on(filter.scores(&refs)).unwrap();
    let mut worst = 0.0f64;
    for (i, (g, w)) in got.iter().zip(&want).enumerate() {
        for (label, (a, b)) in filter.labels().iter().zip(g.iter().zip(w)) {
            let diff = (f64::from(*a) - b).abs();
            worst = worst.max(diff);
            assert!(diff <= 1e-3, "text {i} {label}: {a} vs PyTorch {b}");
        }
    }
    eprintln!("worst abs diff vs PyTorch: {worst:.2e}");
}
