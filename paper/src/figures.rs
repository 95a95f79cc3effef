//! The SVG figures of a suite (plotters, SVG backend; text is emitted as `<text>` so no
//! system font is read). Each figure has one colour per run, in suite order, and every run
//! in one legend column at the right; a run with nothing to draw is labelled `(no data)`, and
//! a panel names the runs without values for its metric in its caption.
//!
//! - `payload_bytes.svg`: one bar per run, height = training payload bytes (log axis), the
//!   bar labelled with the bytes and `×r vs DDP` where r = DDP payload / run payload.
//! - `eval_loss_tokens.svg` / `eval_loss_clock.svg`: mean eval loss over domains per eval vs
//!   cumulative training tokens / run clock; each run's mean entropy floor as a dashed line.
//! - `routing_stability.svg`: three panels vs round: saturation (top-k overlap with the final
//!   routing), cross-site agreement, overlap with the previous round; means over layers.
//! - `load_balance.svg`: two panels vs round: CV of the expert load, training skip rate.

use plotters::coord::Shift;
use plotters::prelude::*;

use crate::load::{RoutingPoint, SuiteData};

pub(crate) type DrawResult = Result<(), Box<dyn std::error::Error>>;
pub(crate) type Area<'a> = DrawingArea<SVGBackend<'a>, Shift>;

/// Run colours: the ten strong category colours, then their ten light companions, so a
/// suite of up to 20 runs gives every run its own colour (more repeat, in order).
const PALETTE: [RGBColor; 20] = [
    RGBColor(31, 119, 180),
    RGBColor(255, 127, 14),
    RGBColor(44, 160, 44),
    RGBColor(214, 39, 40),
    RGBColor(148, 103, 189),
    RGBColor(140, 86, 75),
    RGBColor(227, 119, 194),
    RGBColor(127, 127, 127),
    RGBColor(188, 189, 34),
    RGBColor(23, 190, 207),
    RGBColor(174, 199, 232),
    RGBColor(255, 187, 120),
    RGBColor(152, 223, 138),
    RGBColor(255, 152, 150),
    RGBColor(197, 176, 213),
    RGBColor(196, 156, 148),
    RGBColor(247, 182, 210),
    RGBColor(199, 199, 199),
    RGBColor(219, 219, 141),
    RGBColor(158, 218, 229),
];

pub(crate) fn color(i: usize) -> RGBColor {
    PALETTE[i % PALETTE.len()]
}

pub(crate) const FONT: &str = "sans-serif";

/// The SVG text of figure `name` (one of [`crate::FIGURES`]).
pub fn render(name: &str, suite: &SuiteData) -> Result<String, String> {
    let n = suite.runs.len();
    let mut svg = String::new();
    {
        let result = match name {
            "payload_bytes" => {
                let root = SVGBackend::with_string(&mut svg, ((140 * n as u32).max(900), 520))
                    .into_drawing_area();
                payload(&root, suite).and_then(|_| root.present().map_err(Into::into))
            }
            "eval_loss_tokens" | "eval_loss_clock" => {
                let root = SVGBackend::with_string(&mut svg, (1100, 560)).into_drawing_area();
                loss(&root, suite, name == "eval_loss_tokens")
                    .and_then(|_| root.present().map_err(Into::into))
            }
            "pareto" | "stability" | "throughput" => {
                return crate::quality_figures::render(name, suite);
            }
            "routing_stability" => {
                let root = SVGBackend::with_string(&mut svg, (1100, 1100)).into_drawing_area();
                routing(&root, suite).and_then(|_| root.present().map_err(Into::into))
            }
            "load_balance" => {
                let root = SVGBackend::with_string(&mut svg, (1100, 760)).into_drawing_area();
                balance(&root, suite).and_then(|_| root.present().map_err(Into::into))
            }
            other => return Err(format!("unknown figure {other:?}")),
        };
        result.map_err(|e| e.to_string())?;
    }
    Ok(tidy_svg(&svg))
}

