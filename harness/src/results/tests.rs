use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

use super::atomic::{stale_temporaries, temporaries_in};
use super::csv_sink::header_line;
use super::quality::Budget;
use super::run_dir::{hgrm_text, ROUNDS_FILE, STEPS_FILE};
use super::summary::varying_knobs;
use super::*;
use crate::config::{Method, RunConfig};
use crate::telemetry::{RoundRow, RoutingRow, StepRow};

fn step(site: usize, step: usize) -> StepRow {
    StepRow {
        site,
        step,
        tokens: 100,
        loss: 1.0 + step as f64,
        clock_s: step as f64,
        payload_sent: 10,
        ..Default::default()
    }
}

fn env() -> RunEnv {
    RunEnv {
        suite: "t".into(),
        backend: "cpu".into(),
        cores: 2,
        git_commit: "abc".into(),
        host: "h".into(),
    }
}

#[test]
fn csv_sink_writes_header_at_creation_and_flushes_every_row() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("steps.csv");
    let mut sink = CsvSink::<StepRow>::create(&path).unwrap();
    let text = std::fs::read_to_string(&path).unwrap();
    assert!(
        text.starts_with("site,step,round,loss,ce,balance,lr,grad_norm,tokens,"),
        "{text}"
    );
    assert!(text.ends_with("skip_rate,skip_by_layer\n"));
    assert_eq!(read_rows::<StepRow>(&path).unwrap().rows.len(), 0);
    // Read back while the writer is still open, after every row.
    for i in 0..3 {
        sink.push(&step(0, i)).unwrap();
        let rows = read_rows::<StepRow>(&path).unwrap();
        assert_eq!(rows.rows.len(), i + 1);
        assert_eq!(rows.rows[i], step(0, i));
        assert!(!rows.dropped_partial_row);
    }
    assert_eq!(sink.rows(), 3);
    drop(sink);
    // Appending continues the file.
    let mut sink = CsvSink::<StepRow>::append(&path).unwrap();
    assert_eq!(sink.rows(), 3);
    sink.push(&step(1, 3)).unwrap();
    assert_eq!(read_rows::<StepRow>(&path).unwrap().rows.len(), 4);
    assert!(
        CsvSink::<RoundRow>::append(&path).is_err(),
        "header of another row type"
    );

    // Option columns round-trip as empty cells.
    let rpath = dir.path().join("routing.csv");
    let mut r = CsvSink::<RoutingRow>::create(&rpath).unwrap();
    let row = RoutingRow {
        round: 2,
        layer: 1,
        saturation_topk: Some(0.5),
        cv: 0.25,
        ..Default::default()
    };
    r.push(&row).unwrap();
    assert_eq!(read_rows::<RoutingRow>(&rpath).unwrap().rows, vec![row]);
}

#[test]
fn a_row_cut_short_is_dropped_and_a_bad_row_is_an_error() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("steps.csv");
    let mut sink = CsvSink::<StepRow>::create(&path).unwrap();
    sink.push(&step(0, 0)).unwrap();
    sink.push(&step(0, 1)).unwrap();
    drop(sink);
    let full = std::fs::read(&path).unwrap();
    // A crash in the middle of the second row.
    std::fs::write(&path, &full[..full.len() - 7]).unwrap();
    let r = read_rows::<StepRow>(&path).unwrap();
    assert_eq!((r.rows.len(), r.dropped_partial_row), (1, true));
    // A complete row that does not parse names its line.
    let mut bad = header_line::<StepRow>();
    bad.extend_from_slice(b"0,0,0,x\n");
    std::fs::write(&path, &bad).unwrap();
    let e = read_rows::<StepRow>(&path).unwrap_err().to_string();
    assert!(e.contains("steps.csv: line 2:"), "{e}");
}

