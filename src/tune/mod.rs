//! Few-step fine-tuning on the device, from a handful of the user's examples.
//!
//! - [`filter`]: teach the filter a new label (or adjust an existing one) from labelled texts;
//!   a small head per label is trained on the frozen encoder's features.
//! - [`chat`]: instruction-tune the chat model with LoRA adapters from `{ prompt, response }`
//!   pairs, the loss on the response tokens only.
//!
//! Every tuning call validates all its input first, trains on copies, and installs the result
//! only when it finished: an error or a cancellation leaves the model exactly as it was.

pub mod chat;
pub mod filter;
#[cfg(not(target_arch = "wasm32"))]
pub mod refusals;

use crate::error::{Error, Result};

/// How to tune. In JS these are `tuneFilter`'s options (camelCase); absent fields take
/// [`Default`]'s values.
#[derive(Debug, Clone, PartialEq, serde::Serialize, serde::Deserialize)]
#[serde(rename_all = "camelCase", deny_unknown_fields, default)]
pub struct TuneOptions {
    /// Optimiser steps (1 to 1000).
    pub steps: usize,
    /// Adam's learning rate (finite, above 0, at most 1).
    pub learning_rate: f64,
    /// Seeds initialisation (and any shuffling), so a run can be repeated exactly.
    pub seed: u64,
    /// Gradients are scaled down to at most this L2 norm per parameter tensor. Not a JS option.
    #[serde(skip)]
    pub clip_norm: f32,
}

impl Default for TuneOptions {
    fn default() -> Self {
        TuneOptions {
            steps: 30,
            learning_rate: 1e-3,
            seed: 0,
            clip_norm: 1.0,
        }
    }
}

impl TuneOptions {
    /// Checks every value is in range.
    pub fn validate(&self) -> Result<()> {
        if !(1..=1000).contains(&self.steps) {
            return Err(Error::InvalidInput(format!(
                "steps is {}; it must be 1 to 1000",
                self.steps
            )));
        }
        if !(self.learning_rate.is_finite()
            && self.learning_rate > 0.0
            && self.learning_rate <= 1.0)
        {
            return Err(Error::InvalidInput(format!(
                "learning rate {} is outside (0, 1]",
                self.learning_rate
            )));
        }
        if !(self.clip_norm.is_finite() && self.clip_norm > 0.0) {
            return Err(Error::InvalidInput(format!(
                "gradient clip norm {} must be a positive number",
                self.clip_norm
            )));
        }
        Ok(())
    }
}

/// What the per-step callback receives.
#[derive(Debug, Clone, Copy, PartialEq, serde::Serialize)]
pub struct Step {
    /// 1-based step number.
    pub step: usize,
    /// Steps in the run.
    pub steps: usize,
    /// The training loss before this step's update.
    pub loss: f32,
    /// Wall-clock milliseconds the step took.
    pub millis: f64,
}

#[cfg(feature = "tune")]
/// The loss of a step, read back (asynchronously: WebGPU needs it); a non-finite loss ends the
/// run with an error saying `what` (e.g. "the filter") is unchanged.
pub(crate) async fn step_loss(
    loss: burn::tensor::Tensor<1>,
    step: usize,
    what: &str,
) -> Result<f32> {
    let value = crate::backend::read_f32(loss)
        .await?
        .first()
        .copied()
        .unwrap_or(f32::NAN);
    if !value.is_finite() {
        return Err(Error::Tuning(format!(
            "tuning diverged at step {step} (loss {value}); try a smaller learning rate. {what} \
             is unchanged."
        )));
    }
    Ok(value)
}

#[cfg(feature = "tune")]
/// Errors when the tuned weights score the first step's examples worse than the weights before
/// it did, by more than half again and more than 0.1 (a loss already near 0 may wobble): the
/// run made the model worse (too high a learning rate), so `what` is left unchanged.
pub(crate) fn check_final_loss(first: f32, last: f32, what: &str) -> Result<()> {
    if last > first * 1.5 && last - first > 0.1 {
        return Err(Error::Tuning(format!(
            "tuning made the loss worse ({first:.4} before, {last:.4} after on the same \
             examples); try a smaller learning rate. {what} is unchanged."
        )));
    }
    Ok(())
}

#[cfg(feature = "tune")]
/// Hands the finished step to `on_step`; its `false` ends the run with a cancellation error
/// saying `what` is unchanged.
pub(crate) fn report_step(
    step: Step,
    what: &str,
    on_step: &mut impl FnMut(&Step) -> bool,
) -> Result<()> {
    if on_step(&step) {
        Ok(())
    } else {
        Err(Error::Cancelled(format!(
            "tuning stopped at step {} of {}; {} is unchanged",
            step.step,
            step.steps,
            what.to_lowercase()
        )))
    }
}

#[cfg(feature = "tune")]
pub(crate) use crate::clock::now_ms;
