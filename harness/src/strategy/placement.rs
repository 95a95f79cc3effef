//! Who holds which experts: the residency of every site, which every site can compute and
//! which a checkpoint records (a run whose placement moves, FoMoE `load_aware`, resumes with
//! the placement it had).
//!
//! [`Placement`] is the whole federation's view (site → layer → experts held, ascending);
//! [`ExpertPlacement`] is one layer's view (expert → holders, site → experts), the form
//! FoMoE's placement rules are written in:
//! - `round_robin`: site s holds experts {(⌊s·E/M⌋ + j) mod E : 0 ≤ j < E·ρ/M} in every
//!   layer, so every expert has exactly ρ holders;
//! - `load_aware`: the same budget re-dealt by routing load (see [`ExpertPlacement::load_aware`]).
//!
//! Degenerate cases: a full placement (every site holds every expert) is what DDP, DiLoCo,
//! Photon and single train; FoMoE with ρ = M is full.

use anyhow::{bail, Result};
use serde::{Deserialize, Serialize};

use crate::model::{ModelConfig, Residency};

/// Who holds what at the start of a run: FoMoE's round-robin placement, else every site
/// holds every expert.
pub fn initial_placement(cfg: &crate::config::RunConfig) -> Result<Placement> {
    let m = cfg.model_config()?;
    if cfg.method != crate::config::Method::Fomoe {
        return Ok(Placement::full(&m, cfg.sites));
    }
    let layer = ExpertPlacement::round_robin(m.n_experts, cfg.sites, cfg.fomoe.rho)?;
    Ok(Placement::from_layers(
        &vec![layer; m.n_layers],
        m.n_experts,
    ))
}

/// The residency of every site (indexed by site id).
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Placement {
    sites: Vec<Residency>,
}

/// The serialised form of a [`Placement`] (checkpoint metadata): site → layer → experts.
#[derive(Serialize, Deserialize)]
struct PlacementRecord {
    n_experts: usize,
    held: Vec<Vec<Vec<usize>>>,
}

impl Placement {
    /// Every site holds every expert.
    pub fn full(cfg: &ModelConfig, sites: usize) -> Self {
        Self {
            sites: vec![Residency::full(cfg); sites],
        }
    }

    /// From one [`ExpertPlacement`] per layer.
    pub fn from_layers(layers: &[ExpertPlacement], n_experts: usize) -> Self {
        let sites = layers.first().map_or(0, |l| l.held.len());
        Self {
            sites: (0..sites)
                .map(|s| Residency {
                    per_layer: layers.iter().map(|l| l.held[s].clone()).collect(),
                    n_experts,
                })
                .collect(),
        }
    }

    /// Number of sites.
    pub fn sites(&self) -> usize {
        self.sites.len()
    }

    /// What site `site` holds.
    pub fn of(&self, site: usize) -> &Residency {
        &self.sites[site]
    }

    /// Sites holding expert `expert` of layer `layer`, ascending.
    pub fn holders_of(&self, layer: usize, expert: usize) -> Vec<usize> {
        (0..self.sites.len())
            .filter(|&s| self.sites[s].holds(layer, expert))
            .collect()
    }

    /// One [`ExpertPlacement`] per layer.
    pub fn layers(&self) -> Vec<ExpertPlacement> {
        let n_layers = self.sites.first().map_or(0, |r| r.per_layer.len());
        let n_experts = self.sites.first().map_or(0, |r| r.n_experts);
        (0..n_layers)
            .map(|l| {
                ExpertPlacement::from_held(
                    n_experts,
                    self.sites.iter().map(|r| r.per_layer[l].clone()).collect(),
                )
            })
            .collect()
    }

    /// JSON for checkpoint metadata.
    pub fn to_json(&self) -> String {
        let rec = PlacementRecord {
            n_experts: self.sites.first().map_or(0, |r| r.n_experts),
            held: self.sites.iter().map(|r| r.per_layer.clone()).collect(),
        };
        serde_json::to_string(&rec).expect("a placement serialises")
    }

    /// Read back [`Placement::to_json`], checked against the model and the number of sites.
    pub fn from_json(text: &str, cfg: &ModelConfig, sites: usize) -> Result<Self> {
        let rec: PlacementRecord = serde_json::from_str(text)?;
        if rec.n_experts != cfg.n_experts || rec.held.len() != sites {
            bail!(
                "placement for {} sites of {} experts, the run has {sites} sites of {}",
                rec.held.len(),
                rec.n_experts,
                cfg.n_experts
            );
        }
        let mut out = Vec::with_capacity(sites);
        for (s, layers) in rec.held.into_iter().enumerate() {
            if layers.len() != cfg.n_layers {
                bail!(
                    "placement of site {s} has {} layers, the model {}",
                    layers.len(),
                    cfg.n_layers
                );
            }
            let mut per_layer = Vec::with_capacity(layers.len());
            for mut l in layers {
                l.sort_unstable();
                l.dedup();
                if l.iter().any(|&e| e >= cfg.n_experts) {
                    bail!("placement of site {s} names an expert ≥ {}", cfg.n_experts);
                }
                per_layer.push(l);
            }
            out.push(Residency {
                per_layer,
                n_experts: cfg.n_experts,
            });
        }
        Ok(Self { sites: out })
    }
}

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

    pub fn from_held(n_experts: usize, mut held: Vec<Vec<usize>>) -> Self {
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

    /// Load-aware placement with the same budget as round-robin: E·ρ/M experts per site,
    /// E·ρ holder slots. Every expert keeps at least one holder and each further slot goes
    /// to the expert with the largest load per holder (D'Hondt), at most M holders each;
    /// experts are then dealt, most holders first, to the sites with the most free slots
    /// (ties: lower id).
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

    #[test]
    fn placement_round_trips_through_json_and_is_checked() {
        let cfg = ModelConfig::preset("tiny").unwrap();
        let layers = vec![
            ExpertPlacement::load_aware(&[9.0, 1.0, 1.0, 1.0, 5.0, 1.0, 1.0, 1.0], 4, 2),
            ExpertPlacement::round_robin(8, 4, 2).unwrap(),
        ];
        let p = Placement::from_layers(&layers, 8);
        assert_eq!(p.layers(), layers);
        assert_eq!(p.holders_of(1, 0), vec![0, 3]);
        let back = Placement::from_json(&p.to_json(), &cfg, 4).unwrap();
        assert_eq!(back, p);
        let err = Placement::from_json(&p.to_json(), &cfg, 3).unwrap_err();
        assert!(err.to_string().contains("4 sites"), "{err}");
    }
}
