//! A suite's results read back for plotting: the harness's own summaries
//! ([`harness::results::summarize`], [`harness::results::annotate_suite`], the same code that
//! writes `summary.csv`), plus the per-round series the figures draw.
//!
//! Per run, per evaluated round r: the summary's `evals` ([`harness::results::quality`]: the
//! global and local mean eval loss over domains, the tokens, clock and payload at the eval);
//! the floor = (1/D) Σ_d floor(d) of the last round, only when every domain row has one.
//!
//! Per run, the per-site compute throughput (the throughput figure): for each site i,
//! T_i = Σ steps.csv `tokens` / (Σ `compute_ms` / 1000) over its rows; the run's value is the
//! mean of T_i over sites (none without compute time). It leaves out data loading, the
//! optimiser step and communication, so it isolates the forward and backward pass that
//! skip-token shortens.
//!
//! Per run, per round in routing.csv (one row per layer): each metric is the mean over the
//! layers that have a value (the `Option` columns are empty for e.g. DDP's cross-site
//! agreement, and for overlap at the first dumped round); no value in any layer → none.
//!
//! A run whose files cannot be read, or that is `incomplete`, is left out of the figures
//! and the table and listed with the reason ([`SuiteData::left_out`]); the rest of the
//! suite is drawn. A suite directory or `summary.csv` that cannot be read is an error
//! naming the file.

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};

use harness::results::run_dir::{ROUNDS_FILE, ROUTING_FILE, STEPS_FILE};
use harness::results::{
    annotate_suite, read_rows, site_step_files, summarize, Manifest, Summary, MANIFEST_FILE,
    SUMMARY_FILE,
};
use harness::telemetry::{RoundRow, RoutingRow, StepRow};

use crate::PaperError;

pub use harness::results::quality::EvalPoint;

/// One round of routing.csv, means over layers.
#[derive(Clone, Debug, PartialEq)]
pub struct RoutingPoint {
    pub round: usize,
    pub layers: usize,
    pub saturation_topk: Option<f64>,
    pub cross_site_agreement_topk: Option<f64>,
    pub overlap_prev_topk: Option<f64>,
    pub cv: f64,
    pub skip_rate: f64,
}

/// One run: its summary and its series.
#[derive(Clone, Debug)]
pub struct RunData {
    pub summary: Summary,
    pub eval: Vec<EvalPoint>,
    /// Mean entropy floor over domains (last round), when every domain has one.
    pub floor: Option<f64>,
    pub routing: Vec<RoutingPoint>,
    /// Mean over sites of Σ tokens / Σ compute seconds (module doc).
    pub compute_tokens_per_s_per_site: Option<f64>,
    /// Where it ran, from the manifest: host, compute backend, threads per site.
    pub host: String,
    pub backend: String,
    pub threads: usize,
    pub network_backend: String,
    pub libtorch_version: String,
    pub git_commit: String,
    /// Whether the run directory has a steps.csv / rounds.csv / routing.csv file.
    pub has_steps_file: bool,
    pub has_rounds_file: bool,
    pub has_routing_file: bool,
}

impl RunData {
    pub fn id(&self) -> &str {
        &self.summary.run_id
    }
}

/// Every run of a suite, in summary.csv order (the rest by name).
#[derive(Clone, Debug)]
pub struct SuiteData {
    pub name: String,
    pub dir: PathBuf,
    /// Runs whose files are what they recorded: the figures and the table.
    pub runs: Vec<RunData>,
    /// Runs left out of every figure and table, with the reason: a run whose files cannot
    /// be read (one bad CSV does not stop the suite) or that is `incomplete` (its files
    /// are not what it recorded, [`harness::results::completeness`]).
    pub left_out: Vec<(String, String)>,
}

fn io(path: &Path) -> impl FnOnce(std::io::Error) -> PaperError + '_ {
    move |error| PaperError::Io {
        path: path.to_path_buf(),
        error,
    }
}

