//! Errors of the transport. Every error that involves a peer names it: its site id and,
//! where there is a socket, its address (`site 2 (127.0.0.1:40112)`).

use std::fmt;
use std::time::Duration;

/// Who is at the other end of a link.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct PeerName {
    /// The peer's site id, when known (a stranger has none we trust).
    pub site: Option<usize>,
    /// Where it is: a socket address, or `in-memory` for the sim backend.
    pub addr: String,
}

impl PeerName {
    pub fn site(site: usize, addr: impl Into<String>) -> Self {
        PeerName {
            site: Some(site),
            addr: addr.into(),
        }
    }

    pub fn stranger(addr: impl Into<String>) -> Self {
        PeerName {
            site: None,
            addr: addr.into(),
        }
    }
}

impl fmt::Display for PeerName {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self.site {
            Some(s) => write!(f, "site {s} ({})", self.addr),
            None => write!(f, "unidentified peer ({})", self.addr),
        }
    }
}

/// Failures of links, frames, handshakes and backends.
#[derive(Debug, Clone, thiserror::Error)]
pub enum NetError {
    #[error("{peer}: frame length {len} exceeds the maximum frame size of {max} bytes")]
    FrameTooLong { peer: PeerName, len: u64, max: u64 },
    #[error("{peer}: message of {len} bytes exceeds the maximum message size of {max} bytes")]
    MessageTooLong { peer: PeerName, len: u64, max: u64 },
    #[error("{peer}: a continued frame of {len} bytes; every frame but a message's last carries exactly {max} bytes")]
    ShortContinuedFrame { peer: PeerName, len: u64, max: u64 },
    #[error("{peer}: bad checksum on a {len}-byte frame (received {received:08x}, computed {computed:08x})")]
    BadChecksum {
        peer: PeerName,
        len: u64,
        received: u32,
        computed: u32,
    },
    #[error("{peer}: connection closed mid-{what} after {got} of {want} bytes")]
    Truncated {
        peer: PeerName,
        what: &'static str,
        got: u64,
        want: u64,
    },
    #[error(
        "{peer}: stalled mid-{what}: no data for {timeout:?} ({got} of {want} bytes received)"
    )]
    Stalled {
        peer: PeerName,
        what: &'static str,
        got: u64,
        want: u64,
        timeout: Duration,
    },
    #[error("{peer}: too slow mid-{what}: {got} of {want} bytes after {elapsed:?}, past the frame's deadline (read timeout plus its size at the minimum rate)")]
    TooSlow {
        peer: PeerName,
        what: &'static str,
        got: u64,
        want: u64,
        elapsed: Duration,
    },
    #[error("{peer}: connection closed")]
    Closed { peer: PeerName },
    #[error("{peer}: no message within {timeout:?}")]
    RecvTimeout { peer: PeerName, timeout: Duration },
    #[error("{peer}: handshake failed: {reason}")]
    Handshake { peer: PeerName, reason: String },
    #[error("{peer}: {op} failed: {reason}")]
    Io {
        peer: PeerName,
        op: &'static str,
        reason: String,
    },
    #[error("could not connect to {peer} within {timeout:?}: {reason}")]
    Connect {
        peer: PeerName,
        timeout: Duration,
        reason: String,
    },
    #[error("site {site}: timed out after {timeout:?} waiting for sites {missing:?} to connect{rejected}")]
    AcceptTimeout {
        site: usize,
        timeout: Duration,
        missing: Vec<usize>,
        rejected: String,
    },
    #[error("site {site}: no such peer {peer} (world has {world} sites)")]
    BadPeer {
        site: usize,
        peer: usize,
        world: usize,
    },
    #[error("invalid network config: {0}")]
    Config(String),
    #[error("the `{backend}` backend is not available: {reason}")]
    BackendUnavailable {
        backend: &'static str,
        reason: String,
    },
    /// The backend's own machinery (namespaces, qdiscs) failed.
    #[error("`{backend}` backend: {reason}")]
    Backend {
        backend: &'static str,
        reason: String,
    },
}

impl NetError {
    /// True when the error means "this backend cannot run on this machine" (e.g. `netns`
    /// without root), as opposed to a failure while running.
    pub fn is_backend_unavailable(&self) -> bool {
        matches!(self, NetError::BackendUnavailable { .. })
    }

    pub(crate) fn io(peer: &PeerName, op: &'static str, e: &std::io::Error) -> Self {
        NetError::Io {
            peer: peer.clone(),
            op,
            reason: e.to_string(),
        }
    }
}
