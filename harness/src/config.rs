//! The resolved configuration of one run: every knob of METHODS.md with its default.
//!
//! A suite file's base table plus one grid point deserialises into a [`RunConfig`]
//! (`deny_unknown_fields` everywhere, so a misspelt key is an error), and
//! [`RunConfig::validate`] applies the cross-field rules with one-line errors naming the
//! field, the value and what is allowed. The resolved config is recorded in every run's
//! manifest and hashed ([`RunConfig::run_hash`]: its identity, faults included) to decide
//! whether a run is already complete; checkpoints carry [`RunConfig::checkpoint_hash`] (the
//! same without faults), so a run resumed after an injected crash matches its checkpoint.

use serde::{Deserialize, Serialize};
use sha2::{Digest, Sha256};

use crate::collective::WireDtype;
use crate::data::DataConfig;
use crate::device::{DeviceChoice, Precision};
use crate::model::{AuxScope, ConfigError, ModelConfig, RouterKind, SkipPolicy};
use crate::net::Backend;
use crate::optim::AdamWConfig;

/// The training method of a run.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum Method {
    /// One site, no communication (the reference all methods reduce to at M = 1).
    Single,
    Ddp,
    Diloco,
    Photon,
    Fomoe,
}

impl Method {
    pub const NAMES: &'static [&'static str] = &["single", "ddp", "diloco", "photon", "fomoe"];
    pub fn name(self) -> &'static str {
        match self {
            Method::Single => "single",
            Method::Ddp => "ddp",
            Method::Diloco => "diloco",
            Method::Photon => "photon",
            Method::Fomoe => "fomoe",
        }
    }
    /// Methods with an outer optimiser and infrequent synchronisation.
    pub fn has_rounds(self) -> bool {
        matches!(self, Method::Diloco | Method::Photon | Method::Fomoe)
    }
}

/// Whether a knob (a dotted path into [`RunConfig`], e.g. `fomoe.rho`) changes what a run
/// of `method` computes. Suites use it to collapse grid points that differ only in knobs a
/// method ignores (DDP is not run three times for three values of ρ), reports to leave such
/// cells empty.
/// - `fomoe.*`: FoMoE only; `photon_topology`: Photon only;
/// - `inner_steps`, `outer`, `keep_inner_state`: methods with rounds (DiLoCo, Photon, FoMoE);
///   `outer_groups`: DiLoCo and FoMoE (the group synchronisation);
///   DDP and single only use H as their eval period, which a suite takes from its base;
/// - `network.*`, `wire_dtype`, `on_site_loss`: every method but `single` (which never
///   communicates); `round_deadline`: methods with rounds;
/// - everything else: every method.
pub fn knob_applies(method: Method, path: &str) -> bool {
    let head = path.split('.').next().unwrap_or(path);
    match head {
        "fomoe" => method == Method::Fomoe,
        "photon_topology" => method == Method::Photon,
        "inner_steps" | "outer" | "keep_inner_state" => method.has_rounds(),
        "outer_groups" => matches!(method, Method::Diloco | Method::Fomoe),
        "network" | "wire_dtype" | "on_site_loss" => method != Method::Single,
        "round_deadline" => method.has_rounds(),
        _ => true,
    }
}

/// Outer optimiser applied to the averaged pseudo-gradient Δ = mean(θ_global − θ_site).
#[derive(Clone, Copy, Debug, PartialEq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case", tag = "kind", deny_unknown_fields)]
pub enum OuterOptimizer {
    /// SGD with Nesterov momentum: v ← μv + Δ; θ ← θ − lr·(Δ + μv). DiLoCo: lr 0.7, μ 0.9.
    Nesterov { lr: f64, momentum: f64 },
    /// θ ← θ − lr·Δ (lr 1 = plain averaging). Photon's FedAvg.
    Fedavg { lr: f64 },
}

