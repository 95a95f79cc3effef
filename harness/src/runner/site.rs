//! One site's training loop, shared by every method and backend.
//!
//! Per inner step: data → forward/backward → `strategy.on_gradient` (DDP syncs here) →
//! clip + AdamW. Every H steps: `strategy.end_round` (outer sync). At eval rounds, before
//! the sync, the site evaluates its local model (with skip) and dumps its local router's
//! top-k on the probe set; after the sync the global model is evaluated (assembled at site 0
//! when no site holds all of it) and site 0 writes the round's rows.
//!
//! Time: `data_ms + compute_ms + comm_ms + opt_ms = wall_ms` per step by construction on
//! every backend: on real backends each part is measured wall time and wall is their sum
//! plus the (tiny) bookkeeping between them; on `sim`, compute parts are measured while
//! holding the compute gate and comm time is the virtual clock's advance during the sync.
//! Bytes: training traffic is the change of this site's link counters inside
//! `on_gradient`/`end_round`; evaluation traffic (assembling the global model, gathering
//! local losses) is counted apart.

use std::path::Path;
use std::time::{Duration, Instant};

use anyhow::{Context, Result};
use tch::Tensor;

use crate::config::RunConfig;
use crate::data::{Batch, Dataset};
use crate::model::params::ParamStore;
use crate::model::{ModelConfig, MoeModel, Residency};
use crate::net::{ClockKind, Comm, LinkCounters};
use crate::optim::{clip_grad_norm, AdamW};
use crate::strategy::{SiteState, Strategy};
use crate::telemetry::{RoundRow, StepRow};

use super::sink::SiteSink;

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

/// What a site reports at the end.
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

pub fn batch_tensors(b: &Batch) -> (Tensor, Tensor) {
    let shape = b.shape();
    (
        crate::device::staging::upload_i64(&b.inputs, &shape),
        crate::device::staging::upload_i64(&b.targets, &shape),
    )
}

fn sent(c: &[LinkCounters]) -> (u64, u64, u64, u64) {
    c.iter().fold((0, 0, 0, 0), |a, l| {
        (
            a.0 + l.payload_bytes_sent,
            a.1 + l.framing_bytes_sent,
            a.2 + l.payload_bytes_received,
            a.3 + l.framing_bytes_received,
        )
    })
}

/// Probe top-k ids of a model: `[domain][layer]`, each row-major `[tokens, k]`.
type ProbeIds = Vec<Vec<Vec<i64>>>;

/// Mean CE per domain of `model` on the eval sets (no grad).
pub fn eval_domains(
    model: &MoeModel,
    data: &Dataset,
    max_sequences: usize,
    batch_size: usize,
) -> Result<Vec<f64>> {
    let _g = tch::no_grad_guard();
    let mut out = Vec::with_capacity(data.n_domains());
    for d in 0..data.n_domains() {
        let mut total = 0.0;
        let mut count = 0usize;
        for b in data.eval_batches(d, batch_size)? {
            if count >= max_sequences {
                break;
            }
            let (x, y) = batch_tensors(&b);
            let ce = model.forward(&x, &y).ce.double_value(&[]);
            total += ce * b.batch_size as f64;
            count += b.batch_size;
        }
        out.push(if count == 0 {
            f64::NAN
        } else {
            total / count as f64
        });
    }
    Ok(out)
}

/// The router's top-k ids (unmasked: its preference over all E, see
/// [`crate::model::moe::LayerRouting::router_topk_ids`]) of every layer on every domain's
/// probe batch: ids[domain][layer] (row-major [T, k]).
pub fn probe_topk(model: &MoeModel, data: &Dataset) -> Result<Vec<Vec<Vec<i64>>>> {
    let _g = tch::no_grad_guard();
    let mut out = Vec::new();
    for d in 0..data.n_domains() {
        let b = data.probe_batch(d)?;
        let (x, y) = batch_tensors(&b);
        let f = model.forward(&x, &y);
        out.push(
            f.routing
                .iter()
                .map(|r| Vec::<i64>::try_from(&r.router_topk_ids.reshape([-1])).unwrap_or_default())
                .collect(),
        );
    }
    Ok(out)
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
    pub checkpoint: Option<(std::path::PathBuf, usize)>,
    /// Continue from this checkpoint (written by the same site of the same run config).
    pub resume: Option<std::path::PathBuf>,
}

