//! The report of a study suite (`fomoe study results/<suite>` → `STUDY-<suite>.md`): the
//! suite's configurations side by side per corpus, averaged over seeds, against DiLoCo at its
//! defaults, and the configuration the numbers select.
//!
//! - **Cells.** Runs are grouped by corpus (`data.kind`, and for files the last component of
//!   `data.path`) and by configuration: the resolved config with seed and data cleared. A cell's
//!   label is its run id without the seed and corpus tokens. Only complete runs count.
//! - **Per cell:** the final global eval loss (mean over domains, then over seeds; min–max over
//!   seeds), the sites' own models' final loss, the largest round-to-round rise of the global
//!   loss (the worst seed) and its round, payload bytes (mean over seeds), and Δ = final global
//!   loss − that of the reference on the same corpus and seeds' mean. Every run of a study has
//!   the same steps, so the final loss is the loss at equal tokens.
//! - **Reference:** the DiLoCo cell whose outer optimiser is its default (`outer` unset).
//! - **Stable** = the rise is ≤ [`STABLE_MAX_RISE`] nats on every seed (issue 8's target).
//! - **Selection:** among FoMoE configurations present on every corpus and stable on every
//!   seed of every corpus, the one with the lowest mean over corpora of Δ. The report says
//!   whether the harness's FoMoE defaults (outer optimiser per group, skip policy, aux scope,
//!   router sync, router kind, placement) are that configuration.
//!
//! Degenerate cases: a suite without a DiLoCo default cell has no Δ column and no selection;
//! a cell whose runs have no eval shows "no eval"; no stable FoMoE configuration on every
//! corpus gives "none" and names the least unstable one.

use std::collections::BTreeMap;
use std::fmt::Write as _;

use harness::config::{Method, RunConfig};

use crate::load::{RunData, SuiteData};

/// The stability target of issue 8: no round-to-round rise above this (nats).
pub const STABLE_MAX_RISE: f64 = 0.05;

/// Configurations of one corpus, or of one configuration over seeds.
struct Cell<'a> {
    corpus: String,
    label: String,
    config: RunConfig,
    runs: Vec<&'a RunData>,
}

impl Cell<'_> {
    fn method(&self) -> Method {
        self.config.method
    }
    fn finals(&self) -> Vec<f64> {
        self.runs
            .iter()
            .filter_map(|r| r.summary.final_eval_loss)
            .collect()
    }
    fn mean_final(&self) -> Option<f64> {
        mean(&self.finals())
    }
    fn mean_local(&self) -> Option<f64> {
        mean(
            &self
                .runs
                .iter()
                .filter_map(|r| r.summary.final_local_eval_loss)
                .collect::<Vec<_>>(),
        )
    }
    /// The worst seed's largest rise and its round.
    fn worst_rise(&self) -> Option<(f64, Option<usize>)> {
        self.runs
            .iter()
            .filter_map(|r| {
                r.summary
                    .max_loss_increase
                    .map(|x| (x, r.summary.max_loss_increase_round))
            })
            .max_by(|a, b| a.0.total_cmp(&b.0))
    }
    fn stable(&self) -> bool {
        self.runs.len() == self.finals().len()
            && self.runs.iter().all(|r| {
                r.summary
                    .max_loss_increase
                    .is_some_and(|x| x <= STABLE_MAX_RISE)
            })
    }
    fn payload(&self) -> f64 {
        self.runs
            .iter()
            .map(|r| r.summary.payload_bytes as f64)
            .sum::<f64>()
            / self.runs.len().max(1) as f64
    }
}

fn mean(v: &[f64]) -> Option<f64> {
    (!v.is_empty()).then(|| v.iter().sum::<f64>() / v.len() as f64)
}

/// `synthetic`, or the corpus directory's name for file sources.
fn corpus_of(cfg: &RunConfig) -> String {
    match &cfg.data.path {
        Some(p) => p
            .file_name()
            .and_then(|n| n.to_str())
            .unwrap_or("files")
            .to_string(),
        None => format!("{:?}", cfg.data.kind).to_lowercase(),
    }
}