impl OuterOptimizer {
    pub fn diloco_default() -> Self {
        OuterOptimizer::Nesterov {
            lr: 0.7,
            momentum: 0.9,
        }
    }
    pub fn fedavg_default() -> Self {
        OuterOptimizer::Fedavg { lr: 1.0 }
    }
    /// FoMoE's default: Nesterov lr 0.7 with momentum 0.5. DiLoCo's momentum 0.9 makes
    /// FoMoE's global model spike (the dense group's momentum extrapolates averaged routers
    /// into a routing no site used; issue 8's study): momentum 0.5 was stable on every seed
    /// of both corpora and, with `reroute`, ended below DiLoCo at its defaults.
    pub fn fomoe_default() -> Self {
        OuterOptimizer::Nesterov {
            lr: 0.7,
            momentum: 0.5,
        }
    }
    pub fn name(&self) -> &'static str {
        match self {
            OuterOptimizer::Nesterov { .. } => "nesterov",
            OuterOptimizer::Fedavg { .. } => "fedavg",
        }
    }
}

/// `nesterov(lr 0.7, momentum 0.9)`, `fedavg(lr 1)`.
impl std::fmt::Display for OuterOptimizer {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            OuterOptimizer::Nesterov { lr, momentum } => {
                write!(f, "nesterov(lr {lr}, momentum {momentum})")
            }
            OuterOptimizer::Fedavg { lr } => write!(f, "fedavg(lr {lr})"),
        }
    }
}

/// Per-parameter-group overrides of the outer optimiser (DiLoCo and FoMoE). A group left
/// out uses `outer` (or the method's default). Groups: `dense` (embeddings, positions,
/// attention, norms), `router` (every layer's router weight), `experts` (expert fc1/fc2).
#[derive(Clone, Copy, Debug, Default, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct OuterGroups {
    pub dense: Option<OuterOptimizer>,
    pub router: Option<OuterOptimizer>,
    pub experts: Option<OuterOptimizer>,
}

impl OuterGroups {
    pub fn is_empty(&self) -> bool {
        self.dense.is_none() && self.router.is_none() && self.experts.is_none()
    }
}

/// The outer optimiser of each parameter group, resolved (see [`OuterGroups`]).
#[derive(Clone, Copy, Debug, PartialEq)]
pub struct ResolvedOuter {
    pub dense: OuterOptimizer,
    pub router: OuterOptimizer,
    pub experts: OuterOptimizer,
}

/// One optimiser when every group has it, else `dense …, router …, experts …`.
impl std::fmt::Display for ResolvedOuter {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        if self.dense == self.router && self.router == self.experts {
            write!(f, "{}", self.dense)
        } else {
            write!(
                f,
                "dense {}, router {}, experts {}",
                self.dense, self.router, self.experts
            )
        }
    }
}

impl ResolvedOuter {
    /// Every group with the same optimiser.
    pub fn uniform(kind: OuterOptimizer) -> Self {
        Self {
            dense: kind,
            router: kind,
            experts: kind,
        }
    }
}

/// Which sites' pseudo-gradients a FoMoE router row is averaged over. Row e of a layer's
/// router (its logit for expert e) is a dense parameter every site holds.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize, Default)]
#[serde(rename_all = "snake_case")]
pub enum RouterSync {
    /// With the dense group: Δ_row = mean over all M sites.
    #[default]
    All,
    /// Row e among expert e's holders only: Δ_row(e) = mean over holders(e) of Δ_s. Rows of
    /// experts a site does not hold contribute nothing from it (it never ran them). The rows
    /// still travel in the dense all-reduce (the same bytes); every site adopts the result,
    /// so routers stay bit-identical everywhere. ρ = M: identical to `all`.
    Holders,
}

/// How FoMoE places experts on sites.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize, Default)]
#[serde(rename_all = "snake_case")]
pub enum Placement {
    /// Site s holds experts {(s·E/M + j) mod E : 0 ≤ j < E·ρ/M} in every layer.
    #[default]
    RoundRobin,
    /// Like round-robin for the first round; afterwards the most loaded experts of the
    /// previous round get more holders (beyond the paper).
    LoadAware,
}

