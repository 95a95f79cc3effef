//! Tests of the MoE layer and the model that pin the routing contract.

use tch::{Kind, Tensor};

use super::config::{ModelConfig, RouterKind};
use super::moe::*;
use super::params::Residency;
use super::transformer::MoeModel;

/// Normal values from the project's RNG (libtorch's generator is process-wide and tests
/// run in parallel threads).
fn randn(shape: &[i64], seed: i64) -> Tensor {
    let mut rng = crate::rng::Rng::new(seed as u64);
    let n: i64 = shape.iter().product();
    let v: Vec<f32> = (0..n).map(|_| rng.normal() as f32).collect();
    Tensor::from_slice(&v).view(shape)
}

fn leaf(t: Tensor) -> Tensor {
    t.set_requires_grad(true)
}

struct Layer {
    x: Tensor,
    router: Tensor,
    fc1: Vec<Tensor>,
    fc2: Vec<Tensor>,
}

fn layer(t: i64, d: i64, de: i64, e: usize, seed: i64) -> Layer {
    Layer {
        x: leaf(randn(&[t, d], seed)),
        router: leaf(randn(&[e as i64, d], seed + 1)),
        fc1: (0..e)
            .map(|i| leaf(randn(&[de, d], seed + 10 + i as i64) * 0.3))
            .collect(),
        fc2: (0..e)
            .map(|i| leaf(randn(&[d, de], seed + 100 + i as i64) * 0.3))
            .collect(),
    }
}

fn run(l: &Layer, resident: &[usize], opts: RoutingOptions) -> (MoeOutput, Vec<Tensor>) {
    let res = LayerResidency::new(l.router.size()[0] as usize, resident);
    let w = ExpertWeights {
        fc1: resident.iter().map(|&e| &l.fc1[e]).collect(),
        fc2: resident.iter().map(|&e| &l.fc2[e]).collect(),
    };
    let out = moe_forward(&l.x, &l.router, &w, &res, opts);
    // Gradients of a fixed functional of the output (and the balance term) w.r.t. everything.
    let probe = randn(&out.y.size(), 999);
    let obj = (&out.y * &probe).sum(Kind::Float) + &out.balance;
    let mut inputs: Vec<&Tensor> = vec![&l.x, &l.router];
    inputs.extend(resident.iter().map(|&e| &l.fc1[e]));
    inputs.extend(resident.iter().map(|&e| &l.fc2[e]));
    let grads = Tensor::run_backward(&[obj], &inputs, false, false);
    (out, grads)
}

fn opts(k: usize, router: RouterKind, policy: Option<SkipPolicy>) -> RoutingOptions {
    RoutingOptions {
        top_k: k,
        router,
        skip_policy: policy,
        aux_scope: AuxScope::All,
    }
}

#[test]
fn one_expert_top1_equals_dense_ffn() {
    let l = layer(24, 16, 32, 1, 1);
    let (out, _) = run(&l, &[0], opts(1, RouterKind::SoftmaxTopk, None));
    let dense =
        l.x.linear::<Tensor>(&l.fc1[0], None)
            .gelu("none")
            .linear::<Tensor>(&l.fc2[0], None);
    assert!(
        out.y.equal(&dense),
        "max diff {}",
        (&out.y - &dense).abs().max().double_value(&[])
    );
}

#[test]
fn all_resident_policies_equal_no_mask_values_and_gradients() {
    for router in [RouterKind::SoftmaxTopk, RouterKind::SigmoidTopk] {
        let l = layer(40, 16, 24, 6, 3);
        let all: Vec<usize> = (0..6).collect();
        let (base, g0) = run(&l, &all, opts(2, router, None));
        for policy in [
            SkipPolicy::Drop,
            SkipPolicy::Renormalize,
            SkipPolicy::Reroute,
        ] {
            let (out, g) = run(&l, &all, opts(2, router, Some(policy)));
            assert!(
                out.y.equal(&base.y),
                "{router:?} {policy:?}: outputs differ"
            );
            assert!(out.routing.topk_ids.equal(&base.routing.topk_ids));
            for (a, b) in g.iter().zip(&g0) {
                assert!(a.equal(b), "{router:?} {policy:?}: gradients differ");
            }
        }
    }
}

