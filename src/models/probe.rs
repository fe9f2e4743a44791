//! The chat model judging with its own hidden states: a probe over the residual stream of a
//! few of SmolLM2's layers at the last prompt token, or averaged over the last user message's
//! text, or a pair of probes reading both ([`Pooling`]; `ChatModel::prompt_states` reads them;
//! the guard scores every conversation with it before answering).
//!
//! Before answering, generation runs the prompt through the model anyway (prefill); keeping
//! a few layers' states at the last position and taking one dot product costs nothing next
//! to that. Work on refusal directions finds harmful and harmless requests linearly separable
//! inside instruction-tuned models, and the model reads the whole conversation in context
//! (a request split across turns, a politeness wrapper, another tense), which a separate
//! small encoder reading one message does not.
//!
//! A probe reads standardised features (the chosen layers' states, concatenated) with either
//! logistic regression, fitted by full-batch gradient descent, or an ensemble of small
//! one-hidden-layer networks, fitted by minibatch Adam (the shipped request probe: on the
//! validation split it flagged more harmful requests at the same false-positive rate,
//! notes/issue-13-guard.md). Both train in plain `f32` in seconds to minutes, the same on every
//! target, without autodiff. The file is a small safetensors (`mean`, `scale`, and `weight`,
//! `bias` or the networks' `weight1` (8 bits, scales in `weight1_scale`), `bias1`, `weight2`,
//! `bias2`; a pair's second probe under [`POOLED_PREFIX`]) whose metadata names the layers,
//! the threshold and the provenance.

use std::collections::HashMap;

use safetensors::Dtype;

use crate::error::{Error, Result};
use crate::rng::Rng;
use crate::weights::int8::{dequantise, quantise_row};
use crate::weights::safetensors::SafetensorsFile;

/// What is written in a probe file's `format` metadata: a request probe only.
pub const FORMAT: &str = "webguard-chat-probe/1";
/// The format of a file with an answer probe too (its names start with [`ANSWER_PREFIX`]).
pub const FORMAT_WITH_ANSWERS: &str = "webguard-chat-probe/2";
/// The format of a file where a probe is an ensemble of small networks (metadata `hidden`,
/// tensors `weight1`, `bias1`, `weight2`, `bias2`), with or without an answer probe. Older
/// readers refuse it by its format rather than misread it.
pub const FORMAT_NETWORKS: &str = "webguard-chat-probe/3";

/// The format of a file whose request probe reads the last user message's states averaged
/// ([`Pooling::UserMessage`]), otherwise as [`FORMAT_NETWORKS`]: older readers, which would
/// read the last token's, refuse it by its format.
pub const FORMAT_POOLED: &str = "webguard-chat-probe/4";

/// The format of a file whose request probe is a pair ([`Pooling::Both`]: the second's
/// tensors and metadata start with [`POOLED_PREFIX`]), otherwise as [`FORMAT_NETWORKS`].
pub const FORMAT_PAIRED: &str = "webguard-chat-probe/5";

/// Where the second probe of a pair keeps its head in a probe file (after the probe's own
/// prefix).
pub const POOLED_PREFIX: &str = "pooled.";

/// Which positions of the prompt a request probe reads the states at.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub enum Pooling {
    /// The last prompt token's (where the assistant's turn opens).
    #[default]
    LastToken,
    /// The mean over the last user message's text ([`crate::ChatModel::probe_positions`]).
    /// On other authors' English requests at the guard's 2% false positives, a logistic probe
    /// on these caught 17 harmful requests the last token's missed against 6, and stopped 0
    /// safe ones against 4 (notes/issue-13-guard.md, twenty-first session).
    UserMessage,
    /// Both, with a probe for each: the score is the mean of their probabilities. Their
    /// errors differ (averaging dilutes a harmful request with a polite wrapper, which the
    /// last token keeps; the mean reads other authors' phrasings better): on the validation
    /// split and other authors' English requests the pair beat either alone at once
    /// (notes/issue-13-guard.md, twenty-second and twenty-third sessions).
    Both,
}

impl Pooling {
    /// The name pages and the command line use.
    pub fn name(self) -> &'static str {
        match self {
            Pooling::LastToken => "last-token",
            Pooling::UserMessage => "user-message",
            Pooling::Both => "both",
        }
    }
}

/// A probe over chat-model states.
#[derive(Debug, Clone, PartialEq)]
pub struct StateProbe {
    /// The blocks whose output it reads, in feature order.
    pub layers: Vec<usize>,
    /// Where in the prompt (an answer probe: the last token's, at each sentence end).
    pub pooling: Pooling,
    /// Subtracted from the features first.
    mean: Vec<f32>,
    /// Multiplies them next (1 / standard deviation).
    scale: Vec<f32>,
    head: Head,
    /// Scores at or above it flag.
    pub threshold: f32,
    /// A request probe's second line: conversations it scores from here up to `threshold`
    /// are answered with the safety adapters when their answer refuses. Chosen with the
    /// threshold when the probe is fitted (`train-probe`), so a refitted probe brings its own
    /// zone; `None` in files written before it was stored (then there is no zone: the
    /// adapters never answer).
    pub safety_adapters_from: Option<f32>,
    /// Free-form provenance (the command and data that made it, validation figures).
    pub provenance: HashMap<String, String>,
}

/// What turns standardised features into a score.
#[derive(Debug, Clone, PartialEq)]
enum Head {
    /// Logistic regression: `sigmoid(weight · x + bias)`.
    Linear { weight: Vec<f32>, bias: f32 },
    /// The mean of the members' probabilities.
    Ensemble(Vec<Member>),
    /// The mean of two heads' probabilities, the first reading the first half of the
    /// features (the last token's), the second the second half (the mean's):
    /// [`Pooling::Both`].
    Pair(Box<[Head; 2]>),
}

impl Head {
    /// The probability this head gives standardised features `x`.
    fn probability(&self, x: &[f32]) -> f32 {
        match self {
            Head::Linear { weight, bias } => {
                sigmoid(bias + x.iter().zip(weight).map(|(a, b)| a * b).sum::<f32>())
            }
            Head::Ensemble(members) => {
                let mut h = Vec::new();
                let total: f32 = members
                    .iter()
                    .map(|m| {
                        h.resize(m.hidden(), 0.0);
                        sigmoid(m.logit(x, &mut h))
                    })
                    .sum();
                total / members.len() as f32
            }
            Head::Pair(pair) => {
                let (first, second) = x.split_at(x.len() / 2);
                (pair[0].probability(first) + pair[1].probability(second)) / 2.0
            }
        }
    }
}

