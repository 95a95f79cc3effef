//! `fomoe`: the command line of the harness. Each subcommand lives in `src/cmd/<name>.rs`
//! with its own `Args` and `run`; this file only parses and dispatches.

mod cmd;

use clap::{Parser, Subcommand};
use std::process::ExitCode;

#[derive(Parser)]
#[command(
    name = "fomoe",
    version,
    about = "Low-communication Mixture-of-Experts training across weakly connected sites: FoMoE, DDP, DiLoCo, Photon"
)]
struct Cli {
    #[command(subcommand)]
    command: Command,
}

#[derive(Subcommand)]
enum Command {
    /// Run a suite (TOML): every run of its grid, resumable, results under --out.
    Run(cmd::run::Args),
    /// Print the results of one suite directory, or of every suite under a directory.
    Report(cmd::report::Args),
    /// Regression gate: compare a suite's results with a reference; exit 1 on any difference.
    Compare(cmd::compare::Args),
    /// Rebuild a suite's SVG figures and REPORT-<suite>.md from its results directory alone.
    Figures(cmd::figures::Args),
    /// The study report of a suite: configurations per corpus over seeds, against DiLoCo at
    /// its defaults, and the configuration the numbers select (STUDY-<suite>.md).
    Study(cmd::figures::StudyArgs),
    /// Generate paper/REPORT.md (the abstract's claims beside measured and projected numbers)
    /// and its figures from a spec file; --check fails when the committed files differ.
    PaperReport(cmd::paper_report::Args),
    /// Train one site (no communication) and print a summary.
    Train(cmd::train::Args),
    /// Execute one run configuration (TOML) and print its outcome.
    RunOne(cmd::run_one::Args),
    /// Throughput of one training step: tokens/s, GFLOP/s, and the measured fp32 matmul rate.
    BenchStep(cmd::bench_step::Args),
    /// One site of a run whose sites are on separate hosts (rank, world and rendezvous from
    /// flags or the Slurm environment; token from FOMOE_TOKEN or --token-file).
    Site(cmd::site::Args),
    /// Measure an emulated link (rate, one-way delay) and a ring all-reduce against its bound.
    Netcheck(cmd::netcheck::Args),
    /// System model: memory, bytes and time of every method for a model and deployment
    /// (--sweep CSV, --validate against measured runs, --headline claims table).
    Project(Box<cmd::project::Args>),
    /// Internal: one site of a run, started by the orchestrator.
    #[command(hide = true)]
    Worker(cmd::worker::Args),
}

fn main() -> ExitCode {
    harness::sys::tune_allocator();
    let cli = Cli::parse();
    cmd::init_tracing();
    let result = match cli.command {
        Command::Run(a) => cmd::run::run(a),
        Command::Report(a) => cmd::report::run(a),
        Command::Compare(a) => cmd::compare::run(a),
        Command::Figures(a) => cmd::figures::run(a),
        Command::Study(a) => cmd::figures::study(a),
        Command::PaperReport(a) => cmd::paper_report::run(a),
        Command::Train(a) => cmd::train::run(a),
        Command::RunOne(a) => cmd::run_one::run(a),
        Command::BenchStep(a) => cmd::bench_step::run(a),
        Command::Netcheck(a) => cmd::netcheck::run(a),
        Command::Project(a) => cmd::project::run(*a),
        Command::Site(a) => cmd::site::run(a),
        Command::Worker(a) => cmd::worker::run(a),
    };
    match result {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            // One line for the user: the chain of causes joined, no backtrace.
            eprintln!("error: {e:#}");
            ExitCode::FAILURE
        }
    }
}