/// Save the site's full state at a round boundary (atomic write).
pub fn save_site_checkpoint(
    path: &Path,
    st: &SiteState,
    strategy: &dyn Strategy,
    step: usize,
    cfg_hash: &str,
) -> Result<()> {
    let mut w = crate::checkpoint::CheckpointWriter::new();
    w.model(&st.model.store)
        .adamw(&st.model.store.layout, &st.inner)
        .meta("step", step)
        .meta("config_hash", cfg_hash)
        .meta("site", st.site);
    strategy.save_state(&mut w, &st.model.store.layout);
    w.write(path)
}

struct Timer {
    kind: ClockKind,
}

/// Runs `f` as compute: under the gate on sim (and advancing the virtual clock).
fn compute<T>(
    gate: Option<&super::gate::ComputeGate>,
    comm: &mut dyn Comm,
    f: impl FnOnce() -> T,
) -> (T, Duration) {
    let guard = gate.map(|g| g.acquire());
    let t = Instant::now();
    let out = f();
    crate::device::synchronize();
    let dt = t.elapsed();
    drop(guard);
    comm.advance(dt);
    (out, dt)
}

impl Timer {
    /// Duration of a communication section (virtual on sim, wall otherwise) and the host
    /// wall time it took.
    fn comm<T>(
        &self,
        comm: &mut dyn Comm,
        f: impl FnOnce(&mut dyn Comm) -> T,
    ) -> (T, Duration, Duration) {
        let a = comm.now();
        let t = Instant::now();
        let cpu0 = thread_cpu_time();
        let out = f(comm);
        let cpu = thread_cpu_time().saturating_sub(cpu0);
        match self.kind {
            ClockKind::Virtual => (out, comm.now().saturating_sub(a), cpu),
            _ => (out, t.elapsed(), cpu),
        }
    }
}

/// CPU time consumed by the calling thread.
fn thread_cpu_time() -> Duration {
    let mut ts = libc::timespec {
        tv_sec: 0,
        tv_nsec: 0,
    };
    // SAFETY: clock_gettime writes into the timespec we own.
    let rc = unsafe { libc::clock_gettime(libc::CLOCK_THREAD_CPUTIME_ID, &mut ts) };
    if rc != 0 {
        return Duration::ZERO;
    }
    Duration::new(ts.tv_sec as u64, ts.tv_nsec as u32)
}

