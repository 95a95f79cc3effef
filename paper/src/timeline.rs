//! The participation timeline of a suite's scenario runs (`participation_timeline.svg`, issue
//! 11): one panel per run that has a `participation.csv` (runs with faults or a round
//! deadline), rounds on x, sites on y, one cell per (round, site) coloured by the site's
//! part in that round:
//!
//! - participant (its update is in the round's average), late (trained the round but
//!   reported after the deadline: left out, caught up after), crashed (trained part of the
//!   round, then crashed), absent (did not train);
//! - a cell whose site came back at the start of that round carries an `R`.
//!
//! Each panel's caption gives the run id and its rounds with partial participation (some
//! site not in the average) as a count of the rounds drawn. A suite without scenario runs
//! gets no timeline (the figure and its report section are absent, so the other suites'
//! outputs do not change); a run whose participation.csv has no rows draws an empty panel
//! labelled `(no rows)`. Like every figure it is a pure function of the files.

use std::path::Path;

use harness::scenario::participation::{ParticipationRow, Status, PARTICIPATION_FILE};
use plotters::prelude::*;

use crate::figures::{DrawResult, FONT};
use crate::load::SuiteData;
use crate::PaperError;

/// The figure's file stem.
pub const NAME: &str = "participation_timeline";

/// Its title in the report.
pub const TITLE: &str = "Participation timeline: each site's part in each round";

/// One run's rows (participation.csv, sorted by round then site).
#[derive(Clone, Debug, PartialEq)]
pub struct Timeline {
    pub run_id: String,
    pub rows: Vec<ParticipationRow>,
}

impl Timeline {
    /// Rounds in which some site recorded in that round was not a participant.
    pub fn partial_rounds(&self) -> Vec<usize> {
        let mut rounds: Vec<usize> = self
            .rows
            .iter()
            .filter(|r| r.status != Status::Participant)
            .map(|r| r.round)
            .collect();
        rounds.dedup();
        rounds
    }

    fn rounds(&self) -> usize {
        self.rows.iter().map(|r| r.round + 1).max().unwrap_or(0)
    }

    fn sites(&self) -> usize {
        self.rows.iter().map(|r| r.site + 1).max().unwrap_or(0)
    }
}

/// Whether a run is a scenario run: it injects faults or has a round deadline. Every run
/// with rounds writes a participation.csv; only these can have a site out of a round.
pub fn is_scenario_run(cfg: &harness::config::RunConfig) -> bool {
    !cfg.faults.is_empty() || cfg.round_deadline.is_some()
}

/// The timelines of the suite's scenario runs ([`is_scenario_run`]) that have a
/// participation.csv, in suite order.
pub fn load(suite: &SuiteData) -> Result<Vec<Timeline>, PaperError> {
    let mut out = Vec::new();
    for run in &suite.runs {
        let scenario = run.summary.config.as_ref().is_some_and(is_scenario_run);
        let path = suite.dir.join(run.id()).join(PARTICIPATION_FILE);
        if scenario && path.is_file() {
            out.push(Timeline {
                run_id: run.id().to_string(),
                rows: harness::results::read_rows::<ParticipationRow>(&path)?.rows,
            });
        }
    }
    Ok(out)
}

fn status_color(s: Status) -> RGBColor {
    match s {
        Status::Participant => RGBColor(44, 160, 44),
        Status::Late => RGBColor(255, 127, 14),
        Status::Crashed => RGBColor(214, 39, 40),
        Status::Absent => RGBColor(190, 190, 190),
    }
}

const STATUSES: [Status; 4] = [
    Status::Participant,
    Status::Late,
    Status::Crashed,
    Status::Absent,
];

/// The SVG text of the timeline of `runs` (at least one).
pub fn render(runs: &[Timeline]) -> Result<String, String> {
    let panel_h = 60 + 28 * runs.iter().map(Timeline::sites).max().unwrap_or(1).max(1) as u32;
    let mut svg = String::new();
    {
        let root = SVGBackend::with_string(&mut svg, (1100, 50 + panel_h * runs.len() as u32))
            .into_drawing_area();
        draw(&root, runs, panel_h)
            .and_then(|_| root.present().map_err(Into::into))
            .map_err(|e| e.to_string())?;
    }
    Ok(crate::figures::tidy_svg(&svg))
}

