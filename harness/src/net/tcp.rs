//! The real-socket endpoint: one TCP connection per pair of sites, used by every backend that
//! moves real bytes (`relay` today, `netns` later). A site is told where to dial and whom to
//! accept by a serialisable [`SiteNetConfig`], so it works the same whether its peers are
//! threads, processes or hosts, and whether a relay sits in between (the relay is a plain
//! byte pipe; the handshake runs end to end through it).
//!
//! Per peer there is a writer thread (so `send` only queues) and a reader thread (so a
//! peer's bytes are drained, as a kernel socket buffer would, up to a budget of queued bytes
//! per peer: [`PeerLimits`], back-pressure beyond it). Messages, counters and errors follow
//! the [`Comm`] contract; framing is [`frame`](super::frame).

use super::comm::{check_peer, ClockKind, Comm, LinkCounters};
use super::error::{NetError, PeerName};
use super::frame::{self, Expect, FrameLimits, HandshakeParams, Token};
use crate::units::serde_duration;
use serde::{Deserialize, Serialize};
use std::io::{BufReader, BufWriter, Write};
use std::net::{Shutdown, SocketAddr, TcpListener, TcpStream};
use std::sync::mpsc::{self, Receiver, RecvTimeoutError, Sender};
use std::sync::{Arc, Condvar, Mutex};
use std::thread::JoinHandle;
use std::time::{Duration, Instant};

/// How long the transport waits, and for what.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Timeouts {
    /// Dialing (with retries), accepting and the handshakes, all together.
    #[serde(with = "serde_duration")]
    pub connect: Duration,
    /// A started frame (or a blocked write) may go this long without progress.
    #[serde(with = "serde_duration")]
    pub read: Duration,
    /// `recv` waits this long for the next message.
    #[serde(with = "serde_duration")]
    pub idle: Duration,
}

impl Default for Timeouts {
    fn default() -> Self {
        Timeouts {
            connect: Duration::from_secs(30),
            read: Duration::from_secs(30),
            idle: Duration::from_secs(600),
        }
    }
}

/// How this site reaches one peer.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "kebab-case")]
pub enum PeerRoute {
    /// The entry for this site itself.
    Myself,
    /// Connect to this address (the peer's listener, or a relay port for this pair).
    Dial(SocketAddr),
    /// The peer dials our `listen` address.
    Accept,
}

/// What a site accepts from one peer, whatever the peer sends (a peer holding the run
/// token may still be hostile or broken).
///
/// - `max_queued_bytes`: messages received from one peer and not yet taken by `recv` are
///   held up to this many bytes; at or above it the peer's reader stops reading (TCP then
///   slows the peer down: back-pressure, nothing is dropped). A message is read only when
///   the queue is below the budget, so the queue never holds more than
///   `max_queued_bytes + max_message_bytes`. The budget must be at least the largest burst
///   a protocol-conforming peer sends before it waits for us (the collectives send before
///   they receive): the runner derives it from the model ([`crate::runner`]); the default
///   (1 GiB) is for tools and tests.
/// - `min_rate_bps`: a started frame must arrive within the read timeout plus its size at
///   this rate (a deadline per frame), so a peer that trickles one byte a second cannot
///   keep a frame open for ever; the default, 1 Mbit/s, is far below any modelled link.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct PeerLimits {
    pub max_queued_bytes: u64,
    pub min_rate_bps: u64,
}

/// Default [`PeerLimits::max_queued_bytes`].
pub const DEFAULT_MAX_QUEUED_BYTES: u64 = 1 << 30;

impl Default for PeerLimits {
    fn default() -> Self {
        PeerLimits {
            max_queued_bytes: DEFAULT_MAX_QUEUED_BYTES,
            min_rate_bps: frame::DEFAULT_MIN_RATE_BPS,
        }
    }
}

/// Everything a worker process needs to build its [`TcpComm`]; JSON-serialisable.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct SiteNetConfig {
    pub run_id: String,
    pub site: usize,
    pub world: usize,
    pub token: Token,
    /// Where to accept peers whose route is `accept`.
    #[serde(default)]
    pub listen: Option<SocketAddr>,
    /// One route per site id (`myself` at `site`).
    pub peers: Vec<PeerRoute>,
    #[serde(default)]
    pub timeouts: Timeouts,
    pub max_frame_bytes: u32,
    pub max_message_bytes: u64,
    #[serde(default)]
    pub peer_limits: PeerLimits,
}

