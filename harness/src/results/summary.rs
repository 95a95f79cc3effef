//! One summary row per run (summary.csv, `fomoe report`), computed from the run's files
//! alone, and the suite-level columns that compare runs (varying knobs, bytes vs DDP).
//!
//! Per run ([`summarize`]):
//! - `tokens_total` = Σ steps.csv `tokens` (all sites); `clock_s` = the largest run clock in
//!   steps.csv / rounds.csv (virtual on `sim`); `tokens_per_s` = tokens_total / clock_s;
//! - `payload_bytes`, `framing_bytes`, `eval_bytes`: the last rounds.csv totals (cumulative
//!   over all endpoints, Photon's aggregator included) of a complete run; without rounds
//!   rows, or for a run that failed or is still running (whose totals are filled only at
//!   the end), the sums of steps.csv `payload_sent` / `framing_sent` (sites only);
//! - status `incomplete`: the manifest says `complete` but a recorded file is missing or
//!   changed ([`super::completeness`]); such a row has no numbers;
//! - `final_eval_loss_by_domain`: the rows of the last evaluated round; `final_eval_loss` their
//!   mean; `best_eval_loss` the lowest per-round mean;
//! - `final_local_eval_loss_by_domain` / `final_local_eval_loss`: the same for the mean of the
//!   sites' own models (rounds.csv `local_eval_loss`: each site's resident experts and skip
//!   policy, before the sync), beside the global model's;
//! - `max_loss_increase` / `max_loss_increase_round`: the largest round-to-round increase of
//!   the global model's mean eval loss and the round it happened at (0 and none when it never
//!   rose; none with fewer than two evals); `max_local_loss_increase` the same for the sites'
//!   own models ([`super::quality::largest_increase`]);
//! - `time_to_target_s` / `step_to_target`: clock and step of the first eval whose mean over
//!   domains is ≤ `target_loss`, even if a later eval rises above it again;
//!   `time_to_stay_target_s` / `step_to_stay_target`: of the first eval from which every later
//!   eval stays ≤ `target_loss`. Null when there is no target or it was not reached (never
//!   interpolated or extrapolated).
//!
//! Per suite ([`annotate_suite`]):
//! - varying knobs: leaf paths of the resolved configs whose values differ between runs the
//!   knob applies to ([`crate::config::knob_applies`]), seed and method aside;
//! - `bytes_reduction_vs_ddp` = DDP payload / this run's payload, against the complete DDP run
//!   with the same values of every varying knob that applies to both methods
//!   (`ddp_ref_exact = true`); without one, against the DDP run matching the most of those
//!   knobs (ties: same seed, then suite order; `ddp_ref_exact = false`); null without a
//!   complete DDP run, for incomplete runs, and when this run sent no payload;
//! - `equal_tokens` / `equal_clock_s` / `equal_payload_bytes` and the global and local loss
//!   there (`loss_at_equal_*`, `local_loss_at_equal_*`, `round_at_equal_*`): the common budget
//!   (the smallest positive final budget among the complete runs with evals) and each such
//!   run's last eval within it, defined in [`super::quality`]; none for other runs;
//! - `on_pareto_front`: among the complete runs with a final eval loss, whether no other run
//!   has both fewer-or-equal payload bytes and a lower-or-equal final global loss (one of them
//!   strictly); none for other runs.

use std::collections::BTreeMap;
use std::path::Path;

use serde::Serialize;
use serde_json::Value;

use super::completeness::check_files;
use super::csv_sink::read_rows;
use super::manifest::{Manifest, RunStatus, MANIFEST_FILE};
use super::quality::{self, Budget, EvalPoint};
use super::run_dir::{ROUNDS_FILE, STEPS_FILE};
use super::ResultsError;
use crate::config::{knob_applies, Method, RunConfig};
use crate::telemetry::{RoundRow, StepRow};

/// Status of a run whose manifest says `complete` but whose files disagree with it.
pub const INCOMPLETE: &str = "incomplete";

/// Final eval loss of one domain.
#[derive(Clone, Debug, PartialEq, Serialize)]
pub struct DomainLoss {
    pub domain: String,
    pub eval_loss: f64,
}

