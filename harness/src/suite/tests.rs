use std::collections::BTreeSet;
use std::path::Path;

use super::*;
use crate::net::Backend;

fn parse(text: &str) -> Result<Suite, SuiteError> {
    Suite::parse(text, Path::new("t.toml"))
}

/// The error of `text`, checked to be one line naming the file.
fn err(text: &str) -> String {
    let e = match parse(text) {
        Ok(s) => panic!("expected an error, got {} runs", s.runs.len()),
        Err(e) => e.to_string(),
    };
    assert!(!e.contains('\n'), "not one line: {e}");
    assert!(e.starts_with("t.toml: "), "does not name the file: {e}");
    e
}

fn ids(s: &Suite) -> Vec<&str> {
    s.runs.iter().map(|r| r.id.as_str()).collect()
}

const GRID: &str = r#"
seeds = [0, 1]
[base]
preset = "tiny"
sites = 4
steps = 32
inner_steps = 16
[grid]
network.rate = ["10mbit", "100mbit"]
method = ["ddp", "diloco", "fomoe"]
fomoe.rho = [1, 2, 4]
"#;

#[test]
fn expansion_size_order_and_ids() {
    let s = parse(GRID).unwrap();
    assert_eq!(s.name, "t");
    // ddp and diloco ignore ρ: 2 rates × 2 seeds each; fomoe 3 ρ × 2 rates × 2 seeds.
    assert_eq!(s.runs.len(), 4 + 4 + 12);
    assert_eq!(
        s.varied,
        vec!["fomoe.rho".to_string(), "network.rate".to_string()]
    );
    assert_eq!(
        ids(&s),
        vec![
            "ddp-bw10m-s0",
            "ddp-bw10m-s1",
            "ddp-bw100m-s0",
            "ddp-bw100m-s1",
            "diloco-bw10m-s0",
            "diloco-bw10m-s1",
            "diloco-bw100m-s0",
            "diloco-bw100m-s1",
            "fomoe-rho1-bw10m-s0",
            "fomoe-rho1-bw10m-s1",
            "fomoe-rho1-bw100m-s0",
            "fomoe-rho1-bw100m-s1",
            "fomoe-rho2-bw10m-s0",
            "fomoe-rho2-bw10m-s1",
            "fomoe-rho2-bw100m-s0",
            "fomoe-rho2-bw100m-s1",
            "fomoe-rho4-bw10m-s0",
            "fomoe-rho4-bw10m-s1",
            "fomoe-rho4-bw100m-s0",
            "fomoe-rho4-bw100m-s1",
        ]
    );
    let unique: BTreeSet<&str> = ids(&s).into_iter().collect();
    assert_eq!(unique.len(), s.runs.len());
    let hashes: BTreeSet<&str> = s.runs.iter().map(|r| r.hash.as_str()).collect();
    assert_eq!(hashes.len(), s.runs.len());

    let r = s.run("fomoe-rho4-bw100m-s1").unwrap();
    assert_eq!(r.config.method, Method::Fomoe);
    assert_eq!(
        (r.config.fomoe.rho, r.config.seed, r.config.sites),
        (4, 1, 4)
    );
    assert_eq!(r.config.network.rate.as_deref(), Some("100mbit"));
    // DDP keeps the base ρ (default 2), whatever the grid says.
    assert_eq!(s.run("ddp-bw10m-s0").unwrap().config.fomoe.rho, 2);
}

#[test]
fn hashes_are_stable_across_parses_and_round_trips() {
    let a = parse(GRID).unwrap();
    let b = parse(GRID).unwrap();
    for (x, y) in a.runs.iter().zip(&b.runs) {
        assert_eq!((&x.id, &x.hash), (&y.id, &y.hash));
        assert_eq!(x.hash, x.config.run_hash());
        // JSON (the manifest) and TOML round trips keep the hash.
        let json = serde_json::to_string_pretty(&x.config).unwrap();
        let back: RunConfig = serde_json::from_str(&json).unwrap();
        assert_eq!(back.run_hash(), x.hash);
        let toml_text = toml::to_string(&x.config).unwrap();
        let back: RunConfig = toml::from_str(&toml_text).unwrap();
        assert_eq!(back.run_hash(), x.hash);
    }
    // The key order in the file does not matter.
    let reordered = GRID.replace(
        "network.rate = [\"10mbit\", \"100mbit\"]\nmethod = [\"ddp\", \"diloco\", \"fomoe\"]\n",
        "method = [\"ddp\", \"diloco\", \"fomoe\"]\nnetwork.rate = [\"10mbit\", \"100mbit\"]\n",
    );
    assert_ne!(reordered, GRID);
    let c = parse(&reordered).unwrap();
    assert_eq!(ids(&a), ids(&c));
}