#[test]
fn atomic_write_replaces_whole_files_and_cleans_stale_temporaries() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("summary.csv");
    write_atomic(&path, b"old\n").unwrap();
    write_atomic(&path, b"new\n").unwrap();
    assert_eq!(std::fs::read(&path).unwrap(), b"new\n");
    assert!(temporaries_in(dir.path()).is_empty());
    // A temporary left by a process that no longer exists (pid 0 is never a process here;
    // use a pid far above pid_max) is removed by the next write; ours are kept.
    let stale = dir.path().join(".summary.csv.999999999-0.tmp");
    std::fs::write(&stale, b"half").unwrap();
    assert_eq!(
        stale_temporaries(dir.path(), "summary.csv"),
        vec![stale.clone()]
    );
    write_atomic(&path, b"newer\n").unwrap();
    assert!(!stale.exists());
    assert!(temporaries_in(dir.path()).is_empty());
}

/// The version written by the child: `lines` identical lines naming the version.
fn version_text(v: u64, lines: usize) -> String {
    format!("version {v:010}\n").repeat(lines)
}

const CHILD_ENV: &str = "FOMOE_TEST_ATOMIC_CHILD";
const CHILD_LINES: usize = 40_000; // 800 KB per version: a kill lands mid-write often

/// Not a test on its own: the body of the child process of
/// `atomic_write_leaves_old_or_new_file_when_killed` (returns at once otherwise).
#[test]
fn atomic_child_writer() {
    let Ok(path) = std::env::var(CHILD_ENV) else {
        return;
    };
    let path = PathBuf::from(path);
    for v in 1.. {
        write_atomic(&path, version_text(v, CHILD_LINES).as_bytes()).unwrap();
    }
}

struct KillOnDrop(std::process::Child);

impl Drop for KillOnDrop {
    fn drop(&mut self) {
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}

fn check_whole_version(path: &Path) -> u64 {
    let text = std::fs::read_to_string(path).unwrap();
    let first = text.lines().next().expect("not empty");
    let v: u64 = first.strip_prefix("version ").unwrap().parse().unwrap();
    assert_eq!(text, version_text(v, CHILD_LINES), "half-written file");
    v
}

#[test]
fn atomic_write_leaves_old_or_new_file_when_killed() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("manifest.json");
    for delay_ms in [5u64, 20, 45] {
        write_atomic(&path, version_text(0, CHILD_LINES).as_bytes()).unwrap();
        let child = std::process::Command::new(std::env::current_exe().unwrap())
            .args([
                "--exact",
                "results::tests::atomic_child_writer",
                "--test-threads=1",
                "--nocapture",
            ])
            .env(CHILD_ENV, &path)
            .stdout(std::process::Stdio::null())
            .stderr(std::process::Stdio::null())
            .spawn()
            .unwrap();
        // Killed on every exit path, also when an assertion below fails.
        let mut child = KillOnDrop(child);
        // Wait until the child has replaced the file at least once (bounded), then kill it.
        let t0 = Instant::now();
        while check_whole_version(&path) == 0 && t0.elapsed() < Duration::from_secs(10) {
            std::thread::sleep(Duration::from_millis(1));
        }
        std::thread::sleep(Duration::from_millis(delay_ms));
        child.0.kill().unwrap();
        child.0.wait().unwrap();
        let v = check_whole_version(&path);
        assert!(v >= 1, "the child never wrote");
        // Whatever it left behind is stale now and goes with the next write.
        write_atomic(&path, b"{}\n").unwrap();
        assert!(
            temporaries_in(dir.path()).is_empty(),
            "{:?}",
            temporaries_in(dir.path())
        );
    }
}

fn cfg(method: Method) -> RunConfig {
    RunConfig {
        method,
        sites: 2,
        steps: 8,
        inner_steps: 4,
        ..Default::default()
    }
}

