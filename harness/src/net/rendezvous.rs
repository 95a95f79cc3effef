//! The rendezvous of a multi-host run: how the ranks of `fomoe site` find each other before
//! any training link exists, and the control channel each rank keeps to rank 0 afterwards.
//!
//! ## Protocol
//! Rank 0 listens on the rendezvous port (on every interface of the rendezvous address's
//! family). Every other rank dials it, retrying while nobody answers, so ranks may start in
//! any order within [`RendezvousOptions::timeout`]. On each connection:
//! 1. the transport handshake of [`frame`](super::frame) with a fixed run id
//!    ([`RENDEZVOUS_ID`]): both sides prove they hold the run's token without sending it; a
//!    stranger is turned away before it can send anything else;
//! 2. the rank sends a [`Join`]: rank, world size, endpoint count, run id, config hash,
//!    fomoe version, host name, pid and the local address of each listener it opened;
//! 3. rank 0 checks the join against its own values. A wrong world size, a rank out of
//!    range, a rank that joined twice, another run id, another config hash or another
//!    version is refused: the rank gets [`Reply::Refused`] with the reason, every rank
//!    already joined gets [`Reply::Aborted`], and rank 0 fails with the same line. Nobody
//!    is left waiting;
//! 4. once all ranks have joined, each gets the [`Roster`]: where every endpoint listens
//!    and every rank's host name. If the timeout passes first, rank 0 names the ranks that
//!    never came (and the connections it turned away), and the ranks that did come get
//!    [`Reply::Aborted`] with that line.
//!
//! A rank waits for its reply at most `timeout` plus [`REPLY_GRACE`] after joining: rank 0's
//! own deadline is at most `timeout` after it started listening, which was before the rank
//! joined. A rank that cannot reach rank 0 gives up after `timeout` with the last reason
//! (so does one that arrives after rank 0 already gave up: it finds no listener).
//! Messages after the handshake are frames of [`frame`](super::frame) carrying CBOR.
//!
//! ## Addresses
//! A rank's listener bound to the unspecified address (the default) is advertised at the IP
//! rank 0 saw the rank's connection come from; a listener on a specific address at that
//! address. Endpoints on rank 0's host (rank 0's own, and ranks whose connection rank 0 saw
//! from loopback) are advertised as [`Advertised::AtRendezvous`]: every rank reaches them at
//! the IP it reached the rendezvous at (rank 0 itself at loopback). So ranks sharing a host
//! with rank 0 work even where the host name resolves to loopback on that host only.
//!
//! ## Degenerate cases
//! World 1: rank 0 has nobody to wait for and returns at once without listening.

use std::io::{BufReader, BufWriter, Write};
use std::net::ToSocketAddrs;
use std::net::{IpAddr, Ipv4Addr, Ipv6Addr, Shutdown, SocketAddr, TcpListener, TcpStream};
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::mpsc::{self, Receiver, RecvTimeoutError};
use std::sync::Arc;
use std::thread::JoinHandle;
use std::time::{Duration, Instant};

use serde::de::DeserializeOwned;
use serde::{Deserialize, Serialize};

use super::error::{NetError, PeerName};
use super::frame::{self, Expect, FrameLimits, HandshakeParams, Token};

/// Run id of the rendezvous handshake (the run's own id is checked in the [`Join`], so a
/// rank of another run is told so instead of failing the proof).
pub const RENDEZVOUS_ID: &str = "fomoe-rendezvous";
/// Longest a single connection may take to complete the handshake and send its join.
pub const HANDSHAKE_TIMEOUT: Duration = Duration::from_secs(10);
/// How much longer than its own timeout a joined rank waits for rank 0's reply.
pub const REPLY_GRACE: Duration = Duration::from_secs(5);
/// Connections rank 0 handshakes at once; more are closed unread.
pub const MAX_PENDING_HANDSHAKES: usize = 64;

/// What one rank brings to the rendezvous.
#[derive(Clone, Debug)]
pub struct RendezvousOptions {
    pub rank: usize,
    pub world: usize,
    /// Endpoints of the run (at least `world`): rank r hosts endpoint r, rank 0 also the
    /// endpoints from `world` on (Photon's aggregator).
    pub endpoints: usize,
    /// `HOST:PORT` of rank 0, resolved with the system resolver.
    pub address: String,
    pub run_id: String,
    pub config_hash: String,
    pub token: Token,
    /// How long rank 0 waits for everyone, and others for rank 0.
    pub timeout: Duration,
    /// The endpoints this rank hosts and the local address of each one's listener.
    pub listeners: Vec<(usize, SocketAddr)>,
}

