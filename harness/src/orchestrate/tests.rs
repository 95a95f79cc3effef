use std::collections::BTreeSet;
use std::path::Path;
use std::sync::atomic::AtomicUsize;
use std::sync::Mutex;

use super::*;
use crate::config::Method;
use crate::results::{read_rows, site_steps_path, CsvSink, MANIFEST_FILE};
use crate::telemetry::StepRow;

/// Writes plausible telemetry without training: every site's steps (site 0 through the run
/// directory, the others as worker files), one eval per round on two domains, and a payload
/// of 1000 bytes per site per synchronisation (every step for DDP, every H steps otherwise),
/// so DDP sends exactly H times the bytes of a round-based method.
#[derive(Default)]
struct FakeExecutor {
    calls: Mutex<Vec<String>>,
    fail: BTreeSet<String>,
    panic_on: BTreeSet<String>,
}

impl RunExecutor for FakeExecutor {
    fn execute(&self, run_id: &str, cfg: &RunConfig, dir: &mut RunDir) -> anyhow::Result<()> {
        self.calls.lock().unwrap().push(run_id.to_string());
        if self.panic_on.contains(run_id) {
            panic!("boom");
        }
        let h = cfg.inner_steps;
        let mut workers: Vec<CsvSink<StepRow>> = (1..cfg.sites)
            .map(|s| CsvSink::create(site_steps_path(dir.path(), s)).unwrap())
            .collect();
        let mut total = 0u64;
        for step in 0..cfg.steps {
            let sync = cfg.method == Method::Ddp || (step + 1) % h == 0;
            for site in 0..cfg.sites {
                let row = StepRow {
                    site,
                    step,
                    round: step / h,
                    loss: 5.0 - 0.1 * step as f64,
                    tokens: 512,
                    clock_s: 0.01 * (step + 1) as f64,
                    payload_sent: if sync { 1000 } else { 0 },
                    ..Default::default()
                };
                if site == 0 {
                    dir.steps.push(&row)?;
                } else {
                    workers[site - 1].push(&row)?;
                }
            }
            if sync {
                total += 1000 * cfg.sites as u64;
            }
            if (step + 1) % h == 0 {
                let round = (step + 1) / h;
                for d in 0..2 {
                    dir.rounds.push(&RoundRow {
                        round,
                        step: step + 1,
                        domain: format!("d{d}"),
                        eval_loss: 5.0 - 0.5 * round as f64 + 0.1 * d as f64,
                        payload_bytes_total: total,
                        clock_s: 0.01 * (step + 1) as f64,
                        ..Default::default()
                    })?;
                }
                if self.fail.contains(run_id) {
                    anyhow::bail!("site 1 lost its link at round {round}");
                }
            }
        }
        Ok(())
    }
}

const SUITE: &str = r#"
[base]
preset = "tiny"
sites = 2
steps = 8
inner_steps = 4
[grid]
method = ["ddp", "diloco", "fomoe"]
fomoe.rho = [1, 2]
"#;

fn suite(text: &str) -> Suite {
    Suite::parse(text, Path::new("resume.toml")).unwrap()
}

fn calls(e: &FakeExecutor) -> Vec<String> {
    std::mem::take(&mut *e.calls.lock().unwrap())
}

#[derive(Default)]
struct Counting {
    progress: AtomicUsize,
    finished: AtomicUsize,
}

impl SuiteObserver for Counting {
    fn run_progress(&self, _run: &SuiteRun, _row: &RoundRow) {
        self.progress.fetch_add(1, Ordering::Relaxed);
    }
    fn run_finished(&self, _o: &RunOutcome) {
        self.finished.fetch_add(1, Ordering::Relaxed);
    }
}

fn set_status(dir: &Path, status: &str) {
    let p = dir.join(MANIFEST_FILE);
    let mut v: serde_json::Value = serde_json::from_slice(&std::fs::read(&p).unwrap()).unwrap();
    v["status"] = serde_json::json!(status);
    std::fs::write(&p, serde_json::to_vec(&v).unwrap()).unwrap();
}

