//! The regression gate (`fomoe compare RESULTS REFERENCE`): a suite's results against a
//! committed reference, naming every difference by run, file, row, column and values.
//!
//! Per run (the union of both sides' run ids):
//! - present on both sides, `complete` on both ([`super::run_state`], so file records
//!   are checked) and for the same config (`config_hash`);
//! - `steps.csv`, `rounds.csv`, `routing.csv`: the same columns and row counts, then
//!   every cell by column class:
//!   - **timing** (`*_ms`, `*_s`, `tokens_per_s`): ignored; speed is never a gate failure
//!     (machines are noisy);
//!   - **bytes** (`*bytes*`, `payload_*`, `framing_*`): equal, always;
//!   - **values** (losses, gradients, routing metrics, counts): integers and text equal;
//!     floats bit-identical in **exact** mode, else within the tolerance
//!     |x − r| ≤ abs + [`REL_TOL`]·|r|, abs = [`ABS_TOL`] in steps.csv and rounds.csv and
//!     [`ROUTING_ABS_TOL`] in routing.csv.
//!
//! Exact mode is what the code promises: the same seed (part of the config), the same
//! threads per site, the same tch/libtorch and the same CPU (manifest `threads`,
//! `tch_version`, `libtorch_version`, `cpu`, which names an `ATEN_CPU_CAPABILITY`
//! override) give bit-identical losses on every backend. Where any of those differ, the
//! run is compared in tolerance mode and the report says why.
//!
//! The tolerances were measured on the smoke suite: run with libtorch's non-vectorised
//! kernels (`ATEN_CPU_CAPABILITY=default`, standing in for another CPU) against the
//! default AVX2 kernels, losses, eval losses, gradient norms and balance differ by at most
//! 1.8e-7 relative (1e-4 leaves a margin of 500×), and routing metrics, which count
//! discrete top-k choices on the probe set, by at most 2.4e-4 absolute (one probe token
//! choosing another expert; 5e-3 leaves 20×). One against two threads per site gave
//! bit-identical files on `tiny`. A real change of the training is caught even in
//! tolerance mode: 1% more learning rate (1.01e-3) moves the final eval loss of smoke's
//! `diloco-sim-s0` by 2.4e-4 relative (5.3498 against 5.3511).
//!
//! Degenerate cases: a suite without runs on either side is a difference ("no runs"); a
//! file absent on both sides is fine; an empty cell equals only an empty cell.

use std::collections::BTreeSet;
use std::fmt;
use std::path::{Path, PathBuf};

use super::manifest::{Manifest, MANIFEST_FILE};
use super::run_dir::{run_state, RunState, ROUNDS_FILE, ROUTING_FILE, STEPS_FILE};
use super::ResultsError;

/// Absolute part of the tolerance of float values in tolerance mode.
pub const ABS_TOL: f64 = 1e-9;
/// Relative part of the tolerance of float values in tolerance mode.
pub const REL_TOL: f64 = 1e-4;
/// Absolute part of the tolerance in routing.csv (statistics of discrete top-k choices).
pub const ROUTING_ABS_TOL: f64 = 5e-3;

/// The files compared cell by cell, the columns that name a row in the report, and the
/// absolute tolerance of their floats in tolerance mode.
const FILES: &[(&str, &[&str], f64)] = &[
    (STEPS_FILE, &["site", "step"], ABS_TOL),
    (ROUNDS_FILE, &["round", "domain"], ABS_TOL),
    (ROUTING_FILE, &["round", "layer"], ROUTING_ABS_TOL),
];

/// How a column is compared.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum ColumnClass {
    Timing,
    Bytes,
    Value,
}

/// The class of a column, by its name (see the module doc).
pub fn column_class(name: &str) -> ColumnClass {
    if name.ends_with("_ms") || name.ends_with("_s") || name == "tokens_per_s" {
        ColumnClass::Timing
    } else if name.contains("bytes") || name.starts_with("payload_") || name.starts_with("framing_")
    {
        ColumnClass::Bytes
    } else {
        ColumnClass::Value
    }
}

/// How one run was compared.
#[derive(Clone, Debug, PartialEq)]
pub enum Mode {
    /// Bit-identical floats expected.
    Exact,
    /// Floats within the tolerance, because of this difference in how the runs ran.
    Tolerance(String),
}

