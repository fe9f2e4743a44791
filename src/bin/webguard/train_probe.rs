//! `train-probe`: the chat model's harmful-request probe (`webguard::probe`), fitted on the
//! training split of the safety requests, its threshold chosen on the validation split and
//! its figures reported on the held-out split by kind. States are cached on disk, keyed by
//! everything they depend on, so trying other layers or penalties is quick.

use std::collections::{BTreeMap, HashMap};
use std::path::{Path, PathBuf};

use sha2::{Digest, Sha256};
use webguard::filter::safety::{
    Exchange, ExchangeList, Request, Split, context_for, exchanges, requests,
};
use webguard::models::probe::{ChatProbes, Pooling, ProbeTrainConfig, StateProbe};
use webguard::text::chat_template::Message;
use webguard::{ChatModel, Error, Result, SMOLLM2_GGUF};

use crate::common::{Progress, read};
use crate::guard::LabelledPrompt;
use crate::models::load_chat;

#[derive(clap::Args)]
pub struct TrainProbeArgs {
    /// The shared data folder.
    #[arg(long, default_value = concat!(env!("CARGO_MANIFEST_DIR"), "/../shared/data"))]
    data: PathBuf,
    /// Where to write the probe.
    #[arg(long, default_value = concat!(env!("CARGO_MANIFEST_DIR"), "/assets/chat-probe.safetensors"))]
    out: PathBuf,
    /// The blocks whose output the probe reads (comma-separated).
    #[arg(long, default_value = "6,10,14,18,22,26")]
    layers: String,
    /// Where it reads them: at the last prompt token (`last-token`), averaged over the last
    /// user message's text (`user-message`), or both (`both`: a pair of probes fitted apart,
    /// whose score is the mean of theirs; their states come from the other two's caches).
    /// Ignored with `--evaluate` (the file says).
    #[arg(long, default_value = "last-token", value_parser = parse_pooling)]
    pooling: Pooling,
    /// Hidden units of each network of the ensemble; 0 fits logistic regression instead.
    /// The shipped probe: 4 networks of 64 units, 50 epochs, `--l2 0.004` (chosen on the
    /// validation split: notes/issue-13-guard.md).
    #[arg(long, default_value_t = 64)]
    hidden: usize,
    /// Networks in the ensemble.
    #[arg(long, default_value_t = ProbeTrainConfig::default().members)]
    members: usize,
    /// Passes over the training rows per network.
    #[arg(long, default_value_t = ProbeTrainConfig::default().epochs)]
    epochs: usize,
    #[command(flatten)]
    fit: ProbeFitArgs,
    /// Seed of the split (the one `train-filter` uses).
    #[arg(long, default_value_t = webguard::filter::train::TrainConfig::default().seed)]
    seed: u64,
    /// Where states are cached between runs.
    #[arg(long)]
    cache: Option<PathBuf>,
    /// Fit on single-turn requests only (the requests after an exchange are still reported).
    #[arg(long)]
    single_turn_training: bool,
    /// Fit without the requests after an exchange of the varied list (they are still
    /// reported): the recipe before that list existed.
    #[arg(long)]
    without_varied_exchanges: bool,
    /// Fit nothing: report the figures of this probe file's request probe, at its own
    /// threshold, on the same examples (to compare a new probe with the shipped one).
    #[arg(long)]
    evaluate: Option<PathBuf>,
    /// With `--evaluate`: compute (and report) only these splits' states, e.g. `val` or
    /// `val,held-out` (the training split's states are the slow part of a first run).
    #[arg(long, value_delimiter = ',', requires = "evaluate")]
    splits: Vec<String>,
    /// Also report on these labelled prompts (`eval-guard --prompts` lines: a `prompt`, or
    /// `messages` judged as the guard does, the higher of the conversation's score and the last
    /// user message's alone), at the chosen threshold, by `type`: development sets of other
    /// authors, kept out of the training data. Their states are cached with the others.
    #[arg(long)]
    dev_prompts: Vec<PathBuf>,
    /// Write every validation and `--dev-prompts` example's score here (JSONL: set, kind,
    /// form, label, score under the guard's rule), to compare probes at other thresholds. The
    /// held-out split is left out, so choosing from this file cannot read it.
    #[arg(long)]
    scores_out: Option<PathBuf>,
    /// The score from which the safety adapters answer a conversation the probe lets
    /// through, stored in the probe file (default: 0.056 below the threshold).
    #[arg(long, value_parser = parse_score)]
    safety_adapters_from: Option<f32>,
}

