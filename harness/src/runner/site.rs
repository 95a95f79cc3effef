//! One site's training loop, shared by every method and backend.
//!
//! A [`SiteRun`] owns what the site trains ([`SiteState`]: model and inner AdamW) and what
//! it keeps across rounds ([`RoundState`]: step, placement, outer optimiser, traffic), and
//! runs the loop as named phases:
//!
//! ```text
//! for each round, for each of its H steps:
//!     faults        scripted failures of this step (config `faults`)
//!     train step    data → forward/backward → strategy.on_gradient (DDP syncs here) → clip + AdamW
//!     round end     (every H steps) local eval at eval rounds → strategy.end_round (outer
//!                   sync; its relayout applied)
//!     step row      telemetry of the step (its traffic added to the round state)
//!     checkpoint    (round ends, every `checkpoint_every_rounds`) site and round state
//!     eval          (eval rounds) the global model, at the evaluator (see [`super::eval`])
//! ```
//!
//! Time: `data_ms + compute_ms + comm_ms + opt_ms = wall_ms` per step by construction on
//! every backend (see [`super::clock`]); evaluation happens inside a step's time window but
//! is not part of the training step and is taken out of `wall_ms`.
//! Bytes: training traffic is the change of this site's link counters from before
//! `on_gradient` to after the round end; evaluation traffic is counted apart. Both are
//! cumulative in the round state, so a resumed run continues its totals.

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};
use std::time::Duration;

use anyhow::{Context, Result};
use tch::Tensor;

use super::clock::{self, StepStart};
use super::eval::{self, LocalEval};
use super::sink::SiteSink;
use crate::checkpoint::{Checkpoint, CheckpointWriter};
use crate::config::RunConfig;
use crate::data::{Batch, Dataset};
use crate::model::params::ParamStore;
use crate::model::{ForwardOutput, ModelConfig, MoeModel, ParamLayout, Residency};
use crate::net::Comm;
use crate::optim::{clip_grad_norm, AdamW};
use crate::strategy::round_state::{LinkTotals, SiteTraffic};
use crate::strategy::{Relayout, RoundState, SiteState, Strategy, SyncOutcome};
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

/// What a site reports at the end (bytes and times of this attempt; steps and tokens since
/// the start of the run).
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

/// Load the shared initial model (full) from a checkpoint.
pub fn load_init(path: &Path, mcfg: &ModelConfig) -> Result<ParamStore> {
    let store = ParamStore::zeros(mcfg, Residency::full(mcfg));
    Checkpoint::open(path)?.read_model(&store)?;
    Ok(store)
}

/// One site's run: its state and what it has measured (see the module doc).
pub struct SiteRun<'a> {
    ctx: &'a SiteContext<'a>,
    st: SiteState,
    round: RoundState,
    /// Traffic at the start of this attempt (a resumed run reports only its own bytes).
    traffic_at_start: SiteTraffic,
    report: SiteReport,
}

/// What one training step did, for its row.
struct StepRecord {
    start: StepStart,
    out: ForwardOutput,
    lr: f64,
    grad_norm: f64,
    data: Duration,
    compute: Duration,
    comm: Duration,
    comm_cpu: Duration,
    opt: Duration,
    /// Evaluation inside the step's window (not part of the step's wall time).
    eval: Duration,
    /// Link counters before the step's first synchronisation.
    links_before: LinkTotals,
    expected_payload: u64,
}

