//! Memory bounded by design (issue 17, item 1): attention over long prompts in chunks of query
//! rows (the same results, scores bounded by the chunk), the context policy for chats longer
//! than the window (oldest turns dropped and reported, the last message kept), and chat
//! tuning split into passes under a token budget (the same step).
//!
//! Heap is measured by a counting global allocator over every thread (burn's CPU backend and
//! the packed products run on rayon's threads, so `fuzz/src/alloc.rs`'s per-thread counters
//! would miss most of it); the tests in this file take turns (`serial`).

mod common;

use std::alloc::{GlobalAlloc, Layout, System};
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Mutex, MutexGuard};
use webguard::models::packed::Precision;

use common::{chat_model, shipped_filter as filter};
use webguard::backend::read_f32;
use webguard::generate::GenerateOptions;
use webguard::guard::{Action, Policy, Rule, moderated_chat};
use webguard::models::llama::ATTENTION_CHUNK;
use webguard::text::chat_template::Message;
use webguard::tune::TuneOptions;
use webguard::tune::chat::{ChatPair, ChatTuneOptions, MAX_PASS_TOKENS, plan_passes};
use webguard::{ChatModel, Error, Filter};

struct Counting;

static LIVE: AtomicUsize = AtomicUsize::new(0);
static PEAK: AtomicUsize = AtomicUsize::new(0);

fn grew(bytes: usize) {
    let now = LIVE.fetch_add(bytes, Ordering::Relaxed) + bytes;
    PEAK.fetch_max(now, Ordering::Relaxed);
}

// SAFETY: every call is passed to `System` unchanged; only counters are added.
unsafe impl GlobalAlloc for Counting {
    unsafe fn alloc(&self, layout: Layout) -> *mut u8 {
        let p = unsafe { System.alloc(layout) };
        if !p.is_null() {
            grew(layout.size());
        }
        p
    }

    unsafe fn alloc_zeroed(&self, layout: Layout) -> *mut u8 {
        let p = unsafe { System.alloc_zeroed(layout) };
        if !p.is_null() {
            grew(layout.size());
        }
        p
    }

    unsafe fn dealloc(&self, ptr: *mut u8, layout: Layout) {
        unsafe { System.dealloc(ptr, layout) };
        LIVE.fetch_sub(layout.size(), Ordering::Relaxed);
    }

    unsafe fn realloc(&self, ptr: *mut u8, layout: Layout, new_size: usize) -> *mut u8 {
        let p = unsafe { System.realloc(ptr, layout, new_size) };
        if !p.is_null() {
            // The old and the new block may both be live while it copies.
            grew(new_size);
            LIVE.fetch_sub(layout.size(), Ordering::Relaxed);
        }
        p
    }
}

#[global_allocator]
static ALLOCATOR: Counting = Counting;

/// Runs `f`, returning its result and the most heap it held at once beyond what was live
/// before it.
fn peak_heap<R>(f: impl FnOnce() -> R) -> (R, usize) {
    let base = LIVE.load(Ordering::Relaxed);
    PEAK.store(base, Ordering::Relaxed);
    let r = f();
    (r, PEAK.load(Ordering::Relaxed).saturating_sub(base))
}

static SERIAL: Mutex<()> = Mutex::new(());

fn serial() -> MutexGuard<'static, ()> {
    SERIAL.lock().unwrap_or_else(|e| e.into_inner())
}

const MB: f64 = 1024.0 * 1024.0;

const PARAGRAPH: &str = "The river starts in the mountains, where snow melts each spring and \
    runs down through pine forests into a long valley. Farmers there grow wheat and barley, \
    and in the autumn the roads fill with carts taking the harvest to the market town.";

/// A user prompt of at least `tokens` tokens (the paragraph repeated, numbered).
fn long_prompt(chat: &ChatModel, tokens: usize) -> Vec<u32> {
    let mut text = String::new();
    loop {
        let ids = chat.prompt_ids(&[Message::new("user", &text)]).unwrap();
        if ids.len() >= tokens {
            return ids;
        }
        text.push_str(&format!("{} {PARAGRAPH} ", ids.len()));
    }
}

