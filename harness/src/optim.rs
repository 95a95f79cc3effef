//! The inner optimiser: AdamW over a flat parameter buffer, its learning-rate schedule and
//! global-norm gradient clipping.
//!
//! AdamW (decoupled weight decay, PyTorch semantics), at step t ≥ 1 with gradient g:
//!   θ ← θ·(1 − lr·wd)           (decayed range only)
//!   m ← β1·m + (1 − β1)·g
//!   v ← β2·v + (1 − β2)·g²
//!   θ ← θ − lr · (m / (1 − β1^t)) / (√(v / (1 − β2^t)) + ε)
//!
//! Schedule: linear warmup lr·(t+1)/W for t < W, then cosine from lr to lr·min_ratio at the
//! last step. Clipping: if ‖g‖₂ > c, g ← g·c/‖g‖₂.
//!
//! State is two flat tensors the size of the parameters (m, v) plus the step count, so its
//! memory is exactly 8 bytes per held parameter and it checkpoints as two tensors.

use serde::{Deserialize, Serialize};
use std::ops::Range;
use tch::{Kind, Tensor};

#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct AdamWConfig {
    pub lr: f64,
    pub beta1: f64,
    pub beta2: f64,
    pub eps: f64,
    pub weight_decay: f64,
    pub warmup_steps: usize,
    /// Final lr as a fraction of `lr` at the end of the cosine.
    pub min_lr_ratio: f64,
    /// Global-norm clip threshold; 0 disables.
    pub grad_clip: f64,
}

impl Default for AdamWConfig {
    fn default() -> Self {
        Self {
            lr: 1e-3,
            beta1: 0.9,
            beta2: 0.95,
            eps: 1e-8,
            weight_decay: 0.1,
            warmup_steps: 20,
            min_lr_ratio: 0.1,
            grad_clip: 1.0,
        }
    }
}

impl AdamWConfig {
    pub fn validate(&self) -> Result<(), crate::model::ConfigError> {
        use crate::model::ConfigError as E;
        if !(self.lr > 0.0 && self.lr.is_finite()) {
            return Err(E::new("lr", self.lr, "must be a finite number > 0"));
        }
        for (f, v) in [("beta1", self.beta1), ("beta2", self.beta2)] {
            if !(0.0..1.0).contains(&v) {
                return Err(E::new(f, v, "must be in [0, 1)"));
            }
        }
        if !(self.eps > 0.0) {
            return Err(E::new("eps", self.eps, "must be > 0"));
        }
        if !(self.weight_decay >= 0.0) {
            return Err(E::new("weight_decay", self.weight_decay, "must be >= 0"));
        }
        if !(0.0..=1.0).contains(&self.min_lr_ratio) {
            return Err(E::new(
                "min_lr_ratio",
                self.min_lr_ratio,
                "must be in [0, 1]",
            ));
        }
        if !(self.grad_clip >= 0.0) {
            return Err(E::new(
                "grad_clip",
                self.grad_clip,
                "must be >= 0 (0 disables)",
            ));
        }
        Ok(())
    }

    /// Learning rate at step `t` (0-based) of a run of `total` steps.
    pub fn lr_at(&self, t: usize, total: usize) -> f64 {
        if t < self.warmup_steps {
            return self.lr * (t + 1) as f64 / self.warmup_steps as f64;
        }
        let span = total.saturating_sub(self.warmup_steps).max(1) as f64;
        let progress = ((t - self.warmup_steps) as f64 / span).min(1.0);
        let min_lr = self.lr * self.min_lr_ratio;
        min_lr + 0.5 * (self.lr - min_lr) * (1.0 + (std::f64::consts::PI * progress).cos())
    }
}

/// AdamW state over a flat buffer.
pub struct AdamW {
    pub cfg: AdamWConfig,
    pub exp_avg: Tensor,
    pub exp_avg_sq: Tensor,
    pub step: u64,
    /// Range of the buffer that gets weight decay.
    pub decayed: Range<usize>,
    scratch: Option<Tensor>,
}

impl AdamW {
    pub fn new(cfg: AdamWConfig, numel: usize, decayed: Range<usize>) -> Self {
        let z = || Tensor::zeros([numel as i64], (Kind::Float, crate::device::device()));
        Self {
            cfg,
            exp_avg: z(),
            exp_avg_sq: z(),
            step: 0,
            decayed,
            scratch: None,
        }
    }

    /// Bytes of optimiser state held (m and v, f32).
    pub fn bytes(&self) -> usize {
        8 * self.exp_avg.numel()
    }

    /// Forget the moments (inner state reset between rounds when that knob is off).
    pub fn reset(&mut self) {
        tch::no_grad(|| {
            let _ = self.exp_avg.zero_();
            let _ = self.exp_avg_sq.zero_();
        });
        self.step = 0;
    }

