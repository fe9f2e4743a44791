//! The labelled data the filter is trained and validated on, read from the shared data folder
//! (`../shared/data`, see its README) plus the project's own benign requests
//! (`data/filter/`). Native only.
//!
//! Each example carries a target for the labels its source speaks about and none for the
//! others (a TweetEval offensive tweet says nothing about `hate`), so training masks the loss.
//!
//! | source | offensive | hate | harmful |
//! | --- | --- | --- | --- |
//! | TweetEval offensive train/val | 0/1 | – | 0 (statements, not requests) |
//! | TweetEval hate train/val | – | 0/1 | 0 |
//! | ToxiGen sentences (train only) | – | 0/1 by file name | 0 |
//! | AdvBench goals (80% train / 20% val, seeded) | – | – | 1 |
//! | self-instruct seed tasks (80/20) | 0 (train only) | 0 (train only) | 0 |
//! | data/filter/benign-requests-train.txt (train only) | 0 | 0 | 0 |

use std::path::{Path, PathBuf};

use sha2::{Digest, Sha256};

use crate::error::{Error, Result};
use crate::filter::train::shuffle;

/// Label order of [`Example::targets`] (the shipped heads' order).
pub const LABELS: [&str; 3] = crate::filter::LABELS;

/// One text with what is known about it per label.
#[derive(Debug, Clone, PartialEq)]
pub struct Example {
    /// The text.
    pub text: String,
    /// Target per label in [`LABELS`] order; `None` where the source says nothing.
    pub targets: [Option<bool>; 3],
}

/// Training and validation examples and the files they came from.
#[derive(Debug, Clone, Default)]
pub struct Dataset {
    /// Examples to fit the heads on.
    pub train: Vec<Example>,
    /// Examples to choose thresholds and report on.
    pub val: Vec<Example>,
    /// `(path relative to the data folder, sha256)` of every file read.
    pub files: Vec<(String, String)>,
}

struct Reader {
    root: PathBuf,
    files: Vec<(String, String)>,
}

impl Reader {
    fn read(&mut self, rel: &str) -> Result<String> {
        let path = self.root.join(rel);
        let bytes = std::fs::read(&path).map_err(|e| Error::io(&path, e))?;
        self.files
            .push((rel.to_owned(), format!("{:x}", Sha256::digest(&bytes))));
        String::from_utf8(bytes).map_err(|_| Error::Io {
            path: path.display().to_string(),
            message: "not UTF-8 text".into(),
        })
    }

    /// A TweetEval split: texts and 0/1 labels, line by line.
    fn tweeteval(&mut self, task: &str, split: &str) -> Result<Vec<(String, bool)>> {
        let texts = self.read(&format!("tweeteval/{task}/{split}_text.txt"))?;
        let labels = self.read(&format!("tweeteval/{task}/{split}_labels.txt"))?;
        let labels = parse_labels(&labels, &format!("tweeteval/{task}/{split}_labels.txt"))?;
        let texts: Vec<&str> = texts.lines().collect();
        if texts.len() != labels.len() {
            return Err(Error::InvalidInput(format!(
                "tweeteval/{task}/{split}: {} texts but {} labels",
                texts.len(),
                labels.len()
            )));
        }
        Ok(texts
            .into_iter()
            .map(|t| t.trim().to_owned())
            .zip(labels)
            .collect())
    }
}

/// 0/1 labels, one per line.
pub fn parse_labels(text: &str, what: &str) -> Result<Vec<bool>> {
    text.lines()
        .enumerate()
        .map(|(i, l)| match l.trim() {
            "0" => Ok(false),
            "1" => Ok(true),
            other => Err(Error::InvalidInput(format!(
                "{what} line {}: label {other:?} is not 0 or 1",
                i + 1
            ))),
        })
        .collect()
}

/// Splits `items` into (first 80%, last 20%) after a seeded shuffle.
fn split80<T>(mut items: Vec<T>, seed: u64) -> (Vec<T>, Vec<T>) {
    shuffle(&mut items, seed);
    let cut = items.len() * 4 / 5;
    let val = items.split_off(cut);
    (items, val)
}

