//! `fomoe`: the command line of the harness. Each subcommand lives in `src/cmd/<name>.rs`
//! with its own `Args` and `run`; this file only parses and dispatches.

mod cmd;

use clap::{Parser, Subcommand};
use std::process::ExitCode;

#[derive(Parser)]
#[command(
    name = "fomoe",
    version,
    about = "Low-communication Mixture-of-Experts training across weakly connected sites"
)]
struct Cli {
    #[command(subcommand)]
    command: Command,
}

#[derive(Subcommand)]
enum Command {
    /// Measure an emulated link (rate, one-way delay) and a ring all-reduce against its bound.
    Netcheck(cmd::netcheck::Args),
}

fn main() -> ExitCode {
    let cli = Cli::parse();
    let result = match cli.command {
        Command::Netcheck(args) => cmd::netcheck::run(args),
    };
    match result {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("error: {e:#}");
            ExitCode::FAILURE
        }
    }
}