/// How far below the threshold the safety adapters' zone starts by default. Measured once,
/// in the sixth session (notes/issue-13-guard.md: whole-pipeline runs over the validation
/// split with the zone's floor from 0.1 to 0.6): the adapters' refusals gained the same from
/// every floor of 0.3 up, and the highest, 0.6 (0.058 below that probe's threshold of 0.658),
/// lets the fewest safe conversations run them. The eighteenth session's refit kept the
/// distance (0.45 below 0.506); choosing it again means generating with the adapters
/// (`eval-guard --safety-adapters-from`).
pub const SAFETY_ADAPTERS_MARGIN: f32 = 0.056;

/// How a probe is fitted and its threshold chosen (shared with `train-answer-probe`).
#[derive(clap::Args)]
pub struct ProbeFitArgs {
    /// Gradient steps (logistic regression).
    #[arg(long, default_value_t = ProbeTrainConfig::default().steps)]
    steps: usize,
    /// L2 penalty (default: 0.004 for an ensemble, 0.001 for logistic regression).
    #[arg(long)]
    l2: Option<f32>,
    /// Most false positives allowed on the validation split's safe examples when choosing the
    /// threshold.
    #[arg(long, default_value_t = 0.02)]
    max_false_positives: f64,
    /// Write this threshold instead of the one `--max-false-positives` gives (a choice made
    /// on more than the validation split, such as development sets of other authors; the
    /// notes say why).
    #[arg(long, conflicts_with = "max_false_positives", value_parser = parse_score)]
    threshold: Option<f32>,
}

impl ProbeFitArgs {
    /// A logistic-regression fit.
    pub fn config(&self) -> ProbeTrainConfig {
        ProbeTrainConfig {
            steps: self.steps,
            l2: self.l2.unwrap_or(ProbeTrainConfig::default().l2),
            ..ProbeTrainConfig::default()
        }
    }

    /// The lowest threshold at which at most `--max-false-positives` of the validation
    /// split's safe examples flag (`val`: score and whether the example is harmful).
    pub fn threshold(&self, val: &[(f32, bool)]) -> f32 {
        if let Some(t) = self.threshold {
            return t;
        }
        let safe: Vec<f32> = val.iter().filter(|(_, h)| !h).map(|(s, _)| *s).collect();
        let mut candidates: Vec<f32> = val.iter().map(|(s, _)| *s).collect();
        candidates.sort_by(f32::total_cmp);
        candidates
            .iter()
            .copied()
            .find(|&t| {
                let fp = safe.iter().filter(|&&s| s >= t).count() as f64;
                fp / safe.len().max(1) as f64 <= self.max_false_positives
            })
            .unwrap_or(0.5)
            .clamp(0.0, 1.0)
    }
}

/// A score a probe can give: 0 to 1.
fn parse_score(s: &str) -> std::result::Result<f32, String> {
    match s.parse::<f32>() {
        Ok(t) if (0.0..=1.0).contains(&t) => Ok(t),
        _ => Err(format!("{s:?} is not a score from 0 to 1")),
    }
}

fn parse_pooling(s: &str) -> std::result::Result<Pooling, String> {
    match s {
        "last-token" => Ok(Pooling::LastToken),
        "user-message" => Ok(Pooling::UserMessage),
        "both" => Ok(Pooling::Both),
        _ => Err(format!("{s:?}: expected last-token, user-message or both")),
    }
}

fn parse_layers(s: &str) -> Result<Vec<usize>> {
    s.split(',')
        .map(|p| {
            p.trim()
                .parse()
                .map_err(|_| Error::InvalidInput(format!("--layers: {p:?} is not a layer number")))
        })
        .collect()
}

/// Chat-model states cached per request: an append-only file of records, each the SHA-256 of
/// the request's text followed by its states (f32, little-endian). One file per model, layers
/// and precision, so adding requests to the data computes only the new ones (a full run is
/// about 20 minutes here), and an interrupted run keeps what it had computed.
struct StateCache {
    path: PathBuf,
    width: usize,
    rows: HashMap<[u8; 32], Vec<f32>>,
}

impl StateCache {
    fn open(path: PathBuf, width: usize) -> Result<Self> {
        let mut rows = HashMap::new();
        if let Ok(bytes) = std::fs::read(&path) {
            let record = 32 + width * 4;
            // A record cut short by an interrupted write is dropped (and recomputed), and cut
            // from the file so the records appended next stay aligned.
            let whole = bytes.len() - bytes.len() % record;
            if whole < bytes.len() {
                let file = std::fs::OpenOptions::new()
                    .write(true)
                    .open(&path)
                    .map_err(|e| Error::io(&path, e))?;
                file.set_len(whole as u64)
                    .map_err(|e| Error::io(&path, e))?;
            }
            for r in bytes[..whole].chunks_exact(record) {
                let key: [u8; 32] = r[..32].try_into().expect("32 bytes");
                let values = r[32..]
                    .chunks_exact(4)
                    .map(|b| f32::from_le_bytes([b[0], b[1], b[2], b[3]]))
                    .collect();
                rows.insert(key, values);
            }
        }
        Ok(StateCache { path, width, rows })
    }

