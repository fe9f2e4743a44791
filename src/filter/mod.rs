//! The toxicity filter: the MiniLM encoder, pooled features and one small trained head per label
//! (`offensive`, `hate`, `harmful`), turning texts into [`Verdict`]s.
//!
//! ```text
//! text -> WordPiece ids -> windows of <= 64 tokens (overlapping) -> encoder -> poolings
//!      -> heads -> sigmoid scores per window -> per label, the worst (highest) window
//!      -> flagged labels: score >= that label's threshold
//! ```
//! The thresholds come with the heads (chosen on validation data for the best macro-F1) and
//! can be overridden per label.

pub mod encoder;
pub mod features;
pub mod heads;
pub mod heads_file;
pub mod metrics;
pub mod routing;
#[cfg(feature = "tune")]
pub mod train;

#[cfg(not(target_arch = "wasm32"))]
pub mod dataset;
#[cfg(not(target_arch = "wasm32"))]
pub mod safety;

use std::collections::BTreeMap;

use burn::tensor::Device;
use serde::Serialize;

use crate::backend::{Backend, BackendChoice, BackendKind, read_f32};
use crate::error::{Error, Result};
use crate::models::bert::{Bert, BertConfig};
use crate::text::Tokenizer;
pub use encoder::{FilterOptions, TextEncoder};
use heads::{Heads, HeadsInfo};

/// The labels of the shipped heads, in order.
pub const LABELS: [&str; 3] = ["offensive", "hate", "harmful"];

/// The trained heads shipped with the crate (`assets/`), made by `webguard train-filter`.
pub const HEADS_FILE: &str = "filter-heads.safetensors";

/// What the filter says about one text.
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct Verdict {
    /// Score in [0, 1] per label (higher: more likely).
    pub scores: BTreeMap<String, f32>,
    /// The labels whose score reached their threshold, in label order.
    pub labels: Vec<String>,
    /// Whether any label was reached.
    pub flagged: bool,
    /// The language other than English the text is in ("French", see
    /// [`crate::text::language`]), whose scores mean little: the encoder and its heads learned
    /// English. `None` when it reads as English, or for scores given without their text.
    #[serde(rename = "otherLanguage")]
    pub other_language: Option<String>,
}

impl Verdict {
    /// The verdict for `scores` under per-label `thresholds` (all in `labels` order).
    pub fn new(labels: &[String], scores: &[f32], thresholds: &[f32]) -> Self {
        let flagged: Vec<String> = labels
            .iter()
            .zip(scores.iter().zip(thresholds))
            .filter(|(_, (s, t))| s >= t)
            .map(|(l, _)| l.clone())
            .collect();
        Verdict {
            scores: score_map(labels, scores),
            flagged: !flagged.is_empty(),
            labels: flagged,
            other_language: None,
        }
    }

    /// This verdict of `text`: says which other language it is in, if any.
    pub fn of_text(mut self, text: &str) -> Self {
        let language = crate::text::language::other_language(text);
        self.other_language = language.map(|l| l.name.to_string());
        self
    }
}

/// Where a label of the filter came from: see [`Filter::label_origins`].
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
#[serde(rename_all = "lowercase")]
pub enum LabelOrigin {
    /// The heads the filter was loaded with, unchanged.
    Shipped,
    /// Taught (tuned) in this filter: a new label, or a loaded one adjusted.
    Taught,
    /// From imported adapters: a new label, or a loaded one replaced (which needs
    /// `replace_shipped_labels`).
    Imported,
}

/// Scores keyed by label.
pub fn score_map(labels: &[String], scores: &[f32]) -> BTreeMap<String, f32> {
    labels.iter().cloned().zip(scores.iter().copied()).collect()
}

/// Scores of the windows a filter has judged, keyed by the windows' token ids: what
/// [`Filter::scores_cached`] reads before running the encoder. Only meaningful for the filter
/// that filled it, as it was then (a moderated turn keeps one per answer).
#[derive(Debug, Clone, Default)]
pub struct WindowScores {
    scores: std::collections::HashMap<Vec<u32>, Vec<f32>>,
    /// The label count the scores have (a change empties the cache).
    labels: Option<usize>,
    /// Windows judged through this cache, counting each call's windows.
    pub windows: usize,
    /// Of those, the windows the encoder ran (the others were read from the cache).
    pub run: usize,
}

