//! One site's training loop, shared by every method and backend.
//!
//! A [`SiteRun`] owns what the site trains ([`SiteState`]: model and inner AdamW) and what
//! it keeps across rounds ([`RoundState`]: step, placement, outer optimiser, traffic), and
//! runs the loop as named phases, each round as the scenario ([`Plan`]) has it for this site:
//!
//! ```text
//! for each round:
//!     lifecycle     a scripted loss (crash, leave) fails the run under on_site_loss = fail
//!     for each step this site trains (all H, up to a crash, none when absent):
//!         faults        a stall before the step; a slow site's compute stretched
//!         train step    data → forward/backward → strategy.on_gradient (DDP syncs here,
//!                       among the sites training the step) → clip + AdamW
//!         round end     (last step) local eval at eval rounds → deadline (who takes part)
//!                       → strategy.end_round among the participants (its relayout
//!                       applied) → recovery (late and returning sites fetch the global state)
//!         step row      telemetry of the step (its traffic added to the round state)
//!     away          (not present at the round's end) the deadline's decision, recovery
//!     eval          (eval rounds) the global model, at the evaluator (see [`super::eval`])
//!     checkpoint    (every `checkpoint_every_rounds`) site and round state
//!     participation this site's part in the round (participation.csv)
//! ```
//!
//! Time: `data_ms + compute_ms + comm_ms + opt_ms + fault_ms = wall_ms` per step by
//! construction on every backend (see [`super::clock`]); evaluation happens inside a step's
//! time window but is not part of the training step (on `sim` it does not advance the
//! clock; on real backends its time is taken out of `wall_ms`).
//! Bytes: training traffic is what moves inside `on_gradient` and `end_round`; deadline
//! (control), recovery and evaluation traffic are counted apart. All are cumulative in the
//! round state, so a resumed run continues its totals.

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};
use std::time::Duration;

use anyhow::{Context, Result};
use tch::Tensor;

use super::clock::{self, StepStart};
use super::eval;
use super::sink::SiteSink;
use crate::checkpoint::{Checkpoint, CheckpointWriter};
use crate::config::RunConfig;
use crate::data::{Batch, Dataset};
use crate::model::params::ParamStore;
use crate::model::{ForwardOutput, ModelConfig, MoeModel, ParamLayout, Residency};
use crate::net::Comm;
use crate::optim::{clip_grad_norm, AdamW};
use crate::scenario::plan::{Plan, RoundRole};
use crate::scenario::OnSiteLoss;
use crate::strategy::round_state::{LinkTotals, SiteTraffic};
use crate::strategy::{Relayout, RoundState, SiteState, Strategy};
use crate::telemetry::StepRow;

pub use super::eval::{batch_tensors, eval_domains, probe_topk};

/// Where a site's batches come from (tests substitute the joint batch of M sites).
pub trait BatchSource {
    fn batch(&mut self, step: usize) -> Result<Batch>;
}

/// The site's shard of the dataset: `Dataset::site_batch(site, M, seed, step, b)`.
pub struct ShardSource<'a> {
    pub data: &'a Dataset,
    pub site: usize,
    pub sites: usize,
    pub seed: u64,
    pub batch_size: usize,
}

impl BatchSource for ShardSource<'_> {
    fn batch(&mut self, step: usize) -> Result<Batch> {
        Ok(self.data.site_batch(
            self.site,
            self.sites,
            self.seed,
            step as u64,
            self.batch_size,
        )?)
    }
}

/// Memory a site holds, in bytes, from what it allocated.
#[derive(Clone, Debug, Default, PartialEq, serde::Serialize, serde::Deserialize)]
pub struct SiteMemory {
    pub params: usize,
    pub grads: usize,
    pub inner_optimizer: usize,
    pub outer_state: usize,
    pub total: usize,
    pub params_held: usize,
    pub experts_held: usize,
}

