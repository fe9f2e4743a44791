//! `backend: "auto"` for the filter: which device encodes a batch of windows.
//!
//! A small encoder can run faster on the CPU than on a GPU for one short text, where the GPU
//! pays a fixed cost per dispatch and per read-back (a transformers.js report measured
//! all-MiniLM-L6-v2 9.6x faster in wasm for single texts), and far faster on the GPU for big
//! batches. Where the two cross depends on the machine (a software rasteriser such as
//! SwiftShader or lavapipe is slower at every size; a discrete GPU may win from one window), so
//! with `auto` on a GPU the filter keeps its heads and an encoder on the CPU, measures both
//! devices once at load ([`measure`]) and sends batches of at least [`BatchRoute::gpu_from_batch`]
//! windows to a second copy of the encoder on the GPU. When the GPU wins nowhere, its copy is
//! dropped. Scores are the same either way up to float rounding: both copies hold the same
//! weights and the heads always run on the CPU.

use burn::tensor::Device;
use serde::Serialize;

use crate::backend::{BackendKind, read_f32};
use crate::clock::now_ms;
use crate::error::Result;
use crate::filter::features::FeatureSpec;
use crate::models::bert::Bert;

/// Windows in the larger batch measured at load. Small enough to keep the measurement short on
/// a slow device (the CPU encodes 8 windows in about 0.2 s in wasm), large enough that the
/// per-window cost shows beside the fixed one; larger batches are extrapolated linearly, which
/// is how both devices behave in this range (the CPU's time grows with the rows, the GPU's
/// is mostly its fixed cost).
pub const MEASURED_BATCH: usize = 8;

/// What was measured at load: milliseconds to encode one batch of `window_tokens`-token
/// windows and read its features back, on each device (the fastest of a few runs, after a
/// warm-up run that compiles kernels and packs weights).
#[derive(Debug, Clone, PartialEq, Serialize)]
#[serde(rename_all = "camelCase")]
pub struct Measurement {
    /// Tokens per measured window.
    pub window_tokens: usize,
    /// Windows in the larger measured batch.
    pub batch: usize,
    /// One window on the CPU.
    pub cpu_one_ms: f64,
    /// `batch` windows on the CPU.
    pub cpu_batch_ms: f64,
    /// One window on the GPU.
    pub gpu_one_ms: f64,
    /// `batch` windows on the GPU; `None` when not measured because the GPU took longer for
    /// one window than the CPU for `batch` (it cannot win at any size up to `batch`).
    pub gpu_batch_ms: Option<f64>,
}

impl Measurement {
    /// Milliseconds for `windows` windows on the CPU (`gpu` false) or the GPU, linear through
    /// the two measured sizes; `None` for a GPU size that was not measured.
    pub fn estimate_ms(&self, windows: usize, gpu: bool) -> Option<f64> {
        let (one, batch) = if gpu {
            (self.gpu_one_ms, self.gpu_batch_ms?)
        } else {
            (self.cpu_one_ms, self.cpu_batch_ms)
        };
        let slope = if self.batch > 1 {
            (batch - one) / (self.batch - 1) as f64
        } else {
            0.0
        };
        Some(one + slope * (windows.max(1) - 1) as f64)
    }

    /// The smallest batch size from which the GPU is faster at every size up to `max_batch`
    /// (the most windows the filter encodes at once), or `None` when it is not faster at
    /// `max_batch` itself.
    pub fn gpu_from_batch(&self, max_batch: usize) -> Option<usize> {
        let faster = |b: usize| match (self.estimate_ms(b, true), self.estimate_ms(b, false)) {
            (Some(gpu), Some(cpu)) => gpu < cpu,
            _ => false,
        };
        let mut from = None;
        for b in (1..=max_batch.max(1)).rev() {
            if !faster(b) {
                break;
            }
            from = Some(b);
        }
        from
    }
}

