//! Bytes on the wire: the one source of truth for payload byte counts. The collectives
//! size their messages with [`message_payload_bytes`]; the tests compare measured link
//! counters with the exact per-link functions here; the system model uses the closed forms.
//!
//! **Messages.** `n` values in wire dtype with `b` bytes per value: `n·b` bytes, plus a
//! 4-byte f32 scale for int8. Collectives never send a message for zero values (a group of
//! one, an empty tensor, or an empty ring chunk sends nothing).
//!
//! **Ring all-reduce** of `n` values over a group of `G` sites in ring order: chunk `c` of
//! `G` has `⌊n/G⌋ + [c < n mod G]` values. Position `p` sends, over the single link to its
//! successor, every chunk except `(p+1) mod G` in the reduce-scatter and every chunk except
//! `(p+2) mod G` in the all-gather: `2n − c_{p+1} − c_{p+2}` values in
//! `2·#nonempty − [c_{p+1}>0] − [c_{p+2}>0]` messages. When `G` divides `n` that is the
//! METHODS.md closed form `2(G−1)/G · n · b` (int8: plus 4 bytes per message). `G = 1` or
//! `n = 0`: nothing.
//!
//! **Star** (Photon): each client other than the aggregator sends `n` values up
//! (one message); broadcast sends `n` values from the root to each other member.
//! **Barrier**: `2(G−1)` empty messages (0 payload bytes).
//!
//! **Closed forms per site** (METHODS.md, "Bytes on the wire"):
//! DDP per step and DiLoCo per round `2(M−1)/M · N · b`; FoMoE per round
//! `2(M−1)/M · N_dense · b + 2(ρ−1)/M · N_exp · b`; Photon per client per round `N·b` up and
//! `N·b` down, the aggregator `M×` that. Large-M ratio DiLoCo/FoMoE `1/(1 − s(1 − ρ/M))`.

use crate::collective::wire::WireDtype;
use std::collections::BTreeMap;
use std::ops::Range;

/// Payload bytes of one message carrying `n` values: `n·b` (+4 for the int8 scale).
pub fn message_payload_bytes(wire: WireDtype, n: usize) -> u64 {
    n as u64 * wire.bytes_per_value() + wire.bytes_per_message()
}

/// Values in ring chunk `c` of `g` for a tensor of `n`: the first `n mod g` chunks hold one more.
pub fn ring_chunk_len(n: usize, g: usize, c: usize) -> usize {
    n / g + usize::from(c < n % g)
}

/// Index range of ring chunk `c` of `g`.
pub fn ring_chunk_range(n: usize, g: usize, c: usize) -> Range<usize> {
    let start = c * (n / g) + c.min(n % g);
    start..start + ring_chunk_len(n, g, c)
}

/// Payload bytes and messages on one directed link.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct LinkTraffic {
    pub payload_bytes: u64,
    pub messages: u64,
}

/// Expected traffic per directed link `(from, to)`; links not listed carry nothing.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Traffic {
    pub links: BTreeMap<(usize, usize), LinkTraffic>,
}

impl Traffic {
    /// Adds `payload_bytes` in `messages` messages on `from → to`.
    pub fn add(&mut self, from: usize, to: usize, payload_bytes: u64, messages: u64) {
        if messages == 0 {
            return;
        }
        let t = self.links.entry((from, to)).or_default();
        t.payload_bytes += payload_bytes;
        t.messages += messages;
    }

    /// Adds everything in `other`.
    pub fn merge(&mut self, other: &Traffic) {
        for (&(f, t), l) in &other.links {
            self.add(f, t, l.payload_bytes, l.messages);
        }
    }

    /// Traffic on `from → to`.
    pub fn get(&self, from: usize, to: usize) -> LinkTraffic {
        self.links.get(&(from, to)).copied().unwrap_or_default()
    }

    /// Payload bytes sent by `site`, all links.
    pub fn payload_sent_by(&self, site: usize) -> u64 {
        self.links
            .iter()
            .filter(|((f, _), _)| *f == site)
            .map(|(_, l)| l.payload_bytes)
            .sum()
    }
}

/// Ring steps of an all-reduce over `g` sites: `g − 1` reduce-scatter steps, then `g − 1`
/// all-gather steps (`2(g−1)`; none for `g < 2`).
pub fn ring_steps(g: usize) -> usize {
    2 * g.saturating_sub(1)
}

