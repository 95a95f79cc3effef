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
//!     strategy.end_round(round state)          // DiLoCo/FoMoE/Photon: outer sync
//! ```
//!
//! A strategy does not own what outlives a round: the runner keeps it in one
//! [`RoundState`] (step, placement, outer optimiser, traffic) that a checkpoint serialises
//! whole, and a strategy that changes the placement returns a [`Relayout`] in its
//! [`SyncOutcome`], which the runner applies to the model, the AdamW moments and the outer
//! optimiser at once. The outer optimiser is its own object ([`outer::OuterOptimizerState`]);
//! the averaging over holder groups that DiLoCo and FoMoE share is [`group_sync`]. DDP,
//! DiLoCo and Photon live in the `baselines` crate; FoMoE is [`fomoe`].

pub mod fomoe;
pub mod group_sync;
pub mod outer;
pub mod placement;
pub mod round_state;

use std::collections::BTreeMap;

use anyhow::Result;
use tch::Tensor;

use crate::config::RunConfig;
use crate::model::{ModelConfig, MoeModel};
use crate::net::Comm;
use crate::optim::AdamW;

pub use placement::{ExpertPlacement, Placement};
pub use round_state::RoundState;

/// Everything a site trains: its model (what it holds) and its inner optimiser.
pub struct SiteState {
    pub site: usize,
    pub sites: usize,
    pub model: MoeModel,
    pub inner: AdamW,
}

/// What a synchronisation did, and what the runner should change because of it.
#[derive(Debug, Default)]
pub struct SyncOutcome {
    /// Payload bytes this site is expected to send in this sync (from `bytes.rs`).
    pub expected_payload_sent: u64,
    /// A new placement of the experts, with the state of the experts this site gains; the
    /// runner moves the model, the AdamW moments and the outer optimiser to it.
    pub relayout: Option<Relayout>,
}

/// A new placement and the global state of the experts this site gains under it.
#[derive(Debug)]
pub struct Relayout {
    pub placement: Placement,
    /// (layer, expert) → its state, for every expert this site holds now and did not before.
    pub incoming: BTreeMap<(usize, usize), ExpertState>,
}

/// The global state of one expert block (fc1 then fc2, as in the layout).
#[derive(Debug, Clone, PartialEq)]
pub struct ExpertState {
    pub global: Vec<f32>,
    /// Outer momentum (Nesterov), `None` without one.
    pub momentum: Option<Vec<f32>>,
}

/// A training method, one instance per site.
pub trait Strategy: Send {
    fn name(&self) -> &'static str;

    /// Who holds which experts at the start of the run. Default: every site holds all.
    fn initial_placement(&self, cfg: &ModelConfig, sites: usize) -> Result<Placement> {
        Ok(Placement::full(cfg, sites))
    }

    /// Sees the routing of every training forward pass (load-aware placement counts it).
    fn observe_routing(&mut self, _routing: &[crate::model::moe::LayerRouting]) {}

    /// Called once, after the site's model is built from the shared initial weights: set up
    /// what the site keeps across rounds (the outer optimiser in `round.outer`).
    fn init(&mut self, _st: &mut SiteState, _round: &mut RoundState) -> Result<()> {
        Ok(())
    }

    /// After backward, before clipping and the inner step (`round.participants`: the sites
    /// training this step).
    fn on_gradient(
        &mut self,
        _st: &mut SiteState,
        _round: &RoundState,
        _grad: &mut Tensor,
        _comm: &mut dyn Comm,
    ) -> Result<SyncOutcome> {
        Ok(SyncOutcome::default())
    }

    /// At the end of every round (every H inner steps), on the round's participants only
    /// (`round.participants`).
    fn end_round(
        &mut self,
        _st: &mut SiteState,
        _round: &mut RoundState,
        _comm: &mut dyn Comm,
    ) -> Result<SyncOutcome> {
        Ok(SyncOutcome::default())
    }
}

/// Whether the inner optimiser's state is the same on every site (DDP), so a site coming
/// back fetches it with the model. Default: no (it is each site's own).
pub fn replicated_inner_state(method: crate::config::Method) -> bool {
    method == crate::config::Method::Ddp
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
