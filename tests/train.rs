//! Single-site training (issue 2): learning on the synthetic corpus, bit-exact resume, and
//! the one-line errors of the command line.

use std::path::Path;
use std::process::Command;

use harness::config::{Fault, FaultKind, Method, RunConfig};
use harness::net::Backend;
use harness::runner::{run_one, RunOptions};
use harness::telemetry::{RoundRow, StepRow};

fn single(steps: usize, h: usize) -> RunConfig {
    let mut c = RunConfig {
        method: Method::Single,
        sites: 1,
        steps,
        inner_steps: h,
        threads_per_site: Some(2),
        ..Default::default()
    };
    c.network.backend = Backend::Sim;
    c.eval_sequences = 8;
    c
}

fn rows<T: serde::de::DeserializeOwned>(p: &Path) -> Vec<T> {
    csv::Reader::from_path(p)
        .unwrap()
        .deserialize()
        .collect::<Result<_, _>>()
        .unwrap()
}

#[test]
fn tiny_learns_one_domain_toward_its_entropy_floor() {
    let d = tempfile::tempdir().unwrap();
    let mut c = single(160, 40);
    c.data = harness::data::DataConfig::synthetic(1);
    c.optim.lr = 3e-3;
    run_one(&c, d.path(), &baselines::registry(), &RunOptions::default()).unwrap();
    let r: Vec<RoundRow> = rows(&d.path().join("rounds.csv"));
    let first = &r[0];
    let last = r.last().unwrap();
    let floor = last.floor.unwrap();
    let uniform = (256f64).ln();
    assert!(
        last.eval_loss < 0.5 * uniform,
        "eval {} not well below ln 256",
        last.eval_loss
    );
    assert!(last.eval_loss < first.eval_loss, "eval loss must fall");
    assert!(
        last.eval_loss - floor < 0.6,
        "eval {} vs floor {floor}",
        last.eval_loss
    );
    assert!(
        last.eval_loss >= floor - 0.05,
        "eval {} below the entropy floor {floor}: impossible",
        last.eval_loss
    );
}

#[test]
fn resume_from_a_checkpoint_equals_uninterrupted_training_bit_for_bit() {
    let d = tempfile::tempdir().unwrap();
    let mut c = single(12, 4);
    c.checkpoint_every_rounds = Some(1);
    let full = d.path().join("full");
    run_one(&c, &full, &baselines::registry(), &RunOptions::default()).unwrap();

    let cut = d.path().join("cut");
    let mut crash = c.clone();
    crash.faults = vec![Fault {
        site: 0,
        at_step: 7,
        kind: FaultKind::Crash,
    }];
    assert!(run_one(&crash, &cut, &baselines::registry(), &RunOptions::default()).is_err());
    let mut resume = c.clone();
    resume.resume_from = Some(cut.clone());
    run_one(
        &resume,
        &cut,
        &baselines::registry(),
        &RunOptions::default(),
    )
    .unwrap();

    let a: Vec<StepRow> = rows(&full.join("steps.csv"));
    let b: Vec<StepRow> = rows(&cut.join("steps.csv"));
    // The crashed attempt wrote steps 1..6; the resumed one continues from step 4's
    // checkpoint, so steps 5 and 6 appear twice: the later rows must equal the full run's.
    let last_of = |rows: &[StepRow], step: usize| {
        rows.iter()
            .rev()
            .find(|r| r.step == step)
            .unwrap()
            .loss
            .to_bits()
    };
    for step in 1..=12 {
        assert_eq!(last_of(&a, step), last_of(&b, step), "step {step}");
    }
    let ca = harness::checkpoint::Checkpoint::open(&full.join("ckpt-site0.safetensors")).unwrap();
    let cb = harness::checkpoint::Checkpoint::open(&cut.join("ckpt-site0.safetensors")).unwrap();
    for name in ca.names().unwrap() {
        let va = ca.values(&name, numel_of(&name)).unwrap();
        assert_eq!(va, cb.values(&name, va.len()).unwrap(), "{name}");
    }
}

