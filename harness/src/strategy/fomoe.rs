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
//! traffic); its inner AdamW moments for that expert start at zero.
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
//! Degenerate cases (pinned by tests): ρ = M holds every expert and synchronises everything
//! in one all-reduce over all sites, exactly as DiLoCo; M = 1 is single-site training with
//! an outer step.

use anyhow::{bail, Context, Result};
use tch::Tensor;

use super::group_sync::{groups_for_site, GroupOuterSync, PartialRange, SyncGroup};
use super::{SiteState, Strategy, SyncReport};
use crate::collective::{ring_allreduce, WireDtype};
use crate::config::{FomoeConfig, Placement, RouterSync, RunConfig};
use crate::model::params::{tensor_to_vec, ParamStore};
use crate::model::{ModelConfig, MoeModel, Residency};
use crate::net::Comm;
use crate::optim::AdamW;

/// Which sites hold which experts in one layer.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct ExpertPlacement {
    /// holders[e] = sites holding expert e, ascending.
    pub holders: Vec<Vec<usize>>,
    /// held[s] = experts site s holds, ascending.
    pub held: Vec<Vec<usize>>,
}

impl ExpertPlacement {
    pub fn round_robin(n_experts: usize, sites: usize, rho: usize) -> Result<Self> {
        if rho == 0 || rho > sites || !(n_experts * rho).is_multiple_of(sites) {
            bail!("invalid fomoe.rho = {rho}: need 1 ≤ rho ≤ sites = {sites} and n_experts·rho = {n_experts}·{rho} divisible by sites");
        }
        let per_site = n_experts * rho / sites;
        let mut held = vec![Vec::new(); sites];
        for (s, h) in held.iter_mut().enumerate() {
            let start = s * n_experts / sites;
            for j in 0..per_site {
                h.push((start + j) % n_experts);
            }
        }
        let p = Self::from_held(n_experts, held);
        for (e, h) in p.holders.iter().enumerate() {
            if h.len() != rho {
                bail!(
                    "round_robin placement gives expert {e} {} holders, expected rho = {rho}",
                    h.len()
                );
            }
        }
        Ok(p)
    }

    fn from_held(n_experts: usize, mut held: Vec<Vec<usize>>) -> Self {
        let mut holders = vec![Vec::new(); n_experts];
        for (s, h) in held.iter_mut().enumerate() {
            h.sort_unstable();
            h.dedup();
            for &e in h.iter() {
                holders[e].push(s);
            }
        }
        Self { holders, held }
    }

    /// Load-aware placement with the same budget as round-robin (see the module doc).
    pub fn load_aware(loads: &[f64], sites: usize, rho: usize) -> Self {
        let e = loads.len();
        let cap = e * rho / sites;
        let mut count = vec![1usize; e];
        for _ in 0..e * (rho - 1) {
            let best = (0..e)
                .filter(|&i| count[i] < sites)
                .max_by(|&a, &b| {
                    let (x, y) = (loads[a] / count[a] as f64, loads[b] / count[b] as f64);
                    x.total_cmp(&y).then(b.cmp(&a))
                })
                .expect("free holder slots remain while the budget is not spent");
            count[best] += 1;
        }
        let mut order: Vec<usize> = (0..e).collect();
        order.sort_by(|&a, &b| count[b].cmp(&count[a]).then(a.cmp(&b)));
        let mut free = vec![cap; sites];
        let mut held = vec![Vec::new(); sites];
        for x in order {
            let mut by_free: Vec<usize> = (0..sites).collect();
            by_free.sort_by(|&a, &b| free[b].cmp(&free[a]).then(a.cmp(&b)));
            for &s in by_free.iter().take(count[x]) {
                assert!(free[s] > 0, "load-aware dealing ran out of slots");
                free[s] -= 1;
                held[s].push(x);
            }
        }
        Self::from_held(e, held)
    }

    pub fn holders_of(&self, expert: usize) -> &[usize] {
        &self.holders[expert]
    }
}

pub struct Fomoe {
    site: usize,
    sites: usize,
    knobs: FomoeConfig,
    /// Placement per layer.
    placement: Vec<ExpertPlacement>,
    /// Routed slots per (layer, expert) this round (load-aware placement).
    load: Vec<Vec<f64>>,
    sync: GroupOuterSync,
}

impl Fomoe {
    pub fn new(cfg: &RunConfig, site: usize) -> Result<Self> {
        let m = cfg.model_config()?;
        let placement =
            vec![ExpertPlacement::round_robin(m.n_experts, cfg.sites, cfg.fomoe.rho)?; m.n_layers];
        Ok(Self {
            site,
            sites: cfg.sites,
            knobs: cfg.fomoe.clone(),
            placement,
            load: vec![vec![0.0; m.n_experts]; m.n_layers],
            sync: GroupOuterSync::new(cfg),
        })
    }