/// The run id without its seed suffix and corpus tokens.
fn label_of(run: &RunData, cfg: &RunConfig) -> String {
    let mut id = run.id().to_string();
    if let Some(i) = id.rfind("-s") {
        if id[i + 2..].chars().all(|c| c.is_ascii_digit()) && i + 2 < id.len() {
            id.truncate(i);
        }
    }
    if let Some(p) = &cfg.data.path {
        let kind = format!("{:?}", cfg.data.kind).to_lowercase();
        let name = p.file_name().and_then(|n| n.to_str()).unwrap_or("");
        id = id.replace(&format!("-{kind}-{name}"), "");
    }
    id
}

/// The configuration a run stands for: its resolved config without seed and data.
fn config_key(cfg: &RunConfig) -> String {
    let mut c = cfg.clone();
    c.seed = 0;
    c.data = Default::default();
    c.outer = Some(cfg.outer_optimizer());
    c.outer_groups = Default::default();
    let outer = cfg.resolved_outer();
    format!(
        "{}|{:?}",
        serde_json::to_string(&c).unwrap_or_default(),
        outer
    )
}

/// What the harness's FoMoE defaults are, in the terms a study varies.
fn signature(cfg: &RunConfig) -> String {
    let m = cfg.model_config().map(|m| m.router);
    format!(
        "outer {}; skip {}; aux {}; router_sync {}; placement {}; router {}",
        cfg.resolved_outer(),
        snake(&cfg.fomoe.skip_policy),
        snake(&cfg.fomoe.aux_scope),
        snake(&cfg.fomoe.router_sync),
        snake(&cfg.fomoe.placement),
        m.map_or_else(|e| e.to_string(), |r| snake(&r))
    )
}

/// A knob's value as a config file spells it (`drop`, `round_robin`, `softmax_topk`).
fn snake<T: serde::Serialize>(v: &T) -> String {
    match serde_json::to_value(v) {
        Ok(serde_json::Value::String(s)) => s,
        Ok(other) => other.to_string(),
        Err(e) => e.to_string(),
    }
}

fn cells(suite: &SuiteData) -> Vec<Cell<'_>> {
    let mut by_key: BTreeMap<(String, String), usize> = BTreeMap::new();
    let mut out: Vec<Cell<'_>> = Vec::new();
    for run in suite.runs.iter().filter(|r| r.summary.is_complete()) {
        let Some(cfg) = &run.summary.config else {
            continue;
        };
        let key = (corpus_of(cfg), config_key(cfg));
        match by_key.get(&key) {
            Some(&i) => out[i].runs.push(run),
            None => {
                by_key.insert(key.clone(), out.len());
                out.push(Cell {
                    corpus: key.0,
                    label: label_of(run, cfg),
                    config: cfg.clone(),
                    runs: vec![run],
                });
            }
        }
    }
    out
}

fn f4(x: Option<f64>) -> String {
    x.map_or("no eval".into(), |v| format!("{v:.4}"))
}

