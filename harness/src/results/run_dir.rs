//! One run's directory: creation, the sinks the runner writes to, resume state, the merge
//! of per-site step files, and the final manifest.
//!
//! Life of a run directory (`results/<suite>/<run_id>/`):
//! 1. [`run_state`] decides whether the run is already complete (manifest `complete` with
//!    the config's hash, files as recorded); otherwise [`clear_run_dir`] empties it.
//! 2. [`RunDir::create`] writes `manifest.json` (`running`) atomically and creates
//!    `steps.csv`, `rounds.csv`, `routing.csv` with their headers.
//! 3. The runner pushes rows (flushed per row). Worker processes write their own
//!    `steps-site<i>.csv` ([`site_steps_path`], [`CsvSink::create`]) instead of `steps.csv`.
//! 4. [`RunDir::finish`] closes the sinks, merges every `steps-site<i>.csv` (and any rows
//!    already in `steps.csv`) into `steps.csv` sorted by (step, site), removes the per-site
//!    files, records every result file (size, SHA-256, rows: [`completeness`]), and
//!    rewrites the manifest as `complete` or `failed` with the error. It runs on failure
//!    too, so a failed run's telemetry is kept.

use std::path::{Path, PathBuf};
use std::time::{Instant, SystemTime};

use hdrhistogram::Histogram;

use super::atomic::write_atomic;
use super::completeness::{self, record_files, ExpectedRows};
use super::csv_sink::{header_line, read_rows, CsvSink};
use super::manifest::{
    default_threads_per_site, rfc3339_utc, Manifest, RunEnv, RunStatus, MANIFEST_FILE,
    MANIFEST_SCHEMA,
};
use super::manifest::{LIBTORCH_VERSION, TCH_VERSION};
use super::ResultsError;
use crate::config::RunConfig;
use crate::metrics::probe::{ProbeDumpWriter, ProbeError, ProbeHeader, PROBE_DUMP_FILE};
use crate::telemetry::{RoundRow, RoutingRow, StepRow};

pub const STEPS_FILE: &str = "steps.csv";
pub const ROUNDS_FILE: &str = "rounds.csv";
pub const ROUTING_FILE: &str = "routing.csv";

/// `steps-site<i>.csv`: the file worker `site` appends its [`StepRow`]s to.
pub fn site_steps_path(run_dir: &Path, site: usize) -> PathBuf {
    run_dir.join(format!("steps-site{site}.csv"))
}

/// Whether a run has to be (re)done.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum RunState {
    /// No directory or an empty one.
    Missing,
    /// Manifest `complete` with the expected hash: skip.
    Complete,
    /// Manifest `running`: the run was interrupted (or is running elsewhere).
    Partial,
    Failed,
    /// Complete, but for another config.
    OtherConfig {
        found_hash: String,
    },
    /// A directory with files but no readable manifest.
    Unreadable {
        reason: String,
    },
    /// Manifest `complete` with the expected hash, but the files disagree with its record
    /// ([`completeness::check_files`]): re-run.
    Incomplete {
        problems: Vec<String>,
    },
}

impl RunState {
    pub fn is_complete(&self) -> bool {
        *self == RunState::Complete
    }
    pub fn describe(&self) -> String {
        match self {
            RunState::Missing => "new".into(),
            RunState::Complete => "complete".into(),
            RunState::Partial => "partial (manifest says running)".into(),
            RunState::Failed => "failed before".into(),
            RunState::OtherConfig { found_hash } => format!("config changed (was {found_hash})"),
            RunState::Unreadable { reason } => format!("unreadable manifest ({reason})"),
            RunState::Incomplete { problems } => format!("incomplete ({})", problems.join("; ")),
        }
    }
}

