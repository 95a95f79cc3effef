//! Projections over a grid of knob values, as CSV rows (`fomoe project --sweep KNOB=v1,v2,…
//! [--sweep …] --csv PATH`). The grid is the product of every `--sweep` (first knob outermost);
//! each point is the base input with those values set, and gives one row per method.
//!
//! Knobs are the keys of the projection's TOML input ([`super::deployment`]): a deployment
//! key (`sites`, `rho`, `inner_steps`, `rate`, `delay`, `scenario`, `wire`, `mfu`, `overlap`,
//! `tokens_per_step`, …) or `model.<shape field>`; `model` alone is the preset
//! (`model=paper-1b,paper-10b,paper-100b`). Values are TOML scalars (`8`, `0.4`) or bare
//! strings (`1gbit`, `20ms`). A point that cannot be deployed (e.g. ρ > M) stops the sweep
//! with that point's one-line error.
//!
//! CSV columns ([`CSV_COLUMNS`]): the first twelve are the figure contract
//! (`label,total_params,expert_share,method,sites,rho,inner_steps,memory_per_site_bytes,
//! payload_bytes_per_round_per_site,payload_bytes_per_token_per_site,fits_80gb,fits_141gb`),
//! then counts, link, time and budget columns. `rho` is empty for the methods it does not
//! apply to (DDP, DiLoCo, Photon), and a row equal to one already written (those methods
//! under a sweep of ρ or of the FoMoE skip rate) is written once; `rate_bps` and `delay_s`
//! are empty for per-site links.

use serde::{Deserialize as _, Serialize};

use super::deployment::{Links, ProjectSpec};
use super::{project, Projection};
use crate::model::ConfigError;

/// One `--sweep KNOB=v1,v2,…`.
#[derive(Clone, Debug, PartialEq, Eq, Serialize)]
pub struct Axis {
    pub knob: String,
    pub values: Vec<String>,
}

/// Parse `KNOB=v1,v2,…`.
pub fn parse_axis(text: &str) -> Result<Axis, ConfigError> {
    let (knob, values) = text
        .split_once('=')
        .ok_or_else(|| ConfigError::new("sweep", text, "must be KNOB=v1,v2,…"))?;
    let values: Vec<String> = values.split(',').map(|v| v.trim().to_string()).collect();
    if knob.trim().is_empty() || values.iter().any(String::is_empty) {
        return Err(ConfigError::new(
            "sweep",
            text,
            "must be KNOB=v1,v2,… with no empty value",
        ));
    }
    Ok(Axis {
        knob: knob.trim().to_string(),
        values,
    })
}

/// The TOML path a sweep knob sets.
fn knob_path(knob: &str) -> String {
    match knob {
        "model" => "model.preset".into(),
        k if k.starts_with("model.") || k.starts_with("deployment.") => k.into(),
        k => format!("deployment.{k}"),
    }
}

fn toml_value(text: &str) -> toml::Value {
    toml::from_str::<toml::Table>(&format!("v = {text}"))
        .ok()
        .and_then(|mut t| t.remove("v"))
        .unwrap_or_else(|| toml::Value::String(text.to_string()))
}

/// `spec` with `knob` set to `value` (see the module doc).
pub fn with_knob(spec: &ProjectSpec, knob: &str, value: &str) -> Result<ProjectSpec, ConfigError> {
    let bad = |why: String| ConfigError::new(knob, value, why);
    let mut table = toml::Table::try_from(spec).map_err(|e| bad(e.to_string()))?;
    let path = knob_path(knob);
    let (head, key) = path.split_once('.').expect("knob paths have a table");
    let section = table
        .entry(head)
        .or_insert_with(|| toml::Value::Table(Default::default()))
        .as_table_mut()
        .ok_or_else(|| bad(format!("`{head}` is not a table")))?;
    section.insert(key.to_string(), toml_value(value));
    ProjectSpec::deserialize(toml::Value::Table(table)).map_err(|e| {
        let msg = e.to_string();
        bad(msg
            .lines()
            .next()
            .unwrap_or("not a valid value")
            .to_string())
    })
}

/// The projections of every grid point, in grid order.
pub fn sweep(base: &ProjectSpec, axes: &[Axis]) -> anyhow::Result<Vec<Projection>> {
    let mut points = vec![base.clone()];
    for axis in axes {
        let mut next = Vec::with_capacity(points.len() * axis.values.len());
        for p in &points {
            for v in &axis.values {
                next.push(with_knob(p, &axis.knob, v)?);
            }
        }
        points = next;
    }
    points
        .iter()
        .map(|spec| {
            let (label, model) = spec.model.resolve()?;
            let dep = spec.deployment.resolve(&model)?;
            project(&label, &model, &dep)
        })
        .collect()
}

/// Columns of the sweep CSV, in order (the first twelve are the figure contract).
pub const CSV_COLUMNS: &[&str] = &[
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
    "fits_141gb",
    "dense_params",
    "expert_params",
    "active_params",
    "params_held_per_site",
    "accelerators_80gb",
    "accelerators_141gb",
    "wire_dtype",
    "rate_bps",
    "delay_s",
    "tokens_per_step",
    "aggregator_payload_bytes_per_round",
    "bytes_reduction_vs_ddp",
    "comm_s_per_round",
    "compute_s_per_round",
    "wall_s_per_round",
    "tokens_per_s",
    "token_budget",
    "time_to_budget_s",
    "payload_bytes_to_budget_per_site",
];

