//! `fomoe project` end to end (issue 9 parts 1–3): the table and its JSON, one-line refusals
//! of impossible deployments, the sweep CSV, validation against real runs of every method,
//! the headline tables; and (issue 10 defect 5) absurd sizes refused before anything runs.

use std::path::Path;
use std::process::{Command, Output};

use harness::sysmodel::run_memory::decimal_bytes;

fn fomoe(args: &[&str]) -> Output {
    Command::new(env!("CARGO_BIN_EXE_fomoe"))
        .args(args)
        .output()
        .expect("run fomoe")
}

fn stdout(o: &Output) -> String {
    assert!(
        o.status.success(),
        "exit {:?}: {}",
        o.status.code(),
        String::from_utf8_lossy(&o.stderr)
    );
    String::from_utf8(o.stdout.clone()).unwrap()
}

/// A refusal: exit 1, one line on stderr containing `needle`, no panic.
fn one_line_error(o: &Output, needle: &str) -> String {
    let err = String::from_utf8_lossy(&o.stderr).into_owned();
    assert_eq!(o.status.code(), Some(1), "{err}");
    assert!(err.contains(needle), "expected `{needle}` in: {err}");
    assert_eq!(
        err.trim_end().lines().count(),
        1,
        "one line expected: {err}"
    );
    assert!(!err.contains("panicked"), "{err}");
    err
}

/// The cells of the table row named `name` (cells are separated by two or more spaces).
fn row(table: &str, name: &str) -> Vec<String> {
    let line = table
        .lines()
        .find(|l| l.starts_with(name) && l[name.len()..].starts_with("  "))
        .unwrap_or_else(|| panic!("no row `{name}` in:\n{table}"));
    line[name.len()..]
        .split("  ")
        .map(str::trim)
        .filter(|c| !c.is_empty())
        .map(str::to_string)
        .collect()
}

#[test]
fn the_done_when_command_prints_the_table_and_json_has_its_numbers() {
    let args = [
        "project",
        "--preset",
        "paper-100b",
        "--sites",
        "8",
        "--rho",
        "2",
        "--inner-steps",
        "32",
    ];
    let table = stdout(&fomoe(&args));
    let mut json_args = args.to_vec();
    json_args.push("--json");
    let v: serde_json::Value = serde_json::from_str(&stdout(&fomoe(&json_args))).unwrap();
    assert_eq!(v["label"], "paper-100b");
    assert_eq!(v["counts"]["total"], 98_875_250_688u64);
    let methods = v["methods"].as_array().unwrap();
    let names: Vec<&str> = methods
        .iter()
        .map(|m| m["method"].as_str().unwrap())
        .collect();
    assert_eq!(names, ["ddp", "diloco", "photon", "fomoe"]);
    let header: Vec<&str> = table
        .lines()
        .find(|l| l.trim_start().starts_with("ddp"))
        .unwrap()
        .split_whitespace()
        .collect();
    assert_eq!(header, names);
    let col = |field: &[&str]| -> Vec<String> {
        methods
            .iter()
            .map(|m| {
                let mut x = m;
                for f in field {
                    x = &x[*f];
                }
                decimal_bytes(x.as_f64().unwrap())
            })
            .collect()
    };
    assert_eq!(
        row(&table, "memory / site"),
        col(&["memory_per_site", "total"])
    );
    assert_eq!(
        row(&table, "  outer state"),
        col(&["memory_per_site", "outer_state"])
    );
    assert_eq!(
        row(&table, "payload / round / site"),
        col(&["payload_bytes_per_round_per_site"])
    );
    assert_eq!(
        row(&table, "payload / token / site"),
        col(&["payload_bytes_per_token_per_site"])
    );
    let acc: Vec<String> = methods
        .iter()
        .map(|m| format!("{} / {}", m["accelerators_80gb"], m["accelerators_141gb"]))
        .collect();
    assert_eq!(row(&table, "80 GB / 141 GB accelerators"), acc);
    assert_eq!(row(&table, "syncs / round"), ["32", "1", "1", "1"]);
    // The numbers themselves: FoMoE ρ = 2 of 8 holds dense + a quarter of the experts,
    // 24 bytes per value; DDP 16 bytes per value of all N.
    let fomoe = &methods[3];
    let held = 8_680_937_472u64 + 90_194_313_216 / 4;
    assert_eq!(fomoe["params_held_per_site"], held);
    assert_eq!(fomoe["memory_per_site"]["total"], 24 * held);
    assert_eq!(
        methods[0]["memory_per_site"]["total"],
        16 * 98_875_250_688u64
    );
    assert_eq!(methods[1]["bytes_reduction_vs_ddp"], 32.0);
}

