//! The input of a projection: a model (a preset, shapes, or a preset with shapes changed)
//! and a deployment (sites, ρ, H, links, compute, overlap, wire dtype, tokens per step and a
//! token budget), as flags or as a TOML file with `[model]` and `[deployment]` tables:
//!
//! ```toml
//! [model]
//! preset = "paper-100b"        # or every shape field: vocab_size, d_model, n_layers,
//! # n_experts = 16             # n_heads, n_experts, top_k, d_expert, seq_len, batch_size
//! [deployment]
//! sites = 8                    # M
//! rho = 2                      # FoMoE ρ: 1 ≤ ρ ≤ M, n_experts·ρ divisible by M
//! inner_steps = 32             # H
//! scenario = "cross-region"    # or rate = "1gbit", delay = "20ms" (uniform links)
//! # site_links = [{ up = "1gbit", down = "1gbit", delay = "10ms" }, ...]   # per site (M)
//! # aggregator_link = { up = "10gbit", down = "10gbit", delay = "1ms" }  # Photon's (per site)
//! star_link = "shared"         # shared: the aggregator's link carries all M clients;
//!                              # per-client: every client has its own (what sim/relay emulate)
//! peak_flops = 7.915e15        # per site (8 × H100 SXM dense BF16, 989.4 TFLOP/s each)
//! mfu = 0.4                    # or tokens_per_s = 1e5 (measured, full replica, per site)
//! overlap = 0.0                # compute/communication overlap ovl ∈ [0, 1]
//! wire = "f32"                 # f32 | bf16 | f16 | int8
//! # tokens_per_step = 1048576  # per site; default batch_size·seq_len
//! # token_budget = 2e12        # all sites together; default 20 tokens per parameter
//! # skip_rate = 0.75           # FoMoE skipped routed slots; default 1 − ρ/M
//! photon_topology = "star"     # star | ring
//! ```
//!
//! Defaults (decisions, README "Knobs beyond the paper"): M = 8, ρ = 2, H = 32 (the
//! abstract's H), the `cross-region` link (1 Gbit/s, 20 ms), one 8-GPU H100 node per site at
//! MFU 0.4, no overlap (the harness does not overlap), f32 on the wire, the model's batch,
//! and a Chinchilla-style budget of 20 tokens per parameter (Hoffmann et al. 2022).
//! Impossible deployments (ρ > M, E·ρ not divisible by M, a rate of 0, …) are refused with
//! one line naming the field, the value and what is allowed.

use serde::{Deserialize, Serialize};

use crate::collective::WireDtype;
use crate::config::PhotonTopology;
use crate::model::{ConfigError, ModelConfig};
use crate::net::link::SiteAccess;
use crate::net::{LinkMatrix, LinkSpec, Topology};

/// Default sites M.
pub const DEFAULT_SITES: usize = 8;
/// Default FoMoE ρ.
pub const DEFAULT_RHO: usize = 2;
/// Default inner steps H (the FoMoE abstract's H = 32).
pub const DEFAULT_INNER_STEPS: usize = 32;
/// Default link scenario.
pub const DEFAULT_SCENARIO: &str = "cross-region";
/// Dense BF16 peak of one H100 SXM (NVIDIA's data sheet), FLOP/s.
pub const H100_BF16_FLOPS: f64 = 989.4e12;
/// Default peak FLOP/s per site: one 8-GPU H100 node.
pub const DEFAULT_PEAK_FLOPS: f64 = 8.0 * H100_BF16_FLOPS;
/// Default model FLOP utilisation.
pub const DEFAULT_MFU: f64 = 0.4;
/// Default token budget, in tokens per parameter.
pub const DEFAULT_TOKENS_PER_PARAM: f64 = 20.0;
/// Most sites a projection accepts (a ring of M sites has 2(M − 1) steps of M links).
pub const MAX_SITES: usize = 1024;
/// Largest model a projection accepts, parameters: 100× the largest MoE published, and
/// small enough that every byte count of one sync fits 64 bits.
pub const MAX_PARAMS: usize = 10_000_000_000_000;
/// Most inner steps per round a projection accepts.
pub const MAX_INNER_STEPS: usize = 1_000_000;

