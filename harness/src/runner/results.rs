//! Binding of the runner to a suite's run directory ([`crate::results::RunDir`]): execute
//! the run with its round rows going into the directory's own rounds sink, then turn the
//! per-site probe dumps into `probe_topk.bin` and `routing.csv`.

use std::collections::BTreeMap;
use std::io::BufRead;
use std::path::Path;

use anyhow::{Context, Result};

use super::sink::ProbeRecord;
use super::{run_one_into, threads_per_site, RunOptions};
use crate::config::RunConfig;
use crate::metrics::probe::{routing_rows, ProbeDomain, ProbeDump, ProbeHeader, Router};
use crate::results::RunDir;
use crate::strategy::MethodRegistry;
use crate::telemetry::StepRow;

/// Execute `cfg` in a suite run directory (what `fomoe run` calls for every run).
pub fn execute_in_run_dir(
    cfg: &RunConfig,
    dir: &mut RunDir,
    reg: &MethodRegistry,
    opts: &RunOptions,
) -> Result<()> {
    execute_with(cfg, dir, threads_per_site(cfg), |path, rounds| {
        run_one_into(cfg, path, reg, opts, rounds)
    })
}

/// Executes a run in `dir` with `run` (given the directory's path and its rounds sink; e.g.
/// [`run_one_into`], or rank 0 of a multi-host run), recording `threads` per site, then
/// writes `sites.json`, the links and scenario record, and the routing metrics.
pub fn execute_with(
    cfg: &RunConfig,
    dir: &mut RunDir,
    threads: usize,
    run: impl FnOnce(
        &Path,
        &mut crate::results::CsvSink<crate::telemetry::RoundRow>,
    ) -> Result<super::RunOutcome>,
) -> Result<()> {
    let device = crate::device::resolve(cfg.device, 0)?.device;
    let facts = crate::device::facts::DeviceFacts::detect(
        device,
        cfg.precision,
        cfg.sites,
        &cfg.network.backend.to_string(),
    );
    dir.set_runtime(&facts.device.clone(), threads)?;
    dir.set_device(facts)?;
    let path = dir.path().to_path_buf();
    let outcome = run(&path, &mut dir.rounds);
    if let Ok(o) = &outcome {
        crate::results::write_atomic(
            &path.join("sites.json"),
            serde_json::to_string_pretty(o)?.as_bytes(),
        )?;
    }
    // The links and what the scenario did, in the manifest (also after a failure).
    let record = network_record(cfg, &path)
        .and_then(|(links, scenario)| Ok(dir.set_network_record(Some(links), scenario)?));
    // Routing metrics from whatever probe records exist (also after a failure).
    let routing = routing_from_probes(cfg, &path, dir);
    match (&outcome, routing, record) {
        (Ok(_), Err(e), _) => Err(e.context("computing routing metrics")),
        (Ok(_), _, Err(e)) => Err(e.context("recording links and scenario")),
        _ => outcome.map(|_| ()),
    }
}

/// The manifest's `links` (resolved matrix, trace, link changes) and, for a run with
/// faults or a deadline, its `scenario` record from participation.csv.
fn network_record(
    cfg: &RunConfig,
    path: &Path,
) -> Result<(serde_json::Value, Option<serde_json::Value>)> {
    let plan = crate::scenario::plan::Plan::new(cfg)?;
    let changes: Vec<serde_json::Value> = plan
        .link_changes
        .iter()
        .map(|c| {
            serde_json::json!({
                "at_s": c.at.as_secs_f64(),
                "from": c.from,
                "to": c.to,
                "rate": c.rate_bps.map(crate::units::format_rate),
                "delay": c.delay.map(crate::units::format_duration),
            })
        })
        .collect();
    let links = serde_json::json!({
        "endpoints": cfg.endpoints(),
        "matrix": cfg.link_matrix()?.record(),
        "trace": cfg.network.trace,
        "changes": changes,
    });
    if cfg.faults.is_empty() && plan.deadline.is_none() {
        return Ok((links, None));
    }
    let placement = crate::strategy::placement::initial_placement(cfg)?;
    let file = path.join(crate::scenario::participation::PARTICIPATION_FILE);
    let rows = if file.exists() {
        crate::results::read_rows(&file)?.rows
    } else {
        Vec::new()
    };
    let rec = crate::scenario::participation::ScenarioRecord::derive(
        &cfg.faults,
        &plan,
        &placement,
        cfg.inner_steps,
        &rows,
    );
    Ok((links, Some(serde_json::to_value(rec)?)))
}