    fn key(text: &str) -> [u8; 32] {
        Sha256::digest(text.as_bytes()).into()
    }

    fn append(&mut self, text: &str, row: Vec<f32>) -> Result<()> {
        use std::io::Write;
        debug_assert_eq!(row.len(), self.width);
        let key = Self::key(text);
        let mut bytes = key.to_vec();
        bytes.extend(row.iter().flat_map(|v| v.to_le_bytes()));
        let mut file = std::fs::OpenOptions::new()
            .create(true)
            .append(true)
            .open(&self.path)
            .map_err(|e| Error::io(&self.path, e))?;
        file.write_all(&bytes)
            .map_err(|e| Error::io(&self.path, e))?;
        self.rows.insert(key, row);
        Ok(())
    }
}

/// The caches one pooling's rows come from: one, or a pair's two (the last token's, then the
/// message mean's), each row of the pair split between them and put back side by side.
struct Caches(Vec<StateCache>);

impl Caches {
    /// Whether every cache has the text's record (a record missing from one is recomputed for
    /// all: the other's copy is the same prefill's).
    fn holds(&self, key: &[u8; 32]) -> bool {
        self.0.iter().all(|c| c.rows.contains_key(key))
    }

    fn row(&self, key: &[u8; 32]) -> Vec<f32> {
        self.0
            .iter()
            .flat_map(|c| c.rows[key].iter().copied())
            .collect()
    }

    /// Each part of `row` to the cache that lacks the text's record (one that has it keeps
    /// it: no record is written twice).
    fn append(&mut self, text: &str, row: Vec<f32>) -> Result<()> {
        let width: usize = self.0.iter().map(|c| c.width).sum();
        if row.len() != width {
            return Err(Error::InvalidInput(format!(
                "a row of {} states for caches {} wide",
                row.len(),
                width
            )));
        }
        let key = StateCache::key(text);
        let mut rest = &row[..];
        for c in &mut self.0 {
            let (part, more) = rest.split_at(c.width);
            if !c.rows.contains_key(&key) {
                c.append(text, part.to_vec())?;
            }
            rest = more;
        }
        Ok(())
    }

    fn paths(&self) -> String {
        self.0
            .iter()
            .map(|c| c.path.display().to_string())
            .collect::<Vec<_>>()
            .join(" and ")
    }
}

/// Every list's exchanges, one after the other (an [`Example`]'s context indexes it).
struct Exchanges {
    all: Vec<Exchange>,
    /// Each list with the index of its first exchange in `all` and its length.
    lists: Vec<(ExchangeList, usize, usize)>,
}

impl std::ops::Deref for Exchanges {
    type Target = [Exchange];
    fn deref(&self) -> &[Exchange] {
        &self.all
    }
}

/// One conversation the probe reads: a request, alone or after an earlier exchange.
struct Example<'a> {
    request: &'a Request,
    /// The benign exchange before the request (index into every list's exchanges), if any.
    context: Option<usize>,
    /// The list that exchange comes from.
    list: Option<ExchangeList>,
}

impl Example<'_> {
    fn messages(&self, exchanges: &[Exchange], last: &str) -> Vec<Message> {
        let mut out = Vec::new();
        if let Some(e) = self.context.map(|i| &exchanges[i]) {
            out.push(Message::new("user", &e.user));
            out.push(Message::new("assistant", &e.assistant));
        }
        out.push(Message::new("user", last));
        out
    }

    /// What a cached record is keyed by besides the model: the whole conversation.
    fn key(&self, exchanges: &[Exchange]) -> String {
        match self.context.map(|i| &exchanges[i]) {
            None => self.request.text.clone(),
            Some(e) => format!(
                "context\0{}\0{}\0{}",
                e.user, e.assistant, self.request.text
            ),
        }
    }

    fn kind(&self) -> String {
        match self.list {
            None => self.request.kind.to_string(),
            Some(list) => format!("{} ({})", self.request.kind, list.label()),
        }
    }
}

/// Every request alone, and after the benign exchange [`context_for`] picks from each list.
fn examples<'a>(all: &'a [Request], exchanges: &Exchanges) -> Vec<Example<'a>> {
    let mut out: Vec<Example> = all
        .iter()
        .map(|request| Example {
            request,
            context: None,
            list: None,
        })
        .collect();
    for &(list, start, n) in &exchanges.lists {
        out.extend(all.iter().map(|request| Example {
            request,
            context: Some(start + context_for(request, n, list)),
            list: Some(list),
        }));
    }
    out
}

