//! The abstract's byte claims put against the formulas: for which expert share s, ρ/M and H
//! the 1.42× (against DiLoCo and Photon) and 45.44× (against DDP) follow, and what the same
//! ratios are for the paper-like presets, with memory per site at 100B.
//!
//! From `crate::bytes` (per round, b bytes per value, N = 1 so that N_exp = s):
//! - DiLoCo/FoMoE = 2(M−1)/M / (2(M−1)/M·(1−s) + 2(ρ−1)/M·s) = (M−1)/((M−1)(1−s) + (ρ−1)s),
//!   which for large M at fixed ρ/M tends to 1/(1 − s(1 − ρ/M)) (`diloco_over_fomoe_large_m`);
//! - Photon/FoMoE = 2N·b per client over FoMoE's = M/((M−1)(1−s) + (ρ−1)s), the same limit;
//! - DDP/FoMoE over a round = H × DiLoCo/FoMoE.
//!
//! So 1.42× needs s = (1 − 1/1.42)/(1 − ρ/M): 0.592 at ρ/M = 1/2, 0.395 at 1/4; and 45.44×
//! needs H = 45.44/1.42 = 32 whatever s is. The finite-M table shows how far M sites are from
//! the limit (at ρ/M = 1/2, s = 0.592: M = 8 gives 1.51× against DiLoCo, 1.73× against
//! Photon). The paper-like rows are [`super::project`] of each preset, not closed forms.

use serde::Serialize;

use super::deployment::{DeploymentSpec, ModelSpec};
use super::memory::StateMemory;
use super::{project, Projection};
use crate::bytes;
use crate::config::Method;

/// The abstract's claimed reduction against DiLoCo and Photon.
pub const CLAIM_VS_DILOCO: f64 = 1.42;
/// The abstract's claimed reduction against DDP.
pub const CLAIM_VS_DDP: f64 = 45.44;
/// Expert shares the ratio grid shows (0.592 is the one the claims imply at ρ/M = 1/2).
pub const SHARES: [f64; 6] = [0.5, 0.592, 0.7, 0.8, 0.9, 0.95];
/// ρ/M values the grid shows.
pub const RHO_OVER_M: [(usize, usize); 4] = [(1, 8), (1, 4), (1, 2), (3, 4)];

/// What s and H the claims need at one ρ/M (large M).
#[derive(Clone, Debug, PartialEq, Serialize)]
pub struct Solve {
    pub rho_over_m: f64,
    /// s at which DiLoCo/FoMoE = 1.42 (none above 1: the claim cannot hold at this ρ/M).
    pub share_for_claim: Option<f64>,
    /// H at which DDP/FoMoE = 45.44 given DiLoCo/FoMoE = 1.42.
    pub inner_steps_for_claim: f64,
}

/// DiLoCo/FoMoE at large M for one (s, ρ/M), and DDP/FoMoE at the claims' H = 32.
#[derive(Clone, Debug, PartialEq, Serialize)]
pub struct LimitRatio {
    pub expert_share: f64,
    pub rho_over_m: f64,
    pub vs_diloco: f64,
    pub vs_ddp_h32: f64,
}

/// Exact ratios at M sites, ρ = M/2, for one s.
#[derive(Clone, Debug, PartialEq, Serialize)]
pub struct FiniteRatio {
    pub sites: usize,
    pub rho: usize,
    pub expert_share: f64,
    pub vs_diloco: f64,
    pub vs_photon: f64,
    pub vs_ddp_h32: f64,
}

/// The ratios of one preset under one deployment (from [`project`]).
#[derive(Clone, Debug, PartialEq, Serialize)]
pub struct PaperRow {
    pub label: String,
    pub total_params: u64,
    pub expert_share: f64,
    pub sites: usize,
    pub rho: usize,
    pub inner_steps: usize,
    pub fomoe_payload_bytes_per_round_per_site: f64,
    pub vs_diloco: f64,
    pub vs_photon: f64,
    pub vs_ddp: f64,
    /// The large-M limit at this s and ρ/M, beside the exact ratio.
    pub vs_diloco_large_m: f64,
}

