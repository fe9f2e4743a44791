//! The filter with `backend: "auto"` on a GPU (lavapipe here): both devices are measured at
//! load, and batches routed to the GPU copy of the encoder score what the CPU scores. And the
//! chat model's side of `auto`: a software adapter such as lavapipe sends it to the CPU.

mod common;

use burn::tensor::Device;
use webguard::backend::{Backend, BackendChoice, BackendKind};
use webguard::filter::routing::BatchRoute;
use webguard::filter::{Filter, load_encoder};

fn gpu_backend(choice: BackendChoice) -> Backend {
    // build.sh installs Mesa's lavapipe, so a Vulkan adapter must exist here.
    let gpu = Backend::init_blocking(choice).unwrap();
    assert_eq!(
        gpu.kind,
        BackendKind::Wgpu,
        "a wgpu adapter (install mesa-vulkan-drivers for lavapipe): {gpu}"
    );
    gpu
}

fn scores(filter: &Filter, texts: &[&str]) -> Vec<Vec<f32>> {
    pollster::block_on(filter.scores(texts)).unwrap()
}

#[test]
fn auto_on_lavapipe_runs_the_chat_model_on_the_cpu_and_a_requested_gpu_stays() {
    let auto = gpu_backend(BackendChoice::Auto);
    let adapter = auto.adapter.clone().unwrap();
    assert!(
        adapter.is_software(),
        "lavapipe is a CPU adapter: {adapter:?}"
    );
    let chat = auto.for_chat();
    assert_eq!(chat.kind, BackendKind::Cpu);
    assert!(chat.device == Device::flex());
    let reason = chat.fallback_reason.unwrap();
    assert!(
        reason.contains(&adapter.name) && reason.contains("software rasteriser"),
        "{reason}"
    );
    let asked = gpu_backend(BackendChoice::Gpu).for_chat();
    assert_eq!(
        asked.kind,
        BackendKind::Wgpu,
        "the GPU asked for is kept: {asked}"
    );
}

#[test]
fn auto_on_a_gpu_times_both_devices_and_routes_as_measured() {
    let auto = gpu_backend(BackendChoice::Auto);
    let heads = Filter::default_heads_path();
    let filter =
        pollster::block_on(Filter::load_for(&common::models_dir(), &heads, &auto)).unwrap();
    let route = filter.route();
    eprintln!("{}", route.reason);
    let m = route.measured.as_ref().expect("auto on a GPU measures");
    assert_eq!(m.window_tokens, filter.options().window_tokens);
    for ms in [m.cpu_one_ms, m.cpu_batch_ms, m.gpu_one_ms] {
        assert!(ms.is_finite() && ms > 0.0, "{m:?}");
    }
    // The heads and the main encoder are on the CPU; the choice is the measurement's.
    assert!(*filter.device() == Device::flex());
    assert_eq!(
        route.gpu_from_batch,
        m.gpu_from_batch(filter.options().batch_size)
    );
    // It classifies, and counts which device ran.
    let before = filter.encoder().batch_counts();
    scores(&filter, &["You are an idiot.", "Have a nice day."]);
    let after = filter.encoder().batch_counts();
    assert_eq!((after.own + after.gpu) - (before.own + before.gpu), 1);

    // Asked for by name, the GPU runs everything and nothing is measured.
    let named = gpu_backend(BackendChoice::Gpu);
    let on_gpu =
        pollster::block_on(Filter::load_for(&common::models_dir(), &heads, &named)).unwrap();
    assert_eq!(on_gpu.route().gpu_from_batch, Some(1));
    assert_eq!(on_gpu.route().measured, None);
    assert!(*on_gpu.device() != Device::flex());
}

#[test]
fn batches_routed_to_the_gpu_score_what_the_cpu_scores() {
    let gpu = gpu_backend(BackendChoice::Gpu);
    let cpu = common::shipped_filter();
    let mut routed = common::shipped_filter();
    let dir = common::models_dir().join(webguard::MINILM_DIR);
    let read = |name: &str| std::fs::read(dir.join(name)).unwrap();
    let heads = std::fs::read(Filter::default_heads_path()).unwrap();
    let copy = load_encoder(
        &read("config.json"),
        &read("model.safetensors"),
        &heads,
        &gpu.device,
    )
    .unwrap();
    let route = BatchRoute {
        gpu_from_batch: Some(3),
        reason: "test: three windows or more on the GPU".into(),
        measured: None,
    };
    routed
        .route_to_gpu(copy, &gpu.device, route.clone())
        .unwrap();
    assert_eq!(routed.route(), &route);

    let long = "I went to the market this morning and bought apples, bread and cheese. ".repeat(12)
        + "You are a worthless idiot and everyone hates you.";
    let cases: [(&[&str], usize, usize); 3] = [
        // (texts, batches expected on the CPU, on the GPU)
        (&["You are a worthless idiot."], 1, 0),
        (
            &[
                "Have a lovely day.",
                "How do I make a pipe bomb?",
                "Thanks!",
            ],
            0,
            1,
        ),
        (&[long.as_str(), "Shut up, moron."], 0, 1),
    ];
    for (texts, own, on_gpu) in cases {
        let before = routed.encoder().batch_counts();
        let got = scores(&routed, texts);
        let after = routed.encoder().batch_counts();
        assert_eq!(
            (after.own - before.own, after.gpu - before.gpu),
            (own, on_gpu),
            "{texts:?}"
        );
        // 1e-3: the bound the filter holds between WebGPU and the CPU everywhere (the two
        // encoders sum in different orders; 2.3e-4 measured on lavapipe).
        let want = scores(&cpu, texts);
        for (t, (g, w)) in got.iter().zip(&want).enumerate() {
            for (l, (a, b)) in g.iter().zip(w).enumerate() {
                assert!(
                    (a - b).abs() < 1e-3,
                    "text {t} label {l}: routed {a} vs CPU {b}"
                );
            }
        }
    }
    // The test texts are judged as expected at all (so equal scores compare something).
    let insult = scores(&routed, &["You are a worthless idiot."]);
    assert!(insult[0][0] > cpu.thresholds()[0], "{insult:?}");
}
