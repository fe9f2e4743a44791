//! SmolLM2 against an independent float64 numpy implementation from the same GGUF
//! (scripts/make-llama-reference.py -> tests/reference/llama_smollm2.json): prompt ids, the
//! next-token logits after prefill (64 most likely ids plus every 193rd id, and the
//! log-sum-exp over all 49,152), and 32-token greedy continuations through the KV cache.

mod common;

use burn::tensor::Device;
use webguard::backend::read_f32;
use webguard::models::llama::Llama;
use webguard::text::Tokenizer;
use webguard::text::chat_template::{Message, render};
use webguard::weights::Gguf;

/// Logits are O(10); f32 sums over 576- and 1536-long dot products through 30 layers differ
/// from float64 by about 5e-5 here (measured worst: 4.4e-5), so 1e-3 leaves room for other
/// CPUs' summation orders while any real error (a wrong RoPE pair, head mapping or norm) moves
/// logits by whole units.
const LOGIT_TOLERANCE: f64 = 1e-3;

#[test]
fn logits_and_greedy_continuations_match_numpy() {
    let reference = common::reference("llama_smollm2.json");
    let bytes = common::read_model(webguard::SMOLLM2_GGUF);
    let gguf = Gguf::parse(&bytes).unwrap();
    let tok = Tokenizer::from_gguf(&gguf).unwrap();
    let model = Llama::load(&gguf, &Device::flex()).unwrap();
    let end = [
        tok.token_to_id("<|im_end|>").unwrap(),
        tok.token_to_id("<|endoftext|>").unwrap(),
    ];
    let mut worst = 0.0f64;
    for case in reference["cases"].as_array().unwrap() {
        let prompt = case["prompt"].as_str().unwrap();
        let want_ids: Vec<u32> = serde_json::from_value(case["ids"].clone()).unwrap();
        let ids = tok
            .encode(&render(&[Message::new("user", prompt)], true).unwrap())
            .unwrap();
        assert_eq!(ids, want_ids, "{prompt}: prompt ids");

        let mut cache = model.new_cache();
        let logits = model.forward(&ids, &mut cache).unwrap();
        let [_, vocab] = logits.dims();
        let last = pollster::block_on(read_f32(logits.reshape([vocab]))).unwrap();
        for (ids_key, values_key) in [("top_ids", "top_logits"), ("sampled_ids", "sampled_logits")]
        {
            let ids: Vec<usize> = serde_json::from_value(case[ids_key].clone()).unwrap();
            let values: Vec<f64> = serde_json::from_value(case[values_key].clone()).unwrap();
            for (&i, &want) in ids.iter().zip(&values) {
                let diff = (f64::from(last[i]) - want).abs();
                worst = worst.max(diff);
                assert!(
                    diff <= LOGIT_TOLERANCE,
                    "{prompt}: logit of id {i}: {} vs {want}",
                    last[i]
                );
            }
        }
        let max = last.iter().cloned().fold(f32::MIN, f32::max) as f64;
        let lse = last
            .iter()
            .map(|&l| (f64::from(l) - max).exp())
            .sum::<f64>()
            .ln()
            + max;
        let want_lse = case["logsumexp"].as_f64().unwrap();
        assert!(
            (lse - want_lse).abs() <= LOGIT_TOLERANCE,
            "{prompt}: logsumexp {lse} vs {want_lse}"
        );

        // Greedy, one position at a time through the cache.
        let want: Vec<u32> = serde_json::from_value(case["greedy"].clone()).unwrap();
        let mut got = Vec::new();
        let mut step = last;
        for _ in 0..want.len() {
            let next = step
                .iter()
                .enumerate()
                .max_by(|a, b| a.1.total_cmp(b.1))
                .unwrap()
                .0 as u32;
            got.push(next);
            if end.contains(&next) || got.len() == want.len() {
                break;
            }
            let l = model.forward(&[next], &mut cache).unwrap();
            step = pollster::block_on(read_f32(l.reshape([vocab]))).unwrap();
        }
        assert_eq!(got, want, "{prompt}: greedy continuation");
    }
    eprintln!("worst logit abs diff vs numpy float64: {worst:.2e}");
}
