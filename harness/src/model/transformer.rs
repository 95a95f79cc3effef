//! The decoder: tied token embedding, learned positions, L blocks of pre-RMSNorm causal
//! multi-head attention and pre-RMSNorm MoE FFN, final RMSNorm, tied output head.
//!
//! Training loss = CE + α·mean_l(balance_l) + β·mean_l(z_l), where balance_l = 1 at perfect
//! balance (see [`super::moe`]); the balance term is averaged over layers so that its value
//! reads the same for any depth.
//!
//! The attention and output-head matmuls (and the experts', in [`super::moe`]) run in the
//! thread's [`crate::device::Precision`] ([`super::precision::linear`]); the residual
//! stream, norms, softmax and losses are f32 at either precision.

use tch::{Kind, Tensor};

use super::config::ModelConfig;
use super::moe::{
    moe_forward_onto, AuxScope, ExpertWeights, LayerResidency, LayerRouting, RoutingOptions,
    SkipPolicy,
};
use super::params::{ParamStore, Residency};
use super::precision::{linear, to_f32};

const NORM_EPS: f64 = 1e-5;

/// A site's model: configuration, parameters (flat store) and residency.
pub struct MoeModel {
    pub cfg: ModelConfig,
    pub store: ParamStore,
    pub layers: Vec<LayerResidency>,
    /// `None` = no residency mask (full replica); FoMoE sites always set a policy.
    pub skip_policy: Option<SkipPolicy>,
    pub aux_scope: AuxScope,
    /// Parameter indices into `store.params` per block, resolved once.
    idx: ModelIndex,
}

struct BlockIndex {
    ln1: usize,
    ln2: usize,
    qkv: usize,
    proj: usize,
    router: usize,
    fc1: Vec<usize>,
    fc2: Vec<usize>,
}

struct ModelIndex {
    wte: usize,
    wpe: usize,
    ln_f: usize,
    blocks: Vec<BlockIndex>,
}

/// Output of a forward pass.
pub struct ForwardOutput {
    /// CE + α·balance + β·z (scalar, has grad).
    pub loss: Tensor,
    /// Mean cross-entropy in nats/token (scalar, has grad).
    pub ce: Tensor,
    /// Per-layer balance values (1 = perfect balance), detached.
    pub balance: Vec<f64>,
    pub routing: Vec<LayerRouting>,
}

impl MoeModel {
    /// The seeded initial model with the given residency.
    pub fn new(cfg: &ModelConfig, residency: Residency, seed: u64) -> Self {
        let store = ParamStore::init(cfg, residency, seed);
        Self::from_store(cfg, store)
    }

    pub fn from_store(cfg: &ModelConfig, store: ParamStore) -> Self {
        let find = |name: &str| {
            store
                .layout
                .specs
                .iter()
                .position(|s| s.name == name)
                .unwrap_or_else(|| panic!("layout lacks {name}"))
        };
        let mut blocks = Vec::new();
        let mut layers = Vec::new();
        for l in 0..cfg.n_layers {
            let p = format!("blocks.{l}");
            let resident = store.residency.per_layer[l].clone();
            blocks.push(BlockIndex {
                ln1: find(&format!("{p}.ln1.weight")),
                ln2: find(&format!("{p}.ln2.weight")),
                qkv: find(&format!("{p}.attn.qkv.weight")),
                proj: find(&format!("{p}.attn.proj.weight")),
                router: find(&format!("{p}.moe.router.weight")),
                fc1: resident
                    .iter()
                    .map(|e| find(&format!("{p}.moe.experts.{e}.fc1.weight")))
                    .collect(),
                fc2: resident
                    .iter()
                    .map(|e| find(&format!("{p}.moe.experts.{e}.fc2.weight")))
                    .collect(),
            });
            layers.push(LayerResidency::new(cfg.n_experts, &resident));
        }
        let idx = ModelIndex {
            wte: find("wte.weight"),
            wpe: find("wpe.weight"),
            ln_f: find("ln_f.weight"),
            blocks,
        };
        let skip_policy = if store.residency.is_full() {
            None
        } else {
            Some(SkipPolicy::Drop)
        };
        Self {
            cfg: cfg.clone(),
            store,
            layers,
            skip_policy,
            aux_scope: AuxScope::All,
            idx,
        }
    }

    fn p(&self, i: usize) -> &Tensor {
        &self.store.params[i]
    }

