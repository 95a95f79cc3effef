//! Results integrity and hostile input at the command line (issue 10): two `fomoe run` of
//! one suite, a closed stdout, the run token, an orchestrator killed during start-up, and
//! data files that do not open. Each test names the defect it pins; each failed on the
//! code before its fix.

use std::io::Read;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

fn fomoe() -> Command {
    Command::new(env!("CARGO_BIN_EXE_fomoe"))
}

/// A suite of `methods` on `tiny`, 2 sites, 4 steps, on `backend` (about 1–2 s per run).
fn tiny_suite(dir: &Path, name: &str, backend: &str, methods: &[&str]) -> PathBuf {
    let list: Vec<String> = methods.iter().map(|m| format!("{m:?}")).collect();
    let text = format!(
        "[suite]\nname = \"{name}\"\n[base]\npreset = \"tiny\"\nsites = 2\nsteps = 4\ninner_steps = 2\n\
         eval_sequences = 2\n[base.data]\nkind = \"synthetic\"\neval_sequences = 2\nprobe_sequences = 1\n\
         [base.network]\nbackend = \"{backend}\"\n[grid]\nmethod = [{}]\n",
        list.join(", ")
    );
    let p = dir.join(format!("{name}.toml"));
    std::fs::write(&p, text).unwrap();
    p
}

fn manifest_status(run_dir: &Path) -> String {
    let v: serde_json::Value =
        serde_json::from_slice(&std::fs::read(run_dir.join("manifest.json")).unwrap()).unwrap();
    v["status"].as_str().unwrap().to_string()
}

/// Kills the child (and waits) when dropped, so a failing test leaves no process behind.
struct Reaped(Child);

