//! Time of a round: communication from the link model and the exact step loads, compute
//! from FLOPs or a measured rate, and the two combined with an overlap factor.
//!
//! **Communication** of one sync ([`sync_seconds`]), with `w_{k,ℓ}` the wire bytes (payload +
//! framing) link ℓ carries at step k of the lockstep schedule ([`super::traffic`]), and δ_ℓ,
//! R_ℓ its one-way delay and rate:
//!
//!   T_sync = Σ_k max_ℓ (δ_ℓ + 8·w_{k,ℓ} / R_ℓ),   k = 1 … max_G 2(|G| − 1).
//!
//! For one ring of M sites and n values (DDP, DiLoCo, Photon ring) on uniform links this is
//! METHODS.md's 2(M−1)·(α + n·b/(M·B)) (plus framing); FoMoE's holder groups share the
//! 2(M−1) latency steps of its dense ring instead of adding their own. Photon's star is two
//! steps, upload and download; with [`StarLink::Shared`] the aggregator's link (the fastest
//! of its pair links) carries all M clients' messages one after another, so each step takes
//! δ + 8·Σ_c w_c / R_agg = δ + M·N·b/B, METHODS.md's "aggregator's link shared M ways";
//! with [`StarLink::PerClient`] each client has its own link, δ + 8·w/R.
//!
//! **How the `sim` backend relates.** `sim` sends each message over its own directed pair
//! link, busy for 8·w/R, arriving δ later, and a ring step's receive waits for the
//! predecessor's send; the groups of a round run in the same lockstep schedule
//! (`collective::ring_allreduce_groups`). With every site arriving at the sync at once and
//! no jitter, a sync on `sim` takes T_sync up to its 1 ns rounding per message. It differs
//! where sites arrive apart (their compute and local evaluation differ, and site 0 evaluates
//! the global model after a sync while the others go on: the sync then also holds that wait,
//! which the model leaves out), and where a step's dependencies let a ring run ahead of its
//! slowest link. `relay` adds TCP and the token bucket; neither models congestion control.
//! `fomoe project --validate` reports the resulting error per method and backend, and the
//! arrival wait beside it.
//!
//! **Compute** per inner step: tokens_per_step · F_site / (MFU · peak) with F_site from
//! [`super::counts::TokenFlops`] (FoMoE: expert FLOPs × (1 − skip_rate)), or from a measured
//! full-replica rate: tokens_per_step / tokens_per_s · F_site / F.
//!
//! **Wall** with overlap ovl ∈ [0, 1] (METHODS.md):
//! wall = compute + (1 − ovl)·comm + max(0, ovl·comm − compute). ovl = 0: compute + comm;
//! ovl = 1: max(compute, comm).

use super::deployment::{ComputeRate, StarLink};
use super::traffic::{StepLoads, SyncPlan};
use crate::collective::WireDtype;
use crate::net::{LinkMatrix, LinkSpec};

fn link_seconds(link: LinkSpec, wire_bytes: u64) -> f64 {
    link.delay.as_secs_f64() + 8.0 * wire_bytes as f64 / link.rate_bps as f64
}

fn step_seconds(step: &StepLoads, links: &LinkMatrix) -> f64 {
    step.iter()
        .map(|(&(from, to), load)| {
            let link = links
                .get(from, to)
                .unwrap_or_else(|| panic!("no link {from} → {to} in the link matrix"));
            link_seconds(link, load.wire_bytes)
        })
        .fold(0.0, f64::max)
}

/// The aggregator's link under [`StarLink::Shared`]: the fastest of its pair links, with the
/// largest delay among them.
fn shared_link(step: &StepLoads, links: &LinkMatrix) -> LinkSpec {
    let pairs: Vec<LinkSpec> = step.keys().filter_map(|&(f, t)| links.get(f, t)).collect();
    LinkSpec {
        rate_bps: pairs.iter().map(|l| l.rate_bps).max().unwrap_or(1),
        delay: pairs.iter().map(|l| l.delay).max().unwrap_or_default(),
        jitter: Default::default(),
    }
}

/// Seconds of one sync of `plan` (see the module doc).
pub fn sync_seconds(plan: &SyncPlan, wire: WireDtype, links: &LinkMatrix, star: StarLink) -> f64 {
    let shared = matches!((plan, star), (SyncPlan::Star { .. }, StarLink::Shared));
    let mut total = 0.0;
    plan.for_each_step(wire, |s| {
        total += if shared {
            let bytes: u64 = s.values().map(|l| l.wire_bytes).sum();
            link_seconds(shared_link(s, links), bytes)
        } else {
            step_seconds(s, links)
        };
    });
    total
}

