//! `paper/REPORT.md` (`fomoe paper-report paper/report.toml [--check]`): each claim of the
//! FoMoE abstract beside this harness's measured or projected number ([`crate::claims`]),
//! the commands that regenerate them, the hardware the runs used (from their manifests) and
//! the limitations, generated from a committed reference suite and the system model's CSV.
//!
//! The spec file (TOML) names the inputs and how they were made; its paths are relative to
//! the directory the command runs in (the repository root), and are written into the
//! report as given, so the report does not depend on where the checkout lives:
//! ```toml
//! suite = "results/reference/quick"            # a suite results directory
//! suite_command = "cargo run --release -- run experiments/quick.toml --out /tmp/rq"
//! projection = "results/reference/projection.csv"   # optional: fomoe project --sweep … --csv
//! projection_command = "cargo run --release -- project …"
//! also = ["results/reference/smoke"]   # optional: more suites whose REPORT-<suite>.md and
//!                                      # figures are regenerated (and checked) with it
//! ```
//! Output under `out` (default: the spec file's directory):
//! ```text
//! <out>/REPORT.md                       the claims table, hardware, limitations, figures
//! <out>/REPORT-<suite>.md, figures/<suite>/*   the suite's own report and figures (crate::generate)
//! <out>/figures/projection/*.svg|png    the projection figures (crate::projection), if any
//! ```
//! Every file is a pure function of the inputs, written atomically. `--check` generates into
//! a temporary directory and lists every file that differs from, or is missing in, `out`, and
//! every figure in `out`'s generated folders that the generation no longer writes.

use std::collections::BTreeSet;
use std::fmt::Write as _;
use std::path::{Path, PathBuf};

use harness::results::write_atomic;
use serde::Deserialize;

use crate::claims::{claims, STABLE_MAX_RISE};
use crate::load::SuiteData;
use crate::projection::{read_projection, Projection, PROJECTION_FIGURES};
use crate::{figures_dir, report_path, write_figure, PaperError, FIGURES};

/// The report's file name under `out`.
pub const PAPER_REPORT: &str = "REPORT.md";

/// What REPORT.md is generated from.
#[derive(Clone, Debug, PartialEq, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ReportSpec {
    pub suite: PathBuf,
    pub suite_command: String,
    pub projection: Option<PathBuf>,
    pub projection_command: Option<String>,
    #[serde(default)]
    pub also: Vec<PathBuf>,
}

/// Read and check a spec file: one-line errors naming the file and the field.
pub fn read_spec(path: &Path) -> Result<ReportSpec, PaperError> {
    let text = std::fs::read_to_string(path).map_err(|error| PaperError::Io {
        path: path.to_path_buf(),
        error,
    })?;
    let spec: ReportSpec = toml::from_str(&text).map_err(|e| PaperError::Malformed {
        path: path.to_path_buf(),
        line: e
            .span()
            .map_or(1, |s| text[..s.start].matches('\n').count() + 1),
        reason: e.message().replace('\n', " "),
    })?;
    if spec.projection.is_some() != spec.projection_command.is_some() {
        return Err(PaperError::Malformed {
            path: path.to_path_buf(),
            line: 1,
            reason: "`projection` and `projection_command` go together: give both or neither"
                .into(),
        });
    }
    Ok(spec)
}

/// Generate everything under `out`; returns the files written, sorted.
pub fn generate_paper(spec: &ReportSpec, out: &Path) -> Result<Vec<PathBuf>, PaperError> {
    let suite = crate::load_suite(&spec.suite)?;
    let g = crate::generate_from(&suite, out)?;
    let mut files = g.figures.clone();
    files.push(g.report);
    for other in &spec.also {
        let g = crate::generate(other, out)?;
        files.extend(g.figures);
        files.push(g.report);
    }
    let projection = match &spec.projection {
        Some(p) => Some(read_projection(p)?),
        None => None,
    };
    if let Some(p) = &projection {
        let dir = figures_dir(out, "projection");
        std::fs::create_dir_all(&dir).map_err(|error| PaperError::Io {
            path: dir.clone(),
            error,
        })?;
        for (name, _) in PROJECTION_FIGURES {
            let svg = crate::projection::render(name, p).map_err(|reason| PaperError::Plot {
                path: dir.join(format!("{name}.svg")),
                reason,
            })?;
            files.extend(write_figure(&dir, name, &svg)?);
        }
    }
    let report = out.join(PAPER_REPORT);
    write_atomic(
        &report,
        markdown(spec, &suite, projection.as_ref()).as_bytes(),
    )?;
    files.push(report);
    files.sort();
    Ok(files)
}

