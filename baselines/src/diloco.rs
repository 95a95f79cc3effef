//! DiLoCo (Douillard et al. 2023): H inner AdamW steps per site, then the pseudo-gradients
//! Δ = θ_global − θ_site are averaged over all M sites (one ring all-reduce of the whole
//! flat model) and the outer optimiser (Nesterov, lr 0.7, μ 0.9 by default) updates the
//! global copy every site keeps.
//!
//! Payload per site per round: 2(M−1)/M·N·b; over the same steps DDP sends H× as much.
//! It is FoMoE's group synchronisation with a single group holding everything, so FoMoE
//! with ρ = M is bit-identical to it (pinned by a test). With partial participation the
//! mean runs over the round's participants.

use anyhow::Result;
use harness::config::RunConfig;
use harness::net::Comm;
use harness::strategy::group_sync::{groups_for_site, GroupOuterSync, SyncGroup};
use harness::strategy::{RoundState, SiteState, Strategy, SyncOutcome};

pub struct Diloco {
    name: &'static str,
    sync: GroupOuterSync,
}

impl Diloco {
    pub fn new(cfg: &RunConfig, _site: usize) -> Result<Self> {
        Ok(Self::with_name("diloco", cfg))
    }

    /// The same synchronisation under another method name (Photon's ring mode).
    pub fn with_name(name: &'static str, cfg: &RunConfig) -> Self {
        Self {
            name,
            sync: GroupOuterSync::new(cfg),
        }
    }
}

/// One group: the whole model among `participants` (every site without faults).
fn everything_among(st: &SiteState, participants: &[usize]) -> Vec<SyncGroup> {
    groups_for_site(&st.model.store.layout, participants, |_, _| {
        participants.to_vec()
    })
}

impl Strategy for Diloco {
    fn name(&self) -> &'static str {
        self.name
    }

    fn init(&mut self, st: &mut SiteState, round: &mut RoundState) -> Result<()> {
        let groups = everything_among(st, &round.participants);
        self.sync.start(st, round, groups);
        Ok(())
    }

    fn end_round(
        &mut self,
        st: &mut SiteState,
        round: &mut RoundState,
        comm: &mut dyn Comm,
    ) -> Result<SyncOutcome> {
        self.sync.groups = everything_among(st, &round.participants);
        let expected = self.sync.sync(st, round, comm)?;
        self.sync.finish_round(st);
        Ok(SyncOutcome {
            expected_payload_sent: expected,
            relayout: None,
        })
    }
}
