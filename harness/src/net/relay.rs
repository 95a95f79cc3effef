//! The `relay` backend (default, no root): an in-process tokio relay on 127.0.0.1 per pair
//! of sites that applies the [link model](super::link) to each direction.
//!
//! For every pair {a, b} the relay listens on two ports, one per end. Both sites *dial* it
//! (their [`SiteNetConfig`] routes say `dial <port>`); the relay joins the two connections
//! and pumps each direction through its own shaper. It is a byte pipe: the handshake and
//! frames run end to end, so the relay needs no token. The first connection to a port is
//! taken as that end (loopback only; a stranger could occupy a port but not pass the
//! handshake).
//!
//! Shaper of one direction (rate R, delay d, jitter j):
//! - the reader reads whatever bytes are available (at most ~1 ms worth at R, 4–256 KiB)
//!   and stamps the chunk: `finish = max(now, previous finish) + bytes·8/R` (the link is busy
//!   while it transmits; the remainder of the division carries over, so no drift), and
//!   `due = max(finish + d + U[−j, j], previous due)` (order kept);
//! - the writer releases every chunk whose due time has come in one batch, then sleeps once
//!   until the next due time on a [`PreciseTimer`](super::timer) (tokio's 1 ms timer is
//!   never used; a passed deadline is never slept on);
//! - backpressure: the reader stops reading while more than `backlog` of transmission is
//!   queued (`finish − now > backlog`), so the relay holds at most
//!   `R·(d + j + backlog)` bytes per direction and a fast sender is slowed by TCP as on a
//!   real link.
//!
//! Bytes are released whole chunks at a time at the chunk's finish time, so a message's
//! last byte arrives when it would on the modelled link; a chunk's first byte may arrive up
//! to one chunk time (≤ ~1 ms) late.

use super::cpu;
use super::error::NetError;
use super::link::{LinkMatrix, LinkSpec};
use super::tcp::{connect_all, NetOptions, PeerRoute, SiteNetConfig, TcpComm};
use super::timer::{PreciseTimer, TimerHandle};
use std::collections::VecDeque;
use std::net::{IpAddr, Ipv4Addr, SocketAddr};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};
use tokio::io::{AsyncReadExt, AsyncWriteExt};

/// Relay settings.
#[derive(Debug, Clone)]
pub struct RelayOptions {
    /// Address the relay ports bind to (loopback by default).
    pub bind_ip: IpAddr,
    /// Tokio worker threads of the relay.
    pub worker_threads: usize,
    /// Most transmission time queued per direction before the relay stops reading.
    pub backlog: Duration,
}

impl Default for RelayOptions {
    fn default() -> Self {
        RelayOptions { bind_ip: IpAddr::V4(Ipv4Addr::LOCALHOST), worker_threads: 1, backlog: Duration::from_millis(20) }
    }
}

/// What the relay did, from [`RelayNetwork::shutdown`].
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct RelayStats {
    /// Bytes written to sites, all directions together.
    pub bytes_forwarded: u64,
    /// CPU seconds of the relay's threads (getrusage per thread), timer thread included.
    pub cpu_seconds: f64,
}

#[derive(Default)]
struct Shared {
    bytes_forwarded: AtomicU64,
    cpu_seconds: Mutex<f64>,
}

/// A running relay: the orchestrator keeps it alive while the sites run and hands each
/// site its [`SiteNetConfig`].
pub struct RelayNetwork {
    runtime: Option<tokio::runtime::Runtime>,
    timer: Option<PreciseTimer>,
    configs: Vec<SiteNetConfig>,
    shared: Arc<Shared>,
}

