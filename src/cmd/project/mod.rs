//! `fomoe project`: the system model ([`harness::sysmodel`]) from the command line.
//!
//! - `fomoe project --preset P --sites M --rho R --inner-steps H [...]`: memory, bytes and
//!   time of DDP, DiLoCo, Photon and FoMoE as a table; `--json` prints the [`Projection`]
//!   the table is made from (the same numbers, unrounded).
//! - `--sweep KNOB=v1,v2,… [--sweep …] [--csv PATH]`: one CSV row per grid point and method
//!   (columns: `harness::sysmodel::sweep::CSV_COLUMNS`), written atomically to PATH or stdout.
//! - `--validate RESULTS_DIR`: predictions against every run's measured bytes, memory (both
//!   exact: a mismatch fails the command, naming the run) and time (relative error per method
//!   and backend, reported); `--json` for the full record.
//! - `--headline`: for which s, ρ/M and H the abstract's 1.42× and 45.44× follow, the same
//!   ratios for paper-1b/10b/100b, and memory per site per method at 100B.
//!
//! Input: a preset or shapes (flags), a deployment (flags), or `--config FILE.toml` with
//! `[model]` and `[deployment]` tables (per-site links live there); flags override the file.

use std::path::PathBuf;

use anyhow::{Context, Result};
use harness::sysmodel::deployment::{ProjectSpec, StarLink};
use harness::sysmodel::{project, sweep};

mod tables;
use tables::{headline_text, projection_text, validation_text};

#[derive(clap::Args)]
pub struct Args {
    /// TOML file with [model] and [deployment] tables (flags override it).
    #[arg(long)]
    config: Option<PathBuf>,
    /// Model preset (tiny, small, proxy-s, proxy-m, paper-1b, paper-10b, paper-100b).
    #[arg(long)]
    preset: Option<String>,
    /// Name of the configuration in tables and CSV.
    #[arg(long)]
    label: Option<String>,
    /// Shape: vocabulary V (changes the preset, or with every shape flag replaces it).
    #[arg(long)]
    vocab_size: Option<usize>,
    /// Shape: model width d.
    #[arg(long)]
    d_model: Option<usize>,
    /// Shape: blocks L.
    #[arg(long)]
    n_layers: Option<usize>,
    /// Shape: attention heads.
    #[arg(long)]
    n_heads: Option<usize>,
    /// Shape: experts per layer E.
    #[arg(long)]
    n_experts: Option<usize>,
    /// Shape: experts per token k.
    #[arg(long)]
    top_k: Option<usize>,
    /// Shape: expert width d_e.
    #[arg(long)]
    d_expert: Option<usize>,
    /// Shape: context S.
    #[arg(long)]
    seq_len: Option<usize>,
    /// Shape: sequences per step per site.
    #[arg(long)]
    batch_size: Option<usize>,
    /// M: sites (default 8).
    #[arg(long)]
    sites: Option<usize>,
    /// FoMoE ρ (default 2).
    #[arg(long)]
    rho: Option<usize>,
    /// H: inner steps per round (default 32).
    #[arg(long)]
    inner_steps: Option<usize>,
    /// Link scenario (same-region, cross-region, cross-continent, consumer, internet, lan).
    #[arg(long)]
    scenario: Option<String>,
    /// Link rate, e.g. 1gbit (uniform links).
    #[arg(long)]
    rate: Option<String>,
    /// One-way delay, e.g. 20ms (uniform links).
    #[arg(long)]
    delay: Option<String>,
    /// Photon's aggregator link: shared (default) or per-client.
    #[arg(long, value_parser = parse_star_link)]
    star_link: Option<StarLink>,
    /// Peak FLOP/s of one site (default 8 × 989.4e12, one 8-GPU H100 node).
    #[arg(long)]
    peak_flops: Option<f64>,
    /// Model FLOP utilisation (default 0.4).
    #[arg(long)]
    mfu: Option<f64>,
    /// Measured training tokens/s of one site holding the full model (instead of FLOPs;
    /// with --validate: predict the runs' compute from it).
    #[arg(long)]
    tokens_per_s: Option<f64>,
    /// Compute/communication overlap in [0, 1] (default 0).
    #[arg(long)]
    overlap: Option<f64>,
    /// Wire dtype: f32 (default), bf16, f16, int8.
    #[arg(long, value_parser = parse_wire)]
    wire: Option<harness::collective::WireDtype>,
    /// Tokens per step per site (default batch_size·seq_len).
    #[arg(long)]
    tokens_per_step: Option<u64>,
    /// Training tokens of all sites together (default 20 per parameter).
    #[arg(long)]
    token_budget: Option<f64>,
    /// FoMoE: share of routed slots that hit experts a site does not hold (default 1 − ρ/M).
    #[arg(long)]
    skip_rate: Option<f64>,
    /// Photon topology: star (default) or ring.
    #[arg(long, value_parser = parse_photon_topology)]
    photon_topology: Option<harness::config::PhotonTopology>,
    /// Sweep a knob: KNOB=v1,v2,… (repeatable; the grid is the product). Writes CSV.
    #[arg(long, value_name = "KNOB=V1,V2,...")]
    sweep: Vec<String>,
    /// Where --sweep writes its CSV (default: stdout).
    #[arg(long)]
    csv: Option<PathBuf>,
    /// Check the model against every run under this results directory.
    #[arg(long, value_name = "RESULTS_DIR")]
    validate: Option<PathBuf>,
    /// The headline tables: where the abstract's 1.42× and 45.44× come from.
    #[arg(long)]
    headline: bool,
    /// Print JSON instead of tables.
    #[arg(long)]
    json: bool,
}

