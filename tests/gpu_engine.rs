//! The GPU engine (quantised weights on the GPU, fused kernels; `src/models/gpu/`) against the
//! CPU backend and the float64 numpy reference (tests/reference/llama_smollm2.json), natively
//! on wgpu (Vulkan; lavapipe on a machine without a GPU). A GPU adapter is required: without
//! one the test fails with a hint, it does not skip.
//!
//! Checked: the logits after prefill (the reference's 64 most likely ids, every 193rd id and
//! the log-sum-exp; and every id against the CPU backend) within 1e-3, and the 32-token greedy
//! continuations picked on the GPU (argmax kernel, 8 bytes read back per token) equal to the
//! reference's, on the 5 reference prompts.

mod common;

use burn::tensor::Device;
use webguard::backend::{Backend, BackendChoice, read_f32};
use webguard::models::gpu::Engine;
use webguard::models::llama::{Llama, LlamaConfig};
use webguard::models::packed::Precision;
use webguard::text::Tokenizer;
use webguard::text::chat_template::{Message, render};
use webguard::weights::Gguf;

/// As in tests/llama_reference.rs: f32 summation orders differ from float64 by about 5e-5;
/// a real error (a wrong nibble, pair or head) moves logits by whole units.
const LOGIT_TOLERANCE: f64 = 1e-3;

#[test]
fn engine_logits_and_greedy_continuations_match_cpu_and_numpy() {
    let reference = common::reference("llama_smollm2.json");
    let bytes = common::read_model(webguard::SMOLLM2_GGUF);
    let gguf = Gguf::parse(&bytes).unwrap();
    let tok = Tokenizer::from_gguf(&gguf).unwrap();
    let gpu = Backend::init_blocking(BackendChoice::Gpu)
        .expect("a wgpu adapter (install mesa-vulkan-drivers for lavapipe)");
    eprintln!("wgpu adapter: {gpu}");
    let config = LlamaConfig::from_gguf(&gguf).unwrap();
    let engine = Engine::load(&gguf, &config, &gpu.device).unwrap();
    // The CPU's exact f32 products (its default rounds activations to 16 bits, within 4e-3).
    let mut cpu = Llama::load(&gguf, &Device::flex()).unwrap();
    cpu.set_precision(Precision::Exact);
    let mut worst_cpu = 0.0f64;
    let mut worst_ref = 0.0f64;
    for case in reference["cases"].as_array().unwrap() {
        let prompt = case["prompt"].as_str().unwrap();
        let ids = tok
            .encode(&render(&[Message::new("user", prompt)], true).unwrap())
            .unwrap();
        let mut seq = engine.new_sequence();
        engine.step(&mut seq, &ids).unwrap();
        let got = pollster::block_on(engine.logits(&seq)).unwrap();

        let mut cache = cpu.new_cache();
        let want = cpu.forward(&ids, &mut cache).unwrap();
        let want = pollster::block_on(read_f32(want.reshape([config.vocab_size]))).unwrap();
        assert_eq!(got.len(), want.len());
        for (i, (&g, &w)) in got.iter().zip(&want).enumerate() {
            let diff = f64::from((g - w).abs());
            worst_cpu = worst_cpu.max(diff);
            assert!(
                diff <= LOGIT_TOLERANCE,
                "{prompt}: logit {i}: GPU {g} vs CPU {w}"
            );
        }
        for (ids_key, values_key) in [("top_ids", "top_logits"), ("sampled_ids", "sampled_logits")]
        {
            let ids: Vec<usize> = serde_json::from_value(case[ids_key].clone()).unwrap();
            let values: Vec<f64> = serde_json::from_value(case[values_key].clone()).unwrap();
            for (&i, &want) in ids.iter().zip(&values) {
                let diff = (f64::from(got[i]) - want).abs();
                worst_ref = worst_ref.max(diff);
                assert!(
                    diff <= LOGIT_TOLERANCE,
                    "{prompt}: logit {i}: {} vs {want}",
                    got[i]
                );
            }
        }
        let max = got.iter().cloned().fold(f32::MIN, f32::max) as f64;
        let lse = got
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

        // Greedy through the GPU's KV cache, picked on the GPU.
        let want: Vec<u32> = serde_json::from_value(case["greedy"].clone()).unwrap();
        let end = [
            tok.token_to_id("<|im_end|>").unwrap(),
            tok.token_to_id("<|endoftext|>").unwrap(),
        ];
        let before = engine.stats();
        let mut picked = Vec::new();
        loop {
            let (next, logit) = pollster::block_on(engine.argmax(&mut seq)).unwrap();
            assert!(logit.is_finite(), "{prompt}: argmax logit {logit}");
            picked.push(next);
            if end.contains(&next) || picked.len() == want.len() {
                break;
            }
            // The pick stays on the GPU: the next step reads it there.
            assert_eq!(engine.step_picked(&mut seq).unwrap(), next);
        }
        assert_eq!(picked, want, "{prompt}: greedy continuation");
        let after = engine.stats();
        assert_eq!(
            after.readback_bytes - before.readback_bytes,
            8 * picked.len() as u64,
            "a greedy token reads back 8 bytes"
        );
        assert_eq!(
            after.upload_bytes, before.upload_bytes,
            "greedy decoding uploads nothing"
        );
    }
    eprintln!("worst logit abs diff: vs CPU {worst_cpu:.2e}, vs numpy float64 {worst_ref:.2e}");
}
