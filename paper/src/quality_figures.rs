//! The figures that compare runs on quality and speed (SVG, same conventions as
//! [`crate::figures`]):
//!
//! - `pareto`: final global eval loss (mean over domains) against training payload bytes (log
//!   x), one point per complete run, one colour per method; runs on the Pareto front
//!   (summary.csv `on_pareto_front`) ringed and joined by a dashed staircase. A run that sent
//!   no payload cannot sit on a log axis: it is named in the caption instead.
//! - `stability`: top, ΔL(r) = L(r) − L(r_prev) of the global mean eval loss at every
//!   evaluated round after the first, per run; bottom, each run's largest increase
//!   (summary.csv `max_loss_increase`, 0 when it never rose) as a bar, with the sites' own
//!   models' largest increase (`max_local_loss_increase`) as a thin bar under it.
//! - `throughput`: per-site compute tokens/s against ρ/M ([`crate::compare`]): FoMoE runs with
//!   skip-token as points, the full-replica runs of the same preset at ρ/M = 1 and as a
//!   dashed line ("without skip-token"), each group labelled with its speed-up.

use plotters::prelude::*;
use plotters::style::text_anchor::{HPos, Pos, VPos};

use crate::compare::{skip_token_points, SkipTokenPoint};
use crate::figures::{
    color, human_bytes, label_width, legend, legend_w, range_of, run_label, trim_float, Area,
    DrawResult, Key, FONT, LEGEND_W,
};
use crate::load::SuiteData;

/// The SVG text of `pareto`, `stability` or `throughput`.
pub fn render(name: &str, suite: &SuiteData) -> Result<String, String> {
    let mut svg = String::new();
    {
        let (w, h) = match name {
            "stability" => (1100, (420 + 24 * suite.runs.len() as u32).max(760)),
            _ => (1100, 600),
        };
        let root = SVGBackend::with_string(&mut svg, (w, h)).into_drawing_area();
        let result = match name {
            "pareto" => pareto(&root, suite),
            "stability" => stability(&root, suite),
            "throughput" => throughput(&root, suite),
            other => return Err(format!("unknown figure {other:?}")),
        };
        result
            .and_then(|_| root.present().map_err(Into::into))
            .map_err(|e| e.to_string())?;
    }
    Ok(crate::figures::tidy_svg(&svg))
}

/// A fixed colour per method, so the same method looks the same in every suite.
pub(crate) fn method_color(method: &str) -> RGBColor {
    match method {
        "ddp" => color(3),
        "diloco" => color(0),
        "photon" => color(2),
        "fomoe" => color(1),
        "single" => color(7),
        _ => color(4),
    }
}

fn text_style(size: u32, h: HPos, v: VPos) -> TextStyle<'static> {
    TextStyle::from((FONT, size).into_font()).pos(Pos::new(h, v))
}

fn note(area: &Area, lines: &[String]) -> DrawResult {
    for (i, l) in lines.iter().enumerate() {
        area.draw(&Text::new(
            l.clone(),
            (40, 80 + 22 * i as i32),
            text_style(15, HPos::Left, VPos::Center),
        ))?;
    }
    Ok(())
}