#[test]
fn runs_resumes_and_skips_complete_runs() {
    let out = tempfile::tempdir().unwrap();
    let s = suite(SUITE);
    let ids: Vec<&str> = s.runs.iter().map(|r| r.id.as_str()).collect();
    assert_eq!(
        ids,
        vec!["ddp-s0", "diloco-s0", "fomoe-rho1-s0", "fomoe-rho2-s0"]
    );
    let mut opts = SuiteOptions::new(out.path());
    opts.poll_interval = Duration::from_millis(1);
    let exec = FakeExecutor::default();
    let obs = Counting::default();

    // First time: everything runs.
    let r = run_suite(&s, &opts, &exec, &obs).unwrap();
    assert_eq!(calls(&exec), ids);
    assert!(r.failed().is_empty());
    assert!(r
        .outcomes
        .iter()
        .all(|o| o.action == "ran" && o.previous == "new"));
    // Progress saw every rounds.csv row: 2 rounds × 2 domains per run.
    assert_eq!(obs.progress.load(Ordering::Relaxed), 4 * 4);
    assert_eq!(obs.finished.load(Ordering::Relaxed), 4);
    let sd = out.path().join("resume");
    assert_eq!(r.suite_dir, sd);
    assert_eq!(
        std::fs::read_to_string(sd.join("suite.toml")).unwrap(),
        SUITE
    );
    // Steps of the worker files are merged into steps.csv.
    let steps = read_rows::<StepRow>(&sd.join("fomoe-rho1-s0").join("steps.csv"))
        .unwrap()
        .rows;
    assert_eq!(steps.len(), 2 * 8);
    assert!(!site_steps_path(&sd.join("fomoe-rho1-s0"), 1).exists());
    // summary.csv: one row per run; DDP synchronises every step, the others every H = 4.
    let csv = std::fs::read_to_string(sd.join("summary.csv")).unwrap();
    assert_eq!(csv.lines().count(), 1 + 4);
    let d = r
        .summaries
        .iter()
        .find(|x| x.run_id == "diloco-s0")
        .unwrap();
    assert_eq!(
        (d.payload_bytes, d.bytes_reduction_vs_ddp, d.ddp_ref_exact),
        (4000, Some(4.0), Some(true))
    );
    assert!((d.final_eval_loss.unwrap() - 4.05).abs() < 1e-12);

    // Second time: nothing runs.
    let r = run_suite(&s, &opts, &exec, &Silent).unwrap();
    assert!(calls(&exec).is_empty());
    assert!(r
        .outcomes
        .iter()
        .all(|o| o.action == "skipped" && o.status == "complete"));
    assert_eq!(r.summaries.len(), 4);

    // A run left partial (killed: manifest `running`, a worker file cut mid-row) and a
    // failed run are re-done from a clean directory; the complete ones are skipped.
    let partial = sd.join("diloco-s0");
    set_status(&partial, "running");
    std::fs::write(site_steps_path(&partial, 1), b"site,step\n1,0,0,4.").unwrap();
    set_status(&sd.join("fomoe-rho2-s0"), "failed");
    let r = run_suite(&s, &opts, &exec, &Silent).unwrap();
    assert_eq!(calls(&exec), vec!["diloco-s0", "fomoe-rho2-s0"]);
    let prev: Vec<&str> = r.outcomes.iter().map(|o| o.previous.as_str()).collect();
    assert_eq!(
        prev,
        vec![
            "complete",
            "partial (manifest says running)",
            "complete",
            "failed before"
        ]
    );
    assert!(r.outcomes.iter().all(|o| o.status == "complete"));
    assert_eq!(
        read_rows::<StepRow>(&partial.join("steps.csv"))
            .unwrap()
            .rows
            .len(),
        16,
        "no stale rows"
    );

    // --only, then --force.
    opts.only = Some("fomoe".into());
    opts.force = true;
    run_suite(&s, &opts, &exec, &Silent).unwrap();
    assert_eq!(calls(&exec), vec!["fomoe-rho1-s0", "fomoe-rho2-s0"]);
    opts.only = None;
    run_suite(&s, &opts, &exec, &Silent).unwrap();
    assert_eq!(calls(&exec), ids);

    // A changed config (another hash) is re-run; summary.csv drops results of old configs.
    opts.force = false;
    let changed = suite(&SUITE.replace("steps = 8", "steps = 12"));
    let r = run_suite(&changed, &opts, &exec, &Silent).unwrap();
    assert_eq!(calls(&exec), ids);
    assert!(r
        .outcomes
        .iter()
        .all(|o| o.previous.starts_with("config changed")));
}