/// What a site reports at the end (bytes and times of this attempt; steps and tokens it
/// trained since the start of the run).
#[derive(Clone, Debug, Default, serde::Serialize, serde::Deserialize)]
pub struct SiteReport {
    pub site: usize,
    pub steps: usize,
    pub tokens: usize,
    pub memory: SiteMemory,
    pub payload_sent: u64,
    pub framing_sent: u64,
    pub expected_payload_sent: u64,
    pub eval_payload_sent: u64,
    pub compute_s: f64,
    pub comm_s: f64,
    pub clock_s: f64,
    pub final_loss: f64,
    /// Recovery payload this site received in this attempt (coming back, catching up).
    #[serde(default)]
    pub recovery_payload_received: u64,
    /// Deadline control payload this site sent in this attempt.
    #[serde(default)]
    pub control_payload_sent: u64,
    /// Steps this site trained in this attempt (`steps` counts since the run's start).
    #[serde(default)]
    pub steps_this_attempt: usize,
}

/// Everything one site needs to run.
pub struct SiteContext<'a> {
    pub cfg: &'a RunConfig,
    pub model_cfg: ModelConfig,
    pub site: usize,
    pub data: &'a Dataset,
    pub init: &'a ParamStore,
    /// Sim backend: serialises compute of the sites (threads of one process).
    pub compute_gate: Option<&'a super::gate::ComputeGate>,
    /// Save `ckpt-site<i>.safetensors` in this directory every this many rounds.
    pub checkpoint: Option<(PathBuf, usize)>,
    /// Continue from this checkpoint (written by the same site of the same run config).
    pub resume: Option<PathBuf>,
}

/// Run one site to the end. The evaluator (site 0) also evaluates the global model and
/// writes the round rows.
pub fn run_site(
    ctx: &SiteContext<'_>,
    strategy: &mut dyn Strategy,
    comm: &mut dyn Comm,
    source: &mut dyn BatchSource,
    sink: &mut dyn SiteSink,
) -> Result<SiteReport> {
    SiteRun::start(ctx, strategy)?.run(strategy, comm, source, sink)
}

/// Save a site's full state (model, AdamW moments, round state with the outer optimiser)
/// as a checkpoint of the run with config hash `cfg_hash` (atomic write).
pub fn save_site_checkpoint(
    path: &Path,
    st: &SiteState,
    round: &RoundState,
    cfg_hash: &str,
) -> Result<()> {
    let mut w = CheckpointWriter::new();
    w.model(&st.model.store)
        .adamw(&st.model.store.layout, &st.inner)
        .meta("config_hash", cfg_hash)
        .meta("site", st.site);
    round.save(&mut w, &st.model.store.layout);
    w.write(path)
}

/// Load the shared initial model (full) from a checkpoint.
pub fn load_init(path: &Path, mcfg: &ModelConfig) -> Result<ParamStore> {
    let store = ParamStore::zeros(mcfg, Residency::full(mcfg));
    Checkpoint::open(path)?.read_model(&store)?;
    Ok(store)
}

/// One site's run: its state and what it has measured (see the module doc).
pub struct SiteRun<'a> {
    pub(super) ctx: &'a SiteContext<'a>,
    pub(super) st: SiteState,
    pub(super) round: RoundState,
    pub(super) plan: Plan,
    /// Traffic at the start of this attempt (a resumed run reports only its own bytes).
    traffic_at_start: SiteTraffic,
    trained_at_start: usize,
    report: SiteReport,
    /// Late deadline reports each site owes this site (as a leader) and it has not read.
    pub(super) owed_reports: BTreeMap<usize, usize>,
    /// Run clock at the start of the current round (the deadline counts from it).
    pub(super) round_open: Duration,
    /// The deadline instant of the last round with a decision.
    pub(super) last_deadline: Option<Duration>,
    /// Too far behind to make the next round's deadline: skip its training.
    behind: bool,
}

/// What one training step did, for its row.
pub(super) struct StepRecord {
    start: StepStart,
    out: ForwardOutput,
    lr: f64,
    grad_norm: f64,
    data: Duration,
    compute: Duration,
    pub(super) comm: Duration,
    pub(super) comm_cpu: Duration,
    opt: Duration,
    /// Stall and slow-down time injected into the step.
    fault: Duration,
    /// Evaluation inside the step's window (not part of the step's wall time).
    pub(super) eval: Duration,
    /// Training traffic of the step (synchronisation only).
    pub(super) training: LinkTotals,
    pub(super) expected_payload: u64,
}