/// Memory per site of one method at 100B.
#[derive(Clone, Debug, PartialEq, Serialize)]
pub struct MemoryRow {
    pub label: String,
    pub sites: usize,
    pub rho: usize,
    pub method: &'static str,
    pub memory_per_site: StateMemory,
    pub fits_80gb: bool,
    pub fits_141gb: bool,
    pub accelerators_80gb: u64,
    pub accelerators_141gb: u64,
}

/// Everything `fomoe project --headline` prints.
#[derive(Clone, Debug, PartialEq, Serialize)]
pub struct Headline {
    pub claim_vs_diloco: f64,
    pub claim_vs_ddp: f64,
    pub solve: Vec<Solve>,
    pub limits: Vec<LimitRatio>,
    pub finite: Vec<FiniteRatio>,
    pub paper: Vec<PaperRow>,
    pub memory_100b: Vec<MemoryRow>,
}

/// DiLoCo/FoMoE per round at M sites (closed forms of `crate::bytes`, N = 1).
pub fn vs_diloco(sites: usize, rho: usize, s: f64) -> f64 {
    bytes::diloco_bytes_per_round(sites, 1.0, 1.0)
        / bytes::fomoe_bytes_per_round(sites, rho, 1.0 - s, s, 1.0)
}

/// Photon/FoMoE per round at M sites: a client's N·b up + N·b down over FoMoE's per site.
pub fn vs_photon(sites: usize, rho: usize, s: f64) -> f64 {
    let (up, down) = bytes::photon_client_bytes_per_round(1.0, 1.0);
    (up + down) / bytes::fomoe_bytes_per_round(sites, rho, 1.0 - s, s, 1.0)
}

fn paper_projection(
    preset: &str,
    sites: usize,
    rho: usize,
    h: usize,
) -> anyhow::Result<Projection> {
    let (label, model) = ModelSpec {
        preset: Some(preset.into()),
        ..Default::default()
    }
    .resolve()?;
    let dep = DeploymentSpec {
        sites: Some(sites),
        rho: Some(rho),
        inner_steps: Some(h),
        ..Default::default()
    }
    .resolve(&model)?;
    project(&label, &model, &dep)
}

/// Presets of the paper-like rows.
pub const PAPER_PRESETS: [&str; 3] = ["paper-1b", "paper-10b", "paper-100b"];
/// (M, ρ) of the paper-like rows, all at H = 32.
pub const PAPER_DEPLOYMENTS: [(usize, usize); 4] = [(8, 2), (8, 4), (16, 4), (16, 8)];