#[test]
fn failures_and_panics_are_recorded_and_re_run() {
    let out = tempfile::tempdir().unwrap();
    let s = suite(SUITE);
    let mut opts = SuiteOptions::new(out.path());
    opts.poll_interval = Duration::from_millis(1);
    let exec = FakeExecutor {
        fail: ["diloco-s0".to_string()].into(),
        panic_on: ["fomoe-rho1-s0".to_string()].into(),
        ..Default::default()
    };
    let r = run_suite(&s, &opts, &exec, &Silent).unwrap();
    let failed: Vec<(&str, Option<&str>)> = r
        .failed()
        .iter()
        .map(|o| (o.run_id.as_str(), o.error.as_deref()))
        .collect();
    assert_eq!(
        failed,
        vec![
            ("diloco-s0", Some("site 1 lost its link at round 1")),
            ("fomoe-rho1-s0", Some("executor panicked: boom")),
        ]
    );
    // The failed run keeps the telemetry written before the failure, and says so in the summary.
    let d = r
        .summaries
        .iter()
        .find(|x| x.run_id == "diloco-s0")
        .unwrap();
    assert_eq!(
        (d.status.as_str(), d.final_round, d.bytes_reduction_vs_ddp),
        ("failed", Some(1), None)
    );
    let m = Manifest::read(&r.suite_dir.join("diloco-s0").join(MANIFEST_FILE)).unwrap();
    assert_eq!(m.status, RunStatus::Failed);

    // Next time only the two failed runs run again.
    let fixed = FakeExecutor::default();
    let r = run_suite(&s, &opts, &fixed, &Silent).unwrap();
    assert_eq!(calls(&fixed), vec!["diloco-s0", "fomoe-rho1-s0"]);
    assert!(r.failed().is_empty());
}

/// Blocks its first run until released, so a second invocation can meet the lock.
struct Blocking {
    started: std::sync::mpsc::SyncSender<()>,
    release: Mutex<std::sync::mpsc::Receiver<()>>,
}

impl RunExecutor for Blocking {
    fn execute(&self, run_id: &str, cfg: &RunConfig, dir: &mut RunDir) -> anyhow::Result<()> {
        let _ = self.started.send(());
        let _ = self.release.lock().unwrap().recv();
        FakeExecutor::default().execute(run_id, cfg, dir)
    }
}

/// Defect 1 of issue 10: two `fomoe run` of one suite into one directory used to both run
/// and corrupt each other. The second is refused in one line naming the holder's pid, and
/// the first finishes untouched; afterwards the directory can be used again.
#[test]
fn a_second_run_of_the_same_suite_directory_is_refused_while_the_first_holds_the_lock() {
    let out = tempfile::tempdir().unwrap();
    let s = suite(SUITE);
    let opts = SuiteOptions::new(out.path());
    let (started_tx, started_rx) = std::sync::mpsc::sync_channel(8);
    let (release_tx, release_rx) = std::sync::mpsc::channel();
    let first = Blocking {
        started: started_tx,
        release: Mutex::new(release_rx),
    };
    std::thread::scope(|scope| {
        let h = scope.spawn(|| run_suite(&s, &opts, &first, &Silent));
        started_rx.recv().unwrap();
        let lock_file = out.path().join("resume").join(crate::results::LOCK_FILE);
        assert_eq!(
            std::fs::read_to_string(&lock_file).unwrap().trim(),
            std::process::id().to_string()
        );
        let second = FakeExecutor::default();
        let e = run_suite(&s, &opts, &second, &Silent).unwrap_err();
        let msg = e.to_string();
        assert!(matches!(e, ResultsError::Locked { .. }), "{msg}");
        assert!(
            msg.contains(&format!("another fomoe run (pid {})", std::process::id())),
            "{msg}"
        );
        assert!(!msg.contains('\n'));
        assert!(
            calls(&second).is_empty(),
            "the second invocation ran nothing"
        );
        for _ in 0..s.runs.len() {
            release_tx.send(()).unwrap();
        }
        let r = h.join().unwrap().unwrap();
        assert!(r.failed().is_empty());
        assert_eq!(std::fs::read_to_string(&lock_file).unwrap(), "", "released");
    });
    // Free again: a third invocation skips every (complete) run.
    let third = FakeExecutor::default();
    run_suite(&s, &opts, &third, &Silent).unwrap();
    assert!(calls(&third).is_empty());
}

