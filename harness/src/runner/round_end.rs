//! The end of a round at one site: who takes part (the plan, or the deadline's decision),
//! the synchronisation among the participants, recovery for late and returning sites, and
//! the evaluation of the global model; see the phases in [`super::site`].

use std::time::Duration;

use anyhow::Result;

use super::clock;
use super::deadline;
use super::eval::{self, EvalPlan, LocalEval};
use super::recovery;
use super::sink::SiteSink;
use super::site::{apply_relayout, SiteRun, StepRecord};
use crate::config::{Method, PhotonTopology};
use crate::net::Comm;
use crate::scenario::participation::{ParticipationRow, Status};
use crate::scenario::plan::{Return, RoundRole};
use crate::strategy::round_state::LinkTotals;
use crate::strategy::{replicated_inner_state, Strategy, SyncOutcome};

/// The global model the evaluator writes beside the sites' checkpoints.
pub const GLOBAL_CHECKPOINT: &str = "ckpt-global.safetensors";

/// What a round's end did at this site (its participation row, and what eval needs).
pub(super) struct RoundEnd {
    status: Status,
    local: Option<LocalEval>,
    ready_s: Option<f64>,
    recovery: LinkTotals,
    control: LinkTotals,
    pub(super) steps_trained: usize,
    pub(super) fault: Duration,
    /// The site's synchronisation time of the round (its last step's comm), ms.
    pub(super) sync_ms: f64,
    rejoined: bool,
}

impl RoundEnd {
    pub(super) fn row(&self, round: usize, site: usize) -> ParticipationRow {
        ParticipationRow {
            round,
            site,
            status: self.status,
            rejoined: self.rejoined,
            steps_trained: self.steps_trained,
            ready_s: self.ready_s,
            recovery_recv: self.recovery.received.payload,
            recovery_sent: self.recovery.sent.payload,
            control_sent: self.control.sent.payload,
            fault_ms: self.fault.as_secs_f64() * 1e3,
        }
    }
}

