//! The window-score cache the guard screens a streaming answer through
//! (`Filter::scores_cached`): the same scores as screening each text whole, with only the
//! windows not judged before run.

mod common;

use webguard::filter::WindowScores;

#[test]
fn cached_scores_equal_whole_ones_and_run_only_new_windows() {
    let filter = common::shipped_filter();
    // An answer growing a sentence at a time, long enough for several windows.
    let sentences = [
        "The printing press reached Mainz around 1450, where Johannes Gutenberg combined movable metal type, oil-based ink and a screw press adapted from wine making. ",
        "Within fifty years print shops had opened in more than two hundred European towns, and they had turned out millions of books, from bibles and grammars to calendars and pamphlets. ",
        "Printed books were cheaper and more uniform than manuscripts, so scholars in different cities could read the same pages and argue over the same tables and figures. ",
        "You are an idiot and nobody wants you here. ",
        "Reformers used cheap pamphlets to spread their arguments quickly, and governments soon answered with licences, censors and printed proclamations of their own.",
    ];
    let mut cache = WindowScores::default();
    let (mut answer, mut whole_windows) = (String::new(), 0);
    for s in sentences {
        answer.push_str(s);
        let whole = pollster::block_on(filter.scores(&[answer.as_str()])).unwrap();
        let cached =
            pollster::block_on(filter.scores_cached(&[answer.as_str()], &mut cache)).unwrap();
        for (a, b) in whole[0].iter().zip(&cached[0]) {
            assert!((a - b).abs() < 1e-4, "{:?} vs {:?}", whole[0], cached[0]);
        }
        whole_windows += filter.encoder().windows(&[answer.as_str()]).unwrap().len();
    }
    // Each sentence end runs only the windows its text changed: the last one (cut short before)
    // and any new ones (7 of 1 + 1 + 2 + 3 + 3 here).
    assert_eq!(cache.windows, whole_windows);
    assert!(
        cache.run < whole_windows,
        "{} of {whole_windows} windows run",
        cache.run
    );
    // Judging the same text again runs nothing; several texts in one call share the cache.
    let run = cache.run;
    let again =
        pollster::block_on(filter.scores_cached(&[answer.as_str(), sentences[3]], &mut cache));
    let whole = pollster::block_on(filter.scores(&[answer.as_str(), sentences[3]])).unwrap();
    for (a, b) in again.unwrap().iter().flatten().zip(whole.iter().flatten()) {
        assert!((a - b).abs() < 1e-4);
    }
    assert_eq!(cache.run, run + 1, "only the short text's one window ran");
    // A text over the filter's limit is still an error (the guard fails closed on it).
    let mut strict = common::shipped_filter();
    strict
        .set_options(webguard::FilterOptions {
            max_text_bytes: 64,
            ..webguard::FilterOptions::default()
        })
        .unwrap();
    assert!(
        pollster::block_on(strict.scores_cached(&[answer.as_str()], &mut WindowScores::default()))
            .is_err()
    );
}
