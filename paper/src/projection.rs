//! The system model's projection to large models, read from the CSV that
//! `fomoe project --sweep … --csv` writes, and its two figures. Nothing here is measured:
//! every title says "projection".
//!
//! CSV columns (one row per model × method × deployment):
//! `label,total_params,expert_share,method,sites,rho,inner_steps,memory_per_site_bytes,
//! payload_bytes_per_round_per_site,payload_bytes_per_token_per_site,fits_80gb,fits_141gb`
//! (`rho` may be empty for methods without replication). A series is one
//! (method, sites, ρ, H) deployment over the models, drawn against `total_params`:
//!
//! - `projection_memory`: memory per site (log y) with reference lines at 80 GB and 141 GB
//!   (decimal); the marker is filled where the row says `fits_80gb`, a ring where it fits
//!   only 141 GB, a cross where it fits neither;
//! - `projection_bytes`: payload bytes per round per site (log y).

use std::path::{Path, PathBuf};

use plotters::prelude::*;
use serde::Deserialize;

use crate::figures::{
    color, count_label, human_bytes, legend, Area, DrawResult, Key, FONT, LEGEND_W,
};
use crate::PaperError;

/// One row of the projection CSV.
#[derive(Clone, Debug, PartialEq, Deserialize)]
pub struct ProjectionRow {
    pub label: String,
    pub total_params: f64,
    pub expert_share: f64,
    pub method: String,
    pub sites: usize,
    pub rho: Option<usize>,
    pub inner_steps: usize,
    pub memory_per_site_bytes: f64,
    pub payload_bytes_per_round_per_site: f64,
    pub payload_bytes_per_token_per_site: f64,
    pub fits_80gb: bool,
    pub fits_141gb: bool,
}

impl ProjectionRow {
    /// The deployment this row belongs to: its series.
    pub fn series(&self) -> String {
        match (self.method.as_str(), self.rho) {
            ("fomoe", Some(rho)) => {
                format!("fomoe M={} ρ={rho} H={}", self.sites, self.inner_steps)
            }
            ("ddp", _) => format!("ddp M={}", self.sites),
            (m, _) => format!("{m} M={} H={}", self.sites, self.inner_steps),
        }
    }
}

/// The projection: its rows and the file they came from.
#[derive(Clone, Debug)]
pub struct Projection {
    pub path: PathBuf,
    pub rows: Vec<ProjectionRow>,
}

/// Read a projection CSV; any bad row is an error naming the file and line.
pub fn read_projection(path: &Path) -> Result<Projection, PaperError> {
    let malformed = |line: usize, reason: String| PaperError::Malformed {
        path: path.to_path_buf(),
        line,
        reason,
    };
    let mut r = csv::Reader::from_path(path).map_err(|e| match e.kind() {
        csv::ErrorKind::Io(_) => PaperError::Io {
            path: path.to_path_buf(),
            error: std::io::Error::other(e.to_string()),
        },
        _ => malformed(1, e.to_string()),
    })?;
    let mut rows = Vec::new();
    for (i, rec) in r.deserialize::<ProjectionRow>().enumerate() {
        let row = rec.map_err(|e| malformed(i + 2, e.to_string()))?;
        if row.total_params.is_nan() || row.total_params <= 0.0 {
            return Err(malformed(
                i + 2,
                format!("total_params {} (allowed: > 0)", row.total_params),
            ));
        }
        rows.push(row);
    }
    if rows.is_empty() {
        return Err(malformed(1, "no rows".into()));
    }
    Ok(Projection {
        path: path.to_path_buf(),
        rows,
    })
}

/// The projection figures, in report order: (file stem, title).
pub const PROJECTION_FIGURES: &[(&str, &str)] = &[
    (
        "projection_memory",
        "Projection: memory per site against model size",
    ),
    (
        "projection_bytes",
        "Projection: payload bytes per round per site against model size",
    ),
];

/// Series names in order of first appearance.
pub fn series(p: &Projection) -> Vec<String> {
    let mut out: Vec<String> = Vec::new();
    for r in &p.rows {
        let s = r.series();
        if !out.contains(&s) {
            out.push(s);
        }
    }
    out
}

/// The SVG text of a projection figure.
pub fn render(name: &str, p: &Projection) -> Result<String, String> {
    let mut svg = String::new();
    {
        let root = SVGBackend::with_string(&mut svg, (1100, 620)).into_drawing_area();
        let result = match name {
            "projection_memory" => chart(&root, p, true),
            "projection_bytes" => chart(&root, p, false),
            other => return Err(format!("unknown figure {other:?}")),
        };
        result
            .and_then(|_| root.present().map_err(Into::into))
            .map_err(|e| e.to_string())?;
    }
    Ok(crate::figures::tidy_svg(&svg))
}