#[test]
fn run_dir_lifecycle_merges_site_steps_and_writes_the_manifest() {
    let root = tempfile::tempdir().unwrap();
    let path = root.path().join("diloco-s0");
    let c = cfg(Method::Diloco);
    assert_eq!(run_state(&path, &c.run_hash()), RunState::Missing);
    let mut rd = RunDir::create(&path, "diloco-s0", &c, &env()).unwrap();
    assert_eq!(run_state(&path, &c.run_hash()), RunState::Partial);
    let m = Manifest::read(&path.join(MANIFEST_FILE)).unwrap();
    assert_eq!(m.status, RunStatus::Running);
    assert_eq!(
        (
            m.config_hash.as_str(),
            m.tch_version.as_str(),
            m.libtorch_version.as_str()
        ),
        (c.run_hash().as_str(), "0.26", "2.13.0")
    );
    assert_eq!(
        (m.network_backend.as_str(), m.threads, m.git_commit.as_str()),
        ("sim", 2, "abc")
    );
    assert!(
        RunDir::create(&path, "diloco-s0", &c, &env()).is_err(),
        "not empty"
    );

    // Site 0 writes through the run dir, sites 1 and 2 as workers; site 2 crashed mid-row.
    rd.steps.push(&step(0, 1)).unwrap();
    rd.steps.push(&step(0, 0)).unwrap();
    let mut s1 = CsvSink::create(site_steps_path(&path, 1)).unwrap();
    for i in [1, 0] {
        s1.push(&step(1, i)).unwrap();
    }
    let mut s2 = CsvSink::create(site_steps_path(&path, 2)).unwrap();
    s2.push(&step(2, 0)).unwrap();
    drop((s1, s2));
    let mut f = std::fs::OpenOptions::new()
        .append(true)
        .open(site_steps_path(&path, 2))
        .unwrap();
    std::io::Write::write_all(&mut f, b"2,1,0,1.5").unwrap();
    drop(f);
    rd.set_runtime("cpu", 7).unwrap();
    let m = rd.finish(&Ok(())).unwrap();
    assert_eq!(
        (m.status, m.error.as_deref(), m.threads),
        (RunStatus::Complete, None, 7)
    );
    assert!(m.ended_at.is_some() && m.duration_s.is_some());
    assert_eq!(Manifest::read(&path.join(MANIFEST_FILE)).unwrap(), m);
    let rows = read_rows::<StepRow>(&path.join(STEPS_FILE)).unwrap().rows;
    let keys: Vec<(usize, usize)> = rows.iter().map(|r| (r.step, r.site)).collect();
    assert_eq!(keys, vec![(0, 0), (0, 1), (0, 2), (1, 0), (1, 1)]);
    assert!(!site_steps_path(&path, 1).exists() && !site_steps_path(&path, 2).exists());
    assert!(temporaries_in(&path).is_empty());
    assert_eq!(run_state(&path, &c.run_hash()), RunState::Complete);
    assert_eq!(
        run_state(&path, "other"),
        RunState::OtherConfig {
            found_hash: c.run_hash()
        }
    );

    // A failed run keeps its telemetry and records the error chain on one line.
    clear_run_dir(&path).unwrap();
    let rd = RunDir::create(&path, "diloco-s0", &c, &env()).unwrap();
    let err: anyhow::Result<()> = Err(anyhow::anyhow!("link down\nat round 3").context("site 1"));
    let m = rd.finish(&err).unwrap();
    assert_eq!(m.status, RunStatus::Failed);
    assert_eq!(m.error.as_deref(), Some("site 1: link down at round 3"));
    assert_eq!(run_state(&path, &c.run_hash()), RunState::Failed);
}

#[test]
fn run_state_of_foreign_or_broken_directories() {
    let root = tempfile::tempdir().unwrap();
    let d = root.path().join("x");
    std::fs::create_dir(&d).unwrap();
    assert_eq!(run_state(&d, "h"), RunState::Missing);
    std::fs::write(d.join("notes.txt"), b"mine").unwrap();
    assert!(matches!(run_state(&d, "h"), RunState::Unreadable { .. }));
    let e = clear_run_dir(&d).unwrap_err().to_string();
    assert!(e.contains("not empty and has no manifest.json"), "{e}");
    assert!(
        d.join("notes.txt").exists(),
        "never deletes what it did not write"
    );
    std::fs::write(d.join(MANIFEST_FILE), b"{\"status\": \"running\"").unwrap();
    assert!(matches!(run_state(&d, "h"), RunState::Unreadable { .. }));
    clear_run_dir(&d).unwrap();
    assert!(!d.exists());
}