/// The encoder and the heads, ready to classify.
pub struct Filter {
    encoder: TextEncoder,
    heads: Heads,
    info: HeadsInfo,
    thresholds: Vec<f32>,
    /// Per-label thresholds for the chat model's answers (0 where the file has none).
    answer_thresholds: Vec<f32>,
    /// Per-label thresholds for chat conversations (0 where the file has none).
    conversation_thresholds: Vec<f32>,
    /// The heads as loaded, before any tuning (`reset_tuning` goes back to them).
    base: Box<(Heads, HeadsInfo)>,
    /// Where each label came from, in label order.
    origins: Vec<LabelOrigin>,
    /// Which device encodes which batches.
    route: routing::BatchRoute,
}

impl std::fmt::Debug for Filter {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Filter")
            .field("labels", &self.info.labels)
            .field("thresholds", &self.thresholds)
            .field("features", &self.info.features.to_string())
            .field("options", self.encoder.options())
            .finish()
    }
}

impl Filter {
    /// Builds the filter from the encoder's `tokenizer.json`, `config.json` and
    /// `model.safetensors` bytes and a heads file.
    pub fn new(
        tokenizer_json: &[u8],
        config_json: &[u8],
        encoder_weights: &[u8],
        heads_file: &[u8],
        device: &Device,
    ) -> Result<Self> {
        let tokenizer = Tokenizer::from_tokenizer_json(tokenizer_json)?;
        let bert = load_encoder(config_json, encoder_weights, heads_file, device)?;
        let (heads, info) = Heads::load(heads_file, device)?;
        Self::from_parts(TextEncoder::new(tokenizer, bert, device), heads, info)
    }

    /// [`Filter::new`] on `backend`. With `auto` on a GPU ([`BackendChoice::Auto`]), the heads
    /// and the encoder load on the CPU, a second copy of the encoder on the GPU, and both
    /// devices are timed once ([`routing`]): batches from the size where the GPU is faster run
    /// there, smaller ones on the CPU, and the GPU copy is dropped when it is faster nowhere
    /// (or fails while measured: the reason says so). [`Filter::route`] tells what was chosen.
    pub async fn for_backend(
        tokenizer_json: &[u8],
        config_json: &[u8],
        encoder_weights: &[u8],
        heads_file: &[u8],
        backend: &Backend,
    ) -> Result<Self> {
        let routed = backend.kind == BackendKind::Wgpu && backend.requested == BackendChoice::Auto;
        let cpu = Backend::cpu(None).device;
        let own = if routed { &cpu } else { &backend.device };
        let mut filter = Self::new(
            tokenizer_json,
            config_json,
            encoder_weights,
            heads_file,
            own,
        )?;
        if !routed {
            let why = match (&backend.fallback_reason, backend.requested) {
                (Some(reason), _) => reason.clone(),
                (None, BackendChoice::Gpu) => "the GPU requested".into(),
                (None, _) => "one device".into(),
            };
            filter.route = routing::BatchRoute::single(backend.kind, &why);
            return Ok(filter);
        }
        let gpu = load_encoder(config_json, encoder_weights, heads_file, &backend.device)?;
        let window = filter.encoder.sample_window()?;
        let measured = routing::measure(
            &filter.info.features,
            routing::Timed {
                bert: filter.encoder.bert(),
                device: &cpu,
            },
            routing::Timed {
                bert: &gpu,
                device: &backend.device,
            },
            &window,
        )
        .await;
        let max_batch = filter.encoder.options().batch_size;
        let route = match measured {
            Ok(m) => routing::BatchRoute::from_measurement(m, max_batch),
            Err(e) => routing::BatchRoute {
                gpu_from_batch: None,
                reason: format!(
                    "the GPU failed while measured at load ({e}): every batch on the CPU"
                ),
                measured: None,
            },
        };
        filter.route_to_gpu(gpu, &backend.device, route)?;
        Ok(filter)
    }

    /// Sends batches of at least `route.gpu_from_batch` windows to `gpu_encoder` on `device`
    /// (this filter's encoder loaded there: [`load_encoder`]) and keeps `route` as what
    /// [`Filter::route`] says; with no such batch size the copy is dropped.
    pub fn route_to_gpu(
        &mut self,
        gpu_encoder: Bert,
        device: &Device,
        route: routing::BatchRoute,
    ) -> Result<()> {
        self.encoder
            .route_to_gpu(gpu_encoder, device, route.gpu_from_batch)?;
        self.route = route;
        Ok(())
    }