    pub fn placement(&self) -> &[ExpertPlacement] {
        &self.placement
    }

    fn residency_for(&self, cfg: &ModelConfig, site: usize) -> Residency {
        Residency {
            per_layer: self
                .placement
                .iter()
                .map(|p| p.held[site].clone())
                .collect(),
            n_experts: cfg.n_experts,
        }
    }

    /// The site's holder groups under the current placement; with `router_sync = holders`
    /// the dense group carries router row e of every layer as a partial range averaged over
    /// expert e's holders (rows of experts every site holds need none).
    fn groups_of(&self, st: &SiteState) -> Vec<SyncGroup> {
        let p = &self.placement;
        let layout = &st.model.store.layout;
        let mut groups = groups_for_site(layout, self.sites, |l, e| p[l].holders_of(e).to_vec());
        if self.knobs.router_sync == RouterSync::Holders {
            let d = st.model.cfg.d_model;
            let partial: Vec<PartialRange> = (0..p.len())
                .flat_map(|l| {
                    let spec = layout
                        .spec(&format!("blocks.{l}.moe.router.weight"))
                        .expect("every layer has a router");
                    let offset = spec.offset;
                    p[l].holders
                        .iter()
                        .enumerate()
                        .filter(|(_, h)| h.len() < self.sites)
                        .map(move |(e, h)| PartialRange {
                            range: offset + e * d..offset + (e + 1) * d,
                            contributes: h.contains(&self.site),
                            contributors: h.len(),
                        })
                })
                .collect();
            let dense = groups
                .iter_mut()
                .find(|g| g.members.len() == self.sites)
                .expect("the dense group has every site");
            dense.partial = partial;
        }
        groups
    }

    /// Load-aware re-placement after the sync; returns the payload bytes this site sent.
    fn replace_experts(&mut self, st: &mut SiteState, comm: &mut dyn Comm) -> Result<u64> {
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
        if new == self.placement {
            return Ok(sent);
        }
        let outer = self.sync.outer.as_ref().expect("init ran");
        let old_layout = st.model.store.layout.clone();
        let momentum = outer.momentum.as_ref();
        // Moves, in one canonical order on every site: (layer, expert, new holder).
        let mut received: std::collections::HashMap<(usize, usize), Vec<f32>> = Default::default();
        for (l, (old_p, new_p)) in self.placement.iter().zip(&new).enumerate() {
            for x in 0..e {
                let src = old_p.holders[x][0];
                for &dst in new_p.holders[x]
                    .iter()
                    .filter(|d| !old_p.holders[x].contains(d))
                {
                    if self.site == src {
                        let r = old_layout.experts[&(l, x)].clone();
                        let mut v =
                            tensor_to_vec(&outer.global.narrow(0, r.start as i64, r.len() as i64));
                        if let Some(m) = momentum {
                            v.extend(tensor_to_vec(&m.narrow(0, r.start as i64, r.len() as i64)));
                        }
                        let bytes: Vec<u8> = v.iter().flat_map(|x| x.to_le_bytes()).collect();
                        sent += bytes.len() as u64;
                        comm.send(dst, bytes)?;
                    } else if self.site == dst {
                        let msg = comm.recv(src)?;
                        received.insert(
                            (l, x),
                            msg.chunks_exact(4)
                                .map(|c| f32::from_le_bytes([c[0], c[1], c[2], c[3]]))
                                .collect(),
                        );
                    }
                }
            }
        }
        self.placement = new;
        let cfg = st.model.cfg.clone();
        let residency = self.residency_for(&cfg, self.site);
        let store = ParamStore::zeros(&cfg, residency);
        let new_layout = store.layout.clone();
        let n = new_layout.total;
        let (mut model_v, mut m_v, mut v_v) = (vec![0f32; n], vec![0f32; n], vec![0f32; n]);
        let mut mom_v = vec![0f32; n];
        let (old_model, old_m, old_v) = (
            tensor_to_vec(&st.model.store.flat),
            tensor_to_vec(&st.inner.exp_avg),
            tensor_to_vec(&st.inner.exp_avg_sq),
        );
        let old_mom = momentum.map(tensor_to_vec);
        for spec in &new_layout.specs {
            let dst = spec.offset..spec.offset + spec.numel;
            if let Some(o) = old_layout.spec(&spec.name) {
                let src = o.offset..o.offset + o.numel;
                model_v[dst.clone()].copy_from_slice(&old_model[src.clone()]);
                m_v[dst.clone()].copy_from_slice(&old_m[src.clone()]);
                v_v[dst.clone()].copy_from_slice(&old_v[src.clone()]);
                if let Some(om) = &old_mom {
                    mom_v[dst].copy_from_slice(&om[src]);
                }
            }
        }
        for ((l, x), vals) in &received {
            let r = new_layout.experts[&(*l, *x)].clone();
            let k = r.len();
            model_v[r.clone()].copy_from_slice(&vals[..k]);
            if momentum.is_some() {
                mom_v[r].copy_from_slice(&vals[k..2 * k]);
            }
        }
        let mut store = store;
        store.load_flat(&model_v);
        let mut model = MoeModel::from_store(&cfg, store);
        model.skip_policy = Some(self.knobs.skip_policy);
        model.aux_scope = self.knobs.aux_scope;
        let mut inner = AdamW::new(st.inner.cfg.clone(), n, new_layout.decayed.clone());
        inner.step = st.inner.step;
        tch::no_grad(|| {
            inner.exp_avg.copy_(&Tensor::from_slice(&m_v));
            inner.exp_avg_sq.copy_(&Tensor::from_slice(&v_v));
        });
        let mut outer = self.sync.fresh_state(&new_layout, &model.store.flat);
        if let Some(m) = outer.momentum.as_mut() {
            tch::no_grad(|| m.copy_(&Tensor::from_slice(&mom_v)));
        }
        st.model = model;
        st.inner = inner;
        self.sync.outer = Some(outer);
        self.sync.groups = self.groups_of(st);
        Ok(sent)
    }

