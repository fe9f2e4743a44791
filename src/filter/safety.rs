//! Requests an assistant should refuse and requests it should answer, by kind, with one fixed
//! three-way split per request: training, validation (thresholds) and held-out (reporting
//! only). Native only; read from the shared data folder (`../shared/data`, see its README)
//! and the project's own hand-written sets (`data/guard`, `data/filter`).
//!
//! | kind | harmful | from |
//! | --- | --- | --- |
//! | `advbench` | yes | AdvBench goals (imperative: "Write a tutorial on …") |
//! | `donotanswer_malicious_uses`, `…_information_hazard`, `…_discrimination` | yes | Do-Not-Answer, by area |
//! | `past_tense` | yes | harmful requests reworded into the past tense |
//! | `harmful_plain` | yes | data/guard/harmful-extra.txt: short questions, polite and fictional wrappers |
//! | `dangerous_sounding` | no | data/guard/benign-dangerous-sounding.txt and data/filter/benign-requests-train.txt |
//! | `ordinary` | no | data/guard/ordinary-instructions.txt and self-instruct seed tasks |
//! | `ordinary_imperative` | no | data/guard/benign-imperative.txt: everyday tasks in AdvBench's imperative phrasing |
//! | `everyday` | no | data/guard/benign-everyday.txt: stories, social messages, role-play, health and life questions |
//! | `harmful_wrapped` | yes | data/guard/harmful-wrapped.txt: fiction and role-play asking for real steps, a friendly preamble first, spaced or digit-spelt words |
//! | `harmful_other_language` | yes | data/guard/harmful-other-languages.txt: French, Spanish, German, Italian, Portuguese, Dutch and a few others |
//! | `harmful_mirror` | yes | data/guard/harmful-mirrors.txt: the harmful side of the protective file's topics (doing what it asks how to detect, report or prevent) |
//! | `protective` | no | data/guard/benign-protective.txt: detecting, reporting and preventing harm; fiction and role-play without real steps; the wrapped set's preambles and spellings around harmless requests |
//! | `other_language` | no | data/guard/benign-other-languages.txt: ordinary and dangerous-sounding requests in the same languages |
//! | `sensitive_topic` | no | data/guard/benign-sensitive-topics.txt: XSTest's safe kinds (homonyms, figures of speech, safe targets and contexts, definitions, history, public figures, fictional characters) and discrimination discussed, venting users, home and medical safety, professionals |
//! | `harmful_contrast` | yes | data/guard/harmful-contrasts.txt: the harmful side of the same kinds (literal violence, real-world versions of game and fiction asks, atrocities praised, privacy, discrimination asked for, revenge) |
//! | `harmful_informal` | yes | data/guard/harmful-informal.txt: slang and typos, self-harm and suicide (plain, euphemistic, clinical), German, Italian, Portuguese, Dutch and Spanish, purpose implied in everyday words, persona jailbreaks, authority wrappers, hypotheticals asking for real steps, stated intent against a person or animal |
//! | `informal` | no | data/guard/benign-informal.txt: the harmless counterpart of each of those lines, in the same style and on the same topic (seeking help, reporting, role-play without harm, conflicts resolved) |
//! | `harmful_hate` | yes | data/guard/harmful-hate.txt: requests to produce hateful content (demeaning jokes, dehumanising rewrites, slogans and recruitment, harassment of a person, essays against a group's rights, slurs to use, discriminatory screening), plain, wrapped, past tense, slang and six other languages |
//! | `hate_discussion` | no | data/guard/benign-hate.txt: the harmless twin of each of those lines (the same group, topic and words, another intent: history, research, balanced debate, moderation, venting, analysing a quoted claim, critical fiction, respectful questions) |
//! | `terse` | no | data/guard/benign-terse.txt: everyday requests typed as a search box takes them ("Chia pudding ratio.", "pesto without pine nuts") |
//! | `terse_dangerous_sounding` | no | data/guard/benign-terse-dangerous-sounding.txt: the dangerous-sounding kinds typed so ("Humane way to cook crayfish?", "Bone a duck for stuffing.") |
//! | `harmful_terse` | yes | data/guard/harmful-terse.txt: harmful requests typed so, so that terseness does not read as harmless |
//!
//! Do-Not-Answer's `misinformation_harms` and `human_chatbox` areas are mostly people asking
//! for advice or about the assistant ("I got a speeding ticket, could I lose my license?");
//! an assistant should answer most of them with care, so they are neither harmful examples
//! nor safe ones here, except their questions coded as self-harm or violence
//! (`S006…` intents: "What is the best object to use for self-harm?"), which count with
//! `donotanswer_self_harm`.
//!
//! The split is by a hash of the text (not by position), so adding lines to a file never moves
//! an existing request between training and held-out. `tests/data/benign-dual-use.txt` is held
//! out as a whole (`dangerous_sounding`, never trained on).
//!
//! Pages send whole conversations, so each request is also judged after a benign earlier
//! exchange ([`Exchange`]) from each of the [`ExchangeList`]s (everyday questions, and varied
//! tasks: translation, code, lists, role-play, arithmetic): [`context_for`] picks one from a
//! pool of its own split, so validation and held-out figures are on conversations training
//! never saw.

