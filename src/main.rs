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
    /// Run a suite (TOML): every run of its grid, resumable, results under --out.
    Run(cmd::run::Args),
    /// Print the results of one suite directory, or of every suite under a directory.
    Report(cmd::report::Args),
    /// Train one site (no communication) and print a summary.
    Train(cmd::train::Args),
    /// Throughput of one training step: tokens/s, GFLOP/s, and the measured fp32 matmul rate.
    BenchStep(cmd::bench_step::Args),
}

fn main() {
    let cli = Cli::parse();
    cmd::init_tracing();
    let result = match cli.command {
        Command::Run(a) => cmd::run::run(a),
        Command::Report(a) => cmd::report::run(a),
        Command::Train(a) => cmd::train::run(a),
        Command::BenchStep(a) => cmd::bench_step::run(a),
    };
    if let Err(e) = result {
        // One line for the user; the chain of causes joined, no backtrace.
        eprintln!("error: {e:#}");
        std::process::exit(1);
    }
}