/// The model part of a projection's input.
#[derive(Clone, Debug, Default, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct ModelSpec {
    /// A preset (`model/config.rs`); shape fields below change it.
    pub preset: Option<String>,
    /// Name of the configuration in tables and CSV (default: the preset, or `custom`).
    pub label: Option<String>,
    pub vocab_size: Option<usize>,
    pub d_model: Option<usize>,
    pub n_layers: Option<usize>,
    pub n_heads: Option<usize>,
    pub n_experts: Option<usize>,
    pub top_k: Option<usize>,
    pub d_expert: Option<usize>,
    pub seq_len: Option<usize>,
    pub batch_size: Option<usize>,
}

/// Preset a projection uses when neither a preset nor a shape is given.
pub const DEFAULT_PRESET: &str = "paper-100b";

impl ModelSpec {
    /// The label and the validated model.
    pub fn resolve(&self) -> Result<(String, ModelConfig), ConfigError> {
        let shape = [
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
        let any_shape = shape.iter().any(|(_, v)| v.is_some());
        let base = match (&self.preset, any_shape) {
            (Some(p), _) => ModelConfig::preset(p)?,
            (None, false) => ModelConfig::preset(DEFAULT_PRESET)?,
            (None, true) => {
                let missing: Vec<&str> = shape
                    .iter()
                    .filter(|(_, v)| v.is_none())
                    .map(|(n, _)| *n)
                    .collect();
                if !missing.is_empty() {
                    return Err(ConfigError::new(
                        "model",
                        "shape without preset",
                        format!(
                            "give a preset, or every shape field (missing: {})",
                            missing.join(", ")
                        ),
                    ));
                }
                // Every field is set below; the preset only supplies router and loss knobs.
                ModelConfig::preset("tiny")?
            }
        };
        let mut m = base;
        let set = |slot: &mut usize, v: Option<usize>| {
            if let Some(v) = v {
                *slot = v;
            }
        };
        set(&mut m.vocab_size, self.vocab_size);
        set(&mut m.d_model, self.d_model);
        set(&mut m.n_layers, self.n_layers);
        set(&mut m.n_heads, self.n_heads);
        set(&mut m.n_experts, self.n_experts);
        set(&mut m.top_k, self.top_k);
        set(&mut m.d_expert, self.d_expert);
        set(&mut m.seq_len, self.seq_len);
        set(&mut m.batch_size, self.batch_size);
        m.validate()?;
        if m.total_params() > MAX_PARAMS {
            let field = if m.expert_params() >= m.dense_params() {
                "n_experts"
            } else {
                "d_model"
            };
            let value = if field == "n_experts" {
                m.n_experts
            } else {
                m.d_model
            };
            return Err(ConfigError::new(
                field,
                value,
                format!(
                    "the model would have {} parameters; a projection takes at most {MAX_PARAMS}",
                    m.total_params()
                ),
            ));
        }
        let label = match (&self.label, &self.preset, any_shape) {
            (Some(l), _, _) => l.clone(),
            (None, Some(p), false) => p.clone(),
            (None, Some(p), true) => format!("{p}*"),
            (None, None, false) => DEFAULT_PRESET.to_string(),
            (None, None, true) => "custom".to_string(),
        };
        Ok((label, m))
    }
}

/// The deployment part of a projection's input, as written (every field optional).
#[derive(Clone, Debug, Default, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct DeploymentSpec {
    pub sites: Option<usize>,
    pub rho: Option<usize>,
    pub inner_steps: Option<usize>,
    pub scenario: Option<String>,
    pub rate: Option<String>,
    pub delay: Option<String>,
    pub site_links: Option<Vec<SiteAccess>>,
    pub aggregator_link: Option<SiteAccess>,
    pub star_link: Option<StarLink>,
    pub peak_flops: Option<f64>,
    pub mfu: Option<f64>,
    pub tokens_per_s: Option<f64>,
    pub overlap: Option<f64>,
    pub wire: Option<WireDtype>,
    pub tokens_per_step: Option<u64>,
    pub token_budget: Option<f64>,
    pub skip_rate: Option<f64>,
    pub photon_topology: Option<PhotonTopology>,
}

/// A projection's whole input: `[model]` and `[deployment]`.
#[derive(Clone, Debug, Default, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct ProjectSpec {
    pub model: ModelSpec,
    pub deployment: DeploymentSpec,
}