/// Run one site to the end. Site 0 also evaluates the global model and writes rounds.
pub fn run_site(
    ctx: &SiteContext<'_>,
    strategy: &mut dyn Strategy,
    comm: &mut dyn Comm,
    source: &mut dyn BatchSource,
    sink: &mut dyn SiteSink,
) -> Result<SiteReport> {
    let cfg = ctx.cfg;
    let mcfg = &ctx.model_cfg;
    let site = ctx.site;
    let residency = strategy.residency(mcfg);
    let mut store = ParamStore::zeros(mcfg, residency.clone());
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
        site,
        sites: cfg.sites,
        model,
        inner,
    };
    strategy.init(&mut st)?;
    let mut step = 0usize;
    if let Some(path) = &ctx.resume {
        let ck = crate::checkpoint::Checkpoint::open(path)?;
        if ck.meta("config_hash").as_deref() != Some(cfg.checkpoint_hash().as_str()) {
            anyhow::bail!(
                "{}: checkpoint of a different run configuration (config hash differs)",
                path.display()
            );
        }
        ck.read_model(&st.model.store)?;
        ck.read_adamw(&st.model.store.layout, &mut st.inner)?;
        strategy.load_state(&ck, &st.model.store.layout)?;
        step = ck
            .meta("step")
            .and_then(|s| s.parse().ok())
            .context("checkpoint metadata `step` missing")?;
        if !step.is_multiple_of(cfg.inner_steps) || step > cfg.steps {
            anyhow::bail!(
                "{}: step {step} is not a round boundary of this run",
                path.display()
            );
        }
    }

    let timer = Timer {
        kind: comm.clock_kind(),
    };
    let h = cfg.inner_steps;
    let rounds = cfg.rounds();
    let tokens_per_step = mcfg.batch_size * mcfg.seq_len;
    let mut report = SiteReport {
        site,
        ..Default::default()
    };
    let mut eval_bytes = 0u64;
    let mut train_bytes = (0u64, 0u64);
    let mut last_loss = f64::NAN;
    for round in step / h..rounds {
        for _ in 0..h {
            if let Some(f) = cfg
                .faults
                .iter()
                .find(|f| f.site == site && f.at_step == step + 1)
            {
                match f.kind {
                    crate::config::FaultKind::Crash => {
                        anyhow::bail!("injected fault: site {site} crashed at step {}", step + 1)
                    }
                }
            }
            let t_step = Instant::now();
            let clock0 = comm.now();
            let ((x, y), data_dt) = {
                let t = Instant::now();
                let b = source.batch(step)?;
                let xy = batch_tensors(&b);
                let dt = t.elapsed();
                comm.advance(dt);
                (xy, dt)
            };
            let lr = cfg.optim.lr_at(step, cfg.steps);
            let ((out, mut grad), compute_dt) = compute(ctx.compute_gate, comm, || {
                let out = st.model.forward(&x, &y);
                let g = st.model.flat_grad(&out.loss);
                (out, g)
            });
            strategy.observe_routing(&out.routing);
            let c0 = sent(&comm.link_counters());
            let (sync, comm_dt, host_dt) =
                timer.comm(comm, |c| strategy.on_gradient(&mut st, &mut grad, c));
            let sync = sync?;
            let (mut comm_dt, mut host_dt) = (comm_dt, host_dt);
            let (norm, opt_dt) = compute(ctx.compute_gate, comm, || {
                let n = clip_grad_norm(&mut grad, cfg.optim.grad_clip);
                st.inner.step(&st.model.store.flat, &grad, lr);
                n
            });
            let mut expected = sync.expected_payload_sent;
            step += 1;
            let end_of_round = step.is_multiple_of(h);
            let mut eval_rows: Option<(Vec<f64>, ProbeIds)> = None;
            // Evaluation of the local model happens inside the step's time window but is
            // not part of the training step: it is taken out of `wall_ms`.
            let mut eval_dt = Duration::ZERO;
            if end_of_round {
                let is_eval = (round + 1) % cfg.eval_every_rounds == 0 || round + 1 == rounds;
                if is_eval {
                    // Local model (with skip) before the sync.
                    let ((local, probe), dt) = compute(ctx.compute_gate, comm, || {
                        (
                            eval_domains(&st.model, ctx.data, cfg.eval_sequences, mcfg.batch_size),
                            probe_topk(&st.model, ctx.data),
                        )
                    });
                    eval_dt = dt;
                    eval_rows = Some((local?, probe?));
                }
                let (r, dt, host) = timer.comm(comm, |c| strategy.end_round(&mut st, c));
                expected += r?.expected_payload_sent;
                comm_dt += dt;
                host_dt += host;
                if let Some((dir, every)) = &ctx.checkpoint {
                    if (round + 1) % every.max(&1) == 0 || round + 1 == rounds {
                        let path = dir.join(format!("ckpt-site{site}.safetensors"));
                        save_site_checkpoint(&path, &st, strategy, step, &cfg.checkpoint_hash())?;
                    }
                }
            }
            let c1 = sent(&comm.link_counters());
            let ce = out.ce.double_value(&[]);
            last_loss = ce;
            let skipped: i64 = out.routing.iter().map(|r| r.skipped_slots).sum();
            let skip_by_layer = crate::telemetry::format_skip_by_layer(&out.routing, mcfg.top_k);
            let slots: i64 = out
                .routing
                .iter()
                .map(|r| r.tokens * mcfg.top_k as i64)
                .sum();
            let wall = match timer.kind {
                ClockKind::Virtual => comm.now().saturating_sub(clock0),
                _ => t_step.elapsed(),
            }
            .saturating_sub(eval_dt)
            .as_secs_f64();
            let row = StepRow {
                site,
                step,
                round,
                loss: out.loss.double_value(&[]),
                ce,
                balance: out.balance.iter().sum::<f64>() / out.balance.len().max(1) as f64,
                lr,
                grad_norm: norm,
                tokens: tokens_per_step,
                data_ms: data_dt.as_secs_f64() * 1e3,
                compute_ms: compute_dt.as_secs_f64() * 1e3,
                comm_ms: comm_dt.as_secs_f64() * 1e3,
                comm_cpu_ms: host_dt.as_secs_f64() * 1e3,
                opt_ms: opt_dt.as_secs_f64() * 1e3,
                wall_ms: wall * 1e3,
                clock_s: comm.now().as_secs_f64(),
                payload_sent: c1.0 - c0.0,
                payload_recv: c1.2 - c0.2,
                framing_sent: c1.1 - c0.1,
                framing_recv: c1.3 - c0.3,
                skip_rate: if slots > 0 {
                    skipped as f64 / slots as f64
                } else {
                    0.0
                },
                skip_by_layer,
            };
            train_bytes.0 += row.payload_sent;
            train_bytes.1 += row.framing_sent;
            report.expected_payload_sent += expected;
            report.compute_s += (data_dt + compute_dt + opt_dt).as_secs_f64();
            report.comm_s += comm_dt.as_secs_f64();
            sink.step(&row)?;
            if let Some((local, local_probe)) = eval_rows {
                let e0 = sent(&comm.link_counters());
                sink.probe(round, "local", &local_probe)?;
                let global = evaluate_global(
                    ctx,
                    &st,
                    strategy,
                    comm,
                    &local,
                    round,
                    step,
                    comm_dt.as_secs_f64() * 1e3,
                )?;
                if let Some((rows, probe)) = global {
                    sink.probe(round, "global", &probe)?;
                    // Byte totals are filled in when the run's files are merged (site 0 sees
                    // only its own links).
                    sink.rounds(&rows)?;
                }
                let e1 = sent(&comm.link_counters());
                eval_bytes += e1.0 - e0.0;
            }
        }
    }
    report.steps = step;
    report.tokens = step * tokens_per_step;
    report.payload_sent = train_bytes.0;
    report.framing_sent = train_bytes.1;
    report.eval_payload_sent = eval_bytes;
    report.clock_s = comm.now().as_secs_f64();
    report.final_loss = last_loss;
    let n = st.model.store.numel();
    report.memory = SiteMemory {
        params: 4 * n,
        grads: 4 * n,
        inner_optimizer: st.inner.bytes(),
        outer_state: strategy.state_bytes(),
        total: 8 * n + st.inner.bytes() + strategy.state_bytes(),
        params_held: n,
        experts_held: st.model.store.residency.blocks(),
    };
    sink.finish(&report)?;
    Ok(report)
}

