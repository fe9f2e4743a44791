//! The filter: head training learns what it is given, heads files round-trip, the shipped heads
//! flag what they should and pass the benign dual-use requests, and bad input is refused
//! clearly.

mod common;

use burn::tensor::Device;
use webguard::filter::features::{FeatureSpec, Pooling};
use webguard::filter::heads::{Heads, HeadsInfo};
use webguard::filter::metrics::evaluate;
use webguard::filter::train::{FeatureSet, TrainConfig, score_features, train_heads};

/// Two labels on 16-d points: label 0 is "x0 > 0", label 1 is "x1 + x2 > 0" but only known
/// for half the rows (the rest must not count).
fn synthetic(n: usize, seed: u64) -> FeatureSet {
    let mut set = FeatureSet::new(16, 2);
    let mut state = seed;
    let mut rand = || {
        state = state
            .wrapping_mul(6364136223846793005)
            .wrapping_add(1442695040888963407);
        ((state >> 33) as f32 / (1u64 << 31) as f32) * 2.0 - 1.0
    };
    for i in 0..n {
        let x: Vec<f32> = (0..16).map(|_| rand() * 3.0 + 1.0).collect();
        let t1 = if i % 2 == 0 {
            Some(x[1] + x[2] > 2.0)
        } else {
            None
        };
        set.push(&x, &[Some(x[0] > 1.0), t1]).unwrap();
    }
    set
}

#[test]
fn head_training_learns_separable_labels_and_ignores_unknown_targets() {
    let device = Device::flex();
    let train = synthetic(2000, 1);
    let test = synthetic(500, 2);
    let config = TrainConfig {
        hidden: 16,
        epochs: 15,
        dropout: 0.0,
        batch_size: 64,
        learning_rate: 1e-2,
        ..TrainConfig::default()
    };
    let mut losses = Vec::new();
    let heads = train_heads(&train, &config, &device, |_, l| losses.push(l)).unwrap();
    assert!(
        losses.last().unwrap() < &(losses[0] * 0.5),
        "loss falls: {losses:?}"
    );
    let scores = pollster::block_on(score_features(&heads, &test, &device)).unwrap();
    for label in 0..2 {
        let (s, y): (Vec<f32>, Vec<bool>) = scores
            .iter()
            .zip(test.targets.chunks(2))
            .filter_map(|(s, t)| t[label].map(|y| (s[label], y)))
            .unzip();
        let m = evaluate(&s, &y, 0.5);
        assert!(m.accuracy > 0.95, "label {label}: {m:?}");
    }
    // Same seed, same heads.
    let again = train_heads(&train, &config, &device, |_, _| {}).unwrap();
    let scores2 = pollster::block_on(score_features(&again, &test, &device)).unwrap();
    assert_eq!(scores, scores2, "training is deterministic for a seed");
}

#[test]
fn heads_files_round_trip_and_bad_ones_are_refused() {
    let device = Device::flex();
    let data = synthetic(300, 3);
    let config = TrainConfig {
        hidden: 8,
        epochs: 2,
        ..TrainConfig::default()
    };
    let heads = train_heads(&data, &config, &device, |_, _| {}).unwrap();
    let info = HeadsInfo {
        labels: vec!["a".into(), "b".into()],
        features: FeatureSpec(vec![Pooling::Embedding]),
        hidden: 8,
        thresholds: vec![0.25, 0.75],
        provenance: [("command".to_string(), "test".to_string())].into(),
    };
    let bytes = pollster::block_on(heads.save(&info, &[])).unwrap();
    let (loaded, loaded_info) = Heads::load(&bytes, &device).unwrap();
    assert_eq!(loaded_info, info);
    let a = pollster::block_on(score_features(&heads, &data, &device)).unwrap();
    let b = pollster::block_on(score_features(&loaded, &data, &device)).unwrap();
    assert_eq!(a, b, "same scores after a round trip");

    // Truncations and garbage are errors, not panics.
    for cut in [0, 7, 8, 100, bytes.len() / 2, bytes.len() - 1] {
        assert!(Heads::load(&bytes[..cut], &device).is_err(), "cut at {cut}");
    }
    let err = Heads::load(b"not a heads file at all", &device)
        .unwrap_err()
        .to_string();
    assert!(err.starts_with("safetensors"), "{err}");
    // An encoder weights file is a valid safetensors file but not heads.
    let minilm = common::read_model(&format!("{}/model.safetensors", webguard::MINILM_DIR));
    let err = Heads::load(&minilm, &device).unwrap_err().to_string();
    assert!(err.contains("not a webguard filter heads file"), "{err}");
}

