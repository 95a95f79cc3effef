//! The `sim` backend: virtual time, no sockets, deterministic.
//!
//! Sites are threads of one process joined by in-memory channels. Each site has a virtual
//! clock `t` (starting at 0) that only [`Comm::advance`] (local compute) and arrivals move.
//! A message of `p` payload bytes sent on link i → j at the sender's clock `t`:
//! - occupies the link for `w·8/R`, `w = p + framing(p)` the same wire bytes the relay
//!   carries: `start = max(t, link busy until)`, `finish = start + ⌈w·8·10⁹/R⌉ ns` (on a
//!   link whose rate changes over time, the rate piece by piece: [`super::schedule`]);
//! - arrives at `max(finish + delay + u, previous arrival on i → j)` (the delay in effect at
//!   `finish`), `u` uniform in
//!   `[−jitter, jitter]` from a generator seeded by (seed, i, j);
//! - `recv` sets the receiver's clock to `max(own clock, arrival)`; `recv_until(from, t)`
//!   takes the next message only if its arrival ≤ t, else keeps it for the next receive
//!   and sets the clock to `max(own clock, t)` (the receiver waited until its deadline);
//!   `recv_untimed` (evaluation traffic) leaves the clock where it is.
//!
//! Sending does not advance the sender's clock (the real backends queue too). Results
//! depend only on each site's sequence of operations, never on thread scheduling, because
//! every `recv` names its sender. Counters are the relay's exactly: the same handshake bytes
//! (counted at creation) and the same payload and framing per message.

use super::comm::{check_peer, ClockKind, Comm, LinkCounters};
use super::error::{NetError, PeerName};
use super::frame;
use super::link::LinkMatrix;
use super::relay::{jitter_ns, mix};
use super::schedule::{LinkSchedule, NetSchedule};
use super::tcp::NetOptions;
use std::sync::mpsc::{self, Receiver, RecvTimeoutError, Sender};
use std::time::Duration;

struct SimMsg {
    payload: Vec<u8>,
    framing: u64,
    arrival: Duration,
}

struct OutLink {
    tx: Sender<SimMsg>,
    link: LinkSchedule,
    busy_until: Duration,
    last_arrival: Duration,
    rng: u64,
}

/// A site's endpoint on the virtual network.
pub struct SimComm {
    rank: usize,
    world: usize,
    clock: Duration,
    out: Vec<Option<OutLink>>,
    inbox: Vec<Option<Receiver<SimMsg>>>,
    /// A message taken from an inbox that had not arrived by a `recv_until` deadline.
    held: Vec<Option<SimMsg>>,
    counters: Vec<LinkCounters>,
    max_frame_bytes: u32,
    max_message_bytes: u64,
    idle_timeout: Duration,
}

/// `links.world()` connected endpoints, in site order.
pub fn sim_comms(links: &LinkMatrix, net: &NetOptions) -> Result<Vec<SimComm>, NetError> {
    sim_comms_scheduled(&NetSchedule::fixed(links), net)
}

/// Endpoints whose links change over time as `links` says (see [`super::schedule`]).
pub fn sim_comms_scheduled(
    links: &NetSchedule,
    net: &NetOptions,
) -> Result<Vec<SimComm>, NetError> {
    net.limits.validate()?;
    if net.run_id.len() > frame::MAX_RUN_ID_BYTES {
        return Err(NetError::Config(format!(
            "run id longer than {} bytes",
            frame::MAX_RUN_ID_BYTES
        )));
    }
    let world = links.world();
    let hs = frame::handshake_bytes(&net.run_id);
    let mut comms: Vec<SimComm> = (0..world)
        .map(|i| SimComm {
            rank: i,
            world,
            clock: Duration::ZERO,
            out: (0..world).map(|_| None).collect(),
            inbox: (0..world).map(|_| None).collect(),
            held: (0..world).map(|_| None).collect(),
            counters: (0..world)
                .map(|j| LinkCounters {
                    peer: j,
                    framing_bytes_sent: if i == j { 0 } else { hs },
                    framing_bytes_received: if i == j { 0 } else { hs },
                    ..Default::default()
                })
                .collect(),
            max_frame_bytes: net.limits.max_frame_bytes,
            max_message_bytes: net.limits.max_message_bytes,
            idle_timeout: net.timeouts.idle,
        })
        .collect();
    for i in 0..world {
        for j in 0..world {
            if i == j {
                continue;
            }
            let link = links
                .get(i, j)
                .cloned()
                .ok_or_else(|| NetError::Config(format!("no link for pair {i} → {j}")))?;
            let (tx, rx) = mpsc::channel();
            comms[i].out[j] = Some(OutLink {
                tx,
                link,
                busy_until: Duration::ZERO,
                last_arrival: Duration::ZERO,
                rng: mix(net.seed, i as u64, j as u64),
            });
            comms[j].inbox[i] = Some(rx);
        }
    }
    Ok(comms)
}