/// One difference, with everything needed to find it.
#[derive(Clone, Debug, PartialEq)]
pub struct Difference {
    pub run: String,
    /// File inside the run directory, or `-` for the run as a whole.
    pub file: String,
    /// Where in the file (`row 3 (round=1, domain=markov2)`), or empty.
    pub row: String,
    pub column: String,
    pub found: String,
    pub reference: String,
    /// What was expected (`bit-identical`, `equal`, `within 1e-4 relative`, …).
    pub rule: String,
}

impl fmt::Display for Difference {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}: {}", self.run, self.file)?;
        if !self.row.is_empty() {
            write!(f, " {}", self.row)?;
        }
        if !self.column.is_empty() {
            write!(f, " column {}", self.column)?;
        }
        write!(
            f,
            ": {} vs reference {} ({})",
            self.found, self.reference, self.rule
        )
    }
}

/// The outcome of a comparison.
#[derive(Clone, Debug, Default)]
pub struct Comparison {
    /// Runs compared cell by cell, with their mode.
    pub runs: Vec<(String, Mode)>,
    pub differences: Vec<Difference>,
}

impl Comparison {
    pub fn passed(&self) -> bool {
        self.differences.is_empty()
    }

    /// The report: one line per difference, then one line per run mode, then a verdict.
    pub fn report(&self) -> String {
        use std::fmt::Write as _;
        let mut s = String::new();
        for d in &self.differences {
            let _ = writeln!(s, "DIFF {d}");
        }
        for (run, mode) in &self.runs {
            let _ = match mode {
                Mode::Exact => writeln!(s, "run {run}: compared bit for bit"),
                Mode::Tolerance(why) => writeln!(
                    s,
                    "run {run}: compared within {REL_TOL:e} relative (+ {ABS_TOL:e}, routing.csv {ROUTING_ABS_TOL:e} absolute) because {why}"
                ),
            };
        }
        let runs: BTreeSet<&str> = self.differences.iter().map(|d| d.run.as_str()).collect();
        let _ = if self.passed() {
            writeln!(s, "PASS: {} runs, no differences", self.runs.len())
        } else {
            writeln!(
                s,
                "FAIL: {} differences in {} runs ({} runs compared)",
                self.differences.len(),
                runs.len(),
                self.runs.len()
            )
        };
        s
    }
}

/// `dir` itself when it holds run directories, else `dir/<name>` (the suite of that name
/// under a results root).
pub fn suite_dir_for(dir: &Path, name: &str) -> PathBuf {
    if run_ids(dir).is_empty() && dir.join(name).is_dir() {
        dir.join(name)
    } else {
        dir.to_path_buf()
    }
}

fn run_ids(dir: &Path) -> BTreeSet<String> {
    std::fs::read_dir(dir)
        .map(|it| {
            it.filter_map(|e| e.ok())
                .filter(|e| e.path().join(MANIFEST_FILE).is_file())
                .filter_map(|e| e.file_name().to_str().map(str::to_string))
                .collect()
        })
        .unwrap_or_default()
}

/// Compare the suite in `results` with the one in `reference` (see the module doc).
pub fn compare_suites(results: &Path, reference: &Path) -> Result<Comparison, ResultsError> {
    for d in [results, reference] {
        if !d.is_dir() {
            return Err(ResultsError::Invalid {
                path: d.to_path_buf(),
                reason: "no such directory".into(),
            });
        }
    }
    let mut out = Comparison::default();
    let (found, wanted) = (run_ids(results), run_ids(reference));
    if found.is_empty() || wanted.is_empty() {
        let (dir, side) = if found.is_empty() {
            (results, "results")
        } else {
            (reference, "reference")
        };
        out.differences.push(whole(
            "-",
            "-",
            &format!("no runs in {}", dir.display()),
            &format!("the {side} hold run directories"),
        ));
        return Ok(out);
    }
    for id in wanted.difference(&found) {
        out.differences.push(whole(
            id,
            "missing",
            "present",
            "every reference run is run",
        ));
    }
    for id in found.difference(&wanted) {
        out.differences.push(whole(
            id,
            "present",
            "absent",
            "no run beyond the reference",
        ));
    }
    for id in found.intersection(&wanted) {
        compare_run(id, &results.join(id), &reference.join(id), &mut out)?;
    }
    Ok(out)
}

fn whole(run: &str, found: &str, reference: &str, rule: &str) -> Difference {
    Difference {
        run: run.to_string(),
        file: "-".into(),
        row: String::new(),
        column: String::new(),
        found: found.to_string(),
        reference: reference.to_string(),
        rule: rule.to_string(),
    }
}

