//! The scenario resolved from a run's config: who trains which steps, who is present at each
//! round's end, where stalls and slow-downs fall, who rejoins, and how links change. Every
//! site (and Photon's aggregator) builds the same [`Plan`] from the config, so they agree on
//! participation without exchanging a message (a deadline aside, see the module doc of
//! [`super`]).
//!
//! Lifecycle events are ordered in "step time": a leave or rejoin at round r and a crash at
//! round r happen before step r·H + 1, a crash at step s before step s. Per site the events
//! must alternate present → lost (crash, leave) → present (rejoin) …; two lifecycle events
//! of one site at the same time, a loss while lost, a rejoin while present, and a stall of a
//! site at a step it does not train are contradictions, refused with a one-line error.

use std::collections::BTreeMap;
use std::time::Duration;

use super::{Fault, FaultKind, OnSiteLoss};
use crate::config::{Method, Placement, RunConfig};
use crate::model::ConfigError;
use crate::net::Backend;
use crate::units::{parse_duration, parse_rate_bps};

/// Longest accepted stall.
pub const MAX_STALL: Duration = Duration::from_secs(24 * 3600);

/// A site's part in one round.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum RoundRole {
    /// Trains every step and reaches the round end.
    Present,
    /// Trains from the round's start up to step `at_step` − 1, then crashes.
    Crashes { at_step: usize },
    /// Does not train (crashed or left before the round).
    Absent,
}

/// How a site comes back at the start of a round.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Return {
    /// After a crash: a new process, AdamW moments from zero.
    AfterCrash,
    /// After a leave: its AdamW moments kept.
    AfterLeave,
}

/// A change of a directed link at a time (link faults).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct LinkChange {
    pub at: Duration,
    pub from: usize,
    pub to: usize,
    pub rate_bps: Option<u64>,
    pub delay: Option<Duration>,
}

/// The resolved scenario (see the module doc).
#[derive(Clone, Debug)]
pub struct Plan {
    sites: usize,
    h: usize,
    rounds: usize,
    /// roles[round][site]
    roles: Vec<Vec<RoundRole>>,
    /// returns[round][site]: comes back at the start of the round.
    returns: Vec<Vec<Option<Return>>>,
    stalls: BTreeMap<(usize, usize), Duration>,
    /// slow[round][site]: compute factor.
    slow: Vec<Vec<f64>>,
    pub link_changes: Vec<LinkChange>,
    pub on_site_loss: OnSiteLoss,
    pub deadline: Option<Duration>,
}

fn bad(i: usize, field: &str, value: impl ToString, allowed: impl Into<String>) -> ConfigError {
    ConfigError::new(format!("faults[{i}].{field}"), value, allowed)
}

/// The method's behaviour on a lost site (explicit knob or the method's default).
pub fn on_site_loss(cfg: &RunConfig) -> OnSiteLoss {
    cfg.on_site_loss.unwrap_or(match cfg.method {
        Method::Photon | Method::Fomoe => OnSiteLoss::Continue,
        _ => OnSiteLoss::Fail,
    })
}