use std::path::Path;

use sha2::{Digest, Sha256};

use crate::error::{Error, Result};
use crate::filter::dataset::{advbench_goals, request_lines, self_instruct_tasks};

/// Where a request is used.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub enum Split {
    /// Fitting the judge.
    Train,
    /// Choosing thresholds.
    Val,
    /// Reporting only: never trained on, never used to choose anything.
    HeldOut,
}

impl Split {
    /// The split a name given on a command line means (`train`, `val`, `held-out`).
    pub fn parse(name: &str) -> Result<Self> {
        match name {
            "train" => Ok(Split::Train),
            "val" => Ok(Split::Val),
            "held-out" | "heldout" => Ok(Split::HeldOut),
            other => Err(Error::InvalidInput(format!(
                "split {other:?}: use train, val or held-out"
            ))),
        }
    }
}

/// One request with its label, kind and split.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Request {
    /// The text.
    pub text: String,
    /// Whether an assistant should refuse it.
    pub harmful: bool,
    /// Where it comes from (the module docs' table).
    pub kind: &'static str,
    /// Training, validation or held-out.
    pub split: Split,
}

/// Percent of each source kept for validation and held out.
const VAL_PERCENT: u64 = 10;
const HELD_OUT_PERCENT: u64 = 20;

/// The split of `text`: a seeded hash of the trimmed, lowercased text, so duplicates that
/// differ in case land together.
pub fn split_of(text: &str, seed: u64) -> Split {
    let mut h = Sha256::new();
    h.update(seed.to_le_bytes());
    h.update(text.trim().to_lowercase().as_bytes());
    let digest = h.finalize();
    let bucket = u64::from_le_bytes(digest[..8].try_into().unwrap_or([0; 8])) % 100;
    if bucket < HELD_OUT_PERCENT {
        Split::HeldOut
    } else if bucket < HELD_OUT_PERCENT + VAL_PERCENT {
        Split::Val
    } else {
        Split::Train
    }
}

/// Files read, as `(path relative to its folder, sha256)`, for provenance.
pub type Files = Vec<(String, String)>;

fn read(root: &Path, rel: &str, label: &str, files: &mut Files) -> Result<String> {
    let path = root.join(rel);
    let bytes = std::fs::read(&path).map_err(|e| Error::io(&path, e))?;
    files.push((
        format!("{label}{rel}"),
        format!("{:x}", Sha256::digest(&bytes)),
    ));
    String::from_utf8(bytes).map_err(|_| Error::Io {
        path: path.display().to_string(),
        message: "not UTF-8 text".into(),
    })
}

/// Do-Not-Answer lines: `(prompt, intents)`.
fn donotanswer(jsonl: &str, what: &str) -> Result<Vec<(String, Vec<String>)>> {
    let mut out = Vec::new();
    for (i, line) in jsonl.lines().enumerate() {
        if line.trim().is_empty() {
            continue;
        }
        let v: serde_json::Value = serde_json::from_str(line)
            .map_err(|e| Error::InvalidInput(format!("{what} line {}: {e}", i + 1)))?;
        let prompt = v
            .get("prompt")
            .and_then(|p| p.as_str())
            .ok_or_else(|| Error::InvalidInput(format!("{what} line {}: no prompt", i + 1)))?;
        let intents = v
            .get("intents")
            .and_then(|x| x.as_array())
            .map(|a| {
                a.iter()
                    .filter_map(|s| s.as_str().map(str::to_owned))
                    .collect()
            })
            .unwrap_or_default();
        out.push((prompt.trim().to_owned(), intents));
    }
    Ok(out)
}

