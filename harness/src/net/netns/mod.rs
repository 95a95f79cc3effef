//! The `netns` network backend, namespace and kernel-shaping layer: one Linux network
//! namespace per site, joined by veth pairs to a bridge in a hub namespace, with per-site rate
//! limits applied by the kernel's `tbf` qdisc. Needs root; built from Rust only (nix
//! `unshare`/`setns`/`mount`, raw rtnetlink messages), no `ip` or `tc`.
//!
//! ## Topology
//! ```text
//!   ns <p>s0                 ns <p>hub                    ns <p>s1
//!   fmoe-s0 10.213.0.1/24 ── fmoe-h0 ┐
//!                                    ├─ bridge fmoe-br ─ fmoe-h1 ── fmoe-s1 10.213.0.2/24
//!                                   ...
//! ```
//! Site `i` gets `10.213.0.(i+1)/24` ([`site_ipv4`]); the subnet exists only inside these
//! namespaces, and nothing is ever created in the caller's namespace (each veth is created in
//! its site namespace with its peer placed directly in the hub). A bridge rather than a veth
//! pair per site pair keeps the link count at M and gives every site one egress and one
//! ingress point to shape: M sites need M veth pairs, not M(M-1)/2.
//!
//! ## Rates
//! [`SiteShape::up_rate_bps`] is a `tbf` on the site end of its veth (traffic leaving the
//! site); [`SiteShape::down_rate_bps`] is a `tbf` on the hub end (traffic entering the site),
//! so both directions are shaped on an egress and no `ifb` is needed. A transfer from site a
//! to site b is limited by `min(up(a), down(b))`. `tbf` sends at most
//! `burst_bytes + rate_bps/8 · t` L2 bytes in any interval `t` and drains a backlog at exactly
//! the rate. Rates count L2 frames (Ethernet header included), so TCP payload arrives at
//! `rate · tcp_payload_fraction(mtu)` with `tcp_payload_fraction(mtu) = (mtu − 52)/(mtu + 14)`
//! (IPv4 20 + TCP 20 + timestamps 12 bytes of headers per segment, Ethernet 14): 0.956 at
//! MTU 1500, 0.993 at the default MTU 9000. The queue in front of the bucket holds 50 ms of
//! rate but at least 32 full frames ([`default_queue_bytes`]): with fewer, TCP overflows it
//! (measured at 10 Mbit/s, MTU 9000, 7-frame queue: ~200 drops in 2 s, a quarter of the bytes
//! retransmitted, and retransmission timeouts that cost up to 20% of the rate; with 32: none).
//!
//! ## Delay
//! Delay and jitter would come from `netem`. [`probe_netem`] tries to create one (in a
//! throwaway namespace) and reports whether the kernel has it; where it does not (this
//! project's machines: `CONFIG_NET_SCH_NETEM` unset), delay must come from the relay backend
//! on top of these namespaces. [`NetnsLab::has_netem`] carries the answer. [`network`] wires
//! the lab into the transport and puts the relay in the hub namespace
//! ([`NetnsLab::add_hub_address`], [`NetnsLab::in_hub`]) for delay and jitter.
//!
//! ## Running code in a site
//! [`NetnsLab::in_site`] runs a closure on a fresh thread that entered the site's namespace;
//! the caller's thread never moves. Sockets keep the namespace they were created in, so a
//! `TcpListener`/`TcpStream` made inside `in_site` can be returned and used (or handed to
//! tokio with `from_std`) from any thread. A worker process enters with [`enter_netns`] on
//! [`NetnsLab::site_netns_path`], or is spawned inside with [`NetnsLab::command_in_site`].
//!
//! ## Cleanup
//! Namespaces are named `<prefix><pid>-<n>-hub` and `<prefix><pid>-<n>-s<i>` under
//! `/run/netns` (default prefix `fomoe-`). Removing them destroys every interface in them.
//! They are removed by `Drop` (also while unwinding from a panic), by a SIGINT/SIGTERM/SIGHUP
//! handler ([`install_signal_cleanup`]) that then ends the process as the signal would, and,
//! for runs killed outright (SIGKILL), by [`cleanup_stale`], which every new lab runs first.
//!
//! ## Degenerate cases
//! One site: a lab with a bridge and one port, no peer to talk to. Not root, or namespaces
//! refused: [`NetnsError::Unavailable`], one line, and tests skip unless `CI=true`.

