//! One module per subcommand: `Args` (clap) and `run(args) -> anyhow::Result<()>`.

pub mod netcheck;