impl Plan {
    /// Resolve and check the scenario of `cfg` (faults, deadline, loss policy).
    pub fn new(cfg: &RunConfig) -> Result<Self, ConfigError> {
        let (sites, h, rounds) = (cfg.sites, cfg.inner_steps.max(1), cfg.rounds());
        let mut plan = Plan {
            sites,
            h,
            rounds,
            roles: vec![vec![RoundRole::Present; sites]; rounds],
            returns: vec![vec![None; sites]; rounds],
            stalls: BTreeMap::new(),
            slow: vec![vec![1.0; sites]; rounds],
            link_changes: Vec::new(),
            on_site_loss: on_site_loss(cfg),
            deadline: None,
        };
        plan.deadline = check_deadline(cfg)?;
        if cfg.on_site_loss.is_some() && cfg.method == Method::Single {
            return Err(ConfigError::new(
                "on_site_loss",
                cfg.on_site_loss.map_or("", |o| o.name()),
                "applies to ddp, diloco, photon and fomoe (single has one site)",
            ));
        }
        // Lifecycle events per site: (time in steps, order, fault index, kind).
        let mut lifecycle: BTreeMap<usize, Vec<(usize, usize, FaultKind)>> = BTreeMap::new();
        for (i, f) in cfg.faults.iter().enumerate() {
            if f.site >= sites {
                return Err(bad(
                    i,
                    "site",
                    f.site,
                    format!("must be below sites = {sites}"),
                ));
            }
            plan.check_fields(i, f)?;
            match f.kind {
                FaultKind::Crash => {
                    let t = match (f.at_step, f.at_round) {
                        (Some(s), None) => check_step(i, s, cfg.steps)?,
                        (None, Some(r)) => check_round(i, r, rounds)? * h + 1,
                        _ => {
                            return Err(bad(
                                i,
                                "at_step",
                                "-",
                                "a crash needs exactly one of at_step and at_round",
                            ))
                        }
                    };
                    lifecycle.entry(f.site).or_default().push((t, i, f.kind));
                }
                FaultKind::Leave | FaultKind::Rejoin => {
                    let r = f
                        .at_round
                        .ok_or_else(|| bad(i, "at_round", "-", "required for this kind"))?;
                    let r = check_round(i, r, rounds)?;
                    if f.kind == FaultKind::Rejoin && r == 0 {
                        return Err(bad(
                            i,
                            "at_round",
                            0,
                            "a rejoin needs an earlier round to miss",
                        ));
                    }
                    lifecycle
                        .entry(f.site)
                        .or_default()
                        .push((r * h + 1, i, f.kind));
                }
                FaultKind::Stall => {
                    let s = f
                        .at_step
                        .ok_or_else(|| bad(i, "at_step", "-", "required for a stall"))?;
                    let s = check_step(i, s, cfg.steps)?;
                    let text = f
                        .duration
                        .as_deref()
                        .ok_or_else(|| bad(i, "duration", "-", "required for a stall"))?;
                    let d = parse_duration(text)
                        .map_err(|e| bad(i, "duration", text, e.to_string()))?;
                    if d.is_zero() || d > MAX_STALL {
                        return Err(bad(i, "duration", text, "must be in (0s, 24h]"));
                    }
                    if plan.stalls.insert((f.site, s), d).is_some() {
                        return Err(bad(
                            i,
                            "at_step",
                            s,
                            format!("site {} already stalls at this step", f.site),
                        ));
                    }
                }
                FaultKind::Slow => {
                    let r = f
                        .at_round
                        .ok_or_else(|| bad(i, "at_round", "-", "required for a slow-down"))?;
                    let r = check_round(i, r, rounds)?;
                    let factor = f
                        .factor
                        .ok_or_else(|| bad(i, "factor", "-", "required for a slow-down"))?;
                    if !(factor.is_finite() && (1.0..=1000.0).contains(&factor)) {
                        return Err(bad(i, "factor", factor, "must be in [1, 1000]"));
                    }
                    let same_round = cfg.faults[..i].iter().any(|g| {
                        g.kind == FaultKind::Slow && g.site == f.site && g.at_round == Some(r)
                    });
                    if same_round {
                        return Err(bad(
                            i,
                            "at_round",
                            r,
                            format!("site {} is already given a factor for this round", f.site),
                        ));
                    }
                }
                FaultKind::Link => plan.link_fault(i, f, cfg)?,
            }
        }
        plan.resolve_slow(cfg);
        for (site, mut events) in lifecycle {
            events.sort_by_key(|e| (e.0, e.1));
            plan.apply_lifecycle(site, &events, cfg)?;
        }
        plan.check_stalls(cfg)?;
        plan.check_coverage(cfg)?;
        Ok(plan)
    }

