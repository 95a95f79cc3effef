//! Comparisons across a suite's complete runs that the figures and REPORT.md share.
//!
//! **Skip-token throughput** ([`skip_token_points`]). "With skip-token" is a FoMoE run whose
//! sites hold ρ/M < 1 of the experts and skip the slots routed to absent experts
//! (`skip_policy` `drop` or `renormalize`): each site computes only its resident experts'
//! share of the slots. `reroute` runs are left out: they send those slots to resident
//! experts instead, so they compute as much as a full replica. "Without"
//! is measured on the full-replica runs of the same suite: FoMoE runs with ρ = M and DiLoCo
//! runs, which train the same model with the same per-site step but every expert resident.
//! Both are the per-site compute throughput of [`crate::load`] (tokens per second of forward
//! and backward time, mean over sites), compared only within one preset (same model, batch
//! and sequence length) and one thread count per site. For each (preset, threads, ρ/M) the
//! speed-up is mean(with) / mean(without), each a plain mean over runs; a group without a
//! full-replica run has no speed-up.
//!
//! **Payload ratios between methods** ([`payload_ratios`]): for every complete FoMoE run and
//! each baseline method, the baseline run of that method with the same preset, sites, steps,
//! inner steps (H, for methods with rounds) and wire dtype, the same seed where there is one;
//! ratio = baseline payload / FoMoE payload. No
//! such run: no ratio (never the closest one, which would compare different budgets).

use harness::config::Method;
use harness::model::SkipPolicy;

use crate::load::{RunData, SuiteData};

/// ρ/M of a FoMoE run; 1 for every other method (all experts resident).
pub fn resident_fraction(run: &RunData) -> Option<f64> {
    let c = run.summary.config.as_ref()?;
    Some(if c.method == Method::Fomoe {
        c.fomoe.rho as f64 / c.sites as f64
    } else {
        1.0
    })
}

/// One (preset, threads, ρ/M) group of FoMoE runs with skip-token, against the full replica.
#[derive(Clone, Debug, PartialEq)]
pub struct SkipTokenPoint {
    pub preset: String,
    pub threads: usize,
    pub rho_over_m: f64,
    /// The FoMoE runs at this ρ/M and their per-site compute tokens/s.
    pub runs: Vec<(String, f64)>,
    pub tokens_per_s: f64,
    /// The full-replica runs of the same preset and threads, and their mean.
    pub reference_runs: Vec<(String, f64)>,
    pub reference_tokens_per_s: Option<f64>,
    /// tokens_per_s / reference_tokens_per_s.
    pub speedup: Option<f64>,
}

fn mean(v: &[(String, f64)]) -> Option<f64> {
    (!v.is_empty()).then(|| v.iter().map(|x| x.1).sum::<f64>() / v.len() as f64)
}

/// Whether a run trains the full model on every site with the FoMoE/DiLoCo step.
fn is_full_replica(run: &RunData) -> bool {
    run.summary.config.as_ref().is_some_and(|c| {
        c.method == Method::Diloco || (c.method == Method::Fomoe && c.fomoe.rho == c.sites)
    })
}

/// Skip-token groups of the suite, sorted by preset, threads, then ρ/M.
pub fn skip_token_points(suite: &SuiteData) -> Vec<SkipTokenPoint> {
    let usable =
        |r: &&RunData| r.summary.is_complete() && r.compute_tokens_per_s_per_site.is_some();
    let mut out: Vec<SkipTokenPoint> = Vec::new();
    for run in suite.runs.iter().filter(usable) {
        let (Some(c), Some(f), Some(tps)) = (
            run.summary.config.as_ref(),
            resident_fraction(run),
            run.compute_tokens_per_s_per_site,
        ) else {
            continue;
        };
        if c.method != Method::Fomoe || f >= 1.0 || c.fomoe.skip_policy == SkipPolicy::Reroute {
            continue;
        }
        let key = (c.preset.clone(), run.threads, f);
        match out
            .iter_mut()
            .find(|p| (p.preset.clone(), p.threads, p.rho_over_m) == key)
        {
            Some(p) => p.runs.push((run.id().to_string(), tps)),
            None => out.push(SkipTokenPoint {
                preset: key.0,
                threads: key.1,
                rho_over_m: key.2,
                runs: vec![(run.id().to_string(), tps)],
                tokens_per_s: 0.0,
                reference_runs: Vec::new(),
                reference_tokens_per_s: None,
                speedup: None,
            }),
        }
    }
    for p in &mut out {
        p.tokens_per_s = mean(&p.runs).unwrap_or(0.0);
        p.reference_runs = suite
            .runs
            .iter()
            .filter(usable)
            .filter(|r| is_full_replica(r) && r.threads == p.threads)
            .filter(|r| {
                r.summary
                    .config
                    .as_ref()
                    .is_some_and(|c| c.preset == p.preset)
            })
            .filter_map(|r| Some((r.id().to_string(), r.compute_tokens_per_s_per_site?)))
            .collect();
        p.reference_tokens_per_s = mean(&p.reference_runs);
        p.speedup = p
            .reference_tokens_per_s
            .filter(|&r| r > 0.0)
            .map(|r| p.tokens_per_s / r);
    }
    out.sort_by(|a, b| {
        (&a.preset, a.threads)
            .cmp(&(&b.preset, b.threads))
            .then(a.rho_over_m.total_cmp(&b.rho_over_m))
    });
    out
}

/// A FoMoE run's payload against one baseline run with the same budget (module doc).
#[derive(Clone, Debug, PartialEq)]
pub struct PayloadRatio {
    pub fomoe_run: String,
    pub baseline: Method,
    pub baseline_run: String,
    pub sites: usize,
    pub rho: usize,
    pub inner_steps: usize,
    pub fomoe_payload: u64,
    pub baseline_payload: u64,
    /// baseline payload / FoMoE payload.
    pub ratio: f64,
}

/// Every (FoMoE run, baseline run) pair with the same preset, sites, steps, H and wire dtype.
pub fn payload_ratios(suite: &SuiteData, baseline: Method) -> Vec<PayloadRatio> {
    let complete: Vec<&RunData> = suite
        .runs
        .iter()
        .filter(|r| r.summary.is_complete())
        .collect();
    let mut out = Vec::new();
    for f in &complete {
        let Some(fc) = f.summary.config.as_ref() else {
            continue;
        };
        if fc.method != Method::Fomoe || f.summary.payload_bytes == 0 {
            continue;
        }
        let same_budget = |r: &&&RunData, same_seed: bool| {
            r.summary.config.as_ref().is_some_and(|c| {
                c.method == baseline
                    && c.preset == fc.preset
                    && c.sites == fc.sites
                    && c.steps == fc.steps
                    && (!baseline.has_rounds() || c.inner_steps == fc.inner_steps)
                    && c.wire_dtype == fc.wire_dtype
                    && (!same_seed || c.seed == fc.seed)
            })
        };
        // The same seed first, else any seed of the same configuration.
        let Some(b) = complete
            .iter()
            .find(|r| same_budget(r, true))
            .or_else(|| complete.iter().find(|r| same_budget(r, false)))
        else {
            continue;
        };
        out.push(PayloadRatio {
            fomoe_run: f.id().to_string(),
            baseline,
            baseline_run: b.id().to_string(),
            sites: fc.sites,
            rho: fc.fomoe.rho,
            inner_steps: fc.inner_steps,
            fomoe_payload: f.summary.payload_bytes,
            baseline_payload: b.summary.payload_bytes,
            ratio: b.summary.payload_bytes as f64 / f.summary.payload_bytes as f64,
        });
    }
    out
}
