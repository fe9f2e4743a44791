//! Teaching the filter from a few labelled texts: a new user-defined label (e.g. "spoiler"),
//! or an adjusted existing one.
//!
//! Each tuned label's head (`Linear -> ReLU -> Linear` over the frozen encoder's pooled
//! features, standardised as the shipped heads' are) is trained with Adam on all examples at
//! once, positives and negatives weighted to count equally; labels tuned together share the
//! steps. Every window of a negative example is taught as negative; a positive example longer
//! than one window is taught through the log-mean-exp of its windows' logits, so its telling
//! window carries it, as scoring (a text's worst window) reads it: taught window by window,
//! a spoiler label learnt from long reviews ending in a spoiler scored spoiler-free long
//! reviews 0.85 and the spoilers 0.77; now 0.43 and 0.73 (`tests/tune.rs`). The encoder and
//! the other labels' heads do not change, so the shipped labels' figures stay what they were.
//! The tuned heads travel as a safetensors file ([`Filter::export_adapters`]) valid only on
//! top of the filter they came from.

use crate::error::{Error, Result};
use crate::filter::heads::{Heads, TUNED_FORMAT};
use crate::filter::{Filter, LabelOrigin};
#[cfg(feature = "tune")]
use {
    crate::backend::read_f32,
    crate::filter::heads::Head,
    crate::filter::heads_file::{MAX_LABELS, check_label},
    crate::tune::{Step, TuneOptions, check_final_loss, now_ms, report_step, step_loss},
    burn::grad_clipping::GradientClippingConfig,
    burn::module::Module,
    burn::optim::{AdamConfig, GradientsParams, decay::WeightDecayConfig},
    burn::tensor::activation::log_sigmoid,
    burn::tensor::{Device, Int, Tensor, TensorData},
    std::collections::BTreeMap,
};

/// How [`Filter::import_adapters_with`] treats the labels the filter was loaded with.
#[derive(Debug, Clone, Default, PartialEq, serde::Deserialize, serde::Serialize)]
#[serde(rename_all = "camelCase", default, deny_unknown_fields)]
pub struct ImportOptions {
    /// Let the adapters replace the heads or thresholds of the labels the filter was loaded
    /// with (the shipped `offensive`, `hate`, `harmful`). Off by default: adapters that change
    /// one are refused, so a shared file cannot weaken or switch off moderation unnoticed.
    pub replace_shipped_labels: bool,
}

/// One labelled text: `value` says whether `label` applies to `text`.
#[derive(Debug, Clone, PartialEq, serde::Deserialize, serde::Serialize)]
pub struct LabelExample {
    /// The text.
    pub text: String,
    /// A label of the filter, or a new one (1 to 32 characters: `a-z`, `0-9`, `_`, `-`).
    pub label: String,
    /// Whether the label applies.
    pub value: bool,
}

/// What a tuning run did.
#[derive(Debug, Clone, PartialEq, serde::Serialize)]
#[serde(rename_all = "camelCase")]
pub struct FilterTuneReport {
    /// Labels tuned, in the order they first appear in the examples.
    pub labels: Vec<String>,
    /// Those of them that are new.
    pub new_labels: Vec<String>,
    /// The loss of the installed heads (after the last step's update) on the examples.
    pub final_loss: f32,
    /// Examples used.
    pub examples: usize,
}

/// A new label's threshold: no validation data comes with a handful of examples, and the
/// balanced loss centres the two classes on 0.5.
pub const NEW_LABEL_THRESHOLD: f32 = 0.5;
/// Most examples per call: tuning is meant for a handful, and every one is encoded.
pub const MAX_EXAMPLES: usize = 2000;
/// Most 64-token windows per call: every window's features are held at once (2,688 floats,
/// 10.5 KB each), so this bounds a call's memory at about 86 MB. Without it 250 texts of
/// 128 KiB each would ask for more than wasm32's 4 GiB.
pub const MAX_WINDOWS: usize = 8192;
#[cfg(feature = "tune")]
/// Adam's weight decay on the tuned heads (a mild pull towards small weights, which a few
/// examples need).
const WEIGHT_DECAY: f32 = 1e-3;

#[cfg(feature = "tune")]
/// The heads being tuned, trained together.
#[derive(Module, Debug)]
struct TunedHeads {
    heads: Vec<Head>,
}