impl SiteNetConfig {
    /// Checks the routes and limits.
    pub fn validate(&self) -> Result<(), NetError> {
        let bad = |m: String| NetError::Config(format!("site {}: {m}", self.site));
        if self.site >= self.world {
            return Err(bad(format!(
                "site id {} is not below world {}",
                self.site, self.world
            )));
        }
        if self.peers.len() != self.world {
            return Err(bad(format!(
                "{} peer routes for a world of {}",
                self.peers.len(),
                self.world
            )));
        }
        for (j, r) in self.peers.iter().enumerate() {
            match (j == self.site, r) {
                (true, PeerRoute::Myself)
                | (false, PeerRoute::Dial(_))
                | (false, PeerRoute::Accept) => {}
                (true, _) => return Err(bad(format!("route {j} must be `myself`"))),
                (false, PeerRoute::Myself) => {
                    return Err(bad(format!(
                        "route {j} is `myself` but this is site {}",
                        self.site
                    )))
                }
            }
        }
        if self.peers.contains(&PeerRoute::Accept) && self.listen.is_none() {
            return Err(bad(
                "routes say `accept` but there is no `listen` address".into()
            ));
        }
        if self.run_id.len() > frame::MAX_RUN_ID_BYTES {
            return Err(bad(format!(
                "run id longer than {} bytes",
                frame::MAX_RUN_ID_BYTES
            )));
        }
        if self.peer_limits.max_queued_bytes == 0 || self.peer_limits.min_rate_bps == 0 {
            return Err(bad(format!(
                "peer limits must be positive, got {:?}",
                self.peer_limits
            )));
        }
        self.limits().validate()
    }

    pub fn limits(&self) -> FrameLimits {
        FrameLimits {
            max_frame_bytes: self.max_frame_bytes,
            max_message_bytes: self.max_message_bytes,
        }
    }
}

/// One item from a peer's reader thread.
type Incoming = Result<(Vec<u8>, u64), NetError>;

/// Bytes received from one peer and not yet taken by `recv`, shared by the peer's reader
/// thread (which waits while it is at the budget) and `recv` (which frees them).
#[derive(Default)]
struct Queue {
    state: Mutex<QueueState>,
    freed: Condvar,
}

#[derive(Default)]
struct QueueState {
    bytes: u64,
    peak: u64,
    /// The endpoint is closing: the reader stops waiting.
    closed: bool,
}

impl Queue {
    /// Wait until fewer than `budget` bytes are queued; false when the endpoint closes.
    fn wait_below(&self, budget: u64) -> bool {
        let Ok(mut st) = self.state.lock() else {
            return false;
        };
        while st.bytes >= budget && !st.closed {
            st = match self.freed.wait(st) {
                Ok(g) => g,
                Err(_) => return false,
            };
        }
        !st.closed
    }

    fn add(&self, n: u64) {
        if let Ok(mut st) = self.state.lock() {
            st.bytes += n;
            st.peak = st.peak.max(st.bytes);
        }
    }

    fn take(&self, n: u64) {
        if let Ok(mut st) = self.state.lock() {
            st.bytes = st.bytes.saturating_sub(n);
        }
        self.freed.notify_all();
    }

    fn close(&self) {
        if let Ok(mut st) = self.state.lock() {
            st.closed = true;
        }
        self.freed.notify_all();
    }

    fn peak(&self) -> u64 {
        self.state.lock().map(|st| st.peak).unwrap_or(0)
    }
}

struct PeerLink {
    name: PeerName,
    stream: TcpStream,
    to_writer: Option<Sender<Vec<u8>>>,
    writer_error: Arc<Mutex<Option<NetError>>>,
    from_reader: Receiver<Incoming>,
    queue: Arc<Queue>,
    failed: Option<NetError>,
    writer: Option<JoinHandle<()>>,
    reader: Option<JoinHandle<()>>,
}

/// A site's endpoint over TCP (see the module doc).
pub struct TcpComm {
    rank: usize,
    world: usize,
    epoch: Instant,
    idle_timeout: Duration,
    max_frame_bytes: u32,
    max_message_bytes: u64,
    links: Vec<Option<PeerLink>>,
    counters: Vec<LinkCounters>,
    max_queued_bytes: u64,
}

