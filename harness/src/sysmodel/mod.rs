//! The system model: what DDP, DiLoCo, Photon and FoMoE need of memory, bytes and time at a
//! scale this machine cannot train (`fomoe project`), checked against measured runs
//! (`fomoe project --validate`), and the memory estimate every run passes before it starts.
//!
//! One idea per file:
//! - [`counts`]: N_dense, N_exp, N_active, s, parameters held per site, FLOPs per token;
//! - [`memory`]: training state per site (parameters, gradients, AdamW, outer state);
//! - [`traffic`]: what one sync moves on which link at which step (bytes from `crate::bytes`);
//! - [`time`]: communication (lockstep ring / star over the link model), compute, overlap;
//! - [`deployment`]: the input (model and deployment, flags or TOML) and its validation;
//! - [`project`](fn@project): all of the above for every method, one [`Projection`];
//! - [`sweep`]: projections over a grid of knob values, as CSV rows;
//! - [`headline`]: where the abstract's 1.42× and 45.44× come from, and paper-like shapes;
//! - [`validate`]: predictions for every run of a results directory against what it measured;
//! - [`run_memory`], [`machine`]: a run's memory estimate against this machine's memory.
//!
//! Per method and round (H inner steps), with n_site the parameters a site holds:
//! memory per site = 16·n_site (+ 8·n_site outer state for DiLoCo and FoMoE), payload per site
//! per round = H·2(M−1)/M·N·b (DDP), 2(M−1)/M·N·b (DiLoCo), N·b up + N·b down (Photon
//! client), 2(M−1)/M·N_dense·b + 2(ρ−1)/M·N_exp·b (FoMoE, mean over sites); per token divide
//! by H·tokens_per_step. Per-site payloads sum to the round's whole payload (Photon's
//! downloads are the aggregator's sends), so ratios between methods are ratios of totals:
//! DiLoCo/FoMoE and Photon/FoMoE both tend to 1/(1 − s(1 − ρ/M)) for large M. Wall per round = overlapped(H·compute_step, T_sync) (DDP:
//! H·overlapped(compute_step, T_sync)); to a token budget T: T / (M·H·tokens_per_step) rounds.

pub mod counts;
pub mod deployment;
pub mod headline;
pub mod machine;
pub mod memory;
pub mod run_memory;
pub mod sweep;
pub mod time;
pub mod traffic;
pub mod validate;

use serde::Serialize;

use crate::config::{Method, RunConfig};
use crate::model::ModelConfig;
use counts::{ParamCounts, TokenFlops};
use deployment::Deployment;
use memory::{StateMemory, ACCELERATOR_141GB, ACCELERATOR_80GB};

/// The methods a projection covers, in table order.
pub const METHODS: [Method; 4] = [Method::Ddp, Method::Diloco, Method::Photon, Method::Fomoe];

/// One method under one deployment.
#[derive(Clone, Debug, PartialEq, Serialize)]
pub struct MethodProjection {
    pub method: &'static str,
    pub params_held_per_site: u64,
    pub memory_per_site: StateMemory,
    pub fits_80gb: bool,
    pub fits_141gb: bool,
    /// Fewest 80 GB (141 GB) accelerators whose memory together holds a site's state.
    pub accelerators_80gb: u64,
    pub accelerators_141gb: u64,
    /// Photon star: θ_g (and momentum) at the aggregator.
    pub aggregator_state_bytes: Option<u64>,
    /// Syncs per round: H for DDP, 1 otherwise.
    pub syncs_per_round: usize,
    /// Payload per site per round, mean over sites: what a site sends (ring methods), a
    /// client's upload plus its download from the aggregator (Photon star). Summed over the
    /// sites it is all the payload of a round, so ratios between methods compare totals.
    pub payload_bytes_per_round_per_site: f64,
    /// The largest of the sites' payloads per round.
    pub payload_bytes_per_round_per_site_max: f64,
    /// Per round per site over the tokens a site trains per round (H·tokens_per_step).
    pub payload_bytes_per_token_per_site: f64,
    /// Photon star: payload the aggregator sends plus receives per round.
    pub aggregator_payload_bytes_per_round: Option<u64>,
    /// Every endpoint's payload sent per round, together.
    pub payload_bytes_per_round_total: f64,
    /// DDP's payload per site per round over this method's.
    pub bytes_reduction_vs_ddp: f64,
    pub comm_s_per_round: f64,
    pub compute_s_per_round: f64,
    pub wall_s_per_round: f64,
    /// Training tokens per second, all sites together.
    pub tokens_per_s: f64,
    pub rounds_to_budget: f64,
    pub time_to_budget_s: f64,
    pub payload_bytes_to_budget_per_site: f64,
}