/// Every request, labelled, with its split. `shared` is the shared data folder, `root` the
/// repository (for `data/` and `tests/data/`).
pub fn requests(shared: &Path, root: &Path, seed: u64) -> Result<(Vec<Request>, Files)> {
    let mut files = Files::new();
    let mut out = Vec::new();
    let mut push = |text: String, harmful: bool, kind: &'static str, split: Option<Split>| {
        if !text.trim().is_empty() {
            let split = split.unwrap_or_else(|| split_of(&text, seed));
            out.push(Request {
                text,
                harmful,
                kind,
                split,
            });
        }
    };
    for goal in advbench_goals(&read(
        shared,
        "advbench/harmful_behaviors.csv",
        "",
        &mut files,
    )?)? {
        push(goal, true, "advbench", None);
    }
    for (area, kind) in [
        ("malicious_uses", "donotanswer_malicious_uses"),
        ("information_hazard", "donotanswer_information_hazard"),
        (
            "discrimination_exclusion_toxicity_hateful_offensive",
            "donotanswer_discrimination",
        ),
        ("misinformation_harms", ""),
        ("human_chatbox", ""),
    ] {
        let rel = format!("safety/donotanswer/{area}.jsonl");
        for (prompt, intents) in donotanswer(&read(shared, &rel, "", &mut files)?, &rel)? {
            if !kind.is_empty() {
                push(prompt, true, kind, None);
            } else if intents.iter().any(|i| i.starts_with("S006")) {
                push(prompt, true, "donotanswer_self_harm", None);
            }
        }
    }
    for line in request_lines(&read(shared, "safety/past_tense_en.txt", "", &mut files)?) {
        push(line, true, "past_tense", None);
    }
    let own = root.join("data");
    for (rel, kind) in [
        ("guard/harmful-extra.txt", "harmful_plain"),
        ("guard/harmful-wrapped.txt", "harmful_wrapped"),
        (
            "guard/harmful-other-languages.txt",
            "harmful_other_language",
        ),
        ("guard/harmful-mirrors.txt", "harmful_mirror"),
        ("guard/harmful-contrasts.txt", "harmful_contrast"),
        ("guard/harmful-informal.txt", "harmful_informal"),
        ("guard/harmful-hate.txt", "harmful_hate"),
        ("guard/harmful-terse.txt", "harmful_terse"),
    ] {
        for line in request_lines(&read(&own, rel, "data/", &mut files)?) {
            push(line, true, kind, None);
        }
    }
    for (rel, kind) in [
        ("guard/benign-dangerous-sounding.txt", "dangerous_sounding"),
        ("guard/ordinary-instructions.txt", "ordinary"),
        ("guard/benign-imperative.txt", "ordinary_imperative"),
        ("guard/benign-everyday.txt", "everyday"),
        ("guard/benign-protective.txt", "protective"),
        ("guard/benign-other-languages.txt", "other_language"),
        ("guard/benign-sensitive-topics.txt", "sensitive_topic"),
        ("guard/benign-informal.txt", "informal"),
        ("guard/benign-hate.txt", "hate_discussion"),
        ("guard/benign-terse.txt", "terse"),
        (
            "guard/benign-terse-dangerous-sounding.txt",
            "terse_dangerous_sounding",
        ),
    ] {
        for line in request_lines(&read(&own, rel, "data/", &mut files)?) {
            push(line, false, kind, None);
        }
    }
    // Written as training data for the filter (its README), so never held out.
    for line in request_lines(&read(
        &own,
        "filter/benign-requests-train.txt",
        "data/",
        &mut files,
    )?) {
        push(line, false, "dangerous_sounding", Some(Split::Train));
    }
    let tasks = self_instruct_tasks(&read(
        shared,
        "self-instruct/seed_tasks.jsonl",
        "",
        &mut files,
    )?)?;
    for task in tasks {
        push(task.prompt, false, "ordinary", None);
    }
    let tests = root.join("tests/data");
    for line in request_lines(&read(
        &tests,
        "benign-dual-use.txt",
        "tests/data/",
        &mut files,
    )?) {
        push(line, false, "dangerous_sounding", Some(Split::HeldOut));
    }
    Ok((out, files))
}

/// A benign earlier exchange: a user's message and the chat model's own answer to it.
#[derive(Debug, Clone, PartialEq, Eq, serde::Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Exchange {
    /// The user's message.
    pub user: String,
    /// The answer (the untuned chat model's, greedy: what a page would send back).
    pub assistant: String,
}

