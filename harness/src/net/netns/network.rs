//! The `netns` backend wired into the transport: a [`NetnsLab`] (one namespace per site),
//! kernel `tbf` rates derived from the [link model](crate::net::link), and, where the links
//! have delay or jitter, the [relay](crate::net::relay) inside the hub namespace. Sites are
//! ordinary [`TcpComm`]s whose sockets live in their namespaces.
//!
//! ## Who supplies what
//! - **Rate: the kernel `tbf`**, per site, when the link matrix has the per-site form
//!   `rate(i → j) = min(up_i, down_j)`: a uniform matrix (every site up = down = rate), any
//!   matrix from a `per-site` topology, and any `per-pair` matrix that happens to factor so.
//!   The plan takes `up_i = max_j rate(i → j)`, `down_j = max_i rate(i → j)` and checks that
//!   `min(up_i, down_j)` gives back every pair's rate exactly. `tbf` counts L2 bytes while the
//!   link model counts the TCP byte stream (frames), so each `tbf` is set to
//!   `⌈rate · (mtu + 14) / (mtu − 52)⌉` (the [`tcp_payload_fraction`] of full segments:
//!   `rate / 0.9927` at the default MTU 9000): a bulk TCP stream then carries the configured
//!   rate. Small segments (message tails, probes) carry relatively more headers and go a
//!   little slower.
//! - **Rate: the relay**, per ordered pair, for a `per-pair` matrix without that form (one
//!   `tbf` per site direction cannot give pairs i → j and i → k different rates unless the
//!   difference is on the receivers' side). The kernel then shapes nothing, and the relay
//!   applies each pair's rate exactly as the `relay` backend does.
//! - **Delay and jitter: the relay**, whenever any pair has delay or jitter > 0. The kernel
//!   here has no `netem` ([`NetnsLab::has_netem`]); where it has, the relay is still used, so
//!   the delay model (order kept, uniform jitter, seeded) is the same on every machine. The
//!   relay runs in the hub namespace, bound on [`hub_ipv4`] (`10.213.0.254`, on the bridge):
//!   site i's bytes for site j go up i's veth (up `tbf`), through the bridge to the relay,
//!   wait `delay ± jitter` there, and go down j's hub port (down `tbf`) to j. When the kernel
//!   supplies the rate, the relay's own rate is 1 Tbit/s (no pacing: about 0.5 ms per 64 MiB)
//!   and its lazy release slack is 2 ms (backlog 4 ms), below the 4 ms `tbf` bucket, so the
//!   bursts it releases pass the down `tbf` without queueing.
//! - **No delay and a per-site rate**: no relay at all; site i listens on
//!   `site_ipv4(i):`[`SITE_PORT`] in its namespace and dials every higher site directly.
//!
//! ## How this differs from `relay` and `sim`
//! Those give every ordered pair its own link. Here a site's `tbf` is its access link, shared
//! by all its flows: a site sending to k peers at once shares `up_i` among them (the
//! aggregator of a star receives at `down` in total, as the system model's "aggregator's
//! link shared M ways" assumes). A ring step uses one link in and one out per site, so ring
//! all-reduce times agree with the pair model; bytes, results and loss trajectories are
//! identical on every backend.
//!
//! ## Degenerate cases
//! One site: a lab of one namespace, no shaping, no relay, no links. Not root, or no
//! namespaces: [`NetError::BackendUnavailable`], one line.

use std::net::{IpAddr, SocketAddr, TcpListener};
use std::time::{Duration, Instant};

use serde::Serialize;

use super::error::NetnsError;
use super::{
    hub_ipv4, site_ipv4, tcp_payload_fraction, LabOptions, NetnsLab, SiteShape, ETH_HEADER_BYTES,
    MAX_RATE_BPS as TBF_MAX_RATE_BPS, MIN_RATE_BPS as TBF_MIN_RATE_BPS,
};
use crate::net::error::NetError;
use crate::net::link::{LinkMatrix, LinkSpec, PairLink, Topology, MAX_RATE_BPS};
use crate::net::relay::{RelayNetwork, RelayOptions};
use crate::net::tcp::{NetOptions, PeerRoute, SiteNetConfig, TcpComm};
use crate::units::format_rate;

