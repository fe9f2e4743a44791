//! `eval-filter`: accuracy, precision, recall, macro-F1 and ROC-AUC of one label on labelled
//! texts.

use std::path::{Path, PathBuf};

use webguard::filter::dataset::parse_labels;
use webguard::filter::metrics::evaluate;
use webguard::{Error, Result};

use crate::common::{Progress, read};
use crate::models::FilterArgs;

#[derive(clap::Args)]
pub struct EvalFilterArgs {
    /// Texts, one per line.
    #[arg(long)]
    texts: PathBuf,
    /// 0/1 labels, one per line.
    #[arg(long)]
    labels: PathBuf,
    /// Which label the 0/1 labels are for.
    #[arg(long)]
    label: String,
    /// Print the figures as JSON.
    #[arg(long)]
    json: bool,
    #[command(flatten)]
    filter: FilterArgs,
}

pub fn run(models: &Path, args: EvalFilterArgs) -> Result<()> {
    let filter = args.filter.load(models)?;
    let (texts, labels, label) = (&args.texts, &args.labels, &args.label);
    let index = filter.label_index(label)?;
    let text = String::from_utf8(read(texts)?)
        .map_err(|_| Error::InvalidInput(format!("{}: not UTF-8", texts.display())))?;
    let lines: Vec<&str> = text.lines().collect();
    let y = parse_labels(
        &String::from_utf8_lossy(&read(labels)?),
        &labels.display().to_string(),
    )?;
    if lines.len() != y.len() {
        return Err(Error::InvalidInput(format!(
            "{} has {} lines but {} has {} labels",
            texts.display(),
            lines.len(),
            labels.display(),
            y.len()
        )));
    }
    let mut scores = Vec::with_capacity(lines.len());
    let mut bar = Progress::new(format!("scoring {label}"), lines.len());
    for chunk in lines.chunks(256) {
        for s in pollster::block_on(filter.scores(chunk))? {
            scores.push(s[index]);
        }
        bar.update(scores.len(), "texts");
    }
    let m = evaluate(&scores, &y, filter.thresholds()[index]);
    if args.json {
        println!("{}", serde_json::to_string(&m).unwrap_or_default());
    } else {
        println!(
            "{label} on {} ({} texts, {} positive), threshold {:.3}:",
            texts.display(),
            m.count,
            m.positives,
            m.threshold
        );
        println!("  accuracy  {:.4}", m.accuracy);
        println!("  precision {:.4}", m.precision);
        println!("  recall    {:.4}", m.recall);
        println!("  macro-F1  {:.4}", m.macro_f1);
        println!("  ROC-AUC   {:.4}", m.roc_auc);
    }
    Ok(())
}
