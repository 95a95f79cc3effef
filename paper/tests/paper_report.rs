//! `paper::paper_report` on a constructed suite and projection: the claims carry the inputs'
//! numbers (and change when they change), a target not reached is reported with its number,
//! regeneration is byte-identical, `--check` catches edited, missing and stale files, the
//! projection figures parse and their PNGs decode at their size, bad inputs are one-line
//! errors naming the file.

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};

use harness::bytes::{ddp_bytes_per_step, diloco_bytes_per_round, fomoe_bytes_per_round};
use harness::config::{Method, RunConfig};
use harness::model::SkipPolicy;
use harness::results::{RunDir, RunEnv};
use harness::telemetry::{RoundRow, StepRow};
use paper::paper_report::{check_paper, generate_paper, read_spec, ReportSpec};

const SITES: usize = 4;
const H: usize = 4;
const ROUNDS: usize = 2;

fn env() -> RunEnv {
    RunEnv {
        suite: "claims".into(),
        backend: "cpu".into(),
        cores: 2,
        git_commit: "abc".into(),
        host: "testhost".into(),
    }
}

/// One run of the `tiny` preset: SITES × (H·ROUNDS) steps of 100 tokens taking
/// `compute_ms` each, evals after each round with global losses `losses` (local = global −
/// 0.1), and `payload_per_round` training bytes (all sites) per round.
fn run(
    suite: &Path,
    id: &str,
    method: Method,
    rho: usize,
    compute_ms: f64,
    losses: [f64; ROUNDS],
    payload_per_round: u64,
) {
    run_skip(
        suite,
        id,
        method,
        (rho, SkipPolicy::Drop),
        compute_ms,
        losses,
        payload_per_round,
    );
}

/// [`run`] with FoMoE's skip policy given.
fn run_skip(
    suite: &Path,
    id: &str,
    method: Method,
    (rho, skip): (usize, SkipPolicy),
    compute_ms: f64,
    losses: [f64; ROUNDS],
    payload_per_round: u64,
) {
    let mut cfg = RunConfig {
        method,
        preset: "tiny".into(),
        sites: SITES,
        steps: H * ROUNDS,
        inner_steps: H,
        ..RunConfig::default()
    };
    cfg.fomoe.rho = rho;
    cfg.fomoe.skip_policy = skip;
    let mut dir = RunDir::create(&suite.join(id), id, &cfg, &env()).unwrap();
    for step in 1..=H * ROUNDS {
        for site in 0..SITES {
            dir.steps
                .push(&StepRow {
                    site,
                    step,
                    round: (step - 1) / H,
                    tokens: 100,
                    compute_ms,
                    clock_s: step as f64,
                    ..Default::default()
                })
                .unwrap();
        }
    }
    for (round, loss) in losses.iter().enumerate() {
        dir.rounds
            .push(&RoundRow {
                round,
                step: H * (round + 1),
                domain: "d".into(),
                eval_loss: *loss,
                local_eval_loss: loss - 0.1,
                payload_bytes_total: payload_per_round * (round as u64 + 1),
                clock_s: (H * (round + 1)) as f64,
                ..Default::default()
            })
            .unwrap();
    }
    dir.finish(&Ok(())).unwrap();
}

/// The `tiny` preset's dense and expert parameter counts.
fn tiny() -> (f64, f64) {
    let m = RunConfig {
        preset: "tiny".into(),
        ..RunConfig::default()
    }
    .model_config()
    .unwrap();
    (m.dense_params() as f64, m.expert_params() as f64)
}