    fn check_fields(&self, i: usize, f: &Fault) -> Result<(), ConfigError> {
        let uses = |field: &str| -> bool {
            match f.kind {
                FaultKind::Crash => matches!(field, "at_step" | "at_round"),
                FaultKind::Stall => matches!(field, "at_step" | "duration"),
                FaultKind::Slow => matches!(field, "at_round" | "factor"),
                FaultKind::Leave | FaultKind::Rejoin => field == "at_round",
                FaultKind::Link => {
                    matches!(field, "at_time" | "peer" | "directed" | "rate" | "delay")
                }
            }
        };
        let given = [
            ("at_step", f.at_step.is_some()),
            ("at_round", f.at_round.is_some()),
            ("at_time", f.at_time.is_some()),
            ("duration", f.duration.is_some()),
            ("factor", f.factor.is_some()),
            ("peer", f.peer.is_some()),
            ("directed", f.directed),
            ("rate", f.rate.is_some()),
            ("delay", f.delay.is_some()),
        ];
        for (field, set) in given {
            if set && !uses(field) {
                return Err(bad(
                    i,
                    field,
                    "given",
                    format!("not used by kind = {}", f.kind.name()),
                ));
            }
        }
        Ok(())
    }

    fn link_fault(&mut self, i: usize, f: &Fault, cfg: &RunConfig) -> Result<(), ConfigError> {
        if cfg.network.backend != Backend::Sim {
            return Err(bad(i, "kind", "link", format!("link changes are emulated on network.backend = sim only ({} applies static links)", cfg.network.backend)));
        }
        let text = f
            .at_time
            .as_deref()
            .ok_or_else(|| bad(i, "at_time", "-", "required for a link change"))?;
        let at = parse_duration(text).map_err(|e| bad(i, "at_time", text, e.to_string()))?;
        let rate_bps = match &f.rate {
            Some(r) => Some(parse_rate_bps(r).map_err(|e| bad(i, "rate", r, e.to_string()))?),
            None => None,
        };
        let delay = match &f.delay {
            Some(d) => Some(parse_duration(d).map_err(|e| bad(i, "delay", d, e.to_string()))?),
            None => None,
        };
        if rate_bps.is_none() && delay.is_none() {
            return Err(bad(
                i,
                "rate",
                "-",
                "a link change needs rate, delay or both",
            ));
        }
        let check = crate::net::LinkSpec {
            rate_bps: rate_bps.unwrap_or(crate::net::link::MIN_RATE_BPS),
            delay: delay.unwrap_or_default(),
            jitter: Duration::ZERO,
        };
        check.validate().map_err(|e| {
            bad(
                i,
                if rate_bps.is_some() { "rate" } else { "delay" },
                "-",
                e.to_string(),
            )
        })?;
        let world = cfg.endpoints();
        if world < 2 {
            return Err(bad(i, "kind", "link", "a run of one site has no links"));
        }
        let pairs: Vec<(usize, usize)> = match f.peer {
            Some(p) if p >= world || p == f.site => {
                return Err(bad(
                    i,
                    "peer",
                    p,
                    format!("must be another endpoint below {world}"),
                ))
            }
            Some(p) if f.directed => vec![(f.site, p)],
            Some(p) => vec![(f.site, p), (p, f.site)],
            None if f.directed => {
                return Err(bad(i, "directed", true, "needs a peer"));
            }
            None => (0..world)
                .filter(|&p| p != f.site)
                .flat_map(|p| [(f.site, p), (p, f.site)])
                .collect(),
        };
        for (from, to) in pairs {
            let dup = self
                .link_changes
                .iter()
                .any(|c| c.at == at && c.from == from && c.to == to);
            if dup {
                return Err(bad(
                    i,
                    "at_time",
                    text,
                    format!("link {from} → {to} already changes at this time"),
                ));
            }
            self.link_changes.push(LinkChange {
                at,
                from,
                to,
                rate_bps,
                delay,
            });
        }
        self.link_changes.sort_by_key(|c| (c.at, c.from, c.to));
        Ok(())
    }

    fn resolve_slow(&mut self, cfg: &RunConfig) {
        let mut by_round: Vec<(usize, usize, f64)> = cfg
            .faults
            .iter()
            .filter(|f| f.kind == FaultKind::Slow)
            .filter_map(|f| Some((f.at_round?, f.site, f.factor?)))
            .collect();
        by_round.sort_by_key(|&(r, s, _)| (r, s));
        for row in &mut self.slow {
            row.iter_mut().for_each(|x| *x = 1.0);
        }
        for (r, s, factor) in by_round {
            for row in &mut self.slow[r.min(self.rounds)..] {
                row[s] = factor;
            }
        }
    }