#[test]
fn dotted_quoted_and_nested_grid_keys_are_the_same() {
    let dotted = "[grid]\nmethod = [\"fomoe\"]\nfomoe.rho = [1, 2]\n";
    let quoted = "[grid]\nmethod = [\"fomoe\"]\n\"fomoe.rho\" = [1, 2]\n";
    let nested = "[grid]\nmethod = [\"fomoe\"]\n[grid.fomoe]\nrho = [1, 2]\n";
    let a = parse(dotted).unwrap();
    let b = parse(quoted).unwrap();
    let c = parse(nested).unwrap();
    assert_eq!(ids(&a), vec!["fomoe-rho1-s0", "fomoe-rho2-s0"]);
    assert_eq!(ids(&a), ids(&b));
    assert_eq!(ids(&a), ids(&c));
    assert_eq!(a.runs[1].hash, c.runs[1].hash);
}

#[test]
fn single_valued_and_table_valued_knobs() {
    let s = parse(
        r#"
[base]
method = "diloco"
[grid]
wire_dtype = ["bf16"]
data.heterogeneity = [{ kind = "iid" }, { kind = "dirichlet", alpha = 0.5 }]
network.backend = ["sim", "relay"]
network.delay = ["20ms", "0.1s"]
"#,
    )
    .unwrap();
    // wire_dtype has one value: applied, not spelled.
    assert!(s
        .runs
        .iter()
        .all(|r| r.config.wire_dtype == crate::collective::WireDtype::Bf16));
    assert_eq!(s.runs.len(), 8);
    assert_eq!(s.runs[0].id, "diloco-sim-d20ms-het_iid-s0");
    assert_eq!(
        s.runs[7].id,
        "diloco-relay-d100ms-het_dirichlet_alpha0.5-s0"
    );
    assert_eq!(s.runs[7].config.network.backend, Backend::Relay);
    // The data table of the base (defaults) stays: only heterogeneity changed.
    assert_eq!(s.runs[7].config.data.kind, crate::data::DataKind::Synthetic);
}

#[test]
fn include_exclude_and_collapse() {
    let s = parse(
        r#"
[base]
preset = "tiny"
steps = 32
inner_steps = 16
[grid]
method = ["diloco", "fomoe"]
sites = [2, 4]
fomoe.rho = [1, 2, 4]
[[exclude]]
sites = 2
fomoe.rho = [4]
[[include]]
method = "fomoe"
sites = 4
fomoe.skip_policy = ["drop", "renormalize", "reroute"]
"#,
    )
    .unwrap();
    assert_eq!(
        ids(&s),
        vec![
            "diloco-m2-s0",
            "diloco-m4-s0",
            // skip_policy varies only in the include: spelled where it is not the base's.
            "fomoe-m2-rho1-s0",
            "fomoe-m2-rho2-s0",
            "fomoe-m4-rho1-s0",
            "fomoe-m4-rho2-s0",
            "fomoe-m4-rho4-s0",
            // include: reroute (the default) at ρ = 2 is the run above, collapsed.
            "fomoe-m4-rho2-skip_drop-s0",
            "fomoe-m4-rho2-skip_renormalize-s0",
        ]
    );
}

/// Defect 7 of issue 10: an `[[include]]` that adds faults to an existing run is another
/// run (its own hash and id), not merged into the clean one.
#[test]
fn faults_added_by_an_include_make_a_distinct_run() {
    let s = parse(
        r#"
[base]
preset = "tiny"
sites = 2
steps = 8
inner_steps = 4
method = "diloco"
[[include]]
faults = [[{ site = 1, at_step = 6, kind = "crash" }]]
"#,
    )
    .unwrap();
    assert_eq!(s.runs.len(), 2, "{:?}", ids(&s));
    assert_ne!(s.runs[0].hash, s.runs[1].hash);
    assert_ne!(s.runs[0].id, s.runs[1].id);
    assert!(s.runs[0].config.faults.is_empty());
    assert_eq!(s.runs[1].config.faults.len(), 1);
    assert_eq!(
        s.runs[0].config.checkpoint_hash(),
        s.runs[1].config.checkpoint_hash()
    );
}