impl<'a> SiteRun<'a> {
    /// The site's state from the shared initial model, or from its checkpoint on resume.
    pub fn start(ctx: &'a SiteContext<'a>, strategy: &mut dyn Strategy) -> Result<Self> {
        let cfg = ctx.cfg;
        let mcfg = &ctx.model_cfg;
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
            report: SiteReport {
                site: ctx.site,
                ..Default::default()
            },
            st,
            round,
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
            for _ in 0..h {
                self.faults()?;
                let mut step = self.train_step(strategy, comm, source)?;
                let end_of_round = self.round.step.is_multiple_of(h);
                let local = if end_of_round {
                    self.round_end(round, strategy, comm, &mut step)?
                } else {
                    None
                };
                let row = self.step_row(round, &step, comm);
                if end_of_round {
                    self.checkpoint(round)?;
                }
                sink.step(&row)?;
                if let Some(local) = local {
                    self.eval(round, local, &row, comm, sink)?;
                }
            }
        }
        self.finish(comm, sink)
    }

    /// Scripted failures at the start of the next step.
    fn faults(&self) -> Result<()> {
        let (site, next) = (self.ctx.site, self.round.step + 1);
        for f in &self.ctx.cfg.faults {
            if f.site == site && f.at_step == next {
                match f.kind {
                    crate::config::FaultKind::Crash => {
                        anyhow::bail!("injected fault: site {site} crashed at step {next}")
                    }
                }
            }
        }
        Ok(())
    }

    /// Data, forward/backward, the gradient hook (DDP's sync), clipping and the inner step.
    fn train_step(
        &mut self,
        strategy: &mut dyn Strategy,
        comm: &mut dyn Comm,
        source: &mut dyn BatchSource,
    ) -> Result<StepRecord> {
        let cfg = self.ctx.cfg;
        let gate = self.ctx.compute_gate;
        let start = StepStart::now(comm);
        let step = self.round.step;
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
        strategy.observe_routing(&out.routing);
        let links_before = LinkTotals::read(comm, cfg.sites);
        let (sync, t) = clock::comm(comm, |c| strategy.on_gradient(st, &mut grad, c));
        let sync = sync?;
        let (grad_norm, opt) = clock::compute(gate, comm, || {
            let n = clip_grad_norm(&mut grad, cfg.optim.grad_clip);
            st.inner.step(&st.model.store.flat, &grad, lr);
            n
        });
        self.round.step += 1;
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
            eval: Duration::ZERO,
            links_before,
            expected_payload: sync.expected_payload_sent,
        })
    }

    /// Local eval (eval rounds), then the outer sync with its relayout.
    fn round_end(
        &mut self,
        round: usize,
        strategy: &mut dyn Strategy,
        comm: &mut dyn Comm,
        step: &mut StepRecord,
    ) -> Result<Option<LocalEval>> {
        let cfg = self.ctx.cfg;
        let rounds = cfg.rounds();
        let is_eval = (round + 1).is_multiple_of(cfg.eval_every_rounds) || round + 1 == rounds;
        let local = if is_eval {
            let (m, data) = (&self.st.model, self.ctx.data);
            let ((losses, probe), dt) = clock::compute(self.ctx.compute_gate, comm, || {
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
        let (st, rs) = (&mut self.st, &mut self.round);
        let (outcome, t) = clock::comm(comm, |c| -> Result<u64> {
            let SyncOutcome {
                expected_payload_sent,
                relayout,
            } = strategy.end_round(st, rs, c)?;
            if let Some(r) = relayout {
                apply_relayout(st, rs, r)?;
            }
            Ok(expected_payload_sent)
        });
        step.expected_payload += outcome?;
        step.comm += t.elapsed;
        step.comm_cpu += t.cpu;
        Ok(local)
    }

    /// At a round boundary, every `checkpoint_every` rounds and at the last one.
    fn checkpoint(&self, round: usize) -> Result<()> {
        if let Some((dir, every)) = &self.ctx.checkpoint {
            if (round + 1).is_multiple_of((*every).max(1)) || round + 1 == self.ctx.cfg.rounds() {
                let path = dir.join(format!("ckpt-site{}.safetensors", self.ctx.site));
                self.save_checkpoint(&path)?;
            }
        }
        Ok(())
    }

    /// The step's row; adds its traffic and times to the round state and the report.
    fn step_row(&mut self, round: usize, s: &StepRecord, comm: &dyn Comm) -> StepRow {
        let mcfg = &self.ctx.model_cfg;
        let moved = LinkTotals::read(comm, self.ctx.cfg.sites) - s.links_before;
        let traffic = &mut self.round.traffic;
        traffic.training = traffic.training + moved;
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
            wall_ms: ms(s.start.elapsed(comm).saturating_sub(s.eval)),
            clock_s: comm.now().as_secs_f64(),
            payload_sent: moved.sent.payload,
            payload_recv: moved.received.payload,
            framing_sent: moved.sent.framing,
            framing_recv: moved.received.framing,
            skip_rate: if slots > 0 {
                skipped as f64 / slots as f64
            } else {
                0.0
            },
        }
    }

    /// The eval protocol after the sync of an eval round; the evaluator writes the rows.
    fn eval(
        &mut self,
        round: usize,
        local: LocalEval,
        row: &StepRow,
        comm: &mut dyn Comm,
        sink: &mut dyn SiteSink,
    ) -> Result<()> {
        sink.probe(round, "local", &local.probe)?;
        let sites = self.ctx.cfg.sites;
        let before = LinkTotals::read(comm, sites);
        let global = eval::evaluate_global(
            self.ctx,
            &self.st,
            &self.round,
            comm,
            &local.losses,
            round,
            row.comm_ms,
        )?;
        self.round.traffic.eval =
            self.round.traffic.eval + (LinkTotals::read(comm, sites) - before);
        if let Some(g) = global {
            sink.probe(round, "global", &g.probe)?;
            sink.rounds(&g.rows)?;
        }
        Ok(())
    }

    /// Save the site's full state at a round boundary (atomic write).
    fn save_checkpoint(&self, path: &Path) -> Result<()> {
        let mut w = CheckpointWriter::new();
        w.model(&self.st.model.store)
            .adamw(&self.st.model.store.layout, &self.st.inner)
            .meta("config_hash", self.ctx.cfg.hash())
            .meta("site", self.ctx.site);
        self.round.save(&mut w, &self.st.model.store.layout);
        w.write(path)
    }

    /// The site's report, handed to the sink.
    fn finish(mut self, comm: &dyn Comm, sink: &mut dyn SiteSink) -> Result<SiteReport> {
        let mcfg = &self.ctx.model_cfg;
        let (now, then) = (self.round.traffic, self.traffic_at_start);
        let r = &mut self.report;
        r.steps = self.round.step;
        r.tokens = self.round.step * mcfg.batch_size * mcfg.seq_len;
        r.payload_sent = now.training.sent.payload - then.training.sent.payload;
        r.framing_sent = now.training.sent.framing - then.training.sent.framing;
        r.expected_payload_sent = now.expected_training_payload - then.expected_training_payload;
        r.eval_payload_sent = now.eval.sent.payload - then.eval.sent.payload;
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
fn apply_relayout(st: &mut SiteState, round: &mut RoundState, r: Relayout) -> Result<()> {
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
    if ck.meta("config_hash").as_deref() != Some(cfg.hash().as_str()) {
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