impl<'a> SiteRun<'a> {
    /// The site's state from the shared initial model, or from its checkpoint on resume.
    pub fn start(ctx: &'a SiteContext<'a>, strategy: &mut dyn Strategy) -> Result<Self> {
        let cfg = ctx.cfg;
        let mcfg = &ctx.model_cfg;
        let plan = Plan::new(cfg)?;
        let resume = match &ctx.resume {
            Some(path) => Some(open_resume_checkpoint(path, cfg)?),
            None => None,
        };
        let mut round = match &resume {
            Some(ck) => RoundState::read(ck, mcfg, cfg.sites)
                .with_context(|| format!("resuming from {}", ck_path(ctx)))?,
            None => RoundState::new(strategy.initial_placement(mcfg, cfg.sites)?),
        };
        let mut store = ParamStore::zeros(mcfg, round.residency(ctx.site).clone());
        store
            .copy_from(ctx.init)
            .map_err(anyhow::Error::msg)
            .context("loading the shared initial model")?;
        let model = MoeModel::from_store(mcfg, store);
        let inner = AdamW::new(
            cfg.optim.clone(),
            model.store.numel(),
            model.store.layout.decayed.clone(),
        );
        let mut st = SiteState {
            site: ctx.site,
            sites: cfg.sites,
            model,
            inner,
        };
        strategy.init(&mut st, &mut round)?;
        if let Some(ck) = &resume {
            ck.read_model(&st.model.store)?;
            ck.read_adamw(&st.model.store.layout, &mut st.inner)?;
            round.read_outer(ck, &st.model.store.layout)?;
            if !round.step.is_multiple_of(cfg.inner_steps) || round.step > cfg.steps {
                anyhow::bail!(
                    "{}: step {} is not a round boundary of this run",
                    ck_path(ctx),
                    round.step
                );
            }
        }
        Ok(Self {
            ctx,
            traffic_at_start: round.traffic,
            trained_at_start: round.trained_steps,
            report: SiteReport {
                site: ctx.site,
                ..Default::default()
            },
            st,
            round,
            plan,
            owed_reports: BTreeMap::new(),
            round_open: Duration::ZERO,
            last_deadline: None,
            behind: false,
        })
    }

    /// The loop of the module doc, to the end of the run.
    pub fn run(
        mut self,
        strategy: &mut dyn Strategy,
        comm: &mut dyn Comm,
        source: &mut dyn BatchSource,
        sink: &mut dyn SiteSink,
    ) -> Result<SiteReport> {
        let h = self.ctx.cfg.inner_steps;
        for round in self.round.step / h..self.ctx.cfg.rounds() {
            self.round_open = comm.now();
            let role = self.plan.role(self.ctx.site, round);
            let skip = self.behind && role == RoundRole::Present;
            let trained = if skip {
                0
            } else {
                self.lifecycle(round, role)?
            };
            let mut fault = Duration::ZERO;
            let mut end = None;
            for k in 0..trained {
                let mut step = self.train_step(round, strategy, comm, source)?;
                if k + 1 == h {
                    end = Some(self.round_end(round, strategy, comm, &mut step)?);
                }
                fault += step.fault;
                let row = self.step_row(round, &step, comm);
                if let Some(e) = end.as_mut() {
                    e.sync_ms = row.comm_ms;
                }
                sink.step(&row)?;
            }
            if trained < h && role != RoundRole::Absent && !skip {
                self.crashed(round)?;
            }
            let mut end = match end {
                Some(e) => e,
                None if skip => self.skipped(round, comm)?,
                None => self.away(round, role, comm)?,
            };
            self.behind = self.is_behind(&end, comm);
            end.steps_trained = trained;
            end.fault = fault;
            self.round.step = (round + 1) * h;
            self.eval(round, &end, comm, sink)?;
            self.checkpoint(round)?;
            sink.participation(&end.row(round, self.ctx.site))?;
        }
        self.finish(comm, sink)
    }