/// Port every site listens on inside its own namespace (each namespace has its own ports,
/// so one fixed port serves all sites and worker processes know it in advance).
pub const SITE_PORT: u16 = 29_500;

/// Relay backlog when the kernel supplies the rate: lazy release slack `backlog/2` = 2 ms,
/// below the default 4 ms `tbf` bucket.
pub const RELAY_BACKLOG_OVER_TBF: Duration = Duration::from_millis(4);

/// How the backend is built.
#[derive(Debug, Clone, Default)]
pub struct NetnsOptions {
    pub lab: LabOptions,
}

/// Which component limits the rate.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
#[serde(rename_all = "kebab-case")]
pub enum RateSource {
    /// Kernel `tbf` per site (up on the site's veth, down on its hub port).
    KernelTbf,
    /// The relay, per ordered pair (the kernel shapes nothing).
    Relay,
    /// Nothing: a single site has no links.
    None,
}

/// Which component adds delay and jitter.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
#[serde(rename_all = "kebab-case")]
pub enum DelaySource {
    /// The relay in the hub namespace.
    Relay,
    /// Nothing: every pair has zero delay and jitter.
    None,
}

/// One site's rates: the model's (what the links say) and the kernel's (`tbf`, L2 bytes).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
pub struct SiteRates {
    /// Most any pair from this site may carry, bit/s of TCP stream.
    pub up_rate_bps: u64,
    /// Most any pair into this site may carry, bit/s of TCP stream.
    pub down_rate_bps: u64,
    /// The `tbf` on the site's veth, L2 bit/s; `None` when the kernel does not shape.
    pub up_tbf_l2_bps: Option<u64>,
    /// The `tbf` on the site's hub port, L2 bit/s; `None` when the kernel does not shape.
    pub down_tbf_l2_bps: Option<u64>,
}

/// How a link matrix maps onto namespaces, `tbf`s and the relay (see the module doc).
#[derive(Debug, Clone, Serialize)]
pub struct NetnsPlan {
    pub world: usize,
    pub mtu_bytes: u32,
    pub rate_by: RateSource,
    pub delay_by: DelaySource,
    /// `(mtu − 52)/(mtu + 14)`: the share of L2 bytes that is TCP stream.
    pub tcp_payload_fraction: f64,
    pub sites: Vec<SiteRates>,
    /// The links the relay applies (delay/jitter, and the rate when `rate_by` is `relay`).
    #[serde(skip)]
    relay_links: Option<LinkMatrix>,
}

/// The `tbf` rate (L2 bit/s) that lets a bulk TCP stream carry `rate_bps`:
/// `⌈rate_bps · (mtu + 14) / (mtu − 52)⌉`.
pub fn tbf_l2_rate_bps(rate_bps: u64, mtu_bytes: u32) -> u64 {
    let num = rate_bps as u128 * (mtu_bytes + ETH_HEADER_BYTES) as u128;
    let den = (mtu_bytes.max(53) - 52) as u128;
    u64::try_from(num.div_ceil(den)).unwrap_or(u64::MAX)
}