/// Every method for one model and deployment.
#[derive(Clone, Debug, PartialEq, Serialize)]
pub struct Projection {
    pub label: String,
    pub model: ModelConfig,
    pub counts: ParamCounts,
    pub flops_per_token: TokenFlops,
    pub deployment: Deployment,
    pub methods: Vec<MethodProjection>,
}

impl Projection {
    pub fn method(&self, m: Method) -> Option<&MethodProjection> {
        self.methods.iter().find(|p| p.method == m.name())
    }
}

/// A run of `method` with every other knob at its default (outer optimisers, topology).
fn default_run(method: Method) -> RunConfig {
    RunConfig {
        method,
        ..Default::default()
    }
}

/// Project every method of [`METHODS`] for `model` under `dep` (both validated).
pub fn project(label: &str, model: &ModelConfig, dep: &Deployment) -> anyhow::Result<Projection> {
    let counts = ParamCounts::of(model);
    let flops = TokenFlops::of(model);
    let (m, rho, h) = (dep.sites, dep.rho, dep.inner_steps);
    let tokens_per_round = h as f64 * dep.tokens_per_step as f64;
    let mut rows: Vec<MethodProjection> = Vec::new();
    for method in METHODS {
        let sync = traffic::method_sync(model, method, m, rho, h, dep.photon_topology)?;
        let run = default_run(method);
        let held = counts::params_held(model, method, m, rho);
        let mem = StateMemory::of(
            held,
            memory::outer_copies(method, dep.photon_topology, run.resolved_outer()),
        );
        let t = sync.plan.traffic(dep.wire);
        let is_star = matches!(sync.plan, traffic::SyncPlan::Star { .. });
        // A site's payload: what it sends, plus (star) what the aggregator sends it.
        let per_sync: Vec<u64> = (0..m)
            .map(|s| {
                t.payload_sent_by(s)
                    + if is_star {
                        t.get(m, s).payload_bytes
                    } else {
                        0
                    }
            })
            .collect();
        let syncs = sync.syncs_per_round as u64;
        let per_round_mean = syncs as f64 * per_sync.iter().sum::<u64>() as f64 / m as f64;
        let per_round_max = syncs as f64 * per_sync.iter().copied().max().unwrap_or(0) as f64;
        let aggregator_bytes = is_star.then(|| {
            let sent = t.payload_sent_by(m);
            let received: u64 = (0..m).map(|c| t.get(c, m).payload_bytes).sum();
            syncs * (sent + received)
        });
        let endpoints = sync.plan.endpoints(m);
        let total = syncs as f64 * (0..endpoints).map(|s| t.payload_sent_by(s)).sum::<u64>() as f64;
        let links = dep.link_matrix(endpoints);
        let t_sync = time::sync_seconds(&sync.plan, dep.wire, &links, dep.star_link);
        let skip = if method == Method::Fomoe {
            dep.skip_rate
        } else {
            0.0
        };
        let step = time::compute_step_seconds(
            dep.compute,
            dep.tokens_per_step,
            flops.with_skip(skip),
            flops.full,
        );
        let compute_round = h as f64 * step;
        let comm_round = syncs as f64 * t_sync;
        let wall_round = if method == Method::Ddp {
            h as f64 * time::overlapped(step, t_sync, dep.overlap)
        } else {
            time::overlapped(compute_round, comm_round, dep.overlap)
        };
        let rounds = dep.token_budget / (m as f64 * tokens_per_round);
        rows.push(MethodProjection {
            method: method.name(),
            params_held_per_site: held,
            fits_80gb: mem.fits(ACCELERATOR_80GB),
            fits_141gb: mem.fits(ACCELERATOR_141GB),
            accelerators_80gb: mem.accelerators(ACCELERATOR_80GB),
            accelerators_141gb: mem.accelerators(ACCELERATOR_141GB),
            memory_per_site: mem,
            aggregator_state_bytes: is_star
                .then(|| memory::aggregator_state_bytes(counts.total, run.outer_optimizer())),
            syncs_per_round: sync.syncs_per_round,
            payload_bytes_per_round_per_site: per_round_mean,
            payload_bytes_per_round_per_site_max: per_round_max,
            payload_bytes_per_token_per_site: per_round_mean / tokens_per_round,
            aggregator_payload_bytes_per_round: aggregator_bytes,
            payload_bytes_per_round_total: total,
            bytes_reduction_vs_ddp: f64::NAN,
            comm_s_per_round: comm_round,
            compute_s_per_round: compute_round,
            wall_s_per_round: wall_round,
            tokens_per_s: m as f64 * tokens_per_round / wall_round,
            rounds_to_budget: rounds,
            time_to_budget_s: rounds * wall_round,
            payload_bytes_to_budget_per_site: rounds * per_round_mean,
        });
    }
    let ddp = rows[0].payload_bytes_per_round_per_site;
    for r in &mut rows {
        r.bytes_reduction_vs_ddp = ddp / r.payload_bytes_per_round_per_site;
    }
    Ok(Projection {
        label: label.to_string(),
        model: model.clone(),
        counts,
        flops_per_token: flops,
        deployment: dep.clone(),
        methods: rows,
    })
}

