//! The reference prompts through SmolLM2 (tests/reference/llama_smollm2.json, made from the
//! same GGUF by scripts/make-llama-reference.py in float64 numpy), shared by the test files
//! that compare a precision or an instruction set with it.
#![allow(dead_code)]

use burn::tensor::Device;
use webguard::backend::read_f32;
use webguard::models::llama::Llama;
use webguard::models::packed::Precision;
use webguard::text::Tokenizer;
use webguard::text::chat_template::{Message, render};
use webguard::weights::Gguf;

use crate::common;

/// One reference prompt through the model: the worst logit difference after prefill (over the
/// reference's ids and the log-sum-exp) and the greedy continuation, as long as the
/// reference's or up to an end token.
pub struct Run {
    pub prompt: String,
    pub worst_logit: f64,
    pub greedy: Vec<u32>,
    pub want: Vec<u32>,
    /// Teacher-forced: positions of the reference's continuation (fed token by token through
    /// the cache) where the model's top logit is the reference's next token.
    pub forced: usize,
}

pub fn run(precision: Precision) -> Vec<Run> {
    let reference = common::reference("llama_smollm2.json");
    let bytes = common::read_model(webguard::SMOLLM2_GGUF);
    let gguf = Gguf::parse(&bytes).unwrap();
    let tok = Tokenizer::from_gguf(&gguf).unwrap();
    let mut model = Llama::load(&gguf, &Device::flex()).unwrap();
    model.set_precision(precision);
    let end = [
        tok.token_to_id("<|im_end|>").unwrap(),
        tok.token_to_id("<|endoftext|>").unwrap(),
    ];
    let mut runs = Vec::new();
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
        let mut worst = 0.0f64;
        for (ids_key, values_key) in [("top_ids", "top_logits"), ("sampled_ids", "sampled_logits")]
        {
            let ids: Vec<usize> = serde_json::from_value(case[ids_key].clone()).unwrap();
            let values: Vec<f64> = serde_json::from_value(case[values_key].clone()).unwrap();
            for (&i, &want) in ids.iter().zip(&values) {
                worst = worst.max((f64::from(last[i]) - want).abs());
            }
        }
        let max = last.iter().cloned().fold(f32::MIN, f32::max) as f64;
        let lse = last
            .iter()
            .map(|&l| (f64::from(l) - max).exp())
            .sum::<f64>()
            .ln()
            + max;
        worst = worst.max((lse - case["logsumexp"].as_f64().unwrap()).abs());

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
        let argmax = |l: burn::tensor::Tensor<2>| {
            let l = pollster::block_on(read_f32(l.reshape([vocab]))).unwrap();
            l.iter()
                .enumerate()
                .max_by(|a, b| a.1.total_cmp(b.1))
                .unwrap()
                .0 as u32
        };
        let mut cache = model.new_cache();
        let mut forced = usize::from(argmax(model.forward(&ids, &mut cache).unwrap()) == want[0]);
        for pair in want.windows(2) {
            forced +=
                usize::from(argmax(model.forward(&pair[..1], &mut cache).unwrap()) == pair[1]);
        }
        runs.push(Run {
            prompt: prompt.to_string(),
            worst_logit: worst,
            greedy: got,
            want,
            forced,
        });
    }
    runs
}

/// Agreement with the exact model (the reference's tokens, which the exact model reproduces),
/// printed per prompt.
pub struct Agreement {
    /// Free-running greedy tokens equal, position by position.
    pub same: usize,
    /// Teacher-forced top-1 equal.
    pub forced: usize,
    /// Positions compared.
    pub total: usize,
    /// Worst logit difference after prefill.
    pub worst: f64,
}

pub fn agreement(precision: Precision) -> Agreement {
    let mut a = Agreement {
        same: 0,
        forced: 0,
        total: 0,
        worst: 0.0,
    };
    for r in run(precision) {
        let equal = r.greedy.iter().zip(&r.want).filter(|(a, b)| a == b).count();
        eprintln!(
            "{precision:?} {}: {equal}/{} greedy tokens equal, teacher-forced {}/{}, worst logit diff {:.4}",
            r.prompt,
            r.want.len(),
            r.forced,
            r.want.len(),
            r.worst_logit
        );
        a.same += equal;
        a.forced += r.forced;
        a.total += r.want.len();
        a.worst = a.worst.max(r.worst_logit);
    }
    eprintln!(
        "{precision:?}: {}/{} greedy tokens equal to exact, teacher-forced {}/{}, worst logit diff {:.4}",
        a.same, a.total, a.forced, a.total, a.worst
    );
    a
}

/// The default 16-bit activations against the exact model (which the float64 reference is, to
/// 4.4e-5). llama.cpp on the same GGUF scores 0/8, 19/32, 9/32, 9/18 and 9/9 tokens with
/// logits off by up to 1.33 (notes/issue-4-chat.md). Measured here (notes/issue-15-kernels.md):
/// every token equal, logits within 0.01; the bounds leave room for other CPUs' f32 summation
/// orders and still fail on any real error (a wrong block, scale or offset moves logits by
/// whole units, and 8-bit activations already move them by ~1).
pub fn assert_int16_agrees(a: &Agreement) {
    assert!(a.worst <= 0.02, "worst logit difference {}", a.worst);
    assert_eq!(a.same, a.total, "greedy tokens equal to the exact model's");
    assert_eq!(
        a.forced, a.total,
        "teacher-forced top-1 equal to the exact model's"
    );
}

/// 8-bit activations (llama.cpp's scheme; selectable, not the default). Teacher-forced (the
/// reference's continuation fed in, each position judged on its own) they pick the exact
/// model's next token at 90-91 of 99 positions here, through burn's ops or the host loops;
/// llama.cpp on the same GGUF 95/99 (`scripts/llamacpp-peer.py compare`), logits after prefill
/// within 1.33 (ours 0.92). A wrong block, scale or offset drops far below both bounds.
/// Free-running greedy agreement is printed, not bounded: once one token differs the rest
/// follow another text, so it swings with f32 summation order alone (54, 48 and 35 of 99 for
/// the same products after changes to the order of other sums; llama.cpp 46/99).
pub fn assert_int8_agrees(a: &Agreement) {
    assert!(a.worst <= 1.33, "worst logit difference {}", a.worst);
    assert!(
        a.forced * 99 >= 88 * a.total,
        "{}/{} teacher-forced top-1 equal",
        a.forced,
        a.total
    );
}
