use anyhow::Result;
use harness::model::ModelConfig;

#[derive(clap::Args)]
pub struct Args {
    /// Model preset (tiny, small, proxy-s, proxy-m).
    #[arg(long, default_value = "proxy-s")]
    preset: String,
    /// CPU threads for libtorch (default: all cores).
    #[arg(long)]
    threads: Option<usize>,
    /// Timed steps (after 2 warm-up steps).
    #[arg(long, default_value_t = 10)]
    steps: usize,
    /// Share of experts held, as a FoMoE site with rho/M = this value (skip policy drop);
    /// 1 = full replica. Tokens/s then counts the tokens the site processes.
    #[arg(long, default_value_t = 1.0)]
    resident_fraction: f64,
    /// Print one JSON object instead of a table.
    #[arg(long)]
    json: bool,
    #[command(flatten)]
    device: super::DeviceArgs,
}

pub fn run(a: Args) -> Result<()> {
    let cfg = ModelConfig::preset(&a.preset)?;
    cfg.validate()?;
    if a.steps == 0 {
        anyhow::bail!("invalid steps = 0: must be at least 1");
    }
    let threads = a.threads.unwrap_or_else(super::default_threads);
    if threads == 0 {
        anyhow::bail!("invalid threads = 0: must be at least 1");
    }
    if !(a.resident_fraction > 0.0 && a.resident_fraction <= 1.0) {
        anyhow::bail!(
            "invalid resident-fraction = {}: must be in (0, 1]",
            a.resident_fraction
        );
    }
    let device = super::resolve_device(a.device.device.unwrap_or_default())?.device;
    let precision = a.device.precision.unwrap_or_default();
    let _runtime = harness::device::enter(harness::device::Runtime::new(device, precision));
    let r = harness::bench::bench_step(&cfg, &a.preset, threads, 2, a.steps, a.resident_fraction);
    if a.json {
        outln!("{}", serde_json::to_string(&r)?);
    } else {
        outln!(
            "preset {} on {} ({} threads, {}): {} tokens/step",
            r.preset,
            r.device.device,
            r.threads,
            r.device.precision,
            r.tokens_per_step
        );
        outln!(
            "  step time      {:>10.1} ms (median of {}, min {:.1})",
            r.step_ms_median,
            r.steps_timed,
            r.step_ms_min
        );
        outln!("  tokens/s       {:>10.0}", r.tokens_per_s);
        outln!(
            "  achieved       {:>10.1} GFLOP/s ({:.1} MFLOP/token, PaLM convention)",
            r.gflops,
            r.flops_per_token / 1e6
        );
        outln!(
            "  {} matmul    {:>10.1} GFLOP/s (measured now)",
            r.device.precision,
            r.matmul_gflops
        );
        outln!("  MFU            {:>10.1} %", 100.0 * r.mfu);
        outln!(
            "  expert share   {:>10.1} % of model FLOPs (full replica)",
            100.0 * r.expert_flop_share
        );
        if r.resident_fraction < 1.0 {
            outln!(
                "  resident       {:>10.1} % of experts, skip rate {:.1} % of routed slots",
                100.0 * r.resident_fraction,
                100.0 * r.skip_rate
            );
        }
    }
    Ok(())
}