impl TcpComm {
    /// Connects to every peer as `cfg` says (binding `cfg.listen` if needed); the clock's
    /// epoch is the moment all links are up.
    pub fn connect(cfg: &SiteNetConfig) -> Result<TcpComm, NetError> {
        cfg.validate()?;
        let listener = match (cfg.listen, cfg.peers.contains(&PeerRoute::Accept)) {
            (Some(addr), true) => Some(TcpListener::bind(addr).map_err(|e| {
                NetError::Config(format!("site {}: cannot listen on {addr}: {e}", cfg.site))
            })?),
            _ => None,
        };
        Self::connect_on(cfg, listener)
    }

    /// As [`TcpComm::connect`], with the listener for `accept` routes already bound (by
    /// this process before it told its peers the address, or inherited from a parent).
    pub fn connect_on(
        cfg: &SiteNetConfig,
        listener: Option<TcpListener>,
    ) -> Result<TcpComm, NetError> {
        let mut comm = Self::connect_with(cfg, listener, Instant::now())?;
        comm.epoch = Instant::now();
        Ok(comm)
    }

    /// Connects with an already bound listener (for `accept` routes) and a given epoch, so
    /// several sites of one process share one clock.
    pub fn connect_with(
        cfg: &SiteNetConfig,
        listener: Option<TcpListener>,
        epoch: Instant,
    ) -> Result<TcpComm, NetError> {
        cfg.validate()?;
        let deadline = Instant::now() + cfg.timeouts.connect;
        let params = HandshakeParams {
            run_id: &cfg.run_id,
            me: cfg.site,
            world: cfg.world,
            token: &cfg.token,
            max_frame_bytes: cfg.max_frame_bytes,
        };
        let accept_sites: Vec<usize> = cfg
            .peers
            .iter()
            .enumerate()
            .filter(|(_, r)| **r == PeerRoute::Accept)
            .map(|(j, _)| j)
            .collect();
        let mut streams: Vec<Option<(TcpStream, String)>> = (0..cfg.world).map(|_| None).collect();
        std::thread::scope(|scope| -> Result<(), NetError> {
            let dials: Vec<_> = cfg
                .peers
                .iter()
                .enumerate()
                .filter_map(|(j, r)| match r {
                    PeerRoute::Dial(addr) => Some((j, *addr)),
                    _ => None,
                })
                .map(|(j, addr)| {
                    let params = params.clone();
                    (
                        j,
                        scope.spawn(move || {
                            dial_one(&params, j, addr, deadline, cfg.timeouts.connect)
                        }),
                    )
                })
                .collect();
            let accepted = match (&listener, accept_sites.is_empty()) {
                (_, true) => Ok(Vec::new()),
                (Some(l), false) => {
                    accept_all(l, &params, &accept_sites, deadline, cfg.timeouts.connect)
                }
                (None, false) => Err(NetError::Config(format!(
                    "site {}: `accept` routes need a listener",
                    cfg.site
                ))),
            };
            let mut first_err = accepted.as_ref().err().cloned();
            for (j, h) in dials {
                match h.join() {
                    Ok(Ok(s)) => streams[j] = Some(s),
                    Ok(Err(e)) => {
                        first_err.get_or_insert(e);
                    }
                    Err(_) => {
                        first_err.get_or_insert(NetError::Config(format!(
                            "site {}: dial thread for site {j} panicked",
                            cfg.site
                        )));
                    }
                }
            }
            if let Some(e) = first_err {
                return Err(e);
            }
            for (j, s, addr) in accepted.unwrap_or_default() {
                streams[j] = Some((s, addr));
            }
            Ok(())
        })?;
        let mut links = Vec::with_capacity(cfg.world);
        let mut counters = vec![LinkCounters::default(); cfg.world];
        let hs_bytes = frame::handshake_bytes(&cfg.run_id);
        for (j, slot) in streams.into_iter().enumerate() {
            counters[j].peer = j;
            let Some((stream, addr)) = slot else {
                links.push(None);
                continue;
            };
            counters[j].framing_bytes_sent = hs_bytes;
            counters[j].framing_bytes_received = hs_bytes;
            links.push(Some(start_link(stream, PeerName::site(j, addr), cfg)?));
        }
        Ok(TcpComm {
            rank: cfg.site,
            world: cfg.world,
            epoch,
            idle_timeout: cfg.timeouts.idle,
            max_frame_bytes: cfg.max_frame_bytes,
            max_message_bytes: cfg.max_message_bytes,
            links,
            counters,
            max_queued_bytes: cfg.peer_limits.max_queued_bytes,
        })
    }

