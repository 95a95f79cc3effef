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
//! **Several groups at once** ([`ring_allreduce_groups`], FoMoE's holder groups). Every
//! group runs the same ring algorithm on its own buffer, in lockstep: at ring step `t`
//! (`t = 0..2(G_max − 1)`, reduce-scatter steps first) a site first issues the step-`t`
//! send of every group it belongs to that still has a step `t` (groups in the order given,
//! which every member must share), then takes the step-`t` receive of each such group in
//! the same order. Per group the messages, their bytes and the arithmetic are exactly those
//! of [`ring_allreduce`] on that group alone, so results are bit-identical to running the
//! groups one after another; the latency paid is that of the longest ring, not the sum.
//! Deadlock freedom: sends never wait for the peer (the [`Comm`] contract), so a site's
//! step-`t` sends depend only on its own step-`(t−1)` receives, each of which its ring
//! predecessor satisfies with a step-`(t−1)` send; by induction on `t` every send is issued
//! and every receive completes. Two groups that use the same directed link a → b at step `t`
//! are sent by a and received by b in the same (given) order, and step `t` precedes `t+1` on
//! both sides, so each link's FIFO order is the order its receiver consumes.
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
    ring_allreduce_groups(comm, &mut [RingJob { group, buf }], wire_dtype)
}

/// One group's all-reduce in a [`ring_allreduce_groups`] call.
pub struct RingJob<'a> {
    /// The ring, in order.
    pub group: &'a [usize],
    /// Summed in place over the group.
    pub buf: &'a mut [f32],
}

/// Sums each job's buffer over its group, all groups in one lockstep schedule (module doc).
/// Every member of a group must pass its jobs in the same order (e.g. sorted by member list).
pub fn ring_allreduce_groups<C: Comm + ?Sized>(
    comm: &mut C,
    jobs: &mut [RingJob<'_>],
    wire_dtype: WireDtype,
) -> Result<(), CollectiveError> {
    let mut rings = Vec::with_capacity(jobs.len());
    for job in jobs.iter_mut() {
        check_group(comm, "ring group", job.group)?;
        if let Some(r) = Ring::new(comm.rank(), job.group, &mut *job.buf) {
            rings.push(r);
        }
    }
    let steps = rings.iter().map(Ring::steps).max().unwrap_or(0);
    for t in 0..steps {
        for r in rings.iter_mut().filter(|r| t < r.steps()) {
            r.send(comm, t, wire_dtype)?;
        }
        for r in rings.iter_mut().filter(|r| t < r.steps()) {
            r.recv(comm, t, wire_dtype)?;
        }
    }
    Ok(())
}

/// This site's part of one group's ring all-reduce, one step at a time.
struct Ring<'a> {
    /// Position in the ring, group size, successor, predecessor.
    p: usize,
    g: usize,
    next: usize,
    prev: usize,
    buf: &'a mut [f32],
    /// The message received at the previous all-gather step (forwarded byte for byte).
    forward: Option<Vec<u8>>,
}

impl<'a> Ring<'a> {
    /// `None` when this site is not a member or there is nothing to do (G = 1 or n = 0).
    fn new(me: usize, group: &[usize], buf: &'a mut [f32]) -> Option<Self> {
        let p = group.iter().position(|&r| r == me)?;
        let g = group.len();
        if g == 1 || buf.is_empty() {
            return None;
        }
        Some(Self {
            p,
            g,
            next: group[(p + 1) % g],
            prev: group[(p + g - 1) % g],
            buf,
            forward: None,
        })
    }

    /// 2(G − 1): reduce-scatter steps, then all-gather steps.
    fn steps(&self) -> usize {
        2 * (self.g - 1)
    }

    fn range(&self, c: usize) -> std::ops::Range<usize> {
        ring_chunk_range(self.buf.len(), self.g, c % self.g)
    }

    /// The chunk sent at step `t` and the chunk received at step `t`.
    fn chunks(&self, t: usize) -> (std::ops::Range<usize>, std::ops::Range<usize>) {
        let (p, g) = (self.p, self.g);
        if t < g - 1 {
            let s = t;
            (self.range(p + g - s), self.range(p + 2 * g - s - 1))
        } else {
            let s = t - (g - 1);
            (self.range(p + 1 + g - s), self.range(p + g - s))
        }
    }

    fn send<C: Comm + ?Sized>(
        &mut self,
        comm: &mut C,
        t: usize,
        wire_dtype: WireDtype,
    ) -> Result<(), CollectiveError> {
        let (send, _) = self.chunks(t);
        let gather_step = t.checked_sub(self.g - 1);
        let forwarded = self.forward.take();
        if send.is_empty() {
            return Ok(());
        }
        let msg = match (gather_step, forwarded) {
            // Reduce-scatter: our partial sum of the chunk.
            (None, _) => wire::encode(wire_dtype, &self.buf[send]),
            // All-gather, first step (or after an empty chunk): our reduced chunk, with the
            // wire round trip applied to our own copy so that every member ends alike.
            (Some(0), _) | (Some(_), None) => {
                let bytes = wire::encode(wire_dtype, &self.buf[send.clone()]);
                decode_from(
                    comm.rank(),
                    wire_dtype,
                    &bytes,
                    &mut self.buf[send],
                    wire::decode_into,
                )?;
                bytes
            }
            (Some(_), Some(bytes)) => bytes,
        };
        comm.send(self.next, msg)?;
        Ok(())
    }

    fn recv<C: Comm + ?Sized>(
        &mut self,
        comm: &mut C,
        t: usize,
        wire_dtype: WireDtype,
    ) -> Result<(), CollectiveError> {
        let (_, recv) = self.chunks(t);
        let gathering = t >= self.g - 1;
        if recv.is_empty() {
            self.forward = None;
            return Ok(());
        }
        let msg = comm.recv(self.prev)?;
        if gathering {
            decode_from(
                self.prev,
                wire_dtype,
                &msg,
                &mut self.buf[recv],
                wire::decode_into,
            )?;
            self.forward = Some(msg);
        } else {
            decode_from(
                self.prev,
                wire_dtype,
                &msg,
                &mut self.buf[recv],
                wire::decode_add,
            )?;
        }
        Ok(())
    }
}
