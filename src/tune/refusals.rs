//! The seed's claim, measured: instruction tuning on a few curated refusals makes the chat
//! model refuse harmful requests it has not seen, without refusing benign ones.
//!
//! Data (read from `../shared/data`, never copied): AdvBench goals, shuffled with a seed, give
//! the training prompts (answered with one of [`REFUSALS`]) and a disjoint evaluation set;
//! self-instruct seed tasks with short example outputs give benign training pairs (their own
//! outputs, so the model does not learn to refuse everything), and the other tasks a disjoint
//! benign evaluation set. An answer is a refusal when [`is_refusal`] says so: a documented phrase
//! match on its opening ([`crate::text::refusal`]).

use std::path::Path;

use crate::chat::ChatModel;
use crate::error::{Error, Result};
use crate::filter::dataset::{advbench_goals, request_lines, self_instruct_tasks};
use crate::generate::GenerateOptions;
use crate::rng::shuffle;
use crate::text::refusal::is_refusal;
use crate::tune::chat::ChatPair;

/// The answers taught for harmful requests (written for this project).
pub const REFUSALS: [&str; 8] = [
    "I can't help with that. It could seriously hurt people.",
    "I'm sorry, but I can't assist with that request.",
    "I won't help with this, because it could be used to harm someone. If you need help with something safe, I'm glad to help.",
    "I can't provide that. It is dangerous and could be illegal.",
    "Sorry, I can't help with that request. Is there something else I can do for you?",
    "I cannot help with this. Causing harm to people or property is not something I will assist with.",
    "I'm not able to help with that, as it could put people at risk.",
    "I can't do that. If you or someone else is in danger, please contact local emergency services.",
];

/// Harmful training prompts in the measured recipe (the "16 AdvBench prompts").
pub const HARMFUL_TRAIN_PROMPTS: usize = 16;
/// Benign self-instruct training pairs in the measured recipe.
pub const BENIGN_TRAIN_PAIRS: usize = 48;
/// Benign requests with dangerous-sounding words in the measured recipe's training set.
pub const DUAL_USE_TRAIN_REQUESTS: usize = 32;
/// How many times each refusal pair appears in the measured recipe's training set.
pub const REPEAT_HARMFUL: usize = 3;

/// Training pairs and evaluation prompts.
#[derive(Debug, Clone)]
pub struct RefusalData {
    /// Harmful training prompts, each with one of [`REFUSALS`].
    pub refusals: Vec<ChatPair>,
    /// Benign training prompts with their dataset answers.
    pub benign: Vec<ChatPair>,
    /// Harmful prompts not in `refusals`.
    pub eval_harmful: Vec<String>,
    /// Benign prompts not in `benign`.
    pub eval_benign: Vec<String>,
}

/// Reads the shared data and splits it: `harmful` training prompts, `benign` training pairs,
/// and up to `eval` prompts of each kind for evaluation, disjoint from training.
pub fn refusal_data(
    shared: &Path,
    harmful: usize,
    benign: usize,
    eval: usize,
    seed: u64,
) -> Result<RefusalData> {
    let read = |rel: &str| {
        let p = shared.join(rel);
        std::fs::read_to_string(&p).map_err(|e| Error::io(&p, e))
    };
    let mut goals = advbench_goals(&read("advbench/harmful_behaviors.csv")?)?;
    shuffle(&mut goals, seed);
    let mut tasks = self_instruct_tasks(&read("self-instruct/seed_tasks.jsonl")?)?;
    shuffle(&mut tasks, seed.wrapping_add(1));
    // Training takes tasks with short answers (long example outputs would dominate the loss)
    // and prompts that fit a tuning pair (one task's input is 6 KB); every other task is for
    // evaluation.
    let (short, long): (Vec<_>, Vec<_>) = tasks
        .into_iter()
        .partition(|t| t.output.len() <= 400 && t.prompt.len() <= 1500);
    if goals.len() < harmful + 1 || short.len() < benign + 1 {
        return Err(Error::InvalidInput(format!(
            "not enough data: {} AdvBench goals and {} usable self-instruct tasks",
            goals.len(),
            short.len()
        )));
    }
    let refusals: Vec<ChatPair> = goals[..harmful]
        .iter()
        .enumerate()
        .map(|(i, g)| ChatPair {
            prompt: g.clone(),
            response: REFUSALS[i % REFUSALS.len()].to_string(),
        })
        .collect();
    let benign_pairs = short[..benign]
        .iter()
        .map(|t| ChatPair {
            prompt: t.prompt.clone(),
            response: t.output.clone(),
        })
        .collect();
    Ok(RefusalData {
        refusals,
        benign: benign_pairs,
        eval_harmful: goals[harmful..].iter().take(eval).cloned().collect(),
        eval_benign: short[benign..]
            .iter()
            .chain(&long)
            .take(eval)
            .map(|t| t.prompt.clone())
            .collect(),
    })
}

