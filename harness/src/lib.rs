//! The fomoe engine. One idea per module; data flows one way:
//! suite → runs → sites train and sync through links → telemetry → results.

pub mod bench;
pub mod bytes;
pub mod checkpoint;
pub mod collective;
pub mod config;
pub mod data;
pub mod device;
pub mod metrics;
pub mod model;
pub mod net;
pub mod optim;
pub mod orchestrate;
pub mod results;
pub mod rng;
pub mod runner;
pub mod scenario;
pub mod strategy;
pub mod suite;
pub mod sys;
pub mod sysmodel;
pub mod telemetry;
pub mod units;
