//! `fomoe report RESULTS_DIR [--json]`: a table per suite from the run directories alone.
//!
//! Columns: run id, status, method, one column per knob that varies within the suite
//! (blank where a knob does not apply to the method), total training payload, bytes vs DDP
//! (DDP payload / run payload; `*` = no DDP run with the same knobs, the closest one is
//! used, see `harness::results::summary`), tokens/s, final eval loss per domain and their
//! mean, and time to the target loss ("not reached (best …)" when not reached).

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

/// The report table of one suite, with its notes.
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
    header.extend(["loss".to_string(), "to target".into()]);

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
                c.push(
                    v.map(|x| format!("{:.4}", x.eval_loss))
                        .unwrap_or_else(|| "-".into()),
                );
            }
            c.push(
                r.final_eval_loss
                    .map(|x| format!("{x:.4}"))
                    .unwrap_or_else(|| "-".into()),
            );
            c.push(
                match (r.target_loss, r.time_to_target_s, r.best_eval_loss) {
                    (None, _, _) => "no target".into(),
                    (Some(_), Some(t), _) => {
                        format!("{t:.2} s (step {})", r.step_to_target.unwrap_or_default())
                    }
                    (Some(_), None, Some(best)) => format!("not reached (best {best:.4})"),
                    (Some(_), None, None) => "not reached".into(),
                },
            );
            c
        })
        .collect();

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
    let complete = rows.iter().filter(|r| r.is_complete()).count();
    let mut out = String::new();
    let _ = writeln!(
        out,
        "\nsuite {suite}: {} runs, {complete} complete",
        rows.len()
    );
    let _ = writeln!(out, "{}", line(&header));
    let _ = writeln!(
        out,
        "{}",
        widths
            .iter()
            .map(|w| "-".repeat(*w))
            .collect::<Vec<_>>()
            .join("  ")
    );
    for c in &cells {
        let _ = writeln!(out, "{}", line(c));
    }
    let _ = writeln!(out, "payload: training bytes sent by all endpoints; vs DDP: DDP payload / run payload at the same knobs");
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
    out
}

#[cfg(test)]
mod tests {
    use super::*;

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
        r.best_eval_loss = Some(2.4);
        r.target_loss = target;
        r.time_to_target_s = time;
        r.step_to_target = time.map(|_| 64);
        r
    }

    #[test]
    fn table_cells() {
        let rows = vec![
            row("a", Some(3.0), Some(12.5), true),
            row("b", Some(2.0), None, false),
            row("c", None, None, true),
        ];
        let t = table("s", &rows);
        let lines: Vec<&str> = t.lines().collect();
        assert_eq!(lines[1], "suite s: 3 runs, 3 complete");
        assert!(lines[2].starts_with("run  status    method  fomoe.rho  payload  vs DDP  tok/s  loss markov0  loss    to target"), "{t}");
        assert!(
            lines[4].contains("2.00 MB  45.4×   12.3k  2.5000        2.5000  12.50 s (step 64)"),
            "{t}"
        );
        assert!(
            lines[5].contains("45.4×*") && lines[5].ends_with("not reached (best 2.4000)"),
            "{t}"
        );
        assert!(lines[6].ends_with("no target"), "{t}");
        assert!(t.contains("* no DDP run with the same knobs"), "{t}");
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
        assert!(lines[4].starts_with("a    incomplete  fomoe   2          -        -       -"), "{t}");
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
