//! Criterion bench of one MoE layer, forward + backward, at the proxy-s shape
//! (4096 tokens, d 256, E 16, k 2, d_e 256), full residency and a quarter of the experts
//! resident (FoMoE ρ/M = 1/4 with `drop`).
//! `cargo bench -p fomoe-harness --bench moe_layer`

use criterion::{criterion_group, criterion_main, Criterion};
use harness::model::moe::{AuxScope, ExpertWeights, LayerResidency, RoutingOptions, SkipPolicy};
use harness::model::RouterKind;

mod common;

fn bench(c: &mut Criterion) {
    let (x, router, fc1, fc2) = common::proxy_s_layer();
    let e = common::E;
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
            b.iter(|| common::fwd_bwd(&x, &router, &w, &res, o))
        });
    }
    group.finish();
}

criterion_group!(benches, bench);
criterion_main!(benches);