/// Which device encodes which batches, and why.
#[derive(Debug, Clone, PartialEq, Serialize)]
#[serde(rename_all = "camelCase")]
pub struct BatchRoute {
    /// Batches of at least this many windows run on the GPU, smaller ones on the CPU; `None`:
    /// every batch on the CPU; `Some(1)`: every batch on the GPU.
    pub gpu_from_batch: Option<usize>,
    /// What was measured and what it chose, in words.
    pub reason: String,
    /// The load-time measurement, when there was one (`backend: "auto"` on a GPU).
    pub measured: Option<Measurement>,
}

impl BatchRoute {
    /// The route of a filter on one device, chosen by the caller rather than measured.
    pub fn single(kind: BackendKind, why: &str) -> Self {
        BatchRoute {
            gpu_from_batch: (kind == BackendKind::Wgpu).then_some(1),
            reason: format!("{why}: every batch on the {}", device_name(kind)),
            measured: None,
        }
    }

    /// The route `measured` gives for batches of up to `max_batch` windows.
    pub fn from_measurement(measured: Measurement, max_batch: usize) -> Self {
        let m = &measured;
        let gpu_from_batch = m.gpu_from_batch(max_batch);
        let one = format!(
            "one {}-token window: CPU {:.0} ms, GPU {:.0} ms",
            m.window_tokens, m.cpu_one_ms, m.gpu_one_ms
        );
        let batch = match m.gpu_batch_ms {
            Some(gpu) => format!(
                "{} windows: CPU {:.0} ms, GPU {gpu:.0} ms",
                m.batch, m.cpu_batch_ms
            ),
            None => format!(
                "{} windows: CPU {:.0} ms, GPU not tried (slower for one window)",
                m.batch, m.cpu_batch_ms
            ),
        };
        let choice = match gpu_from_batch {
            None => "every batch on the CPU".to_string(),
            Some(1) => "every batch on the GPU".to_string(),
            Some(n) => format!("batches of {n} windows or more on the GPU, fewer on the CPU"),
        };
        BatchRoute {
            gpu_from_batch,
            reason: format!("measured at load ({one}; {batch}): {choice}"),
            measured: Some(measured),
        }
    }
}

fn device_name(kind: BackendKind) -> &'static str {
    match kind {
        BackendKind::Wgpu => "GPU",
        BackendKind::Cpu => "CPU",
    }
}

/// One device's copy of the encoder, for timing.
pub struct Timed<'a> {
    /// The encoder.
    pub bert: &'a Bert,
    /// Its device.
    pub device: &'a Device,
}

impl Timed<'_> {
    /// Milliseconds to encode `rows` copies of `window` and read the features back: the
    /// fastest of `runs` runs.
    async fn fastest_ms(
        &self,
        spec: &FeatureSpec,
        window: &[u32],
        rows: usize,
        runs: usize,
    ) -> Result<f64> {
        let mut best = f64::INFINITY;
        for _ in 0..runs {
            let started = now_ms();
            read_f32(spec.of_windows(self.bert, &vec![window; rows], self.device)).await?;
            best = best.min(now_ms() - started);
        }
        Ok(best)
    }
}

