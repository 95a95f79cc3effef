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
//! **Partial ranges.** A range of a group may be averaged over a subset of the group's
//! members only (FoMoE `router_sync = holders`: router row e among expert e's holders): the
//! other members contribute zero and the sum is divided by the subset's size. The range
//! still travels with its group (the same bytes), and every member adopts the result.
//!
//! **Schedule.** All groups of a round run as one lockstep ring schedule
//! ([`crate::collective::ring_allreduce_groups`]): at ring step t every site sends the
//! step-t chunk of each of its groups, then receives them, groups in one canonical order
//! (sorted by member list) on every site. A round then pays the latency of the longest ring
//! (2(M−1) steps, the dense group's) instead of the sum over its groups, while every group's
//! messages, bytes and arithmetic are those of its own ring all-reduce, so the result is
//! bit-identical to synchronising the groups one after another. The deadlock-freedom
//! argument is in that function's module doc: sends never wait, a step-t send needs only the
//! site's own step-(t−1) receives, and each link carries its messages in the order (step,
//! canonical group) on both ends.
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

use super::outer::{OuterOptimizerState, OuterPlan};
use super::{RoundState, SiteState};
use crate::collective::{ring_allreduce_groups, RingJob, WireDtype};
use crate::config::{ResolvedOuter, RunConfig};
use crate::model::params::ParamLayout;
use crate::net::Comm;

/// Ranges of the flat buffer held by exactly `members`.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct SyncGroup {
    pub members: Vec<usize>,
    pub ranges: Vec<Range<usize>>,
    /// Sub-ranges (inside `ranges`) averaged over only some of the members (module doc).
    pub partial: Vec<PartialRange>,
}

/// A range averaged over `contributors` of its group's members; this site contributes its
/// Δ there only when `contributes`.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct PartialRange {
    pub range: Range<usize>,
    pub contributes: bool,
    pub contributors: usize,
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
                partial: Vec::new(),
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
    // Δ on the device, lent to the host as one payload (staged through pinned memory on a
    // GPU, in place on the CPU); it is written back when `delta` goes out of scope.
    let mut delta_t = &outer.global - &st.model.store.flat;
    let mut delta = crate::device::staging::HostCopy::new(&mut delta_t);
    for g in groups {
        for p in g.partial.iter().filter(|p| !p.contributes) {
            delta[p.range.clone()].fill(0.0);
        }
    }
    let mut bufs: Vec<Vec<f32>> = groups
        .iter()
        .map(|g| {
            g.ranges
                .iter()
                .flat_map(|r| delta[r.clone()].iter().copied())
                .collect()
        })
        .collect();
    let mut jobs: Vec<RingJob<'_>> = groups
        .iter()
        .zip(bufs.iter_mut())
        .map(|(g, buf)| RingJob {
            group: &g.members,
            buf,
        })
        .collect();
    ring_allreduce_groups(comm, &mut jobs, wire).with_context(|| {
        let members: Vec<&Vec<usize>> = groups.iter().map(|g| &g.members).collect();
        format!("outer sync over the holder groups {members:?}")
    })?;
    for (g, buf) in groups.iter().zip(&bufs) {
        let n = g.members.len() as f32;
        let mut off = 0;
        for r in &g.ranges {
            for (d, s) in delta[r.clone()].iter_mut().zip(&buf[off..off + r.len()]) {
                *d = *s / n;
            }
            off += r.len();
        }
        for p in &g.partial {
            // Undo the division by |G| for the partial range: Σ / contributors. Computed
            // from the sum itself (not the mean), so the value is one division of the sum.
            let mut off = 0;
            for r in &g.ranges {
                let lo = p.range.start.max(r.start);
                let hi = p.range.end.min(r.end);
                if lo < hi {
                    let c = p.contributors as f32;
                    for i in lo..hi {
                        delta[i] = buf[off + (i - r.start)] / c;
                    }
                }
                off += r.len();
            }
        }
    }
    drop(delta);
    outer.apply(&delta_t);
    tch::no_grad(|| st.model.store.flat.shallow_clone().copy_(&outer.global));
    Ok(expected_payload_sent(groups, st.site, wire))
}

/// One site's share of a group synchronisation, as DiLoCo and FoMoE hold it: the site's
/// holder groups and the knobs that decide what a round does. The outer optimiser it
/// applies lives in the site's [`RoundState`] (checkpointed whole with the round); the
/// strategies differ only in the groups they give it.
pub struct GroupOuterSync {
    /// The outer optimiser of each parameter group.
    pub kinds: ResolvedOuter,
    pub wire: WireDtype,
    pub keep_inner_state: bool,
    pub groups: Vec<SyncGroup>,
}

impl GroupOuterSync {
    pub fn new(cfg: &RunConfig) -> Self {
        Self {
            kinds: cfg.resolved_outer(),
            wire: cfg.wire_dtype,
            keep_inner_state: cfg.keep_inner_state,
            groups: Vec::new(),
        }
    }

    /// Start from the site's current parameters (θ_g = θ_site, zero momentum).
    pub fn start(&mut self, st: &SiteState, round: &mut RoundState, groups: Vec<SyncGroup>) {
        round.outer = Some(self.fresh_state(&st.model.store.layout, &st.model.store.flat));
        self.groups = groups;
    }

    /// Outer state over `flat` (θ_g = flat, zero momentum), with this run's plan for `layout`.
    pub fn fresh_state(&self, layout: &ParamLayout, flat: &tch::Tensor) -> OuterOptimizerState {
        OuterOptimizerState::with_plan(OuterPlan::for_layout(layout, &self.kinds), flat)
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