/// One request per non-empty line, trimmed (the format of `data/filter/benign-requests-train.txt`
/// and `tests/data/benign-dual-use.txt`); lines starting with `#` are comments.
pub fn request_lines(text: &str) -> Vec<String> {
    text.lines()
        .map(str::trim)
        .filter(|l| !l.is_empty() && !l.starts_with('#'))
        .map(String::from)
        .collect()
}

/// AdvBench goals (first CSV column; quoted fields with `""` escapes are handled).
pub fn advbench_goals(csv: &str) -> Result<Vec<String>> {
    let mut goals = Vec::new();
    for (i, line) in csv.lines().enumerate().skip(1) {
        if line.trim().is_empty() {
            continue;
        }
        let goal = if let Some(rest) = line.strip_prefix('"') {
            let mut out = String::new();
            let mut chars = rest.chars().peekable();
            loop {
                match chars.next() {
                    Some('"') if chars.peek() == Some(&'"') => {
                        chars.next();
                        out.push('"');
                    }
                    Some('"') => break,
                    Some(c) => out.push(c),
                    None => {
                        return Err(Error::InvalidInput(format!(
                            "advbench line {}: unterminated quote",
                            i + 1
                        )));
                    }
                }
            }
            out
        } else {
            line.split(',').next().unwrap_or_default().to_owned()
        };
        goals.push(goal.trim().to_owned());
    }
    Ok(goals)
}

/// One self-instruct seed task as a chat turn.
#[derive(Debug, Clone, PartialEq)]
pub struct SelfInstructTask {
    /// The instruction, followed by its input (after a blank line) when it has one.
    pub prompt: String,
    /// The first example output.
    pub output: String,
    /// Whether the instruction stands alone (no extra input).
    pub standalone: bool,
}

/// Every self-instruct seed task with its first example.
pub fn self_instruct_tasks(jsonl: &str) -> Result<Vec<SelfInstructTask>> {
    let mut out = Vec::new();
    for (i, l) in jsonl.lines().filter(|l| !l.trim().is_empty()).enumerate() {
        let v: serde_json::Value = serde_json::from_str(l)
            .map_err(|e| Error::InvalidInput(format!("self-instruct line {}: {e}", i + 1)))?;
        let instruction = v.get("instruction").and_then(|s| s.as_str());
        let first = v.get("instances").and_then(|x| x.get(0));
        let input = first.and_then(|x| x.get("input")).and_then(|s| s.as_str());
        let output = first.and_then(|x| x.get("output")).and_then(|s| s.as_str());
        let (Some(instruction), Some(input), Some(output)) = (instruction, input, output) else {
            return Err(Error::InvalidInput(format!(
                "self-instruct line {}: no instruction, input and output",
                i + 1
            )));
        };
        let (instruction, input) = (instruction.trim(), input.trim());
        out.push(SelfInstructTask {
            prompt: if input.is_empty() {
                instruction.to_owned()
            } else {
                format!("{instruction}\n\n{input}")
            },
            output: output.trim().to_owned(),
            standalone: input.is_empty(),
        });
    }
    Ok(out)
}

/// The `instruction` of every self-instruct seed task (one JSON object per line).
fn self_instruct(jsonl: &str) -> Result<Vec<String>> {
    jsonl
        .lines()
        .filter(|l| !l.trim().is_empty())
        .enumerate()
        .map(|(i, l)| {
            let v: serde_json::Value = serde_json::from_str(l)
                .map_err(|e| Error::InvalidInput(format!("self-instruct line {}: {e}", i + 1)))?;
            v.get("instruction")
                .and_then(|s| s.as_str())
                .map(|s| s.trim().to_owned())
                .ok_or_else(|| {
                    Error::InvalidInput(format!("self-instruct line {}: no instruction", i + 1))
                })
        })
        .collect()
}

fn example(
    text: String,
    offensive: Option<bool>,
    hate: Option<bool>,
    harmful: Option<bool>,
) -> Example {
    Example {
        text,
        targets: [offensive, hate, harmful],
    }
}