mod error;
mod measure;
pub mod network;
mod nl;
mod ns;
mod tc;
#[cfg(test)]
mod tests;

use std::net::Ipv4Addr;
use std::os::fd::{AsFd, AsRawFd};
use std::path::Path;
use std::process::Command;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Mutex, MutexGuard, OnceLock};
use std::thread::JoinHandle;

use nix::sched::{setns, unshare, CloneFlags};

pub use error::{NetnsError, Result};
pub use measure::{measure_tcp_transfer, tcp_payload_fraction, TransferSample};
pub use network::{DelaySource, NetnsNetwork, NetnsOptions, NetnsPlan, RateSource};
pub use nl::LinkCounters;
pub use ns::{
    cleanup_live_labs, cleanup_stale, enter_netns, install_signal_cleanup, list_namespaces,
    NETNS_DIR,
};

use nl::Nl;
use ns::Ns;

/// Default first part of every namespace name.
pub const DEFAULT_PREFIX: &str = "fomoe-";
/// Name of the bridge in the hub namespace.
pub const BRIDGE_NAME: &str = "fmoe-br";
/// Most sites one lab holds (one /24, hub without an address).
pub const MAX_SITES: usize = 250;
/// Length of the site subnet's prefix: `10.213.0.0/24`.
pub const SITE_PREFIX_LEN: u8 = 24;
/// Ethernet header bytes that `tbf` counts on top of the IP packet.
pub const ETH_HEADER_BYTES: u32 = 14;

/// The address of site `site` (0-based): `10.213.0.(site + 1)`. Valid for `site < MAX_SITES`.
pub fn site_ipv4(site: usize) -> Ipv4Addr {
    Ipv4Addr::new(10, 213, 0, (site + 1) as u8)
}

/// The hub's address on the bridge, `10.213.0.254`, once [`NetnsLab::add_hub_address`] has
/// put it there (outside the site range `.1..=.250`). Only sites of the lab reach it.
pub fn hub_ipv4() -> Ipv4Addr {
    Ipv4Addr::new(10, 213, 0, 254)
}

/// Name of the site end of site `site`'s veth (inside the site namespace).
pub fn site_link_name(site: usize) -> String {
    format!("fmoe-s{site}")
}

/// Name of the hub end of site `site`'s veth (inside the hub namespace, a bridge port).
pub fn hub_link_name(site: usize) -> String {
    format!("fmoe-h{site}")
}

/// How a lab is built.
#[derive(Debug, Clone)]
pub struct LabOptions {
    /// First part of every namespace name; `[a-z0-9-]`, ending in `-`.
    pub name_prefix: String,
    /// MTU of every veth, 68..=65535. 9000 keeps TCP header overhead under 1%.
    pub mtu_bytes: u32,
    /// Install the SIGINT/SIGTERM/SIGHUP cleanup handler ([`install_signal_cleanup`]).
    pub install_signal_handler: bool,
    /// Run [`cleanup_stale`] on `name_prefix` before creating anything.
    pub remove_stale: bool,
}

impl Default for LabOptions {
    fn default() -> Self {
        LabOptions {
            name_prefix: DEFAULT_PREFIX.to_string(),
            mtu_bytes: 9000,
            install_signal_handler: true,
            remove_stale: true,
        }
    }
}

/// Rate limits of one site. `None` leaves a direction unshaped (veth speed).
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct SiteShape {
    /// Limit on traffic leaving the site, L2 bits per second.
    pub up_rate_bps: Option<u64>,
    /// Limit on traffic entering the site, L2 bits per second.
    pub down_rate_bps: Option<u64>,
    /// Token bucket size; default `max(4 · (mtu + 14), rate/8 · 4 ms)`.
    pub burst_bytes: Option<u32>,
    /// Queue (byte FIFO) in front of the bucket; default
    /// `burst + max(rate/8 · 50 ms, 32 frames)` ([`default_queue_bytes`]).
    pub queue_bytes: Option<u32>,
}

