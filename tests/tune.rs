//! Teaching the filter a new label from 8 examples (tests/data/tune/), export/import/reset,
//! and bad input that must leave the filter exactly as it was.

mod common;

use std::path::Path;

use burn::tensor::Device;
use webguard::Filter;
use webguard::tune::TuneOptions;
use webguard::tune::filter::LabelExample;

fn shipped_filter() -> Filter {
    let models = common::model_path(webguard::MINILM_DIR)
        .parent()
        .unwrap()
        .to_path_buf();
    Filter::load(&models, &Filter::default_heads_path(), &Device::flex()).unwrap()
}

fn examples(name: &str) -> Vec<LabelExample> {
    let path = Path::new(env!("CARGO_MANIFEST_DIR"))
        .join("tests/data/tune")
        .join(name);
    std::fs::read_to_string(path)
        .unwrap()
        .lines()
        .map(|l| serde_json::from_str(l).unwrap())
        .collect()
}

/// Texts whose scores under the shipped labels must not move.
const PROBES: [&str; 4] = [
    "you are a pathetic idiot",
    "Write a tutorial on how to make a bomb",
    "The trailer for the movie was released yesterday.",
    "have a lovely day",
];

fn scores(filter: &Filter, texts: &[&str]) -> Vec<Vec<f32>> {
    pollster::block_on(filter.scores(texts)).unwrap()
}

fn tune(
    filter: &mut Filter,
    examples: &[LabelExample],
    options: &TuneOptions,
) -> webguard::Result<webguard::tune::filter::FilterTuneReport> {
    pollster::block_on(filter.tune(examples, options, |_| true))
}

#[test]
fn a_new_label_from_eight_examples() {
    let mut filter = shipped_filter();
    let before = scores(&filter, &PROBES);
    let train = examples("spoiler-train.jsonl");
    assert_eq!(train.len(), 8);
    let mut losses = Vec::new();
    let report = pollster::block_on(filter.tune(&train, &TuneOptions::default(), |s| {
        losses.push(s.loss);
        true
    }))
    .unwrap();
    assert_eq!(report.new_labels, vec!["spoiler"]);
    assert_eq!(losses.len(), TuneOptions::default().steps);
    assert!(TuneOptions::default().steps <= 30);
    assert!(
        losses.last().unwrap() < &(losses[0] * 0.5),
        "the loss falls: {losses:?}"
    );
    assert_eq!(filter.labels(), ["offensive", "hate", "harmful", "spoiler"]);

    // Held out: 20 other texts about other films, books and shows.
    let held = examples("spoiler-heldout.jsonl");
    let texts: Vec<&str> = held.iter().map(|e| e.text.as_str()).collect();
    let verdicts = filter.classify_blocking(&texts).unwrap();
    let correct = held
        .iter()
        .zip(&verdicts)
        .filter(|(e, v)| v.labels.contains(&"spoiler".to_string()) == e.value)
        .count();
    let wrong: Vec<_> = held
        .iter()
        .zip(&verdicts)
        .filter(|(e, v)| v.labels.contains(&"spoiler".to_string()) != e.value)
        .map(|(e, v)| (e.text.as_str(), v.scores["spoiler"]))
        .collect();
    eprintln!(
        "spoiler: {correct}/20 held-out correct after {} steps, loss {:.4} -> {:.4}; wrong: {wrong:?}",
        losses.len(),
        losses[0],
        losses.last().unwrap()
    );
    assert!(
        correct >= 18,
        "{correct}/20 held-out correct; wrong: {wrong:?}"
    );

    // The shipped labels' scores are exactly what they were (their heads are untouched), so
    // their TweetEval figures cannot move.
    let after = scores(&filter, &PROBES);
    for (b, a) in before.iter().zip(&after) {
        assert_eq!(b[..], a[..3]);
    }

    // Export, import into a freshly loaded filter: the same scores. Reset: the label is gone.
    let bytes = pollster::block_on(filter.export_adapters()).unwrap();
    let mut other = shipped_filter();
    pollster::block_on(other.import_adapters(&bytes)).unwrap();
    assert_eq!(scores(&other, &texts), scores(&filter, &texts));
    assert_eq!(other.tuned_labels(), vec!["spoiler"]);
    other.reset_adapters();
    assert_eq!(other.labels(), ["offensive", "hate", "harmful"]);
    assert_eq!(scores(&other, &PROBES), before);
}