/// The state of the run directory `dir` for a config with hash `config_hash`.
pub fn run_state(dir: &Path, config_hash: &str) -> RunState {
    let manifest = dir.join(MANIFEST_FILE);
    if !manifest.exists() {
        let empty = std::fs::read_dir(dir)
            .map(|mut d| d.next().is_none())
            .unwrap_or(true);
        return if empty {
            RunState::Missing
        } else {
            RunState::Unreadable {
                reason: format!("{MANIFEST_FILE} missing"),
            }
        };
    }
    match Manifest::read_head(&manifest) {
        Err(e) => RunState::Unreadable {
            reason: e.to_string(),
        },
        Ok(head) => match head.status {
            RunStatus::Running => RunState::Partial,
            RunStatus::Failed => RunState::Failed,
            RunStatus::Complete if head.config_hash == config_hash => {
                let problems = completeness::check_files(dir, head.files.as_ref());
                if problems.is_empty() {
                    RunState::Complete
                } else {
                    RunState::Incomplete { problems }
                }
            }
            RunStatus::Complete => RunState::OtherConfig {
                found_hash: head.config_hash,
            },
        },
    }
}

/// Empty a run directory before a re-run. Refuses a non-empty directory without
/// `manifest.json` (not something this tool wrote) rather than deleting it.
pub fn clear_run_dir(dir: &Path) -> Result<(), ResultsError> {
    if !dir.exists() {
        return Ok(());
    }
    let io = |error| ResultsError::Io {
        path: dir.to_path_buf(),
        error,
    };
    let mut entries = std::fs::read_dir(dir).map_err(io)?.peekable();
    if entries.peek().is_some() && !dir.join(MANIFEST_FILE).exists() {
        return Err(ResultsError::Invalid {
            path: dir.to_path_buf(),
            reason: format!(
                "not empty and has no {MANIFEST_FILE}; remove it by hand if it is a stale run"
            ),
        });
    }
    std::fs::remove_dir_all(dir).map_err(io)
}

/// An open run directory: manifest written as `running`, sinks open.
pub struct RunDir {
    path: PathBuf,
    manifest: Manifest,
    started: Instant,
    expected: ExpectedRows,
    /// Per-step rows of every site when the sites share this process (one row per site per
    /// step); worker processes write `steps-site<i>.csv` instead.
    pub steps: CsvSink<StepRow>,
    /// One row per domain per eval.
    pub rounds: CsvSink<RoundRow>,
    /// One row per layer per dumped round.
    pub routing: CsvSink<RoutingRow>,
}

impl RunDir {
    /// Create the run directory (absent or empty), write `manifest.json` with status
    /// `running`, and create the three CSV files with headers.
    pub fn create(
        path: &Path,
        run_id: &str,
        cfg: &RunConfig,
        env: &RunEnv,
    ) -> Result<RunDir, ResultsError> {
        let io = |error| ResultsError::Io {
            path: path.to_path_buf(),
            error,
        };
        std::fs::create_dir_all(path).map_err(io)?;
        if std::fs::read_dir(path).map_err(io)?.next().is_some() {
            return Err(ResultsError::Invalid {
                path: path.to_path_buf(),
                reason: "run directory is not empty".into(),
            });
        }
        let manifest = Manifest {
            schema: MANIFEST_SCHEMA,
            suite: env.suite.clone(),
            run_id: run_id.to_string(),
            status: RunStatus::Running,
            error: None,
            config_hash: cfg.run_hash(),
            config: cfg.clone(),
            git_commit: env.git_commit.clone(),
            fomoe_version: env!("CARGO_PKG_VERSION").to_string(),
            tch_version: TCH_VERSION.to_string(),
            libtorch_version: LIBTORCH_VERSION.to_string(),
            host: env.host.clone(),
            backend: env.backend.clone(),
            network_backend: cfg.network.backend.to_string(),
            threads: default_threads_per_site(cfg, env.cores),
            cpu: super::manifest::cpu_model(),
            pid: std::process::id(),
            started_at: rfc3339_utc(SystemTime::now()),
            ended_at: None,
            duration_s: None,
            device: None,
            files: None,
            links: None,
            scenario: None,
        };
        write_atomic(&path.join(MANIFEST_FILE), &manifest.to_json())?;
        Ok(RunDir {
            steps: CsvSink::create(path.join(STEPS_FILE))?,
            rounds: CsvSink::create(path.join(ROUNDS_FILE))?,
            routing: CsvSink::create(path.join(ROUTING_FILE))?,
            path: path.to_path_buf(),
            manifest,
            started: Instant::now(),
            expected: ExpectedRows::default(),
        })
    }

    /// The rows a complete run writes ([`ExpectedRows`]); [`RunDir::finish`] fails a run
    /// whose files hold other counts.
    pub fn expect_rows(&mut self, expected: ExpectedRows) {
        self.expected = expected;
    }