/// Issue 10: an empty suite file used to run one default DiLoCo run.
#[test]
fn a_suite_that_sets_no_knobs_is_an_error() {
    for text in [
        "",
        "# nothing\n",
        "seeds = [0]\n",
        "[suite]\nname = \"x\"\n",
        "[base]\n",
    ] {
        let e = err(text);
        assert!(e.contains("sets no knobs"), "{text:?}: {e}");
    }
}

/// A grid whose cross product is astronomically large is refused before it is expanded
/// (hostile input: 12 keys of 10 values would be 10^12 points).
#[test]
fn a_grid_beyond_the_run_limit_is_refused_before_expansion() {
    let values = (0..10)
        .map(|i| i.to_string())
        .collect::<Vec<_>>()
        .join(", ");
    let keys = [
        "steps",
        "inner_steps",
        "sites",
        "threads_per_site",
        "eval_sequences",
        "eval_every_rounds",
    ];
    let mut text = String::from("[base]\nmethod = \"ddp\"\n[grid]\n");
    for k in keys {
        text.push_str(&format!("{k} = [{values}]\n"));
    }
    let t = std::time::Instant::now();
    let e = err(&text);
    assert!(
        e.contains(
            "[grid] expands to 1000000 grid points × 1 seeds, more than the limit of 10000 runs"
        ),
        "{e}"
    );
    assert!(t.elapsed() < std::time::Duration::from_secs(2));
    let e = err(&format!(
        "seeds = [0, 1]\n[base]\nsites = 2\n[grid]\nsteps = [{}]\n",
        (1..=5001)
            .map(|i| (i * 4).to_string())
            .collect::<Vec<_>>()
            .join(",")
    ));
    assert!(e.contains("5001 grid points × 2 seeds"), "{e}");
}