    /// The most bytes ever queued from `peer` (received, not yet taken by `recv`); at most
    /// [`PeerLimits::max_queued_bytes`] + `max_message_bytes` (see [`PeerLimits`]).
    pub fn peak_queued_bytes(&self, peer: usize) -> u64 {
        self.links
            .get(peer)
            .and_then(|l| l.as_ref())
            .map_or(0, |l| l.queue.peak())
    }

    /// [`PeerLimits::max_queued_bytes`] of this endpoint.
    pub fn max_queued_bytes(&self) -> u64 {
        self.max_queued_bytes
    }

    fn link(&mut self, peer: usize) -> Result<&mut PeerLink, NetError> {
        check_peer(self.rank, peer, self.world)?;
        self.links[peer].as_mut().ok_or(NetError::BadPeer {
            site: self.rank,
            peer,
            world: self.world,
        })
    }
}

fn dial_one(
    params: &HandshakeParams<'_>,
    site: usize,
    addr: SocketAddr,
    deadline: Instant,
    total: Duration,
) -> Result<(TcpStream, String), NetError> {
    let name = PeerName::site(site, addr.to_string());
    let mut stream = loop {
        let left = deadline.saturating_duration_since(Instant::now());
        let attempt = TcpStream::connect_timeout(
            &addr,
            left.clamp(Duration::from_millis(1), Duration::from_secs(1)),
        );
        match attempt {
            Ok(s) => break s,
            Err(e) => {
                if Instant::now() >= deadline {
                    return Err(NetError::Connect {
                        peer: name,
                        timeout: total,
                        reason: e.to_string(),
                    });
                }
                std::thread::sleep(Duration::from_millis(10).min(left));
            }
        }
    };
    prepare_handshake_socket(&stream, &name)?;
    let left = deadline
        .saturating_duration_since(Instant::now())
        .max(Duration::from_millis(1));
    frame::handshake(
        &mut stream,
        params,
        Expect::Dialed(site),
        &addr.to_string(),
        left,
    )?;
    Ok((stream, addr.to_string()))
}

fn prepare_handshake_socket(stream: &TcpStream, name: &PeerName) -> Result<(), NetError> {
    stream
        .set_nodelay(true)
        .map_err(|e| NetError::io(name, "set_nodelay", &e))?;
    stream
        .set_read_timeout(Some(Duration::from_millis(20)))
        .map_err(|e| NetError::io(name, "set_read_timeout", &e))?;
    stream
        .set_write_timeout(Some(Duration::from_secs(5)))
        .map_err(|e| NetError::io(name, "set_write_timeout", &e))
}

