//! `tokenize`: the token ids of texts, with either model's tokenizer.

use std::path::Path;

use clap::ValueEnum;
use webguard::text::Tokenizer;
use webguard::weights::Gguf;
use webguard::{MINILM_DIR, Result, SMOLLM2_GGUF};

use crate::common::{read, texts_or_stdin};

#[derive(clap::Args)]
pub struct TokenizeArgs {
    /// Which model's tokenizer.
    #[arg(long, value_enum, default_value = "smollm2")]
    model: ModelName,
    /// Texts to tokenize.
    text: Vec<String>,
}

#[derive(Clone, Copy, ValueEnum)]
enum ModelName {
    Smollm2,
    Minilm,
}

pub fn run(models: &Path, args: TokenizeArgs) -> Result<()> {
    let tokenizer = match args.model {
        ModelName::Smollm2 => {
            let bytes = read(&models.join(SMOLLM2_GGUF))?;
            Tokenizer::from_gguf(&Gguf::parse(&bytes)?)?
        }
        ModelName::Minilm => {
            Tokenizer::from_tokenizer_json(&read(&models.join(MINILM_DIR).join("tokenizer.json"))?)?
        }
    };
    for t in texts_or_stdin(args.text) {
        println!("{:?}", tokenizer.encode(&t)?);
    }
    Ok(())
}
