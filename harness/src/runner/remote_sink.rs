//! A site's telemetry over the network: on a rank of a multi-host run, [`RemoteSink`] sends
//! every row the site loop produces to rank 0 on the rank's control channel
//! ([`crate::net::rendezvous::Control`]); rank 0's [`collect`] writes them with the same
//! [`FileSink`] a single-host run uses, so the run directory is the same file for file.
//!
//! Messages are CBOR ([`ToRank0`], [`FromRank0`]): floats arrive bit for bit (NaN too), so a
//! loss in steps.csv is the value the site computed. The shared initial model travels the
//! other way as one raw message before training.

use std::path::Path;
use std::sync::Arc;
use std::time::Duration;

use anyhow::{Context, Result};
use serde::{Deserialize, Serialize};

use super::sink::{FileSink, SiteSink};
use super::site::SiteReport;
use crate::net::rendezvous::Control;
use crate::telemetry::{RoundRow, StepRow};

/// What a rank sends rank 0 after the rendezvous.
#[derive(Clone, Debug, Serialize, Deserialize)]
pub enum ToRank0 {
    Step(StepRow),
    Rounds(Vec<RoundRow>),
    Probe {
        round: usize,
        kind: String,
        ids: Vec<Vec<Vec<i64>>>,
    },
    Finish(SiteReport),
    /// The rank's endpoint ran to the end with `threads` CPU threads.
    Done {
        threads: usize,
    },
    /// The rank's endpoint failed (the error chain on one line).
    Failed {
        error: String,
    },
}

/// What rank 0 sends a rank after the roster (besides the raw initial model).
#[derive(Clone, Debug, Serialize, Deserialize)]
pub enum FromRank0 {
    /// The shared initial model follows as one raw message of this many bytes.
    Init { bytes: u64 },
    /// Every message of the rank arrived and is on disk: it may exit.
    Ack,
    /// The run failed elsewhere: stop now.
    Abort { reason: String },
}

/// Sends a site's telemetry to rank 0.
pub struct RemoteSink {
    control: Arc<Control>,
}

impl RemoteSink {
    pub fn new(control: Arc<Control>) -> Self {
        RemoteSink { control }
    }

    fn send(&self, msg: &ToRank0) -> Result<()> {
        self.control
            .send(msg)
            .context("sending telemetry to rank 0")
    }
}

impl SiteSink for RemoteSink {
    fn step(&mut self, row: &StepRow) -> Result<()> {
        self.send(&ToRank0::Step(row.clone()))
    }
    fn rounds(&mut self, rows: &[RoundRow]) -> Result<()> {
        self.send(&ToRank0::Rounds(rows.to_vec()))
    }
    fn probe(&mut self, round: usize, kind: &str, ids: &[Vec<Vec<i64>>]) -> Result<()> {
        self.send(&ToRank0::Probe {
            round,
            kind: kind.to_string(),
            ids: ids.to_vec(),
        })
    }
    fn finish(&mut self, report: &SiteReport) -> Result<()> {
        self.send(&ToRank0::Finish(report.clone()))
    }
}

/// At rank 0: writes what rank `rank` sends into `dir` (its `steps-site<i>.csv`,
/// `probe-site<i>.jsonl`, `site<i>.json`) until the rank is done, then acknowledges. Returns
/// the rank's threads, or its failure. `silence`: the longest gap between two messages
/// before the rank counts as lost.
pub fn collect(control: &Control, dir: &Path, rank: usize, silence: Duration) -> Result<usize> {
    let mut sink = FileSink::create(dir, rank, false)?;
    loop {
        let msg: ToRank0 = control
            .recv(silence)
            .with_context(|| format!("rank {rank}: lost contact"))?;
        match msg {
            ToRank0::Step(row) => sink.step(&row)?,
            ToRank0::Rounds(rows) => sink.rounds(&rows)?,
            ToRank0::Probe { round, kind, ids } => sink.probe(round, &kind, &ids)?,
            ToRank0::Finish(report) => sink.finish(&report)?,
            ToRank0::Done { threads } => {
                drop(sink);
                control
                    .send(&FromRank0::Ack)
                    .with_context(|| format!("rank {rank}: acknowledging its results"))?;
                return Ok(threads);
            }
            ToRank0::Failed { error } => anyhow::bail!("site {rank}: {error}"),
        }
    }
}