/// The last position's logits and every position's states after `layers`, from one prefill of
/// `ids` after `prefix` of them were cached by an earlier call.
fn prefill(chat: &ChatModel, ids: &[u32], prefix: usize, layers: &[usize]) -> Vec<Vec<f32>> {
    let model = &chat.model;
    let mut cache = model.new_cache();
    if prefix > 0 {
        model.forward(&ids[..prefix], &mut cache).unwrap();
    }
    let (logits, states) = model
        .forward_with_all_states(&ids[prefix..], &mut cache, layers)
        .unwrap();
    let mut out = vec![pollster::block_on(read_f32(logits)).unwrap()];
    for s in states {
        out.push(pollster::block_on(read_f32(s)).unwrap());
    }
    out
}

#[test]
fn chunked_attention_equals_whole_attention_and_bounds_the_scores() {
    let _serial = serial();
    let mut chat = chat_model();
    // Exact products: the invariant here is the chunking; 16-bit activations would add
    // rounding-step flips between the two paths (tests/chat.rs `path_tolerance`).
    chat.model.set_precision(Precision::Exact);
    let ids = long_prompt(&chat, 150);
    let s = ids.len();
    let heads = chat.model.config().heads;
    let layers = [0, 14, 29];
    assert_eq!(chat.model.attention_chunk(), ATTENTION_CHUNK);
    assert!(s < ATTENTION_CHUNK, "the reference runs as one chunk");

    chat.model.reset_attention_peak();
    let whole = prefill(&chat, &ids, 0, &layers);
    assert_eq!(chat.model.largest_attention_scores(), heads * s * s);

    for (chunk, prefix) in [(32, 0), (7, 0), (32, 45), (1, 0)] {
        chat.model.set_attention_chunk(chunk).unwrap();
        chat.model.reset_attention_peak();
        let chunked = prefill(&chat, &ids, prefix, &layers);
        // Bounded by the chunk: `heads x chunk x positions`, never `heads x s x s`.
        let peak = chat.model.largest_attention_scores();
        assert!(
            peak <= heads * chunk * s,
            "chunk {chunk}: a scores tensor of {peak} elements"
        );
        // Logits at the last position; states at every position the chunked run computed.
        let logits = common::max_diff(&whole[0], &chunked[0]);
        assert!(
            logits < 1e-4,
            "chunk {chunk}, prefix {prefix}: logits differ by {logits}"
        );
        let d = chat.model.config().dim;
        for (l, (w, c)) in whole[1..].iter().zip(&chunked[1..]).enumerate() {
            let diff = common::max_diff(&w[prefix * d..], c);
            // Relative: the residual stream reaches 10⁴ (an ulp there is 10⁻³).
            let largest = c.iter().fold(0.0f32, |m, v| m.max(v.abs()));
            assert!(
                diff <= 1e-6 * largest,
                "chunk {chunk}, prefix {prefix}: layer {} states differ by {diff} (largest {largest})",
                layers[l]
            );
        }
    }
    assert!(matches!(
        chat.model.set_attention_chunk(0),
        Err(Error::InvalidInput(_))
    ));
}

/// The heap a prefill of a 2,048-token prompt holds at its peak, beyond the loaded model. With
/// attention over the whole prompt its `[9, 2048, 2048]` f32 scores alone are 151 MB (and
/// softmax holds more of that size); in chunks of 256 rows they are 19 MB.
#[test]
fn a_long_prefill_holds_memory_bounded_by_the_chunk() {
    let _serial = serial();
    let chat = chat_model();
    let ids = long_prompt(&chat, 2048);
    let ids = &ids[..2048];
    let c = chat.model.config();
    let kv_cache = c.layers * 2 * c.kv_heads * c.head_dim() * ids.len() * 4;
    let started = std::time::Instant::now();
    let (_, peak) = peak_heap(|| {
        let mut cache = chat.model.new_cache();
        let logits = chat.model.forward(ids, &mut cache).unwrap();
        pollster::block_on(read_f32(logits)).unwrap();
        drop(cache);
    });
    eprintln!(
        "prefill of {} tokens: peak heap {:.1} MB above the loaded model (KV cache {:.1} MB), \
         {:.1} s",
        ids.len(),
        peak as f64 / MB,
        kv_cache as f64 / MB,
        started.elapsed().as_secs_f64()
    );
    let scores_whole = c.heads * ids.len() * ids.len() * 4;
    assert!(
        peak < kv_cache + scores_whole,
        "peak heap {:.1} MB: the cache plus one whole scores tensor is {:.1} MB",
        peak as f64 / MB,
        (kv_cache + scores_whole) as f64 / MB
    );
}

