//! Model configuration: the presets the CLI names and the shape rules they obey.
//!
//! Parameter counts (one source of truth, used by `bench-step`, the memory accounting and the
//! system model), with V vocab, S context, d width, L blocks, E experts, d_e expert width:
//! - N_dense = V·d (tied embedding/head) + S·d (positions) + L·(4d² attention + E·d router
//!   + 2d norm gains) + d (final norm)
//! - N_exp = L·E·2·d·d_e
//! - N_active (matmul weights one token passes through) = L·(4d² + E·d + k·2·d·d_e) + V·d
//!
//! FLOPs per token follow the PaLM convention: 6·N_active + 12·L·d·S (attention scores and
//! values, forward and backward), where N_active counts the non-embedding matmul weights
//! a token passes through plus the tied output head.

use serde::{Deserialize, Serialize};

/// How router scores become gates.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum RouterKind {
    /// Softmax over all E logits, keep the top-k, renormalise the k gates to sum 1.
    SoftmaxTopk,
    /// SigmaMoE: sigmoid scores, keep the top-k, no renormalisation.
    SigmoidTopk,
}

impl RouterKind {
    pub fn parse(s: &str) -> Result<Self, ConfigError> {
        match s {
            "softmax_topk" => Ok(Self::SoftmaxTopk),
            "sigmoid_topk" => Ok(Self::SigmoidTopk),
            other => Err(ConfigError::new(
                "router",
                other,
                "softmax_topk, sigmoid_topk",
            )),
        }
    }
    pub fn name(self) -> &'static str {
        match self {
            Self::SoftmaxTopk => "softmax_topk",
            Self::SigmoidTopk => "sigmoid_topk",
        }
    }
}

/// A user-facing configuration error: which field, which value, what is allowed.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("invalid {field} = {value}: {allowed}")]
pub struct ConfigError {
    pub field: String,
    pub value: String,
    pub allowed: String,
}

impl ConfigError {
    pub fn new(field: impl Into<String>, value: impl ToString, allowed: impl Into<String>) -> Self {
        Self {
            field: field.into(),
            value: value.to_string(),
            allowed: allowed.into(),
        }
    }
}

/// Shape and routing of the MoE decoder. Batch size lives here too because presets fix it.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ModelConfig {
    pub vocab_size: usize,
    pub d_model: usize,
    pub n_layers: usize,
    pub n_heads: usize,
    pub n_experts: usize,
    pub top_k: usize,
    pub d_expert: usize,
    pub seq_len: usize,
    pub batch_size: usize,
    pub router: RouterKind,
    /// α of the Switch load-balance loss (value α at perfect balance).
    pub balance_alpha: f64,
    /// β of the router z-loss β·mean(logsumexp(logits)²).
    pub z_loss_beta: f64,
}

/// The preset names the CLI accepts, in order of size.
pub const PRESETS: &[&str] = &[
    "tiny",
    "small",
    "proxy-s",
    "proxy-m",
    "paper-1b",
    "paper-10b",
    "paper-100b",
];

/// Longest context a model may have. The attention of this model keeps S·d positions and
/// the data loader S + 1 tokens per row; past a million tokens a context is a typo, not a
/// plan (and S² attention work is far beyond any CPU run).
pub const MAX_SEQ_LEN: usize = 1 << 20;

impl ModelConfig {
    /// A named preset. `paper-*` presets are for the system model only (too big to train here).
    pub fn preset(name: &str) -> Result<Self, ConfigError> {
        let base = |vocab, d, l, h, e, k, de, s, b| ModelConfig {
            vocab_size: vocab,
            d_model: d,
            n_layers: l,
            n_heads: h,
            n_experts: e,
            top_k: k,
            d_expert: de,
            seq_len: s,
            batch_size: b,
            router: RouterKind::SoftmaxTopk,
            balance_alpha: 0.01,
            z_loss_beta: 0.0,
        };
        Ok(match name {
            "tiny" => base(256, 64, 2, 2, 8, 2, 64, 64, 8),
            "small" => base(256, 128, 2, 4, 8, 2, 128, 128, 8),
            "proxy-s" => base(256, 256, 4, 4, 16, 2, 256, 256, 16),
            "proxy-m" => base(256, 512, 8, 8, 32, 2, 512, 512, 16),
            // System-model presets (too big to train here; `fomoe project` uses them). Each
            // takes the public layout of an open MoE model; this model's experts have two
            // matrices (GELU, OLMoE/Mixtral/DeepSeek use three, SwiGLU), its attention full
            // multi-head K/V, its positions are learned, and the context is 4096 tokens.
            // Batch 256 sequences = 1,048,576 tokens per step per site.
            // paper-1b: OLMoE-1B-7B (16 layers, 16 heads, 64 experts, top-8, vocab 50304,
            // context 4096) at half its width (d 1024 for 2048, d_e 512 for 1024): 1.198B.
            "paper-1b" => base(50_304, 1024, 16, 16, 64, 8, 512, 4096, 256),
            // paper-10b: DeepSeekMoE 16B (28 layers, d 2048, 16 heads, 64 routed experts of
            // width 1408, top-6, vocab 102400, context 4096) without its 2 shared experts and
            // its dense first layer: 11.03B.
            "paper-10b" => base(102_400, 2048, 28, 16, 64, 6, 1408, 4096, 256),
            // paper-100b: Mixtral 8x22B (56 layers, d 6144, 48 heads, 8 experts of width
            // 16384, top-2, vocab 32000; context 65536 there): 98.88B.
            "paper-100b" => base(32_000, 6144, 56, 48, 8, 2, 16_384, 4096, 256),
            other => {
                return Err(ConfigError::new(
                    "preset",
                    other,
                    format!("one of {}", PRESETS.join(", ")),
                ))
            }
        })
    }