    /// Assembles a filter from loaded parts, checking that they fit together.
    pub fn from_parts(encoder: TextEncoder, heads: Heads, info: HeadsInfo) -> Result<Self> {
        info.features.check(encoder.bert())?;
        if heads.label_count() != info.labels.len() {
            return Err(Error::ModelFile(
                "heads and label names differ in number".into(),
            ));
        }
        let answer_thresholds = info
            .answer_thresholds()?
            .unwrap_or_else(|| vec![0.0; info.labels.len()]);
        let conversation_thresholds = info
            .conversation_thresholds()?
            .unwrap_or_else(|| vec![0.0; info.labels.len()]);
        let kind = if *encoder.device() == Device::flex() {
            BackendKind::Cpu
        } else {
            BackendKind::Wgpu
        };
        Ok(Filter {
            route: routing::BatchRoute::single(kind, "one device"),
            encoder,
            origins: vec![LabelOrigin::Shipped; info.labels.len()],
            base: Box::new((heads.clone(), info.clone())),
            heads,
            thresholds: info.thresholds.clone(),
            answer_thresholds,
            conversation_thresholds,
            info,
        })
    }

    /// Loads the encoder from `models_dir` (as `scripts/fetch-models.sh` lays it out) and the
    /// heads from `heads_path`.
    #[cfg(not(target_arch = "wasm32"))]
    pub fn load(
        models_dir: &std::path::Path,
        heads_path: &std::path::Path,
        device: &Device,
    ) -> Result<Self> {
        let [tokenizer, config, weights, heads] = read_files(models_dir, heads_path)?;
        Self::new(&tokenizer, &config, &weights, &heads, device)
    }

    /// [`Filter::load`] on `backend`, routed as [`Filter::for_backend`] says.
    #[cfg(not(target_arch = "wasm32"))]
    pub async fn load_for(
        models_dir: &std::path::Path,
        heads_path: &std::path::Path,
        backend: &Backend,
    ) -> Result<Self> {
        let [tokenizer, config, weights, heads] = read_files(models_dir, heads_path)?;
        Self::for_backend(&tokenizer, &config, &weights, &heads, backend).await
    }

    /// Which device encodes which batches, and why: measured at load with `auto` on a GPU
    /// ([`Filter::for_backend`]), otherwise the one device the filter was loaded on.
    pub fn route(&self) -> &routing::BatchRoute {
        &self.route
    }

    /// Where the shipped heads file is in a source checkout.
    #[cfg(not(target_arch = "wasm32"))]
    pub fn default_heads_path() -> std::path::PathBuf {
        crate::source_checkout().join("assets").join(HEADS_FILE)
    }

    /// Label names, in score order.
    pub fn labels(&self) -> &[String] {
        &self.info.labels
    }

    /// The heads file's description (features, provenance, trained thresholds).
    pub fn info(&self) -> &HeadsInfo {
        &self.info
    }

    /// Current per-label thresholds, in label order.
    pub fn thresholds(&self) -> &[f32] {
        &self.thresholds
    }

    /// Per-label floors for screening the chat model's answers, in label order (0 for labels
    /// the heads file has none for, e.g. labels taught in the page): see
    /// [`heads::HeadsInfo::answer_thresholds`].
    pub fn answer_thresholds(&self) -> Vec<f32> {
        (0..self.info.labels.len())
            .map(|i| self.answer_thresholds.get(i).copied().unwrap_or(0.0))
            .collect()
    }

    /// Per-label floors for screening chat conversations, in label order (0 for labels the
    /// heads file has none for): see [`heads::HeadsInfo::conversation_thresholds`].
    pub fn conversation_thresholds(&self) -> Vec<f32> {
        (0..self.info.labels.len())
            .map(|i| self.conversation_thresholds.get(i).copied().unwrap_or(0.0))
            .collect()
    }

    /// Overrides one label's threshold (a score at or above it flags the text).
    pub fn set_threshold(&mut self, label: &str, threshold: f32) -> Result<()> {
        let i = self.check_threshold(label, threshold)?;
        self.thresholds[i] = threshold;
        Ok(())
    }

