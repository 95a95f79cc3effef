//! The MoE feed-forward layer: router, top-k gates, residency mask, dispatch, balance loss.
//!
//! For T tokens x ∈ R^{T×d}, router W_r ∈ R^{E×d}, logits z = x·W_rᵀ:
//! - `softmax_topk`: p = softmax(z); keep the top-k of p; gates g = p_topk / Σ p_topk.
//! - `sigmoid_topk`: s = σ(z); keep the top-k of s; gates g = s_topk (no renormalisation).
//!
//! y_t = Σ_{j<k} g_{t,j} · FFN_{e(t,j)}(x_t), FFN_e(x) = W2_e · GELU(W1_e · x).
//!
//! **Residency.** A site may hold only some experts (FoMoE). The router still scores all E.
//! [`SkipPolicy`] says what happens to a slot whose expert is not resident:
//! - `drop`: the slot contributes zero, gates are not renormalised; a token with no resident
//!   expert in its top-k gets exactly zero FFN output (it passes through the residual);
//! - `renormalize`: as `drop`, then the resident gates of the token are rescaled to the full
//!   top-k mass (Σ_j g_{t,j}); tokens whose top-k are all resident are left untouched, and
//!   tokens with none resident still get zero;
//! - `reroute`: non-resident experts get score −∞ before top-k, so tokens go to resident
//!   experts (requires at least k resident experts).
//!
//! With every expert resident the three policies and "no mask" compute the same graph.
//!
//! **Dispatch** is one autograd graph: the (token, slot) pairs that run are sorted by local
//! expert once (stable argsort, see `plan_dispatch`), their inputs gathered with one
//! `index_select`, each expert runs two matmuls on its contiguous slice (in the run's
//! precision, [`super::precision`]), outputs are concatenated, scaled by their gates and
//! summed back with one `index_add`. Only resident experts run, so local expert FLOPs
//! scale with the share of slots that hit resident experts. One host read per layer.
//!
//! **Load balance** (Switch form): aux = E · Σ_i f_i · P_i, f_i the share of the T·k routed
//! slots whose top-k choice is expert i (not differentiable), P_i the mean softmax
//! probability of i (differentiable); aux = 1 at perfect balance. With `aux_scope = resident`
//! the sum runs over the resident set R only, E → |R|, f the share of the slots that went
//! to R, and P_i = mean_t p_{t,i}/Σ_{j∈R} p_{t,j} (each token's router distribution
//! restricted to R, i.e. a softmax over R's logits).
//! f and P always run over the same expert set: under `reroute` with a partial residency no
//! slot can go to an absent expert, so f would be 0 there while P is not, and a loss over
//! all E would fall below 1 and reward router mass on experts the site can't run; it
//! therefore runs over R whatever `aux_scope` says (both scopes are the same loss there).
//!
//! **Router preference.** Besides the ids the policy selects, every layer reports the
//! router's own top-k over all E scores, before any residency mask (`router_topk_ids`): the
//! same ids under `drop`/`renormalize` and with a full residency; under `reroute` the ids the
//! router would have picked. Cross-site agreement compares these, so every policy compares a
//! site's router with the global router like for like.
//! Router z-loss: mean_t(logsumexp(z_t)²).

use serde::{Deserialize, Serialize};
use tch::{Kind, Tensor};

use super::config::{ConfigError, RouterKind};
use super::precision::linear;

/// What a site does with a slot routed to an expert it does not hold. `Default` (`drop`,
/// skip-token) is the layer's own default for model-level callers (benches, layer tests); a
/// run's default is [`crate::config::FomoeConfig`]'s (`reroute`, from issue 8's study).
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize, Default)]
#[serde(rename_all = "snake_case")]
pub enum SkipPolicy {
    #[default]
    Drop,
    Renormalize,
    Reroute,
}

impl SkipPolicy {
    pub fn parse(s: &str) -> Result<Self, ConfigError> {
        match s {
            "drop" => Ok(Self::Drop),
            "renormalize" => Ok(Self::Renormalize),
            "reroute" => Ok(Self::Reroute),
            other => Err(ConfigError::new(
                "skip_policy",
                other,
                "drop, renormalize, reroute",
            )),
        }
    }
    pub fn name(self) -> &'static str {
        match self {
            Self::Drop => "drop",
            Self::Renormalize => "renormalize",
            Self::Reroute => "reroute",
        }
    }
}

/// Which experts the load-balance loss runs over.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize, Default)]
#[serde(rename_all = "snake_case")]
pub enum AuxScope {
    #[default]
    All,
    Resident,
}

impl AuxScope {
    pub fn parse(s: &str) -> Result<Self, ConfigError> {
        match s {
            "all" => Ok(Self::All),
            "resident" => Ok(Self::Resident),
            other => Err(ConfigError::new("aux_scope", other, "all, resident")),
        }
    }
    pub fn name(self) -> &'static str {
        match self {
            Self::All => "all",
            Self::Resident => "resident",
        }
    }
}