    /// How many steps of `round` this site trains; under `on_site_loss = fail` a scripted
    /// loss at the round's start stops the run here.
    fn lifecycle(&mut self, round: usize, role: RoundRole) -> Result<usize> {
        let h = self.ctx.cfg.inner_steps;
        let site = self.ctx.site;
        let fail = self.plan.on_site_loss == OnSiteLoss::Fail;
        let was_present = round == 0 || self.plan.role(site, round - 1) == RoundRole::Present;
        match role {
            RoundRole::Present => Ok(h),
            RoundRole::Crashes { at_step } => Ok(at_step - (round * h + 1)),
            RoundRole::Absent if fail && was_present => {
                let crash_at = round * h + 1;
                let crashed = self.ctx.cfg.faults.iter().any(|f| {
                    f.site == site
                        && f.kind == crate::config::FaultKind::Crash
                        && (f.at_step == Some(crash_at) || f.at_round == Some(round))
                });
                if crashed {
                    anyhow::bail!("injected fault: site {site} crashed at step {crash_at}");
                }
                anyhow::bail!("injected fault: site {site} left at round {round}");
            }
            RoundRole::Absent => Ok(0),
        }
    }

    /// The site stops training mid-round (a crash): the run fails under `on_site_loss =
    /// fail`; otherwise it goes dormant until it rejoins.
    fn crashed(&mut self, round: usize) -> Result<()> {
        let step = self.round.step + 1;
        if self.plan.on_site_loss == OnSiteLoss::Fail {
            anyhow::bail!(
                "injected fault: site {} crashed at step {step}",
                self.ctx.site
            );
        }
        tracing::info!(
            "site {} crashed at step {step} (round {round})",
            self.ctx.site
        );
        Ok(())
    }

    /// Faults of the step, data, forward/backward, the gradient hook (DDP's sync among the
    /// sites training the step), clipping and the inner step.
    fn train_step(
        &mut self,
        round: usize,
        strategy: &mut dyn Strategy,
        comm: &mut dyn Comm,
        source: &mut dyn BatchSource,
    ) -> Result<StepRecord> {
        let cfg = self.ctx.cfg;
        let gate = self.ctx.compute_gate;
        let site = self.ctx.site;
        let step = self.round.step;
        let start = StepStart::now(comm);
        let mut fault = Duration::ZERO;
        if let Some(d) = self.plan.stall(site, step + 1) {
            clock::pause(comm, d);
            fault += d;
        }
        let slow = self.plan.slow_factor(site, round);
        let (xy, data) = clock::compute(None, comm, || -> Result<_> {
            Ok(eval::batch_tensors(&source.batch(step)?))
        });
        let (x, y) = xy?;
        let lr = cfg.optim.lr_at(step, cfg.steps);
        let st = &mut self.st;
        let ((out, mut grad), compute) = clock::compute(gate, comm, || {
            let out = st.model.forward(&x, &y);
            let g = st.model.flat_grad(&out.loss);
            (out, g)
        });
        fault += clock::slow_down(comm, compute, slow);
        strategy.observe_routing(&out.routing);
        self.round.participants = self.plan.training(step + 1);
        let before = LinkTotals::read(comm, cfg.sites);
        let rs = &self.round;
        let (sync, t) = clock::comm(comm, |c| strategy.on_gradient(st, rs, &mut grad, c));
        let sync = sync?;
        let training = LinkTotals::read(comm, cfg.sites) - before;
        let (grad_norm, opt) = clock::compute(gate, comm, || {
            let n = clip_grad_norm(&mut grad, cfg.optim.grad_clip);
            st.inner.step(&st.model.store.flat, &grad, lr);
            n
        });
        fault += clock::slow_down(comm, opt, slow);
        self.round.step += 1;
        self.round.trained_steps += 1;
        Ok(StepRecord {
            start,
            out,
            lr,
            grad_norm,
            data,
            compute,
            comm: t.elapsed,
            comm_cpu: t.cpu,
            opt,
            fault,
            eval: Duration::ZERO,
            training,
            expected_payload: sync.expected_payload_sent,
        })
    }