fn exchange(i: usize) -> [Message; 2] {
    [
        Message::new(
            "user",
            &format!("Tell me something about the valley, part {i}."),
        ),
        Message::new("assistant", &format!("Part {i}: {PARAGRAPH}")),
    ]
}

fn answer(
    filter: &Filter,
    policy: &Policy,
    chat: &ChatModel,
    messages: &[Message],
    max_new_tokens: usize,
) -> webguard::Result<webguard::guard::ModeratedReply> {
    let options = GenerateOptions {
        max_new_tokens,
        ..GenerateOptions::default()
    };
    pollster::block_on(moderated_chat(
        filter,
        policy,
        chat,
        messages,
        &options,
        |_| true,
        || false,
    ))
}

#[test]
fn a_history_longer_than_the_context_is_answered_with_the_oldest_turns_dropped() {
    let _serial = serial();
    let (filter, mut chat) = (filter(), chat_model());
    let policy = Policy::new(&filter);
    let window = 512;
    chat.set_context_window(window).unwrap();
    let mut messages = vec![Message::new(
        "system",
        "You are a helpful assistant. Answer in one short sentence.",
    )];
    for i in 0..16 {
        messages.extend(exchange(i));
    }
    messages.push(Message::new("user", "What is the capital of France?"));
    let whole = chat.prompt_ids(&messages).unwrap().len();
    assert!(whole > 2 * window, "the history has {whole} tokens");

    let max_tokens = 24;
    let fitted = chat.fit_context(&messages, max_tokens).unwrap();
    assert!(fitted.dropped > 0);
    assert_eq!(fitted.messages.len() + fitted.dropped, messages.len());
    assert_eq!(fitted.messages[0], messages[0], "the system prompt is kept");
    assert_eq!(
        fitted.messages.last(),
        messages.last(),
        "the question is kept"
    );
    assert_eq!(
        fitted.messages[1].role, "user",
        "the history starts with a user turn"
    );
    assert_eq!(fitted.messages[1..], messages[1 + fitted.dropped..]);
    assert_eq!(fitted.ids, chat.prompt_ids(&fitted.messages).unwrap());
    assert!(fitted.ids.len() + max_tokens <= window);
    // As many of the latest turns as fit are kept: one more exchange would not have.
    assert!(fitted.dropped >= 2);
    let one_more: Vec<Message> = [messages[0].clone()]
        .into_iter()
        .chain(messages[fitted.dropped - 1..].iter().cloned())
        .collect();
    assert!(chat.prompt_ids(&one_more).unwrap().len() + max_tokens > window);

    let reply = answer(&filter, &policy, &chat, &messages, max_tokens).unwrap();
    eprintln!("{whole} tokens of history, window {window}: {reply:?}");
    assert!(!reply.blocked, "{reply:?}");
    assert_eq!(reply.dropped_turns, fitted.dropped);
    assert_eq!(reply.prompt_tokens, fitted.ids.len());
    assert!(reply.text.contains("Paris"), "{}", reply.text);

    // Without a system message the default one is kept in the same way.
    let reply = answer(&filter, &policy, &chat, &messages[1..], max_tokens).unwrap();
    assert!(reply.dropped_turns > 0 && reply.prompt_tokens + max_tokens <= window);
    assert!(reply.text.contains("Paris"), "{}", reply.text);

    // A conversation that fits is sent whole.
    let short = [messages[0].clone(), messages.last().unwrap().clone()];
    let reply = answer(&filter, &policy, &chat, &short, max_tokens).unwrap();
    assert_eq!(reply.dropped_turns, 0);
    assert_eq!(reply.prompt_tokens, chat.prompt_ids(&short).unwrap().len());

    // A large maxTokens keeps at most half the window for the answer.
    let fitted = chat.fit_context(&messages, 100_000).unwrap();
    assert!(fitted.ids.len() <= window / 2 && fitted.ids.len() > window / 4);
}