fn pareto(root: &Area, suite: &SuiteData) -> DrawResult {
    root.fill(&WHITE)?;
    let (plot, side) = root.split_horizontally(root.dim_in_pixel().0 - LEGEND_W);
    let runs: Vec<_> = suite
        .runs
        .iter()
        .filter(|r| r.summary.is_complete())
        .filter_map(|r| Some((r, r.summary.final_eval_loss?)))
        .collect();
    let zero: Vec<&str> = runs
        .iter()
        .filter(|(r, _)| r.summary.payload_bytes == 0)
        .map(|(r, _)| r.id())
        .collect();
    let pts: Vec<_> = runs
        .iter()
        .filter(|(r, _)| r.summary.payload_bytes > 0)
        .map(|(r, loss)| (*r, r.summary.payload_bytes as f64, *loss))
        .collect();
    let mut caption = format!("{}: final global eval loss vs payload bytes", suite.name);
    if !zero.is_empty() {
        caption.push_str(&format!(" (0 B, not drawn: {})", zero.join(", ")));
    }
    if pts.is_empty() {
        plot.draw(&Text::new(
            caption,
            (20, 20),
            text_style(18, HPos::Left, VPos::Top),
        ))?;
        return note(
            &plot,
            &["no complete run with a final eval and payload bytes".into()],
        );
    }
    let x_min = pts.iter().map(|p| p.1).fold(f64::INFINITY, f64::min);
    let x_max = pts.iter().map(|p| p.1).fold(0.0, f64::max);
    let (y_lo, y_hi) = range_of(pts.iter().map(|p| p.2), 0.12);
    let mut chart = ChartBuilder::on(&plot)
        .caption(caption, (FONT, 18))
        .margin(15)
        .x_label_area_size(45)
        .y_label_area_size(70)
        .build_cartesian_2d((x_min / 2.5..x_max * 2.5).log_scale(), y_lo..y_hi)?;
    chart
        .configure_mesh()
        .x_label_formatter(&|v| human_bytes(*v))
        .x_desc("training payload bytes, all endpoints (log scale)")
        .y_desc("final global eval loss, nats/token")
        .draw()?;
    // The front as a staircase in bytes order.
    let mut front: Vec<(f64, f64)> = pts
        .iter()
        .filter(|(r, _, _)| r.summary.on_pareto_front == Some(true))
        .map(|&(_, x, y)| (x, y))
        .collect();
    front.sort_by(|a, b| a.0.total_cmp(&b.0).then(a.1.total_cmp(&b.1)));
    let mut stairs = Vec::new();
    for (k, &(x, y)) in front.iter().enumerate() {
        if k > 0 {
            stairs.push((x, front[k - 1].1));
        }
        stairs.push((x, y));
    }
    let grey = RGBColor(120, 120, 120);
    chart.draw_series(DashedLineSeries::new(stairs, 6, 4, grey.stroke_width(1)))?;
    let label_points = pts.len() <= 16;
    let mut methods: Vec<String> = Vec::new();
    for &(r, x, y) in &pts {
        let m = r.summary.method.clone().unwrap_or_default();
        let c = method_color(&m);
        if !methods.contains(&m) {
            methods.push(m);
        }
        chart.draw_series(std::iter::once(Circle::new((x, y), 5, c.filled())))?;
        if r.summary.on_pareto_front == Some(true) {
            chart.draw_series(std::iter::once(Circle::new(
                (x, y),
                9,
                BLACK.stroke_width(1),
            )))?;
        }
        if label_points {
            chart.draw_series(std::iter::once(Text::new(
                r.id().to_string(),
                (x * 1.15, y),
                text_style(11, HPos::Left, VPos::Center),
            )))?;
        }
    }
    let mut entries: Vec<(String, RGBColor, Key)> = methods
        .iter()
        .map(|m| {
            let n = pts
                .iter()
                .filter(|p| p.0.summary.method.as_deref() == Some(m))
                .count();
            (
                format!("{m} ({n} run{})", if n == 1 { "" } else { "s" }),
                method_color(m),
                Key::Dot,
            )
        })
        .collect();
    entries.push(("on the Pareto front".into(), BLACK, Key::Ring));
    entries.push(("Pareto front (fewer bytes,".into(), grey, Key::Dashed));
    entries.push(("lower loss)".into(), grey, Key::Indent));
    if !label_points {
        entries.push((
            format!("{} runs: points not labelled", pts.len()),
            BLACK,
            Key::Note,
        ));
    }
    legend(&side, &entries)
}