/// A run directory with hand-made telemetry.
fn fake_run(
    root: &Path,
    id: &str,
    c: &RunConfig,
    rounds: &[(usize, [f64; 2], u64)],
    status_ok: bool,
) -> PathBuf {
    let path = root.join(id);
    let mut rd = RunDir::create(&path, id, c, &env()).unwrap();
    for s in 0..c.sites {
        for i in 0..c.steps {
            rd.steps
                .push(&StepRow {
                    site: s,
                    step: i,
                    tokens: 64,
                    clock_s: 0.5 * (i + 1) as f64,
                    payload_sent: 3,
                    ..Default::default()
                })
                .unwrap();
        }
    }
    for &(round, losses, bytes) in rounds {
        for (d, loss) in losses.iter().enumerate() {
            rd.rounds
                .push(&RoundRow {
                    round,
                    step: round * c.inner_steps,
                    domain: format!("d{d}"),
                    eval_loss: *loss,
                    payload_bytes_total: bytes,
                    framing_bytes_total: bytes / 10,
                    clock_s: round as f64 * 2.0,
                    ..Default::default()
                })
                .unwrap();
        }
    }
    let outcome = if status_ok {
        Ok(())
    } else {
        Err(anyhow::anyhow!("boom"))
    };
    rd.finish(&outcome).unwrap();
    path
}

#[test]
fn summary_of_a_run_from_its_files() {
    let root = tempfile::tempdir().unwrap();
    let mut c = cfg(Method::Diloco);
    c.target_loss = Some(3.0);
    let p = fake_run(
        root.path(),
        "diloco-s0",
        &c,
        &[(1, [4.0, 3.5], 100), (2, [3.0, 2.8], 200)],
        true,
    );
    let s = summarize(&p).unwrap();
    // 2 sites × 8 steps × 64 tokens; clock: max of steps (4.0) and rounds (4.0).
    assert_eq!(s.tokens_total, 1024);
    assert_eq!(s.clock_s, Some(4.0));
    assert_eq!(s.tokens_per_s, Some(256.0));
    assert_eq!(
        (s.payload_bytes, s.framing_bytes, s.bytes_source),
        (200, 20, "rounds")
    );
    assert_eq!(s.final_round, Some(2));
    assert_eq!(s.final_eval_loss, Some(2.9));
    assert_eq!(
        s.final_eval_loss_by_domain
            .iter()
            .map(|d| (d.domain.as_str(), d.eval_loss))
            .collect::<Vec<_>>(),
        vec![("d0", 3.0), ("d1", 2.8)]
    );
    assert_eq!(s.best_eval_loss, Some(2.9));
    // Round 1 mean 3.75 > 3, round 2 mean 2.9 ≤ 3: reached at the round-2 eval.
    assert_eq!((s.time_to_target_s, s.step_to_target), (Some(4.0), Some(8)));

    // A target below every eval: not reached, nothing invented.
    c.target_loss = Some(2.0);
    let p = fake_run(
        root.path(),
        "diloco-s1",
        &c,
        &[(1, [4.0, 3.5], 100), (2, [3.0, 2.8], 200)],
        true,
    );
    let s = summarize(&p).unwrap();
    assert_eq!(
        (s.time_to_target_s, s.step_to_target, s.best_eval_loss),
        (None, None, Some(2.9))
    );

    // No rounds rows: bytes from the steps (2 sites × 8 steps × 3), no losses.
    let p = fake_run(root.path(), "diloco-s2", &cfg(Method::Diloco), &[], false);
    let s = summarize(&p).unwrap();
    assert_eq!(
        (s.payload_bytes, s.bytes_source, s.status.as_str()),
        (48, "steps", "failed")
    );
    assert_eq!((s.final_eval_loss, s.time_to_target_s), (None, None));
    assert_eq!(s.error.as_deref(), Some("boom"));

    // Issue 10: a run that failed after evals has rounds rows whose byte totals were never
    // filled in (the runner fills them when a run succeeds); its bytes are the sites'
    // own counts in steps.csv, not 0 B.
    let p = fake_run(
        root.path(),
        "diloco-s3",
        &cfg(Method::Diloco),
        &[(1, [4.0, 3.5], 0)],
        false,
    );
    let s = summarize(&p).unwrap();
    assert_eq!(
        (
            s.payload_bytes,
            s.bytes_source,
            s.status.as_str(),
            s.final_round
        ),
        (48, "steps", "failed", Some(1))
    );
}