impl NetnsPlan {
    /// Derives per-site `tbf`s and the relay's job from `links` (see the module doc).
    pub fn new(links: &LinkMatrix, mtu_bytes: u32) -> Result<Self, NetError> {
        let m = links.world();
        let pair = |i: usize, j: usize| -> Result<LinkSpec, NetError> {
            links
                .get(i, j)
                .ok_or_else(|| NetError::Config(format!("no link for pair {i} → {j}")))
        };
        let pairs: Vec<(usize, usize, LinkSpec)> = (0..m)
            .flat_map(|i| (0..m).filter(move |&j| j != i).map(move |j| (i, j)))
            .map(|(i, j)| pair(i, j).map(|l| (i, j, l)))
            .collect::<Result<_, _>>()?;
        let mut up = vec![0u64; m];
        let mut down = vec![0u64; m];
        for &(i, j, l) in &pairs {
            up[i] = up[i].max(l.rate_bps);
            down[j] = down[j].max(l.rate_bps);
        }
        let delayed = pairs
            .iter()
            .any(|(_, _, l)| !l.delay.is_zero() || !l.jitter.is_zero());
        let per_site = pairs
            .iter()
            .all(|&(i, j, l)| up[i].min(down[j]) == l.rate_bps);
        let rate_by = match (m, per_site) {
            (0 | 1, _) => RateSource::None,
            (_, true) => RateSource::KernelTbf,
            (_, false) => RateSource::Relay,
        };
        let delay_by = if delayed {
            DelaySource::Relay
        } else {
            DelaySource::None
        };
        let tbf = |rate_bps: u64, site: usize, dir: &str| -> Result<u64, NetError> {
            let l2 = tbf_l2_rate_bps(rate_bps, mtu_bytes);
            if !(TBF_MIN_RATE_BPS..=TBF_MAX_RATE_BPS).contains(&l2) {
                return Err(NetError::Config(format!(
                    "site {site} {dir} rate {}: the netns backend's kernel tbf takes {} to {} \
                     (this rate needs {} on the wire at MTU {mtu_bytes}); use the relay backend",
                    format_rate(rate_bps),
                    format_rate(TBF_MIN_RATE_BPS),
                    format_rate(TBF_MAX_RATE_BPS),
                    format_rate(l2)
                )));
            }
            Ok(l2)
        };
        let kernel = rate_by == RateSource::KernelTbf;
        let sites = up
            .iter()
            .zip(&down)
            .enumerate()
            .map(
                |(i, (&up_rate_bps, &down_rate_bps))| -> Result<SiteRates, NetError> {
                    Ok(SiteRates {
                        up_rate_bps,
                        down_rate_bps,
                        up_tbf_l2_bps: if kernel {
                            Some(tbf(up_rate_bps, i, "up")?)
                        } else {
                            None
                        },
                        down_tbf_l2_bps: if kernel {
                            Some(tbf(down_rate_bps, i, "down")?)
                        } else {
                            None
                        },
                    })
                },
            )
            .collect::<Result<Vec<_>, _>>()?;
        let relay_links = if rate_by == RateSource::Relay || delayed {
            // Kernel rate: the relay only delays (its rate is 1 Tbit/s, no pacing).
            let pairs = pairs
                .iter()
                .map(|&(from, to, l)| PairLink {
                    from,
                    to,
                    link: LinkSpec {
                        rate_bps: if kernel { MAX_RATE_BPS } else { l.rate_bps },
                        ..l
                    },
                    directed: true,
                })
                .collect();
            Some(
                Topology::PerPair {
                    default: None,
                    pairs,
                }
                .resolve(m)
                .map_err(|e| NetError::Config(format!("netns relay links: {e}")))?,
            )
        } else {
            None
        };
        Ok(NetnsPlan {
            world: m,
            mtu_bytes,
            rate_by,
            delay_by,
            tcp_payload_fraction: tcp_payload_fraction(mtu_bytes),
            sites,
            relay_links,
        })
    }

    /// The `tbf`s of site `site` (default: unshaped).
    pub fn site_shape(&self, site: usize) -> SiteShape {
        self.sites
            .get(site)
            .map(|s| SiteShape {
                up_rate_bps: s.up_tbf_l2_bps,
                down_rate_bps: s.down_tbf_l2_bps,
                ..SiteShape::default()
            })
            .unwrap_or_default()
    }

    /// Whether the relay sits between the sites.
    pub fn uses_relay(&self) -> bool {
        self.relay_links.is_some()
    }

    /// One line: what supplies the rate.
    pub fn rate_text(&self) -> String {
        match self.rate_by {
            RateSource::None => "none (one site, no links)".into(),
            RateSource::Relay => {
                "relay in the hub namespace, per ordered pair (the per-pair rates do not \
                 factor into per-site up/down limits; the kernel shapes nothing)"
                    .into()
            }
            RateSource::KernelTbf => {
                let uniform = self.sites.windows(2).all(|w| {
                    (w[0].up_rate_bps, w[0].down_rate_bps) == (w[1].up_rate_bps, w[1].down_rate_bps)
                });
                let s = &self.sites[0];
                let what = if uniform && s.up_rate_bps == s.down_rate_bps {
                    format!(
                        "up = down = {} per site, tbf at {} L2",
                        format_rate(s.up_rate_bps),
                        format_rate(s.up_tbf_l2_bps.unwrap_or(0))
                    )
                } else {
                    "per-site up/down (see sites)".into()
                };
                format!(
                    "kernel tbf on each site's veth (up) and hub port (down): {what} \
                     (= rate ÷ TCP payload fraction {:.4} at MTU {})",
                    self.tcp_payload_fraction, self.mtu_bytes
                )
            }
        }
    }

