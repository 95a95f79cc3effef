//! One module per subcommand: `Args` (clap) and `run(args) -> anyhow::Result<()>`.

pub mod bench_step;
pub mod figures;
pub mod netcheck;
pub mod paper_report;
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