/// The endpoints rank `rank` hosts in a run of `world` ranks and `endpoints` endpoints.
pub fn hosted_endpoints(rank: usize, world: usize, endpoints: usize) -> Vec<usize> {
    if rank == 0 {
        std::iter::once(0).chain(world..endpoints).collect()
    } else {
        vec![rank]
    }
}

/// A rank's join request (after the handshake).
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct Join {
    pub rank: usize,
    pub world: usize,
    pub endpoints: usize,
    pub run_id: String,
    pub config_hash: String,
    pub version: String,
    pub host: String,
    pub pid: u32,
    pub listeners: Vec<(usize, SocketAddr)>,
}

/// Where an endpoint listens, as rank 0 tells it.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub enum Advertised {
    /// On rank 0's host: at the IP each rank reached the rendezvous at (rank 0: loopback).
    AtRendezvous {
        port: u16,
    },
    At(SocketAddr),
}

/// Where every endpoint listens and on which host every rank runs.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct Roster {
    pub endpoints: Vec<Advertised>,
    pub hosts: Vec<String>,
}

/// Rank 0's answer to a join.
#[derive(Clone, Debug, Serialize, Deserialize)]
pub enum Reply {
    Roster(Roster),
    /// This rank does not fit the run.
    Refused {
        reason: String,
    },
    /// The rendezvous failed for another reason (another rank refused, or missing).
    Aborted {
        reason: String,
    },
}

/// What went wrong, for callers that react differently (tests match on it).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum FailureKind {
    /// Bad options, an address that does not resolve, a port that cannot be bound.
    Setup,
    /// Rank 0 could not be reached within the timeout.
    Unreachable,
    /// The handshake with the rendezvous failed (e.g. another token).
    TurnedAway,
    /// Rank 0 refused this rank, or (at rank 0) a rank that does not fit.
    Refused,
    /// Rank 0 ended the rendezvous because of another rank.
    Aborted,
    /// Ranks missing when the timeout passed, or no reply in time.
    Timeout,
}

/// A failed rendezvous: one line naming the rank that reports it and what happened.
#[derive(Clone, Debug, thiserror::Error)]
#[error("rank {rank}: {message}")]
pub struct RendezvousError {
    pub rank: usize,
    pub kind: FailureKind,
    pub message: String,
}

/// The outcome of a rendezvous.
pub struct Meeting {
    pub rank: usize,
    pub world: usize,
    /// Where this rank reaches each endpoint.
    pub endpoints: Vec<SocketAddr>,
    /// Host name of each rank.
    pub hosts: Vec<String>,
    /// The rendezvous address this rank resolved (rank 0's host as the others reach it).
    pub rendezvous: SocketAddr,
    /// Rank 0: the channel to rank r at index r (none at 0). Other ranks: the channel to
    /// rank 0 at index 0.
    pub control: Vec<Option<Control>>,
}

impl Meeting {
    /// Ranks running on this rank's host (by host name), this one included.
    pub fn ranks_on_my_host(&self) -> usize {
        let me = &self.hosts[self.rank];
        self.hosts.iter().filter(|h| *h == me).count()
    }
}

/// Meets the other ranks (see the module doc): rank 0 serves, the others join.
pub fn meet(opts: &RendezvousOptions) -> Result<Meeting, RendezvousError> {
    check_options(opts)?;
    let target = resolve(opts)?;
    if opts.rank == 0 {
        serve(opts, target)
    } else {
        join(opts, target)
    }
}

fn fail(rank: usize, kind: FailureKind, message: impl Into<String>) -> RendezvousError {
    RendezvousError {
        rank,
        kind,
        message: message.into(),
    }
}

