//! The system model against measured runs (`fomoe project --validate RESULTS_DIR`).
//!
//! For every complete run of a results directory (one suite, or a directory of suites):
//! - **bytes**, exact: the run's sync plan ([`super::traffic::method_sync`] with the run's
//!   model, M, ρ, H, wire dtype and Photon topology) times its syncs (DDP: steps; the others:
//!   steps / H) predicts every endpoint's training payload; each must equal what the run
//!   measured (`site<i>.json` and `aggregator.json` `payload_sent`), or the run fails
//!   validation, named with the endpoint and both numbers;
//! - **memory**, exact: [`super::memory::StateMemory`] against `site<i>.json` `memory`
//!   (parameters, gradients, AdamW, outer state, all measured from what was allocated);
//! - **time**, reported, never fitted: the predicted communication per site is syncs ×
//!   [`super::time::sync_seconds`] over the run's link matrix (each client with its own link,
//!   as the emulators give it), against the mean over sites of Σ steps.csv `comm_ms`; the
//!   predicted training time adds the run's own measured compute (mean over sites of
//!   Σ data + compute + optimiser ms: an input, so the error is the communication model's and
//!   the waiting it does not model) and is compared with the slowest site's Σ `wall_ms`.
//!   Relative error = (predicted − measured) / measured, summarised per method and backend.
//!   Beside it, as a diagnostic (not a prediction), the waiting the model leaves out: a sync
//!   cannot finish before its last site arrives, and sites arrive apart (compute differs, the
//!   local-model evaluation differs, and site 0 evaluates the global model after a sync while
//!   the others go on). From steps.csv, a site starts a sync at its step's end `clock_s` less
//!   the step's `comm_ms`; the wait is Σ over syncs of (latest − mean start), and the
//!   communication error is shown again with that wait added.
//!   With a measured full-replica rate (`--tokens-per-s`, e.g. from `fomoe bench-step` at the
//!   run's threads per site) the compute is predicted instead: steps × tokens_per_step / rate
//!   × F_site / F, F_site with the run's measured mean skip rate (FoMoE's resident fraction),
//!   and the time error then covers the compute model too.
//!
//! Not predicted, and listed as skipped with the reason: runs that are not complete, FoMoE
//! with `load_aware` placement (its groups and expert moves follow the routing), and resumed
//! runs (their reports cover the resumed part only).

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};

use anyhow::{Context, Result};
use serde::{Deserialize, Serialize};

use super::counts::params_held;
use super::deployment::StarLink;
use super::memory::{outer_copies, StateMemory};
use super::time::sync_seconds;
use super::traffic::{method_sync, SyncPlan};
use crate::config::{Method, Placement, RunConfig};
use crate::results::{suite_dirs, Manifest, RunStatus, MANIFEST_FILE};

/// One exact comparison that failed.
#[derive(Clone, Debug, PartialEq, Eq, Serialize)]
pub struct Mismatch {
    /// `site 2 payload_sent`, `site 0 memory.outer_state`, `aggregator payload_sent`.
    pub what: String,
    pub predicted: u64,
    pub measured: u64,
}

/// Predicted against measured time of one run, seconds.
#[derive(Clone, Debug, PartialEq, Serialize)]
pub struct TimeCheck {
    pub syncs: usize,
    pub sync_s: f64,
    pub comm_predicted_s: f64,
    pub comm_measured_s: f64,
    pub comm_error: f64,
    /// Diagnostic, from the measured clocks: the mean time a site waits at a sync for the last
    /// site to arrive (Σ over syncs of latest − mean start), which the model does not
    /// predict; and the communication error once that wait is added.
    pub wait_s: f64,
    pub comm_error_with_wait: f64,
    /// Mean over sites of measured data + compute + optimiser time.
    pub compute_measured_s: f64,
    /// The compute the prediction uses: the measured one, or from the given tokens/s.
    pub compute_predicted_s: f64,
    /// `measured` or `tokens_per_s`.
    pub compute_source: &'static str,
    pub time_predicted_s: f64,
    pub time_measured_s: f64,
    pub time_error: f64,
}

/// The validation of one run.
#[derive(Clone, Debug, PartialEq, Serialize)]
pub struct RunCheck {
    pub suite: String,
    pub run_id: String,
    pub method: String,
    pub backend: String,
    /// Why the run was not checked (None: checked).
    pub skipped: Option<String>,
    /// Endpoints whose payload was compared (all equal when `mismatches` is empty).
    pub payload_checked: usize,
    pub payload_predicted_total: u64,
    pub payload_measured_total: u64,
    pub mismatches: Vec<Mismatch>,
    /// Files that should be there and could not be read.
    pub unreadable: Option<String>,
    pub time: Option<TimeCheck>,
}