fn compare_run(
    id: &str,
    dir: &Path,
    ref_dir: &Path,
    out: &mut Comparison,
) -> Result<(), ResultsError> {
    let m = Manifest::read(&dir.join(MANIFEST_FILE))?;
    let r = Manifest::read(&ref_dir.join(MANIFEST_FILE))?;
    let mut manifest_diff = |column: &str, found: String, reference: String, rule: &str| {
        out.differences.push(Difference {
            run: id.to_string(),
            file: MANIFEST_FILE.into(),
            row: String::new(),
            column: column.to_string(),
            found,
            reference,
            rule: rule.to_string(),
        });
    };
    let state = |d: &Path, hash: &str| match run_state(d, hash) {
        RunState::Complete => None,
        other => Some(other.describe()),
    };
    let (s_found, s_ref) = (state(dir, &m.config_hash), state(ref_dir, &r.config_hash));
    if s_found.is_some() || s_ref.is_some() {
        manifest_diff(
            "status",
            s_found.unwrap_or_else(|| "complete".into()),
            s_ref.unwrap_or_else(|| "complete".into()),
            "both complete, files as recorded",
        );
        return Ok(());
    }
    if m.config_hash != r.config_hash {
        manifest_diff(
            "config_hash",
            m.config_hash.clone(),
            r.config_hash.clone(),
            "the same config; if the change is meant, regenerate the reference",
        );
        return Ok(());
    }
    let mode = mode_of(&m, &r);
    for &(file, keys, abs_tol) in FILES {
        let paths = (dir.join(file), ref_dir.join(file));
        compare_file(id, file, keys, &paths, &mode, abs_tol, out)?;
    }
    out.runs.push((id.to_string(), mode));
    Ok(())
}

/// Exact when threads, tch, libtorch and CPU model agree (see the module doc).
fn mode_of(m: &Manifest, r: &Manifest) -> Mode {
    let mut why = Vec::new();
    if m.threads != r.threads {
        why.push(format!("threads {} vs {}", m.threads, r.threads));
    }
    if (&m.tch_version, &m.libtorch_version) != (&r.tch_version, &r.libtorch_version) {
        why.push(format!(
            "tch {}/libtorch {} vs {}/{}",
            m.tch_version, m.libtorch_version, r.tch_version, r.libtorch_version
        ));
    }
    if m.cpu != r.cpu || m.cpu.is_none() {
        let name = |c: &Option<String>| c.clone().unwrap_or_else(|| "unknown".into());
        why.push(format!("cpu {} vs {}", name(&m.cpu), name(&r.cpu)));
    }
    if why.is_empty() {
        Mode::Exact
    } else {
        Mode::Tolerance(why.join(", "))
    }
}

type Table = (Vec<String>, Vec<Vec<String>>);

fn read_table(path: &Path) -> Result<Option<Table>, ResultsError> {
    if !path.exists() {
        return Ok(None);
    }
    let bad = |e: csv::Error| ResultsError::Invalid {
        path: path.to_path_buf(),
        reason: e.to_string(),
    };
    let mut r = csv::Reader::from_path(path).map_err(bad)?;
    let header: Vec<String> = r
        .headers()
        .map_err(bad)?
        .iter()
        .map(str::to_string)
        .collect();
    let mut rows = Vec::new();
    for rec in r.records() {
        rows.push(rec.map_err(bad)?.iter().map(str::to_string).collect());
    }
    Ok(Some((header, rows)))
}