fn check_options(o: &RendezvousOptions) -> Result<(), RendezvousError> {
    let bad = |m: String| fail(o.rank, FailureKind::Setup, m);
    if o.world == 0 || o.rank >= o.world {
        return Err(bad(format!(
            "rank {} is not below world size {}",
            o.rank, o.world
        )));
    }
    if o.endpoints < o.world {
        return Err(bad(format!(
            "{} endpoints for {} ranks",
            o.endpoints, o.world
        )));
    }
    let mut hosted: Vec<usize> = o.listeners.iter().map(|(e, _)| *e).collect();
    hosted.sort_unstable();
    if hosted != hosted_endpoints(o.rank, o.world, o.endpoints) {
        return Err(bad(format!(
            "listeners for endpoints {hosted:?}, expected {:?}",
            hosted_endpoints(o.rank, o.world, o.endpoints)
        )));
    }
    if o.timeout.is_zero() {
        return Err(bad("rendezvous timeout must be above 0".into()));
    }
    Ok(())
}

fn resolve(o: &RendezvousOptions) -> Result<SocketAddr, RendezvousError> {
    resolve_address(&o.address).map_err(|m| fail(o.rank, FailureKind::Setup, m))
}

/// The rendezvous address `HOST:PORT`: the first IPv4 address it resolves to, else the
/// first one; a one-line reason when it does not resolve or has port 0.
pub fn resolve_address(address: &str) -> Result<SocketAddr, String> {
    let addrs: Vec<SocketAddr> = address
        .to_socket_addrs()
        .map_err(|e| {
            format!("rendezvous address `{address}` does not resolve: {e} (expected HOST:PORT)")
        })?
        .collect();
    let pick = addrs
        .iter()
        .find(|a| a.is_ipv4())
        .or(addrs.first())
        .copied()
        .ok_or_else(|| format!("rendezvous address `{address}` resolves to no address"))?;
    if pick.port() == 0 {
        return Err(format!(
            "rendezvous address `{address}` has port 0; give the port rank 0 listens on"
        ));
    }
    Ok(pick)
}

fn loopback_like(addr: &SocketAddr) -> IpAddr {
    match addr {
        SocketAddr::V4(_) => IpAddr::V4(Ipv4Addr::LOCALHOST),
        SocketAddr::V6(_) => IpAddr::V6(Ipv6Addr::LOCALHOST),
    }
}

fn unspecified_like(addr: &SocketAddr) -> IpAddr {
    match addr {
        SocketAddr::V4(_) => IpAddr::V4(Ipv4Addr::UNSPECIFIED),
        SocketAddr::V6(_) => IpAddr::V6(Ipv6Addr::UNSPECIFIED),
    }
}

/// The unspecified address of the rendezvous address's family, port 0: where a rank's
/// listeners bind by default.
pub fn default_listen_addr(rendezvous: &SocketAddr) -> SocketAddr {
    SocketAddr::new(unspecified_like(rendezvous), 0)
}

fn handshake_params<'a>(token: &'a Token, me: usize) -> HandshakeParams<'a> {
    HandshakeParams {
        run_id: RENDEZVOUS_ID,
        me,
        world: 2,
        token,
        max_frame_bytes: frame::DEFAULT_MAX_FRAME_BYTES,
    }
}

fn prepare_socket(stream: &TcpStream, peer: &PeerName) -> Result<(), NetError> {
    stream
        .set_nodelay(true)
        .and_then(|_| stream.set_read_timeout(Some(Duration::from_millis(20))))
        .and_then(|_| stream.set_write_timeout(Some(Duration::from_secs(5))))
        .map_err(|e| NetError::io(peer, "configure socket", &e))
}

// ---------------------------------------------------------------------------------------
// Rank 0

/// A join that passed the handshake, with its channel.
struct Arrival {
    join: Join,
    from: SocketAddr,
    control: Control,
}