#[test]
fn reroute_never_selects_a_non_resident_expert() {
    for router in [RouterKind::SoftmaxTopk, RouterKind::SigmoidTopk] {
        let l = layer(200, 16, 8, 8, 5);
        let resident = [1usize, 4, 6];
        let (out, _) = run(&l, &resident, opts(2, router, Some(SkipPolicy::Reroute)));
        let ids = Vec::<i64>::try_from(&out.routing.topk_ids.view(-1)).unwrap();
        assert!(
            ids.iter().all(|i| resident.contains(&(*i as usize))),
            "{ids:?}"
        );
        assert_eq!(out.routing.skipped_slots, 0);
        // Softmax gates of a rerouted token still sum to 1.
        let res = LayerResidency::new(8, &resident);
        if router == RouterKind::SoftmaxTopk {
            let g = route(&l.x, &l.router, 2, router, &res, Some(SkipPolicy::Reroute)).gates_tk;
            let sums = g.sum_dim_intlist(-1, false, Kind::Float);
            assert!((sums - 1.0).abs().max().double_value(&[]) < 1e-6);
        }
    }
}

#[test]
fn drop_zeroes_tokens_with_no_resident_expert_and_renormalize_rescales() {
    let l = layer(300, 16, 8, 8, 7);
    let resident = [2usize, 5];
    let (out, _) = run(
        &l,
        &resident,
        opts(2, RouterKind::SoftmaxTopk, Some(SkipPolicy::Drop)),
    );
    let ids = out.routing.topk_ids.shallow_clone();
    let is_res = |e: i64| resident.contains(&(e as usize));
    let mut zero_rows = 0;
    let mut partial_row = None;
    for t in 0..300 {
        let (a, b) = (ids.int64_value(&[t, 0]), ids.int64_value(&[t, 1]));
        let row_norm = out.y.get(t).abs().sum(Kind::Float).double_value(&[]);
        if !is_res(a) && !is_res(b) {
            assert_eq!(
                row_norm, 0.0,
                "token {t} has no resident expert but nonzero output"
            );
            zero_rows += 1;
        } else {
            assert!(row_norm > 0.0);
            if is_res(a) != is_res(b) && partial_row.is_none() {
                partial_row = Some(t);
            }
        }
    }
    assert!(
        zero_rows > 0,
        "constructed case should contain skipped tokens"
    );
    assert_eq!(out.routing.skipped_tokens, zero_rows);
    let skipped: i64 = out
        .routing
        .counts
        .iter()
        .enumerate()
        .filter(|(e, _)| !resident.contains(e))
        .map(|(_, c)| c)
        .sum();
    assert_eq!(out.routing.skipped_slots, skipped);

    // renormalize: a token with one resident expert gets that expert's output at full mass
    // (gate 1 for softmax_topk), i.e. output / gate_under_drop.
    let t = partial_row.expect("a token with exactly one resident expert");
    let (ren, _) = run(
        &l,
        &resident,
        opts(2, RouterKind::SoftmaxTopk, Some(SkipPolicy::Renormalize)),
    );
    let res = LayerResidency::new(8, &resident);
    let g_drop = route(
        &l.x,
        &l.router,
        2,
        RouterKind::SoftmaxTopk,
        &res,
        Some(SkipPolicy::Drop),
    )
    .gates_tk;
    let g_ren = route(
        &l.x,
        &l.router,
        2,
        RouterKind::SoftmaxTopk,
        &res,
        Some(SkipPolicy::Renormalize),
    )
    .gates_tk;
    let kept = g_drop.get(t).sum(Kind::Float).double_value(&[]);
    assert!(kept > 0.0 && kept < 1.0);
    assert!((g_ren.get(t).sum(Kind::Float).double_value(&[]) - 1.0).abs() < 1e-6);
    let expect = out.y.get(t) / kept;
    assert!((ren.y.get(t) - expect).abs().max().double_value(&[]) < 1e-5);
}

