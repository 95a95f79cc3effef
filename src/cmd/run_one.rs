//! `fomoe run-one CONFIG.toml`: execute one run configuration (a `RunConfig` as TOML).

use std::path::PathBuf;

use anyhow::{Context, Result};
use harness::config::RunConfig;

#[derive(clap::Args)]
pub struct Args {
    /// A TOML file holding one run configuration (the keys of a suite's [base] table).
    config: PathBuf,
    /// Run directory.
    #[arg(long, default_value = "results/run-one")]
    out: PathBuf,
    #[command(flatten)]
    device: super::DeviceArgs,
}

pub fn run(a: Args) -> Result<()> {
    let text = std::fs::read_to_string(&a.config)
        .with_context(|| format!("reading {}", a.config.display()))?;
    let mut cfg: RunConfig = toml::from_str(&text)
        .map_err(|e| anyhow::anyhow!("{}: {}", a.config.display(), e.message()))?;
    a.device.apply(&mut cfg);
    cfg.validate()
        .map_err(|e| anyhow::anyhow!("{}: {e}", a.config.display()))?;
    super::resolve_device(cfg.device)?;
    // Device, memory and data files are checked before the old run directory is removed.
    harness::runner::prepare(&cfg).with_context(|| a.config.display().to_string())?;
    if cfg.resume_from.is_none() && a.out.exists() {
        std::fs::remove_dir_all(&a.out).with_context(|| format!("clearing {}", a.out.display()))?;
    }
    let outcome =
        harness::runner::run_one(&cfg, &a.out, &baselines::registry(), &Default::default())?;
    outln!("{}", serde_json::to_string_pretty(&outcome)?);
    Ok(())
}