#[cfg(feature = "tune")]
/// Per label, its examples' windows as the units the loss reads: each window of a negative
/// example on its own (every window must read as negative), the windows of a positive one
/// together (the label applies to the text, and scoring takes a text's worst window, so one
/// window that shows it is enough; a long spoiler-free review with one spoiler sentence must
/// not teach its other windows as spoilers).
struct LabelRows {
    label: String,
    /// The windows (rows of the features) of each unit.
    units: Vec<Vec<usize>>,
    targets: Vec<bool>,
}

impl Filter {
    #[cfg(feature = "tune")]
    /// Tunes the heads of the labels in `examples` (new labels get a new head, threshold
    /// [`NEW_LABEL_THRESHOLD`]). `on_step` receives each step and returns `false` to cancel.
    /// Errors (bad examples or options, a text over the length limit, a non-finite loss,
    /// cancellation) leave the filter exactly as it was.
    pub async fn tune(
        &mut self,
        examples: &[LabelExample],
        options: &TuneOptions,
        mut on_step: impl FnMut(&Step) -> bool,
    ) -> Result<FilterTuneReport> {
        options.validate()?;
        if examples.is_empty() {
            return Err(Error::InvalidInput("no examples to learn from".into()));
        }
        if examples.len() > MAX_EXAMPLES {
            return Err(Error::InvalidInput(format!(
                "{} examples; at most {MAX_EXAMPLES} per call",
                examples.len()
            )));
        }
        // Group by label, in first-seen order, and check each label has both classes.
        let mut order: Vec<String> = Vec::new();
        let mut counts: BTreeMap<&str, [usize; 2]> = BTreeMap::new();
        for e in examples {
            check_label(&e.label)?;
            let c = counts.entry(e.label.as_str()).or_insert_with(|| {
                order.push(e.label.clone());
                [0, 0]
            });
            c[usize::from(e.value)] += 1;
        }
        for label in &order {
            let [neg, pos] = counts[label.as_str()];
            if neg == 0 || pos == 0 {
                return Err(Error::InvalidInput(format!(
                    "label {label:?} needs positive and negative examples (it has {pos} \
                     positive, {neg} negative)"
                )));
            }
        }

        // The labels after this call: an export holds them all, and a file with more than
        // MAX_LABELS could never be imported again (nor restored after a crash in the browser).
        let new_labels = order
            .iter()
            .filter(|l| self.label_index(l).is_err())
            .count();
        let labels_after = self.info().labels.len() + new_labels;
        if labels_after > MAX_LABELS {
            return Err(Error::InvalidInput(format!(
                "{new_labels} new labels would make {labels_after}; a filter has at most \
                 {MAX_LABELS}"
            )));
        }

        // Features of every window of every text, standardised, on the host.
        let texts: Vec<&str> = examples.iter().map(|e| e.text.as_str()).collect();
        // Counted while the texts are read, so a huge input stops early.
        let Some(windows) = self.encoder().windows_within(&texts, MAX_WINDOWS)? else {
            return Err(Error::InvalidInput(format!(
                "the examples make more than {MAX_WINDOWS} windows of the encoder's length \
                 per call (use shorter texts or fewer examples)"
            )));
        };
        let width = self.heads().width();
        let mut features = Vec::with_capacity(windows.len() * width);
        for chunk in windows.chunks(self.options().batch_size) {
            let rows: Vec<&[u32]> = chunk.iter().map(|(_, w)| w.as_slice()).collect();
            let raw = self
                .encoder()
                .batch_features(&self.info().features, &rows)
                .await?;
            features.extend(read_f32(self.heads().standardise(raw)).await?);
        }
        let mut rows_of_text = vec![Vec::new(); examples.len()];
        for (row, (text, _)) in windows.iter().enumerate() {
            rows_of_text[*text].push(row);
        }
        let per_label: Vec<LabelRows> = order
            .iter()
            .map(|label| {
                let (mut units, mut targets) = (Vec::new(), Vec::new());
                for (e, rows) in examples.iter().zip(&rows_of_text) {
                    // (Every text makes at least one window; an empty unit would have no
                    // logit to read.)
                    if e.label != *label || rows.is_empty() {
                        continue;
                    }
                    if e.value {
                        units.push(rows.clone());
                        targets.push(true);
                    } else {
                        units.extend(rows.iter().map(|&r| vec![r]));
                        targets.extend(rows.iter().map(|_| false));
                    }
                }
                LabelRows {
                    label: label.clone(),
                    units,
                    targets,
                }
            })
            .collect();

        // Train copies on the autodiff device.
        let device = self.device().clone();
        let ad = device.clone().autodiff();
        let hidden = self.info().hidden;
        let mut tuned = TunedHeads {
            heads: per_label
                .iter()
                .enumerate()
                .map(|(j, l)| match self.label_index(&l.label) {
                    Ok(i) => self.heads().head(i).fork_trainable(&ad),
                    Err(_) => {
                        ad.seed(options.seed.wrapping_add(j as u64));
                        Head::new(width, hidden, 0.0, &ad)
                    }
                })
                .collect(),
        };
        let batches: Vec<LabelBatch> = per_label
            .iter()
            .map(|l| LabelBatch::new(l, &features, width, &ad))
            .collect();
        let mut optim = AdamConfig::new()
            .with_weight_decay(Some(WeightDecayConfig::new(WEIGHT_DECAY)))
            .with_grad_clipping(Some(GradientClippingConfig::Norm(options.clip_norm)))
            .init();
        let loss_of = |tuned: &TunedHeads| {
            let losses: Vec<Tensor<1>> = tuned
                .heads
                .iter()
                .zip(&batches)
                .map(|(head, b)| {
                    let logits = b.unit_logits(head.logits(b.x.clone()));
                    weighted_bce(logits, b.y.clone(), b.w.clone())
                })
                .collect();
            Tensor::cat(losses, 0).mean()
        };
        let mut first_loss = f32::NAN;
        for step in 1..=options.steps {
            let started = now_ms();
            let loss = loss_of(&tuned);
            let value = step_loss(loss.clone(), step, "The filter").await?;
            if step == 1 {
                first_loss = value;
            }
            let grads = GradientsParams::from_grads(loss.backward(), &tuned);
            tuned = optim.step(options.learning_rate, tuned, grads);
            let report = Step {
                step,
                steps: options.steps,
                loss: value,
                millis: now_ms() - started,
            };
            report_step(report, "The filter", &mut on_step)?;
        }
        // The last update's result, which no step's loss has seen (every step reads every
        // example, so this is the loss on the same examples as the first).
        let final_loss = step_loss(loss_of(&tuned), options.steps, "The filter").await?;
        check_final_loss(first_loss, final_loss, "The filter")?;

        // Install: the tuned heads replace or extend a copy of the current ones.
        let mut heads = self.heads().clone();
        let mut info = self.info().clone();
        let mut origins: Vec<LabelOrigin> =
            self.label_origins().into_iter().map(|(_, o)| o).collect();
        let mut new_labels = Vec::new();
        for (l, head) in per_label.iter().zip(tuned.valid().heads) {
            let head = head.fork(&device);
            match info.labels.iter().position(|x| *x == l.label) {
                Some(i) => {
                    heads.set_head(i, head);
                    origins[i] = LabelOrigin::Taught;
                }
                None => {
                    heads.set_head(info.labels.len(), head);
                    info.labels.push(l.label.clone());
                    info.thresholds.push(NEW_LABEL_THRESHOLD);
                    origins.push(LabelOrigin::Taught);
                    new_labels.push(l.label.clone());
                }
            }
        }
        // Thresholds set by the caller on existing labels stay.
        let current = self.thresholds().to_vec();
        info.thresholds[..current.len()].copy_from_slice(&current);
        let mut tuned_labels: Vec<String> = info
            .provenance
            .get("tuned_labels")
            .map(|s| s.split(',').map(str::to_owned).collect())
            .unwrap_or_default();
        for l in &order {
            if !tuned_labels.contains(l) {
                tuned_labels.push(l.clone());
            }
        }
        info.provenance
            .insert("tuned_labels".into(), tuned_labels.join(","));
        self.install_heads(heads, info, origins);
        Ok(FilterTuneReport {
            labels: order,
            new_labels,
            final_loss,
            examples: examples.len(),
        })
    }

