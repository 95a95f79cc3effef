//! Figures and a Markdown report regenerated from a suite's committed results alone
//! (`fomoe figures results/<suite>`): no GPU, no network, no clock.
//!
//! Inputs: a suite directory as `fomoe run` writes it (`harness::results`): `summary.csv`
//! (only for the run order), and per run `manifest.json`, `steps.csv`, `rounds.csv`,
//! `routing.csv`. Every number is recomputed from the run files by the harness's own
//! `summarize` / `annotate_suite` (see [`load`] for the per-round series).
//!
//! Output layout under `out` (default `paper/`):
//! ```text
//! <out>/REPORT-<suite>.md                        table, figures, provenance of every number
//! <out>/figures/<suite>/payload_bytes.svg        training payload per run (log scale), × vs DDP
//! <out>/figures/<suite>/eval_loss_tokens.svg     mean eval loss over domains vs training tokens
//! <out>/figures/<suite>/eval_loss_clock.svg      mean eval loss over domains vs run clock (s)
//! <out>/figures/<suite>/routing_stability.svg    saturation, cross-site agreement, overlap vs round
//! <out>/figures/<suite>/load_balance.svg         CV of expert load, skip rate vs round
//! ```
//! Every file is written atomically and is a pure function of the inputs (no timestamps,
//! no absolute paths), so regenerating gives byte-identical files.
//!
//! Degenerate cases: a run without rounds rows has no loss curve and its report cells say
//! "no eval"; without routing rows it is listed as "no data" in the routing legends and in
//! the report; a target not reached is reported with the best loss and the target; a run
//! with no payload bytes is drawn at the bottom of the log axis and labelled `0 B`.

pub mod figures;
pub mod load;
pub mod report;

use std::path::{Path, PathBuf};

use harness::results::{write_atomic, ResultsError};

pub use load::{load_suite, RunData, SuiteData};

/// Errors of figure and report generation; each names the file.
#[derive(Debug, thiserror::Error)]
pub enum PaperError {
    #[error(transparent)]
    Results(#[from] ResultsError),
    #[error("{path}: {error}")]
    Io {
        path: PathBuf,
        error: std::io::Error,
    },
    #[error("{path}: line {line}: {reason}")]
    Malformed {
        path: PathBuf,
        line: usize,
        reason: String,
    },
    #[error("{path}: not a suite results directory: {reason}")]
    NotASuite { path: PathBuf, reason: String },
    #[error("{path}: drawing failed: {reason}")]
    Plot { path: PathBuf, reason: String },
}

/// The figure files of a suite, in report order: (file name, title).
pub const FIGURES: &[(&str, &str)] = &[
    ("payload_bytes.svg", "Training payload bytes per run"),
    (
        "eval_loss_tokens.svg",
        "Global eval loss (mean over domains) vs training tokens",
    ),
    (
        "eval_loss_clock.svg",
        "Global eval loss (mean over domains) vs run clock",
    ),
    (
        "routing_stability.svg",
        "Routing stability per round (mean over layers)",
    ),
    (
        "load_balance.svg",
        "Load balance per round (mean over layers)",
    ),
];

/// What [`generate`] wrote.
#[derive(Clone, Debug, PartialEq)]
pub struct Generated {
    pub suite: String,
    pub report: PathBuf,
    pub figures: Vec<PathBuf>,
    /// Runs left out (unreadable or incomplete), with the reason ([`SuiteData::left_out`]).
    pub left_out: Vec<(String, String)>,
}

/// `<out>/figures/<suite>/`.
pub fn figures_dir(out: &Path, suite: &str) -> PathBuf {
    out.join("figures").join(suite)
}

/// `<out>/REPORT-<suite>.md`.
pub fn report_path(out: &Path, suite: &str) -> PathBuf {
    out.join(format!("REPORT-{suite}.md"))
}

/// Read the suite in `suite_dir` and write its figures and report under `out`.
pub fn generate(suite_dir: &Path, out: &Path) -> Result<Generated, PaperError> {
    let suite = load_suite(suite_dir)?;
    let fig_dir = figures_dir(out, &suite.name);
    std::fs::create_dir_all(&fig_dir).map_err(|error| PaperError::Io {
        path: fig_dir.clone(),
        error,
    })?;
    let mut written = Vec::new();
    for (name, _) in FIGURES {
        let path = fig_dir.join(name);
        let svg = figures::render(name, &suite).map_err(|reason| PaperError::Plot {
            path: path.clone(),
            reason,
        })?;
        write_atomic(&path, svg.as_bytes())?;
        written.push(path);
    }
    let report = report_path(out, &suite.name);
    write_atomic(&report, report::markdown(&suite).as_bytes())?;
    Ok(Generated {
        suite: suite.name,
        report,
        figures: written,
        left_out: suite.left_out,
    })
}
