//! The state of a site that lives across rounds, in one struct a checkpoint serialises whole:
//! the inner steps done, the placement of experts over all sites, the outer optimiser over
//! what this site holds, and the site's cumulative link traffic by purpose.
//!
//! What a checkpoint holds of it: `step`, `trained_steps`, `placement` and `traffic` as
//! metadata (JSON), the
//! outer optimiser as tensors (`outer.global.<name>`, `outer.momentum.<name>`). The placement
//! is read first, because it decides which parameters the site's store has.
//!
//! Traffic is counted from the [`Comm`]'s per-peer counters: a [`LinkTotals`] is the sum over
//! peers at one moment, and the difference of two is what moved in between. A run's byte
//! totals (rounds.csv) are the sum over sites of what each site *sent*, plus what sites
//! *received* from endpoints that are not sites (Photon's aggregator, which writes no rows of
//! its own): every byte an aggregator sends is received by a site in the same round.

use std::ops::{Add, Sub};

use anyhow::{Context, Result};
use serde::{Deserialize, Serialize};

use super::outer::OuterOptimizerState;
use super::placement::Placement;
use crate::checkpoint::{Checkpoint, CheckpointWriter};
use crate::model::{ModelConfig, ParamLayout, Residency};
use crate::net::{Comm, LinkCounters};

/// Payload and framing bytes in one direction.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct Bytes {
    pub payload: u64,
    pub framing: u64,
}

impl Add for Bytes {
    type Output = Bytes;
    fn add(self, o: Bytes) -> Bytes {
        Bytes {
            payload: self.payload + o.payload,
            framing: self.framing + o.framing,
        }
    }
}

impl Sub for Bytes {
    type Output = Bytes;
    fn sub(self, o: Bytes) -> Bytes {
        Bytes {
            payload: self.payload - o.payload,
            framing: self.framing - o.framing,
        }
    }
}

/// A site's link counters summed over its peers.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct LinkTotals {
    pub sent: Bytes,
    pub received: Bytes,
    /// The part of `received` that came from endpoints ≥ `sites` (Photon's aggregator).
    pub received_from_aggregator: Bytes,
}

impl LinkTotals {
    /// The counters of `comm` now; peers with id ≥ `sites` are not sites.
    pub fn read(comm: &dyn Comm, sites: usize) -> Self {
        Self::of(&comm.link_counters(), sites)
    }

    pub fn of(counters: &[LinkCounters], sites: usize) -> Self {
        let mut t = Self::default();
        for c in counters {
            let recv = Bytes {
                payload: c.payload_bytes_received,
                framing: c.framing_bytes_received,
            };
            t.sent = t.sent
                + Bytes {
                    payload: c.payload_bytes_sent,
                    framing: c.framing_bytes_sent,
                };
            t.received = t.received + recv;
            if c.peer >= sites {
                t.received_from_aggregator = t.received_from_aggregator + recv;
            }
        }
        t
    }

    /// Bytes of the run's total this site accounts for: what it sent plus what it received
    /// from an aggregator (see the module doc).
    pub fn run_share(&self) -> Bytes {
        self.sent + self.received_from_aggregator
    }
}

impl Add for LinkTotals {
    type Output = LinkTotals;
    fn add(self, o: LinkTotals) -> LinkTotals {
        LinkTotals {
            sent: self.sent + o.sent,
            received: self.received + o.received,
            received_from_aggregator: self.received_from_aggregator + o.received_from_aggregator,
        }
    }
}

impl Sub for LinkTotals {
    type Output = LinkTotals;
    fn sub(self, o: LinkTotals) -> LinkTotals {
        LinkTotals {
            sent: self.sent - o.sent,
            received: self.received - o.received,
            received_from_aggregator: self.received_from_aggregator - o.received_from_aggregator,
        }
    }
}

