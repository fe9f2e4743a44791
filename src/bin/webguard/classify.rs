//! `classify`: toxicity scores and verdicts of texts, as a table or JSON lines.

use std::io::Write;
use std::path::Path;

use webguard::{Error, Result};

use crate::common::texts_or_stdin;
use crate::models::FilterArgs;

#[derive(clap::Args)]
pub struct ClassifyArgs {
    /// One JSON object per line instead of a table.
    #[arg(long)]
    json: bool,
    #[command(flatten)]
    filter: FilterArgs,
    /// Texts to classify.
    text: Vec<String>,
}

pub fn run(models: &Path, args: ClassifyArgs) -> Result<()> {
    let filter = args.filter.load(models)?;
    let texts = texts_or_stdin(args.text);
    let mut out = std::io::stdout().lock();
    // In chunks, so stdin streams of any length print as they go with bounded memory.
    for chunk in texts.chunks(256) {
        let refs: Vec<&str> = chunk.iter().map(String::as_str).collect();
        let verdicts = filter.classify_blocking(&refs)?;
        for (text, v) in chunk.iter().zip(verdicts) {
            let line = if args.json {
                let mut obj = serde_json::to_value(&v).unwrap_or_default();
                obj["text"] = serde_json::Value::String(text.clone());
                obj.to_string()
            } else {
                let scores: Vec<String> = filter
                    .labels()
                    .iter()
                    .map(|l| format!("{l}={:.3}", v.scores[l]))
                    .collect();
                let mut mark = if v.flagged {
                    format!("FLAGGED {}", v.labels.join("+"))
                } else {
                    "ok".into()
                };
                // The scores of a text in another language mean little (English heads).
                if let Some(language) = &v.other_language {
                    mark.push_str(&format!(" ({language})"));
                }
                format!("{mark:<28} {}  {text}", scores.join(" "))
            };
            writeln!(out, "{line}").map_err(|e| Error::io("stdout", e))?;
        }
    }
    Ok(())
}