fn rel_files(dir: &Path, sub: &Path, out: &mut BTreeSet<PathBuf>) {
    let Ok(rd) = std::fs::read_dir(dir.join(sub)) else {
        return;
    };
    for e in rd.flatten() {
        let rel = sub.join(e.file_name());
        if e.path().is_dir() {
            rel_files(dir, &rel, out);
        } else {
            out.insert(rel);
        }
    }
}

/// Regenerate into a temporary directory and compare with `out`: one line per file that is
/// missing, differs, or is stale (in a generated folder of `out` but no longer generated).
pub fn check_paper(spec: &ReportSpec, out: &Path) -> Result<Vec<String>, PaperError> {
    let tmp = tempfile::tempdir().map_err(|error| PaperError::Io {
        path: std::env::temp_dir(),
        error,
    })?;
    let files = generate_paper(spec, tmp.path())?;
    let mut problems = Vec::new();
    let mut generated = BTreeSet::new();
    for f in &files {
        let rel = f.strip_prefix(tmp.path()).unwrap_or(f).to_path_buf();
        let committed = out.join(&rel);
        let new = std::fs::read(f).map_err(|error| PaperError::Io {
            path: f.clone(),
            error,
        })?;
        match std::fs::read(&committed) {
            Err(_) => problems.push(format!("{}: missing", committed.display())),
            Ok(old) if old != new => problems.push(format!(
                "{}: differs from the regenerated file",
                committed.display()
            )),
            Ok(_) => {}
        }
        generated.insert(rel);
    }
    let mut dirs: BTreeSet<PathBuf> = BTreeSet::new();
    for rel in &generated {
        if let Some(parent) = rel.parent().filter(|p| !p.as_os_str().is_empty()) {
            dirs.insert(parent.to_path_buf());
        }
    }
    let mut present = BTreeSet::new();
    for d in &dirs {
        rel_files(out, d, &mut present);
    }
    for stale in present.difference(&generated) {
        problems.push(format!(
            "{}: not generated any more",
            out.join(stale).display()
        ));
    }
    Ok(problems)
}

fn cell(s: &str) -> String {
    s.replace('|', "\\|").replace('\n', " ")
}

/// Distinct (host, compute backend, threads per site, network backend, libtorch) of the
/// suite's runs, with their run counts.
fn hardware(suite: &SuiteData) -> Vec<(String, usize)> {
    let mut out: Vec<(String, usize)> = Vec::new();
    for r in &suite.runs {
        let key = format!(
            "host `{}`, compute `{}`, {} thread(s) per site, network backend `{}`, libtorch {}",
            r.host, r.backend, r.threads, r.network_backend, r.libtorch_version
        );
        match out.iter_mut().find(|(k, _)| *k == key) {
            Some(e) => e.1 += 1,
            None => out.push((key, 1)),
        }
    }
    out
}