fn stability(root: &Area, suite: &SuiteData) -> DrawResult {
    root.fill(&WHITE)?;
    let (head, body) = root.split_vertically(40);
    head.draw(&Text::new(
        format!(
            "{}: round-to-round change of the global eval loss (mean over domains)",
            suite.name
        ),
        (head.dim_in_pixel().0 as i32 / 2, 12),
        text_style(20, HPos::Center, VPos::Top),
    ))?;
    let (body, side) = body.split_horizontally(body.dim_in_pixel().0 - legend_w(suite));
    let (top, bottom) = body.split_vertically(360);
    let deltas: Vec<Vec<(f64, f64)>> = suite
        .runs
        .iter()
        .map(|r| {
            r.eval
                .windows(2)
                .map(|w| (w[1].round as f64, w[1].loss - w[0].loss))
                .collect()
        })
        .collect();
    let max_round = suite
        .runs
        .iter()
        .flat_map(|r| r.eval.iter().map(|p| p.round))
        .max()
        .unwrap_or(1);
    let (y_lo, y_hi) = range_of(deltas.iter().flatten().map(|p| p.1).chain([0.0]), 0.08);
    let mut chart = ChartBuilder::on(&top)
        .caption("ΔL(r) = L(r) − L(previous eval)", (FONT, 15))
        .margin(10)
        .x_label_area_size(35)
        .y_label_area_size(60)
        .build_cartesian_2d(0.5..(max_round as f64 + 0.5), y_lo..y_hi)?;
    chart
        .configure_mesh()
        .x_labels((max_round + 1).min(16))
        .x_label_formatter(&crate::figures::integer_label)
        .x_desc("round")
        .y_desc("ΔL, nats/token")
        .draw()?;
    chart.draw_series(LineSeries::new(
        vec![(0.5, 0.0), (max_round as f64 + 0.5, 0.0)],
        BLACK.stroke_width(1),
    ))?;
    for (i, d) in deltas.iter().enumerate() {
        chart.draw_series(LineSeries::new(d.clone(), color(i).stroke_width(2)))?;
        chart.draw_series(d.iter().map(|&p| Circle::new(p, 3, color(i).filled())))?;
    }

    let n = suite.runs.len();
    let incs: Vec<(Option<f64>, Option<f64>)> = suite
        .runs
        .iter()
        .map(|r| {
            (
                r.summary.max_loss_increase,
                r.summary.max_local_loss_increase,
            )
        })
        .collect();
    let x_hi = incs
        .iter()
        .flat_map(|(g, l)| [*g, *l])
        .flatten()
        .fold(0.0, f64::max);
    let x_hi = if x_hi > 0.0 { x_hi * 1.35 } else { 1.0 };
    // Run i in suite order from the top, centred at y = n−1−i: the global bar above the
    // centre line, the sites' own models' thin bar below it.
    let ids: Vec<String> = suite.runs.iter().map(|r| r.id().to_string()).collect();
    let id_at = |v: &f64| -> String {
        let k = v.round();
        if (v - k).abs() > 1e-9 || k < 0.0 || k as usize >= n {
            return String::new();
        }
        ids[n - 1 - k as usize].clone()
    };
    let mut chart = ChartBuilder::on(&bottom)
        .caption(
            "largest increase per run (upper bar: global model; lower, light: the sites' own models)",
            (FONT, 15),
        )
        .margin(10)
        .x_label_area_size(35)
        .y_label_area_size(label_width(suite, 200, 480))
        .build_cartesian_2d(0.0..x_hi, -0.5..(n as f64 - 0.5))?;
    chart
        .configure_mesh()
        .disable_y_mesh()
        .y_labels(n.max(1))
        .y_label_formatter(&id_at)
        .x_desc("largest round-to-round increase, nats/token")
        .draw()?;
    for (i, (g, l)) in incs.iter().enumerate() {
        let y = (n - 1 - i) as f64;
        let pad = x_hi * 0.01;
        match g {
            Some(v) => {
                // Bars under 1/200 of the axis round to under a pixel: value label only.
                if *v > x_hi / 200.0 {
                    chart.draw_series(std::iter::once(Rectangle::new(
                        [(0.0, y + 0.04), (*v, y + 0.38)],
                        color(i).filled(),
                    )))?;
                }
                let round = suite.runs[i]
                    .summary
                    .max_loss_increase_round
                    .map_or(String::new(), |r| format!(" (round {r})"));
                chart.draw_series(std::iter::once(Text::new(
                    format!("global {v:.4}{round}"),
                    (*v + pad, y + 0.21),
                    text_style(12, HPos::Left, VPos::Center),
                )))?;
            }
            None => {
                chart.draw_series(std::iter::once(Text::new(
                    "fewer than two evals".to_string(),
                    (pad, y),
                    text_style(12, HPos::Left, VPos::Center),
                )))?;
            }
        }
        if let Some(v) = l {
            if *v > x_hi / 200.0 {
                chart.draw_series(std::iter::once(Rectangle::new(
                    [(0.0, y - 0.3), (*v, y - 0.08)],
                    color(i).mix(0.45).filled(),
                )))?;
            }
            chart.draw_series(std::iter::once(Text::new(
                format!("sites' own {v:.4}"),
                (*v + pad, y - 0.19),
                text_style(11, HPos::Left, VPos::Center),
            )))?;
        }
    }
    let entries: Vec<(String, RGBColor, Key)> = suite
        .runs
        .iter()
        .enumerate()
        .map(|(i, r)| (run_label(r, r.eval.len() < 2), color(i), Key::Line))
        .collect();
    legend(&side, &entries)
}

