//! The endpoint the training code talks through: one per site, blocking, point to point.
//!
//! Contract, identical for every backend:
//! - `send(to, payload)` hands the message to the link and returns without waiting for the
//!   peer to read it (real backends queue it for a writer thread; sim stamps its arrival), so
//!   a ring step can send and then receive without deadlock;
//! - `recv(from)` blocks until the next message from `from` (messages on a link arrive in
//!   the order they were sent) or fails with an error that names the peer;
//! - counters are per peer and exact: payload bytes are what callers passed to `send` /
//!   got from `recv`; framing bytes are the handshake plus 8 bytes per frame (see
//!   [`frame`](super::frame)); sent bytes are counted when `send` accepts the message;
//! - `recv_until(from, t)` is `recv` with a deadline on the run clock: the next message from
//!   `from` if it has arrived by `t`, else `None` with the message (if any) left queued for
//!   a later receive; on `sim` a `None` moves the receiver's clock to `t` (it waited);
//! - `now()` is the time that the run's clocks agree on: the virtual clock on `sim`, wall
//!   time since the network's epoch on real backends; `advance(dt)` adds local compute time
//!   to the virtual clock (a no-op on real backends, where compute takes real time).
//!
//! A `Comm` does not care whether its peers are threads, processes or hosts.

use super::error::NetError;
use serde::{Deserialize, Serialize};
use std::time::Duration;

/// Exact byte and message counts of one directed pair of links (this site ↔ `peer`).
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct LinkCounters {
    pub peer: usize,
    pub payload_bytes_sent: u64,
    pub framing_bytes_sent: u64,
    pub messages_sent: u64,
    pub payload_bytes_received: u64,
    pub framing_bytes_received: u64,
    pub messages_received: u64,
}

impl LinkCounters {
    /// Payload + framing bytes sent.
    pub fn wire_bytes_sent(&self) -> u64 {
        self.payload_bytes_sent + self.framing_bytes_sent
    }

    /// Payload + framing bytes received.
    pub fn wire_bytes_received(&self) -> u64 {
        self.payload_bytes_received + self.framing_bytes_received
    }
}

/// Whose clock `now()` reads.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ClockKind {
    /// Simulated time: only `advance` and message arrivals move it.
    Virtual,
    /// Wall-clock time since the network's epoch.
    Wall,
}

/// A site's endpoint (see the module doc for the contract).
pub trait Comm: Send {
    /// This site's id, `0..world`.
    fn rank(&self) -> usize;
    /// Number of sites.
    fn world(&self) -> usize;
    /// Queues `payload` for site `to`; does not wait for the peer to read.
    fn send(&mut self, to: usize, payload: Vec<u8>) -> Result<(), NetError>;
    /// Next message from site `from`, blocking.
    fn recv(&mut self, from: usize) -> Result<Vec<u8>, NetError>;
    /// Next message from site `from` if it arrives by `until` on the run clock, else `None`
    /// (the message stays queued); see the module doc.
    fn recv_until(&mut self, from: usize, until: Duration) -> Result<Option<Vec<u8>>, NetError>;
    /// `recv` for traffic outside the run's time (evaluation): on `sim` the clock does not
    /// move to the message's arrival; real backends, where waiting takes real time, `recv`.
    fn recv_untimed(&mut self, from: usize) -> Result<Vec<u8>, NetError> {
        self.recv(from)
    }
    /// Counters per peer, indexed by site id (this site's own entry is all zero).
    fn link_counters(&self) -> Vec<LinkCounters>;
    /// The run's clock: virtual on `sim`, wall time since the epoch on real backends.
    fn now(&self) -> Duration;
    /// Accounts `dt` of local compute on the virtual clock; no-op on real backends.
    fn advance(&mut self, dt: Duration);
    /// Which clock `now()` reads.
    fn clock_kind(&self) -> ClockKind;
}

impl<C: Comm + ?Sized> Comm for Box<C> {
    fn rank(&self) -> usize {
        (**self).rank()
    }
    fn world(&self) -> usize {
        (**self).world()
    }
    fn send(&mut self, to: usize, payload: Vec<u8>) -> Result<(), NetError> {
        (**self).send(to, payload)
    }
    fn recv(&mut self, from: usize) -> Result<Vec<u8>, NetError> {
        (**self).recv(from)
    }
    fn recv_until(&mut self, from: usize, until: Duration) -> Result<Option<Vec<u8>>, NetError> {
        (**self).recv_until(from, until)
    }
    fn recv_untimed(&mut self, from: usize) -> Result<Vec<u8>, NetError> {
        (**self).recv_untimed(from)
    }
    fn link_counters(&self) -> Vec<LinkCounters> {
        (**self).link_counters()
    }
    fn now(&self) -> Duration {
        (**self).now()
    }
    fn advance(&mut self, dt: Duration) {
        (**self).advance(dt)
    }
    fn clock_kind(&self) -> ClockKind {
        (**self).clock_kind()
    }
}

/// Checks that `peer` is another site of a world of `world`.
pub(crate) fn check_peer(me: usize, peer: usize, world: usize) -> Result<(), NetError> {
    if peer >= world || peer == me {
        return Err(NetError::BadPeer {
            site: me,
            peer,
            world,
        });
    }
    Ok(())
}
