//! The same small burn computation on the CPU backend and on wgpu (Vulkan; lavapipe on a
//! machine without a GPU), both against a plain f64 implementation written here.

use webguard::backend::{Backend, BackendChoice, BackendKind, probe_computation};

/// `probe_computation` in f64, independently of burn.
fn expected() -> Vec<f64> {
    let a = |i: usize, k: usize| (0.37 * i as f64 + 0.11 * k as f64).sin();
    let b = |k: usize, j: usize| (0.23 * k as f64 - 0.41 * j as f64).cos();
    let mut probs: Vec<f64> = Vec::new();
    let mut sums: Vec<f64> = Vec::new();
    for i in 0..4 {
        let logits: Vec<f64> = (0..3)
            .map(|j| (0..8).map(|k| a(i, k) * b(k, j)).sum::<f64>() + 0.5)
            .collect();
        let max = logits.iter().cloned().fold(f64::MIN, f64::max);
        let exps: Vec<f64> = logits.iter().map(|l| (l - max).exp()).collect();
        let total: f64 = exps.iter().sum();
        let p: Vec<f64> = exps.iter().map(|e| e / total).collect();
        sums.push(p.iter().map(|x| x * x).sum());
        probs.extend(p);
    }
    probs.extend(sums);
    probs
}

fn assert_close(got: &[f32], label: &str) {
    let want = expected();
    assert_eq!(got.len(), want.len());
    for (i, (g, w)) in got.iter().zip(&want).enumerate() {
        assert!((f64::from(*g) - w).abs() < 1e-5, "{label}[{i}]: {g} vs {w}");
    }
}

#[test]
fn cpu_and_wgpu_compute_the_same_numbers() {
    let cpu = Backend::init_blocking(BackendChoice::Cpu).unwrap();
    assert_eq!(cpu.kind, BackendKind::Cpu);
    let on_cpu = pollster::block_on(probe_computation(&cpu.device)).unwrap();
    assert_close(&on_cpu, "cpu");

    // build.sh installs Mesa's lavapipe, so a Vulkan adapter must exist here.
    let gpu = Backend::init_blocking(BackendChoice::Gpu)
        .expect("a wgpu adapter (install mesa-vulkan-drivers for lavapipe)");
    assert_eq!(gpu.kind, BackendKind::Wgpu);
    let adapter = gpu.adapter.as_ref().unwrap();
    assert!(!adapter.name.is_empty());
    eprintln!("wgpu adapter: {gpu}");
    let on_gpu = pollster::block_on(probe_computation(&gpu.device)).unwrap();
    assert_close(&on_gpu, "wgpu");
    for (c, g) in on_cpu.iter().zip(&on_gpu) {
        assert!((c - g).abs() < 1e-6, "cpu {c} vs wgpu {g}");
    }

    // Auto picks the GPU when there is one, and a second setup reuses the first.
    let auto = Backend::init_blocking(BackendChoice::Auto).unwrap();
    assert_eq!(auto.kind, BackendKind::Wgpu);
    assert_eq!(auto.adapter, gpu.adapter);
}