    pub fn path(&self) -> &Path {
        &self.path
    }

    pub fn manifest(&self) -> &Manifest {
        &self.manifest
    }

    pub fn run_id(&self) -> &str {
        &self.manifest.run_id
    }

    /// Record the compute backend and threads per site the runner actually used.
    pub fn set_runtime(&mut self, backend: &str, threads: usize) -> Result<(), ResultsError> {
        self.manifest.backend = backend.to_string();
        self.manifest.threads = threads;
        write_atomic(&self.path.join(MANIFEST_FILE), &self.manifest.to_json())
    }

    /// Record the resolved links and what the scenario did (manifest `links`, `scenario`).
    pub fn set_network_record(
        &mut self,
        links: Option<serde_json::Value>,
        scenario: Option<serde_json::Value>,
    ) -> Result<(), ResultsError> {
        self.manifest.links = links;
        self.manifest.scenario = scenario;
        write_atomic(&self.path.join(MANIFEST_FILE), &self.manifest.to_json())
    }

    /// Record the device facts of the run (see [`crate::device::facts`]).
    pub fn set_device(
        &mut self,
        facts: crate::device::facts::DeviceFacts,
    ) -> Result<(), ResultsError> {
        self.manifest.device = Some(facts);
        write_atomic(&self.path.join(MANIFEST_FILE), &self.manifest.to_json())
    }

    /// Create `probe_topk.bin` in this directory.
    pub fn probe_dump(&self, header: ProbeHeader) -> Result<ProbeDumpWriter, ProbeError> {
        ProbeDumpWriter::create(self.path.join(PROBE_DUMP_FILE), header)
    }

    /// Write `<name>.hgrm` (HdrHistogram percentile distribution) atomically; values are
    /// divided by `value_unit_ratio` (e.g. µs recorded, 1000 → ms printed).
    pub fn write_hgrm(
        &self,
        name: &str,
        hist: &Histogram<u64>,
        value_unit_ratio: f64,
    ) -> Result<(), ResultsError> {
        write_atomic(
            &self.path.join(format!("{name}.hgrm")),
            hgrm_text(hist, value_unit_ratio).as_bytes(),
        )
    }

    /// Close the sinks, merge per-site step files, record the result files
    /// ([`completeness::record_files`]) and write the final manifest: `complete` when
    /// `outcome` is Ok, the merge succeeds and the files hold the expected rows
    /// ([`RunDir::expect_rows`]), else `failed` with the errors on one line. Returns the
    /// final manifest.
    pub fn finish(self, outcome: &anyhow::Result<()>) -> Result<Manifest, ResultsError> {
        let RunDir {
            path,
            mut manifest,
            started,
            expected,
            steps,
            rounds,
            routing,
        } = self;
        let mut errors: Vec<String> = Vec::new();
        if let Err(e) = outcome {
            errors.push(format!("{e:#}"));
        }
        for r in [steps.finish(), rounds.finish(), routing.finish()] {
            if let Err(e) = r {
                errors.push(e.to_string());
            }
        }
        if let Err(e) = merge_site_steps(&path) {
            errors.push(format!("merging per-site steps: {e}"));
        }
        let files = record_files(&path)?;
        if errors.is_empty() {
            errors.extend(expected.disagreements(&files));
        }
        manifest.files = Some(files);
        manifest.status = if errors.is_empty() {
            RunStatus::Complete
        } else {
            RunStatus::Failed
        };
        manifest.error = (!errors.is_empty()).then(|| errors.join("; ").replace('\n', " "));
        manifest.ended_at = Some(rfc3339_utc(SystemTime::now()));
        manifest.duration_s = Some(started.elapsed().as_secs_f64());
        write_atomic(&path.join(MANIFEST_FILE), &manifest.to_json())?;
        Ok(manifest)
    }
}