fn serve(o: &RendezvousOptions, target: SocketAddr) -> Result<Meeting, RendezvousError> {
    let me = 0;
    let mut hosts = vec![String::new(); o.world];
    hosts[0] = crate::results::manifest::host_name();
    if o.world == 1 {
        return Ok(Meeting {
            rank: 0,
            world: 1,
            endpoints: roster_for_rank0(o, &[])
                .endpoints
                .iter()
                .map(|a| resolve_advertised(a, loopback_like(&target)))
                .collect(),
            hosts,
            rendezvous: target,
            control: vec![None],
        });
    }
    let bind = SocketAddr::new(unspecified_like(&target), target.port());
    let listener = TcpListener::bind(bind).map_err(|e| {
        fail(
            me,
            FailureKind::Setup,
            format!("cannot listen for the rendezvous on {bind}: {e}"),
        )
    })?;
    listener
        .set_nonblocking(true)
        .map_err(|e| fail(me, FailureKind::Setup, format!("rendezvous listener: {e}")))?;
    let deadline = Instant::now() + o.timeout;
    let (tx, rx) = mpsc::channel::<Result<Arrival, String>>();
    let pending = Arc::new(AtomicUsize::new(0));
    let mut arrived: Vec<Option<Arrival>> = (0..o.world).map(|_| None).collect();
    let mut turned_away: Vec<String> = Vec::new();
    let abort_all = |arrived: &mut Vec<Option<Arrival>>, reason: &str| {
        for a in arrived.iter_mut().flatten() {
            let _ = a.control.send(&Reply::Aborted {
                reason: reason.to_string(),
            });
        }
    };
    while arrived.iter().skip(1).any(Option::is_none) {
        if Instant::now() >= deadline {
            let reason = missing_line(o, &arrived, &turned_away);
            abort_all(&mut arrived, &reason);
            return Err(fail(me, FailureKind::Timeout, reason));
        }
        match listener.accept() {
            Ok((stream, from)) => {
                if pending.load(Ordering::Acquire) >= MAX_PENDING_HANDSHAKES {
                    let _ = stream.shutdown(Shutdown::Both);
                    turned_away.push(format!("{from}: too many handshakes at once"));
                } else {
                    pending.fetch_add(1, Ordering::AcqRel);
                    let (tx, pending, token) = (tx.clone(), Arc::clone(&pending), o.token.clone());
                    std::thread::spawn(move || {
                        let r = greet(stream, from, &token).map_err(|e| format!("{from}: {e}"));
                        pending.fetch_sub(1, Ordering::AcqRel);
                        let _ = tx.send(r);
                    });
                }
            }
            Err(e) if e.kind() == std::io::ErrorKind::WouldBlock => {}
            Err(e) => turned_away.push(format!("accept: {e}")),
        }
        while let Ok(r) = rx.try_recv() {
            match r {
                Err(line) => turned_away.push(line),
                Ok(a) => {
                    if let Err(reason) = admit(o, &arrived, &a.join, a.from) {
                        let _ = a.control.send(&Reply::Refused {
                            reason: reason.clone(),
                        });
                        abort_all(&mut arrived, &reason);
                        return Err(fail(me, FailureKind::Refused, reason));
                    }
                    let r = a.join.rank;
                    arrived[r] = Some(a);
                }
            }
        }
        std::thread::sleep(Duration::from_millis(5));
    }
    let joins: Vec<(Join, SocketAddr)> = arrived
        .iter()
        .flatten()
        .map(|a| (a.join.clone(), a.from))
        .collect();
    let roster = roster_for_rank0(o, &joins);
    for (r, h) in joins.iter().map(|(j, _)| (j.rank, j.host.clone())) {
        hosts[r] = h;
    }
    let roster = Roster {
        hosts: hosts.clone(),
        ..roster
    };
    let mut control: Vec<Option<Control>> = (0..o.world).map(|_| None).collect();
    for (r, a) in arrived.into_iter().enumerate() {
        if let Some(a) = a {
            a.control
                .send(&Reply::Roster(roster.clone()))
                .map_err(|e| {
                    fail(
                        me,
                        FailureKind::Aborted,
                        format!("sending the roster to rank {r}: {e}"),
                    )
                })?;
            control[r] = Some(a.control);
        }
    }
    Ok(Meeting {
        rank: 0,
        world: o.world,
        endpoints: roster
            .endpoints
            .iter()
            .map(|a| resolve_advertised(a, loopback_like(&target)))
            .collect(),
        hosts,
        rendezvous: target,
        control,
    })
}

/// Handshake and join of one connection (on its own thread).
fn greet(mut stream: TcpStream, from: SocketAddr, token: &Token) -> Result<Arrival, NetError> {
    let peer = PeerName::stranger(from.to_string());
    stream
        .set_nonblocking(false)
        .map_err(|e| NetError::io(&peer, "set_nonblocking", &e))?;
    prepare_socket(&stream, &peer)?;
    frame::handshake(
        &mut stream,
        &handshake_params(token, 0),
        Expect::Accepted(&[1]),
        &from.to_string(),
        HANDSHAKE_TIMEOUT,
    )?;
    let control = Control::new(stream, peer.clone())?;
    let join: Join = control.recv(HANDSHAKE_TIMEOUT)?;
    Ok(Arrival {
        join,
        from,
        control,
    })
}

