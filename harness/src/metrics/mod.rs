//! Metrics computed from telemetry (METHODS.md "Metrics"): routing stability and load
//! balance as pure functions ([`routing`]), and the probe top-k dump they are recomputed
//! from ([`probe`]).

pub mod probe;
pub mod routing;

pub use probe::{routing_rows, ProbeDump, ProbeDumpWriter, ProbeHeader, Router, PROBE_DUMP_FILE};
pub use routing::{LoadMetrics, MetricError, Overlap};
