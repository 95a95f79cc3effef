//! Evaluation at eval rounds: every present site's local model before the sync, and the
//! global model after it, evaluated at the evaluator (the lowest site present at the
//! round's end: site 0 without faults), which writes the round's rows.
//!
//! Protocol after the sync (and recovery) of an eval round, in one fixed order on every
//! site, absent ones included:
//! 1. every other site sends the evaluator an [`EvalReport`]: its local-model loss per domain
//!    (none when absent) and its cumulative traffic;
//! 2. each expert the evaluator does not hold comes from its lowest present holder, or, when
//!    every holder is away, from its lowest holder, which sends its global copy (the
//!    expert's last global value: frozen), as f32 on the wire ([`crate::collective::wire`]),
//!    in (layer, expert) order.
//!
//! Evaluation is measurement, outside the run's time on `sim`: the evaluator receives with
//! `recv_untimed` and evaluates without advancing its clock, so waiting for a straggler's
//! report or evaluating the global model never delays training in virtual time.
//!
//! The evaluator assembles the global model (its own values plus the received experts, no
//! mask), evaluates it, and makes one [`RoundRow`] per domain with the run's byte totals,
//! derived once here from the reports: training payload = Σ over sites of what each sent
//! plus what each received from an aggregator (see [`crate::strategy::round_state`]);
//! eval payload = Σ over sites of what each sent in earlier evals plus what the evaluator
//! received in this one. Eval traffic is counted apart from training traffic.

use anyhow::{bail, Context, Result};
use serde::{Deserialize, Serialize};
use tch::Tensor;

use super::clock;
use super::site::SiteContext;
use crate::collective::{wire, WireDtype};
use crate::data::{Batch, Dataset};
use crate::model::params::{tensor_to_vec, ParamStore};
use crate::model::{MoeModel, Residency};
use crate::net::Comm;
use crate::strategy::round_state::{Bytes, LinkTotals, SiteTraffic};
use crate::strategy::{RoundState, SiteState};
use crate::telemetry::RoundRow;

/// Input and target tensors of a batch.
pub fn batch_tensors(b: &Batch) -> (Tensor, Tensor) {
    let shape = b.shape();
    (
        crate::device::staging::upload_i64(&b.inputs, &shape),
        crate::device::staging::upload_i64(&b.targets, &shape),
    )
}

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

/// A site's local model on the eval sets and the probe set, before the sync.
pub struct LocalEval {
    pub losses: Vec<f64>,
    pub probe: Vec<Vec<Vec<i64>>>,
}

/// What a site sends the evaluator at an eval round (step 1 of the protocol).
#[derive(Serialize, Deserialize)]
pub struct EvalReport {
    pub site: usize,
    /// Local-model loss per domain as f64 bits (exact; NaN kept).
    pub local_loss_bits: Vec<u64>,
    /// Cumulative traffic up to this eval, before its own eval messages.
    pub traffic: SiteTraffic,
}

impl EvalReport {
    fn encode(&self) -> Vec<u8> {
        serde_json::to_vec(self).expect("an eval report serialises")
    }

    fn decode(from: usize, bytes: &[u8]) -> Result<Self> {
        let r: EvalReport = serde_json::from_slice(bytes)
            .with_context(|| format!("eval report from site {from}"))?;
        if r.site != from {
            bail!("eval report from site {from} names site {}", r.site);
        }
        Ok(r)
    }

    fn losses(&self) -> Vec<f64> {
        self.local_loss_bits
            .iter()
            .map(|&b| f64::from_bits(b))
            .collect()
    }
}

/// The evaluator's result: one row per domain and the global router's probe top-k, and
/// the global model when it had to be assembled (else it is the evaluator's own).
pub struct GlobalEval {
    pub rows: Vec<RoundRow>,
    pub probe: Vec<Vec<Vec<i64>>>,
    pub assembled: Option<ParamStore>,
}

/// Who takes which part in one round's evaluation.
pub struct EvalPlan<'a> {
    pub round: usize,
    /// The site that evaluates (the lowest site present at the round's end).
    pub evaluator: usize,
    /// Sites present at the round's end (participants and late ones), ascending.
    pub present: &'a [usize],
    /// This site's local-model losses (None: absent this round).
    pub local: Option<&'a [f64]>,
    /// The evaluator's synchronisation time of the round, ms.
    pub sync_ms: f64,
}

