//! What one synchronisation of each method moves, exactly, and on which link at which step.
//!
//! A sync is a [`SyncPlan`], built from the same functions the strategies use:
//! - DDP (every step) and Photon in ring mode (every round): one ring all-reduce of all N
//!   values over the M sites;
//! - DiLoCo and FoMoE (every round): `strategy::group_sync::groups_for_site` over each site's
//!   layout, FoMoE with its round-robin placement (`ExpertPlacement::round_robin`), so the
//!   groups are the dense range over all M sites and one group per distinct holder set
//!   (ρ = M: a single group, as DiLoCo; ρ = 1: expert groups of one site, which send nothing);
//! - Photon star (every round): each client sends N values to the aggregator (endpoint M),
//!   which broadcasts N values back.
//!
//! Bytes are `crate::bytes` (called, not restated): the plan's [`SyncPlan::traffic`] merges
//! `ring_allreduce_traffic` / `star_allreduce_traffic` per group, so the payload a site sends
//! per sync equals `group_sync::expected_payload_sent` and the link counters of a real run.
//! Closed forms per site (divisible sizes, METHODS.md): DDP per step and DiLoCo per round
//! 2(M−1)/M·N·b; FoMoE per round 2(M−1)/M·N_dense·b + 2(ρ−1)/M·N_exp·b on average over
//! sites; Photon N·b up and N·b down per client, M× that at the aggregator.
//!
//! **Schedule** ([`SyncPlan::step_loads`]): every group runs its ring in lockstep with the
//! others, ring step k = 0..2(|G|−1) of every group at once (groups in canonical order,
//! sorted member lists): at step k position p of group G sends the chunk
//! `bytes::ring_step_chunk(|G|, p, k)` to its successor. A link's load at step k is the sum
//! of what every group sends on it at that step. Photon star is two steps: all uploads, then
//! all downloads. Wire bytes add each message's framing (`net::frame`), which links carry.

use std::collections::BTreeMap;

use serde::Serialize;

use crate::bytes::{self, Traffic};
use crate::collective::WireDtype;
use crate::config::{Method, PhotonTopology};
use crate::model::params::{ParamLayout, Residency};
use crate::model::ModelConfig;
use crate::net::frame;
use crate::strategy::fomoe::ExpertPlacement;
use crate::strategy::group_sync::groups_for_site;

/// One ring all-reduce: `values` values over `members` (ring order).
#[derive(Clone, Debug, PartialEq, Eq, Serialize)]
pub struct RingGroup {
    pub members: Vec<usize>,
    pub values: usize,
}

/// What one synchronisation does.
#[derive(Clone, Debug, PartialEq, Eq, Serialize)]
#[serde(tag = "kind", rename_all = "snake_case")]
pub enum SyncPlan {
    /// No communication (single-site training).
    Nothing,
    /// Ring all-reduces of these groups, in canonical order, in lockstep.
    Rings { groups: Vec<RingGroup> },
    /// Star all-reduce: clients upload `values` to the aggregator, which broadcasts back.
    Star {
        aggregator: usize,
        clients: Vec<usize>,
        values: usize,
    },
}

/// Load of one directed link during one step of a sync.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Serialize)]
pub struct LinkLoad {
    pub payload_bytes: u64,
    /// Payload plus framing: what the link transmits.
    pub wire_bytes: u64,
    pub messages: u64,
}

/// Loads of the links used in one step, keyed by (from, to).
pub type StepLoads = BTreeMap<(usize, usize), LinkLoad>;

/// How often a method synchronises: `syncs_per_round` syncs of `plan` per H inner steps.
#[derive(Clone, Debug, PartialEq, Eq, Serialize)]
pub struct MethodSync {
    pub plan: SyncPlan,
    /// DDP: H (one all-reduce per step); DiLoCo, Photon, FoMoE: 1; single: 0.
    pub syncs_per_round: usize,
}