    /// The step's row; adds its traffic and times to the round state and the report.
    fn step_row(&mut self, round: usize, s: &StepRecord, comm: &dyn Comm) -> StepRow {
        let mcfg = &self.ctx.model_cfg;
        let traffic = &mut self.round.traffic;
        traffic.training = traffic.training + s.training;
        traffic.expected_training_payload += s.expected_payload;
        let ce = s.out.ce.double_value(&[]);
        self.report.final_loss = ce;
        self.report.compute_s += (s.data + s.compute + s.opt).as_secs_f64();
        self.report.comm_s += s.comm.as_secs_f64();
        let skipped: i64 = s.out.routing.iter().map(|r| r.skipped_slots).sum();
        let slots: i64 = s
            .out
            .routing
            .iter()
            .map(|r| r.tokens * mcfg.top_k as i64)
            .sum();
        let ms = |d: Duration| d.as_secs_f64() * 1e3;
        // On sim evaluation does not advance the clock; on real backends it takes real time.
        let wall = match comm.clock_kind() {
            crate::net::ClockKind::Virtual => s.start.elapsed(comm),
            crate::net::ClockKind::Wall => s.start.elapsed(comm).saturating_sub(s.eval),
        };
        StepRow {
            site: self.ctx.site,
            step: self.round.step,
            round,
            loss: s.out.loss.double_value(&[]),
            ce,
            balance: s.out.balance.iter().sum::<f64>() / s.out.balance.len().max(1) as f64,
            lr: s.lr,
            grad_norm: s.grad_norm,
            tokens: mcfg.batch_size * mcfg.seq_len,
            data_ms: ms(s.data),
            compute_ms: ms(s.compute),
            comm_ms: ms(s.comm),
            comm_cpu_ms: ms(s.comm_cpu),
            opt_ms: ms(s.opt),
            wall_ms: ms(wall),
            clock_s: comm.now().as_secs_f64(),
            payload_sent: s.training.sent.payload,
            payload_recv: s.training.received.payload,
            framing_sent: s.training.sent.framing,
            framing_recv: s.training.received.framing,
            skip_rate: if slots > 0 {
                skipped as f64 / slots as f64
            } else {
                0.0
            },
            skip_by_layer: crate::telemetry::format_skip_by_layer(&s.out.routing, mcfg.top_k),
            fault_ms: ms(s.fault),
        }
    }

    /// The checkpoint directory when `round` is a checkpoint round (every
    /// `checkpoint_every_rounds` rounds and the last one).
    pub(super) fn checkpoint_dir(&self, round: usize) -> Option<&Path> {
        let (dir, every) = self.ctx.checkpoint.as_ref()?;
        let due = (round + 1).is_multiple_of((*every).max(1)) || round + 1 == self.ctx.cfg.rounds();
        due.then_some(dir.as_path())
    }

    /// At a checkpoint round: the site's state and its round state.
    fn checkpoint(&self, round: usize) -> Result<()> {
        if let Some(dir) = self.checkpoint_dir(round) {
            let path = dir.join(format!("ckpt-site{}.safetensors", self.ctx.site));
            self.save_checkpoint(&path)?;
        }
        Ok(())
    }

    /// Save the site's full state at a round boundary (atomic write).
    fn save_checkpoint(&self, path: &Path) -> Result<()> {
        save_site_checkpoint(path, &self.st, &self.round, &self.ctx.cfg.checkpoint_hash())
    }

