//! The tables `fomoe project` prints: the projection (one column per method), the
//! validation report and the headline tables. Every cell formats a number of the struct
//! `--json` prints, so the table and the JSON never disagree.

use harness::sysmodel::deployment::{Links, StarLink};
use harness::sysmodel::headline::Headline;
use harness::sysmodel::run_memory::decimal_bytes;
use harness::sysmodel::validate::Validation;
use harness::sysmodel::Projection;

/// Counts with three significant digits: `98.9B`, `31.2M`, `950`.
pub fn count(x: f64) -> String {
    for (unit, name) in [(1e12, "T"), (1e9, "B"), (1e6, "M"), (1e3, "k")] {
        if x >= unit {
            return format!("{}{name}", sig3(x / unit));
        }
    }
    sig3(x)
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

/// Seconds as the largest sensible unit: `850 ms`, `12.3 s`, `4.20 h`, `31.0 d`, `41.9 y`
/// (Julian years).
pub fn duration(s: f64) -> String {
    if !s.is_finite() {
        return "-".into();
    }
    if s < 1.0 {
        format!("{} ms", sig3(s * 1e3))
    } else if s < 120.0 {
        format!("{} s", sig3(s))
    } else if s < 7200.0 {
        format!("{} min", sig3(s / 60.0))
    } else if s < 172_800.0 {
        format!("{} h", sig3(s / 3600.0))
    } else if s < 2.0 * 31_557_600.0 {
        format!("{} d", sig3(s / 86_400.0))
    } else {
        format!("{} y", sig3(s / 31_557_600.0))
    }
}

fn yes_no(b: bool) -> &'static str {
    if b {
        "yes"
    } else {
        "no"
    }
}

/// The rows of the projection table: a name and one cell per method.
pub fn projection_rows(p: &Projection) -> Vec<(String, Vec<String>)> {
    let cells = |f: &dyn Fn(&harness::sysmodel::MethodProjection) -> String| {
        p.methods.iter().map(f).collect::<Vec<_>>()
    };
    vec![
        (
            "params held / site".into(),
            cells(&|m| count(m.params_held_per_site as f64)),
        ),
        (
            "memory / site".into(),
            cells(&|m| decimal_bytes(m.memory_per_site.total as f64)),
        ),
        (
            "  parameters".into(),
            cells(&|m| decimal_bytes(m.memory_per_site.params as f64)),
        ),
        (
            "  gradients".into(),
            cells(&|m| decimal_bytes(m.memory_per_site.grads as f64)),
        ),
        (
            "  AdamW moments".into(),
            cells(&|m| decimal_bytes(m.memory_per_site.inner_optimizer as f64)),
        ),
        (
            "  outer state".into(),
            cells(&|m| decimal_bytes(m.memory_per_site.outer_state as f64)),
        ),
        (
            "fits 80 GB / 141 GB".into(),
            cells(&|m| format!("{} / {}", yes_no(m.fits_80gb), yes_no(m.fits_141gb))),
        ),
        (
            "80 GB / 141 GB accelerators".into(),
            cells(&|m| format!("{} / {}", m.accelerators_80gb, m.accelerators_141gb)),
        ),
        (
            "syncs / round".into(),
            cells(&|m| m.syncs_per_round.to_string()),
        ),
        (
            "payload / round / site".into(),
            cells(&|m| decimal_bytes(m.payload_bytes_per_round_per_site)),
        ),
        (
            "payload / token / site".into(),
            cells(&|m| decimal_bytes(m.payload_bytes_per_token_per_site)),
        ),
        (
            "aggregator payload / round".into(),
            cells(&|m| {
                m.aggregator_payload_bytes_per_round
                    .map_or("-".into(), |b| decimal_bytes(b as f64))
            }),
        ),
        (
            "bytes vs DDP".into(),
            cells(&|m| format!("{}x", sig3(m.bytes_reduction_vs_ddp))),
        ),
        (
            "comm / round".into(),
            cells(&|m| duration(m.comm_s_per_round)),
        ),
        (
            "compute / round".into(),
            cells(&|m| duration(m.compute_s_per_round)),
        ),
        (
            "wall / round".into(),
            cells(&|m| duration(m.wall_s_per_round)),
        ),
        (
            "tokens/s (all sites)".into(),
            cells(&|m| count(m.tokens_per_s)),
        ),
        (
            "rounds to budget".into(),
            cells(&|m| count(m.rounds_to_budget)),
        ),
        (
            "time to budget".into(),
            cells(&|m| duration(m.time_to_budget_s)),
        ),
        (
            "payload to budget / site".into(),
            cells(&|m| decimal_bytes(m.payload_bytes_to_budget_per_site)),
        ),
    ]
}