fn rows<T: serde::de::DeserializeOwned>(path: &Path) -> Result<Option<Vec<T>>, PaperError> {
    if path.exists() {
        Ok(Some(read_rows(path)?.rows))
    } else {
        Ok(None)
    }
}

/// Read the suite in `dir` (a directory holding run directories with `manifest.json`).
pub fn load_suite(dir: &Path) -> Result<SuiteData, PaperError> {
    if !dir.is_dir() {
        return Err(PaperError::NotASuite {
            path: dir.to_path_buf(),
            reason: "no such directory".into(),
        });
    }
    let mut ids: Vec<String> = std::fs::read_dir(dir)
        .map_err(io(dir))?
        .filter_map(|e| e.ok())
        .filter(|e| e.path().join(MANIFEST_FILE).is_file())
        .filter_map(|e| e.file_name().to_str().map(str::to_string))
        .collect();
    ids.sort();
    if ids.is_empty() {
        return Err(PaperError::NotASuite {
            path: dir.to_path_buf(),
            reason: format!("no run directories (subdirectories with {MANIFEST_FILE})"),
        });
    }
    let mut order: Vec<String> = Vec::new();
    let summary_path = dir.join(SUMMARY_FILE);
    if summary_path.is_file() {
        let malformed = |line: usize, reason: String| PaperError::Malformed {
            path: summary_path.clone(),
            line,
            reason,
        };
        let mut r =
            csv::Reader::from_path(&summary_path).map_err(|e| malformed(1, e.to_string()))?;
        let header = r.headers().map_err(|e| malformed(1, e.to_string()))?;
        if header.get(0) != Some("run_id") {
            return Err(malformed(
                1,
                format!(
                    "first column is {:?}, expected \"run_id\"",
                    header.get(0).unwrap_or("")
                ),
            ));
        }
        for (i, rec) in r.records().enumerate() {
            let rec = rec.map_err(|e| malformed(i + 2, e.to_string()))?;
            let id = rec.get(0).unwrap_or("");
            if ids.iter().any(|d| d == id) && !order.iter().any(|o| o == id) {
                order.push(id.to_string());
            }
        }
    }
    for id in &ids {
        if !order.contains(id) {
            order.push(id.clone());
        }
    }
    let mut runs = Vec::with_capacity(order.len());
    let mut left_out = Vec::new();
    for id in &order {
        match load_run(&dir.join(id)) {
            Ok(r) if r.summary.has_numbers() => runs.push(r),
            Ok(r) => left_out.push((
                id.clone(),
                format!(
                    "{}: {}",
                    r.summary.status,
                    r.summary.error.as_deref().unwrap_or("no numbers")
                ),
            )),
            Err(e) => left_out.push((id.clone(), format!("unreadable: {e}"))),
        }
    }
    if runs.is_empty() {
        let why: Vec<String> = left_out
            .iter()
            .map(|(id, w)| format!("{id}: {w}"))
            .collect();
        return Err(PaperError::NotASuite {
            path: dir.to_path_buf(),
            reason: format!("no run can be drawn ({})", why.join("; ")),
        });
    }
    let mut summaries: Vec<Summary> = runs.iter().map(|r| r.summary.clone()).collect();
    annotate_suite(&mut summaries);
    for (r, s) in runs.iter_mut().zip(summaries) {
        r.summary = s;
    }
    let name = dir
        .file_name()
        .and_then(|n| n.to_str())
        .unwrap_or("suite")
        .to_string();
    Ok(SuiteData {
        name,
        dir: dir.to_path_buf(),
        runs,
        left_out,
    })
}

fn mean_some(values: impl Iterator<Item = Option<f64>>) -> Option<f64> {
    let (sum, n) = values
        .flatten()
        .fold((0.0, 0usize), |(s, n), v| (s + v, n + 1));
    (n > 0).then(|| sum / n as f64)
}