impl SiteShape {
    /// The same rate both ways, default burst and queue.
    pub fn symmetric(rate_bps: u64) -> Self {
        SiteShape {
            up_rate_bps: Some(rate_bps),
            down_rate_bps: Some(rate_bps),
            ..SiteShape::default()
        }
    }
}

/// Lowest and highest rate accepted: 8 kbit/s to 100 Gbit/s.
pub const MIN_RATE_BPS: u64 = 8_000;
pub const MAX_RATE_BPS: u64 = 100_000_000_000;

/// Default token bucket for `rate_bps` at `mtu_bytes`: four full frames or 4 ms of rate,
/// whichever is larger (4 ms keeps the kernel's timer granularity below the bucket).
pub fn default_burst_bytes(rate_bps: u64, mtu_bytes: u32) -> u32 {
    let frames = 4 * (mtu_bytes + ETH_HEADER_BYTES) as u64;
    let four_ms = rate_bps / 8 / 250;
    u32::try_from(frames.max(four_ms)).unwrap_or(u32::MAX)
}

/// Least queue (beyond the burst) in full frames; see [`default_queue_bytes`].
pub const MIN_QUEUE_FRAMES: u32 = 32;

/// Default queue: the burst plus 50 ms of rate, or plus [`MIN_QUEUE_FRAMES`] full frames
/// where that is more. TCP keeps about a congestion window of packets queued at the
/// bottleneck (at least ~10 with the kernel's BBR and the sub-millisecond base RTT between
/// namespaces): at MTU 9000 and 10 Mbit/s, 50 ms is only 7 frames, and a queue that short
/// drops a quarter of the segments and now and then stalls on a retransmission timeout.
pub fn default_queue_bytes(rate_bps: u64, burst_bytes: u32, mtu_bytes: u32) -> u32 {
    let fifty_ms = rate_bps / 8 / 20;
    let frames = MIN_QUEUE_FRAMES as u64 * (mtu_bytes + ETH_HEADER_BYTES) as u64;
    u32::try_from(burst_bytes as u64 + fifty_ms.max(frames)).unwrap_or(u32::MAX)
}

struct Site {
    ns: Ns,
    addr: Ipv4Addr,
    link_index: u32,
    hub_link_index: u32,
}

static NEXT_LAB: AtomicU64 = AtomicU64::new(0);
static NETEM: OnceLock<std::result::Result<bool, String>> = OnceLock::new();

/// One network namespace per site, bridged through a hub namespace; see the module docs.
/// Dropping it removes every namespace (and so every interface) it created.
pub struct NetnsLab {
    prefix: String,
    mtu_bytes: u32,
    hub: Option<Ns>,
    bridge_index: u32,
    sites: Vec<Site>,
    /// Whether a root tbf is installed: [site][0 = up, 1 = down].
    shaped: Mutex<Vec<[bool; 2]>>,
    /// Whether [`hub_ipv4`] is on the bridge.
    hub_addressed: Mutex<bool>,
    has_netem: bool,
}

fn lock(nl: &Mutex<Nl>) -> MutexGuard<'_, Nl> {
    nl.lock().unwrap_or_else(|p| p.into_inner())
}

impl NetnsLab {
    /// A lab of `sites` namespaces with default options.
    pub fn new(sites: usize) -> Result<Self> {
        Self::with_options(sites, &LabOptions::default())
    }