/// The chunk position `p` of a ring of `g` sends at step `k` (`0 ≤ k < 2(g−1)`), as
/// `collective::ring` sends it: reduce-scatter step `k` sends chunk `(p − k) mod g`, all-gather
/// step `k' = k − (g−1)` sends chunk `(p + 1 − k') mod g`. Over all steps that is every chunk
/// but `p+1` once and every chunk but `p+2` once, as in [`ring_allreduce_sent_by_position`].
pub fn ring_step_chunk(g: usize, p: usize, k: usize) -> usize {
    debug_assert!(k < ring_steps(g));
    if k < g - 1 {
        (p + g - k % g) % g
    } else {
        (p + 1 + g - (k - (g - 1)) % g) % g
    }
}

/// Values position `p` sends at ring step `k` of an all-reduce of `n` values over `g`
/// sites (0 = no message at this step).
pub fn ring_step_values(n: usize, g: usize, p: usize, k: usize) -> usize {
    ring_chunk_len(n, g, ring_step_chunk(g, p, k))
}

/// Values and messages position `p` of a ring of `g` sends in an all-reduce of `n` values.
pub fn ring_allreduce_sent_by_position(n: usize, g: usize, p: usize) -> (u64, u64) {
    if g < 2 || n == 0 {
        return (0, 0);
    }
    let c = |k: usize| ring_chunk_len(n, g, k % g) as u64;
    let nonempty = (0..g).filter(|&k| c(k) > 0).count() as u64;
    let values = 2 * n as u64 - c(p + 1) - c(p + 2);
    let messages = 2 * nonempty - u64::from(c(p + 1) > 0) - u64::from(c(p + 2) > 0);
    (values, messages)
}

/// Exact traffic of a ring all-reduce of `n` values over `group` (ring order).
pub fn ring_allreduce_traffic(n: usize, group: &[usize], wire: WireDtype) -> Traffic {
    let g = group.len();
    let mut t = Traffic::default();
    for p in 0..g {
        let (values, messages) = ring_allreduce_sent_by_position(n, g, p);
        t.add(
            group[p],
            group[(p + 1) % g],
            values * wire.bytes_per_value() + messages * wire.bytes_per_message(),
            messages,
        );
    }
    t
}

/// Exact traffic of a star reduce of `n` values: every client but the aggregator sends up.
pub fn star_reduce_traffic(
    n: usize,
    aggregator: usize,
    clients: &[usize],
    wire: WireDtype,
) -> Traffic {
    let mut t = Traffic::default();
    if n > 0 {
        for &c in clients.iter().filter(|&&c| c != aggregator) {
            t.add(c, aggregator, message_payload_bytes(wire, n), 1);
        }
    }
    t
}

/// Exact traffic of a broadcast of `n` values from `root` to the other `members`.
pub fn broadcast_traffic(n: usize, root: usize, members: &[usize], wire: WireDtype) -> Traffic {
    let mut t = Traffic::default();
    if n > 0 {
        for &m in members.iter().filter(|&&m| m != root) {
            t.add(root, m, message_payload_bytes(wire, n), 1);
        }
    }
    t
}

/// Members of a star all-reduce: the clients, plus the aggregator if it is not one.
pub fn star_members(aggregator: usize, clients: &[usize]) -> Vec<usize> {
    let mut m = clients.to_vec();
    if !m.contains(&aggregator) {
        m.push(aggregator);
    }
    m
}

/// Exact traffic of a star all-reduce (reduce to the aggregator, broadcast back).
pub fn star_allreduce_traffic(
    n: usize,
    aggregator: usize,
    clients: &[usize],
    wire: WireDtype,
) -> Traffic {
    let mut t = star_reduce_traffic(n, aggregator, clients, wire);
    t.merge(&broadcast_traffic(
        n,
        aggregator,
        &star_members(aggregator, clients),
        wire,
    ));
    t
}

/// Exact traffic of a barrier over `members` (leader `members[0]`): empty messages.
pub fn barrier_traffic(members: &[usize]) -> Traffic {
    let mut t = Traffic::default();
    if let Some((&leader, rest)) = members.split_first() {
        for &m in rest {
            t.add(m, leader, 0, 1);
            t.add(leader, m, 0, 1);
        }
    }
    t
}

/// Closed form: payload bytes per site of a ring all-reduce, `2(M−1)/M · N · b`.
pub fn ring_allreduce_bytes_closed_form(m: usize, n_values: f64, bytes_per_value: f64) -> f64 {
    if m == 0 {
        return 0.0;
    }
    2.0 * (m as f64 - 1.0) / m as f64 * n_values * bytes_per_value
}

