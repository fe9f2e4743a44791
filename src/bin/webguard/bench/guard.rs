//! `bench guard`: a moderated chat turn (the filter screening the conversation, the chat
//! model's probes, the answer screened at every sentence end) next to the chat model alone on
//! the same prompt, greedy, the same answer: time per generated token and the ratio (issue
//! 13's budget: at most 1.2). The runs alternate and the ratio is the median of each pair's,
//! so that load from other processes on a shared machine falls on both sides. Then what the
//! screens cost on their own: the input screen, and the answer screens (each sentence end
//! judges the whole answer so far: through the window-score cache as the guard does, and run
//! again whole as it did before the cache).

use std::path::Path;
use std::time::Instant;

use webguard::backend::{Backend, BackendChoice};
use webguard::filter::WindowScores;
use webguard::generate::{GenerateOptions, Generator, generate};
use webguard::guard::{Policy, input_texts, moderated_chat};
use webguard::text::chat_template::Message;
use webguard::weights::Gguf;
use webguard::{ChatModel, Error, Filter, Result, SMOLLM2_GGUF};

use super::threads;
use crate::common::{map, read};

/// A request whose answer is long and benign, so that every run generates the token budget
/// and nothing is blocked (scripts/bench-browser.mjs asks the same).
pub const MESSAGE: &str = "Write a long, detailed essay about the history of the printing press in Europe, \
covering Gutenberg, the spread of print shops, the books they made, and how printing changed \
religion, science and politics over the following three centuries.";

#[derive(clap::Args)]
pub struct GuardBench {
    /// Backend: cpu or gpu.
    #[arg(long, default_value = "cpu")]
    backend: String,
    /// Most tokens per answer (the answer above takes all of them).
    #[arg(long, default_value_t = 128)]
    new_tokens: usize,
    /// Measured runs of each, alternating (unmoderated, moderated, ...); the medians count.
    #[arg(long, default_value_t = 3)]
    runs: usize,
    /// Without the chat model's probes (the filter alone screens).
    #[arg(long)]
    no_probe: bool,
    /// A system prompt before the request: the guard then also judges the request on its
    /// own (a second, short prefill), which this measures.
    #[arg(long)]
    system: Option<String>,
    /// Chat adapters written by `tune-chat`, installed on the model both sides run: where
    /// they change a block the probes read, the guard judges from a second sequence through
    /// the model as loaded, which this measures.
    #[arg(long)]
    chat_adapters: Option<std::path::PathBuf>,
    /// Print one JSON object instead of lines.
    #[arg(long)]
    json: bool,
}

fn median(xs: &[f64]) -> f64 {
    let mut v = xs.to_vec();
    v.sort_by(f64::total_cmp);
    v[v.len() / 2]
}

