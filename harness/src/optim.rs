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
//!
//! On the CPU the update is two fused passes over host memory split across libtorch's
//! thread count, around libtorch's own `sqrt` (`fused`): about 44 bytes of memory traffic
//! per parameter instead of about 90 for the seven libtorch kernels the same update takes
//! elsewhere (GPU tensors). It rounds exactly as those kernels do on the CPU, so a run's
//! numbers do not depend on which path took the step (pinned bit for bit by a test and by
//! the smoke reference). In f32, each arrow one rounding:
//!   pass 1:  m ← fma(w1, g − m, m);  v ← fma(w2, g·g − v, v)
//!   libtorch: s ← √v   (its vectorised sqrt is not IEEE-exact for every value, so it is
//!            called rather than written here)
//!   pass 2:  θ ← θ·d;  q ← s·a;  q ← q + b;  θ ← θ + m/q
//! with d = 1 − lr·wd on the decayed range (1 elsewhere), w1 = 1 − β1, w2 = 1 − β2
//! (libtorch's `lerp` with a weight below ½ is that fused multiply-add),
//! a = −(1 − β1^t)/(lr·√(1 − β2^t)), b = −ε·(1 − β1^t)/lr, each an f64 cast once to f32
//! (so m/q = −lr/bc1 · m/(√v̂ + ε)). Elementwise, so the result does not depend on the
//! thread count. Written here rather than taken from a crate because it must reproduce
//! libtorch's rounding bit for bit.

