//! `manifest.json`: what a run was (resolved config and its hash) and where and how it ran
//! (git commit, tch/libtorch versions, host, backend, threads, start/end, status, error).
//!
//! Written atomically at the start (`running`) and at the end (`complete` or `failed`), so a
//! run killed on the way leaves `running` behind, which resume treats as partial.

use std::path::Path;
use std::sync::OnceLock;
use std::time::{SystemTime, UNIX_EPOCH};

use serde::{Deserialize, Serialize};

use super::completeness::FileRecords;
use super::ResultsError;
use crate::config::RunConfig;

/// File name inside a run directory.
pub const MANIFEST_FILE: &str = "manifest.json";
/// Version of the manifest layout; bump when a field changes meaning.
/// 2: `files` (the record of what the finished run holds, [`super::completeness`]).
pub const MANIFEST_SCHEMA: u32 = 2;
/// The tch crate this harness is built against (workspace `Cargo.toml`).
pub const TCH_VERSION: &str = "0.26";
/// The libtorch tch 0.26 requires.
pub const LIBTORCH_VERSION: &str = "2.13.0";

/// Where a run stands.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum RunStatus {
    Running,
    Complete,
    Failed,
}

impl RunStatus {
    pub fn name(self) -> &'static str {
        match self {
            RunStatus::Running => "running",
            RunStatus::Complete => "complete",
            RunStatus::Failed => "failed",
        }
    }
}

/// Contents of `manifest.json`.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct Manifest {
    pub schema: u32,
    pub suite: String,
    pub run_id: String,
    pub status: RunStatus,
    /// The error chain on one line when `failed`.
    pub error: Option<String>,
    /// [`RunConfig::run_hash`] of `config`: resume compares it with the suite's config.
    pub config_hash: String,
    pub config: RunConfig,
    /// `git rev-parse HEAD` in the working directory at run time, or "unknown".
    pub git_commit: String,
    pub fomoe_version: String,
    pub tch_version: String,
    pub libtorch_version: String,
    pub host: String,
    /// Compute backend of the sites: `cpu`, `cuda:0`, … (the network backend is
    /// `config.network.backend`, repeated in `network_backend`).
    pub backend: String,
    pub network_backend: String,
    /// CPU threads per site.
    pub threads: usize,
    /// CPU model (`/proc/cpuinfo` "model name"): with the threads and libtorch it decides
    /// whether `fomoe compare` expects bit-identical losses.
    #[serde(default)]
    pub cpu: Option<String>,
    /// Process that created the run directory (the orchestrator).
    pub pid: u32,
    /// RFC 3339 UTC, millisecond precision.
    pub started_at: String,
    pub ended_at: Option<String>,
    /// Wall-clock seconds from start to end (not the run's virtual clock).
    pub duration_s: Option<f64>,
    /// What the sites computed on: device, its name, driver, CUDA and libtorch versions at
    /// run time, precision, how sites shared it (absent in manifests written before it).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub device: Option<crate::device::facts::DeviceFacts>,
    /// What the finished run holds: size, SHA-256 and rows of every result file
    /// ([`super::completeness`]); absent while running and in schema-1 manifests.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub files: Option<FileRecords>,
    /// The resolved links: every ordered pair's rate, delay and jitter, and what changes
    /// them over time (trace, link faults); see [`crate::net::LinkMatrix::record`].
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub links: Option<serde_json::Value>,
    /// What the scenario did: faults as they happened, partial rounds, frozen experts,
    /// recovery bytes ([`crate::scenario::participation::ScenarioRecord`]); none without faults
    /// or deadline.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub scenario: Option<serde_json::Value>,
}

/// The part of a manifest resume needs; tolerant of every other field.
#[derive(Clone, Debug, Deserialize)]
pub struct ManifestHead {
    pub status: RunStatus,
    pub config_hash: String,
    #[serde(default)]
    pub files: Option<FileRecords>,
}

impl Manifest {
    pub fn read(path: &Path) -> Result<Manifest, ResultsError> {
        let bytes = std::fs::read(path).map_err(|error| ResultsError::Io {
            path: path.to_path_buf(),
            error,
        })?;
        serde_json::from_slice(&bytes).map_err(|e| ResultsError::Invalid {
            path: path.to_path_buf(),
            reason: e.to_string(),
        })
    }

    pub fn read_head(path: &Path) -> Result<ManifestHead, ResultsError> {
        let bytes = std::fs::read(path).map_err(|error| ResultsError::Io {
            path: path.to_path_buf(),
            error,
        })?;
        serde_json::from_slice(&bytes).map_err(|e| ResultsError::Invalid {
            path: path.to_path_buf(),
            reason: e.to_string(),
        })
    }

    pub fn to_json(&self) -> Vec<u8> {
        let mut v = serde_json::to_vec_pretty(self).expect("manifest serialises");
        v.push(b'\n');
        v
    }
}

/// Where and how runs execute: fixed for a suite invocation.
#[derive(Clone, Debug, PartialEq)]
pub struct RunEnv {
    pub suite: String,
    /// Compute backend (`cpu`, `cuda:0`).
    pub backend: String,
    /// Threads per site when the config does not fix them (see `default_threads_per_site`).
    pub cores: usize,
    pub git_commit: String,
    pub host: String,
}

impl RunEnv {
    /// Detect git commit, host name and cores of this process.
    pub fn detect(suite: &str, backend: &str) -> RunEnv {
        RunEnv {
            suite: suite.to_string(),
            backend: backend.to_string(),
            cores: std::thread::available_parallelism()
                .map(|n| n.get())
                .unwrap_or(1),
            git_commit: git_commit().to_string(),
            host: host_name(),
        }
    }
}

