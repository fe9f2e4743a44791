//! The webguard command line: the library's code paths, natively, without a browser.

#[cfg(target_arch = "wasm32")]
fn main() {}

#[cfg(not(target_arch = "wasm32"))]
fn main() -> std::process::ExitCode {
    match cli::run() {
        Ok(()) => std::process::ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("error: {e}");
            std::process::ExitCode::FAILURE
        }
    }
}

#[cfg(not(target_arch = "wasm32"))]
mod cli {
    use std::path::{Path, PathBuf};

    use clap::{Parser, Subcommand, ValueEnum};
    use webguard::backend::{Backend, BackendChoice, probe_computation};
    use webguard::text::Tokenizer;
    use webguard::weights::{Gguf, Value};
    use webguard::{Error, MINILM_DIR, Result, SMOLLM2_GGUF};

    #[derive(Parser)]
    #[command(
        name = "webguard",
        version,
        about = "Private chat and moderation models, natively"
    )]
    struct Cli {
        /// Folder with the fetched models (default: $WEBGUARD_MODELS or ./models).
        #[arg(long, global = true)]
        models: Option<PathBuf>,
        #[command(subcommand)]
        command: Command,
    }

    #[derive(Subcommand)]
    enum Command {
        /// Print a GGUF file's metadata and tensor table.
        Info {
            /// GGUF file (default: the SmolLM2 model).
            file: Option<PathBuf>,
            /// Also list every tensor.
            #[arg(long)]
            tensors: bool,
        },
        /// Print the token ids of each TEXT (or of each stdin line).
        Tokenize {
            /// Which model's tokenizer.
            #[arg(long, value_enum, default_value = "smollm2")]
            model: ModelName,
            /// Texts to tokenize.
            text: Vec<String>,
        },
        /// Say which backend runs here and run a small computation on it.
        Backend {
            /// auto, gpu (webgpu/vulkan) or cpu.
            #[arg(long, default_value = "auto")]
            backend: String,
        },
    }

    #[derive(Clone, Copy, ValueEnum)]
    enum ModelName {
        Smollm2,
        Minilm,
    }

    fn read(path: &Path) -> Result<Vec<u8>> {
        std::fs::read(path).map_err(|e| Error::io(path, e))
    }

    pub fn run() -> Result<()> {
        let cli = Cli::parse();
        let models = cli.models.unwrap_or_else(webguard::models_dir);
        match cli.command {
            Command::Info { file, tensors } => {
                let path = file.unwrap_or_else(|| models.join(SMOLLM2_GGUF));
                let bytes = read(&path)?;
                let gguf = Gguf::parse(&bytes)?;
                println!(
                    "GGUF v{}, {} metadata keys, {} tensors, alignment {}, data at byte {}",
                    gguf.version,
                    gguf.metadata.len(),
                    gguf.tensors.len(),
                    gguf.alignment,
                    gguf.data_offset
                );
                for (key, value) in &gguf.metadata {
                    println!("  {key} = {}", show(value));
                }
                if tensors {
                    for t in &gguf.tensors {
                        println!("  {} {} {:?} @{}", t.name, t.ggml_type, t.shape(), t.offset);
                    }
                }
            }
            Command::Tokenize { model, text } => {
                let tokenizer = match model {
                    ModelName::Smollm2 => {
                        let bytes = read(&models.join(SMOLLM2_GGUF))?;
                        Tokenizer::from_gguf(&Gguf::parse(&bytes)?)?
                    }
                    ModelName::Minilm => Tokenizer::from_tokenizer_json(&read(
                        &models.join(MINILM_DIR).join("tokenizer.json"),
                    )?)?,
                };
                let texts: Vec<String> = if text.is_empty() {
                    std::io::stdin()
                        .lines()
                        .map_while(std::io::Result::ok)
                        .collect()
                } else {
                    text
                };
                for t in texts {
                    println!("{:?}", tokenizer.encode(&t)?);
                }
            }
            Command::Backend { backend } => {
                let choice: BackendChoice = backend.parse()?;
                let backend = Backend::init_blocking(choice)?;
                println!("backend: {backend}");
                let check = pollster::block_on(probe_computation(&backend.device))?;
                println!("check: {check:?}");
            }
        }
        Ok(())
    }

    /// A metadata value for people: long arrays are summarised.
    fn show(value: &Value) -> String {
        match value {
            Value::String(s) if s.len() > 80 => format!(
                "{:?}... ({} bytes)",
                &s[..s.floor_char_boundary(80)],
                s.len()
            ),
            Value::Array(ty, items) if items.len() > 8 => {
                let head: Vec<String> = items.iter().take(4).map(show).collect();
                format!(
                    "[{}, ...] ({} × {})",
                    head.join(", "),
                    items.len(),
                    ty.name()
                )
            }
            Value::Array(_, items) => {
                format!(
                    "[{}]",
                    items.iter().map(show).collect::<Vec<_>>().join(", ")
                )
            }
            Value::String(s) => format!("{s:?}"),
            other => format!("{other:?}"),
        }
    }
}