    /// A lab of `sites` namespaces. Fails with [`NetnsError::Unavailable`] where this process
    /// cannot create network namespaces; on any failure nothing is left behind.
    pub fn with_options(sites: usize, opts: &LabOptions) -> Result<Self> {
        if sites == 0 || sites > MAX_SITES {
            return Err(NetnsError::Config {
                field: "sites",
                value: sites.to_string(),
                allowed: format!("1..={MAX_SITES}"),
            });
        }
        if !(68..=65535).contains(&opts.mtu_bytes) {
            return Err(NetnsError::Config {
                field: "mtu_bytes",
                value: opts.mtu_bytes.to_string(),
                allowed: "68..=65535".into(),
            });
        }
        let p = &opts.name_prefix;
        if p.is_empty()
            || !p.ends_with('-')
            || !p
                .bytes()
                .all(|b| b.is_ascii_lowercase() || b.is_ascii_digit() || b == b'-')
        {
            return Err(NetnsError::Config {
                field: "name_prefix",
                value: format!("{p:?}"),
                allowed: "non-empty [a-z0-9-], ending in '-'".into(),
            });
        }
        ns::check_root()?;
        if opts.install_signal_handler {
            install_signal_cleanup()?;
        }
        if opts.remove_stale {
            let removed = cleanup_stale(p)?;
            if !removed.is_empty() {
                tracing::info!("removed stale namespaces of dead runs: {removed:?}");
            }
        }
        let prefix = format!(
            "{p}{}-{}-",
            std::process::id(),
            NEXT_LAB.fetch_add(1, Ordering::Relaxed)
        );
        ns::register(&prefix);
        // From here on an early return drops `lab`, whose Drop removes what exists.
        let mut lab = NetnsLab {
            prefix,
            mtu_bytes: opts.mtu_bytes,
            hub: None,
            bridge_index: 0,
            sites: Vec::with_capacity(sites),
            shaped: Mutex::new(vec![[false; 2]; sites]),
            hub_addressed: Mutex::new(false),
            has_netem: false,
        };
        let hub = ns::create(&format!("{}hub", lab.prefix))?;
        {
            let mut nl = lock(&hub.nl);
            let lo = nl.link_index("lo")?;
            nl.set_link(lo, None, None, true, "lo (hub)")?;
            nl.add_bridge(BRIDGE_NAME)?;
            lab.bridge_index = nl.link_index(BRIDGE_NAME)?;
            nl.set_link(lab.bridge_index, None, None, true, BRIDGE_NAME)?;
        }
        lab.hub = Some(hub);
        for i in 0..sites {
            let site = lab.build_site(i)?;
            lab.sites.push(site);
        }
        lab.has_netem = match NETEM.get_or_init(|| probe_netem().map_err(|e| e.to_string())) {
            Ok(b) => *b,
            Err(e) => {
                tracing::warn!("netem probe failed, assuming absent: {e}");
                false
            }
        };
        Ok(lab)
    }

    fn hub(&self) -> &Ns {
        self.hub
            .as_ref()
            .expect("hub namespace exists once the lab is built")
    }

    fn build_site(&self, i: usize) -> Result<Site> {
        let ns = ns::create(&format!("{}s{i}", self.prefix))?;
        let hub = self.hub();
        let link = site_link_name(i);
        let hub_link = hub_link_name(i);
        let addr = site_ipv4(i);
        let link_index = {
            let mut nl = lock(&ns.nl);
            nl.add_veth(&link, &hub_link, hub.file.as_raw_fd(), self.mtu_bytes)?;
            let lo = nl.link_index("lo")?;
            nl.set_link(lo, None, None, true, "lo")?;
            let idx = nl.link_index(&link)?;
            nl.add_ipv4(idx, addr, SITE_PREFIX_LEN)?;
            nl.set_link(idx, None, None, true, &link)?;
            idx
        };
        let hub_link_index = {
            let mut nl = lock(&hub.nl);
            let idx = nl.link_index(&hub_link)?;
            nl.set_link(idx, None, Some(self.bridge_index), true, &hub_link)?;
            idx
        };
        Ok(Site {
            ns,
            addr,
            link_index,
            hub_link_index,
        })
    }

    fn site(&self, site: usize) -> Result<&Site> {
        self.sites.get(site).ok_or(NetnsError::NoSuchSite {
            site,
            sites: self.sites.len(),
        })
    }

    /// Number of sites.
    pub fn sites(&self) -> usize {
        self.sites.len()
    }

    /// The per-lab name prefix, `<prefix><pid>-<n>-`; every namespace of the lab starts with it.
    pub fn prefix(&self) -> &str {
        &self.prefix
    }

    /// MTU of every veth in the lab.
    pub fn mtu_bytes(&self) -> u32 {
        self.mtu_bytes
    }