/// One network of an ensemble: a ReLU layer of `bias1.len()` units and one output.
#[derive(Debug, Clone, PartialEq)]
struct Member {
    /// `[hidden, width]`, row-major.
    weight1: Vec<f32>,
    bias1: Vec<f32>,
    weight2: Vec<f32>,
    bias2: f32,
}

impl Member {
    fn hidden(&self) -> usize {
        self.bias1.len()
    }

    /// The output before the sigmoid, and the hidden layer's activations into `h`.
    fn logit(&self, x: &[f32], h: &mut [f32]) -> f32 {
        let width = x.len();
        for (j, hj) in h.iter_mut().enumerate() {
            let row = &self.weight1[j * width..(j + 1) * width];
            let z = self.bias1[j] + row.iter().zip(x).map(|(a, b)| a * b).sum::<f32>();
            *hj = z.max(0.0);
        }
        self.bias2 + h.iter().zip(&self.weight2).map(|(a, b)| a * b).sum::<f32>()
    }
}

/// A matrix stored as 8-bit integers with one scale per row: a network's first layer, nearly
/// all of a probe file. In f16 the shipped pair of request probes took 3.66 MB; in 8 bits
/// 1.89 MB, and its scores on the validation and dev sets moved by at most 0.002, no decision
/// changing (notes/issue-13-guard.md, twenty-fourth session).
struct Int8Rows {
    values: Vec<i8>,
    scales: Vec<f32>,
    width: usize,
}

impl Int8Rows {
    /// Each row on its grid ([`quantise_row`]: values already on one keep it, so a trained
    /// probe saved and loaded is the same probe).
    fn quantise(matrix: &[f32], width: usize) -> Self {
        let (mut values, mut scales) = (Vec::with_capacity(matrix.len()), Vec::new());
        // Training and loading refuse a width of 0; `max(1)` only keeps `chunks` total.
        for row in matrix.chunks(width.max(1)) {
            let (q, scale) = quantise_row(row);
            values.extend(q);
            scales.push(scale);
        }
        Int8Rows {
            values,
            scales,
            width,
        }
    }

    /// The matrix the integers stand for (read back as a file's are: [`dequantise`]).
    fn values(&self) -> Result<Vec<f32>> {
        dequantise(&self.values, &self.scales, self.width)
            .map_err(|fault| Error::InvalidInput(format!("a probe's first layer: {fault}")))
    }
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
    /// Hidden units per network; 0 fits logistic regression (`steps`, `learning_rate`),
    /// more an ensemble of `members` one-hidden-layer networks (`epochs` of Adam).
    pub hidden: usize,
    /// Networks in the ensemble (each from its own seeded start; their probabilities are
    /// averaged, which steadies a choice single networks make differently by seed).
    pub members: usize,
    /// Passes over the training rows per network.
    pub epochs: usize,
}