/// FoMoE knobs. Defaults (issue 8's study, `results/reference/fomoe-stability`, README
/// "Decisions"): ρ = 2, round-robin placement, `skip_policy = reroute`, balance loss over all
/// experts, routers averaged over all sites; the outer optimiser is
/// [`OuterOptimizer::fomoe_default`]. The paper's skip-token (`drop`, only resident experts
/// run: expert FLOPs ≈ ρ/M of a full replica) is a knob away; it trades model quality for
/// compute, which the study and `experiments/paper-cpu.toml` measure side by side.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct FomoeConfig {
    /// ρ: holders per expert, 1 ≤ ρ ≤ M, E·ρ divisible by M.
    pub rho: usize,
    pub placement: Placement,
    pub skip_policy: SkipPolicy,
    pub aux_scope: AuxScope,
    pub router_sync: RouterSync,
}

impl Default for FomoeConfig {
    fn default() -> Self {
        Self {
            rho: 2,
            placement: Placement::RoundRobin,
            skip_policy: SkipPolicy::Reroute,
            aux_scope: AuxScope::All,
            router_sync: RouterSync::All,
        }
    }
}

/// Photon's topology.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize, Default)]
#[serde(rename_all = "snake_case")]
pub enum PhotonTopology {
    /// Clients upload to an aggregator process, which broadcasts the new global model.
    #[default]
    Star,
    /// Ring all-reduce among the clients (no aggregator).
    Ring,
}

pub use crate::scenario::{Fault, FaultKind, OnSiteLoss};

/// Links and backend.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct NetworkConfig {
    pub backend: Backend,
    /// A named scenario (`same-region`, `cross-region`, `cross-continent`, `consumer`,
    /// `internet`); explicit `rate`/`delay`/`jitter` override its values. Backend `tcp`
    /// applies none of them (its links are the hosts' own; explicit values are refused).
    pub scenario: Option<String>,
    /// e.g. "100mbit"
    pub rate: Option<String>,
    /// one-way, e.g. "20ms"
    pub delay: Option<String>,
    pub jitter: Option<String>,
    /// Links per site, per pair, as a matrix or by region ([`crate::net::Topology`]);
    /// replaces `scenario` (which is then ignored) and excludes `rate`/`delay`/`jitter`.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub topology: Option<crate::net::Topology>,
    /// Time-varying bandwidth from a CSV trace (`sim` only, [`crate::net::schedule`]).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub trace: Option<crate::net::schedule::TraceConfig>,
}

impl Default for NetworkConfig {
    fn default() -> Self {
        Self {
            backend: Backend::Sim,
            scenario: Some("cross-region".into()),
            rate: None,
            delay: None,
            jitter: None,
            topology: None,
            trace: None,
        }
    }
}

fn topology_kind(t: &crate::net::Topology) -> &'static str {
    use crate::net::Topology;
    match t {
        Topology::Uniform { .. } => "uniform",
        Topology::PerPair { .. } => "per-pair",
        Topology::PerSite { .. } => "per-site",
        Topology::Matrix { .. } => "matrix",
        Topology::Regions { .. } => "regions",
    }
}

/// Optional overrides of the preset's model fields.
#[derive(Clone, Debug, Default, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct ModelOverrides {
    pub router: Option<RouterKind>,
    pub balance_alpha: Option<f64>,
    pub z_loss_beta: Option<f64>,
    pub batch_size: Option<usize>,
    pub seq_len: Option<usize>,
    pub n_experts: Option<usize>,
    pub top_k: Option<usize>,
    pub n_heads: Option<usize>,
}