/// States of every example (from the cache, the missing ones computed and cached).
fn states(
    chat: &ChatModel,
    all: &[Example],
    exchanges: &[Exchange],
    layers: &[usize],
    pooling: Pooling,
    cache: &mut Caches,
) -> Result<Vec<Vec<f32>>> {
    let keys: Vec<String> = all.iter().map(|e| e.key(exchanges)).collect();
    let mut missing: Vec<(&Example, &String)> = all
        .iter()
        .zip(&keys)
        .filter(|(_, k)| !cache.holds(&StateCache::key(k)))
        .collect();
    eprintln!(
        "states: {} cached in {}, {} to compute",
        all.len() - missing.len(),
        cache.paths(),
        missing.len()
    );
    // Examples with the same earlier turns share their first tokens: those are run once per
    // group and each example continues from a copy.
    missing.sort_by_key(|(e, _)| e.context);
    let mut progress = Progress::new("chat-model states", missing.len());
    let mut done = 0;
    for group in missing.chunk_by(|a, b| a.0.context == b.0.context) {
        let first = group[0].0;
        let prompt = |text: &str| chat.prompt_ids(&first.messages(exchanges, text));
        let (a, b) = (prompt("a")?, prompt("b")?);
        let shared = a.iter().zip(&b).take_while(|(x, y)| x == y).count();
        let mut prefix = chat.model.new_cache();
        chat.model.forward(&a[..shared], &mut prefix)?;
        for (example, key) in group {
            let messages = example.messages(exchanges, &example.request.text);
            let ids = chat.prompt_ids(&messages)?;
            if ids[..shared] != a[..shared] {
                return Err(Error::InvalidInput(
                    "prompts do not share their earlier turns".into(),
                ));
            }
            let positions = chat.probe_positions(pooling, &messages)?;
            // A message whose text starts inside the shared tokens (a leading newline merges
            // with the role line's) runs whole.
            let row = match positions.after(shared) {
                Some(after) => pollster::block_on(chat.prompt_states_after(
                    &prefix,
                    &ids[shared..],
                    layers,
                    after,
                ))?,
                None => pollster::block_on(chat.prompt_states(&ids, layers, positions))?,
            };
            cache.append(key, row)?;
            done += 1;
            progress.update(done, "");
        }
    }
    Ok(keys
        .iter()
        .map(|k| cache.row(&StateCache::key(k)))
        .collect())
}

/// Flagged fraction per (kind, harmful) of `split` at `threshold`.
fn by_kind(
    all: &[Example],
    scores: &[f32],
    split: Split,
    threshold: f32,
) -> BTreeMap<String, (usize, usize)> {
    let mut out: BTreeMap<String, (usize, usize)> = BTreeMap::new();
    for (e, &s) in all.iter().zip(scores) {
        let q = e.request;
        if q.split == split {
            let key = format!("{}/{}", e.kind(), if q.harmful { "unsafe" } else { "safe" });
            let e = out.entry(key).or_default();
            e.0 += usize::from(s >= threshold);
            e.1 += 1;
        }
    }
    out
}

/// Flagged and total per row of a report.
type Counts = BTreeMap<String, (usize, usize)>;

/// Flagged per (form, harmful) of `split` at `threshold`, summed over kinds (form: alone or
/// after which list's turn), and per exchange before the request.
fn by_form_and_exchange(
    all: &[Example],
    exchanges: &Exchanges,
    scores: &[f32],
    split: Split,
    threshold: f32,
) -> (Counts, Counts) {
    let (mut forms, mut per_exchange) = (BTreeMap::new(), BTreeMap::new());
    for (e, &s) in all
        .iter()
        .zip(scores)
        .filter(|(e, _)| e.request.split == split)
    {
        let label = if e.request.harmful { "unsafe" } else { "safe" };
        let form = e.list.map_or("alone", |l| l.label());
        let flagged = usize::from(s >= threshold);
        let f: &mut (usize, usize) = forms.entry(format!("{form}/{label}")).or_default();
        f.0 += flagged;
        f.1 += 1;
        if let Some(i) = e.context {
            let user: String = exchanges[i].user.chars().take(40).collect();
            let x: &mut (usize, usize) = per_exchange
                .entry(format!("{i:>2} {user}/{label}"))
                .or_default();
            x.0 += flagged;
            x.1 += 1;
        }
    }
    (forms, per_exchange)
}

/// Each example's score under the guard's rule: after an exchange, the higher of its own
/// score and the score of its request alone.
fn either_form(all: &[Example], scores: &[f32]) -> Vec<f32> {
    // Keyed by the request's address: every form of a request borrows the same one.
    let alone: HashMap<*const Request, f32> = all
        .iter()
        .zip(scores)
        .filter(|(e, _)| e.context.is_none())
        .map(|(e, &s)| (e.request as *const Request, s))
        .collect();
    all.iter()
        .zip(scores)
        .map(|(e, &s)| match alone.get(&(e.request as *const Request)) {
            Some(&a) if e.context.is_some() => s.max(a),
            _ => s,
        })
        .collect()
}

