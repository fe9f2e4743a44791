//! `info`: a GGUF file's metadata and tensor table.

use std::path::{Path, PathBuf};

use webguard::weights::{Gguf, Value};
use webguard::{Result, SMOLLM2_GGUF};

use crate::common::read;

#[derive(clap::Args)]
pub struct InfoArgs {
    /// GGUF file (default: the SmolLM2 model).
    file: Option<PathBuf>,
    /// Also list every tensor.
    #[arg(long)]
    tensors: bool,
}

pub fn run(models: &Path, args: InfoArgs) -> Result<()> {
    let path = args.file.unwrap_or_else(|| models.join(SMOLLM2_GGUF));
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
    if args.tensors {
        for t in &gguf.tensors {
            println!("  {} {} {:?} @{}", t.name, t.ggml_type, t.shape(), t.offset);
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
        Value::Array(items) if items.len() > 8 => {
            let head: Vec<String> = items.iter().take(4).map(|v| show(&v)).collect();
            format!(
                "[{}, ...] ({} × {})",
                head.join(", "),
                items.len(),
                items.element_type().name()
            )
        }
        Value::Array(items) => {
            format!(
                "[{}]",
                items
                    .iter()
                    .map(|v| show(&v))
                    .collect::<Vec<_>>()
                    .join(", ")
            )
        }
        Value::String(s) => format!("{s:?}"),
        other => format!("{other:?}"),
    }
}