/// One run, fully resolved.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct RunConfig {
    pub method: Method,
    /// Model preset: tiny, small, proxy-s, proxy-m.
    pub preset: String,
    pub model: ModelOverrides,
    /// M: number of sites.
    pub sites: usize,
    /// Inner steps per site over the whole run.
    pub steps: usize,
    /// H: inner steps per outer round (ignored by DDP and single).
    pub inner_steps: usize,
    pub optim: AdamWConfig,
    /// Outer optimiser; default: Nesterov(0.7, 0.9) for DiLoCo, Nesterov(0.7, 0.5) for FoMoE
    /// ([`OuterOptimizer::fomoe_default`]), FedAvg for Photon.
    pub outer: Option<OuterOptimizer>,
    /// Per-group overrides of `outer` (DiLoCo and FoMoE only).
    #[serde(skip_serializing_if = "OuterGroups::is_empty")]
    pub outer_groups: OuterGroups,
    /// Keep each site's AdamW moments across rounds (true) or reset them every round.
    pub keep_inner_state: bool,
    pub wire_dtype: WireDtype,
    pub fomoe: FomoeConfig,
    pub photon_topology: PhotonTopology,
    pub network: NetworkConfig,
    pub data: DataConfig,
    /// Evaluate the global model every this many rounds (DDP/single: every this many × H steps).
    pub eval_every_rounds: usize,
    /// Eval sequences per domain (cap).
    pub eval_sequences: usize,
    /// Target eval loss (mean over domains) for time-to-target; none = not tracked.
    pub target_loss: Option<f64>,
    /// CPU threads per site; none = cores / concurrently computing sites.
    pub threads_per_site: Option<usize>,
    pub seed: u64,
    /// Save every site's state (`ckpt-site<i>.safetensors`) every this many rounds.
    pub checkpoint_every_rounds: Option<usize>,
    /// Continue from the checkpoints in this run directory. Operational, like
    /// `checkpoint_every_rounds`: neither is part of either hash (see [`RunConfig::run_hash`]).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub resume_from: Option<std::path::PathBuf>,
    /// Scripted failures (`[[faults]]`, see [`crate::scenario`]). Part of the run's identity ([`RunConfig::run_hash`]), not of
    /// checkpoint compatibility ([`RunConfig::checkpoint_hash`]).
    pub faults: Vec<Fault>,
    /// What a lost site (crash, leave) does to the run: `fail` or `continue`; none = the
    /// method's default (ddp, diloco: fail; photon, fomoe: continue).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub on_site_loss: Option<OnSiteLoss>,
    /// Straggler deadline per round (e.g. "30s"; methods with rounds; none = off): a site
    /// that has not reported by then is left out of the round's average.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub round_deadline: Option<String>,
    /// Where sites compute: cpu (default), cuda, auto (see `crate::device`). Left out of the
    /// serialised config, and so of the hash, at its default, so CPU configs keep theirs.
    #[serde(skip_serializing_if = "DeviceChoice::is_cpu")]
    pub device: DeviceChoice,
    /// Matmul precision: fp32 (default) or bf16 with fp32 master weights and optimiser
    /// state (see `crate::device`). Serialised like `device`.
    #[serde(skip_serializing_if = "Precision::is_fp32")]
    pub precision: Precision,
}

impl Default for RunConfig {
    fn default() -> Self {
        Self {
            method: Method::Diloco,
            preset: "tiny".into(),
            model: ModelOverrides::default(),
            sites: 4,
            steps: 64,
            inner_steps: 16,
            optim: AdamWConfig::default(),
            outer: None,
            outer_groups: OuterGroups::default(),
            keep_inner_state: true,
            wire_dtype: WireDtype::F32,
            fomoe: FomoeConfig::default(),
            photon_topology: PhotonTopology::Star,
            network: NetworkConfig::default(),
            data: DataConfig::default(),
            eval_every_rounds: 1,
            eval_sequences: 16,
            target_loss: None,
            threads_per_site: None,
            seed: 0,
            checkpoint_every_rounds: None,
            resume_from: None,
            faults: Vec::new(),
            on_site_loss: None,
            round_deadline: None,
            device: DeviceChoice::Cpu,
            precision: Precision::Fp32,
        }
    }
}

impl RunConfig {
    /// The model this run trains: preset plus overrides, validated. A shape error names
    /// the knob as the run file spells it (`model.seq_len`, `data.vocab_size`, `preset`).
    pub fn model_config(&self) -> Result<ModelConfig, ConfigError> {
        let m = self.resolved_model()?;
        m.validate().map_err(|e| {
            let o = &self.model;
            let overridden = match e.field.as_str() {
                "batch_size" => o.batch_size.is_some(),
                "seq_len" => o.seq_len.is_some(),
                "n_experts" => o.n_experts.is_some(),
                "top_k" => o.top_k.is_some(),
                "n_heads" => o.n_heads.is_some(),
                "balance_alpha" => o.balance_alpha.is_some(),
                "z_loss_beta" => o.z_loss_beta.is_some(),
                _ => false,
            };
            let field = if overridden {
                format!("model.{}", e.field)
            } else if e.field == "vocab_size" && self.data.vocab_size.is_some() {
                "data.vocab_size".to_string()
            } else {
                e.field
            };
            ConfigError { field, ..e }
        })?;
        Ok(m)
    }