/// How Photon's star shares the aggregator's link.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize, Default)]
#[serde(rename_all = "kebab-case")]
pub enum StarLink {
    /// The aggregator's one link carries every client's upload and download (METHODS.md).
    #[default]
    Shared,
    /// Each client has its own link to the aggregator (what `sim` and `relay` emulate).
    PerClient,
}

/// Links between the endpoints (sites, then Photon's aggregator).
#[derive(Clone, Debug, PartialEq, Serialize)]
#[serde(tag = "kind", rename_all = "kebab-case")]
pub enum Links {
    /// Every pair gets the same link.
    Uniform { link: LinkSpec },
    /// Each site (and the aggregator) has an access link; pair (i, j) gets rate
    /// min(up_i, down_j) and delay delay_i + delay_j (`net::link`'s per-site topology).
    PerSite {
        sites: Vec<SiteAccess>,
        aggregator: SiteAccess,
    },
}

/// How a site's compute rate is given.
#[derive(Clone, Copy, Debug, PartialEq, Serialize)]
#[serde(tag = "kind", rename_all = "snake_case")]
pub enum ComputeRate {
    /// Peak FLOP/s of a site and the model FLOP utilisation it reaches.
    Flops { peak_flops: f64, mfu: f64 },
    /// Measured training tokens/s of one site holding the full model.
    TokensPerS { tokens_per_s: f64 },
}

/// A resolved, validated deployment.
#[derive(Clone, Debug, PartialEq, Serialize)]
pub struct Deployment {
    pub sites: usize,
    pub rho: usize,
    pub inner_steps: usize,
    pub links: Links,
    pub star_link: StarLink,
    pub compute: ComputeRate,
    pub overlap: f64,
    pub wire: WireDtype,
    pub tokens_per_step: u64,
    pub token_budget: f64,
    /// Whether the budget is the default (20 tokens per parameter).
    pub token_budget_default: bool,
    pub skip_rate: f64,
    pub photon_topology: PhotonTopology,
}

fn bad(field: &str, value: impl ToString, allowed: impl Into<String>) -> ConfigError {
    ConfigError::new(field, value, allowed)
}

fn unit(field: &str, e: crate::units::UnitError) -> ConfigError {
    bad(
        field,
        e.value,
        format!("{}; allowed: {}", e.reason, e.allowed),
    )
}

fn in_unit(field: &str, v: f64, lo_open: bool) -> Result<f64, ConfigError> {
    let ok = v.is_finite() && v <= 1.0 && if lo_open { v > 0.0 } else { v >= 0.0 };
    if ok {
        Ok(v)
    } else {
        let range = if lo_open { "(0, 1]" } else { "[0, 1]" };
        Err(bad(field, v, format!("must be in {range}")))
    }
}

fn positive(field: &str, v: f64) -> Result<f64, ConfigError> {
    if v.is_finite() && v > 0.0 {
        Ok(v)
    } else {
        Err(bad(field, v, "must be a finite number > 0"))
    }
}