fn links_text(links: &Links) -> String {
    match links {
        Links::Uniform { link } => format!("{link} (every pair)"),
        Links::PerSite { sites, .. } => format!("per site ({} access links)", sites.len()),
    }
}

/// The projection as printed.
pub fn projection_text(p: &Projection) -> String {
    use std::fmt::Write as _;
    let m = &p.model;
    let c = &p.counts;
    let d = &p.deployment;
    let mut out = String::new();
    let _ = writeln!(out, "projection: {} (a model, not a measurement)", p.label);
    let _ = writeln!(
        out,
        "model       V {}, d {}, L {}, heads {}, E {}, top-{}, d_e {}, S {}, batch {}",
        m.vocab_size,
        m.d_model,
        m.n_layers,
        m.n_heads,
        m.n_experts,
        m.top_k,
        m.d_expert,
        m.seq_len,
        m.batch_size
    );
    let _ = writeln!(
        out,
        "params      N {} = dense {} + experts {} (s = {:.3}), active {} per token",
        count(c.total as f64),
        count(c.dense as f64),
        count(c.expert as f64),
        c.expert_share,
        count(c.active as f64)
    );
    let compute = match d.compute {
        harness::sysmodel::deployment::ComputeRate::Flops { peak_flops, mfu } => {
            format!("{peak_flops:.3e} FLOP/s × MFU {mfu} per site")
        }
        harness::sysmodel::deployment::ComputeRate::TokensPerS { tokens_per_s } => {
            format!(
                "{} tokens/s per site (full replica, measured)",
                count(tokens_per_s)
            )
        }
    };
    let _ = writeln!(
        out,
        "deployment  M {}, rho {}, H {}, links {}, wire {}, Photon {} ({} aggregator link)",
        d.sites,
        d.rho,
        d.inner_steps,
        links_text(&d.links),
        d.wire.name(),
        match d.photon_topology {
            harness::config::PhotonTopology::Star => "star",
            harness::config::PhotonTopology::Ring => "ring",
        },
        match d.star_link {
            StarLink::Shared => "shared",
            StarLink::PerClient => "per-client",
        }
    );
    let _ = writeln!(
        out,
        "            compute {compute}, overlap {}, FoMoE skip rate {}, {} tokens/step/site, budget {} tokens{}",
        d.overlap,
        d.skip_rate,
        count(d.tokens_per_step as f64),
        count(d.token_budget),
        if d.token_budget_default { " (20 per parameter)" } else { "" }
    );
    let rows = projection_rows(p);
    let names: Vec<&str> = p.methods.iter().map(|m| m.method).collect();
    let w0 = rows.iter().map(|r| r.0.chars().count()).max().unwrap_or(0);
    let widths: Vec<usize> = (0..names.len())
        .map(|i| {
            rows.iter()
                .map(|r| r.1[i].chars().count())
                .chain([names[i].len()])
                .max()
                .unwrap_or(0)
        })
        .collect();
    let _ = write!(out, "\n{:w0$}", "");
    for (n, w) in names.iter().zip(&widths) {
        let _ = write!(out, "  {n:>w$}");
    }
    out.push('\n');
    for (name, cells) in &rows {
        let _ = write!(out, "{name:w0$}");
        for (cell, w) in cells.iter().zip(&widths) {
            let _ = write!(out, "  {cell:>w$}");
        }
        out.push('\n');
    }
    out
}

fn pct(x: f64) -> String {
    if x.is_finite() {
        format!("{:+.1}%", 100.0 * x)
    } else {
        "-".into()
    }
}