impl Default for ProbeTrainConfig {
    fn default() -> Self {
        ProbeTrainConfig {
            // Chosen on the validation split (notes/issue-13-guard.md): 300 underfits the
            // short plain requests, 3000 loses recall.
            steps: 1000,
            learning_rate: 1.0,
            l2: 1e-3,
            hidden: 0,
            members: 4,
            epochs: 50,
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
        let head = if config.hidden == 0 {
            fit_linear(&x, harmful, positives, config)?
        } else {
            fit_ensemble(&x, harmful, positives, config)?
        };
        Ok(StateProbe {
            layers,
            pooling: Pooling::LastToken,
            mean,
            scale,
            head,
            threshold: 0.5,
            safety_adapters_from: None,
            provenance: HashMap::new(),
        })
    }

    /// Features per example: the layers' states, concatenated.
    pub fn width(&self) -> usize {
        self.mean.len()
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
        let x: Vec<f32> = features
            .iter()
            .zip(self.mean.iter().zip(&self.scale))
            .map(|(v, (m, s))| (v - m) * s)
            .collect();
        // `NaN >= threshold` is false: a non-finite state or score would let the request
        // through (an infinite state can even score 0), so either is an error (the guard fails
        // closed), as the filter's non-finite scores are.
        let p = self.head.probability(&x);
        if !p.is_finite() || !features.iter().all(|v| v.is_finite()) {
            return Err(Error::Backend(format!(
                "the chat model's states are not finite (probe score {p}); the device may be lost"
            )));
        }
        Ok(p)
    }

    /// A pair of probes ([`Pooling::Both`]) over `layers`: `rows` are each example's last-token
    /// features followed by its user-message features (as [`crate::models::llama::Positions::LastAndMean`]
    /// gives them), and each half is fitted apart, as [`StateProbe::train`] fits one probe.
    pub fn train_pair(
        layers: Vec<usize>,
        rows: &[Vec<f32>],
        harmful: &[bool],
        config: &ProbeTrainConfig,
    ) -> Result<Self> {
        let width = rows.first().map_or(0, Vec::len);
        if !width.is_multiple_of(2) || rows.iter().any(|r| r.len() != width) {
            return Err(Error::InvalidInput(
                "a pair of probes needs rows of one even width".into(),
            ));
        }
        let half = |second: bool| -> Vec<Vec<f32>> {
            let range = if second {
                width / 2..width
            } else {
                0..width / 2
            };
            rows.iter().map(|r| r[range.clone()].to_vec()).collect()
        };
        let last = StateProbe::train(layers.clone(), &half(false), harmful, config)?;
        let pooled = StateProbe::train(layers, &half(true), harmful, config)?;
        Ok(StateProbe {
            pooling: Pooling::Both,
            mean: [last.mean, pooled.mean].concat(),
            scale: [last.scale, pooled.scale].concat(),
            head: Head::Pair(Box::new([last.head, pooled.head])),
            ..last
        })
    }
}

/// Per-example weights under which each class weighs 1/2 in total.
fn class_weights(harmful: &[bool], positives: usize) -> (f32, f32) {
    (
        0.5 / positives as f32,
        0.5 / (harmful.len() - positives) as f32,
    )
}

/// Logistic regression by full-batch gradient descent (`x` standardised).
fn fit_linear(
    x: &[Vec<f32>],
    harmful: &[bool],
    positives: usize,
    config: &ProbeTrainConfig,
) -> Result<Head> {
    let width = x[0].len();
    // Balanced classes: each class's examples weigh 1/2 in total.
    let (w_pos, w_neg) = class_weights(harmful, positives);
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
    // Negligible weights made 0 as loading makes them ([`without_negligible`]).
    let weight = without_negligible(weight);
    let bias = if bias.abs() < NEGLIGIBLE { 0.0 } else { bias };
    Ok(Head::Linear { weight, bias })
}

/// An ensemble of one-hidden-layer networks, each trained by minibatch Adam on the
/// class-balanced logistic loss with an L2 penalty on its weights (`x` standardised).
fn fit_ensemble(
    x: &[Vec<f32>],
    harmful: &[bool],
    positives: usize,
    config: &ProbeTrainConfig,
) -> Result<Head> {
    if config.members == 0 {
        return Err(Error::InvalidInput("an ensemble needs members".into()));
    }
    let weights = class_weights(harmful, positives);
    let fit = |m: usize| fit_member(x, harmful, weights, config, 0x5EED + m as u64);
    // The members are independent (each from its own seed): natively one per core, the same
    // networks in the same order as one after another.
    #[cfg(not(target_arch = "wasm32"))]
    let members = {
        use rayon::prelude::*;
        (0..config.members)
            .into_par_iter()
            .map(fit)
            .collect::<Result<_>>()?
    };
    #[cfg(target_arch = "wasm32")]
    let members = (0..config.members).map(fit).collect::<Result<_>>()?;
    Ok(Head::Ensemble(members))
}

/// One network of an ensemble, trained from the starts `seed` draws.
fn fit_member(
    x: &[Vec<f32>],
    harmful: &[bool],
    (w_pos, w_neg): (f32, f32),
    config: &ProbeTrainConfig,
    seed: u64,
) -> Result<Member> {
    const BATCH: usize = 128;
    const LEARNING_RATE: f32 = 1e-3;
    let (width, hidden, n) = (x[0].len(), config.hidden, x.len());
    let mut rng = Rng::new(seed);
    // Glorot-uniform starts.
    let mut uniform = |fan_in: usize, fan_out: usize, len: usize| -> Vec<f32> {
        let a = (6.0 / (fan_in + fan_out) as f64).sqrt();
        (0..len)
            .map(|_| ((rng.next_f64() * 2.0 - 1.0) * a) as f32)
            .collect()
    };
    let mut net = Member {
        weight1: uniform(width, hidden, hidden * width),
        bias1: uniform(width, hidden, hidden),
        weight2: uniform(hidden, 1, hidden),
        bias2: 0.0,
    };
    let mut adam1 = Adam::new(hidden * width);
    let mut adam_b1 = Adam::new(hidden);
    let mut adam2 = Adam::new(hidden);
    let mut adam_b2 = Adam::new(1);
    let mut order: Vec<usize> = (0..n).collect();
    let mut h = vec![0f32; hidden];
    let (mut g1, mut gb1, mut g2) = (
        vec![0f32; hidden * width],
        vec![0f32; hidden],
        vec![0f32; hidden],
    );
    for epoch in 0..config.epochs {
        crate::rng::shuffle(&mut order, seed.wrapping_mul(1000) + epoch as u64);
        for batch in order.chunks(BATCH) {
            g1.iter_mut().for_each(|g| *g = 0.0);
            gb1.iter_mut().for_each(|g| *g = 0.0);
            g2.iter_mut().for_each(|g| *g = 0.0);
            let mut gb2 = 0f32;
            // Scaled so a batch's gradient estimates the whole set's.
            let scale = n as f32 / batch.len() as f32;
            for &i in batch {
                let y = harmful[i];
                let z = net.logit(&x[i], &mut h);
                let err = (sigmoid(z) - if y { 1.0 } else { 0.0 })
                    * if y { w_pos } else { w_neg }
                    * scale;
                if !err.is_finite() {
                    return Err(Error::Tuning("the probe's loss diverged".into()));
                }
                gb2 += err;
                for j in 0..hidden {
                    g2[j] += err * h[j];
                    if h[j] > 0.0 {
                        let d = err * net.weight2[j];
                        gb1[j] += d;
                        g1[j * width..(j + 1) * width]
                            .iter_mut()
                            .zip(&x[i])
                            .for_each(|(g, v)| *g += d * v);
                    }
                }
            }
            g1.iter_mut()
                .zip(&net.weight1)
                .for_each(|(g, w)| *g += config.l2 * w);
            g2.iter_mut()
                .zip(&net.weight2)
                .for_each(|(g, w)| *g += config.l2 * w);
            adam1.step(&mut net.weight1, &g1, LEARNING_RATE);
            adam_b1.step(&mut net.bias1, &gb1, LEARNING_RATE);
            adam2.step(&mut net.weight2, &g2, LEARNING_RATE);
            adam_b2.step(std::slice::from_mut(&mut net.bias2), &[gb2], LEARNING_RATE);
        }
    }
    // Stored in 8 bits ([`Int8Rows`]), so the probe in use is the one in the file; negligible
    // weights made 0 as loading makes them.
    let grid = Int8Rows::quantise(&net.weight1, width);
    net.weight1 = without_negligible(grid.values()?);
    net.bias1 = without_negligible(net.bias1);
    net.weight2 = without_negligible(net.weight2);
    if net.bias2.abs() < NEGLIGIBLE {
        net.bias2 = 0.0;
    }
    Ok(net)
}

/// Adam's moment estimates for one parameter tensor.
struct Adam {
    m: Vec<f32>,
    v: Vec<f32>,
    t: i32,
}

impl Adam {
    fn new(len: usize) -> Self {
        Adam {
            m: vec![0.0; len],
            v: vec![0.0; len],
            t: 0,
        }
    }

