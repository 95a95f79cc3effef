//! Matmuls in the run's precision (the `precision` knob, see [`crate::device`]).
//!
//! `fp32`: `x·wᵀ` in f32, the exact op the model always ran. `bf16`: both operands cast to
//! bf16 and multiplied in bf16 with f32 accumulation, as bf16 autocast does; the result is
//! bf16 and the first op that meets an f32 tensor (residual add, gate scaling, the loss's
//! cast) promotes it back, so everything but the matmuls stays f32. The casts are in the
//! graph, so gradients reach the f32 master weights as f32.

use tch::{Kind, Tensor};

use crate::device::Precision;

/// `x · wᵀ` (a bias-free Linear with weight `w` [out, in]) in precision `p`.
pub fn linear(x: &Tensor, w: &Tensor, p: Precision) -> Tensor {
    match p {
        Precision::Fp32 => x.linear::<Tensor>(w, None),
        Precision::Bf16 => x
            .to_kind(Kind::BFloat16)
            .linear::<Tensor>(&w.to_kind(Kind::BFloat16), None),
    }
}

/// `t` as f32 (a no-op for f32 tensors).
pub fn to_f32(t: Tensor) -> Tensor {
    if t.kind() == Kind::Float {
        t
    } else {
        t.to_kind(Kind::Float)
    }
}
