//! DiLoCo (Douillard et al. 2023): H inner AdamW steps per site, then the pseudo-gradients
//! Δ = θ_global − θ_site are averaged over all M sites (one ring all-reduce of the whole
//! flat model) and the outer optimiser (Nesterov, lr 0.7, μ 0.9 by default) updates the
//! global copy every site keeps.
//!
//! Payload per site per round: 2(M−1)/M·N·b; over the same steps DDP sends H× as much.
//! It is FoMoE's group synchronisation with a single group holding everything, so FoMoE
//! with ρ = M is bit-identical to it (pinned by a test).

use anyhow::Result;
use harness::collective::WireDtype;
use harness::config::{OuterOptimizer, RunConfig};
use harness::net::Comm;
use harness::strategy::group_sync::{groups_for_site, outer_sync, SyncGroup};
use harness::strategy::outer::OuterOptimizerState;
use harness::strategy::{SiteState, Strategy, SyncReport};

pub struct Diloco {
    name: &'static str,
    sites: usize,
    wire: WireDtype,
    keep_inner_state: bool,
    outer_kind: OuterOptimizer,
    outer: Option<OuterOptimizerState>,
    groups: Vec<SyncGroup>,
}

impl Diloco {
    pub fn new(cfg: &RunConfig, _site: usize) -> Result<Self> {
        Ok(Self::with_name("diloco", cfg))
    }

    /// The same synchronisation under another method name (Photon's ring mode).
    pub fn with_name(name: &'static str, cfg: &RunConfig) -> Self {
        Self {
            name,
            sites: cfg.sites,
            wire: cfg.wire_dtype,
            keep_inner_state: cfg.keep_inner_state,
            outer_kind: cfg.outer_optimizer(),
            outer: None,
            groups: Vec::new(),
        }
    }
}

impl Strategy for Diloco {
    fn name(&self) -> &'static str {
        self.name
    }

    fn init(&mut self, st: &mut SiteState) -> Result<()> {
        self.outer = Some(OuterOptimizerState::new(
            self.outer_kind,
            &st.model.store.flat,
        ));
        let all: Vec<usize> = (0..self.sites).collect();
        self.groups = groups_for_site(&st.model.store.layout, self.sites, |_, _| all.clone());
        Ok(())
    }

    fn end_round(&mut self, st: &mut SiteState, comm: &mut dyn Comm) -> Result<SyncReport> {
        let outer = self.outer.as_mut().expect("init ran");
        let expected = outer_sync(st, outer, &self.groups, comm, self.wire)?;
        if !self.keep_inner_state {
            st.inner.reset();
        }
        Ok(SyncReport {
            expected_payload_sent: expected,
        })
    }

    fn state_bytes(&self) -> usize {
        self.outer.as_ref().map_or(0, |o| o.bytes())
    }

    fn save_state(
        &self,
        w: &mut harness::checkpoint::CheckpointWriter,
        layout: &harness::model::ParamLayout,
    ) {
        if let Some(o) = &self.outer {
            o.save(w, layout);
        }
    }

    fn load_state(
        &mut self,
        ck: &harness::checkpoint::Checkpoint,
        layout: &harness::model::ParamLayout,
    ) -> Result<()> {
        match &mut self.outer {
            Some(o) => o.load(ck, layout),
            None => Ok(()),
        }
    }
}