    /// One line: what supplies delay and jitter.
    pub fn delay_text(&self) -> String {
        match (self.delay_by, self.rate_by) {
            (DelaySource::None, _) => {
                "none (zero delay and jitter: sites dial each other directly)".into()
            }
            (DelaySource::Relay, RateSource::KernelTbf) => format!(
                "relay in the hub namespace on {} (per pair, rate unlimited there; no netem used)",
                hub_ipv4()
            ),
            (DelaySource::Relay, _) => format!(
                "relay in the hub namespace on {} (per pair; no netem used)",
                hub_ipv4()
            ),
        }
    }
}

impl From<NetnsError> for NetError {
    fn from(e: NetnsError) -> Self {
        match e {
            NetnsError::Unavailable(reason) => NetError::BackendUnavailable {
                backend: "netns",
                reason,
            },
            other => NetError::Backend {
                backend: "netns",
                reason: other.to_string(),
            },
        }
    }
}

/// A running `netns` network: the lab, its `tbf`s, the relay if the plan needs one, and one
/// [`SiteNetConfig`] per site with namespace addresses. Dropping it stops the relay, then
/// removes every namespace. Endpoints must be dropped (or their processes ended) first.
pub struct NetnsNetwork {
    // Fields drop in order: the relay (in the hub namespace) before the lab.
    relay: Option<RelayNetwork>,
    configs: Vec<SiteNetConfig>,
    plan: NetnsPlan,
    lab: NetnsLab,
}

impl NetnsNetwork {
    /// Builds the lab for `links.world()` sites, shapes it and starts the relay if needed.
    /// On failure nothing is left behind.
    pub fn start(
        links: &LinkMatrix,
        net: &NetOptions,
        opts: &NetnsOptions,
    ) -> Result<Self, NetError> {
        net.limits.validate()?;
        let plan = NetnsPlan::new(links, opts.lab.mtu_bytes)?;
        let m = plan.world;
        let lab = NetnsLab::with_options(m, &opts.lab)?;
        for i in 0..m {
            let shape = plan.site_shape(i);
            if shape != SiteShape::default() {
                lab.shape_site(i, &shape)?;
            }
        }
        let relay = match &plan.relay_links {
            Some(relay_links) => {
                let ip = lab.add_hub_address()?;
                let ropts = RelayOptions {
                    bind_ip: IpAddr::V4(ip),
                    backlog: if plan.rate_by == RateSource::KernelTbf {
                        RELAY_BACKLOG_OVER_TBF
                    } else {
                        RelayOptions::default().backlog
                    },
                    ..RelayOptions::default()
                };
                Some(lab.in_hub(|| RelayNetwork::start(relay_links, net, &ropts))??)
            }
            None => None,
        };
        let configs = match &relay {
            Some(r) => r.site_configs().to_vec(),
            None => direct_configs(m, net),
        };
        Ok(NetnsNetwork {
            relay,
            configs,
            plan,
            lab,
        })
    }

    /// One config per site, in site order; a site uses it from inside its namespace.
    pub fn site_configs(&self) -> &[SiteNetConfig] {
        &self.configs
    }

    pub fn plan(&self) -> &NetnsPlan {
        &self.plan
    }

    pub fn lab(&self) -> &NetnsLab {
        &self.lab
    }

    pub fn relay(&self) -> Option<&RelayNetwork> {
        self.relay.as_ref()
    }

    /// Hands the relay to the caller (to read its statistics on shutdown); the caller must
    /// drop or shut it down before this network.
    pub fn take_relay(&mut self) -> Option<RelayNetwork> {
        self.relay.take()
    }

