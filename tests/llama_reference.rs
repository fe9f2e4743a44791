//! SmolLM2 against an independent float64 numpy implementation from the same GGUF
//! (scripts/make-llama-reference.py -> tests/reference/llama_smollm2.json): prompt ids, the
//! next-token logits after prefill (64 most likely ids plus every 193rd id, and the
//! log-sum-exp over all 49,152), and 32-token greedy continuations through the KV cache —
//! exactly with [`Precision::Exact`], and within measured bounds with the default 16-bit
//! activations ([`Precision::Int16`]) and the selectable 8-bit ones ([`Precision::Int8`]).

mod common;

use burn::tensor::Device;
use webguard::backend::read_f32;
use webguard::models::llama::Llama;
use webguard::models::packed::Precision;
use webguard::text::Tokenizer;
use webguard::text::chat_template::{Message, render};
use webguard::weights::Gguf;

/// Logits are O(10); f32 sums over 576- and 1536-long dot products through 30 layers differ
/// from float64 by about 5e-5 here (measured worst: 4.4e-5), so 1e-3 leaves room for other
/// CPUs' summation orders while any real error (a wrong RoPE pair, head mapping or norm) moves
/// logits by whole units.
const LOGIT_TOLERANCE: f64 = 1e-3;

/// One reference prompt through the model: the worst logit difference after prefill (over the
/// reference's ids and the log-sum-exp) and the greedy continuation, as long as the
/// reference's or up to an end token.
struct Run {
    prompt: String,
    worst_logit: f64,
    greedy: Vec<u32>,
    want: Vec<u32>,
    /// Teacher-forced: positions of the reference's continuation (fed token by token through
    /// the cache) where the model's top logit is the reference's next token.
    forced: usize,
}

fn run(precision: Precision) -> Vec<Run> {
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

/// Agreement with the exact model (the reference's tokens, which the exact model reproduces),
/// printed per prompt.
struct Agreement {
    /// Free-running greedy tokens equal, position by position.
    same: usize,
    /// Teacher-forced top-1 equal.
    forced: usize,
    /// Positions compared.
    total: usize,
    /// Worst logit difference after prefill.
    worst: f64,
}

fn agreement(precision: Precision) -> Agreement {
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
#[test]
fn int16_products_give_the_exact_model_s_answers() {
    let a = agreement(Precision::Int16);
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
#[test]
fn int8_products_mostly_pick_the_exact_model_s_next_token() {
    let a = agreement(Precision::Int8);
    assert!(a.worst <= 1.33, "worst logit difference {}", a.worst);
    assert!(
        a.forced * 99 >= 88 * a.total,
        "{}/{} teacher-forced top-1 equal",
        a.forced,
        a.total
    );
}