impl RunCheck {
    /// Checked, and bytes and memory equal.
    pub fn passed(&self) -> bool {
        self.skipped.is_some() || (self.mismatches.is_empty() && self.unreadable.is_none())
    }
}

/// Mean and largest |relative error| of one (method, backend).
#[derive(Clone, Debug, PartialEq, Serialize)]
pub struct ErrorSummary {
    pub method: String,
    pub backend: String,
    pub runs: usize,
    pub comm_mean_abs_error: f64,
    pub comm_max_abs_error: f64,
    /// The communication error with the measured wait added (diagnostic).
    pub comm_with_wait_mean_abs_error: f64,
    pub time_mean_abs_error: f64,
    pub time_max_abs_error: f64,
}

/// Everything `--validate` reports.
#[derive(Clone, Debug, PartialEq, Serialize)]
pub struct Validation {
    pub dir: PathBuf,
    pub runs: Vec<RunCheck>,
    pub summary: Vec<ErrorSummary>,
    /// The full-replica tokens/s compute was predicted from (None: the runs' own compute).
    pub tokens_per_s: Option<f64>,
}

impl Validation {
    /// Runs that failed (a byte or memory mismatch, or a file missing).
    pub fn failures(&self) -> Vec<&RunCheck> {
        self.runs.iter().filter(|r| !r.passed()).collect()
    }
}

/// The columns of steps.csv validation reads (other columns are ignored).
#[derive(Deserialize)]
struct StepTimes {
    site: usize,
    step: usize,
    round: usize,
    data_ms: f64,
    compute_ms: f64,
    comm_ms: f64,
    opt_ms: f64,
    wall_ms: f64,
    clock_s: f64,
    skip_rate: f64,
}

fn read_json(path: &Path) -> Result<serde_json::Value> {
    let text =
        std::fs::read_to_string(path).with_context(|| format!("reading {}", path.display()))?;
    serde_json::from_str(&text).with_context(|| format!("parsing {}", path.display()))
}

fn field_u64(v: &serde_json::Value, path: &[&str], file: &Path) -> Result<u64> {
    let mut x = v;
    for p in path {
        x = &x[*p];
    }
    x.as_u64()
        .with_context(|| format!("{}: no number at {}", file.display(), path.join(".")))
}

/// Syncs a run made: DDP one per step, round-based methods one per round, single none.
fn syncs(cfg: &RunConfig) -> usize {
    match cfg.method {
        Method::Single => 0,
        Method::Ddp => cfg.steps,
        _ => cfg.rounds(),
    }
}

fn skip_reason(m: &Manifest) -> Option<String> {
    let cfg = &m.config;
    if m.status != RunStatus::Complete {
        return Some(format!("status {}", m.status.name()));
    }
    if cfg.method == Method::Fomoe && cfg.fomoe.placement == Placement::LoadAware {
        return Some("load_aware placement: its groups follow the routing".into());
    }
    if cfg.resume_from.is_some() {
        return Some("resumed: its reports cover the resumed part only".into());
    }
    None
}

/// Exact payload and memory of every endpoint; returns (checked, predicted, measured).
fn check_exact(
    dir: &Path,
    cfg: &RunConfig,
    plan: &SyncPlan,
    mismatches: &mut Vec<Mismatch>,
) -> Result<(usize, u64, u64)> {
    let mcfg = cfg.model_config()?;
    let n_syncs = syncs(cfg) as u64;
    let traffic = plan.traffic(cfg.wire_dtype);
    let held = params_held(&mcfg, cfg.method, cfg.sites, cfg.fomoe.rho);
    let mem = StateMemory::of(
        held,
        outer_copies(cfg.method, cfg.photon_topology, cfg.resolved_outer()),
    );
    let mut compare = |what: String, predicted: u64, measured: u64| {
        if predicted != measured {
            mismatches.push(Mismatch {
                what,
                predicted,
                measured,
            });
        }
    };
    let (mut predicted_total, mut measured_total) = (0, 0);
    let mut checked = 0;
    for site in 0..cfg.sites {
        let file = dir.join(format!("site{site}.json"));
        let report = read_json(&file)?;
        let predicted = n_syncs * traffic.payload_sent_by(site);
        let measured = field_u64(&report, &["payload_sent"], &file)?;
        compare(format!("site {site} payload_sent"), predicted, measured);
        (predicted_total, measured_total) =
            (predicted_total + predicted, measured_total + measured);
        checked += 1;
        for (name, want) in [
            ("params", mem.params),
            ("grads", mem.grads),
            ("inner_optimizer", mem.inner_optimizer),
            ("outer_state", mem.outer_state),
            ("total", mem.total),
            ("params_held", mem.params_held),
        ] {
            let got = field_u64(&report, &["memory", name], &file)?;
            compare(format!("site {site} memory.{name}"), want, got);
        }
    }
    if let SyncPlan::Star { aggregator, .. } = plan {
        let file = dir.join("aggregator.json");
        let report = read_json(&file)?;
        let predicted = n_syncs * traffic.payload_sent_by(*aggregator);
        let measured = field_u64(&report, &["payload_sent"], &file)?;
        compare("aggregator payload_sent".into(), predicted, measured);
        (predicted_total, measured_total) =
            (predicted_total + predicted, measured_total + measured);
        checked += 1;
    }
    Ok((checked, predicted_total, measured_total))
}