/// Whether `j` fits the run of rank 0; the refusal names the rank.
fn admit(
    o: &RendezvousOptions,
    arrived: &[Option<Arrival>],
    j: &Join,
    from: SocketAddr,
) -> Result<(), String> {
    let r = j.rank;
    let version = env!("CARGO_PKG_VERSION");
    if j.version != version {
        return Err(format!(
            "rank {r} ({from}) runs fomoe {}, rank 0 runs {version}",
            j.version
        ));
    }
    if j.world != o.world {
        return Err(format!(
            "rank {r} ({from}) has world size {}, rank 0 has {} (every rank needs the same --world / SLURM_NTASKS)",
            j.world, o.world
        ));
    }
    if r == 0 || r >= o.world {
        return Err(format!(
            "a process at {from} claims rank {r}; the other ranks are 1..{}",
            o.world
        ));
    }
    if let Some(first) = &arrived[r] {
        return Err(format!(
            "rank {r} joined twice (from {} and from {from})",
            first.from
        ));
    }
    if j.run_id != o.run_id {
        return Err(format!(
            "rank {r} ({from}) has run id `{}`, rank 0 has `{}`",
            j.run_id, o.run_id
        ));
    }
    if j.config_hash != o.config_hash {
        return Err(format!(
            "rank {r} ({from}) has another config (hash {}, rank 0 has {}): start every rank with the same config file",
            j.config_hash, o.config_hash
        ));
    }
    let mut hosted: Vec<usize> = j.listeners.iter().map(|(e, _)| *e).collect();
    hosted.sort_unstable();
    if j.endpoints != o.endpoints || hosted != hosted_endpoints(r, o.world, o.endpoints) {
        return Err(format!(
            "rank {r} ({from}) hosts endpoints {hosted:?} of {}, expected {:?} of {}",
            j.endpoints,
            hosted_endpoints(r, o.world, o.endpoints),
            o.endpoints
        ));
    }
    Ok(())
}

fn missing_line(o: &RendezvousOptions, arrived: &[Option<Arrival>], turned: &[String]) -> String {
    let missing: Vec<String> = (1..o.world)
        .filter(|&r| arrived[r].is_none())
        .map(|r| r.to_string())
        .collect();
    let joined: Vec<String> = std::iter::once("0".to_string())
        .chain(
            (1..o.world)
                .filter(|&r| arrived[r].is_some())
                .map(|r| r.to_string()),
        )
        .collect();
    let mut line = format!(
        "rank{} {} did not join the rendezvous within {:?} (joined: {})",
        if missing.len() == 1 { "" } else { "s" },
        missing.join(", "),
        o.timeout,
        joined.join(", ")
    );
    if !turned.is_empty() {
        line.push_str(&format!(
            "; turned away {} connection(s): {}",
            turned.len(),
            turned.join("; ")
        ));
    }
    line
}

/// The roster rank 0 sends: its own endpoints and those of `joins`.
fn roster_for_rank0(o: &RendezvousOptions, joins: &[(Join, SocketAddr)]) -> Roster {
    let mut endpoints = vec![Advertised::AtRendezvous { port: 0 }; o.endpoints];
    for &(e, addr) in &o.listeners {
        endpoints[e] = advertise(addr, None);
    }
    for (j, from) in joins {
        for &(e, addr) in &j.listeners {
            endpoints[e] = advertise(addr, Some(from.ip()));
        }
    }
    Roster {
        endpoints,
        hosts: Vec::new(),
    }
}

/// How a listener bound at `bound` is advertised, for a rank seen at `seen` (None: rank 0).
fn advertise(bound: SocketAddr, seen: Option<IpAddr>) -> Advertised {
    let port = bound.port();
    let ip = bound.ip();
    if !ip.is_unspecified() && !ip.is_loopback() {
        return Advertised::At(bound);
    }
    match seen {
        Some(s) if !s.is_loopback() => Advertised::At(SocketAddr::new(s, port)),
        _ => Advertised::AtRendezvous { port },
    }
}

fn resolve_advertised(a: &Advertised, rendezvous_ip: IpAddr) -> SocketAddr {
    match *a {
        Advertised::At(addr) => addr,
        Advertised::AtRendezvous { port } => SocketAddr::new(rendezvous_ip, port),
    }
}

