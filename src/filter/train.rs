//! Fitting the filter's heads on precomputed feature vectors: Adam on a masked, class-balanced
//! binary cross-entropy, seeded, with per-label thresholds chosen afterwards on validation data.
//!
//! The encoder stays frozen, so its features are computed once per text and every epoch over
//! tens of thousands of examples takes a second.

use burn::module::Module;
use burn::optim::{AdamConfig, GradientsParams, decay::WeightDecayConfig};
use burn::tensor::activation::log_sigmoid;
use burn::tensor::{Device, Tensor, TensorData};

use crate::backend::read_f32;
use crate::error::{Error, Result};
use crate::filter::features::FeatureSpec;
use crate::filter::heads::Heads;
use crate::filter::metrics::{BinaryMetrics, best_threshold, evaluate};
use crate::models::bert::{Bert, pad_batch};
use crate::rng::shuffle;

/// Feature vectors with a target (or none) per label.
#[derive(Debug, Clone, Default)]
pub struct FeatureSet {
    /// Width of one feature vector.
    pub width: usize,
    /// Number of labels.
    pub labels: usize,
    /// Row-major features, `len() / width` rows.
    pub features: Vec<f32>,
    /// Row-major targets, `labels` per row.
    pub targets: Vec<Option<bool>>,
}

impl FeatureSet {
    /// An empty set for `width`-wide features and `labels` labels.
    pub fn new(width: usize, labels: usize) -> Self {
        FeatureSet {
            width,
            labels,
            ..Default::default()
        }
    }

    /// Number of rows.
    pub fn len(&self) -> usize {
        self.targets.len() / self.labels.max(1)
    }

    /// Whether there are no rows.
    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }

    /// Appends one row.
    pub fn push(&mut self, features: &[f32], targets: &[Option<bool>]) -> Result<()> {
        if features.len() != self.width || targets.len() != self.labels {
            return Err(Error::InvalidInput(format!(
                "a row of {} features and {} targets does not fit a set of {} and {}",
                features.len(),
                targets.len(),
                self.width,
                self.labels
            )));
        }
        if features.iter().any(|v| !v.is_finite()) {
            return Err(Error::InvalidInput("non-finite feature value".into()));
        }
        self.features.extend_from_slice(features);
        self.targets.extend_from_slice(targets);
        Ok(())
    }

    /// Per-feature mean and standard deviation.
    pub fn moments(&self) -> (Vec<f32>, Vec<f32>) {
        let n = self.len().max(1) as f64;
        let mut mean = vec![0f64; self.width];
        let mut sq = vec![0f64; self.width];
        for row in self.features.chunks_exact(self.width) {
            for (j, &v) in row.iter().enumerate() {
                mean[j] += v as f64;
                sq[j] += (v as f64) * (v as f64);
            }
        }
        let mean: Vec<f64> = mean.iter().map(|m| m / n).collect();
        let std = sq
            .iter()
            .zip(&mean)
            .map(|(s, m)| ((s / n - m * m).max(0.0)).sqrt() as f32)
            .collect();
        (mean.iter().map(|&m| m as f32).collect(), std)
    }
}

/// How the heads are trained.
#[derive(Debug, Clone, PartialEq)]
pub struct TrainConfig {
    /// Hidden width of each head.
    pub hidden: usize,
    /// Dropout on the hidden layer while training.
    pub dropout: f64,
    /// Passes over the training set.
    pub epochs: usize,
    /// Rows per optimiser step.
    pub batch_size: usize,
    /// Adam's learning rate.
    pub learning_rate: f64,
    /// L2 weight decay.
    pub weight_decay: f32,
    /// Seeds the initial weights and the order of the rows.
    pub seed: u64,
}

impl Default for TrainConfig {
    fn default() -> Self {
        TrainConfig {
            hidden: 256,
            dropout: 0.2,
            epochs: 40,
            batch_size: 256,
            learning_rate: 1e-3,
            weight_decay: 1e-4,
            seed: 42,
        }
    }
}