    /// Preset plus overrides, not validated (the memory estimate asks "what if this knob
    /// had its default" without caring whether that shape is valid).
    pub fn resolved_model(&self) -> Result<ModelConfig, ConfigError> {
        let mut m = ModelConfig::preset(&self.preset)?;
        let o = &self.model;
        if let Some(v) = o.router {
            m.router = v;
        }
        if let Some(v) = o.balance_alpha {
            m.balance_alpha = v;
        }
        if let Some(v) = o.z_loss_beta {
            m.z_loss_beta = v;
        }
        if let Some(v) = o.batch_size {
            m.batch_size = v;
        }
        if let Some(v) = o.seq_len {
            m.seq_len = v;
        }
        if let Some(v) = o.n_experts {
            m.n_experts = v;
        }
        if let Some(v) = o.top_k {
            m.top_k = v;
        }
        if let Some(v) = o.n_heads {
            m.n_heads = v;
        }
        // A token file brings its own vocabulary.
        if self.data.kind == crate::data::DataKind::Tokenfile {
            if let Some(v) = self.data.vocab_size {
                m.vocab_size = v;
            }
        }
        Ok(m)
    }

    /// The outer optimiser in effect (explicit or the method's default).
    pub fn outer_optimizer(&self) -> OuterOptimizer {
        self.outer.unwrap_or(match self.method {
            Method::Photon => OuterOptimizer::fedavg_default(),
            Method::Fomoe => OuterOptimizer::fomoe_default(),
            _ => OuterOptimizer::diloco_default(),
        })
    }

    /// The outer optimiser of each parameter group: `outer_groups` over `outer`.
    pub fn resolved_outer(&self) -> ResolvedOuter {
        let d = self.outer_optimizer();
        let g = &self.outer_groups;
        ResolvedOuter {
            dense: g.dense.unwrap_or(d),
            router: g.router.unwrap_or(d),
            experts: g.experts.unwrap_or(d),
        }
    }

    /// Outer rounds: steps / H for round-based methods, else steps / H eval periods.
    pub fn rounds(&self) -> usize {
        self.steps / self.inner_steps.max(1)
    }

