//! Scenarios as data: scripted faults, the straggler deadline, and what every method does
//! when a site stalls, slows down, crashes, leaves or comes back.
//!
//! A suite file lists faults as `[[faults]]` tables ([`Fault`]):
//!
//! | kind     | when                      | what                                               |
//! |----------|---------------------------|----------------------------------------------------|
//! | `crash`  | `at_step` or `at_round`   | the site stops; the round's local work is lost       |
//! | `stall`  | `at_step`, `duration`     | the site pauses that long before the step            |
//! | `slow`   | `at_round`, `factor`      | from that round on its compute takes × factor      |
//! | `leave`  | `at_round`                | the site stops at the round's start (graceful)      |
//! | `rejoin` | `at_round`                | an absent site comes back at the round's start       |
//! | `link`   | `at_time`, `rate`/`delay` | link `site → peer` (both ways unless `directed`; every link of `site` without `peer`) changes (`sim` only) |
//!
//! Steps are 1-based (step s is the s-th inner step), rounds 0-based (as in rounds.csv),
//! times on the run clock.
//!
//! **Outcomes** ([`plan::Plan`] decides them from the config alone, so every site agrees):
//! - a lost site (crash, leave): with `on_site_loss = "fail"` (the default of ddp, diloco
//!   and single) the run fails at the loss, its peers exit, partial results stay; with
//!   `"continue"` (the only behaviour of photon and fomoe, which have no knob) the run goes
//!   on with the sites present: DDP averages each step's gradient over the sites training
//!   that step, DiLoCo and Photon average over the round's participants (equal weights;
//!   equal batches make Photon's token weights equal), FoMoE averages the dense group over
//!   the participants and each expert over its participating holders. An expert with no
//!   participating holder keeps its last global value (recorded as frozen) and resumes
//!   when a holder comes back.
//! - a stall or a slow site delays whoever waits for it (every sync is blocking); with a
//!   **deadline** (`round_deadline`, methods with rounds, off by default) a site whose
//!   local phase has not reported to the round's leader by `deadline` after the round
//!   opened is left out of that round's average and catches up with the new global state.
//! - a site that rejoins, and a site left out by the deadline, fetch the current global
//!   state of what they hold (model = global copy, outer momentum; DDP: also the AdamW
//!   moments) from the lowest-numbered participant holding each part, counted as recovery
//!   traffic; a site rejoining after a crash restarts its AdamW moments from zero (a new
//!   process), after a leave it keeps them.
//!
//! **Emulation.** A crashed or departed site's thread or process stays alive but idle (a
//! dormant copy of the machine as it was at its last sync): it does not train, it is no
//! participant, and it still answers the evaluator for experts nobody present holds (their
//! frozen global value), so the global model is always whole. A stall sleeps (real
//! backends) or advances the virtual clock (`sim`); slow compute sleeps or advances the
//! clock by (factor − 1)·measured compute; both are recorded as `fault_ms` of the step.
//! The harness charges no failure-detection time for a scripted crash: the others learn of
//! it from the scenario (a real system pays its detection timeout, or the deadline).
//!
//! **Determinism on `sim`.** Presence, participation without a deadline, bytes and losses
//! depend on the config alone. With a deadline, being late is judged on the virtual clock,
//! which holds measured compute: the same scenario gives the same participation whenever no
//! site's report lands within compute noise (milliseconds) of the deadline.

pub mod participation;
pub mod plan;

use serde::{Deserialize, Serialize};

/// A scripted failure (one `[[faults]]` table; see the module doc for which fields a kind uses).
#[derive(Clone, Debug, Default, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Fault {
    pub kind: FaultKind,
    pub site: usize,
    /// Inner step (1-based) at whose start the fault fires (crash, stall).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub at_step: Option<usize>,
    /// Round (0-based) at whose start the fault fires (crash, slow, leave, rejoin).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub at_round: Option<usize>,
    /// Run-clock time of a link change, e.g. "20s".
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub at_time: Option<String>,
    /// Stall length, e.g. "30s".
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub duration: Option<String>,
    /// Compute slow-down factor (≥ 1; 1 ends an earlier slow-down).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub factor: Option<f64>,
    /// Link faults: the other end (none: every link to and from `site`).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub peer: Option<usize>,
    /// Link faults: only `site → peer`.
    #[serde(default, skip_serializing_if = "std::ops::Not::not")]
    pub directed: bool,
    /// Link faults: the new rate, e.g. "10mbit".
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub rate: Option<String>,
    /// Link faults: the new one-way delay, e.g. "200ms".
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub delay: Option<String>,
}

#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum FaultKind {
    #[default]
    Crash,
    Stall,
    Slow,
    Leave,
    Rejoin,
    Link,
}

impl FaultKind {
    pub const NAMES: &'static [&'static str] =
        &["crash", "stall", "slow", "leave", "rejoin", "link"];
    pub fn name(self) -> &'static str {
        match self {
            FaultKind::Crash => "crash",
            FaultKind::Stall => "stall",
            FaultKind::Slow => "slow",
            FaultKind::Leave => "leave",
            FaultKind::Rejoin => "rejoin",
            FaultKind::Link => "link",
        }
    }
}

/// What the run does when a site is lost (crash, leave).
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum OnSiteLoss {
    /// The run fails (its peers exit, partial results stay).
    Fail,
    /// The run goes on with the sites present.
    Continue,
}

impl OnSiteLoss {
    pub fn name(self) -> &'static str {
        match self {
            OnSiteLoss::Fail => "fail",
            OnSiteLoss::Continue => "continue",
        }
    }
}
