//! Criterion bench of one MoE layer, forward + backward, at the proxy-s shape
//! (4096 tokens, d 256, E 16, k 2, d_e 256), full residency and a quarter of the experts
//! resident (FoMoE ρ/M = 1/4 with `drop`).
//! `cargo bench -p fomoe-harness --bench moe_layer`

use criterion::{criterion_group, criterion_main, Criterion};
use harness::model::moe::{
    moe_forward, AuxScope, ExpertWeights, LayerResidency, RoutingOptions, SkipPolicy,
};
use harness::model::RouterKind;
use tch::{Kind, Tensor};

fn bench(c: &mut Criterion) {
    tch::set_num_threads(2);
    harness::sys::tune_allocator();
    let (t, d, e, de) = (4096i64, 256i64, 16usize, 256i64);
    tch::manual_seed(0);
    let opts = (Kind::Float, tch::Device::Cpu);
    let x = Tensor::randn([t, d], opts).set_requires_grad(true);
    let router = (Tensor::randn([e as i64, d], opts) * 0.02).set_requires_grad(true);
    let fc1: Vec<Tensor> = (0..e)
        .map(|_| (Tensor::randn([de, d], opts) * 0.02).set_requires_grad(true))
        .collect();
    let fc2: Vec<Tensor> = (0..e)
        .map(|_| (Tensor::randn([d, de], opts) * 0.02).set_requires_grad(true))
        .collect();
    let mut group = c.benchmark_group("moe_layer_fwd_bwd");
    group.sample_size(20);
    for (name, resident, policy) in [
        ("full", (0..e).collect::<Vec<_>>(), None),
        (
            "quarter_resident_drop",
            vec![0, 1, 2, 3],
            Some(SkipPolicy::Drop),
        ),
    ] {
        let res = LayerResidency::new(e, &resident);
        let w = ExpertWeights {
            fc1: resident.iter().map(|&i| &fc1[i]).collect(),
            fc2: resident.iter().map(|&i| &fc2[i]).collect(),
        };
        let o = RoutingOptions {
            top_k: 2,
            router: RouterKind::SoftmaxTopk,
            skip_policy: policy,
            aux_scope: AuxScope::All,
        };
        group.bench_function(name, |b| {
            b.iter(|| {
                let out = moe_forward(&x, &router, &w, &res, o);
                let loss = out.y.square().mean(Kind::Float) + out.balance;
                let mut inputs: Vec<&Tensor> = vec![&x, &router];
                inputs.extend(w.fc1.iter().copied());
                inputs.extend(w.fc2.iter().copied());
                Tensor::run_backward(&[loss], &inputs, false, false)
            })
        });
    }
    group.finish();
}

criterion_group!(benches, bench);
criterion_main!(benches);