    /// The IPv4 address of `site` (reachable from every other site of the lab).
    pub fn site_addr(&self, site: usize) -> Result<Ipv4Addr> {
        Ok(self.site(site)?.addr)
    }

    /// Name of `site`'s namespace (as `ip netns` lists it).
    pub fn site_netns_name(&self, site: usize) -> Result<&str> {
        Ok(&self.site(site)?.ns.name)
    }

    /// Path of `site`'s namespace file, for [`enter_netns`] in a worker process.
    pub fn site_netns_path(&self, site: usize) -> Result<&Path> {
        Ok(&self.site(site)?.ns.path)
    }

    /// Path of the hub namespace file.
    pub fn hub_netns_path(&self) -> &Path {
        &self.hub().path
    }

    /// Names of all namespaces of the lab: the hub, then the sites in order.
    pub fn namespace_names(&self) -> Vec<String> {
        let mut v = Vec::with_capacity(self.sites.len() + 1);
        v.extend(self.hub.iter().map(|h| h.name.clone()));
        v.extend(self.sites.iter().map(|s| s.ns.name.clone()));
        v
    }

    /// Inode numbers of the lab's namespaces (hub, then sites): the `N` in `net:[N]` that
    /// `/proc/<pid>/ns/net` and `/proc/self/mountinfo` show.
    pub fn namespace_inodes(&self) -> Vec<u64> {
        let mut v = Vec::with_capacity(self.sites.len() + 1);
        v.extend(self.hub.iter().map(|h| h.inode));
        v.extend(self.sites.iter().map(|s| s.ns.inode));
        v
    }

    /// Whether the kernel has `netem` (probed once per process). When false, delay and jitter
    /// must come from the relay backend.
    pub fn has_netem(&self) -> bool {
        self.has_netem
    }

    /// `Ok` where the kernel has `netem`; otherwise [`NetnsError::Unsupported`] saying that
    /// delay and jitter must come from the relay.
    pub fn require_netem(&self) -> Result<()> {
        if self.has_netem {
            Ok(())
        } else {
            Err(NetnsError::Unsupported(
                "the kernel has no netem qdisc (CONFIG_NET_SCH_NETEM unset): \
                 delay and jitter must come from the relay"
                    .into(),
            ))
        }
    }

    /// Runs `f` on a fresh thread inside `site`'s namespace and returns its result; the calling
    /// thread stays where it is. A panic in `f` is resumed here.
    pub fn in_site<T: Send, F: FnOnce() -> T + Send>(&self, site: usize, f: F) -> Result<T> {
        let s = self.site(site)?;
        ns::run_in(&s.ns.file, &s.ns.name, f)
    }

    /// Runs `f` on a fresh thread inside the hub namespace (see [`NetnsLab::in_site`]). A
    /// socket bound there on [`hub_ipv4`] is reachable from every site, through the site's
    /// up `tbf` on the way in and its down `tbf` on the way out.
    pub fn in_hub<T: Send, F: FnOnce() -> T + Send>(&self, f: F) -> Result<T> {
        let hub = self.hub();
        ns::run_in(&hub.file, &hub.name, f)
    }

    /// Puts [`hub_ipv4`]`/24` on the bridge (once; later calls do nothing) and returns it, so
    /// that a process listening in the hub namespace ([`NetnsLab::in_hub`]) is reachable from
    /// the sites. The address exists only inside the hub namespace.
    pub fn add_hub_address(&self) -> Result<Ipv4Addr> {
        let mut done = self.hub_addressed.lock().unwrap_or_else(|p| p.into_inner());
        if !*done {
            lock(&self.hub().nl).add_ipv4(self.bridge_index, hub_ipv4(), SITE_PREFIX_LEN)?;
            *done = true;
        }
        Ok(hub_ipv4())
    }

