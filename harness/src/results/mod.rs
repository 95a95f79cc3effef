//! Results on disk (DESIGN.md "Results"): a stable, documented layout.
//!
//! ```text
//! <out>/<suite>/.lock                      pid of the `fomoe run` writing the suite (lock::SuiteLock)
//! <out>/<suite>/suite.toml                 the suite file as run (copied atomically)
//! <out>/<suite>/summary.csv                one row per run (SUMMARY_COLUMNS), rewritten
//!                                          atomically after every run
//! <out>/<suite>/<run_id>/manifest.json     Manifest: resolved config + hash, git commit,
//!                                          tch/libtorch versions, host, backend, threads,
//!                                          start/end, status running|complete|failed, error
//! <out>/<suite>/<run_id>/steps.csv         StepRow per site per inner step, sorted by (step, site)
//! <out>/<suite>/<run_id>/rounds.csv        RoundRow per eval per domain
//! <out>/<suite>/<run_id>/routing.csv       RoutingRow per dumped round per layer
//! <out>/<suite>/<run_id>/probe_topk.bin    probe top-k ids (metrics::probe format)
//! <out>/<suite>/<run_id>/<name>.hgrm       HdrHistogram percentile text (step time, transfer latency)
//! <out>/<suite>/<run_id>/steps-site<i>.csv worker i's steps while running; merged into
//!                                          steps.csv by RunDir::finish
//! ```
//! Whole files (manifest, summary, merged steps, histograms) are replaced atomically
//! ([`atomic::write_atomic`]); row files are appended one `write` per row
//! ([`csv_sink::CsvSink`]). A crash loses at most the row being written.
//!
//! **Resume.** A run is complete iff its manifest says `complete`, its `config_hash`
//! equals the hash of the config the suite now asks for, and its result files are those
//! its manifest records ([`run_dir::run_state`], [`completeness`]); any other state
//! (missing, `running`, `failed`, `incomplete`, another hash) clears the directory and
//! re-runs.

pub mod atomic;
pub mod compare;
pub mod completeness;
pub mod csv_sink;
pub mod lock;
pub mod manifest;
pub mod quality;
pub mod run_dir;
pub mod summary;

use std::path::{Path, PathBuf};

pub use atomic::write_atomic;
pub use completeness::{ExpectedRows, FileRecord, FileRecords};
pub use csv_sink::{read_rows, CsvSink, Rows};
pub use lock::{SuiteLock, LOCK_FILE};
pub use manifest::{Manifest, RunEnv, RunStatus, MANIFEST_FILE};
pub use run_dir::{
    clear_run_dir, merge_site_steps, run_state, site_step_files, site_steps_path, RunDir, RunState,
};
pub use summary::{annotate_suite, summarize, summary_csv, Summary};

/// summary.csv in a suite directory.
pub const SUMMARY_FILE: &str = "summary.csv";
/// The suite file copied into its results directory.
pub const SUITE_COPY_FILE: &str = "suite.toml";

/// Errors reading or writing results.
#[derive(Debug, thiserror::Error)]
pub enum ResultsError {
    #[error("{path}: {error}")]
    Io {
        path: PathBuf,
        error: std::io::Error,
    },
    #[error("{path}: {reason}")]
    Invalid { path: PathBuf, reason: String },
    #[error("{path}: line {line}: {reason}")]
    Malformed {
        path: PathBuf,
        line: usize,
        reason: String,
    },
    #[error("run {run_id}: {reason}")]
    Prepare { run_id: String, reason: String },
    #[error("{path}: another fomoe run ({holder}) is writing this suite directory; wait for it to end or stop it")]
    Locked { path: PathBuf, holder: String },
}

/// Summaries of every run directory under `suite_dir` (directories holding a manifest):
/// in summary.csv order when it exists, the rest by name; annotated with the suite columns.
/// A run whose files cannot be read gets an `unreadable` row naming the reason.
pub fn load_suite(suite_dir: &Path) -> Result<Vec<Summary>, ResultsError> {
    let io = |error| ResultsError::Io {
        path: suite_dir.to_path_buf(),
        error,
    };
    let mut dirs: Vec<String> = std::fs::read_dir(suite_dir)
        .map_err(io)?
        .filter_map(|e| e.ok())
        .filter(|e| e.path().join(MANIFEST_FILE).is_file())
        .filter_map(|e| e.file_name().to_str().map(str::to_string))
        .collect();
    dirs.sort();
    let mut order: Vec<String> = Vec::new();
    let summary = suite_dir.join(SUMMARY_FILE);
    if summary.is_file() {
        if let Ok(mut r) = csv::Reader::from_path(&summary) {
            for rec in r.records().flatten() {
                if let Some(id) = rec.get(0) {
                    if dirs.iter().any(|d| d == id) && !order.iter().any(|o| o == id) {
                        order.push(id.to_string());
                    }
                }
            }
        }
    }
    for d in dirs {
        if !order.contains(&d) {
            order.push(d);
        }
    }
    let mut rows: Vec<Summary> = order
        .iter()
        .map(|id| {
            summarize(&suite_dir.join(id))
                .unwrap_or_else(|e| Summary::unreadable(id, &e.to_string()))
        })
        .collect();
    annotate_suite(&mut rows);
    Ok(rows)
}

/// Suite directories under `results_dir`: itself when it holds run directories, else each
/// subdirectory that does, sorted by name.
pub fn suite_dirs(results_dir: &Path) -> Result<Vec<PathBuf>, ResultsError> {
    let io = |error| ResultsError::Io {
        path: results_dir.to_path_buf(),
        error,
    };
    let holds_runs = |d: &Path| -> bool {
        std::fs::read_dir(d)
            .map(|it| {
                it.filter_map(|e| e.ok())
                    .any(|e| e.path().join(MANIFEST_FILE).is_file())
            })
            .unwrap_or(false)
    };
    if holds_runs(results_dir) {
        return Ok(vec![results_dir.to_path_buf()]);
    }
    let mut out: Vec<PathBuf> = std::fs::read_dir(results_dir)
        .map_err(io)?
        .filter_map(|e| e.ok())
        .map(|e| e.path())
        .filter(|p| p.is_dir() && holds_runs(p))
        .collect();
    out.sort();
    Ok(out)
}

#[cfg(test)]
mod tests;
