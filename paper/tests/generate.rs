//! `paper::generate` on a small synthetic suite written through the harness's own writers:
//! files produced, valid SVG naming every run, byte-identical on regeneration, report numbers
//! equal to the inputs, and one-line errors naming the bad file.

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};

use harness::config::{Method, RunConfig};
use harness::results::{RunDir, RunEnv};
use harness::telemetry::{RoundRow, RoutingRow, StepRow};

const SITES: usize = 2;
const STEPS: usize = 20;
const TOKENS: usize = 64;

fn env() -> RunEnv {
    RunEnv {
        suite: "synth".into(),
        backend: "cpu".into(),
        cores: 2,
        git_commit: "abc".into(),
        host: "h".into(),
    }
}

struct Eval {
    round: usize,
    step: usize,
    clock_s: f64,
    losses: [f64; 2],
    payload: u64,
}

/// One run: SITES × STEPS step rows (TOKENS tokens, clock = step/2 s, 50 payload bytes
/// each), the given evals (domains `a`, `b`, floors 1.0 and 1.5), and routing rows for
/// two layers per round with the given (saturation, agreement, overlap, cv, skip) per layer.
/// Per layer: (saturation, cross-site agreement, overlap with previous, cv, skip rate).
type Layer = (f64, Option<f64>, Option<f64>, f64, f64);

fn write_run(
    suite: &Path,
    id: &str,
    method: Method,
    target: Option<f64>,
    evals: &[Eval],
    routing: &[(usize, [Layer; 2])],
) {
    let cfg = RunConfig {
        method,
        target_loss: target,
        ..RunConfig::default()
    };
    let mut dir = RunDir::create(&suite.join(id), id, &cfg, &env()).unwrap();
    for step in 1..=STEPS {
        for site in 0..SITES {
            dir.steps
                .push(&StepRow {
                    site,
                    step,
                    round: (step - 1) / 10,
                    tokens: TOKENS,
                    clock_s: step as f64 * 0.5,
                    payload_sent: 50,
                    ..Default::default()
                })
                .unwrap();
        }
    }
    for e in evals {
        for (d, (name, floor)) in [("a", 1.0), ("b", 1.5)].iter().enumerate() {
            dir.rounds
                .push(&RoundRow {
                    round: e.round,
                    step: e.step,
                    domain: name.to_string(),
                    eval_loss: e.losses[d],
                    floor: Some(*floor),
                    local_eval_loss: e.losses[d],
                    payload_bytes_total: e.payload,
                    clock_s: e.clock_s,
                    ..Default::default()
                })
                .unwrap();
        }
    }
    for (round, layers) in routing {
        for (layer, &(sat, agree, overlap, cv, skip)) in layers.iter().enumerate() {
            dir.routing
                .push(&RoutingRow {
                    round: *round,
                    layer,
                    saturation_topk: Some(sat),
                    overlap_prev_topk: overlap,
                    cross_site_agreement_topk: agree,
                    cv,
                    skip_rate: skip,
                    ..Default::default()
                })
                .unwrap();
        }
    }
    dir.finish(&Ok(())).unwrap();
}

/// ddp-a: reaches target 2.0 at round 1 (mean 1.75); fomoe-b: does not (best 2.5), 8× fewer
/// bytes; diloco-c: no evals, no routing rows (bytes from steps.csv).
fn synthetic_suite(root: &Path) -> PathBuf {
    let suite = root.join("synth");
    std::fs::create_dir_all(&suite).unwrap();
    write_run(
        &suite,
        "ddp-a",
        Method::Ddp,
        Some(2.0),
        &[
            Eval {
                round: 0,
                step: 10,
                clock_s: 5.25,
                losses: [3.0, 2.5],
                payload: 1000,
            },
            Eval {
                round: 1,
                step: 20,
                clock_s: 10.5,
                losses: [2.0, 1.5],
                payload: 2000,
            },
        ],
        &[
            (
                0,
                [(0.5, None, None, 0.25, 0.0), (0.7, None, None, 0.75, 0.0)],
            ),
            (
                1,
                [
                    (1.0, None, Some(0.5), 0.5, 0.0),
                    (1.0, None, Some(0.7), 1.0, 0.0),
                ],
            ),
        ],
    );
    write_run(
        &suite,
        "fomoe-b",
        Method::Fomoe,
        Some(2.0),
        &[
            Eval {
                round: 0,
                step: 10,
                clock_s: 5.0,
                losses: [3.5, 2.5],
                payload: 100,
            },
            Eval {
                round: 1,
                step: 20,
                clock_s: 10.0,
                losses: [2.75, 2.25],
                payload: 250,
            },
        ],
        &[
            (
                0,
                [
                    (0.25, Some(0.5), None, 0.5, 0.25),
                    (0.75, Some(1.0), None, 0.5, 0.25),
                ],
            ),
            (
                1,
                [
                    (1.0, Some(0.75), Some(0.25), 0.5, 0.5),
                    (1.0, Some(0.25), Some(0.75), 0.5, 0.5),
                ],
            ),
        ],
    );
    write_run(&suite, "diloco-c", Method::Diloco, None, &[], &[]);
    suite
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

fn table_row<'a>(report: &'a str, id: &str) -> Vec<&'a str> {
    let line = report
        .lines()
        .find(|l| l.starts_with(&format!("| `{id}` |")))
        .unwrap_or_else(|| panic!("no table row for {id}:\n{report}"));
    line.trim_matches('|').split(" | ").map(str::trim).collect()
}

