//! FoMoE: expert layers partitioned across sites with partial replication ρ, skip-token for
//! tokens routed to experts a site does not hold, and infrequent synchronisation where the
//! dense parameters are averaged over all M sites and each expert only among its ρ holders.
//!
//! Placement `round_robin`: site s holds experts {(⌊s·E/M⌋ + j) mod E : 0 ≤ j < E·ρ/M} in
//! every layer, so every expert has exactly ρ holders (checked at construction).
//! Placement `load_aware` (beyond the paper): the same memory budget (E·ρ/M experts per
//! site and layer, E·ρ holder slots per layer), but after every round the slots are
//! re-dealt per layer by the previous round's routing load (summed over sites with one
//! all-reduce of the L·E slot counts): every expert keeps at least one holder and each
//! further slot goes to the expert with the largest load per holder (D'Hondt), at most M
//! holders each; experts are then dealt, most holders first, to the sites with the most
//! free slots (ties: lower id). A site that gains an expert receives its global weights and
//! outer momentum from the expert's lowest-numbered previous holder (counted as training
//! traffic); its inner AdamW moments for that expert start at zero. The strategy returns the
//! new placement and the received state as a [`Relayout`]; the runner moves the site's
//! model, AdamW moments and outer optimiser to it, and the placement is part of the
//! site's checkpointed round state, so a resumed run continues with it.
//! Memory per site: dense + (ρ/M)·experts, with their AdamW moments and outer state.
//! Payload per site per round (divisible sizes): 2(M−1)/M·N_dense·b + Σ over its expert
//! groups of 2(ρ−1)/ρ·n_G·b, which summed over sites gives METHODS.md's
//! 2(M−1)/M·N_dense·b + 2(ρ−1)/M·N_exp·b per site on average.
//!
//! Routers (`router_sync`): `all` averages every router row with the dense group over all
//! M sites; `holders` averages row e of each layer's router (the logit of expert e) only
//! over expert e's holders, the sites whose cross-entropy gradient actually used expert e;
//! the rows still travel in the dense all-reduce, so bytes are unchanged (see
//! [`super::group_sync`]'s partial ranges).
//!
//! Partial participation (faults, the deadline): the dense group is averaged over the
//! round's participants and each expert over its participating holders; an expert none of
//! whose holders takes part is not synchronised (its global value stays: frozen), and with
//! `router_sync = holders` its router row is averaged over every participant.
//!
//! Degenerate cases (pinned by tests): ρ = M holds every expert and synchronises everything
//! in one all-reduce over all sites, exactly as DiLoCo; M = 1 is single-site training with
//! an outer step.

use std::collections::BTreeMap;

use anyhow::{Context, Result};

use super::group_sync::{groups_for_site, GroupOuterSync, PartialRange, SyncGroup};
pub use super::placement::ExpertPlacement;
use super::placement::Placement;
use super::{ExpertState, Relayout, RoundState, SiteState, Strategy, SyncOutcome};
use crate::collective::{ring_allreduce, wire, WireDtype};
use crate::config::{FomoeConfig, Placement as PlacementKind, RouterSync, RunConfig};
use crate::model::params::tensor_to_vec;
use crate::model::ModelConfig;
use crate::net::Comm;

pub struct Fomoe {
    site: usize,
    sites: usize,
    knobs: FomoeConfig,
    /// Routed slots per (layer, expert) this round (load-aware placement).
    load: Vec<Vec<f64>>,
    sync: GroupOuterSync,
}

impl Fomoe {
    pub fn new(cfg: &RunConfig, site: usize) -> Result<Self> {
        let m = cfg.model_config()?;
        ExpertPlacement::round_robin(m.n_experts, cfg.sites, cfg.fomoe.rho)?;
        Ok(Self {
            site,
            sites: cfg.sites,
            knobs: cfg.fomoe.clone(),
            load: vec![vec![0.0; m.n_experts]; m.n_layers],
            sync: GroupOuterSync::new(cfg),
        })
    }

    /// The site's holder groups under `placement` among `participants`; with
    /// `router_sync = holders` the dense group carries router row e of every layer as a
    /// partial range averaged over expert e's participating holders (rows of experts every
    /// participant holds need none).
    fn groups_of(
        &self,
        st: &SiteState,
        placement: &Placement,
        participants: &[usize],
    ) -> Vec<SyncGroup> {
        let layout = &st.model.store.layout;
        let live = |l: usize, e: usize| {
            let mut h = placement.holders_of(l, e);
            h.retain(|s| participants.contains(s));
            h
        };
        let mut groups = groups_for_site(layout, participants, live);
        if self.knobs.router_sync == RouterSync::Holders {
            let (d, experts) = (st.model.cfg.d_model, st.model.cfg.n_experts);
            let partial: Vec<PartialRange> = (0..st.model.cfg.n_layers)
                .flat_map(|l| {
                    let spec = layout
                        .spec(&format!("blocks.{l}.moe.router.weight"))
                        .expect("every layer has a router");
                    let offset = spec.offset;
                    (0..experts).filter_map(move |e| {
                        let h = live(l, e);
                        if h.is_empty() || h.len() >= participants.len() {
                            return None;
                        }
                        Some(PartialRange {
                            range: offset + e * d..offset + (e + 1) * d,
                            contributes: h.contains(&self.site),
                            contributors: h.len(),
                        })
                    })
                })
                .collect();
            if let Some(dense) = groups.iter_mut().find(|g| g.members == participants) {
                dense.partial = partial;
            }
        }
        groups
    }