/// The text of REPORT.md.
pub fn markdown(spec: &ReportSpec, suite: &SuiteData, projection: Option<&Projection>) -> String {
    let mut m = String::new();
    let suite_path = spec.suite.display().to_string();
    let _ = writeln!(
        m,
        "# The FoMoE abstract's claims beside this harness's numbers\n"
    );
    let _ = writeln!(
        m,
        "Generated by `fomoe paper-report` from the suite `{suite_path}` ({} runs, {} complete){}. Regenerate the report and its figures with `cargo run --release -- paper-report paper/report.toml`; `--check` fails when the committed files differ from regenerated ones.\n",
        suite.runs.len(),
        suite.runs.iter().filter(|r| r.summary.is_complete()).count(),
        match &spec.projection {
            Some(p) => format!(" and the system model's projection `{}`", p.display()),
            None => String::new(),
        }
    );
    let _ = writeln!(m, "## Claims\n");
    let _ = writeln!(
        m,
        "| claim of the abstract | paper | measured here | projected here | status |"
    );
    let _ = writeln!(m, "|---|---|---|---|---|");
    for c in claims(suite, projection) {
        let _ = writeln!(
            m,
            "| {} | {} | {} | {} | {} |",
            cell(c.claim),
            cell(c.paper),
            cell(&c.measured),
            cell(&c.projected),
            cell(&c.status)
        );
    }
    let _ = writeln!(
        m,
        "\nMeasured: payload bytes counted on every link of the runs (`summary.csv` `payload_bytes`, the same budget: preset, sites, steps, H and wire dtype); throughput as per-site compute tokens/s (forward and backward, `steps.csv` `compute_ms`); routing at the last dumped round (`routing.csv`, top-k, mean over layers); stability criterion: the global eval loss never rises by more than {STABLE_MAX_RISE} nats between rounds. Projected: rows of the system model's CSV, never measured. The definitions are in the `paper::claims` and `paper::compare` module docs."
    );
    let _ = writeln!(m, "\n## How to regenerate\n");
    let _ = writeln!(
        m,
        "- measured numbers: `{}` (writes the suite directory; the committed copy is `{suite_path}`)",
        cell(&spec.suite_command)
    );
    match (&spec.projection, &spec.projection_command) {
        (Some(p), Some(cmd)) => {
            let _ = writeln!(
                m,
                "- projected numbers: `{}` (the committed copy is `{}`)",
                cell(cmd),
                p.display()
            );
        }
        _ => {
            let _ = writeln!(
                m,
                "- projected numbers: no projection input in `paper/report.toml` (`projection`, `projection_command`)"
            );
        }
    }
    let _ = writeln!(
        m,
        "- this report and every figure: `cargo run --release -- paper-report paper/report.toml`"
    );
    let _ = writeln!(m, "\n## Hardware (from the runs' manifests)\n");
    for (hw, n) in hardware(suite) {
        let _ = writeln!(m, "- {n} run(s): {hw}");
    }
    let mut commits: Vec<&str> = suite.runs.iter().map(|r| r.git_commit.as_str()).collect();
    commits.sort();
    commits.dedup();
    let _ = writeln!(
        m,
        "- harness commit(s): {}",
        commits
            .iter()
            .map(|c| format!("`{c}`"))
            .collect::<Vec<_>>()
            .join(", ")
    );
    let _ = writeln!(m, "\n## Limitations\n");
    let mut presets: Vec<String> = suite
        .runs
        .iter()
        .filter_map(|r| {
            let c = r.summary.config.as_ref()?;
            let model = c.model_config().ok()?;
            Some(format!(
                "`{}` ({} parameters, s = {:.3})",
                c.preset,
                crate::projection::param_label(&(model.total_params() as f64)),
                model.expert_share()
            ))
        })
        .collect();
    presets.sort();
    presets.dedup();
    let _ = writeln!(
        m,
        "- CPU proxy scale: the measured runs train {} on CPU; the paper's models and accelerators are far larger, so measured losses and speeds are proxies and only the byte counts carry over exactly (they are functions of the parameter counts).",
        if presets.is_empty() { "no model".to_string() } else { presets.join(", ") }
    );
    let _ = writeln!(m, "- Links are emulated: the `relay` backend shapes rate and delay of TCP over loopback and does not model congestion control, loss or competing traffic; `sim` computes communication time from the link model (virtual time).");
    let _ = writeln!(m, "- Skip-token throughput is a per-site compute measurement on shared CPU cores; on accelerators the gain depends on kernel efficiency at small expert batches.");
    let _ = writeln!(m, "- Projections (memory, bytes at 1B–100B) come from the system model's formulas, validated against measured bytes at proxy scale, not from runs at that scale.");
    let _ = writeln!(m, "\n## Figures\n");
    for (name, title) in FIGURES {
        let dir = format!("figures/{}", suite.name);
        let _ = writeln!(m, "### {title}\n");
        let _ = writeln!(
            m,
            "![{title}]({dir}/{name}.svg)\n\n[PNG]({dir}/{name}.png)\n"
        );
    }
    if projection.is_some() {
        for (name, title) in PROJECTION_FIGURES {
            let _ = writeln!(m, "### {title}\n");
            let _ = writeln!(
                m,
                "![{title}](figures/projection/{name}.svg)\n\n[PNG](figures/projection/{name}.png)\n"
            );
        }
    }
    let _ = writeln!(
        m,
        "The per-run table, the losses at equal tokens, clock and payload, and the file behind every number: [{}]({}).",
        report_path(Path::new(""), &suite.name).display(),
        report_path(Path::new(""), &suite.name).display()
    );
    m
}
