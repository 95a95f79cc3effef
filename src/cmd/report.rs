//! `fomoe report RESULTS_DIR [--json]`: a table per suite from the run directories alone.
//!
//! Columns: run id, status, method, one column per knob that varies within the suite
//! (blank where a knob does not apply to the method), total training payload, bytes vs DDP
//! (DDP payload / run payload; `*` = no DDP run with the same knobs, the closest one is
//! used, see `harness::results::summary`), tokens/s, the global model's final eval loss per
//! domain and their mean, the mean of the sites' own models (`local`), the largest
//! round-to-round increase of the global loss (`max rise`, with its round), the time to the
//! target loss ("not reached (best …)" when not reached) and the first eval from which the
//! loss stays under it (`stays under`; "not at the end" when the last eval is above it).
//!
//! Then two blocks: the global and local mean eval loss of every run at every evaluated
//! round, and each complete run's losses at equal tokens, equal clock and equal payload
//! (the common budgets of `harness::results::quality`: no interpolation, a run with no eval
//! within a budget says so).

use std::fmt::Write as _;
use std::path::{Path, PathBuf};

use anyhow::Result;
use harness::results::summary::knob_cell;
use harness::results::{load_suite, suite_dirs, Summary};

#[derive(clap::Args)]
pub struct Args {
    /// A suite's results directory (results/<suite>) or a directory of them (results/).
    results_dir: PathBuf,
    /// One JSON object per suite ({"suite", "dir", "runs": [...]}) instead of tables.
    #[arg(long)]
    json: bool,
}

pub fn run(a: Args) -> Result<()> {
    let dirs = suite_dirs(&a.results_dir)?;
    if dirs.is_empty() {
        anyhow::bail!(
            "{}: no run directories (with manifest.json) found",
            a.results_dir.display()
        );
    }
    for d in dirs {
        let rows = load_suite(&d)?;
        let name = suite_name(&d);
        if a.json {
            outln!(
                "{}",
                serde_json::json!({ "suite": name, "dir": d, "runs": rows })
            );
        } else {
            out!("{}", table(&name, &rows));
        }
    }
    Ok(())
}

fn suite_name(dir: &Path) -> String {
    dir.file_name()
        .and_then(|n| n.to_str())
        .unwrap_or("suite")
        .to_string()
}

/// Decimal units with three significant digits: `950 B`, `1.23 MB`.
pub fn human_bytes(bytes: u64) -> String {
    let b = bytes as f64;
    for (unit, name) in [(1e12, "TB"), (1e9, "GB"), (1e6, "MB"), (1e3, "kB")] {
        if b >= unit {
            return format!("{} {name}", sig3(b / unit));
        }
    }
    format!("{bytes} B")
}

fn sig3(x: f64) -> String {
    if x >= 100.0 {
        format!("{x:.0}")
    } else if x >= 10.0 {
        format!("{x:.1}")
    } else {
        format!("{x:.2}")
    }
}

fn human_rate(x: f64) -> String {
    if x >= 1e6 {
        format!("{}M", sig3(x / 1e6))
    } else if x >= 1e3 {
        format!("{}k", sig3(x / 1e3))
    } else {
        sig3(x)
    }
}

/// Columns padded to their widest cell, two spaces apart, with a dashed rule under the
/// header.
fn aligned(header: &[String], cells: &[Vec<String>]) -> String {
    let widths: Vec<usize> = (0..header.len())
        .map(|i| {
            cells
                .iter()
                .map(|row| row[i].chars().count())
                .chain([header[i].chars().count()])
                .max()
                .unwrap_or(0)
        })
        .collect();
    let line = |row: &[String]| -> String {
        let parts: Vec<String> = row
            .iter()
            .zip(&widths)
            .map(|(c, w)| format!("{c:<w$}"))
            .collect();
        parts.join("  ").trim_end().to_string()
    };
    let mut out = String::new();
    let _ = writeln!(out, "{}", line(header));
    let _ = writeln!(
        out,
        "{}",
        widths
            .iter()
            .map(|w| "-".repeat(*w))
            .collect::<Vec<_>>()
            .join("  ")
    );
    for c in cells {
        let _ = writeln!(out, "{}", line(c));
    }
    out
}

fn loss4(v: Option<f64>) -> String {
    v.map(|x| format!("{x:.4}")).unwrap_or_else(|| "-".into())
}