fn draw(root: &crate::figures::Area, runs: &[Timeline], panel_h: u32) -> DrawResult {
    root.fill(&WHITE)?;
    let (legend, body) = root.split_vertically(50);
    for (i, s) in STATUSES.iter().enumerate() {
        let x = 20 + 170 * i as i32;
        legend.draw(&Rectangle::new(
            [(x, 18), (x + 18, 36)],
            status_color(*s).filled(),
        ))?;
        legend.draw(&Text::new(s.name(), (x + 24, 20), (FONT, 15)))?;
    }
    legend.draw(&Text::new(
        "R = came back this round",
        (20 + 170 * 4, 20),
        (FONT, 15),
    ))?;
    let panels = body.split_evenly((runs.len(), 1));
    for (panel, run) in panels.iter().zip(runs) {
        debug_assert!(panel.dim_in_pixel().1 >= panel_h.saturating_sub(1));
        draw_run(panel, run)?;
    }
    Ok(())
}

fn draw_run(area: &crate::figures::Area, run: &Timeline) -> DrawResult {
    let (rounds, sites) = (run.rounds().max(1), run.sites().max(1));
    let caption = if run.rows.is_empty() {
        format!("{} (no rows)", run.run_id)
    } else {
        format!(
            "{}: {} of {} rounds with partial participation",
            run.run_id,
            run.partial_rounds().len(),
            run.rounds()
        )
    };
    let mut chart = ChartBuilder::on(area)
        .caption(caption, (FONT, 16))
        .margin(8)
        .x_label_area_size(22)
        .y_label_area_size(60)
        .build_cartesian_2d(-0.5..rounds as f64 - 0.5, -0.5..sites as f64 - 0.5)?;
    chart
        .configure_mesh()
        .disable_mesh()
        .x_labels(rounds.min(20))
        .y_labels(sites)
        .x_label_formatter(&|x| {
            if x.fract() == 0.0 && *x >= 0.0 {
                format!("round {x:.0}")
            } else {
                String::new()
            }
        })
        .y_label_formatter(&|y| {
            if y.fract() == 0.0 && *y >= 0.0 && (*y as usize) < sites {
                format!("site {y:.0}")
            } else {
                String::new()
            }
        })
        .label_style((FONT, 12))
        .draw()?;
    for r in &run.rows {
        let (x0, y0) = (r.round as f64, r.site as f64);
        chart.draw_series(std::iter::once(Rectangle::new(
            [(x0 - 0.46, y0 - 0.42), (x0 + 0.46, y0 + 0.42)],
            status_color(r.status).filled(),
        )))?;
        if r.rejoined {
            chart.draw_series(std::iter::once(Text::new(
                "R",
                (x0 - 0.05, y0 + 0.25),
                (FONT, 13),
            )))?;
        }
    }
    Ok(())
}

/// The report's section for the timeline: the figure and, per run, its partial rounds and
/// how many (round, site) cells had each status.
pub fn report_section(suite: &str, runs: &[Timeline]) -> String {
    let mut md = format!(
        "\n## {TITLE}\n\n![{TITLE}](figures/{suite}/{NAME}.svg)\n\n[PNG](figures/{suite}/{NAME}.png)\n\n"
    );
    md.push_str("| run | partial rounds | participant | late | crashed | absent | rejoins |\n");
    md.push_str("|---|---|---|---|---|---|---|\n");
    for run in runs {
        let count = |s: Status| run.rows.iter().filter(|r| r.status == s).count();
        let partial = run.partial_rounds();
        let partial = if partial.is_empty() {
            "none".to_string()
        } else {
            partial
                .iter()
                .map(usize::to_string)
                .collect::<Vec<_>>()
                .join(", ")
        };
        md.push_str(&format!(
            "| {} | {partial} | {} | {} | {} | {} | {} |\n",
            run.run_id,
            count(Status::Participant),
            count(Status::Late),
            count(Status::Crashed),
            count(Status::Absent),
            run.rows.iter().filter(|r| r.rejoined).count(),
        ));
    }
    md.push_str(&format!(
        "\nFrom each run's `{PARTICIPATION_FILE}` (one row per site per round).\n"
    ));
    md
}