#[test]
fn figures_and_report_from_a_synthetic_suite_are_complete_and_deterministic() {
    let tmp = tempfile::tempdir().unwrap();
    let suite = synthetic_suite(tmp.path());
    let out = tmp.path().join("out");
    let g = paper::generate(&suite, &out).unwrap();
    assert_eq!(g.suite, "synth");
    assert_eq!(g.report, out.join("REPORT-synth.md"));
    let names: Vec<String> = g
        .figures
        .iter()
        .map(|p| p.file_name().unwrap().to_str().unwrap().to_string())
        .collect();
    let stems = [
        "payload_bytes",
        "eval_loss_tokens",
        "eval_loss_clock",
        "pareto",
        "stability",
        "throughput",
        "routing_stability",
        "load_balance",
    ];
    let want: Vec<String> = stems
        .iter()
        .flat_map(|s| [format!("{s}.svg"), format!("{s}.png")])
        .collect();
    assert_eq!(names, want);
    for f in g.figures.iter().filter(|f| f.extension().unwrap() == "svg") {
        assert_eq!(f.parent().unwrap(), out.join("figures").join("synth"));
        let svg = std::fs::read_to_string(f).unwrap();
        let tree =
            paper::raster::parse_svg(&svg).unwrap_or_else(|e| panic!("{}: {e}", f.display()));
        let name = f.file_name().unwrap().to_str().unwrap();
        // Every run is named, except in the figures that only compare complete runs with a
        // final eval (pareto) or FoMoE against full replicas (throughput).
        let ids: &[&str] = match name {
            "pareto.svg" => &["ddp-a", "fomoe-b"],
            "throughput.svg" => &[],
            _ => &["ddp-a", "fomoe-b", "diloco-c"],
        };
        for id in ids {
            assert!(svg.contains(id), "{} lacks {id}", f.display());
        }
        // The PNG beside it decodes at the SVG's size × PNG_SCALE, and is not blank.
        let (w, h) = paper::raster::png_size(tree.size().width(), tree.size().height());
        let png_path = f.with_extension("png");
        let mut reader = png::Decoder::new(std::io::BufReader::new(
            std::fs::File::open(&png_path).unwrap(),
        ))
        .read_info()
        .unwrap();
        let mut buf = vec![0; reader.output_buffer_size().unwrap()];
        let info = reader.next_frame(&mut buf).unwrap();
        assert_eq!((info.width, info.height), (w, h), "{}", png_path.display());
        assert!(w >= 1000 && h >= 500, "{}: {w}×{h}", png_path.display());
        let dark = buf[..info.buffer_size()]
            .chunks(4)
            .filter(|p| p[0] < 100 && p[1] < 100 && p[2] < 100)
            .count();
        assert!(
            dark > 2000,
            "{}: {dark} dark pixels: no text or axes",
            png_path.display()
        );
    }
    let first = read_all(&out);
    assert_eq!(first.len(), 17, "{:?}", first.keys().collect::<Vec<_>>());
    // Second generation: byte-identical, no temporaries left.
    paper::generate(&suite, &out).unwrap();
    assert_eq!(read_all(&out), first);

    // The payload figure annotates the ratio; the loss figure draws the mean floor (1.0+1.5)/2.
    let payload = std::fs::read_to_string(out.join("figures/synth/payload_bytes.svg")).unwrap();
    assert!(
        payload.contains("×8.000 vs DDP") && payload.contains("×1.000 vs DDP"),
        "{payload}"
    );
    let loss = std::fs::read_to_string(out.join("figures/synth/eval_loss_tokens.svg")).unwrap();
    assert!(loss.contains("entropy floor 1.2500"));
    assert!(loss.contains("diloco-c (no data)"));
    let routing = std::fs::read_to_string(out.join("figures/synth/routing_stability.svg")).unwrap();
    // diloco-c has no routing rows at all (legend), ddp-a only lacks cross-site agreement
    // (that panel's caption).
    assert_eq!(routing.matches("diloco-c (no data)").count(), 1);
    assert!(routing.contains("cross-site agreement (local vs global) (no data: ddp-a, diloco-c)"));
    assert!(routing.contains("saturation (overlap with final routing) (no data: diloco-c)"));
    assert!(!routing.contains("ddp-a (no data)") && !routing.contains("fomoe-b (no data)"));

    // The report's numbers are the inputs'.
    let report = std::fs::read_to_string(&g.report).unwrap();
    let head = report.lines().find(|l| l.starts_with("| run |")).unwrap();
    assert_eq!(
        head,
        "| run | status | method | `target_loss` | payload bytes | bytes vs DDP | tokens/s | eval loss `a` | eval loss `b` | eval loss mean | local eval loss mean | max rise | time to target | stays under target from |"
    );
    // target_loss varies (2, 2, none): it is a knob column.
    // ddp-a: 2 sites × 20 steps × 64 tokens = 2560 tokens over a 10.5 s clock (its last eval).
    assert_eq!(
        table_row(&report, "ddp-a"),
        [
            "`ddp-a`",
            "complete",
            "ddp",
            "2.0",
            "2000",
            "1.000×",
            "243.8",
            "2.0000",
            "1.5000",
            "1.7500",
            "1.7500",
            "0.0000",
            "10.50 s (step 20)",
            "10.50 s (step 20)"
        ]
    );
    // fomoe-b: 250 bytes, 2000/250 = 8; clock 10.0 s from steps.csv (rounds stop at 10.0 too).
    assert_eq!(
        table_row(&report, "fomoe-b"),
        [
            "`fomoe-b`",
            "complete",
            "fomoe",
            "2.0",
            "250",
            "8.000×",
            "256.0",
            "2.7500",
            "2.2500",
            "2.5000",
            "2.5000",
            "0.0000",
            "not reached (best 2.5000 > 2)",
            "not reached"
        ]
    );
    // diloco-c: no rounds rows; its target_loss (none) differs from ddp-a's: closest DDP run, `*`.
    // diloco-c: no rounds rows → bytes from steps.csv: 2 × 20 × 50 = 2000.
    assert_eq!(
        table_row(&report, "diloco-c"),
        [
            "`diloco-c`",
            "complete",
            "diloco",
            "-",
            "2000",
            "1.000×*",
            "256.0",
            "no eval",
            "no eval",
            "no eval",
            "no eval",
            "no eval",
            "no target",
            "no target"
        ]
    );
    for line in [
        "- payload bytes 2000: `ddp-a/rounds.csv`, largest `payload_bytes_total`",
        "- tokens 2560: `ddp-a/steps.csv`, Σ `tokens`",
        "- run clock 10.5 s: largest `clock_s` of `ddp-a/steps.csv` and `ddp-a/rounds.csv`; tokens/s 243.8095238095238 = tokens / clock",
        "- final eval loss `a` 2: `ddp-a/rounds.csv`, round 1, `eval_loss`",
        "- entropy floor mean 1.25: `ddp-a/rounds.csv`, round 1, `floor` averaged over domains",
        "- final eval loss mean 1.75: mean of the round 1 rows of `ddp-a/rounds.csv`",
        "- time to target 10.5 s at step 20: first round of `ddp-a/rounds.csv` whose mean `eval_loss` ≤ target 2",
        "- bytes vs DDP 8: payload bytes of `ddp-a`",
        "- time to target: not reached, target 2 (`fomoe-b/manifest.json` `config.target_loss`), best mean 2.5 (`fomoe-b/rounds.csv`)",
        "- payload bytes 2000: `diloco-c/steps.csv`, Σ `payload_sent` over sites (no rounds rows)",
        "- final eval loss: none (`diloco-c/rounds.csv`: no rows)",
        "- bytes vs DDP 1: payload bytes of `ddp-a` (its `rounds.csv` / `steps.csv` as above) / 2000 (closest DDP run: knob values differ)",
        "- time to target: none (`diloco-c/manifest.json` has no `config.target_loss`)",
        "- routing: none (`diloco-c/routing.csv` has no rows)",
        // fomoe-b last round: saturation (1+1)/2, agreement (0.75+0.25)/2, overlap (0.25+0.75)/2.
        "- routing, 2 rounds from `fomoe-b/routing.csv`; last round 1 (2 layers): saturation 1, cross-site agreement 0.5, overlap with previous 0.5, CV 0.5, skip rate 0.5",
        "- routing, 2 rounds from `ddp-a/routing.csv`; last round 1 (2 layers): saturation 1, cross-site agreement none, overlap with previous 0.6, CV 0.75, skip rate 0",
    ] {
        assert!(report.contains(line), "report lacks {line:?}:\n{report}");
    }
    for f in stems {
        assert!(
            report.contains(&format!("](figures/synth/{f}.svg)"))
                && report.contains(&format!("](figures/synth/{f}.png)")),
            "{f} not linked"
        );
    }
    assert!(report.contains("`*`: no DDP run with the same knob values"));
    assert!(report.contains("Runs with no rows, not drawn: `diloco-c`."));
    assert!(report.contains("No cross-site agreement values (empty column): `ddp-a`, `diloco-c`."));
}