/// The time-to-target cell: first eval at or under the target (`first`) or the first eval
/// from which it stays there (`!first`).
fn target_cell(r: &Summary, first: bool) -> String {
    let (time, step) = if first {
        (r.time_to_target_s, r.step_to_target)
    } else {
        (r.time_to_stay_target_s, r.step_to_stay_target)
    };
    match (r.target_loss, time, r.best_eval_loss) {
        (None, _, _) => "no target".into(),
        (Some(_), Some(t), _) => format!("{t:.2} s (step {})", step.unwrap_or_default()),
        (Some(_), None, Some(best)) if first => format!("not reached (best {best:.4})"),
        (Some(_), None, _) if !first && r.time_to_target_s.is_some() => "not at the end".into(),
        (Some(_), None, _) => "not reached".into(),
    }
}

/// The report table of one suite, with its notes, the per-round losses and the losses at
/// equal budgets.
pub fn table(suite: &str, rows: &[Summary]) -> String {
    let mut knobs: Vec<String> = Vec::new();
    let mut domains: Vec<String> = Vec::new();
    for r in rows {
        for k in r.knobs.keys() {
            if !knobs.contains(k) {
                knobs.push(k.clone());
            }
        }
        for d in &r.final_eval_loss_by_domain {
            if !domains.contains(&d.domain) {
                domains.push(d.domain.clone());
            }
        }
    }
    let mut header: Vec<String> = vec!["run".into(), "status".into(), "method".into()];
    header.extend(knobs.iter().cloned());
    header.extend(["payload".to_string(), "vs DDP".into(), "tok/s".into()]);
    header.extend(domains.iter().map(|d| format!("loss {d}")));
    header.extend([
        "loss".to_string(),
        "local".into(),
        "max rise".into(),
        "to target".into(),
        "stays under".into(),
    ]);

    let mut inexact = false;
    let cells: Vec<Vec<String>> = rows
        .iter()
        .map(|r| {
            let mut c = vec![
                r.run_id.clone(),
                r.status.clone(),
                r.method.clone().unwrap_or_default(),
            ];
            c.extend(
                knobs
                    .iter()
                    .map(|k| r.knobs.get(k).map(knob_cell).unwrap_or_default()),
            );
            // Incomplete and unreadable runs have no numbers: never a made-up 0 B.
            c.push(if r.has_numbers() {
                human_bytes(r.payload_bytes)
            } else {
                "-".into()
            });
            c.push(match (r.bytes_reduction_vs_ddp, r.ddp_ref_exact) {
                (Some(x), Some(exact)) => {
                    inexact |= !exact;
                    format!("{}×{}", sig3(x), if exact { "" } else { "*" })
                }
                _ => "-".into(),
            });
            c.push(r.tokens_per_s.map(human_rate).unwrap_or_else(|| "-".into()));
            for d in &domains {
                let v = r.final_eval_loss_by_domain.iter().find(|x| &x.domain == d);
                c.push(loss4(v.map(|x| x.eval_loss)));
            }
            c.push(loss4(r.final_eval_loss));
            c.push(loss4(r.final_local_eval_loss));
            c.push(match (r.max_loss_increase, r.max_loss_increase_round) {
                (Some(x), Some(round)) => format!("{x:.4} (r{round})"),
                (Some(x), None) => format!("{x:.4}"),
                _ => "-".into(),
            });
            c.push(target_cell(r, true));
            c.push(target_cell(r, false));
            c
        })
        .collect();

    let complete = rows.iter().filter(|r| r.is_complete()).count();
    let mut out = String::new();
    let _ = writeln!(
        out,
        "\nsuite {suite}: {} runs, {complete} complete",
        rows.len()
    );
    out.push_str(&aligned(&header, &cells));
    let _ = writeln!(out, "payload: training bytes sent by all endpoints; vs DDP: DDP payload / run payload at the same knobs");
    let _ = writeln!(out, "loss: global model (every expert, after the sync), mean over domains; local: mean of the sites' own models (own experts and skip policy, before the sync); max rise: largest round-to-round increase of loss (round); stays under: first eval from which loss stays <= target");
    if inexact {
        let _ = writeln!(out, "* no DDP run with the same knobs: compared with the closest DDP run (summary.csv ddp_ref)");
    }
    for r in rows.iter().filter(|r| r.error.is_some()) {
        let _ = writeln!(
            out,
            "{} {}: {}",
            r.run_id,
            r.status,
            r.error.as_deref().unwrap_or_default()
        );
    }
    out.push_str(&per_round(rows));
    out.push_str(&at_budgets(rows));
    out
}