// ---------------------------------------------------------------------------------------
// Other ranks

fn join(o: &RendezvousOptions, target: SocketAddr) -> Result<Meeting, RendezvousError> {
    let me = o.rank;
    let deadline = Instant::now() + o.timeout;
    let name = PeerName::site(0, format!("{} = {target}", o.address));
    let mut backoff = Duration::from_millis(20);
    let mut stream = loop {
        let left = deadline.saturating_duration_since(Instant::now());
        match TcpStream::connect_timeout(
            &target,
            left.clamp(Duration::from_millis(1), Duration::from_secs(2)),
        ) {
            Ok(s) => break s,
            Err(e) => {
                if Instant::now() + backoff >= deadline {
                    return Err(fail(
                        me,
                        FailureKind::Unreachable,
                        format!(
                            "no rendezvous at {} ({target}) within {:?}: {e} (is rank 0 running?)",
                            o.address, o.timeout
                        ),
                    ));
                }
                std::thread::sleep(backoff);
                backoff = (backoff * 2).min(Duration::from_millis(500));
            }
        }
    };
    let turned_away = |e: NetError| {
        fail(
            me,
            FailureKind::TurnedAway,
            format!(
                "the rendezvous at {} ({target}) turned this rank away (is the run token the same as rank 0's?): {e}",
                o.address
            ),
        )
    };
    prepare_socket(&stream, &name).map_err(turned_away)?;
    frame::handshake(
        &mut stream,
        &handshake_params(&o.token, 1),
        Expect::Dialed(0),
        &target.to_string(),
        HANDSHAKE_TIMEOUT,
    )
    .map_err(turned_away)?;
    let control = Control::new(stream, name).map_err(turned_away)?;
    let join = Join {
        rank: me,
        world: o.world,
        endpoints: o.endpoints,
        run_id: o.run_id.clone(),
        config_hash: o.config_hash.clone(),
        version: env!("CARGO_PKG_VERSION").to_string(),
        host: crate::results::manifest::host_name(),
        pid: std::process::id(),
        listeners: o.listeners.clone(),
    };
    control
        .send(&join)
        .map_err(|e| fail(me, FailureKind::Aborted, format!("sending the join: {e}")))?;
    let wait = o.timeout + REPLY_GRACE;
    let reply: Reply = control.recv(wait).map_err(|e| match e {
        NetError::RecvTimeout { .. } => fail(
            me,
            FailureKind::Timeout,
            format!(
                "joined the rendezvous at {} but rank 0 sent no roster within {wait:?}",
                o.address
            ),
        ),
        e => fail(
            me,
            FailureKind::Aborted,
            format!("waiting for the roster from rank 0: {e}"),
        ),
    })?;
    let roster = match reply {
        Reply::Roster(r) => r,
        Reply::Refused { reason } => {
            return Err(fail(
                me,
                FailureKind::Refused,
                format!("refused by rank 0: {reason}"),
            ))
        }
        Reply::Aborted { reason } => {
            return Err(fail(
                me,
                FailureKind::Aborted,
                format!("rank 0 ended the rendezvous: {reason}"),
            ))
        }
    };
    if roster.endpoints.len() != o.endpoints || roster.hosts.len() != o.world {
        return Err(fail(
            me,
            FailureKind::Aborted,
            format!(
                "rank 0 sent a roster of {} endpoints and {} hosts, expected {} and {}",
                roster.endpoints.len(),
                roster.hosts.len(),
                o.endpoints,
                o.world
            ),
        ));
    }
    let mut control_links: Vec<Option<Control>> = (0..o.world).map(|_| None).collect();
    control_links[0] = Some(control);
    Ok(Meeting {
        rank: me,
        world: o.world,
        endpoints: roster
            .endpoints
            .iter()
            .map(|a| resolve_advertised(a, target.ip()))
            .collect(),
        hosts: roster.hosts,
        rendezvous: target,
        control: control_links,
    })
}

// ---------------------------------------------------------------------------------------
// The control channel

/// One item from a control channel's reader thread.
type Incoming = Result<Vec<u8>, NetError>;

