//! `fomoe figures` at the command line: bad inputs are one-line errors naming the path
//! (the generated files themselves are tested in `paper/tests/generate.rs`).

use std::process::Command;

fn figures(args: &[&std::path::Path]) -> (bool, String) {
    let out = Command::new(env!("CARGO_BIN_EXE_fomoe"))
        .arg("figures")
        .args(args)
        .output()
        .unwrap();
    (
        out.status.success(),
        String::from_utf8_lossy(&out.stderr).into_owned(),
    )
}

#[test]
fn figures_rejects_a_missing_empty_or_malformed_results_dir_in_one_line() {
    let tmp = tempfile::tempdir().unwrap();
    let missing = tmp.path().join("missing");
    let (ok, err) = figures(&[&missing]);
    assert!(!ok);
    assert_eq!(err.lines().count(), 1, "{err}");
    assert!(
        err.starts_with("error: ")
            && err.contains(&missing.display().to_string())
            && err.contains("no such results directory"),
        "{err}"
    );

    let (ok, err) = figures(&[tmp.path()]);
    assert!(
        !ok && err.lines().count() == 1 && err.contains("no run directories"),
        "{err}"
    );

    let run = tmp.path().join("suite").join("run-a");
    std::fs::create_dir_all(&run).unwrap();
    std::fs::write(run.join("manifest.json"), "{").unwrap();
    let out = tmp.path().join("out");
    let (ok, err) = figures(&[
        &tmp.path().join("suite"),
        std::path::Path::new("--out"),
        &out,
    ]);
    assert!(!ok && err.lines().count() == 1, "{err}");
    assert!(
        err.contains(&run.join("manifest.json").display().to_string()),
        "{err}"
    );
    assert!(!out.join("REPORT-suite.md").exists());
}
