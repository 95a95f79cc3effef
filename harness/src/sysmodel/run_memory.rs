//! The memory a run will need on this machine, estimated before anything runs, and the
//! refusal of a run that cannot fit, naming the knob that makes it too big.
//!
//! Per site (f32 = 4 bytes, n the parameters the site holds, N the full model, T = B·S
//! tokens per step; all sites of a `sim`, `relay` or `netns` run are on this machine):
//! - held for the whole run: the state [`super::memory::StateMemory`] (16n, +4n or +8n of
//!   outer state), the shared initial model every site loads (4N), and the data buffers: one
//!   domain's eval set as the loader materialises it, `data.eval_sequences`·S·16 bytes
//!   (inputs and targets as i64), the probe set `data.probe_sequences`·S·16, and a token
//!   file's tokens (its size);
//! - while it computes: 4·6n of gradient, clipping and AdamW temporaries, and the
//!   activations 4·T·[L·(16d + 3E + h + 4k(d + d_e)) + 3V + 2d] (per block the hidden states
//!   around attention and the MoE layer, router scores, the k routed copies through both
//!   expert matrices; then logits and their gradient). The per-block coefficients bound the
//!   measured cost from above (see below); libtorch's CPU attention keeps no S² scores (the
//!   per-token cost did not grow from S = 128 to 512).
//!
//! Sites on this machine: all M for `sim`, `relay` and `netns`; one for `tcp` (`fomoe site`,
//! one rank per host). Sites that compute at once: on `sim` min(M, cores / threads per site)
//! (its compute gate), otherwise every site here (one process each). Each process adds
//! 160 MB (binary and libtorch): one on `sim` and `tcp`, a worker per endpoint plus the
//! orchestrator otherwise; Photon's aggregator adds 4·(4N) (counted on every `tcp` host:
//! rank 0 may hold it).
//!
//! Measured (peak RSS of `fomoe run-one`, method single, 1 thread, 2 steps) against the
//! estimate: tiny b8 160 MB (est. 179); small b8 204 MB (229), b64 453 MB (495); small S 512
//! b8 310 MB (345); proxy-s b16 978 MB (1143), b32 1331 MB (1704); proxy-m b4 6.31 GB (7.55),
//! b8 7.21 GB (8.65). Per token and block the measured cost is about 3.8k, 5.1k and 13.5k
//! floats for small, proxy-s and proxy-m against the formula's 4.1k, 8.2k and 16.5k. The
//! estimate is a guard against runs that cannot fit, not a prediction of RSS.
//!
//! **The knob to blame.** For each knob the run sets away from its default (`preset` →
//! tiny, `model.batch_size`, `model.seq_len`, `model.n_experts`, `model.top_k` → the preset's,
//! `data.eval_sequences` → 32, `data.probe_sequences` → 4, `sites` → 1), the estimate is
//! recomputed with that knob at its default. Named is the knob other than `preset` whose
//! default alone makes the run fit (the smallest estimate among those), else `preset` if its
//! default does, else the knob whose default shrinks the estimate most; with its value.

use serde::Serialize;

use super::counts::params_held;
use super::machine::MachineMemory;
use super::memory::{outer_copies, StateMemory, F32_BYTES};
use crate::config::{Method, PhotonTopology, RunConfig};
use crate::data::{DataKind, DEFAULT_EVAL_SEQUENCES, DEFAULT_PROBE_SEQUENCES};
use crate::model::{ConfigError, ModelConfig};
use crate::net::Backend;

/// Resident memory of one fomoe process before any model (binary, libtorch), bytes.
pub const PROCESS_BASE_BYTES: f64 = 160e6;

/// One site's estimated memory, bytes (f64: an absurd config must not overflow).
#[derive(Clone, Debug, PartialEq, Serialize)]
pub struct SiteEstimate {
    /// Training state (parameters, gradients, AdamW, outer state).
    pub state: f64,
    /// The shared initial model the site keeps loaded.
    pub init: f64,
    pub data: f64,
    /// Gradient, clipping and AdamW temporaries while computing.
    pub working: f64,
    pub activations: f64,
}

impl SiteEstimate {
    pub fn total(&self) -> f64 {
        self.state + self.init + self.data + self.working + self.activations
    }
}

/// A run's estimated memory on this machine.
#[derive(Clone, Debug, PartialEq, Serialize)]
pub struct RunEstimate {
    pub sites: usize,
    /// Sites computing at once (their working set and activations are live together).
    pub computing: usize,
    pub per_site: SiteEstimate,
    pub aggregator: f64,
    pub processes: usize,
    pub total: f64,
}

