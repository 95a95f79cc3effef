//! The MoE decoder shared by every method (METHODS.md "Model").

pub mod config;
pub mod moe;
pub mod params;
pub mod precision;
pub mod transformer;

pub use config::{ConfigError, ModelConfig, RouterKind, PRESETS};
pub use moe::{AuxScope, SkipPolicy};
pub use params::{ParamGroup, ParamLayout, ParamStore, Residency};
pub use transformer::{ForwardOutput, MoeModel};

#[cfg(test)]
mod tests;