impl SiteRun<'_> {
    /// A present site's round end, after its last step: local eval, who takes part, the
    /// sync (timed into the step), recovery.
    pub(super) fn round_end(
        &mut self,
        round: usize,
        strategy: &mut dyn Strategy,
        comm: &mut dyn Comm,
        step: &mut StepRecord,
    ) -> Result<RoundEnd> {
        let cfg = self.ctx.cfg;
        let sites = cfg.sites;
        let is_eval =
            (round + 1).is_multiple_of(cfg.eval_every_rounds) || round + 1 == cfg.rounds();
        let local = if is_eval {
            let (m, data) = (&self.st.model, self.ctx.data);
            let ((losses, probe), dt) = clock::measure(self.ctx.compute_gate, || {
                (
                    eval::eval_domains(m, data, cfg.eval_sequences, self.ctx.model_cfg.batch_size),
                    eval::probe_topk(m, data),
                )
            });
            step.eval = dt;
            Some(LocalEval {
                losses: losses?,
                probe: probe?,
            })
        } else {
            None
        };
        let ready_s = comm.now().as_secs_f64();
        let before = LinkTotals::read(comm, sites);
        let (participants, t) = clock::comm(comm, |c| self.decide(round, true, c));
        let participants = participants?;
        let control = LinkTotals::read(comm, sites) - before;
        self.round.traffic.control = self.round.traffic.control + control;
        step.comm += t.elapsed;
        step.comm_cpu += t.cpu;
        let me_in = participants.contains(&self.ctx.site);
        if me_in {
            self.round.participants = participants.clone();
            let before = LinkTotals::read(comm, sites);
            let (st, rs, run_cfg) = (&mut self.st, &mut self.round, self.ctx.cfg);
            let (outcome, t) = clock::comm(comm, |c| -> Result<u64> {
                let SyncOutcome {
                    expected_payload_sent,
                    relayout,
                } = strategy.end_round(st, rs, c)?;
                if let Some(r) = relayout {
                    apply_relayout(run_cfg, st, rs, r)?;
                }
                Ok(expected_payload_sent)
            });
            step.expected_payload += outcome?;
            step.training = step.training + (LinkTotals::read(comm, sites) - before);
            step.comm += t.elapsed;
            step.comm_cpu += t.cpu;
        }
        let (recovery, t) = clock::comm(comm, |c| self.recover(round, &participants, c));
        step.comm += t.elapsed;
        step.comm_cpu += t.cpu;
        Ok(RoundEnd {
            status: if me_in {
                Status::Participant
            } else {
                Status::Late
            },
            local,
            ready_s: Some(ready_s),
            recovery: recovery?,
            control,
            steps_trained: 0,
            fault: Duration::ZERO,
            sync_ms: 0.0,
            rejoined: self.plan.returns(self.ctx.site, round).is_some(),
        })
    }

    /// The round end of a present site too far behind to make this round's deadline (see
    /// [`deadline`]): it did not train; it hears the decision, reports (late), catches up.
    pub(super) fn skipped(&mut self, round: usize, comm: &mut dyn Comm) -> Result<RoundEnd> {
        let sites = self.ctx.cfg.sites;
        let before = LinkTotals::read(comm, sites);
        let leader = self
            .deadline_leader(round)
            .expect("a round with a deadline has a leader");
        deadline::send_skip(comm, leader, round)?;
        let decision = deadline::await_decision(comm, leader, round)?;
        self.last_deadline = Some(decision.until);
        let control = LinkTotals::read(comm, sites) - before;
        self.round.traffic.control = self.round.traffic.control + control;
        let recovery = self.recover(round, &decision.participants, comm)?;
        Ok(RoundEnd {
            status: Status::Late,
            local: None,
            ready_s: None,
            recovery,
            control,
            steps_trained: 0,
            fault: Duration::ZERO,
            sync_ms: 0.0,
            rejoined: false,
        })
    }

    /// Whether this site, left out of the round just ended, is so far behind that it cannot
    /// make the next round's deadline (see [`deadline`]).
    pub(super) fn is_behind(&self, end: &RoundEnd, comm: &dyn Comm) -> bool {
        match (end.status, self.last_deadline, self.plan.deadline) {
            (Status::Late, Some(until), Some(d)) => comm.now() > until + d,
            _ => false,
        }
    }

    /// The round end of a site not present at it (absent, or crashed in it): the deadline's
    /// decision, then recovery (as a recipient when it comes back next round).
    pub(super) fn away(
        &mut self,
        round: usize,
        role: RoundRole,
        comm: &mut dyn Comm,
    ) -> Result<RoundEnd> {
        let sites = self.ctx.cfg.sites;
        let before = LinkTotals::read(comm, sites);
        let participants = self.decide(round, false, comm)?;
        let control = LinkTotals::read(comm, sites) - before;
        self.round.traffic.control = self.round.traffic.control + control;
        let recovery = self.recover(round, &participants, comm)?;
        Ok(RoundEnd {
            status: if role == RoundRole::Absent {
                Status::Absent
            } else {
                Status::Crashed
            },
            local: None,
            ready_s: None,
            recovery,
            control,
            steps_trained: 0,
            fault: Duration::ZERO,
            sync_ms: 0.0,
            rejoined: false,
        })
    }

    /// The endpoint that leads the deadline of `round`: Photon's aggregator in star mode,
    /// else the lowest present site.
    fn deadline_leader(&self, round: usize) -> Option<usize> {
        let cfg = self.ctx.cfg;
        if cfg.method == Method::Photon && cfg.photon_topology == PhotonTopology::Star {
            Some(cfg.sites)
        } else {
            self.plan.leader(round)
        }
    }

    /// The participants of `round`: the sites present at its end, or, with a deadline, those
    /// whose report reached the leader in time (see [`deadline`]).
    fn decide(&mut self, round: usize, present: bool, comm: &mut dyn Comm) -> Result<Vec<usize>> {
        let Some(d) = self.plan.deadline else {
            return Ok(self.plan.present(round));
        };
        let leader = self
            .deadline_leader(round)
            .expect("a round with a deadline has a leader");
        let site = self.ctx.site;
        if leader != site {
            if present {
                deadline::send_ready(comm, leader, round)?;
            }
            let decision = deadline::await_decision(comm, leader, round)?;
            self.last_deadline = Some(decision.until);
            return Ok(decision.participants);
        }
        let present = self.plan.present(round);
        let until = self.round_open + d;
        self.last_deadline = Some(until);
        let in_time = comm.now() <= until;
        let everyone: Vec<usize> = (0..self.ctx.cfg.sites).collect();
        deadline::lead(
            comm,
            round,
            until,
            Some(in_time),
            &present,
            &everyone,
            &mut self.owed_reports,
        )
    }

    /// Late sites of `round` and sites coming back in the next one fetch the global state.
    fn recover(
        &mut self,
        round: usize,
        participants: &[usize],
        comm: &mut dyn Comm,
    ) -> Result<LinkTotals> {
        let site = self.ctx.site;
        let mut recipients: Vec<usize> = self
            .plan
            .present(round)
            .into_iter()
            .filter(|s| !participants.contains(s))
            .collect();
        if round + 1 < self.plan.rounds() {
            recipients.extend(self.plan.returning(round + 1));
        }
        recipients.sort_unstable();
        recipients.dedup();
        if recipients.is_empty() {
            return Ok(LinkTotals::default());
        }
        if self.plan.returns(site, round + 1) == Some(Return::AfterCrash) {
            // A new process: its inner optimiser starts from zero.
            self.st.inner.reset();
        }
        if recipients.contains(&site) {
            for &d in participants {
                deadline::drain_owed(comm, &mut self.owed_reports, d)?;
            }
        }
        let sites = self.ctx.cfg.sites;
        let before = LinkTotals::read(comm, sites);
        recovery::recover(
            &mut self.st,
            &mut self.round,
            comm,
            participants,
            &recipients,
            replicated_inner_state(self.ctx.cfg.method),
        )?;
        let moved = LinkTotals::read(comm, sites) - before;
        self.round.traffic.recovery = self.round.traffic.recovery + moved;
        Ok(moved)
    }

    /// The eval protocol after an eval round's end; the evaluator writes the rows.
    pub(super) fn eval(
        &mut self,
        round: usize,
        end: &RoundEnd,
        comm: &mut dyn Comm,
        sink: &mut dyn SiteSink,
    ) -> Result<()> {
        let cfg = self.ctx.cfg;
        let is_eval =
            (round + 1).is_multiple_of(cfg.eval_every_rounds) || round + 1 == cfg.rounds();
        let Some(evaluator) = self.plan.leader(round) else {
            return Ok(());
        };
        if !is_eval {
            return Ok(());
        }
        if let Some(local) = &end.local {
            sink.probe(round, "local", &local.probe)?;
        }
        let present = self.plan.present(round);
        let plan = EvalPlan {
            round,
            evaluator,
            present: &present,
            local: end.local.as_ref().map(|l| l.losses.as_slice()),
            sync_ms: end.sync_ms,
        };
        let sites = cfg.sites;
        let before = LinkTotals::read(comm, sites);
        let owed = &mut self.owed_reports;
        let global =
            eval::evaluate_global(self.ctx, &self.st, &self.round, comm, &plan, |c, s| {
                deadline::drain_owed(c, owed, s)
            })?;
        self.round.traffic.eval =
            self.round.traffic.eval + (LinkTotals::read(comm, sites) - before);
        if let Some(g) = global {
            sink.probe(round, "global", &g.probe)?;
            sink.rounds(&g.rows)?;
            if let Some(dir) = self.checkpoint_dir(round) {
                // The global model as evaluated: every expert, frozen ones at their last
                // global value.
                let store = g.assembled.as_ref().unwrap_or(&self.st.model.store);
                crate::checkpoint::CheckpointWriter::new()
                    .model(store)
                    .meta("round", round)
                    .meta("config_hash", cfg.checkpoint_hash())
                    .write(&dir.join(GLOBAL_CHECKPOINT))?;
            }
        }
        Ok(())
    }
}