/// A run at a suite's common budget on one axis ([`quality`]).
#[derive(Clone, Debug, PartialEq, Serialize)]
pub struct AtBudget {
    /// The common budget: tokens, clock seconds or payload bytes.
    pub budget: f64,
    /// The run's last eval within the budget (none: no eval within it), its global and
    /// local mean eval loss.
    pub round: Option<usize>,
    pub loss: Option<f64>,
    pub local_loss: Option<f64>,
}

/// One run, summarised.
#[derive(Clone, Debug, PartialEq, Serialize)]
pub struct Summary {
    pub run_id: String,
    /// `running`, `complete`, `failed`, `incomplete` (manifest `complete`, files not as
    /// recorded: no numbers) or `unreadable` (no usable manifest).
    pub status: String,
    pub error: Option<String>,
    pub config_hash: Option<String>,
    #[serde(skip)]
    pub config: Option<RunConfig>,
    pub method: Option<String>,
    pub seed: Option<u64>,
    /// Values of the suite's varying knobs that apply to this run (filled by [`annotate_suite`]).
    pub knobs: BTreeMap<String, Value>,
    pub tokens_total: u64,
    pub clock_s: Option<f64>,
    pub tokens_per_s: Option<f64>,
    pub payload_bytes: u64,
    pub framing_bytes: u64,
    pub eval_bytes: u64,
    /// Where the byte totals came from: `rounds` or `steps`.
    pub bytes_source: &'static str,
    pub final_round: Option<usize>,
    pub final_eval_loss: Option<f64>,
    pub final_eval_loss_by_domain: Vec<DomainLoss>,
    pub best_eval_loss: Option<f64>,
    pub final_local_eval_loss: Option<f64>,
    pub final_local_eval_loss_by_domain: Vec<DomainLoss>,
    pub max_loss_increase: Option<f64>,
    pub max_loss_increase_round: Option<usize>,
    pub max_local_loss_increase: Option<f64>,
    pub target_loss: Option<f64>,
    pub time_to_target_s: Option<f64>,
    pub step_to_target: Option<usize>,
    pub time_to_stay_target_s: Option<f64>,
    pub step_to_stay_target: Option<usize>,
    pub ddp_ref: Option<String>,
    pub ddp_ref_exact: Option<bool>,
    pub bytes_reduction_vs_ddp: Option<f64>,
    /// At the suite's common budgets (filled by [`annotate_suite`]).
    pub at_equal_tokens: Option<AtBudget>,
    pub at_equal_clock: Option<AtBudget>,
    pub at_equal_payload: Option<AtBudget>,
    pub on_pareto_front: Option<bool>,
    /// Per evaluated round: means over domains of the global and local eval loss, with the
    /// tokens, clock and payload at the eval.
    pub evals: Vec<EvalPoint>,
}

impl Summary {
    fn empty(run_id: &str, status: &str) -> Summary {
        Summary {
            run_id: run_id.to_string(),
            status: status.to_string(),
            error: None,
            config_hash: None,
            config: None,
            method: None,
            seed: None,
            knobs: BTreeMap::new(),
            tokens_total: 0,
            clock_s: None,
            tokens_per_s: None,
            payload_bytes: 0,
            framing_bytes: 0,
            eval_bytes: 0,
            bytes_source: "steps",
            final_round: None,
            final_eval_loss: None,
            final_eval_loss_by_domain: Vec::new(),
            best_eval_loss: None,
            final_local_eval_loss: None,
            final_local_eval_loss_by_domain: Vec::new(),
            max_loss_increase: None,
            max_loss_increase_round: None,
            max_local_loss_increase: None,
            target_loss: None,
            time_to_target_s: None,
            step_to_target: None,
            time_to_stay_target_s: None,
            step_to_stay_target: None,
            ddp_ref: None,
            ddp_ref_exact: None,
            bytes_reduction_vs_ddp: None,
            at_equal_tokens: None,
            at_equal_clock: None,
            at_equal_payload: None,
            on_pareto_front: None,
            evals: Vec::new(),
        }
    }

    /// A row for a run directory whose files cannot be read.
    pub fn unreadable(run_id: &str, reason: &str) -> Summary {
        Summary {
            error: Some(reason.to_string()),
            ..Summary::empty(run_id, "unreadable")
        }
    }

