//! The chat model judging with its own hidden states: a linear probe over the residual stream
//! of a few of SmolLM2's layers at the last prompt token (`ChatModel::prompt_states` reads
//! them; the guard scores every conversation with it before answering).
//!
//! Before answering, generation runs the prompt through the model anyway (prefill); keeping
//! a few layers' states at the last position and taking one dot product costs nothing next
//! to that. Work on refusal directions finds harmful and harmless requests linearly separable
//! inside instruction-tuned models, and the model reads the whole conversation in context
//! (a request split across turns, a politeness wrapper, another tense), which a separate
//! small encoder reading one message does not.
//!
//! A probe is logistic regression on standardised features (the chosen layers' states,
//! concatenated), fitted by full-batch gradient descent in plain `f32`: a few thousand rows of
//! a few thousand features train in seconds, the same on every target, without autodiff.
//! The file is a small safetensors (`weight`, `mean`, `scale`, `bias`) whose metadata names the
//! layers, the threshold and the provenance.

use std::collections::HashMap;

use safetensors::Dtype;

use crate::error::{Error, Result};
use crate::weights::safetensors::SafetensorsFile;

/// What is written in a probe file's `format` metadata: a request probe only.
pub const FORMAT: &str = "webguard-chat-probe/1";
/// The format of a file with an answer probe too (its names start with [`ANSWER_PREFIX`]).
pub const FORMAT_WITH_ANSWERS: &str = "webguard-chat-probe/2";

/// A linear probe over chat-model states.
#[derive(Debug, Clone, PartialEq)]
pub struct StateProbe {
    /// The blocks whose output at the last prompt token it reads, in feature order.
    pub layers: Vec<usize>,
    /// Subtracted from the features first.
    mean: Vec<f32>,
    /// Multiplies them next (1 / standard deviation).
    scale: Vec<f32>,
    weight: Vec<f32>,
    bias: f32,
    /// Scores at or above it flag.
    pub threshold: f32,
    /// Free-form provenance (the command and data that made it, validation figures).
    pub provenance: HashMap<String, String>,
}

/// How to fit a probe.
#[derive(Debug, Clone, PartialEq)]
pub struct ProbeTrainConfig {
    /// Gradient steps over the whole training set.
    pub steps: usize,
    /// Step size as a fraction of the largest step that cannot overshoot (1 / the loss's
    /// curvature bound, found by power iteration), so the features' scale does not matter.
    pub learning_rate: f32,
    /// L2 penalty on the weights (the features outnumber the examples of some kinds).
    pub l2: f32,
}

impl Default for ProbeTrainConfig {
    fn default() -> Self {
        ProbeTrainConfig {
            // Chosen on the validation split (notes/issue-13-guard.md): 300 underfits the
            // short plain requests, 3000 loses recall.
            steps: 1000,
            learning_rate: 1.0,
            l2: 1e-3,
        }
    }
}

fn sigmoid(z: f32) -> f32 {
    1.0 / (1.0 + (-z).exp())
}