impl DeploymentSpec {
    /// Fill in the defaults for `model` and refuse what cannot be deployed.
    pub fn resolve(&self, model: &ModelConfig) -> Result<Deployment, ConfigError> {
        let sites = self.sites.unwrap_or(DEFAULT_SITES);
        if sites == 0 || sites > MAX_SITES {
            return Err(bad("sites", sites, format!("must be in 1..={MAX_SITES}")));
        }
        let rho = self.rho.unwrap_or(DEFAULT_RHO.min(sites));
        if rho == 0 || rho > sites {
            return Err(bad("rho", rho, format!("must be in 1..={sites} (sites)")));
        }
        let e = model.n_experts;
        if !(e * rho).is_multiple_of(sites) {
            return Err(bad(
                "rho",
                rho,
                format!("n_experts·rho = {e}·{rho} must be divisible by sites = {sites}"),
            ));
        }
        let inner_steps = self.inner_steps.unwrap_or(DEFAULT_INNER_STEPS);
        if inner_steps == 0 || inner_steps > MAX_INNER_STEPS {
            return Err(bad(
                "inner_steps",
                inner_steps,
                format!("must be in 1..={MAX_INNER_STEPS}"),
            ));
        }
        let links = self.links(sites)?;
        let compute = match (self.tokens_per_s, self.peak_flops, self.mfu) {
            (Some(_), Some(_), _) | (Some(_), _, Some(_)) => {
                return Err(bad(
                    "tokens_per_s",
                    self.tokens_per_s.unwrap_or_default(),
                    "give either tokens_per_s or peak_flops/mfu, not both",
                ))
            }
            (Some(t), None, None) => ComputeRate::TokensPerS {
                tokens_per_s: positive("tokens_per_s", t)?,
            },
            (None, p, m) => ComputeRate::Flops {
                peak_flops: positive("peak_flops", p.unwrap_or(DEFAULT_PEAK_FLOPS))?,
                mfu: in_unit("mfu", m.unwrap_or(DEFAULT_MFU), true)?,
            },
        };
        let overlap = in_unit("overlap", self.overlap.unwrap_or(0.0), false)?;
        let tokens_per_step = self
            .tokens_per_step
            .unwrap_or(model.tokens_per_step() as u64);
        if tokens_per_step == 0 || tokens_per_step > 1 << 40 {
            return Err(bad(
                "tokens_per_step",
                tokens_per_step,
                "must be in 1..=1099511627776",
            ));
        }
        let default_budget = DEFAULT_TOKENS_PER_PARAM * model.total_params() as f64;
        let token_budget = positive("token_budget", self.token_budget.unwrap_or(default_budget))?;
        let skip_rate = in_unit(
            "skip_rate",
            self.skip_rate.unwrap_or(1.0 - rho as f64 / sites as f64),
            false,
        )?;
        Ok(Deployment {
            sites,
            rho,
            inner_steps,
            links,
            star_link: self.star_link.unwrap_or_default(),
            compute,
            overlap,
            wire: self.wire.unwrap_or(WireDtype::F32),
            tokens_per_step,
            token_budget,
            token_budget_default: self.token_budget.is_none(),
            skip_rate,
            photon_topology: self.photon_topology.unwrap_or_default(),
        })
    }

    fn links(&self, sites: usize) -> Result<Links, ConfigError> {
        let uniform = self.scenario.is_some() || self.rate.is_some() || self.delay.is_some();
        match &self.site_links {
            Some(list) => {
                if uniform {
                    return Err(bad(
                        "site_links",
                        "with scenario/rate/delay",
                        "give per-site links or a uniform link, not both",
                    ));
                }
                if list.len() != sites {
                    return Err(bad(
                        "site_links",
                        format!("{} entries", list.len()),
                        format!("must list one access link per site ({sites})"),
                    ));
                }
                let aggregator = self.aggregator_link.unwrap_or(list[0]);
                let links = Links::PerSite {
                    sites: list.clone(),
                    aggregator,
                };
                // Checked the way a run checks its topology (rates, delays, jitter).
                links_matrix(&links, sites + 1)
                    .map_err(|e| bad("site_links", "topology", e.to_string()))?;
                Ok(links)
            }
            None => {
                if self.aggregator_link.is_some() {
                    return Err(bad(
                        "aggregator_link",
                        "without site_links",
                        "is for per-site links; uniform links give the aggregator the same link",
                    ));
                }
                let scenario = self.scenario.as_deref().unwrap_or(DEFAULT_SCENARIO);
                let mut link = LinkSpec::scenario(scenario)
                    .map_err(|e| bad("scenario", scenario, e.to_string()))?;
                if let Some(r) = &self.rate {
                    link.rate_bps = crate::units::parse_rate_bps(r).map_err(|e| unit("rate", e))?;
                }
                if let Some(d) = &self.delay {
                    link.delay = crate::units::parse_duration(d).map_err(|e| unit("delay", e))?;
                }
                link.validate().map_err(|e| match e {
                    crate::net::link::LinkError::Invalid {
                        field,
                        value,
                        reason,
                    } => bad(&field, value, reason),
                    other => bad("link", link, other.to_string()),
                })?;
                Ok(Links::Uniform { link })
            }
        }
    }
}

/// The link of every ordered pair of `world` endpoints (sites, then the aggregator).
pub fn links_matrix(
    links: &Links,
    world: usize,
) -> Result<LinkMatrix, crate::net::link::LinkError> {
    match links {
        Links::Uniform { link } => Topology::uniform(*link).resolve(world),
        Links::PerSite { sites, aggregator } => {
            let mut all: Vec<SiteAccess> = sites.iter().take(world).copied().collect();
            if world > sites.len() {
                all.push(*aggregator);
            }
            Topology::PerSite { sites: all }.resolve(world)
        }
    }
}