/// The per-site step files (`steps-site<i>.csv`) in `dir`, as (site, path) sorted by site.
pub fn site_step_files(dir: &Path) -> Result<Vec<(usize, PathBuf)>, ResultsError> {
    let mut files: Vec<(usize, PathBuf)> = std::fs::read_dir(dir)
        .map_err(|error| ResultsError::Io {
            path: dir.to_path_buf(),
            error,
        })?
        .filter_map(|e| e.ok())
        .filter_map(|e| {
            let name = e.file_name().to_str()?.to_string();
            let site = name
                .strip_prefix("steps-site")?
                .strip_suffix(".csv")?
                .parse()
                .ok()?;
            Some((site, e.path()))
        })
        .collect();
    files.sort();
    Ok(files)
}

/// What [`merge_site_steps`] did.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct MergeReport {
    pub site_files: usize,
    pub rows: usize,
    /// Files whose last row was cut short by a crash (that row is dropped).
    pub partial_rows_dropped: usize,
}

/// Merge `steps-site<i>.csv` (and the rows already in `steps.csv`) into `steps.csv`,
/// sorted by (step, site), written atomically; then remove the per-site files.
/// Without per-site files it does nothing.
pub fn merge_site_steps(dir: &Path) -> Result<MergeReport, ResultsError> {
    let site_files = site_step_files(dir)?;
    let mut report = MergeReport {
        site_files: site_files.len(),
        rows: 0,
        partial_rows_dropped: 0,
    };
    if site_files.is_empty() {
        return Ok(report);
    }
    let merged_path = dir.join(STEPS_FILE);
    let mut rows: Vec<StepRow> = Vec::new();
    let mut sources: Vec<&Path> = Vec::new();
    if merged_path.exists() {
        sources.push(&merged_path);
    }
    sources.extend(site_files.iter().map(|(_, p)| p.as_path()));
    for src in sources {
        let r = read_rows::<StepRow>(src)?;
        report.partial_rows_dropped += usize::from(r.dropped_partial_row);
        rows.extend(r.rows);
    }
    rows.sort_by_key(|r| (r.step, r.site)); // stable: equal keys keep file order
    let mut w = csv::WriterBuilder::new()
        .has_headers(false)
        .terminator(csv::Terminator::Any(b'\n'))
        .from_writer(header_line::<StepRow>());
    for r in &rows {
        w.serialize(r).map_err(|e| ResultsError::Invalid {
            path: merged_path.clone(),
            reason: e.to_string(),
        })?;
    }
    let bytes = w.into_inner().map_err(|e| ResultsError::Invalid {
        path: merged_path.clone(),
        reason: e.to_string(),
    })?;
    write_atomic(&merged_path, &bytes)?;
    for (_, p) in &site_files {
        std::fs::remove_file(p).map_err(|error| ResultsError::Io {
            path: p.clone(),
            error,
        })?;
    }
    report.rows = rows.len();
    Ok(report)
}

/// The classic `.hgrm` text: `Value Percentile TotalCount 1/(1-Percentile)` rows at 5 ticks
/// per half distance, then mean, standard deviation, max and count.
pub fn hgrm_text(hist: &Histogram<u64>, value_unit_ratio: f64) -> String {
    use std::fmt::Write as _;
    let mut s = String::new();
    let _ = writeln!(
        s,
        "{:>12} {:>14} {:>10} {:>14}\n",
        "Value", "Percentile", "TotalCount", "1/(1-Percentile)"
    );
    let mut total = 0u64;
    if !hist.is_empty() {
        for v in hist.iter_quantiles(5) {
            total += v.count_since_last_iteration();
            let q = v.quantile_iterated_to();
            let value = v.value_iterated_to() as f64 / value_unit_ratio;
            if q < 1.0 {
                let _ = writeln!(
                    s,
                    "{value:12.3} {q:14.12} {total:10} {:14.2}",
                    1.0 / (1.0 - q)
                );
            } else {
                let _ = writeln!(s, "{value:12.3} {q:14.12} {total:10}");
            }
        }
    }
    let (mean, sd, max) = if hist.is_empty() {
        (0.0, 0.0, 0.0)
    } else {
        (
            hist.mean() / value_unit_ratio,
            hist.stdev() / value_unit_ratio,
            hist.max() as f64 / value_unit_ratio,
        )
    };
    let _ = writeln!(s, "#[Mean    = {mean:12.3}, StdDeviation   = {sd:12.3}]");
    let _ = writeln!(
        s,
        "#[Max     = {max:12.3}, Total count    = {:12}]",
        hist.len()
    );
    s
}
