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
//! <out>/REPORT-<suite>.md                   table, figures, provenance of every number
//! <out>/figures/<suite>/payload_bytes       training payload per run (log scale), × vs DDP
//! <out>/figures/<suite>/eval_loss_tokens    global (solid) and sites' own (dashed) mean eval
//!                                           loss over domains vs training tokens
//! <out>/figures/<suite>/eval_loss_clock     the same vs run clock (s)
//! <out>/figures/<suite>/pareto              final global eval loss vs payload bytes (log x),
//!                                           a point per run, a series per method
//! <out>/figures/<suite>/stability           round-to-round change of the global eval loss,
//!                                           and each run's largest increase
//! <out>/figures/<suite>/throughput          per-site compute tokens/s vs ρ/M, with skip-token
//!                                           (FoMoE) and without (full replica)
//! <out>/figures/<suite>/routing_stability   saturation, cross-site agreement, overlap vs round
//! <out>/figures/<suite>/load_balance        CV of expert load, skip rate vs round
//! ```
//! Each figure is written as `<name>.svg` and `<name>.png` (the SVG rasterised, see
//! [`raster`]). Every file is written atomically and is a pure function of the inputs (no
//! timestamps, no absolute paths), so regenerating gives byte-identical files. Runs that are
//! not `complete` are drawn in the per-run figures with their status in the legend, and never
//! enter the Pareto or throughput figures or any comparison across runs.
//!
//! Degenerate cases: a run without rounds rows has no loss curve and its report cells say
//! "no eval"; without routing rows it is listed as "no data" in the routing legends and in
//! the report; a target not reached is reported with the best loss and the target; a run
//! with no payload bytes is drawn at the bottom of the log axis and labelled `0 B`.

pub mod claims;
pub mod compare;
pub mod figures;
pub mod load;
pub mod paper_report;
pub mod projection;
pub mod quality_figures;
pub mod raster;
pub mod report;
pub mod study;

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

/// The figures of a suite, in report order: (file stem, title).
pub const FIGURES: &[(&str, &str)] = &[
    ("payload_bytes", "Training payload bytes per run"),
    (
        "eval_loss_tokens",
        "Eval loss (mean over domains) vs training tokens: global model and the sites' own models",
    ),
    (
        "eval_loss_clock",
        "Eval loss (mean over domains) vs run clock: global model and the sites' own models",
    ),
    ("pareto", "Final global eval loss vs payload bytes"),
    ("stability", "Round-to-round change of the global eval loss"),
    (
        "throughput",
        "Per-site compute throughput vs ρ/M, with and without skip-token",
    ),
    (
        "routing_stability",
        "Routing stability per round (mean over layers)",
    ),
    ("load_balance", "Load balance per round (mean over layers)"),
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

/// Write `<dir>/<name>.svg` and its rasterisation `<dir>/<name>.png`; returns both paths.
pub fn write_figure(dir: &Path, name: &str, svg: &str) -> Result<[PathBuf; 2], PaperError> {
    let svg_path = dir.join(format!("{name}.svg"));
    let png_path = dir.join(format!("{name}.png"));
    let png = raster::svg_to_png(svg).map_err(|reason| PaperError::Plot {
        path: png_path.clone(),
        reason,
    })?;
    write_atomic(&svg_path, svg.as_bytes())?;
    write_atomic(&png_path, &png)?;
    Ok([svg_path, png_path])
}

/// `<out>/STUDY-<suite>.md`.
pub fn study_path(out: &Path, suite: &str) -> PathBuf {
    out.join(format!("STUDY-{suite}.md"))
}

/// Read the suite in `suite_dir` and write its study report ([`study`]) under `out`.
pub fn generate_study(
    suite_dir: &Path,
    out: &Path,
) -> Result<(PathBuf, study::Verdict), PaperError> {
    let suite = load_suite(suite_dir)?;
    std::fs::create_dir_all(out).map_err(|error| PaperError::Io {
        path: out.to_path_buf(),
        error,
    })?;
    let path = study_path(out, &suite.name);
    let report = study::study(&suite);
    write_atomic(&path, report.markdown.as_bytes())?;
    Ok((path, report.verdict))
}

/// Read the suite in `suite_dir` and write its figures and report under `out`.
pub fn generate(suite_dir: &Path, out: &Path) -> Result<Generated, PaperError> {
    generate_from(&load_suite(suite_dir)?, out)
}

/// Write a loaded suite's figures and report under `out`.
pub fn generate_from(suite: &SuiteData, out: &Path) -> Result<Generated, PaperError> {
    let fig_dir = figures_dir(out, &suite.name);
    std::fs::create_dir_all(&fig_dir).map_err(|error| PaperError::Io {
        path: fig_dir.clone(),
        error,
    })?;
    let mut written = Vec::new();
    for (name, _) in FIGURES {
        let svg = figures::render(name, suite).map_err(|reason| PaperError::Plot {
            path: fig_dir.join(format!("{name}.svg")),
            reason,
        })?;
        written.extend(write_figure(&fig_dir, name, &svg)?);
    }
    let report = report_path(out, &suite.name);
    write_atomic(&report, report::markdown(suite).as_bytes())?;
    Ok(Generated {
        suite: suite.name.clone(),
        report,
        figures: written,
        left_out: suite.left_out.clone(),
    })
}