impl RelayNetwork {
    /// Binds two ports per pair and starts serving them.
    pub fn start(links: &LinkMatrix, net: &NetOptions, opts: &RelayOptions) -> Result<Self, NetError> {
        net.limits.validate()?;
        let world = links.world();
        let shared = Arc::new(Shared::default());
        let cpu_sink = Arc::clone(&shared);
        let runtime = tokio::runtime::Builder::new_multi_thread()
            .worker_threads(opts.worker_threads.max(1))
            .enable_io()
            .thread_name("fomoe-relay")
            .on_thread_start(cpu::set_fine_timer_slack)
            .on_thread_stop(move || {
                let used = cpu::thread_cpu_seconds();
                if let Ok(mut c) = cpu_sink.cpu_seconds.lock() {
                    *c += used;
                }
            })
            .build()
            .map_err(|e| NetError::Config(format!("relay runtime: {e}")))?;
        let timer = PreciseTimer::start().map_err(|e| NetError::Config(format!("relay timer: {e}")))?;
        let mut routes: Vec<Vec<PeerRoute>> =
            (0..world).map(|i| (0..world).map(|j| if i == j { PeerRoute::Myself } else { PeerRoute::Accept }).collect()).collect();
        {
            let _guard = runtime.enter();
            for a in 0..world {
                for b in a + 1..world {
                    let bind = |end: usize| -> Result<(tokio::net::TcpListener, SocketAddr), NetError> {
                        let err = |e: std::io::Error| NetError::Config(format!("relay port for site {end} of pair {a}-{b}: {e}"));
                        let l = std::net::TcpListener::bind((opts.bind_ip, 0)).map_err(err)?;
                        l.set_nonblocking(true).map_err(err)?;
                        let addr = l.local_addr().map_err(err)?;
                        Ok((tokio::net::TcpListener::from_std(l).map_err(err)?, addr))
                    };
                    let (la, addr_a) = bind(a)?;
                    let (lb, addr_b) = bind(b)?;
                    routes[a][b] = PeerRoute::Dial(addr_a);
                    routes[b][a] = PeerRoute::Dial(addr_b);
                    let (ab, ba) = match (links.get(a, b), links.get(b, a)) {
                        (Some(ab), Some(ba)) => (ab, ba),
                        _ => return Err(NetError::Config(format!("no link for pair {a}-{b}"))),
                    };
                    let pair = PairTask {
                        timer: timer.handle(),
                        shared: Arc::clone(&shared),
                        backlog: opts.backlog,
                        seed_ab: mix(net.seed, a as u64, b as u64),
                        seed_ba: mix(net.seed, b as u64, a as u64),
                    };
                    runtime.spawn(pair.serve(la, lb, ab, ba));
                }
            }
        }
        let configs = routes
            .into_iter()
            .enumerate()
            .map(|(i, peers)| SiteNetConfig {
                run_id: net.run_id.clone(),
                site: i,
                world,
                token: net.token.clone(),
                listen: None,
                peers,
                timeouts: net.timeouts,
                max_frame_bytes: net.limits.max_frame_bytes,
                max_message_bytes: net.limits.max_message_bytes,
            })
            .collect();
        Ok(RelayNetwork { runtime: Some(runtime), timer: Some(timer), configs, shared })
    }

    /// One config per site, in site order; serialise them to hand to worker processes.
    pub fn site_configs(&self) -> &[SiteNetConfig] {
        &self.configs
    }

    /// Bytes the relay has written to sites so far.
    pub fn bytes_forwarded(&self) -> u64 {
        self.shared.bytes_forwarded.load(Ordering::Relaxed)
    }

    /// Stops the relay (closing every connection) and reports what it did.
    pub fn shutdown(mut self) -> RelayStats {
        self.stop()
    }

    fn stop(&mut self) -> RelayStats {
        if let Some(rt) = self.runtime.take() {
            drop(rt); // joins the worker threads, which report their CPU time
        }
        let timer_cpu = self.timer.take().map(PreciseTimer::stop).unwrap_or(0.0);
        let workers = self.shared.cpu_seconds.lock().map(|c| *c).unwrap_or(0.0);
        RelayStats { bytes_forwarded: self.bytes_forwarded(), cpu_seconds: workers + timer_cpu }
    }
}

impl Drop for RelayNetwork {
    fn drop(&mut self) {
        self.stop();
    }
}

/// A relay plus `M` connected endpoints, sites as threads of this process (tests, netcheck).
pub fn local_relay(links: &LinkMatrix, net: &NetOptions, opts: &RelayOptions) -> Result<(RelayNetwork, Vec<TcpComm>), NetError> {
    let relay = RelayNetwork::start(links, net, opts)?;
    let listeners = (0..links.world()).map(|_| None).collect();
    let comms = connect_all(relay.site_configs(), listeners)?;
    Ok((relay, comms))
}

/// SplitMix64 step: a tiny, seedable generator for jitter samples.
pub(crate) fn splitmix(state: &mut u64) -> u64 {
    *state = state.wrapping_add(0x9E37_79B9_7F4A_7C15);
    let mut z = *state;
    z = (z ^ (z >> 30)).wrapping_mul(0xBF58_476D_1CE4_E5B9);
    z = (z ^ (z >> 27)).wrapping_mul(0x94D0_49BB_1331_11EB);
    z ^ (z >> 31)
}

/// Seed of link `from → to` of a run seeded `seed`.
pub(crate) fn mix(seed: u64, from: u64, to: u64) -> u64 {
    let mut s = seed ^ from.wrapping_mul(0x1000_0000_01B3) ^ to.wrapping_mul(0x0100_0000_0000_01B3);
    splitmix(&mut s)
}

/// A jitter sample in `[−jitter, +jitter]`, as signed nanoseconds.
pub(crate) fn jitter_ns(state: &mut u64, jitter: Duration) -> i128 {
    let j = jitter.as_nanos();
    if j == 0 {
        return 0;
    }
    (splitmix(state) as u128 % (2 * j + 1)) as i128 - j as i128
}

/// `base + offset` for a signed nanosecond offset, never before `floor`.
fn offset_instant(base: Instant, offset_ns: i128, floor: Instant) -> Instant {
    let t = if offset_ns >= 0 {
        base + Duration::from_nanos(offset_ns as u64)
    } else {
        base.checked_sub(Duration::from_nanos((-offset_ns) as u64)).unwrap_or(base)
    };
    t.max(floor)
}

