//! `fomoe compare RESULTS_DIR REFERENCE_DIR`: the regression gate. Compares a suite's
//! results with a committed reference (`results/reference/<suite>`) and prints one line
//! per difference (run, file, row, column, values, rule), then how each run was compared
//! and a verdict; exit status 0 when nothing differs, 1 otherwise. The rules are in
//! `harness::results::compare`: bytes exact, losses bit-identical where the code promises
//! it, within a stated tolerance elsewhere, timings ignored.
//!
//! RESULTS_DIR is the suite directory or a results root holding it (`/tmp/out` for
//! `/tmp/out/smoke`, by the reference directory's name).

use std::path::PathBuf;

use anyhow::{bail, Result};
use harness::results::compare::{compare_suites, suite_dir_for};

#[derive(clap::Args)]
pub struct Args {
    /// The suite's results (results/<suite>, or the --out directory of `fomoe run`).
    results_dir: PathBuf,
    /// The reference to hold them to, e.g. results/reference/smoke.
    reference_dir: PathBuf,
}

pub fn run(a: Args) -> Result<()> {
    let name = a
        .reference_dir
        .file_name()
        .and_then(|n| n.to_str())
        .unwrap_or("")
        .to_string();
    let results = suite_dir_for(&a.results_dir, &name);
    let c = compare_suites(&results, &a.reference_dir)?;
    out!("{}", c.report());
    if !c.passed() {
        bail!(
            "{} differs from {} ({} differences)",
            results.display(),
            a.reference_dir.display(),
            c.differences.len()
        );
    }
    Ok(())
}
