//! Errors of the `netns` backend. Every message is one line that names what failed.

use std::io;

/// What can go wrong while building, shaping, using or removing a [`super::NetnsLab`].
#[derive(Debug, thiserror::Error)]
pub enum NetnsError {
    /// Root or network namespaces are not available here; the backend cannot run at all.
    /// Tests that need namespaces skip on this error (except under `CI=true`).
    #[error("netns backend unavailable: {0}")]
    Unavailable(String),
    /// The kernel lacks a feature that was asked for (e.g. `netem` for delay).
    #[error("netns backend: unsupported here: {0}")]
    Unsupported(String),
    /// A configuration value outside what is allowed.
    #[error("netns config: {field} = {value}: {allowed}")]
    Config {
        field: &'static str,
        value: String,
        allowed: String,
    },
    /// A site index that does not exist in this lab.
    #[error("netns: site {site} does not exist (lab has {sites} sites, 0..{sites})")]
    NoSuchSite { site: usize, sites: usize },
    /// The kernel refused a netlink request.
    #[error("netlink {op} failed: {source}")]
    Netlink {
        op: String,
        #[source]
        source: io::Error,
    },
    /// A reply from the kernel could not be decoded.
    #[error("netlink {op}: undecodable reply: {detail}")]
    Decode { op: String, detail: String },
    /// A system call or file operation failed.
    #[error("netns {op} failed: {source}")]
    Io {
        op: String,
        #[source]
        source: io::Error,
    },
    /// A bounded traffic measurement did not finish or delivered wrong bytes.
    #[error("netns transfer: {0}")]
    Transfer(String),
}

impl NetnsError {
    /// True when the error means "this machine cannot run the backend" (not root, no
    /// namespaces), as opposed to a failure of the backend itself.
    pub fn is_unavailable(&self) -> bool {
        matches!(self, NetnsError::Unavailable(_))
    }

    pub(crate) fn io(op: impl Into<String>, source: io::Error) -> Self {
        NetnsError::Io {
            op: op.into(),
            source,
        }
    }

    pub(crate) fn nix(op: impl Into<String>, errno: nix::errno::Errno) -> Self {
        NetnsError::Io {
            op: op.into(),
            source: io::Error::from_raw_os_error(errno as i32),
        }
    }
}

pub type Result<T, E = NetnsError> = std::result::Result<T, E>;