#[test]
fn validation_errors_name_file_key_value_and_allowed() {
    // TOML syntax: line and column.
    let e = err("seeds = [0,\n[base]\n");
    assert!(e.starts_with("t.toml: line 2, column"), "{e}");
    // Unknown top-level key.
    let e = err("seed = 3\n");
    assert!(
        e.contains("t.toml: seed: unknown field `seed`, expected one of"),
        "{e}"
    );
    assert!(e.contains("`seeds`"), "{e}");
    // Unknown key in [suite].
    let e = err("[suite]\nnmae = \"x\"\n");
    assert!(e.contains("suite.nmae: unknown field `nmae`"), "{e}");
    // Bad suite name.
    let e = err("[suite]\nname = \"a/b\"\n");
    assert!(e.contains("suite.name: \"a/b\": use letters"), "{e}");
    // Unknown nested base key, with what is allowed.
    let e = err("[base.fomoe]\nrhoo = 2\n");
    assert_eq!(e, "t.toml: base.fomoe.rhoo: unknown field `rhoo`, expected one of `rho`, `placement`, `skip_policy`, `aux_scope`, `router_sync`");
    // Wrong type in base.
    let e = err("[base]\nsites = \"four\"\n");
    assert_eq!(
        e,
        "t.toml: base.sites: invalid type: string \"four\", expected usize"
    );
    // A grid key that names no field, at the top and nested.
    let e = err("[grid]\nsitez = [1]\n");
    assert!(
        e.starts_with("t.toml: grid key sitez = 1: sitez: unknown field `sitez`, expected one of"),
        "{e}"
    );
    let e = err("[grid]\nfomoe.rhoo = [1]\n");
    assert!(
        e.starts_with("t.toml: grid key fomoe.rhoo = 1: fomoe.rhoo: unknown field `rhoo`"),
        "{e}"
    );
    let e = err("[grid]\n\"preset.size\" = [1]\n");
    assert_eq!(
        e,
        "t.toml: grid key preset.size = 1: preset.size: `preset` is not a table"
    );
    // A grid value of the wrong kind.
    let e = err("[grid]\nmethod = [\"ddp\", \"dpp\"]\n");
    assert!(
        e.starts_with(
            "t.toml: grid key method = \"dpp\": method: unknown variant `dpp`, expected one of"
        ),
        "{e}"
    );
    // A value that is not a list, an empty list, the seed in the grid.
    assert_eq!(
        err("[grid]\nsites = 4\n"),
        "t.toml: grid.sites: must be a list of values, e.g. sites = [4]"
    );
    assert_eq!(
        err("[grid]\nsites = []\n"),
        "t.toml: grid.sites: empty list: give at least one value"
    );
    assert_eq!(
        err("[grid]\nseed = [1, 2]\n"),
        "t.toml: grid.seed: set the seeds with the top-level `seeds = [...]`"
    );
    assert!(
        err("[grid]\nsites = [2]\n\"sites\" = [4]\n").contains("line"),
        "duplicate key is a TOML error"
    );
    assert_eq!(
        err("[grid]\n\"fomoe.rho\" = [1]\n[grid.fomoe]\nrho = [2]\n"),
        "t.toml: grid.fomoe.rho: given twice"
    );
    // Seeds.
    assert_eq!(
        err("seeds = [1]\n[base]\nseed = 2\n"),
        "t.toml: base.seed: set the seeds with the top-level `seeds = [...]` instead"
    );
    assert_eq!(
        err("seeds = []\n"),
        "t.toml: seeds: must list at least one seed"
    );
    assert_eq!(
        err("seeds = [3, 3]\n"),
        "t.toml: seeds: seed 3 listed twice"
    );
    // Cross-field validation of an expanded run: E·ρ not divisible by M.
    let e = err("[base]\nmethod = \"fomoe\"\npreset = \"tiny\"\n[grid]\nsites = [3, 4]\n");
    assert_eq!(e, "t.toml: run fomoe-m3-s0: invalid fomoe.rho = 2: n_experts·rho = 8·2 must be divisible by sites = 3");
    // ρ > M.
    let e = err("[base]\nmethod = \"fomoe\"\nsites = 2\n[grid]\nfomoe.rho = [1, 4]\n");
    assert_eq!(
        e,
        "t.toml: run fomoe-rho4-s0: invalid fomoe.rho = 4: must be in 1..=2 (sites)"
    );
    // steps not a multiple of H, a bad rate, a bad preset.
    let e = err("[base]\nsteps = 10\n[grid]\ninner_steps = [5, 4]\n");
    assert_eq!(
        e,
        "t.toml: run diloco-h4-s0: invalid steps = 10: must be a multiple of inner_steps = 4"
    );
    let e = err("[grid]\nnetwork.rate = [\"fast\"]\n");
    assert!(
        e.starts_with("t.toml: run diloco-s0: invalid network.rate = fast: "),
        "{e}"
    );
    let e = err("[grid]\npreset = [\"tiny\", \"huge\"]\n");
    assert!(
        e.starts_with("t.toml: run diloco-huge-s0: invalid preset = huge: one of tiny, small"),
        "{e}"
    );
    let e = err("[base.optim]\nlr = -1.0\n");
    assert_eq!(
        e,
        "t.toml: run diloco-s0: invalid optim.lr = -1: must be a finite number > 0"
    );
    // Two values with the same short form.
    let e = err("[grid]\nnetwork.rate = [\"100mbit\", \"100000kbit\"]\n");
    assert!(
        e.starts_with("t.toml: run id diloco-bw100m-s0 names two different configs"),
        "{e}"
    );
    // Excludes: not a grid key, matching nothing, removing everything.
    let e = err("[grid]\nsites = [2, 4]\n[[exclude]]\nsteps = 8\n");
    assert_eq!(
        e,
        "t.toml: exclude[0].steps: not a grid key; grid keys: sites"
    );
    let e = err("[grid]\nsites = [2, 4]\n[[exclude]]\nsites = [8]\n");
    assert_eq!(e, "t.toml: exclude #0 (sites=8) matches no grid point");
    assert_eq!(
        err("[grid]\nsites = [4]\n[[exclude]]\nsites = 4\n"),
        "t.toml: the suite expands to no runs"
    );
    // Include keys are checked like grid keys.
    let e = err("[[include]]\nmethdo = \"ddp\"\n");
    assert!(
        e.starts_with("t.toml: grid key methdo = \"ddp\": methdo: unknown field `methdo`"),
        "{e}"
    );
    // A combination that only fails together: a partial outer table.
    let e = err("[grid]\nouter.lr = [0.5]\n");
    assert!(e.contains("outer: missing field `kind`"), "{e}");
    // A missing file.
    let e = Suite::load(Path::new("/nonexistent/x.toml"))
        .unwrap_err()
        .to_string();
    assert!(e.starts_with("/nonexistent/x.toml: No such file"), "{e}");
}