/// Accepts until every site in `expected` has connected and passed the handshake. Strangers
/// (bad token, wrong run, unexpected site) are turned away and reported if time runs out.
fn accept_all(
    listener: &TcpListener,
    params: &HandshakeParams<'_>,
    expected: &[usize],
    deadline: Instant,
    total: Duration,
) -> Result<Vec<(usize, TcpStream, String)>, NetError> {
    let me = params.me;
    let io_err = |e: std::io::Error| NetError::Config(format!("site {me}: listener: {e}"));
    listener.set_nonblocking(true).map_err(io_err)?;
    let (tx, rx) = mpsc::channel::<Result<(usize, TcpStream, String), NetError>>();
    let mut done: Vec<(usize, TcpStream, String)> = Vec::new();
    let mut rejected: Vec<String> = Vec::new();
    std::thread::scope(|scope| {
        while done.len() < expected.len() {
            if Instant::now() >= deadline {
                break;
            }
            match listener.accept() {
                Ok((mut stream, addr)) => {
                    let tx = tx.clone();
                    let params = params.clone();
                    scope.spawn(move || {
                        let addr = addr.to_string();
                        let name = PeerName::stranger(addr.clone());
                        let r = stream
                            .set_nonblocking(false)
                            .map_err(|e| NetError::io(&name, "set_nonblocking", &e))
                            .and_then(|_| prepare_handshake_socket(&stream, &name))
                            .and_then(|_| {
                                let left = deadline
                                    .saturating_duration_since(Instant::now())
                                    .max(Duration::from_millis(1));
                                frame::handshake(
                                    &mut stream,
                                    &params,
                                    Expect::Accepted(expected),
                                    &addr,
                                    left,
                                )
                            })
                            .map(|site| (site, stream, addr));
                        let _ = tx.send(r);
                    });
                }
                Err(e) if e.kind() == std::io::ErrorKind::WouldBlock => {}
                Err(e) => rejected.push(format!("accept: {e}")),
            }
            while let Ok(r) = rx.try_recv() {
                match r {
                    Ok((site, stream, addr)) if done.iter().any(|(s, _, _)| *s == site) => {
                        let _ = stream.shutdown(Shutdown::Both);
                        rejected.push(format!("{addr}: site {site} connected twice"));
                    }
                    Ok(ok) => done.push(ok),
                    Err(e) => rejected.push(e.to_string()),
                }
            }
            std::thread::sleep(Duration::from_millis(2));
        }
    });
    // Handshakes still running when the deadline passed have finished now (scope joined).
    while let Ok(r) = rx.try_recv() {
        match r {
            Ok(ok) if done.len() < expected.len() && !done.iter().any(|(s, _, _)| *s == ok.0) => {
                done.push(ok)
            }
            Ok((_, stream, _)) => {
                let _ = stream.shutdown(Shutdown::Both);
            }
            Err(e) => rejected.push(e.to_string()),
        }
    }
    if done.len() < expected.len() {
        let missing: Vec<usize> = expected
            .iter()
            .copied()
            .filter(|s| !done.iter().any(|(d, _, _)| d == s))
            .collect();
        let rejected = if rejected.is_empty() {
            String::new()
        } else {
            format!(
                "; turned away {} connection(s): {}",
                rejected.len(),
                rejected.join("; ")
            )
        };
        return Err(NetError::AcceptTimeout {
            site: me,
            timeout: total,
            missing,
            rejected,
        });
    }
    let _ = listener.set_nonblocking(false);
    Ok(done)
}

fn start_link(
    stream: TcpStream,
    name: PeerName,
    cfg: &SiteNetConfig,
) -> Result<PeerLink, NetError> {
    let io = |op: &'static str, e: std::io::Error| NetError::io(&name, op, &e);
    stream
        .set_read_timeout(Some(cfg.timeouts.read.max(Duration::from_millis(1))))
        .map_err(|e| io("set_read_timeout", e))?;
    stream
        .set_write_timeout(Some(cfg.timeouts.read.max(Duration::from_millis(1))))
        .map_err(|e| io("set_write_timeout", e))?;
    let read_half = stream.try_clone().map_err(|e| io("clone", e))?;
    let write_half = stream.try_clone().map_err(|e| io("clone", e))?;
    let (to_writer, writer_rx) = mpsc::channel::<Vec<u8>>();
    let (reader_tx, from_reader) = mpsc::channel::<Incoming>();
    let writer_error = Arc::new(Mutex::new(None));
    let writer = {
        let name = name.clone();
        let slot = Arc::clone(&writer_error);
        let max_frame = cfg.max_frame_bytes;
        std::thread::Builder::new()
            .name(format!(
                "fomoe-tx{}-{}",
                cfg.site,
                name.site.unwrap_or(usize::MAX)
            ))
            .spawn(move || writer_loop(write_half, writer_rx, max_frame, name, slot))
            .map_err(|e| io("spawn writer", e))?
    };
    let queue = Arc::new(Queue::default());
    let reader = {
        let name = name.clone();
        let limits = cfg.limits();
        let pace = frame::ReadPace {
            stall: cfg.timeouts.read,
            min_rate_bps: cfg.peer_limits.min_rate_bps,
        };
        let budget = cfg.peer_limits.max_queued_bytes;
        let queue = Arc::clone(&queue);
        std::thread::Builder::new()
            .name(format!(
                "fomoe-rx{}-{}",
                cfg.site,
                name.site.unwrap_or(usize::MAX)
            ))
            .spawn(move || reader_loop(read_half, reader_tx, limits, pace, name, &queue, budget))
            .map_err(|e| io("spawn reader", e))?
    };
    Ok(PeerLink {
        name,
        stream,
        to_writer: Some(to_writer),
        writer_error,
        from_reader,
        queue,
        failed: None,
        writer: Some(writer),
        reader: Some(reader),
    })
}