type Figures = HashMap<String, Counts>;

/// Appends `title` and one line per row (flagged / total, percent) to `report`.
fn push_table(report: &mut String, title: &str, rows: &Counts) {
    report.push_str(title);
    for (k, (flagged, n)) in rows {
        report.push_str(&format!(
            "  {k:<52} {flagged:>4} / {n:<4} {:>5.1}%\n",
            100.0 * *flagged as f64 / (*n).max(1) as f64
        ));
    }
}

/// The report of every split by kind, then by form and by exchange for validation and
/// held-out; and the by-kind figures kept in the probe's provenance.
fn report(
    all: &[Example],
    exchanges: &Exchanges,
    scores: &[f32],
    threshold: f32,
) -> (String, Figures) {
    let mut report = String::new();
    let mut figures = HashMap::new();
    let mut table = |title: String, rows: &Counts| push_table(&mut report, &title, rows);
    // The guard's rule for conversations with earlier turns: the last user message is also
    // judged alone, and either judgement blocks.
    let either = either_form(all, scores);
    for (name, split) in [
        ("val", Split::Val),
        ("held-out", Split::HeldOut),
        ("train", Split::Train),
    ] {
        if !all.iter().any(|e| e.request.split == split) {
            continue;
        }
        let rows = by_kind(all, scores, split, threshold);
        table(
            format!("{name} (flagged / requests at threshold {threshold:.3}):\n"),
            &rows,
        );
        if split != Split::Train {
            let (forms, per_exchange) =
                by_form_and_exchange(all, exchanges, scores, split, threshold);
            table(format!("{name}, all kinds:\n"), &forms);
            table(format!("{name}, by exchange:\n"), &per_exchange);
            let (forms, _) = by_form_and_exchange(all, exchanges, &either, split, threshold);
            table(
                format!("{name}, all kinds, the last message also judged alone:\n"),
                &forms,
            );
        }
        figures.insert(name.to_string(), rows);
    }
    (report, figures)
}

