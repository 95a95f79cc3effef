//! Star collectives through one aggregator (Photon's topology), broadcast and barrier.
//!
//! **Star reduce.** Each client sends its whole tensor to the aggregator in one message; the
//! aggregator computes, in client order, `acc = Σ_i w_i · R(x_i)` in f32 (`acc` starts at 0;
//! each term is an f32 multiply then an f32 add; `R` the wire round trip, applied to the
//! aggregator's own contribution too when it is a client, so every client counts alike).
//! Weights default to 1 (a plain sum); Photon passes token counts and divides by their sum.
//! Only the aggregator's values change.
//!
//! **Broadcast.** The root encodes once and sends the same bytes to every other member;
//! every member, the root included, ends with `R(root's values)`.
//!
//! **Star all-reduce** = star reduce, then broadcast from the aggregator to the clients and
//! the aggregator: everyone ends with `R(Σ_i w_i · R(x_i))`.
//!
//! **Barrier.** Members send an empty message to the leader (`members[0]`), which answers
//! each once it has heard from all.
//!
//! Bytes: [`crate::bytes::star_reduce_traffic`], [`crate::bytes::broadcast_traffic`],
//! [`crate::bytes::barrier_traffic`]; per client `N·b` up and `N·b` down. Sites outside the
//! collective return at once, untouched; `n = 0` sends nothing.

use super::wire::{self, WireDtype};
use super::{check_group, decode_from, CollectiveError};
use crate::bytes::star_members;
use crate::net::Comm;

fn check_weights(clients: &[usize], weights: Option<&[f32]>) -> Result<(), CollectiveError> {
    if let Some(w) = weights {
        if w.len() != clients.len() {
            return Err(CollectiveError::BadWeights(format!(
                "{} weights for {} clients",
                w.len(),
                clients.len()
            )));
        }
        if let Some((i, v)) = w.iter().enumerate().find(|(_, v)| !v.is_finite()) {
            return Err(CollectiveError::BadWeights(format!(
                "weight {i} is {v}; weights must be finite"
            )));
        }
    }
    Ok(())
}

/// Weighted sum of the clients' `buf` at `aggregator` (see the module doc).
pub fn star_reduce<C: Comm + ?Sized>(
    comm: &mut C,
    aggregator: usize,
    clients: &[usize],
    weights: Option<&[f32]>,
    wire_dtype: WireDtype,
    buf: &mut [f32],
) -> Result<(), CollectiveError> {
    check_group(comm, "star clients", clients)?;
    check_group(comm, "aggregator", &[aggregator])?;
    check_weights(clients, weights)?;
    let me = comm.rank();
    let n = buf.len();
    if me != aggregator {
        if clients.contains(&me) && n > 0 {
            comm.send(aggregator, wire::encode(wire_dtype, buf))?;
        }
        return Ok(());
    }
    if n == 0 {
        return Ok(());
    }
    let mut acc = vec![0.0f32; n];
    let mut incoming = vec![0.0f32; n];
    for (i, &c) in clients.iter().enumerate() {
        let w = weights.map_or(1.0, |w| w[i]);
        if c == me {
            incoming.copy_from_slice(buf);
            wire::round_trip(wire_dtype, &mut incoming);
        } else {
            let msg = comm.recv(c)?;
            decode_from(c, wire_dtype, &msg, &mut incoming, wire::decode_into)?;
        }
        for (a, x) in acc.iter_mut().zip(&incoming) {
            *a += w * *x;
        }
    }
    buf.copy_from_slice(&acc);
    Ok(())
}

/// Sends `root`'s `buf` to every member; all end with `R(root's values)`.
pub fn broadcast<C: Comm + ?Sized>(
    comm: &mut C,
    root: usize,
    members: &[usize],
    wire_dtype: WireDtype,
    buf: &mut [f32],
) -> Result<(), CollectiveError> {
    check_group(comm, "broadcast members", members)?;
    if !members.contains(&root) {
        return Err(CollectiveError::BadGroup {
            what: "broadcast members",
            sites: members.to_vec(),
            reason: format!("root {root} is not a member"),
        });
    }
    let me = comm.rank();
    if !members.contains(&me) || buf.is_empty() {
        return Ok(());
    }
    if me == root {
        let bytes = wire::encode(wire_dtype, buf);
        decode_from(me, wire_dtype, &bytes, buf, wire::decode_into)?;
        for &m in members.iter().filter(|&&m| m != root) {
            comm.send(m, bytes.clone())?;
        }
    } else {
        let msg = comm.recv(root)?;
        decode_from(root, wire_dtype, &msg, buf, wire::decode_into)?;
    }
    Ok(())
}

/// Star reduce to `aggregator`, then broadcast back: every client and the aggregator end
/// with `R(Σ_i w_i · R(x_i))`.
pub fn star_allreduce<C: Comm + ?Sized>(
    comm: &mut C,
    aggregator: usize,
    clients: &[usize],
    weights: Option<&[f32]>,
    wire_dtype: WireDtype,
    buf: &mut [f32],
) -> Result<(), CollectiveError> {
    star_reduce(comm, aggregator, clients, weights, wire_dtype, buf)?;
    broadcast(
        comm,
        aggregator,
        &star_members(aggregator, clients),
        wire_dtype,
        buf,
    )
}

/// Returns once every member has entered the barrier.
pub fn barrier<C: Comm + ?Sized>(comm: &mut C, members: &[usize]) -> Result<(), CollectiveError> {
    check_group(comm, "barrier members", members)?;
    let me = comm.rank();
    let leader = members[0];
    if me == leader {
        for &m in &members[1..] {
            let msg = comm.recv(m)?;
            if !msg.is_empty() {
                return Err(CollectiveError::BadMessage {
                    from: m,
                    got: msg.len() as u64,
                    want: 0,
                    n: 0,
                    wire: WireDtype::F32,
                });
            }
        }
        for &m in &members[1..] {
            comm.send(m, Vec::new())?;
        }
    } else if members.contains(&me) {
        comm.send(leader, Vec::new())?;
        let msg = comm.recv(leader)?;
        if !msg.is_empty() {
            return Err(CollectiveError::BadMessage {
                from: leader,
                got: msg.len() as u64,
                want: 0,
                n: 0,
                wire: WireDtype::F32,
            });
        }
    }
    Ok(())
}