    pub fn is_complete(&self) -> bool {
        self.status == RunStatus::Complete.name()
    }

    /// Whether the numbers of this row come from the run's files (false for `incomplete`
    /// and `unreadable` rows, whose numbers are left empty and must not be shown).
    pub fn has_numbers(&self) -> bool {
        self.status != INCOMPLETE && self.status != "unreadable"
    }
}

fn read_optional<T: serde::de::DeserializeOwned>(path: &Path) -> Result<Vec<T>, ResultsError> {
    if path.exists() {
        Ok(read_rows(path)?.rows)
    } else {
        Ok(Vec::new())
    }
}

/// Summarise the run in `dir` from its manifest, steps.csv (plus any unmerged
/// `steps-site<i>.csv`) and rounds.csv.
pub fn summarize(dir: &Path) -> Result<Summary, ResultsError> {
    let manifest = Manifest::read(&dir.join(MANIFEST_FILE))?;
    let cfg = &manifest.config;
    let mut s = Summary::empty(&manifest.run_id, manifest.status.name());
    s.error = manifest.error.clone();
    s.config_hash = Some(manifest.config_hash.clone());
    s.method = Some(cfg.method.name().to_string());
    s.seed = Some(cfg.seed);
    s.target_loss = cfg.target_loss;
    if manifest.status == RunStatus::Complete {
        let problems = check_files(dir, manifest.files.as_ref());
        if !problems.is_empty() {
            // Files that are not what the run wrote give no numbers at all.
            s.status = INCOMPLETE.to_string();
            s.error = Some(problems.join("; "));
            s.config = Some(manifest.config);
            return Ok(s);
        }
    }

    let mut steps: Vec<StepRow> = read_optional(&dir.join(STEPS_FILE))?;
    for (_, p) in super::site_step_files(dir)? {
        steps.extend(read_rows::<StepRow>(&p)?.rows);
    }
    let rounds: Vec<RoundRow> = read_optional(&dir.join(ROUNDS_FILE))?;

    s.tokens_total = steps.iter().map(|r| r.tokens as u64).sum();
    let clock = steps
        .iter()
        .map(|r| r.clock_s)
        .chain(rounds.iter().map(|r| r.clock_s))
        .fold(None, |m: Option<f64>, c| Some(m.map_or(c, |m| m.max(c))));
    s.clock_s = clock;
    s.tokens_per_s = clock
        .filter(|&c| c > 0.0)
        .map(|c| s.tokens_total as f64 / c);

    // rounds.csv byte totals are filled in when a run succeeds; a run that failed or is
    // still running has only its sites' own counts in steps.csv.
    if rounds.is_empty() || manifest.status != RunStatus::Complete {
        s.payload_bytes = steps.iter().map(|r| r.payload_sent).sum();
        s.framing_bytes = steps.iter().map(|r| r.framing_sent).sum();
        s.bytes_source = "steps";
    } else {
        s.payload_bytes = rounds
            .iter()
            .map(|r| r.payload_bytes_total)
            .max()
            .unwrap_or(0);
        s.framing_bytes = rounds
            .iter()
            .map(|r| r.framing_bytes_total)
            .max()
            .unwrap_or(0);
        s.eval_bytes = rounds.iter().map(|r| r.eval_bytes_total).max().unwrap_or(0);
        s.bytes_source = "rounds";
    }

    s.evals = quality::eval_series(&rounds, &steps);
    if let Some(last) = s.evals.last() {
        let last_round = last.round;
        s.final_round = Some(last_round);
        s.final_eval_loss = Some(last.loss);
        s.final_local_eval_loss = Some(last.local_loss);
        let final_rows = || rounds.iter().filter(|r| r.round == last_round);
        s.final_eval_loss_by_domain = final_rows()
            .map(|r| DomainLoss {
                domain: r.domain.clone(),
                eval_loss: r.eval_loss,
            })
            .collect();
        s.final_local_eval_loss_by_domain = final_rows()
            .map(|r| DomainLoss {
                domain: r.domain.clone(),
                eval_loss: r.local_eval_loss,
            })
            .collect();
        s.best_eval_loss = s.evals.iter().map(|p| p.loss).reduce(f64::min);
    }
    if let Some((inc, round)) = quality::largest_increase(&s.evals, |p| p.loss) {
        s.max_loss_increase = Some(inc);
        s.max_loss_increase_round = round;
    }
    s.max_local_loss_increase = quality::largest_increase(&s.evals, |p| p.local_loss).map(|x| x.0);
    if let Some(target) = cfg.target_loss {
        if let Some(p) = quality::first_under(&s.evals, target) {
            s.time_to_target_s = Some(p.clock_s);
            s.step_to_target = Some(p.step);
        }
        if let Some(p) = quality::stays_under(&s.evals, target) {
            s.time_to_stay_target_s = Some(p.clock_s);
            s.step_to_stay_target = Some(p.step);
        }
    }
    s.config = Some(manifest.config);
    Ok(s)
}