#[test]
fn series_are_the_inputs_per_round() {
    let tmp = tempfile::tempdir().unwrap();
    let suite = paper::load_suite(&synthetic_suite(tmp.path())).unwrap();
    let ids: Vec<&str> = suite.runs.iter().map(|r| r.id()).collect();
    assert_eq!(
        ids,
        ["ddp-a", "diloco-c", "fomoe-b"],
        "no summary.csv: by name"
    );
    let a = &suite.runs[0];
    let pts: Vec<(usize, u64, f64, f64)> = a
        .eval
        .iter()
        .map(|p| (p.step, p.tokens, p.clock_s, p.loss))
        .collect();
    assert_eq!(pts, [(10, 1280, 5.25, 2.75), (20, 2560, 10.5, 1.75)]);
    assert_eq!(a.floor, Some(1.25));
    assert_eq!(a.routing[0].saturation_topk, Some(0.6));
    assert_eq!(a.routing[0].overlap_prev_topk, None);
    assert_eq!(a.routing[0].cv, 0.5);
    assert!(suite.runs[1].eval.is_empty() && suite.runs[1].routing.is_empty());
}

fn one_line_error(dir: &Path) -> String {
    let e = paper::generate(dir, &dir.join("out"))
        .unwrap_err()
        .to_string();
    assert_eq!(e.lines().count(), 1, "{e}");
    e
}