#[test]
fn bytes_against_ddp_and_varying_knobs() {
    let root = tempfile::tempdir().unwrap();
    let mk = |m: Method, rate: &str, rho: usize| {
        let mut c = cfg(m);
        c.network.rate = Some(rate.into());
        c.fomoe.rho = rho;
        c
    };
    let r = |bytes| [(2usize, [3.0, 3.0], bytes)];
    fake_run(
        root.path(),
        "ddp-bw10m-s0",
        &mk(Method::Ddp, "10mbit", 2),
        &r(8000),
        true,
    );
    fake_run(
        root.path(),
        "ddp-bw100m-s0",
        &mk(Method::Ddp, "100mbit", 2),
        &r(8000),
        true,
    );
    fake_run(
        root.path(),
        "diloco-bw100m-s0",
        &mk(Method::Diloco, "100mbit", 2),
        &r(2000),
        true,
    );
    fake_run(
        root.path(),
        "fomoe-rho1-bw100m-s0",
        &mk(Method::Fomoe, "100mbit", 1),
        &r(500),
        true,
    );
    fake_run(
        root.path(),
        "fomoe-rho2-bw100m-s0",
        &mk(Method::Fomoe, "100mbit", 2),
        &r(1000),
        false,
    );
    let rows = load_suite(root.path()).unwrap();
    let ids: Vec<&str> = rows.iter().map(|r| r.run_id.as_str()).collect();
    assert_eq!(
        ids,
        vec![
            "ddp-bw100m-s0",
            "ddp-bw10m-s0",
            "diloco-bw100m-s0",
            "fomoe-rho1-bw100m-s0",
            "fomoe-rho2-bw100m-s0"
        ]
    );
    let by = |id: &str| rows.iter().find(|r| r.run_id == id).unwrap();
    let d = by("diloco-bw100m-s0");
    assert_eq!(
        (
            d.ddp_ref.as_deref(),
            d.ddp_ref_exact,
            d.bytes_reduction_vs_ddp
        ),
        (Some("ddp-bw100m-s0"), Some(true), Some(4.0))
    );
    assert_eq!(
        by("fomoe-rho1-bw100m-s0").bytes_reduction_vs_ddp,
        Some(16.0)
    );
    assert_eq!(by("ddp-bw10m-s0").bytes_reduction_vs_ddp, Some(1.0));
    assert_eq!(
        by("fomoe-rho2-bw100m-s0").bytes_reduction_vs_ddp,
        None,
        "failed runs get no ratio"
    );
    // ρ varies among FoMoE runs only; DDP rows do not show it.
    assert!(!by("ddp-bw10m-s0").knobs.contains_key("fomoe.rho"));
    assert_eq!(
        by("fomoe-rho1-bw100m-s0").knobs["fomoe.rho"],
        serde_json::json!(1)
    );
    assert_eq!(
        by("fomoe-rho1-bw100m-s0").knobs["network.rate"],
        serde_json::json!("100mbit")
    );

    // Without a DDP run at the same rate, the closest one is used and marked inexact.
    std::fs::remove_dir_all(root.path().join("ddp-bw100m-s0")).unwrap();
    let rows = load_suite(root.path()).unwrap();
    let d = rows
        .iter()
        .find(|r| r.run_id == "diloco-bw100m-s0")
        .unwrap();
    assert_eq!(
        (d.ddp_ref.as_deref(), d.ddp_ref_exact),
        (Some("ddp-bw10m-s0"), Some(false))
    );

    // summary.csv: header + one record per run, columns in the documented order.
    let csv = String::from_utf8(summary_csv(&rows)).unwrap();
    let mut lines = csv.lines();
    assert_eq!(lines.next().unwrap(), summary::SUMMARY_COLUMNS.join(","));
    assert_eq!(lines.count(), rows.len());

    let configs = [
        mk(Method::Ddp, "10mbit", 2),
        mk(Method::Fomoe, "10mbit", 1),
        mk(Method::Fomoe, "10mbit", 2),
    ];
    assert_eq!(varying_knobs(&configs), vec!["fomoe.rho".to_string()]);
    let mut outer = configs.clone();
    outer[2].outer = Some(crate::config::OuterOptimizer::fedavg_default());
    assert_eq!(
        varying_knobs(&outer),
        vec![
            "fomoe.rho".to_string(),
            "outer.kind".into(),
            "outer.lr".into()
        ]
    );
}

