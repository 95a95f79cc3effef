//! Photon (Sani et al., MLSys 2025): federated averaging through an aggregator process.
//!
//! Star (default): every H local steps each client uploads θ_site; the aggregator forms the
//! token-weighted mean θ̄ = Σ_i w_i·θ_i (w_i = tokens_i / Σ tokens), applies the server
//! optimiser to Δ = θ_g − θ̄ (default FedAvg lr 1, i.e. θ_g ← θ̄; Nesterov optional) and
//! broadcasts θ_g, which every client adopts.
//! Payload per round: N·b up + N·b down per client; the aggregator receives and sends M×.
//! Partial participation (faults, the deadline, which the aggregator leads): the mean and
//! the broadcast run over the round's participants; a late or returning client fetches the
//! global model from a participant (the runner's recovery).
//! Ring mode: the same averaging as DiLoCo's ring all-reduce, with Photon's server
//! optimiser (no aggregator).
//! Degenerate case (pinned by a test): DiLoCo with outer lr 1 and momentum 0 equals
//! Photon's FedAvg for the same H, data and inner optimiser, within float tolerance
//! (θ_g − mean(θ_g − θ_i) and mean(θ_i) differ only by rounding).

use std::path::Path;

use anyhow::{Context, Result};
use harness::collective::{broadcast, star_reduce, WireDtype};
use harness::config::RunConfig;
use harness::model::params::tensor_to_vec;
use harness::net::Comm;
use harness::runner::deadline;
use harness::scenario::plan::Plan;
use harness::strategy::outer::OuterOptimizerState;
use harness::strategy::{RoundState, SiteState, Strategy, SyncOutcome};
use tch::Tensor;

/// A Photon client in star mode.
pub struct PhotonClient {
    sites: usize,
    wire: WireDtype,
    keep_inner_state: bool,
}

impl PhotonClient {
    pub fn new(cfg: &RunConfig, _site: usize) -> Result<Self> {
        Ok(Self {
            sites: cfg.sites,
            wire: cfg.wire_dtype,
            keep_inner_state: cfg.keep_inner_state,
        })
    }
}

/// The clients taking part and the aggregator.
fn members(clients: &[usize], aggregator: usize) -> Vec<usize> {
    let mut m = clients.to_vec();
    m.push(aggregator);
    m
}

impl Strategy for PhotonClient {
    fn name(&self) -> &'static str {
        "photon"
    }

    fn end_round(
        &mut self,
        st: &mut SiteState,
        round: &mut RoundState,
        comm: &mut dyn Comm,
    ) -> Result<SyncOutcome> {
        let aggregator = self.sites;
        let clients = &round.participants;
        // θ_site lent to the host as the payload (in place on the CPU, staged on a GPU);
        // the broadcast θ_g it holds at the end is written back into the parameters.
        let mut flat = st.model.store.flat.shallow_clone();
        let mut theta = harness::device::staging::HostCopy::new(&mut flat);
        let n = theta.len();
        star_reduce(comm, aggregator, clients, None, self.wire, &mut theta)
            .context("Photon upload")?;
        broadcast(
            comm,
            aggregator,
            &members(clients, aggregator),
            self.wire,
            &mut theta,
        )
        .context("Photon broadcast")?;
        drop(theta);
        if !self.keep_inner_state {
            st.inner.reset();
        }
        let up = harness::bytes::star_reduce_traffic(n, aggregator, clients, self.wire)
            .payload_sent_by(st.site);
        let down = harness::bytes::broadcast_traffic(
            n,
            aggregator,
            &members(clients, aggregator),
            self.wire,
        )
        .payload_sent_by(st.site);
        Ok(SyncOutcome {
            expected_payload_sent: up + down,
            relayout: None,
        })
    }
}

/// Tokens each client trains on in one round: H steps of batch · seq tokens. Every client
/// runs the same H steps of the same batch shape, so the weights are equal today; they are
/// the weights of the average all the same, so an uneven round changes one place.
pub fn client_tokens_per_round(cfg: &RunConfig, mcfg: &harness::model::ModelConfig) -> Vec<f32> {
    let t = (cfg.inner_steps * mcfg.batch_size * mcfg.seq_len) as f32;
    vec![t; cfg.sites]
}

/// The aggregator endpoint (id M): rounds of (deadline →) gather → server step → broadcast,
/// over the round's participants.
pub fn run_aggregator(cfg: &RunConfig, comm: &mut dyn Comm, dir: &Path) -> Result<()> {
    let mcfg = cfg.model_config()?;
    let plan = Plan::new(cfg)?;
    let init = harness::runner::site::load_init(&dir.join("init.safetensors"), &mcfg)?;
    let mut outer = OuterOptimizerState::new(cfg.outer_optimizer(), &init.flat);
    let aggregator = cfg.sites;
    let everyone: Vec<usize> = (0..cfg.sites).collect();
    let n = init.numel();
    let mut owed = std::collections::BTreeMap::new();
    for round in 0..cfg.rounds() {
        let open = comm.now();
        let present = plan.present(round);
        let clients = match plan.deadline {
            None => present,
            Some(d) => deadline::lead(comm, round, open + d, None, &present, &everyone, &mut owed)?,
        };
        // w_i = tokens participant i trained on this round (H steps of its batch),
        // θ̄ = Σ w_i θ_i / Σ w_i over the participants.
        let all_tokens = client_tokens_per_round(cfg, &mcfg);
        let tokens: Vec<f32> = clients.iter().map(|&c| all_tokens[c]).collect();
        let total: f32 = tokens.iter().sum();
        let mut mean = vec![0f32; n];
        star_reduce(
            comm,
            aggregator,
            &clients,
            Some(&tokens),
            cfg.wire_dtype,
            &mut mean,
        )
        .context("aggregator gather")?;
        mean.iter_mut().for_each(|v| *v /= total);
        let delta = &outer.global - Tensor::from_slice(&mean);
        outer.apply(&delta);
        let mut theta = tensor_to_vec(&outer.global);
        broadcast(
            comm,
            aggregator,
            &members(&clients, aggregator),
            cfg.wire_dtype,
            &mut theta,
        )
        .context("aggregator broadcast")?;
        // Keep the global copy equal to what clients received (the wire round trip).
        tch::no_grad(|| outer.global.copy_(&Tensor::from_slice(&theta)));
    }
    Ok(())
}