    /// Connects every site as a thread of this process: listeners are bound inside each
    /// site's namespace, each site dials from a thread inside its namespace, and the
    /// resulting endpoints work from any thread. All sites share one epoch.
    pub fn connect_local(&self) -> Result<Vec<TcpComm>, NetError> {
        let epoch = Instant::now();
        let mut listeners: Vec<Option<TcpListener>> = Vec::with_capacity(self.configs.len());
        for (i, cfg) in self.configs.iter().enumerate() {
            let l = match (cfg.listen, cfg.peers.contains(&PeerRoute::Accept)) {
                (Some(addr), true) => Some(
                    self.lab
                        .in_site(i, || TcpListener::bind(addr))?
                        .map_err(|e| {
                            NetError::Config(format!("site {i}: cannot listen on {addr}: {e}"))
                        })?,
                ),
                _ => None,
            };
            listeners.push(l);
        }
        let mut handles = Vec::with_capacity(self.configs.len());
        for (i, (cfg, l)) in self.configs.iter().zip(listeners).enumerate() {
            let cfg = cfg.clone();
            handles.push(
                self.lab
                    .spawn_in_site(i, move || TcpComm::connect_with(&cfg, l, epoch))?,
            );
        }
        let results: Vec<Result<TcpComm, NetError>> = handles
            .into_iter()
            .enumerate()
            .map(|(i, h)| match h.join() {
                Ok(r) => r.map_err(NetError::from).and_then(|r| r),
                Err(_) => Err(NetError::Config(format!(
                    "site {i}: connect thread panicked"
                ))),
            })
            .collect();
        results.into_iter().collect()
    }

    /// A JSON record of the network for a run directory: the plan, the namespaces and the
    /// relay address.
    pub fn record(&self) -> serde_json::Value {
        serde_json::json!({
            "backend": "netns",
            "rate_by": self.plan.rate_by,
            "rate": self.plan.rate_text(),
            "delay_by": self.plan.delay_by,
            "delay": self.plan.delay_text(),
            "mtu_bytes": self.plan.mtu_bytes,
            "tcp_payload_fraction": self.plan.tcp_payload_fraction,
            "sites": self.plan.sites,
            "namespaces": self.lab.namespace_names(),
            "relay_ip": self.relay.as_ref().map(|_| hub_ipv4().to_string()),
            "has_netem": self.lab.has_netem(),
        })
    }

    /// Stops the relay and removes the namespaces now, reporting a failure to remove them.
    pub fn close(mut self) -> Result<(), NetError> {
        drop(self.relay.take());
        let NetnsNetwork { lab, .. } = self;
        lab.close().map_err(NetError::from)
    }
}