    /// Labels tuned since the filter was loaded (or last reset).
    pub fn tuned_labels(&self) -> Vec<String> {
        self.info()
            .provenance
            .get("tuned_labels")
            .map(|s| s.split(',').map(str::to_owned).collect())
            .unwrap_or_default()
    }

    /// The tuned heads as safetensors bytes (every label's head, labels, thresholds, and a
    /// fingerprint of the base heads they fit). Errors when nothing was tuned.
    pub async fn export_adapters(&self) -> Result<Vec<u8>> {
        if self.tuned_labels().is_empty() {
            return Err(Error::InvalidInput(
                "nothing to export: the filter has not been tuned".into(),
            ));
        }
        let mut info = self.info().clone();
        info.thresholds = self.thresholds().to_vec();
        let fingerprint = self.base_heads().0.fingerprint().await?;
        info.provenance
            .insert("base_fingerprint".into(), format!("{fingerprint:016x}"));
        self.heads().save_format(&info, &[], TUNED_FORMAT).await
    }

    /// Loads heads exported by [`Filter::export_adapters`] from a filter with the same base,
    /// with the default [`ImportOptions`]: adapters that change a label the filter was loaded
    /// with are refused.
    pub async fn import_adapters(&mut self, bytes: &[u8]) -> Result<()> {
        self.import_adapters_with(bytes, &ImportOptions::default())
            .await
    }