fn writer_loop(
    stream: TcpStream,
    rx: Receiver<Vec<u8>>,
    max_frame: u32,
    name: PeerName,
    slot: Arc<Mutex<Option<NetError>>>,
) {
    let mut w = BufWriter::with_capacity(64 << 10, &stream);
    let fail = |e: std::io::Error| {
        if let Ok(mut s) = slot.lock() {
            s.get_or_insert(NetError::io(&name, "write", &e));
        }
    };
    'outer: while let Ok(first) = rx.recv() {
        let mut next = Some(first);
        // Write everything already queued, then flush once.
        while let Some(msg) = next {
            if let Err(e) = frame::write_message(&mut w, &msg, max_frame) {
                fail(e);
                break 'outer;
            }
            next = rx.try_recv().ok();
        }
        if let Err(e) = w.flush() {
            fail(e);
            break;
        }
    }
    let _ = w.flush();
    drop(w);
    let _ = stream.shutdown(Shutdown::Write);
}

fn reader_loop(
    stream: TcpStream,
    tx: Sender<Incoming>,
    limits: FrameLimits,
    pace: frame::ReadPace,
    name: PeerName,
    queue: &Queue,
    budget: u64,
) {
    let mut r = BufReader::with_capacity(256 << 10, stream);
    loop {
        // Back-pressure: no new message while the peer's queue is at its budget.
        if !queue.wait_below(budget) {
            return;
        }
        match frame::read_message_paced(&mut r, limits, &name, pace) {
            Ok(Some(m)) => {
                queue.add(m.payload.len() as u64);
                if tx.send(Ok((m.payload, m.framing_bytes))).is_err() {
                    return;
                }
            }
            Ok(None) => {
                let _ = tx.send(Err(NetError::Closed { peer: name }));
                return;
            }
            Err(e) => {
                let _ = tx.send(Err(e));
                return;
            }
        }
    }
}

impl Comm for TcpComm {
    fn rank(&self) -> usize {
        self.rank
    }

    fn world(&self) -> usize {
        self.world
    }

    fn send(&mut self, to: usize, payload: Vec<u8>) -> Result<(), NetError> {
        let max_message = self.max_message_bytes;
        let max_frame = self.max_frame_bytes;
        let link = self.link(to)?;
        if let Some(e) = link.writer_error.lock().ok().and_then(|s| s.clone()) {
            return Err(e);
        }
        let len = payload.len() as u64;
        if len > max_message {
            return Err(NetError::MessageTooLong {
                peer: link.name.clone(),
                len,
                max: max_message,
            });
        }
        let sender = link.to_writer.as_ref().ok_or_else(|| NetError::Closed {
            peer: link.name.clone(),
        })?;
        if sender.send(payload).is_err() {
            let e = link.writer_error.lock().ok().and_then(|s| s.clone());
            return Err(e.unwrap_or_else(|| NetError::Closed {
                peer: link.name.clone(),
            }));
        }
        let c = &mut self.counters[to];
        c.payload_bytes_sent += len;
        c.framing_bytes_sent += frame::message_framing_bytes(len, max_frame);
        c.messages_sent += 1;
        Ok(())
    }

    fn recv(&mut self, from: usize) -> Result<Vec<u8>, NetError> {
        let idle = self.idle_timeout;
        let link = self.link(from)?;
        if let Some(e) = &link.failed {
            return Err(e.clone());
        }
        let got = match link.from_reader.recv_timeout(idle) {
            Ok(item) => item,
            Err(RecvTimeoutError::Timeout) => {
                return Err(NetError::RecvTimeout {
                    peer: link.name.clone(),
                    timeout: idle,
                })
            }
            Err(RecvTimeoutError::Disconnected) => Err(NetError::Closed {
                peer: link.name.clone(),
            }),
        };
        match got {
            Ok((payload, framing)) => {
                link.queue.take(payload.len() as u64);
                let c = &mut self.counters[from];
                c.payload_bytes_received += payload.len() as u64;
                c.framing_bytes_received += framing;
                c.messages_received += 1;
                Ok(payload)
            }
            Err(e) => {
                link.failed = Some(e.clone());
                Err(e)
            }
        }
    }

    fn link_counters(&self) -> Vec<LinkCounters> {
        self.counters.clone()
    }

    fn now(&self) -> Duration {
        self.epoch.elapsed()
    }