#[test]
fn balance_loss_is_one_at_perfect_balance_and_e_at_collapse() {
    let e = 8usize;
    let t = 16i64;
    let res = LayerResidency::new(e, &(0..e).collect::<Vec<_>>());
    // Uniform probabilities, uniform slot counts (T·k/E each).
    let probs = Tensor::full(
        [t, e as i64],
        1.0 / e as f64,
        (Kind::Float, tch::Device::Cpu),
    );
    let counts = vec![t * 2 / e as i64; e];
    let v = balance_loss(&probs, &counts, 2, AuxScope::All, None, &res).double_value(&[]);
    assert!((v - 1.0).abs() < 1e-6, "{v}");
    // One-hot probabilities spread evenly over tokens, balanced counts: still 1.
    let ids = Tensor::arange(t, (Kind::Int64, tch::Device::Cpu)).remainder(e as i64);
    let onehot = ids.one_hot(e as i64).to_kind(Kind::Float);
    let counts1 = vec![t / e as i64; e];
    let v = balance_loss(&onehot, &counts1, 1, AuxScope::All, None, &res).double_value(&[]);
    assert!((v - 1.0).abs() < 1e-6, "{v}");
    // Collapse: every token to expert 0 with probability 1, k = 1 → E.
    let mut collapsed = vec![0i64; e];
    collapsed[0] = t;
    let p0 = Tensor::zeros([t], (Kind::Int64, tch::Device::Cpu))
        .one_hot(e as i64)
        .to_kind(Kind::Float);
    let v = balance_loss(&p0, &collapsed, 1, AuxScope::All, None, &res).double_value(&[]);
    assert!((v - e as f64).abs() < 1e-5, "{v}");
    // Resident scope over {0..3}: balanced among residents → 1.
    let res4 = LayerResidency::new(e, &[0, 1, 2, 3]);
    let counts4 = vec![4, 4, 4, 4, 9, 0, 3, 7];
    let v = balance_loss(&probs, &counts4, 2, AuxScope::Resident, None, &res4).double_value(&[]);
    assert!((v - 1.0).abs() < 1e-6, "{v}");
}

/// Balanced routing as each policy can produce it with a partial residency R: under `drop`
/// and `renormalize` slots and probabilities spread evenly over all E; under `reroute`
/// (which never selects an absent expert) evenly over R. The balance loss is 1 in every
/// case, for both aux scopes.
#[test]
fn balance_loss_is_one_at_balanced_routing_for_every_policy_and_scope() {
    let (e, t, k) = (8usize, 32i64, 2usize);
    let resident = [1usize, 2, 5, 6];
    let res = LayerResidency::new(e, &resident);
    let uniform_over = |set: &[usize]| {
        let mut p = vec![0f32; e];
        for &i in set {
            p[i] = 1.0 / set.len() as f32;
        }
        let row = Tensor::from_slice(&p);
        let probs = row.unsqueeze(0).expand([t, e as i64], false).contiguous();
        let mut counts = vec![0i64; e];
        for &i in set {
            counts[i] = t * k as i64 / set.len() as i64;
        }
        (probs, counts)
    };
    let all: Vec<usize> = (0..e).collect();
    for policy in [
        SkipPolicy::Drop,
        SkipPolicy::Renormalize,
        SkipPolicy::Reroute,
    ] {
        let (probs, counts) = if policy == SkipPolicy::Reroute {
            uniform_over(&resident)
        } else {
            uniform_over(&all)
        };
        for scope in [AuxScope::All, AuxScope::Resident] {
            let v = balance_loss(&probs, &counts, k, scope, Some(policy), &res).double_value(&[]);
            assert!((v - 1.0).abs() < 1e-6, "{policy:?} {scope:?}: {v}");
        }
    }
}