/// Parameter counts as researchers write them: 1.5B, 100B, 7M.
pub fn param_label(v: &f64) -> String {
    for (unit, name) in [(1e12, "T"), (1e9, "B"), (1e6, "M"), (1e3, "k")] {
        if v.abs() >= unit {
            return format!("{}{name}", crate::figures::trim_float(v / unit));
        }
    }
    crate::figures::trim_float(*v)
}

fn log_range(values: impl Iterator<Item = f64>) -> (f64, f64) {
    let (lo, hi) = values
        .filter(|v| v.is_finite() && *v > 0.0)
        .fold((f64::INFINITY, 0.0f64), |(l, h), v| (l.min(v), h.max(v)));
    if !lo.is_finite() {
        return (1.0, 10.0);
    }
    (lo / 2.0, hi * 2.0)
}

fn chart(root: &Area, p: &Projection, memory: bool) -> DrawResult {
    root.fill(&WHITE)?;
    let (plot, side) = root.split_horizontally(root.dim_in_pixel().0 - LEGEND_W);
    let y_of = |r: &ProjectionRow| {
        if memory {
            r.memory_per_site_bytes
        } else {
            r.payload_bytes_per_round_per_site
        }
    };
    let (x_lo, x_hi) = log_range(p.rows.iter().map(|r| r.total_params));
    let refs = [(80e9, "80 GB"), (141e9, "141 GB")];
    let (y_lo, y_hi) =
        log_range(
            p.rows
                .iter()
                .map(y_of)
                .chain(if memory { vec![80e9, 141e9] } else { vec![] }),
        );
    let what = if memory {
        "memory per site"
    } else {
        "payload bytes per round per site"
    };
    let mut chart = ChartBuilder::on(&plot)
        .caption(
            format!("PROJECTION (system model, not measured): {what} vs model size"),
            (FONT, 18),
        )
        .margin(15)
        .x_label_area_size(45)
        .y_label_area_size(80)
        .build_cartesian_2d((x_lo..x_hi).log_scale(), (y_lo..y_hi).log_scale())?;
    chart
        .configure_mesh()
        .x_label_formatter(&|v| param_label(v))
        .y_label_formatter(&|v| human_bytes(*v))
        .x_desc("total parameters (log scale)")
        .y_desc(if memory {
            "memory per site: parameters, gradients, optimiser state (log)"
        } else {
            "payload bytes per outer round per site (log)"
        })
        .draw()?;
    let mut entries = Vec::new();
    if memory {
        let grey = RGBColor(120, 120, 120);
        for (y, label) in refs {
            chart.draw_series(DashedLineSeries::new(
                vec![(x_lo, y), (x_hi, y)],
                6,
                4,
                grey.stroke_width(1),
            ))?;
            chart.draw_series(std::iter::once(Text::new(
                label.to_string(),
                (x_lo * 1.1, y * 1.08),
                TextStyle::from((FONT, 12).into_font()),
            )))?;
        }
    }
    for (i, name) in series(p).iter().enumerate() {
        let c = color(i);
        let mut pts: Vec<&ProjectionRow> = p.rows.iter().filter(|r| &r.series() == name).collect();
        pts.sort_by(|a, b| a.total_params.total_cmp(&b.total_params));
        let xy: Vec<(f64, f64)> = pts.iter().map(|r| (r.total_params, y_of(r))).collect();
        chart.draw_series(LineSeries::new(xy.clone(), c.stroke_width(2)))?;
        for (r, &(x, y)) in pts.iter().zip(&xy) {
            if !memory || r.fits_80gb {
                chart.draw_series(std::iter::once(Circle::new((x, y), 4, c.filled())))?;
            } else if r.fits_141gb {
                chart.draw_series(std::iter::once(Circle::new((x, y), 5, c.stroke_width(2))))?;
            } else {
                chart.draw_series(std::iter::once(Cross::new((x, y), 5, c.stroke_width(2))))?;
            }
        }
        entries.push((name.clone(), c, Key::Line));
    }
    // The models, by label, under the legend.
    let mut labels: Vec<(f64, &str, f64)> = Vec::new();
    for r in &p.rows {
        if !labels.iter().any(|l| l.1 == r.label) {
            labels.push((r.total_params, &r.label, r.expert_share));
        }
    }
    labels.sort_by(|a, b| a.0.total_cmp(&b.0));
    if memory {
        entries.push(("filled: fits 80 GB; ring: fits".into(), BLACK, Key::Note));
        entries.push(("141 GB only; cross: neither".into(), BLACK, Key::Note));
    }
    entries.push(("models (total params, s):".into(), BLACK, Key::Note));
    for (n, label, s) in labels {
        entries.push((
            format!("{label}: {}, s={s:.3}", count_label(&n)),
            BLACK,
            Key::Indent,
        ));
    }
    legend(&side, &entries)
}