    fn advance(&mut self, _dt: Duration) {}

    fn clock_kind(&self) -> ClockKind {
        ClockKind::Wall
    }
}

impl Drop for TcpComm {
    fn drop(&mut self) {
        // Let writers finish what is queued (each write is bounded by the read timeout),
        // then close our side so the readers stop.
        for link in self.links.iter_mut().flatten() {
            link.to_writer.take();
        }
        for link in self.links.iter_mut().flatten() {
            if let Some(h) = link.writer.take() {
                let _ = h.join();
            }
            link.queue.close();
            let _ = link.stream.shutdown(Shutdown::Read);
        }
        for link in self.links.iter_mut().flatten() {
            if let Some(h) = link.reader.take() {
                let _ = h.join();
            }
        }
    }
}

/// Network-wide settings shared by the local builders.
#[derive(Debug, Clone)]
pub struct NetOptions {
    pub run_id: String,
    pub token: Token,
    pub timeouts: Timeouts,
    pub limits: FrameLimits,
    pub peer_limits: PeerLimits,
    /// Seed of the jitter samples (relay and sim).
    pub seed: u64,
}

impl Default for NetOptions {
    fn default() -> Self {
        NetOptions {
            run_id: "local".into(),
            token: Token::generate(),
            timeouts: Timeouts::default(),
            limits: FrameLimits::default(),
            peer_limits: PeerLimits::default(),
            seed: 0,
        }
    }
}

/// Connects sites of this process in parallel (one thread per site), sharing one epoch.
/// `listeners[i]` serves site i's `accept` routes.
pub fn connect_all(
    configs: &[SiteNetConfig],
    listeners: Vec<Option<TcpListener>>,
) -> Result<Vec<TcpComm>, NetError> {
    let epoch = Instant::now();
    let results: Vec<Result<TcpComm, NetError>> = std::thread::scope(|scope| {
        let handles: Vec<_> = configs
            .iter()
            .zip(listeners)
            .map(|(cfg, l)| scope.spawn(move || TcpComm::connect_with(cfg, l, epoch)))
            .collect();
        handles
            .into_iter()
            .map(|h| {
                h.join()
                    .unwrap_or_else(|_| Err(NetError::Config("connect thread panicked".into())))
            })
            .collect()
    });
    results.into_iter().collect()
}

/// `world` sites of this process on plain loopback TCP, no emulation: site i dials site j's
/// listener for i < j. For tests of the transport and as the shape a shaped backend reuses.
pub fn local_direct(world: usize, opts: &NetOptions) -> Result<Vec<TcpComm>, NetError> {
    let mut listeners = Vec::with_capacity(world);
    let mut addrs = Vec::with_capacity(world);
    for i in 0..world {
        let l = TcpListener::bind("127.0.0.1:0")
            .map_err(|e| NetError::Config(format!("site {i}: bind: {e}")))?;
        addrs.push(
            l.local_addr()
                .map_err(|e| NetError::Config(format!("site {i}: {e}")))?,
        );
        listeners.push(Some(l));
    }
    let configs: Vec<SiteNetConfig> = (0..world)
        .map(|i| direct_site_config(i, &addrs, opts))
        .collect();
    connect_all(&configs, listeners)
}

/// Site `site`'s routes when every site listens at `addrs[j]` and the links are direct (no
/// relay): it dials every higher-numbered site and accepts the lower-numbered ones, so each
/// pair has one connection. The shape every `tcp` run uses, on one host or across hosts.
pub fn direct_site_config(site: usize, addrs: &[SocketAddr], opts: &NetOptions) -> SiteNetConfig {
    SiteNetConfig {
        run_id: opts.run_id.clone(),
        site,
        world: addrs.len(),
        token: opts.token.clone(),
        listen: Some(addrs[site]),
        peers: (0..addrs.len())
            .map(|j| match j.cmp(&site) {
                std::cmp::Ordering::Equal => PeerRoute::Myself,
                std::cmp::Ordering::Greater => PeerRoute::Dial(addrs[j]),
                std::cmp::Ordering::Less => PeerRoute::Accept,
            })
            .collect(),
        timeouts: opts.timeouts,
        max_frame_bytes: opts.limits.max_frame_bytes,
        max_message_bytes: opts.limits.max_message_bytes,
        peer_limits: opts.peer_limits,
    }
}
