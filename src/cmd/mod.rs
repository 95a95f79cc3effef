//! One module per subcommand: `Args` (clap) and `run(args) -> anyhow::Result<()>`.
//!
//! Output that may go into a pipe is written with [`outln!`] / [`out!`]: a closed stdout
//! (`fomoe run S.toml | head -1`) silences the rest of the output instead of panicking, so
//! the command still does all its work (the results are on disk, not on stdout).

use std::io::Write as _;
use std::sync::atomic::{AtomicBool, Ordering};

static STDOUT_CLOSED: AtomicBool = AtomicBool::new(false);

/// Write `text` to stdout and flush. After the reader has gone away (broken pipe) nothing
/// more is written; other write errors are reported once on stderr, then treated alike.
pub fn write_stdout(text: &str) {
    if STDOUT_CLOSED.load(Ordering::Relaxed) {
        return;
    }
    let mut out = std::io::stdout().lock();
    if let Err(e) = out.write_all(text.as_bytes()).and_then(|_| out.flush()) {
        STDOUT_CLOSED.store(true, Ordering::Relaxed);
        if e.kind() != std::io::ErrorKind::BrokenPipe {
            let _ = writeln!(
                std::io::stderr(),
                "warning: stdout: {e}; no more output there"
            );
        }
    }
}

/// `println!` that survives a closed stdout (see the module doc). Defined before the
/// subcommand modules, so they see it by textual scope.
macro_rules! outln {
    ($($arg:tt)*) => {
        $crate::cmd::write_stdout(&format!("{}\n", format_args!($($arg)*)))
    };
}

/// `print!` that survives a closed stdout (see the module doc).
macro_rules! out {
    ($($arg:tt)*) => {
        $crate::cmd::write_stdout(&format!($($arg)*))
    };
}

pub mod bench_step;
pub mod compare;
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