/// A site's cumulative traffic since the start of the run (across resumes), by purpose.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct SiteTraffic {
    /// Synchronisation: gradients (DDP), pseudo-gradients, uploads and broadcasts, expert moves.
    pub training: LinkTotals,
    /// Assembling the global model and gathering local losses for evaluation.
    pub eval: LinkTotals,
    /// The straggler deadline's messages (ready reports, the leader's decision).
    #[serde(default)]
    pub control: LinkTotals,
    /// Global state fetched by a site coming back or left out by the deadline (and sent
    /// by its donors).
    #[serde(default)]
    pub recovery: LinkTotals,
    /// Payload bytes the strategy expected to send in training (from `bytes.rs`).
    pub expected_training_payload: u64,
}

/// A site's state across rounds (see the module doc).
pub struct RoundState {
    /// The run's step count at this site: steps of the rounds it has passed (trained or
    /// not: the global step index, which the data and the learning rate follow).
    pub step: usize,
    /// Inner steps this site actually trained (fewer than `step` after an absence).
    pub trained_steps: usize,
    /// Which experts every site holds.
    pub placement: Placement,
    /// θ_g and momentum over what this site holds; `None` for methods without one.
    pub outer: Option<OuterOptimizerState>,
    pub traffic: SiteTraffic,
    /// Sites taking part in the synchronisation at hand (DDP: this step's; the others:
    /// this round's), ascending; set by the runner before each sync, not checkpointed.
    pub participants: Vec<usize>,
}

impl RoundState {
    pub fn new(placement: Placement) -> Self {
        let participants = (0..placement.sites()).collect();
        Self {
            step: 0,
            trained_steps: 0,
            placement,
            outer: None,
            traffic: SiteTraffic::default(),
            participants,
        }
    }

    /// What `site` holds under the current placement.
    pub fn residency(&self, site: usize) -> &Residency {
        self.placement.of(site)
    }

    /// Bytes of state beyond the model and the inner optimiser (global copy, momentum).
    pub fn outer_bytes(&self) -> usize {
        self.outer.as_ref().map_or(0, |o| o.bytes())
    }

    /// Add this state to a checkpoint (see the module doc).
    pub fn save(&self, w: &mut CheckpointWriter, layout: &ParamLayout) {
        w.meta("step", self.step)
            .meta("trained_steps", self.trained_steps)
            .meta("placement", self.placement.to_json())
            .meta(
                "traffic",
                serde_json::to_string(&self.traffic).expect("traffic serialises"),
            );
        if let Some(o) = &self.outer {
            o.save(w, layout);
        }
    }

    /// The step, placement and traffic of a checkpoint (before the site's store exists).
    pub fn read(ck: &Checkpoint, cfg: &ModelConfig, sites: usize) -> Result<Self> {
        let step = ck
            .meta("step")
            .and_then(|s| s.parse().ok())
            .context("checkpoint metadata `step` missing")?;
        let placement = match ck.meta("placement") {
            Some(text) => Placement::from_json(&text, cfg, sites)
                .context("checkpoint metadata `placement`")?,
            None => anyhow::bail!("checkpoint metadata `placement` missing"),
        };
        let traffic = match ck.meta("traffic") {
            Some(text) => serde_json::from_str(&text).context("checkpoint metadata `traffic`")?,
            None => SiteTraffic::default(),
        };
        let trained_steps = ck
            .meta("trained_steps")
            .and_then(|s| s.parse().ok())
            .unwrap_or(step);
        let participants = (0..sites).collect();
        Ok(Self {
            step,
            trained_steps,
            placement,
            outer: None,
            traffic,
            participants,
        })
    }

    /// Fill the outer optimiser (created by the strategy's `init`) from a checkpoint.
    pub fn read_outer(&mut self, ck: &Checkpoint, layout: &ParamLayout) -> Result<()> {
        match &mut self.outer {
            Some(o) => o.load(ck, layout),
            None => Ok(()),
        }
    }
}
