//! The GPU engine (quantised weights on the GPU, fused kernels; `src/models/gpu/`) against the
//! CPU backend and the float64 numpy reference (tests/reference/llama_smollm2.json), natively
//! on wgpu (Vulkan; lavapipe on a machine without a GPU). A GPU adapter is required: without
//! one the test fails with a hint, it does not skip.
//!
//! Checked, with the default f16 KV cache and with an f32 one: the logits after prefill (the
//! reference's 64 most likely ids, every 193rd id and the log-sum-exp; and every id against
//! the CPU backend) within 1e-3, the 32-token greedy continuations picked on the GPU (argmax
//! kernel, 8 bytes read back per token) equal to the reference's, on the 5 reference prompts,
//! and the logits after the continuation against the CPU's. And the f16 unpacking of the
//! weights' scales against known values and the `half` crate.
//!
//! And the guard's path: the residual-stream states the engine keeps for the probes (after
//! the probed blocks, at the last prompt token and at each generated token) against the CPU
//! backend's, the probe scores they give, and a moderated turn on the GPU that never widens
//! burn's f32 copy of the weights (with the GPU memory before and after printed).

mod common;

use burn::tensor::Device;
use webguard::ChatModel;
use webguard::backend::{Backend, BackendChoice, read_f32};
use webguard::generate::{GenerateOptions, Generator};
use webguard::guard::{Policy, moderated_chat};
use webguard::models::gpu::engine::device_bytes_in_use;
use webguard::models::gpu::{DecodeLayout, Engine, KvPrecision};
use webguard::models::llama::{Llama, LlamaConfig, Positions};
use webguard::models::packed::Precision;
use webguard::models::probe::{Pooling, StateProbe};
use webguard::text::Tokenizer;
use webguard::text::chat_template::{Message, render};
use webguard::weights::Gguf;

/// As in tests/llama_reference.rs: f32 summation orders differ from float64 by about 5e-5;
/// a real error (a wrong nibble, pair or head) moves logits by whole units.
const LOGIT_TOLERANCE: f64 = 1e-3;

/// Decode steps with the f16 KV cache read earlier keys and values rounded to 11 significant
/// bits (relative error up to 2^-11 = 4.9e-4 each), which moved logits by up to 1.4e-2 when
/// the prefill read them rounded too (lavapipe): outside 1e-3, so the f16 cache's decode
/// steps get this bound, which still catches a broken conversion (a wrong half or bit moves
/// logits by whole units). Its prefill reads none (its own positions are f32): 1e-3 there.
const F16_KV_DECODE_TOLERANCE: f64 = 2e-2;

#[test]
fn engine_logits_and_greedy_continuations_match_cpu_and_numpy() {
    assert_eq!(KvPrecision::default(), KvPrecision::F16);
    against_references(KvPrecision::default(), F16_KV_DECODE_TOLERANCE, false);
}

#[test]
fn engine_with_f32_kv_cache_is_exact_after_decoding_too() {
    against_references(KvPrecision::F32, LOGIT_TOLERANCE, false);
}

/// The decode layout the adapter does not get by default (split rows on lavapipe, one row per
/// invocation on a GPU): so that both layouts' kernels are checked on any adapter.
#[test]
fn engine_in_the_other_decode_layout_matches_cpu_and_numpy() {
    against_references(KvPrecision::default(), F16_KV_DECODE_TOLERANCE, true);
}