/// Seconds of one inner step's compute at `flops_per_token` (the site's) for a model whose
/// full replica needs `full_flops_per_token`.
pub fn compute_step_seconds(
    rate: ComputeRate,
    tokens_per_step: u64,
    flops_per_token: f64,
    full_flops_per_token: f64,
) -> f64 {
    let tokens = tokens_per_step as f64;
    match rate {
        ComputeRate::Flops { peak_flops, mfu } => tokens * flops_per_token / (mfu * peak_flops),
        ComputeRate::TokensPerS { tokens_per_s } => {
            tokens / tokens_per_s * flops_per_token / full_flops_per_token
        }
    }
}

/// Wall time of `compute` and `comm` with overlap `ovl` (see the module doc).
pub fn overlapped(compute: f64, comm: f64, ovl: f64) -> f64 {
    compute + (1.0 - ovl) * comm + (ovl * comm - compute).max(0.0)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::config::{Method, PhotonTopology};
    use crate::model::ModelConfig;
    use crate::net::Topology;
    use crate::sysmodel::traffic::method_sync;
    use std::time::Duration;

    fn uniform(world: usize, rate_bps: u64, delay_ms: u64) -> LinkMatrix {
        Topology::uniform(LinkSpec {
            rate_bps,
            delay: Duration::from_millis(delay_ms),
            jitter: Duration::ZERO,
        })
        .resolve(world)
        .unwrap()
    }

    #[test]
    fn one_ring_is_methods_md_formula_plus_framing() {
        let c = ModelConfig::preset("small").unwrap(); // N = 707200, divisible by 4
        let links = uniform(4, 100_000_000, 20);
        let s = method_sync(&c, Method::Diloco, 4, 4, 8, PhotonTopology::Star).unwrap();
        let t = sync_seconds(&s.plan, WireDtype::F32, &links, StarLink::Shared);
        let chunk = 4 * c.total_params() as u64 / 4; // bytes per message
        let framing = crate::net::frame::message_framing_bytes(chunk, 16 << 20);
        let want = 6.0 * (0.020 + 8.0 * (chunk + framing) as f64 / 1e8);
        assert!((t - want).abs() < 1e-12, "{t} vs {want}");
    }

    #[test]
    fn fomoe_groups_share_the_dense_rings_latency_steps() {
        let c = ModelConfig::preset("small").unwrap();
        let links = uniform(4, 100_000_000, 20);
        let w = WireDtype::F32;
        let t = |m, rho| {
            let s = method_sync(&c, m, 4, rho, 8, PhotonTopology::Star).unwrap();
            sync_seconds(&s.plan, w, &links, StarLink::Shared)
        };
        let diloco = t(Method::Diloco, 4);
        assert_eq!(t(Method::Fomoe, 4), diloco);
        // Latency bound: 6 steps of 20 ms, whatever the groups.
        for rho in [1, 2] {
            let f = t(Method::Fomoe, rho);
            assert!(f > 6.0 * 0.020 && f < diloco, "rho {rho}: {f} vs {diloco}");
        }
        assert!(t(Method::Fomoe, 1) < t(Method::Fomoe, 2));
    }

    #[test]
    fn a_shared_aggregator_link_takes_m_times_longer_to_fill() {
        let c = ModelConfig::preset("tiny").unwrap();
        let links = uniform(5, 1_000_000_000, 0);
        let s = method_sync(&c, Method::Photon, 4, 2, 4, PhotonTopology::Star).unwrap();
        let shared = sync_seconds(&s.plan, WireDtype::F32, &links, StarLink::Shared);
        let own = sync_seconds(&s.plan, WireDtype::F32, &links, StarLink::PerClient);
        assert!((shared / own - 4.0).abs() < 1e-12, "{shared} {own}");
    }

    #[test]
    fn overlap_formula_degenerate_cases() {
        assert_eq!(overlapped(2.0, 3.0, 0.0), 5.0);
        assert_eq!(overlapped(2.0, 3.0, 1.0), 3.0);
        assert_eq!(overlapped(3.0, 2.0, 1.0), 3.0);
        assert_eq!(overlapped(2.0, 2.0, 0.5), 3.0);
        let r = ComputeRate::Flops {
            peak_flops: 1e12,
            mfu: 0.5,
        };
        assert_eq!(compute_step_seconds(r, 1000, 1e6, 1e6), 2e-3);
        let m = ComputeRate::TokensPerS {
            tokens_per_s: 500.0,
        };
        assert_eq!(compute_step_seconds(m, 1000, 5e5, 1e6), 1.0);
    }
}
