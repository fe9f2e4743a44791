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
//! | harmful requests (safety.rs: AdvBench, Do-Not-Answer, past tense, data/guard) | – | – | 1 |
//! | safe requests (safety.rs: data/guard, data/filter, self-instruct) | 0 (train only) | 0 (train only) | 0 |
//!
//! Requests are split 70/10/20 into training, validation and held-out by a hash of the text
//! (safety.rs); held-out requests are only reported on.

use std::path::{Path, PathBuf};

use sha2::{Digest, Sha256};

use crate::error::{Error, Result};
use crate::filter::safety::{self, Request, Split};

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
    /// Requests held out from training and threshold choice, for reporting the harmful label
    /// by kind.
    pub held_out: Vec<Request>,
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
    /// Reads everything: `shared` is the shared data folder, `root` the repository (its
    /// `data/` and `tests/data/`); `seed` fixes the requests' splits.
    pub fn load(shared: &Path, root: &Path, seed: u64) -> Result<Self> {
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
        // Requests: the harmful label's data, split three ways (safety.rs). Benign requests
        // are not offensive or hateful either: saying so in training keeps request-style text
        // with dangerous-sounding words ("a killer guacamole") from borrowing the tweets'
        // vocabulary of insults. Validation keeps TweetEval alone for those two labels, so
        // their figures stay comparable with published ones.
        let (requests, files) = safety::requests(shared, root, seed)?;
        for q in requests {
            let benign = (!q.harmful).then_some(false);
            match q.split {
                Split::Train => d
                    .train
                    .push(example(q.text, benign, benign, Some(q.harmful))),
                Split::Val => d.val.push(example(q.text, None, None, Some(q.harmful))),
                Split::HeldOut => d.held_out.push(q),
            }
        }
        r.files.extend(files);
        d.files = r.files;
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
    fn labels_must_be_binary() {
        assert_eq!(parse_labels("0\n1\n", "x").unwrap(), vec![false, true]);
        assert!(parse_labels("0\n2\n", "x").is_err());
    }
}