#[test]
fn suite_dirs_and_load_order() {
    let root = tempfile::tempdir().unwrap();
    let a = root.path().join("a");
    fake_run(&a, "z-run", &cfg(Method::Ddp), &[], true);
    fake_run(&a, "y-run", &cfg(Method::Ddp), &[], true);
    std::fs::create_dir_all(root.path().join("empty")).unwrap();
    assert_eq!(suite_dirs(root.path()).unwrap(), vec![a.clone()]);
    assert_eq!(suite_dirs(&a).unwrap(), vec![a.clone()]);
    // summary.csv order wins over names.
    write_atomic(&a.join(SUMMARY_FILE), b"run_id\nz-run\ny-run\n").unwrap();
    let ids: Vec<String> = load_suite(&a)
        .unwrap()
        .into_iter()
        .map(|s| s.run_id)
        .collect();
    assert_eq!(ids, vec!["z-run", "y-run"]);
    // A changed results file makes the run incomplete (no numbers); it does not stop the
    // report.
    std::fs::write(a.join("y-run").join(ROUNDS_FILE), b"round\nnot-a-number\n").unwrap();
    let rows = load_suite(&a).unwrap();
    assert_eq!(rows[1].status, "incomplete");
    assert!(!rows[1].has_numbers());
    assert!(rows[1]
        .error
        .as_deref()
        .unwrap()
        .starts_with("rounds.csv holds 19 bytes, the complete run wrote"));
    // Without a record (a schema-1 manifest) the malformed file shows as unreadable.
    let m = a.join("y-run").join(MANIFEST_FILE);
    let mut v: serde_json::Value = serde_json::from_slice(&std::fs::read(&m).unwrap()).unwrap();
    v.as_object_mut().unwrap().remove("files");
    std::fs::write(&m, serde_json::to_vec(&v).unwrap()).unwrap();
    let rows = load_suite(&a).unwrap();
    assert_eq!(rows[1].status, "unreadable");
    assert!(rows[1]
        .error
        .as_deref()
        .unwrap()
        .contains("rounds.csv: line 2"));
}

#[test]
fn hgrm_percentiles() {
    let mut h = hdrhistogram::Histogram::<u64>::new(3).unwrap();
    for v in 1..=1000u64 {
        h.record(v * 1000).unwrap(); // 1..1000 ms recorded in µs
    }
    let text = hgrm_text(&h, 1000.0);
    let lines: Vec<&str> = text.lines().collect();
    assert!(lines[0].contains("Value") && lines[0].contains("1/(1-Percentile)"));
    // Last distribution row: the max at percentile 1 with every count.
    let last = lines
        .iter()
        .rev()
        .find(|l| !l.starts_with('#') && !l.is_empty())
        .unwrap();
    let cols: Vec<&str> = last.split_whitespace().collect();
    assert_eq!(cols[1].parse::<f64>().unwrap(), 1.0);
    assert_eq!(cols[2], "1000");
    assert!(
        (cols[0].parse::<f64>().unwrap() - 1000.0).abs() < 1.0,
        "{last}"
    );
    assert!(text.contains("Total count    =         1000]"), "{text}");
    assert!(
        hgrm_text(&hdrhistogram::Histogram::<u64>::new(3).unwrap(), 1.0)
            .contains("Total count    =            0]")
    );
}

/// One eval of [`quality_run`]: (round, clock_s, payload total, global mean, local mean);
/// each mean is split over two domains as mean ± 0.5.
type QualityEval = (usize, f64, u64, f64, f64);