/// A lock file left by a process that died without releasing it (killed) is taken over,
/// and the takeover says whose lock it was.
#[test]
fn a_stale_lock_of_a_dead_process_is_taken_over_with_a_note() {
    let out = tempfile::tempdir().unwrap();
    let dir = out.path().join("resume");
    std::fs::create_dir_all(&dir).unwrap();
    let mut child = std::process::Command::new("true").spawn().unwrap();
    let dead = child.id();
    child.wait().unwrap();
    std::fs::write(dir.join(crate::results::LOCK_FILE), format!("{dead}\n")).unwrap();
    let lock = SuiteLock::acquire(&dir).unwrap();
    let stale = lock.stale_holder().unwrap();
    assert_eq!(stale.pid, dead);
    assert!(!stale.running);
    let note = lock.takeover_note().unwrap();
    assert!(
        note.contains(&format!(
            "took over the lock of pid {dead}, which is no longer running"
        )),
        "{note}"
    );
    drop(lock);
    // A clean release leaves no pid behind: the next taker notes nothing.
    assert!(SuiteLock::acquire(&dir).unwrap().stale_holder().is_none());
    // And the suite runs over such a directory.
    std::fs::write(dir.join(crate::results::LOCK_FILE), format!("{dead}\n")).unwrap();
    let exec = FakeExecutor::default();
    let r = run_suite(
        &suite(SUITE),
        &SuiteOptions::new(out.path()),
        &exec,
        &Silent,
    )
    .unwrap();
    assert!(r.failed().is_empty());
}

/// Defect 2 of issue 10: cutting a finished run's file to half its size left it
/// `complete`, with wrong numbers in the report. Now every result file the manifest
/// records makes the run `incomplete` when cut (no numbers in summary.csv), and the next
/// `fomoe run` re-runs exactly that run.
#[test]
fn a_cut_result_file_makes_the_run_incomplete_and_it_is_re_run() {
    let out = tempfile::tempdir().unwrap();
    let s = suite(SUITE);
    let opts = SuiteOptions::new(out.path());
    let exec = FakeExecutor::default();
    run_suite(&s, &opts, &exec, &Silent).unwrap();
    calls(&exec);
    let run = &s.runs[1];
    let dir = out.path().join("resume").join(&run.id);
    std::fs::write(dir.join("sites.json"), b"{\"a\": 1}\n").unwrap(); // written after: not recorded
    let m = Manifest::read(&dir.join(MANIFEST_FILE)).unwrap();
    let recorded: Vec<String> = m.files.as_ref().unwrap().keys().cloned().collect();
    assert_eq!(recorded, ["rounds.csv", "routing.csv", "steps.csv"]);
    assert_eq!(m.files.as_ref().unwrap()["steps.csv"].rows, Some(16));
    for name in &recorded {
        let path = dir.join(name);
        let whole = std::fs::read(&path).unwrap();
        std::fs::write(&path, &whole[..whole.len() / 2]).unwrap();
        let state = run_state(&dir, &run.hash);
        let RunState::Incomplete { problems } = &state else {
            panic!("{name}: {state:?}");
        };
        assert!(
            problems[0].starts_with(&format!("{name} holds ")),
            "{problems:?}"
        );
        let summary = summarize(&dir).unwrap();
        assert_eq!(summary.status, "incomplete", "{name}");
        assert!(!summary.has_numbers());
        assert_eq!((summary.payload_bytes, summary.final_eval_loss), (0, None));
        // Same size, other bytes: changed.
        let mut flipped = whole.clone();
        let last = flipped.len() - 2;
        flipped[last] ^= 1;
        std::fs::write(&path, &flipped).unwrap();
        assert!(
            matches!(run_state(&dir, &run.hash), RunState::Incomplete { problems } if problems[0].contains("changed")),
            "{name}"
        );
        std::fs::remove_file(&path).unwrap();
        assert!(
            matches!(run_state(&dir, &run.hash), RunState::Incomplete { problems } if problems[0] == format!("{name} is missing")),
            "{name}"
        );
        std::fs::write(&path, &whole).unwrap();
        assert_eq!(run_state(&dir, &run.hash), RunState::Complete, "{name}");
    }
    // The issue's case: rounds.csv cut in half, then `fomoe run` again.
    let rounds = dir.join("rounds.csv");
    let whole = std::fs::read(&rounds).unwrap();
    std::fs::write(&rounds, &whole[..whole.len() / 2]).unwrap();
    let r = run_suite(&s, &opts, &exec, &Silent).unwrap();
    assert_eq!(calls(&exec), vec![run.id.clone()]);
    let o = r.outcomes.iter().find(|o| o.run_id == run.id).unwrap();
    assert!(
        o.previous.starts_with("incomplete (rounds.csv holds"),
        "{}",
        o.previous
    );
    assert_eq!(std::fs::read(&rounds).unwrap(), whole);
    let d = r.summaries.iter().find(|x| x.run_id == run.id).unwrap();
    assert_eq!((d.status.as_str(), d.payload_bytes), ("complete", 4000));
}

