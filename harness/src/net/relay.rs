//! The `relay` backend (default, no root): an in-process tokio relay on 127.0.0.1 per pair
//! of sites that applies the [link model](super::link) to each direction.
//!
//! For every pair {a, b} the relay listens on two ports, one per end. Both sites *dial* it
//! (their [`SiteNetConfig`] routes say `dial <port>`); the relay joins the two connections
//! and pumps each direction through its own shaper. It is a byte pipe: the handshake and
//! frames run end to end, so the relay needs no token. A port takes the first connection
//! that opens with a hello from its site, addressed to the pair's other site, for this run
//! and world; anything else (foreign bytes, silence, another site's or run's hello) is
//! turned away and recorded with its address ([`RelayNetwork::strangers`]), so a stranger
//! on a port neither takes the site's place nor gets the site blamed. (A forged hello
//! passes the relay and then fails the end-to-end handshake, whose proof needs the token.)
//!
//! Shaper of one direction (rate R, delay d, jitter j):
//! - the reader reads whatever bytes are available (up to 256 KiB), finds where messages
//!   end in them (the relay parses the hello/proof/frame lengths; on anything unexpected it
//!   treats every read as a message end), cuts the read at message ends and every ~2 ms of
//!   transmission, and stamps each piece: `finish = max(now, previous finish) + bytes·8/R`
//!   (the link is busy while it transmits; the division's remainder carries over, so no
//!   drift) and `due = max(finish + d + U[−j, j], previous due)` (order kept);
//! - the writer releases, in one write, every piece whose due time has come, then sleeps
//!   once, on a [`PreciseTimer`](super::timer) (tokio's 1 ms timer is never used, and a
//!   passed deadline is never slept on), until the next **message end** is due, or until
//!   the first pending byte is `backlog/2` late. So the last byte of every message arrives
//!   exactly when the model says, while bytes inside a long message may arrive up to
//!   `backlog/2` late in bigger batches: the receiver cannot use them earlier anyway, and
//!   the relay wakes about once per message or per `backlog/2` instead of per packet;
//! - backpressure: the reader stops reading while the direction holds more than
//!   `R·(d + 2j + backlog)` + 256 KiB (what the link has in flight, bytes released lazily,
//!   and queued transmission); the writer wakes it as it releases bytes (no timer), and a
//!   fast sender is slowed by TCP as on a real link. The queue must never run dry while the
//!   sender has data, or the modelled link would idle: `backlog` (20 ms) is twice the lazy
//!   slack, so after each release at least `backlog/2` of transmission stays queued.

use super::cpu;
use super::error::NetError;
use super::frame::{self, HELLO_FIXED_BYTES};
use super::link::{LinkMatrix, LinkSpec};
use super::tcp::{connect_all, NetOptions, PeerRoute, SiteNetConfig, TcpComm};
use super::timer::{PreciseTimer, TimerHandle};
use crate::rng::splitmix64;
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
        RelayOptions {
            bind_ip: IpAddr::V4(Ipv4Addr::LOCALHOST),
            worker_threads: 1,
            backlog: Duration::from_millis(20),
        }
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
    /// Connections turned away from a port (see [`RelayNetwork::strangers`]).
    strangers: Mutex<Vec<String>>,
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
    pub fn start(
        links: &LinkMatrix,
        net: &NetOptions,
        opts: &RelayOptions,
    ) -> Result<Self, NetError> {
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
        let timer =
            PreciseTimer::start().map_err(|e| NetError::Config(format!("relay timer: {e}")))?;
        let mut routes: Vec<Vec<PeerRoute>> = (0..world)
            .map(|i| {
                (0..world)
                    .map(|j| {
                        if i == j {
                            PeerRoute::Myself
                        } else {
                            PeerRoute::Accept
                        }
                    })
                    .collect()
            })
            .collect();
        let mut dials: Vec<(usize, usize, SocketAddr)> = Vec::new();
        {
            let _guard = runtime.enter();
            for a in 0..world {
                for b in a + 1..world {
                    let bind =
                        |end: usize| -> Result<(tokio::net::TcpListener, SocketAddr), NetError> {
                            let err = |e: std::io::Error| {
                                NetError::Config(format!(
                                    "relay port for site {end} of pair {a}-{b}: {e}"
                                ))
                            };
                            let l = std::net::TcpListener::bind((opts.bind_ip, 0)).map_err(err)?;
                            l.set_nonblocking(true).map_err(err)?;
                            let addr = l.local_addr().map_err(err)?;
                            Ok((tokio::net::TcpListener::from_std(l).map_err(err)?, addr))
                        };
                    let (la, addr_a) = bind(a)?;
                    let (lb, addr_b) = bind(b)?;
                    dials.push((a, b, addr_a));
                    dials.push((b, a, addr_b));
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
                        ends: (a, b),
                        world,
                        run_id: net.run_id.clone(),
                        hello_timeout: net.timeouts.connect,
                    };
                    runtime.spawn(pair.serve(la, lb, ab, ba));
                }
            }
        }
        for (site, peer, addr) in dials {
            routes[site][peer] = PeerRoute::Dial(addr);
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
                peer_limits: net.peer_limits,
            })
            .collect();
        Ok(RelayNetwork {
            runtime: Some(runtime),
            timer: Some(timer),
            configs,
            shared,
        })
    }

    /// One config per site, in site order; serialise them to hand to worker processes.
    pub fn site_configs(&self) -> &[SiteNetConfig] {
        &self.configs
    }

    /// Connections the relay turned away so far, one line each: who (address), on which
    /// port, and why (e.g. `127.0.0.1:5555 on the port of site 1 (pair 0-1): not a fomoe
    /// peer (bad magic)`).
    pub fn strangers(&self) -> Vec<String> {
        self.shared
            .strangers
            .lock()
            .map(|s| s.clone())
            .unwrap_or_default()
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
        RelayStats {
            bytes_forwarded: self.bytes_forwarded(),
            cpu_seconds: workers + timer_cpu,
        }
    }
}

