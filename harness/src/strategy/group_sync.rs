//! The outer synchronisation DiLoCo and FoMoE share: average pseudo-gradients within
//! holder groups, apply the outer optimiser, adopt the new global weights.
//!
//! A site's flat parameters are cut into ranges, each held by a set of sites (its holder
//! group): the dense range by all M sites, each expert block by its ρ holders. Ranges with
//! the same holders are synchronised together in one ring all-reduce. Per round:
//!
//!   Δ = θ_g − θ_site;   for each group G ∋ site:  Δ[G] ← (Σ_{s∈G} Δ_s[G]) / |G|
//!   θ_g ← outer(θ_g, Δ);   θ_site ← θ_g
//!
//! Groups are processed in one canonical order (sorted by member list) on every site, so
//! two sites always meet their shared groups in the same order: no deadlock, and each
//! peer's messages arrive in the order they are consumed.
//!
//! Partial participation: the groups are formed over the round's participants only (the
//! dense range with every participant, an expert with its participating holders), so each
//! average is the mean over the sites that took part, with equal weights.
//!
//! Degenerate cases: one group with every site and every range (DiLoCo, and FoMoE with
//! ρ = M, whose dense range and experts then share one all-reduce) gives identical bytes
//! and identical arithmetic; a group of one site (FoMoE ρ = 1 experts, or an expert whose
//! other holders are absent) sends nothing and applies its own Δ.
//! Payload per site per round: Σ_G bytes::ring_allreduce_traffic(n_G, G).payload_sent_by(site),
//! which for divisible sizes is 2(|G|−1)/|G|·n_G·b.

use std::collections::BTreeMap;
use std::ops::Range;

use anyhow::{Context, Result};

use super::outer::OuterOptimizerState;
use super::{RoundState, SiteState};
use crate::collective::{ring_allreduce, WireDtype};
use crate::config::{OuterOptimizer, RunConfig};
use crate::model::params::{tensor_to_vec, ParamLayout};
use crate::net::Comm;

/// Ranges of the flat buffer held by exactly `members`.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct SyncGroup {
    pub members: Vec<usize>,
    pub ranges: Vec<Range<usize>>,
}

impl SyncGroup {
    pub fn numel(&self) -> usize {
        self.ranges.iter().map(|r| r.len()).sum()
    }
}

/// The groups of one site: the dense range with `dense_members` (every site, or the round's
/// participants), each resident expert block with `holders_of(layer, expert)` (its holders
/// taking part); ranges with equal members merged, groups in canonical order (by member
/// list), ranges in layout order.
pub fn groups_for_site(
    layout: &ParamLayout,
    dense_members: &[usize],
    holders_of: impl Fn(usize, usize) -> Vec<usize>,
) -> Vec<SyncGroup> {
    let mut by_members: BTreeMap<Vec<usize>, Vec<Range<usize>>> = BTreeMap::new();
    by_members
        .entry(dense_members.to_vec())
        .or_default()
        .push(layout.dense.clone());
    for (&(layer, expert), r) in &layout.experts {
        let mut h = holders_of(layer, expert);
        h.sort_unstable();
        by_members.entry(h).or_default().push(r.clone());
    }
    by_members
        .into_iter()
        .map(|(members, mut ranges)| {
            ranges.sort_by_key(|r| r.start);
            // Merge adjacent ranges (one contiguous span when the layout allows).
            let mut merged: Vec<Range<usize>> = Vec::new();
            for r in ranges {
                match merged.last_mut() {
                    Some(last) if last.end == r.start => last.end = r.end,
                    _ => merged.push(r),
                }
            }
            SyncGroup {
                members,
                ranges: merged,
            }
        })
        .collect()
}

/// Expected payload bytes this site sends in one [`outer_sync`].
pub fn expected_payload_sent(groups: &[SyncGroup], site: usize, wire: WireDtype) -> u64 {
    groups
        .iter()
        .map(|g| {
            crate::bytes::ring_allreduce_traffic(g.numel(), &g.members, wire).payload_sent_by(site)
        })
        .sum()
}

/// One outer synchronisation (see the module doc).
pub fn outer_sync(
    st: &mut SiteState,
    outer: &mut OuterOptimizerState,
    groups: &[SyncGroup],
    comm: &mut dyn Comm,
    wire: WireDtype,
) -> Result<u64> {
    let mut delta = tensor_to_vec(&(&outer.global - &st.model.store.flat));
    let mut buf = Vec::new();
    for g in groups {
        buf.clear();
        for r in &g.ranges {
            buf.extend_from_slice(&delta[r.clone()]);
        }
        ring_allreduce(comm, &g.members, wire, &mut buf)
            .with_context(|| format!("outer sync over sites {:?}", g.members))?;
        let n = g.members.len() as f32;
        let mut off = 0;
        for r in &g.ranges {
            for (d, s) in delta[r.clone()].iter_mut().zip(&buf[off..off + r.len()]) {
                *d = *s / n;
            }
            off += r.len();
        }
    }
    outer.apply(&tch::Tensor::from_slice(&delta));
    tch::no_grad(|| st.model.store.flat.shallow_clone().copy_(&outer.global));
    Ok(expected_payload_sent(groups, st.site, wire))
}

/// One site's share of a group synchronisation, as DiLoCo and FoMoE hold it: the site's
/// holder groups and the knobs that decide what a round does. The outer optimiser it
/// applies lives in the site's [`RoundState`] (checkpointed whole with the round); the
/// strategies differ only in the groups they give it.
pub struct GroupOuterSync {
    pub kind: OuterOptimizer,
    pub wire: WireDtype,
    pub keep_inner_state: bool,
    pub groups: Vec<SyncGroup>,
}

impl GroupOuterSync {
    pub fn new(cfg: &RunConfig) -> Self {
        Self {
            kind: cfg.outer_optimizer(),
            wire: cfg.wire_dtype,
            keep_inner_state: cfg.keep_inner_state,
            groups: Vec::new(),
        }
    }

    /// Start from the site's current parameters (θ_g = θ_site, zero momentum).
    pub fn start(&mut self, st: &SiteState, round: &mut RoundState, groups: Vec<SyncGroup>) {
        round.outer = Some(OuterOptimizerState::new(self.kind, &st.model.store.flat));
        self.groups = groups;
    }

    /// [`outer_sync`] over the site's groups; the expected payload bytes it sent.
    pub fn sync(
        &mut self,
        st: &mut SiteState,
        round: &mut RoundState,
        comm: &mut dyn Comm,
    ) -> Result<u64> {
        let outer = round
            .outer
            .as_mut()
            .context("the outer optimiser was not started (strategy init)")?;
        outer_sync(st, outer, &self.groups, comm, self.wire)
    }

    /// End of a round: forget the inner AdamW moments unless they are kept.
    pub fn finish_round(&self, st: &mut SiteState) {
        if !self.keep_inner_state {
            st.inner.reset();
        }
    }
}
