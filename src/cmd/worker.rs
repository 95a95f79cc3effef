//! `fomoe worker` (internal): one site of a run on a real backend, started by the orchestrator.

use std::path::PathBuf;

use anyhow::Result;

#[derive(clap::Args)]
pub struct Args {
    #[arg(long)]
    run_dir: PathBuf,
    #[arg(long)]
    site: usize,
    /// A listening socket inherited from the orchestrator (backend `tcp`).
    #[arg(long)]
    listen_fd: Option<i32>,
}

pub fn run(a: Args) -> Result<()> {
    harness::sys::tune_allocator();
    harness::runner::worker_main(&a.run_dir, a.site, &baselines::registry(), a.listen_fd)
}
