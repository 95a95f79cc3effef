//! Running a suite: lock the suite directory ([`SuiteLock`]: a second `fomoe run` of the
//! same suite into the same directory is refused, naming the holder's pid), then for each
//! run, skip it when complete, else clear its directory, create it, hand it to a
//! [`RunExecutor`] (the training runner), finish it, and rewrite summary.csv. Runs are done
//! one after another, in suite order.
//!
//! The executor is the only part that trains. Its contract, for a run with config `cfg`
//! and an open [`RunDir`] `dir` (manifest already `running`, CSV headers written):
//! - `dir.rounds`: one [`RoundRow`] per domain at every eval of the global model (progress
//!   is read from this file while the run goes, so push rows as evals happen); the final
//!   row's `payload_bytes_total` must count the training payload of every endpoint
//!   (Photon's aggregator included): summary.csv and `fomoe report` take bytes from it;
//! - `dir.steps` (sites in this process) or `steps-site<i>.csv` via
//!   [`crate::results::site_steps_path`] and [`crate::results::CsvSink::create`] (worker
//!   processes): one [`crate::telemetry::StepRow`] per site per inner step;
//! - `dir.routing`: [`crate::telemetry::RoutingRow`]s, e.g. from
//!   [`crate::metrics::probe::routing_rows`] over the dump written with `dir.probe_dump(…)`;
//! - optionally `dir.write_hgrm("step_time", …)`, `dir.set_runtime(backend, threads)`;
//! - return `Err` on failure (the run is recorded `failed` with the error, its telemetry
//!   kept); a panic is caught and recorded the same way.
//!
//! [`RunDir::finish`] then merges per-site step files and writes the final manifest.

use std::panic::{catch_unwind, AssertUnwindSafe};
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::{Duration, Instant};

use serde::Serialize;

use crate::config::RunConfig;
use crate::results::csv_sink::parse_rows;
use crate::results::run_dir::ROUNDS_FILE;
use crate::results::{
    annotate_suite, clear_run_dir, run_state, summarize, summary_csv, write_atomic, ExpectedRows,
    Manifest, ResultsError, RunDir, RunEnv, RunState, RunStatus, SuiteLock, Summary, MANIFEST_FILE,
    SUITE_COPY_FILE, SUMMARY_FILE,
};
use crate::suite::{Suite, SuiteRun};
use crate::telemetry::RoundRow;

/// Trains one run. The real one calls `harness::runner::run_one`; tests use fakes.
pub trait RunExecutor: Sync {
    /// Checks what can be checked before the run's directory is touched (the data files
    /// open) and says what a complete run writes. Called for every run to be done before
    /// the first one starts, so a bad data file stops the suite with nothing written.
    /// Default: nothing to check, no promise about rows.
    fn prepare(&self, _cfg: &RunConfig) -> anyhow::Result<ExpectedRows> {
        Ok(ExpectedRows::default())
    }
    fn execute(&self, run_id: &str, cfg: &RunConfig, dir: &mut RunDir) -> anyhow::Result<()>;
}

/// Hooks for progress display; every method has a no-op default.
pub trait SuiteObserver: Sync {
    /// `selected` runs pass `--only`; `to_run` of them are not complete (or `--force`).
    fn suite_started(&self, _suite: &Suite, _selected: usize, _to_run: usize) {}
    fn run_started(&self, _run: &SuiteRun, _previous: &RunState) {}
    /// A new rounds.csv row of the run in progress.
    fn run_progress(&self, _run: &SuiteRun, _row: &RoundRow) {}
    fn run_finished(&self, _outcome: &RunOutcome) {}
}

/// An observer that shows nothing.
pub struct Silent;
impl SuiteObserver for Silent {}

/// How to run a suite.
#[derive(Clone, Debug)]
pub struct SuiteOptions {
    /// Results go to `out_dir/<suite name>/<run id>/`.
    pub out_dir: PathBuf,
    /// Re-run complete runs too.
    pub force: bool,
    /// Only runs whose id contains this substring.
    pub only: Option<String>,
    /// Compute backend recorded in manifests (`cpu`, `cuda:0`).
    pub backend: String,
    /// How often rounds.csv is read for progress.
    pub poll_interval: Duration,
}