pub fn run(models: &Path, args: TrainProbeArgs) -> Result<()> {
    let layers = parse_layers(&args.layers)?;
    let root = &webguard::source_checkout();
    let (requests, mut files) = requests(&args.data, root, args.seed)?;
    // Pages send whole conversations, and earlier turns change the states the probe reads
    // (at the last prompt token or over the last message): each request is also judged after
    // a benign exchange of each list.
    let mut lists = Exchanges {
        all: Vec::new(),
        lists: Vec::new(),
    };
    for list in ExchangeList::ALL {
        let (e, provenance) = exchanges(root, list)?;
        files.push(provenance);
        lists.lists.push((list, lists.all.len(), e.len()));
        lists.all.extend(e);
    }
    let exchanges = lists;
    let mut all = examples(&requests, &exchanges);
    if !args.splits.is_empty() {
        let keep: Vec<Split> = (args.splits.iter())
            .map(|s| Split::parse(s))
            .collect::<Result<_>>()?;
        all.retain(|e| keep.contains(&e.request.split));
    }
    let dev_files = read_dev_sets(&args.dev_prompts)?;
    let (chat, backend) = load_chat(models, "cpu", None)?;
    let c = chat.model.config();
    let evaluated = (args.evaluate.as_ref())
        .map(|path| -> Result<StateProbe> {
            let probe = ChatProbes::load(&read(path)?, c.layers, c.dim)?.request;
            if probe.layers != layers {
                return Err(Error::InvalidInput(format!(
                    "{} reads layers {:?}, not --layers {}",
                    path.display(),
                    probe.layers,
                    args.layers
                )));
            }
            Ok(probe)
        })
        .transpose()?;
    let pooling = evaluated.as_ref().map_or(args.pooling, |p| p.pooling);
    eprintln!(
        "chat on {backend}; {} requests from {} files, each alone and after one exchange of \
         each of {} lists ({} exchanges)",
        requests.len(),
        files.len(),
        exchanges.lists.len(),
        exchanges.len()
    );
    // Everything the states depend on but the request's text (which keys each record).
    let model_sha256 = Sha256::digest(read(&models.join(SMOLLM2_GGUF))?);
    let key = |part: Pooling| {
        let mut h = Sha256::new();
        h.update(webguard::VERSION);
        h.update(model_sha256);
        h.update(args.layers.as_bytes());
        h.update(format!("{:?}", chat.model.precision()));
        // (Keys of last-token states, the first kind cached, stay as they were.)
        if part != Pooling::LastToken {
            h.update(format!("{part:?}"));
        }
        format!("{:x}", h.finalize())[..16].to_string()
    };
    let cache_dir = args.cache.clone().unwrap_or_else(|| {
        std::env::var_os("HOME")
            .map(PathBuf::from)
            .unwrap_or_else(std::env::temp_dir)
            .join(".cache/webguard/probe-states")
    });
    std::fs::create_dir_all(&cache_dir).map_err(|e| Error::io(&cache_dir, e))?;
    // A pair reads the last token's states and the message's mean: each from its own cache,
    // both filled from one prefill (`Positions::LastAndMean` gives the rows side by side).
    let parts = match pooling {
        Pooling::Both => vec![Pooling::LastToken, Pooling::UserMessage],
        one => vec![one],
    };
    let mut caches = Caches(
        parts
            .into_iter()
            .map(|part| {
                StateCache::open(
                    cache_dir.join(format!("{}.rows", key(part))),
                    layers.len() * c.dim,
                )
            })
            .collect::<Result<_>>()?,
    );
    let rows = states(&chat, &all, &exchanges, &layers, pooling, &mut caches)?;
    let dev = dev_sets(&chat, &dev_files, &layers, pooling, &mut caches)?;
    let pick = |split: Split| -> (Vec<Vec<f32>>, Vec<bool>) {
        all.iter()
            .zip(&rows)
            .filter(|(e, _)| e.request.split == split)
            .filter(|(e, _)| !(args.single_turn_training && e.context.is_some()))
            .filter(|(e, _)| {
                !(args.without_varied_exchanges && e.list == Some(ExchangeList::Varied))
            })
            .map(|(e, r)| (r.clone(), e.request.harmful))
            .unzip()
    };
    if let Some(probe) = evaluated {
        let scores: Vec<f32> = score_all(&probe, &rows)?;
        eprint!("{}", report(&all, &exchanges, &scores, probe.threshold).0);
        if let Some(from) = probe.safety_adapters_from {
            eprint!(
                "{}",
                zone_report(&val_scores(&all, &scores), from, probe.threshold)
            );
        }
        eprint!("{}", dev_report(&dev, &probe)?);
        if let Some(out) = &args.scores_out {
            write_scores(out, &all, &scores, &dev, &probe)?;
        }
        return Ok(());
    }
    let (train_x, train_y) = pick(Split::Train);
    let config = match args.hidden {
        0 => args.fit.config(),
        hidden => ProbeTrainConfig {
            hidden,
            members: args.members,
            epochs: args.epochs,
            l2: args.fit.l2.unwrap_or(0.004),
            ..args.fit.config()
        },
    };
    // The fit prints nothing while it runs (12 minutes for the shipped pair on 2 cores), so
    // say what it is and how long it took.
    let fits = if pooling == Pooling::Both { 2 } else { 1 };
    let what = match config.hidden {
        0 => format!("logistic regression, {} steps", config.steps),
        hidden => format!(
            "{} networks of {hidden} hidden units, {} epochs each",
            config.members, config.epochs
        ),
    };
    eprintln!(
        "fitting {fits} probe(s) ({what}) on {} training rows of {} features...",
        train_x.len(),
        train_x.first().map_or(0, Vec::len) / fits
    );
    let started = std::time::Instant::now();
    let mut probe = match pooling {
        Pooling::Both => StateProbe::train_pair(layers, &train_x, &train_y, &config)?,
        _ => StateProbe::train(layers, &train_x, &train_y, &config)?,
    };
    eprintln!("fitted in {:.0} s", started.elapsed().as_secs_f64());
    probe.pooling = pooling;
    let scores: Vec<f32> = score_all(&probe, &rows)?;
    let val = val_scores(&all, &scores);
    let threshold = args.fit.threshold(&val);
    probe.threshold = threshold;
    let from = args
        .safety_adapters_from
        .unwrap_or((threshold - SAFETY_ADAPTERS_MARGIN).max(0.0));
    if from > threshold {
        return Err(Error::InvalidInput(format!(
            "--safety-adapters-from {from} is above the threshold {threshold}: the zone would be empty"
        )));
    }
    probe.safety_adapters_from = Some(from);
    let (report, figures) = report(&all, &exchanges, &scores, threshold);
    eprint!("{report}");
    eprint!("{}", zone_report(&val, from, threshold));
    eprint!("{}", dev_report(&dev, &probe)?);
    if let Some(out) = &args.scores_out {
        write_scores(out, &all, &scores, &dev, &probe)?;
    }
    let files: BTreeMap<_, _> = files.into_iter().collect();
    probe.provenance.insert(
        "command".into(),
        std::env::args().collect::<Vec<_>>().join(" "),
    );
    probe.provenance.insert(
        "data_sha256".into(),
        serde_json::to_string(&files).map_err(|e| Error::InvalidInput(e.to_string()))?,
    );
    probe.provenance.insert(
        "figures".into(),
        serde_json::to_string(&figures).map_err(|e| Error::InvalidInput(e.to_string()))?,
    );
    probe.provenance.insert("model".into(), SMOLLM2_GGUF.into());
    // An answer probe already in the file (`train-answer-probe`) is kept when it reads the
    // same layers: the two are fitted separately.
    let answer = std::fs::read(&args.out)
        .ok()
        .and_then(|bytes| ChatProbes::load(&bytes, c.layers, c.dim).ok())
        .and_then(|old| old.answer)
        .filter(|a| a.layers == probe.layers);
    if answer.is_some() {
        eprintln!("keeping the answer probe in {}", args.out.display());
    }
    let bytes = ChatProbes {
        request: probe,
        answer,
    }
    .save()?;
    std::fs::write(&args.out, bytes).map_err(|e| Error::io(&args.out, e))?;
    eprintln!("wrote {}", args.out.display());
    Ok(())
}

