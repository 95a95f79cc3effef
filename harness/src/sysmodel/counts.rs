//! Parameter counts and training FLOPs of a model, and what one site of each method holds.
//!
//! The counts are [`ModelConfig`]'s (one source of truth, see `model/config.rs`):
//! - N_dense = V·d + S·d + L·(4d² + E·d + 2d) + d (tied embedding/head, learned positions,
//!   attention, routers, norm gains, final norm);
//! - N_exp = L·E·2·d·d_e; s = N_exp / N;
//! - N_active = L·(4d² + E·d + k·2·d·d_e) + V·d, the matmul weights one token passes through.
//!
//! Held per site: FoMoE holds the dense part and E·ρ/M experts per layer,
//! N_site = N_dense + L·(E·ρ/M)·2·d·d_e; every other method holds all N.
//! Degenerate cases: ρ = M gives N_site = N; ρ = 1 gives N_dense + N_exp/M.
//!
//! Training FLOPs per token (PaLM convention, `ModelConfig::train_flops_per_token`):
//! F = 6·N_active + 12·L·d·S, of which the experts are F_exp = 6·L·k·2·d·d_e. A FoMoE site
//! under skip-token runs only its resident experts: F_site = F − skip_rate·F_exp, with
//! skip_rate the share of routed slots that hit experts the site does not hold (about
//! 1 − ρ/M under balanced routing, measured per step in steps.csv `skip_rate`).

use serde::Serialize;

use crate::config::Method;
use crate::model::ModelConfig;

/// Parameter counts of a model (values, not bytes).
#[derive(Clone, Debug, PartialEq, Serialize)]
pub struct ParamCounts {
    /// N.
    pub total: u64,
    /// N_dense (embeddings, positions, attention, routers, norms).
    pub dense: u64,
    /// N_exp (all expert weights).
    pub expert: u64,
    /// N_active: matmul weights one token passes through.
    pub active: u64,
    /// s = N_exp / N.
    pub expert_share: f64,
    /// 2·d·d_e: values of one expert (one block).
    pub per_expert: u64,
    /// L·E: expert blocks in the model.
    pub expert_blocks: u64,
}

impl ParamCounts {
    /// The counts of `cfg` (a validated config: its products fit in 64 bits).
    pub fn of(cfg: &ModelConfig) -> Self {
        Self {
            total: cfg.total_params() as u64,
            dense: cfg.dense_params() as u64,
            expert: cfg.expert_params() as u64,
            active: cfg.active_matmul_params() as u64,
            expert_share: cfg.expert_share(),
            per_expert: cfg.params_per_expert() as u64,
            expert_blocks: (cfg.n_layers * cfg.n_experts) as u64,
        }
    }
}

/// Expert blocks (layer, expert) one site of `method` holds: L·E·ρ/M for FoMoE, L·E else.
pub fn expert_blocks_held(cfg: &ModelConfig, method: Method, sites: usize, rho: usize) -> u64 {
    let per_layer = match method {
        Method::Fomoe => cfg.n_experts * rho / sites.max(1),
        _ => cfg.n_experts,
    };
    (cfg.n_layers * per_layer) as u64
}

/// Parameters one site of `method` holds (see the module doc).
pub fn params_held(cfg: &ModelConfig, method: Method, sites: usize, rho: usize) -> u64 {
    cfg.dense_params() as u64
        + expert_blocks_held(cfg, method, sites, rho) * cfg.params_per_expert() as u64
}

/// Training FLOPs per token of the full model, and the part spent in expert matmuls.
#[derive(Clone, Copy, Debug, PartialEq, Serialize)]
pub struct TokenFlops {
    /// F = 6·N_active + 12·L·d·S.
    pub full: f64,
    /// F_exp = 6·L·k·2·d·d_e.
    pub experts: f64,
}

impl TokenFlops {
    pub fn of(cfg: &ModelConfig) -> Self {
        Self {
            full: cfg.train_flops_per_token(),
            experts: 6.0 * (cfg.n_layers * cfg.top_k * cfg.params_per_expert()) as f64,
        }
    }