    fn step(&mut self, params: &mut [f32], grad: &[f32], lr: f32) {
        const B1: f32 = 0.9;
        const B2: f32 = 0.999;
        self.t += 1;
        let (c1, c2) = (1.0 - B1.powi(self.t), 1.0 - B2.powi(self.t));
        for ((p, g), (m, v)) in params
            .iter_mut()
            .zip(grad)
            .zip(self.m.iter_mut().zip(self.v.iter_mut()))
        {
            *m = B1 * *m + (1.0 - B1) * g;
            *v = B2 * *v + (1.0 - B2) * g * g;
            *p -= lr * (*m / c1) / ((*v / c2).sqrt() + 1e-8);
            // Weight decay drives a hidden unit that learns nothing towards 0, and its weight
            // and moments into the subnormals, where every product of the next steps' forward
            // and backward passes takes a microcode assist ([`without_negligible`]).
            for x in [p, m, v] {
                if x.abs() < NEGLIGIBLE {
                    *x = 0.0;
                }
            }
        }
    }
}

impl StateProbe {
    /// Reads a probe file's request probe, checking it fits a chat model with `blocks` blocks
    /// of width `dim` (an answer probe in the same file is ignored: [`ChatProbes::load`]).
    pub fn load(bytes: &[u8], blocks: usize, dim: usize) -> Result<Self> {
        Ok(ChatProbes::load(bytes, blocks, dim)?.request)
    }

    /// The probe stored under `prefix` (`""` for the request probe, [`ANSWER_PREFIX`] for the
    /// answer probe) in a parsed probe file.
    fn from_file(
        file: &SafetensorsFile,
        prefix: &str,
        blocks: usize,
        dim: usize,
        pooling: Pooling,
    ) -> Result<Self> {
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
        let safety_adapters_from = meta
            .get(&format!("{prefix}safety_adapters_from"))
            .map(|v| match v.parse::<f32>() {
                Ok(from) if (0.0..=threshold).contains(&from) => Ok(from),
                _ => Err(Error::ModelFile(format!(
                    "{what}: safety_adapters_from {v:?} is not a score from 0 to its threshold {threshold}"
                ))),
            })
            .transpose()?;
        let width = layers.len() * dim * if pooling == Pooling::Both { 2 } else { 1 };
        let values =
            |name: &str, len: usize| f32_vector(file, &format!("{prefix}{name}"), len, what);
        let head = match pooling {
            Pooling::Both => {
                let pooled = format!("{prefix}{POOLED_PREFIX}");
                Head::Pair(Box::new([
                    Head::from_file(file, prefix, width / 2, what)?,
                    Head::from_file(file, &pooled, width / 2, what)?,
                ]))
            }
            _ => Head::from_file(file, prefix, width, what)?,
        };
        let provenance = meta
            .iter()
            .filter_map(|(k, v)| {
                let key = if prefix.is_empty() {
                    (!k.starts_with(ANSWER_PREFIX)).then_some(k.as_str())
                } else {
                    k.strip_prefix(prefix)
                }?;
                if key.starts_with(POOLED_PREFIX) {
                    return None;
                }
                (![
                    "format",
                    "layers",
                    "threshold",
                    "hidden",
                    "safety_adapters_from",
                ]
                .contains(&key))
                .then(|| (key.to_string(), v.clone()))
            })
            .collect();
        Ok(StateProbe {
            layers,
            pooling,
            mean: values("mean", width)?,
            scale: values("scale", width)?,
            head,
            threshold,
            safety_adapters_from,
            provenance,
        })
    }