impl Deployment {
    /// Links of the `world` endpoints of a run of this deployment (M, or M + 1 with
    /// Photon's aggregator).
    pub fn link_matrix(&self, world: usize) -> LinkMatrix {
        links_matrix(&self.links, world).expect("links were checked when resolved")
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn model() -> ModelConfig {
        ModelConfig::preset("tiny").unwrap() // E = 8
    }

    fn err(spec: DeploymentSpec) -> String {
        spec.resolve(&model()).unwrap_err().to_string()
    }

    #[test]
    fn impossible_deployments_are_refused_in_one_line() {
        let d = |sites, rho| DeploymentSpec {
            sites: Some(sites),
            rho: Some(rho),
            ..Default::default()
        };
        assert_eq!(err(d(4, 5)), "invalid rho = 5: must be in 1..=4 (sites)");
        assert_eq!(err(d(4, 0)), "invalid rho = 0: must be in 1..=4 (sites)");
        assert_eq!(
            err(d(3, 2)),
            "invalid rho = 2: n_experts·rho = 8·2 must be divisible by sites = 3"
        );
        assert_eq!(err(d(0, 1)), "invalid sites = 0: must be in 1..=1024");
        let rate0 = DeploymentSpec {
            rate: Some("0bit".into()),
            ..Default::default()
        };
        let e = err(rate0);
        assert!(
            e.starts_with("invalid rate = 0bit: must be greater than zero; allowed: "),
            "{e}"
        );
        let rate_low = DeploymentSpec {
            rate: Some("10bit".into()),
            ..Default::default()
        };
        assert_eq!(
            err(rate_low),
            "invalid rate = 10bit: must be between 1kbit and 1tbit"
        );
        let mfu = DeploymentSpec {
            mfu: Some(0.0),
            ..Default::default()
        };
        assert_eq!(err(mfu), "invalid mfu = 0: must be in (0, 1]");
        let both = DeploymentSpec {
            mfu: Some(0.5),
            tokens_per_s: Some(1e4),
            ..Default::default()
        };
        assert!(err(both).contains("not both"));
        let few = DeploymentSpec {
            sites: Some(4),
            site_links: Some(vec![
                SiteAccess {
                    up: 1_000_000,
                    down: 1_000_000,
                    delay: std::time::Duration::ZERO,
                    jitter: std::time::Duration::ZERO,
                };
                3
            ]),
            ..Default::default()
        };
        assert_eq!(
            err(few),
            "invalid site_links = 3 entries: must list one access link per site (4)"
        );
        for e in [err(d(4, 5)), err(d(3, 2))] {
            assert_eq!(e.lines().count(), 1);
        }
    }

    #[test]
    fn defaults_are_the_documented_ones() {
        let m = ModelConfig::preset("paper-1b").unwrap();
        let d = DeploymentSpec::default().resolve(&m).unwrap();
        assert_eq!((d.sites, d.rho, d.inner_steps), (8, 2, 32));
        assert_eq!(
            d.links,
            Links::Uniform {
                link: LinkSpec::scenario("cross-region").unwrap()
            }
        );
        assert_eq!(d.tokens_per_step, 256 * 4096);
        assert_eq!(d.token_budget, 20.0 * m.total_params() as f64);
        assert_eq!(d.skip_rate, 0.75);
        assert_eq!(
            d.compute,
            ComputeRate::Flops {
                peak_flops: 8.0 * 989.4e12,
                mfu: 0.4
            }
        );
    }

    #[test]
    fn a_shape_without_preset_needs_every_field() {
        let s = ModelSpec {
            d_model: Some(64),
            ..Default::default()
        };
        let e = s.resolve().unwrap_err().to_string();
        assert!(e.contains("missing: vocab_size, n_layers"), "{e}");
        let (label, m) = ModelSpec {
            preset: Some("tiny".into()),
            n_experts: Some(16),
            ..Default::default()
        }
        .resolve()
        .unwrap();
        assert_eq!((label.as_str(), m.n_experts), ("tiny*", 16));
        // Past 10^13 parameters the byte counts would not fit 64 bits: refused.
        let e = ModelSpec {
            preset: Some("paper-100b".into()),
            n_experts: Some(1_000_000),
            ..Default::default()
        }
        .resolve()
        .unwrap_err();
        assert_eq!(e.field, "n_experts", "{e}");
    }
}