/// Trains heads for `data.labels` labels on `device` (made autodiff here). Each label's loss
/// is the mean over the rows that have a target for it, positives weighted so both classes
/// count equally; the labels' losses are averaged. `progress(epoch, mean loss)` after each epoch.
/// Reads the loss back synchronously: natively or on the CPU backend only (in-browser tuning
/// on WebGPU needs an async variant; issue 6).
pub fn train_heads(
    data: &FeatureSet,
    config: &TrainConfig,
    device: &Device,
    mut progress: impl FnMut(usize, f64),
) -> Result<Heads> {
    if data.is_empty() || config.batch_size == 0 || config.epochs == 0 {
        return Err(Error::InvalidInput(
            "training needs rows, a batch size and epochs".into(),
        ));
    }
    let (l, w) = (data.labels, data.width);
    let class_weight = class_weights(&data.targets, l);
    let ad = device.clone().autodiff();
    ad.seed(config.seed);
    let (mean, std) = data.moments();
    let mut heads = Heads::new(l, w, config.hidden, config.dropout, &mean, &std, &ad);
    let mut optim = AdamConfig::new()
        .with_weight_decay(Some(WeightDecayConfig::new(config.weight_decay)))
        .init();
    let mut order: Vec<usize> = (0..data.len()).collect();
    for epoch in 0..config.epochs {
        shuffle(&mut order, config.seed.wrapping_add(epoch as u64));
        let (mut loss_sum, mut batches) = (0.0, 0usize);
        for chunk in order.chunks(config.batch_size) {
            let b = chunk.len();
            let mut x = Vec::with_capacity(b * w);
            for &r in chunk {
                x.extend_from_slice(&data.features[r * w..(r + 1) * w]);
            }
            let targets: Vec<&[Option<bool>]> = chunk
                .iter()
                .map(|&r| &data.targets[r * l..(r + 1) * l])
                .collect();
            let (y, m) = batch_targets(&targets, &class_weight, &ad);
            let x = Tensor::<2>::from_data(TensorData::new(x, [b, w]), &ad);
            let loss = masked_bce(heads.logits(x), y, m);
            loss_sum += f64::from(read_scalar_blocking(loss.clone())?);
            batches += 1;
            let grads = GradientsParams::from_grads(loss.backward(), &heads);
            heads = optim.step(config.learning_rate, heads, grads);
        }
        progress(epoch + 1, loss_sum / batches as f64);
    }
    Ok(heads.valid())
}

/// Per label, the weight of a negative and of a positive example such that both classes
/// weigh the same in total (1 each when a class is missing).
pub fn class_weights(targets: &[Option<bool>], labels: usize) -> Vec<[f32; 2]> {
    (0..labels)
        .map(|j| {
            let known = || targets.iter().skip(j).step_by(labels).flatten();
            let pos = known().filter(|t| **t).count();
            let neg = known().filter(|t| !**t).count();
            let total = (pos + neg) as f32;
            if pos > 0 && neg > 0 {
                [total / (2.0 * neg as f32), total / (2.0 * pos as f32)]
            } else {
                [1.0, 1.0]
            }
        })
        .collect()
}

/// Binary cross-entropy of logits `z` against targets `y`, weighted per entry by `m` (0 where
/// the target is unknown), averaged per label over its weight, then over labels.
fn masked_bce(z: Tensor<2>, y: Tensor<2>, m: Tensor<2>) -> Tensor<1> {
    let bce = -(y.clone() * log_sigmoid(z.clone()) + (y.neg() + 1.0) * log_sigmoid(z.neg()));
    let per_label = (bce * m.clone()).sum_dim(0) / m.sum_dim(0).clamp_min(1e-6);
    per_label.mean()
}

/// Targets and weights of a batch as `[b, labels]` tensors.
fn batch_targets(
    rows: &[&[Option<bool>]],
    class_weight: &[[f32; 2]],
    device: &Device,
) -> (Tensor<2>, Tensor<2>) {
    let l = class_weight.len();
    let mut y = Vec::with_capacity(rows.len() * l);
    let mut m = Vec::with_capacity(rows.len() * l);
    for targets in rows {
        for (j, t) in targets.iter().enumerate() {
            y.push(if *t == Some(true) { 1.0f32 } else { 0.0 });
            m.push(t.map_or(0.0, |v| class_weight[j][usize::from(v)]));
        }
    }
    let shape = [rows.len(), l];
    (
        Tensor::from_data(TensorData::new(y, shape), device),
        Tensor::from_data(TensorData::new(m, shape), device),
    )
}

/// The encoder (with LoRA adapters) and the heads, trained together.
#[derive(Module, Debug)]
pub struct Tunable {
    /// The encoder, frozen but for its adapters.
    pub bert: Bert,
    /// The heads.
    pub heads: Heads,
}

/// A token window with its text's targets.
#[derive(Debug, Clone)]
pub struct TargetWindow {
    /// `[CLS] ... [SEP]` ids.
    pub ids: Vec<u32>,
    /// One target (or none) per label.
    pub targets: Vec<Option<bool>>,
}