impl StateProbe {
    /// Fits a probe on `rows` (one feature vector per example, all `layers.len() * dim` wide)
    /// labelled `harmful`; the classes are weighted equally whatever their sizes.
    pub fn train(
        layers: Vec<usize>,
        rows: &[Vec<f32>],
        harmful: &[bool],
        config: &ProbeTrainConfig,
    ) -> Result<Self> {
        let width = rows.first().map_or(0, Vec::len);
        if rows.len() != harmful.len() || width == 0 || rows.iter().any(|r| r.len() != width) {
            return Err(Error::InvalidInput(
                "a probe needs rows of one width and a label per row".into(),
            ));
        }
        let positives = harmful.iter().filter(|&&h| h).count();
        if positives == 0 || positives == rows.len() {
            return Err(Error::InvalidInput(
                "a probe needs harmful and harmless examples".into(),
            ));
        }
        if rows.iter().flatten().any(|v| !v.is_finite()) {
            return Err(Error::InvalidInput("non-finite feature value".into()));
        }
        let n = rows.len() as f32;
        let mut mean = vec![0f32; width];
        for r in rows {
            mean.iter_mut().zip(r).for_each(|(m, v)| *m += v / n);
        }
        let mut var = vec![0f32; width];
        for r in rows {
            var.iter_mut()
                .zip(r.iter().zip(&mean))
                .for_each(|(s, (v, m))| *s += (v - m) * (v - m) / n);
        }
        let scale: Vec<f32> = var
            .iter()
            .map(|&v| if v > 1e-12 { 1.0 / v.sqrt() } else { 1.0 })
            .collect();
        let x: Vec<Vec<f32>> = rows
            .iter()
            .map(|r| {
                r.iter()
                    .zip(mean.iter().zip(&scale))
                    .map(|(v, (m, s))| (v - m) * s)
                    .collect()
            })
            .collect();
        // Balanced classes: each class's examples weigh 1/2 in total.
        let w_pos = 0.5 / positives as f32;
        let w_neg = 0.5 / (rows.len() - positives) as f32;
        let sample_weight: Vec<f32> = harmful
            .iter()
            .map(|&y| if y { w_pos } else { w_neg })
            .collect();
        // The logistic loss's curvature is at most 1/4 of the weighted Gram matrix's largest
        // eigenvalue (plus the penalty): power iteration finds it.
        let mut v = vec![1f32 / (width as f32).sqrt(); width];
        let mut largest = 1f32;
        for _ in 0..30 {
            let mut next = vec![0f32; width];
            for (row, &sw) in x.iter().zip(&sample_weight) {
                let dot: f32 = row.iter().zip(&v).map(|(a, b)| a * b).sum();
                next.iter_mut()
                    .zip(row)
                    .for_each(|(n, r)| *n += sw * dot * r);
            }
            largest = next.iter().map(|a| a * a).sum::<f32>().sqrt().max(1e-12);
            v = next.into_iter().map(|a| a / largest).collect();
        }
        // +1 for the bias, a feature that is always 1.
        let step = config.learning_rate / (0.25 * (largest + 1.0) + config.l2);
        let mut weight = vec![0f32; width];
        let mut bias = 0f32;
        let mut grad = vec![0f32; width];
        for _ in 0..config.steps {
            grad.iter_mut().for_each(|g| *g = 0.0);
            let mut grad_bias = 0f32;
            for (row, &y) in x.iter().zip(harmful) {
                let z: f32 = bias + row.iter().zip(&weight).map(|(a, b)| a * b).sum::<f32>();
                let err = (sigmoid(z) - if y { 1.0 } else { 0.0 }) * if y { w_pos } else { w_neg };
                if !err.is_finite() {
                    return Err(Error::Tuning("the probe's loss diverged".into()));
                }
                grad_bias += err;
                grad.iter_mut().zip(row).for_each(|(g, v)| *g += err * v);
            }
            for (w, g) in weight.iter_mut().zip(&grad) {
                *w -= step * (g + config.l2 * *w);
            }
            bias -= step * grad_bias;
        }
        Ok(StateProbe {
            layers,
            mean,
            scale,
            weight,
            bias,
            threshold: 0.5,
            provenance: HashMap::new(),
        })
    }

    /// Features per example: the layers' states, concatenated.
    pub fn width(&self) -> usize {
        self.weight.len()
    }

    /// The probability that the request behind `features` is harmful.
    pub fn score(&self, features: &[f32]) -> Result<f32> {
        if features.len() != self.width() {
            return Err(Error::InvalidInput(format!(
                "the probe reads {} features; got {}",
                self.width(),
                features.len()
            )));
        }
        let z: f32 = self.bias
            + features
                .iter()
                .zip(self.mean.iter().zip(&self.scale))
                .zip(&self.weight)
                .map(|((v, (m, s)), w)| (v - m) * s * w)
                .sum::<f32>();
        Ok(sigmoid(z))
    }

    /// Reads a probe file's request probe, checking it fits a chat model with `blocks` blocks
    /// of width `dim` (an answer probe in the same file is ignored: [`ChatProbes::load`]).
    pub fn load(bytes: &[u8], blocks: usize, dim: usize) -> Result<Self> {
        Ok(ChatProbes::load(bytes, blocks, dim)?.request)
    }

    /// The probe stored under `prefix` (`""` for the request probe, [`ANSWER_PREFIX`] for the
    /// answer probe) in a parsed probe file.
    fn from_file(file: &SafetensorsFile, prefix: &str, blocks: usize, dim: usize) -> Result<Self> {
        let meta = file.metadata();
        let what = if prefix.is_empty() {
            "chat probe"
        } else {
            "chat answer probe"
        };
        let get =
            |key: &str| file.required_metadata(&format!("{prefix}{key}"), "a webguard chat probe");
        let layers: Vec<usize> = serde_json::from_str(get("layers")?)
            .map_err(|e| Error::ModelFile(format!("{what}: layers: {e}")))?;
        let threshold: f32 = get("threshold")?
            .parse()
            .map_err(|_| Error::ModelFile(format!("{what}: threshold is not a number")))?;
        if layers.is_empty() || layers.iter().any(|&l| l >= blocks) {
            return Err(Error::ModelFile(format!(
                "{what} reads layers {layers:?}; the chat model has {blocks} blocks"
            )));
        }
        if !(0.0..=1.0).contains(&threshold) {
            return Err(Error::ModelFile(format!(
                "{what} threshold {threshold} is outside 0 to 1"
            )));
        }
        let width = layers.len() * dim;
        let vector = |name: &str| -> Result<Vec<f32>> {
            let (values, shape) = file.f32_values(&format!("{prefix}{name}"))?;
            if shape != [width] || values.iter().any(|v| !v.is_finite()) {
                return Err(Error::ModelFile(format!(
                    "{what}: {name} has shape {shape:?}, or non-finite values; expected [{width}]"
                )));
            }
            Ok(values)
        };
        let (bias, shape) = file.f32_values(&format!("{prefix}bias"))?;
        if shape != [1] || !bias[0].is_finite() {
            return Err(Error::ModelFile(format!("{what}: bias must be one number")));
        }
        let provenance = meta
            .iter()
            .filter_map(|(k, v)| {
                let key = if prefix.is_empty() {
                    (!k.starts_with(ANSWER_PREFIX)).then_some(k.as_str())
                } else {
                    k.strip_prefix(prefix)
                }?;
                (!["format", "layers", "threshold"].contains(&key))
                    .then(|| (key.to_string(), v.clone()))
            })
            .collect();
        Ok(StateProbe {
            layers,
            mean: vector("mean")?,
            scale: vector("scale")?,
            weight: vector("weight")?,
            bias: bias[0],
            threshold,
            provenance,
        })
    }

