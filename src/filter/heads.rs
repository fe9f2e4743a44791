//! The filter's trained part: per-label heads over the encoder's pooled features, with the
//! feature standardisation and thresholds they were trained with, in one safetensors file.
//!
//! ```text
//! features [batch, F] -> (x - mean) * scale -> per label: Linear F->H -> ReLU -> Linear H->1 -> sigmoid
//! ```
//! One small network per label, so a label can be added (issue 6's user labels) or retrained
//! without touching the others.

use std::collections::HashMap;

use burn::module::{Module, Param};
use burn::nn::{Dropout, DropoutConfig, Linear, LinearConfig};
use burn::tensor::activation::{relu, sigmoid};
use burn::tensor::{Device, Tensor, TensorData};
use safetensors::Dtype;

use crate::error::{Error, Result};
use crate::filter::features::FeatureSpec;
use crate::filter::heads_file::{HeadsLayout, check_file_threshold, check_label};
use crate::weights::safetensors::SafetensorsFile;

/// What is written in a heads file's `format` metadata.
pub const FORMAT: &str = "webguard-filter-heads/1";

/// The `format` of heads exported after tuning ([`crate::tune::filter`]): the same layout, but
/// only valid on top of the filter they were tuned from (the encoder's own adapters are not in
/// it), so a plain heads loader refuses it.
pub const TUNED_FORMAT: &str = "webguard-filter-adapters/1";

/// One label's classifier.
#[derive(Module, Debug)]
pub struct Head {
    hidden: Linear,
    out: Linear,
    dropout: Dropout,
}

impl Head {
    /// A randomly initialised head (seed the device for reproducible weights).
    pub fn new(features: usize, hidden: usize, dropout: f64, device: &Device) -> Self {
        Head {
            hidden: LinearConfig::new(features, hidden).init(device),
            out: LinearConfig::new(hidden, 1).init(device),
            dropout: DropoutConfig::new(dropout).init(),
        }
    }

    /// A copy on `device` (an autodiff device), ready to train. `fork` alone keeps each
    /// tensor's gradient state, and a head loaded from a file is not on an autodiff backend:
    /// training such a copy panicked in `backward`. `train` reinstates every weight's
    /// training state on the autodiff backend.
    pub fn fork_trainable(&self, device: &Device) -> Self {
        self.clone().fork(device).train()
    }

    /// Logits `[batch]` for standardised features `[batch, F]`.
    pub fn logits(&self, x: Tensor<2>) -> Tensor<1> {
        let h = self.dropout.forward(relu(self.hidden.forward(x)));
        let [batch, _] = h.dims();
        self.out.forward(h).reshape([batch])
    }
}

/// The heads of every label plus the feature standardisation they share.
#[derive(Module, Debug)]
pub struct Heads {
    /// Per-feature mean subtracted first `[F]`.
    mean: Param<Tensor<1>>,
    /// Per-feature multiplier applied next (1/std) `[F]`.
    scale: Param<Tensor<1>>,
    heads: Vec<Head>,
}

/// A LoRA adapter of one encoder projection, carried in the heads file when the encoder was
/// tuned with the heads; merged into the encoder's weight at load time.
#[derive(Debug, Clone)]
pub struct EncoderAdapter {
    /// Projection name, e.g. `layers.5.query` (see `Bert::lora_adapters`).
    pub name: String,
    /// Down-projection `[in, rank]`.
    pub a: Tensor<2>,
    /// Up-projection `[rank, out]`.
    pub b: Tensor<2>,
    /// Multiplier of `A·B`.
    pub scale: f64,
}

/// The metadata key of the per-label thresholds for answers (see [`HeadsInfo::answer_thresholds`]).
pub const ANSWER_THRESHOLDS: &str = "answer_thresholds";
/// The metadata key of the per-label thresholds for chat conversations (see
/// [`HeadsInfo::conversation_thresholds`]).
pub const CONVERSATION_THRESHOLDS: &str = "conversation_thresholds";

/// Everything about a heads file that is not a weight.
#[derive(Debug, Clone, PartialEq)]
pub struct HeadsInfo {
    /// Label names, in head order.
    pub labels: Vec<String>,
    /// The features the heads read.
    pub features: FeatureSpec,
    /// Hidden width of each head.
    pub hidden: usize,
    /// Per-label thresholds chosen on validation data (same order as `labels`).
    pub thresholds: Vec<f32>,
    /// Free-form provenance: the command and data that made the file.
    pub provenance: HashMap<String, String>,
}