impl SuiteOptions {
    pub fn new(out_dir: impl Into<PathBuf>) -> Self {
        SuiteOptions {
            out_dir: out_dir.into(),
            force: false,
            only: None,
            backend: "cpu".into(),
            poll_interval: Duration::from_millis(250),
        }
    }
}

/// What happened to one selected run.
#[derive(Clone, Debug, Serialize)]
pub struct RunOutcome {
    pub run_id: String,
    /// `skipped` (already complete) or `ran`.
    pub action: &'static str,
    /// The state found before: `new`, `complete`, `partial …`, `failed before`, …
    pub previous: String,
    pub status: &'static str,
    pub error: Option<String>,
    /// Wall-clock seconds this invocation spent on the run (0 when skipped).
    pub elapsed_s: f64,
    pub summary: Summary,
}

/// The result of [`run_suite`].
#[derive(Clone, Debug)]
pub struct SuiteResult {
    pub suite_dir: PathBuf,
    pub outcomes: Vec<RunOutcome>,
    /// summary.csv rows as last written (every run of the suite with results for its
    /// current config, suite order).
    pub summaries: Vec<Summary>,
}

impl SuiteResult {
    pub fn failed(&self) -> Vec<&RunOutcome> {
        self.outcomes
            .iter()
            .filter(|o| o.status != RunStatus::Complete.name())
            .collect()
    }
}

/// Run (or resume) every selected run of `suite`.
pub fn run_suite(
    suite: &Suite,
    opts: &SuiteOptions,
    exec: &dyn RunExecutor,
    obs: &dyn SuiteObserver,
) -> Result<SuiteResult, ResultsError> {
    let suite_dir = opts.out_dir.join(&suite.name);
    std::fs::create_dir_all(&suite_dir).map_err(|error| ResultsError::Io {
        path: suite_dir.clone(),
        error,
    })?;
    // One writer per suite directory, until this function returns (any path).
    let lock = SuiteLock::acquire(&suite_dir)?;
    if let Some(note) = lock.takeover_note() {
        tracing::warn!("{note}");
    }
    write_atomic(&suite_dir.join(SUITE_COPY_FILE), suite.source.as_bytes())?;
    let env = RunEnv::detect(&suite.name, &opts.backend);

    let selected: Vec<usize> = (0..suite.runs.len())
        .filter(|&i| {
            opts.only
                .as_deref()
                .is_none_or(|s| suite.runs[i].id.contains(s))
        })
        .collect();
    let to_run: Vec<usize> = selected
        .iter()
        .copied()
        .filter(|&i| {
            opts.force
                || !run_state(&suite_dir.join(&suite.runs[i].id), &suite.runs[i].hash).is_complete()
        })
        .collect();
    // Before any run starts: every run to be done opens its data (nothing is written yet).
    let mut expected: Vec<Option<ExpectedRows>> = vec![None; suite.runs.len()];
    for &i in &to_run {
        let run = &suite.runs[i];
        expected[i] = Some(
            exec.prepare(&run.config)
                .map_err(|e| ResultsError::Prepare {
                    run_id: run.id.clone(),
                    reason: format!("{e:#}"),
                })?,
        );
    }
    obs.suite_started(suite, selected.len(), to_run.len());

    // Summaries of every run that has results for its current config (for summary.csv).
    let mut cache: Vec<Option<Summary>> = suite
        .runs
        .iter()
        .map(|r| current_summary(&suite_dir.join(&r.id), &r.hash))
        .collect();
    let mut summaries = write_summary(&suite_dir, &cache)?;

    let mut outcomes = Vec::with_capacity(selected.len());
    for &i in &selected {
        let run = &suite.runs[i];
        let dir = suite_dir.join(&run.id);
        let previous = run_state(&dir, &run.hash);
        if previous.is_complete() && !opts.force {
            let summary = summaries
                .iter()
                .find(|s| s.run_id == run.id)
                .cloned()
                .unwrap_or_else(|| {
                    summarize(&dir).unwrap_or_else(|e| Summary::unreadable(&run.id, &e.to_string()))
                });
            let outcome = RunOutcome {
                run_id: run.id.clone(),
                action: "skipped",
                previous: previous.describe(),
                status: RunStatus::Complete.name(),
                error: None,
                elapsed_s: 0.0,
                summary,
            };
            obs.run_finished(&outcome);
            outcomes.push(outcome);
            continue;
        }
        clear_run_dir(&dir)?;
        obs.run_started(run, &previous);
        let started = Instant::now();
        let mut run_dir = RunDir::create(&dir, &run.id, &run.config, &env)?;
        if let Some(e) = expected[i].take() {
            run_dir.expect_rows(e);
        }
        let stop = AtomicBool::new(false);
        let rounds_path = dir.join(ROUNDS_FILE);
        let result = std::thread::scope(|s| {
            let watcher = s.spawn(|| {
                watch_rounds(&rounds_path, &stop, opts.poll_interval, |row| {
                    obs.run_progress(run, row)
                })
            });
            let r = catch_unwind(AssertUnwindSafe(|| {
                exec.execute(&run.id, &run.config, &mut run_dir)
            }));
            stop.store(true, Ordering::Release);
            let _ = watcher.join();
            r
        });
        let result = result.unwrap_or_else(|panic| {
            let msg = panic
                .downcast_ref::<&str>()
                .map(|s| s.to_string())
                .or_else(|| panic.downcast_ref::<String>().cloned())
                .unwrap_or_else(|| "unknown panic".into());
            Err(anyhow::anyhow!("executor panicked: {msg}"))
        });
        let manifest: Manifest = run_dir.finish(&result)?;
        cache[i] =
            Some(summarize(&dir).unwrap_or_else(|e| Summary::unreadable(&run.id, &e.to_string())));
        summaries = write_summary(&suite_dir, &cache)?;
        let summary = summaries
            .iter()
            .find(|s| s.run_id == run.id)
            .cloned()
            .expect("just summarised");
        let outcome = RunOutcome {
            run_id: run.id.clone(),
            action: "ran",
            previous: previous.describe(),
            status: manifest.status.name(),
            error: manifest.error.clone(),
            elapsed_s: started.elapsed().as_secs_f64(),
            summary,
        };
        obs.run_finished(&outcome);
        outcomes.push(outcome);
    }
    drop(lock);
    Ok(SuiteResult {
        suite_dir,
        outcomes,
        summaries,
    })
}

