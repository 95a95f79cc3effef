//! The outer optimiser, applied to the averaged pseudo-gradient of a round.
//!
//! With θ_g the global copy a site keeps of what it holds and Δ = mean over the holders of
//! (θ_g − θ_site):
//! - Nesterov (DiLoCo; lr 0.7, μ 0.9): v ← μ·v + Δ; θ_g ← θ_g − lr·(Δ + μ·v)
//! - FedAvg (Photon; lr 1): θ_g ← θ_g − lr·Δ, which at lr 1 is the plain mean of θ_site.
//!
//! Each range of the flat buffer has its own optimiser ([`OuterPlan`]): the parameter groups
//! dense, router and experts may differ (`outer_groups`). Updates are elementwise, so a plan
//! with one optimiser everywhere computes exactly what a single optimiser over the whole
//! buffer does, value for value.
//!
//! Degenerate cases: Nesterov with μ = 0 is FedAvg with the same lr; with one site and
//! lr 1, θ_g ← θ_g − (θ_g − θ_site), θ_site up to one rounding of the subtraction.
//! Every holder applies the same update to bit-identical Δ, so holders stay bit-identical.

use std::ops::Range;

use tch::Tensor;

use crate::config::{OuterOptimizer, ResolvedOuter};
use crate::model::params::ParamLayout;

/// Which outer optimiser updates which range of the flat buffer. Ranges are disjoint, in
/// layout order, and cover the buffer; adjacent ranges with the same optimiser are merged.
#[derive(Clone, Debug, PartialEq)]
pub struct OuterPlan {
    pub parts: Vec<(Range<usize>, OuterOptimizer)>,
}

impl OuterPlan {
    /// One optimiser over `n` values.
    pub fn uniform(kind: OuterOptimizer, n: usize) -> Self {
        Self {
            parts: vec![(0..n, kind)],
        }
    }

    /// The plan of a site's layout: routers (`blocks.*.moe.router.weight`) with
    /// `groups.router`, every other dense parameter with `groups.dense`, expert blocks with
    /// `groups.experts`.
    pub fn for_layout(layout: &ParamLayout, groups: &ResolvedOuter) -> Self {
        let mut parts: Vec<(Range<usize>, OuterOptimizer)> = Vec::new();
        let mut specs: Vec<_> = layout.specs.iter().collect();
        specs.sort_by_key(|s| s.offset);
        for spec in specs {
            let kind = if !spec.group.is_dense() {
                groups.experts
            } else if is_router(&spec.name) {
                groups.router
            } else {
                groups.dense
            };
            let r = spec.offset..spec.offset + spec.numel;
            match parts.last_mut() {
                Some((last, k)) if last.end == r.start && *k == kind => last.end = r.end,
                _ => parts.push((r, kind)),
            }
        }
        Self { parts }
    }

    pub fn has_momentum(&self) -> bool {
        self.parts
            .iter()
            .any(|(_, k)| matches!(k, OuterOptimizer::Nesterov { .. }))
    }
}

/// Whether a parameter name is a router weight.
pub fn is_router(name: &str) -> bool {
    name.ends_with(".moe.router.weight")
}

pub struct OuterOptimizerState {
    pub plan: OuterPlan,
    /// θ_g, flat, in the site's layout.
    pub global: Tensor,
    /// v over the whole buffer when any range uses Nesterov (zero and unused elsewhere).
    pub momentum: Option<Tensor>,
}

impl OuterOptimizerState {
    /// One optimiser over the whole buffer (Photon's aggregator, tests).
    pub fn new(kind: OuterOptimizer, initial: &Tensor) -> Self {
        Self::with_plan(OuterPlan::uniform(kind, initial.numel()), initial)
    }

    pub fn with_plan(plan: OuterPlan, initial: &Tensor) -> Self {
        let momentum = plan.has_momentum().then(|| initial.zeros_like());
        Self {
            plan,
            global: initial.detach().copy(),
            momentum,
        }
    }

    /// Bytes held: global copy and momentum.
    pub fn bytes(&self) -> usize {
        4 * self.global.numel() * if self.momentum.is_some() { 2 } else { 1 }
    }

    /// Apply the update for the averaged pseudo-gradient `delta` (same layout as `global`).
    pub fn apply(&mut self, delta: &Tensor) {
        let _g = tch::no_grad_guard();
        for (r, kind) in &self.plan.parts {
            let (start, len) = (r.start as i64, r.len() as i64);
            let d = delta.narrow(0, start, len);
            let mut g = self.global.narrow(0, start, len);
            match *kind {
                OuterOptimizer::Nesterov { lr, momentum } => {
                    let mut v = self
                        .momentum
                        .as_ref()
                        .expect("a plan with nesterov has momentum")
                        .narrow(0, start, len);
                    let _ = v.g_mul_scalar_(momentum);
                    let _ = v.g_add_(&d);
                    let step = &d + &v * momentum;
                    let _ = g.g_sub_(&(step * lr));
                }
                OuterOptimizer::Fedavg { lr } => {
                    let _ = g.g_sub_(&(&d * lr));
                }
            }
        }
    }
}

impl OuterOptimizerState {
    pub fn save(
        &self,
        w: &mut crate::checkpoint::CheckpointWriter,
        layout: &crate::model::ParamLayout,
    ) {
        w.params("outer.global.", layout, &self.global);
        if let Some(m) = &self.momentum {
            w.params("outer.momentum.", layout, m);
        }
    }

    pub fn load(
        &mut self,
        ck: &crate::checkpoint::Checkpoint,
        layout: &crate::model::ParamLayout,
    ) -> anyhow::Result<()> {
        ck.read_params("outer.global.", layout, &self.global)?;
        if let Some(m) = &self.momentum {
            ck.read_params("outer.momentum.", layout, m)?;
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::model::params::tensor_to_vec;

    #[test]
    fn nesterov_matches_hand_computation_and_fedavg_lr1_is_the_mean() {
        let init = Tensor::from_slice(&[1.0f32, 2.0]);
        let mut o = OuterOptimizerState::new(
            OuterOptimizer::Nesterov {
                lr: 0.5,
                momentum: 0.9,
            },
            &init,
        );
        o.apply(&Tensor::from_slice(&[0.2f32, -0.4]));
        // v = Δ; step = Δ + 0.9Δ = 1.9Δ; θ = θ − 0.5·1.9Δ
        let got = tensor_to_vec(&o.global);
        assert!(
            (got[0] - (1.0 - 0.95 * 0.2)).abs() < 1e-6
                && (got[1] - (2.0 + 0.95 * 0.4)).abs() < 1e-6
        );
        o.apply(&Tensor::from_slice(&[0.2f32, -0.4]));
        // v = 0.9·Δ + Δ = 1.9Δ; step = Δ + 0.9·1.9Δ = 2.71Δ
        let got2 = tensor_to_vec(&o.global);
        assert!((got2[0] - (got[0] - 0.5 * 2.71 * 0.2)).abs() < 1e-6);

        let mut f = OuterOptimizerState::new(OuterOptimizer::Fedavg { lr: 1.0 }, &init);
        // Δ = θ_g − mean(θ_site) with sites at 0 and 4 for coordinate 0: mean 2 → Δ = −1.
        f.apply(&Tensor::from_slice(&[-1.0f32, 0.0]));
        assert_eq!(tensor_to_vec(&f.global), vec![2.0, 2.0]);
        assert_eq!(o.bytes(), 16);
        assert_eq!(f.bytes(), 8);
    }
}