fn relative(predicted: f64, measured: f64) -> f64 {
    (predicted - measured) / measured
}

/// Predicted against measured time (see the module doc).
fn check_time(
    dir: &Path,
    cfg: &RunConfig,
    plan: &SyncPlan,
    tokens_per_s: Option<f64>,
) -> Result<TimeCheck> {
    let path = dir.join(crate::results::run_dir::STEPS_FILE);
    let mut reader =
        csv::Reader::from_path(&path).with_context(|| format!("reading {}", path.display()))?;
    let mut per_site: BTreeMap<usize, (f64, f64, f64)> = BTreeMap::new();
    // When each site starts each sync (its clock at the end of the syncing step, less the
    // step's communication): DDP syncs every step, the others at the last step of a round.
    let mut sync_start: BTreeMap<usize, Vec<f64>> = BTreeMap::new();
    let (mut skip_sum, mut rows) = (0.0, 0usize);
    for row in reader.deserialize::<StepTimes>() {
        let r = row.with_context(|| format!("reading {}", path.display()))?;
        skip_sum += r.skip_rate;
        rows += 1;
        if cfg.method == Method::Ddp || r.step == (r.round + 1) * cfg.inner_steps {
            sync_start
                .entry(r.step)
                .or_default()
                .push(r.clock_s - r.comm_ms / 1e3);
        }
        let e = per_site.entry(r.site).or_default();
        e.0 += r.data_ms + r.compute_ms + r.opt_ms;
        e.1 += r.comm_ms;
        e.2 += r.wall_ms;
    }
    if per_site.len() != cfg.sites {
        anyhow::bail!(
            "{}: rows for {} sites, the run has {}",
            path.display(),
            per_site.len(),
            cfg.sites
        );
    }
    let n = per_site.len() as f64;
    let compute = per_site.values().map(|v| v.0).sum::<f64>() / n / 1e3;
    let comm_measured = per_site.values().map(|v| v.1).sum::<f64>() / n / 1e3;
    let time_measured = per_site.values().map(|v| v.2).fold(0.0, f64::max) / 1e3;
    // Waiting for the last site to arrive at each sync: latest − mean start.
    let wait = sync_start
        .values()
        .map(|t| {
            let latest = t.iter().copied().fold(f64::MIN, f64::max);
            latest - t.iter().sum::<f64>() / t.len() as f64
        })
        .sum::<f64>();
    let links = cfg.link_matrix()?;
    let sync_s = sync_seconds(plan, cfg.wire_dtype, &links, StarLink::PerClient);
    let n_syncs = syncs(cfg);
    let comm_predicted = n_syncs as f64 * sync_s;
    let (compute_predicted, compute_source) = match tokens_per_s {
        None => (compute, "measured"),
        Some(rate) => {
            let mcfg = cfg.model_config()?;
            let flops = super::counts::TokenFlops::of(&mcfg);
            let skip = skip_sum / rows.max(1) as f64;
            let step = super::time::compute_step_seconds(
                super::deployment::ComputeRate::TokensPerS { tokens_per_s: rate },
                mcfg.tokens_per_step() as u64,
                flops.with_skip(skip),
                flops.full,
            );
            (cfg.steps as f64 * step, "tokens_per_s")
        }
    };
    let time_predicted = compute_predicted + comm_predicted;
    Ok(TimeCheck {
        syncs: n_syncs,
        sync_s,
        comm_predicted_s: comm_predicted,
        comm_measured_s: comm_measured,
        comm_error: relative(comm_predicted, comm_measured),
        wait_s: wait,
        comm_error_with_wait: relative(comm_predicted + wait, comm_measured),
        compute_measured_s: compute,
        compute_predicted_s: compute_predicted,
        compute_source,
        time_predicted_s: time_predicted,
        time_measured_s: time_measured,
        time_error: relative(time_predicted, time_measured),
    })
}

