//! `quantize-filter`: the filter encoder's 8-bit weights file (what the browser downloads)
//! from MiniLM's f32 `model.safetensors`; see `webguard::weights::int8` and `models::bert::quantise_weights`. `./build.sh build`
//! runs it into `pkg/`. The output is byte-deterministic: its sha256 is pinned in the worker's
//! manifest (pkg/guard-worker.js).

use std::path::{Path, PathBuf};

use sha2::{Digest, Sha256};
use webguard::models::bert::quantise_weights;
use webguard::{Error, MINILM_DIR, Result};

use crate::common::read;

#[derive(clap::Args)]
pub struct QuantizeFilterArgs {
    /// Where to write the 8-bit file (e.g. pkg/all-MiniLM-L6-v2.int8.safetensors).
    #[arg(long)]
    out: PathBuf,
    /// Also lay out a models folder whose encoder is the 8-bit file (DIR/all-MiniLM-L6-v2/
    /// with tokenizer.json, config.json and the 8-bit file as model.safetensors), so that
    /// `webguard --models DIR classify|eval-filter` runs the filter as the browser does.
    #[arg(long, value_name = "DIR")]
    as_models: Option<PathBuf>,
}

fn write(path: &Path, bytes: &[u8]) -> Result<()> {
    if let Some(dir) = path.parent().filter(|d| !d.as_os_str().is_empty()) {
        std::fs::create_dir_all(dir).map_err(|e| Error::io(dir, e))?;
    }
    // Whole or not at all: a failed write never leaves half a file where the build looks.
    let tmp = path.with_extension("tmp");
    std::fs::write(&tmp, bytes).map_err(|e| Error::io(&tmp, e))?;
    std::fs::rename(&tmp, path).map_err(|e| Error::io(path, e))
}

fn hex_sha256(bytes: &[u8]) -> String {
    Sha256::digest(bytes)
        .iter()
        .map(|b| format!("{b:02x}"))
        .collect()
}

pub fn run(models: &Path, args: QuantizeFilterArgs) -> Result<()> {
    let dir = models.join(MINILM_DIR);
    let source = read(&dir.join("model.safetensors"))?;
    let bytes = quantise_weights(&source)?;
    write(&args.out, &bytes)?;
    println!(
        "{}: {} bytes (from {} bytes), sha256 {}",
        args.out.display(),
        bytes.len(),
        source.len(),
        hex_sha256(&bytes)
    );
    if let Some(root) = &args.as_models {
        let to = root.join(MINILM_DIR);
        for name in ["tokenizer.json", "config.json"] {
            write(&to.join(name), &read(&dir.join(name))?)?;
        }
        write(&to.join("model.safetensors"), &bytes)?;
        println!("{}: a models folder with the 8-bit encoder", root.display());
    }
    Ok(())
}