/// The summary of `dir` if its manifest is for the config with `hash`.
fn current_summary(dir: &Path, hash: &str) -> Option<Summary> {
    let head = Manifest::read_head(&dir.join(MANIFEST_FILE)).ok()?;
    if head.config_hash != hash {
        return None;
    }
    Some(summarize(dir).unwrap_or_else(|e| {
        Summary::unreadable(
            dir.file_name().and_then(|n| n.to_str()).unwrap_or("?"),
            &e.to_string(),
        )
    }))
}

/// Annotate the cached rows and replace summary.csv atomically; returns the rows written.
fn write_summary(
    suite_dir: &Path,
    cache: &[Option<Summary>],
) -> Result<Vec<Summary>, ResultsError> {
    let mut rows: Vec<Summary> = cache.iter().flatten().cloned().collect();
    annotate_suite(&mut rows);
    write_atomic(&suite_dir.join(SUMMARY_FILE), &summary_csv(&rows))?;
    Ok(rows)
}

/// Deliver rows appended to rounds.csv until `stop`, then once more.
fn watch_rounds(
    path: &Path,
    stop: &AtomicBool,
    every: Duration,
    mut on_row: impl FnMut(&RoundRow),
) {
    let mut delivered = 0usize;
    let mut poll = || {
        if let Ok(bytes) = std::fs::read(path) {
            if let Ok(rows) = parse_rows::<RoundRow>(path, &bytes) {
                for row in rows.rows.iter().skip(delivered) {
                    on_row(row);
                }
                delivered = delivered.max(rows.rows.len());
            }
        }
    };
    let tick = Duration::from_millis(10).min(every);
    let mut last = Instant::now();
    while !stop.load(Ordering::Acquire) {
        std::thread::sleep(tick);
        if last.elapsed() >= every {
            poll();
            last = Instant::now();
        }
    }
    poll();
}

#[cfg(test)]
mod tests;