/// Greedy answers (up to `max_tokens`) to `prompts` and the share that are refusals.
pub fn refusal_rate(
    chat: &ChatModel,
    prompts: &[String],
    max_tokens: usize,
    mut progress: impl FnMut(usize),
) -> Result<(f64, Vec<String>)> {
    let options = GenerateOptions {
        max_new_tokens: max_tokens,
        ..GenerateOptions::default()
    };
    let mut answers = Vec::with_capacity(prompts.len());
    for (i, p) in prompts.iter().enumerate() {
        answers.push(pollster::block_on(chat.answer(p, &options))?);
        progress(i + 1);
    }
    let refusals = answers.iter().filter(|a| is_refusal(a)).count();
    Ok((refusals as f64 / prompts.len().max(1) as f64, answers))
}

/// Benign requests with dangerous-sounding words ("kill a process", "shoot a portrait"), read
/// from the repository at `repo`: `train` of the training ones (seeded choice; near-twins of
/// the harmful prompts that must still be answered) and the held-out set
/// (`tests/data/benign-dual-use.txt`, disjoint).
pub fn dual_use_requests(
    repo: &Path,
    train: usize,
    seed: u64,
) -> Result<(Vec<String>, Vec<String>)> {
    let read = |rel: &str| -> Result<Vec<String>> {
        let p = repo.join(rel);
        Ok(request_lines(
            &std::fs::read_to_string(&p).map_err(|e| Error::io(&p, e))?,
        ))
    };
    let mut pool = read("data/filter/benign-requests-train.txt")?;
    shuffle(&mut pool, seed);
    pool.truncate(train);
    Ok((pool, read("tests/data/benign-dual-use.txt")?))
}

/// Tokens of the base model's own answers used as benign targets.
pub const OWN_ANSWER_TOKENS: usize = 96;

/// Pairs of `prompts` with the base model's own greedy answers, leaving out those it refuses
/// or leaves empty (they would teach a refusal for a benign request).
pub fn own_answers(
    chat: &ChatModel,
    prompts: &[String],
    progress: impl FnMut(usize),
) -> Result<Vec<ChatPair>> {
    let (_, answers) = refusal_rate(chat, prompts, OWN_ANSWER_TOKENS, progress)?;
    Ok(prompts
        .iter()
        .zip(answers)
        .filter(|(_, a)| !is_refusal(a) && !a.trim().is_empty())
        .map(|(p, a)| ChatPair {
            prompt: p.clone(),
            response: a,
        })
        .collect())
}

/// The training set of the measured recipe: the refusal pairs of `data` `repeat_harmful`
/// times (benign pairs outnumber them; repeating keeps refusals a fair share of each batch
/// without adding prompts), its benign pairs (with the base model's own answers when
/// `own_benign_answers`, which keeps its benign behaviour where it was), and `dual_use`
/// prompts with the model's own answers. `progress(done)` counts answers generated.
pub fn training_pairs(
    chat: &ChatModel,
    data: &RefusalData,
    dual_use: &[String],
    repeat_harmful: usize,
    own_benign_answers: bool,
    mut progress: impl FnMut(usize),
) -> Result<Vec<ChatPair>> {
    let mut train: Vec<ChatPair> = (0..repeat_harmful.max(1))
        .flat_map(|_| data.refusals.iter().cloned())
        .collect();
    let mut done = 0;
    if own_benign_answers {
        let prompts: Vec<String> = data.benign.iter().map(|p| p.prompt.clone()).collect();
        train.extend(own_answers(chat, &prompts, &mut progress)?);
        done = prompts.len();
    } else {
        train.extend_from_slice(&data.benign);
    }
    train.extend(own_answers(chat, dual_use, |i| progress(done + i))?);
    Ok(train)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_taught_answers_are_refusals() {
        assert!(REFUSALS.iter().all(|r| is_refusal(r)));
    }
}

#[cfg(test)]
mod data_tests {
    use super::*;

    #[test]
    fn the_split_is_disjoint_and_seeded() {
        let shared = crate::source_checkout().join("../shared/data");
        assert!(
            shared.join("advbench").exists(),
            "{} is missing: this test reads the shared data next to the checkout",
            shared.display()
        );
        let d = refusal_data(&shared, 16, 16, 100, 0).unwrap();
        assert_eq!((d.refusals.len(), d.benign.len()), (16, 16));
        assert_eq!(d.eval_harmful.len(), 100);
        assert!(d.eval_benign.len() >= 80, "{}", d.eval_benign.len());
        for p in d.refusals.iter().chain(&d.benign) {
            assert!(!d.eval_harmful.contains(&p.prompt) && !d.eval_benign.contains(&p.prompt));
        }
        assert!(d.refusals.iter().all(|p| is_refusal(&p.response)));
        assert!(
            d.benign.iter().all(|p| !is_refusal(&p.response)),
            "benign answers comply"
        );
        assert_eq!(
            refusal_data(&shared, 16, 16, 100, 0).unwrap().eval_harmful,
            d.eval_harmful
        );
    }
}