    /// This probe's tensors and metadata under `prefix`, added to `tensors` and `meta`.
    fn store(
        &self,
        prefix: &str,
        tensors: &mut Vec<FileTensor>,
        meta: &mut HashMap<String, String>,
    ) -> Result<()> {
        if (self.pooling == Pooling::Both) != matches!(self.head, Head::Pair(_)) {
            return Err(Error::InvalidInput(
                "a pair of probes reads both poolings, and only a pair does".into(),
            ));
        }
        push_f32(tensors, format!("{prefix}mean"), &self.mean);
        push_f32(tensors, format!("{prefix}scale"), &self.scale);
        self.head.store(prefix, tensors, meta);
        for (k, v) in &self.provenance {
            meta.insert(format!("{prefix}{k}"), v.clone());
        }
        meta.insert(
            format!("{prefix}layers"),
            serde_json::to_string(&self.layers).map_err(|e| Error::InvalidInput(e.to_string()))?,
        );
        meta.insert(format!("{prefix}threshold"), self.threshold.to_string());
        if let Some(from) = self.safety_adapters_from {
            if !(0.0..=self.threshold).contains(&from) {
                return Err(Error::InvalidInput(format!(
                    "safety adapters from {from}: not a score from 0 to the threshold {}",
                    self.threshold
                )));
            }
            meta.insert(format!("{prefix}safety_adapters_from"), from.to_string());
        }
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

/// A named tensor of a probe file being written: name, type, bytes, values.
type FileTensor = (String, Dtype, Vec<u8>, usize);

/// Adds `values` to `tensors` as f32.
fn push_f32(tensors: &mut Vec<FileTensor>, name: String, values: &[f32]) {
    let bytes = values.iter().flat_map(|x| x.to_le_bytes()).collect();
    tensors.push((name, Dtype::F32, bytes, values.len()));
}

/// The finite f32 values of tensor `name`, which must have shape `[len]`.
fn f32_vector(file: &SafetensorsFile, name: &str, len: usize, what: &str) -> Result<Vec<f32>> {
    let (values, shape) = file.f32_values(name)?;
    if shape != [len] || values.iter().any(|v| !v.is_finite()) {
        return Err(Error::ModelFile(format!(
            "{what}: {name} has shape {shape:?}, or non-finite values; expected [{len}]"
        )));
    }
    Ok(values)
}

/// Where a file keeps the scales of its 8-bit `weight1` (after the probe's prefix).
const WEIGHT1_SCALE: &str = "weight1_scale";

/// The networks' first layers under `prefix`, `rows` rows of `width`: 8 bits with a scale per
/// row ([`Int8Rows`]), or f16 or f32 as files written before them.
fn weight1(
    file: &SafetensorsFile,
    prefix: &str,
    rows: usize,
    width: usize,
    what: &str,
) -> Result<Vec<f32>> {
    let name = format!("{prefix}weight1");
    if file.dtype(&name)? != Dtype::I8 {
        return f32_vector(file, &name, rows * width, what).map(without_negligible);
    }
    let (values, shape) = file.i8_values(&name)?;
    if shape != [rows * width] {
        return Err(Error::ModelFile(format!(
            "{what}: {name} has shape {shape:?}; expected [{}]",
            rows * width
        )));
    }
    let scales = f32_vector(file, &format!("{prefix}{WEIGHT1_SCALE}"), rows, what)?;
    dequantise(&values, &scales, width)
        .map(without_negligible)
        .map_err(|fault| Error::ModelFile(format!("{what}: {name} with {WEIGHT1_SCALE}: {fault}")))
}

/// `values` with every magnitude under [`NEGLIGIBLE`] made 0. Weight decay shrinks a hidden
/// unit that learnt nothing until its weights are subnormal (in the pair of request probes
/// shipped on 2026-12-06, 198 of 512 first-layer rows had a subnormal scale), and on x86 each
/// product with a subnormal, or giving one, takes a microcode assist, in wasm as natively
/// (wasm cannot flush them): scoring the validation split's 2,019 rows took 59.8 s of CPU
/// with them and 2.8 s without, the same scores to the bit (about 30 ms a request before;
/// notes/issue-13-guard.md, thirty-first session). Such a weight moves a logit by less than
/// 1e-25.
fn without_negligible(mut values: Vec<f32>) -> Vec<f32> {
    for v in &mut values {
        if v.abs() < NEGLIGIBLE {
            *v = 0.0;
        }
    }
    values
}

/// Far below any weight that matters (standardised features are at most a few hundred), far
/// above the subnormals (under 1.2e-38) and the products near them.
const NEGLIGIBLE: f32 = 1e-30;

impl Head {
    /// The head stored under `prefix` reading `width` features (not a pair: its halves are
    /// read one by one).
    fn from_file(file: &SafetensorsFile, prefix: &str, width: usize, what: &str) -> Result<Self> {
        let values = |name: &str, len: usize| {
            f32_vector(file, &format!("{prefix}{name}"), len, what).map(without_negligible)
        };
        Ok(match file.metadata().get(&format!("{prefix}hidden")) {
            None => Head::Linear {
                weight: values("weight", width)?,
                bias: values("bias", 1)?[0],
            },
            Some(hidden) => {
                let hidden: usize = hidden
                    .parse()
                    .ok()
                    .filter(|&h| h > 0 && h <= 4096)
                    .ok_or_else(|| Error::ModelFile(format!("{what}: hidden {hidden:?}")))?;
                let (_, shape) = file.f32_values(&format!("{prefix}bias2"))?;
                let members = match shape[..] {
                    [m] if (1..=64).contains(&m) => m,
                    _ => {
                        return Err(Error::ModelFile(format!(
                            "{what}: bias2 has shape {shape:?}; expected [members]"
                        )));
                    }
                };
                let w1 = weight1(file, prefix, members * hidden, width, what)?;
                let b1 = values("bias1", members * hidden)?;
                let (w2, b2) = (
                    values("weight2", members * hidden)?,
                    values("bias2", members)?,
                );
                Head::Ensemble(
                    (0..members)
                        .map(|m| Member {
                            weight1: w1[m * hidden * width..(m + 1) * hidden * width].to_vec(),
                            bias1: b1[m * hidden..(m + 1) * hidden].to_vec(),
                            weight2: w2[m * hidden..(m + 1) * hidden].to_vec(),
                            bias2: b2[m],
                        })
                        .collect(),
                )
            }
        })
    }

    /// The head's tensors and metadata under `prefix` (a pair's second head under
    /// [`POOLED_PREFIX`] after it).
    fn store(
        &self,
        prefix: &str,
        tensors: &mut Vec<FileTensor>,
        meta: &mut HashMap<String, String>,
    ) {
        match self {
            Head::Linear { weight, bias } => {
                push_f32(tensors, format!("{prefix}weight"), weight);
                push_f32(tensors, format!("{prefix}bias"), &[*bias]);
            }
            Head::Ensemble(members) => {
                let cat = |f: &dyn Fn(&Member) -> Vec<f32>| -> Vec<f32> {
                    members.iter().flat_map(f).collect()
                };
                // The networks' first layer is nearly all of the file: 8 bits with a scale
                // per row (on its grid from training).
                let width = members[0].weight1.len() / members[0].hidden();
                let weight1 = Int8Rows::quantise(&cat(&|m| m.weight1.clone()), width);
                tensors.push((
                    format!("{prefix}weight1"),
                    Dtype::I8,
                    weight1.values.iter().map(|&q| q as u8).collect(),
                    weight1.values.len(),
                ));
                push_f32(tensors, format!("{prefix}{WEIGHT1_SCALE}"), &weight1.scales);
                push_f32(
                    tensors,
                    format!("{prefix}bias1"),
                    &cat(&|m| m.bias1.clone()),
                );
                push_f32(
                    tensors,
                    format!("{prefix}weight2"),
                    &cat(&|m| m.weight2.clone()),
                );
                push_f32(tensors, format!("{prefix}bias2"), &cat(&|m| vec![m.bias2]));
                meta.insert(format!("{prefix}hidden"), members[0].hidden().to_string());
            }
            Head::Pair(pair) => {
                pair[0].store(prefix, tensors, meta);
                pair[1].store(&format!("{prefix}{POOLED_PREFIX}"), tensors, meta);
            }
        }
    }
}

/// Where an answer probe's tensors and metadata live in a probe file.
pub const ANSWER_PREFIX: &str = "answer.";

/// What a probe file holds: the request probe (the conversation, at its [`Pooling`]) and,
/// from format 2 on, the answer probe (the answer so far, at each sentence end).
#[derive(Debug, Clone, PartialEq)]
pub struct ChatProbes {
    /// Reads the conversation (at the last prompt token, or averaged over its last user
    /// message).
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
        let answer_probe =
            || StateProbe::from_file(&file, ANSWER_PREFIX, blocks, dim, Pooling::LastToken);
        let answer = match format {
            FORMAT => None,
            FORMAT_WITH_ANSWERS => Some(answer_probe()?),
            FORMAT_NETWORKS | FORMAT_POOLED | FORMAT_PAIRED => {
                let has_answer = file
                    .metadata()
                    .contains_key(&format!("{ANSWER_PREFIX}layers"));
                has_answer.then(answer_probe).transpose()?
            }
            other => {
                return Err(Error::ModelFile(format!(
                    "not a webguard chat probe: format {other:?} (expected {FORMAT:?}, {FORMAT_WITH_ANSWERS:?}, {FORMAT_NETWORKS:?}, {FORMAT_POOLED:?} or {FORMAT_PAIRED:?})"
                )));
            }
        };
        let pooling = match format {
            FORMAT_POOLED => Pooling::UserMessage,
            FORMAT_PAIRED => Pooling::Both,
            _ => Pooling::LastToken,
        };
        let request = StateProbe::from_file(&file, "", blocks, dim, pooling)?;
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
        let networks = std::iter::once(&self.request)
            .chain(&self.answer)
            .any(|p| !matches!(p.head, Head::Linear { .. }));
        if self
            .answer
            .as_ref()
            .is_some_and(|a| a.pooling != Pooling::LastToken)
        {
            return Err(Error::InvalidInput(
                "an answer probe reads the last token's states".into(),
            ));
        }
        let format = if self.request.pooling == Pooling::Both {
            FORMAT_PAIRED
        } else if self.request.pooling == Pooling::UserMessage {
            FORMAT_POOLED
        } else if networks {
            FORMAT_NETWORKS
        } else if self.answer.is_some() {
            FORMAT_WITH_ANSWERS
        } else {
            FORMAT
        };
        meta.insert("format".into(), format.into());
        let views: Vec<(String, safetensors::tensor::TensorView<'_>)> = tensors
            .iter()
            .map(|(name, dtype, data, n)| {
                safetensors::tensor::TensorView::new(*dtype, vec![*n], data)
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

    /// `probe`'s own file with one metadata entry set to `value` (a file edited by hand).
    fn with_metadata(probe: &StateProbe, key: &str, value: &str) -> Vec<u8> {
        let saved = probe.save().unwrap();
        let mut meta = SafetensorsFile::parse(&saved).unwrap().metadata().clone();
        meta.insert(key.into(), value.into());
        let mut tensors = Vec::new();
        probe.store("", &mut tensors, &mut HashMap::new()).unwrap();
        file_of(&tensors, meta)
    }

    /// A probe file holding `tensors` and `meta` as they are (edited by a test).
    fn file_of(tensors: &[FileTensor], meta: HashMap<String, String>) -> Vec<u8> {
        let views: Vec<_> = tensors
            .iter()
            .map(|(name, dtype, data, n)| {
                (
                    name.clone(),
                    safetensors::tensor::TensorView::new(*dtype, vec![*n], data).unwrap(),
                )
            })
            .collect();
        safetensors::serialize(views, Some(meta)).unwrap()
    }

    /// A small ensemble fitted on the checkerboard (rows of width 6: layers 0 and 2 of 3).
    fn small_ensemble(members: usize) -> (StateProbe, Vec<Vec<f32>>) {
        let (rows, labels) = checkerboard(200, 7);
        let cfg = ProbeTrainConfig {
            hidden: 4,
            members,
            epochs: 2,
            ..ProbeTrainConfig::default()
        };
        let probe = StateProbe::train(vec![0, 2], &rows, &labels, &cfg).unwrap();
        (probe, rows)
    }

    #[test]
    fn a_probe_separates_classes_that_differ_along_one_direction_and_refuses_non_finite_states() {
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
        // A state that is not finite (a lost device) is an error, never a score under the
        // threshold that would let the request through.
        let mut broken = test[0].clone();
        broken[3] = f32::NAN;
        assert!(matches!(probe.score(&broken), Err(Error::Backend(_))));
        broken[3] = f32::INFINITY;
        assert!(probe.score(&broken).is_err());
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
    fn a_request_probes_safety_adapters_zone_is_kept_in_its_file_and_must_sit_below_its_threshold()
    {
        let (rows, labels) = clouds(100, 8, 5);
        let mut probe =
            StateProbe::train(vec![1, 3], &rows, &labels, &ProbeTrainConfig::default()).unwrap();
        probe.threshold = 0.7;
        assert_eq!(
            StateProbe::load(&probe.save().unwrap(), 4, 4)
                .unwrap()
                .safety_adapters_from,
            None
        );
        probe.safety_adapters_from = Some(0.64);
        let bytes = probe.save().unwrap();
        let loaded = StateProbe::load(&bytes, 4, 4).unwrap();
        assert_eq!(loaded.safety_adapters_from, Some(0.64));
        assert!(!loaded.provenance.contains_key("safety_adapters_from"));
        // Above the threshold the zone would be empty and blocking would come first: refused
        // when saving and in a file written by hand.
        probe.safety_adapters_from = Some(0.8);
        assert!(probe.save().is_err());
        for bad in ["0.8", "-0.1", "NaN", "high"] {
            let edited = with_metadata(&loaded, "safety_adapters_from", bad);
            let err = StateProbe::load(&edited, 4, 4).unwrap_err().to_string();
            assert!(err.contains("safety_adapters_from"), "{bad}: {err}");
        }
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

    /// Labels that depend on two features together (one class where both are on the same
    /// side of their means): no linear probe does better than chance.
    fn checkerboard(n: usize, seed: u64) -> (Vec<Vec<f32>>, Vec<bool>) {
        let mut rng = Rng::new(seed);
        (0..n)
            .map(|_| {
                let row: Vec<f32> = (0..6).map(|_| rng.next_f64() as f32 * 2.0 - 1.0).collect();
                let y = (row[0] > 0.0) == (row[1] > 0.0);
                (row, y)
            })
            .unzip()
    }

    fn accuracy(probe: &StateProbe, rows: &[Vec<f32>], labels: &[bool]) -> f64 {
        let correct = rows
            .iter()
            .zip(labels)
            .filter(|(r, y)| (probe.score(r).unwrap() >= 0.5) == **y)
            .count();
        correct as f64 / rows.len() as f64
    }

    #[test]
    fn an_ensemble_learns_what_a_linear_probe_cannot() {
        let (rows, labels) = checkerboard(600, 5);
        let (test, test_labels) = checkerboard(600, 6);
        let linear =
            StateProbe::train(vec![0], &rows, &labels, &ProbeTrainConfig::default()).unwrap();
        let cfg = ProbeTrainConfig {
            hidden: 16,
            members: 2,
            epochs: 200,
            l2: 1e-4,
            ..ProbeTrainConfig::default()
        };
        let networks = StateProbe::train(vec![0], &rows, &labels, &cfg).unwrap();
        let (lin, net) = (
            accuracy(&linear, &test, &test_labels),
            accuracy(&networks, &test, &test_labels),
        );
        assert!(lin < 0.65, "linear {lin}");
        assert!(net > 0.9, "ensemble {net}");
    }

    #[test]
    fn ensemble_files_round_trip_and_bad_ones_are_refused() {
        let (rows, labels) = checkerboard(200, 7);
        let cfg = ProbeTrainConfig {
            hidden: 4,
            members: 3,
            epochs: 2,
            ..ProbeTrainConfig::default()
        };
        let request = StateProbe::train(vec![0, 2], &rows, &labels, &cfg).unwrap();
        let answer =
            StateProbe::train(vec![0, 2], &rows, &labels, &ProbeTrainConfig::default()).unwrap();
        for probes in [
            ChatProbes {
                request: request.clone(),
                answer: None,
            },
            ChatProbes {
                request: request.clone(),
                answer: Some(answer),
            },
        ] {
            let bytes = probes.save().unwrap();
            assert_eq!(ChatProbes::load(&bytes, 3, 3).unwrap(), probes);
            let loaded = StateProbe::load(&bytes, 3, 3).unwrap();
            assert_eq!(
                loaded.score(&rows[0]).unwrap(),
                request.score(&rows[0]).unwrap()
            );
        }
        // The same tensors with a hidden size that does not divide them.
        let bad = with_metadata(&request, "hidden", "5");
        let err = StateProbe::load(&bad, 3, 3).unwrap_err().to_string();
        assert!(err.contains("weight1"), "{err}");
    }

    #[test]
    fn an_ensembles_first_layer_is_stored_in_8_bits_and_older_f16_files_still_load() {
        let (probe, rows) = small_ensemble(2);
        let bytes = probe.save().unwrap();
        let file = SafetensorsFile::parse(&bytes).unwrap();
        assert_eq!(file.dtype("weight1").unwrap(), Dtype::I8);
        assert_eq!(file.shape("weight1_scale").unwrap(), [2 * 4]);
        // The same probe as an older reader wrote it: weight1 in f16, no scales.
        let Head::Ensemble(members) = &probe.head else {
            panic!("an ensemble")
        };
        let mut tensors = Vec::new();
        let mut meta = file.metadata().clone();
        probe.store("", &mut tensors, &mut meta).unwrap();
        tensors.retain(|t| t.0 != "weight1_scale");
        let weight1: Vec<f32> = members.iter().flat_map(|m| m.weight1.clone()).collect();
        let halves = weight1
            .iter()
            .flat_map(|v| half::f16::from_f32(*v).to_le_bytes());
        let at = tensors.iter().position(|t| t.0 == "weight1").unwrap();
        tensors[at] = (
            "weight1".into(),
            Dtype::F16,
            halves.collect(),
            weight1.len(),
        );
        let loaded = StateProbe::load(&file_of(&tensors, meta), 3, 3).unwrap();
        for row in &rows[..20] {
            let (a, b) = (loaded.score(row).unwrap(), probe.score(row).unwrap());
            assert!((a - b).abs() < 1e-3, "{a} vs {b}");
        }
    }

    #[test]
    fn an_8_bit_first_layer_with_a_bad_scale_or_the_value_minus_128_is_refused() {
        let (probe, _) = small_ensemble(1);
        let bytes = probe.save().unwrap();
        let file = SafetensorsFile::parse(&bytes).unwrap();
        let edit = |name: &str, change: &dyn Fn(&mut Vec<u8>)| -> String {
            let mut tensors = Vec::new();
            probe.store("", &mut tensors, &mut HashMap::new()).unwrap();
            let t = tensors.iter_mut().find(|t| t.0 == name).unwrap();
            change(&mut t.2);
            let edited = file_of(&tensors, file.metadata().clone());
            StateProbe::load(&edited, 3, 3).unwrap_err().to_string()
        };
        let err = edit("weight1", &|d| d[5] = 0x80);
        assert!(err.contains("-128"), "{err}");
        for bad in [-1f32, f32::NEG_INFINITY, f32::NAN] {
            let err = edit("weight1_scale", &|d| {
                d[..4].copy_from_slice(&bad.to_le_bytes())
            });
            assert!(err.contains("weight1_scale"), "{bad}: {err}");
        }
    }

    /// A unit weight decay shrank to nothing is stored with a subnormal scale; products with
    /// subnormals are slow on x86 (and in wasm), so such weights load as 0, which changes no
    /// score: the file with that scale scores exactly as the file with the scale 0.
    #[test]
    fn first_layer_rows_scaled_below_the_normal_floats_load_as_zeros_and_score_as_zeros() {
        let (probe, rows) = small_ensemble(1);
        let bytes = probe.save().unwrap();
        let file = SafetensorsFile::parse(&bytes).unwrap();
        let with_first_scale = |scale: f32| {
            let mut tensors = Vec::new();
            probe.store("", &mut tensors, &mut HashMap::new()).unwrap();
            let t = tensors.iter_mut().find(|t| t.0 == WEIGHT1_SCALE).unwrap();
            t.2[..4].copy_from_slice(&scale.to_le_bytes());
            StateProbe::load(&file_of(&tensors, file.metadata().clone()), 3, 3).unwrap()
        };
        let (subnormal, zero) = (with_first_scale(1e-40), with_first_scale(0.0));
        assert!(1e-40f32.is_subnormal());
        let Head::Ensemble(members) = &subnormal.head else {
            panic!("an ensemble")
        };
        let width = members[0].weight1.len() / members[0].hidden();
        assert!(members[0].weight1[..width].iter().all(|&w| w == 0.0));
        assert!(members[0].weight1[width..].iter().any(|&w| w != 0.0));
        for m in members {
            assert!(!m.weight1.iter().any(|w| w.abs() < NEGLIGIBLE && *w != 0.0));
        }
        for r in &rows {
            assert_eq!(subnormal.score(r).unwrap(), zero.score(r).unwrap());
        }
    }

    /// A weight with no gradient but its decay shrinks towards 0 step by step; Adam's steps
    /// must never leave it, or its moments, between 0 and [`NEGLIGIBLE`] (the subnormals and
    /// the products near them are slow), and a weight that matters must still move.
    #[test]
    fn adam_steps_under_weight_decay_leave_no_weight_or_moment_below_the_negligible_floor() {
        let l2 = 0.008;
        let mut params = vec![1e-3f32, -2e-20, 1e-29, 0.5];
        let mut adam = Adam::new(params.len());
        let negligible = |x: f32| x != 0.0 && x.abs() < NEGLIGIBLE;
        for step in 0..3000 {
            let grad: Vec<f32> = params.iter().map(|w| l2 * w).collect();
            adam.step(&mut params, &grad, 1e-3);
            for (i, x) in params.iter().chain(&adam.m).chain(&adam.v).enumerate() {
                assert!(!negligible(*x), "step {step}, value {i}: {x:e}");
            }
        }
        assert!(params[3] < 0.5 - 0.1, "decay moved a weight: {}", params[3]);
    }

    /// Training ends with the weights loading would give: none between 0 and [`NEGLIGIBLE`],
    /// even where weight decay is strong enough to kill hidden units.
    #[test]
    fn a_trained_ensemble_holds_no_weight_below_the_negligible_floor() {
        let (rows, labels) = clouds(60, 4, 7);
        let config = ProbeTrainConfig {
            hidden: 32,
            members: 1,
            // One step an epoch: without the flushes, 2,000 steps leave 4 weights between 0
            // and the floor.
            epochs: 2000,
            l2: 0.5,
            ..ProbeTrainConfig::default()
        };
        let probe = StateProbe::train(vec![1], &rows, &labels, &config).unwrap();
        let Head::Ensemble(members) = &probe.head else {
            panic!("an ensemble")
        };
        let net = &members[0];
        let all = net.weight1.iter().chain(&net.bias1).chain(&net.weight2);
        let negligible = all.filter(|x| **x != 0.0 && x.abs() < NEGLIGIBLE).count();
        assert_eq!(negligible, 0);
        assert!(net.weight1.iter().any(|w| *w != 0.0), "every unit died");
    }

    #[test]
    fn a_probe_reading_the_user_message_keeps_its_pooling_in_a_format_older_readers_refuse() {
        let (rows, labels) = clouds(100, 4, 5);
        let mut request =
            StateProbe::train(vec![1], &rows, &labels, &ProbeTrainConfig::default()).unwrap();
        let answer = request.clone();
        request.pooling = Pooling::UserMessage;
        let probes = ChatProbes {
            request: request.clone(),
            answer: Some(answer.clone()),
        };
        let bytes = probes.save().unwrap();
        let file = SafetensorsFile::parse(&bytes).unwrap();
        assert_eq!(file.metadata()["format"], FORMAT_POOLED);
        let loaded = ChatProbes::load(&bytes, 2, 4).unwrap();
        assert_eq!(loaded, probes);
        assert_eq!(loaded.answer.unwrap().pooling, Pooling::LastToken);
        // A last-token probe's file is as before; an answer probe cannot average.
        let plain = StateProbe::load(&answer.save().unwrap(), 2, 4).unwrap();
        assert_eq!(plain.pooling, Pooling::LastToken);
        let wrong = ChatProbes {
            request: answer,
            answer: Some(request),
        };
        assert!(wrong.save().is_err());
    }

    #[test]
    fn a_pair_scores_the_mean_of_its_two_probes_and_keeps_both_in_its_file() {
        // Each half of a row is its own draw of the clouds, so the two fitted probes differ.
        let (first, labels) = clouds(120, 4, 11);
        let (second, _) = clouds(120, 4, 12);
        let rows: Vec<Vec<f32>> = (first.iter().zip(&second))
            .map(|(a, b)| [&a[..], &b[..]].concat())
            .collect();
        let cfg = ProbeTrainConfig {
            hidden: 4,
            members: 2,
            epochs: 3,
            ..ProbeTrainConfig::default()
        };
        let pair = StateProbe::train_pair(vec![1], &rows, &labels, &cfg).unwrap();
        assert_eq!((pair.pooling, pair.width()), (Pooling::Both, 8));
        let last = StateProbe::train(vec![1], &first, &labels, &cfg).unwrap();
        let pooled = StateProbe::train(vec![1], &second, &labels, &cfg).unwrap();
        for (row, (a, b)) in rows.iter().zip(first.iter().zip(&second)).take(20) {
            let want = (last.score(a).unwrap() + pooled.score(b).unwrap()) / 2.0;
            assert!((pair.score(row).unwrap() - want).abs() < 1e-6);
        }
        assert!(pair.score(&first[0]).is_err(), "half a row");
        let probes = ChatProbes {
            request: pair.clone(),
            answer: Some(last.clone()),
        };
        let bytes = probes.save().unwrap();
        let file = SafetensorsFile::parse(&bytes).unwrap();
        assert_eq!(file.metadata()["format"], FORMAT_PAIRED);
        assert!(file.metadata().contains_key("pooled.hidden"));
        let loaded = ChatProbes::load(&bytes, 2, 4).unwrap();
        assert_eq!(loaded, probes);
        assert!(
            !loaded
                .request
                .provenance
                .keys()
                .any(|k| k.starts_with(POOLED_PREFIX))
        );
        // A pair's pooling without a pair's head (or the reverse) is not written.
        let mut wrong = last.clone();
        wrong.pooling = Pooling::Both;
        assert!(wrong.save().is_err());
        let mut wrong = pair;
        wrong.pooling = Pooling::LastToken;
        assert!(wrong.save().is_err());
        // Rows of odd or mixed widths are not a pair's.
        assert!(
            StateProbe::train_pair(
                vec![1],
                &first[..3]
                    .iter()
                    .map(|r| r[..3].to_vec())
                    .collect::<Vec<_>>(),
                &labels[..3],
                &cfg
            )
            .is_err()
        );
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