    /// This probe's tensors and metadata under `prefix`, added to `tensors` and `meta`.
    fn store(
        &self,
        prefix: &str,
        tensors: &mut Vec<(String, Vec<u8>, usize)>,
        meta: &mut HashMap<String, String>,
    ) -> Result<()> {
        let bytes = |v: &[f32]| v.iter().flat_map(|x| x.to_le_bytes()).collect::<Vec<u8>>();
        for (name, values) in [
            ("mean", &self.mean[..]),
            ("scale", &self.scale[..]),
            ("weight", &self.weight[..]),
            ("bias", &[self.bias][..]),
        ] {
            tensors.push((format!("{prefix}{name}"), bytes(values), values.len()));
        }
        for (k, v) in &self.provenance {
            meta.insert(format!("{prefix}{k}"), v.clone());
        }
        meta.insert(
            format!("{prefix}layers"),
            serde_json::to_string(&self.layers).map_err(|e| Error::InvalidInput(e.to_string()))?,
        );
        meta.insert(format!("{prefix}threshold"), self.threshold.to_string());
        Ok(())
    }

    /// The probe alone as a probe file.
    pub fn save(&self) -> Result<Vec<u8>> {
        ChatProbes {
            request: self.clone(),
            answer: None,
        }
        .save()
    }
}

/// Where an answer probe's tensors and metadata live in a probe file.
pub const ANSWER_PREFIX: &str = "answer.";

/// What a probe file holds: the request probe (the conversation, at the last prompt token)
/// and, from format 2 on, the answer probe (the answer so far, at each sentence end).
#[derive(Debug, Clone, PartialEq)]
pub struct ChatProbes {
    /// Reads the conversation at the last prompt token.
    pub request: StateProbe,
    /// Reads the answer so far at each sentence end.
    pub answer: Option<StateProbe>,
}

impl ChatProbes {
    /// Reads a probe file, checking both probes fit a chat model with `blocks` blocks of
    /// width `dim` and read the same layers (generation keeps one set of states).
    pub fn load(bytes: &[u8], blocks: usize, dim: usize) -> Result<Self> {
        let file = SafetensorsFile::parse(bytes)?;
        let format = file.required_metadata("format", "a webguard chat probe")?;
        let answer = match format {
            FORMAT => None,
            FORMAT_WITH_ANSWERS => Some(StateProbe::from_file(&file, ANSWER_PREFIX, blocks, dim)?),
            other => {
                return Err(Error::ModelFile(format!(
                    "not a webguard chat probe: format {other:?} (expected {FORMAT:?} or {FORMAT_WITH_ANSWERS:?})"
                )));
            }
        };
        let request = StateProbe::from_file(&file, "", blocks, dim)?;
        if let Some(a) = &answer
            && a.layers != request.layers
        {
            return Err(Error::ModelFile(format!(
                "chat probe: the answer probe reads layers {:?}, the request probe {:?}; they must be the same",
                a.layers, request.layers
            )));
        }
        Ok(ChatProbes { request, answer })
    }

