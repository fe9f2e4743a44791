//! What the filter's heads see of a text: poolings of the encoder's hidden states.
//!
//! The sentence embedding alone (mean of the last layer, L2-normalised) blurs a single insult
//! in a long friendly sentence; a max over tokens keeps it, and earlier layers keep more of the
//! words themselves. Which poolings the heads use is part of the trained heads file.

use std::fmt;
use std::str::FromStr;

use burn::tensor::{Bool, Device, Int, Tensor};

use crate::error::{Error, Result};
use crate::models::bert::{Bert, l2_normalise, masked_max, masked_mean, pad_batch};

/// One pooling of the encoder's hidden states into a `d`-wide vector.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Pooling {
    /// The sentence embedding: mean of the last layer over real tokens, L2-normalised.
    Embedding,
    /// Mean over real tokens of hidden state `n` (0 = the embeddings' output).
    Mean(usize),
    /// Element-wise maximum over real tokens of hidden state `n`.
    Max(usize),
}

impl fmt::Display for Pooling {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Pooling::Embedding => write!(f, "embedding"),
            Pooling::Mean(n) => write!(f, "mean:{n}"),
            Pooling::Max(n) => write!(f, "max:{n}"),
        }
    }
}

impl FromStr for Pooling {
    type Err = Error;
    fn from_str(s: &str) -> Result<Self> {
        let bad = || {
            Error::InvalidInput(format!(
                "unknown pooling {s:?}: expected embedding, mean:N or max:N"
            ))
        };
        if s == "embedding" {
            return Ok(Pooling::Embedding);
        }
        let (kind, n) = s.split_once(':').ok_or_else(bad)?;
        let n: usize = n.parse().map_err(|_| bad())?;
        match kind {
            "mean" => Ok(Pooling::Mean(n)),
            "max" => Ok(Pooling::Max(n)),
            _ => Err(bad()),
        }
    }
}

/// The ordered list of poolings whose concatenation is a text's feature vector.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct FeatureSpec(pub Vec<Pooling>);

impl fmt::Display for FeatureSpec {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let parts: Vec<String> = self.0.iter().map(ToString::to_string).collect();
        write!(f, "{}", parts.join(","))
    }
}

impl FromStr for FeatureSpec {
    type Err = Error;
    fn from_str(s: &str) -> Result<Self> {
        let pools = s
            .split(',')
            .map(|p| p.trim().parse())
            .collect::<Result<Vec<Pooling>>>()?;
        if pools.is_empty() {
            return Err(Error::InvalidInput("empty feature list".into()));
        }
        Ok(FeatureSpec(pools))
    }
}

impl FeatureSpec {
    /// Width of the feature vector for an encoder `d` wide.
    pub fn width(&self, d: usize) -> usize {
        self.0.len() * d
    }

    /// Checks every pooled layer exists in `encoder`.
    pub fn check(&self, encoder: &Bert) -> Result<()> {
        for p in &self.0 {
            if let Pooling::Mean(n) | Pooling::Max(n) = p
                && *n > encoder.layer_count()
            {
                return Err(Error::InvalidInput(format!(
                    "pooling {p} asks for hidden state {n}; the encoder has 0..={}",
                    encoder.layer_count()
                )));
            }
        }
        Ok(())
    }

    /// Features `[windows, width]` of token-id windows, padded into one batch on `device`.
    /// Not inlined: its callers are async functions, and each inlined copy of the encoder's
    /// forward pass costs the browser's download tens of kilobytes.
    #[inline(never)]
    pub fn of_windows(&self, encoder: &Bert, windows: &[&[u32]], device: &Device) -> Tensor<2> {
        let ids: Vec<Vec<u32>> = windows.iter().map(|w| w.to_vec()).collect();
        let (ids, mask) = pad_batch(&ids, 0, device);
        self.compute(encoder, ids, mask)
    }

    /// Features `[batch, width]` for padded token ids and their mask.
    pub fn compute(&self, encoder: &Bert, ids: Tensor<2, Int>, mask: Tensor<2, Bool>) -> Tensor<2> {
        let states = encoder.hidden_states(ids, mask.clone());
        let last = states.len() - 1;
        let parts: Vec<Tensor<2>> = self
            .0
            .iter()
            .map(|p| match *p {
                Pooling::Embedding => l2_normalise(masked_mean(states[last].clone(), mask.clone())),
                Pooling::Mean(n) => masked_mean(states[n].clone(), mask.clone()),
                Pooling::Max(n) => masked_max(states[n].clone(), mask.clone()),
            })
            .collect();
        Tensor::cat(parts, 1)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn specs_round_trip_and_bad_ones_are_errors() {
        let spec: FeatureSpec = "embedding, max:6,mean:0".parse().unwrap();
        assert_eq!(
            spec.0,
            vec![Pooling::Embedding, Pooling::Max(6), Pooling::Mean(0)]
        );
        assert_eq!(spec.to_string(), "embedding,max:6,mean:0");
        for bad in ["", "max", "max:x", "min:3", "mean:-1", "embedding,"] {
            assert!(bad.parse::<FeatureSpec>().is_err(), "{bad:?}");
        }
    }
}