pub fn run(models: &Path, args: &GuardBench) -> Result<()> {
    if args.runs == 0 || args.new_tokens == 0 {
        return Err(Error::InvalidInput(
            "runs and new tokens must be at least 1".into(),
        ));
    }
    let backend = Backend::init_blocking(args.backend.parse::<BackendChoice>()?)?;
    let filter = pollster::block_on(Filter::load_for(
        models,
        &Filter::default_heads_path(),
        &backend,
    ))?;
    let policy = Policy::new(&filter);
    let file = map(&models.join(SMOLLM2_GGUF))?;
    let mut chat = ChatModel::load(&Gguf::parse_mapped(&file)?, &backend.device)?;
    if !args.no_probe {
        let probe = webguard::source_checkout().join("assets/chat-probe.safetensors");
        chat.load_probe(&read(&probe)?)?;
    }
    if let Some(path) = &args.chat_adapters {
        pollster::block_on(chat.import_adapters(&read(path)?))?;
    }
    let messages: Vec<Message> = (args.system.iter())
        .map(|s| Message::new("system", s))
        .chain([Message::new("user", MESSAGE)])
        .collect();
    let options = GenerateOptions {
        max_new_tokens: args.new_tokens,
        ..GenerateOptions::default()
    };
    let ids = chat.prompt_ids(&messages)?;
    let unmoderated = || -> Result<(f64, webguard::generate::Generation)> {
        let start = Instant::now();
        let g = pollster::block_on(generate(&chat, &ids, &options, |_| true))?;
        Ok((start.elapsed().as_secs_f64(), g))
    };
    let moderated = || -> Result<(f64, webguard::guard::ModeratedReply)> {
        let start = Instant::now();
        let r = pollster::block_on(moderated_chat(
            &filter,
            &policy,
            &chat,
            &messages,
            &options,
            |_| true,
            || false,
        ))?;
        Ok((start.elapsed().as_secs_f64(), r))
    };
    // Warm-up: first-use allocations (and kernel compilation on a GPU).
    unmoderated()?;
    let (_, reply) = moderated()?;
    if reply.blocked {
        return Err(Error::InvalidInput(format!(
            "the benchmark's answer was blocked ({:?}); it must be shown to compare",
            reply.reason
        )));
    }
    let (mut plain, mut guarded) = (Vec::new(), Vec::new());
    let mut answer_ids = Vec::new();
    for _ in 0..args.runs {
        let (t, g) = unmoderated()?;
        plain.push(t);
        let (u, r) = moderated()?;
        guarded.push(u);
        if r.tokens != g.tokens.len() || r.text != g.text {
            return Err(Error::Backend(format!(
                "the moderated answer ({} tokens) differs from the unmoderated one ({} tokens)",
                r.tokens,
                g.tokens.len()
            )));
        }
        answer_ids = g.tokens;
    }
    let ratios: Vec<f64> = guarded.iter().zip(&plain).map(|(m, p)| m / p).collect();
    let (plain, guarded, ratio) = (median(&plain), median(&guarded), median(&ratios));
    let tokens = answer_ids.len();

    // Where the extra time goes: the same screens, timed on their own.
    let time = |f: &mut dyn FnMut() -> Result<()>| -> Result<f64> {
        let start = Instant::now();
        f()?;
        Ok(start.elapsed().as_secs_f64())
    };
    let texts = input_texts(&messages, filter.options().max_text_bytes);
    let texts: Vec<&str> = texts.iter().map(String::as_str).collect();
    let input_screen = time(&mut || pollster::block_on(filter.scores(&texts)).map(|_| ()))?;
    let prefixes: Vec<String> = chat
        .sentence_ends(&answer_ids)?
        .iter()
        .map(|&end| chat.tokenizer.decode(&answer_ids[..=end]))
        .collect::<Result<_>>()?;
    let mut whole_windows = 0;
    let whole = time(&mut || {
        for p in &prefixes {
            whole_windows += filter.encoder().windows(&[p.as_str()])?.len();
            pollster::block_on(filter.scores(&[p.as_str()]))?;
        }
        Ok(())
    })?;
    let mut cache = WindowScores::default();
    let cached = time(&mut || {
        for p in &prefixes {
            pollster::block_on(filter.scores_cached(&[p.as_str()], &mut cache))?;
        }
        Ok(())
    })?;
    // The last message judged alone (with a system prompt): through the kept default system
    // turn and only up to the probe's deepest block, as the guard does on the CPU, and as a
    // whole prefill of that prompt, as it did before (and still does on the GPU engine).
    let alone = match (&chat.probe, args.system.is_some()) {
        (Some(probe), true) => {
            let ids = chat.user_prompt_ids(MESSAGE)?;
            let at = chat.request_probe_positions(&[Message::new("user", MESSAGE)])?;
            let kept = time(&mut || {
                pollster::block_on(chat.prompt_states(&ids, &probe.layers, at.clone())).map(|_| ())
            })?;
            let whole = time(&mut || {
                let mut g =
                    Generator::with_states(&chat, &ids, &options, &probe.layers, at.clone())?;
                pollster::block_on(g.latest_states())?;
                g.cancel();
                Ok(())
            })?;
            Some((ids.len(), kept, whole))
        }
        _ => None,
    };
    if args.json {
        let out = serde_json::json!({
            "backend": backend.to_string(),
            "threads": threads(),
            "probes": !args.no_probe,
            "system_prompt": args.system.is_some(),
            "chat_adapters": args.chat_adapters.is_some(),
            "prompt_tokens": ids.len(),
            "tokens": tokens,
            "runs": args.runs,
            "unmoderated_s": plain,
            "moderated_s": guarded,
            "unmoderated_tokens_per_s": tokens as f64 / plain,
            "moderated_tokens_per_s": tokens as f64 / guarded,
            "ratio": ratio,
            "ratios": ratios,
            "input_screen_s": input_screen,
            "sentence_ends": prefixes.len(),
            "answer_screens_whole_s": whole,
            "answer_screens_whole_windows": whole_windows,
            "answer_screens_cached_s": cached,
            "answer_screens_cached_windows_run": cache.run,
            "alone_prompt_tokens": alone.map(|a| a.0),
            "alone_judged_s": alone.map(|a| a.1),
            "alone_whole_prefill_s": alone.map(|a| a.2),
        });
        println!("{out}");
        return Ok(());
    }
    println!(
        "bench guard: a moderated turn vs the chat model alone on {backend} ({} threads), {}-token prompt, {tokens} tokens generated (greedy, the same answer), median of {} runs each{}{}",
        threads(),
        ids.len(),
        args.runs,
        match (args.no_probe, args.system.is_some()) {
            (true, _) => ", no chat-model probes",
            (false, true) => ", a system prompt first (the request is also judged alone)",
            (false, false) => "",
        },
        if args.chat_adapters.is_some() {
            ", chat adapters installed on both sides"
        } else {
            ""
        }
    );
    println!(
        "  unmoderated: {:.2} s, {:.2} tokens/s ({:.1} ms/token)",
        plain,
        tokens as f64 / plain,
        plain * 1000.0 / tokens as f64
    );
    println!(
        "  moderated:   {:.2} s, {:.2} tokens/s ({:.1} ms/token)",
        guarded,
        tokens as f64 / guarded,
        guarded * 1000.0 / tokens as f64
    );
    let each: Vec<String> = ratios.iter().map(|r| format!("{r:.3}")).collect();
    println!(
        "  ratio moderated / unmoderated: {ratio:.3} (median of the pairs' {}; budget 1.20)",
        each.join(", ")
    );
    println!(
        "  the screens on their own: input {:.0} ms ({} text(s)); the answer at {} sentence ends {:.0} ms through the window cache ({} windows run), {:.0} ms re-screening each whole answer so far ({whole_windows} windows)",
        input_screen * 1000.0,
        texts.len(),
        prefixes.len(),
        cached * 1000.0,
        cache.run,
        whole * 1000.0,
    );
    if let Some((tokens, kept, whole)) = alone {
        println!(
            "  the last message judged alone ({tokens} tokens with the default system turn): {:.0} ms from the kept system turn up to the probe's deepest block, {:.0} ms as a whole prefill",
            kept * 1000.0,
            whole * 1000.0
        );
    }
    Ok(())
}