/// The headline tables (see the module doc).
pub fn headline() -> anyhow::Result<Headline> {
    let h = CLAIM_VS_DDP / CLAIM_VS_DILOCO;
    let solve = RHO_OVER_M
        .iter()
        .map(|&(a, b)| {
            let r = a as f64 / b as f64;
            let s = (1.0 - 1.0 / CLAIM_VS_DILOCO) / (1.0 - r);
            Solve {
                rho_over_m: r,
                share_for_claim: (s <= 1.0).then_some(s),
                inner_steps_for_claim: h,
            }
        })
        .collect();
    let mut limits = Vec::new();
    for s in SHARES {
        for &(a, b) in &RHO_OVER_M {
            let r = a as f64 / b as f64;
            let x = bytes::diloco_over_fomoe_large_m(s, r);
            limits.push(LimitRatio {
                expert_share: s,
                rho_over_m: r,
                vs_diloco: x,
                vs_ddp_h32: 32.0 * x,
            });
        }
    }
    let finite = [2usize, 4, 8, 16, 64, 1024]
        .iter()
        .map(|&m| FiniteRatio {
            sites: m,
            rho: m / 2,
            expert_share: 0.592,
            vs_diloco: vs_diloco(m, m / 2, 0.592),
            vs_photon: vs_photon(m, m / 2, 0.592),
            vs_ddp_h32: 32.0 * vs_diloco(m, m / 2, 0.592),
        })
        .collect();
    let mut paper = Vec::new();
    let mut memory_100b = Vec::new();
    for preset in PAPER_PRESETS {
        for &(m, rho) in &PAPER_DEPLOYMENTS {
            let p = paper_projection(preset, m, rho, 32)?;
            let get = |x: Method| {
                p.method(x)
                    .expect("every method is projected")
                    .payload_bytes_per_round_per_site
            };
            let fomoe = get(Method::Fomoe);
            paper.push(PaperRow {
                label: p.label.clone(),
                total_params: p.counts.total,
                expert_share: p.counts.expert_share,
                sites: m,
                rho,
                inner_steps: 32,
                fomoe_payload_bytes_per_round_per_site: fomoe,
                vs_diloco: get(Method::Diloco) / fomoe,
                vs_photon: get(Method::Photon) / fomoe,
                vs_ddp: get(Method::Ddp) / fomoe,
                vs_diloco_large_m: bytes::diloco_over_fomoe_large_m(
                    p.counts.expert_share,
                    rho as f64 / m as f64,
                ),
            });
            if preset == "paper-100b" && m == 8 {
                for r in &p.methods {
                    if r.method != "fomoe" && rho != 2 {
                        continue; // the other methods do not depend on ρ
                    }
                    memory_100b.push(MemoryRow {
                        label: p.label.clone(),
                        sites: m,
                        rho,
                        method: r.method,
                        memory_per_site: r.memory_per_site.clone(),
                        fits_80gb: r.fits_80gb,
                        fits_141gb: r.fits_141gb,
                        accelerators_80gb: r.accelerators_80gb,
                        accelerators_141gb: r.accelerators_141gb,
                    });
                }
            }
        }
    }
    Ok(Headline {
        claim_vs_diloco: CLAIM_VS_DILOCO,
        claim_vs_ddp: CLAIM_VS_DDP,
        solve,
        limits,
        finite,
        paper,
        memory_100b,
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_claims_follow_at_s_0592_half_replication_h_32() {
        let h = headline().unwrap();
        let half = h.solve.iter().find(|s| s.rho_over_m == 0.5).unwrap();
        let s = half.share_for_claim.unwrap();
        assert!((s - 0.592).abs() < 1e-3, "{s}");
        assert!((half.inner_steps_for_claim - 32.0).abs() < 1e-12);
        let at = h
            .limits
            .iter()
            .find(|r| r.expert_share == 0.592 && r.rho_over_m == 0.5)
            .unwrap();
        assert!((at.vs_diloco - 1.4205).abs() < 1e-4);
        assert!((at.vs_ddp_h32 - 45.45).abs() < 0.01);
        // Finite M approaches the limit from above; Photon's ratio from further above.
        let f8 = h.finite.iter().find(|f| f.sites == 8).unwrap();
        assert!((f8.vs_diloco - 7.0 / (7.0 * 0.408 + 3.0 * 0.592)).abs() < 1e-12);
        assert!((f8.vs_photon - 8.0 / (7.0 * 0.408 + 3.0 * 0.592)).abs() < 1e-12);
        let big = h.finite.iter().find(|f| f.sites == 1024).unwrap();
        assert!((big.vs_diloco - at.vs_diloco).abs() < 1e-3);
        assert!((big.vs_photon - at.vs_diloco).abs() < 2e-3);
    }

    #[test]
    fn paper_rows_agree_with_the_closed_forms() {
        let h = headline().unwrap();
        assert_eq!(h.paper.len(), 12);
        for r in &h.paper {
            let exact = vs_diloco(r.sites, r.rho, r.expert_share);
            assert!(
                (r.vs_diloco - exact).abs() < 1e-9 * exact,
                "{r:?} vs {exact}"
            );
            assert!((r.vs_ddp / r.vs_diloco - 32.0).abs() < 1e-9);
        }
        // Memory at 100B: FoMoE ρ = 2 of 8 holds dense + a quarter of the experts.
        let m = |method: &str, rho| {
            h.memory_100b
                .iter()
                .find(|r| r.method == method && r.rho == rho)
                .unwrap()
                .memory_per_site
                .total
        };
        assert_eq!(m("ddp", 2), 16 * 98_875_250_688);
        assert_eq!(m("fomoe", 2), 24 * (8_680_937_472 + 90_194_313_216 / 4));
        assert_eq!(m("fomoe", 4), 24 * (8_680_937_472 + 90_194_313_216 / 2));
    }
}