/// The residency of one layer: which global experts this site holds.
#[derive(Debug)]
pub struct LayerResidency {
    /// Global ids of resident experts, ascending; local index i ↔ `resident[i]`.
    pub resident: Vec<usize>,
    /// [E] i64: local index of each global expert, −1 when not resident.
    local_of: Tensor,
    /// [E] bool: resident mask.
    mask: Tensor,
    pub n_experts: usize,
}

impl LayerResidency {
    pub fn new(n_experts: usize, resident: &[usize]) -> Self {
        let mut local = vec![-1i64; n_experts];
        for (i, &e) in resident.iter().enumerate() {
            local[e] = i as i64;
        }
        let mask: Vec<bool> = local.iter().map(|&l| l >= 0).collect();
        Self {
            resident: resident.to_vec(),
            local_of: Tensor::from_slice(&local).to_device(crate::device::device()),
            mask: Tensor::from_slice(&mask).to_device(crate::device::device()),
            n_experts,
        }
    }
    pub fn is_full(&self) -> bool {
        self.resident.len() == self.n_experts
    }
}

/// Routing decisions and counts of one layer's forward pass, for metrics (detached).
#[derive(Debug)]
pub struct LayerRouting {
    /// [T, k] global expert ids chosen (after the policy: `reroute` never picks non-resident).
    pub topk_ids: Tensor,
    /// [T, k] the router's top-k over all E scores, before any residency mask (module doc).
    pub router_topk_ids: Tensor,
    /// Slots per global expert, length E (counts of the T·k choices).
    pub counts: Vec<i64>,
    /// Slots whose chosen expert is not resident (skipped work).
    pub skipped_slots: i64,
    /// Tokens none of whose k experts is resident (FFN output exactly zero under drop).
    pub skipped_tokens: i64,
    pub tokens: i64,
}

/// Output of one MoE layer.
pub struct MoeOutput {
    /// The FFN output Σ_j g·FFN(x) [T, d] (plus `base` for [`moe_forward_onto`]).
    pub y: Tensor,
    /// E·Σ f_i·P_i (or the resident-scope version): 1 at perfect balance. Scalar, has grad.
    pub balance: Tensor,
    /// mean(logsumexp(z)²). Scalar, has grad.
    pub z_loss: Tensor,
    pub routing: LayerRouting,
}

/// What [`route`] decides for T tokens.
pub struct Route {
    /// [T, k] gates of the selected slots, with grad (zero for skipped slots).
    pub gates_tk: Tensor,
    /// [T, k] selected global expert ids (after the policy).
    pub topk_ids_tk: Tensor,
    /// [T, k] the router's unmasked top-k ids (equal to `topk_ids_tk` unless rerouted).
    pub router_topk_ids_tk: Tensor,
    /// [T, E] softmax probabilities (with grad), for the balance loss.
    pub probs_te: Tensor,
    /// [T, E] router logits (with grad), for the z-loss.
    pub logits_te: Tensor,
}

/// Router + gates + mask (see the module doc).
pub fn route(
    x: &Tensor,
    router_w: &Tensor,
    top_k: usize,
    router: RouterKind,
    residency: &LayerResidency,
    policy: Option<SkipPolicy>,
) -> Route {
    let logits = x.linear::<Tensor>(router_w, None);
    let probs = logits.softmax(-1, Kind::Float);
    let scores = match router {
        RouterKind::SoftmaxTopk => probs.shallow_clone(),
        RouterKind::SigmoidTopk => logits.sigmoid(),
    };
    assert!(
        policy.is_some() || residency.is_full(),
        "a partial residency needs a skip policy"
    );
    let rerouted = policy == Some(SkipPolicy::Reroute) && !residency.is_full();
    let select = if rerouted {
        scores.masked_fill(&residency.mask.logical_not(), f64::NEG_INFINITY)
    } else {
        scores.shallow_clone()
    };
    let (top_v, top_i) = select.topk(top_k as i64, -1, true, true);
    let router_top_i = if rerouted {
        tch::no_grad(|| scores.topk(top_k as i64, -1, true, true).1)
    } else {
        top_i.shallow_clone()
    };
    let gates = match router {
        RouterKind::SoftmaxTopk => &top_v / top_v.sum_dim_intlist(-1, true, Kind::Float),
        RouterKind::SigmoidTopk => top_v,
    };
    let gates = if let Some(policy @ (SkipPolicy::Drop | SkipPolicy::Renormalize)) = policy {
        let res_sel = residency
            .mask
            .index_select(0, &top_i.view(-1))
            .view(top_i.size().as_slice());
        let kept = gates.where_self(&res_sel, &gates.zeros_like());
        match policy {
            SkipPolicy::Drop => kept,
            SkipPolicy::Renormalize => {
                let full_mass = gates.sum_dim_intlist(-1, true, Kind::Float);
                let res_mass = kept.sum_dim_intlist(-1, true, Kind::Float);
                let rescaled = &kept * (full_mass / res_mass.clamp_min(1e-20));
                let all_res = res_sel.all_dim(-1, true);
                kept.where_self(&all_res, &rescaled)
            }
            SkipPolicy::Reroute => unreachable!(),
        }
    } else {
        gates
    };
    Route {
        gates_tk: gates,
        topk_ids_tk: top_i,
        router_topk_ids_tk: router_top_i,
        probs_te: probs,
        logits_te: logits,
    }
}

