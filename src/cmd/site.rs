//! `fomoe site CONFIG`: one site of a run whose sites are processes on separate hosts, met
//! through a rendezvous at rank 0 (see `harness::runner::multihost`). Rank, world size and
//! rendezvous come from flags or from the Slurm environment, so `srun -n M fomoe site CONFIG`
//! starts a federation; the run token comes from `FOMOE_TOKEN` or `--token-file`, never
//! from the command line.

use std::net::{IpAddr, SocketAddr};
use std::path::PathBuf;

use anyhow::{anyhow, Result};
use harness::config::RunConfig;
use harness::runner::launch::{self, LaunchFlags};
use harness::runner::multihost::{run_rank, RankOptions};

#[derive(clap::Args)]
pub struct Args {
    /// A TOML file holding one run configuration with network.backend = "tcp"; every rank
    /// gets the same file (its hash is checked at the rendezvous).
    config: PathBuf,
    /// This process's rank, 0..world (default: SLURM_PROCID).
    #[arg(long)]
    rank: Option<usize>,
    /// Number of ranks, one per site (default: SLURM_NTASKS).
    #[arg(long)]
    world: Option<usize>,
    /// HOST:PORT where rank 0 listens for the other ranks (default under Slurm: the first
    /// node of SLURM_STEP_NODELIST and --rendezvous-port).
    #[arg(long)]
    rendezvous: Option<String>,
    /// Rendezvous port when the host comes from Slurm (default: 24000 + SLURM_JOB_ID mod 1000).
    #[arg(long)]
    rendezvous_port: Option<u16>,
    /// Rank 0's run directory (default: results/site/<config file stem>); other ranks write
    /// nothing there.
    #[arg(long)]
    out: Option<PathBuf>,
    /// Run id checked at the rendezvous and in every link handshake (default: the name of
    /// --out, as a single-host run of the same directory uses).
    #[arg(long)]
    run_id: Option<String>,
    /// Where this rank's link listeners bind: IP or IP:PORT (default: every interface, a
    /// free port).
    #[arg(long)]
    listen: Option<String>,
    /// How long the ranks wait for each other at the rendezvous.
    #[arg(long, default_value = "300s")]
    timeout: String,
    /// A file holding the run token (64 hex digits), readable by its owner only (default:
    /// the FOMOE_TOKEN environment variable).
    #[arg(long)]
    token_file: Option<PathBuf>,
    #[command(flatten)]
    device: super::DeviceArgs,
}

fn parse_listen(text: &str) -> Result<SocketAddr> {
    text.parse::<SocketAddr>()
        .or_else(|_| text.parse::<IpAddr>().map(|ip| SocketAddr::new(ip, 0)))
        .map_err(|_| anyhow!("invalid --listen `{text}`: expected IP or IP:PORT"))
}

pub fn run(a: Args) -> Result<()> {
    let env = |k: &str| std::env::var(k).ok();
    let text = std::fs::read_to_string(&a.config)
        .map_err(|e| anyhow!("reading {}: {e}", a.config.display()))?;
    let mut cfg: RunConfig =
        toml::from_str(&text).map_err(|e| anyhow!("{}: {}", a.config.display(), e.message()))?;
    a.device.apply(&mut cfg);
    cfg.validate()
        .map_err(|e| anyhow!("{}: {e}", a.config.display()))?;
    super::resolve_device(cfg.device)?;
    let launch = launch::resolve(
        &LaunchFlags {
            rank: a.rank,
            world: a.world,
            rendezvous: a.rendezvous.clone(),
            rendezvous_port: a.rendezvous_port,
        },
        &env,
    )?;
    let token = launch::read_token(a.token_file.as_deref(), &env)?;
    let timeout = harness::units::parse_duration(&a.timeout)
        .map_err(|e| anyhow!("invalid --timeout {}: {e}", a.timeout))?;
    let listen = a.listen.as_deref().map(parse_listen).transpose()?;
    let out = a.out.clone().unwrap_or_else(|| {
        let stem = a
            .config
            .file_stem()
            .map(|s| s.to_string_lossy().into_owned())
            .unwrap_or_else(|| "run".into());
        PathBuf::from("results/site").join(stem)
    });
    let run_id = a.run_id.clone().unwrap_or_else(|| {
        out.file_name()
            .map(|n| n.to_string_lossy().chars().take(100).collect())
            .unwrap_or_else(|| "run".into())
    });
    let rank = launch.rank;
    let opts = RankOptions {
        launch,
        token,
        run_id,
        out,
        listen,
        timeout,
    };
    let o = run_rank(&cfg, &opts, baselines::registry())?;
    match &o.run_dir {
        Some(dir) => outln!(
            "rank 0: run {} complete in {:.1} s: {}",
            opts.run_id,
            o.wall_s,
            dir.display()
        ),
        None => outln!("rank {rank}: site {rank} done in {:.1} s", o.wall_s),
    }
    Ok(())
}