/// A run of 2 sites × 12 steps × 64 tokens, evaluated at steps 4, 8, 12, target 3.3.
fn quality_run(root: &Path, id: &str, method: Method, evals: &[QualityEval], ok: bool) {
    let mut c = cfg(method);
    c.steps = 12;
    c.target_loss = Some(3.3);
    let mut rd = RunDir::create(&root.join(id), id, &c, &env()).unwrap();
    for step in 1..=12 {
        for site in 0..2 {
            rd.steps
                .push(&StepRow {
                    site,
                    step,
                    tokens: 64,
                    ..Default::default()
                })
                .unwrap();
        }
    }
    for &(round, clock_s, payload, global, local) in evals {
        for (d, sign) in [("a", 1.0), ("b", -1.0)] {
            rd.rounds
                .push(&RoundRow {
                    round,
                    step: 4 * (round + 1),
                    domain: d.into(),
                    eval_loss: global + 0.5 * sign,
                    local_eval_loss: local + 0.5 * sign,
                    payload_bytes_total: payload,
                    clock_s,
                    ..Default::default()
                })
                .unwrap();
        }
    }
    let outcome = if ok {
        Ok(())
    } else {
        Err(anyhow::anyhow!("crash"))
    };
    rd.finish(&outcome).unwrap();
}