/// Activation floats per token of one training step (see the module doc).
fn activation_floats_per_token(m: &ModelConfig) -> f64 {
    let (d, e, h, k, de, v) = (
        m.d_model as f64,
        m.n_experts as f64,
        m.n_heads as f64,
        m.top_k as f64,
        m.d_expert as f64,
        m.vocab_size as f64,
    );
    let per_layer = 16.0 * d + 3.0 * e + h + 4.0 * k * (d + de);
    m.n_layers as f64 * per_layer + 3.0 * v + 2.0 * d
}

fn file_bytes(p: Option<&std::path::PathBuf>) -> f64 {
    p.and_then(|p| std::fs::metadata(p).ok())
        .map_or(0.0, |m| m.len() as f64)
}

/// Estimate for `cfg` with `model` (the resolved, possibly unvalidated, shape).
fn estimate_with(cfg: &RunConfig, model: &ModelConfig) -> RunEstimate {
    let f = F32_BYTES as f64;
    let (sites, rho) = (cfg.sites.max(1), cfg.fomoe.rho.clamp(1, cfg.sites.max(1)));
    let n_full = model.total_params() as f64;
    let held = params_held(model, cfg.method, sites, rho) as f64;
    let copies = outer_copies(cfg.method, cfg.photon_topology, cfg.resolved_outer());
    let tokens = model.batch_size as f64 * model.seq_len as f64;
    let row = 16.0 * model.seq_len as f64;
    let mut data = row * (cfg.data.eval_sequences as f64 + cfg.data.probe_sequences as f64);
    if cfg.data.kind == DataKind::Tokenfile {
        data += file_bytes(cfg.data.path.as_ref()) + file_bytes(cfg.data.val_path.as_ref());
    }
    let per_site = SiteEstimate {
        state: StateMemory::of(1, copies).total as f64 * held,
        init: f * n_full,
        data,
        working: f * 6.0 * held,
        activations: f * tokens * activation_floats_per_token(model),
    };
    let star = cfg.method == Method::Photon && cfg.photon_topology == PhotonTopology::Star;
    let aggregator = if star { 4.0 * f * n_full } else { 0.0 };
    let (here, processes, computing) = match cfg.network.backend {
        Backend::Sim => {
            let cores = std::thread::available_parallelism().map_or(1, |n| n.get());
            let slots = (cores / crate::runner::threads_per_site(cfg).max(1)).max(1);
            (sites, 1, slots.min(sites))
        }
        Backend::Relay | Backend::Netns => (sites, cfg.endpoints() + 1, sites),
        // `fomoe site`: one site per host (rank 0 may also hold Photon's aggregator).
        Backend::Tcp => (1, 1, 1),
    };
    let s = &per_site;
    let total = here as f64 * (s.state + s.init + s.data)
        + computing as f64 * (s.working + s.activations)
        + aggregator
        + processes as f64 * PROCESS_BASE_BYTES;
    RunEstimate {
        sites: here,
        computing,
        per_site,
        aggregator,
        processes,
        total,
    }
}

/// The estimate of a run (its model resolved from preset and overrides).
pub fn estimate(cfg: &RunConfig) -> Result<RunEstimate, ConfigError> {
    Ok(estimate_with(cfg, &cfg.resolved_model()?))
}