#[test]
fn a_missing_results_dir_is_a_one_line_error_and_a_bad_run_is_left_out() {
    let tmp = tempfile::tempdir().unwrap();
    let e = one_line_error(&tmp.path().join("nope"));
    assert!(e.contains("nope") && e.contains("no such directory"), "{e}");
    let e = one_line_error(tmp.path());
    assert!(e.contains("no run directories"), "{e}");

    // Issue 10: one malformed CSV used to stop the figures of the whole suite. A row
    // appended after the run makes the run incomplete (its file record no longer matches):
    // it is left out, said so, and the rest of the suite is drawn.
    let suite = synthetic_suite(tmp.path());
    let out = tmp.path().join("out");
    let rounds = suite.join("fomoe-b").join("rounds.csv");
    let mut text = std::fs::read_to_string(&rounds).unwrap();
    text.push_str("1,20,a,not-a-number,,0,0,0,0,0,0\n");
    std::fs::write(&rounds, text).unwrap();
    let g = paper::generate(&suite, &out).unwrap();
    assert_eq!(g.left_out.len(), 1, "{:?}", g.left_out);
    assert_eq!(g.left_out[0].0, "fomoe-b");
    assert!(
        g.left_out[0].1.starts_with("incomplete: rounds.csv holds"),
        "{:?}",
        g.left_out
    );
    assert_eq!(
        g.figures.len(),
        2 * paper::FIGURES.len(),
        "an SVG and a PNG each"
    );
    let md = std::fs::read_to_string(&g.report).unwrap();
    assert!(
        md.contains("Left out of this table and of every figure"),
        "{md}"
    );
    assert!(
        md.contains("- `fomoe-b`: incomplete: rounds.csv holds"),
        "{md}"
    );
    assert!(!md.contains("| `fomoe-b` |"), "not in the table: {md}");
    for (name, _) in paper::FIGURES {
        let svg =
            std::fs::read_to_string(paper::figures_dir(&out, "synth").join(format!("{name}.svg")))
                .unwrap();
        assert!(!svg.contains("fomoe-b"), "{name} draws a left-out run");
    }

    // Without a file record (a schema-1 manifest) the same file is unreadable, named with
    // its line; a manifest that is not JSON is unreadable too. Neither stops the suite.
    let m = suite.join("fomoe-b").join("manifest.json");
    let mut v: serde_json::Value = serde_json::from_slice(&std::fs::read(&m).unwrap()).unwrap();
    v.as_object_mut().unwrap().remove("files");
    std::fs::write(&m, serde_json::to_vec(&v).unwrap()).unwrap();
    std::fs::write(suite.join("ddp-a").join("manifest.json"), "{ not json").unwrap();
    let g = paper::generate(&suite, &out).unwrap();
    let why: std::collections::BTreeMap<&str, &str> = g
        .left_out
        .iter()
        .map(|(id, w)| (id.as_str(), w.as_str()))
        .collect();
    assert!(why["ddp-a"].contains("ddp-a/manifest.json"), "{why:?}");
    assert!(
        why["fomoe-b"].contains(&rounds.display().to_string()) && why["fomoe-b"].contains("line 6"),
        "{why:?}"
    );
}
