//! `fomoe run SUITE [--out DIR] [--force] [--quiet] [--json] [--only RUN_ID_SUBSTRING] [--list]`
//!
//! Validates the whole suite first (nothing runs if any run is invalid, or if a run that
//! would run needs more memory than this machine has: `harness::sysmodel::run_memory`), then runs it under
//! `DIR/<suite name>/<run id>/`, skipping complete runs (same config hash), with a progress
//! bar for the suite and for the run in progress and one line per run; `--quiet` hides
//! both, `--json` prints one JSON object per finished run instead. summary.csv is rewritten
//! after every run; the report table ends the command. Exit status 1 when a run failed.

use std::path::PathBuf;
use std::sync::Mutex;
use std::time::Duration;

use anyhow::{Context, Result};
use harness::config::RunConfig;
use harness::orchestrate::{run_suite, RunExecutor, RunOutcome, SuiteObserver, SuiteOptions};
use harness::results::{ExpectedRows, RunDir, RunState};
use harness::suite::{Suite, SuiteRun};
use harness::telemetry::RoundRow;
use indicatif::{MultiProgress, ProgressBar, ProgressDrawTarget, ProgressStyle};

use super::report::{human_bytes, table};

#[derive(clap::Args)]
pub struct Args {
    /// Suite file (TOML), e.g. experiments/quick.toml.
    suite: PathBuf,
    /// Results root: runs go to OUT/<suite name>/<run id>/.
    #[arg(long, default_value = "results")]
    out: PathBuf,
    /// Re-run complete runs too.
    #[arg(long)]
    force: bool,
    /// No progress bars and no per-run lines (the final table is still printed).
    #[arg(long)]
    quiet: bool,
    /// One JSON object per finished run on stdout (no bars, no table).
    #[arg(long)]
    json: bool,
    /// Only the runs whose id contains this string.
    #[arg(long, value_name = "RUN_ID_SUBSTRING")]
    only: Option<String>,
    /// Print the expanded runs (id, config hash) and exit without running anything.
    #[arg(long)]
    list: bool,
    #[command(flatten)]
    device: super::DeviceArgs,
}

/// Trains one run with the harness runner and every method of the baselines registry.
struct TrainingExecutor;

impl RunExecutor for TrainingExecutor {
    fn prepare(&self, cfg: &RunConfig) -> Result<ExpectedRows> {
        harness::runner::prepare(cfg)
    }

    fn execute(&self, _run_id: &str, cfg: &RunConfig, dir: &mut RunDir) -> Result<()> {
        harness::runner::execute_in_run_dir(cfg, dir, &baselines::registry(), &Default::default())
    }
}

pub fn run(a: Args) -> Result<()> {
    let mut suite = Suite::load(&a.suite)?;
    // --device / --precision override every run's knobs (a different run: new hash).
    for r in &mut suite.runs {
        a.device.apply(&mut r.config);
        r.hash = r.config.run_hash();
    }
    if let Some(only) = &a.only {
        if !suite.runs.iter().any(|r| r.id.contains(only.as_str())) {
            anyhow::bail!(
                "--only {only:?} matches none of the {} runs of {}",
                suite.runs.len(),
                a.suite.display()
            );
        }
    }
    if a.list {
        for r in suite
            .runs
            .iter()
            .filter(|r| a.only.as_deref().is_none_or(|o| r.id.contains(o)))
        {
            if a.json {
                outln!(
                    "{}",
                    serde_json::json!({ "run_id": r.id, "config_hash": r.hash, "config": r.config })
                );
            } else {
                outln!("{}  {}", r.hash, r.id);
            }
        }
        return Ok(());
    }
    // Every device the suite asks for is usable here, or nothing runs.
    let mut choices: Vec<_> = suite.runs.iter().map(|r| r.config.device).collect();
    choices.sort_by_key(|c| c.name());
    choices.dedup();
    for c in choices {
        super::resolve_device(c).with_context(|| format!("suite {}", a.suite.display()))?;
    }
    check_memory(&suite, &a)?;
    let opts = SuiteOptions {
        force: a.force,
        only: a.only.clone(),
        ..SuiteOptions::new(&a.out)
    };
    let progress = Progress::new(a.quiet || a.json, a.quiet, a.json);
    let result = run_suite(&suite, &opts, &TrainingExecutor, &progress).with_context(|| {
        format!(
            "writing results under {}",
            a.out.join(&suite.name).display()
        )
    })?;
    progress.done();
    if !a.json {
        out!("{}", table(&suite.name, &result.summaries));
        outln!("results: {}", result.suite_dir.display());
    }
    let failed = result.failed();
    if !failed.is_empty() {
        let ids: Vec<&str> = failed.iter().map(|o| o.run_id.as_str()).collect();
        anyhow::bail!(
            "{} of {} runs failed: {} (errors in {}/<run>/manifest.json)",
            failed.len(),
            result.outcomes.len(),
            ids.join(", "),
            result.suite_dir.display()
        );
    }
    Ok(())
}