/// The CSV text of `projections`: header, then one row per (projection, method).
pub fn csv_text(projections: &[Projection]) -> anyhow::Result<Vec<u8>> {
    let mut w = csv::Writer::from_writer(Vec::new());
    w.write_record(CSV_COLUMNS)?;
    let mut written: std::collections::HashSet<Vec<String>> = Default::default();
    for p in projections {
        let d = &p.deployment;
        let (rate, delay) = match &d.links {
            Links::Uniform { link } => (
                link.rate_bps.to_string(),
                link.delay.as_secs_f64().to_string(),
            ),
            Links::PerSite { .. } => (String::new(), String::new()),
        };
        for m in &p.methods {
            let row: Vec<String> = vec![
                p.label.clone(),
                p.counts.total.to_string(),
                p.counts.expert_share.to_string(),
                m.method.to_string(),
                d.sites.to_string(),
                if m.method == "fomoe" {
                    d.rho.to_string()
                } else {
                    String::new()
                },
                d.inner_steps.to_string(),
                m.memory_per_site.total.to_string(),
                m.payload_bytes_per_round_per_site.to_string(),
                m.payload_bytes_per_token_per_site.to_string(),
                m.fits_80gb.to_string(),
                m.fits_141gb.to_string(),
                p.counts.dense.to_string(),
                p.counts.expert.to_string(),
                p.counts.active.to_string(),
                m.params_held_per_site.to_string(),
                m.accelerators_80gb.to_string(),
                m.accelerators_141gb.to_string(),
                d.wire.name().to_string(),
                rate.clone(),
                delay.clone(),
                d.tokens_per_step.to_string(),
                m.aggregator_payload_bytes_per_round
                    .map(|b| b.to_string())
                    .unwrap_or_default(),
                m.bytes_reduction_vs_ddp.to_string(),
                m.comm_s_per_round.to_string(),
                m.compute_s_per_round.to_string(),
                m.wall_s_per_round.to_string(),
                m.tokens_per_s.to_string(),
                d.token_budget.to_string(),
                m.time_to_budget_s.to_string(),
                m.payload_bytes_to_budget_per_site.to_string(),
            ];
            debug_assert_eq!(row.len(), CSV_COLUMNS.len());
            if written.insert(row.clone()) {
                w.write_record(&row)?;
            }
        }
    }
    Ok(w.into_inner()?)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn axes_parse_and_set_knobs() {
        let a = parse_axis("model=paper-1b,paper-10b").unwrap();
        assert_eq!(a.values, vec!["paper-1b", "paper-10b"]);
        assert_eq!(parse_axis("sites").unwrap_err().field, "sweep");
        assert_eq!(parse_axis("sites=4,,8").unwrap_err().field, "sweep");
        let base = ProjectSpec::default();
        let s = with_knob(&base, "sites", "16").unwrap();
        assert_eq!(s.deployment.sites, Some(16));
        let s = with_knob(&s, "rate", "10gbit").unwrap();
        assert_eq!(s.deployment.rate.as_deref(), Some("10gbit"));
        let s = with_knob(&s, "mfu", "1").unwrap();
        assert_eq!(s.deployment.mfu, Some(1.0));
        let s = with_knob(&s, "model", "paper-1b").unwrap();
        assert_eq!(s.model.preset.as_deref(), Some("paper-1b"));
        let s = with_knob(&s, "model.n_experts", "32").unwrap();
        assert_eq!(s.model.n_experts, Some(32));
        let e = with_knob(&base, "sitez", "4").unwrap_err();
        assert_eq!(e.field, "sitez");
        assert!(e.allowed.contains("unknown field"), "{e}");
        let e = with_knob(&base, "sites", "many").unwrap_err();
        assert!(e.to_string().starts_with("invalid sites = many: "), "{e}");
    }

    #[test]
    fn a_model_sweep_gives_one_row_per_configuration_and_method() {
        let axes = [parse_axis("model=paper-1b,paper-10b,paper-100b").unwrap()];
        let p = sweep(&ProjectSpec::default(), &axes).unwrap();
        assert_eq!(p.len(), 3);
        let text = String::from_utf8(csv_text(&p).unwrap()).unwrap();
        let lines: Vec<&str> = text.lines().collect();
        assert_eq!(lines.len(), 1 + 3 * 4);
        assert!(lines[0].starts_with(
            "label,total_params,expert_share,method,sites,rho,inner_steps,memory_per_site_bytes,payload_bytes_per_round_per_site,payload_bytes_per_token_per_site,fits_80gb,fits_141gb,"
        ));
        assert!(lines[1].starts_with("paper-1b,1197638656,"), "{}", lines[1]);
        assert!(
            lines[12].starts_with("paper-100b,98875250688,"),
            "{}",
            lines[12]
        );
        // ρ is FoMoE's: the other methods leave it empty, and a sweep of ρ adds FoMoE rows only.
        assert!(lines[1].contains(",ddp,8,,32,"), "{}", lines[1]);
        assert!(lines[4].contains(",fomoe,8,2,32,"), "{}", lines[4]);
        let rho = [parse_axis("rho=1,2,4").unwrap()];
        let p = sweep(&ProjectSpec::default(), &rho).unwrap();
        let text = String::from_utf8(csv_text(&p).unwrap()).unwrap();
        assert_eq!(text.lines().count(), 1 + 3 + 3);
        // An impossible point stops the sweep: paper-100b has E = 8, and 8·3 is not
        // divisible by 16 sites.
        let bad = [
            parse_axis("sites=8,16").unwrap(),
            parse_axis("rho=3").unwrap(),
        ];
        let e = sweep(&ProjectSpec::default(), &bad)
            .unwrap_err()
            .to_string();
        assert_eq!(
            e,
            "invalid rho = 3: n_experts·rho = 8·3 must be divisible by sites = 16"
        );
    }
}