/// DDP payload bytes per site per step: `2(M−1)/M · N · b`.
pub fn ddp_bytes_per_step(m: usize, n_params: f64, b: f64) -> f64 {
    ring_allreduce_bytes_closed_form(m, n_params, b)
}

/// DiLoCo payload bytes per site per round: `2(M−1)/M · N · b`.
pub fn diloco_bytes_per_round(m: usize, n_params: f64, b: f64) -> f64 {
    ring_allreduce_bytes_closed_form(m, n_params, b)
}

/// FoMoE payload bytes per site per round: `2(M−1)/M · N_dense · b + 2(ρ−1)/M · N_exp · b`.
pub fn fomoe_bytes_per_round(m: usize, rho: usize, n_dense: f64, n_exp: f64, b: f64) -> f64 {
    if m == 0 {
        return 0.0;
    }
    ring_allreduce_bytes_closed_form(m, n_dense, b)
        + 2.0 * (rho as f64 - 1.0) / m as f64 * n_exp * b
}

/// Photon payload bytes per client per round: `(N·b up, N·b down)`.
pub fn photon_client_bytes_per_round(n_params: f64, b: f64) -> (f64, f64) {
    (n_params * b, n_params * b)
}

/// Photon payload bytes at the aggregator per round: `(M·N·b received, M·N·b sent)`.
pub fn photon_aggregator_bytes_per_round(m: usize, n_params: f64, b: f64) -> (f64, f64) {
    (m as f64 * n_params * b, m as f64 * n_params * b)
}