/// Every run that will run (selected, and not complete unless --force) must fit this
/// machine's memory; the first that does not is refused in one line, before anything is
/// written.
fn check_memory(suite: &Suite, a: &Args) -> Result<()> {
    let suite_dir = a.out.join(&suite.name);
    for r in suite
        .runs
        .iter()
        .filter(|r| a.only.as_deref().is_none_or(|o| r.id.contains(o)))
    {
        if !a.force && harness::results::run_state(&suite_dir.join(&r.id), &r.hash).is_complete() {
            continue;
        }
        harness::runner::check_memory(&r.config)
            .with_context(|| format!("{}: run {}", a.suite.display(), r.id))?;
    }
    Ok(())
}

/// Bars on stderr (hidden when not a terminal, with --quiet or --json), lines on stdout.
struct Progress {
    mp: MultiProgress,
    suite_bar: Mutex<Option<ProgressBar>>,
    run_bar: Mutex<Option<(ProgressBar, f64)>>,
    quiet: bool,
    json: bool,
}

impl Progress {
    fn new(hide_bars: bool, quiet: bool, json: bool) -> Self {
        let target = if hide_bars {
            ProgressDrawTarget::hidden()
        } else {
            ProgressDrawTarget::stderr()
        };
        Progress {
            mp: MultiProgress::with_draw_target(target),
            suite_bar: Mutex::new(None),
            run_bar: Mutex::new(None),
            quiet,
            json,
        }
    }

    fn line(&self, text: String) {
        if self.mp.is_hidden() {
            outln!("{text}");
        } else {
            let _ = self.mp.println(text);
        }
    }

    fn done(&self) {
        if let Some(b) = self.suite_bar.lock().ok().and_then(|mut g| g.take()) {
            b.finish_and_clear();
        }
    }
}

fn style(template: &str) -> ProgressStyle {
    ProgressStyle::with_template(template)
        .unwrap_or_else(|_| ProgressStyle::default_bar())
        .progress_chars("=> ")
}

impl SuiteObserver for Progress {
    fn suite_started(&self, suite: &Suite, selected: usize, to_run: usize) {
        let bar = self.mp.add(ProgressBar::new(to_run as u64));
        bar.set_style(style(
            "{prefix} [{bar:30}] {pos}/{len} runs to do, {elapsed_precise}",
        ));
        bar.set_prefix(format!(
            "{} ({selected} runs, {} complete)",
            suite.name,
            selected - to_run
        ));
        bar.enable_steady_tick(Duration::from_millis(500));
        if let Ok(mut g) = self.suite_bar.lock() {
            *g = Some(bar);
        }
    }

    fn run_started(&self, run: &SuiteRun, previous: &RunState) {
        let bar = self.mp.add(ProgressBar::new(run.config.rounds() as u64));
        bar.set_style(style("  {prefix} [{bar:20}] round {pos}/{len} {msg}"));
        bar.set_prefix(run.id.clone());
        if !matches!(previous, RunState::Missing) {
            bar.set_message(format!("(re-run: {})", previous.describe()));
        }
        // Tokens per inner step over all sites, for tokens/s.
        let tokens_per_step = run
            .config
            .model_config()
            .map(|m| (m.batch_size * m.seq_len * run.config.sites) as f64)
            .unwrap_or(0.0);
        if let Ok(mut g) = self.run_bar.lock() {
            *g = Some((bar, tokens_per_step));
        }
    }

    fn run_progress(&self, _run: &SuiteRun, row: &RoundRow) {
        if let Ok(g) = self.run_bar.lock() {
            if let Some((bar, tokens_per_step)) = g.as_ref() {
                bar.set_position(row.round as u64);
                let rate = if row.clock_s > 0.0 {
                    row.step as f64 * tokens_per_step / row.clock_s
                } else {
                    0.0
                };
                bar.set_message(format!(
                    "{rate:.0} tok/s, {} sent",
                    human_bytes(row.payload_bytes_total)
                ));
            }
        }
    }

    fn run_finished(&self, o: &RunOutcome) {
        if let Some((bar, _)) = self.run_bar.lock().ok().and_then(|mut g| g.take()) {
            bar.finish_and_clear();
        }
        if o.action == "ran" {
            if let Some(b) = self.suite_bar.lock().ok().and_then(|g| g.clone()) {
                b.inc(1);
            }
        }
        if self.json {
            outln!("{}", serde_json::to_string(o).unwrap_or_default());
            return;
        }
        if self.quiet {
            return;
        }
        let s = &o.summary;
        let text = match (o.action, o.status) {
            ("skipped", _) => format!("= {}  complete (skipped)", o.run_id),
            (_, "complete") => format!(
                "✓ {}  {:.1} s  payload {}  loss {}",
                o.run_id,
                o.elapsed_s,
                human_bytes(s.payload_bytes),
                s.final_eval_loss
                    .map(|l| format!("{l:.4}"))
                    .unwrap_or_else(|| "-".into())
            ),
            (_, status) => format!(
                "✗ {}  {status}: {}",
                o.run_id,
                o.error.as_deref().unwrap_or("")
            ),
        };
        self.line(text);
    }
}