/// The value at a dotted path of a JSON value (Null when absent).
pub fn value_at<'a>(v: &'a Value, path: &str) -> &'a Value {
    let mut cur = v;
    for part in path.split('.') {
        match cur.get(part) {
            Some(next) => cur = next,
            None => return &Value::Null,
        }
    }
    cur
}

fn leaf_paths(v: &Value, prefix: &str, out: &mut Vec<String>) {
    match v {
        Value::Object(map) if !map.is_empty() => {
            for (k, child) in map {
                let p = if prefix.is_empty() {
                    k.clone()
                } else {
                    format!("{prefix}.{k}")
                };
                out.push(p.clone());
                leaf_paths(child, &p, out);
            }
        }
        _ => {}
    }
}

/// Dotted paths of the knobs whose values differ between the configs (only counting the
/// configs of methods a knob applies to), seed and method excluded, sorted. A table knob
/// whose fields vary is reported by its fields (`outer.lr`, not `outer`).
pub fn varying_knobs<'a>(configs: impl IntoIterator<Item = &'a RunConfig>) -> Vec<String> {
    let values: Vec<(Method, Value)> = configs
        .into_iter()
        .map(|c| {
            (
                c.method,
                serde_json::to_value(c).expect("config serialises"),
            )
        })
        .collect();
    let mut paths = Vec::new();
    for (_, v) in &values {
        leaf_paths(v, "", &mut paths);
    }
    paths.sort();
    paths.dedup();
    let varying: Vec<String> = paths
        .into_iter()
        .filter(|p| p != "seed" && p != "method")
        .filter(|p| {
            let mut seen: Vec<&Value> = Vec::new();
            for (m, v) in &values {
                if !knob_applies(*m, p) {
                    continue;
                }
                let x = value_at(v, p);
                if !seen.contains(&x) {
                    seen.push(x);
                }
            }
            seen.len() > 1
        })
        .collect();
    varying
        .iter()
        .filter(|p| !varying.iter().any(|q| q.starts_with(&format!("{p}."))))
        .cloned()
        .collect()
}

