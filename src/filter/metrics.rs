//! Binary classification metrics for one label: what `eval-filter` prints and what threshold
//! selection maximises.

use serde::Serialize;

/// Counts and scores of a binary classifier at one threshold.
#[derive(Debug, Clone, Copy, PartialEq, Serialize)]
pub struct BinaryMetrics {
    /// Examples evaluated.
    pub count: usize,
    /// Positive examples (label 1).
    pub positives: usize,
    /// Score at or above which a text counts as positive.
    pub threshold: f32,
    /// Fraction predicted correctly.
    pub accuracy: f64,
    /// Of the texts flagged, the fraction that are positive.
    pub precision: f64,
    /// Of the positive texts, the fraction flagged.
    pub recall: f64,
    /// F1 of the positive class.
    pub f1: f64,
    /// Mean of the F1 of the positive and of the negative class (TweetEval's measure).
    pub macro_f1: f64,
    /// Area under the ROC curve (threshold-free; 0.5 is chance).
    pub roc_auc: f64,
}

fn f1(tp: f64, fp: f64, fn_: f64) -> f64 {
    if tp == 0.0 {
        0.0
    } else {
        2.0 * tp / (2.0 * tp + fp + fn_)
    }
}

/// (true positives, false positives, true negatives, false negatives) at `threshold`.
fn confusion(scores: &[f32], labels: &[bool], threshold: f32) -> (f64, f64, f64, f64) {
    assert_eq!(scores.len(), labels.len(), "one label per score");
    let (mut tp, mut fp, mut tn, mut fn_) = (0.0, 0.0, 0.0, 0.0);
    for (&s, &y) in scores.iter().zip(labels) {
        match (s >= threshold, y) {
            (true, true) => tp += 1.0,
            (true, false) => fp += 1.0,
            (false, false) => tn += 1.0,
            (false, true) => fn_ += 1.0,
        }
    }
    (tp, fp, tn, fn_)
}

fn macro_f1(tp: f64, fp: f64, tn: f64, fn_: f64) -> f64 {
    (f1(tp, fp, fn_) + f1(tn, fn_, fp)) / 2.0
}

/// Metrics of `scores` against 0/1 `labels` at `threshold`. Panics only if the lengths differ
/// (a caller bug, not an input problem).
pub fn evaluate(scores: &[f32], labels: &[bool], threshold: f32) -> BinaryMetrics {
    let (tp, fp, tn, fn_) = confusion(scores, labels, threshold);
    let n = scores.len() as f64;
    let ratio = |a: f64, b: f64| if b == 0.0 { 0.0 } else { a / b };
    BinaryMetrics {
        count: scores.len(),
        positives: labels.iter().filter(|&&y| y).count(),
        threshold,
        accuracy: ratio(tp + tn, n),
        precision: ratio(tp, tp + fp),
        recall: ratio(tp, tp + fn_),
        f1: f1(tp, fp, fn_),
        macro_f1: macro_f1(tp, fp, tn, fn_),
        roc_auc: roc_auc(scores, labels),
    }
}

/// Area under the ROC curve: the probability that a random positive scores above a random
/// negative, ties counting half (Mann–Whitney U). 0.5 when a class is missing.
pub fn roc_auc(scores: &[f32], labels: &[bool]) -> f64 {
    let mut order: Vec<usize> = (0..scores.len()).collect();
    order.sort_by(|&a, &b| scores[a].total_cmp(&scores[b]));
    // Average ranks (1-based) over runs of equal scores.
    let mut rank_sum_pos = 0.0;
    let mut i = 0;
    while i < order.len() {
        let mut j = i;
        while j + 1 < order.len() && scores[order[j + 1]] == scores[order[i]] {
            j += 1;
        }
        let avg_rank = (i + j) as f64 / 2.0 + 1.0;
        for &k in &order[i..=j] {
            if labels[k] {
                rank_sum_pos += avg_rank;
            }
        }
        i = j + 1;
    }
    let pos = labels.iter().filter(|&&y| y).count() as f64;
    let neg = labels.len() as f64 - pos;
    if pos == 0.0 || neg == 0.0 {
        return 0.5;
    }
    (rank_sum_pos - pos * (pos + 1.0) / 2.0) / (pos * neg)
}

/// The threshold with the best macro-F1 on (`scores`, `labels`), tried at every distinct score
/// (ties broken towards the middle of the best run, so it is not on a knife's edge).
pub fn best_threshold(scores: &[f32], labels: &[bool]) -> f32 {
    let mut candidates: Vec<f32> = scores.to_vec();
    candidates.sort_by(f32::total_cmp);
    candidates.dedup();
    if candidates.is_empty() {
        return 0.5;
    }
    let values: Vec<f64> = candidates
        .iter()
        .map(|&t| {
            // Only the counts: the full `evaluate` would redo the ROC-AUC per candidate.
            let (tp, fp, tn, fn_) = confusion(scores, labels, t);
            macro_f1(tp, fp, tn, fn_)
        })
        .collect();
    let best = values.iter().cloned().fold(f64::MIN, f64::max);
    let first = values.iter().position(|&v| v == best).unwrap_or(0);
    let last = first + values[first..].iter().take_while(|&&v| v == best).count() - 1;
    // Midway between the last score below the run and the run's first score keeps the
    // threshold between the two examples it separates.
    let t = candidates[(first + last) / 2];
    if (first + last) / 2 == 0 {
        t
    } else {
        (t + candidates[(first + last) / 2 - 1]) / 2.0
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn known_confusion_matrix() {
        // tp=2 fp=1 tn=2 fn=1
        let scores = [0.9, 0.8, 0.7, 0.2, 0.1, 0.6];
        let labels = [true, true, false, true, false, false];
        let m = evaluate(&scores, &labels, 0.65);
        assert_eq!((m.count, m.positives), (6, 3));
        assert!((m.accuracy - 4.0 / 6.0).abs() < 1e-12);
        assert!((m.precision - 2.0 / 3.0).abs() < 1e-12);
        assert!((m.recall - 2.0 / 3.0).abs() < 1e-12);
        // negative class: tp'=2 fp'=1 fn'=1 -> F1 2/3 as well
        assert!((m.macro_f1 - 2.0 / 3.0).abs() < 1e-12);
    }

    #[test]
    fn auc_against_pair_counting() {
        let scores = [0.1f32, 0.4, 0.35, 0.8, 0.4, 0.9, 0.05];
        let labels = [false, false, true, true, true, false, true];
        let mut wins = 0.0;
        let mut pairs = 0.0;
        for i in 0..scores.len() {
            for j in 0..scores.len() {
                if labels[i] && !labels[j] {
                    pairs += 1.0;
                    wins += match scores[i].partial_cmp(&scores[j]).unwrap() {
                        std::cmp::Ordering::Greater => 1.0,
                        std::cmp::Ordering::Equal => 0.5,
                        std::cmp::Ordering::Less => 0.0,
                    };
                }
            }
        }
        assert!((roc_auc(&scores, &labels) - wins / pairs).abs() < 1e-12);
        assert_eq!(roc_auc(&[0.1, 0.2], &[true, true]), 0.5);
    }

    #[test]
    fn best_threshold_separates_separable_data() {
        let scores = [0.1, 0.2, 0.3, 0.7, 0.8];
        let labels = [false, false, false, true, true];
        let t = best_threshold(&scores, &labels);
        assert!(t > 0.3 && t <= 0.7, "{t}");
        assert_eq!(evaluate(&scores, &labels, t).macro_f1, 1.0);
    }
}
