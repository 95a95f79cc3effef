//! Telemetry rows a run produces (the columns of steps.csv, rounds.csv, routing.csv).
//!
//! Per-step time is split into parts that must add up to the step's wall time within 5%:
//! `wall_ms ≈ data_ms + compute_ms + comm_ms + opt_ms`. On the `sim` backend `comm_ms`
//! is virtual (link model), compute is measured.

use serde::{Deserialize, Serialize};

/// One inner step of one site (steps.csv).
#[derive(Clone, Debug, Default, PartialEq, Serialize, Deserialize)]
pub struct StepRow {
    pub site: usize,
    pub step: usize,
    pub round: usize,
    /// Training loss (CE + balance + z) and its CE part, nats/token.
    pub loss: f64,
    pub ce: f64,
    /// Mean balance value over layers (1 = perfect balance).
    pub balance: f64,
    pub lr: f64,
    pub grad_norm: f64,
    pub tokens: usize,
    pub data_ms: f64,
    pub compute_ms: f64,
    /// Blocked on communication during this step (DDP every step; others at round ends).
    pub comm_ms: f64,
    /// CPU time of the site's own thread inside the synchronisation code (encoding,
    /// reducing, copying), without time blocked waiting for peers: the harness's host cost
    /// of communication.
    pub comm_cpu_ms: f64,
    pub opt_ms: f64,
    pub wall_ms: f64,
    /// Run clock at the end of the step, seconds (virtual on sim).
    pub clock_s: f64,
    /// Payload / framing bytes this site sent and received during the step (training traffic).
    pub payload_sent: u64,
    pub payload_recv: u64,
    pub framing_sent: u64,
    pub framing_recv: u64,
    /// Share of routed slots that hit non-resident experts (FoMoE; 0 otherwise), over all
    /// layers.
    pub skip_rate: f64,
    /// The same per layer, `;`-separated in layer order (e.g. `0.5;0.4375`); empty in
    /// files written before it existed.
    #[serde(default)]
    pub skip_by_layer: String,
}

/// [`StepRow::skip_by_layer`] of one forward pass: skipped / routed slots per layer.
pub fn format_skip_by_layer(routing: &[crate::model::moe::LayerRouting], top_k: usize) -> String {
    routing
        .iter()
        .map(|r| {
            let slots = r.tokens * top_k as i64;
            let rate = if slots > 0 {
                r.skipped_slots as f64 / slots as f64
            } else {
                0.0
            };
            format!("{rate}")
        })
        .collect::<Vec<_>>()
        .join(";")
}

/// Parses [`StepRow::skip_by_layer`]; an empty or malformed field gives `None`.
pub fn parse_skip_by_layer(s: &str) -> Option<Vec<f64>> {
    if s.is_empty() {
        return None;
    }
    s.split(';').map(|v| v.parse().ok()).collect()
}

/// One eval of the global model at the end of a round (rounds.csv): one row per domain.
#[derive(Clone, Debug, Default, PartialEq, Serialize, Deserialize)]
pub struct RoundRow {
    pub round: usize,
    /// Inner steps completed per site.
    pub step: usize,
    pub domain: String,
    /// Global-model eval loss (CE nats/token) on this domain's held-out set.
    pub eval_loss: f64,
    /// Best achievable loss for the domain (entropy floor) when known.
    pub floor: Option<f64>,
    /// Mean over sites of each site's local model (with skip) on this domain; equals
    /// `eval_loss` when every site holds the whole global model.
    pub local_eval_loss: f64,
    /// Training payload bytes sent by all sites so far (cumulative), and framing.
    pub payload_bytes_total: u64,
    pub framing_bytes_total: u64,
    /// Bytes moved to assemble the global model for evaluation (counted apart), cumulative.
    pub eval_bytes_total: u64,
    /// Run clock at the eval, seconds (virtual on sim).
    pub clock_s: f64,
    /// Wall time of the round's synchronisation, max over sites, ms.
    pub sync_ms: f64,
}

/// Routing and load metrics of one layer at one round (routing.csv), all on the fixed probe
/// set; built from `probe_topk.bin` by [`crate::metrics::probe::routing_rows`]. Load metrics
/// (cv … kl_uniform) are of the global router's probe routing; `skip_rate` is the training
/// skip rate of the round (share of routed slots on non-resident experts, mean over sites).
#[derive(Clone, Debug, Default, PartialEq, Serialize, Deserialize)]
pub struct RoutingRow {
    pub round: usize,
    pub layer: usize,
    /// Global router on the probe set vs its final-round routing (top-k overlap and top-1).
    pub saturation_topk: Option<f64>,
    pub saturation_top1: Option<f64>,
    /// Global router vs the previous round's (none at the first dumped round).
    pub overlap_prev_topk: Option<f64>,
    pub overlap_prev_top1: Option<f64>,
    /// Mean over sites: each site's local router before sync vs the global router after
    /// (none when no site routing was dumped for the round, e.g. DDP).
    pub cross_site_agreement_topk: Option<f64>,
    pub cross_site_agreement_top1: Option<f64>,
    pub cv: f64,
    pub max_vio: f64,
    pub norm_entropy: f64,
    pub dead_experts: usize,
    pub kl_uniform: f64,
    pub skip_rate: f64,
}