fn parse_star_link(s: &str) -> Result<StarLink, String> {
    match s {
        "shared" => Ok(StarLink::Shared),
        "per-client" => Ok(StarLink::PerClient),
        other => Err(format!("invalid star-link = {other}: shared, per-client")),
    }
}

fn parse_wire(s: &str) -> Result<harness::collective::WireDtype, String> {
    serde_json::from_value(serde_json::Value::String(s.into()))
        .map_err(|_| format!("invalid wire = {s}: f32, bf16, f16, int8"))
}

fn parse_photon_topology(s: &str) -> Result<harness::config::PhotonTopology, String> {
    serde_json::from_value(serde_json::Value::String(s.into()))
        .map_err(|_| format!("invalid photon-topology = {s}: star, ring"))
}

/// The input: the file's tables, then the flags over them.
fn spec(a: &Args) -> Result<ProjectSpec> {
    let mut spec = match &a.config {
        Some(p) => {
            let text =
                std::fs::read_to_string(p).with_context(|| format!("reading {}", p.display()))?;
            toml::from_str::<ProjectSpec>(&text)
                .map_err(|e| anyhow::anyhow!("{}: {}", p.display(), e.message()))?
        }
        None => ProjectSpec::default(),
    };
    let m = &mut spec.model;
    macro_rules! over {
        ($slot:expr, $v:expr) => {
            if let Some(v) = $v.clone() {
                $slot = Some(v);
            }
        };
    }
    over!(m.preset, a.preset);
    over!(m.label, a.label);
    over!(m.vocab_size, a.vocab_size);
    over!(m.d_model, a.d_model);
    over!(m.n_layers, a.n_layers);
    over!(m.n_heads, a.n_heads);
    over!(m.n_experts, a.n_experts);
    over!(m.top_k, a.top_k);
    over!(m.d_expert, a.d_expert);
    over!(m.seq_len, a.seq_len);
    over!(m.batch_size, a.batch_size);
    let d = &mut spec.deployment;
    over!(d.sites, a.sites);
    over!(d.rho, a.rho);
    over!(d.inner_steps, a.inner_steps);
    over!(d.scenario, a.scenario);
    over!(d.rate, a.rate);
    over!(d.delay, a.delay);
    over!(d.star_link, a.star_link);
    over!(d.peak_flops, a.peak_flops);
    over!(d.mfu, a.mfu);
    over!(d.tokens_per_s, a.tokens_per_s);
    over!(d.overlap, a.overlap);
    over!(d.wire, a.wire);
    over!(d.tokens_per_step, a.tokens_per_step);
    over!(d.token_budget, a.token_budget);
    over!(d.skip_rate, a.skip_rate);
    over!(d.photon_topology, a.photon_topology);
    Ok(spec)
}

pub fn run(a: Args) -> Result<()> {
    let modes = [a.validate.is_some(), a.headline, !a.sweep.is_empty()];
    if modes.iter().filter(|&&m| m).count() > 1 {
        anyhow::bail!("--validate, --headline and --sweep are separate modes: give one");
    }
    if a.csv.is_some() && a.sweep.is_empty() {
        anyhow::bail!("--csv is where --sweep writes: give --sweep KNOB=v1,v2,…");
    }
    if let Some(dir) = &a.validate {
        return validate(dir, a.tokens_per_s, a.json);
    }
    if a.headline {
        let h = harness::sysmodel::headline::headline()?;
        if a.json {
            outln!("{}", serde_json::to_string_pretty(&h)?);
        } else {
            out!("{}", headline_text(&h));
        }
        return Ok(());
    }
    let spec = spec(&a)?;
    if !a.sweep.is_empty() {
        let axes = a
            .sweep
            .iter()
            .map(|s| sweep::parse_axis(s))
            .collect::<Result<Vec<_>, _>>()?;
        let projections = sweep::sweep(&spec, &axes)?;
        let csv = sweep::csv_text(&projections)?;
        match &a.csv {
            Some(p) => {
                harness::results::write_atomic(p, &csv)?;
                let rows = csv.iter().filter(|&&b| b == b'\n').count() - 1;
                eprintln!(
                    "{rows} rows ({} configurations, 4 methods) -> {}",
                    projections.len(),
                    p.display()
                );
            }
            None => out!("{}", String::from_utf8_lossy(&csv)),
        }
        return Ok(());
    }
    let (label, model) = spec.model.resolve()?;
    let dep = spec.deployment.resolve(&model)?;
    let p = project(&label, &model, &dep)?;
    if a.json {
        outln!("{}", serde_json::to_string_pretty(&p)?);
    } else {
        out!("{}", projection_text(&p));
    }
    Ok(())
}

fn validate(dir: &std::path::Path, tokens_per_s: Option<f64>, json: bool) -> Result<()> {
    let v = harness::sysmodel::validate::validate(dir, tokens_per_s)?;
    if json {
        outln!("{}", serde_json::to_string_pretty(&v)?);
    } else {
        out!("{}", validation_text(&v));
    }
    let failed = v.failures();
    if !failed.is_empty() {
        let names: Vec<String> = failed
            .iter()
            .map(|r| format!("{}/{}", r.suite, r.run_id))
            .collect();
        anyhow::bail!(
            "{} of {} runs fail validation (bytes or memory differ from the model, or files are missing): {}",
            failed.len(),
            v.runs.len(),
            names.join(", ")
        );
    }
    Ok(())
}