fn throughput(root: &Area, suite: &SuiteData) -> DrawResult {
    root.fill(&WHITE)?;
    let (plot, side) = root.split_horizontally(root.dim_in_pixel().0 - LEGEND_W);
    let points = skip_token_points(suite);
    let caption = format!(
        "{}: per-site compute tokens/s vs ρ/M, with and without skip-token",
        suite.name
    );
    let usable: Vec<&SkipTokenPoint> = points
        .iter()
        .filter(|p| p.reference_tokens_per_s.is_some())
        .collect();
    if usable.is_empty() {
        plot.draw(&Text::new(
            caption,
            (20, 20),
            text_style(18, HPos::Left, VPos::Top),
        ))?;
        let why = if points.is_empty() {
            "no complete FoMoE run with ρ < M and compute times in this suite"
        } else {
            "no full-replica run (FoMoE ρ = M or DiLoCo) of the same preset and threads"
        };
        return note(&plot, &[why.to_string()]);
    }
    let ys = usable.iter().flat_map(|p| {
        p.runs
            .iter()
            .chain(&p.reference_runs)
            .map(|r| r.1)
            .collect::<Vec<_>>()
    });
    let (_, y_hi) = range_of(ys, 0.0);
    let mut chart = ChartBuilder::on(&plot)
        .caption(caption, (FONT, 18))
        .margin(15)
        .x_label_area_size(45)
        .y_label_area_size(80)
        .build_cartesian_2d(0.0..1.1, 0.0..y_hi * 1.25)?;
    chart
        .configure_mesh()
        .x_label_formatter(&|v| trim_float(*v))
        .y_label_formatter(&|v| crate::figures::count_label(v))
        .x_desc("ρ/M: share of the experts each site holds")
        .y_desc("per-site compute tokens/s (forward + backward)")
        .draw()?;
    let mut groups: Vec<(String, usize)> = Vec::new();
    for p in &usable {
        if !groups.contains(&(p.preset.clone(), p.threads)) {
            groups.push((p.preset.clone(), p.threads));
        }
    }
    let mut entries = Vec::new();
    for (g, (preset, threads)) in groups.iter().enumerate() {
        let c = color(g);
        let mine: Vec<&&SkipTokenPoint> = usable
            .iter()
            .filter(|p| &p.preset == preset && p.threads == *threads)
            .collect();
        let reference = mine[0];
        let r = reference.reference_tokens_per_s.unwrap_or(0.0);
        chart.draw_series(DashedLineSeries::new(
            vec![(0.0, r), (1.1, r)],
            8,
            5,
            c.stroke_width(1),
        ))?;
        chart.draw_series(
            reference
                .reference_runs
                .iter()
                .map(|run| Circle::new((1.0, run.1), 4, c.stroke_width(2))),
        )?;
        let mut line = vec![];
        for p in &mine {
            chart.draw_series(
                p.runs
                    .iter()
                    .map(|run| Circle::new((p.rho_over_m, run.1), 4, c.filled())),
            )?;
            line.push((p.rho_over_m, p.tokens_per_s));
            if let Some(s) = p.speedup {
                chart.draw_series(std::iter::once(Text::new(
                    format!("×{s:.2}"),
                    (p.rho_over_m, p.tokens_per_s * 1.06),
                    text_style(13, HPos::Center, VPos::Bottom),
                )))?;
            }
        }
        line.push((1.0, r));
        chart.draw_series(LineSeries::new(line, c.stroke_width(1)))?;
        let threads = if *threads == 1 {
            "1 thread".to_string()
        } else {
            format!("{threads} threads")
        };
        entries.push((format!("preset {preset}, {threads} per site"), c, Key::Note));
        entries.push(("FoMoE ρ < M: with skip-token".into(), c, Key::Dot));
        entries.push(("full replica (FoMoE ρ = M,".into(), c, Key::Ring));
        entries.push(("DiLoCo): without skip-token".into(), c, Key::Indent));
        entries.push(("mean without skip-token".into(), c, Key::Dashed));
    }
    entries.push((
        "×s: speed-up, mean with skip-token".into(),
        BLACK,
        Key::Note,
    ));
    entries.push(("over the mean without".into(), BLACK, Key::Note));
    legend(&side, &entries)
}