struct PairTask {
    timer: TimerHandle,
    shared: Arc<Shared>,
    backlog: Duration,
    seed_ab: u64,
    seed_ba: u64,
}

struct Chunk {
    data: Vec<u8>,
    due: Instant,
    eof: bool,
}

impl PairTask {
    async fn serve(self, la: tokio::net::TcpListener, lb: tokio::net::TcpListener, ab: LinkSpec, ba: LinkSpec) {
        let (a, b) = tokio::join!(la.accept(), lb.accept());
        let (Ok((a, _)), Ok((b, _))) = (a, b) else { return };
        drop((la, lb));
        let _ = a.set_nodelay(true);
        let _ = b.set_nodelay(true);
        let (ra, wa) = a.into_split();
        let (rb, wb) = b.into_split();
        tokio::spawn(direction(ra, wb, ab, self.timer.clone(), Arc::clone(&self.shared), self.backlog, self.seed_ab));
        tokio::spawn(direction(rb, wa, ba, self.timer, self.shared, self.backlog, self.seed_ba));
    }
}

async fn direction(
    rd: tokio::net::tcp::OwnedReadHalf,
    wr: tokio::net::tcp::OwnedWriteHalf,
    link: LinkSpec,
    timer: TimerHandle,
    shared: Arc<Shared>,
    backlog: Duration,
    seed: u64,
) {
    let (tx, rx) = tokio::sync::mpsc::unbounded_channel::<Chunk>();
    let reader = shape_reader(rd, tx, link, timer.clone(), backlog, seed);
    let writer = release_writer(wr, rx, timer, shared);
    tokio::join!(reader, writer);
}

async fn shape_reader(
    mut rd: tokio::net::tcp::OwnedReadHalf,
    tx: tokio::sync::mpsc::UnboundedSender<Chunk>,
    link: LinkSpec,
    timer: TimerHandle,
    backlog: Duration,
    mut rng: u64,
) {
    let rate = link.rate_bps.max(1) as u128;
    let chunk_cap = ((link.rate_bps / 8 / 1000) as usize).clamp(4 << 10, 256 << 10);
    let mut tx_free = Instant::now();
    let mut carry: u128 = 0;
    let mut last_due = Instant::now();
    loop {
        let now = Instant::now();
        if tx_free > now + backlog {
            timer.sleep_until(tx_free - backlog).await;
        }
        let mut buf = Vec::with_capacity(chunk_cap);
        let n = match rd.read_buf(&mut buf).await {
            Ok(n) => n,
            Err(_) => 0,
        };
        if n == 0 {
            let due = (tx_free + link.delay).max(last_due);
            let _ = tx.send(Chunk { data: Vec::new(), due, eof: true });
            return;
        }
        if n < chunk_cap / 4 {
            buf.shrink_to_fit();
        }
        let now = Instant::now();
        let start = tx_free.max(now);
        let bits_ns = n as u128 * 8 * 1_000_000_000 + carry;
        let ns = bits_ns / rate;
        carry = bits_ns % rate;
        tx_free = start + Duration::from_nanos(ns as u64);
        let due = offset_instant(tx_free + link.delay, jitter_ns(&mut rng, link.jitter), last_due);
        last_due = due;
        if tx.send(Chunk { data: buf, due, eof: false }).is_err() {
            return;
        }
    }
}

async fn release_writer(
    wr: tokio::net::tcp::OwnedWriteHalf,
    mut rx: tokio::sync::mpsc::UnboundedReceiver<Chunk>,
    timer: TimerHandle,
    shared: Arc<Shared>,
) {
    let mut wr = tokio::io::BufWriter::with_capacity(256 << 10, wr);
    let mut pending: VecDeque<Chunk> = VecDeque::new();
    loop {
        if pending.is_empty() {
            match rx.recv().await {
                Some(c) => pending.push_back(c),
                None => return,
            }
        }
        while let Ok(c) = rx.try_recv() {
            pending.push_back(c);
        }
        let Some(head_due) = pending.front().map(|c| c.due) else { continue };
        if head_due > Instant::now() {
            timer.sleep_until(head_due).await;
            continue;
        }
        // Release everything that is due, in one batch.
        let now = Instant::now();
        let mut written = 0u64;
        while pending.front().is_some_and(|c| c.due <= now) {
            let Some(c) = pending.pop_front() else { break };
            if c.eof {
                let _ = wr.flush().await;
                shared.bytes_forwarded.fetch_add(written, Ordering::Relaxed);
                let _ = wr.shutdown().await;
                return;
            }
            if wr.write_all(&c.data).await.is_err() {
                return;
            }
            written += c.data.len() as u64;
        }
        if wr.flush().await.is_err() {
            return;
        }
        shared.bytes_forwarded.fetch_add(written, Ordering::Relaxed);
    }
}