/// Drop the `<polyline>` elements whose points are all one point: plotters' dashed series
/// can end with a zero-length dash, which draws nothing and which resvg reports as a path it
/// cannot stroke.
pub(crate) fn tidy_svg(svg: &str) -> String {
    svg.lines()
        .filter(|line| {
            let Some(pts) = line
                .trim_start()
                .strip_prefix("<polyline")
                .and_then(|l| l.split("points=\"").nth(1))
                .and_then(|l| l.split('"').next())
            else {
                return true;
            };
            let mut it = pts.split_whitespace();
            let first = it.next();
            !it.all(|p| Some(p) == first)
        })
        .map(|l| format!("{l}\n"))
        .collect()
}

/// Decimal byte units, three significant digits.
pub fn human_bytes(bytes: f64) -> String {
    for (unit, name) in [(1e12, "TB"), (1e9, "GB"), (1e6, "MB"), (1e3, "kB")] {
        if bytes >= unit {
            let x = bytes / unit;
            return if x >= 100.0 {
                format!("{x:.0} {name}")
            } else if x >= 10.0 {
                format!("{x:.1} {name}")
            } else {
                format!("{x:.2} {name}")
            };
        }
    }
    format!("{bytes:.0} B")
}

fn payload(root: &Area, suite: &SuiteData) -> DrawResult {
    root.fill(&WHITE)?;
    let n = suite.runs.len();
    let bytes: Vec<u64> = suite.runs.iter().map(|r| r.summary.payload_bytes).collect();
    let max = bytes.iter().copied().max().unwrap_or(0).max(1) as f64;
    let min_pos = bytes.iter().copied().filter(|&b| b > 0).min().unwrap_or(1) as f64;
    let (lo, hi) = (min_pos / 10.0, max * 20.0);
    let ids: Vec<String> = suite.runs.iter().map(|r| r.id().to_string()).collect();
    let mut chart = ChartBuilder::on(root)
        .caption(
            format!("{}: training payload bytes per run", suite.name),
            (FONT, 20),
        )
        .margin(15)
        .x_label_area_size(50)
        .y_label_area_size(80)
        .build_cartesian_2d(
            (0..n.saturating_sub(1).max(1)).into_segmented(),
            (lo..hi).log_scale(),
        )?;
    chart
        .configure_mesh()
        .disable_x_mesh()
        .x_labels(n.max(1))
        .x_label_formatter(&|v| match v {
            SegmentValue::CenterOf(i) => ids.get(*i).cloned().unwrap_or_default(),
            _ => String::new(),
        })
        .y_label_formatter(&|v| human_bytes(*v))
        .y_desc("payload bytes (all endpoints, log scale)")
        .x_desc("run")
        .draw()?;
    for (i, run) in suite.runs.iter().enumerate() {
        let b = run.summary.payload_bytes;
        let top = if b > 0 { b as f64 } else { lo };
        let mut bar = Rectangle::new(
            [
                (SegmentValue::Exact(i), lo),
                (SegmentValue::Exact(i + 1), top),
            ],
            color(i).filled(),
        );
        bar.set_margin(0, 0, 12, 12);
        chart.draw_series(std::iter::once(bar))?;
        let ratio = match (
            run.summary.method.as_deref(),
            run.summary.bytes_reduction_vs_ddp,
        ) {
            (_, Some(r)) => format!("×{r:.3} vs DDP"),
            _ => "no DDP ratio".to_string(),
        };
        let style =
            TextStyle::from((FONT, 13).into_font()).pos(plotters::style::text_anchor::Pos::new(
                plotters::style::text_anchor::HPos::Center,
                plotters::style::text_anchor::VPos::Bottom,
            ));
        chart.draw_series([
            Text::new(
                human_bytes(b as f64),
                (SegmentValue::CenterOf(i), top * 3.0),
                style.clone(),
            ),
            Text::new(ratio, (SegmentValue::CenterOf(i), top * 1.3), style),
        ])?;
    }
    Ok(())
}

pub(crate) fn range_of(values: impl Iterator<Item = f64>, pad_frac: f64) -> (f64, f64) {
    let (lo, hi) = values
        .filter(|v| v.is_finite())
        .fold((f64::INFINITY, f64::NEG_INFINITY), |(l, h), v| {
            (l.min(v), h.max(v))
        });
    if !lo.is_finite() {
        return (0.0, 1.0);
    }
    let span = if hi > lo { hi - lo } else { lo.abs().max(1.0) };
    (lo - span * pad_frac, hi + span * pad_frac)
}

