//! Ring all-reduce (sum) over an ordered group of sites: reduce-scatter, then all-gather.
//!
//! The group `g_0, …, g_{G−1}` is a ring (`g_p` sends only to `g_{p+1 mod G}`); the tensor
//! of `n` values is cut into `G` chunks, chunk `c` holding `⌊n/G⌋ + [c < n mod G]` values.
//! - Reduce-scatter, step `s = 0..G−2`: position `p` sends chunk `(p − s) mod G` and adds
//!   the chunk `(p − s − 1) mod G` it receives into its own values. After it, position `p`
//!   holds the full sum of chunk `(p + 1) mod G`.
//! - All-gather, step `s = 0..G−2`: `p` sends chunk `(p + 1 − s) mod G` (its own reduced chunk
//!   first, then the message it just received, forwarded byte for byte) and overwrites chunk
//!   `(p − s) mod G` with what it receives.
//!
//! **What it computes, exactly.** With round trip `R = D∘Q` of the wire dtype
//! ([`wire`](super::wire)) and `x_q` the values of position `q`, chunk `c` is summed along
//! the ring starting at position `c`: `s_0 = x_c`, `s_k = D(Q(s_{k−1})) + x_{c+k}` (f32
//! addition, positions mod G), `k = 1..G−1`, and every member ends with `R(s_{G−1})`
//! (the owner applies `R` to its own copy too), so all members are bit-identical.
//! - f32: `R` is exact, so the result is the f32 sum in that order
//!   (`((x_c + x_{c+1}) + x_{c+2}) + …`); exact whenever partial sums are representable.
//! - bf16/f16: each of the `G−1` hops rounds the running partial sum, then the result once.
//! - int8: the same, with a fresh per-message scale `max|s|/127` at every hop.
//!
//! Degenerate cases: a site outside the group returns at once, untouched, and is sent
//! nothing; `G = 1` or `n = 0` leaves the values unchanged and sends nothing; chunks with no
//! values (`n < G`) are not sent. Bytes per link: [`crate::bytes::ring_allreduce_traffic`];
//! per site `2(G−1)/G · n · b` when `G` divides `n`.

use super::wire::{self, WireDtype};
use super::{check_group, decode_from, CollectiveError};
use crate::bytes::ring_chunk_range;
use crate::net::Comm;

/// Sums `buf` over the sites of `group` (ring order); see the module doc.
pub fn ring_allreduce<C: Comm + ?Sized>(
    comm: &mut C,
    group: &[usize],
    wire_dtype: WireDtype,
    buf: &mut [f32],
) -> Result<(), CollectiveError> {
    check_group(comm, "ring group", group)?;
    let Some(p) = group.iter().position(|&r| r == comm.rank()) else {
        return Ok(());
    };
    let g = group.len();
    let n = buf.len();
    if g == 1 || n == 0 {
        return Ok(());
    }
    let next = group[(p + 1) % g];
    let prev = group[(p + g - 1) % g];
    let range = |c: usize| ring_chunk_range(n, g, c % g);

    for s in 0..g - 1 {
        let send = range(p + g - s);
        if !send.is_empty() {
            comm.send(next, wire::encode(wire_dtype, &buf[send]))?;
        }
        let recv = range(p + 2 * g - s - 1);
        if !recv.is_empty() {
            let msg = comm.recv(prev)?;
            decode_from(prev, wire_dtype, &msg, &mut buf[recv], wire::decode_add)?;
        }
    }

    // All-gather: our reduced chunk first (R applied to our own copy), then forward.
    let mut forward: Option<Vec<u8>> = None;
    for s in 0..g - 1 {
        let send = range(p + 1 + g - s);
        if !send.is_empty() {
            let msg = match (s, forward.take()) {
                (0, _) | (_, None) => {
                    let bytes = wire::encode(wire_dtype, &buf[send.clone()]);
                    decode_from(
                        comm.rank(),
                        wire_dtype,
                        &bytes,
                        &mut buf[send],
                        wire::decode_into,
                    )?;
                    bytes
                }
                (_, Some(bytes)) => bytes,
            };
            comm.send(next, msg)?;
        }
        let recv = range(p + g - s);
        if !recv.is_empty() {
            let msg = comm.recv(prev)?;
            decode_from(prev, wire_dtype, &msg, &mut buf[recv], wire::decode_into)?;
            forward = Some(msg);
        } else {
            forward = None;
        }
    }
    Ok(())
}