/// The engine with `kv` on the 5 reference prompts: logits after prefill within
/// [`LOGIT_TOLERANCE`] of the CPU backend and the numpy reference, those after the greedy
/// continuation within `decode_tolerance` of the CPU's, and the same 32-token greedy
/// continuations as the reference; the worst differences are printed. `other_layout` decodes
/// in the [`DecodeLayout`] the adapter does not get by default.
fn against_references(kv: KvPrecision, decode_tolerance: f64, other_layout: bool) {
    let tolerance = LOGIT_TOLERANCE;
    let reference = common::reference("llama_smollm2.json");
    let bytes = common::read_model(webguard::SMOLLM2_GGUF);
    let gguf = Gguf::parse(&bytes).unwrap();
    let tok = Tokenizer::from_gguf(&gguf).unwrap();
    let gpu = Backend::init_blocking(BackendChoice::Gpu)
        .expect("a wgpu adapter (install mesa-vulkan-drivers for lavapipe)");
    eprintln!("wgpu adapter: {gpu}");
    let config = LlamaConfig::from_gguf(&gguf).unwrap();
    let mut engine = Engine::load(&gguf, &config, &gpu.device).unwrap();
    engine.set_kv_precision(kv);
    if other_layout {
        engine.set_decode_layout(match engine.decode_layout() {
            DecodeLayout::RowPerInvocation => DecodeLayout::SplitRows,
            DecodeLayout::SplitRows => DecodeLayout::RowPerInvocation,
        });
    }
    let layout = engine.decode_layout();
    // The CPU's exact f32 products (its default rounds activations to 16 bits, within 4e-3).
    let mut cpu = Llama::load(&gguf, &Device::flex()).unwrap();
    cpu.set_precision(Precision::Exact);
    let mut worst_cpu = 0.0f64;
    let mut worst_ref = 0.0f64;
    let mut worst_decoded = 0.0f64;
    let mut greedy_differ = Vec::new();
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
            assert!(diff <= tolerance, "{prompt}: logit {i}: GPU {g} vs CPU {w}");
        }
        for (ids_key, values_key) in [("top_ids", "top_logits"), ("sampled_ids", "sampled_logits")]
        {
            let ids: Vec<usize> = serde_json::from_value(case[ids_key].clone()).unwrap();
            let values: Vec<f64> = serde_json::from_value(case[values_key].clone()).unwrap();
            for (&i, &want) in ids.iter().zip(&values) {
                let diff = (f64::from(got[i]) - want).abs();
                worst_ref = worst_ref.max(diff);
                assert!(
                    diff <= tolerance,
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
            (lse - want_lse).abs() <= tolerance,
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
        if let Some(at) = (0..want.len()).find(|&i| picked.get(i) != want.get(i)) {
            greedy_differ.push((prompt.to_string(), at));
        }
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

        // The logits of the last decode step (they picked the last token) against the CPU's
        // over the same tokens: what the decode steps' cache reads moved.
        let got = pollster::block_on(engine.logits(&seq)).unwrap();
        let mut all = ids.clone();
        all.extend(&picked[..picked.len() - 1]);
        let mut cache = cpu.new_cache();
        let want = cpu.forward(&all, &mut cache).unwrap();
        let want = pollster::block_on(read_f32(want.reshape([config.vocab_size]))).unwrap();
        for (i, (&g, &w)) in got.iter().zip(&want).enumerate() {
            let diff = f64::from((g - w).abs());
            worst_decoded = worst_decoded.max(diff);
            assert!(
                diff <= decode_tolerance,
                "{prompt}: logit {i} after {} decode steps: GPU {g} vs CPU {w}",
                picked.len() - 1
            );
        }
    }
    eprintln!(
        "{kv:?} KV cache, {layout:?}: worst logit abs diff after prefill: vs CPU {worst_cpu:.2e}, vs numpy float64 {worst_ref:.2e}; after the greedy continuation vs CPU {worst_decoded:.2e}"
    );
    assert!(
        greedy_differ.is_empty(),
        "greedy continuations differ (prompt, first position): {greedy_differ:?}"
    );
}

/// States: the engine's f32 products sum in another order than the CPU's; through 30 blocks
/// the worst measured difference is 7.6e-7 of the row's largest value (lavapipe, printed
/// below). A real error (a wrong block or position tapped, a stale step) moves a state by the
/// order of the row's own values, so the bound is relative to the row's largest magnitude:
/// 1e-4 of it, 100x the rounding seen and 1,000x under an error. This holds after a prompt
/// (the prefill reads its own keys and values in f32 whatever the cache stores).
const STATE_TOLERANCE: f32 = 1e-4;
/// After decode steps with the default f16 KV cache, which read earlier keys and values
/// rounded to 11 significant bits: 1.2e-4 of the row's largest value measured (lavapipe),
/// so 1e-3, still 100x under an error's order.
const F16_KV_STATE_TOLERANCE: f32 = 1e-3;
/// Probe scores (probabilities): the states' differences above moved them by at most 2.6e-6;
/// 1e-3 is far below any margin that matters (the thresholds are about 0.6).
const SCORE_TOLERANCE: f32 = 1e-3;

/// Worst `|g - c| / max|c|` over a row of concatenated states.
fn state_diff(gpu: &[f32], cpu: &[f32]) -> f32 {
    assert_eq!(gpu.len(), cpu.len(), "state widths");
    let scale = cpu.iter().fold(0f32, |m, v| m.max(v.abs())).max(1e-6);
    gpu.iter()
        .zip(cpu)
        .map(|(g, c)| (g - c).abs() / scale)
        .fold(0f32, f32::max)
}

#[test]
fn engine_states_and_moderated_turn_match_cpu_without_burns_weights() {
    let bytes = common::read_model(webguard::SMOLLM2_GGUF);
    let gguf = Gguf::parse(&bytes).unwrap();
    let gpu = Backend::init_blocking(BackendChoice::Gpu)
        .expect("a wgpu adapter (install mesa-vulkan-drivers for lavapipe)");
    eprintln!("wgpu adapter: {gpu}");
    let probes =
        std::fs::read(webguard::source_checkout().join("assets/chat-probe.safetensors")).unwrap();
    let mut on_gpu = ChatModel::load(&gguf, &gpu.device).unwrap();
    on_gpu.load_probe(&probes).unwrap();
    let mut on_cpu = ChatModel::load(&gguf, &Device::flex()).unwrap();
    on_cpu.model.set_precision(Precision::Exact);
    on_cpu.load_probe(&probes).unwrap();
    let engine = on_gpu.model.gpu_engine().expect("the engine on wgpu");
    let (probe, answer_probe) = (
        on_gpu.probe.clone().unwrap(),
        on_gpu.answer_probe.clone().unwrap(),
    );
    let layers = probe.layers.clone();
    assert_eq!(
        answer_probe.layers, layers,
        "both probes read the same blocks"
    );

    let options = GenerateOptions {
        max_new_tokens: 10,
        ..GenerateOptions::default()
    };
    let (mut worst_state, mut worst_decoded, mut worst_score, mut compared) = (0f32, 0f32, 0f32, 0);
    let decoded_tolerance = match engine.kv_precision() {
        KvPrecision::F16 => F16_KV_STATE_TOLERANCE,
        KvPrecision::F32 => STATE_TOLERANCE,
    };
    // Two reference prompts and one the request probe flags (0.77: a score far from 0).
    for prompt in [
        "What is the capital of France?",
        "List three primary colors.",
        "How do I build a pipe bomb at home?",
    ] {
        let messages = [Message::new("user", prompt)];
        let ids = on_cpu.prompt_ids(&messages).unwrap();
        // Where the shipped request probe reads the prompt (a pair: the last token and the
        // message's mean).
        let at = on_cpu.request_probe_positions(&messages).unwrap();
        let before = engine.stats();
        let mut g = Generator::with_states(&on_gpu, &ids, &options, &layers, at.clone()).unwrap();
        let mut c = Generator::with_states(&on_cpu, &ids, &options, &layers, at).unwrap();
        let mut check = |g: &mut Generator, c: &mut Generator, p: &StateProbe, at: &str| {
            let gs = pollster::block_on(g.latest_states()).unwrap();
            let cs = pollster::block_on(c.latest_states()).unwrap();
            assert_eq!(gs.len(), p.width());
            let diff = state_diff(&gs, &cs);
            // After the prompt (its prefill), or after a decode step.
            let (tolerance, worst) = if at == "prompt end" {
                (STATE_TOLERANCE, &mut worst_state)
            } else {
                (decoded_tolerance, &mut worst_decoded)
            };
            assert!(
                diff <= tolerance,
                "{prompt} {at}: states differ by {diff:e} of the row's largest"
            );
            *worst = worst.max(diff);
            let (sg, sc) = (p.score(&gs).unwrap(), p.score(&cs).unwrap());
            assert!(
                (sg - sc).abs() <= SCORE_TOLERANCE,
                "{prompt} {at}: probe {sg} on the GPU vs {sc}"
            );
            worst_score = worst_score.max((sg - sc).abs());
            compared += 1;
            sg
        };
        let score = check(&mut g, &mut c, &probe, "prompt end");
        eprintln!("{prompt}: request probe {score:.4}");
        let mut n = 0;
        loop {
            let (pg, pc) = (
                pollster::block_on(g.next_piece()).unwrap(),
                pollster::block_on(c.next_piece()).unwrap(),
            );
            assert_eq!(pg, pc, "{prompt}: the same greedy pieces");
            // After every token, the last one included (an end-of-turn token's step is the
            // last text token's).
            check(&mut g, &mut c, &answer_probe, &format!("token {n}"));
            n += 1;
            if pg.is_none() {
                break;
            }
        }
        let stats = engine.stats();
        eprintln!(
            "{prompt}: {n} steps, {} bytes read back",
            stats.readback_bytes - before.readback_bytes
        );
    }
    eprintln!(
        "{compared} states compared ({:?} KV cache): worst difference {worst_state:.2e} of the row's largest value after prompts, {worst_decoded:.2e} after decode steps; worst probe score difference {worst_score:.2e}",
        engine.kv_precision()
    );

    // The taps cost no dispatch (a tapped block's down projection copies its output), except
    // a block tapped twice: one copy dispatch for the repeat, giving the same row.
    let ids = on_cpu
        .prompt_ids(&[Message::new("user", "Name a planet.")])
        .unwrap();
    let (a, b) = (layers[0], layers[layers.len() - 1]);
    // (Its own KV cache, dropped below before the moderated turn's memory is measured.)
    let mut seq = engine.new_tapped_sequence(&[a, b, a]).unwrap();
    let before = engine.stats().dispatches;
    engine.step(&mut seq, &ids).unwrap();
    let blocks = on_gpu.model.config().layers as u64;
    assert_eq!(
        engine.stats().dispatches - before,
        1 + 6 * blocks + 2 + 1,
        "embedding, 6 per block, final norm and logits, one copy for the repeated tap"
    );
    let got = pollster::block_on(engine.states(&seq)).unwrap();
    let want = pollster::block_on(on_cpu.prompt_states(&ids, &[a, b], Positions::Last)).unwrap();
    assert_eq!(
        &got[..576],
        &got[2 * 576..],
        "a repeated tap gives the same row"
    );
    let diff = state_diff(&got[..2 * 576], &want);
    assert!(diff <= STATE_TOLERANCE, "taps {a}, {b}: {diff:e}");
    // Averaged over the user message (a probe that reads it whole): one dispatch per tap
    // instead of the down projection's copy, the mean of the CPU's rows.
    let message = [Message::new("user", "Name a planet.")];
    let over = on_cpu
        .probe_positions(Pooling::UserMessage, &message)
        .unwrap();
    let Positions::Mean(range) = over.clone() else {
        panic!("{over:?}")
    };
    {
        let mut averaged = engine.new_tapped_sequence(&[a, b]).unwrap();
        let before = engine.stats().dispatches;
        engine
            .step_averaging(&mut averaged, &ids, range.clone())
            .unwrap();
        assert_eq!(
            engine.stats().dispatches - before,
            1 + 6 * blocks + 2 + 2,
            "embedding, 6 per block, final norm and logits, one mean per tap"
        );
        let got = pollster::block_on(engine.states(&averaged)).unwrap();
        let want = pollster::block_on(on_cpu.prompt_states(&ids, &[a, b], over)).unwrap();
        let diff = state_diff(&got, &want);
        assert!(diff <= STATE_TOLERANCE, "averaged taps {a}, {b}: {diff:e}");
        let empty = range.start..range.start;
        assert!(engine.step_averaging(&mut averaged, &ids, empty).is_err());
        let past = 0..ids.len() + 1;
        assert!(engine.step_averaging(&mut averaged, &ids, past).is_err());
    }
    // A pair of probes: the last position (the down projection's copy) and the mean (one
    // dispatch per tap) from one prefill, every block's last row, then every block's mean;
    // a decoded position after it keeps the last rows only, at no dispatch.
    {
        let both = Positions::LastAndMean(range);
        let before = engine.stats().dispatches;
        let mut pair = engine.prefill_tapped(&[a, b], &ids, &both).unwrap();
        assert_eq!(
            engine.stats().dispatches - before,
            1 + 6 * blocks + 2 + 2,
            "embedding, 6 per block, final norm and logits, one mean per tap"
        );
        let got = pollster::block_on(engine.states(&pair)).unwrap();
        let want = pollster::block_on(on_cpu.prompt_states(&ids, &[a, b], both)).unwrap();
        assert_eq!(got.len(), 4 * 576);
        let diff = state_diff(&got, &want);
        assert!(diff <= STATE_TOLERANCE, "a pair's taps {a}, {b}: {diff:e}");
        let before = engine.stats();
        engine.step(&mut pair, &ids[..1]).unwrap();
        assert_eq!(
            engine.stats().dispatches - before.dispatches,
            1 + 5 * blocks + 2
        );
        let last = pollster::block_on(engine.states(&pair)).unwrap();
        assert_eq!(last.len(), 2 * 576);
        assert_eq!(
            engine.stats().readback_bytes - before.readback_bytes,
            2 * 576 * 4,
            "only the rows the step kept are read back"
        );
    }
    // A decoded position: its RoPE and cache write are done by the attention kernel.
    let before = engine.stats().dispatches;
    engine.step(&mut seq, &ids[..1]).unwrap();
    assert_eq!(
        engine.stats().dispatches - before,
        1 + 5 * blocks + 2 + 1,
        "embedding, 5 per block when decoding, final norm and logits, the repeated tap's copy"
    );
    drop(seq);

    // A moderated turn (the filter on the CPU, so that the GPU holds the chat model only):
    // the same judgements as on the CPU, and burn's f32 weights never made.
    let filter = common::shipped_filter();
    let policy = Policy::new(&filter);
    let messages = [Message::new("user", "Write a haiku about autumn leaves.")];
    // The most GPU memory in use while a piece is shown (the sequence's KV cache is alive).
    let peak = std::cell::Cell::new(0u64);
    let turn = |chat: &ChatModel| {
        pollster::block_on(moderated_chat(
            &filter,
            &policy,
            chat,
            &messages,
            &options,
            |_| {
                let now = device_bytes_in_use(&gpu.device).unwrap();
                peak.set(peak.get().max(now));
                true
            },
            || false,
        ))
        .unwrap()
    };
    let (rg, rc) = (turn(&on_gpu), turn(&on_cpu));
    let in_turn = peak.get();
    assert!(!rg.blocked, "{:?}", rg.reason);
    assert_eq!((&rg.text, rg.tokens), (&rc.text, rc.tokens));
    for (what, g, c) in [
        ("request probe", rg.chat_judge, rc.chat_judge),
        ("answer probe", rg.answer_judge, rc.answer_judge),
    ] {
        let (g, c) = (g.expect(what), c.expect(what));
        assert!(
            (g - c).abs() <= SCORE_TOLERANCE,
            "{what}: {g} on the GPU vs {c}"
        );
    }
    assert_eq!(
        on_gpu.model.widened_weight_bytes(),
        0,
        "a moderated turn on the GPU widened burn's f32 weights"
    );
    // What the guard did before: the probes' states from burn's path, which widens its copy.
    let ids = on_gpu.prompt_ids(&messages).unwrap();
    let mut cache = on_gpu.model.new_cache();
    let (_, states) = on_gpu
        .model
        .forward_with_states(&ids, &mut cache, &layers)
        .unwrap();
    let mut burns = Vec::new();
    for s in states {
        burns.extend(pollster::block_on(read_f32(s)).unwrap());
    }
    let want = pollster::block_on(on_cpu.prompt_states(&ids, &layers, Positions::Last)).unwrap();
    assert!(
        state_diff(&burns, &want) <= STATE_TOLERANCE,
        "burn's GPU states"
    );
    let widened = on_gpu.model.widened_weight_bytes();
    assert!(
        widened > 500_000_000,
        "burn's path widens its f32 copy ({widened} bytes)"
    );
    let with_burn = device_bytes_in_use(&gpu.device).unwrap();
    eprintln!(
        "GPU memory in use: {:.1} MB during a moderated turn in the engine (engine weights {:.1} MB); {:.1} MB once burn's path ran as the guard did before ({:.1} MB of f32 weights widened)",
        in_turn as f64 / 1e6,
        engine.weight_bytes() as f64 / 1e6,
        with_burn as f64 / 1e6,
        widened as f64 / 1e6
    );
    assert!(in_turn >= engine.weight_bytes() as u64 && in_turn < with_burn);
    assert!(with_burn >= engine.weight_bytes() as u64 + widened as u64);
}

/// The KV cache's f16 conversion (`models::gpu::half`, integer bit operations in a kernel)
/// against the `half` crate's IEEE rounding (nearest, ties to even): edge cases (ties,
/// subnormals, overflow, infinities, NaN) and 65,536 random bit patterns, on the device.
#[test]
fn f16_packing_rounds_as_ieee() {
    use cubecl::prelude::*;
    use webguard::models::gpu::engine::wgpu_client;
    use webguard::models::gpu::half::round_trip;

    let gpu = Backend::init_blocking(BackendChoice::Gpu)
        .expect("a wgpu adapter (install mesa-vulkan-drivers for lavapipe)");
    let client = wgpu_client(&gpu.device).unwrap();
    let mut xs: Vec<f32> = vec![
        0.0,
        -0.0,
        1.0,
        -2.5,
        65504.0,
        65519.0,
        65520.0,
        1e5,
        f32::INFINITY,
        f32::NEG_INFINITY,
        f32::NAN,
        6.103_515_6e-5,
        2f32.powi(-24),
        2f32.powi(-25),
        3.0 * 2f32.powi(-26),
        1.0 + 2f32.powi(-11),
        1.0 + 3.0 * 2f32.powi(-11),
        -(1.0 + 2f32.powi(-11)),
        1e-30,
        3.4e38,
    ];
    let mut state = 0x9e37_79b9u32;
    for _ in 0..65_536 {
        state ^= state << 13;
        state ^= state >> 17;
        state ^= state << 5;
        xs.push(f32::from_bits(state));
    }
    // Also values of a KV cache's size: random mantissas between 2^-20 and 2^10.
    for i in 0..4096 {
        let bits = (state.wrapping_mul(i + 1) & 0x807f_ffff) | ((107 + i % 30) << 23);
        xs.push(f32::from_bits(bits));
    }
    if xs.len() % 2 == 1 {
        xs.push(0.5);
    }
    let pairs = xs.len() / 2;
    let input = client.create_from_slice(f32::as_bytes(&xs));
    let words = client.empty(pairs * 4);
    let out = client.empty(xs.len() * 4);
    // SAFETY: the grid covers `pairs` invocations, each inside the buffers (the kernel checks).
    unsafe {
        round_trip::launch_unchecked(
            &client,
            CubeCount::Static(pairs.div_ceil(64) as u32, 1, 1),
            CubeDim::new_1d(64),
            BufferArg::from_raw_parts(input, xs.len()),
            BufferArg::from_raw_parts(words, pairs),
            BufferArg::from_raw_parts(out.clone(), xs.len()),
            pairs,
        )
    };
    let bytes = pollster::block_on(client.read_async(vec![out])).unwrap();
    let got = f32::from_bytes(&bytes[0]);
    let mut checked = 0;
    for (&x, &g) in xs.iter().zip(got) {
        let want = half::f16::from_f32(x).to_f32();
        if want.is_nan() {
            assert!(g.is_nan(), "{x:e} ({:#x}): got {g:e}, not NaN", x.to_bits());
        } else {
            assert_eq!(
                g.to_bits(),
                want.to_bits(),
                "{x:e} ({:#x}): got {g:e}, want {want:e}",
                x.to_bits()
            );
        }
        checked += 1;
    }
    assert_eq!(checked, xs.len());
}

/// The weights' f16 scales are unpacked in the kernels with integer bit operations
/// (`models::gpu::half::unpack`): known values written out here, then all 65,536 bit patterns
/// against the `half` crate's widening (NaNs as NaNs: payload bits may differ), on the device.
#[test]
fn f16_unpacking_widens_every_pattern_exactly() {
    use cubecl::prelude::*;
    use webguard::models::gpu::engine::wgpu_client;
    use webguard::models::gpu::half::unpack_words;

    let gpu = Backend::init_blocking(BackendChoice::Gpu)
        .expect("a wgpu adapter (install mesa-vulkan-drivers for lavapipe)");
    let client = wgpu_client(&gpu.device).unwrap();
    let unpack = |words: &[u32]| -> Vec<f32> {
        let input = client.create_from_slice(u32::as_bytes(words));
        let out = client.empty(words.len() * 8);
        // SAFETY: the grid covers `words.len()` invocations, each inside the buffers (the
        // kernel checks).
        unsafe {
            unpack_words::launch_unchecked(
                &client,
                CubeCount::Static(words.len().div_ceil(64) as u32, 1, 1),
                CubeDim::new_1d(64),
                BufferArg::from_raw_parts(input, words.len()),
                BufferArg::from_raw_parts(out.clone(), words.len() * 2),
                words.len(),
            )
        };
        let bytes = pollster::block_on(client.read_async(vec![out])).unwrap();
        f32::from_bytes(&bytes[0]).to_vec()
    };
    // (f16 bits, value): normal, negative, largest, smallest normal, subnormals, zeros, inf.
    let p = |e: i32| 2f32.powi(e);
    let known: [(u32, f32); 12] = [
        (0x3c00, 1.0),
        (0xc000, -2.0),
        (0x3555, 1365.0 * p(-12)),
        (0x7bff, 65504.0),
        (0x0400, p(-14)),
        (0x03ff, 1023.0 * p(-24)),
        (0x0001, p(-24)),
        (0x8001, -p(-24)),
        (0x0000, 0.0),
        (0x8000, -0.0),
        (0x7c00, f32::INFINITY),
        (0xfc00, f32::NEG_INFINITY),
    ];
    // Each value in both halves of a word (the low half of one, the high half of the next).
    let words: Vec<u32> = known
        .iter()
        .zip(known.iter().cycle().skip(1))
        .map(|(lo, hi)| lo.0 | (hi.0 << 16))
        .collect();
    let got = unpack(&words);
    for (i, (bits, want)) in known.iter().enumerate() {
        let lo = got[2 * i];
        let hi = got[(2 * i + known.len() * 2 - 1) % (known.len() * 2)];
        for (half, g) in [("low", lo), ("high", hi)] {
            assert_eq!(
                g.to_bits(),
                want.to_bits(),
                "{bits:#06x} ({half} half): got {g:e}, want {want:e}"
            );
        }
    }
    // Every pattern: word j holds 2j (low) and 2j + 1 (high).
    let words: Vec<u32> = (0..32_768u32)
        .map(|j| (2 * j) | ((2 * j + 1) << 16))
        .collect();
    let got = unpack(&words);
    for (bits, g) in got.iter().enumerate() {
        let want = half::f16::from_bits(bits as u16).to_f32();
        if want.is_nan() {
            assert!(g.is_nan(), "{bits:#06x}: got {g:e}, not NaN");
        } else {
            assert_eq!(
                g.to_bits(),
                want.to_bits(),
                "{bits:#06x}: got {g:e}, want {want:e}"
            );
        }
    }
}

/// The most likely tokens the GPU ranks for sampling (`top_candidates`) are the whole row's
/// ranking, bit for bit, with the normaliser over the whole vocabulary; a sampled generation
/// in the engine reads back those few bytes per token, not the row, and draws what the CPU
/// backend draws from the same seed.
#[test]
fn engine_top_candidates_are_the_rows_ranking_and_sampling_reads_little() {
    let bytes = common::read_model(webguard::SMOLLM2_GGUF);
    let gguf = Gguf::parse(&bytes).unwrap();
    let gpu = Backend::init_blocking(BackendChoice::Gpu)
        .expect("a wgpu adapter (install mesa-vulkan-drivers for lavapipe)");
    let mut on_gpu = ChatModel::load(&gguf, &gpu.device).unwrap();
    // The exact cache: the f16 one moves decode steps' logits by up to 7e-3, enough to move a
    // draw below against the CPU's.
    on_gpu.model.set_gpu_kv_precision(KvPrecision::F32);
    let engine = on_gpu.model.gpu_engine().expect("the engine on wgpu");
    let reference = common::reference("llama_smollm2.json");
    for case in reference["cases"].as_array().unwrap().iter().take(2) {
        let ids = on_gpu
            .user_prompt_ids(case["prompt"].as_str().unwrap())
            .unwrap();
        let mut seq = engine.new_sequence();
        engine.step(&mut seq, &ids).unwrap();
        let row = pollster::block_on(engine.logits(&seq)).unwrap();
        let mut order: Vec<usize> = (0..row.len()).collect();
        order.sort_by(|&a, &b| row[b].total_cmp(&row[a]).then(a.cmp(&b)));
        let temperature = 0.7f32;
        let before = engine.stats();
        let c = pollster::block_on(engine.top_candidates(&seq, 64, temperature)).unwrap();
        assert_eq!(engine.stats().readback_bytes - before.readback_bytes, 516);
        let want: Vec<u32> = order[..64].iter().map(|&i| i as u32).collect();
        assert_eq!(c.ids, want);
        for (&got, &i) in c.logits.iter().zip(&order) {
            assert_eq!(got.to_bits(), row[i].to_bits());
        }
        let top = f64::from(row[order[0]]);
        let normaliser: f64 = row
            .iter()
            .map(|&l| ((f64::from(l) - top) / f64::from(temperature)).exp())
            .sum();
        let rel = (f64::from(c.normaliser) - normaliser).abs() / normaliser;
        eprintln!(
            "normaliser {} vs {normaliser} (f64): relative {rel:.1e}",
            c.normaliser
        );
        assert!(rel < 1e-5, "{} vs {normaliser}", c.normaliser);
        let one = pollster::block_on(engine.top_candidates(&seq, 1, 1.0)).unwrap();
        assert_eq!(one.ids, vec![order[0] as u32]);
    }
    // Out of range: clear errors.
    let mut seq = engine.new_sequence();
    for (k, t) in [(0, 1.0), (65, 1.0), (8, 0.0), (8, f32::NAN)] {
        engine.step(&mut seq, &[1]).unwrap();
        let err = pollster::block_on(engine.top_candidates(&seq, k, t)).unwrap_err();
        assert!(err.to_string().contains("top candidates"), "{err}");
    }

    // Sampling with a top-k: each token reads back (2 · 40 + 1) · 4 bytes; the CPU backend
    // (exact products) draws the same tokens from the same seed (with the f32 cache the logits
    // agree to 6e-5 after decoding too, far inside these draws' margins).
    let options = GenerateOptions {
        max_new_tokens: 12,
        temperature: 0.8,
        top_k: 40,
        seed: 5,
        ..GenerateOptions::default()
    };
    let ids = on_gpu
        .user_prompt_ids("Write a short poem about the sea.")
        .unwrap();
    let before = engine.stats();
    let sampled = pollster::block_on(webguard::generate::generate(
        &on_gpu,
        &ids,
        &options,
        |_| true,
    ))
    .unwrap();
    let read = engine.stats().readback_bytes - before.readback_bytes;
    assert_eq!(sampled.tokens.len(), 12, "{}", sampled.text);
    assert_eq!(read, 12 * 324, "bytes read back for 12 sampled tokens");
    let mut on_cpu = ChatModel::load(&gguf, &Device::flex()).unwrap();
    on_cpu.model.set_precision(Precision::Exact);
    let want = pollster::block_on(webguard::generate::generate(
        &on_cpu,
        &ids,
        &options,
        |_| true,
    ))
    .unwrap();
    assert_eq!(
        sampled.tokens, want.tokens,
        "{:?} vs {:?}",
        sampled.text, want.text
    );
}
