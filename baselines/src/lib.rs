//! DDP, DiLoCo and Photon: each one implementation of the harness strategy trait, plus the
//! registry the `fomoe` binary hands to the runner (FoMoE itself lives in the harness).

pub mod ddp;
pub mod diloco;
pub mod photon;

use anyhow::{bail, Result};
use harness::config::{Method, PhotonTopology, RunConfig};
use harness::strategy::{fomoe::Fomoe, MethodRegistry, Strategy};

/// The strategy of `site` for the run's method.
pub fn site_strategy(cfg: &RunConfig, site: usize) -> Result<Box<dyn Strategy>> {
    Ok(match cfg.method {
        Method::Single => Box::new(Single),
        Method::Ddp => Box::new(ddp::Ddp::new(cfg, site)?),
        Method::Diloco => Box::new(diloco::Diloco::new(cfg, site)?),
        Method::Photon => match cfg.photon_topology {
            PhotonTopology::Star => Box::new(photon::PhotonClient::new(cfg, site)?),
            PhotonTopology::Ring => Box::new(diloco::Diloco::with_name("photon", cfg)),
        },
        Method::Fomoe => Box::new(Fomoe::new(cfg, site)?),
    })
}

fn aggregator(
    cfg: &RunConfig,
    comm: &mut dyn harness::net::Comm,
    dir: &std::path::Path,
) -> Result<()> {
    match (cfg.method, cfg.photon_topology) {
        (Method::Photon, PhotonTopology::Star) => photon::run_aggregator(cfg, comm, dir),
        _ => bail!("method {} has no aggregator", cfg.method.name()),
    }
}

/// Every method the runner can execute.
pub fn registry() -> MethodRegistry {
    MethodRegistry {
        site: site_strategy,
        aggregator,
    }
}

/// Single-site training: no communication at all.
pub struct Single;

impl Strategy for Single {
    fn name(&self) -> &'static str {
        "single"
    }
}