/// One run directory.
pub fn load_run(dir: &Path) -> Result<RunData, PaperError> {
    let summary = summarize(dir)?;
    if !summary.has_numbers() {
        // Files that are not what the run recorded: no series are read from them.
        let manifest = Manifest::read(&dir.join(MANIFEST_FILE))?;
        return Ok(RunData {
            summary,
            eval: Vec::new(),
            floor: None,
            routing: Vec::new(),
            compute_tokens_per_s_per_site: None,
            host: manifest.host,
            backend: manifest.backend,
            threads: manifest.threads,
            network_backend: manifest.network_backend,
            libtorch_version: manifest.libtorch_version,
            git_commit: manifest.git_commit,
            has_steps_file: false,
            has_rounds_file: false,
            has_routing_file: false,
        });
    }
    let steps_path = dir.join(STEPS_FILE);
    let mut steps: Vec<StepRow> = rows(&steps_path)?.unwrap_or_default();
    let has_steps_file = steps_path.exists();
    for (_, p) in site_step_files(dir)? {
        steps.extend(read_rows::<StepRow>(&p)?.rows);
    }
    let rounds_path = dir.join(ROUNDS_FILE);
    let rounds_rows: Option<Vec<RoundRow>> = rows(&rounds_path)?;
    let routing_path = dir.join(ROUTING_FILE);
    let routing_rows: Option<Vec<RoutingRow>> = rows(&routing_path)?;

    let rounds = rounds_rows.as_deref().unwrap_or(&[]);
    let mut by_round: BTreeMap<usize, Vec<&RoundRow>> = BTreeMap::new();
    for r in rounds {
        by_round.entry(r.round).or_default().push(r);
    }
    let eval = summary.evals.clone();
    let mut per_site: BTreeMap<usize, (u64, f64)> = BTreeMap::new();
    for s in &steps {
        let e = per_site.entry(s.site).or_insert((0, 0.0));
        e.0 += s.tokens as u64;
        e.1 += s.compute_ms;
    }
    let site_rates: Vec<f64> = per_site
        .values()
        .filter(|(_, ms)| *ms > 0.0)
        .map(|&(t, ms)| t as f64 / (ms / 1000.0))
        .collect();
    let compute_tokens_per_s_per_site = (!site_rates.is_empty()
        && site_rates.len() == per_site.len())
    .then(|| site_rates.iter().sum::<f64>() / site_rates.len() as f64);
    let manifest = Manifest::read(&dir.join(MANIFEST_FILE))?;
    let floor = by_round.values().next_back().and_then(|rs| {
        let fs: Option<Vec<f64>> = rs.iter().map(|r| r.floor).collect();
        fs.map(|fs| fs.iter().sum::<f64>() / fs.len() as f64)
    });

    let mut by_round: BTreeMap<usize, Vec<&RoutingRow>> = BTreeMap::new();
    for r in routing_rows.as_deref().unwrap_or(&[]) {
        by_round.entry(r.round).or_default().push(r);
    }
    let routing = by_round
        .iter()
        .map(|(&round, rs)| {
            let n = rs.len() as f64;
            RoutingPoint {
                round,
                layers: rs.len(),
                saturation_topk: mean_some(rs.iter().map(|r| r.saturation_topk)),
                cross_site_agreement_topk: mean_some(
                    rs.iter().map(|r| r.cross_site_agreement_topk),
                ),
                overlap_prev_topk: mean_some(rs.iter().map(|r| r.overlap_prev_topk)),
                cv: rs.iter().map(|r| r.cv).sum::<f64>() / n,
                skip_rate: rs.iter().map(|r| r.skip_rate).sum::<f64>() / n,
            }
        })
        .collect();
    Ok(RunData {
        summary,
        eval,
        floor,
        routing,
        compute_tokens_per_s_per_site,
        host: manifest.host,
        backend: manifest.backend,
        threads: manifest.threads,
        network_backend: manifest.network_backend,
        libtorch_version: manifest.libtorch_version,
        git_commit: manifest.git_commit,
        has_steps_file,
        has_rounds_file: rounds_rows.is_some(),
        has_routing_file: routing_rows.is_some(),
    })
}