    /// FLOPs per token on a site that skips `skip_rate` of the routed slots.
    pub fn with_skip(&self, skip_rate: f64) -> f64 {
        self.full - skip_rate * self.experts
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Counts of every preset, worked out by hand from its shape (V, d, L, E, k, d_e, S):
    /// dense = V·d + S·d + L·(4d² + E·d + 2d) + d, experts = L·E·2·d·d_e,
    /// active = L·(4d² + E·d + k·2·d·d_e) + V·d.
    #[test]
    fn every_preset_has_its_hand_computed_counts() {
        // (preset, dense, experts, active)
        let expected: [(&str, u64, u64, u64); 7] = [
            // tiny: 256·64 + 64·64 + 2·(16384 + 512 + 128) + 64; 2·8·8192; 2·(16384+512+16384) + 16384
            (
                "tiny",
                16_384 + 4_096 + 2 * 17_024 + 64,
                131_072,
                66_560 + 16_384,
            ),
            // small: 32768 + 16384 + 2·(65536 + 1024 + 256) + 128; 2·8·32768; 2·(65536+1024+65536) + 32768
            (
                "small",
                32_768 + 16_384 + 2 * 66_816 + 128,
                524_288,
                264_192 + 32_768,
            ),
            // proxy-s: 65536 + 65536 + 4·(262144 + 4096 + 512) + 256; 4·16·131072
            (
                "proxy-s",
                131_072 + 4 * 266_752 + 256,
                8_388_608,
                4 * 528_384 + 65_536,
            ),
            // proxy-m: 131072 + 262144 + 8·(1048576 + 16384 + 1024) + 512; 8·32·524288
            (
                "proxy-m",
                393_216 + 8 * 1_065_984 + 512,
                134_217_728,
                8 * 2_113_536 + 131_072,
            ),
            // paper-1b: 51511296 + 4194304 + 16·(4194304 + 65536 + 2048) + 1024; 16·64·1048576
            (
                "paper-1b",
                55_705_600 + 16 * 4_261_888 + 1_024,
                1_073_741_824,
                16 * (4_194_304 + 65_536 + 8 * 1_048_576) + 51_511_296,
            ),
            // paper-10b: 209715200 + 8388608 + 28·(16777216 + 131072 + 4096) + 2048;
            // 28·64·5767168 (2·2048·1408)
            (
                "paper-10b",
                218_103_808 + 28 * 16_912_384 + 2_048,
                10_334_765_056,
                28 * (16_777_216 + 131_072 + 6 * 5_767_168) + 209_715_200,
            ),
            // paper-100b: 196608000 + 25165824 + 56·(150994944 + 49152 + 12288) + 6144;
            // 56·8·201326592 (2·6144·16384)
            (
                "paper-100b",
                221_773_824 + 56 * 151_056_384 + 6_144,
                90_194_313_216,
                56 * (150_994_944 + 49_152 + 2 * 201_326_592) + 196_608_000,
            ),
        ];
        assert_eq!(expected.len(), crate::model::PRESETS.len());
        for (name, dense, experts, active) in expected {
            let c = ParamCounts::of(&ModelConfig::preset(name).unwrap());
            assert_eq!(
                (c.dense, c.expert, c.active),
                (dense, experts, active),
                "{name}"
            );
            assert_eq!(c.total, dense + experts, "{name}");
        }
        // The sizes the presets are named for.
        let total = |p: &str| ParamCounts::of(&ModelConfig::preset(p).unwrap()).total;
        assert_eq!(total("paper-1b"), 1_197_638_656);
        assert_eq!(total("paper-10b"), 11_026_417_664);
        assert_eq!(total("paper-100b"), 98_875_250_688);
    }

    #[test]
    fn fomoe_holds_dense_plus_rho_over_m_of_the_experts() {
        let c = ModelConfig::preset("small").unwrap(); // E = 8, L = 2
        let n = ParamCounts::of(&c);
        assert_eq!(params_held(&c, Method::Fomoe, 4, 4), n.total);
        assert_eq!(params_held(&c, Method::Fomoe, 4, 1), n.dense + n.expert / 4);
        assert_eq!(params_held(&c, Method::Fomoe, 4, 2), n.dense + n.expert / 2);
        assert_eq!(params_held(&c, Method::Diloco, 4, 2), n.total);
        assert_eq!(expert_blocks_held(&c, Method::Fomoe, 4, 2), 8);
    }

    #[test]
    fn skip_removes_only_expert_flops() {
        let c = ModelConfig::preset("proxy-s").unwrap();
        let f = TokenFlops::of(&c);
        assert_eq!(f.with_skip(0.0), c.train_flops_per_token());
        // 6·L·k·2·d·d_e = 6·4·2·131072
        assert_eq!(f.experts, 6_291_456.0);
        assert_eq!(f.with_skip(1.0), f.full - 6_291_456.0);
    }
}