/// STUDY-<suite>.md (see the module doc).
/// The study report of `suite` (Markdown) and its verdict on the FoMoE defaults.
pub fn study(suite: &SuiteData) -> Study {
    let cells = cells(suite);
    let mut corpora: Vec<String> = cells.iter().map(|c| c.corpus.clone()).collect();
    corpora.dedup();
    corpora.sort();
    corpora.dedup();
    let reference = |corpus: &str| {
        cells.iter().find(|c| {
            c.corpus == corpus && c.method() == Method::Diloco && c.config.outer.is_none()
        })
    };
    let mut md = String::new();
    let _ = writeln!(md, "# Study `{}`\n", suite.name);
    let _ = writeln!(
        md,
        "Generated by `fomoe study {}` from {} complete runs; every number below is \
         recomputed from the run files (`paper::study` documents each column). Δ is the final \
         global eval loss minus that of DiLoCo at its defaults on the same corpus (means over \
         seeds); stable means the global eval loss never rose by more than {STABLE_MAX_RISE} \
         nats between rounds on any seed. All runs of a corpus train the same tokens, so final \
         losses are at equal tokens.\n",
        suite.dir.display(),
        suite
            .runs
            .iter()
            .filter(|r| r.summary.is_complete())
            .count()
    );
    for corpus in &corpora {
        let refc = reference(corpus);
        let ref_loss = refc.and_then(Cell::mean_final);
        let _ = writeln!(md, "## Corpus `{corpus}`\n");
        let _ = writeln!(
            md,
            "| configuration | seeds | global loss (min–max) | local loss | Δ vs DiLoCo | largest rise (round) | stable | payload |"
        );
        let _ = writeln!(md, "|---|---|---|---|---|---|---|---|");
        let mut rows: Vec<&Cell<'_>> = cells.iter().filter(|c| &c.corpus == corpus).collect();
        rows.sort_by(|a, b| {
            a.mean_final()
                .unwrap_or(f64::INFINITY)
                .total_cmp(&b.mean_final().unwrap_or(f64::INFINITY))
                .then(a.label.cmp(&b.label))
        });
        for c in rows {
            let finals = c.finals();
            let range = match (
                finals.iter().copied().reduce(f64::min),
                finals.iter().copied().reduce(f64::max),
            ) {
                (Some(lo), Some(hi)) => format!("{} ({lo:.4}–{hi:.4})", f4(c.mean_final())),
                _ => "no eval".into(),
            };
            let delta = match (c.mean_final(), ref_loss) {
                (Some(x), Some(r)) => format!("{:+.4}", x - r),
                _ => "–".into(),
            };
            let rise = c.worst_rise().map_or("–".into(), |(x, r)| match r {
                Some(r) => format!("{x:.4} ({r})"),
                None => format!("{x:.4}"),
            });
            let _ = writeln!(
                md,
                "| `{}`{} | {} | {} | {} | {} | {} | {} | {} |",
                c.label,
                if refc.is_some_and(|r| std::ptr::eq(r, c)) {
                    " (reference)"
                } else {
                    ""
                },
                c.runs.len(),
                range,
                f4(c.mean_local()),
                delta,
                rise,
                if c.stable() { "yes" } else { "no" },
                crate::figures::human_bytes(c.payload()),
            );
        }
        let _ = writeln!(md);
    }
    let (sel, verdict) = selection(&cells, &corpora, &reference);
    md.push_str(&sel);
    Study {
        markdown: md,
        verdict,
    }
}

/// The study report of `suite` (Markdown).
pub fn study_markdown(suite: &SuiteData) -> String {
    study(suite).markdown
}

/// What a study says about the harness's FoMoE defaults.
#[derive(Clone, Debug, PartialEq)]
pub enum Verdict {
    /// The defaults are the selected configuration.
    DefaultsSelected,
    /// Another configuration is selected (its label).
    DefaultsNotSelected { selected: String },
    /// No selection: no DiLoCo reference on some corpus, or nothing stable everywhere.
    NoSelection,
}

/// A study's report and its verdict on the defaults.
pub struct Study {
    pub markdown: String,
    pub verdict: Verdict,
}

