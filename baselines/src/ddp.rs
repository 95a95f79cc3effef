//! DDP: every inner step, the gradients of the M sites are averaged (ring all-reduce of the
//! flat gradient, divided by M) before the identical AdamW step, so all sites hold the same
//! weights at all times.
//!
//! Payload per site per step: 2(M−1)/M·N·b (exactly: `bytes::ring_allreduce_traffic`).
//! With a lost site (`on_site_loss = "continue"`) a step's mean runs over the sites that
//! train it.
//! Degenerate case (pinned by a test): DDP over M sites with per-site batch b equals one
//! site with batch M·b whose rows are the union of the sites' rows, within float tolerance,
//! with the balance loss off (it is a product of batch means and does not decompose).

use anyhow::{Context, Result};
use harness::collective::{ring_allreduce, WireDtype};
use harness::config::RunConfig;
use harness::device::staging::with_host_f32;
use harness::net::Comm;
use harness::strategy::{RoundState, SiteState, Strategy, SyncOutcome};
use tch::Tensor;

pub struct Ddp {
    wire: WireDtype,
}

impl Ddp {
    pub fn new(cfg: &RunConfig, _site: usize) -> Result<Self> {
        Ok(Self {
            wire: cfg.wire_dtype,
        })
    }
}

impl Strategy for Ddp {
    fn name(&self) -> &'static str {
        "ddp"
    }

    fn on_gradient(
        &mut self,
        st: &mut SiteState,
        round: &RoundState,
        grad: &mut Tensor,
        comm: &mut dyn Comm,
    ) -> Result<SyncOutcome> {
        let all = &round.participants;
        let m = all.len() as f32;
        let n = grad.numel();
        // In place on the flat gradient's memory on the CPU (no copies around the
        // all-reduce); through the pinned staging buffer on a GPU.
        with_host_f32(grad, |g| -> Result<()> {
            ring_allreduce(comm, all, self.wire, g).context("DDP gradient all-reduce")?;
            for x in g.iter_mut() {
                *x /= m;
            }
            Ok(())
        })?;
        let expected =
            harness::bytes::ring_allreduce_traffic(n, all, self.wire).payload_sent_by(st.site);
        Ok(SyncOutcome {
            expected_payload_sent: expected,
            relayout: None,
        })
    }
}