    /// Checks that `label` exists and `threshold` is within 0 to 1; returns the label's index.
    pub fn check_threshold(&self, label: &str, threshold: f32) -> Result<usize> {
        if !(0.0..=1.0).contains(&threshold) {
            return Err(Error::InvalidInput(format!(
                "threshold for {label:?} is {threshold}; it must be within 0 to 1"
            )));
        }
        self.label_index(label)
    }

    /// Position of `label` among the labels.
    pub fn label_index(&self, label: &str) -> Result<usize> {
        self.info
            .labels
            .iter()
            .position(|l| l == label)
            .ok_or_else(|| {
                Error::InvalidInput(format!(
                    "unknown label {label:?}; this filter has {}",
                    self.info.labels.join(", ")
                ))
            })
    }

    /// The heads in use.
    pub fn heads(&self) -> &Heads {
        &self.heads
    }

    /// The heads and their description as loaded, before any tuning.
    pub fn base_heads(&self) -> (&Heads, &HeadsInfo) {
        (&self.base.0, &self.base.1)
    }

    /// Where each label came from (`shipped`, `taught` or `imported`), in label order: what a
    /// policy shows next to each rule, so that a page can tell the labels it loaded from
    /// those added or changed since.
    pub fn label_origins(&self) -> Vec<(String, LabelOrigin)> {
        self.info
            .labels
            .iter()
            .cloned()
            .zip(self.origins.iter().copied())
            .collect()
    }

    /// The labels the filter was loaded with (its shipped heads), in order.
    pub fn shipped_labels(&self) -> &[String] {
        &self.base.1.labels
    }

    /// Puts tuned (or reset) heads in place, with their labels, thresholds and each label's
    /// origin. The caller checked that they fit this filter's features.
    pub(crate) fn install_heads(
        &mut self,
        heads: Heads,
        info: HeadsInfo,
        origins: Vec<LabelOrigin>,
    ) {
        debug_assert_eq!(origins.len(), info.labels.len());
        self.thresholds = info.thresholds.clone();
        self.heads = heads;
        self.info = info;
        self.origins = origins;
    }

    /// Limits and batching in use.
    pub fn options(&self) -> &FilterOptions {
        self.encoder.options()
    }

    /// Changes limits and batching.
    pub fn set_options(&mut self, options: FilterOptions) -> Result<()> {
        self.encoder.set_options(options)
    }

    /// The text encoder (tokenizer, MiniLM, windows).
    pub fn encoder(&self) -> &TextEncoder {
        &self.encoder
    }

    /// The device the filter runs on.
    pub fn device(&self) -> &Device {
        self.encoder.device()
    }

    /// Scores `[text][label]` in [0, 1]: each label's highest score over the text's windows.
    pub async fn scores(&self, texts: &[&str]) -> Result<Vec<Vec<f32>>> {
        self.scores_with(texts, None).await
    }

    /// [`Filter::scores`], reusing the scores of windows already judged through `cache` and
    /// adding those it runs: screening a growing text (a streaming answer, judged whole at
    /// every sentence end) then runs only the windows that changed, the last one and any new
    /// ones, instead of the whole text again. The same windows are judged either way, so the
    /// scores are the same (up to the rounding of being batched with other windows).
    pub async fn scores_cached(
        &self,
        texts: &[&str],
        cache: &mut WindowScores,
    ) -> Result<Vec<Vec<f32>>> {
        self.scores_with(texts, Some(cache)).await
    }