fn selection<'a>(
    cells: &'a [Cell<'a>],
    corpora: &[String],
    reference: &dyn Fn(&str) -> Option<&'a Cell<'a>>,
) -> (String, Verdict) {
    let mut md = String::from("## Selection\n\n");
    if corpora.iter().any(|c| reference(c).is_none()) {
        md.push_str("No DiLoCo run at its defaults on every corpus: no selection.\n");
        return (md, Verdict::NoSelection);
    }
    // FoMoE labels with a cell on every corpus.
    let mut scored: Vec<(f64, bool, String, Vec<&Cell<'_>>)> = Vec::new();
    let labels: Vec<&String> = {
        let mut l: Vec<&String> = cells
            .iter()
            .filter(|c| c.method() == Method::Fomoe)
            .map(|c| &c.label)
            .collect();
        l.sort();
        l.dedup();
        l
    };
    for label in labels {
        let per: Vec<&Cell<'_>> = corpora
            .iter()
            .filter_map(|corpus| {
                cells
                    .iter()
                    .find(|c| &c.corpus == corpus && &c.label == label)
            })
            .collect();
        if per.len() != corpora.len() {
            continue;
        }
        let deltas: Vec<f64> = per
            .iter()
            .filter_map(|c| Some(c.mean_final()? - reference(&c.corpus)?.mean_final()?))
            .collect();
        if deltas.len() != per.len() {
            continue;
        }
        let stable = per.iter().all(|c| c.stable());
        scored.push((
            deltas.iter().sum::<f64>() / deltas.len() as f64,
            stable,
            label.clone(),
            per,
        ));
    }
    scored.sort_by(|a, b| a.0.total_cmp(&b.0).then(a.2.cmp(&b.2)));
    let _ = writeln!(
        md,
        "Rule: among FoMoE configurations run on every corpus ({}) and stable on every seed of \
         every corpus, the lowest mean Δ over corpora.\n",
        corpora.join(", ")
    );
    let _ = writeln!(
        md,
        "| rank | configuration | mean Δ | stable on every corpus | {} |",
        corpora
            .iter()
            .map(|c| format!("Δ {c}"))
            .collect::<Vec<_>>()
            .join(" | ")
    );
    let _ = writeln!(md, "|---|---|---|---|{}", "---|".repeat(corpora.len()));
    for (i, (score, stable, label, per)) in scored.iter().enumerate() {
        let each: Vec<String> = per
            .iter()
            .map(|c| {
                let d = c.mean_final().unwrap_or(f64::NAN)
                    - reference(&c.corpus)
                        .and_then(Cell::mean_final)
                        .unwrap_or(f64::NAN);
                format!("{d:+.4}")
            })
            .collect();
        let _ = writeln!(
            md,
            "| {} | `{label}` | {score:+.4} | {} | {} |",
            i + 1,
            if *stable { "yes" } else { "no" },
            each.join(" | ")
        );
    }
    let _ = writeln!(md);
    let best = scored.iter().find(|s| s.1);
    let default_sig = signature(&RunConfig {
        method: Method::Fomoe,
        ..Default::default()
    });
    let verdict = match best {
        Some((score, _, label, per)) => {
            let sig = signature(&per[0].config);
            let _ = writeln!(md, "Selected: `{label}` (mean Δ {score:+.4}); {sig}.\n");
            let _ = writeln!(
                md,
                "The harness's FoMoE defaults ({default_sig}) {} this configuration.\n",
                if sig == default_sig { "are" } else { "are NOT" }
            );
            for c in per {
                let r = reference(&c.corpus).and_then(Cell::mean_final);
                let rise = c.worst_rise().map_or(f64::NAN, |x| x.0);
                let d = c.mean_final().zip(r).map(|(x, r)| x - r);
                let _ = writeln!(
                    md,
                    "- `{}`: final global loss {} vs DiLoCo {} (Δ {}; target ≤ +{STABLE_MAX_RISE}: {}), largest rise {rise:.4} (target ≤ {STABLE_MAX_RISE}: {}).",
                    c.corpus,
                    f4(c.mean_final()),
                    f4(r),
                    d.map_or("–".into(), |d| format!("{d:+.4}")),
                    if d.is_some_and(|d| d <= STABLE_MAX_RISE) { "reached" } else { "not reached" },
                    if rise <= STABLE_MAX_RISE { "reached" } else { "not reached" },
                );
            }
            if sig == default_sig {
                Verdict::DefaultsSelected
            } else {
                Verdict::DefaultsNotSelected {
                    selected: label.clone(),
                }
            }
        }
        None => {
            let _ = writeln!(
                md,
                "Selected: none (no FoMoE configuration is stable on every seed of every corpus); the harness's FoMoE defaults are {default_sig}."
            );
            Verdict::NoSelection
        }
    };
    (md, verdict)
}