    /// Reject impossible shapes with a one-line error naming the field.
    pub fn validate(&self) -> Result<(), ConfigError> {
        let positive = [
            ("vocab_size", self.vocab_size),
            ("d_model", self.d_model),
            ("n_layers", self.n_layers),
            ("n_heads", self.n_heads),
            ("n_experts", self.n_experts),
            ("top_k", self.top_k),
            ("d_expert", self.d_expert),
            ("seq_len", self.seq_len),
            ("batch_size", self.batch_size),
        ];
        for (field, v) in positive {
            if v == 0 {
                return Err(ConfigError::new(field, v, "must be at least 1"));
            }
        }
        if self.top_k > self.n_experts {
            return Err(ConfigError::new(
                "top_k",
                self.top_k,
                format!("must be at most n_experts = {}", self.n_experts),
            ));
        }
        if !self.d_model.is_multiple_of(self.n_heads) {
            return Err(ConfigError::new(
                "n_heads",
                self.n_heads,
                format!("must divide d_model = {}", self.d_model),
            ));
        }
        if self.seq_len > MAX_SEQ_LEN {
            return Err(ConfigError::new(
                "seq_len",
                self.seq_len,
                format!("must be at most {MAX_SEQ_LEN}"),
            ));
        }
        if self.vocab_size > 1 << 20 {
            return Err(ConfigError::new(
                "vocab_size",
                self.vocab_size,
                "must be at most 1048576",
            ));
        }
        self.check_tensor_sizes()?;
        if !(self.balance_alpha >= 0.0 && self.balance_alpha.is_finite()) {
            return Err(ConfigError::new(
                "balance_alpha",
                self.balance_alpha,
                "must be finite and >= 0",
            ));
        }
        if !(self.z_loss_beta >= 0.0 && self.z_loss_beta.is_finite()) {
            return Err(ConfigError::new(
                "z_loss_beta",
                self.z_loss_beta,
                "must be finite and >= 0",
            ));
        }
        Ok(())
    }

    /// Every tensor the model allocates (parameters, the flat parameter buffer, the largest
    /// activations) must be indexable by libtorch: at most 2^63 − 1 elements. Checked in
    /// u128, so no product here can overflow silently.
    fn check_tensor_sizes(&self) -> Result<(), ConfigError> {
        let (v, d, l, e, k, de, s, b) = (
            self.vocab_size,
            self.d_model,
            self.n_layers,
            self.n_experts,
            self.top_k,
            self.d_expert,
            self.seq_len,
            self.batch_size,
        );
        let prod = |xs: &[usize]| {
            xs.iter()
                .try_fold(1u128, |acc, &x| acc.checked_mul(x as u128))
        };
        let experts = prod(&[l, e, 2, d, de]);
        let dense = prod(&[4, d, d])
            .zip(prod(&[e, d]))
            .and_then(|(a, r)| a.checked_add(r)?.checked_add(2 * d as u128))
            .and_then(|per_layer| per_layer.checked_mul(l as u128))
            .zip(prod(&[v + s + 1, d]))
            .and_then(|(blocks, emb)| blocks.checked_add(emb));
        let flat = experts.zip(dense).and_then(|(x, y)| x.checked_add(y));
        let flat_field = if experts >= dense {
            "n_experts"
        } else {
            "d_model"
        };
        let tensors = [
            (
                "the token embedding (vocab_size·d_model)",
                "vocab_size",
                prod(&[v, d]),
            ),
            (
                "the position table (seq_len·d_model)",
                "seq_len",
                prod(&[s, d]),
            ),
            (
                "an attention weight (3·d_model²)",
                "d_model",
                prod(&[3, d, d]),
            ),
            ("a router (n_experts·d_model)", "n_experts", prod(&[e, d])),
            (
                "an expert matrix (d_expert·d_model)",
                "d_expert",
                prod(&[de, d]),
            ),
            ("the flat parameter buffer", flat_field, flat),
            (
                "the hidden states (batch_size·seq_len·d_model)",
                "batch_size",
                prod(&[b, s, d]),
            ),
            (
                "the logits (batch_size·seq_len·vocab_size)",
                "batch_size",
                prod(&[b, s, v]),
            ),
            (
                "the expert activations (batch_size·seq_len·top_k·d_expert)",
                "batch_size",
                prod(&[b, s, k, de]),
            ),
            (
                "the router scores (batch_size·seq_len·n_experts)",
                "batch_size",
                prod(&[b, s, e]),
            ),
        ];
        for (what, field, numel) in tensors {
            if numel.is_none_or(|n| n > i64::MAX as u128) {
                let value = match field {
                    "vocab_size" => v,
                    "seq_len" => s,
                    "d_model" => d,
                    "n_experts" => e,
                    "d_expert" => de,
                    _ => b,
                };
                return Err(ConfigError::new(
                    field,
                    value,
                    format!("{what} would exceed the 2^63 − 1 elements a tensor can hold"),
                ));
            }
        }
        Ok(())
    }