/// How a legend entry is drawn.
#[derive(Clone, Copy, Debug, PartialEq)]
pub(crate) enum Key {
    Line,
    Dashed,
    Dotted,
    Dot,
    Ring,
    /// Text only (no symbol), from the left edge.
    Note,
    /// Text only, aligned with the labels of the entries that have a symbol.
    Indent,
}

/// One legend for the whole figure, drawn in its own column: (label, colour, key).
pub(crate) fn legend(area: &Area, entries: &[(String, RGBColor, Key)]) -> DrawResult {
    for (i, (label, c, key)) in entries.iter().enumerate() {
        let y = 60 + 20 * i as i32;
        match key {
            Key::Line => {
                area.draw(&PathElement::new(vec![(5, y), (29, y)], c.stroke_width(2)))?;
            }
            Key::Dashed => {
                for x in [5, 17] {
                    area.draw(&PathElement::new(
                        vec![(x, y), (x + 8, y)],
                        c.stroke_width(2),
                    ))?;
                }
            }
            Key::Dotted => {
                for x in [5, 11, 17, 23] {
                    area.draw(&PathElement::new(
                        vec![(x, y), (x + 3, y)],
                        c.stroke_width(1),
                    ))?;
                }
            }
            Key::Dot => {
                area.draw(&Circle::new((17, y), 4, c.filled()))?;
            }
            Key::Ring => {
                area.draw(&Circle::new((17, y), 7, c.stroke_width(2)))?;
            }
            Key::Note | Key::Indent => {}
        }
        let x = if *key == Key::Note { 5 } else { 36 };
        area.draw(&Text::new(
            label.clone(),
            (x, y),
            TextStyle::from((FONT, 13).into_font()).pos(plotters::style::text_anchor::Pos::new(
                plotters::style::text_anchor::HPos::Left,
                plotters::style::text_anchor::VPos::Center,
            )),
        ))?;
    }
    Ok(())
}

/// Axis labels: integers only (rounds), blank elsewhere.
pub(crate) fn integer_label(v: &f64) -> String {
    if (v - v.round()).abs() < 1e-9 && *v >= 0.0 {
        format!("{}", v.round() as i64)
    } else {
        String::new()
    }
}

/// Counts with k/M/G suffixes (token axes).
pub(crate) fn count_label(v: &f64) -> String {
    let a = v.abs();
    for (unit, name) in [(1e9, "G"), (1e6, "M"), (1e3, "k")] {
        if a >= unit {
            return format!("{}{name}", trim_float(v / unit));
        }
    }
    trim_float(*v)
}

pub(crate) fn trim_float(x: f64) -> String {
    let s = format!("{x:.2}");
    s.trim_end_matches('0').trim_end_matches('.').to_string()
}

pub(crate) const LEGEND_W: u32 = 260;

/// Pixels per character of a 12-px DejaVu Sans label (its mean advance, rounded up).
const LABEL_CHAR_W: u32 = 7;

/// Width of the longest run id of `suite` at [`LABEL_CHAR_W`], `lo..=hi`.
pub(crate) fn label_width(suite: &SuiteData, lo: u32, hi: u32) -> u32 {
    let longest = suite
        .runs
        .iter()
        .map(|r| r.id().chars().count())
        .max()
        .unwrap_or(0);
    (longest as u32 * LABEL_CHAR_W + 16).clamp(lo, hi)
}

/// The legend column of a per-run figure: wide enough for the longest run id (at least
/// [`LEGEND_W`], at most 560 px) beside its 34-px key.
pub(crate) fn legend_w(suite: &SuiteData) -> u32 {
    label_width(suite, LEGEND_W - 34, 560 - 34) + 34
}