    /// Load-aware re-placement after the sync: the new placement (when it differs) with the
    /// global state of the experts this site gains, and the payload bytes this site sent.
    fn rebalance(
        &mut self,
        st: &SiteState,
        round: &RoundState,
        comm: &mut dyn Comm,
    ) -> Result<(u64, Option<Relayout>)> {
        let all: Vec<usize> = (0..self.sites).collect();
        let mut counts: Vec<f32> = self.load.iter().flatten().map(|&c| c as f32).collect();
        ring_allreduce(comm, &all, WireDtype::F32, &mut counts)
            .context("load-aware: summing routing counts")?;
        let mut sent = crate::bytes::ring_allreduce_traffic(counts.len(), &all, WireDtype::F32)
            .payload_sent_by(self.site);
        let e = st.model.cfg.n_experts;
        let new: Vec<ExpertPlacement> = counts
            .chunks(e)
            .map(|l| {
                ExpertPlacement::load_aware(
                    &l.iter().map(|&c| c as f64).collect::<Vec<_>>(),
                    self.sites,
                    self.knobs.rho,
                )
            })
            .collect();
        for l in &mut self.load {
            l.iter_mut().for_each(|c| *c = 0.0);
        }
        let old = round.placement.layers();
        if new == old {
            return Ok((sent, None));
        }
        let outer = round
            .outer
            .as_ref()
            .context("the outer optimiser was not started")?;
        let layout = &st.model.store.layout;
        // Moves, in one canonical order on every site: (layer, expert, new holder).
        let mut incoming = BTreeMap::new();
        for (l, (old_p, new_p)) in old.iter().zip(&new).enumerate() {
            for x in 0..e {
                let src = old_p.holders[x][0];
                for &dst in new_p.holders[x]
                    .iter()
                    .filter(|d| !old_p.holders[x].contains(d))
                {
                    if self.site == src {
                        let r = layout.experts[&(l, x)].clone();
                        let (start, len) = (r.start as i64, r.len() as i64);
                        let mut v = tensor_to_vec(&outer.global.narrow(0, start, len));
                        if let Some(m) = &outer.momentum {
                            v.extend(tensor_to_vec(&m.narrow(0, start, len)));
                        }
                        let bytes = wire::encode(WireDtype::F32, &v);
                        sent += bytes.len() as u64;
                        comm.send(dst, bytes)?;
                    } else if self.site == dst {
                        let msg = comm.recv(src)?;
                        let n = st.model.cfg.params_per_expert();
                        let parts = if outer.momentum.is_some() { 2 } else { 1 };
                        let mut v = vec![0f32; n * parts];
                        wire::decode_into(WireDtype::F32, &msg, &mut v).map_err(|m| {
                            anyhow::anyhow!(
                                "expert ({l},{x}) from site {src}: {} bytes, expected {}",
                                m.got,
                                m.want
                            )
                        })?;
                        let momentum = (parts == 2).then(|| v.split_off(n));
                        incoming.insert(
                            (l, x),
                            ExpertState {
                                global: v,
                                momentum,
                            },
                        );
                    }
                }
            }
        }
        let relayout = Relayout {
            placement: Placement::from_layers(&new, e),
            incoming,
        };
        Ok((sent, Some(relayout)))
    }
}

impl Strategy for Fomoe {
    fn name(&self) -> &'static str {
        "fomoe"
    }

    fn initial_placement(&self, cfg: &ModelConfig, sites: usize) -> Result<Placement> {
        let layer = ExpertPlacement::round_robin(cfg.n_experts, sites, self.knobs.rho)?;
        Ok(Placement::from_layers(
            &vec![layer; cfg.n_layers],
            cfg.n_experts,
        ))
    }

    fn observe_routing(&mut self, routing: &[crate::model::moe::LayerRouting]) {
        if self.knobs.placement == PlacementKind::LoadAware {
            for (l, r) in routing.iter().enumerate() {
                for (c, &n) in self.load[l].iter_mut().zip(&r.counts) {
                    *c += n as f64;
                }
            }
        }
    }

    fn init(&mut self, st: &mut SiteState, round: &mut RoundState) -> Result<()> {
        st.model.skip_policy = Some(self.knobs.skip_policy);
        st.model.aux_scope = self.knobs.aux_scope;
        let groups = self.groups_of(st, &round.placement, &round.participants);
        self.sync.start(st, round, groups);
        Ok(())
    }

    fn end_round(
        &mut self,
        st: &mut SiteState,
        round: &mut RoundState,
        comm: &mut dyn Comm,
    ) -> Result<SyncOutcome> {
        self.sync.groups = self.groups_of(st, &round.placement, &round.participants);
        let mut expected = self.sync.sync(st, round, comm)?;
        let mut relayout = None;
        if self.knobs.placement == PlacementKind::LoadAware {
            let (sent, r) = self.rebalance(st, round, comm)?;
            expected += sent;
            relayout = r;
        }
        self.sync.finish_round(st);
        Ok(SyncOutcome {
            expected_payload_sent: expected,
            relayout,
        })
    }
}