    /// Runs `f` on a new detached thread inside `site`'s namespace. The thread keeps the
    /// namespace alive until it ends, even if the lab is dropped first.
    pub fn spawn_in_site<T, F>(&self, site: usize, f: F) -> Result<JoinHandle<Result<T>>>
    where
        T: Send + 'static,
        F: FnOnce() -> T + Send + 'static,
    {
        let s = self.site(site)?;
        let file =
            s.ns.file
                .try_clone()
                .map_err(|e| NetnsError::io(format!("dup fd of {}", s.ns.name), e))?;
        let name = s.ns.name.clone();
        std::thread::Builder::new()
            .name(format!("in-{name}"))
            .spawn(move || -> Result<T> {
                setns(file.as_fd(), CloneFlags::CLONE_NEWNET)
                    .map_err(|e| NetnsError::nix(format!("setns into {name}"), e))?;
                drop(file);
                Ok(f())
            })
            .map_err(|e| NetnsError::io("spawn site thread", e))
    }

    /// Makes `cmd` start inside `site`'s namespace (a `setns` between fork and exec).
    pub fn command_in_site(&self, site: usize, cmd: &mut Command) -> Result<()> {
        use std::os::unix::process::CommandExt;
        let s = self.site(site)?;
        let file =
            s.ns.file
                .try_clone()
                .map_err(|e| NetnsError::io(format!("dup fd of {}", s.ns.name), e))?;
        // SAFETY: the closure only issues the setns(2) system call on an fd it owns, which is
        // async-signal-safe, as required between fork and exec.
        unsafe {
            cmd.pre_exec(move || {
                if libc::setns(file.as_raw_fd(), libc::CLONE_NEWNET) != 0 {
                    return Err(std::io::Error::last_os_error());
                }
                Ok(())
            });
        }
        Ok(())
    }

    /// Sets (or replaces, or removes) `site`'s rate limits.
    pub fn shape_site(&self, site: usize, shape: &SiteShape) -> Result<()> {
        let s = self.site(site)?;
        let hub = self.hub();
        let mut shaped = self.shaped.lock().unwrap_or_else(|p| p.into_inner());
        for (dir, rate, nl, index, what) in [
            (
                0,
                shape.up_rate_bps,
                &s.ns.nl,
                s.link_index,
                site_link_name(site),
            ),
            (
                1,
                shape.down_rate_bps,
                &hub.nl,
                s.hub_link_index,
                hub_link_name(site),
            ),
        ] {
            let mut nl = lock(nl);
            match rate {
                Some(rate_bps) => {
                    let t = self.tbf_for(rate_bps, shape, dir)?;
                    nl.replace_root_qdisc(index, 1, "tbf", tc::tbf_options(&t), &what)?;
                    shaped[site][dir] = true;
                }
                None if shaped[site][dir] => {
                    nl.delete_root_qdisc(index, &what)?;
                    shaped[site][dir] = false;
                }
                None => {}
            }
        }
        Ok(())
    }

    /// Sets the same shape on every site.
    pub fn shape_all(&self, shape: &SiteShape) -> Result<()> {
        (0..self.sites.len()).try_for_each(|i| self.shape_site(i, shape))
    }

    fn tbf_for(&self, rate_bps: u64, shape: &SiteShape, dir: usize) -> Result<tc::Tbf> {
        let field = if dir == 0 {
            "up_rate_bps"
        } else {
            "down_rate_bps"
        };
        if !(MIN_RATE_BPS..=MAX_RATE_BPS).contains(&rate_bps) {
            return Err(NetnsError::Config {
                field,
                value: rate_bps.to_string(),
                allowed: format!("{MIN_RATE_BPS}..={MAX_RATE_BPS} bit/s"),
            });
        }
        let frame = self.mtu_bytes + ETH_HEADER_BYTES;
        let burst = shape
            .burst_bytes
            .unwrap_or_else(|| default_burst_bytes(rate_bps, self.mtu_bytes));
        if burst < frame {
            return Err(NetnsError::Config {
                field: "burst_bytes",
                value: burst.to_string(),
                allowed: format!("at least one frame, mtu + 14 = {frame} bytes"),
            });
        }
        let queue = shape
            .queue_bytes
            .unwrap_or_else(|| default_queue_bytes(rate_bps, burst, self.mtu_bytes));
        if queue < frame {
            return Err(NetnsError::Config {
                field: "queue_bytes",
                value: queue.to_string(),
                allowed: format!("at least one frame, mtu + 14 = {frame} bytes"),
            });
        }
        Ok(tc::Tbf {
            rate_bytes_per_s: rate_bps / 8,
            burst_bytes: burst,
            limit_bytes: queue,
        })
    }