    /// Cross-field validation; the first violated rule as a one-line error.
    pub fn validate(&self) -> Result<(), ConfigError> {
        let m = self.model_config()?;
        self.optim.validate().map_err(|e| ConfigError {
            field: format!("optim.{}", e.field),
            ..e
        })?;
        if self.sites == 0 || self.sites > 64 {
            return Err(ConfigError::new("sites", self.sites, "must be in 1..=64"));
        }
        if self.method == Method::Single && self.sites != 1 {
            return Err(ConfigError::new(
                "sites",
                self.sites,
                "method single needs sites = 1",
            ));
        }
        if self.inner_steps == 0 {
            return Err(ConfigError::new("inner_steps", 0, "must be at least 1"));
        }
        if self.steps == 0 {
            return Err(ConfigError::new("steps", 0, "must be at least 1"));
        }
        if !self.steps.is_multiple_of(self.inner_steps) {
            return Err(ConfigError::new(
                "steps",
                self.steps,
                format!("must be a multiple of inner_steps = {}", self.inner_steps),
            ));
        }
        if self.eval_every_rounds == 0 {
            return Err(ConfigError::new(
                "eval_every_rounds",
                0,
                "must be at least 1",
            ));
        }
        if self.method == Method::Fomoe {
            let (e, rho, sites) = (m.n_experts, self.fomoe.rho, self.sites);
            if rho == 0 || rho > sites {
                return Err(ConfigError::new(
                    "fomoe.rho",
                    rho,
                    format!("must be in 1..={sites} (sites)"),
                ));
            }
            if (e * rho) % sites != 0 {
                return Err(ConfigError::new(
                    "fomoe.rho",
                    rho,
                    format!("n_experts·rho = {e}·{rho} must be divisible by sites = {sites}"),
                ));
            }
            if self.fomoe.skip_policy == SkipPolicy::Reroute && e * rho / sites < m.top_k {
                return Err(ConfigError::new(
                    "fomoe.skip_policy",
                    "reroute",
                    format!(
                        "needs at least top_k = {} resident experts per site, have {}",
                        m.top_k,
                        e * rho / sites
                    ),
                ));
            }
        }
        validate_outer("outer", self.outer_optimizer())?;
        let g = &self.outer_groups;
        for (name, o) in [
            ("outer_groups.dense", g.dense),
            ("outer_groups.router", g.router),
            ("outer_groups.experts", g.experts),
        ] {
            if let Some(o) = o {
                validate_outer(name, o)?;
            }
        }
        if !g.is_empty() && !matches!(self.method, Method::Diloco | Method::Fomoe) {
            return Err(ConfigError::new(
                "outer_groups",
                self.method.name(),
                "per-group outer optimisers apply to diloco and fomoe only",
            ));
        }
        if let Some(t) = self.threads_per_site {
            if t == 0 {
                return Err(ConfigError::new(
                    "threads_per_site",
                    0,
                    "must be at least 1",
                ));
            }
        }
        if let Some(t) = self.target_loss {
            if !(t > 0.0 && t.is_finite()) {
                return Err(ConfigError::new(
                    "target_loss",
                    t,
                    "must be a finite number > 0",
                ));
            }
        }
        if self.resume_from.is_some() && self.endpoints() > self.sites {
            return Err(ConfigError::new(
                "resume_from",
                "photon (star)",
                "Photon's aggregator keeps no checkpoint yet: resume is available for single, ddp, diloco, fomoe and photon_topology = ring",
            ));
        }

        if self.network.backend == Backend::Tcp {
            let n = &self.network;
            for (field, v) in [
                ("network.rate", &n.rate),
                ("network.delay", &n.delay),
                ("network.jitter", &n.jitter),
            ] {
                if let Some(v) = v {
                    return Err(ConfigError::new(
                        field,
                        v,
                        "not applied by backend tcp (real links, no emulation): remove it, \
                         or shape the hosts' own links (README: sites on separate hosts)",
                    ));
                }
            }
        }
        if self.network.backend == Backend::Tcp {
            for (field, set) in [
                ("network.topology", self.network.topology.is_some()),
                ("network.trace", self.network.trace.is_some()),
            ] {
                if set {
                    return Err(ConfigError::new(
                        field,
                        "given",
                        "not applied by backend tcp (real links, no emulation)",
                    ));
                }
            }
        }
        crate::scenario::plan::Plan::new(self)?;
        self.net_schedule()?;
        self.data
            .validate()
            .map_err(|e| ConfigError::new("data", e.to_string(), "a valid [data] table"))?;
        Ok(())
    }

    /// The uniform link every pair of endpoints gets: the scenario (default `cross-region`)
    /// with explicit `rate` / `delay` / `jitter` overriding its values.
    pub fn link_spec(&self) -> Result<crate::net::LinkSpec, ConfigError> {
        use crate::net::LinkSpec;
        let n = &self.network;
        let mut spec = match &n.scenario {
            Some(s) => LinkSpec::scenario(s)
                .map_err(|e| ConfigError::new("network.scenario", s, e.to_string()))?,
            None => LinkSpec::scenario("cross-region").expect("built-in scenario"),
        };
        if let Some(r) = &n.rate {
            spec.rate_bps = crate::units::parse_rate_bps(r)
                .map_err(|e| ConfigError::new("network.rate", r, e.to_string()))?;
        }
        if let Some(d) = &n.delay {
            spec.delay = crate::units::parse_duration(d)
                .map_err(|e| ConfigError::new("network.delay", d, e.to_string()))?;
        }
        if let Some(j) = &n.jitter {
            spec.jitter = crate::units::parse_duration(j)
                .map_err(|e| ConfigError::new("network.jitter", j, e.to_string()))?;
        }
        spec.validate()
            .map_err(|e| ConfigError::new("network", format!("{spec:?}"), e.to_string()))?;
        Ok(spec)
    }