/// The validation report as printed.
pub fn validation_text(v: &Validation) -> String {
    use std::fmt::Write as _;
    let mut out = String::new();
    let checked = v.runs.iter().filter(|r| r.skipped.is_none()).count();
    let _ = writeln!(
        out,
        "validation of {} ({} runs: {} checked, {} skipped)",
        v.dir.display(),
        v.runs.len(),
        checked,
        v.runs.len() - checked
    );
    let _ = writeln!(
        out,
        "{:<28} {:<7} {:<6} {:>16} {:>7} {:>22} {:>22}",
        "run", "method", "net", "payload", "bytes", "comm pred/meas", "time pred/meas"
    );
    for r in &v.runs {
        let id = format!("{}/{}", r.suite, r.run_id);
        if let Some(why) = &r.skipped {
            let _ = writeln!(
                out,
                "{id:<28} {:<7} {:<6} skipped: {why}",
                r.method, r.backend
            );
            continue;
        }
        let bytes = if r.unreadable.is_some() {
            "ERROR"
        } else if r.mismatches.is_empty() {
            "exact"
        } else {
            "DIFFER"
        };
        let (comm, time) = match &r.time {
            Some(t) => (
                format!(
                    "{}/{} {}",
                    duration(t.comm_predicted_s),
                    duration(t.comm_measured_s),
                    pct(t.comm_error)
                ),
                format!(
                    "{}/{} {}",
                    duration(t.time_predicted_s),
                    duration(t.time_measured_s),
                    pct(t.time_error)
                ),
            ),
            None => ("-".into(), "-".into()),
        };
        let _ = writeln!(
            out,
            "{id:<28} {:<7} {:<6} {:>16} {bytes:>7} {comm:>22} {time:>22}",
            r.method,
            r.backend,
            decimal_bytes(r.payload_measured_total as f64)
        );
        for m in &r.mismatches {
            let _ = writeln!(
                out,
                "  FAIL {}: predicted {}, measured {}",
                m.what, m.predicted, m.measured
            );
        }
        if let Some(e) = &r.unreadable {
            let _ = writeln!(out, "  FAIL {e}");
        }
    }
    let source = match v.tokens_per_s {
        None => {
            "time takes each run's own measured compute: its error is the communication model's"
                .to_string()
        }
        Some(t) => format!("compute predicted from {t} tokens/s per full-replica site"),
    };
    let _ = writeln!(
        out,
        "\n|relative error| per method and backend, mean / max ({source})"
    );
    let _ = writeln!(
        out,
        "{:<8} {:<6} {:>4} {:>18} {:>18} {:>18}",
        "method", "net", "runs", "comm", "time", "comm + wait (mean)"
    );
    let both = |mean: f64, max: f64| format!("{:.1}% / {:.1}%", 100.0 * mean, 100.0 * max);
    for s in &v.summary {
        let _ = writeln!(
            out,
            "{:<8} {:<6} {:>4} {:>18} {:>18} {:>18}",
            s.method,
            s.backend,
            s.runs,
            both(s.comm_mean_abs_error, s.comm_max_abs_error),
            both(s.time_mean_abs_error, s.time_max_abs_error),
            format!("{:.1}%", 100.0 * s.comm_with_wait_mean_abs_error)
        );
    }
    let _ = writeln!(
        out,
        "comm + wait: the error once each sync's wait for its last site to arrive (from the measured clocks) is added: a diagnostic, not a prediction"
    );
    out
}