impl HeadsInfo {
    /// Per-label thresholds for screening the chat model's answers, when the file has them
    /// (`webguard calibrate-answers` writes them): the heads were trained on tweets and short
    /// requests, and long helpful answers ("kill the process", "gut the fish") score higher
    /// than their meaning, so answers get thresholds chosen on the model's own benign answers.
    /// Stored in the metadata (with the provenance) as a JSON list in label order; a list of
    /// the wrong length or with values outside 0 to 1 is an error.
    pub fn answer_thresholds(&self) -> Result<Option<Vec<f32>>> {
        self.calibrated_thresholds(ANSWER_THRESHOLDS)
    }

    /// Per-label thresholds for screening the messages of a chat conversation, when the file
    /// has them (`webguard calibrate-answers`, from safe prompts' `input_scores`): chosen on safe requests to the chat
    /// model ("how do I kill a process" scores high on heads trained on tweets). Stored like
    /// [`HeadsInfo::answer_thresholds`].
    pub fn conversation_thresholds(&self) -> Result<Option<Vec<f32>>> {
        self.calibrated_thresholds(CONVERSATION_THRESHOLDS)
    }

    /// The thresholds stored under `key` ([`ANSWER_THRESHOLDS`] or
    /// [`CONVERSATION_THRESHOLDS`]), checked as those two are.
    pub fn calibrated_thresholds(&self, key: &str) -> Result<Option<Vec<f32>>> {
        let Some(json) = self.provenance.get(key) else {
            return Ok(None);
        };
        let values: Vec<f32> = serde_json::from_str(json)
            .map_err(|e| Error::ModelFile(format!("heads file: {key}: {e}")))?;
        if values.len() != self.labels.len() || values.iter().any(|v| !(0.0..=1.0).contains(v)) {
            return Err(Error::ModelFile(format!(
                "heads file: {key} must hold one value in 0 to 1 per label"
            )));
        }
        Ok(Some(values))
    }
}

impl Heads {
    /// Fresh, randomly initialised heads for `labels` over `width` features standardised by
    /// `mean`/`std` (std values of 0 are treated as 1).
    pub fn new(
        labels: usize,
        width: usize,
        hidden: usize,
        dropout: f64,
        mean: &[f32],
        std: &[f32],
        device: &Device,
    ) -> Self {
        let scale: Vec<f32> = std
            .iter()
            .map(|&s| if s > 1e-6 { 1.0 / s } else { 1.0 })
            .collect();
        Heads {
            mean: Param::from_tensor(Tensor::from_data(
                TensorData::new(mean.to_vec(), [width]),
                device,
            ))
            .set_require_grad(false),
            scale: Param::from_tensor(Tensor::from_data(TensorData::new(scale, [width]), device))
                .set_require_grad(false),
            heads: (0..labels)
                .map(|_| Head::new(width, hidden, dropout, device))
                .collect(),
        }
    }

    /// Raw features `[batch, F]` standardised as every head expects them.
    pub fn standardise(&self, features: Tensor<2>) -> Tensor<2> {
        let [_, width] = features.dims();
        (features - self.mean.val().reshape([1, width])) * self.scale.val().reshape([1, width])
    }

    /// Feature width.
    pub fn width(&self) -> usize {
        self.mean.val().dims()[0]
    }

    /// Head `i`.
    pub fn head(&self, i: usize) -> &Head {
        &self.heads[i]
    }

    /// Replaces head `i` (`i` = the label count appends one).
    pub fn set_head(&mut self, i: usize, head: Head) {
        if i == self.heads.len() {
            self.heads.push(head);
        } else {
            self.heads[i] = head;
        }
    }

    /// A 64-bit fingerprint (FNV-1a) of the feature standardisation, which identifies the
    /// base heads a tuned file was made from.
    pub async fn fingerprint(&self) -> Result<u64> {
        let mut hash = 0xcbf2_9ce4_8422_2325u64;
        for t in [self.mean.val(), self.scale.val()] {
            for v in crate::backend::read_f32(t).await? {
                for b in v.to_le_bytes() {
                    hash = (hash ^ u64::from(b)).wrapping_mul(0x0100_0000_01b3);
                }
            }
        }
        Ok(hash)
    }