/// The knob to blame and its value as the run has it (see the module doc).
fn knob_to_blame(cfg: &RunConfig, total: f64, available: f64) -> (String, String) {
    let mut candidates: Vec<(&str, String, RunConfig)> = Vec::new();
    let mut with = |name: &'static str, value: String, f: &dyn Fn(&mut RunConfig)| {
        let mut c = cfg.clone();
        f(&mut c);
        candidates.push((name, value, c));
    };
    if cfg.preset != RunConfig::default().preset {
        with("preset", cfg.preset.clone(), &|c| {
            c.preset = RunConfig::default().preset
        });
    }
    let o = &cfg.model;
    if let Some(v) = o.batch_size {
        with("model.batch_size", v.to_string(), &|c| {
            c.model.batch_size = None
        });
    }
    if let Some(v) = o.seq_len {
        with("model.seq_len", v.to_string(), &|c| c.model.seq_len = None);
    }
    if let Some(v) = o.n_experts {
        with("model.n_experts", v.to_string(), &|c| {
            c.model.n_experts = None
        });
    }
    if let Some(v) = o.top_k {
        with("model.top_k", v.to_string(), &|c| c.model.top_k = None);
    }
    if cfg.data.eval_sequences != DEFAULT_EVAL_SEQUENCES {
        with(
            "data.eval_sequences",
            cfg.data.eval_sequences.to_string(),
            &|c| c.data.eval_sequences = DEFAULT_EVAL_SEQUENCES,
        );
    }
    if cfg.data.probe_sequences != DEFAULT_PROBE_SEQUENCES {
        with(
            "data.probe_sequences",
            cfg.data.probe_sequences.to_string(),
            &|c| c.data.probe_sequences = DEFAULT_PROBE_SEQUENCES,
        );
    }
    if cfg.sites > 1 {
        with("sites", cfg.sites.to_string(), &|c| {
            c.sites = 1;
            c.fomoe.rho = 1;
        });
    }
    let shrunk: Vec<(f64, &str, String)> = candidates
        .into_iter()
        .filter_map(|(name, value, c)| {
            let t = estimate(&c).ok()?.total;
            (t < total).then_some((t, name, value))
        })
        .collect();
    let smallest = |fits_only: bool, preset: bool| {
        shrunk
            .iter()
            .filter(|(t, n, _)| (!fits_only || *t <= available) && ((*n == "preset") == preset))
            .min_by(|a, b| a.0.total_cmp(&b.0))
            .map(|(_, n, v)| (n.to_string(), v.clone()))
    };
    smallest(true, false)
        .or_else(|| smallest(true, true))
        .or_else(|| {
            shrunk
                .iter()
                .min_by(|a, b| a.0.total_cmp(&b.0))
                .map(|(_, n, v)| (n.to_string(), v.clone()))
        })
        .unwrap_or_else(|| ("preset".to_string(), cfg.preset.clone()))
}

/// Decimal bytes with three significant digits (`2.05 TB`, `950 B`).
pub fn decimal_bytes(b: f64) -> String {
    for (unit, name) in [
        (1e15, "PB"),
        (1e12, "TB"),
        (1e9, "GB"),
        (1e6, "MB"),
        (1e3, "kB"),
    ] {
        if b >= unit {
            let x = b / unit;
            return if x >= 1000.0 {
                format!("{x:.3e} {name}")
            } else if x >= 100.0 {
                format!("{x:.0} {name}")
            } else if x >= 10.0 {
                format!("{x:.1} {name}")
            } else {
                format!("{x:.2} {name}")
            };
        }
    }
    format!("{b:.0} B")
}

