//! What a heads file must hold, checked before any tensor is built: label names, thresholds,
//! the feature and hidden widths, and the name and shape of every tensor the heads need.
//!
//! Kept apart from [`super::heads`] (and free of the tensor library) so that the rules for
//! label names and thresholds are one piece of code for every way a label enters the filter
//! (a heads file, imported adapters, teaching: [`check_label`]), and so that the fuzz target
//! (`fuzz/fuzz_targets/filter_heads.rs`) runs exactly this code on arbitrary bytes.

use std::collections::{HashMap, HashSet};

use crate::error::{Error, Result};
use crate::weights::safetensors::SafetensorsFile;

/// Longest label name, in characters.
pub const MAX_LABEL_LEN: usize = 32;
/// Most labels a heads file may carry.
pub const MAX_LABELS: usize = 64;
/// Widest feature vector a heads file may standardise (MiniLM's seven poolings are 2,688).
pub const MAX_WIDTH: usize = 1 << 14;
/// Widest hidden layer a head may have (the shipped heads use 256).
pub const MAX_HIDDEN: usize = 4096;

/// The metadata keys the layout is read from; everything else is provenance.
pub const LAYOUT_KEYS: [&str; 5] = ["format", "labels", "features", "hidden", "thresholds"];

/// Checks a label name: 1 to [`MAX_LABEL_LEN`] characters, each a lowercase ASCII letter, a
/// digit, `_` or `-`. Label names end up in page markup, tensor names (`{label}.hidden.weight`)
/// and comma-separated metadata, so nothing else is allowed, wherever the label comes from.
pub fn check_label(label: &str) -> Result<()> {
    let ok = !label.is_empty()
        && label.len() <= MAX_LABEL_LEN
        && label
            .bytes()
            .all(|b| b.is_ascii_lowercase() || b.is_ascii_digit() || b == b'_' || b == b'-');
    if ok {
        return Ok(());
    }
    // Show at most the first 40 characters of a bad name, escaped.
    let shown: String = label.chars().take(40).collect();
    let more = if shown.len() < label.len() { "..." } else { "" };
    Err(Error::InvalidInput(format!(
        "label {shown:?}{more} is not a valid label name: use 1 to {MAX_LABEL_LEN} characters, \
         each a lowercase letter a-z, a digit 0-9, '_' or '-'"
    )))
}

/// Checks a threshold carried by a heads file or adapters: a finite number strictly between
/// 0 and 1 (0 would flag every text, 1 none).
pub fn check_file_threshold(label: &str, threshold: f32) -> Result<()> {
    if threshold.is_finite() && threshold > 0.0 && threshold < 1.0 {
        return Ok(());
    }
    Err(Error::InvalidInput(format!(
        "threshold {threshold} for label {label:?} must be a number strictly between 0 and 1"
    )))
}

/// The layout of a heads file, every part checked.
#[derive(Debug, Clone, PartialEq)]
pub struct HeadsLayout {
    /// Label names, in head order (each valid, no repeats).
    pub labels: Vec<String>,
    /// One threshold per label.
    pub thresholds: Vec<f32>,
    /// The features string (parsed by `FeatureSpec`).
    pub features: String,
    /// Hidden width of each head.
    pub hidden: usize,
    /// Feature width (the length of `mean` and `scale`).
    pub width: usize,
    /// The other metadata (provenance).
    pub provenance: HashMap<String, String>,
}