    /// Counters of the site end of `site`'s veth: `tx` is what left the site (after its up
    /// `tbf`), `rx` what entered it.
    pub fn site_counters(&self, site: usize) -> Result<LinkCounters> {
        let s = self.site(site)?;
        Ok(lock(&s.ns.nl).link(&site_link_name(site))?.1)
    }

    /// Names of the links inside `site`'s namespace.
    pub fn site_link_names(&self, site: usize) -> Result<Vec<String>> {
        lock(&self.site(site)?.ns.nl).link_names()
    }

    /// Names of the links inside the hub namespace.
    pub fn hub_link_names(&self) -> Result<Vec<String>> {
        lock(&self.hub().nl).link_names()
    }

    /// Removes the lab's namespaces now and reports failures (Drop does the same silently).
    pub fn close(mut self) -> Result<()> {
        let r = self.remove_all();
        r.map(|_| ())
    }

    fn remove_all(&mut self) -> Result<Vec<String>> {
        let r = ns::remove_prefixed(&self.prefix);
        ns::unregister(&self.prefix);
        r
    }
}

impl Drop for NetnsLab {
    fn drop(&mut self) {
        if let Err(e) = self.remove_all() {
            tracing::warn!("netns lab {}: cleanup failed: {e}", self.prefix);
            eprintln!("netns lab {}: cleanup failed: {e}", self.prefix);
        }
    }
}

/// Names of the links in the calling thread's namespace (for checks that nothing leaked).
pub fn current_link_names() -> Result<Vec<String>> {
    Nl::open()?.link_names()
}

/// Whether this kernel has the `netem` qdisc: tries to put one on `lo` of a throwaway
/// anonymous namespace (gone when the probing thread ends). `Ok(false)` when the kernel
/// answers that the qdisc kind is unknown (ENOENT), [`NetnsError::Unavailable`] without
/// namespaces.
pub fn probe_netem() -> Result<bool> {
    ns::check_root()?;
    std::thread::Builder::new()
        .name("netem-probe".into())
        .spawn(|| -> Result<bool> {
            unshare(CloneFlags::CLONE_NEWNET).map_err(|e| {
                NetnsError::Unavailable(format!("unshare(CLONE_NEWNET) failed: {e}"))
            })?;
            let mut nl = Nl::open()?;
            let lo = nl.link_index("lo")?;
            match nl.replace_root_qdisc(lo, 1, "netem", tc::netem_noop_options(), "lo (probe)") {
                Ok(()) => Ok(true),
                Err(NetnsError::Netlink { source, .. })
                    if source.raw_os_error() == Some(libc::ENOENT) =>
                {
                    Ok(false)
                }
                Err(e) => Err(e),
            }
        })
        .map_err(|e| NetnsError::io("spawn netem probe thread", e))?
        .join()
        .unwrap_or_else(|p| std::panic::resume_unwind(p))
}

/// `Ok` where this process can build labs: effective root, and the kernel lets a thread
/// unshare its network namespace (tried on a throwaway thread; the namespace dies with it).
/// [`NetnsError::Unavailable`] otherwise, for [`should_skip`].
pub fn check_available() -> Result<()> {
    ns::check_root()?;
    std::thread::Builder::new()
        .name("netns-probe".into())
        .spawn(|| -> Result<()> {
            unshare(CloneFlags::CLONE_NEWNET)
                .map_err(|e| NetnsError::Unavailable(format!("unshare(CLONE_NEWNET) failed: {e}")))
        })
        .map_err(|e| NetnsError::io("spawn namespace probe thread", e))?
        .join()
        .unwrap_or_else(|p| std::panic::resume_unwind(p))
}

/// The answer every test and caller should give when `e` says the backend is unavailable:
/// `true` (skip) unless `CI=true`, where the backend is required.
pub fn should_skip(e: &NetnsError) -> bool {
    e.is_unavailable() && std::env::var("CI").as_deref() != Ok("true")
}
