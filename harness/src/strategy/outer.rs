//! The outer optimiser, applied to the averaged pseudo-gradient of a round.
//!
//! With θ_g the global copy a site keeps of what it holds and Δ = mean over the holders of
//! (θ_g − θ_site):
//! - Nesterov (DiLoCo; lr 0.7, μ 0.9): v ← μ·v + Δ; θ_g ← θ_g − lr·(Δ + μ·v)
//! - FedAvg (Photon; lr 1): θ_g ← θ_g − lr·Δ, which at lr 1 is the plain mean of θ_site.
//!
//! Degenerate cases: Nesterov with μ = 0 is FedAvg with the same lr; with one site and
//! lr 1, θ_g ← θ_site (training is unchanged by the sync).
//! Every holder applies the same update to bit-identical Δ, so holders stay bit-identical.

use tch::Tensor;

use crate::config::OuterOptimizer;

pub struct OuterOptimizerState {
    pub kind: OuterOptimizer,
    /// θ_g, flat, in the site's layout.
    pub global: Tensor,
    /// v (Nesterov only).
    pub momentum: Option<Tensor>,
}

impl OuterOptimizerState {
    pub fn new(kind: OuterOptimizer, initial: &Tensor) -> Self {
        let momentum = match kind {
            OuterOptimizer::Nesterov { .. } => Some(initial.zeros_like()),
            OuterOptimizer::Fedavg { .. } => None,
        };
        Self {
            kind,
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
        tch::no_grad(|| match self.kind {
            OuterOptimizer::Nesterov { lr, momentum } => {
                let v = self.momentum.as_mut().expect("nesterov has momentum");
                let _ = v.g_mul_scalar_(momentum);
                let _ = v.g_add_(delta);
                let step = delta + &*v * momentum;
                let _ = self.global.g_sub_(&(step * lr));
            }
            OuterOptimizer::Fedavg { lr } => {
                let _ = self.global.g_sub_(&(delta * lr));
            }
        });
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
