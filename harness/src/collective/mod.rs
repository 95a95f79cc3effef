//! Collectives over any group of sites, on any [`Comm`](crate::net::Comm): ring all-reduce
//! ([`ring`]), star reduce / broadcast / all-reduce and barrier ([`star`]), with wire dtypes
//! ([`wire`]). They operate on `&mut [f32]` and always accumulate in f32.
//!
//! Rules shared by all of them:
//! - every member calls the same collectives in the same order with the same arguments
//!   (group, root, size, dtype); a site that is not a member returns at once, untouched, and
//!   no message is addressed to it;
//! - after an all-reduce or broadcast every member holds bit-identical values;
//! - zero values or a group of one send nothing; exact bytes are [`crate::bytes`].

pub mod ring;
pub mod star;
pub mod wire;

pub use ring::{ring_allreduce, ring_allreduce_groups, RingJob};
pub use star::{barrier, broadcast, star_allreduce, star_reduce};
pub use wire::WireDtype;

use crate::net::{Comm, NetError};

/// Failure of a collective.
#[derive(Debug, Clone, thiserror::Error)]
pub enum CollectiveError {
    #[error(transparent)]
    Net(#[from] NetError),
    #[error("invalid {what} {sites:?}: {reason}")]
    BadGroup {
        what: &'static str,
        sites: Vec<usize>,
        reason: String,
    },
    #[error("site {from} sent a {got}-byte message for {n} {wire} values; expected {want} bytes")]
    BadMessage {
        from: usize,
        got: u64,
        want: u64,
        n: usize,
        wire: WireDtype,
    },
    #[error("invalid weights: {0}")]
    BadWeights(String),
}

/// Checks that `sites` are distinct sites of `comm`'s world and non-empty.
pub(crate) fn check_group<C: Comm + ?Sized>(
    comm: &C,
    what: &'static str,
    sites: &[usize],
) -> Result<(), CollectiveError> {
    let bad = |reason: String| CollectiveError::BadGroup {
        what,
        sites: sites.to_vec(),
        reason,
    };
    if sites.is_empty() {
        return Err(bad("must not be empty".into()));
    }
    for (i, &s) in sites.iter().enumerate() {
        if s >= comm.world() {
            return Err(bad(format!(
                "site {s} is not below the world size {}",
                comm.world()
            )));
        }
        if sites[..i].contains(&s) {
            return Err(bad(format!("site {s} appears twice")));
        }
    }
    Ok(())
}

/// Decodes a message from `from` with `f`, turning a length mismatch into an error naming it.
pub(crate) fn decode_from(
    from: usize,
    wire_dtype: WireDtype,
    bytes: &[u8],
    out: &mut [f32],
    f: impl FnOnce(WireDtype, &[u8], &mut [f32]) -> Result<(), wire::LengthMismatch>,
) -> Result<(), CollectiveError> {
    let n = out.len();
    f(wire_dtype, bytes, out).map_err(|m| CollectiveError::BadMessage {
        from,
        got: m.got,
        want: m.want,
        n,
        wire: wire_dtype,
    })
}
