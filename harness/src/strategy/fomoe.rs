//! FoMoE: expert layers partitioned across sites with partial replication ρ, skip-token for
//! tokens routed to experts a site does not hold, and infrequent synchronisation where the
//! dense parameters are averaged over all M sites and each expert only among its ρ holders.
//!
//! Placement `round_robin`: site s holds experts {(⌊s·E/M⌋ + j) mod E : 0 ≤ j < E·ρ/M} in
//! every layer, so every expert has exactly ρ holders (checked at construction).
//! Memory per site: dense + (ρ/M)·experts, with their AdamW moments and outer state.
//! Payload per site per round (divisible sizes): 2(M−1)/M·N_dense·b + Σ over its expert
//! groups of 2(ρ−1)/ρ·n_G·b, which summed over sites gives METHODS.md's
//! 2(M−1)/M·N_dense·b + 2(ρ−1)/M·N_exp·b per site on average.
//!
//! Degenerate cases (pinned by tests): ρ = M holds every expert and synchronises everything
//! in one all-reduce over all sites, exactly as DiLoCo; M = 1 is single-site training with
//! an outer step.

use anyhow::{bail, Result};

use super::group_sync::{groups_for_site, outer_sync, SyncGroup};
use super::outer::OuterOptimizerState;
use super::{SiteState, Strategy, SyncReport};
use crate::config::{FomoeConfig, Placement, RunConfig};
use crate::model::{ModelConfig, Residency};
use crate::net::Comm;

/// Which sites hold which experts (the same in every layer for `round_robin`).
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct ExpertPlacement {
    /// holders[e] = sites holding expert e, ascending.
    pub holders: Vec<Vec<usize>>,
    /// held[s] = experts site s holds, ascending.
    pub held: Vec<Vec<usize>>,
}

impl ExpertPlacement {
    pub fn round_robin(n_experts: usize, sites: usize, rho: usize) -> Result<Self> {
        if rho == 0 || rho > sites || (n_experts * rho) % sites != 0 {
            bail!("invalid fomoe.rho = {rho}: need 1 ≤ rho ≤ sites = {sites} and n_experts·rho = {n_experts}·{rho} divisible by sites");
        }
        let per_site = n_experts * rho / sites;
        let mut held = vec![Vec::new(); sites];
        let mut holders = vec![Vec::new(); n_experts];
        for (s, h) in held.iter_mut().enumerate() {
            let start = s * n_experts / sites;
            for j in 0..per_site {
                let e = (start + j) % n_experts;
                h.push(e);
                holders[e].push(s);
            }
            h.sort_unstable();
            h.dedup();
        }
        for (e, h) in holders.iter().enumerate() {
            if h.len() != rho {
                bail!("round_robin placement gives expert {e} {} holders, expected rho = {rho}", h.len());
            }
        }
        Ok(Self { holders, held })
    }

    pub fn holders_of(&self, expert: usize) -> &[usize] {
        &self.holders[expert]
    }
}

pub struct Fomoe {
    site: usize,
    sites: usize,
    knobs: FomoeConfig,
    placement: ExpertPlacement,
    keep_inner_state: bool,
    wire: crate::collective::WireDtype,
    outer_kind: crate::config::OuterOptimizer,
    outer: Option<OuterOptimizerState>,
    groups: Vec<SyncGroup>,
}

impl Fomoe {
    pub fn new(cfg: &RunConfig, site: usize) -> Result<Self> {
        let m = cfg.model_config()?;
        if cfg.fomoe.placement == Placement::LoadAware {
            bail!("invalid fomoe.placement = load_aware: not implemented in this version; allowed: round_robin");
        }
        let placement = ExpertPlacement::round_robin(m.n_experts, cfg.sites, cfg.fomoe.rho)?;
        Ok(Self {
            site,
            sites: cfg.sites,
            knobs: cfg.fomoe.clone(),
            placement,
            keep_inner_state: cfg.keep_inner_state,
            wire: cfg.wire_dtype,
            outer_kind: cfg.outer_optimizer(),
            outer: None,
            groups: Vec::new(),
        })
    }

    pub fn placement(&self) -> &ExpertPlacement {
        &self.placement
    }

    pub fn groups(&self) -> &[SyncGroup] {
        &self.groups
    }
}

impl Strategy for Fomoe {
    fn name(&self) -> &'static str {
        "fomoe"
    }

    fn residency(&self, cfg: &ModelConfig) -> Residency {
        Residency::uniform(cfg, &self.placement.held[self.site])
    }

    fn init(&mut self, st: &mut SiteState) -> Result<()> {
        st.model.skip_policy = Some(self.knobs.skip_policy);
        st.model.aux_scope = self.knobs.aux_scope;
        self.outer = Some(OuterOptimizerState::new(self.outer_kind, &st.model.store.flat));
        let p = &self.placement;
        self.groups = groups_for_site(&st.model.store.layout, self.sites, |_, e| p.holders_of(e).to_vec());
        Ok(())
    }

    fn end_round(&mut self, st: &mut SiteState, comm: &mut dyn Comm) -> Result<SyncReport> {
        let outer = self.outer.as_mut().expect("init ran");
        let expected = outer_sync(st, outer, &self.groups, comm, self.wire)?;
        if !self.keep_inner_state {
            st.inner.reset();
        }
        Ok(SyncReport { expected_payload_sent: expected })
    }

    fn state_bytes(&self) -> usize {
        self.outer.as_ref().map_or(0, |o| o.bytes())
    }

    fn save_state(&self, w: &mut crate::checkpoint::CheckpointWriter, layout: &crate::model::ParamLayout) {
        if let Some(o) = &self.outer {
            o.save(w, layout);
        }
    }

    fn load_state(&mut self, ck: &crate::checkpoint::Checkpoint, layout: &crate::model::ParamLayout) -> Result<()> {
        match &mut self.outer {
            Some(o) => o.load(ck, layout),
            None => Ok(()),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn round_robin_gives_every_expert_rho_holders() {
        for (e, m, rho) in [(8, 4, 1), (8, 4, 2), (8, 4, 4), (6, 4, 2), (16, 8, 3), (8, 3, 3)] {
            let p = ExpertPlacement::round_robin(e, m, rho).unwrap();
            assert!(p.holders.iter().all(|h| h.len() == rho), "{e} {m} {rho}");
            assert!(p.held.iter().all(|h| h.len() == e * rho / m));
        }
        // Site s starts at s·E/M: E = 8, M = 4, ρ = 2 → {0,1,2,3}, {2,3,4,5}, ...
        let p = ExpertPlacement::round_robin(8, 4, 2).unwrap();
        assert_eq!(p.held[1], vec![2, 3, 4, 5]);
        assert_eq!(p.held[3], vec![0, 1, 6, 7]);
        assert_eq!(p.holders_of(0), &[0, 3]);
        assert!(ExpertPlacement::round_robin(8, 3, 2).is_err());
    }
}
