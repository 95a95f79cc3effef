//! Who took part in each round: one [`ParticipationRow`] per site per round, written by
//! each site to `participation-site<i>.csv` and merged into `participation.csv` (sorted by
//! round, then site) when the run ends; and what follows from it for the run
//! ([`ScenarioRecord`]: the faults as they happened, the rounds with partial
//! participation, frozen experts, recovery bytes), recorded in the manifest and summary.

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};

use serde::{Deserialize, Serialize};

use super::plan::Plan;
use super::{Fault, FaultKind};
use crate::results::csv_sink::{header_line, read_rows};
use crate::results::{write_atomic, ResultsError};
use crate::strategy::Placement;

/// The file every run directory gets when its sites write participation rows.
pub const PARTICIPATION_FILE: &str = "participation.csv";

/// `participation-site<i>.csv`, site i's rows while the run goes.
pub fn site_participation_path(dir: &Path, site: usize) -> PathBuf {
    dir.join(format!("participation-site{site}.csv"))
}

/// A site's part in one round.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum Status {
    /// Trained the round and its update is in the round's average.
    #[default]
    Participant,
    /// Trained the round but reported after the deadline: left out, caught up after.
    Late,
    /// Trained part of the round, then crashed.
    Crashed,
    /// Did not train (crashed or left earlier).
    Absent,
}

impl Status {
    pub fn name(self) -> &'static str {
        match self {
            Status::Participant => "participant",
            Status::Late => "late",
            Status::Crashed => "crashed",
            Status::Absent => "absent",
        }
    }
}

/// One site in one round (participation.csv).
#[derive(Clone, Debug, Default, PartialEq, Serialize, Deserialize)]
pub struct ParticipationRow {
    pub round: usize,
    pub site: usize,
    pub status: Status,
    /// Came back at the start of this round (fetched the global state at the end of the
    /// previous one).
    pub rejoined: bool,
    /// Inner steps of this round the site trained.
    pub steps_trained: usize,
    /// Run clock when its local phase of the round ended, seconds (none when it trained
    /// no full round).
    pub ready_s: Option<f64>,
    /// Recovery payload received (catching up, or the state for coming back) and sent (as
    /// a donor) at the end of this round.
    pub recovery_recv: u64,
    pub recovery_sent: u64,
    /// Deadline messages (ready reports, decisions) sent this round, payload bytes.
    pub control_sent: u64,
    /// Time injected by stalls and slow compute this round, ms.
    pub fault_ms: f64,
}

/// Merge `participation-site<i>.csv` into `participation.csv` (sorted by round, site),
/// written atomically, and remove the per-site files. Nothing to merge: nothing written.
pub fn merge_participation(dir: &Path, sites: usize) -> Result<usize, ResultsError> {
    let files: Vec<PathBuf> = (0..sites)
        .map(|s| site_participation_path(dir, s))
        .filter(|p| p.exists())
        .collect();
    if files.is_empty() {
        return Ok(0);
    }
    let merged = dir.join(PARTICIPATION_FILE);
    let mut rows: Vec<ParticipationRow> = Vec::new();
    if merged.exists() {
        rows.extend(read_rows::<ParticipationRow>(&merged)?.rows);
    }
    for f in &files {
        rows.extend(read_rows::<ParticipationRow>(f)?.rows);
    }
    // A resumed run repeats rounds after its checkpoint: the later row of a (round, site)
    // counts.
    let mut by_key: BTreeMap<(usize, usize), ParticipationRow> = BTreeMap::new();
    for r in rows {
        by_key.insert((r.round, r.site), r);
    }
    let mut w = csv::WriterBuilder::new()
        .has_headers(false)
        .terminator(csv::Terminator::Any(b'\n'))
        .from_writer(header_line::<ParticipationRow>());
    for r in by_key.values() {
        w.serialize(r).map_err(|e| ResultsError::Invalid {
            path: merged.clone(),
            reason: e.to_string(),
        })?;
    }
    let bytes = w.into_inner().map_err(|e| ResultsError::Invalid {
        path: merged.clone(),
        reason: e.to_string(),
    })?;
    write_atomic(&merged, &bytes)?;
    for f in &files {
        std::fs::remove_file(f).map_err(|error| ResultsError::Io {
            path: f.clone(),
            error,
        })?;
    }
    Ok(by_key.len())
}