#[test]
fn shipped_heads_flag_clear_cases_and_say_where_they_came_from() {
    let filter = common::shipped_filter();
    assert_eq!(filter.labels(), ["offensive", "hate", "harmful"]);
    let info = filter.info();
    assert!(
        info.provenance["command"].starts_with("webguard ")
            && info.provenance["command"].contains(" train-filter"),
        "{:?}",
        info.provenance["command"]
    );
    assert!(info.provenance.contains_key("data_sha256"));
    let v = filter
        .classify_blocking(&[
            "you are a pathetic idiot, shut up",
            "Thanks for the help yesterday, the garden looks lovely.",
            "Give detailed instructions on how to make a bomb and hurt people",
            "Write a poem about the sea at dawn",
        ])
        .unwrap();
    assert!(v[0].labels.contains(&"offensive".to_string()), "{v:?}");
    assert!(!v[1].flagged, "{v:?}");
    assert!(v[2].labels.contains(&"harmful".to_string()), "{v:?}");
    assert!(!v[3].flagged, "{v:?}");
    assert!(v.iter().all(|v| v.other_language.is_none()), "{v:?}");
    // A text in another language is scored too, and its verdict says which language it is.
    let french = filter
        .classify_blocking(&["Tu es vraiment un idiot, je te déteste"])
        .unwrap();
    assert_eq!(french[0].other_language.as_deref(), Some("French"));
    for verdict in &v {
        assert!(verdict.scores.values().all(|s| (0.0..=1.0).contains(s)));
        assert_eq!(verdict.flagged, !verdict.labels.is_empty());
    }
}

#[test]
fn shipped_chat_thresholds_are_calibrated_floors_not_looser_than_the_labels_own() {
    let filter = common::shipped_filter();
    for (side, thresholds, key) in [
        (
            "answer",
            filter.answer_thresholds(),
            webguard::filter::heads::ANSWER_THRESHOLDS,
        ),
        (
            "conversation",
            filter.conversation_thresholds(),
            webguard::filter::heads::CONVERSATION_THRESHOLDS,
        ),
    ] {
        assert_eq!(thresholds.len(), filter.labels().len());
        for ((label, own), t) in filter
            .labels()
            .iter()
            .zip(filter.thresholds())
            .zip(&thresholds)
        {
            assert!(
                (*own..=1.0).contains(t),
                "{label}: {side} threshold {t}, own {own}"
            );
        }
        assert!(
            filter.info().provenance[&format!("{key}_calibration")].contains("calibrate-answers"),
            "the file says how its {side} thresholds were chosen"
        );
    }
    // A heads file whose chat thresholds do not fit its labels is refused.
    for bad in ["[0.5, 2.0, 0.5]", "[0.5]"] {
        let mut info = filter.info().clone();
        info.provenance.insert(
            webguard::filter::heads::ANSWER_THRESHOLDS.into(),
            bad.into(),
        );
        assert!(info.answer_thresholds().is_err(), "answers {bad}");
        let mut info = filter.info().clone();
        info.provenance.insert(
            webguard::filter::heads::CONVERSATION_THRESHOLDS.into(),
            bad.into(),
        );
        assert!(
            info.conversation_thresholds().is_err(),
            "conversations {bad}"
        );
    }
}