/// Per run two lines: the global and the local mean eval loss at every evaluated round.
fn per_round(rows: &[Summary]) -> String {
    let rows: Vec<&Summary> = rows.iter().filter(|r| !r.evals.is_empty()).collect();
    if rows.is_empty() {
        return String::new();
    }
    let rounds: Vec<usize> = {
        let mut v: Vec<usize> = rows
            .iter()
            .flat_map(|r| r.evals.iter().map(|p| p.round))
            .collect();
        v.sort();
        v.dedup();
        v
    };
    let mut header: Vec<String> = vec!["run".into(), "model".into()];
    header.extend(rounds.iter().map(|r| format!("r{r}")));
    let mut cells = Vec::new();
    for r in rows {
        for (label, local) in [("global", false), ("local", true)] {
            let mut c = vec![
                if local {
                    String::new()
                } else {
                    r.run_id.clone()
                },
                label.to_string(),
            ];
            c.extend(rounds.iter().map(|round| {
                r.evals
                    .iter()
                    .find(|p| p.round == *round)
                    .map_or("-".into(), |p| {
                        format!("{:.2}", if local { p.local_loss } else { p.loss })
                    })
            }));
            cells.push(c);
        }
    }
    format!(
        "\neval loss per round (mean over domains): global model and mean of the sites' own models\n{}",
        aligned(&header, &cells)
    )
}

/// Each complete run's global and local loss at the suite's common token, clock and payload
/// budgets (its last eval within each; see harness::results::quality).
fn at_budgets(rows: &[Summary]) -> String {
    let compared: Vec<&Summary> = rows
        .iter()
        .filter(|r| r.at_equal_tokens.is_some())
        .collect();
    let Some(first) = compared.first() else {
        return String::new();
    };
    let budget = |a: &Option<harness::results::summary::AtBudget>| a.as_ref().map(|a| a.budget);
    let mut header = vec!["run".to_string()];
    for (name, b) in [
        ("tokens", budget(&first.at_equal_tokens).map(human_rate)),
        (
            "clock",
            budget(&first.at_equal_clock).map(|c| format!("{c:.2} s")),
        ),
        (
            "payload",
            budget(&first.at_equal_payload).map(|b| human_bytes(b as u64)),
        ),
    ] {
        let b = b.unwrap_or_else(|| "-".into());
        header.extend([format!("{name} {b}: loss"), "local".into(), "round".into()]);
    }
    let cells: Vec<Vec<String>> = compared
        .iter()
        .map(|r| {
            let mut c = vec![r.run_id.clone()];
            for a in [&r.at_equal_tokens, &r.at_equal_clock, &r.at_equal_payload] {
                match a {
                    Some(a) if a.round.is_some() => c.extend([
                        loss4(a.loss),
                        loss4(a.local_loss),
                        a.round.map(|x| x.to_string()).unwrap_or_default(),
                    ]),
                    _ => c.extend(["no eval within".into(), "-".into(), "-".into()]),
                }
            }
            c
        })
        .collect();
    format!(
        "\nfinal loss at equal budgets (the smallest final budget among complete runs; each run at its last eval within it, not interpolated)\n{}",
        aligned(&header, &cells)
    )
}

#[cfg(test)]
mod tests {
    use super::*;
    use harness::results::quality::EvalPoint;
    use harness::results::summary::AtBudget;

    fn row(id: &str, target: Option<f64>, time: Option<f64>, exact: bool) -> Summary {
        let mut r = Summary::unreadable(id, "x");
        r.status = "complete".into();
        r.error = None;
        r.method = Some("fomoe".into());
        r.knobs.insert("fomoe.rho".into(), serde_json::json!(2));
        r.payload_bytes = 2_000_000;
        r.bytes_reduction_vs_ddp = Some(45.44);
        r.ddp_ref_exact = Some(exact);
        r.tokens_per_s = Some(12_345.0);
        r.final_eval_loss_by_domain = vec![harness::results::summary::DomainLoss {
            domain: "markov0".into(),
            eval_loss: 2.5,
        }];
        r.final_eval_loss = Some(2.5);
        r.final_local_eval_loss = Some(2.25);
        r.best_eval_loss = Some(2.4);
        r.max_loss_increase = Some(0.1);
        r.max_loss_increase_round = Some(1);
        r.target_loss = target;
        r.time_to_target_s = time;
        r.step_to_target = time.map(|_| 64);
        r.evals = [(0, 3.0, 3.5), (1, 3.1, 3.0)]
            .into_iter()
            .map(|(round, loss, local_loss)| EvalPoint {
                round,
                step: 32 * (round + 1),
                tokens: 1000,
                clock_s: 1.0,
                payload_bytes: 10,
                loss,
                local_loss,
            })
            .collect();
        r
    }