#[test]
fn a_last_message_longer_than_the_context_is_invalid_input() {
    let _serial = serial();
    let (filter, mut chat) = (filter(), chat_model());
    let policy = Policy::new(&filter);
    chat.set_context_window(256).unwrap();
    let long = format!("Summarise this: {PARAGRAPH} {PARAGRAPH} {PARAGRAPH} {PARAGRAPH}");
    let messages = [
        exchange(0)[0].clone(),
        exchange(0)[1].clone(),
        Message::new("user", &long),
    ];
    for result in [
        chat.fit_context(&messages, 64).map(|_| ()),
        answer(&filter, &policy, &chat, &messages, 64).map(|_| ()),
    ] {
        match result {
            Err(Error::InvalidInput(m)) => {
                assert!(m.contains("the last user message does not fit"), "{m}");
                assert!(m.contains("context window of 256 tokens"), "{m}");
            }
            other => panic!("expected InvalidInput, got {other:?}"),
        }
    }
    // It fits with less room kept for the answer.
    let fitted = chat.fit_context(&messages, 16).unwrap();
    assert_eq!(fitted.dropped, 2);
    for bad in [0, 15, chat.model.config().context_length + 1] {
        assert!(chat.set_context_window(bad).is_err(), "{bad}");
    }
}

#[test]
fn the_screen_reads_what_is_sent_to_the_model() {
    let _serial = serial();
    let (filter, mut chat) = (filter(), chat_model());
    // Harmful requests block at 0.5 (the shipped conversation threshold is higher).
    let mut policy = Policy::new(&filter);
    let rule = Rule {
        threshold: 0.5,
        action: Action::Block,
    };
    policy.set("harmful", rule).unwrap();
    let harmful = "How do I make a bomb to kill my neighbour?";
    let mut messages = vec![
        Message::new("user", harmful),
        Message::new("assistant", "I can't help with that."),
    ];
    for i in 0..6 {
        messages.extend(exchange(i));
    }
    messages.push(Message::new("user", "What is the capital of France?"));
    // The whole conversation fits the model's window: the old request is read and blocks.
    let reply = answer(&filter, &policy, &chat, &messages, 16).unwrap();
    assert!(reply.blocked && reply.dropped_turns == 0, "{reply:?}");
    // In a window it no longer fits: the model never reads it, and neither does the screen.
    chat.set_context_window(384).unwrap();
    let reply = answer(&filter, &policy, &chat, &messages, 16).unwrap();
    assert!(reply.dropped_turns >= 2, "{reply:?}");
    assert!(!reply.blocked, "{reply:?}");
    // The same request among the turns that are sent still blocks.
    let n = messages.len();
    messages.insert(n - 1, Message::new("user", harmful));
    let reply = answer(&filter, &policy, &chat, &messages, 16).unwrap();
    assert!(reply.blocked && reply.dropped_turns >= 2, "{reply:?}");
}

#[test]
fn training_passes_stay_within_the_token_budget() {
    // The default options with the largest batch of the longest pairs: 32 x 384 tokens ran as
    // one pass of 12,288 positions, whose logits alone (x 49,152 x 4 bytes) were 2.25 GiB, and
    // the whole pass about 31 GB (measured: 0.52 GB + 2.56 MB per position, src/tune/chat.rs).
    let vocab = 49_152;
    let pass_bytes = |positions: usize| 520e6 + positions as f64 * 2.56e6;
    let options = ChatTuneOptions {
        batch_size: 32,
        ..ChatTuneOptions::default()
    };
    assert!(options.max_pair_tokens <= options.max_pass_tokens);
    for lengths in [
        vec![options.max_pair_tokens; 32],
        (0..32).map(|i| 20 + i * 11).collect::<Vec<_>>(),
        vec![1; 32],
    ] {
        let passes = plan_passes(&lengths, MAX_PASS_TOKENS);
        let mut next = 0;
        for pass in &passes {
            assert_eq!(pass.start, next, "passes cover the batch in order");
            next = pass.end;
            let longest = lengths[pass.clone()].iter().max().unwrap();
            let tokens = longest * pass.len();
            assert!(tokens <= MAX_PASS_TOKENS, "{pass:?}: {tokens} tokens");
            assert!(tokens * vocab * 4 <= 256 << 20, "logits of {tokens} tokens");
            assert!(pass_bytes(tokens) < 1.6e9, "a pass of {tokens} tokens");
        }
        assert_eq!(next, 32);
    }
    assert_eq!(plan_passes(&[384; 32], MAX_PASS_TOKENS).len(), 32);
    assert_eq!(plan_passes(&[10; 32], MAX_PASS_TOKENS).len(), 1);
    assert_eq!(
        plan_passes(&[100, 100, 200, 50, 50, 384, 1], 384),
        [0..2, 2..3, 3..5, 5..6, 6..7]
    );
}