#[test]
fn impossible_deployments_are_refused_in_one_line() {
    one_line_error(
        &fomoe(&["project", "--preset", "tiny", "--sites", "4", "--rho", "5"]),
        "error: invalid rho = 5: must be in 1..=4 (sites)",
    );
    one_line_error(
        &fomoe(&["project", "--preset", "tiny", "--sites", "3", "--rho", "2"]),
        "error: invalid rho = 2: n_experts·rho = 8·2 must be divisible by sites = 3",
    );
    one_line_error(
        &fomoe(&["project", "--preset", "tiny", "--rate", "0gbit"]),
        "error: invalid rate = 0gbit: must be greater than zero",
    );
    one_line_error(
        &fomoe(&["project", "--preset", "tiny", "--rate", "0"]),
        "error: invalid rate = 0: missing unit",
    );
    one_line_error(
        &fomoe(&["project", "--preset", "huge"]),
        "error: invalid preset = huge: one of tiny, small",
    );
    one_line_error(
        &fomoe(&["project", "--preset", "tiny", "--mfu", "1.5"]),
        "error: invalid mfu = 1.5: must be in (0, 1]",
    );
    one_line_error(
        &fomoe(&["project", "--sweep", "rho=2,3", "--sites", "16"]),
        "error: invalid rho = 3: n_experts·rho = 8·3 must be divisible by sites = 16",
    );
}

#[test]
fn a_toml_input_with_per_site_links() {
    let d = tempfile::tempdir().unwrap();
    let p = d.path().join("dep.toml");
    std::fs::write(
        &p,
        "[model]\npreset = \"paper-1b\"\n[deployment]\nsites = 4\nrho = 2\ninner_steps = 16\n\
         site_links = [\n  { up = \"1gbit\", down = \"1gbit\", delay = \"5ms\" },\n  \
         { up = \"1gbit\", down = \"1gbit\", delay = \"5ms\" },\n  \
         { up = \"100mbit\", down = \"1gbit\", delay = \"40ms\" },\n  \
         { up = \"1gbit\", down = \"1gbit\", delay = \"5ms\" },\n]\n",
    )
    .unwrap();
    let out = stdout(&fomoe(&[
        "project",
        "--config",
        p.to_str().unwrap(),
        "--json",
    ]));
    let v: serde_json::Value = serde_json::from_str(&out).unwrap();
    assert_eq!(v["deployment"]["links"]["kind"], "per-site");
    // The slow uplink of site 2 sets the pace: a uniform 1 Gbit/s deployment is faster.
    let uniform = stdout(&fomoe(&[
        "project",
        "--preset",
        "paper-1b",
        "--sites",
        "4",
        "--rho",
        "2",
        "--inner-steps",
        "16",
        "--rate",
        "1gbit",
        "--delay",
        "10ms",
        "--json",
    ]));
    let u: serde_json::Value = serde_json::from_str(&uniform).unwrap();
    for i in 0..4 {
        let slow = v["methods"][i]["comm_s_per_round"].as_f64().unwrap();
        let fast = u["methods"][i]["comm_s_per_round"].as_f64().unwrap();
        assert!(
            slow > fast,
            "{}: {slow} vs {fast}",
            v["methods"][i]["method"]
        );
        assert_eq!(
            v["methods"][i]["payload_bytes_per_round_per_site"],
            u["methods"][i]["payload_bytes_per_round_per_site"]
        );
    }
    std::fs::write(&p, "[deployment]\nsitez = 4\n").unwrap();
    one_line_error(
        &fomoe(&["project", "--config", p.to_str().unwrap()]),
        "unknown field `sitez`",
    );
}