impl HeadsLayout {
    /// Reads and checks the layout of `file`, whose `format` metadata must be `format`. Label
    /// and threshold errors are [`Error::InvalidInput`]; a file without the tensors the
    /// layout needs, or with other shapes, is an [`Error::Safetensors`].
    pub fn read(file: &SafetensorsFile<'_>, format: &str) -> Result<Self> {
        const WHAT: &str = "a webguard filter heads file";
        file.expect_format(format, WHAT)?;
        let get = |key: &str| file.required_metadata(key, WHAT);
        let labels: Vec<String> = get("labels")?.split(',').map(str::to_owned).collect();
        if labels.len() > MAX_LABELS {
            return Err(Error::InvalidInput(format!(
                "heads file: {} labels; at most {MAX_LABELS}",
                labels.len()
            )));
        }
        let mut seen = HashSet::new();
        for label in &labels {
            check_label(label).map_err(|e| in_file(&e))?;
            if !seen.insert(label.as_str()) {
                return Err(Error::InvalidInput(format!(
                    "heads file: label {label:?} appears twice"
                )));
            }
        }
        let thresholds: Vec<f32> = serde_json::from_str(get("thresholds")?)
            .map_err(|e| Error::InvalidInput(format!("heads file: thresholds: {e}")))?;
        if thresholds.len() != labels.len() {
            return Err(Error::InvalidInput(format!(
                "heads file: {} thresholds for {} labels",
                thresholds.len(),
                labels.len()
            )));
        }
        for (label, &t) in labels.iter().zip(&thresholds) {
            check_file_threshold(label, t).map_err(|e| in_file(&e))?;
        }
        let hidden: usize = get("hidden")?
            .parse()
            .ok()
            .filter(|h| (1..=MAX_HIDDEN).contains(h))
            .ok_or_else(|| {
                Error::Safetensors(format!(
                    "heads file: hidden must be a whole number from 1 to {MAX_HIDDEN}"
                ))
            })?;
        let width = match file.shape("mean")?.as_slice() {
            &[w] if (1..=MAX_WIDTH).contains(&w) => w,
            other => {
                return Err(Error::Safetensors(format!(
                    "heads file: mean has shape {other:?}; expected [F], F from 1 to {MAX_WIDTH}"
                )));
            }
        };
        let layout = HeadsLayout {
            labels,
            thresholds,
            features: get("features")?.to_owned(),
            hidden,
            width,
            provenance: file
                .metadata()
                .iter()
                .filter(|(k, _)| !LAYOUT_KEYS.contains(&k.as_str()))
                .map(|(k, v)| (k.clone(), v.clone()))
                .collect(),
        };
        for (name, shape) in layout.tensors() {
            let found = file.shape(&name)?;
            if found != shape {
                return Err(Error::Safetensors(format!(
                    "heads file: tensor {name:?} has shape {found:?}; expected {shape:?}"
                )));
            }
        }
        Ok(layout)
    }

    /// Every tensor the heads need, with its shape in the file: `mean` and `scale` `[F]`, and
    /// per label `{label}.hidden.weight` `[F, H]`, `.hidden.bias` `[H]`, `.out.weight`
    /// `[H, 1]`, `.out.bias` `[1]`.
    pub fn tensors(&self) -> Vec<(String, Vec<usize>)> {
        let (f, h) = (self.width, self.hidden);
        let mut out = vec![("mean".into(), vec![f]), ("scale".into(), vec![f])];
        for label in &self.labels {
            out.push((format!("{label}.hidden.weight"), vec![f, h]));
            out.push((format!("{label}.hidden.bias"), vec![h]));
            out.push((format!("{label}.out.weight"), vec![h, 1]));
            out.push((format!("{label}.out.bias"), vec![1]));
        }
        out
    }
}

fn in_file(e: &Error) -> Error {
    match e {
        Error::InvalidInput(m) => Error::InvalidInput(format!("heads file: {m}")),
        other => Error::InvalidInput(other.to_string()),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn label_alphabet() {
        for ok in [
            "spoiler",
            "a",
            "hate-speech",
            "x_1",
            &"a".repeat(MAX_LABEL_LEN),
        ] {
            assert!(check_label(ok).is_ok(), "{ok}");
        }
        for bad in [
            "",
            "<img src=x onerror=alert(1)>",
            "Spoiler",
            "a b",
            "a,b",
            "a.b",
            "\"q\"",
            "é",
            "a\n",
            &"a".repeat(MAX_LABEL_LEN + 1),
        ] {
            let err = check_label(bad).unwrap_err();
            assert!(matches!(err, Error::InvalidInput(_)), "{bad:?}: {err}");
            assert!(err.to_string().contains("lowercase letter"), "{err}");
        }
    }

    #[test]
    fn file_thresholds() {
        for ok in [0.001, 0.5, 0.999] {
            assert!(check_file_threshold("x", ok).is_ok());
        }
        for bad in [0.0, 1.0, -0.5, 2.0, f32::NAN, f32::INFINITY] {
            assert!(check_file_threshold("x", bad).is_err(), "{bad}");
        }
    }
}