    /// Loads heads exported by [`Filter::export_adapters`] from a filter with the same base.
    /// Files from another base, of another shape, with invalid label names or thresholds, or
    /// that are not tuned heads are errors; so are files that change the head or threshold
    /// of a label the filter was loaded with, unless `options.replace_shipped_labels`. On any
    /// error the filter is unchanged. Afterwards [`Filter::label_origins`] says `imported` for
    /// every label the file added or replaced.
    pub async fn import_adapters_with(
        &mut self,
        bytes: &[u8],
        options: &ImportOptions,
    ) -> Result<()> {
        let (heads, info) = Heads::load_format(bytes, TUNED_FORMAT, self.device())?;
        let (base, base_info) = self.base_heads();
        if info.features != base_info.features || heads.width() != base.width() {
            return Err(Error::InvalidInput(format!(
                "these adapters were made for filter features {} ({} wide); this filter's are \
                 {} ({} wide)",
                info.features,
                heads.width(),
                base_info.features,
                base.width()
            )));
        }
        let base_print = base.fingerprint().await?;
        let want = format!("{base_print:016x}");
        let got = info.provenance.get("base_fingerprint").cloned();
        if got.as_deref() != Some(want.as_str()) || heads.fingerprint().await? != base_print {
            return Err(Error::InvalidInput(format!(
                "these adapters were tuned from other filter heads (base {}, this filter's \
                 {want})",
                got.unwrap_or_else(|| "unknown".into())
            )));
        }
        let missing: Vec<&str> = base_info
            .labels
            .iter()
            .filter(|l| !info.labels.contains(l))
            .map(String::as_str)
            .collect();
        if !missing.is_empty() {
            return Err(Error::InvalidInput(format!(
                "these adapters lack some of this filter's labels ({})",
                missing.join(", ")
            )));
        }
        // Exports list the loaded labels first, in their order; per-label settings kept by
        // position (the answer thresholds) rely on it.
        if info.labels[..base_info.labels.len()] != base_info.labels[..] {
            return Err(Error::InvalidInput(format!(
                "these adapters list this filter's labels in another order ({}; expected {} \
                 first)",
                info.labels.join(", "),
                base_info.labels.join(", ")
            )));
        }
        // Which of the labels the filter was loaded with the file changes.
        let mut changed = Vec::new();
        for (i, label) in base_info.labels.iter().enumerate() {
            if info.thresholds[i] != base_info.thresholds[i]
                || heads.head_values(i).await? != base.head_values(i).await?
            {
                changed.push(label.clone());
            }
        }
        if !changed.is_empty() && !options.replace_shipped_labels {
            return Err(Error::InvalidInput(format!(
                "these adapters change the head or threshold of {} ({}), which this filter was \
                 loaded with; nothing was imported. To accept that, import them with \
                 replaceShippedLabels: true",
                if changed.len() == 1 {
                    "a shipped label"
                } else {
                    "shipped labels"
                },
                changed.join(", ")
            )));
        }
        let origins = info
            .labels
            .iter()
            .map(|l| {
                if base_info.labels.contains(l) && !changed.contains(l) {
                    LabelOrigin::Shipped
                } else {
                    LabelOrigin::Imported
                }
            })
            .collect();
        self.install_heads(heads, info, origins);
        Ok(())
    }