impl SimComm {
    /// The held message from `from`, else the next one from its channel (blocking).
    fn next_message(&mut self, from: usize) -> Result<SimMsg, NetError> {
        check_peer(self.rank, from, self.world)?;
        if let Some(m) = self.held[from].take() {
            return Ok(m);
        }
        let rx = self.inbox[from].as_ref().ok_or(NetError::BadPeer {
            site: self.rank,
            peer: from,
            world: self.world,
        })?;
        match rx.recv_timeout(self.idle_timeout) {
            Ok(m) => Ok(m),
            Err(RecvTimeoutError::Timeout) => Err(NetError::RecvTimeout {
                peer: peer_name(from),
                timeout: self.idle_timeout,
            }),
            Err(RecvTimeoutError::Disconnected) => Err(NetError::Closed {
                peer: peer_name(from),
            }),
        }
    }

    /// Receive `msg`: the clock moves to its arrival, the counters count it.
    fn accept(&mut self, from: usize, msg: SimMsg) -> Vec<u8> {
        self.clock = self.clock.max(msg.arrival);
        let c = &mut self.counters[from];
        c.payload_bytes_received += msg.payload.len() as u64;
        c.framing_bytes_received += msg.framing;
        c.messages_received += 1;
        msg.payload
    }
}

fn peer_name(site: usize) -> PeerName {
    PeerName::site(site, "sim")
}

impl Comm for SimComm {
    fn rank(&self) -> usize {
        self.rank
    }

    fn world(&self) -> usize {
        self.world
    }

    fn send(&mut self, to: usize, payload: Vec<u8>) -> Result<(), NetError> {
        check_peer(self.rank, to, self.world)?;
        let len = payload.len() as u64;
        if len > self.max_message_bytes {
            return Err(NetError::MessageTooLong {
                peer: peer_name(to),
                len,
                max: self.max_message_bytes,
            });
        }
        let framing = frame::message_framing_bytes(len, self.max_frame_bytes);
        let clock = self.clock;
        let out = self.out[to].as_mut().ok_or(NetError::BadPeer {
            site: self.rank,
            peer: to,
            world: self.world,
        })?;
        let start = clock.max(out.busy_until);
        let finish = out.link.finish(start, len + framing);
        out.busy_until = finish;
        let spec = out.link.spec_at(finish);
        let base = (finish + spec.delay).as_nanos() as i128 + jitter_ns(&mut out.rng, spec.jitter);
        let arrival = Duration::from_nanos(base.max(0) as u64).max(out.last_arrival);
        out.last_arrival = arrival;
        out.tx
            .send(SimMsg {
                payload,
                framing,
                arrival,
            })
            .map_err(|_| NetError::Closed {
                peer: peer_name(to),
            })?;
        let c = &mut self.counters[to];
        c.payload_bytes_sent += len;
        c.framing_bytes_sent += framing;
        c.messages_sent += 1;
        Ok(())
    }

    fn recv(&mut self, from: usize) -> Result<Vec<u8>, NetError> {
        let msg = self.next_message(from)?;
        Ok(self.accept(from, msg))
    }

    fn recv_untimed(&mut self, from: usize) -> Result<Vec<u8>, NetError> {
        let msg = self.next_message(from)?;
        let clock = self.clock;
        let payload = self.accept(from, msg);
        self.clock = clock;
        Ok(payload)
    }

    fn recv_until(&mut self, from: usize, until: Duration) -> Result<Option<Vec<u8>>, NetError> {
        let msg = self.next_message(from)?;
        if msg.arrival > until {
            self.held[from] = Some(msg);
            self.clock = self.clock.max(until);
            return Ok(None);
        }
        Ok(Some(self.accept(from, msg)))
    }

    fn link_counters(&self) -> Vec<LinkCounters> {
        self.counters.clone()
    }

    fn now(&self) -> Duration {
        self.clock
    }

    fn advance(&mut self, dt: Duration) {
        self.clock += dt;
    }

    fn clock_kind(&self) -> ClockKind {
        ClockKind::Virtual
    }
}