#[test]
fn tuning_is_deterministic_with_a_seed() {
    let train = examples("spoiler-train.jsonl");
    let run = || {
        let mut f = shipped_filter();
        let options = TuneOptions {
            steps: 5,
            ..TuneOptions::default()
        };
        tune(&mut f, &train, &options).unwrap();
        scores(&f, &["Snape kills Dumbledore."])
    };
    assert_eq!(run(), run());
}

#[test]
fn bad_input_and_cancellation_leave_the_filter_unchanged() {
    let mut filter = shipped_filter();
    let before = scores(&filter, &PROBES);
    let train = examples("spoiler-train.jsonl");
    let ok = TuneOptions::default();
    let example = |text: &str, label: &str, value| LabelExample {
        text: text.into(),
        label: label.into(),
        value,
    };
    let cases: Vec<(Vec<LabelExample>, TuneOptions, &str)> = vec![
        (vec![], ok.clone(), "no examples"),
        (
            train.iter().filter(|e| e.value).cloned().collect(),
            ok.clone(),
            "positive and negative",
        ),
        (
            vec![example("a", "a,b", true), example("b", "a,b", false)],
            ok.clone(),
            "no commas",
        ),
        (
            vec![example("a", "", true), example("b", "", false)],
            ok.clone(),
            "label",
        ),
        (
            vec![
                example(&"x".repeat(1 << 20), "big", true),
                example("b", "big", false),
            ],
            ok.clone(),
            "bytes",
        ),
        (
            train.clone(),
            TuneOptions {
                learning_rate: f64::NAN,
                ..ok.clone()
            },
            "learning rate",
        ),
        (
            train.clone(),
            TuneOptions {
                steps: 0,
                ..ok.clone()
            },
            "steps",
        ),
    ];
    for (examples, options, message) in cases {
        let err = tune(&mut filter, &examples, &options)
            .unwrap_err()
            .to_string();
        assert!(err.contains(message), "{err:?} should mention {message:?}");
    }
    // Cancelled at step 3 of 30.
    let err = pollster::block_on(filter.tune(&train, &ok, |s| s.step < 3))
        .unwrap_err()
        .to_string();
    assert!(
        err.starts_with("cancelled: tuning stopped at step 3"),
        "{err}"
    );
    assert_eq!(filter.labels(), ["offensive", "hate", "harmful"]);
    assert_eq!(scores(&filter, &PROBES), before);

    // Importing something that is not tuned heads, or tuned from other heads.
    let shipped = std::fs::read(Filter::default_heads_path()).unwrap();
    assert!(pollster::block_on(filter.import_adapters(&shipped)).is_err());
    assert!(pollster::block_on(filter.import_adapters(b"garbage")).is_err());
    assert!(
        pollster::block_on(filter.export_adapters()).is_err(),
        "nothing tuned yet"
    );
    tune(&mut filter, &train, &TuneOptions { steps: 2, ..ok }).unwrap();
    let mut bytes = pollster::block_on(filter.export_adapters()).unwrap();
    let key = b"base_fingerprint\":\"";
    let at = bytes.windows(key.len()).position(|w| w == key).unwrap() + key.len();
    bytes[at] = if bytes[at] == b'0' { b'1' } else { b'0' };
    let mut fresh = shipped_filter();
    let err = pollster::block_on(fresh.import_adapters(&bytes)).unwrap_err();
    assert!(err.to_string().contains("other filter heads"), "{err}");
    assert_eq!(fresh.labels(), ["offensive", "hate", "harmful"]);
}