/// Validate one run directory (`tokens_per_s`: see the module doc).
pub fn check_run(suite: &str, dir: &Path, tokens_per_s: Option<f64>) -> RunCheck {
    let run_id = dir
        .file_name()
        .map(|n| n.to_string_lossy().into_owned())
        .unwrap_or_default();
    let mut check = RunCheck {
        suite: suite.to_string(),
        run_id,
        method: String::new(),
        backend: String::new(),
        skipped: None,
        payload_checked: 0,
        payload_predicted_total: 0,
        payload_measured_total: 0,
        mismatches: Vec::new(),
        unreadable: None,
        time: None,
    };
    let manifest = match Manifest::read(&dir.join(MANIFEST_FILE)) {
        Ok(m) => m,
        Err(e) => {
            check.unreadable = Some(e.to_string());
            return check;
        }
    };
    let cfg = &manifest.config;
    check.method = cfg.method.name().to_string();
    check.backend = cfg.network.backend.to_string();
    if let Some(reason) = skip_reason(&manifest) {
        check.skipped = Some(reason);
        return check;
    }
    let plan = match cfg
        .model_config()
        .map_err(anyhow::Error::from)
        .and_then(|m| {
            method_sync(
                &m,
                cfg.method,
                cfg.sites,
                cfg.fomoe.rho,
                cfg.inner_steps,
                cfg.photon_topology,
            )
        }) {
        Ok(s) => s.plan,
        Err(e) => {
            check.unreadable = Some(format!("{e:#}"));
            return check;
        }
    };
    match check_exact(dir, cfg, &plan, &mut check.mismatches) {
        Ok((n, p, m)) => {
            check.payload_checked = n;
            check.payload_predicted_total = p;
            check.payload_measured_total = m;
        }
        Err(e) => check.unreadable = Some(format!("{e:#}")),
    }
    match check_time(dir, cfg, &plan, tokens_per_s) {
        Ok(t) => check.time = Some(t),
        Err(e) => {
            check.unreadable.get_or_insert(format!("{e:#}"));
        }
    }
    check
}

fn summarise(runs: &[RunCheck]) -> Vec<ErrorSummary> {
    let mut groups: BTreeMap<(String, String), Vec<&TimeCheck>> = BTreeMap::new();
    for r in runs {
        if let Some(t) = &r.time {
            groups
                .entry((r.method.clone(), r.backend.clone()))
                .or_default()
                .push(t);
        }
    }
    groups
        .into_iter()
        .map(|((method, backend), ts)| {
            let stats = |f: fn(&TimeCheck) -> f64| {
                let abs: Vec<f64> = ts
                    .iter()
                    .map(|t| f(t).abs())
                    .filter(|x| x.is_finite())
                    .collect();
                (
                    abs.iter().sum::<f64>() / abs.len().max(1) as f64,
                    abs.iter().copied().fold(0.0, f64::max),
                )
            };
            let (cm, cx) = stats(|t| t.comm_error);
            let (tm, tx) = stats(|t| t.time_error);
            let (wm, _) = stats(|t| t.comm_error_with_wait);
            ErrorSummary {
                method,
                backend,
                runs: ts.len(),
                comm_mean_abs_error: cm,
                comm_max_abs_error: cx,
                comm_with_wait_mean_abs_error: wm,
                time_mean_abs_error: tm,
                time_max_abs_error: tx,
            }
        })
        .collect()
}

/// Validate every run under `results_dir` (a suite directory or a directory of suites);
/// `tokens_per_s`, a measured full-replica rate per site, predicts compute too.
pub fn validate(results_dir: &Path, tokens_per_s: Option<f64>) -> Result<Validation> {
    if let Some(t) = tokens_per_s {
        if !(t.is_finite() && t > 0.0) {
            anyhow::bail!("invalid tokens_per_s = {t}: must be a finite number > 0");
        }
    }
    let suites = suite_dirs(results_dir)?;
    if suites.is_empty() {
        anyhow::bail!(
            "{}: no run directories (with {MANIFEST_FILE}) found",
            results_dir.display()
        );
    }
    let mut runs = Vec::new();
    for suite_dir in suites {
        let suite = suite_dir
            .file_name()
            .map(|n| n.to_string_lossy().into_owned())
            .unwrap_or_default();
        let mut dirs: Vec<PathBuf> = std::fs::read_dir(&suite_dir)
            .with_context(|| format!("reading {}", suite_dir.display()))?
            .filter_map(|e| e.ok())
            .map(|e| e.path())
            .filter(|p| p.join(MANIFEST_FILE).is_file())
            .collect();
        dirs.sort();
        runs.extend(dirs.iter().map(|d| check_run(&suite, d, tokens_per_s)));
    }
    let summary = summarise(&runs);
    Ok(Validation {
        dir: results_dir.to_path_buf(),
        runs,
        summary,
        tokens_per_s,
    })
}