    /// The site's report, handed to the sink.
    fn finish(mut self, comm: &mut dyn Comm, sink: &mut dyn SiteSink) -> Result<SiteReport> {
        // Late deadline reports still queued here are read before anything else (the final
        // barrier) receives from those sites.
        let owing: Vec<usize> = self.owed_reports.keys().copied().collect();
        for s in owing {
            super::deadline::drain_owed(comm, &mut self.owed_reports, s)?;
        }
        let mcfg = &self.ctx.model_cfg;
        let (now, then) = (self.round.traffic, self.traffic_at_start);
        let r = &mut self.report;
        r.steps = self.round.trained_steps;
        r.tokens = self.round.trained_steps * mcfg.batch_size * mcfg.seq_len;
        r.payload_sent = now.training.sent.payload - then.training.sent.payload;
        r.framing_sent = now.training.sent.framing - then.training.sent.framing;
        r.expected_payload_sent = now.expected_training_payload - then.expected_training_payload;
        r.eval_payload_sent = now.eval.sent.payload - then.eval.sent.payload;
        r.recovery_payload_received =
            now.recovery.received.payload - then.recovery.received.payload;
        r.control_payload_sent = now.control.sent.payload - then.control.sent.payload;
        r.steps_this_attempt = self.round.trained_steps - self.trained_at_start;
        r.clock_s = comm.now().as_secs_f64();
        let n = self.st.model.store.numel();
        let (inner, outer) = (self.st.inner.bytes(), self.round.outer_bytes());
        r.memory = SiteMemory {
            params: 4 * n,
            grads: 4 * n,
            inner_optimizer: inner,
            outer_state: outer,
            total: 8 * n + inner + outer,
            params_held: n,
            experts_held: self.st.model.store.residency.blocks(),
        };
        sink.finish(r)?;
        Ok(self.report)
    }
}

/// Move the site to a new placement: one relayout of the model, the AdamW moments and the
/// outer optimiser. Parameters the site keeps carry their values; a gained expert takes its
/// global state (model = global copy = the received global weights, momentum as received)
/// and starts with zero AdamW moments.
pub(super) fn apply_relayout(
    run_cfg: &RunConfig,
    st: &mut SiteState,
    round: &mut RoundState,
    r: Relayout,
) -> Result<()> {
    type Blocks<'b> = BTreeMap<(usize, usize), &'b [f32]>;
    fn moved(
        old: &ParamLayout,
        new: &ParamLayout,
        flat: &Tensor,
        incoming: &Blocks,
    ) -> Result<Tensor> {
        let v = old
            .move_values(new, flat, incoming)
            .map_err(anyhow::Error::msg)
            .context("relayout")?;
        Ok(Tensor::from_slice(&v))
    }
    let cfg = st.model.cfg.clone();
    let old = st.model.store.layout.clone();
    let mut store = ParamStore::zeros(&cfg, r.placement.of(st.site).clone());
    let new = store.layout.clone();
    let global: Blocks = r
        .incoming
        .iter()
        .map(|(&k, x)| (k, x.global.as_slice()))
        .collect();
    let momentum: Blocks = r
        .incoming
        .iter()
        .filter_map(|(&k, x)| x.momentum.as_deref().map(|m| (k, m)))
        .collect();
    let none = Blocks::new();
    store.load_flat(
        &old.move_values(&new, &st.model.store.flat, &global)
            .map_err(anyhow::Error::msg)
            .context("relayout of the model")?,
    );
    let mut model = MoeModel::from_store(&cfg, store);
    model.skip_policy = st.model.skip_policy;
    model.aux_scope = st.model.aux_scope;
    let mut inner = AdamW::new(st.inner.cfg.clone(), new.total, new.decayed.clone());
    inner.step = st.inner.step;
    inner.exp_avg = moved(&old, &new, &st.inner.exp_avg, &none)?;
    inner.exp_avg_sq = moved(&old, &new, &st.inner.exp_avg_sq, &none)?;
    if let Some(o) = round.outer.as_mut() {
        o.plan = crate::strategy::outer::OuterPlan::for_layout(&new, &run_cfg.resolved_outer());
        o.global = moved(&old, &new, &o.global, &global)?;
        if let Some(m) = o.momentum.as_mut() {
            *m = moved(&old, &new, m, &momentum)?;
        }
    }
    st.model = model;
    st.inner = inner;
    round.placement = r.placement;
    Ok(())
}

fn open_resume_checkpoint(path: &Path, cfg: &RunConfig) -> Result<Checkpoint> {
    let ck = Checkpoint::open(path)?;
    if ck.meta("config_hash").as_deref() != Some(cfg.checkpoint_hash().as_str()) {
        anyhow::bail!(
            "{}: checkpoint of a different run configuration (config hash differs)",
            path.display()
        );
    }
    Ok(ck)
}

fn ck_path(ctx: &SiteContext<'_>) -> String {
    ctx.resume
        .as_ref()
        .map(|p| p.display().to_string())
        .unwrap_or_default()
}