#[test]
fn pareto_stability_and_equal_budgets_on_a_constructed_suite() {
    let root = tempfile::tempdir().unwrap();
    let dir = root.path();
    let same = |v: [(f64, u64, f64); 3]| -> Vec<QualityEval> {
        (0..3)
            .map(|r| (r, v[r].0, v[r].1, v[r].2, v[r].2))
            .collect()
    };
    quality_run(
        dir,
        "ddp-s0",
        Method::Ddp,
        &same([(3.0, 3000, 3.0), (6.0, 6000, 2.5), (9.0, 9000, 2.0)]),
        true,
    );
    quality_run(
        dir,
        "diloco-s0",
        Method::Diloco,
        &same([(1.0, 100, 3.125), (2.0, 200, 2.625), (3.0, 300, 2.25)]),
        true,
    );
    quality_run(
        dir,
        "photon-s0",
        Method::Photon,
        &same([(1.2, 133, 3.0), (2.4, 266, 2.75), (3.6, 400, 2.375)]),
        true,
    );
    // FoMoE: the global model spikes by 0.5 at round 1, the sites' own models fall smoothly.
    let fomoe = [
        (0, 1.5, 50, 3.25, 3.375),
        (1, 2.5, 100, 3.75, 3.0),
        (2, 3.5, 150, 2.5, 2.625),
    ];
    quality_run(dir, "fomoe-s0", Method::Fomoe, &fomoe, true);
    // A failed run with few bytes and a short clock: it must not set any budget.
    quality_run(
        dir,
        "fomoe-s1",
        Method::Fomoe,
        &[(0, 0.5, 10, 3.0, 3.0)],
        false,
    );
    let rows = load_suite(dir).unwrap();
    let row = |id: &str| rows.iter().find(|r| r.run_id == id).unwrap();

    // Stability: largest round-to-round increase of the global mean, and its round.
    let f = row("fomoe-s0");
    assert_eq!(
        (f.max_loss_increase, f.max_loss_increase_round),
        (Some(0.5), Some(1))
    );
    assert_eq!(f.max_local_loss_increase, Some(0.0));
    assert_eq!(
        (f.final_eval_loss, f.final_local_eval_loss),
        (Some(2.5), Some(2.625))
    );
    assert_eq!(
        f.final_local_eval_loss_by_domain
            .iter()
            .map(|d| (d.domain.as_str(), d.eval_loss))
            .collect::<Vec<_>>(),
        [("a", 3.125), ("b", 2.125)]
    );
    let d = row("ddp-s0");
    assert_eq!(
        (d.max_loss_increase, d.max_loss_increase_round),
        (Some(0.0), None)
    );
    assert_eq!(
        row("fomoe-s1").max_loss_increase,
        None,
        "one eval: no increase defined"
    );

    // Target 3.3: FoMoE first reaches it at round 0 (3.25), rises to 3.75, stays from round 2.
    assert_eq!((f.time_to_target_s, f.step_to_target), (Some(1.5), Some(4)));
    assert_eq!(
        (f.time_to_stay_target_s, f.step_to_stay_target),
        (Some(3.5), Some(12))
    );
    assert_eq!(
        (d.time_to_stay_target_s, d.step_to_stay_target),
        (Some(3.0), Some(4))
    );

    // Pareto: photon (400 B, 2.375) is dominated by diloco (300 B, 2.25); the failed run is
    // not compared.
    let front: Vec<(&str, Option<bool>)> = rows
        .iter()
        .map(|r| (r.run_id.as_str(), r.on_pareto_front))
        .collect();
    assert_eq!(
        front,
        [
            ("ddp-s0", Some(true)),
            ("diloco-s0", Some(true)),
            ("fomoe-s0", Some(true)),
            ("fomoe-s1", None),
            ("photon-s0", Some(false)),
        ]
    );

    // Equal budgets: tokens 2 × 12 × 64 for all; clock 3.0 s (diloco's end); payload 150
    // (fomoe's end). Each run at its last eval within the budget; DDP has none within 150 B.
    let at = |id: &str, b: Budget| {
        let r = row(id);
        let a = match b {
            Budget::Tokens => &r.at_equal_tokens,
            Budget::Clock => &r.at_equal_clock,
            Budget::Payload => &r.at_equal_payload,
        };
        a.as_ref()
            .map(|a| (a.budget, a.round, a.loss, a.local_loss))
    };
    assert_eq!(
        at("ddp-s0", Budget::Tokens),
        Some((1536.0, Some(2), Some(2.0), Some(2.0)))
    );
    assert_eq!(
        at("fomoe-s0", Budget::Tokens),
        Some((1536.0, Some(2), Some(2.5), Some(2.625)))
    );
    assert_eq!(
        at("ddp-s0", Budget::Clock),
        Some((3.0, Some(0), Some(3.0), Some(3.0)))
    );
    assert_eq!(
        at("fomoe-s0", Budget::Clock),
        Some((3.0, Some(1), Some(3.75), Some(3.0)))
    );
    assert_eq!(
        at("photon-s0", Budget::Clock),
        Some((3.0, Some(1), Some(2.75), Some(2.75)))
    );
    assert_eq!(
        at("ddp-s0", Budget::Payload),
        Some((150.0, None, None, None))
    );
    assert_eq!(
        at("diloco-s0", Budget::Payload),
        Some((150.0, Some(0), Some(3.125), Some(3.125)))
    );
    assert_eq!(
        at("photon-s0", Budget::Payload),
        Some((150.0, Some(0), Some(3.0), Some(3.0)))
    );
    assert_eq!(
        at("fomoe-s0", Budget::Payload),
        Some((150.0, Some(2), Some(2.5), Some(2.625)))
    );
    assert_eq!(at("fomoe-s1", Budget::Payload), None);

    // The same numbers in summary.csv, by column name.
    let csv = String::from_utf8(summary_csv(&rows)).unwrap();
    let mut r = csv::Reader::from_reader(csv.as_bytes());
    let head = r.headers().unwrap().clone();
    let rec = r
        .records()
        .map(|x| x.unwrap())
        .find(|x| x.get(0) == Some("fomoe-s0"))
        .unwrap();
    let get = |col: &str| {
        rec.get(head.iter().position(|h| h == col).unwrap())
            .unwrap()
    };
    for (col, want) in [
        ("final_local_eval_loss", "2.625"),
        ("final_local_eval_loss_by_domain", "a=3.125;b=2.125"),
        ("max_loss_increase", "0.5"),
        ("max_loss_increase_round", "1"),
        ("max_local_loss_increase", "0"),
        ("time_to_target_s", "1.5"),
        ("time_to_stay_target_s", "3.5"),
        ("step_to_stay_target", "12"),
        ("equal_tokens", "1536"),
        ("loss_at_equal_tokens", "2.5"),
        ("equal_clock_s", "3"),
        ("loss_at_equal_clock", "3.75"),
        ("local_loss_at_equal_clock", "3"),
        ("round_at_equal_clock", "1"),
        ("equal_payload_bytes", "150"),
        ("loss_at_equal_payload", "2.5"),
        ("on_pareto_front", "true"),
    ] {
        assert_eq!(get(col), want, "{col}");
    }
}