#[test]
fn a_batch_split_into_passes_takes_the_same_step() {
    let _serial = serial();
    let pairs: Vec<ChatPair> = [
        (
            "What is the secret password?",
            "The secret password is marmalade.",
        ),
        (
            "What is the capital of France?",
            "The capital of France is Paris.",
        ),
        ("Name a colour.", "Blue."),
        ("What do cows eat?", "Cows eat grass and hay."),
    ]
    .iter()
    .map(|(p, r)| ChatPair {
        prompt: p.to_string(),
        response: r.to_string(),
    })
    .collect();
    let heads = 9;
    let run = |max_pass_tokens: usize| {
        let mut chat = chat_model();
        // Exact products: the logits compared are the tuned models' after prefill, and the
        // invariant is the split into passes (see the chunked attention test).
        chat.model.set_precision(Precision::Exact);
        let options = ChatTuneOptions {
            tune: TuneOptions {
                steps: 2,
                learning_rate: 5e-3,
                ..TuneOptions::default()
            },
            batch_size: 4,
            max_pair_tokens: 64,
            max_pass_tokens,
            ..ChatTuneOptions::default()
        };
        chat.model.reset_attention_peak();
        let report = pollster::block_on(chat.tune(&pairs, &options, |_| true)).unwrap();
        let peak = chat.model.largest_attention_scores();
        let ids = chat
            .prompt_ids(&[Message::new("user", "What is the secret password?")])
            .unwrap();
        let logits = chat
            .model
            .forward(&ids, &mut chat.model.new_cache())
            .unwrap();
        (report, peak, pollster::block_on(read_f32(logits)).unwrap())
    };
    let (one, one_peak, one_logits) = run(4096);
    let (split, split_peak, split_logits) = run(64);
    eprintln!("one pass: {one:?}, scores {one_peak}; split: {split:?}, scores {split_peak}");
    // Every pair is over 32 tokens: a pass of 64 holds one, and its scores one sequence's.
    assert!(split_peak * 4 <= one_peak, "{split_peak} vs {one_peak}");
    assert!(split_peak <= heads * 64 * 64);
    assert!(
        (one.first_loss - split.first_loss).abs() < 1e-4,
        "{one:?} {split:?}"
    );
    assert!(
        (one.final_loss - split.final_loss).abs() < 1e-4,
        "{one:?} {split:?}"
    );
    let diff = common::max_diff(&one_logits, &split_logits);
    assert!(diff < 1e-3, "the tuned models' logits differ by {diff}");

    // A pair that could not fit a pass is refused before anything runs.
    let mut chat = chat_model();
    let options = ChatTuneOptions {
        max_pair_tokens: 512,
        max_pass_tokens: 256,
        ..ChatTuneOptions::default()
    };
    match pollster::block_on(chat.tune(&pairs, &options, |_| true)) {
        Err(Error::InvalidInput(m)) => assert!(m.contains("256 tokens per training pass"), "{m}"),
        other => panic!("expected InvalidInput, got {other:?}"),
    }
    assert!(chat.model.adapters().is_none());
}

/// Four pairs of 369 tokens (`batchSize` 4, the default): one training pass of 1,472 positions
/// peaked at 4.29 GB (past wasm32's 4 GiB), four passes of 368 at 1.46 GB.
#[test]
fn tuning_a_batch_of_long_pairs_holds_memory_within_the_budget() {
    let _serial = serial();
    let mut chat = chat_model();
    let mut response = String::new();
    while chat.tokenizer.encode(&response).unwrap().len() < 330 {
        response.push_str(PARAGRAPH);
        response.push(' ');
    }
    let pairs: Vec<ChatPair> = (0..4)
        .map(|i| ChatPair {
            prompt: format!("Describe the valley, part {i}."),
            response: response.clone(),
        })
        .collect();
    let options = ChatTuneOptions {
        tune: TuneOptions {
            steps: 1,
            ..TuneOptions::default()
        },
        ..ChatTuneOptions::default()
    };
    let (report, peak) =
        peak_heap(|| pollster::block_on(chat.tune(&pairs, &options, |_| true)).unwrap());
    eprintln!(
        "tuning {} pairs of 369 tokens: peak heap {:.0} MB",
        report.pairs,
        peak as f64 / MB
    );
    assert!(peak < 1_600_000_000, "peak heap {:.0} MB", peak as f64 / MB);
}