    fn apply_lifecycle(
        &mut self,
        site: usize,
        events: &[(usize, usize, FaultKind)],
        cfg: &RunConfig,
    ) -> Result<(), ConfigError> {
        let h = self.h;
        let mut lost: Option<(usize, FaultKind)> = None; // (since step time, how)
        for (n, &(t, i, kind)) in events.iter().enumerate() {
            if n > 0 && events[n - 1].0 == t {
                return Err(bad(
                    i,
                    "kind",
                    kind.name(),
                    format!(
                        "contradicts faults[{}] of site {site} at the same time",
                        events[n - 1].1
                    ),
                ));
            }
            match kind {
                FaultKind::Crash | FaultKind::Leave => {
                    if let Some((since, how)) = lost {
                        return Err(bad(
                            i,
                            "kind",
                            kind.name(),
                            format!(
                                "site {site} is already lost ({} before step {since})",
                                how.name()
                            ),
                        ));
                    }
                    if kind == FaultKind::Leave && cfg.method == Method::Single {
                        return Err(bad(i, "kind", "leave", "single has one site to leave"));
                    }
                    lost = Some((t, kind));
                }
                FaultKind::Rejoin => {
                    let Some((_, how)) = lost.take() else {
                        return Err(bad(
                            i,
                            "kind",
                            "rejoin",
                            format!("site {site} is not absent before round {}", (t - 1) / h),
                        ));
                    };
                    if self.on_site_loss == OnSiteLoss::Fail {
                        return Err(bad(i, "kind", "rejoin", format!("method {} fails the run on a lost site: set on_site_loss = \"continue\"", cfg.method.name())));
                    }
                    let r = (t - 1) / h;
                    self.returns[r][site] = Some(if how == FaultKind::Crash {
                        Return::AfterCrash
                    } else {
                        Return::AfterLeave
                    });
                }
                _ => unreachable!("only lifecycle kinds"),
            }
        }
        // Roles from the event list.
        let mut events_iter = events.iter().peekable();
        let mut absent = false;
        for r in 0..self.rounds {
            let start = r * h + 1;
            let end = start + h; // exclusive
            let mut role = if absent {
                RoundRole::Absent
            } else {
                RoundRole::Present
            };
            while let Some(&&(t, _, kind)) = events_iter.peek() {
                if t >= end {
                    break;
                }
                events_iter.next();
                match kind {
                    FaultKind::Rejoin => {
                        absent = false;
                        role = RoundRole::Present;
                    }
                    FaultKind::Leave => {
                        absent = true;
                        role = RoundRole::Absent;
                    }
                    FaultKind::Crash => {
                        absent = true;
                        role = if t == start {
                            RoundRole::Absent
                        } else {
                            RoundRole::Crashes { at_step: t }
                        };
                    }
                    _ => {}
                }
            }
            self.roles[r][site] = role;
        }
        Ok(())
    }

    fn check_stalls(&self, cfg: &RunConfig) -> Result<(), ConfigError> {
        for (i, f) in cfg.faults.iter().enumerate() {
            if f.kind == FaultKind::Stall {
                let s = f.at_step.unwrap_or(1);
                if !self.trains(f.site, s) {
                    return Err(bad(
                        i,
                        "at_step",
                        s,
                        format!("site {} does not train step {s} (it is absent)", f.site),
                    ));
                }
            }
        }
        Ok(())
    }

    fn check_coverage(&self, cfg: &RunConfig) -> Result<(), ConfigError> {
        let lifecycle = cfg.faults.iter().any(|f| {
            matches!(
                f.kind,
                FaultKind::Crash | FaultKind::Leave | FaultKind::Rejoin
            )
        });
        let continues = self.on_site_loss == OnSiteLoss::Continue;
        if cfg.method == Method::Fomoe
            && cfg.fomoe.placement == Placement::LoadAware
            && ((lifecycle && continues) || self.deadline.is_some())
        {
            return Err(ConfigError::new(
                "fomoe.placement",
                "load_aware",
                "is not combined with round_deadline, or with crash, leave and rejoin under on_site_loss = continue (placement over a changing set of sites is not implemented)",
            ));
        }
        if self.on_site_loss == OnSiteLoss::Fail {
            return Ok(());
        }
        for r in 0..self.rounds {
            if self.present(r).is_empty() {
                return Err(ConfigError::new(
                    "faults",
                    format!("round {r}"),
                    "leave no site present at the end of the round (at least one must train it)",
                ));
            }
        }
        Ok(())
    }