#[test]
fn a_model_sweep_writes_the_figure_csv() {
    let d = tempfile::tempdir().unwrap();
    let csv = d.path().join("projection.csv");
    let o = fomoe(&[
        "project",
        "--sites",
        "8",
        "--rho",
        "2",
        "--sweep",
        "model=paper-1b,paper-10b,paper-100b",
        "--sweep",
        "inner_steps=8,32",
        "--csv",
        csv.to_str().unwrap(),
    ]);
    stdout(&o);
    let mut r = csv::Reader::from_path(&csv).unwrap();
    let header: Vec<String> = r.headers().unwrap().iter().map(str::to_string).collect();
    assert_eq!(
        header[..12],
        [
            "label",
            "total_params",
            "expert_share",
            "method",
            "sites",
            "rho",
            "inner_steps",
            "memory_per_site_bytes",
            "payload_bytes_per_round_per_site",
            "payload_bytes_per_token_per_site",
            "fits_80gb",
            "fits_141gb"
        ]
    );
    let rows: Vec<csv::StringRecord> = r.records().map(Result::unwrap).collect();
    assert_eq!(rows.len(), 3 * 2 * 4);
    let get = |rec: &csv::StringRecord, col: &str| {
        rec.get(header.iter().position(|h| h == col).unwrap())
            .unwrap()
            .to_string()
    };
    assert_eq!(get(&rows[0], "label"), "paper-1b");
    assert_eq!(get(&rows[0], "total_params"), "1197638656");
    assert_eq!(get(&rows[0], "inner_steps"), "8");
    assert_eq!(get(&rows[4], "inner_steps"), "32");
    assert_eq!(get(&rows[23], "label"), "paper-100b");
    assert_eq!(get(&rows[23], "method"), "fomoe");
    // paper-1b's FoMoE state fits an 80 GB accelerator, paper-100b's does not.
    assert_eq!(get(&rows[3], "fits_80gb"), "true");
    assert_eq!(get(&rows[23], "fits_80gb"), "false");
}

#[test]
fn the_headline_tables_show_where_the_claims_come_from() {
    let text = stdout(&fomoe(&["project", "--headline"]));
    assert!(text.contains("0.500   0.592"), "{text}");
    let v: serde_json::Value =
        serde_json::from_str(&stdout(&fomoe(&["project", "--headline", "--json"]))).unwrap();
    assert_eq!(v["paper"].as_array().unwrap().len(), 12);
    assert!(v["memory_100b"].as_array().unwrap().len() >= 5);
}

const SUITE: &str = r#"
seeds = [0]
[suite]
description = "validation: every method on tiny, 4 sites, sim"
[base]
preset = "tiny"
sites = 4
steps = 8
inner_steps = 4
eval_sequences = 2
threads_per_site = 1
[base.fomoe]
rho = 2
[base.network]
backend = "sim"
scenario = "consumer"
[base.data]
kind = "synthetic"
eval_sequences = 2
probe_sequences = 1
[grid]
method = ["ddp", "diloco", "photon", "fomoe"]
[[include]]
method = "fomoe"
fomoe.rho = [1, 4]
[[include]]
method = "fomoe"
wire_dtype = "int8"
[[include]]
method = "photon"
photon_topology = "ring"
[[include]]
method = "diloco"
network.backend = "relay"
"#;

fn run_suite(dir: &Path) -> std::path::PathBuf {
    let suite = dir.join("validate.toml");
    std::fs::write(&suite, SUITE).unwrap();
    let out = dir.join("results");
    stdout(&fomoe(&[
        "run",
        suite.to_str().unwrap(),
        "--out",
        out.to_str().unwrap(),
        "--quiet",
    ]));
    out.join("validate")
}