    /// Logits `[batch, labels]` for raw features `[batch, F]`.
    pub fn logits(&self, features: Tensor<2>) -> Tensor<2> {
        let [batch, _] = features.dims();
        let x = self.standardise(features);
        let columns: Vec<Tensor<2>> = self
            .heads
            .iter()
            .map(|h| h.logits(x.clone()).reshape([batch, 1]))
            .collect();
        Tensor::cat(columns, 1)
    }

    /// Scores in [0, 1], `[batch, labels]`.
    pub fn scores(&self, features: Tensor<2>) -> Tensor<2> {
        sigmoid(self.logits(features))
    }

    /// The device the heads live on.
    pub fn device(&self) -> Device {
        self.mean.val().device()
    }

    /// Number of labels.
    pub fn label_count(&self) -> usize {
        self.heads.len()
    }

    /// Loads heads from a safetensors file written by [`Heads::save`], checking every shape.
    pub fn load(bytes: &[u8], device: &Device) -> Result<(Self, HeadsInfo)> {
        Self::load_format(bytes, FORMAT, device)
    }

    /// [`Heads::load`] for files whose `format` metadata is `format`. The layout (label names,
    /// thresholds, widths, every tensor's shape) is checked first ([`HeadsLayout::read`]).
    pub fn load_format(bytes: &[u8], format: &str, device: &Device) -> Result<(Self, HeadsInfo)> {
        let file = SafetensorsFile::parse(bytes)?;
        let layout = HeadsLayout::read(&file, format)?;
        let features: FeatureSpec = layout.features.parse()?;
        let (width, hidden) = (layout.width, layout.hidden);
        let mut heads = Vec::with_capacity(layout.labels.len());
        for label in &layout.labels {
            let linear = |name: &str, d_in: usize, d_out: usize| -> Result<Linear> {
                Ok(Linear {
                    weight: Param::from_tensor(file.tensor::<2>(
                        &format!("{label}.{name}.weight"),
                        [d_in, d_out],
                        device,
                    )?),
                    bias: Some(Param::from_tensor(file.tensor::<1>(
                        &format!("{label}.{name}.bias"),
                        [d_out],
                        device,
                    )?)),
                })
            };
            heads.push(Head {
                hidden: linear("hidden", width, hidden)?,
                out: linear("out", hidden, 1)?,
                dropout: DropoutConfig::new(0.0).init(),
            });
        }
        let heads = Heads {
            mean: Param::from_tensor(file.tensor::<1>("mean", [width], device)?),
            scale: Param::from_tensor(file.tensor::<1>("scale", [width], device)?),
            heads,
        };
        Ok((
            heads,
            HeadsInfo {
                labels: layout.labels,
                features,
                hidden,
                thresholds: layout.thresholds,
                provenance: layout.provenance,
            },
        ))
    }

    /// Every weight of head `i` (hidden weight and bias, out weight and bias), read back.
    pub async fn head_values(&self, i: usize) -> Result<Vec<f32>> {
        let head = self
            .heads
            .get(i)
            .ok_or_else(|| Error::InvalidInput(format!("no head {i}")))?;
        let mut out = Vec::new();
        for layer in [&head.hidden, &head.out] {
            out.extend(crate::backend::read_f32(layer.weight.val()).await?);
            if let Some(b) = &layer.bias {
                out.extend(crate::backend::read_f32(b.val()).await?);
            }
        }
        Ok(out)
    }

    /// The encoder adapters stored in a heads file (none for heads trained on a frozen encoder).
    pub fn load_adapters(bytes: &[u8], device: &Device) -> Result<Vec<EncoderAdapter>> {
        let file = SafetensorsFile::parse(bytes)?;
        let mut out = Vec::new();
        for name in file.names() {
            let Some(base) = name
                .strip_prefix("encoder.")
                .and_then(|n| n.strip_suffix(".lora_a"))
            else {
                continue;
            };
            let scale: f64 = file
                .metadata()
                .get("lora_scale")
                .and_then(|s| s.parse().ok())
                .ok_or_else(|| {
                    Error::Safetensors("heads file: adapters without lora_scale".into())
                })?;
            let a_shape = file.shape(&name)?;
            let b_name = format!("encoder.{base}.lora_b");
            let b_shape = file.shape(&b_name)?;
            let (&[d_in, rank], &[rank_b, d_out]) = (a_shape.as_slice(), b_shape.as_slice()) else {
                return Err(Error::Safetensors(format!(
                    "adapter {base}: factors must be 2-D"
                )));
            };
            if rank != rank_b {
                return Err(Error::Safetensors(format!("adapter {base}: ranks differ")));
            }
            out.push(EncoderAdapter {
                name: base.to_owned(),
                a: file.tensor::<2>(&name, [d_in, rank], device)?,
                b: file.tensor::<2>(&b_name, [rank, d_out], device)?,
                scale,
            });
        }
        Ok(out)
    }