/// FoMoE ρ = 2 and ρ = 4 (full replica), DiLoCo and DDP with the METHODS.md byte counts
/// (DiLoCo's scaled by `diloco_scale`), FoMoE's sites computing `skip_ms` per step against
/// 13 ms for the full replicas, FoMoE ρ = 2's global loss rising by 0.5.
fn suite(root: &Path, diloco_scale: f64, skip_ms: f64) -> PathBuf {
    let dir = root.join("claims");
    std::fs::create_dir_all(&dir).unwrap();
    let (nd, ne) = tiny();
    let per_round = |b: f64| (b * SITES as f64).round() as u64;
    run(
        &dir,
        "fomoe-r2",
        Method::Fomoe,
        2,
        skip_ms,
        [3.0, 3.5],
        per_round(fomoe_bytes_per_round(SITES, 2, nd, ne, 4.0)),
    );
    // Reroute computes every slot (on resident experts): no skip-token, whatever its speed.
    run_skip(
        &dir,
        "fomoe-r2-reroute",
        Method::Fomoe,
        (2, SkipPolicy::Reroute),
        1.0,
        [3.0, 2.9],
        per_round(fomoe_bytes_per_round(SITES, 2, nd, ne, 4.0)),
    );
    run(
        &dir,
        "fomoe-r4",
        Method::Fomoe,
        4,
        13.0,
        [3.0, 2.9],
        per_round(fomoe_bytes_per_round(SITES, 4, nd, ne, 4.0)),
    );
    run(
        &dir,
        "diloco",
        Method::Diloco,
        2,
        13.0,
        [3.0, 2.8],
        per_round(diloco_scale * diloco_bytes_per_round(SITES, nd + ne, 4.0)),
    );
    run(
        &dir,
        "ddp",
        Method::Ddp,
        2,
        13.0,
        [2.9, 2.7],
        per_round(H as f64 * ddp_bytes_per_step(SITES, nd + ne, 4.0)),
    );
    dir
}

const PROJECTION_HEAD: &str = "label,total_params,expert_share,method,sites,rho,inner_steps,memory_per_site_bytes,payload_bytes_per_round_per_site,payload_bytes_per_token_per_site,fits_80gb,fits_141gb\n";

fn projection(root: &Path) -> PathBuf {
    let p = root.join("projection.csv");
    let rows = [
        "paper-10b,1.0e10,0.6,ddp,8,,32,1.6e11,4.0e12,4.0e6,false,false",
        "paper-10b,1.0e10,0.6,diloco,8,,32,1.6e11,1.2e11,1.2e5,false,false",
        "paper-10b,1.0e10,0.6,fomoe,8,2,32,7.0e10,6.0e10,6.0e4,true,true",
        "paper-100b,1.0e11,0.6,ddp,8,,32,1.6e12,4.0e13,4.0e7,false,false",
        "paper-100b,1.0e11,0.6,diloco,8,,32,1.6e12,1.2e12,1.2e6,false,false",
        "paper-100b,1.0e11,0.6,fomoe,8,2,32,1.2e11,6.0e11,5.0e5,false,true",
    ];
    std::fs::write(&p, format!("{PROJECTION_HEAD}{}\n", rows.join("\n"))).unwrap();
    p
}

fn spec(suite: &Path, projection: Option<&Path>) -> ReportSpec {
    ReportSpec {
        suite: suite.to_path_buf(),
        suite_command: "fomoe run claims.toml".into(),
        projection: projection.map(Path::to_path_buf),
        projection_command: projection.map(|_| "fomoe project --sweep … --csv".into()),
        also: Vec::new(),
    }
}

fn read_all(dir: &Path) -> BTreeMap<PathBuf, Vec<u8>> {
    let mut out = BTreeMap::new();
    let mut stack = vec![dir.to_path_buf()];
    while let Some(d) = stack.pop() {
        for e in std::fs::read_dir(&d).unwrap() {
            let p = e.unwrap().path();
            if p.is_dir() {
                stack.push(p);
            } else {
                out.insert(
                    p.strip_prefix(dir).unwrap().to_path_buf(),
                    std::fs::read(&p).unwrap(),
                );
            }
        }
    }
    out
}

fn claim_row<'a>(report: &'a str, claim: &str) -> &'a str {
    report
        .lines()
        .find(|l| l.starts_with(&format!("| {claim} |")))
        .unwrap_or_else(|| panic!("no row {claim:?}:\n{report}"))
}