/// Large-M limit of DiLoCo/FoMoE bytes per round: `1 / (1 − s·(1 − ρ/M))`, `s = N_exp/N`.
pub fn diloco_over_fomoe_large_m(s: f64, rho_over_m: f64) -> f64 {
    1.0 / (1.0 - s * (1.0 - rho_over_m))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn chunks_cover_the_tensor_in_order() {
        for n in [0usize, 1, 2, 7, 8, 13, 100] {
            for g in 1..=9 {
                let mut next = 0;
                for c in 0..g {
                    let r = ring_chunk_range(n, g, c);
                    assert_eq!(r.start, next);
                    assert_eq!(r.len(), ring_chunk_len(n, g, c));
                    next = r.end;
                }
                assert_eq!(next, n);
            }
        }
        assert_eq!(
            (0..3).map(|c| ring_chunk_len(7, 3, c)).collect::<Vec<_>>(),
            vec![3, 2, 2]
        );
    }

    #[test]
    fn exact_ring_bytes_equal_the_closed_form_when_divisible() {
        for g in [2usize, 3, 4, 8] {
            for n in [g, 4 * g, 1000 * g] {
                let group: Vec<usize> = (0..g).collect();
                for wire in [WireDtype::F32, WireDtype::Bf16, WireDtype::F16] {
                    let t = ring_allreduce_traffic(n, &group, wire);
                    let closed = ring_allreduce_bytes_closed_form(
                        g,
                        n as f64,
                        wire.bytes_per_value() as f64,
                    );
                    for p in 0..g {
                        assert_eq!(t.payload_sent_by(p) as f64, closed, "g {g} n {n} {wire}");
                        assert_eq!(t.get(p, (p + 1) % g).messages, 2 * (g as u64 - 1));
                    }
                }
                let t = ring_allreduce_traffic(n, &group, WireDtype::Int8);
                let closed = ring_allreduce_bytes_closed_form(g, n as f64, 1.0);
                assert_eq!(
                    t.payload_sent_by(0) as f64,
                    closed + 4.0 * 2.0 * (g as f64 - 1.0)
                );
            }
        }
    }

    #[test]
    fn ring_bytes_with_uneven_and_empty_chunks() {
        // n = 7 over 3: chunks 3, 2, 2. Position 0 sends 2·7 − c1 − c2 = 10 values.
        assert_eq!(ring_allreduce_sent_by_position(7, 3, 0), (10, 4));
        assert_eq!(ring_allreduce_sent_by_position(7, 3, 1), (9, 4)); // 14 − c2 − c0
        assert_eq!(ring_allreduce_sent_by_position(7, 3, 2), (9, 4)); // 14 − c0 − c1
                                                                      // n = 2 over 4: chunks 1, 1, 0, 0.
        assert_eq!(ring_allreduce_sent_by_position(2, 4, 0), (3, 3)); // 4 − c1 − c2
        assert_eq!(ring_allreduce_sent_by_position(2, 4, 1), (4, 4)); // 4 − c2 − c3, chunks 0 and 1 twice
        assert_eq!(ring_allreduce_sent_by_position(2, 4, 3), (2, 2)); // 4 − c0 − c1 = 2, two messages of 1
        assert_eq!(ring_allreduce_sent_by_position(0, 4, 0), (0, 0));
        assert_eq!(ring_allreduce_sent_by_position(5, 1, 0), (0, 0));
        // Group of 2: each side sends everything once.
        assert_eq!(ring_allreduce_sent_by_position(5, 2, 0), (5, 2));
    }

    #[test]
    fn ring_steps_add_up_to_the_per_position_totals() {
        for n in [0usize, 1, 2, 5, 7, 13, 64, 1001] {
            for g in 2..=9 {
                for p in 0..g {
                    let per_step: Vec<usize> = (0..ring_steps(g))
                        .map(|k| ring_step_values(n, g, p, k))
                        .collect();
                    let (values, messages) = ring_allreduce_sent_by_position(n, g, p);
                    assert_eq!(
                        per_step.iter().sum::<usize>() as u64,
                        values,
                        "n {n} g {g} p {p}"
                    );
                    assert_eq!(
                        per_step.iter().filter(|&&v| v > 0).count() as u64,
                        messages,
                        "n {n} g {g} p {p}"
                    );
                }
            }
        }
        // g = 3, position 0: reduce-scatter sends chunks 0, 2; all-gather 1, 0.
        assert_eq!(
            (0..4).map(|k| ring_step_chunk(3, 0, k)).collect::<Vec<_>>(),
            vec![0, 2, 1, 0]
        );
        assert_eq!(ring_steps(1), 0);
        assert_eq!(ring_steps(4), 6);
    }

    #[test]
    fn star_and_broadcast_bytes() {
        let t = star_allreduce_traffic(10, 3, &[0, 1, 2], WireDtype::F32);
        for c in 0..3 {
            assert_eq!(
                t.get(c, 3),
                LinkTraffic {
                    payload_bytes: 40,
                    messages: 1
                }
            );
            assert_eq!(
                t.get(3, c),
                LinkTraffic {
                    payload_bytes: 40,
                    messages: 1
                }
            );
        }
        let (up, down) = photon_client_bytes_per_round(10.0, 4.0);
        assert_eq!(
            (
                t.get(0, 3).payload_bytes as f64,
                t.get(3, 0).payload_bytes as f64
            ),
            (up, down)
        );
        assert_eq!(
            t.payload_sent_by(3) as f64,
            photon_aggregator_bytes_per_round(3, 10.0, 4.0).1
        );
        // Aggregator that is also a client sends nothing to itself.
        let t = star_allreduce_traffic(10, 0, &[0, 1], WireDtype::Int8);
        assert_eq!(t.links.len(), 2);
        assert_eq!(t.get(1, 0).payload_bytes, 14);
        assert_eq!(
            barrier_traffic(&[2, 0, 1]).get(0, 2),
            LinkTraffic {
                payload_bytes: 0,
                messages: 1
            }
        );
    }

    #[test]
    fn methods_ratios() {
        // s = 0.592, ρ/M = 1/2: DiLoCo/FoMoE → 1.421; against DDP at H = 32 → 45.45
        // (the FoMoE abstract's 45.44 is 32 × 1.42).
        let r = diloco_over_fomoe_large_m(0.592, 0.5);
        assert!((r - 1.4205).abs() < 1e-4, "{r}");
        assert!((32.0 * r - 45.4545).abs() < 1e-3);
        // The large-M limit is what the per-round forms approach.
        let (n, s) = (1.0e9, 0.592);
        let m = 1_000_000;
        let ratio = diloco_bytes_per_round(m, n, 2.0)
            / fomoe_bytes_per_round(m, m / 2, (1.0 - s) * n, s * n, 2.0);
        assert!((ratio - r).abs() < 1e-5, "{ratio}");
        // ρ = M: FoMoE bytes equal DiLoCo bytes exactly.
        assert_eq!(
            fomoe_bytes_per_round(8, 8, 300.0, 700.0, 4.0),
            diloco_bytes_per_round(8, 1000.0, 4.0)
        );
        // ρ = 1: experts never travel.
        assert_eq!(
            fomoe_bytes_per_round(8, 1, 300.0, 700.0, 4.0),
            diloco_bytes_per_round(8, 300.0, 4.0)
        );
        assert_eq!(ddp_bytes_per_step(4, 100.0, 4.0), 600.0);
    }
}
