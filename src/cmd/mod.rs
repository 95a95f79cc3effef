//! One module per subcommand: `Args` (clap) and `run(args) -> anyhow::Result<()>`.

pub mod bench_step;
pub mod figures;
pub mod netcheck;
pub mod paper_report;
pub mod project;
pub mod report;
pub mod run;
pub mod run_one;
pub mod site;
pub mod train;
pub mod worker;

/// Log to stderr; `RUST_LOG` overrides the default level (warn).
pub fn init_tracing() {
    let filter = tracing_subscriber::EnvFilter::try_from_default_env()
        .unwrap_or_else(|_| tracing_subscriber::EnvFilter::new("warn"));
    let _ = tracing_subscriber::fmt()
        .with_env_filter(filter)
        .with_writer(std::io::stderr)
        .try_init();
}

/// Default CPU threads: all cores.
pub fn default_threads() -> usize {
    std::thread::available_parallelism()
        .map(|n| n.get())
        .unwrap_or(1)
}

/// `--device` and `--precision`, shared by every command that trains (run, run-one, train,
/// bench-step; a new command adds them with one `#[command(flatten)]` field). Given, they
/// override the config's `device` / `precision` knobs (see `harness::device`).
#[derive(clap::Args, Clone, Debug, Default)]
pub struct DeviceArgs {
    /// Where sites compute: cpu, cuda or auto (CUDA when present, else the CPU).
    #[arg(long)]
    pub device: Option<harness::device::DeviceChoice>,
    /// Matmul precision: fp32, or bf16 with fp32 master weights and optimiser state.
    #[arg(long)]
    pub precision: Option<harness::device::Precision>,
}

impl DeviceArgs {
    /// Put the flags into a run configuration.
    pub fn apply(&self, cfg: &mut harness::config::RunConfig) {
        if let Some(d) = self.device {
            cfg.device = d;
        }
        if let Some(p) = self.precision {
            cfg.precision = p;
        }
    }
}

/// Resolve `choice` on this machine before anything runs: a one-line error when CUDA is
/// asked for and absent; `auto` says on stderr what it picked.
pub fn resolve_device(
    choice: harness::device::DeviceChoice,
) -> anyhow::Result<harness::device::Resolved> {
    let r = harness::device::resolve(choice, 0)?;
    if let Some(note) = &r.note {
        eprintln!("{note}");
    }
    Ok(r)
}