    #[test]
    fn table_cells() {
        let mut rows = vec![
            row("a", Some(3.0), Some(12.5), true),
            row("b", Some(2.0), None, false),
            row("c", None, None, true),
        ];
        rows[0].time_to_stay_target_s = Some(20.0);
        rows[0].step_to_stay_target = Some(96);
        rows[1].time_to_target_s = None;
        let budget = |round: Option<usize>, loss: Option<f64>| {
            Some(AtBudget {
                budget: 150_000.0,
                round,
                loss,
                local_loss: loss.map(|l| l + 1.0),
            })
        };
        for r in &mut rows[..2] {
            r.at_equal_tokens = budget(Some(1), Some(2.5));
            r.at_equal_clock = budget(Some(0), Some(3.0));
        }
        rows[0].at_equal_payload = budget(Some(1), Some(2.5));
        rows[1].at_equal_payload = budget(None, None);
        rows[2].evals.clear();
        let t = table("s", &rows);
        let lines: Vec<&str> = t.lines().collect();
        assert_eq!(lines[1], "suite s: 3 runs, 3 complete");
        assert!(lines[2].starts_with("run  status    method  fomoe.rho  payload  vs DDP  tok/s  loss markov0  loss    local   max rise     to target"), "{t}");
        assert!(
            lines[4].contains("2.00 MB  45.4×   12.3k  2.5000        2.5000  2.2500  0.1000 (r1)  12.50 s (step 64)")
                && lines[4].ends_with("20.00 s (step 96)"),
            "{t}"
        );
        assert!(
            lines[5].contains("45.4×*") && lines[5].contains("not reached (best 2.4000)"),
            "{t}"
        );
        assert!(
            lines[6].ends_with("no target") && lines[6].matches("no target").count() == 2,
            "{t}"
        );
        assert!(t.contains("* no DDP run with the same knobs"), "{t}");
        // Per round: global and local lines of the runs with evals (c has none).
        let i = lines
            .iter()
            .position(|l| l.starts_with("eval loss per round"))
            .unwrap();
        assert_eq!(lines[i + 1], "run  model   r0    r1");
        assert_eq!(lines[i + 3], "a    global  3.00  3.10");
        assert_eq!(lines[i + 4], "     local   3.50  3.00");
        assert_eq!(
            lines[i + 7],
            "",
            "b's two lines end the block, c has no evals: {t}"
        );
        // Equal budgets: only runs that were compared; a run with no eval within says so.
        let j = lines
            .iter()
            .position(|l| l.starts_with("final loss at equal budgets"))
            .unwrap();
        assert_eq!(
            lines[j + 1],
            "run  tokens 150k: loss  local   round  clock 150000.00 s: loss  local   round  payload 150 kB: loss  local   round"
        );
        assert_eq!(
            lines[j + 3],
            "a    2.5000             3.5000  1      3.0000                   4.0000  0      2.5000                3.5000  1"
        );
        assert!(
            lines[j + 4].ends_with("no eval within        -       -"),
            "{t}"
        );
        assert_eq!(lines.len(), j + 5, "{t}");
    }

    #[test]
    fn incomplete_rows_show_no_numbers() {
        let mut r = row("a", None, None, true);
        r.status = "incomplete".into();
        r.error = Some("rounds.csv holds 10 bytes, the complete run wrote 20".into());
        r.payload_bytes = 0;
        r.bytes_reduction_vs_ddp = None;
        r.tokens_per_s = None;
        r.final_eval_loss_by_domain.clear();
        r.final_eval_loss = None;
        let t = table("s", &[r]);
        let lines: Vec<&str> = t.lines().collect();
        assert_eq!(lines[1], "suite s: 1 runs, 0 complete");
        assert!(
            lines[4].starts_with("a    incomplete  fomoe   2          -        -       -"),
            "{t}"
        );
        assert!(!t.contains("0 B"), "{t}");
        assert!(t.contains("a incomplete: rounds.csv holds 10 bytes"), "{t}");
    }

    #[test]
    fn units() {
        assert_eq!(human_bytes(950), "950 B");
        assert_eq!(human_bytes(1_234_567), "1.23 MB");
        assert_eq!(human_bytes(45_600_000_000), "45.6 GB");
        assert_eq!(human_rate(12_345.0), "12.3k");
        assert_eq!(human_rate(512.0), "512");
    }
}