    /// Links between the sites (plus Photon's aggregator, the last endpoint, in star mode):
    /// the topology when given, else the uniform link of [`RunConfig::link_spec`].
    pub fn link_matrix(&self) -> Result<crate::net::LinkMatrix, ConfigError> {
        use crate::net::Topology;
        let n = &self.network;
        let topology = match &n.topology {
            Some(t) => {
                for (field, set) in [
                    ("rate", n.rate.is_some()),
                    ("delay", n.delay.is_some()),
                    ("jitter", n.jitter.is_some()),
                ] {
                    if set {
                        return Err(ConfigError::new(
                            format!("network.{field}"),
                            "given",
                            "not combined with network.topology (give the links in the topology)",
                        ));
                    }
                }
                t.clone()
            }
            None => Topology::uniform(self.link_spec()?),
        };
        topology.resolve(self.endpoints()).map_err(|e| {
            ConfigError::new("network.topology", topology_kind(&topology), e.to_string())
        })
    }

    /// The links over time: the matrix, the bandwidth trace and the scripted link changes.
    pub fn net_schedule(&self) -> Result<crate::net::schedule::NetSchedule, ConfigError> {
        let matrix = self.link_matrix()?;
        let trace = match &self.network.trace {
            Some(t) => {
                if self.network.backend != Backend::Sim {
                    return Err(ConfigError::new(
                        "network.trace",
                        t.file.display(),
                        format!("time-varying links are emulated on network.backend = sim only ({} applies static links)", self.network.backend),
                    ));
                }
                Some(
                    crate::net::schedule::Trace::load(t, self.endpoints())
                        .map_err(|e| ConfigError::new("network.trace", t.file.display(), e))?,
                )
            }
            None => None,
        };
        let plan = crate::scenario::plan::Plan::new(self)?;
        Ok(crate::net::schedule::NetSchedule::new(
            &matrix,
            trace.as_ref(),
            &plan.link_changes,
        ))
    }

    /// Processes joined by the network: sites, plus the aggregator for Photon star.
    pub fn endpoints(&self) -> usize {
        if self.method == Method::Photon && self.photon_topology == PhotonTopology::Star {
            self.sites + 1
        } else {
            self.sites
        }
    }

    /// The run's identity: every knob that changes what the run computes or records,
    /// faults included (a run with an injected crash is another run than the clean one).
    /// Suites deduplicate runs by it, manifests record it as `config_hash`, and resume
    /// (`fomoe run` skipping complete runs) compares it. Left out: `resume_from` and
    /// `checkpoint_every_rounds`, which say how a run is executed, not what it is.
    /// Hex of the first 8 bytes of SHA-256 over the canonical JSON.
    pub fn run_hash(&self) -> String {
        let mut c = self.clone();
        c.resume_from = None;
        c.checkpoint_every_rounds = None;
        // The outer optimiser the run uses, not the words it was given: a method whose
        // default changes gets new run identities (its old results are not reused as if
        // they were the new default's).
        if c.method.has_rounds() {
            c.outer = Some(self.outer_optimizer());
        }
        canonical_hash(&c)
    }

    /// Checkpoint compatibility: the [`RunConfig::run_hash`] of this config without its
    /// faults. A checkpoint written by a run that crashed on an injected fault can be
    /// resumed by the same config without the fault (the resumed run continues the same
    /// training; the fault only decided where the first attempt stopped).
    pub fn checkpoint_hash(&self) -> String {
        let mut c = self.clone();
        c.faults.clear();
        c.run_hash()
    }
}

/// Hex of the first 8 bytes of SHA-256 over the compact JSON of `c` (keys in declaration
/// order, so the same config always gives the same text).
fn canonical_hash(c: &RunConfig) -> String {
    let json =
        serde_json::to_string(&serde_json::to_value(c).expect("config serialises")).expect("json");
    let digest = Sha256::digest(json.as_bytes());
    digest.iter().take(8).map(|b| format!("{b:02x}")).collect()
}