impl Drop for Reaped {
    fn drop(&mut self) {
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}

impl Reaped {
    /// Wait for the child; its exit status and everything it wrote on a piped stderr.
    fn wait_with_stderr(&mut self) -> (std::process::ExitStatus, String) {
        let status = self.0.wait().unwrap();
        let mut err = String::new();
        if let Some(mut e) = self.0.stderr.take() {
            e.read_to_string(&mut err).unwrap();
        }
        (status, err)
    }
}

/// `fomoe run SUITE --out OUT FLAGS…`.
fn run_suite(suite: &Path, out: &Path, flags: &[&str]) -> Command {
    let mut c = fomoe();
    c.args([
        "run",
        suite.to_str().unwrap(),
        "--out",
        out.to_str().unwrap(),
    ])
    .args(flags);
    c
}

fn wait_for(what: &str, limit: Duration, mut cond: impl FnMut() -> bool) {
    let t0 = Instant::now();
    while !cond() {
        assert!(t0.elapsed() < limit, "timed out waiting for {what}");
        std::thread::sleep(Duration::from_millis(20));
    }
}

/// Defect 1: a second `fomoe run` of the same suite into the same `--out` is refused in
/// one line naming the first one's pid; the first completes untouched.
#[test]
fn a_concurrent_run_of_the_same_suite_is_refused_naming_the_holder() {
    let d = tempfile::tempdir().unwrap();
    let suite = tiny_suite(d.path(), "lock", "sim", &["ddp", "diloco", "fomoe"]);
    let out = d.path().join("out");
    let mut first = Reaped(
        run_suite(&suite, &out, &["--quiet"])
            .stdout(Stdio::null())
            .stderr(Stdio::piped())
            .spawn()
            .unwrap(),
    );
    let lock = out.join("lock").join(".lock");
    wait_for("the first run's lock", Duration::from_secs(30), || {
        std::fs::read_to_string(&lock).is_ok_and(|t| !t.trim().is_empty())
    });
    let second = run_suite(&suite, &out, &["--quiet"]).output().unwrap();
    let err = String::from_utf8_lossy(&second.stderr);
    assert_eq!(second.status.code(), Some(1), "{err}");
    assert_eq!(err.trim_end().lines().count(), 1, "{err}");
    assert!(
        err.contains(&format!("another fomoe run (pid {})", first.0.id())),
        "{err}"
    );
    let status = first.0.wait().unwrap();
    let mut first_err = String::new();
    first
        .0
        .stderr
        .take()
        .unwrap()
        .read_to_string(&mut first_err)
        .unwrap();
    assert!(status.success(), "{first_err}");
    for run in ["ddp-s0", "diloco-s0", "fomoe-s0"] {
        assert_eq!(manifest_status(&out.join("lock").join(run)), "complete");
    }
    assert_eq!(std::fs::read_to_string(&lock).unwrap(), "", "released");
}

/// Defect 6: `fomoe run S.toml --force | head -1` panicked on the closed pipe and the
/// remaining runs never started. Now the output stops and every run still completes.
#[test]
fn a_closed_stdout_does_not_stop_the_suite() {
    let d = tempfile::tempdir().unwrap();
    let suite = tiny_suite(d.path(), "pipe", "sim", &["ddp", "diloco", "fomoe"]);
    let out = d.path().join("out");
    let mut child = Reaped(
        run_suite(&suite, &out, &["--force"])
            .stdout(Stdio::piped())
            .stderr(Stdio::piped())
            .spawn()
            .unwrap(),
    );
    // `head -1`: read the first line, then close the pipe.
    let mut stdout = child.0.stdout.take().unwrap();
    let mut line = Vec::new();
    let mut byte = [0u8; 1];
    while stdout.read(&mut byte).unwrap() == 1 && byte[0] != b'\n' {
        line.push(byte[0]);
    }
    drop(stdout);
    assert!(
        String::from_utf8_lossy(&line).contains("ddp-s0"),
        "{line:?}"
    );
    let (status, err) = child.wait_with_stderr();
    assert!(status.success(), "{err}");
    assert!(!err.contains("panicked"), "{err}");
    for run in ["ddp-s0", "diloco-s0", "fomoe-s0"] {
        assert_eq!(
            manifest_status(&out.join("pipe").join(run)),
            "complete",
            "{run}"
        );
    }
}

/// Defect 6 in the other commands: each one writing to a stdout whose reader is gone
/// (`fomoe project --headline | true`) exits 0 without a panic. Before, they used plain
/// `println!`, which panics on the broken pipe.
#[test]
fn commands_writing_into_a_closed_pipe_end_without_a_panic() {
    for args in [
        &["project", "--headline"][..],
        &[
            "project",
            "--preset",
            "paper-100b",
            "--sites",
            "8",
            "--rho",
            "2",
            "--inner-steps",
            "32",
        ][..],
    ] {
        let mut child = Reaped(
            fomoe()
                .args(args)
                .stdout(Stdio::piped())
                .stderr(Stdio::piped())
                .spawn()
                .unwrap(),
        );
        // The reader goes away before the first line.
        drop(child.0.stdout.take());
        let (status, err) = child.wait_with_stderr();
        assert!(status.success(), "{args:?}: {err}");
        assert!(!err.contains("panicked"), "{args:?}: {err}");
    }
}

/// Every file under `dir`, recursively.
fn files_under(dir: &Path) -> Vec<PathBuf> {
    let mut out = Vec::new();
    for e in std::fs::read_dir(dir).unwrap().flatten() {
        let p = e.path();
        if p.is_dir() {
            out.extend(files_under(&p));
        } else {
            out.push(p);
        }
    }
    out
}

/// Whether `text` holds a run of 64 hex digits (how a token is written).
fn has_hex64(text: &str) -> bool {
    let mut run = 0;
    for c in text.chars() {
        run = if c.is_ascii_hexdigit() { run + 1 } else { 0 };
        if run >= 64 {
            return true;
        }
    }
    false
}

/// Defect 4: `net-site<i>.json` held the run token in plain text (mode 0644) and stayed
/// after the run. The token now reaches each worker through a pipe: no file of the run
/// (during or after it) holds it, and a worker's command line does not either.
#[test]
fn the_run_token_is_never_written_to_a_file() {
    let d = tempfile::tempdir().unwrap();
    let suite = tiny_suite(d.path(), "secret", "relay", &["diloco"]);
    let out = d.path().join("out");
    let mut child = Reaped(
        run_suite(&suite, &out, &["--quiet"])
            .stdout(Stdio::null())
            .spawn()
            .unwrap(),
    );
    let run = out.join("secret").join("diloco-s0");
    let mut seen_workers = false;
    let t0 = Instant::now();
    while child.0.try_wait().unwrap().is_none() && t0.elapsed() < Duration::from_secs(60) {
        if run.is_dir() {
            for p in files_under(&run) {
                let name = p.file_name().unwrap().to_string_lossy().into_owned();
                assert!(
                    !name.starts_with("net-site"),
                    "{name} exists during the run"
                );
            }
        }
        for (_, cmd) in workers_of(&run) {
            seen_workers = true;
            assert!(!has_hex64(&cmd), "token on a command line: {cmd}");
        }
        std::thread::sleep(Duration::from_millis(50));
    }
    assert!(child.0.wait().unwrap().success());
    assert!(seen_workers, "the run had worker processes to look at");
    for p in files_under(&out) {
        let name = p.file_name().unwrap().to_string_lossy().into_owned();
        assert!(
            !name.starts_with("net-site"),
            "{} left after the run",
            p.display()
        );
        if name.ends_with(".json") || name.ends_with(".csv") || name.ends_with(".log") {
            let text = std::fs::read_to_string(&p).unwrap();
            assert!(!text.contains("\"token\""), "{} holds a token", p.display());
        }
    }
}

/// Worker processes (pid, command line) whose command line names `run_dir`.
fn workers_of(run_dir: &Path) -> Vec<(u32, String)> {
    let needle = run_dir.to_string_lossy().into_owned();
    let mut out = Vec::new();
    for p in std::fs::read_dir("/proc").unwrap().flatten() {
        let Ok(pid) = p.file_name().to_string_lossy().parse::<u32>() else {
            continue;
        };
        if let Ok(cmd) = std::fs::read(p.path().join("cmdline")) {
            let cmd = String::from_utf8_lossy(&cmd).replace('\0', " ");
            if cmd.contains(" worker ") && cmd.contains(&needle) {
                out.push((pid, cmd));
            }
        }
    }
    out
}

/// Defect 8: an orchestrator killed during start-up left its workers alive for 31 s (their
/// connect timeout). Workers now die with it.
#[test]
fn workers_die_with_a_killed_orchestrator() {
    let d = tempfile::tempdir().unwrap();
    let suite = tiny_suite(d.path(), "orphans", "relay", &["diloco"]);
    let out = d.path().join("out");
    let mut child = Reaped(
        run_suite(&suite, &out, &["--quiet"])
            .stdout(Stdio::null())
            .spawn()
            .unwrap(),
    );
    let run = out.join("orphans").join("diloco-s0");
    wait_for("the workers", Duration::from_secs(30), || {
        !workers_of(&run).is_empty()
    });
    let workers = workers_of(&run);
    child.0.kill().unwrap(); // SIGKILL: no code of the orchestrator runs
    child.0.wait().unwrap();
    let t0 = Instant::now();
    while !workers_of(&run).is_empty() && t0.elapsed() < Duration::from_secs(5) {
        std::thread::sleep(Duration::from_millis(20));
    }
    let left = workers_of(&run);
    for (pid, _) in &left {
        // Clean up what a failing run left (processes this test started).
        let _ = Command::new("kill").args(["-9", &pid.to_string()]).status();
    }
    assert!(
        left.is_empty(),
        "workers {workers:?} still alive {:?} after the orchestrator was killed",
        t0.elapsed()
    );
}

/// Defect 8: a data file that does not open was found only after the run directory and
/// `init.safetensors` had been written. Now nothing is written: `fomoe run` stops in one
/// line naming the file, and `fomoe run-one` keeps the old run directory.
#[test]
fn a_data_file_that_does_not_open_stops_before_anything_is_written() {
    let d = tempfile::tempdir().unwrap();
    let missing = d.path().join("nope.bin");
    let suite = d.path().join("data.toml");
    std::fs::write(
        &suite,
        format!(
            "[base]\nmethod = \"diloco\"\npreset = \"tiny\"\nsites = 2\nsteps = 4\ninner_steps = 2\n\
             [base.data]\nkind = \"tokenfile\"\npath = \"{}\"\nvocab_size = 300\n",
            missing.display()
        ),
    )
    .unwrap();
    let out = d.path().join("out");
    let r = run_suite(&suite, &out, &[]).output().unwrap();
    let err = String::from_utf8_lossy(&r.stderr);
    assert_eq!(r.status.code(), Some(1), "{err}");
    assert_eq!(err.trim_end().lines().count(), 1, "{err}");
    assert!(
        err.contains("nope.bin") && err.contains("run diloco-s0"),
        "{err}"
    );
    assert!(
        !out.join("data").join("diloco-s0").exists(),
        "no run directory"
    );

    let cfg = d.path().join("one.toml");
    std::fs::write(
        &cfg,
        format!(
            "method = \"single\"\nsites = 1\n[data]\nkind = \"tokenfile\"\npath = \"{}\"\nvocab_size = 300\n",
            missing.display()
        ),
    )
    .unwrap();
    let old = d.path().join("old-run");
    std::fs::create_dir_all(&old).unwrap();
    std::fs::write(old.join("steps.csv"), "kept\n").unwrap();
    let r = fomoe()
        .args([
            "run-one",
            cfg.to_str().unwrap(),
            "--out",
            old.to_str().unwrap(),
        ])
        .output()
        .unwrap();
    let err = String::from_utf8_lossy(&r.stderr);
    assert_eq!(r.status.code(), Some(1), "{err}");
    assert!(err.contains("nope.bin"), "{err}");
    assert_eq!(
        std::fs::read_to_string(old.join("steps.csv")).unwrap(),
        "kept\n"
    );
}
