//! `fomoe paper-report SPEC.toml [--out DIR] [--check]`: `paper/REPORT.md` (each claim of
//! the FoMoE abstract beside the harness's measured or projected number), the reference
//! suite's figures and report, and the projection figures, from the inputs the spec names
//! (see `paper::paper_report`). Run it from the repository root: the spec's paths are
//! relative to it. `--check` writes nothing: it regenerates into a temporary directory and
//! fails, listing every file, when the committed ones differ, are missing or are stale.

use std::path::PathBuf;

use anyhow::{Context, Result};
use paper::paper_report::{check_paper, generate_paper, read_spec};

#[derive(clap::Args)]
pub struct Args {
    /// The spec file (TOML: suite, suite_command, optional projection, projection_command, also).
    spec: PathBuf,
    /// Where REPORT.md and figures/ go (default: the spec file's directory).
    #[arg(long)]
    out: Option<PathBuf>,
    /// Compare the committed files with regenerated ones instead of writing them.
    #[arg(long)]
    check: bool,
}

pub fn run(a: Args) -> Result<()> {
    let spec = read_spec(&a.spec)?;
    let out = a.out.clone().unwrap_or_else(|| {
        a.spec
            .parent()
            .map(|p| p.to_path_buf())
            .unwrap_or_else(|| PathBuf::from("."))
    });
    if a.check {
        let problems = check_paper(&spec, &out)
            .with_context(|| format!("regenerating from {}", a.spec.display()))?;
        if problems.is_empty() {
            outln!(
                "{}: REPORT.md and every figure match their regeneration",
                out.display()
            );
            return Ok(());
        }
        for p in &problems {
            eprintln!("{p}");
        }
        anyhow::bail!(
            "{} file(s) differ from their regeneration (listed above); regenerate with `fomoe paper-report {}` and commit",
            problems.len(),
            a.spec.display()
        );
    }
    let files = generate_paper(&spec, &out)
        .with_context(|| format!("generating from {}", a.spec.display()))?;
    outln!(
        "{}: {} files (REPORT.md, reports and figures)",
        out.display(),
        files.len()
    );
    Ok(())
}
