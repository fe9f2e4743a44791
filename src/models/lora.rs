//! Low-rank adapters (LoRA) for the chat model's projections: `y = W x + s · B (A x)` with
//! `A: [in, r]`, `B: [r, out]` and `s = alpha / r`. `B` starts at zero, so fresh adapters
//! change nothing until trained; the base weights never change.

use std::fmt;
use std::str::FromStr;

use burn::module::{Module, Param};
use burn::tensor::{Device, Distribution, Tensor};

use crate::error::{Error, Result};

/// The seven projections of a llama block.
#[derive(
    Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord, serde::Serialize, serde::Deserialize,
)]
#[serde(rename_all = "lowercase")]
pub enum Projection {
    /// Attention query.
    Q,
    /// Attention key.
    K,
    /// Attention value.
    V,
    /// Attention output.
    O,
    /// Feed-forward gate.
    Gate,
    /// Feed-forward up.
    Up,
    /// Feed-forward down.
    Down,
}

impl Projection {
    /// All of them, in block order.
    pub const ALL: [Projection; 7] = [
        Projection::Q,
        Projection::K,
        Projection::V,
        Projection::O,
        Projection::Gate,
        Projection::Up,
        Projection::Down,
    ];

    /// Short name: `q`, `k`, `v`, `o`, `gate`, `up`, `down`.
    pub fn name(self) -> &'static str {
        match self {
            Projection::Q => "q",
            Projection::K => "k",
            Projection::V => "v",
            Projection::O => "o",
            Projection::Gate => "gate",
            Projection::Up => "up",
            Projection::Down => "down",
        }
    }

    /// Position in [`Projection::ALL`].
    pub fn index(self) -> usize {
        self as usize
    }
}

impl fmt::Display for Projection {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.name())
    }
}

impl FromStr for Projection {
    type Err = Error;
    fn from_str(s: &str) -> Result<Self> {
        Projection::ALL
            .into_iter()
            .find(|p| p.name() == s)
            .ok_or_else(|| {
                Error::InvalidInput(format!(
                    "unknown projection {s:?} (q, k, v, o, gate, up, down)"
                ))
            })
    }
}

/// Which projections get adapters, and their size (in JS, part of `tuneChat`'s options).
#[derive(Debug, Clone, PartialEq, serde::Serialize, serde::Deserialize)]
#[serde(rename_all = "camelCase", deny_unknown_fields, default)]
pub struct LoraConfig {
    /// Rank `r` (1 to 64).
    pub rank: usize,
    /// Scale numerator: updates are multiplied by `alpha / rank`. Not a JS option.
    #[serde(skip)]
    pub alpha: f32,
    /// Projections adapted in every block from `first_block` on.
    pub targets: Vec<Projection>,
    /// The first block with adapters (0: all of them). Blocks before it run as loaded, so
    /// their states are the base model's: the guard's probe reads blocks up to 26, and safety
    /// adapters from block 27 on leave what it reads unchanged.
    pub first_block: usize,
}

impl Default for LoraConfig {
    /// Rank 8 on the attention queries and values, the original LoRA recipe: enough to change
    /// how the model answers, 0.4 % of its weights.
    fn default() -> Self {
        LoraConfig {
            rank: 8,
            alpha: 16.0,
            targets: vec![Projection::Q, Projection::V],
            first_block: 0,
        }
    }
}

impl LoraConfig {
    /// Checks the values.
    pub fn validate(&self) -> Result<()> {
        if !(1..=64).contains(&self.rank) {
            return Err(Error::InvalidInput(format!(
                "LoRA rank {} is outside 1 to 64",
                self.rank
            )));
        }
        if !(self.alpha.is_finite() && self.alpha > 0.0) {
            return Err(Error::InvalidInput(format!(
                "LoRA alpha {} must be a positive number",
                self.alpha
            )));
        }
        if self.targets.is_empty() {
            return Err(Error::InvalidInput(
                "LoRA needs at least one target projection".into(),
            ));
        }
        let mut sorted = self.targets.clone();
        sorted.sort();
        sorted.dedup();
        if sorted.len() != self.targets.len() {
            return Err(Error::InvalidInput(
                "LoRA targets repeat a projection".into(),
            ));
        }
        Ok(())
    }

    /// Where block `layer`'s projection `p` is in [`Lora::factors`], if it is adapted.
    pub fn factor_index(&self, layer: usize, p: Projection) -> Option<usize> {
        let block = layer.checked_sub(self.first_block)?;
        let t = self.targets.iter().position(|&q| q == p)?;
        Some(block * self.targets.len() + t)
    }

    /// The block and projection of factor `i` (the inverse of [`LoraConfig::factor_index`]).
    pub fn factor_place(&self, i: usize) -> (usize, Projection) {
        let n = self.targets.len().max(1);
        (self.first_block + i / n, self.targets[i % n])
    }

    /// The multiplier of `B (A x)`.
    pub fn scale(&self) -> f64 {
        f64::from(self.alpha) / self.rank as f64
    }
}

/// One projection's factors.
#[derive(Module, Debug)]
pub struct LoraFactors {
    /// `[in, rank]`.
    pub a: Param<Tensor<2>>,
    /// `[rank, out]`.
    pub b: Param<Tensor<2>>,
}

/// The factors of every adapted projection, block-major from the configuration's first block
/// `f` on: block `l`'s target `t` is `factors[(l - f) * targets + t]` (see
/// [`LoraConfig::factor_index`]).
#[derive(Module, Debug)]
pub struct Lora {
    /// The factors.
    pub factors: Vec<LoraFactors>,
}

impl Lora {
    /// Fresh adapters for `shapes` (`[out, in]` per factor, in order): `A` Gaussian with
    /// standard deviation `1/sqrt(in)`, `B` zero. Seed the device first for repeatable runs.
    pub fn new(rank: usize, shapes: &[[usize; 2]], device: &Device) -> Self {
        Lora {
            factors: shapes
                .iter()
                .map(|&[out, d_in]| LoraFactors {
                    a: Param::from_tensor(Tensor::random(
                        [d_in, rank],
                        Distribution::Normal(0.0, 1.0 / (d_in as f64).sqrt()),
                        device,
                    )),
                    b: Param::from_tensor(Tensor::zeros([rank, out], device)),
                })
                .collect(),
        }
    }

    /// `scale · B (A x)` for factor `i` and `x [b, s, in]`.
    pub fn delta(&self, i: usize, x: Tensor<3>, scale: f64) -> Tensor<3> {
        let [b, s, d] = x.dims();
        let f = &self.factors[i];
        let out = f.b.val().dims()[1];
        x.reshape([b * s, d])
            .matmul(f.a.val())
            .matmul(f.b.val())
            .mul_scalar(scale)
            .reshape([b, s, out])
    }
}