/// Direct routes: site i listens on `site_ipv4(i):SITE_PORT` and dials every higher site.
fn direct_configs(world: usize, net: &NetOptions) -> Vec<SiteNetConfig> {
    let addr = |i: usize| SocketAddr::from((site_ipv4(i), SITE_PORT));
    (0..world)
        .map(|i| SiteNetConfig {
            run_id: net.run_id.clone(),
            site: i,
            world,
            token: net.token.clone(),
            listen: Some(addr(i)),
            peers: (0..world)
                .map(|j| match j.cmp(&i) {
                    std::cmp::Ordering::Equal => PeerRoute::Myself,
                    std::cmp::Ordering::Greater => PeerRoute::Dial(addr(j)),
                    std::cmp::Ordering::Less => PeerRoute::Accept,
                })
                .collect(),
            timeouts: net.timeouts,
            max_frame_bytes: net.limits.max_frame_bytes,
            max_message_bytes: net.limits.max_message_bytes,
            peer_limits: net.peer_limits,
        })
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::net::link::SiteAccess;

    fn ms(v: u64) -> Duration {
        Duration::from_millis(v)
    }

    #[test]
    fn l2_rate_covers_headers_exactly() {
        // (9000 + 14) / (9000 − 52) = 9014 / 8948.
        assert_eq!(tbf_l2_rate_bps(8948, 9000), 9014);
        assert_eq!(tbf_l2_rate_bps(100_000_000, 9000), 100_737_595);
        assert_eq!(tbf_l2_rate_bps(100_000_000, 1500), 104_558_012);
    }

    #[test]
    fn uniform_links_give_symmetric_tbfs_and_no_relay_without_delay() {
        let l = LinkSpec::new(100_000_000, Duration::ZERO, Duration::ZERO).unwrap();
        let p = NetnsPlan::new(&Topology::uniform(l).resolve(4).unwrap(), 9000).unwrap();
        assert_eq!(p.rate_by, RateSource::KernelTbf);
        assert_eq!(p.delay_by, DelaySource::None);
        assert!(!p.uses_relay());
        for i in 0..4 {
            assert_eq!(
                p.sites[i],
                SiteRates {
                    up_rate_bps: 100_000_000,
                    down_rate_bps: 100_000_000,
                    up_tbf_l2_bps: Some(100_737_595),
                    down_tbf_l2_bps: Some(100_737_595),
                }
            );
        }
        assert!(
            p.rate_text().contains("up = down = 100mbit"),
            "{}",
            p.rate_text()
        );
    }

    #[test]
    fn delay_puts_the_relay_in_between_with_the_kernel_rate() {
        let l = LinkSpec::new(100_000_000, ms(25), ms(1)).unwrap();
        let p = NetnsPlan::new(&Topology::uniform(l).resolve(3).unwrap(), 9000).unwrap();
        assert_eq!(
            (p.rate_by, p.delay_by),
            (RateSource::KernelTbf, DelaySource::Relay)
        );
        let r = p.relay_links.as_ref().unwrap();
        let got = r.get(2, 0).unwrap();
        assert_eq!(
            got,
            LinkSpec {
                rate_bps: MAX_RATE_BPS,
                delay: ms(25),
                jitter: ms(1)
            }
        );
    }

    #[test]
    fn per_site_topology_maps_onto_tbfs_exactly() {
        let site = |up: u64, down: u64| SiteAccess {
            up,
            down,
            delay: ms(0),
            jitter: ms(0),
        };
        let t = Topology::PerSite {
            sites: vec![
                site(10_000_000, 50_000_000),
                site(20_000_000, 20_000_000),
                site(100_000_000, 5_000_000),
            ],
        };
        let p = NetnsPlan::new(&t.resolve(3).unwrap(), 9000).unwrap();
        assert_eq!(p.rate_by, RateSource::KernelTbf);
        assert!(!p.uses_relay());
        // Site 2's up is only used up to the fastest receiver (50 Mbit/s): same pair rates.
        let ups: Vec<u64> = p.sites.iter().map(|s| s.up_rate_bps).collect();
        let downs: Vec<u64> = p.sites.iter().map(|s| s.down_rate_bps).collect();
        assert_eq!(ups, [10_000_000, 20_000_000, 50_000_000]);
        assert_eq!(downs, [50_000_000, 20_000_000, 5_000_000]);
    }

    #[test]
    fn per_pair_rates_that_do_not_factor_go_to_the_relay() {
        let fast = LinkSpec::new(1_000_000_000, Duration::ZERO, Duration::ZERO).unwrap();
        let slow = LinkSpec::new(10_000_000, Duration::ZERO, Duration::ZERO).unwrap();
        // 0 → 1 slow, everything else fast: up_0 = fast (0 → 2), down_1 = fast (2 → 1).
        let t = Topology::PerPair {
            default: Some(fast),
            pairs: vec![PairLink {
                from: 0,
                to: 1,
                link: slow,
                directed: true,
            }],
        };
        let p = NetnsPlan::new(&t.resolve(3).unwrap(), 9000).unwrap();
        assert_eq!(
            (p.rate_by, p.delay_by),
            (RateSource::Relay, DelaySource::None)
        );
        assert_eq!(p.site_shape(0), SiteShape::default());
        assert_eq!(p.relay_links.as_ref().unwrap().get(0, 1), Some(slow));
        assert_eq!(p.relay_links.as_ref().unwrap().get(1, 0), Some(fast));
    }

    #[test]
    fn rates_beyond_tbf_are_refused_in_one_line() {
        let l = LinkSpec::new(500_000_000_000, Duration::ZERO, Duration::ZERO).unwrap();
        let e = NetnsPlan::new(&Topology::uniform(l).resolve(2).unwrap(), 9000).unwrap_err();
        let msg = e.to_string();
        assert!(
            msg.contains("site 0 up rate 500gbit") && msg.contains("tbf") && !msg.contains('\n'),
            "{msg}"
        );
    }

    #[test]
    fn one_site_needs_nothing() {
        let l = LinkSpec::new(1_000_000, ms(5), Duration::ZERO).unwrap();
        let p = NetnsPlan::new(&Topology::uniform(l).resolve(1).unwrap(), 9000).unwrap();
        assert_eq!(
            (p.rate_by, p.delay_by),
            (RateSource::None, DelaySource::None)
        );
        assert!(!p.uses_relay());
    }
}