impl Drop for RelayNetwork {
    fn drop(&mut self) {
        self.stop();
    }
}

/// A relay plus `M` connected endpoints, sites as threads of this process (tests, netcheck).
pub fn local_relay(
    links: &LinkMatrix,
    net: &NetOptions,
    opts: &RelayOptions,
) -> Result<(RelayNetwork, Vec<TcpComm>), NetError> {
    let relay = RelayNetwork::start(links, net, opts)?;
    let listeners = (0..links.world()).map(|_| None).collect();
    let comms = connect_all(relay.site_configs(), listeners)?;
    Ok((relay, comms))
}

/// Seed of link `from → to` of a run seeded `seed`.
pub(crate) fn mix(seed: u64, from: u64, to: u64) -> u64 {
    let mut s = seed ^ from.wrapping_mul(0x1000_0000_01B3) ^ to.wrapping_mul(0x0100_0000_0000_01B3);
    splitmix64(&mut s)
}

/// A jitter sample in `[−jitter, +jitter]`, as signed nanoseconds.
pub(crate) fn jitter_ns(state: &mut u64, jitter: Duration) -> i128 {
    let j = jitter.as_nanos();
    if j == 0 {
        return 0;
    }
    (splitmix64(state) as u128 % (2 * j + 1)) as i128 - j as i128
}

/// `base + offset` for a signed nanosecond offset, never before `floor`.
fn offset_instant(base: Instant, offset_ns: i128, floor: Instant) -> Instant {
    let t = if offset_ns >= 0 {
        base + Duration::from_nanos(offset_ns as u64)
    } else {
        base.checked_sub(Duration::from_nanos((-offset_ns) as u64))
            .unwrap_or(base)
    };
    t.max(floor)
}

struct PairTask {
    timer: TimerHandle,
    shared: Arc<Shared>,
    backlog: Duration,
    seed_ab: u64,
    seed_ba: u64,
    /// The pair (a, b): a dials the first port, b the second.
    ends: (usize, usize),
    world: usize,
    run_id: String,
    /// How long an accepted connection may take to send its hello.
    hello_timeout: Duration,
}

impl PairTask {
    async fn serve(
        self,
        la: tokio::net::TcpListener,
        lb: tokio::net::TcpListener,
        ab: LinkSpec,
        ba: LinkSpec,
    ) {
        let (ea, eb) = self.ends;
        let (a, b) = tokio::join!(self.accept_end(la, ea, eb), self.accept_end(lb, eb, ea));
        let (Some((a, hello_a)), Some((b, hello_b))) = (a, b) else {
            return;
        };
        let _ = a.set_nodelay(true);
        let _ = b.set_nodelay(true);
        let (ra, wa) = a.into_split();
        let (rb, wb) = b.into_split();
        tokio::spawn(direction(
            ra,
            hello_a,
            wb,
            ab,
            self.timer.clone(),
            Arc::clone(&self.shared),
            self.backlog,
            self.seed_ab,
        ));
        tokio::spawn(direction(
            rb,
            hello_b,
            wa,
            ba,
            self.timer,
            self.shared,
            self.backlog,
            self.seed_ba,
        ));
    }