/// Number of values of a checkpoint tensor, from the parameter it belongs to.
fn numel_of(name: &str) -> usize {
    let cfg = harness::model::ModelConfig::preset("tiny").unwrap();
    let layout = harness::model::ParamLayout::new(&cfg, &harness::model::Residency::full(&cfg));
    let base = name
        .trim_start_matches("optim.exp_avg_sq.")
        .trim_start_matches("optim.exp_avg.")
        .trim_start_matches("outer.global.")
        .trim_start_matches("outer.momentum.");
    layout
        .spec(base)
        .map(|s| s.numel)
        .unwrap_or_else(|| panic!("unknown tensor {name}"))
}

fn fomoe(args: &[&str]) -> (i32, String) {
    let out = Command::new(env!("CARGO_BIN_EXE_fomoe"))
        .args(args)
        .output()
        .unwrap();
    (
        out.status.code().unwrap_or(-1),
        String::from_utf8_lossy(&out.stderr).to_string(),
    )
}

fn run_toml(dir: &Path, text: &str) -> (i32, String) {
    let p = dir.join("c.toml");
    std::fs::write(&p, text).unwrap();
    fomoe(&[
        "run-one",
        p.to_str().unwrap(),
        "--out",
        dir.join("out").to_str().unwrap(),
    ])
}

fn assert_one_line(code: i32, err: &str, needle: &str) {
    assert_eq!(code, 1, "{err}");
    assert!(err.contains(needle), "expected `{needle}` in: {err}");
    assert_eq!(
        err.trim_end().lines().count(),
        1,
        "one line expected: {err}"
    );
    assert!(!err.contains("panicked"), "{err}");
}

#[test]
fn bad_input_gives_one_line_errors() {
    let d = tempfile::tempdir().unwrap();
    let (c, e) = fomoe(&["bench-step", "--preset", "huge", "--steps", "1"]);
    assert_one_line(c, &e, "invalid preset = huge: one of tiny, small, proxy-s");
    let (c, e) = run_toml(
        d.path(),
        "method = \"single\"\nsites = 1\n[model]\ntop_k = 9\n",
    );
    assert_one_line(
        c,
        &e,
        "invalid model.top_k = 9: must be at most n_experts = 8",
    );
    let (c, e) = run_toml(
        d.path(),
        "method = \"single\"\nsites = 1\n[model]\nn_heads = 3\n",
    );
    assert_one_line(c, &e, "invalid model.n_heads = 3: must divide d_model = 64");
    let (c, e) = run_toml(d.path(), "method = \"single\"\nsites = 1\nbogus = 1\n");
    assert_one_line(c, &e, "unknown field `bogus`");
    let missing = d.path().join("nope.bin");
    let (c, e) = run_toml(
        d.path(),
        &format!("method = \"single\"\nsites = 1\n[data]\nkind = \"tokenfile\"\npath = \"{}\"\nvocab_size = 300\n", missing.display()),
    );
    assert_one_line(c, &e, "nope.bin");
    let odd = d.path().join("odd.bin");
    std::fs::write(&odd, [1u8, 0, 2]).unwrap();
    let (c, e) = run_toml(
        d.path(),
        &format!("method = \"single\"\nsites = 1\n[data]\nkind = \"tokenfile\"\npath = \"{}\"\nvocab_size = 300\n", odd.display()),
    );
    assert_one_line(c, &e, "odd.bin");
    let big = d.path().join("big.bin");
    let toks: Vec<u8> = (0..20_000u32)
        .flat_map(|i| ((i % 300) as u16).to_le_bytes())
        .collect();
    std::fs::write(&big, toks).unwrap();
    let (c, e) = run_toml(
        d.path(),
        &format!("method = \"single\"\nsites = 1\n[data]\nkind = \"tokenfile\"\npath = \"{}\"\nvocab_size = 256\n", big.display()),
    );
    assert_one_line(c, &e, "256");
    let (c, e) = fomoe(&[
        "train",
        "--preset",
        "tiny",
        "--steps",
        "10",
        "--eval-every",
        "3",
    ]);
    assert_one_line(c, &e, "invalid eval-every = 3");
}