/// Writes only the first half of its steps, like a run whose directory another process
/// cleared half-way; promises the rows a complete run of FakeExecutor writes.
struct HalfSteps;

impl RunExecutor for HalfSteps {
    fn prepare(&self, cfg: &RunConfig) -> anyhow::Result<ExpectedRows> {
        Ok(ExpectedRows {
            routing: None,
            ..ExpectedRows::for_training(cfg, 2, 1)
        })
    }
    fn execute(&self, run_id: &str, cfg: &RunConfig, dir: &mut RunDir) -> anyhow::Result<()> {
        let half = RunConfig {
            steps: cfg.steps / 2,
            ..cfg.clone()
        };
        FakeExecutor::default().execute(run_id, &half, dir)
    }
}

/// A run that ends without an error but holds fewer rows than its config promises is
/// `failed`, naming the file and both counts (on main it was `complete`).
#[test]
fn a_run_holding_fewer_rows_than_its_config_promises_is_failed() {
    let out = tempfile::tempdir().unwrap();
    let s = suite(SUITE);
    let r = run_suite(&s, &SuiteOptions::new(out.path()), &HalfSteps, &Silent).unwrap();
    assert_eq!(r.failed().len(), s.runs.len());
    let e = r.outcomes[0].error.as_deref().unwrap();
    assert_eq!(
        e,
        "steps.csv holds 8 rows, a complete run holds 16 (steps × sites); \
         rounds.csv holds 2 rows, a complete run holds 4 (evals × domains)"
    );
    // The same executor writing everything passes the same check.
    struct Whole;
    impl RunExecutor for Whole {
        fn prepare(&self, cfg: &RunConfig) -> anyhow::Result<ExpectedRows> {
            HalfSteps.prepare(cfg)
        }
        fn execute(&self, id: &str, cfg: &RunConfig, dir: &mut RunDir) -> anyhow::Result<()> {
            FakeExecutor::default().execute(id, cfg, dir)
        }
    }
    let r = run_suite(&s, &SuiteOptions::new(out.path()), &Whole, &Silent).unwrap();
    assert!(r.failed().is_empty(), "{:?}", r.failed());
}

/// A preparation error (e.g. a data file that does not open) stops the suite before any
/// run directory is created.
#[test]
fn a_run_that_cannot_be_prepared_stops_the_suite_before_anything_is_written() {
    struct NoData;
    impl RunExecutor for NoData {
        fn prepare(&self, cfg: &RunConfig) -> anyhow::Result<ExpectedRows> {
            if cfg.method == Method::Fomoe {
                anyhow::bail!("data: /nope.bin: No such file or directory");
            }
            Ok(ExpectedRows::default())
        }
        fn execute(&self, _: &str, _: &RunConfig, _: &mut RunDir) -> anyhow::Result<()> {
            panic!("nothing may run");
        }
    }
    let out = tempfile::tempdir().unwrap();
    let e = run_suite(
        &suite(SUITE),
        &SuiteOptions::new(out.path()),
        &NoData,
        &Silent,
    )
    .unwrap_err()
    .to_string();
    assert_eq!(
        e,
        "run fomoe-rho1-s0: data: /nope.bin: No such file or directory"
    );
    let entries: Vec<String> = std::fs::read_dir(out.path().join("resume"))
        .unwrap()
        .map(|e| e.unwrap().file_name().to_string_lossy().into_owned())
        .collect();
    assert!(
        entries.iter().all(|n| n == ".lock" || n == "suite.toml"),
        "{entries:?}"
    );
}