#[allow(clippy::too_many_arguments)]
fn compare_file(
    id: &str,
    file: &str,
    keys: &[&str],
    (path, ref_path): &(PathBuf, PathBuf),
    mode: &Mode,
    abs_tol: f64,
    out: &mut Comparison,
) -> Result<(), ResultsError> {
    let diff =
        |row: String, column: &str, found: String, reference: String, rule: &str| Difference {
            run: id.to_string(),
            file: file.to_string(),
            row,
            column: column.to_string(),
            found,
            reference,
            rule: rule.to_string(),
        };
    let (found, wanted) = match (read_table(path)?, read_table(ref_path)?) {
        (None, None) => return Ok(()),
        (Some(f), Some(w)) => (f, w),
        (f, w) => {
            let has = |t: &Option<Table>| if t.is_some() { "present" } else { "absent" };
            out.differences.push(diff(
                String::new(),
                "",
                has(&f).into(),
                has(&w).into(),
                "the same files",
            ));
            return Ok(());
        }
    };
    let ((h, rows), (rh, ref_rows)) = (found, wanted);
    let ref_cols: BTreeSet<&String> = rh.iter().collect();
    let cols: BTreeSet<&String> = h.iter().collect();
    for c in ref_cols.difference(&cols) {
        out.differences.push(diff(
            String::new(),
            c,
            "absent".into(),
            "present".into(),
            "the same columns",
        ));
    }
    for c in cols.difference(&ref_cols) {
        out.differences.push(diff(
            String::new(),
            c,
            "present".into(),
            "absent".into(),
            "the same columns",
        ));
    }
    if rows.len() != ref_rows.len() {
        out.differences.push(diff(
            String::new(),
            "",
            format!("{} rows", rows.len()),
            format!("{} rows", ref_rows.len()),
            "the same rows",
        ));
    }
    let shared: Vec<(usize, usize, &String)> = rh
        .iter()
        .enumerate()
        .filter_map(|(j, c)| h.iter().position(|x| x == c).map(|i| (i, j, c)))
        .filter(|(_, _, c)| column_class(c) != ColumnClass::Timing)
        .collect();
    let key_cols: Vec<usize> = keys
        .iter()
        .filter_map(|k| rh.iter().position(|c| c == k))
        .collect();
    for (n, (row, ref_row)) in rows.iter().zip(&ref_rows).enumerate() {
        let at = || {
            let named: Vec<String> = key_cols
                .iter()
                .map(|&j| format!("{}={}", rh[j], ref_row.get(j).map_or("", |v| v)))
                .collect();
            format!("row {} ({})", n + 1, named.join(", "))
        };
        for &(i, j, c) in &shared {
            let (x, r) = (
                row.get(i).map_or("", String::as_str),
                ref_row.get(j).map_or("", String::as_str),
            );
            if let Some(rule) = cell_differs(column_class(c), x, r, mode, abs_tol) {
                out.differences
                    .push(diff(at(), c, x.into(), r.into(), rule));
            }
        }
    }
    Ok(())
}