/// Fill the suite-level columns: varying knob values and bytes vs DDP (see module docs).
pub fn annotate_suite(rows: &mut [Summary]) {
    let knobs = varying_knobs(rows.iter().filter_map(|r| r.config.as_ref()));
    let json: Vec<Option<Value>> = rows
        .iter()
        .map(|r| {
            r.config
                .as_ref()
                .map(|c| serde_json::to_value(c).expect("config serialises"))
        })
        .collect();
    for (row, v) in rows.iter_mut().zip(&json) {
        row.knobs.clear();
        if let (Some(cfg), Some(v)) = (&row.config, v) {
            for k in &knobs {
                if knob_applies(cfg.method, k) {
                    row.knobs.insert(k.clone(), value_at(v, k).clone());
                }
            }
        }
    }
    let ddp: Vec<usize> = (0..rows.len())
        .filter(|&j| {
            rows[j].is_complete()
                && rows[j]
                    .config
                    .as_ref()
                    .is_some_and(|c| c.method == Method::Ddp)
        })
        .collect();
    for i in 0..rows.len() {
        rows[i].ddp_ref = None;
        rows[i].ddp_ref_exact = None;
        rows[i].bytes_reduction_vs_ddp = None;
        let (Some(cfg), Some(v)) = (rows[i].config.as_ref(), json[i].as_ref()) else {
            continue;
        };
        if !rows[i].is_complete() {
            continue;
        }
        let relevant: Vec<&String> = knobs
            .iter()
            .filter(|k| knob_applies(Method::Ddp, k) && knob_applies(cfg.method, k))
            .collect();
        let mut best: Option<(usize, (usize, bool))> = None;
        for &j in &ddp {
            let dv = json[j].as_ref().expect("ddp rows have configs");
            let matches = relevant
                .iter()
                .filter(|k| value_at(v, k) == value_at(dv, k))
                .count();
            let same_seed = rows[j].seed == rows[i].seed;
            let score = (matches, same_seed);
            if best.is_none_or(|(_, b)| score > b) {
                best = Some((j, score));
            }
        }
        let Some((j, (matches, _))) = best else {
            continue;
        };
        rows[i].ddp_ref = Some(rows[j].run_id.clone());
        rows[i].ddp_ref_exact = Some(matches == relevant.len());
        let run_bytes = rows[i].payload_bytes;
        rows[i].bytes_reduction_vs_ddp =
            (run_bytes > 0).then(|| rows[j].payload_bytes as f64 / run_bytes as f64);
    }
    annotate_quality(rows);
}

/// Equal-budget losses and the Pareto front over the complete runs with evals (module doc).
fn annotate_quality(rows: &mut [Summary]) {
    let compared: Vec<usize> = (0..rows.len())
        .filter(|&i| rows[i].is_complete() && !rows[i].evals.is_empty())
        .collect();
    for axis in Budget::ALL {
        let budget = quality::common_budget(compared.iter().map(|&i| &rows[i].evals[..]), axis);
        for (i, row) in rows.iter_mut().enumerate() {
            let at = match budget {
                Some(b) if compared.contains(&i) => {
                    let p = quality::at_budget(&row.evals, axis, b);
                    Some(AtBudget {
                        budget: b,
                        round: p.map(|p| p.round),
                        loss: p.map(|p| p.loss),
                        local_loss: p.map(|p| p.local_loss),
                    })
                }
                _ => None,
            };
            match axis {
                Budget::Tokens => row.at_equal_tokens = at,
                Budget::Clock => row.at_equal_clock = at,
                Budget::Payload => row.at_equal_payload = at,
            }
        }
    }
    let points: Vec<(f64, f64)> = compared
        .iter()
        .map(|&i| {
            let r = &rows[i];
            (
                r.payload_bytes as f64,
                r.final_eval_loss.unwrap_or(f64::NAN),
            )
        })
        .collect();
    let front = quality::pareto_front(&points);
    for row in rows.iter_mut() {
        row.on_pareto_front = None;
    }
    for (k, &i) in compared.iter().enumerate() {
        rows[i].on_pareto_front = Some(front.contains(&k));
    }
}

/// summary.csv columns, in order.
pub const SUMMARY_COLUMNS: &[&str] = &[
    "run_id",
    "status",
    "method",
    "preset",
    "sites",
    "steps",
    "inner_steps",
    "rho",
    "skip_policy",
    "wire_dtype",
    "network_backend",
    "rate_bps",
    "delay_ms",
    "seed",
    "knobs",
    "config_hash",
    "tokens_total",
    "clock_s",
    "tokens_per_s",
    "payload_bytes",
    "framing_bytes",
    "eval_bytes",
    "final_round",
    "final_eval_loss",
    "final_eval_loss_by_domain",
    "best_eval_loss",
    "final_local_eval_loss",
    "final_local_eval_loss_by_domain",
    "max_loss_increase",
    "max_loss_increase_round",
    "max_local_loss_increase",
    "target_loss",
    "time_to_target_s",
    "step_to_target",
    "time_to_stay_target_s",
    "step_to_stay_target",
    "ddp_ref",
    "ddp_ref_exact",
    "bytes_reduction_vs_ddp",
    "equal_tokens",
    "loss_at_equal_tokens",
    "local_loss_at_equal_tokens",
    "round_at_equal_tokens",
    "equal_clock_s",
    "loss_at_equal_clock",
    "local_loss_at_equal_clock",
    "round_at_equal_clock",
    "equal_payload_bytes",
    "loss_at_equal_payload",
    "local_loss_at_equal_payload",
    "round_at_equal_payload",
    "on_pareto_front",
    "error",
];