/// CPU threads per site unless `threads_per_site` says otherwise: on `sim` sites run one
/// after another with all cores; otherwise the M sites share the cores (at least 1 each).
pub fn default_threads_per_site(cfg: &RunConfig, cores: usize) -> usize {
    if let Some(t) = cfg.threads_per_site {
        return t;
    }
    match cfg.network.backend {
        crate::net::Backend::Sim => cores.max(1),
        _ => (cores / cfg.sites.max(1)).max(1),
    }
}

/// `git rev-parse HEAD` (once per process), or "unknown".
pub fn git_commit() -> &'static str {
    static COMMIT: OnceLock<String> = OnceLock::new();
    COMMIT.get_or_init(|| {
        std::process::Command::new("git")
            .args(["rev-parse", "HEAD"])
            .stderr(std::process::Stdio::null())
            .output()
            .ok()
            .filter(|o| o.status.success())
            .and_then(|o| String::from_utf8(o.stdout).ok())
            .map(|s| s.trim().to_string())
            .filter(|s| !s.is_empty())
            .unwrap_or_else(|| "unknown".into())
    })
}

/// The CPU model name of this machine (first "model name" of `/proc/cpuinfo`), with
/// `ATEN_CPU_CAPABILITY=…` appended when that variable picks libtorch's kernels (it changes
/// the arithmetic as another CPU would), once per process; `None` where it cannot be read.
pub fn cpu_model() -> Option<String> {
    static CPU: OnceLock<Option<String>> = OnceLock::new();
    CPU.get_or_init(|| {
        let text = std::fs::read_to_string("/proc/cpuinfo").ok()?;
        let model = text
            .lines()
            .find(|l| l.starts_with("model name"))
            .and_then(|l| l.split_once(':'))
            .map(|(_, v)| v.trim().to_string())
            .filter(|v| !v.is_empty())?;
        Some(match std::env::var("ATEN_CPU_CAPABILITY") {
            Ok(cap) if !cap.is_empty() => format!("{model} (ATEN_CPU_CAPABILITY={cap})"),
            _ => model,
        })
    })
    .clone()
}

/// The host name, or "unknown".
pub fn host_name() -> String {
    let mut buf = [0u8; 256];
    // SAFETY: the buffer is valid for its length; gethostname NUL-terminates on success
    // unless truncated, which the position search below tolerates.
    let rc = unsafe { libc::gethostname(buf.as_mut_ptr().cast(), buf.len()) };
    if rc != 0 {
        return "unknown".into();
    }
    let end = buf.iter().position(|&b| b == 0).unwrap_or(buf.len());
    match std::str::from_utf8(&buf[..end]) {
        Ok(h) if !h.is_empty() => h.to_string(),
        _ => "unknown".into(),
    }
}

/// `t` as RFC 3339 UTC with milliseconds: `2025-03-01T12:34:56.789Z`.
pub fn rfc3339_utc(t: SystemTime) -> String {
    let d = t.duration_since(UNIX_EPOCH).unwrap_or_default();
    let secs = d.as_secs();
    let (days, rem) = (secs / 86_400, secs % 86_400);
    let (y, m, day) = civil_from_days(days as i64);
    format!(
        "{y:04}-{m:02}-{day:02}T{:02}:{:02}:{:02}.{:03}Z",
        rem / 3600,
        rem % 3600 / 60,
        rem % 60,
        d.subsec_millis()
    )
}

/// Proleptic Gregorian date of a day count since 1970-01-01 (H. Hinnant's algorithm).
fn civil_from_days(z: i64) -> (i64, u32, u32) {
    let z = z + 719_468;
    let era = z.div_euclid(146_097);
    let doe = z.rem_euclid(146_097);
    let yoe = (doe - doe / 1460 + doe / 36_524 - doe / 146_096) / 365;
    let doy = doe - (365 * yoe + yoe / 4 - yoe / 100);
    let mp = (5 * doy + 2) / 153;
    let d = (doy - (153 * mp + 2) / 5 + 1) as u32;
    let m = if mp < 10 { mp + 3 } else { mp - 9 } as u32;
    let y = yoe + era * 400 + i64::from(m <= 2);
    (y, m, d)
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::time::Duration;

    #[test]
    fn timestamps() {
        assert_eq!(rfc3339_utc(UNIX_EPOCH), "1970-01-01T00:00:00.000Z");
        // 2024-02-29T23:59:59.5Z = 1709251199.5 s (leap day).
        assert_eq!(
            rfc3339_utc(UNIX_EPOCH + Duration::from_millis(1_709_251_199_500)),
            "2024-02-29T23:59:59.500Z"
        );
        assert_eq!(
            rfc3339_utc(UNIX_EPOCH + Duration::from_secs(951_782_400)),
            "2000-02-29T00:00:00.000Z"
        );
    }

    #[test]
    fn versions_match_the_lock_file() {
        let lock =
            std::fs::read_to_string(concat!(env!("CARGO_MANIFEST_DIR"), "/../Cargo.lock")).unwrap();
        let tch = lock
            .split("[[package]]")
            .find(|p| p.contains("name = \"tch\""))
            .expect("tch in Cargo.lock");
        assert!(
            tch.contains(&format!("version = \"{TCH_VERSION}.")),
            "Cargo.lock: {tch}"
        );
    }
}