#[test]
fn claims_carry_the_inputs_numbers_and_regenerate_byte_identically() {
    let tmp = tempfile::tempdir().unwrap();
    let s = spec(&suite(tmp.path(), 1.0, 10.0), Some(&projection(tmp.path())));
    let out = tmp.path().join("out");
    let files = generate_paper(&s, &out).unwrap();
    let report = std::fs::read_to_string(out.join("REPORT.md")).unwrap();
    let (nd, ne) = tiny();
    let want =
        diloco_bytes_per_round(SITES, nd + ne, 4.0) / fomoe_bytes_per_round(SITES, 2, nd, ne, 4.0);

    let comm = claim_row(
        &report,
        "communication lower than DiLoCo / Photon (partial expert replication)",
    );
    assert!(
        comm.contains(&format!("{want:.2}× vs diloco (`diloco`")),
        "{comm}"
    );
    assert!(comm.contains("M=4, ρ=2, H=4"), "{comm}");
    assert!(comm.contains("equal the METHODS.md formula"), "{comm}");
    // Projected per token: diloco / fomoe = 1.2e5 / 6e4 at 10B, 1.2e6 / 5e5 at 100B.
    assert!(
        comm.contains("2.00× vs diloco at paper-10b")
            && comm.contains("2.40× vs diloco at paper-100b"),
        "{comm}"
    );
    let ddp = claim_row(&report, "communication lower than DDP");
    assert!(
        ddp.contains(&format!("{:.2}× vs ddp", want * H as f64)),
        "{ddp}"
    );
    assert!(ddp.contains("80.00× vs ddp at paper-100b"), "{ddp}");

    // 13 ms / 10 ms per step: 1.30×, below the paper's 1.4×, and said so.
    let skip = claim_row(&report, "throughput from skip-token");
    assert!(skip.contains("1.30× at ρ/M = 0.5"), "{skip}");
    assert!(skip.contains("not reached: up to 1.30× < 1.4×"), "{skip}");
    let routing = claim_row(&report, "stable routing");
    assert!(
        routing.contains("not reached: the global eval loss rises by 0.5000 > 0.05 nats"),
        "{routing}"
    );
    let big = claim_row(&report, "memory and communication benefits at 100B scale");
    assert!(
        big.contains("at paper-100b")
            && big.contains(
                "fomoe M=8 ρ=2 H=32: 120 GB per site (fits 141 GB), 600 GB per round per site"
            ),
        "{big}"
    );
    assert!(
        report.contains("- 5 run(s): host `testhost`, compute `cpu`"),
        "{report}"
    );
    assert!(report.contains("does not model congestion control"));
    for f in [
        "figures/projection/projection_memory.svg",
        "figures/projection/projection_bytes.png",
        "figures/claims/pareto.png",
        "REPORT-claims.md",
    ] {
        assert!(files.contains(&out.join(f)), "{f} not written");
    }

    // Byte-identical on regeneration.
    let first = read_all(&out);
    generate_paper(&s, &out).unwrap();
    assert_eq!(read_all(&out), first);

    // Other inputs, other numbers: a skip-token speed-up of 1.625 is reached; DiLoCo bytes
    // that disagree with the formula are flagged.
    let tmp2 = tempfile::tempdir().unwrap();
    let s2 = spec(&suite(tmp2.path(), 1.1, 8.0), None);
    generate_paper(&s2, &tmp2.path().join("out")).unwrap();
    let report2 = std::fs::read_to_string(tmp2.path().join("out/REPORT.md")).unwrap();
    assert!(
        claim_row(&report2, "throughput from skip-token").contains("reached: up to 1.62× ≥ 1.4×"),
        "{report2}"
    );
    let comm2 = claim_row(
        &report2,
        "communication lower than DiLoCo / Photon (partial expert replication)",
    );
    assert!(
        comm2.contains(&format!("{:.2}× vs diloco", want * 1.1))
            && comm2.contains("DIFFER from the METHODS.md formula (largest relative gap 0.100)"),
        "{comm2}"
    );
    assert!(comm2.contains("| no projection input |"), "{comm2}");
    assert!(!tmp2.path().join("out/figures/projection").exists());
}