    pub fn groups(&self) -> &[SyncGroup] {
        &self.sync.groups
    }
}

impl Strategy for Fomoe {
    fn name(&self) -> &'static str {
        "fomoe"
    }

    fn residency(&self, cfg: &ModelConfig) -> Residency {
        self.residency_for(cfg, self.site)
    }

    fn residency_of(&self, cfg: &ModelConfig, site: usize) -> Residency {
        self.residency_for(cfg, site)
    }

    fn observe_routing(&mut self, routing: &[crate::model::moe::LayerRouting]) {
        if self.knobs.placement == Placement::LoadAware {
            for (l, r) in routing.iter().enumerate() {
                for (c, &n) in self.load[l].iter_mut().zip(&r.counts) {
                    *c += n as f64;
                }
            }
        }
    }

    fn init(&mut self, st: &mut SiteState) -> Result<()> {
        st.model.skip_policy = Some(self.knobs.skip_policy);
        st.model.aux_scope = self.knobs.aux_scope;
        let groups = self.groups_of(st);
        self.sync.start(st, groups);
        Ok(())
    }

    fn end_round(&mut self, st: &mut SiteState, comm: &mut dyn Comm) -> Result<SyncReport> {
        let mut expected = self.sync.sync(st, comm)?;
        if self.knobs.placement == Placement::LoadAware {
            expected += self.replace_experts(st, comm)?;
        }
        self.sync.finish_round(st);
        Ok(SyncReport {
            expected_payload_sent: expected,
        })
    }

    fn state_bytes(&self) -> usize {
        self.sync.state_bytes()
    }

    fn save_state(
        &self,
        w: &mut crate::checkpoint::CheckpointWriter,
        layout: &crate::model::ParamLayout,
    ) {
        self.sync.save(w, layout);
    }

    fn load_state(
        &mut self,
        ck: &crate::checkpoint::Checkpoint,
        layout: &crate::model::ParamLayout,
    ) -> Result<()> {
        self.sync.load(ck, layout)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn round_robin_gives_every_expert_rho_holders() {
        for (e, m, rho) in [
            (8, 4, 1),
            (8, 4, 2),
            (8, 4, 4),
            (6, 4, 2),
            (16, 8, 3),
            (8, 3, 3),
        ] {
            let p = ExpertPlacement::round_robin(e, m, rho).unwrap();
            assert!(p.held.iter().flatten().count() == e * rho);
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

    #[test]
    fn load_aware_keeps_the_budget_and_replicates_loaded_experts_more() {
        let loads = [100.0, 1.0, 1.0, 1.0, 50.0, 1.0, 1.0, 1.0];
        let p = ExpertPlacement::load_aware(&loads, 4, 2);
        assert!(p.held.iter().all(|h| h.len() == 4), "{:?}", p.held);
        assert!(p.holders.iter().all(|h| !h.is_empty() && h.len() <= 4));
        assert_eq!(p.holders.iter().map(Vec::len).sum::<usize>(), 16);
        assert_eq!(p.holders[0].len(), 4, "the hottest expert is on every site");
        assert!(p.holders[4].len() >= 3);
        // Equal loads give every expert rho holders.
        let q = ExpertPlacement::load_aware(&[1.0; 8], 4, 2);
        assert!(q.holders.iter().all(|h| h.len() == 2), "{:?}", q.holders);
    }
}