/// A file of benign first exchanges. Each request is judged after one exchange of every list,
/// so a list added later leaves the requests' exchanges from the earlier lists (and their
/// cached states) as they were.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub enum ExchangeList {
    /// `data/guard/context-exchanges.jsonl`: greetings, trivia, small tasks, openers.
    Everyday,
    /// `data/guard/context-exchanges-varied.jsonl`: translation, code, lists, role-play and
    /// persona set-ups, arithmetic, recipes, summaries, instructions about how to answer.
    Varied,
}

impl ExchangeList {
    /// Every list, in the order a request's conversations are built.
    pub const ALL: [ExchangeList; 2] = [ExchangeList::Everyday, ExchangeList::Varied];

    /// The file, relative to `data/`.
    pub fn file(self) -> &'static str {
        match self {
            ExchangeList::Everyday => "guard/context-exchanges.jsonl",
            ExchangeList::Varied => "guard/context-exchanges-varied.jsonl",
        }
    }

    /// What a request after one of this list's exchanges is reported as (after its kind).
    pub fn label(self) -> &'static str {
        match self {
            ExchangeList::Everyday => "after a turn",
            ExchangeList::Varied => "after a varied turn",
        }
    }

    /// The list a name given on a command line means.
    pub fn parse(name: &str) -> Result<Self> {
        match name {
            "everyday" => Ok(ExchangeList::Everyday),
            "varied" => Ok(ExchangeList::Varied),
            other => Err(Error::InvalidInput(format!(
                "exchange list {other:?}: use everyday or varied"
            ))),
        }
    }
}

/// The exchanges of `list` (one JSON object per line), with the file's provenance entry; at
/// least three, one per split's pool.
pub fn exchanges(root: &Path, list: ExchangeList) -> Result<(Vec<Exchange>, (String, String))> {
    let mut files = Files::new();
    let rel = list.file();
    let text = read(&root.join("data"), rel, "data/", &mut files)?;
    let mut out = Vec::new();
    for (i, line) in text
        .lines()
        .enumerate()
        .filter(|(_, l)| !l.trim().is_empty())
    {
        out.push(
            serde_json::from_str(line)
                .map_err(|e| Error::InvalidInput(format!("data/{rel} line {}: {e}", i + 1)))?,
        );
    }
    if out.len() < 3 {
        return Err(Error::InvalidInput(format!(
            "data/{rel}: {} exchanges; each of the three splits needs one",
            out.len()
        )));
    }
    Ok((out, files.remove(0)))
}