/// The validation split's scores, each with whether its example is harmful.
fn val_scores(all: &[Example], scores: &[f32]) -> Vec<(f32, bool)> {
    all.iter()
        .zip(scores)
        .filter(|(e, _)| e.request.split == Split::Val)
        .map(|(e, &s)| (s, e.request.harmful))
        .collect()
}

/// How many validation examples (`val`: score, harmful) the safety adapters would answer:
/// those the probe scores from `from` up to its `threshold`.
fn zone_report(val: &[(f32, bool)], from: f32, threshold: f32) -> String {
    let in_zone = |harmful: bool| {
        val.iter()
            .filter(|&&(s, h)| h == harmful && s >= from && s < threshold)
            .count()
    };
    format!(
        "safety adapters from {from:.3} (below the threshold {threshold:.3}): validation in that zone, harmful {}, safe {}\n",
        in_zone(true),
        in_zone(false)
    )
}

/// One line of a `--dev-prompts` file, with the states the guard's rule reads: the
/// conversation's, and for a conversation of more than the last user message, that message's
/// alone too.
struct DevExample {
    label: String,
    kind: String,
    states: Vec<Vec<f32>>,
}

/// A `--dev-prompts` file's lines, each with the conversation it stands for.
type DevFile = (PathBuf, Vec<(LabelledPrompt, Vec<Message>)>);

/// Reads and checks the `--dev-prompts` files, before any state is computed: a malformed line
/// is reported at once, not after the training split's states (half an hour on 2 cores).
fn read_dev_sets(files: &[PathBuf]) -> Result<Vec<DevFile>> {
    let mut out = Vec::new();
    for path in files {
        let lines: Vec<LabelledPrompt> =
            crate::common::read_jsonl(path, "{\"id\", \"prompt\" or \"messages\", \"label\"}")?;
        crate::common::check_safe_or_unsafe(
            path,
            "prompt",
            lines.iter().map(|l| (&l.id, l.label.as_str())),
        )?;
        let mut read = Vec::new();
        for (i, line) in lines.into_iter().enumerate() {
            let messages = line.turns().map_err(|why| {
                Error::InvalidInput(format!("{}:{}: {why}", path.display(), i + 1))
            })?;
            read.push((line, messages));
        }
        out.push((path.clone(), read));
    }
    Ok(out)
}

/// The `--dev-prompts` files' examples (states from the cache, the missing ones computed).
fn dev_sets(
    chat: &ChatModel,
    files: &[DevFile],
    layers: &[usize],
    pooling: Pooling,
    cache: &mut Caches,
) -> Result<Vec<(PathBuf, Vec<DevExample>)>> {
    let mut out = Vec::new();
    for (path, lines) in files {
        let mut examples = Vec::new();
        for (line, messages) in lines {
            let mut forms = vec![messages.clone()];
            if let [_, .., last] = &messages[..] {
                forms.push(vec![last.clone()]);
            }
            let mut states = Vec::new();
            for form in forms {
                // The same key as a request alone in the training data when it is one.
                let key = match &form[..] {
                    [only] => only.content.clone(),
                    _ => form
                        .iter()
                        .map(|m| format!("{}\0{}", m.role, m.content))
                        .collect::<Vec<_>>()
                        .join("\0"),
                };
                let k = StateCache::key(&key);
                if !cache.holds(&k) {
                    let ids = chat.prompt_ids(&form)?;
                    let positions = chat.probe_positions(pooling, &form)?;
                    let row = pollster::block_on(chat.prompt_states(&ids, layers, positions))?;
                    cache.append(&key, row)?;
                }
                states.push(cache.row(&k));
            }
            examples.push(DevExample {
                label: line.label.clone(),
                kind: line.kind.clone().unwrap_or_default(),
                states,
            });
        }
        out.push((path.clone(), examples));
    }
    Ok(out)
}