fn loss(root: &Area, suite: &SuiteData, by_tokens: bool) -> DrawResult {
    root.fill(&WHITE)?;
    let (plot, side) = root.split_horizontally(root.dim_in_pixel().0 - legend_w(suite));
    let x_of = |p: &crate::load::EvalPoint| {
        if by_tokens {
            p.tokens as f64
        } else {
            p.clock_s
        }
    };
    let xs = suite.runs.iter().flat_map(|r| r.eval.iter().map(x_of));
    let (_, x_hi) = range_of(xs.chain(std::iter::once(0.0)), 0.0);
    let ys = suite.runs.iter().flat_map(|r| {
        r.eval
            .iter()
            .flat_map(|p| [p.loss, p.local_loss])
            .chain(r.floor)
    });
    let (y_lo, y_hi) = range_of(ys, 0.05);
    let x_hi = if x_hi > 0.0 { x_hi * 1.02 } else { 1.0 };
    let (what, desc) = if by_tokens {
        ("training tokens", "training tokens (all sites)")
    } else {
        ("run clock", "run clock, s (virtual on the sim backend)")
    };
    let mut chart = ChartBuilder::on(&plot)
        .caption(
            format!("{}: eval loss (mean over domains) vs {what}", suite.name),
            (FONT, 18),
        )
        .margin(15)
        .x_label_area_size(45)
        .y_label_area_size(70)
        .build_cartesian_2d(0.0..x_hi, y_lo..y_hi)?;
    chart
        .configure_mesh()
        .x_label_formatter(&|v| {
            if by_tokens {
                count_label(v)
            } else {
                trim_float(*v)
            }
        })
        .x_desc(desc)
        .y_desc("eval loss, nats/token")
        .draw()?;
    let mut entries = Vec::new();
    for (i, run) in suite.runs.iter().enumerate() {
        let global: Vec<(f64, f64)> = run
            .eval
            .iter()
            .map(|p| (x_of(p), p.loss))
            .filter(|(x, y)| x.is_finite() && y.is_finite())
            .collect();
        let local: Vec<(f64, f64)> = run
            .eval
            .iter()
            .map(|p| (x_of(p), p.local_loss))
            .filter(|(x, y)| x.is_finite() && y.is_finite())
            .collect();
        entries.push((run_label(run, global.is_empty()), color(i), Key::Line));
        chart.draw_series(LineSeries::new(global.clone(), color(i).stroke_width(2)))?;
        chart.draw_series(global.iter().map(|&p| Circle::new(p, 3, color(i).filled())))?;
        // The sites' own models only where they differ from the global one.
        if local.iter().zip(&global).any(|(l, g)| l.1 != g.1) {
            chart.draw_series(DashedLineSeries::new(
                local.clone(),
                6,
                4,
                color(i).stroke_width(2),
            ))?;
            chart.draw_series(
                local
                    .iter()
                    .map(|&p| Circle::new(p, 2, color(i).stroke_width(1))),
            )?;
        }
    }
    entries.push(("solid: global model".into(), BLACK, Key::Line));
    entries.push((
        "dashed: sites' own models (mean)".into(),
        BLACK,
        Key::Dashed,
    ));
    // Entropy floors, one dotted line per distinct value.
    let mut floors: Vec<f64> = suite
        .runs
        .iter()
        .filter_map(|r| r.floor)
        .filter(|f| f.is_finite())
        .collect();
    floors.sort_by(f64::total_cmp);
    floors.dedup();
    let grey = RGBColor(110, 110, 110);
    for f in &floors {
        chart.draw_series(DashedLineSeries::new(
            vec![(0.0, *f), (x_hi, *f)],
            2,
            4,
            grey.stroke_width(1),
        ))?;
        entries.push((format!("entropy floor {f:.4}"), grey, Key::Dotted));
    }
    if floors.is_empty() {
        entries.push(("no entropy floor in the results".into(), grey, Key::Note));
    }
    legend(&side, &entries)
}

/// A run's legend label: its id, `(no data)` when nothing is drawn, its status when not
/// complete.
pub(crate) fn run_label(run: &crate::load::RunData, no_data: bool) -> String {
    let mut label = run.id().to_string();
    if !run.summary.is_complete() {
        label.push_str(&format!(" [{}]", run.summary.status));
    }
    if no_data {
        label.push_str(" (no data)");
    }
    label
}