/// Every suite under `experiments/` parses and validates.
#[test]
fn every_experiment_file_validates() {
    let dir = Path::new(env!("CARGO_MANIFEST_DIR")).join("../experiments");
    let mut files: Vec<_> = std::fs::read_dir(&dir)
        .unwrap()
        .map(|e| e.unwrap().path())
        .filter(|p| p.extension().is_some_and(|e| e == "toml"))
        .collect();
    files.sort();
    let names: Vec<String> = files
        .iter()
        .map(|p| p.file_stem().unwrap().to_str().unwrap().to_string())
        .collect();
    for want in ["smoke", "quick", "paper", "wan-sweep"] {
        assert!(
            names.iter().any(|n| n == want),
            "experiments/{want}.toml missing"
        );
    }
    for f in &files {
        let s = Suite::load(f).unwrap_or_else(|e| panic!("{e}"));
        assert!(!s.runs.is_empty());
        assert_eq!(s.name, f.file_stem().unwrap().to_str().unwrap());
    }

    // smoke: all four methods, tiny, 2–4 sites, both sim and relay.
    let smoke = Suite::load(&dir.join("smoke.toml")).unwrap();
    let methods: BTreeSet<&str> = smoke.runs.iter().map(|r| r.config.method.name()).collect();
    assert_eq!(
        methods,
        ["ddp", "diloco", "fomoe", "photon"].into_iter().collect()
    );
    assert!(smoke
        .runs
        .iter()
        .all(|r| r.config.preset == "tiny" && (2..=4).contains(&r.config.sites)));
    for b in [Backend::Sim, Backend::Relay] {
        assert!(
            smoke.runs.iter().any(|r| r.config.network.backend == b),
            "smoke lacks {b}"
        );
    }
    // quick: all four methods, small, 4 sites, one link scenario.
    let quick = Suite::load(&dir.join("quick.toml")).unwrap();
    let methods: BTreeSet<&str> = quick.runs.iter().map(|r| r.config.method.name()).collect();
    assert_eq!(
        methods,
        ["ddp", "diloco", "fomoe", "photon"].into_iter().collect()
    );
    assert!(quick
        .runs
        .iter()
        .all(|r| r.config.preset == "small" && r.config.sites == 4));
    let links: BTreeSet<String> = quick
        .runs
        .iter()
        .map(|r| format!("{:?}", r.config.link_spec().unwrap()))
        .collect();
    assert_eq!(links.len(), 1);
}

const HASH_CHILD_ENV: &str = "FOMOE_TEST_SUITE_HASH_CHILD";

fn id_hash_lines() -> String {
    parse(GRID)
        .unwrap()
        .runs
        .iter()
        .map(|r| format!("{} {}\n", r.id, r.hash))
        .collect()
}

/// Not a test on its own: the child of `hashes_are_stable_across_processes`.
#[test]
fn suite_hash_child() {
    if let Ok(out) = std::env::var(HASH_CHILD_ENV) {
        std::fs::write(out, id_hash_lines()).unwrap();
    }
}

/// Another process (another run of the binary, with its own hash-map seeds and allocation
/// addresses) expands the suite to the same ids and hashes.
#[test]
fn hashes_are_stable_across_processes() {
    let dir = tempfile::tempdir().unwrap();
    let out = dir.path().join("hashes.txt");
    let status = std::process::Command::new(std::env::current_exe().unwrap())
        .args([
            "--exact",
            "suite::tests::suite_hash_child",
            "--test-threads=1",
        ])
        .env(HASH_CHILD_ENV, &out)
        .stdout(std::process::Stdio::null())
        .status()
        .unwrap();
    assert!(status.success());
    assert_eq!(std::fs::read_to_string(&out).unwrap(), id_hash_lines());
}