/// The headline tables as printed.
pub fn headline_text(h: &Headline) -> String {
    use std::fmt::Write as _;
    let mut out = String::new();
    let _ = writeln!(
        out,
        "Where the abstract's {}x (vs DiLoCo/Photon) and {}x (vs DDP) come from: bytes per round,",
        h.claim_vs_diloco, h.claim_vs_ddp
    );
    let _ = writeln!(
        out,
        "DiLoCo/FoMoE -> 1/(1 - s(1 - rho/M)) for large M, DDP/FoMoE = H x that (harness/src/bytes.rs)."
    );
    if let (Some(half), Some(f8)) = (
        h.solve.iter().find(|s| s.rho_over_m == 0.5),
        h.finite.iter().find(|f| f.sites == 8),
    ) {
        let _ = writeln!(
            out,
            "Reading: both follow at rho/M = 1/2 with s = {:.3} and H = {:.0}, in the large-M limit; at M = 8 the\n\
             same s and rho/M give {:.2}x against DiLoCo and {:.2}x against Photon (the limit is approached from above).",
            half.share_for_claim.unwrap_or(f64::NAN),
            half.inner_steps_for_claim,
            f8.vs_diloco,
            f8.vs_photon
        );
    }
    let _ = writeln!(
        out,
        "\nrho/M   s giving {}x   H giving {}x",
        h.claim_vs_diloco, h.claim_vs_ddp
    );
    for s in &h.solve {
        let share = s
            .share_for_claim
            .map_or("none (> 1)".to_string(), |x| format!("{x:.3}"));
        let _ = writeln!(
            out,
            "{:<7.3} {:<14} {:.1}",
            s.rho_over_m, share, s.inner_steps_for_claim
        );
    }
    let ratios: Vec<f64> = {
        let mut r: Vec<f64> = h.limits.iter().map(|l| l.rho_over_m).collect();
        r.dedup();
        r.sort_by(f64::total_cmp);
        r.dedup();
        r
    };
    let _ = write!(out, "\nlarge-M DiLoCo/FoMoE (DDP/FoMoE at H = 32)\ns      ");
    for r in &ratios {
        let _ = write!(out, " {:>18}", format!("rho/M = {r:.3}"));
    }
    out.push('\n');
    let mut shares: Vec<f64> = h.limits.iter().map(|l| l.expert_share).collect();
    shares.dedup();
    for s in shares {
        let _ = write!(out, "{s:<7.3}");
        for r in &ratios {
            if let Some(l) = h
                .limits
                .iter()
                .find(|l| l.expert_share == s && l.rho_over_m == *r)
            {
                let _ = write!(
                    out,
                    " {:>18}",
                    format!("{:.3} ({:.2})", l.vs_diloco, l.vs_ddp_h32)
                );
            }
        }
        out.push('\n');
    }
    let _ = writeln!(out, "\nexact at M sites, rho = M/2, s = 0.592 (H = 32)");
    let _ = writeln!(
        out,
        "{:>5} {:>5} {:>10} {:>10} {:>10}",
        "M", "rho", "vs DiLoCo", "vs Photon", "vs DDP"
    );
    for f in &h.finite {
        let _ = writeln!(
            out,
            "{:>5} {:>5} {:>10.3} {:>10.3} {:>10.2}",
            f.sites, f.rho, f.vs_diloco, f.vs_photon, f.vs_ddp_h32
        );
    }
    let _ = writeln!(
        out,
        "\npaper-like presets (projections, H = 32; FoMoE payload per site per round)"
    );
    let _ = writeln!(
        out,
        "{:<11} {:>7} {:>6} {:>4} {:>4} {:>10} {:>10} {:>10} {:>9} {:>12}",
        "preset", "N", "s", "M", "rho", "FoMoE", "vs DiLoCo", "vs Photon", "vs DDP", "large-M lim"
    );
    for r in &h.paper {
        let _ = writeln!(
            out,
            "{:<11} {:>7} {:>6.3} {:>4} {:>4} {:>10} {:>10.3} {:>10.3} {:>9.1} {:>12.3}",
            r.label,
            count(r.total_params as f64),
            r.expert_share,
            r.sites,
            r.rho,
            decimal_bytes(r.fomoe_payload_bytes_per_round_per_site),
            r.vs_diloco,
            r.vs_photon,
            r.vs_ddp,
            r.vs_diloco_large_m
        );
    }
    let _ = writeln!(
        out,
        "\nmemory per site at 100B (paper-100b, M = 8; f32 state)"
    );
    let _ = writeln!(
        out,
        "{:<8} {:>4} {:>10} {:>10} {:>10} {:>10} {:>10} {:>9} {:>9}",
        "method", "rho", "params", "grads", "AdamW", "outer", "total", "80GB x", "141GB x"
    );
    for r in &h.memory_100b {
        let m = &r.memory_per_site;
        let rho = if r.method == "fomoe" {
            r.rho.to_string()
        } else {
            "-".into()
        };
        let _ = writeln!(
            out,
            "{:<8} {:>4} {:>10} {:>10} {:>10} {:>10} {:>10} {:>9} {:>9}",
            r.method,
            rho,
            decimal_bytes(m.params as f64),
            decimal_bytes(m.grads as f64),
            decimal_bytes(m.inner_optimizer as f64),
            decimal_bytes(m.outer_state as f64),
            decimal_bytes(m.total as f64),
            r.accelerators_80gb,
            r.accelerators_141gb
        );
    }
    out
}