    /// The probes as one safetensors file.
    pub fn save(&self) -> Result<Vec<u8>> {
        let mut tensors = Vec::new();
        let mut meta = HashMap::new();
        self.request.store("", &mut tensors, &mut meta)?;
        if let Some(a) = &self.answer {
            if a.layers != self.request.layers {
                return Err(Error::InvalidInput(
                    "the answer probe must read the request probe's layers".into(),
                ));
            }
            a.store(ANSWER_PREFIX, &mut tensors, &mut meta)?;
        }
        let format = if self.answer.is_some() {
            FORMAT_WITH_ANSWERS
        } else {
            FORMAT
        };
        meta.insert("format".into(), format.into());
        let views: Vec<(String, safetensors::tensor::TensorView<'_>)> = tensors
            .iter()
            .map(|(name, data, n)| {
                safetensors::tensor::TensorView::new(Dtype::F32, vec![*n], data)
                    .map(|v| (name.clone(), v))
                    .map_err(|e| Error::Safetensors(e.to_string()))
            })
            .collect::<Result<_>>()?;
        safetensors::serialize(views, Some(meta)).map_err(|e| Error::Safetensors(e.to_string()))
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::rng::Rng;

    /// Two clouds of uniform noise (width 4) that differ by 3 along one direction: the best
    /// possible accuracy is 87.5%.
    fn clouds(n: usize, width: usize, seed: u64) -> (Vec<Vec<f32>>, Vec<bool>) {
        let mut rng = Rng::new(seed);
        let mut rows = Vec::new();
        let mut labels = Vec::new();
        for i in 0..n {
            let y = i % 2 == 0;
            let row: Vec<f32> = (0..width)
                .map(|j| {
                    let noise = (rng.next_f64() as f32 - 0.5) * 4.0;
                    noise + if j == 3 && y { 3.0 } else { 0.0 } + 10.0
                })
                .collect();
            rows.push(row);
            labels.push(y);
        }
        (rows, labels)
    }

    #[test]
    fn a_probe_separates_classes_that_differ_along_one_direction() {
        let (rows, labels) = clouds(400, 16, 1);
        let probe =
            StateProbe::train(vec![0, 1], &rows, &labels, &ProbeTrainConfig::default()).unwrap();
        let (test, test_labels) = clouds(400, 16, 2);
        let correct = test
            .iter()
            .zip(&test_labels)
            .filter(|(r, y)| (probe.score(r).unwrap() >= 0.5) == **y)
            .count();
        assert!(correct > 320, "{correct}/400");
    }

    #[test]
    fn probe_files_round_trip_and_bad_ones_are_refused() {
        let (rows, labels) = clouds(100, 8, 3);
        let mut probe =
            StateProbe::train(vec![1, 3], &rows, &labels, &ProbeTrainConfig::default()).unwrap();
        probe.threshold = 0.7;
        probe.provenance.insert("command".into(), "test".into());
        let bytes = probe.save().unwrap();
        assert_eq!(StateProbe::load(&bytes, 4, 4).unwrap(), probe);
        assert!(
            StateProbe::load(&bytes, 3, 4).is_err(),
            "layer 3 of 3 blocks"
        );
        assert!(StateProbe::load(&bytes, 4, 5).is_err(), "width mismatch");
        for cut in [0, 10, bytes.len() / 2, bytes.len() - 1] {
            assert!(
                StateProbe::load(&bytes[..cut], 4, 4).is_err(),
                "cut at {cut}"
            );
        }
        assert!(probe.score(&[0.0; 3]).is_err());
    }

    #[test]
    fn a_file_with_both_probes_round_trips_and_keeps_their_provenance_apart() {
        let (rows, labels) = clouds(100, 8, 4);
        let cfg = ProbeTrainConfig::default();
        let mut request = StateProbe::train(vec![1, 3], &rows, &labels, &cfg).unwrap();
        request
            .provenance
            .insert("figures".into(), "request".into());
        let mut answer = StateProbe::train(vec![1, 3], &rows, &labels, &cfg).unwrap();
        answer.threshold = 0.9;
        answer.provenance.insert("figures".into(), "answer".into());
        let both = ChatProbes {
            request: request.clone(),
            answer: Some(answer.clone()),
        };
        let bytes = both.save().unwrap();
        assert_eq!(ChatProbes::load(&bytes, 4, 4).unwrap(), both);
        // A reader of the request probe alone gets the request probe.
        assert_eq!(StateProbe::load(&bytes, 4, 4).unwrap(), request);
        // A request-only file (format 1) has no answer probe.
        let old = ChatProbes::load(&request.save().unwrap(), 4, 4).unwrap();
        assert_eq!(old.answer, None);
        // Both must read the same layers (generation keeps one set of states).
        answer.layers = vec![0, 2];
        let mismatched = ChatProbes {
            request,
            answer: Some(answer),
        };
        assert!(mismatched.save().is_err());
    }

    #[test]
    fn training_refuses_unusable_data() {
        let cfg = ProbeTrainConfig::default();
        assert!(StateProbe::train(vec![0], &[], &[], &cfg).is_err());
        assert!(StateProbe::train(vec![0], &[vec![1.0], vec![2.0]], &[true, true], &cfg).is_err());
        assert!(
            StateProbe::train(vec![0], &[vec![1.0], vec![f32::NAN]], &[true, false], &cfg).is_err()
        );
    }
}