    async fn scores_with(
        &self,
        texts: &[&str],
        cache: Option<&mut WindowScores>,
    ) -> Result<Vec<Vec<f32>>> {
        let labels = self.info.labels.len();
        let mut scores = vec![vec![0.0f32; labels]; texts.len()];
        if texts.is_empty() {
            return Ok(scores);
        }
        let windows = self.encoder.windows(texts)?;
        let merge = |best: &mut Vec<f32>, row: &[f32]| {
            for (b, &s) in best.iter_mut().zip(row) {
                *b = b.max(s);
            }
        };
        let Some(cache) = cache else {
            let rows: Vec<&[u32]> = windows.iter().map(|(_, w)| w.as_slice()).collect();
            let values = self.window_scores(&rows).await?;
            for ((text, _), row) in windows.iter().zip(values.chunks_exact(labels)) {
                merge(&mut scores[*text], row);
            }
            return Ok(scores);
        };
        if cache.labels != Some(labels) {
            cache.scores.clear();
            cache.labels = Some(labels);
        }
        // Each window not judged yet, once (still shortest first).
        let mut seen = std::collections::HashSet::new();
        let rows: Vec<&[u32]> = windows
            .iter()
            .map(|(_, w)| w.as_slice())
            .filter(|w| !cache.scores.contains_key(*w) && seen.insert(*w))
            .collect();
        let values = self.window_scores(&rows).await?;
        cache.windows += windows.len();
        cache.run += rows.len();
        for (w, row) in rows.iter().zip(values.chunks_exact(labels)) {
            cache.scores.insert(w.to_vec(), row.to_vec());
        }
        for (text, w) in &windows {
            merge(&mut scores[*text], &cache.scores[w]);
        }
        Ok(scores)
    }

    /// Every label's score of each window, `[window][label]` flattened, in batches.
    async fn window_scores(&self, rows: &[&[u32]]) -> Result<Vec<f32>> {
        let mut out = Vec::with_capacity(rows.len() * self.info.labels.len());
        for chunk in rows.chunks(self.encoder.options().batch_size) {
            let features = self
                .encoder
                .batch_features(&self.info.features, chunk)
                .await?;
            let values = read_f32(self.heads.scores(features)).await?;
            if let Some(s) = values.iter().find(|s| !s.is_finite()) {
                return Err(Error::Backend(format!(
                    "the filter produced a non-finite score ({s}); the device may be lost"
                )));
            }
            out.extend(values);
        }
        Ok(out)
    }

    /// One [`Verdict`] per text, in order, each saying which other language its text is in, if
    /// any. Empty texts are scored too (as `[CLS] [SEP]`); texts longer than `max_text_bytes`
    /// are an error and nothing is scored.
    pub async fn classify(&self, texts: &[&str]) -> Result<Vec<Verdict>> {
        let scores = self.scores(texts).await?;
        let verdicts = scores.iter().zip(texts);
        Ok(verdicts.map(|(s, t)| self.verdict(s).of_text(t)).collect())
    }

    /// [`Filter::classify`], blocking until done (native only).
    #[cfg(not(target_arch = "wasm32"))]
    pub fn classify_blocking(&self, texts: &[&str]) -> Result<Vec<Verdict>> {
        pollster::block_on(self.classify(texts))
    }

    /// The verdict for one text's scores under the current thresholds.
    pub fn verdict(&self, scores: &[f32]) -> Verdict {
        self.verdict_with(scores, &self.thresholds)
    }

    /// The verdict for one text's scores under the given per-label thresholds.
    pub fn verdict_with(&self, scores: &[f32], thresholds: &[f32]) -> Verdict {
        Verdict::new(&self.info.labels, scores, thresholds)
    }
}

/// MiniLM's `tokenizer.json`, `config.json` and `model.safetensors` from `models_dir` (as
/// `scripts/fetch-models.sh` lays it out) and the heads file.
#[cfg(not(target_arch = "wasm32"))]
fn read_files(models_dir: &std::path::Path, heads_path: &std::path::Path) -> Result<[Vec<u8>; 4]> {
    let dir = models_dir.join(crate::MINILM_DIR);
    let read = |p: &std::path::Path| std::fs::read(p).map_err(|e| Error::io(p, e));
    Ok([
        read(&dir.join("tokenizer.json"))?,
        read(&dir.join("config.json"))?,
        read(&dir.join("model.safetensors"))?,
        read(heads_path)?,
    ])
}

/// MiniLM from its `config.json` and weights on `device`, with the encoder adapters a heads
/// file may carry merged in: the encoder [`Filter::new`] builds.
pub fn load_encoder(
    config_json: &[u8],
    encoder_weights: &[u8],
    heads_file: &[u8],
    device: &Device,
) -> Result<Bert> {
    let config = BertConfig::from_json(config_json)?;
    let mut bert = Bert::load(&config, encoder_weights, device)?;
    for ad in Heads::load_adapters(heads_file, device)? {
        bert.merge_lora(&ad.name, ad.a, ad.b, ad.scale)?;
    }
    Ok(bert)
}