/// Trains LoRA adapters already attached to `model.bert` (see `Bert::with_lora`) together
/// with `model.heads`, both on an autodiff device, on token windows. Batches hold windows of
/// similar length (shuffled in blocks, sorted within a block) so little is padding.
/// `progress(step, steps, loss)` after each step. Like [`train_heads`], natively or on the CPU
/// backend only.
pub fn tune_encoder(
    mut model: Tunable,
    spec: &FeatureSpec,
    windows: &[TargetWindow],
    config: &TrainConfig,
    mut progress: impl FnMut(usize, usize, f64),
) -> Result<Tunable> {
    let Some(first) = windows.first() else {
        return Err(Error::InvalidInput("no training windows".into()));
    };
    let labels = first.targets.len();
    let all: Vec<Option<bool>> = windows
        .iter()
        .flat_map(|w| w.targets.iter().copied())
        .collect();
    let class_weight = class_weights(&all, labels);
    let device = model.heads.device();
    let mut optim = AdamConfig::new()
        .with_weight_decay(Some(WeightDecayConfig::new(config.weight_decay)))
        .init();
    let b = config.batch_size.max(1);
    let steps_per_epoch = windows.len().div_ceil(b);
    let total = steps_per_epoch * config.epochs;
    let mut step = 0;
    for epoch in 0..config.epochs {
        let mut order: Vec<usize> = (0..windows.len()).collect();
        shuffle(&mut order, config.seed.wrapping_add(1000 + epoch as u64));
        let mut batches: Vec<Vec<usize>> = Vec::with_capacity(steps_per_epoch);
        for block in order.chunks_mut(b * 16) {
            block.sort_by_key(|&i| windows[i].ids.len());
            batches.extend(block.chunks(b).map(<[usize]>::to_vec));
        }
        shuffle(&mut batches, config.seed.wrapping_add(2000 + epoch as u64));
        for batch in batches {
            let ids: Vec<Vec<u32>> = batch.iter().map(|&i| windows[i].ids.clone()).collect();
            let targets: Vec<&[Option<bool>]> = batch
                .iter()
                .map(|&i| windows[i].targets.as_slice())
                .collect();
            let (ids, mask) = pad_batch(&ids, 0, &device);
            let (y, m) = batch_targets(&targets, &class_weight, &device);
            let features = spec.compute(&model.bert, ids, mask);
            let loss = masked_bce(model.heads.logits(features), y, m);
            let value = read_scalar_blocking(loss.clone())?;
            if !value.is_finite() {
                return Err(Error::Backend(format!(
                    "training diverged at step {step} (loss {value}); lower the learning rate"
                )));
            }
            let grads = GradientsParams::from_grads(loss.backward(), &model);
            model = optim.step(config.learning_rate, model, grads);
            step += 1;
            progress(step, total, f64::from(value));
        }
    }
    Ok(model.valid())
}

/// A one-element tensor's value, read synchronously (training runs natively or on the CPU
/// backend, where that is allowed).
fn read_scalar_blocking(t: Tensor<1>) -> Result<f32> {
    t.into_data()
        .try_to_vec::<f32>()
        .map_err(|e| Error::Backend(format!("unexpected tensor data: {e:?}")))?
        .first()
        .copied()
        .ok_or_else(|| Error::Backend("empty loss".into()))
}

/// Scores `[rows][labels]` of `heads` on a feature set, in batches.
pub async fn score_features(
    heads: &Heads,
    data: &FeatureSet,
    device: &Device,
) -> Result<Vec<Vec<f32>>> {
    let mut out = Vec::with_capacity(data.len());
    for rows in data.features.chunks(1024 * data.width) {
        let b = rows.len() / data.width;
        let x = Tensor::<2>::from_data(TensorData::new(rows.to_vec(), [b, data.width]), device);
        let s = read_f32(heads.scores(x)).await?;
        out.extend(s.chunks_exact(data.labels).map(<[f32]>::to_vec));
    }
    Ok(out)
}

/// For each label: the threshold with the best macro-F1 on the rows that have a target for
/// it, and the metrics there. Labels without both classes keep 0.5.
pub fn choose_thresholds(scores: &[Vec<f32>], data: &FeatureSet) -> Vec<BinaryMetrics> {
    (0..data.labels)
        .map(|j| {
            let (s, y): (Vec<f32>, Vec<bool>) = scores
                .iter()
                .zip(data.targets.chunks_exact(data.labels))
                .filter_map(|(s, t)| t[j].map(|y| (s[j], y)))
                .unzip();
            let both = y.iter().any(|&v| v) && y.iter().any(|&v| !v);
            let t = if both { best_threshold(&s, &y) } else { 0.5 };
            evaluate(&s, &y, t)
        })
        .collect()
}