/// An authenticated channel between rank 0 and one rank, carrying CBOR messages in frames.
/// A reader thread drains it (so `recv` can wait with a timeout); `send` writes and flushes
/// one message. Dropping it closes the connection.
pub struct Control {
    peer: PeerName,
    stream: TcpStream,
    writer: std::sync::Mutex<BufWriter<TcpStream>>,
    incoming: std::sync::Mutex<Receiver<Incoming>>,
    reader: Option<JoinHandle<()>>,
}

impl Control {
    /// Wraps an authenticated stream and starts its reader thread.
    pub fn new(stream: TcpStream, peer: PeerName) -> Result<Control, NetError> {
        let io = |op, e: std::io::Error| NetError::io(&peer, op, &e);
        stream
            .set_read_timeout(Some(Duration::from_millis(500)))
            .map_err(|e| io("set_read_timeout", e))?;
        stream
            .set_write_timeout(Some(Duration::from_secs(30)))
            .map_err(|e| io("set_write_timeout", e))?;
        let read_half = stream.try_clone().map_err(|e| io("clone", e))?;
        let write_half = stream.try_clone().map_err(|e| io("clone", e))?;
        let (tx, rx) = mpsc::channel::<Incoming>();
        let name = peer.clone();
        let reader = std::thread::Builder::new()
            .name("fomoe-control".into())
            .spawn(move || {
                let mut r = BufReader::with_capacity(64 << 10, read_half);
                loop {
                    let item = match frame::read_message(
                        &mut r,
                        FrameLimits::default(),
                        &name,
                        Duration::from_secs(30),
                    ) {
                        Ok(Some(m)) => Ok(m.payload),
                        Ok(None) => Err(NetError::Closed { peer: name.clone() }),
                        Err(e) => Err(e),
                    };
                    let last = item.is_err();
                    if tx.send(item).is_err() || last {
                        return;
                    }
                }
            })
            .map_err(|e| io("spawn reader", e))?;
        Ok(Control {
            writer: std::sync::Mutex::new(BufWriter::with_capacity(64 << 10, write_half)),
            incoming: std::sync::Mutex::new(rx),
            peer,
            stream,
            reader: Some(reader),
        })
    }

    /// Who is at the other end.
    pub fn peer(&self) -> &PeerName {
        &self.peer
    }

    /// Sends one message (CBOR) and flushes it.
    pub fn send<T: Serialize>(&self, msg: &T) -> Result<(), NetError> {
        let mut bytes = Vec::new();
        ciborium::into_writer(msg, &mut bytes).map_err(|e| NetError::Io {
            peer: self.peer.clone(),
            op: "encode",
            reason: e.to_string(),
        })?;
        self.send_bytes(&bytes)
    }

    /// Sends one message of raw bytes (e.g. a file) and flushes it.
    pub fn send_bytes(&self, bytes: &[u8]) -> Result<(), NetError> {
        let mut w = self.writer.lock().unwrap_or_else(|p| p.into_inner());
        frame::write_message(&mut *w, bytes, frame::DEFAULT_MAX_FRAME_BYTES)
            .and_then(|_| w.flush())
            .map_err(|e| NetError::io(&self.peer, "write", &e))
    }

    /// Waits up to `timeout` for the next message, as raw bytes.
    pub fn recv_bytes(&self, timeout: Duration) -> Result<Vec<u8>, NetError> {
        let rx = self.incoming.lock().unwrap_or_else(|p| p.into_inner());
        match rx.recv_timeout(timeout) {
            Ok(item) => item,
            Err(RecvTimeoutError::Timeout) => Err(NetError::RecvTimeout {
                peer: self.peer.clone(),
                timeout,
            }),
            Err(RecvTimeoutError::Disconnected) => Err(NetError::Closed {
                peer: self.peer.clone(),
            }),
        }
    }

    /// Waits up to `timeout` for the next message.
    pub fn recv<T: DeserializeOwned>(&self, timeout: Duration) -> Result<T, NetError> {
        let bytes = self.recv_bytes(timeout)?;
        ciborium::from_reader(bytes.as_slice()).map_err(|e| NetError::Io {
            peer: self.peer.clone(),
            op: "decode",
            reason: e.to_string(),
        })
    }
}

impl Drop for Control {
    fn drop(&mut self) {
        if let Ok(mut w) = self.writer.lock() {
            let _ = w.flush();
        }
        let _ = self.stream.shutdown(Shutdown::Both);
        if let Some(h) = self.reader.take() {
            let _ = h.join();
        }
    }
}

#[cfg(test)]
mod tests;