#[test]
fn check_lists_edited_missing_and_stale_files() {
    let tmp = tempfile::tempdir().unwrap();
    let s = spec(&suite(tmp.path(), 1.0, 10.0), Some(&projection(tmp.path())));
    let out = tmp.path().join("out");
    generate_paper(&s, &out).unwrap();
    assert_eq!(check_paper(&s, &out).unwrap(), Vec::<String>::new());

    let mut report = std::fs::read_to_string(out.join("REPORT.md")).unwrap();
    report.push_str("edited\n");
    std::fs::write(out.join("REPORT.md"), report).unwrap();
    std::fs::remove_file(out.join("figures/claims/stability.png")).unwrap();
    std::fs::write(out.join("figures/projection/old.svg"), "<svg/>").unwrap();
    let problems = check_paper(&s, &out).unwrap();
    assert_eq!(problems.len(), 3, "{problems:?}");
    let has = |f: &str, what: &str| problems.iter().any(|p| p.contains(f) && p.ends_with(what));
    assert!(
        has("REPORT.md", "differs from the regenerated file"),
        "{problems:?}"
    );
    assert!(has("stability.png", "missing"), "{problems:?}");
    assert!(has("old.svg", "not generated any more"), "{problems:?}");
}

#[test]
fn projection_figures_parse_and_their_pngs_decode_at_their_size() {
    let tmp = tempfile::tempdir().unwrap();
    let p = paper::projection::read_projection(&projection(tmp.path())).unwrap();
    assert_eq!(
        paper::projection::series(&p),
        ["ddp M=8", "diloco M=8 H=32", "fomoe M=8 ρ=2 H=32"]
    );
    for (name, _) in paper::projection::PROJECTION_FIGURES {
        let svg = paper::projection::render(name, &p).unwrap();
        assert!(
            svg.contains("PROJECTION (system model, not measured)"),
            "{name}"
        );
        let tree = paper::raster::parse_svg(&svg).unwrap();
        let png = paper::raster::svg_to_png(&svg).unwrap();
        let r = png::Decoder::new(std::io::Cursor::new(png))
            .read_info()
            .unwrap();
        let want = paper::raster::png_size(tree.size().width(), tree.size().height());
        assert_eq!((r.info().width, r.info().height), want, "{name}");
    }
}

#[test]
fn bad_inputs_are_one_line_errors_naming_the_file() {
    let tmp = tempfile::tempdir().unwrap();
    let bad = tmp.path().join("bad.csv");
    std::fs::write(
        &bad,
        format!("{PROJECTION_HEAD}m,1e9,0.5,fomoe,8,2,32,lots,1,1,true,true\n"),
    )
    .unwrap();
    let e = paper::projection::read_projection(&bad)
        .unwrap_err()
        .to_string();
    assert!(
        e.contains("bad.csv") && e.contains("line 2") && e.lines().count() == 1,
        "{e}"
    );

    let spec_path = tmp.path().join("report.toml");
    std::fs::write(
        &spec_path,
        "suite = \"x\"\nsuite_command = \"y\"\nprojektion = \"z\"\n",
    )
    .unwrap();
    let e = read_spec(&spec_path).unwrap_err().to_string();
    assert!(
        e.contains("report.toml")
            && e.contains("line 3")
            && e.contains("projektion")
            && e.lines().count() == 1,
        "{e}"
    );

    std::fs::write(
        &spec_path,
        "suite = \"x\"\nsuite_command = \"y\"\nprojection = \"z.csv\"\n",
    )
    .unwrap();
    let e = read_spec(&spec_path).unwrap_err().to_string();
    assert!(e.contains("projection_command"), "{e}");
}