    pub fn head_dim(&self) -> usize {
        self.d_model / self.n_heads
    }

    /// Parameters of one expert: fc1 (d_e × d) + fc2 (d × d_e).
    pub fn params_per_expert(&self) -> usize {
        2 * self.d_model * self.d_expert
    }

    /// Dense parameters of one block: attention qkv + proj, router, two norms.
    pub fn dense_params_per_layer(&self) -> usize {
        let d = self.d_model;
        4 * d * d + d * self.n_experts + 2 * d
    }

    /// N_dense: embeddings (tied head), positions, blocks' dense parts, final norm.
    pub fn dense_params(&self) -> usize {
        let d = self.d_model;
        self.vocab_size * d + self.seq_len * d + self.n_layers * self.dense_params_per_layer() + d
    }

    /// N_exp: all expert weights of all layers.
    pub fn expert_params(&self) -> usize {
        self.n_layers * self.n_experts * self.params_per_expert()
    }

    /// N = N_dense + N_exp.
    pub fn total_params(&self) -> usize {
        self.dense_params() + self.expert_params()
    }

    /// s = N_exp / N, the expert share the byte ratios depend on.
    pub fn expert_share(&self) -> f64 {
        self.expert_params() as f64 / self.total_params() as f64
    }

    /// Matmul weights one token passes through: per block attention (4d²), router (d·E) and
    /// k experts, plus the tied output head (V·d).
    pub fn active_matmul_params(&self) -> usize {
        let d = self.d_model;
        self.n_layers * (4 * d * d + d * self.n_experts + self.top_k * self.params_per_expert())
            + self.vocab_size * d
    }

    /// PaLM-convention training FLOPs per token: 6·N_active + 12·L·d·S.
    pub fn train_flops_per_token(&self) -> f64 {
        6.0 * self.active_matmul_params() as f64
            + 12.0 * (self.n_layers * self.d_model * self.seq_len) as f64
    }

    /// Tokens per training step on one site.
    pub fn tokens_per_step(&self) -> usize {
        self.batch_size * self.seq_len
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn every_preset_is_valid() {
        for p in PRESETS {
            ModelConfig::preset(p).unwrap().validate().unwrap();
        }
    }

    #[test]
    fn proxy_s_matches_methods_md() {
        let c = ModelConfig::preset("proxy-s").unwrap();
        assert_eq!(
            (
                c.vocab_size,
                c.d_model,
                c.n_layers,
                c.n_heads,
                c.n_experts,
                c.top_k,
                c.d_expert,
                c.seq_len,
                c.batch_size
            ),
            (256, 256, 4, 4, 16, 2, 256, 256, 16)
        );
        // 4 layers × 16 experts × 2·256·256 weights.
        assert_eq!(c.expert_params(), 4 * 16 * 131_072);
        // 256·256 + 256·256 + 4·(4·65536 + 256·16 + 512) + 256
        assert_eq!(
            c.dense_params(),
            65_536 + 65_536 + 4 * (262_144 + 4_096 + 512) + 256
        );
    }

    #[test]
    fn bad_shapes_name_the_field() {
        let mut c = ModelConfig::preset("tiny").unwrap();
        c.top_k = 9;
        assert_eq!(
            c.validate().unwrap_err().to_string(),
            "invalid top_k = 9: must be at most n_experts = 8"
        );
        let mut c = ModelConfig::preset("tiny").unwrap();
        c.n_heads = 3;
        assert_eq!(
            c.validate().unwrap_err().to_string(),
            "invalid n_heads = 3: must divide d_model = 64"
        );
        let e = ModelConfig::preset("huge").unwrap_err().to_string();
        assert!(
            e.starts_with("invalid preset = huge: one of tiny, small"),
            "{e}"
        );
        assert_eq!(RouterKind::parse("topk").unwrap_err().field, "router");
    }
}