impl Dataset {
    /// Reads everything: `shared` is the shared data folder, `own` the project's `data/filter`
    /// folder; `seed` fixes the AdvBench and self-instruct splits.
    pub fn load(shared: &Path, own: &Path, seed: u64) -> Result<Self> {
        let mut r = Reader {
            root: shared.to_path_buf(),
            files: Vec::new(),
        };
        let mut d = Dataset::default();
        for (split, out) in [("train", &mut d.train), ("val", &mut d.val)] {
            for (t, y) in r.tweeteval("offensive", split)? {
                out.push(example(t, Some(y), None, Some(false)));
            }
            for (t, y) in r.tweeteval("hate", split)? {
                out.push(example(t, None, Some(y), Some(false)));
            }
        }
        let dir = shared.join("toxigen/sentences");
        let mut names: Vec<String> = std::fs::read_dir(&dir)
            .map_err(|e| Error::io(&dir, e))?
            .filter_map(|e| e.ok()?.file_name().into_string().ok())
            .filter(|n| n.ends_with(".txt"))
            .collect();
        names.sort();
        for name in names {
            let hate = if name.starts_with("hate_") {
                true
            } else if name.starts_with("neutral_") {
                false
            } else {
                continue;
            };
            for line in r.read(&format!("toxigen/sentences/{name}"))?.lines() {
                if !line.trim().is_empty() {
                    d.train.push(example(
                        line.trim().to_owned(),
                        None,
                        Some(hate),
                        Some(false),
                    ));
                }
            }
        }
        let (train, val) = split80(
            advbench_goals(&r.read("advbench/harmful_behaviors.csv")?)?,
            seed,
        );
        d.train.extend(
            train
                .into_iter()
                .map(|t| example(t, None, None, Some(true))),
        );
        d.val
            .extend(val.into_iter().map(|t| example(t, None, None, Some(true))));
        // Benign requests are not offensive or hateful either: saying so in training keeps
        // request-style text with dangerous-sounding words ("a killer guacamole") from
        // borrowing the tweets' vocabulary of insults. Validation keeps TweetEval alone for
        // those two labels, so their figures stay comparable with published ones.
        let (train, val) = split80(
            self_instruct(&r.read("self-instruct/seed_tasks.jsonl")?)?,
            seed,
        );
        d.train.extend(
            train
                .into_iter()
                .map(|t| example(t, Some(false), Some(false), Some(false))),
        );
        d.val
            .extend(val.into_iter().map(|t| example(t, None, None, Some(false))));
        let mut own_reader = Reader {
            root: own.to_path_buf(),
            files: Vec::new(),
        };
        for line in request_lines(&own_reader.read("benign-requests-train.txt")?) {
            d.train
                .push(example(line, Some(false), Some(false), Some(false)));
        }
        d.files = r.files;
        d.files.extend(
            own_reader
                .files
                .into_iter()
                .map(|(p, h)| (format!("data/filter/{p}"), h)),
        );
        Ok(d)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn advbench_csv_quotes() {
        let csv = "goal,target\nplain goal,\"Sure\"\n\"a, \"\"quoted\"\" goal\",\"Sure, here\"\n";
        assert_eq!(
            advbench_goals(csv).unwrap(),
            vec!["plain goal".to_owned(), "a, \"quoted\" goal".to_owned()]
        );
        assert!(advbench_goals("goal\n\"never closed\n").is_err());
    }

    #[test]
    fn shuffle_is_a_seeded_permutation() {
        let mut a: Vec<u32> = (0..100).collect();
        let mut b = a.clone();
        shuffle(&mut a, 7);
        shuffle(&mut b, 7);
        assert_eq!(a, b);
        assert_ne!(a, (0..100).collect::<Vec<_>>());
        a.sort();
        assert_eq!(a, (0..100).collect::<Vec<_>>());
    }

    #[test]
    fn labels_must_be_binary() {
        assert_eq!(parse_labels("0\n1\n", "x").unwrap(), vec![false, true]);
        assert!(parse_labels("0\n2\n", "x").is_err());
    }
}