/// After the sync of an eval round: site 0 gathers the other sites' local losses and, when
/// it does not hold every expert, the global weights of the experts it lacks (each from
/// its lowest-numbered holder), evaluates the global model and returns the round's rows
/// and the global router's probe top-k. Other sites send and return None.
#[allow(clippy::too_many_arguments)]
fn evaluate_global(
    ctx: &SiteContext<'_>,
    st: &SiteState,
    strategy: &dyn Strategy,
    comm: &mut dyn Comm,
    local: &[f64],
    round: usize,
    step: usize,
    sync_ms: f64,
) -> Result<Option<(Vec<RoundRow>, ProbeIds)>> {
    let cfg = ctx.cfg;
    let mcfg = &ctx.model_cfg;
    let sites = cfg.sites;
    let site = ctx.site;
    // Who holds what (every site can compute every site's residency from the config).
    let residencies: Vec<Residency> = (0..sites).map(|s| strategy.residency_of(mcfg, s)).collect();
    let mine = &residencies[0];
    let lacking: Vec<(usize, usize, usize)> = (0..mcfg.n_layers)
        .flat_map(|l| (0..mcfg.n_experts).map(move |e| (l, e)))
        .filter(|&(l, e)| !mine.holds(l, e))
        .map(|(l, e)| {
            let src = (0..sites)
                .find(|&s| residencies[s].holds(l, e))
                .expect("every expert has a holder");
            (l, e, src)
        })
        .collect();
    if site != 0 {
        let loss_bytes: Vec<u8> = local.iter().flat_map(|v| v.to_le_bytes()).collect();
        comm.send(0, loss_bytes)?;
        for &(l, e, src) in &lacking {
            if src == site {
                let r = st.model.store.layout.experts[&(l, e)].clone();
                let v = crate::model::params::tensor_to_vec(&st.model.store.flat.narrow(
                    0,
                    r.start as i64,
                    r.len() as i64,
                ));
                comm.send(0, v.iter().flat_map(|x| x.to_le_bytes()).collect())?;
            }
        }
        return Ok(None);
    }
    let mut locals = vec![local.to_vec()];
    for s in 1..sites {
        let msg = comm.recv(s)?;
        locals.push(
            msg.chunks_exact(8)
                .map(|c| f64::from_le_bytes(c.try_into().unwrap()))
                .collect(),
        );
    }
    let global_model;
    let model = if lacking.is_empty() {
        &st.model
    } else {
        let full = ParamStore::zeros(mcfg, Residency::full(mcfg));
        full.copy_held_from(&st.model.store);
        for &(l, e, src) in &lacking {
            let msg = comm.recv(src)?;
            let v: Vec<f32> = msg
                .chunks_exact(4)
                .map(|c| f32::from_le_bytes(c.try_into().unwrap()))
                .collect();
            let r = full.layout.experts[&(l, e)].clone();
            if v.len() != r.len() {
                anyhow::bail!(
                    "expert ({l},{e}) from site {src}: {} values, expected {}",
                    v.len(),
                    r.len()
                );
            }
            tch::no_grad(|| {
                full.flat
                    .narrow(0, r.start as i64, r.len() as i64)
                    .copy_(&Tensor::from_slice(&v))
            });
        }
        global_model = MoeModel::from_store(mcfg, full);
        &global_model
    };
    let (res, _) = compute(ctx.compute_gate, comm, || {
        (
            eval_domains(model, ctx.data, cfg.eval_sequences, mcfg.batch_size),
            probe_topk(model, ctx.data),
        )
    });
    let (global_losses, probe) = (res.0?, res.1?);
    let rows = ctx
        .data
        .domains()
        .iter()
        .enumerate()
        .map(|(d, info)| RoundRow {
            round,
            step,
            domain: info.name.clone(),
            eval_loss: global_losses[d],
            floor: info.entropy_floor_nats,
            local_eval_loss: locals.iter().map(|l| l[d]).sum::<f64>() / locals.len() as f64,
            payload_bytes_total: 0,
            framing_bytes_total: 0,
            eval_bytes_total: 0,
            clock_s: comm.now().as_secs_f64(),
            sync_ms,
        })
        .collect();
    Ok(Some((rows, probe)))
}

/// Load the shared initial model (full) from a checkpoint.
pub fn load_init(path: &Path, mcfg: &ModelConfig) -> Result<ParamStore> {
    let store = ParamStore::zeros(mcfg, Residency::full(mcfg));
    crate::checkpoint::Checkpoint::open(path)?.read_model(&store)?;
    Ok(store)
}