fn opt<T: ToString>(v: Option<T>) -> String {
    v.map(|x| x.to_string()).unwrap_or_default()
}

/// A knob value as a table cell: strings bare, null as "-", others compact JSON.
pub fn knob_cell(v: &Value) -> String {
    match v {
        Value::String(s) => s.clone(),
        Value::Null => "-".into(),
        other => other.to_string(),
    }
}

fn by_domain(v: &[DomainLoss]) -> String {
    v.iter()
        .map(|d| format!("{}={}", d.domain, d.eval_loss))
        .collect::<Vec<_>>()
        .join(";")
}

/// The four cells of one equal-budget comparison: budget, loss, local loss, round.
fn budget_cells(at: &Option<AtBudget>) -> [String; 4] {
    match at {
        Some(a) => [
            a.budget.to_string(),
            opt(a.loss),
            opt(a.local_loss),
            opt(a.round),
        ],
        None => Default::default(),
    }
}

/// The CSV record of a row, in [`SUMMARY_COLUMNS`] order.
pub fn summary_record(s: &Summary) -> Vec<String> {
    let c = s.config.as_ref();
    let link = c.and_then(|c| c.link_spec().ok());
    let fomoe = c.filter(|c| c.method == Method::Fomoe);
    vec![
        s.run_id.clone(),
        s.status.clone(),
        opt(s.method.clone()),
        opt(c.map(|c| c.preset.clone())),
        opt(c.map(|c| c.sites)),
        opt(c.map(|c| c.steps)),
        opt(c.map(|c| c.inner_steps)),
        opt(fomoe.map(|c| c.fomoe.rho)),
        opt(fomoe.map(|c| c.fomoe.skip_policy.name())),
        opt(c.map(|c| c.wire_dtype.name())),
        opt(c.map(|c| c.network.backend.to_string())),
        opt(link.map(|l| l.rate_bps)),
        opt(link.map(|l| l.delay.as_secs_f64() * 1e3)),
        opt(s.seed),
        s.knobs
            .iter()
            .map(|(k, v)| format!("{k}={}", knob_cell(v)))
            .collect::<Vec<_>>()
            .join(" "),
        opt(s.config_hash.clone()),
        s.tokens_total.to_string(),
        opt(s.clock_s),
        opt(s.tokens_per_s),
        s.payload_bytes.to_string(),
        s.framing_bytes.to_string(),
        s.eval_bytes.to_string(),
        opt(s.final_round),
        opt(s.final_eval_loss),
        by_domain(&s.final_eval_loss_by_domain),
        opt(s.best_eval_loss),
        opt(s.final_local_eval_loss),
        by_domain(&s.final_local_eval_loss_by_domain),
        opt(s.max_loss_increase),
        opt(s.max_loss_increase_round),
        opt(s.max_local_loss_increase),
        opt(s.target_loss),
        opt(s.time_to_target_s),
        opt(s.step_to_target),
        opt(s.time_to_stay_target_s),
        opt(s.step_to_stay_target),
        opt(s.ddp_ref.clone()),
        opt(s.ddp_ref_exact),
        opt(s.bytes_reduction_vs_ddp),
    ]
    .into_iter()
    .chain(budget_cells(&s.at_equal_tokens))
    .chain(budget_cells(&s.at_equal_clock))
    .chain(budget_cells(&s.at_equal_payload))
    .chain([opt(s.on_pareto_front), opt(s.error.clone())])
    .collect()
}

/// summary.csv contents for `rows` (header + one record per row).
pub fn summary_csv(rows: &[Summary]) -> Vec<u8> {
    let mut w = csv::WriterBuilder::new()
        .terminator(csv::Terminator::Any(b'\n'))
        .from_writer(Vec::new());
    w.write_record(SUMMARY_COLUMNS).expect("in-memory csv");
    for r in rows {
        w.write_record(summary_record(r)).expect("in-memory csv");
    }
    w.into_inner().expect("in-memory csv")
}