/// Switch balance loss E·Σ f_i P_i from slot counts and softmax probabilities, over the
/// set the module doc names (all E, or the resident set under `aux_scope = resident` and
/// always under `reroute` with a partial residency).
pub fn balance_loss(
    probs: &Tensor,
    counts: &[i64],
    top_k: usize,
    scope: AuxScope,
    policy: Option<SkipPolicy>,
    residency: &LayerResidency,
) -> Tensor {
    let tokens = probs.size()[0];
    let e = counts.len();
    let scope = if policy == Some(SkipPolicy::Reroute) && !residency.is_full() {
        AuxScope::Resident
    } else {
        scope
    };
    match scope {
        AuxScope::All => {
            let p_mean = probs.mean_dim(0, false, Kind::Float); // [E]
            let slots = (tokens * top_k as i64).max(1) as f64;
            let f: Vec<f32> = counts.iter().map(|&c| (c as f64 / slots) as f32).collect();
            (&p_mean * Tensor::from_slice(&f).to_device(p_mean.device())).sum(Kind::Float)
                * e as f64
        }
        AuxScope::Resident => {
            let r = &residency.resident;
            let res_slots: i64 = r.iter().map(|&i| counts[i]).sum();
            if res_slots == 0 || r.is_empty() {
                return (probs.sum(Kind::Float) * 0.0).shallow_clone();
            }
            let f: Vec<f32> = r
                .iter()
                .map(|&i| (counts[i] as f64 / res_slots as f64) as f32)
                .collect();
            // P̂_i = mean_t p_{t,i} / Σ_{j∈R} p_{t,j}: each token's router distribution
            // restricted to R (a softmax over R's logits), so mass on absent experts has no
            // say in it.
            let idx = Tensor::from_slice(&r.iter().map(|&i| i as i64).collect::<Vec<_>>())
                .to_device(probs.device());
            let p_tr = probs.index_select(1, &idx);
            let p_hat = (&p_tr / p_tr.sum_dim_intlist(-1, true, Kind::Float)).mean_dim(
                0,
                false,
                Kind::Float,
            );
            (&p_hat * Tensor::from_slice(&f).to_device(p_hat.device())).sum(Kind::Float)
                * r.len() as f64
        }
    }
}

/// Weights of one layer's resident experts, in local order: (fc1 [d_e, d], fc2 [d, d_e]).
pub struct ExpertWeights<'a> {
    pub fc1: Vec<&'a Tensor>,
    pub fc2: Vec<&'a Tensor>,
}

/// Routing options shared by all layers of a model.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct RoutingOptions {
    pub top_k: usize,
    pub router: RouterKind,
    /// `None`: no residency mask (every expert must be resident).
    pub skip_policy: Option<SkipPolicy>,
    pub aux_scope: AuxScope,
}

/// Which routed slots run, in what order, from one layer's top-k choices.
struct DispatchPlan {
    /// Slot indices (t·k + j) of the slots that run, grouped by local expert in ascending
    /// local order, ascending slot order within an expert. [n_valid] i64.
    sorted_slots: Tensor,
    /// Slots per local (resident) expert; sums to n_valid.
    per_expert: Vec<i64>,
    /// Slots per global expert (all T·k choices), length E.
    counts: Vec<i64>,
    skipped_slots: i64,
    skipped_tokens: i64,
}