/// Run the protocol of the module doc. The evaluator returns its rows; other sites `None`.
/// `before_recv(comm, site)` runs before the evaluator's first receive from each site (it
/// drains what that site still owes another protocol, e.g. a late deadline report).
pub fn evaluate_global(
    ctx: &SiteContext<'_>,
    st: &SiteState,
    round_state: &RoundState,
    comm: &mut dyn Comm,
    plan: &EvalPlan<'_>,
    mut before_recv: impl FnMut(&mut dyn Comm, usize) -> Result<()>,
) -> Result<Option<GlobalEval>> {
    let mcfg = &ctx.model_cfg;
    let sites = ctx.cfg.sites;
    let evaluator = plan.evaluator;
    let placement = &round_state.placement;
    let mine = placement.of(evaluator);
    // Experts the evaluator lacks, each with the site that sends it: the lowest present
    // holder, else (every holder absent: a frozen expert) the lowest holder.
    let lacking: Vec<(usize, usize, usize)> = (0..mcfg.n_layers)
        .flat_map(|l| (0..mcfg.n_experts).map(move |e| (l, e)))
        .filter(|&(l, e)| !mine.holds(l, e))
        .map(|(l, e)| {
            let holders = placement.holders_of(l, e);
            let src = holders
                .iter()
                .find(|h| plan.present.contains(h))
                .or(holders.first())
                .copied()
                .expect("every expert has a holder");
            (l, e, src)
        })
        .collect();
    let report = EvalReport {
        site: ctx.site,
        local_loss_bits: plan
            .local
            .unwrap_or(&[])
            .iter()
            .map(|v| v.to_bits())
            .collect(),
        traffic: round_state.traffic,
    };
    if ctx.site != evaluator {
        comm.send(evaluator, report.encode())?;
        // The global copy: the model right after a sync, the last global value of a site
        // that is away.
        let global = round_state
            .outer
            .as_ref()
            .map_or(&st.model.store.flat, |o| &o.global);
        for &(l, e, src) in &lacking {
            if src == ctx.site {
                let r = st.model.store.layout.experts[&(l, e)].clone();
                let v = tensor_to_vec(&global.narrow(0, r.start as i64, r.len() as i64));
                comm.send(evaluator, wire::encode(WireDtype::F32, &v))?;
            }
        }
        return Ok(None);
    }
    let before = LinkTotals::read(comm, sites);
    let mut reports = Vec::with_capacity(sites);
    for s in 0..sites {
        if s == evaluator {
            reports.push(EvalReport {
                site: report.site,
                local_loss_bits: report.local_loss_bits.clone(),
                traffic: report.traffic,
            });
            continue;
        }
        before_recv(comm, s)?;
        reports.push(EvalReport::decode(s, &comm.recv_untimed(s)?)?);
    }
    let mut assembled = None;
    let model = if lacking.is_empty() {
        &st.model
    } else {
        let full = ParamStore::zeros(mcfg, Residency::full(mcfg));
        full.copy_held_from(&st.model.store);
        for &(l, e, src) in &lacking {
            let msg = comm.recv_untimed(src)?;
            let r = full.layout.experts[&(l, e)].clone();
            let mut v = vec![0f32; r.len()];
            wire::decode_into(WireDtype::F32, &msg, &mut v).map_err(|m| {
                anyhow::anyhow!(
                    "expert ({l},{e}) from site {src}: {} bytes, expected {}",
                    m.got,
                    m.want
                )
            })?;
            tch::no_grad(|| {
                full.flat
                    .narrow(0, r.start as i64, r.len() as i64)
                    .copy_(&Tensor::from_slice(&v))
            });
        }
        &*assembled.insert(MoeModel::from_store(mcfg, full))
    };
    let received_now = LinkTotals::read(comm, sites).received - before.received;
    let (res, _) = clock::measure(ctx.compute_gate, || {
        (
            eval_domains(model, ctx.data, ctx.cfg.eval_sequences, mcfg.batch_size),
            probe_topk(model, ctx.data),
        )
    });
    let (global_losses, probe) = (res.0?, res.1?);
    let training = reports
        .iter()
        .fold(Bytes::default(), |a, r| a + r.traffic.training.run_share());
    let eval_payload = reports
        .iter()
        .map(|r| r.traffic.eval.sent.payload)
        .sum::<u64>()
        + received_now.payload;
    let locals: Vec<Vec<f64>> = reports
        .iter()
        .filter(|r| !r.local_loss_bits.is_empty())
        .map(EvalReport::losses)
        .collect();
    if locals.is_empty() {
        bail!("round {}: no site reported a local model", plan.round);
    }
    let rows = ctx
        .data
        .domains()
        .iter()
        .enumerate()
        .map(|(d, info)| RoundRow {
            round: plan.round,
            step: round_state.step,
            domain: info.name.clone(),
            eval_loss: global_losses[d],
            floor: info.entropy_floor_nats,
            local_eval_loss: locals.iter().map(|l| l[d]).sum::<f64>() / locals.len() as f64,
            payload_bytes_total: training.payload,
            framing_bytes_total: training.framing,
            eval_bytes_total: eval_payload,
            clock_s: comm.now().as_secs_f64(),
            sync_ms: plan.sync_ms,
        })
        .collect();
    Ok(Some(GlobalEval {
        rows,
        probe,
        assembled: assembled.map(|m| m.store),
    }))
}