/// Under `reroute` the balance loss runs over the resident set: router mass on experts the
/// site lacks is neither rewarded nor punished (zero gradient on their logits).
#[test]
fn reroute_balance_loss_ignores_router_mass_on_absent_experts() {
    let e = 8i64;
    let res = LayerResidency::new(e as usize, &[0, 3, 4, 7]);
    let logits = Tensor::randn([64, e], (Kind::Float, tch::Device::Cpu)).set_requires_grad(true);
    let probs = logits.softmax(-1, Kind::Float);
    let counts = vec![40, 0, 0, 30, 26, 0, 0, 32];
    for scope in [AuxScope::All, AuxScope::Resident] {
        let loss = balance_loss(&probs, &counts, 2, scope, Some(SkipPolicy::Reroute), &res);
        let g = Tensor::run_backward(&[loss], &[&logits], true, false);
        let absent = g[0].index_select(1, &Tensor::from_slice(&[1i64, 2, 5, 6]));
        assert!(
            absent.abs().max().double_value(&[]) < 1e-7,
            "{scope:?}: absent-expert logits get a balance gradient"
        );
    }
}

/// With the balance and z losses off, the router learns from the cross-entropy alone,
/// through the gates: dispatch is one autograd graph. Detaching the gates would zero it.
#[test]
fn router_gets_a_cross_entropy_gradient_through_the_gates() {
    let mut cfg = ModelConfig::preset("tiny").unwrap();
    cfg.balance_alpha = 0.0;
    cfg.z_loss_beta = 0.0;
    let inputs = Tensor::arange(64, (Kind::Int64, tch::Device::Cpu))
        .multiply_scalar(37)
        .remainder(256)
        .view([2, 32]);
    let targets = Tensor::arange(64, (Kind::Int64, tch::Device::Cpu))
        .multiply_scalar(11)
        .remainder(256)
        .view([2, 32]);
    for router in [RouterKind::SoftmaxTopk, RouterKind::SigmoidTopk] {
        cfg.router = router;
        for residency in [
            Residency::full(&cfg),
            Residency::uniform(&cfg, &[0, 1, 2, 3]),
        ] {
            let mut model = MoeModel::new(&cfg, residency, 0);
            if !model.store.residency.is_full() {
                model.skip_policy = Some(SkipPolicy::Drop);
            }
            let out = model.forward(&inputs, &targets);
            let g = model.flat_grad(&out.loss);
            for l in 0..cfg.n_layers {
                let spec = model
                    .store
                    .layout
                    .spec(&format!("blocks.{l}.moe.router.weight"))
                    .unwrap();
                let norm = g
                    .narrow(0, spec.offset as i64, spec.numel as i64)
                    .norm()
                    .double_value(&[]);
                assert!(norm > 0.0, "{router:?} layer {l}: router gradient is zero");
            }
        }
    }
}

#[test]
fn model_forward_backward_shapes_and_masked_model_runs() {
    let cfg = ModelConfig::preset("tiny").unwrap();
    let model = MoeModel::new(&cfg, Residency::full(&cfg), 0);
    let inputs = Tensor::arange(32, (Kind::Int64, tch::Device::Cpu))
        .multiply_scalar(37)
        .remainder(256)
        .view([2, 16]);
    let targets = Tensor::arange(32, (Kind::Int64, tch::Device::Cpu))
        .multiply_scalar(11)
        .remainder(256)
        .view([2, 16]);
    let out = model.forward(&inputs, &targets);
    let ce = out.ce.double_value(&[]);
    // Near-uniform predictions at init.
    assert!((ce - (256f64).ln()).abs() < 0.3, "{ce}");
    let g = model.flat_grad(&out.loss);
    assert_eq!(g.size(), vec![cfg.total_params() as i64]);
    assert!(g.abs().sum(Kind::Float).double_value(&[]) > 0.0);

    let part = MoeModel::new(&cfg, Residency::uniform(&cfg, &[0, 3]), 0);
    let out = part.forward(&inputs, &targets);
    let g = part.flat_grad(&out.loss);
    assert_eq!(
        g.size()[0] as usize,
        cfg.dense_params() + cfg.n_layers * 2 * cfg.params_per_expert()
    );
    assert!(out.routing.iter().all(|r| r.skipped_slots > 0));
}
