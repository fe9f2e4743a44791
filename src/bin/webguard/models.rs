//! Loading the two models from the models folder: the filter as `--backend`, `--heads`,
//! `--threshold` and `--adapters` describe it (shared by `classify`, `eval-filter` and
//! `tune-filter`), and the chat model with optional adapters.

use std::path::{Path, PathBuf};

use webguard::backend::{Backend, BackendChoice};
use webguard::weights::Gguf;
use webguard::{ChatModel, Error, Filter, Result, SMOLLM2_GGUF};

use crate::common::{map, read};

/// Which filter to run and how.
#[derive(clap::Args)]
pub struct FilterArgs {
    /// auto, gpu (webgpu/vulkan) or cpu.
    #[arg(long, default_value = "cpu")]
    backend: String,
    /// Heads file (default: the shipped assets/filter-heads.safetensors).
    #[arg(long)]
    heads: Option<PathBuf>,
    /// Override a label's threshold, e.g. --threshold offensive=0.7 (repeatable).
    #[arg(long = "threshold")]
    thresholds: Vec<String>,
    /// Tuned filter heads written by `tune-filter` (adds its labels).
    #[arg(long)]
    adapters: Option<PathBuf>,
}

impl FilterArgs {
    /// Loads the filter on the chosen backend with threshold overrides `label=value`.
    pub fn load(&self, models: &Path) -> Result<Filter> {
        let backend = Backend::init_blocking(self.backend.parse::<BackendChoice>()?)?;
        let heads = self
            .heads
            .clone()
            .unwrap_or_else(Filter::default_heads_path);
        let mut filter = pollster::block_on(Filter::load_for(models, &heads, &backend))?;
        if let Some(path) = &self.adapters {
            let bytes = std::fs::read(path).map_err(|e| Error::io(path, e))?;
            pollster::block_on(filter.import_adapters(&bytes))?;
        }
        for t in &self.thresholds {
            let (label, value) = t.split_once('=').ok_or_else(|| {
                Error::InvalidInput(format!("--threshold {t:?}: expected LABEL=VALUE"))
            })?;
            let value: f32 = value.parse().map_err(|_| {
                Error::InvalidInput(format!("--threshold {t:?}: {value:?} is not a number"))
            })?;
            filter.set_threshold(label, value)?;
        }
        eprintln!("filter on {backend}; {}", filter.route().reason);
        Ok(filter)
    }
}

/// Loads SmolLM2 on `backend` (`auto` on a software adapter: the CPU, see
/// [`Backend::for_chat`]), with chat adapters from `tune-chat` when given.
pub fn load_chat(
    models: &Path,
    backend: &str,
    adapters: Option<&Path>,
) -> Result<(ChatModel, Backend)> {
    let backend = Backend::init_blocking(backend.parse::<BackendChoice>()?)?.for_chat();
    let file = map(&models.join(SMOLLM2_GGUF))?;
    let gguf = Gguf::parse_mapped(&file)?;
    let mut chat = ChatModel::load(&gguf, &backend.device)?;
    drop(gguf);
    crate::common::release_startup_pages();
    if let Some(path) = adapters {
        pollster::block_on(chat.import_adapters(&read(path)?))?;
    }
    Ok((chat, backend))
}
