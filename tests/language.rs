//! Language detection over whole sets (`webguard::text::language`), as the guard calls it (on
//! the judging form): the development requests in other languages are found and named, and
//! English texts of public sets of many kinds are not taken for another language. The lists
//! were chosen on these development sets; the held-out halves measure them and are not read
//! here (notes/issue-13-guard.md has both figures). Short English requests whose only listed
//! word is one English writes too are English.

use std::path::Path;

use webguard::text::language::other_language;

fn named(text: &str) -> Option<&'static str> {
    other_language(text).map(|l| l.code)
}

fn read(path: &Path) -> String {
    std::fs::read_to_string(path).unwrap_or_else(|e| panic!("{}: {e}", path.display()))
}

/// `field` of each line of a JSON Lines file.
fn jsonl_field(path: &Path, field: &str) -> Vec<String> {
    read(path)
        .lines()
        .filter(|l| !l.trim().is_empty())
        .map(|l| {
            let v: serde_json::Value = serde_json::from_str(l).unwrap();
            v[field].as_str().unwrap().to_string()
        })
        .collect()
}

fn eval_set(name: &str) -> std::path::PathBuf {
    webguard::source_checkout()
        .join("tests/data/guard-eval")
        .join(name)
}

/// The code a language's requests are named by: Croatian and Serbian share one list.
fn list_of(lang: &str) -> &str {
    match lang {
        "hr" | "sr" => "hbs",
        other => other,
    }
}

#[test]
fn development_requests_in_other_languages_are_found_and_mostly_named_right() {
    // Eight languages, 200 requests: every one found.
    let eight = jsonl_field(&eval_set("other-languages-dev.jsonl"), "prompt");
    assert_eq!(eight.len(), 200);
    let missed: Vec<&String> = eight.iter().filter(|t| named(t).is_none()).collect();
    assert!(missed.is_empty(), "read as English: {missed:?}");

    // Twenty more, a quarter typed without diacritics: 154 of 156 found when the lists were
    // chosen (the two misses tie with English `i` and `to`), 121 named right.
    let path = eval_set("more-languages-dev.jsonl");
    let (prompts, langs) = (jsonl_field(&path, "prompt"), jsonl_field(&path, "lang"));
    assert_eq!(prompts.len(), 156);
    let codes: Vec<Option<&str>> = prompts.iter().map(|t| named(t)).collect();
    let found = codes.iter().filter(|c| c.is_some()).count();
    let right = (codes.iter().zip(&langs))
        .filter(|(c, l)| **c == Some(list_of(l)))
        .count();
    assert!(found >= 153, "found {found} of 156");
    assert!(right >= 115, "named right {right} of 156");
    // Every language of the set is named right at least once: each has a list of its own.
    for lang in &langs {
        assert!(
            codes.contains(&Some(list_of(lang))),
            "{lang} is never named"
        );
    }
}

#[test]
fn english_texts_of_public_sets_are_not_taken_for_another_language() {
    let shared = webguard::source_checkout().join("../shared/data");
    // Without the data nothing is checked: that is a failure, not a pass.
    assert!(
        shared.join("tweeteval").exists(),
        "{} is missing: this test needs the public sets in ../shared/data",
        shared.join("tweeteval").display()
    );
    let lines = |p: &str| -> Vec<String> {
        let text = read(&shared.join(p));
        text.lines()
            .filter(|l| !l.trim().is_empty())
            .map(String::from)
            .collect()
    };
    let mut toxigen = Vec::new();
    for entry in std::fs::read_dir(shared.join("toxigen/sentences")).unwrap() {
        let path = entry.unwrap().path();
        toxigen.extend(
            read(&path)
                .lines()
                .filter(|l| !l.trim().is_empty())
                .map(String::from),
        );
    }
    let sets: Vec<(&str, Vec<String>)> = vec![
        ("past-tense rewordings", lines("safety/past_tense_en.txt")),
        (
            "self-instruct",
            jsonl_field(
                &shared.join("self-instruct/seed_tasks.jsonl"),
                "instruction",
            ),
        ),
        ("ToxiGen", toxigen),
        (
            "TweetEval offensive val",
            lines("tweeteval/offensive/val_text.txt"),
        ),
        ("TweetEval hate val", lines("tweeteval/hate/val_text.txt")),
    ];
    let mut named_tweets = Vec::new();
    for (set, texts) in &sets {
        assert!(texts.len() >= 100, "{set}: {} texts", texts.len());
        for t in texts {
            if let Some(code) = named(t) {
                if set.starts_with("TweetEval") {
                    named_tweets.push((code, t.clone()));
                } else {
                    panic!("{set}: {t:?} taken for {code}");
                }
            }
        }
    }
    // Two of the 2,324 tweets are not English (one Dutch, one Hindi in Latin letters).
    assert!(named_tweets.len() <= 2, "{named_tweets:?}");
}

/// Short English requests without English function words, each with a word another language's
/// list has and English writes too (a name, a word, a prefix): all but two were taken for
/// another language (46 of 53) before such words needed a second word of the language.
#[test]
fn short_english_requests_with_words_other_languages_share_are_english() {
    let requests = [
        "Name three fruits, one per sentence.",
        "Mint tea benefits?",
        "Ginger ale recipe.",
        "Tai chi basics.",
        "Van rental prices near me.",
        "Big Ben opening hours.",
        "Comment on Hamlet's soliloquy.",
        "Son turned eleven today, party ideas?",
        "Original sin explained simply.",
        "Min heap implementation in Rust.",
        "Strawberry jam recipe.",
        "Jane Austen novels ranked.",
        "Convert one ton into kilograms.",
        "Dove soap ingredients.",
        "Till soil manually?",
        "Safe bet strategies.",
        "Non-profit ideas.",
        "JavaScript var versus let.",
        "Hindi alphabet chart.",
        "Con artists' tricks, explained.",
        "Sin, cos, tan identities.",
        "Mon to Fri schedule.",
        "Ma and pa shops.",
        "Sen. Warren's voting record.",
        "Les Miserables plot summary.",
        "Des Moines weather forecast.",
        "El Nino effects on rainfall.",
        "Son et lumiere shows.",
        "Del key not working.",
        "Lo-fi study music suggestions.",
        "Mi Band setup guide.",
        "Te Reo Maori greetings.",
        "Ben Nevis hiking route.",
        "Mint condition coins, value guide.",
        "Comment section moderation tips.",
        "Van Gogh paintings list.",
        "Sin city film review.",
        "Ton of bricks meaning.",
        "Per capita income definition.",
        "Kai tak airport history.",
        "Ara parrot facts.",
        "Dos and don'ts.",
        "Un-American activities committee history.",
        "Mis-sold insurance claims.",
        "Ne'er-do-well meaning.",
        "Bet on yourself quotes.",
        "Ale versus lager.",
        "Hay fever remedies.",
        "Mans best friend facts.",
        "Sin tax examples.",
        "Dove hunting season dates.",
        "Mint julep recipe.",
        "Con Edison outage map.",
    ];
    let named: Vec<(&str, &str)> = requests
        .iter()
        .filter_map(|t| named(t).map(|code| (code, *t)))
        .collect();
    // Two hold two words of one language each: "Son et lumiere shows." (French `son`, `et`)
    // and "Kai tak airport history." (Polish `tak`).
    assert!(named.len() <= 2, "{named:?}");
}