    /// One update of `flat` (parameters, in place) with gradient `grad` at learning rate `lr`.
    /// In-place and out= kernels over one scratch buffer: no allocation per step.
    pub fn step(&mut self, flat: &Tensor, grad: &Tensor, lr: f64) {
        tch::no_grad(|| {
            self.step += 1;
            let t = self.step as i32;
            let c = &self.cfg;
            if c.weight_decay > 0.0 && !self.decayed.is_empty() {
                let mut dec = flat.narrow(0, self.decayed.start as i64, self.decayed.len() as i64);
                let _ = dec.g_mul_scalar_(1.0 - lr * c.weight_decay);
            }
            let scratch = self.scratch.get_or_insert_with(|| grad.empty_like());
            let _ = self.exp_avg.lerp_(grad, 1.0 - c.beta1);
            let _ = grad.mul_out(scratch, grad);
            let _ = self.exp_avg_sq.lerp_(scratch, 1.0 - c.beta2);
            let bc1 = 1.0 - c.beta1.powi(t);
            let bc2 = 1.0 - c.beta2.powi(t);
            // scratch = −(bc1/lr)·(√v/√bc2 + ε), so θ += m / scratch is θ −= lr/bc1 · m/(√v̂ + ε).
            let _ = self.exp_avg_sq.sqrt_out(scratch);
            let _ = scratch.g_mul_scalar_(-bc1 / (lr * bc2.sqrt()));
            let _ = scratch.g_add_scalar_(-c.eps * bc1 / lr);
            let _ = flat.shallow_clone().addcdiv_(&self.exp_avg, scratch);
        });
    }
}

/// Global L2 norm of `grad`; scales it in place to `max_norm` when above (max_norm > 0).
pub fn clip_grad_norm(grad: &mut Tensor, max_norm: f64) -> f64 {
    let norm = grad.norm().double_value(&[]);
    if max_norm > 0.0 && norm > max_norm {
        let _ = grad.g_mul_scalar_(max_norm / (norm + 1e-6));
    }
    norm
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn matches_scalar_adamw_reference() {
        // Reference AdamW on scalars, three steps, one decayed and one not.
        let cfg = AdamWConfig {
            lr: 0.1,
            beta1: 0.9,
            beta2: 0.99,
            eps: 1e-8,
            weight_decay: 0.5,
            ..Default::default()
        };
        let flat = Tensor::from_slice(&[1.0f32, -2.0]);
        let mut opt = AdamW::new(cfg.clone(), 2, 1..2);
        let grads = [[0.5f32, 0.25], [-1.0, 0.5], [0.1, -0.3]];
        let (mut th, mut m, mut v) = ([1.0f64, -2.0], [0.0f64; 2], [0.0f64; 2]);
        for (t, g) in grads.iter().enumerate() {
            opt.step(&flat, &Tensor::from_slice(g), 0.1);
            for i in 0..2 {
                if i == 1 {
                    th[i] *= 1.0 - 0.1 * 0.5;
                }
                let gi = g[i] as f64;
                m[i] = 0.9 * m[i] + 0.1 * gi;
                v[i] = 0.99 * v[i] + 0.01 * gi * gi;
                let mh = m[i] / (1.0 - 0.9f64.powi(t as i32 + 1));
                let vh = v[i] / (1.0 - 0.99f64.powi(t as i32 + 1));
                th[i] -= 0.1 * mh / (vh.sqrt() + 1e-8);
            }
        }
        let got = Vec::<f32>::try_from(&flat).unwrap();
        for i in 0..2 {
            assert!(
                (got[i] as f64 - th[i]).abs() < 1e-5,
                "{i}: {} vs {}",
                got[i],
                th[i]
            );
        }
    }

    #[test]
    fn schedule_warms_up_then_decays_to_min() {
        let c = AdamWConfig {
            lr: 1.0,
            warmup_steps: 10,
            min_lr_ratio: 0.1,
            ..Default::default()
        };
        assert!((c.lr_at(0, 100) - 0.1).abs() < 1e-12);
        assert!((c.lr_at(9, 100) - 1.0).abs() < 1e-12);
        assert!((c.lr_at(10, 100) - 1.0).abs() < 1e-12);
        assert!((c.lr_at(100, 100) - 0.1).abs() < 1e-12);
        assert!(c.lr_at(50, 100) < c.lr_at(30, 100));
    }

    #[test]
    fn clipping_scales_to_max_norm() {
        let mut g = Tensor::from_slice(&[3.0f32, 4.0]);
        let n = clip_grad_norm(&mut g, 1.0);
        assert!((n - 5.0).abs() < 1e-6);
        assert!((g.norm().double_value(&[]) - 1.0).abs() < 1e-5);
        let mut g = Tensor::from_slice(&[0.3f32, 0.4]);
        clip_grad_norm(&mut g, 1.0);
        assert_eq!(Vec::<f32>::try_from(&g).unwrap(), vec![0.3, 0.4]);
    }
}