/// Measures one window and [`MEASURED_BATCH`] windows of `window` on both devices, each after
/// a warm-up run. The GPU's batch is skipped when one window on the GPU already takes longer
/// than the CPU's batch (on a software rasteriser, several seconds saved at load).
pub async fn measure(
    spec: &FeatureSpec,
    cpu: Timed<'_>,
    gpu: Timed<'_>,
    window: &[u32],
) -> Result<Measurement> {
    let batch = MEASURED_BATCH;
    cpu.fastest_ms(spec, window, batch, 1).await?;
    let cpu_one_ms = cpu.fastest_ms(spec, window, 1, 3).await?;
    let cpu_batch_ms = cpu.fastest_ms(spec, window, batch, 2).await?;
    gpu.fastest_ms(spec, window, 1, 1).await?;
    let mut gpu_one_ms = gpu.fastest_ms(spec, window, 1, 1).await?;
    let gpu_batch_ms = if gpu_one_ms < cpu_batch_ms {
        gpu_one_ms = gpu_one_ms.min(gpu.fastest_ms(spec, window, 1, 1).await?);
        gpu.fastest_ms(spec, window, batch, 1).await?;
        Some(gpu.fastest_ms(spec, window, batch, 2).await?)
    } else {
        None
    };
    Ok(Measurement {
        window_tokens: window.len(),
        batch,
        cpu_one_ms,
        cpu_batch_ms,
        gpu_one_ms,
        gpu_batch_ms,
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    fn measured(cpu: (f64, f64), gpu: (f64, Option<f64>)) -> Measurement {
        Measurement {
            window_tokens: 64,
            batch: 8,
            cpu_one_ms: cpu.0,
            cpu_batch_ms: cpu.1,
            gpu_one_ms: gpu.0,
            gpu_batch_ms: gpu.1,
        }
    }

    #[test]
    fn a_gpu_slower_at_every_size_gets_no_batch() {
        // SwiftShader-like: seconds for one window.
        let m = measured((40.0, 200.0), (5600.0, None));
        assert_eq!(m.gpu_from_batch(32), None);
        let route = BatchRoute::from_measurement(m, 32);
        assert_eq!(route.gpu_from_batch, None);
        assert!(
            route.reason.contains("every batch on the CPU"),
            "{}",
            route.reason
        );
        assert!(route.reason.contains("GPU not tried"), "{}", route.reason);
    }

    #[test]
    fn a_gpu_faster_from_one_window_gets_every_batch() {
        let m = measured((40.0, 200.0), (10.0, Some(14.0)));
        assert_eq!(m.gpu_from_batch(32), Some(1));
        let route = BatchRoute::from_measurement(m, 32);
        assert!(
            route.reason.contains("every batch on the GPU"),
            "{}",
            route.reason
        );
    }

    #[test]
    fn the_crossing_is_where_the_lines_meet() {
        // CPU: 40 + (b - 1) * 20 ms (180 ms at 8, 660 at 32); GPU: 100 + (b - 1) * 5 ms.
        // 40 + 20x < 100 + 5x while x < 4: the GPU is faster from b = 6 (x = 5: 140 vs 125);
        // at b = 5 they tie (120 vs 120), and a tie stays on the CPU.
        let m = measured((40.0, 180.0), (100.0, Some(135.0)));
        assert_eq!(m.estimate_ms(5, false), Some(120.0));
        assert_eq!(m.estimate_ms(5, true), Some(120.0));
        assert_eq!(m.gpu_from_batch(32), Some(6));
        // Batches never get larger than the filter's batch size: a crossing past it is none.
        assert_eq!(m.gpu_from_batch(5), None);
        let route = BatchRoute::from_measurement(m, 32);
        assert!(
            route
                .reason
                .contains("batches of 6 windows or more on the GPU"),
            "{}",
            route.reason
        );
    }

    #[test]
    fn a_gpu_faster_only_for_small_batches_is_not_used() {
        // Faster at one window, slower at 32: the route keeps every batch size the GPU loses
        // on the CPU, and "from n up" can only describe a tail, so none.
        let m = measured((10.0, 45.0), (8.0, Some(80.0)));
        assert_eq!(m.gpu_from_batch(32), None);
    }

    #[test]
    fn a_route_chosen_by_the_caller_says_so() {
        let gpu = BatchRoute::single(BackendKind::Wgpu, "WebGPU requested");
        assert_eq!(gpu.gpu_from_batch, Some(1));
        assert_eq!(gpu.reason, "WebGPU requested: every batch on the GPU");
        let cpu = BatchRoute::single(BackendKind::Cpu, "CPU requested");
        assert_eq!((cpu.gpu_from_batch, cpu.measured), (None, None));
    }
}