type Metric = fn(&RoutingPoint) -> Option<f64>;
/// A panel: its label, the metric, and a fixed y range (else fitted to the data).
type Panel<'a> = (&'a str, Metric, Option<(f64, f64)>);

fn round_panels(root: &Area, suite: &SuiteData, title: &str, panels: &[Panel]) -> DrawResult {
    root.fill(&WHITE)?;
    let (head, body) = root.split_vertically(40);
    head.draw(&Text::new(
        format!("{}: {title}", suite.name),
        (head.dim_in_pixel().0 as i32 / 2, 12),
        TextStyle::from((FONT, 20).into_font()).pos(plotters::style::text_anchor::Pos::new(
            plotters::style::text_anchor::HPos::Center,
            plotters::style::text_anchor::VPos::Top,
        )),
    ))?;
    let (body, side) = body.split_horizontally(body.dim_in_pixel().0 - legend_w(suite));
    let areas = body.split_evenly((panels.len(), 1));
    let max_round = suite
        .runs
        .iter()
        .flat_map(|r| r.routing.iter().map(|p| p.round))
        .max()
        .unwrap_or(0);
    let x_hi = (max_round as f64 + 0.2).max(1.0);
    for (area, (label, metric, fixed)) in areas.iter().zip(panels) {
        let (y_lo, y_hi) = match fixed {
            Some(r) => *r,
            None => {
                let (lo, hi) = range_of(
                    suite
                        .runs
                        .iter()
                        .flat_map(|r| r.routing.iter().filter_map(metric)),
                    0.05,
                );
                (lo.min(0.0), hi)
            }
        };
        let missing: Vec<&str> = suite
            .runs
            .iter()
            .filter(|r| !r.routing.iter().any(|p| metric(p).is_some()))
            .map(|r| r.id())
            .collect();
        let caption = match missing.len() {
            0 => label.to_string(),
            1..=3 => format!("{label} (no data: {})", missing.join(", ")),
            k => format!("{label} (no data: {k} runs)"),
        };
        let mut chart = ChartBuilder::on(area)
            .caption(caption, (FONT, 15))
            .margin(10)
            .x_label_area_size(35)
            .y_label_area_size(60)
            .build_cartesian_2d(-0.2..x_hi, y_lo..y_hi)?;
        chart
            .configure_mesh()
            .x_labels((max_round + 3).min(12))
            .x_label_formatter(&integer_label)
            .x_desc("round")
            .y_desc(*label)
            .draw()?;
        for (i, run) in suite.runs.iter().enumerate() {
            let pts: Vec<(f64, f64)> = run
                .routing
                .iter()
                .filter_map(|p| metric(p).map(|v| (p.round as f64, v)))
                .filter(|(_, y)| y.is_finite())
                .collect();
            chart.draw_series(LineSeries::new(pts.clone(), color(i).stroke_width(2)))?;
            chart.draw_series(pts.iter().map(|&p| Circle::new(p, 3, color(i).filled())))?;
        }
    }
    let entries: Vec<(String, RGBColor, Key)> = suite
        .runs
        .iter()
        .enumerate()
        .map(|(i, r)| (run_label(r, r.routing.is_empty()), color(i), Key::Line))
        .collect();
    legend(&side, &entries)
}

fn routing(root: &Area, suite: &SuiteData) -> DrawResult {
    round_panels(
        root,
        suite,
        "routing stability per round (mean over layers, top-k)",
        &[
            (
                "saturation (overlap with final routing)",
                |p| p.saturation_topk,
                Some((0.0, 1.05)),
            ),
            (
                "cross-site agreement (local vs global)",
                |p| p.cross_site_agreement_topk,
                Some((0.0, 1.05)),
            ),
            (
                "overlap with previous round",
                |p| p.overlap_prev_topk,
                Some((0.0, 1.05)),
            ),
        ],
    )
}

fn balance(root: &Area, suite: &SuiteData) -> DrawResult {
    round_panels(
        root,
        suite,
        "load balance per round (mean over layers)",
        &[
            ("CV of expert load (probe set)", |p| Some(p.cv), None),
            (
                "training skip rate",
                |p| Some(p.skip_rate),
                Some((0.0, 1.05)),
            ),
        ],
    )
}