/// Refuse `cfg` when its estimate exceeds what `machine` has available: one line naming
/// the knob, its value, the estimate and its largest part per site, and the machine's
/// figure. Returns the estimate when it fits.
pub fn check_fits(cfg: &RunConfig, machine: &MachineMemory) -> Result<RunEstimate, ConfigError> {
    let e = estimate(cfg)?;
    if e.total <= machine.available_bytes as f64 {
        return Ok(e);
    }
    let available = machine.available_bytes as f64;
    let (knob, value) = knob_to_blame(cfg, e.total, available);
    let s = &e.per_site;
    let parts = [
        ("activations", s.activations),
        ("model state", s.state),
        ("working copies", s.working),
        ("the initial model", s.init),
        ("data buffers", s.data),
    ];
    let (name, largest) = parts
        .iter()
        .copied()
        .max_by(|a, b| a.1.total_cmp(&b.1))
        .expect("five parts");
    Err(ConfigError::new(
        knob,
        value,
        format!(
            "this run needs an estimated {} of memory ({} site{} × {}, mostly {name} {}), more than the {} this machine has available ({})",
            decimal_bytes(e.total),
            e.sites,
            if e.sites == 1 { "" } else { "s" },
            decimal_bytes(s.total()),
            decimal_bytes(largest),
            decimal_bytes(machine.available_bytes as f64),
            machine.source
        ),
    ))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn machine(gb: u64) -> MachineMemory {
        MachineMemory {
            available_bytes: gb * 1_000_000_000,
            source: "test".into(),
        }
    }

    fn refused(cfg: &RunConfig) -> ConfigError {
        cfg.validate().expect("the shape itself is valid");
        check_fits(cfg, &machine(16)).expect_err("must not fit in 16 GB")
    }

    #[test]
    fn defaults_fit_and_the_issue_cases_name_their_knob() {
        let base = RunConfig::default();
        check_fits(&base, &machine(16)).unwrap();

        let mut c = base.clone();
        c.model.batch_size = Some(1_000_000_000);
        let e = refused(&c);
        assert_eq!(
            (e.field.as_str(), e.value.as_str()),
            ("model.batch_size", "1000000000")
        );
        assert!(e.allowed.contains("mostly activations"), "{e}");

        let mut c = base.clone();
        c.model.n_experts = Some(100_000_000);
        let e = refused(&c);
        assert_eq!(e.field, "model.n_experts", "{e}");

        let mut c = base.clone();
        c.data.eval_sequences = 1_000_000_000_000;
        let e = refused(&c);
        assert_eq!(e.field, "data.eval_sequences", "{e}");
        assert!(e.allowed.contains("mostly data buffers"), "{e}");

        let mut c = base.clone();
        c.preset = "paper-100b".into();
        let e = refused(&c);
        assert_eq!(
            (e.field.as_str(), e.value.as_str()),
            ("preset", "paper-100b")
        );
        let line = e.to_string();
        assert_eq!(line.lines().count(), 1);
        assert!(line.starts_with("invalid preset = paper-100b: this run needs an estimated"));
        assert!(line.ends_with("available (test)"), "{line}");

        // A long context (valid, under the cap) is too big here because of S.
        let mut c = base.clone();
        c.model.seq_len = Some(1 << 20);
        assert_eq!(refused(&c).field, "model.seq_len");

        // Many sites of a model that fits once.
        let mut c = base.clone();
        c.preset = "proxy-m".into();
        c.sites = 64;
        c.method = Method::Ddp;
        c.eval_sequences = 4;
        let e = check_fits(&c, &machine(16)).unwrap_err();
        assert_eq!(e.field, "sites", "{e}");
    }

    #[test]
    fn estimate_is_above_measured_peak_rss_within_two_times() {
        // Peak RSS measured with `fomoe run-one` (see the module doc), MB.
        let cases = [
            ("tiny", 8, 0, 160.0),
            ("small", 8, 0, 204.0),
            ("small", 64, 0, 453.0),
            ("small", 8, 512, 310.0),
            ("proxy-s", 16, 0, 978.0),
            ("proxy-s", 32, 0, 1331.0),
            ("proxy-m", 4, 0, 6314.0),
            ("proxy-m", 8, 0, 7211.0),
        ];
        for (preset, batch, seq, measured_mb) in cases {
            let mut c = RunConfig {
                method: Method::Single,
                sites: 1,
                preset: preset.into(),
                ..Default::default()
            };
            c.model.batch_size = Some(batch);
            c.model.seq_len = (seq > 0).then_some(seq);
            c.network.backend = Backend::Sim;
            c.data.eval_sequences = 2;
            c.data.probe_sequences = 1;
            let mb = estimate(&c).unwrap().total / 1e6;
            assert!(
                mb >= measured_mb && mb <= 2.0 * measured_mb,
                "{preset} b{batch} s{seq}: estimate {mb:.0} MB vs measured {measured_mb} MB"
            );
        }
    }

    #[test]
    fn fomoe_site_hosts_count_one_site() {
        let mut c = RunConfig {
            method: Method::Fomoe,
            sites: 8,
            preset: "proxy-s".into(),
            ..Default::default()
        };
        c.network.backend = Backend::Relay;
        let relay = estimate(&c).unwrap();
        c.network.backend = Backend::Tcp;
        let tcp = estimate(&c).unwrap();
        assert_eq!((relay.sites, tcp.sites), (8, 1));
        assert_eq!(relay.per_site, tcp.per_site);
        assert!(
            (tcp.total - (tcp.per_site.total() + PROCESS_BASE_BYTES)).abs() < 1.0,
            "{tcp:?}"
        );
    }

    #[test]
    fn every_committed_suite_fits_a_16gb_machine() {
        let dir = std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("../experiments");
        let mut suites = 0;
        for entry in std::fs::read_dir(&dir).unwrap() {
            let path = entry.unwrap().path();
            if path.extension().is_none_or(|e| e != "toml") {
                continue;
            }
            let suite = crate::suite::Suite::load(&path).unwrap();
            for run in &suite.runs {
                let e = estimate(&run.config).unwrap();
                assert!(
                    e.total < 16e9,
                    "{}: run {} needs an estimated {}",
                    path.display(),
                    run.id,
                    decimal_bytes(e.total)
                );
            }
            suites += 1;
        }
        assert!(suites >= 4);
    }

    #[test]
    fn decimal_bytes_reads_well() {
        assert_eq!(decimal_bytes(950.0), "950 B");
        assert_eq!(decimal_bytes(2.054e12), "2.05 TB");
        assert_eq!(decimal_bytes(15.8e9), "15.8 GB");
        assert_eq!(decimal_bytes(2e18), "2.000e3 PB");
    }
}
