//! What the MoE-layer benches share: the proxy-s layer's inputs and one forward + backward.

use harness::model::moe::{moe_forward, ExpertWeights, LayerResidency, RoutingOptions};
use tch::{Kind, Tensor};

/// Experts of the proxy-s layer.
pub const E: usize = 16;

/// One MoE layer's inputs at the proxy-s shape (4096 tokens, d 256, E 16, d_e 256), seeded,
/// every tensor requiring its gradient: (x, router, fc1 per expert, fc2 per expert).
pub fn proxy_s_layer() -> (Tensor, Tensor, Vec<Tensor>, Vec<Tensor>) {
    tch::set_num_threads(2);
    harness::sys::tune_allocator();
    let (t, d, de) = (4096i64, 256i64, 256i64);
    tch::manual_seed(0);
    let opts = (Kind::Float, tch::Device::Cpu);
    let x = Tensor::randn([t, d], opts).set_requires_grad(true);
    let router = (Tensor::randn([E as i64, d], opts) * 0.02).set_requires_grad(true);
    let fc1 = (0..E)
        .map(|_| (Tensor::randn([de, d], opts) * 0.02).set_requires_grad(true))
        .collect();
    let fc2 = (0..E)
        .map(|_| (Tensor::randn([d, de], opts) * 0.02).set_requires_grad(true))
        .collect();
    (x, router, fc1, fc2)
}

/// Forward through the layer, then backward of mean(y²) + balance loss to every input
/// (the gradients are returned, so the bench keeps them).
pub fn fwd_bwd(
    x: &Tensor,
    router: &Tensor,
    w: &ExpertWeights<'_>,
    res: &LayerResidency,
    o: RoutingOptions,
) -> Vec<Tensor> {
    let out = moe_forward(x, router, w, res, o);
    let loss = out.y.square().mean(Kind::Float) + out.balance;
    let mut inputs: Vec<&Tensor> = vec![x, router];
    inputs.extend(w.fc1.iter().copied());
    inputs.extend(w.fc2.iter().copied());
    Tensor::run_backward(&[loss], &inputs, false, false)
}