    /// Forward on token ids [B, S] (i64) with targets [B, S]; S ≤ seq_len.
    pub fn forward(&self, inputs: &Tensor, targets: &Tensor) -> ForwardOutput {
        let cfg = &self.cfg;
        let (b, s) = inputs.size2().expect("inputs must be [batch, seq]");
        let d = cfg.d_model as i64;
        let h = cfg.n_heads as i64;
        let hd = d / h;
        let wte = self.p(self.idx.wte);
        let prec = crate::device::precision();
        let mut x =
            Tensor::embedding(wte, inputs, -1, false, false) + self.p(self.idx.wpe).narrow(0, 0, s);
        let opts = RoutingOptions {
            top_k: cfg.top_k,
            router: cfg.router,
            skip_policy: self.skip_policy,
            aux_scope: self.aux_scope,
        };
        let mut balance_terms = Vec::with_capacity(cfg.n_layers);
        let mut z_terms = Vec::with_capacity(cfg.n_layers);
        let mut routing = Vec::with_capacity(cfg.n_layers);
        for (bi, lr) in self.idx.blocks.iter().zip(&self.layers) {
            let a_in = x.rms_norm([d], Some(self.p(bi.ln1)), NORM_EPS);
            let qkv = linear(&a_in, self.p(bi.qkv), prec)
                .view([b, s, 3, h, hd])
                .permute([2, 0, 3, 1, 4]);
            // One unbind (its backward is one stack), not three selects (each of whose
            // backward would zero-fill a full-size gradient, then two adds to sum them).
            let parts = qkv.unbind(0);
            let (q, k, v) = (&parts[0], &parts[1], &parts[2]);
            let att = Tensor::scaled_dot_product_attention::<Tensor>(
                q, k, v, None, 0.0, true, None, false,
            );
            let att = linear(
                &att.transpose(1, 2).reshape([b, s, d]),
                self.p(bi.proj),
                prec,
            );
            x = x + att;
            let m_in = x
                .rms_norm([d], Some(self.p(bi.ln2)), NORM_EPS)
                .view([b * s, d]);
            let experts = ExpertWeights {
                fc1: bi.fc1.iter().map(|&i| self.p(i)).collect(),
                fc2: bi.fc2.iter().map(|&i| self.p(i)).collect(),
            };
            // x + MoE(x): the expert outputs are scattered straight onto the residual stream.
            let out = moe_forward_onto(
                Some(&x.view([b * s, d])),
                &m_in,
                self.p(bi.router),
                &experts,
                lr,
                opts,
            );
            x = out.y.view([b, s, d]);
            balance_terms.push(out.balance);
            z_terms.push(out.z_loss);
            routing.push(out.routing);
        }
        let x = x.rms_norm([d], Some(self.p(self.idx.ln_f)), NORM_EPS);
        let logits = to_f32(linear(&x, wte, prec));
        let ce = logits
            .view([b * s, cfg.vocab_size as i64])
            .cross_entropy_loss::<Tensor>(
                &targets.view([b * s]),
                None,
                tch::Reduction::Mean,
                -100,
                0.0,
            );
        let n_layers = cfg.n_layers as f64;
        // One host read for all layers' balance values (each read is a device sync on a GPU).
        let balance_vals: Vec<f64> = Vec::<f64>::try_from(
            &Tensor::stack(&balance_terms, 0)
                .detach()
                .to_kind(Kind::Double),
        )
        .unwrap_or_default();
        let mut loss = ce.shallow_clone();
        if cfg.balance_alpha > 0.0 {
            loss = loss
                + Tensor::stack(&balance_terms, 0).sum(Kind::Float)
                    * (cfg.balance_alpha / n_layers);
        }
        if cfg.z_loss_beta > 0.0 {
            loss =
                loss + Tensor::stack(&z_terms, 0).sum(Kind::Float) * (cfg.z_loss_beta / n_layers);
        }
        ForwardOutput {
            loss,
            ce,
            balance: balance_vals,
            routing,
        }
    }

    /// Gradients of `loss` w.r.t. every parameter, written into one flat tensor in layout
    /// order (zeros for parameters the graph did not reach, e.g. an expert with no tokens).
    pub fn flat_grad(&self, loss: &Tensor) -> Tensor {
        let grads = Tensor::run_backward(&[loss], &self.store.params, false, false);
        let parts: Vec<Tensor> = grads
            .iter()
            .zip(&self.store.params)
            .map(|(g, p)| {
                if g.defined() {
                    g.reshape([-1])
                } else {
                    p.detach().zeros_like().reshape([-1])
                }
            })
            .collect();
        Tensor::cat(&parts, 0)
    }
}