/// `Some(rule)` when the cells differ under the rule of their class and mode.
fn cell_differs(
    class: ColumnClass,
    x: &str,
    r: &str,
    mode: &Mode,
    abs_tol: f64,
) -> Option<&'static str> {
    if x == r {
        return None;
    }
    match class {
        ColumnClass::Timing => None,
        ColumnClass::Bytes => Some("bytes: equal"),
        ColumnClass::Value => match (x.parse::<f64>(), r.parse::<f64>()) {
            (Ok(a), Ok(b)) if a.to_bits() == b.to_bits() => None, // `1` vs `1.0`
            (Ok(a), Ok(b)) => match mode {
                Mode::Exact => Some("bit-identical: same seed, threads, libtorch and cpu"),
                Mode::Tolerance(_) if (a - b).abs() <= abs_tol + REL_TOL * b.abs() => None,
                Mode::Tolerance(_) => Some("within the tolerance"),
            },
            _ => Some("equal"),
        },
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn column_classes() {
        for t in [
            "wall_ms",
            "comm_cpu_ms",
            "clock_s",
            "sync_ms",
            "tokens_per_s",
        ] {
            assert_eq!(column_class(t), ColumnClass::Timing, "{t}");
        }
        for b in [
            "payload_sent",
            "framing_recv",
            "payload_bytes_total",
            "eval_bytes_total",
        ] {
            assert_eq!(column_class(b), ColumnClass::Bytes, "{b}");
        }
        for v in [
            "loss",
            "eval_loss",
            "grad_norm",
            "tokens",
            "skip_rate",
            "round",
            "domain",
        ] {
            assert_eq!(column_class(v), ColumnClass::Value, "{v}");
        }
    }

    #[test]
    fn cells() {
        let exact = Mode::Exact;
        let tol = Mode::Tolerance("threads 1 vs 2".into());
        assert_eq!(
            cell_differs(ColumnClass::Value, "1", "1.0", &exact, ABS_TOL),
            None
        );
        assert!(
            cell_differs(ColumnClass::Value, "5.4835", "5.48350001", &exact, ABS_TOL).is_some()
        );
        assert_eq!(
            cell_differs(ColumnClass::Value, "5.4835", "5.48350001", &tol, ABS_TOL),
            None
        );
        assert!(cell_differs(ColumnClass::Value, "5.4835", "5.49", &tol, ABS_TOL).is_some());
        assert!(cell_differs(ColumnClass::Bytes, "100", "101", &tol, ABS_TOL).is_some());
        assert_eq!(
            cell_differs(ColumnClass::Timing, "1.0", "9.0", &exact, ABS_TOL),
            None
        );
        assert!(cell_differs(ColumnClass::Value, "", "0", &tol, ABS_TOL).is_some());
        assert!(cell_differs(ColumnClass::Value, "markov0", "markov1", &tol, ABS_TOL).is_some());
        // Routing metrics: one probe token's choice (2.4e-4) passes, 1% does not.
        assert_eq!(
            cell_differs(
                ColumnClass::Value,
                "0.942626953125",
                "0.94287109375",
                &tol,
                ROUTING_ABS_TOL
            ),
            None
        );
        assert!(cell_differs(ColumnClass::Value, "0.93", "0.94", &tol, ROUTING_ABS_TOL).is_some());
    }

    use crate::config::RunConfig;
    use crate::results::{RunDir, RunEnv};
    use crate::telemetry::{RoundRow, StepRow};

    fn env() -> RunEnv {
        RunEnv {
            suite: "g".into(),
            backend: "cpu".into(),
            cores: 2,
            git_commit: "abc".into(),
            host: "h".into(),
        }
    }

    /// A complete run `id` under `root` with `steps` rows per site and one eval.
    fn run(root: &Path, id: &str, loss_shift: f64) {
        let cfg = RunConfig {
            sites: 2,
            steps: 4,
            inner_steps: 2,
            ..Default::default()
        };
        let mut rd = RunDir::create(&root.join(id), id, &cfg, &env()).unwrap();
        for step in 1..=4 {
            for site in 0..2 {
                rd.steps
                    .push(&StepRow {
                        site,
                        step,
                        loss: 5.0 - 0.1 * step as f64 + loss_shift,
                        tokens: 64,
                        wall_ms: 10.0 + site as f64,
                        payload_sent: 100,
                        ..Default::default()
                    })
                    .unwrap();
            }
        }
        rd.rounds
            .push(&RoundRow {
                round: 1,
                step: 4,
                domain: "d0".into(),
                eval_loss: 4.5 + loss_shift,
                payload_bytes_total: 800,
                clock_s: 1.0,
                ..Default::default()
            })
            .unwrap();
        rd.finish(&Ok(())).unwrap();
    }

    fn suite(root: &Path, ids: &[&str]) -> PathBuf {
        for id in ids {
            run(root, id, 0.0);
        }
        root.to_path_buf()
    }

    fn rewrite(path: &Path, f: impl Fn(String) -> String) {
        let text = std::fs::read_to_string(path).unwrap();
        std::fs::write(path, f(text)).unwrap();
    }

    /// Re-record the files of a run after a deliberate edit, so it stays complete.
    fn rerecord(dir: &Path) {
        let p = dir.join(MANIFEST_FILE);
        let mut m = Manifest::read(&p).unwrap();
        m.files = Some(crate::results::completeness::record_files(dir).unwrap());
        std::fs::write(&p, m.to_json()).unwrap();
    }

    fn set_manifest(dir: &Path, f: impl Fn(&mut Manifest)) {
        let p = dir.join(MANIFEST_FILE);
        let mut m = Manifest::read(&p).unwrap();
        f(&mut m);
        std::fs::write(&p, m.to_json()).unwrap();
    }

    #[test]
    fn identical_suites_pass_bit_for_bit_and_timings_are_ignored() {
        let (a, b) = (tempfile::tempdir().unwrap(), tempfile::tempdir().unwrap());
        suite(a.path(), &["x", "y"]);
        suite(b.path(), &["x", "y"]);
        // Timings differ run to run: never a difference.
        let steps = a.path().join("x").join(STEPS_FILE);
        rewrite(&steps, |t| {
            assert!(t.contains(",10.0,"), "{t}");
            t.replace(",10.0,", ",99.5,")
        });
        rerecord(&a.path().join("x"));
        let c = compare_suites(a.path(), b.path()).unwrap();
        assert!(c.passed(), "{}", c.report());
        assert!(c.runs.iter().all(|(_, m)| *m == Mode::Exact));
        assert!(c.report().ends_with("PASS: 2 runs, no differences\n"));
    }

    /// Each kind of difference the gate reports, with run, file, column and values.
    #[test]
    fn every_kind_of_difference_is_named() {
        let (a, b) = (tempfile::tempdir().unwrap(), tempfile::tempdir().unwrap());
        suite(
            a.path(),
            &["bytes", "loss", "rows", "cols", "status", "hash", "extra"],
        );
        suite(
            b.path(),
            &["bytes", "loss", "rows", "cols", "status", "hash", "missing"],
        );
        let d = |id: &str| a.path().join(id);
        rewrite(&d("bytes").join(STEPS_FILE), |t| {
            t.replacen(",100,", ",101,", 1)
        });
        rerecord(&d("bytes"));
        rewrite(&d("loss").join(ROUNDS_FILE), |t| {
            t.replace("4.5,", "4.5000001,")
        });
        rerecord(&d("loss"));
        rewrite(&d("rows").join(STEPS_FILE), |t| {
            let mut lines: Vec<&str> = t.lines().collect();
            lines.pop();
            lines.join("\n") + "\n"
        });
        rerecord(&d("rows"));
        rewrite(&d("cols").join(ROUNDS_FILE), |t| {
            t.lines()
                .map(|l| l.rsplit_once(',').unwrap().0.to_string() + "\n")
                .collect()
        });
        rerecord(&d("cols"));
        rewrite(&d("status").join(ROUNDS_FILE), |t| {
            t + "1,4,d1,4.4,,0,0,0,0,0,0\n"
        }); // not re-recorded: incomplete
        set_manifest(&d("hash"), |m| m.config_hash = "0123456789abcdef".into());
        let c = compare_suites(a.path(), b.path()).unwrap();
        let lines: Vec<String> = c.differences.iter().map(|d| d.to_string()).collect();
        let has = |needle: &str| {
            assert!(
                lines.iter().any(|l| l.contains(needle)),
                "no line with {needle:?} in:\n{}",
                lines.join("\n")
            )
        };
        has("missing: -: missing vs reference present (every reference run is run)");
        has("extra: -: present vs reference absent (no run beyond the reference)");
        has("bytes: steps.csv row 1 (site=0, step=1) column payload_sent: 101 vs reference 100 (bytes: equal)");
        has("loss: rounds.csv row 1 (round=1, domain=d0) column eval_loss: 4.5000001 vs reference 4.5 (bit-identical");
        has("rows: steps.csv: 7 rows vs reference 8 rows (the same rows)");
        has("cols: rounds.csv column sync_ms: absent vs reference present (the same columns)");
        has("status: manifest.json column status: incomplete (rounds.csv holds");
        has("hash: manifest.json column config_hash: 0123456789abcdef vs reference");
        assert_eq!(lines.len(), 8, "{}", lines.join("\n"));
        assert!(!c.passed());
        assert!(c.report().contains("FAIL: 8 differences in 8 runs"));
    }

    /// Where threads, libtorch or CPU differ, floats are held to the tolerance instead of
    /// bit identity, and the report says why; bytes stay exact.
    #[test]
    fn tolerance_mode_where_the_code_promises_no_bit_identity() {
        let (a, b) = (tempfile::tempdir().unwrap(), tempfile::tempdir().unwrap());
        suite(b.path(), &["near", "far", "bytes"]);
        run(a.path(), "near", 1e-7); // 2e-8 relative: within
        run(a.path(), "far", 1e-2); // 2e-3 relative: beyond
        run(a.path(), "bytes", 0.0);
        rewrite(&a.path().join("bytes").join(STEPS_FILE), |t| {
            t.replacen(",100,", ",99,", 1)
        });
        rerecord(&a.path().join("bytes"));
        for id in ["near", "far", "bytes"] {
            set_manifest(&a.path().join(id), |m| m.threads = 4);
        }
        let c = compare_suites(a.path(), b.path()).unwrap();
        assert!(c
            .runs
            .iter()
            .all(|(_, m)| matches!(m, Mode::Tolerance(w) if w.contains("threads 4 vs 2"))));
        let runs: BTreeSet<&str> = c.differences.iter().map(|d| d.run.as_str()).collect();
        assert_eq!(runs, BTreeSet::from(["bytes", "far"]), "{}", c.report());
        assert!(c
            .differences
            .iter()
            .filter(|d| d.run == "far")
            .all(|d| d.rule == "within the tolerance" && d.column.contains("loss")));
        assert!(c.report().contains("because threads 4 vs 2"));
    }
}