/// The dispatch order with one host read per layer (a device sync on a GPU): the slot
/// counts per global expert, and with a mask the number of tokens none of whose experts is
/// resident, come back together; the per-resident counts and the skipped slots follow on
/// the host. Slots are put in expert order by one stable argsort whose key is the local
/// expert index with non-resident slots keyed past the last one, so the runnable slots are
/// the first n_valid of it: no `nonzero` (another sync) and the same order as sorting only
/// the runnable slots. Without a mask every slot runs and the key is the local index.
fn plan_dispatch(top_i: &Tensor, residency: &LayerResidency, masked: bool) -> DispatchPlan {
    let (n_tokens, k) = top_i.size2().expect("top-k ids are [T, k]");
    let e = residency.n_experts;
    let flat_ids = top_i.view(-1);
    let counts_t = flat_ids.bincount::<Tensor>(None, e as i64);
    let local = residency.local_of.index_select(0, &flat_ids);
    let (host, key) = if masked {
        let runnable = local.ge(0);
        let none_resident = runnable
            .view([n_tokens, k])
            .any_dim(-1, false)
            .logical_not()
            .sum(Kind::Int64);
        let key = local.masked_fill(&runnable.logical_not(), residency.resident.len() as i64);
        (Tensor::cat(&[counts_t, none_resident.view([1])], 0), key)
    } else {
        (counts_t, local)
    };
    let host: Vec<i64> = Vec::<i64>::try_from(&host).unwrap_or_default();
    let counts = host[..e].to_vec();
    let skipped_tokens = if masked { host[e] } else { 0 };
    let per_expert: Vec<i64> = residency.resident.iter().map(|&g| counts[g]).collect();
    let n_valid: i64 = per_expert.iter().sum();
    let order = key.argsort_stable(true, 0, false);
    let sorted_slots = if n_valid == n_tokens * k {
        order
    } else {
        order.narrow(0, 0, n_valid)
    };
    DispatchPlan {
        sorted_slots,
        per_expert,
        counts,
        skipped_slots: n_tokens * k - n_valid,
        skipped_tokens,
    }
}

/// One MoE layer forward on x [T, d].
pub fn moe_forward(
    x: &Tensor,
    router_w: &Tensor,
    experts: &ExpertWeights<'_>,
    residency: &LayerResidency,
    opts: RoutingOptions,
) -> MoeOutput {
    moe_forward_onto(None, x, router_w, experts, residency, opts)
}

/// As [`moe_forward`], with `y = base + Σ_j g·FFN(x)` when `base` ([T, d]) is given: the
/// residual stream is summed into by the scatter itself (no zero-filled buffer, no extra
/// add; the residual's gradient passes through unchanged). `base = None` is `base = 0`.
pub fn moe_forward_onto(
    base: Option<&Tensor>,
    x: &Tensor,
    router_w: &Tensor,
    experts: &ExpertWeights<'_>,
    residency: &LayerResidency,
    opts: RoutingOptions,
) -> MoeOutput {
    let k = opts.top_k as i64;
    let Route {
        gates_tk: gates,
        topk_ids_tk: top_i,
        router_topk_ids_tk: router_top_i,
        probs_te: probs,
        logits_te: logits,
    } = route(
        x,
        router_w,
        opts.top_k,
        opts.router,
        residency,
        opts.skip_policy,
    );
    let n_tokens = x.size()[0];
    let plan = plan_dispatch(&top_i, residency, opts.skip_policy.is_some());
    let token_of_slot = plan.sorted_slots.floor_divide_scalar(k);
    let xs = x.index_select(0, &token_of_slot);
    let gs = gates.view(-1).index_select(0, &plan.sorted_slots);

    // One split (its backward is one concatenation), not a narrow per expert (whose
    // backward would zero-fill and add a full-size gradient per expert).
    let per_expert = &plan.per_expert;
    let prec = crate::device::precision();
    let parts = xs.split_with_sizes(per_expert.as_slice(), 0);
    let mut outs = Vec::with_capacity(per_expert.len());
    for (e, part) in parts.iter().enumerate() {
        if per_expert[e] == 0 {
            continue;
        }
        let h = linear(part, experts.fc1[e], prec).gelu("none");
        outs.push(linear(&h, experts.fc2[e], prec));
    }
    let y = if outs.is_empty() {
        // Keep the graph connected (zero contribution) so every caller gets a tensor with grad.
        let zero = gates.sum(Kind::Float) * 0.0;
        match base {
            Some(b) => b + zero,
            None => x.zeros_like() + zero,
        }
    } else {
        let ys = Tensor::cat(&outs, 0) * gs.unsqueeze(1);
        match base {
            Some(b) => b.index_add(0, &token_of_slot, &ys),
            None => x.zeros_like().index_add(0, &token_of_slot, &ys),
        }
    };

    let DispatchPlan {
        counts,
        skipped_slots,
        skipped_tokens,
        ..
    } = plan;
    let balance = balance_loss(
        &probs,
        &counts,
        opts.top_k,
        opts.aux_scope,
        opts.skip_policy,
        residency,
    );
    let z_loss = logits.logsumexp([-1], false).square().mean(Kind::Float);
    MoeOutput {
        y,
        balance,
        z_loss,
        routing: LayerRouting {
            topk_ids: top_i.detach(),
            router_topk_ids: router_top_i.detach(),
            counts,
            skipped_slots,
            skipped_tokens,
            tokens: n_tokens,
        },
    }
}
