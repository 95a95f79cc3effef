//! Emulated WAN links between sites, and the endpoints sites talk through.
//!
//! - [`link`]: the link model (rate, delay, jitter), scenarios and topologies;
//! - [`comm`]: the [`Comm`] endpoint trait every backend implements;
//! - [`frame`]: framing, checksums, handshake; [`tcp`]: the real-socket endpoint;
//! - backends: [`relay`] (default, no root), [`sim`] (virtual time), [`netns`] (root: one
//!   namespace per site, kernel `tbf` for the rate, the relay in the hub namespace for delay;
//!   another way to produce [`tcp::SiteNetConfig`]s, see [`netns::network`]), and `tcp`
//!   (real links, no emulation: sites dial each other directly, [`tcp::direct_site_config`];
//!   on one host over loopback, across hosts after the [`rendezvous`]).
//!
//! Real backends, in separate processes: the orchestrator starts the network (e.g.
//! [`relay::RelayNetwork::start`]), serialises each site's [`tcp::SiteNetConfig`] to the
//! worker, and the worker calls [`tcp::TcpComm::connect`]. In one process (tests, netcheck),
//! [`build_local`] does all of it and returns one endpoint per site.

pub mod comm;
pub mod cpu;
pub mod error;
pub mod frame;
pub mod link;
pub mod netns;
pub mod relay;
pub mod rendezvous;
pub mod sim;
pub mod tcp;
pub mod timer;

pub use comm::{ClockKind, Comm, LinkCounters};
pub use error::{NetError, PeerName};
pub use link::{LinkMatrix, LinkSpec, Topology};
pub use tcp::NetOptions;

use serde::{Deserialize, Serialize};
use std::fmt;
use std::str::FromStr;

/// How links are emulated.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize, Default)]
#[serde(rename_all = "kebab-case")]
pub enum Backend {
    /// In-process tokio relay on 127.0.0.1 (no root).
    #[default]
    Relay,
    /// Virtual time, no sockets.
    Sim,
    /// Network namespaces with kernel qdiscs (root).
    Netns,
    /// Real links with no emulation: each site dials its peers directly (loopback on one
    /// host, the hosts' own network after a rendezvous with `fomoe site`).
    Tcp,
}

impl Backend {
    pub const NAMES: &'static [&'static str] = &["relay", "sim", "netns", "tcp"];
}

impl fmt::Display for Backend {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(match self {
            Backend::Relay => "relay",
            Backend::Sim => "sim",
            Backend::Netns => "netns",
            Backend::Tcp => "tcp",
        })
    }
}

impl FromStr for Backend {
    type Err = String;

    fn from_str(s: &str) -> Result<Self, String> {
        match s {
            "relay" => Ok(Backend::Relay),
            "sim" => Ok(Backend::Sim),
            "netns" => Ok(Backend::Netns),
            "tcp" => Ok(Backend::Tcp),
            other => Err(format!(
                "unknown backend `{other}`; allowed: {}",
                Backend::NAMES.join(", ")
            )),
        }
    }
}

/// Endpoints for sites that are threads of this process, and what keeps them connected.
/// Fields drop in order: endpoints first, then the relay, then the namespaces.
pub struct LocalNet {
    pub comms: Vec<Box<dyn Comm>>,
    /// The relay (`relay` backend, or `netns` with delay or per-pair rates).
    pub relay: Option<relay::RelayNetwork>,
    /// The namespaces and `tbf`s of the `netns` backend (its relay is in `relay`).
    pub netns: Option<netns::NetnsNetwork>,
}

/// Builds `links.world()` connected endpoints on `backend`, sites as threads of this process.
/// On `netns` every site's sockets live in its own namespace (see [`netns::network`] for which
/// component supplies rate and delay); without root it fails with
/// [`NetError::BackendUnavailable`], one line.
pub fn build_local(
    backend: Backend,
    links: &LinkMatrix,
    net: &NetOptions,
) -> Result<LocalNet, NetError> {
    match backend {
        Backend::Relay => {
            let (relay, comms) = relay::local_relay(links, net, &relay::RelayOptions::default())?;
            Ok(LocalNet {
                comms: comms
                    .into_iter()
                    .map(|c| Box::new(c) as Box<dyn Comm>)
                    .collect(),
                relay: Some(relay),
                netns: None,
            })
        }
        Backend::Sim => {
            let comms = sim::sim_comms(links, net)?;
            Ok(LocalNet {
                comms: comms
                    .into_iter()
                    .map(|c| Box::new(c) as Box<dyn Comm>)
                    .collect(),
                relay: None,
                netns: None,
            })
        }
        Backend::Tcp => {
            let comms = tcp::local_direct(links.world(), net)?;
            Ok(LocalNet {
                comms: comms
                    .into_iter()
                    .map(|c| Box::new(c) as Box<dyn Comm>)
                    .collect(),
                relay: None,
                netns: None,
            })
        }
        Backend::Netns => {
            let mut network =
                netns::NetnsNetwork::start(links, net, &netns::NetnsOptions::default())?;
            let comms = network.connect_local()?;
            let relay = network.take_relay();
            Ok(LocalNet {
                comms: comms
                    .into_iter()
                    .map(|c| Box::new(c) as Box<dyn Comm>)
                    .collect(),
                relay,
                netns: Some(network),
            })
        }
    }
}
