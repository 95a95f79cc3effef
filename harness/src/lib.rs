//! The fomoe engine. One idea per module; data flows one way:
//! suite → runs → sites train and sync through links → telemetry → results.
pub mod bytes;
pub mod collective;
pub mod net;
pub mod units;