/// A fault as it happened: which site, when, and what it held then.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct FaultRecord {
    pub kind: FaultKind,
    pub site: usize,
    /// The round it falls in (for link changes: none).
    pub round: Option<usize>,
    pub at_step: Option<usize>,
    pub at_time: Option<String>,
    /// Experts the site held, per layer.
    pub held: Vec<Vec<usize>>,
}

/// A (layer, expert) and the rounds in which no participant held it.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct FrozenExpert {
    pub layer: usize,
    pub expert: usize,
    pub rounds: Vec<usize>,
}

/// What the scenario did to a run (manifest `scenario`, summary columns).
#[derive(Clone, Debug, Default, PartialEq, Serialize, Deserialize)]
pub struct ScenarioRecord {
    pub faults: Vec<FaultRecord>,
    /// Rounds in which some site did not take part in the average.
    pub partial_rounds: Vec<usize>,
    pub frozen_experts: Vec<FrozenExpert>,
    /// Recovery payload bytes over the run (fetching global state).
    pub recovery_bytes: u64,
    /// Deadline control payload bytes over the run.
    pub control_bytes: u64,
    /// Sites absent at the end of the run.
    pub sites_absent_at_end: Vec<usize>,
}

impl ScenarioRecord {
    /// Derive the record from the faults, the placement and the merged participation rows.
    pub fn derive(
        faults: &[Fault],
        plan: &Plan,
        placement: &Placement,
        inner_steps: usize,
        rows: &[ParticipationRow],
    ) -> Self {
        let mut rec = ScenarioRecord::default();
        for f in faults {
            let round = match f.kind {
                FaultKind::Crash | FaultKind::Stall => f
                    .at_step
                    .map(|s| (s - 1) / inner_steps.max(1))
                    .or(f.at_round),
                FaultKind::Link => None,
                _ => f.at_round,
            };
            rec.faults.push(FaultRecord {
                kind: f.kind,
                site: f.site,
                round,
                at_step: f.at_step,
                at_time: f.at_time.clone(),
                held: placement.of(f.site).per_layer.clone(),
            });
        }
        let mut by_round: BTreeMap<usize, Vec<&ParticipationRow>> = BTreeMap::new();
        for r in rows {
            by_round.entry(r.round).or_default().push(r);
            rec.recovery_bytes += r.recovery_recv;
            rec.control_bytes += r.control_sent;
        }
        let mut frozen: BTreeMap<(usize, usize), Vec<usize>> = BTreeMap::new();
        for (&round, rs) in &by_round {
            let participants: Vec<usize> = rs
                .iter()
                .filter(|r| r.status == Status::Participant)
                .map(|r| r.site)
                .collect();
            if participants.len() < rs.len() {
                rec.partial_rounds.push(round);
            }
            let first = placement.of(0);
            for (l, _) in first.per_layer.iter().enumerate() {
                for e in 0..first.n_experts {
                    let holders = placement.holders_of(l, e);
                    if !holders.iter().any(|h| participants.contains(h)) {
                        frozen.entry((l, e)).or_default().push(round);
                    }
                }
            }
        }
        rec.frozen_experts = frozen
            .into_iter()
            .map(|((layer, expert), rounds)| FrozenExpert {
                layer,
                expert,
                rounds,
            })
            .collect();
        if let Some(last) = plan.rounds().checked_sub(1) {
            rec.sites_absent_at_end = (0..placement.sites())
                .filter(|&s| !plan.present(last).contains(&s))
                .collect();
        }
        rec
    }
}