#[cfg(test)]
mod tests {
    use super::deployment::{DeploymentSpec, ModelSpec};
    use super::*;

    fn projection(preset: &str, sites: usize, rho: usize, h: usize) -> Projection {
        let (label, m) = ModelSpec {
            preset: Some(preset.into()),
            ..Default::default()
        }
        .resolve()
        .unwrap();
        let d = DeploymentSpec {
            sites: Some(sites),
            rho: Some(rho),
            inner_steps: Some(h),
            ..Default::default()
        }
        .resolve(&m)
        .unwrap();
        project(&label, &m, &d).unwrap()
    }

    #[test]
    fn monotone_in_model_size() {
        let sizes = ["paper-1b", "paper-10b", "paper-100b"];
        let p: Vec<Projection> = sizes.iter().map(|s| projection(s, 8, 4, 32)).collect();
        for w in p.windows(2) {
            assert!(w[0].counts.total < w[1].counts.total);
            for (a, b) in w[0].methods.iter().zip(&w[1].methods) {
                assert!(
                    a.memory_per_site.total < b.memory_per_site.total,
                    "{}",
                    a.method
                );
                assert!(
                    a.payload_bytes_per_round_per_site < b.payload_bytes_per_round_per_site,
                    "{}",
                    a.method
                );
                assert!(a.comm_s_per_round < b.comm_s_per_round, "{}", a.method);
                assert!(
                    a.compute_s_per_round < b.compute_s_per_round,
                    "{}",
                    a.method
                );
                assert!(a.time_to_budget_s < b.time_to_budget_s, "{}", a.method);
            }
        }
    }

    #[test]
    fn monotone_in_h() {
        let hs = [1usize, 8, 32, 128];
        let p: Vec<Projection> = hs
            .iter()
            .map(|&h| projection("paper-1b", 8, 2, h))
            .collect();
        for w in p.windows(2) {
            for (a, b) in w[0].methods.iter().zip(&w[1].methods) {
                // Per token, every round-based method sends less with a longer H; DDP the same.
                if a.method == "ddp" {
                    assert_eq!(
                        a.payload_bytes_per_token_per_site,
                        b.payload_bytes_per_token_per_site
                    );
                    assert!(
                        a.payload_bytes_per_round_per_site < b.payload_bytes_per_round_per_site
                    );
                } else {
                    assert!(
                        a.payload_bytes_per_token_per_site > b.payload_bytes_per_token_per_site,
                        "{}",
                        a.method
                    );
                    assert_eq!(
                        a.payload_bytes_per_round_per_site,
                        b.payload_bytes_per_round_per_site
                    );
                    assert!(
                        a.payload_bytes_to_budget_per_site > b.payload_bytes_to_budget_per_site
                    );
                    assert!(a.time_to_budget_s > b.time_to_budget_s, "{}", a.method);
                }
                assert!(a.bytes_reduction_vs_ddp <= b.bytes_reduction_vs_ddp);
            }
        }
    }

    #[test]
    fn ratios_match_the_closed_forms() {
        let p = projection("small", 4, 2, 32);
        let ddp = p.method(Method::Ddp).unwrap();
        let diloco = p.method(Method::Diloco).unwrap();
        let fomoe = p.method(Method::Fomoe).unwrap();
        assert_eq!(diloco.bytes_reduction_vs_ddp, 32.0);
        // quick's measured 1.98× vs DiLoCo: 3 / (3(1 − s) + s) with s = 0.741.
        let s = p.counts.expert_share;
        let r = diloco.payload_bytes_per_round_per_site / fomoe.payload_bytes_per_round_per_site;
        assert!((r - 3.0 / (3.0 * (1.0 - s) + s)).abs() < 1e-12, "{r}");
        assert!((r - 1.977).abs() < 1e-3);
        assert_eq!(ddp.syncs_per_round, 32);
        // Memory: FoMoE holds dense + half the experts, with its outer state.
        let n = p.counts.dense + p.counts.expert / 2;
        assert_eq!(fomoe.memory_per_site.total, 24 * n);
        assert_eq!(ddp.memory_per_site.total, 16 * p.counts.total);
        let photon = p.method(Method::Photon).unwrap();
        assert_eq!(
            photon.aggregator_payload_bytes_per_round,
            Some(2 * 4 * 4 * p.counts.total)
        );
        // A client's upload plus its download: 2·N·b.
        assert_eq!(
            photon.payload_bytes_per_round_per_site,
            8.0 * p.counts.total as f64
        );
        assert_eq!(
            photon.payload_bytes_per_round_total,
            4.0 * photon.payload_bytes_per_round_per_site
        );
    }
}
