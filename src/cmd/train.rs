//! `fomoe train`: single-site training (no communication) with periodic per-domain eval,
//! per-step telemetry, checkpoints and resume; prints a summary at the end.

use std::path::PathBuf;

use anyhow::{bail, Context, Result};
use harness::config::{Method, RunConfig};
use harness::net::Backend;

#[derive(clap::Args)]
pub struct Args {
    /// Model preset (tiny, small, proxy-s, proxy-m).
    #[arg(long, default_value = "small")]
    preset: String,
    /// Training steps.
    #[arg(long, default_value_t = 300)]
    steps: usize,
    /// Evaluate every this many steps (must divide --steps; default: about 10 evals).
    #[arg(long)]
    eval_every: Option<usize>,
    /// Peak learning rate.
    #[arg(long)]
    lr: Option<f64>,
    #[arg(long, default_value_t = 0)]
    seed: u64,
    /// CPU threads (default: all cores).
    #[arg(long)]
    threads: Option<usize>,
    /// Save a checkpoint at every eval.
    #[arg(long)]
    checkpoint: bool,
    /// Continue from the checkpoint in this run directory (same settings).
    #[arg(long)]
    resume: Option<PathBuf>,
    /// Run directory (default results/train/<preset>-s<seed>).
    #[arg(long)]
    out: Option<PathBuf>,
    /// Print the summary as JSON.
    #[arg(long)]
    json: bool,
    #[command(flatten)]
    device: super::DeviceArgs,
}

fn default_eval_every(steps: usize) -> usize {
    (1..=10)
        .rev()
        .find(|k| steps.is_multiple_of(*k))
        .map(|k| steps / k)
        .unwrap_or(steps)
}

pub fn run(a: Args) -> Result<()> {
    if a.steps == 0 {
        bail!("invalid steps = 0: must be at least 1");
    }
    let eval_every = a.eval_every.unwrap_or_else(|| default_eval_every(a.steps));
    if eval_every == 0 || !a.steps.is_multiple_of(eval_every) {
        bail!(
            "invalid eval-every = {eval_every}: must be at least 1 and divide steps = {}",
            a.steps
        );
    }
    let mut cfg = RunConfig {
        method: Method::Single,
        preset: a.preset.clone(),
        sites: 1,
        steps: a.steps,
        inner_steps: eval_every,
        seed: a.seed,
        threads_per_site: Some(a.threads.unwrap_or_else(super::default_threads)),
        checkpoint_every_rounds: if a.checkpoint || a.resume.is_some() {
            Some(1)
        } else {
            None
        },
        resume_from: a.resume.clone(),
        ..Default::default()
    };
    cfg.network.backend = Backend::Sim;
    cfg.optim.warmup_steps = cfg.optim.warmup_steps.min(a.steps / 10).max(1);
    if let Some(lr) = a.lr {
        cfg.optim.lr = lr;
    }
    a.device.apply(&mut cfg);
    cfg.validate()?;
    super::resolve_device(cfg.device)?;
    let dir = a
        .out
        .clone()
        .unwrap_or_else(|| PathBuf::from(format!("results/train/{}-s{}", a.preset, a.seed)));
    if a.resume.is_none() && dir.exists() {
        std::fs::remove_dir_all(&dir).with_context(|| format!("clearing {}", dir.display()))?;
    }
    let mcfg = cfg.model_config()?;
    eprintln!(
        "training {} ({:.2}M params, {:.2}M active matmul) for {} steps on {} threads -> {}",
        a.preset,
        mcfg.total_params() as f64 / 1e6,
        mcfg.active_matmul_params() as f64 / 1e6,
        a.steps,
        cfg.threads_per_site.unwrap_or(1),
        dir.display()
    );
    let outcome =
        harness::runner::run_one(&cfg, &dir, &baselines::registry(), &Default::default())?;
    let rounds: Vec<harness::telemetry::RoundRow> = csv::Reader::from_path(dir.join("rounds.csv"))?
        .deserialize()
        .collect::<Result<_, _>>()?;
    let last_round = rounds.iter().map(|r| r.round).max().unwrap_or(0);
    let finals: Vec<_> = rounds.iter().filter(|r| r.round == last_round).collect();
    let site = &outcome.sites[0];
    let tokens_per_s = site.tokens as f64 / site.compute_s.max(1e-9);
    if a.json {
        let domains: Vec<_> = finals
            .iter()
            .map(|r| serde_json::json!({"domain": r.domain, "eval_loss": r.eval_loss, "floor": r.floor}))
            .collect();
        outln!(
            "{}",
            serde_json::json!({"preset": a.preset, "steps": site.steps, "tokens": site.tokens, "tokens_per_s": tokens_per_s,
                "wall_s": outcome.wall_s, "final_train_ce": site.final_loss, "eval": domains, "run_dir": dir})
        );
    } else {
        outln!(
            "trained {} for {} steps ({} tokens) in {:.1} s, {:.0} tokens/s",
            a.preset,
            site.steps,
            site.tokens,
            outcome.wall_s,
            tokens_per_s
        );
        outln!(
            "{:<12} {:>10} {:>10} {:>10}",
            "domain",
            "eval loss",
            "floor",
            "gap"
        );
        for r in &finals {
            let floor = r
                .floor
                .map(|f| format!("{f:.3}"))
                .unwrap_or_else(|| "-".into());
            let gap = r
                .floor
                .map(|f| format!("{:.3}", r.eval_loss - f))
                .unwrap_or_else(|| "-".into());
            outln!(
                "{:<12} {:>10.3} {:>10} {:>10}",
                r.domain,
                r.eval_loss,
                floor,
                gap
            );
        }
        outln!(
            "uniform loss ln(256) = {:.3}; telemetry in {}",
            (256f64).ln(),
            dir.display()
        );
    }
    Ok(())
}