    /// Accepts connections on the port of site `end` (its link to `other`) until one opens
    /// with a hello from `end` to `other` for this run and world; returns it with the hello
    /// bytes read. Others (no hello within the timeout, foreign bytes, a hello for another
    /// site or run) are turned away and recorded by address, so a stranger on a relay port
    /// neither takes the site's place nor gets the site blamed. A forged hello still passes
    /// here; the end-to-end handshake then refuses it (the proof needs the token). The
    /// listener is dropped on return, so later connections are refused.
    async fn accept_end(
        &self,
        listener: tokio::net::TcpListener,
        end: usize,
        other: usize,
    ) -> Option<(tokio::net::TcpStream, Vec<u8>)> {
        let port = format!(
            "the port of site {end} (pair {}-{})",
            end.min(other),
            end.max(other)
        );
        let mut pending = tokio::task::JoinSet::new();
        loop {
            tokio::select! {
                accepted = listener.accept() => match accepted {
                    Ok((stream, addr)) => {
                        let timer = self.timer.clone();
                        pending.spawn(read_hello(stream, addr, self.hello_timeout, timer));
                    }
                    Err(_) => return None,
                },
                Some(done) = pending.join_next() => {
                    let Ok((stream, addr, hello)) = done else { continue };
                    match hello.and_then(|h| self.check_hello(&h, end, other).map(|()| h)) {
                        Ok(h) => return Some((stream, h)),
                        Err(why) => {
                            let line = format!("{addr} on {port}: {why}");
                            tracing::warn!("relay turned away {line}");
                            if let Ok(mut s) = self.shared.strangers.lock() {
                                s.push(line);
                            }
                        }
                    }
                }
            }
        }
    }

    fn check_hello(&self, hello: &[u8], end: usize, other: usize) -> Result<(), String> {
        let mut fixed = [0u8; HELLO_FIXED_BYTES];
        fixed.copy_from_slice(&hello[..HELLO_FIXED_BYTES]);
        let head = frame::parse_hello_head(&fixed)?;
        let run_id = &hello[HELLO_FIXED_BYTES..HELLO_FIXED_BYTES + head.run_id_len];
        if run_id != self.run_id.as_bytes() {
            return Err(format!(
                "hello for run `{}`, this is run `{}`",
                String::from_utf8_lossy(run_id),
                self.run_id
            ));
        }
        if (head.from as usize, head.to as usize, head.world as usize) != (end, other, self.world) {
            return Err(format!(
                "hello from site {} to site {} in a world of {}, this port expects site {end} to site {other} in a world of {}",
                head.from, head.to, head.world, self.world
            ));
        }
        Ok(())
    }
}

/// The hello a connection opens with (fixed part and rest), read within `timeout` (on the
/// relay's own timer: its runtime has no tokio timers).
async fn read_hello(
    mut stream: tokio::net::TcpStream,
    addr: SocketAddr,
    timeout: Duration,
    timer: TimerHandle,
) -> (tokio::net::TcpStream, SocketAddr, Result<Vec<u8>, String>) {
    let read = async {
        let mut hello = vec![0u8; HELLO_FIXED_BYTES];
        stream
            .read_exact(&mut hello)
            .await
            .map_err(|e| format!("no hello ({e})"))?;
        let mut fixed = [0u8; HELLO_FIXED_BYTES];
        fixed.copy_from_slice(&hello);
        let head = frame::parse_hello_head(&fixed)?;
        let mut rest = vec![0u8; frame::hello_rest_bytes(head.run_id_len)];
        stream
            .read_exact(&mut rest)
            .await
            .map_err(|e| format!("hello cut short ({e})"))?;
        hello.extend_from_slice(&rest);
        Ok(hello)
    };
    let r = tokio::select! {
        r = read => r,
        _ = timer.sleep_until(Instant::now() + timeout) => Err(format!("no hello within {timeout:?}")),
    };
    (stream, addr, r)
}

/// Where message ends fall in the byte stream of one direction. The relay knows the
/// protocol ([`frame`](super::frame)): a hello, a proof, then frames. Anything unexpected
/// switches it to `Opaque`, where every read is treated as ending a message.
#[derive(Debug)]
pub(crate) struct MessageScanner {
    phase: Phase,
    need: usize,
    header: [u8; HELLO_FIXED_BYTES],
    filled: usize,
    more: bool,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Phase {
    HelloFixed,
    HelloRest,
    Proof,
    Header,
    Body,
    Opaque,
}

impl MessageScanner {
    pub(crate) fn new() -> Self {
        MessageScanner {
            phase: Phase::HelloFixed,
            need: HELLO_FIXED_BYTES,
            header: [0; HELLO_FIXED_BYTES],
            filled: 0,
            more: false,
        }
    }