/// The rules every outer optimiser obeys; `field` is where it was given.
fn validate_outer(field: &str, o: OuterOptimizer) -> Result<(), ConfigError> {
    let lr = match o {
        OuterOptimizer::Nesterov { lr, .. } | OuterOptimizer::Fedavg { lr } => lr,
    };
    if !(lr > 0.0 && lr.is_finite()) {
        return Err(ConfigError::new(format!("{field}.lr"), lr, "must be > 0"));
    }
    if let OuterOptimizer::Nesterov { momentum, .. } = o {
        if !(0.0..1.0).contains(&momentum) {
            return Err(ConfigError::new(
                format!("{field}.momentum"),
                momentum,
                "must be in [0, 1)",
            ));
        }
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn defaults_validate_and_hash_is_stable() {
        let c = RunConfig::default();
        c.validate().unwrap();
        assert_eq!(c.run_hash(), RunConfig::default().run_hash());
        let mut d = c.clone();
        d.seed = 1;
        assert_ne!(c.run_hash(), d.run_hash());
    }

    #[test]
    fn faults_are_part_of_the_run_identity_but_not_of_checkpoint_compatibility() {
        let clean = RunConfig::default();
        let mut crash = clean.clone();
        crash.faults = vec![Fault {
            site: 1,
            at_step: Some(6),
            kind: FaultKind::Crash,
            ..Default::default()
        }];
        assert_ne!(clean.run_hash(), crash.run_hash());
        assert_eq!(clean.checkpoint_hash(), crash.checkpoint_hash());
        // Every kind of fault, not only crashes: a stall or a link change is another run,
        // and its checkpoints resume the clean one.
        for fault in [
            Fault {
                kind: FaultKind::Stall,
                site: 1,
                at_step: Some(6),
                duration: Some("2s".into()),
                ..Default::default()
            },
            Fault {
                kind: FaultKind::Link,
                site: 0,
                peer: Some(1),
                at_time: Some("1s".into()),
                rate: Some("10mbit".into()),
                ..Default::default()
            },
        ] {
            let mut faulty = crash.clone();
            faulty.faults.push(fault);
            assert_ne!(faulty.run_hash(), crash.run_hash());
            assert_eq!(faulty.checkpoint_hash(), clean.checkpoint_hash());
        }
        // Operational settings are in neither.
        let mut resumed = clean.clone();
        resumed.resume_from = Some("/tmp/x".into());
        resumed.checkpoint_every_rounds = Some(1);
        assert_eq!(resumed.run_hash(), clean.run_hash());
        assert_eq!(resumed.checkpoint_hash(), clean.checkpoint_hash());
    }

    #[test]
    fn run_identity_names_the_outer_optimiser_in_effect_not_the_words_given() {
        for method in [Method::Diloco, Method::Photon, Method::Fomoe] {
            let unset = RunConfig {
                method,
                ..Default::default()
            };
            // Unset and the method's default spelled out are one run...
            let spelled = RunConfig {
                outer: Some(unset.outer_optimizer()),
                ..unset.clone()
            };
            assert_eq!(unset.run_hash(), spelled.run_hash(), "{method:?}");
            // ...so a default that changes is a new identity for every run that relied on it.
            let other = RunConfig {
                outer: Some(OuterOptimizer::Fedavg { lr: 0.5 }),
                ..unset.clone()
            };
            assert_ne!(unset.run_hash(), other.run_hash(), "{method:?}");
        }
    }

    #[test]
    fn cross_field_errors_name_the_field() {
        let mut c = RunConfig {
            method: Method::Fomoe,
            sites: 3,
            ..Default::default()
        };
        c.fomoe.rho = 2; // tiny: E = 8, 8·2 % 3 != 0
        assert_eq!(
            c.validate().unwrap_err().to_string(),
            "invalid fomoe.rho = 2: n_experts·rho = 8·2 must be divisible by sites = 3"
        );
        let c = RunConfig {
            steps: 10,
            inner_steps: 4,
            ..Default::default()
        };
        assert_eq!(c.validate().unwrap_err().field, "steps");
        let c = RunConfig {
            preset: "giant".into(),
            ..Default::default()
        };
        assert_eq!(c.validate().unwrap_err().field, "preset");
        let c: Result<RunConfig, _> = toml::from_str("method = \"ddp\"\nsitez = 4\n");
        assert!(c.unwrap_err().to_string().contains("unknown field `sitez`"));
        let mut c = RunConfig::default();
        c.network.rate = Some("0mbit".into());
        assert_eq!(c.validate().unwrap_err().field, "network.rate");
    }
}