/// The ring groups of DiLoCo (`placement = None`) or FoMoE (round-robin `placement`), from
/// each site's layout exactly as the strategies form them; groups in canonical order.
pub fn holder_groups(
    cfg: &ModelConfig,
    sites: usize,
    placement: Option<&ExpertPlacement>,
) -> Vec<RingGroup> {
    let everyone: Vec<usize> = (0..sites).collect();
    let mut groups: BTreeMap<Vec<usize>, usize> = BTreeMap::new();
    for site in 0..sites {
        let residency = match placement {
            Some(p) => Residency::uniform(cfg, &p.held[site]),
            None => Residency::full(cfg),
        };
        let layout = ParamLayout::new(cfg, &residency);
        let site_groups = groups_for_site(&layout, sites, |_, e| match placement {
            Some(p) => p.holders_of(e).to_vec(),
            None => everyone.clone(),
        });
        for g in site_groups {
            let n = g.numel();
            let prev = groups.insert(g.members.clone(), n);
            debug_assert!(
                prev.is_none_or(|p| p == n),
                "holders disagree on a group's size"
            );
        }
    }
    groups
        .into_iter()
        .map(|(members, values)| RingGroup { members, values })
        .collect()
}

/// The sync of `method` for `cfg` on `sites` sites (FoMoE with `rho`, round-robin).
pub fn method_sync(
    cfg: &ModelConfig,
    method: Method,
    sites: usize,
    rho: usize,
    inner_steps: usize,
    photon_topology: PhotonTopology,
) -> Result<MethodSync, anyhow::Error> {
    let all: Vec<usize> = (0..sites).collect();
    let n = cfg.total_params();
    let whole = || SyncPlan::Rings {
        groups: vec![RingGroup {
            members: all.clone(),
            values: n,
        }],
    };
    Ok(match method {
        Method::Single => MethodSync {
            plan: SyncPlan::Nothing,
            syncs_per_round: 0,
        },
        Method::Ddp => MethodSync {
            plan: whole(),
            syncs_per_round: inner_steps,
        },
        Method::Diloco => MethodSync {
            plan: SyncPlan::Rings {
                groups: holder_groups(cfg, sites, None),
            },
            syncs_per_round: 1,
        },
        Method::Photon => MethodSync {
            plan: match photon_topology {
                PhotonTopology::Ring => whole(),
                PhotonTopology::Star => SyncPlan::Star {
                    aggregator: sites,
                    clients: all.clone(),
                    values: n,
                },
            },
            syncs_per_round: 1,
        },
        Method::Fomoe => {
            let p = ExpertPlacement::round_robin(cfg.n_experts, sites, rho)?;
            MethodSync {
                plan: SyncPlan::Rings {
                    groups: holder_groups(cfg, sites, Some(&p)),
                },
                syncs_per_round: 1,
            }
        }
    })
}

impl SyncPlan {
    /// Exact payload traffic of one sync on every directed link (`crate::bytes`).
    pub fn traffic(&self, wire: WireDtype) -> Traffic {
        let mut t = Traffic::default();
        match self {
            SyncPlan::Nothing => {}
            SyncPlan::Rings { groups } => {
                for g in groups {
                    t.merge(&bytes::ring_allreduce_traffic(g.values, &g.members, wire));
                }
            }
            SyncPlan::Star {
                aggregator,
                clients,
                values,
            } => t.merge(&bytes::star_allreduce_traffic(
                *values,
                *aggregator,
                clients,
                wire,
            )),
        }
        t
    }

    /// Link loads step by step under the lockstep schedule (see the module doc).
    pub fn step_loads(&self, wire: WireDtype) -> Vec<StepLoads> {
        let mut out = Vec::new();
        self.for_each_step(wire, |loads| out.push(loads.clone()));
        out
    }

