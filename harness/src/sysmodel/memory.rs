//! Training-state memory per site: what each method keeps for the parameters it holds.
//!
//! With n = parameters held by the site ([`super::counts::params_held`]), every buffer f32
//! as the harness keeps it (`runner::site::SiteMemory` reports the same fields, measured from
//! what was allocated):
//! - parameters 4n, gradients 4n, AdamW moments m and v 8n;
//! - outer state: the global copy θ_g (4n) plus the momentum v (4n) over the whole buffer
//!   when any parameter group (dense, router, experts: `outer_groups`) uses Nesterov.
//!   DiLoCo and FoMoE (Nesterov by default) keep 8n, Photon in ring mode (FedAvg) 4n, DDP and
//!   Photon's star clients none (the aggregator keeps θ_g: 4N, plus 4N with Nesterov).
//!
//! So a site holds 16n (DDP, Photon star client) or 24n (DiLoCo, FoMoE with Nesterov)
//! bytes; FoMoE's n is N_dense + (ρ/M)·N_exp. bf16 mixed precision with f32 master weights
//! holds the same 16 bytes per value (2 + 2 bf16 weights and gradients, 4 master, 8
//! moments), so one accounting serves both. Activations are not part of this state: they
//! are set by the micro-batch and recomputation, chosen per deployment and equal across
//! methods for the same model (see [`super::run_memory`] for the estimate a run checks).
//!
//! "Fits" compares the state with one accelerator's memory in decimal gigabytes (80 GB:
//! A100/H100, 141 GB: H200); `accelerators_*` is the fewest such accelerators whose memory
//! together holds it (the state sharded ZeRO-style over a site's accelerators).

use serde::Serialize;

use crate::config::{Method, OuterOptimizer, PhotonTopology, ResolvedOuter};

/// Bytes per parameter value of each f32 buffer.
pub const F32_BYTES: u64 = 4;
/// Memory of the named accelerators, decimal bytes.
pub const ACCELERATOR_80GB: u64 = 80_000_000_000;
pub const ACCELERATOR_141GB: u64 = 141_000_000_000;

/// Training state of one site, in bytes (the fields of `runner::site::SiteMemory`).
#[derive(Clone, Debug, PartialEq, Eq, Serialize)]
pub struct StateMemory {
    pub params: u64,
    pub grads: u64,
    pub inner_optimizer: u64,
    pub outer_state: u64,
    pub total: u64,
    pub params_held: u64,
}

/// f32 copies of the held parameters the outer optimiser keeps on a site of `method`.
pub fn outer_copies(method: Method, topology: PhotonTopology, outer: ResolvedOuter) -> u64 {
    let nesterov = |k: OuterOptimizer| matches!(k, OuterOptimizer::Nesterov { .. });
    match (method, topology) {
        (Method::Single | Method::Ddp, _) | (Method::Photon, PhotonTopology::Star) => 0,
        _ if nesterov(outer.dense) || nesterov(outer.router) || nesterov(outer.experts) => 2,
        _ => 1,
    }
}

impl StateMemory {
    /// The state of a site holding `params_held` values with `outer_copies` outer copies.
    pub fn of(params_held: u64, outer_copies: u64) -> Self {
        let n = params_held;
        let (params, grads, inner) = (F32_BYTES * n, F32_BYTES * n, 2 * F32_BYTES * n);
        let outer = outer_copies * F32_BYTES * n;
        Self {
            params,
            grads,
            inner_optimizer: inner,
            outer_state: outer,
            total: params + grads + inner + outer,
            params_held: n,
        }
    }

    /// Whether the state fits one accelerator of `capacity` bytes.
    pub fn fits(&self, capacity: u64) -> bool {
        self.total <= capacity
    }

    /// Fewest accelerators of `capacity` bytes whose memory together holds the state.
    pub fn accelerators(&self, capacity: u64) -> u64 {
        self.total.div_ceil(capacity)
    }
}

/// Photon's aggregator: θ_g of all N values, plus the momentum with Nesterov.
pub fn aggregator_state_bytes(total_params: u64, outer: OuterOptimizer) -> u64 {
    let copies = match outer {
        OuterOptimizer::Nesterov { .. } => 2,
        OuterOptimizer::Fedavg { .. } => 1,
    };
    copies * F32_BYTES * total_params
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn sixteen_or_twenty_four_bytes_per_held_value() {
        let nesterov = ResolvedOuter::uniform(OuterOptimizer::diloco_default());
        let fedavg = ResolvedOuter::uniform(OuterOptimizer::fedavg_default());
        let star = PhotonTopology::Star;
        // One Nesterov group puts a momentum over the whole buffer.
        let experts_only = ResolvedOuter {
            experts: OuterOptimizer::diloco_default(),
            ..fedavg
        };
        assert_eq!(outer_copies(Method::Fomoe, star, experts_only), 2);
        assert_eq!(outer_copies(Method::Ddp, star, nesterov), 0);
        assert_eq!(outer_copies(Method::Photon, star, fedavg), 0);
        assert_eq!(
            outer_copies(Method::Photon, PhotonTopology::Ring, fedavg),
            1
        );
        assert_eq!(outer_copies(Method::Diloco, star, nesterov), 2);
        assert_eq!(outer_copies(Method::Fomoe, star, fedavg), 1);
        let m = StateMemory::of(1000, 2);
        assert_eq!(
            (m.params, m.grads, m.inner_optimizer, m.outer_state, m.total),
            (4000, 4000, 8000, 8000, 24_000)
        );
        assert_eq!(StateMemory::of(1000, 0).total, 16_000);
        assert!(StateMemory::of(5_000_000_000, 0).fits(ACCELERATOR_80GB));
        assert!(!StateMemory::of(5_000_000_001, 0).fits(ACCELERATOR_80GB));
        assert_eq!(
            StateMemory::of(5_000_000_001, 0).accelerators(ACCELERATOR_80GB),
            2
        );
        assert_eq!(
            aggregator_state_bytes(10, OuterOptimizer::diloco_default()),
            80
        );
    }
}