    /// Back to the heads as loaded: tuned and new labels are gone.
    pub fn reset_adapters(&mut self) {
        let (heads, info) = self.base_heads();
        let (heads, info) = (heads.clone(), info.clone());
        let origins = vec![LabelOrigin::Shipped; info.labels.len()];
        self.install_heads(heads, info, origins);
    }
}

#[cfg(feature = "tune")]
/// One label's training batch on the autodiff device: its units' windows' standardised
/// features, and how their logits make the units'.
struct LabelBatch {
    /// Features `[windows, width]`, the units' windows in order.
    x: Tensor<2>,
    /// Targets `[units]`.
    y: Tensor<1>,
    /// Class weights `[units]`: positives and negatives count equally.
    w: Tensor<1>,
    /// Where a unit has more than one window: each unit's windows' indices into `x`, padded
    /// to the longest unit (`[units * longest]`), the padding's mask (0, or -1e4 so that it
    /// counts for nothing) and the log of each unit's window count (`[units, 1]` both).
    pooling: Option<(Tensor<1, Int>, Tensor<2>, Tensor<2>)>,
}

#[cfg(feature = "tune")]
impl LabelBatch {
    fn new(l: &LabelRows, features: &[f32], width: usize, device: &Device) -> Self {
        let units = l.units.len();
        let rows: usize = l.units.iter().map(Vec::len).sum();
        let mut x = Vec::with_capacity(rows * width);
        for &r in l.units.iter().flatten() {
            x.extend_from_slice(&features[r * width..(r + 1) * width]);
        }
        let pos = l.targets.iter().filter(|t| **t).count().max(1);
        let neg = (units - pos.min(units)).max(1);
        let y: Vec<f32> = l.targets.iter().map(|&t| f32::from(u8::from(t))).collect();
        let w: Vec<f32> = l
            .targets
            .iter()
            .map(|&t| units as f32 / (2.0 * if t { pos } else { neg } as f32))
            .collect();
        let longest = l.units.iter().map(Vec::len).max().unwrap_or(1);
        let pooling = (longest > 1).then(|| {
            let (mut index, mut mask, mut log_n) = (Vec::new(), Vec::new(), Vec::new());
            let mut first = 0;
            for unit in &l.units {
                for k in 0..longest {
                    index.push((first + k.min(unit.len() - 1)) as i64);
                    mask.push(if k < unit.len() { 0.0 } else { -1e4 });
                }
                log_n.push((unit.len() as f32).ln());
                first += unit.len();
            }
            (
                Tensor::<1, Int>::from_data(TensorData::new(index, [units * longest]), device),
                Tensor::from_data(TensorData::new(mask, [units, longest]), device),
                Tensor::from_data(TensorData::new(log_n, [units, 1]), device),
            )
        });
        Self {
            x: Tensor::from_data(TensorData::new(x, [rows, width]), device),
            y: Tensor::from_data(TensorData::new(y, [units]), device),
            w: Tensor::from_data(TensorData::new(w, [units]), device),
            pooling,
        }
    }

    /// The units' logits from their windows' `[windows]`: a unit of several windows reads
    /// their log-mean-exp, a smooth maximum that is never above the largest (so a positive
    /// text is learnt through the windows that look most like the label, and its worst
    /// window, what scoring reads, ends at least as high).
    fn unit_logits(&self, logits: Tensor<1>) -> Tensor<1> {
        let Some((index, mask, log_n)) = &self.pooling else {
            return logits;
        };
        let [units, longest] = mask.dims();
        let grouped = logits.select(0, index.clone()).reshape([units, longest]) + mask.clone();
        let top = grouped.clone().max_dim(1).detach();
        let pooled = (grouped - top.clone()).exp().sum_dim(1).log() + top - log_n.clone();
        pooled.reshape([units])
    }
}

#[cfg(feature = "tune")]
/// Mean of class-weighted binary cross-entropy, `[1]`.
fn weighted_bce(z: Tensor<1>, y: Tensor<1>, w: Tensor<1>) -> Tensor<1> {
    let bce = -(y.clone() * log_sigmoid(z.clone()) + (y.neg() + 1.0) * log_sigmoid(z.neg()));
    (bce * w).mean()
}