    /// Number of steps of one sync: the longest group's 2(|G| − 1), or 2 for a star.
    pub fn steps(&self) -> usize {
        match self {
            SyncPlan::Nothing => 0,
            SyncPlan::Rings { groups } => groups
                .iter()
                .map(|g| bytes::ring_steps(g.members.len()))
                .max()
                .unwrap_or(0),
            SyncPlan::Star { values, .. } => {
                if *values == 0 {
                    0
                } else {
                    2
                }
            }
        }
    }

    /// Calls `f` with the link loads of every step in order, one step in memory at a time
    /// (a ring of M sites has 2(M − 1) steps of M links each).
    pub fn for_each_step(&self, wire: WireDtype, mut f: impl FnMut(&StepLoads)) {
        let message = |values: usize| {
            let payload = bytes::message_payload_bytes(wire, values);
            LinkLoad {
                payload_bytes: payload,
                wire_bytes: payload
                    + frame::message_framing_bytes(payload, frame::DEFAULT_MAX_FRAME_BYTES),
                messages: 1,
            }
        };
        let add = |loads: &mut StepLoads, link: (usize, usize), m: LinkLoad| {
            let l = loads.entry(link).or_default();
            l.payload_bytes += m.payload_bytes;
            l.wire_bytes += m.wire_bytes;
            l.messages += m.messages;
        };
        let mut loads = StepLoads::new();
        match self {
            SyncPlan::Nothing => {}
            SyncPlan::Rings { groups } => {
                for k in 0..self.steps() {
                    loads.clear();
                    for g in groups {
                        let size = g.members.len();
                        if k >= bytes::ring_steps(size) {
                            continue;
                        }
                        for p in 0..size {
                            let v = bytes::ring_step_values(g.values, size, p, k);
                            if v > 0 {
                                add(
                                    &mut loads,
                                    (g.members[p], g.members[(p + 1) % size]),
                                    message(v),
                                );
                            }
                        }
                    }
                    f(&loads);
                }
            }
            SyncPlan::Star {
                aggregator,
                clients,
                values,
            } => {
                if *values == 0 {
                    return;
                }
                for upload in [true, false] {
                    loads.clear();
                    for &c in clients.iter().filter(|&&c| c != *aggregator) {
                        let link = if upload {
                            (c, *aggregator)
                        } else {
                            (*aggregator, c)
                        };
                        add(&mut loads, link, message(*values));
                    }
                    f(&loads);
                }
            }
        }
    }