/// Write the timeline figure into `fig_dir` when the suite has scenario runs; returns the
/// files written and the report section (both empty without scenario runs).
pub fn write(
    suite: &SuiteData,
    fig_dir: &Path,
) -> Result<(Vec<std::path::PathBuf>, String), PaperError> {
    let runs = load(suite)?;
    if runs.is_empty() {
        return Ok((Vec::new(), String::new()));
    }
    let svg = render(&runs).map_err(|reason| PaperError::Plot {
        path: fig_dir.join(format!("{NAME}.svg")),
        reason,
    })?;
    let files = crate::write_figure(fig_dir, NAME, &svg)?;
    Ok((files.to_vec(), report_section(&suite.name, &runs)))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn row(round: usize, site: usize, status: Status, rejoined: bool) -> ParticipationRow {
        ParticipationRow {
            round,
            site,
            status,
            rejoined,
            ..Default::default()
        }
    }

    fn crash_and_rejoin() -> Timeline {
        let mut rows = Vec::new();
        for round in 0..4 {
            for site in 0..3 {
                let status = match (round, site) {
                    (1, 2) => Status::Crashed,
                    (2, 2) => Status::Absent,
                    (2, 1) => Status::Late,
                    _ => Status::Participant,
                };
                rows.push(row(round, site, status, round == 3 && site == 2));
            }
        }
        Timeline {
            run_id: "fomoe-crash-s0".into(),
            rows,
        }
    }

    #[test]
    fn only_runs_with_faults_or_a_deadline_are_scenario_runs() {
        use harness::config::RunConfig;
        use harness::scenario::{Fault, FaultKind};
        let clean = RunConfig::default();
        assert!(!is_scenario_run(&clean));
        let mut crash = clean.clone();
        crash.faults = vec![Fault {
            site: 1,
            at_step: Some(4),
            kind: FaultKind::Crash,
            ..Default::default()
        }];
        assert!(is_scenario_run(&crash));
        let deadline = RunConfig {
            round_deadline: Some("30s".into()),
            ..clean
        };
        assert!(is_scenario_run(&deadline));
    }

    #[test]
    fn partial_rounds_are_the_rounds_with_a_non_participant() {
        assert_eq!(crash_and_rejoin().partial_rounds(), vec![1, 2]);
        let clean = Timeline {
            run_id: "x".into(),
            rows: (0..3)
                .map(|r| row(r, 0, Status::Participant, false))
                .collect(),
        };
        assert!(clean.partial_rounds().is_empty());
    }

    #[test]
    fn the_figure_draws_a_cell_per_row_coloured_by_status_and_marks_rejoins() {
        let t = crash_and_rejoin();
        let svg = render(std::slice::from_ref(&t)).unwrap();
        // 12 cells + 4 legend swatches; one of each non-participant colour per such cell.
        let rects = svg.matches("<rect").count();
        assert!(rects >= 16, "{rects} rects");
        let fill = |c: RGBColor| format!("fill=\"#{:02X}{:02X}{:02X}\"", c.0, c.1, c.2);
        for (status, cells) in [
            (Status::Crashed, 1),
            (Status::Absent, 1),
            (Status::Late, 1),
            (Status::Participant, 9),
        ] {
            // Each status colour: its cells plus its legend swatch.
            assert_eq!(
                svg.matches(&fill(status_color(status))).count(),
                cells + 1,
                "{status:?}"
            );
        }
        assert_eq!(svg.matches("\nR\n</text>").count(), 1, "one rejoin marker");
        assert!(svg.contains("fomoe-crash-s0: 2 of 4 rounds with partial participation"));
        // A pure function of its input.
        assert_eq!(svg, render(&[t]).unwrap());
    }

    #[test]
    fn the_report_section_counts_each_status_and_lists_partial_rounds() {
        let md = report_section("faults", &[crash_and_rejoin()]);
        assert!(
            md.contains("figures/faults/participation_timeline.svg"),
            "{md}"
        );
        assert!(
            md.contains("| fomoe-crash-s0 | 1, 2 | 9 | 1 | 1 | 1 | 1 |"),
            "{md}"
        );
    }
}