    /// Serialises the heads and `info` as safetensors bytes (f32, little-endian). Reads the
    /// weights back asynchronously, so it works on WebGPU in the browser too.
    pub async fn save(&self, info: &HeadsInfo, adapters: &[EncoderAdapter]) -> Result<Vec<u8>> {
        self.save_format(info, adapters, FORMAT).await
    }

    /// [`Heads::save`] with `format` as the `format` metadata.
    pub async fn save_format(
        &self,
        info: &HeadsInfo,
        adapters: &[EncoderAdapter],
        format: &str,
    ) -> Result<Vec<u8>> {
        if info.labels.len() != self.heads.len() || info.thresholds.len() != self.heads.len() {
            return Err(Error::ModelFile(
                "one label name and threshold per head".into(),
            ));
        }
        // What could not be loaded back is not written.
        for (label, &t) in info.labels.iter().zip(&info.thresholds) {
            check_label(label)?;
            check_file_threshold(label, t)?;
        }
        // (name, shape in the file, values as a 2-D tensor)
        let row = |t: Tensor<1>| {
            let n = t.dims()[0];
            (vec![n], t.reshape([1, n]))
        };
        let mut parts: Vec<(String, Vec<usize>, Tensor<2>)> = Vec::new();
        for (name, t) in [("mean", self.mean.val()), ("scale", self.scale.val())] {
            let (shape, t) = row(t);
            parts.push((name.into(), shape, t));
        }
        for (label, head) in info.labels.iter().zip(&self.heads) {
            for (name, layer) in [("hidden", &head.hidden), ("out", &head.out)] {
                let w = layer.weight.val();
                parts.push((format!("{label}.{name}.weight"), w.dims().to_vec(), w));
                let bias = layer
                    .bias
                    .as_ref()
                    .ok_or_else(|| Error::ModelFile("head without bias".into()))?;
                let (shape, t) = row(bias.val());
                parts.push((format!("{label}.{name}.bias"), shape, t));
            }
        }
        for ad in adapters {
            for (suffix, t) in [("lora_a", &ad.a), ("lora_b", &ad.b)] {
                parts.push((
                    format!("encoder.{}.{suffix}", ad.name),
                    t.dims().to_vec(),
                    t.clone(),
                ));
            }
        }
        let mut tensors: Vec<(String, Vec<usize>, Vec<u8>)> = Vec::with_capacity(parts.len());
        for (name, shape, t) in parts {
            let values = crate::backend::read_f32(t).await?;
            tensors.push((
                name,
                shape,
                values.iter().flat_map(|v| v.to_le_bytes()).collect(),
            ));
        }
        let views: Vec<(String, safetensors::tensor::TensorView<'_>)> = tensors
            .iter()
            .map(|(name, shape, bytes)| {
                safetensors::tensor::TensorView::new(Dtype::F32, shape.clone(), bytes)
                    .map(|v| (name.clone(), v))
                    .map_err(|e| Error::Safetensors(e.to_string()))
            })
            .collect::<Result<_>>()?;
        let mut meta = info.provenance.clone();
        if let Some(ad) = adapters.first() {
            meta.insert("lora_scale".into(), ad.scale.to_string());
        }
        meta.insert("format".into(), format.into());
        meta.insert("labels".into(), info.labels.join(","));
        meta.insert("features".into(), info.features.to_string());
        meta.insert("hidden".into(), info.hidden.to_string());
        meta.insert(
            "thresholds".into(),
            serde_json::to_string(&info.thresholds)
                .map_err(|e| Error::InvalidInput(e.to_string()))?,
        );
        safetensors::serialize(views, Some(meta)).map_err(|e| Error::Safetensors(e.to_string()))
    }
}