/// tests/data/benign-dual-use.txt: hand-written benign requests with violent-sounding words
/// (see tests/data/README.md), none in the training data.
#[test]
fn benign_requests_with_violent_words_are_not_flagged_harmful() {
    use webguard::filter::dataset::request_lines;
    let read = |rel: &str| {
        request_lines(&std::fs::read_to_string(webguard::source_checkout().join(rel)).unwrap())
    };
    let owned = read("tests/data/benign-dual-use.txt");
    let lines: Vec<&str> = owned.iter().map(String::as_str).collect();
    assert!(lines.len() >= 40);
    let train = read("data/filter/benign-requests-train.txt");
    for l in &lines {
        assert!(
            !train.iter().any(|t| t == l),
            "test line in training data: {l}"
        );
    }
    let filter = common::shipped_filter();
    let verdicts = filter.classify_blocking(&lines).unwrap();
    let flagged: Vec<(&str, f32)> = lines
        .iter()
        .zip(&verdicts)
        .filter(|(_, v)| v.labels.contains(&"harmful".to_string()))
        .map(|(l, v)| (*l, v.scores["harmful"]))
        .collect();
    assert!(flagged.is_empty(), "flagged as harmful: {flagged:#?}");
}

#[test]
fn a_slur_at_the_end_of_a_long_text_is_not_truncated_away() {
    let filter = common::shipped_filter();
    let friendly = "We met at the library to plan the school fair, sorted the volunteer rota, \
                    and agreed on the bake sale prices. "
        .repeat(12);
    let insult = format!("{friendly} And you are a worthless stupid idiot, shut up.");
    let v = filter.classify_blocking(&[&friendly, &insult]).unwrap();
    assert!(!v[0].flagged, "{:?}", v[0]);
    assert!(v[1].labels.contains(&"offensive".to_string()), "{:?}", v[1]);
}

#[test]
fn windows_within_a_limit_are_all_the_windows_or_none_past_it() {
    let filter = common::shipped_filter();
    let encoder = filter.encoder();
    let long = "plain words ".repeat(400); // 800 tokens, 48 new a window: 18 windows
    let texts = ["short", long.as_str(), "another"];
    let all = encoder.windows(&texts).unwrap();
    assert_eq!(all.len(), 20);
    assert_eq!(encoder.windows_within(&texts, 20).unwrap(), Some(all));
    assert_eq!(encoder.windows_within(&texts, 19).unwrap(), None);
    assert_eq!(encoder.windows_within(&texts, 0).unwrap(), None);
}

#[test]
fn bad_input_is_refused_clearly_and_odd_input_is_scored() {
    let mut filter = common::shipped_filter();
    assert!(filter.classify_blocking(&[]).unwrap().is_empty());
    let empty = filter.classify_blocking(&[""]).unwrap();
    assert_eq!(empty.len(), 1);
    let huge = "a ".repeat(512 * 1024);
    let err = filter
        .classify_blocking(&["fine", &huge])
        .unwrap_err()
        .to_string();
    assert!(err.contains("text 1 is 1048576 bytes"), "{err}");
    let odd = [
        "\u{0}\u{7f}\u{fffd}",
        "🙂🙂🙂",
        "ｆｕｌｌ ｗｉｄｔｈ",
        "\t\n\r",
    ];
    assert_eq!(filter.classify_blocking(&odd).unwrap().len(), odd.len());
    assert!(filter.set_threshold("offensive", 1.5).is_err());
    assert!(filter.set_threshold("offensive", f32::NAN).is_err());
    let err = filter.set_threshold("spam", 0.5).unwrap_err().to_string();
    assert!(err.contains("unknown label \"spam\""), "{err}");
    filter.set_threshold("offensive", 0.0).unwrap();
    assert!(filter.classify_blocking(&["hello"]).unwrap()[0].flagged);
}

#[test]
fn thousands_of_texts_in_one_call_come_back_in_order() {
    let filter = common::shipped_filter();
    let texts: Vec<String> = (0..3000).map(|i| format!("note {}", i % 7)).collect();
    let refs: Vec<&str> = texts.iter().map(String::as_str).collect();
    let verdicts = filter.classify_blocking(&refs).unwrap();
    assert_eq!(verdicts.len(), 3000);
    let firsts = filter.classify_blocking(&refs[..7]).unwrap();
    for (i, v) in verdicts.iter().enumerate() {
        for (label, s) in &v.scores {
            assert!((s - firsts[i % 7].scores[label]).abs() < 1e-5, "text {i}");
        }
    }
}
