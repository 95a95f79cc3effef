//! The run memory estimate (`harness::sysmodel::run_memory`) against the peak RSS of real
//! runs: it must lie above what a run uses (a guard that refuses runs which fit would be
//! wrong) and within 2.5× of it (a guard far above would refuse runs that fit). One test in
//! this binary, so the peak RSS of the children is this test's alone.

use std::process::Command;

use harness::config::{Method, RunConfig};
use harness::net::Backend;

/// Largest resident set of any child waited for so far, bytes.
fn children_max_rss() -> u64 {
    // SAFETY: rusage is plain old data; all-zero bytes are a valid value.
    let mut ru: libc::rusage = unsafe { std::mem::zeroed() };
    // SAFETY: getrusage writes into the rusage we own.
    let rc = unsafe { libc::getrusage(libc::RUSAGE_CHILDREN, &mut ru) };
    assert_eq!(rc, 0, "getrusage");
    ru.ru_maxrss as u64 * 1024
}

#[test]
fn estimate_bounds_the_peak_rss_of_real_runs() {
    let d = tempfile::tempdir().unwrap();
    // Smallest first: RUSAGE_CHILDREN keeps the largest child seen so far.
    for (preset, batch) in [("small", 64usize), ("proxy-s", 16)] {
        let mut cfg = RunConfig {
            method: Method::Single,
            sites: 1,
            steps: 2,
            inner_steps: 2,
            preset: preset.into(),
            threads_per_site: Some(1),
            eval_sequences: 2,
            ..Default::default()
        };
        cfg.model.batch_size = Some(batch);
        cfg.network.backend = Backend::Sim;
        cfg.data.eval_sequences = 2;
        cfg.data.probe_sequences = 1;
        let p = d.path().join(format!("{preset}.toml"));
        std::fs::write(&p, toml::to_string(&cfg).unwrap()).unwrap();
        let out = Command::new(env!("CARGO_BIN_EXE_fomoe"))
            .args(["run-one", p.to_str().unwrap(), "--out"])
            .arg(d.path().join(preset))
            .output()
            .unwrap();
        assert!(
            out.status.success(),
            "{}",
            String::from_utf8_lossy(&out.stderr)
        );
        let measured = children_max_rss() as f64;
        let estimate = harness::sysmodel::run_memory::estimate(&cfg).unwrap().total;
        assert!(
            estimate >= measured && estimate <= 2.5 * measured,
            "{preset} b{batch}: estimate {:.0} MB, peak RSS {:.0} MB",
            estimate / 1e6,
            measured / 1e6
        );
    }
}