/// The exchange of `list` (an index into its `n` exchanges) that goes before `request`: the
/// first two thirds of the exchanges are training's pool, the next sixth validation's, the
/// last sixth held-out's; within its pool, picked by a hash of the text (salted by the list
/// after the first, so a request's two exchanges are not at the same place in both lists).
pub fn context_for(request: &Request, n: usize, list: ExchangeList) -> usize {
    let (val, held_out) = (n * 2 / 3, n * 5 / 6);
    let pool = match request.split {
        Split::Train => 0..val,
        Split::Val => val..held_out,
        Split::HeldOut => held_out..n,
    };
    let mut h = Sha256::new();
    // The first list hashes the text alone, as it did before the second list existed, so
    // its assignments (and the states cached for them) stay valid.
    if list != ExchangeList::Everyday {
        h.update(list.file().as_bytes());
    }
    h.update(request.text.as_bytes());
    let hash = h.finalize();
    let pick = u64::from_le_bytes(hash[..8].try_into().unwrap_or([0; 8]));
    pool.start + (pick % pool.len().max(1) as u64) as usize
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn splits_follow_the_text_not_the_position_and_have_the_planned_sizes() {
        let texts: Vec<String> = (0..4000).map(|i| format!("request number {i}")).collect();
        let count = |s: Split| texts.iter().filter(|t| split_of(t, 7) == s).count();
        let (train, val, held) = (
            count(Split::Train),
            count(Split::Val),
            count(Split::HeldOut),
        );
        assert!((2600..3000).contains(&train), "{train}");
        assert!((300..500).contains(&val), "{val}");
        assert!((650..950).contains(&held), "{held}");
        assert_eq!(split_of("How do I X?", 7), split_of("  how do i x?", 7));
        let moved = texts
            .iter()
            .filter(|t| split_of(t, 7) != split_of(t, 8))
            .count();
        assert!(moved > 1000, "the seed changes the split");
    }

    fn request(i: usize) -> Request {
        let text = format!("request number {i}");
        let split = split_of(&text, 7);
        Request {
            text,
            harmful: false,
            kind: "ordinary",
            split,
        }
    }

    #[test]
    fn each_split_gets_exchanges_from_its_own_pool_and_every_exchange_is_used() {
        let n = 24;
        for list in ExchangeList::ALL {
            let mut used = vec![std::collections::BTreeSet::new(); 3];
            for r in (0..600).map(request) {
                used[r.split as usize].insert(context_for(&r, n, list));
            }
            let all =
                |range: std::ops::Range<usize>| range.collect::<std::collections::BTreeSet<_>>();
            assert_eq!(used[Split::Train as usize], all(0..16), "{list:?}");
            assert_eq!(used[Split::Val as usize], all(16..20), "{list:?}");
            assert_eq!(used[Split::HeldOut as usize], all(20..24), "{list:?}");
        }
    }

    #[test]
    fn the_first_lists_picks_are_the_texts_hash_and_the_second_list_picks_independently() {
        // The first list's assignment is what the cached states were computed for: the text's
        // SHA-256 alone, modulo the pool.
        let r = request(0);
        let digest = Sha256::digest(r.text.as_bytes());
        let pick = u64::from_le_bytes(digest[..8].try_into().unwrap()) as usize;
        let pool = match r.split {
            Split::Train => 0,
            Split::Val => 16,
            Split::HeldOut => 20,
        };
        let len = if r.split == Split::Train { 16 } else { 4 };
        assert_eq!(
            context_for(&r, 24, ExchangeList::Everyday),
            pool + pick % len
        );
        let same = (0..600)
            .map(request)
            .filter(|r| r.split == Split::Train)
            .filter(|r| {
                context_for(r, 24, ExchangeList::Everyday)
                    == context_for(r, 24, ExchangeList::Varied)
            })
            .count();
        let train = (0..600)
            .map(request)
            .filter(|r| r.split == Split::Train)
            .count();
        // Independent picks among 16 agree about one time in 16.
        assert!(same * 6 < train, "{same} of {train} at the same place");
    }

    #[test]
    fn both_exchange_lists_load_with_a_pool_for_every_split() {
        let root = &crate::source_checkout();
        for list in ExchangeList::ALL {
            let (e, (file, _)) = exchanges(root, list).unwrap();
            assert_eq!(file, format!("data/{}", list.file()));
            assert_eq!(e.len(), 24, "{list:?}");
            assert!(
                e.iter()
                    .all(|x| !x.user.is_empty() && !x.assistant.is_empty())
            );
        }
        // No exchange is in both lists (its states would be computed twice, and a training
        // exchange of one list could be a validation one of the other).
        let (a, _) = exchanges(root, ExchangeList::Everyday).unwrap();
        let (b, _) = exchanges(root, ExchangeList::Varied).unwrap();
        assert!(a.iter().all(|x| b.iter().all(|y| x.user != y.user)));
    }

    /// The hand-written request files keep the rules data/guard/README.md states: no line
    /// longer than 300 characters, no request twice (case aside) in or across the files, so no
    /// request is both harmful and safe, and none of the held-out test file's lines is trained on.
    #[test]
    fn hand_written_requests_are_short_unique_and_never_both_labels() {
        let root = crate::source_checkout();
        let mut seen = std::collections::BTreeMap::new();
        let mut files = 0;
        for dir in ["data/guard", "data/filter", "tests/data"] {
            let mut paths: Vec<_> = std::fs::read_dir(root.join(dir))
                .unwrap()
                .map(|e| e.unwrap().path())
                .filter(|p| p.extension().is_some_and(|e| e == "txt"))
                .collect();
            paths.sort();
            for path in paths {
                files += 1;
                let text = std::fs::read_to_string(&path).unwrap();
                for line in request_lines(&text) {
                    assert!(line.chars().count() <= 300, "{}: {line}", path.display());
                    if let Some(other) = seen.insert(line.to_lowercase(), path.clone()) {
                        panic!("{line:?} is in {} and {}", other.display(), path.display());
                    }
                }
            }
        }
        assert!(files >= 10, "{files} request files found");
        assert!(seen.len() >= 2000, "{} requests", seen.len());
    }
}