/// A development example's score per form (the conversation's, then the last message's
/// alone) and the guard's score of it, the highest of them.
fn dev_scores(e: &DevExample, probe: &StateProbe) -> Result<(Vec<f32>, f32)> {
    let forms: Vec<f32> = (e.states.iter())
        .map(|s| probe.score(s))
        .collect::<Result<_>>()?;
    let score = forms.iter().copied().fold(f32::MIN, f32::max);
    Ok((forms, score))
}

/// `--scores-out`: one JSON line per validation example (under the guard's rule) and per
/// development example (with each of its forms' own scores: the conversation's, then the last
/// message's alone).
fn write_scores(
    out: &Path,
    all: &[Example],
    scores: &[f32],
    dev: &[(PathBuf, Vec<DevExample>)],
    probe: &StateProbe,
) -> Result<()> {
    let mut rows = Vec::new();
    for (e, s) in all.iter().zip(either_form(all, scores)) {
        if e.request.split == Split::Val {
            let label = if e.request.harmful { "unsafe" } else { "safe" };
            let form = e.list.map_or("alone", |l| l.label());
            rows.push(
                serde_json::json!({"set": "val", "kind": e.request.kind, "form": form,
                "label": label, "score": s}),
            );
        }
    }
    for (path, examples) in dev {
        for e in examples {
            let (forms, score) = dev_scores(e, probe)?;
            rows.push(
                serde_json::json!({"set": path.display().to_string(), "kind": e.kind,
                "form": "as given", "label": e.label, "score": score, "forms": forms}),
            );
        }
    }
    let text: String = rows.iter().map(|r| format!("{r}\n")).collect();
    std::fs::write(out, text).map_err(|e| Error::io(out, e))
}

/// Flagged per (type, label) of each development set at the probe's threshold.
fn dev_report(dev: &[(PathBuf, Vec<DevExample>)], probe: &StateProbe) -> Result<String> {
    let mut report = String::new();
    for (path, examples) in dev {
        let mut rows: Counts = BTreeMap::new();
        for e in examples {
            let flagged = usize::from(dev_scores(e, probe)?.1 >= probe.threshold);
            for key in [
                format!("{}/{}", e.kind, e.label),
                format!("all/{}", e.label),
            ] {
                let r = rows.entry(key).or_default();
                r.0 += flagged;
                r.1 += 1;
            }
        }
        let title = format!(
            "dev {} (flagged / prompts at threshold {:.3}):\n",
            path.display(),
            probe.threshold
        );
        push_table(&mut report, &title, &rows);
    }
    Ok(report)
}

/// Every row's score, the rows split over the cores.
fn score_all(probe: &StateProbe, rows: &[Vec<f32>]) -> Result<Vec<f32>> {
    use rayon::prelude::*;
    rows.par_iter().map(|r| probe.score(r)).collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    fn file(name: &str, text: &str) -> PathBuf {
        let dir = std::env::temp_dir().join(format!("webguard-dev-sets-{}", std::process::id()));
        std::fs::create_dir_all(&dir).unwrap();
        let path = dir.join(name);
        std::fs::write(&path, text).unwrap();
        path
    }

    #[test]
    fn dev_prompts_files_are_read_with_their_conversations_and_a_bad_line_is_named() {
        let good = file(
            "good.jsonl",
            concat!(
                r#"{"id": "a", "prompt": "bash loop over files", "label": "safe", "type": "terse"}"#,
                "\n",
                r#"{"id": "b", "messages": [{"role": "user", "content": "Hi"}, {"role": "assistant", "content": "Hello"}, {"role": "user", "content": "And then?"}], "label": "unsafe"}"#,
                "\n"
            ),
        );
        let read = read_dev_sets(std::slice::from_ref(&good)).unwrap();
        assert_eq!(read.len(), 1);
        let lines = &read[0].1;
        assert_eq!(lines.len(), 2);
        assert_eq!(lines[0].0.kind.as_deref(), Some("terse"));
        assert_eq!(lines[0].1.len(), 1);
        assert_eq!(lines[0].1[0].content, "bash loop over files");
        assert_eq!(lines[1].1.len(), 3);
        assert_eq!(lines[1].1[2].content, "And then?");

        // A line of another kind of file (a language-detection set), and a label that is
        // neither safe nor unsafe: each names its file.
        let other = file(
            "other.jsonl",
            r#"{"id": "vi-02", "lang": "vi", "prompt": "Xin chao"}"#,
        );
        let label = file(
            "label.jsonl",
            r#"{"id": "c", "prompt": "Hi", "label": "maybe"}"#,
        );
        for bad in [other, label] {
            let Err(err) = read_dev_sets(&[good.clone(), bad.clone()]) else {
                panic!("{} was read", bad.display());
            };
            let err = err.to_string();
            assert!(err.contains(&bad.display().to_string()), "{err}");
        }
    }
}
