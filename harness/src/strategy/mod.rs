//! The strategy interface: what a site does around its inner steps, and how updates are
//! aggregated. In the spirit of Flower's Strategy, it is narrow: a strategy sees the site's
//! state and its [`Comm`] endpoint at two points of the inner loop, and nothing else.
//!
//! ```text
//! for round r:                     (H inner steps per round; DDP and single: any H)
//!     for h in 0..H:
//!         loss, grad = forward/backward(batch)
//!         strategy.on_gradient(grad)          // DDP: mean of the M gradients
//!         clip(grad); AdamW step
//!     strategy.end_round()                     // DiLoCo/FoMoE/Photon: outer sync
//! ```
//!
//! The outer optimiser is its own object ([`outer::OuterOptimizerState`]); the averaging
//! over holder groups that DiLoCo and FoMoE share is [`group_sync`]. DDP, DiLoCo and
//! Photon live in the `baselines` crate; FoMoE is [`fomoe`].

pub mod fomoe;
pub mod group_sync;
pub mod outer;

use anyhow::Result;
use tch::Tensor;

use crate::config::RunConfig;
use crate::model::{ModelConfig, MoeModel};
use crate::net::Comm;
use crate::optim::AdamW;

/// Everything a site trains: its model (what it holds) and its inner optimiser.
pub struct SiteState {
    pub site: usize,
    pub sites: usize,
    pub model: MoeModel,
    pub inner: AdamW,
}

/// What a synchronisation did (for telemetry and tests).
#[derive(Clone, Debug, Default, PartialEq)]
pub struct SyncReport {
    /// Payload bytes this site is expected to send in this sync (from `bytes.rs`).
    pub expected_payload_sent: u64,
}

/// A training method, one instance per site.
pub trait Strategy: Send {
    fn name(&self) -> &'static str;

    /// Which experts this site holds (global ids per layer). Default: all.
    fn residency(&self, cfg: &ModelConfig) -> crate::model::Residency {
        crate::model::Residency::full(cfg)
    }

    /// Which experts site `site` holds now (every site can compute every site's placement).
    fn residency_of(&self, cfg: &ModelConfig, _site: usize) -> crate::model::Residency {
        crate::model::Residency::full(cfg)
    }

    /// Sees the routing of every training forward pass (load-aware placement counts it).
    fn observe_routing(&mut self, _routing: &[crate::model::moe::LayerRouting]) {}

    /// Called once, after the site's model is built from the shared initial weights.
    fn init(&mut self, _st: &mut SiteState) -> Result<()> {
        Ok(())
    }

    /// After backward, before clipping and the inner step.
    fn on_gradient(
        &mut self,
        _st: &mut SiteState,
        _grad: &mut Tensor,
        _comm: &mut dyn Comm,
    ) -> Result<SyncReport> {
        Ok(SyncReport::default())
    }

    /// At the end of every round (every H inner steps).
    fn end_round(&mut self, _st: &mut SiteState, _comm: &mut dyn Comm) -> Result<SyncReport> {
        Ok(SyncReport::default())
    }

    /// Bytes of state the strategy holds beyond the model and the inner optimiser
    /// (global copy, outer momentum).
    fn state_bytes(&self) -> usize {
        0
    }

    /// Add the strategy's state (outer optimiser) to a checkpoint.
    fn save_state(
        &self,
        _w: &mut crate::checkpoint::CheckpointWriter,
        _layout: &crate::model::ParamLayout,
    ) {
    }

    /// Restore what [`Strategy::save_state`] wrote (after `init`).
    fn load_state(
        &mut self,
        _ck: &crate::checkpoint::Checkpoint,
        _layout: &crate::model::ParamLayout,
    ) -> Result<()> {
        Ok(())
    }
}

/// Builds the strategy of one site for a run.
pub type SiteStrategyFactory = fn(&RunConfig, usize) -> Result<Box<dyn Strategy>>;

/// Runs the body of a non-site endpoint (Photon's aggregator), given the run and its comm.
pub type AggregatorFn = fn(&RunConfig, &mut dyn Comm, &std::path::Path) -> Result<()>;

/// The methods a runner can execute, supplied by the binary (baselines + FoMoE).
#[derive(Clone, Copy)]
pub struct MethodRegistry {
    pub site: SiteStrategyFactory,
    pub aggregator: AggregatorFn,
}
