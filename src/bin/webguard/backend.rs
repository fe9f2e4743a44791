//! `backend`: which backend runs here, checked with a small computation.

use webguard::Result;
use webguard::backend::{Backend, BackendChoice, probe_computation};

#[derive(clap::Args)]
pub struct BackendArgs {
    /// auto, gpu (webgpu/vulkan) or cpu.
    #[arg(long, default_value = "auto")]
    backend: String,
}

pub fn run(args: BackendArgs) -> Result<()> {
    let choice: BackendChoice = args.backend.parse()?;
    let backend = Backend::init_blocking(choice)?;
    println!("backend: {backend}");
    let check = pollster::block_on(probe_computation(&backend.device))?;
    println!("check: {check:?}");
    Ok(())
}