use crate::model::params::with_f32_values;
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
    /// On the CPU one fused pass; elsewhere in-place and out= kernels over one scratch
    /// buffer. No allocation per step either way.
    pub fn step(&mut self, flat: &Tensor, grad: &Tensor, lr: f64) {
        let host = |t: &Tensor| {
            t.device() == tch::Device::Cpu && t.kind() == Kind::Float && t.is_contiguous()
        };
        if [flat, grad, &self.exp_avg, &self.exp_avg_sq]
            .iter()
            .all(|t| host(t))
        {
            self.fused(flat, grad, lr, tch::get_num_threads().max(1) as usize);
        } else {
            self.kernels(flat, grad, lr);
        }
    }

    /// [`AdamW::step`] as two fused passes over host memory on `threads` threads.
    fn fused(&mut self, flat: &Tensor, grad: &Tensor, lr: f64, threads: usize) {
        self.step += 1;
        let c = &self.cfg;
        let t = self.step as i32;
        let (bc1, bc2) = (1.0 - c.beta1.powi(t), 1.0 - c.beta2.powi(t));
        let decay = if c.weight_decay > 0.0 {
            (1.0 - lr * c.weight_decay) as f32
        } else {
            1.0
        };
        let n = flat.numel();
        assert!(grad.numel() == n && self.exp_avg.numel() == n && self.exp_avg_sq.numel() == n);
        // At least 64 Ki values a thread: below that a thread costs more than it saves.
        let threads = threads.clamp(1, n.div_ceil(1 << 16).max(1));
        let chunk = n.div_ceil(threads).next_multiple_of(64);
        let (w1, w2) = ((1.0 - c.beta1) as f32, (1.0 - c.beta2) as f32);
        // The gradient is only read; a shallow handle lends its memory.
        let mut grad_t = grad.shallow_clone();
        with_f32_values(&mut grad_t, |g| {
            with_f32_values(&mut self.exp_avg, |m| {
                with_f32_values(&mut self.exp_avg_sq, |v| {
                    let parts = g
                        .chunks(chunk)
                        .zip(m.chunks_mut(chunk))
                        .zip(v.chunks_mut(chunk));
                    in_parallel(parts, |_, ((g, m), v)| moments_chunk(g, m, v, w1, w2));
                })
            })
        });
        let scratch = self.scratch.get_or_insert_with(|| grad.empty_like());
        let _ = self.exp_avg_sq.sqrt_out(scratch);
        let coeffs = UpdateCoeffs {
            decay,
            scale: (-bc1 / (lr * bc2.sqrt())) as f32,
            shift: (-c.eps * bc1 / lr) as f32,
        };
        let mut theta_t = flat.shallow_clone();
        let mut root_t = scratch.shallow_clone();
        let decayed = &self.decayed;
        with_f32_values(&mut theta_t, |theta| {
            with_f32_values(&mut self.exp_avg, |m| {
                with_f32_values(&mut root_t, |root| {
                    let parts = theta
                        .chunks_mut(chunk)
                        .zip(m.chunks(chunk))
                        .zip(root.chunks(chunk));
                    in_parallel(parts, |i, ((theta, m), root)| {
                        update_chunk(theta, m, root, i * chunk, decayed, &coeffs)
                    });
                })
            })
        });
    }

    /// [`AdamW::step`] as libtorch kernels (any device).
    fn kernels(&mut self, flat: &Tensor, grad: &Tensor, lr: f64) {
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

/// Scalars of the second fused pass (see the module doc: d, a, b).
struct UpdateCoeffs {
    decay: f32,
    scale: f32,
    shift: f32,
}

/// `work(i, part)` for every part, all but the last on scoped threads of their own.
fn in_parallel<T: Send>(parts: impl Iterator<Item = T>, work: impl Fn(usize, T) + Sync) {
    let work = &work;
    std::thread::scope(|s| {
        let mut parts = parts.enumerate().peekable();
        while let Some((i, part)) = parts.next() {
            if parts.peek().is_none() {
                work(i, part); // the last part on this thread
            } else {
                s.spawn(move || work(i, part));
            }
        }
    });
}

/// Runs `body` compiled for AVX2 with hardware FMA where the CPU has them (vectorised
/// `mul_add`), else as it is; the same roundings either way.
#[inline(always)]
fn with_fma(body: impl FnOnce()) {
    #[cfg(target_arch = "x86_64")]
    if std::arch::is_x86_feature_detected!("avx2") && std::arch::is_x86_feature_detected!("fma") {
        /// # Safety
        /// The CPU must support AVX2 and FMA.
        #[target_feature(enable = "avx2,fma")]
        unsafe fn fast(body: impl FnOnce()) {
            body()
        }
        // SAFETY: the CPU has AVX2 and FMA (checked just above), all `fast` needs.
        unsafe { fast(body) };
        return;
    }
    body()
}

/// Pass 1 on one chunk: the moments (see the module doc).
fn moments_chunk(g: &[f32], m: &mut [f32], v: &mut [f32], w1: f32, w2: f32) {
    with_fma(|| {
        for ((&gi, mi), vi) in g.iter().zip(m.iter_mut()).zip(v.iter_mut()) {
            *mi = w1.mul_add(gi - *mi, *mi);
            *vi = w2.mul_add(gi * gi - *vi, *vi);
        }
    })
}

/// Pass 2 on one chunk whose first element is `start` of the flat buffer: decay and step.
fn update_chunk(
    theta: &mut [f32],
    m: &[f32],
    root: &[f32],
    start: usize,
    decayed: &Range<usize>,
    c: &UpdateCoeffs,
) {
    let len = theta.len();
    // Local [0, d0) undecayed, [d0, d1) decayed, [d1, len) undecayed.
    let d0 = decayed.start.clamp(start, start + len) - start;
    let d1 = (decayed.end.clamp(start, start + len) - start).max(d0);
    for (lo, hi, decay) in [(0, d0, 1.0), (d0, d1, c.decay), (d1, len, 1.0)] {
        let it = theta[lo..hi].iter_mut().zip(&m[lo..hi]).zip(&root[lo..hi]);
        for ((th, &mi), &ri) in it {
            let q = ri * c.scale + c.shift;
            *th = *th * decay + mi / q;
        }
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
    fn the_fused_pass_matches_the_kernels_and_not_the_thread_count() {
        // 300k values: several 64 Ki chunks, the decayed range cutting through two of them,
        // and a length no vector width divides (libtorch's scalar tail is checked too).
        let n = 300_007usize;
        let mut rng = crate::rng::Rng::new(3);
        let mut draw = |s: f64| -> Vec<f32> { (0..n).map(|_| (rng.normal() * s) as f32).collect() };
        let (theta0, grads) = (draw(0.1), [draw(1e-2), draw(3e-2), draw(1e-3)]);
        let cfg = AdamWConfig::default();
        let decayed = 70_000..250_001;
        let run = |how: &dyn Fn(&mut AdamW, &Tensor, &Tensor)| {
            let flat = Tensor::from_slice(&theta0);
            let mut opt = AdamW::new(cfg.clone(), n, decayed.clone());
            for g in &grads {
                how(&mut opt, &flat, &Tensor::from_slice(g));
            }
            (
                Vec::<f32>::try_from(&flat).unwrap(),
                Vec::<f32>::try_from(&opt.exp_avg_sq).unwrap(),
            )
        };
        let one = run(&|o, f, g| o.fused(f, g, 1e-3, 1));
        let three = run(&|o, f, g| o.fused(f, g, 1e-3, 3));
        assert_eq!(
            one, three,
            "elementwise: bit-identical for any thread count"
        );
        let kernels = run(&|o, f, g| o.kernels(f, g, 1e-3));
        let differ = |a: &[f32], b: &[f32]| a.iter().zip(b).filter(|(x, y)| x != y).count();
        assert_eq!(
            (differ(&one.0, &kernels.0), differ(&one.1, &kernels.1)),
            (0, 0),
            "values of θ and v where the fused pass and the kernels differ"
        );
        assert_ne!(one.0, theta0);
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
