//! SmolLM2 against an independent float64 numpy implementation from the same GGUF
//! (scripts/make-llama-reference.py -> tests/reference/llama_smollm2.json): prompt ids, the
//! next-token logits after prefill (64 most likely ids plus every 193rd id, and the
//! log-sum-exp over all 49,152), and 32-token greedy continuations through the KV cache —
//! exactly with [`Precision::Exact`], and within measured bounds with the default 16-bit
//! activations ([`Precision::Int16`]) and the selectable 8-bit ones ([`Precision::Int8`]).

mod common;

mod llama_runs;

use llama_runs::{agreement, run};
use webguard::models::packed::Precision;

/// Logits are O(10); f32 sums over 576- and 1536-long dot products through 30 layers differ
/// from float64 by about 5e-5 here (measured worst: 4.4e-5), so 1e-3 leaves room for other
/// CPUs' summation orders while any real error (a wrong RoPE pair, head mapping or norm) moves
/// logits by whole units.
const LOGIT_TOLERANCE: f64 = 1e-3;

#[test]
fn logits_and_greedy_continuations_match_numpy() {
    let mut worst = 0.0f64;
    for r in run(Precision::Exact) {
        assert!(
            r.worst_logit <= LOGIT_TOLERANCE,
            "{}: logits differ by {}",
            r.prompt,
            r.worst_logit
        );
        assert_eq!(r.greedy, r.want, "{}: greedy continuation", r.prompt);
        worst = worst.max(r.worst_logit);
    }
    eprintln!("worst logit abs diff vs numpy float64: {worst:.2e}");
}

/// The default 16-bit activations give the exact model's answers (bounds and measurements:
/// [`llama_runs::assert_int16_agrees`]).
#[test]
fn int16_products_give_the_exact_model_s_answers() {
    llama_runs::assert_int16_agrees(&agreement(Precision::Int16));
}

/// 8-bit activations mostly pick the exact model's next token (bounds and measurements:
/// [`llama_runs::assert_int8_agrees`]).
#[test]
fn int8_products_mostly_pick_the_exact_model_s_next_token() {
    llama_runs::assert_int8_agrees(&agreement(Precision::Int8));
}