    pub(crate) fn is_opaque(&self) -> bool {
        self.phase == Phase::Opaque
    }

    /// Appends to `ends` the offsets in `data` just past each message end (hello, proof, last
    /// frame of a message).
    pub(crate) fn scan(&mut self, data: &[u8], ends: &mut Vec<usize>) {
        let mut i = 0;
        while i < data.len() {
            match self.phase {
                Phase::Opaque => return,
                Phase::HelloFixed | Phase::Header => {
                    let take = self.need.min(data.len() - i);
                    self.header[self.filled..self.filled + take]
                        .copy_from_slice(&data[i..i + take]);
                    self.filled += take;
                    self.need -= take;
                    i += take;
                    if self.need > 0 {
                        continue;
                    }
                    self.filled = 0;
                    if self.phase == Phase::HelloFixed {
                        let Some(run_id_len) = frame::hello_run_id_len(&self.header) else {
                            self.phase = Phase::Opaque;
                            return;
                        };
                        self.phase = Phase::HelloRest;
                        self.need = frame::hello_rest_bytes(run_id_len);
                    } else {
                        let word = u32::from_le_bytes([
                            self.header[0],
                            self.header[1],
                            self.header[2],
                            self.header[3],
                        ]);
                        let (len, more) = frame::parse_frame_header(word);
                        self.more = more;
                        self.phase = Phase::Body;
                        self.need = len as usize + frame::FRAME_TRAILER_BYTES as usize;
                    }
                }
                Phase::HelloRest | Phase::Proof | Phase::Body => {
                    let take = self.need.min(data.len() - i);
                    i += take;
                    self.need -= take;
                    if self.need > 0 {
                        continue;
                    }
                    match self.phase {
                        Phase::HelloRest => {
                            ends.push(i);
                            self.phase = Phase::Proof;
                            self.need = frame::PROOF_MESSAGE_BYTES;
                        }
                        Phase::Proof => {
                            ends.push(i);
                            self.phase = Phase::Header;
                            self.need = frame::FRAME_HEADER_BYTES as usize;
                        }
                        _ => {
                            if !self.more {
                                ends.push(i);
                            }
                            self.phase = Phase::Header;
                            self.need = frame::FRAME_HEADER_BYTES as usize;
                        }
                    }
                }
            }
        }
    }
}

/// A piece of a chunk: bytes up to `end` are due at `due`; `message_end` pieces end a
/// message and are released on time, the others may wait up to the lazy slack.
struct Mark {
    end: usize,
    due: Instant,
    message_end: bool,
}

struct Chunk {
    data: Vec<u8>,
    marks: Vec<Mark>,
    eof: bool,
}

/// Bytes read but not yet released by one direction, and a wake-up for its reader.
struct Held {
    bytes: AtomicU64,
    released: tokio::sync::Notify,
    /// The writer has stopped (destination gone): the reader stops too.
    writer_done: std::sync::atomic::AtomicBool,
}

/// One direction of a pair: `prefix` (the hello already read from `rd`) goes first.
#[allow(clippy::too_many_arguments)]
async fn direction(
    rd: tokio::net::tcp::OwnedReadHalf,
    prefix: Vec<u8>,
    wr: tokio::net::tcp::OwnedWriteHalf,
    link: LinkSpec,
    timer: TimerHandle,
    shared: Arc<Shared>,
    backlog: Duration,
    seed: u64,
) {
    let (tx, rx) = tokio::sync::mpsc::unbounded_channel::<Chunk>();
    let held = Held {
        bytes: AtomicU64::new(0),
        released: tokio::sync::Notify::new(),
        writer_done: std::sync::atomic::AtomicBool::new(false),
    };
    // Bytes inside a message may be released up to `lazy` late (never its last byte).
    let lazy = (backlog / 2).max(Duration::from_millis(1));
    let reader = shape_reader(rd, prefix, tx, link, &held, backlog, seed);
    let writer = async {
        release_writer(wr, rx, timer, shared, &held, lazy).await;
        held.writer_done.store(true, Ordering::Release);
        held.released.notify_one();
    };
    tokio::join!(reader, writer);
}

const READ_BYTES: usize = 256 << 10;

async fn shape_reader(
    mut rd: tokio::net::tcp::OwnedReadHalf,
    prefix: Vec<u8>,
    tx: tokio::sync::mpsc::UnboundedSender<Chunk>,
    link: LinkSpec,
    held: &Held,
    backlog: Duration,
    mut rng: u64,
) {
    let rate = link.rate_bps.max(1) as u128;
    // Hold at most what the link has in flight (rate × (delay + 2·jitter)) plus `backlog` of
    // queued transmission; the writer wakes us as it releases bytes.
    let in_flight = link.delay + link.jitter * 2 + backlog;
    let cap = (link.rate_bps as f64 / 8.0 * in_flight.as_secs_f64()) as u64 + READ_BYTES as u64;
    // A read is stamped in slices of ~2 ms of transmission, so a big read is released
    // progressively instead of being held until its last byte is due.
    let slice = ((link.rate_bps / 8 / 500) as usize).clamp(4 << 10, READ_BYTES);
    let mut scanner = MessageScanner::new();
    let mut ends = Vec::new();
    let mut tx_free = Instant::now();
    let mut carry: u128 = 0;
    let mut last_due = Instant::now();
    // One reusable read buffer; each chunk gets an exact-size copy (no 256 KiB allocation,
    // mmap and page faults per read).
    let mut scratch: Vec<u8> = Vec::with_capacity(READ_BYTES);
    let mut prefix = Some(prefix).filter(|p| !p.is_empty());
    loop {
        loop {
            let notified = held.released.notified();
            if held.writer_done.load(Ordering::Acquire) {
                return;
            }
            if held.bytes.load(Ordering::Acquire) < cap {
                break;
            }
            notified.await;
        }
        scratch.clear();
        let n = match prefix.take() {
            Some(p) => {
                scratch.extend_from_slice(&p);
                p.len()
            }
            None => rd.read_buf(&mut scratch).await.unwrap_or(0),
        };
        if n == 0 {
            let due = (tx_free + link.delay).max(last_due);
            let _ = tx.send(Chunk {
                data: Vec::new(),
                marks: vec![Mark {
                    end: 0,
                    due,
                    message_end: true,
                }],
                eof: true,
            });
            return;
        }
        let buf = scratch[..n].to_vec();
        ends.clear();
        scanner.scan(&buf, &mut ends);
        // Pieces: up to each message end, then the rest of the read (a message end only
        // when the stream could not be parsed).
        let mut pieces: Vec<(usize, bool)> = Vec::with_capacity(ends.len() + n / slice + 1);
        let mut from = 0usize;
        for &e in &ends {
            pieces.extend((from + slice..e).step_by(slice).map(|x| (x, false)));
            pieces.push((e, true));
            from = e;
        }
        if from < n {
            pieces.extend((from + slice..n).step_by(slice).map(|x| (x, false)));
            pieces.push((n, scanner.is_opaque()));
        }
        let mut t = tx_free.max(Instant::now());
        let mut marks = Vec::with_capacity(pieces.len());
        let mut prev = 0usize;
        for (end, message_end) in pieces {
            let bits_ns = (end - prev) as u128 * 8 * 1_000_000_000 + carry;
            carry = bits_ns % rate;
            t += Duration::from_nanos((bits_ns / rate) as u64);
            let due = offset_instant(t + link.delay, jitter_ns(&mut rng, link.jitter), last_due);
            last_due = due;
            marks.push(Mark {
                end,
                due,
                message_end,
            });
            prev = end;
        }
        tx_free = t;
        held.bytes.fetch_add(n as u64, Ordering::AcqRel);
        if tx
            .send(Chunk {
                data: buf,
                marks,
                eof: false,
            })
            .is_err()
        {
            return;
        }
    }
}

async fn release_writer(
    mut wr: tokio::net::tcp::OwnedWriteHalf,
    mut rx: tokio::sync::mpsc::UnboundedReceiver<Chunk>,
    timer: TimerHandle,
    shared: Arc<Shared>,
    held: &Held,
    lazy: Duration,
) {
    let mut pending: VecDeque<Chunk> = VecDeque::new();
    // Position of the next unreleased byte: mark index and byte offset in the head chunk.
    let mut mark = 0usize;
    let mut offset = 0usize;
    let mut batch: Vec<u8> = Vec::new();
    let mut open = true;
    let mut sleep: Option<(Instant, std::pin::Pin<Box<super::timer::Sleep>>)> = None;
    loop {
        while let Ok(c) = rx.try_recv() {
            pending.push_back(c);
        }
        if pending.is_empty() {
            if !open {
                return;
            }
            match rx.recv().await {
                Some(c) => pending.push_back(c),
                None => return,
            }
            continue;
        }
        // Release every mark that is due (lazy ones included: they are due too).
        let now = Instant::now();
        batch.clear();
        let mut eof = false;
        while let Some(head) = pending.front() {
            let Some(m) = head.marks.get(mark) else {
                pending.pop_front();
                mark = 0;
                offset = 0;
                continue;
            };
            if m.due > now {
                break;
            }
            batch.extend_from_slice(&head.data[offset..m.end]);
            offset = m.end;
            mark += 1;
            if head.eof {
                eof = true;
            }
        }
        if !batch.is_empty() {
            if wr.write_all(&batch).await.is_err() {
                return;
            }
            let written = batch.len() as u64;
            shared.bytes_forwarded.fetch_add(written, Ordering::Relaxed);
            held.bytes.fetch_sub(written, Ordering::AcqRel);
            held.released.notify_one();
        }
        if eof {
            let _ = wr.shutdown().await;
            return;
        }
        // Next wake: the first message end on time, or the first lazy byte `lazy` late.
        let first = pending
            .iter()
            .enumerate()
            .flat_map(|(k, c)| c.marks.iter().skip(if k == 0 { mark } else { 0 }))
            .next();
        let Some(first) = first else { continue };
        let next_end = pending
            .iter()
            .enumerate()
            .flat_map(|(k, c)| c.marks.iter().skip(if k == 0 { mark } else { 0 }))
            .find(|m| m.message_end)
            .map(|m| m.due);
        let wake = match next_end {
            Some(e) => e.min(first.due + lazy),
            None => first.due + lazy,
        };
        if sleep.as_ref().is_none_or(|(at, _)| *at != wake) {
            sleep = Some((wake, Box::pin(timer.sleep_until(wake))));
        }
        let Some((_, fut)) = sleep.as_mut() else {
            continue;
        };
        if open {
            tokio::select! {
                biased;
                _ = fut.as_mut() => { sleep = None; }
                c = rx.recv() => match c {
                    Some(c) => pending.push_back(c),
                    None => open = false,
                },
            }
        } else {
            fut.as_mut().await;
            sleep = None;
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::net::frame;

    /// A direction's bytes: hello + proof (as `handshake_bytes` counts them), then messages.
    fn stream(run_id: &str, messages: &[usize], max_frame: u32) -> (Vec<u8>, Vec<usize>) {
        let mut v = Vec::new();
        let mut ends = Vec::new();
        // Hello: magic, version, flags, from, to, world, max frame, run-id length, run id,
        // nonce, crc; then a 36-byte proof. Contents beyond the lengths do not matter here.
        v.extend_from_slice(b"FMOE");
        v.extend_from_slice(&[0u8; 20]);
        v.extend_from_slice(&(run_id.len() as u16).to_le_bytes());
        v.extend_from_slice(run_id.as_bytes());
        v.extend_from_slice(&[0u8; 20]);
        ends.push(v.len());
        v.extend_from_slice(&[0u8; 36]);
        ends.push(v.len());
        assert_eq!(v.len() as u64, frame::handshake_bytes(run_id));
        for &m in messages {
            frame::write_message(&mut v, &vec![0xAB; m], max_frame).unwrap();
            ends.push(v.len());
        }
        (v, ends)
    }

    #[test]
    fn scanner_finds_message_ends_across_any_split() {
        let (bytes, want) = stream("run-7", &[0, 1, 100, 1000, 37], 64);
        for step in [1usize, 2, 3, 7, 64, 1000, bytes.len()] {
            let mut s = MessageScanner::new();
            let mut got = Vec::new();
            let mut base = 0;
            for piece in bytes.chunks(step) {
                let mut ends = Vec::new();
                s.scan(piece, &mut ends);
                got.extend(ends.iter().map(|e| base + e));
                base += piece.len();
            }
            assert_eq!(got, want, "split every {step} bytes");
            assert!(!s.is_opaque());
        }
    }

    #[test]
    fn scanner_gives_up_on_foreign_bytes() {
        let mut s = MessageScanner::new();
        let mut ends = Vec::new();
        s.scan(b"GET / HTTP/1.1\r\nHost: x\r\n\r\n", &mut ends);
        assert!(s.is_opaque());
        assert!(ends.is_empty());
    }
}