    /// Number of rounds.
    pub fn rounds(&self) -> usize {
        self.rounds
    }

    /// The part of `site` in `round`.
    pub fn role(&self, site: usize, round: usize) -> RoundRole {
        self.roles[round][site]
    }

    /// Whether `site` trains step `step` (1-based).
    pub fn trains(&self, site: usize, step: usize) -> bool {
        let r = (step.max(1) - 1) / self.h;
        match self.roles.get(r).map(|x| x[site]) {
            Some(RoundRole::Present) => true,
            Some(RoundRole::Crashes { at_step }) => step < at_step,
            _ => false,
        }
    }

    /// Sites present at the end of `round` (they may take part in its sync), ascending.
    pub fn present(&self, round: usize) -> Vec<usize> {
        (0..self.sites)
            .filter(|&s| self.roles[round][s] == RoundRole::Present)
            .collect()
    }

    /// Sites training step `step` (DDP's all-reduce members), ascending.
    pub fn training(&self, step: usize) -> Vec<usize> {
        (0..self.sites).filter(|&s| self.trains(s, step)).collect()
    }

    /// How `site` comes back at the start of `round`, if it does.
    pub fn returns(&self, site: usize, round: usize) -> Option<Return> {
        self.returns.get(round).and_then(|r| r[site])
    }

    /// Sites that come back at the start of `round`.
    pub fn returning(&self, round: usize) -> Vec<usize> {
        (0..self.sites)
            .filter(|&s| self.returns(s, round).is_some())
            .collect()
    }

    /// Stall before step `step` of `site`.
    pub fn stall(&self, site: usize, step: usize) -> Option<Duration> {
        self.stalls.get(&(site, step)).copied()
    }

    /// Compute factor of `site` in `round`.
    pub fn slow_factor(&self, site: usize, round: usize) -> f64 {
        self.slow.get(round).map_or(1.0, |r| r[site])
    }

    /// The site that leads `round`'s deadline and evaluates its global model: the lowest
    /// site present at the round's end (None when none is).
    pub fn leader(&self, round: usize) -> Option<usize> {
        self.present(round).first().copied()
    }

    /// Whether the scenario has a lifecycle fault (crash, leave, rejoin) at all.
    pub fn has_losses(&self) -> bool {
        self.roles
            .iter()
            .any(|r| r.iter().any(|x| *x != RoundRole::Present))
    }
}

fn check_step(i: usize, s: usize, steps: usize) -> Result<usize, ConfigError> {
    if s == 0 || s > steps {
        return Err(bad(i, "at_step", s, format!("must be in 1..={steps}")));
    }
    Ok(s)
}

fn check_round(i: usize, r: usize, rounds: usize) -> Result<usize, ConfigError> {
    if r >= rounds {
        return Err(bad(
            i,
            "at_round",
            r,
            format!("must be below the run's {rounds} rounds"),
        ));
    }
    Ok(r)
}

fn check_deadline(cfg: &RunConfig) -> Result<Option<Duration>, ConfigError> {
    let Some(text) = &cfg.round_deadline else {
        return Ok(None);
    };
    if !cfg.method.has_rounds() {
        return Err(ConfigError::new(
            "round_deadline",
            text,
            format!(
                "applies to diloco, photon and fomoe (methods with rounds), not {}",
                cfg.method.name()
            ),
        ));
    }
    let d = parse_duration(text)
        .map_err(|e| ConfigError::new("round_deadline", text, e.to_string()))?;
    if d.is_zero() || d > MAX_STALL {
        return Err(ConfigError::new(
            "round_deadline",
            text,
            "must be in (0s, 24h]",
        ));
    }
    Ok(Some(d))
}
