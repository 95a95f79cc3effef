//! `fomoe figures RESULTS_DIR [--out DIR]`: rebuild every figure and the Markdown report of
//! a suite from its results directory alone (no GPU, no network). RESULTS_DIR is a suite
//! directory (`results/<suite>`) or a directory of suites (each one is done).
//!
//! Writes `<out>/figures/<suite>/*.svg` and `<out>/REPORT-<suite>.md` (default out: `paper`),
//! atomically and deterministically; see the `paper` crate for the layout.

use std::path::PathBuf;

use anyhow::{Context, Result};
use harness::results::suite_dirs;

#[derive(clap::Args)]
pub struct Args {
    /// A suite's results directory (results/<suite>) or a directory of them (results/).
    results_dir: PathBuf,
    /// Where to write figures/<suite>/*.svg and REPORT-<suite>.md.
    #[arg(long, default_value = "paper")]
    out: PathBuf,
}

pub fn run(a: Args) -> Result<()> {
    if !a.results_dir.is_dir() {
        anyhow::bail!("{}: no such results directory", a.results_dir.display());
    }
    let dirs = suite_dirs(&a.results_dir)?;
    if dirs.is_empty() {
        anyhow::bail!(
            "{}: no run directories (with manifest.json) found",
            a.results_dir.display()
        );
    }
    for d in dirs {
        let g =
            paper::generate(&d, &a.out).with_context(|| format!("figures of {}", d.display()))?;
        for (id, why) in &g.left_out {
            eprintln!("{}: run {id} left out: {why}", g.suite);
        }
        outln!(
            "{}: {} and {} figures in {}",
            g.suite,
            g.report.display(),
            g.figures.len(),
            paper::figures_dir(&a.out, &g.suite).display()
        );
    }
    Ok(())
}

/// `fomoe study RESULTS_DIR [--out DIR]`: the study report of a suite (`<out>/STUDY-<suite>.md`):
/// its configurations per corpus over seeds, against DiLoCo at its defaults, and the one
/// the numbers select (see `paper::study`).
#[derive(clap::Args)]
pub struct StudyArgs {
    /// A suite's results directory (results/<suite>).
    results_dir: PathBuf,
    /// Where to write STUDY-<suite>.md.
    #[arg(long, default_value = "paper")]
    out: PathBuf,
    /// Fail (exit 1) unless the harness's FoMoE defaults are the configuration the study
    /// selects: a default changed without new evidence, or evidence that moved, is caught.
    #[arg(long)]
    check: bool,
}

pub fn study(a: StudyArgs) -> Result<()> {
    let (path, verdict) = paper::generate_study(&a.results_dir, &a.out)
        .with_context(|| format!("study of {}", a.results_dir.display()))?;
    outln!("{}", path.display());
    if a.check {
        match verdict {
            paper::study::Verdict::DefaultsSelected => {
                outln!("the FoMoE defaults are the configuration this study selects")
            }
            paper::study::Verdict::DefaultsNotSelected { selected } => anyhow::bail!(
                "the FoMoE defaults are not the configuration {} selects ({selected}); see {}",
                a.results_dir.display(),
                path.display()
            ),
            paper::study::Verdict::NoSelection => anyhow::bail!(
                "{} selects no FoMoE configuration; see {}",
                a.results_dir.display(),
                path.display()
            ),
        }
    }
    Ok(())
}
