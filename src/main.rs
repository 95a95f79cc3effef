//! `fomoe`: the command line. Thin: each subcommand lives in `src/cmd/`.

mod cmd;

use clap::{Parser, Subcommand};

#[derive(Parser)]
#[command(name = "fomoe", version, about = "Low-communication MoE training across weakly connected sites: FoMoE, DDP, DiLoCo, Photon")]
struct Cli {
    #[command(subcommand)]
    command: Command,
}

#[derive(Subcommand)]
enum Command {
    /// Train one site (no communication) and print a summary.
    Train(cmd::train::Args),
    /// Throughput of one training step: tokens/s, GFLOP/s, and the measured fp32 matmul rate.
    BenchStep(cmd::bench_step::Args),
    /// Execute one run configuration (TOML) and print its outcome.
    RunOne(cmd::run_one::Args),
    /// Internal: one site of a run, started by the orchestrator.
    #[command(hide = true)]
    Worker(cmd::worker::Args),
}

fn main() {
    harness::sys::tune_allocator();
    let cli = Cli::parse();
    cmd::init_tracing();
    let result = match cli.command {
        Command::Train(a) => cmd::train::run(a),
        Command::BenchStep(a) => cmd::bench_step::run(a),
        Command::RunOne(a) => cmd::run_one::run(a),
        Command::Worker(a) => cmd::worker::run(a),
    };
    if let Err(e) = result {
        // One line for the user; the chain of causes joined, no backtrace.
        eprintln!("error: {e:#}");
        std::process::exit(1);
    }
}