    /// Endpoints that take part (sites, plus the aggregator for a star).
    pub fn endpoints(&self, sites: usize) -> usize {
        match self {
            SyncPlan::Star { .. } => sites + 1,
            _ => sites,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn fomoe_groups_are_the_dense_ring_and_one_per_holder_set() {
        let c = ModelConfig::preset("tiny").unwrap(); // E = 8, L = 2
        let s = method_sync(&c, Method::Fomoe, 4, 2, 4, PhotonTopology::Star).unwrap();
        let SyncPlan::Rings { groups } = &s.plan else {
            panic!("fomoe syncs by rings")
        };
        // Round robin, E = 8, M = 4, ρ = 2: site s holds {2s, …, 2s+3}; holder sets
        // {0,3}, {0,1}, {1,2}, {2,3}, each with 2 experts × 2 layers.
        let per_expert = c.params_per_expert();
        let mut want = vec![
            RingGroup {
                members: vec![0, 1, 2, 3],
                values: c.dense_params(),
            },
            RingGroup {
                members: vec![0, 1],
                values: 4 * per_expert,
            },
            RingGroup {
                members: vec![0, 3],
                values: 4 * per_expert,
            },
            RingGroup {
                members: vec![1, 2],
                values: 4 * per_expert,
            },
            RingGroup {
                members: vec![2, 3],
                values: 4 * per_expert,
            },
        ];
        want.sort_by(|a, b| a.members.cmp(&b.members));
        assert_eq!(groups, &want);
        // ρ = M: one group with everything, exactly DiLoCo's.
        let full = method_sync(&c, Method::Fomoe, 4, 4, 4, PhotonTopology::Star).unwrap();
        let diloco = method_sync(&c, Method::Diloco, 4, 4, 4, PhotonTopology::Star).unwrap();
        assert_eq!(full.plan, diloco.plan);
        assert_eq!(
            diloco.plan,
            SyncPlan::Rings {
                groups: vec![RingGroup {
                    members: vec![0, 1, 2, 3],
                    values: c.total_params()
                }]
            }
        );
    }

    #[test]
    fn per_site_bytes_average_to_the_closed_forms() {
        // small: N_dense = 182912, N_exp = 524288, both divisible by 4.
        let c = ModelConfig::preset("small").unwrap();
        let (nd, ne) = (c.dense_params() as f64, c.expert_params() as f64);
        let wire = WireDtype::F32;
        for rho in [1, 2, 4] {
            let s = method_sync(&c, Method::Fomoe, 4, rho, 8, PhotonTopology::Star).unwrap();
            let t = s.plan.traffic(wire);
            let mean = (0..4).map(|i| t.payload_sent_by(i)).sum::<u64>() as f64 / 4.0;
            assert_eq!(
                mean,
                bytes::fomoe_bytes_per_round(4, rho, nd, ne, 4.0),
                "rho {rho}"
            );
        }
        let ddp = method_sync(&c, Method::Ddp, 4, 2, 8, PhotonTopology::Star).unwrap();
        assert_eq!(ddp.syncs_per_round, 8);
        assert_eq!(
            ddp.plan.traffic(wire).payload_sent_by(1) as f64,
            bytes::ddp_bytes_per_step(4, nd + ne, 4.0)
        );
        let photon = method_sync(&c, Method::Photon, 4, 2, 8, PhotonTopology::Star).unwrap();
        let t = photon.plan.traffic(wire);
        let (up, down) = bytes::photon_client_bytes_per_round(nd + ne, 4.0);
        assert_eq!(t.payload_sent_by(0) as f64, up);
        assert_eq!(t.get(4, 0).payload_bytes as f64, down);
        assert_eq!(
            t.payload_sent_by(4) as f64,
            bytes::photon_aggregator_bytes_per_round(4, nd + ne, 4.0).1
        );
    }

    #[test]
    fn step_loads_carry_the_whole_traffic() {
        let c = ModelConfig::preset("tiny").unwrap();
        for (method, rho) in [
            (Method::Ddp, 2),
            (Method::Diloco, 2),
            (Method::Fomoe, 1),
            (Method::Fomoe, 2),
            (Method::Photon, 2),
        ] {
            for wire in [WireDtype::F32, WireDtype::Int8] {
                let s = method_sync(&c, method, 4, rho, 4, PhotonTopology::Star).unwrap();
                let t = s.plan.traffic(wire);
                let mut summed = Traffic::default();
                for step in s.plan.step_loads(wire) {
                    for ((f, to), l) in step {
                        assert!(l.wire_bytes > l.payload_bytes, "framing counted");
                        summed.add(f, to, l.payload_bytes, l.messages);
                    }
                }
                assert_eq!(summed, t, "{method:?} rho {rho} {wire}");
            }
        }
        // Lockstep: the dense ring of 4 takes 6 steps; FoMoE ρ = 2 adds no step (its
        // groups of 2 finish in 2).
        let f = method_sync(&c, Method::Fomoe, 4, 2, 4, PhotonTopology::Star).unwrap();
        let loads = f.plan.step_loads(WireDtype::F32);
        assert_eq!(loads.len(), 6);
        // Step 0: site 0 sends to 1 both a dense chunk and its {0,1} expert chunk.
        assert_eq!(loads[0][&(0, 1)].messages, 2);
        assert_eq!(loads[2][&(0, 1)].messages, 1);
    }
}