fn routing_from_probes(cfg: &RunConfig, path: &Path, dir: &mut RunDir) -> Result<()> {
    let mcfg = cfg.model_config()?;
    let mut records: Vec<ProbeRecord> = Vec::new();
    for s in 0..cfg.sites {
        let p = path.join(format!("probe-site{s}.jsonl"));
        let Ok(f) = std::fs::File::open(&p) else {
            continue;
        };
        for line in std::io::BufReader::new(f).lines() {
            let line = line?;
            match serde_json::from_str::<ProbeRecord>(&line) {
                Ok(r) => records.push(r),
                Err(_) => break, // a half-written last line of a crashed site
            }
        }
    }
    if records.is_empty() {
        return Ok(());
    }
    let data = crate::data::Dataset::open(&cfg.data, mcfg.seq_len)?;
    let k = mcfg.top_k;
    let mut tokens: BTreeMap<usize, usize> = BTreeMap::new();
    for r in &records {
        tokens.entry(r.domain).or_insert(r.ids.len() / k);
    }
    let header = ProbeHeader {
        n_layers: mcfg.n_layers,
        n_experts: mcfg.n_experts,
        top_k: k,
        sites: cfg.sites,
        domains: tokens
            .iter()
            .map(|(&d, &t)| ProbeDomain {
                name: data.domains()[d].name.clone(),
                tokens: t,
            })
            .collect(),
    };
    // (round, layer, router) → ids concatenated over domains in domain order.
    let mut grouped: BTreeMap<(usize, usize, Router), BTreeMap<usize, Vec<i64>>> = BTreeMap::new();
    for r in records {
        let router = if r.kind == "global" {
            Router::Global
        } else {
            Router::Site(r.site)
        };
        grouped
            .entry((r.round, r.layer, router))
            .or_default()
            .insert(r.domain, r.ids);
    }
    let mut w = dir.probe_dump(header.clone())?;
    for ((round, layer, router), per_domain) in &grouped {
        if per_domain.len() != header.domains.len() {
            continue; // incomplete (crash mid-dump)
        }
        let ids: Vec<i64> = per_domain.values().flatten().copied().collect();
        w.write(*round, *layer, *router, &ids)?;
    }
    w.sync()?;
    drop(w);
    // Skip rate of a (round, layer): mean over the round's steps and sites of that layer's
    // training skip rate (steps.csv `skip_by_layer`).
    let steps: Vec<StepRow> = match csv::Reader::from_path(path.join("steps.csv")) {
        Ok(mut r) => r.deserialize().filter_map(|x| x.ok()).collect(),
        Err(_) => Vec::new(),
    };
    let mut skip: BTreeMap<(usize, usize), (f64, usize)> = BTreeMap::new();
    for s in &steps {
        let Some(by_layer) = crate::telemetry::parse_skip_by_layer(&s.skip_by_layer) else {
            continue;
        };
        for (layer, v) in by_layer.into_iter().enumerate() {
            let e = skip.entry((s.round, layer)).or_default();
            e.0 += v;
            e.1 += 1;
        }
    }
    let dump = ProbeDump::read(path.join("probe_topk.bin")).context("reading probe_topk.bin")?;
    let rows = routing_rows(&dump, |round, layer| {
        skip.get(&(round, layer))
            .map_or(0.0, |(s, n)| s / *n as f64)
    })?;
    for r in &rows {
        dir.routing.push(r)?;
    }
    Ok(())
}