#[test]
fn projected_bytes_equal_measured_payload_for_every_method() {
    let d = tempfile::tempdir().unwrap();
    let suite = run_suite(d.path());
    let v: serde_json::Value = serde_json::from_str(&stdout(&fomoe(&[
        "project",
        "--validate",
        suite.to_str().unwrap(),
        "--json",
    ])))
    .unwrap();
    let runs = v["runs"].as_array().unwrap();
    assert_eq!(runs.len(), 9, "{v:#}");
    for r in runs {
        assert!(r["skipped"].is_null(), "{r}");
        assert_eq!(r["mismatches"].as_array().unwrap().len(), 0, "{r}");
        assert!(r["unreadable"].is_null(), "{r}");
        // Every site, and Photon star's aggregator.
        let endpoints = if r["run_id"] == "photon-s0" { 5 } else { 4 };
        assert_eq!(r["payload_checked"], endpoints, "{r}");
        assert_eq!(r["payload_predicted_total"], r["payload_measured_total"]);
        let t = &r["time"];
        assert!(t["comm_error"].as_f64().unwrap().is_finite(), "{r}");
    }
    let methods: std::collections::BTreeSet<&str> =
        runs.iter().map(|r| r["method"].as_str().unwrap()).collect();
    assert_eq!(methods.len(), 4);
    // FoMoE ρ = 1 sends only the dense part; its payload is below ρ = 2's.
    let payload = |id: &str| {
        runs.iter()
            .find(|r| r["run_id"] == id)
            .unwrap_or_else(|| panic!("no run {id}: {v:#}"))["payload_measured_total"]
            .as_u64()
            .unwrap()
    };
    assert!(payload("fomoe-rho1-s0") < payload("fomoe-s0"));
    assert!(payload("fomoe-s0") < payload("fomoe-rho4-s0"));

    // Compute predicted from a full-replica rate instead of taken from the run.
    let w: serde_json::Value = serde_json::from_str(&stdout(&fomoe(&[
        "project",
        "--validate",
        suite.to_str().unwrap(),
        "--tokens-per-s",
        "10000",
        "--json",
    ])))
    .unwrap();
    for r in w["runs"].as_array().unwrap() {
        let t = &r["time"];
        assert_eq!(t["compute_source"], "tokens_per_s", "{r}");
        // tiny: 8 steps of 8·64 tokens at 10k tokens/s is 0.41 s at most (FoMoE skips some).
        let c = t["compute_predicted_s"].as_f64().unwrap();
        assert!(c > 0.0 && c <= 8.0 * 512.0 / 1e4 + 1e-12, "{r}");
    }

    // A run whose measured payload disagrees fails, with the run and the endpoint named.
    let site1 = suite.join("fomoe-s0/site1.json");
    let mut report: serde_json::Value =
        serde_json::from_str(&std::fs::read_to_string(&site1).unwrap()).unwrap();
    report["payload_sent"] = (report["payload_sent"].as_u64().unwrap() + 4).into();
    std::fs::write(&site1, report.to_string()).unwrap();
    let o = fomoe(&["project", "--validate", suite.to_str().unwrap()]);
    let err = one_line_error(&o, "1 of 9 runs fail validation");
    assert!(err.contains("validate/fomoe-s0"), "{err}");
    let text = String::from_utf8_lossy(&o.stdout);
    assert!(
        text.contains("FAIL site 1 payload_sent: predicted"),
        "{text}"
    );
}

/// A run file with `extra` added to a single-site run of `tiny`.
fn run_one_with(dir: &Path, extra: &str) -> (Output, std::path::PathBuf) {
    let p = dir.join("c.toml");
    std::fs::write(&p, format!("method = \"single\"\nsites = 1\n{extra}\n")).unwrap();
    let out = dir.join("out");
    let o = fomoe(&[
        "run-one",
        p.to_str().unwrap(),
        "--out",
        out.to_str().unwrap(),
    ]);
    (o, out)
}

#[test]
fn absurd_sizes_are_refused_before_anything_runs() {
    let d = tempfile::tempdir().unwrap();
    let cases = [
        (
            "[model]\nbatch_size = 1000000000",
            "invalid model.batch_size = 1000000000: this run needs an estimated",
        ),
        (
            "[model]\nn_experts = 100000000",
            "invalid model.n_experts = 100000000: this run needs an estimated",
        ),
        (
            "[data]\nkind = \"synthetic\"\neval_sequences = 1000000000000",
            "invalid data.eval_sequences = 1000000000000: this run needs an estimated",
        ),
        (
            "[model]\nseq_len = 100000000",
            "invalid model.seq_len = 100000000: must be at most 1048576",
        ),
        (
            "preset = \"paper-100b\"",
            "invalid preset = paper-100b: this run needs an estimated",
        ),
    ];
    for (extra, needle) in cases {
        let (o, out) = run_one_with(d.path(), extra);
        one_line_error(&o, needle);
        assert!(!out.exists(), "{extra}: the run directory was written");
    }
    // The same through a suite: refused before the suite directory exists.
    let suite = d.path().join("big.toml");
    std::fs::write(
        &suite,
        "seeds = [0]\n[base]\nmethod = \"diloco\"\nsites = 4\n[base.model]\nbatch_size = 1000000000\n",
    )
    .unwrap();
    let out = d.path().join("results");
    let o = fomoe(&[
        "run",
        suite.to_str().unwrap(),
        "--out",
        out.to_str().unwrap(),
    ]);
    let err = one_line_error(&o, "invalid model.batch_size = 1000000000");
    assert!(err.contains("run diloco"), "{err}");
    assert!(!out.exists(), "the results directory was written");
}
