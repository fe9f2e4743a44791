//! The webguard command line: the library's code paths, natively, without a browser.
//!
//! One file per command, each a `clap::Args` struct beside the `run` that handles it (defaults
//! come from the library's `Default`s); `bench/` holds the benchmarks, `models.rs` how commands
//! load the models, `common.rs` what they share (reading files, memory, progress). This file
//! only parses and dispatches.

#[cfg(target_arch = "wasm32")]
fn main() {}

#[cfg(not(target_arch = "wasm32"))]
mod answer_probe;
#[cfg(not(target_arch = "wasm32"))]
mod answers;
#[cfg(not(target_arch = "wasm32"))]
mod backend;
#[cfg(not(target_arch = "wasm32"))]
mod bench;
#[cfg(not(target_arch = "wasm32"))]
mod chat;
#[cfg(not(target_arch = "wasm32"))]
mod classify;
#[cfg(not(target_arch = "wasm32"))]
mod common;
#[cfg(not(target_arch = "wasm32"))]
mod eval_filter;
#[cfg(not(target_arch = "wasm32"))]
mod guard;
#[cfg(not(target_arch = "wasm32"))]
mod info;
#[cfg(not(target_arch = "wasm32"))]
mod models;
#[cfg(not(target_arch = "wasm32"))]
mod quantize_filter;
#[cfg(not(target_arch = "wasm32"))]
mod tokenize;
#[cfg(not(target_arch = "wasm32"))]
mod train_filter;
#[cfg(not(target_arch = "wasm32"))]
mod train_probe;
#[cfg(not(target_arch = "wasm32"))]
mod tune_chat;
#[cfg(not(target_arch = "wasm32"))]
mod tune_filter;

#[cfg(not(target_arch = "wasm32"))]
fn main() -> std::process::ExitCode {
    use clap::Parser;
    common::keep_freed_memory();
    let cli = Cli::parse();
    let models = cli.models.unwrap_or_else(webguard::models_dir);
    match cli.command.run(&models) {
        Ok(()) => std::process::ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("error: {e}");
            std::process::ExitCode::FAILURE
        }
    }
}

#[cfg(not(target_arch = "wasm32"))]
#[derive(clap::Parser)]
#[command(
    name = "webguard",
    version,
    about = "Private chat and moderation models, natively"
)]
struct Cli {
    /// Folder with the fetched models (default: $WEBGUARD_MODELS or ./models).
    #[arg(long, global = true)]
    models: Option<std::path::PathBuf>,
    #[command(subcommand)]
    command: Command,
}

#[cfg(not(target_arch = "wasm32"))]
#[derive(clap::Subcommand)]
enum Command {
    /// Print a GGUF file's metadata and tensor table.
    Info(info::InfoArgs),
    /// Print the token ids of each TEXT (or of each stdin line).
    Tokenize(tokenize::TokenizeArgs),
    /// Measure speed and memory (see `bench --help`).
    Bench(bench::BenchArgs),
    /// Answer PROMPT with SmolLM2-135M-Instruct, streaming to stdout.
    Chat(chat::ChatArgs),
    /// Score texts with the toxicity filter (each TEXT, or each stdin line).
    Classify(classify::ClassifyArgs),
    /// Teach the filter from labelled examples (JSONL: {"text", "label", "value"} per
    /// line; a new label gets its own head) and write the tuned heads (adapters).
    TuneFilter(tune_filter::TuneFilterArgs),
    /// Instruction-tune the chat model with LoRA from JSONL pairs ({"prompt", "response"}
    /// per line) and write the adapters (use them with `chat --adapters`).
    TuneChat(tune_chat::TuneChatArgs),
    /// Accuracy, precision, recall, macro-F1 and ROC-AUC of one filter label on labelled
    /// texts (one text per line; labels 0/1, one per line).
    EvalFilter(eval_filter::EvalFilterArgs),
    /// Write the filter encoder's 8-bit weights (what the browser downloads) from MiniLM's
    /// f32 model.safetensors; byte-deterministic.
    QuantizeFilter(quantize_filter::QuantizeFilterArgs),
    /// Train the filter's heads from the shared data (see ../shared/data/README.md) and
    /// write the heads file with its provenance and validation figures.
    TrainFilter(train_filter::TrainFilterArgs),
    /// Say which backend runs here and run a small computation on it.
    Backend(backend::BackendArgs),
    /// One moderated turn: screen PROMPT, answer it, screen the answer; print what the user
    /// sees and why.
    Guard(guard::GuardArgs),
    /// The moderated pipeline over a JSONL file of labelled prompts ({"id", "prompt",
    /// "label": "safe"|"unsafe", "type"?}): a line per prompt (--out) and a summary.
    EvalGuard(guard::EvalGuardArgs),
    /// Choose the thresholds answers are screened with from `eval-guard` outcomes of safe
    /// prompts (the validation split) and write them into the heads file.
    CalibrateAnswers(guard::CalibrateAnswersArgs),
    /// Write one split of the labelled safety requests as `eval-guard` input (stdout).
    SafetyPrompts(guard::SafetyPromptsArgs),
    /// Fit the chat model's harmful-request probe on the safety requests' training split and
    /// write it with its figures.
    TrainProbe(train_probe::TrainProbeArgs),
    /// The chat model's own unmoderated answers to a labelled prompts file (JSONL out,
    /// resumable): what the answer probe is trained and judged on.
    Answers(answers::AnswersArgs),
    /// Fit the chat model's answer probe on `answers` output (training split), choose its
    /// threshold on the validation split, and write it beside the request probe.
    TrainAnswerProbe(answer_probe::TrainAnswerProbeArgs),
    /// The guard's output side (filter, answer probe) over labelled answers: harmful answers
    /// caught, benign answers flagged.
    EvalAnswers(answer_probe::EvalAnswersArgs),
}

#[cfg(not(target_arch = "wasm32"))]
impl Command {
    fn run(self, models: &std::path::Path) -> webguard::Result<()> {
        match self {
            Command::Info(args) => info::run(models, args),
            Command::Tokenize(args) => tokenize::run(models, args),
            Command::Bench(args) => bench::run(models, args),
            Command::Chat(args) => chat::run(models, args),
            Command::Classify(args) => classify::run(models, args),
            Command::TuneFilter(args) => tune_filter::run(models, args),
            Command::TuneChat(args) => tune_chat::run(models, args),
            Command::EvalFilter(args) => eval_filter::run(models, args),
            Command::QuantizeFilter(args) => quantize_filter::run(models, args),
            Command::TrainFilter(args) => train_filter::run(models, args),
            Command::Backend(args) => backend::run(args),
            Command::Guard(args) => guard::run_guard(models, args),
            Command::EvalGuard(args) => guard::run_eval_guard(models, args),
            Command::SafetyPrompts(args) => guard::run_safety_prompts(args),
            Command::CalibrateAnswers(args) => guard::run_calibrate_answers(models, args),
            Command::TrainProbe(args) => train_probe::run(models, args),
            Command::Answers(args) => answers::run(models, args),
            Command::TrainAnswerProbe(args) => answer_probe::run_train(models, args),
            Command::EvalAnswers(args) => answer_probe::run_eval(models, args),
        }
    }
}
