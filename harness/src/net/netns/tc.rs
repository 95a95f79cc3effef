//! Raw traffic-control options for `tbf` and `netem`, which `netlink-packet-route` does not
//! model. Layouts follow the kernel's UAPI (`include/uapi/linux/pkt_sched.h`), native endian.
//!
//! `tbf` (token bucket filter) lets a packet of `len` L2 bytes leave when the bucket holds
//! `len` tokens; tokens arrive at `rate_bytes_per_s` and the bucket holds at most
//! `burst_bytes`. Over any interval `t` the bytes sent are therefore bounded by
//! `burst_bytes + rate_bytes_per_s * t`, and a backlogged queue drains at exactly the rate.
//! Packets wait in a byte FIFO of `limit_bytes` (beyond it they are dropped, which is how TCP
//! learns the rate). Degenerate cases: a burst smaller than one frame (`mtu + 14`) would stall
//! every full-size frame, so it is rejected; rates at or above 2^32 bytes/s need the 64-bit
//! rate attribute, which is sent whenever the rate does not fit 32 bits.

use netlink_packet_core::DefaultNla;
use netlink_packet_route::tc::{TcAttribute, TcOption};

/// `TCA_OPTIONS`: the attribute that carries a qdisc's own options.
const TCA_OPTIONS: u16 = 2;
/// `TCA_TBF_*` attribute numbers.
const TCA_TBF_PARMS: u16 = 1;
const TCA_TBF_RATE64: u16 = 4;
const TCA_TBF_BURST: u16 = 6;
/// `TC_LINKLAYER_ETHERNET`: with a link layer set, the kernel needs no legacy rate table.
const TC_LINKLAYER_ETHERNET: u8 = 1;
/// The kernel's packet-scheduler clock: one tick is `2^PSCHED_SHIFT` ns.
const PSCHED_SHIFT: u32 = 6;

/// A `tbf` configuration in the kernel's units.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) struct Tbf {
    pub rate_bytes_per_s: u64,
    pub burst_bytes: u32,
    pub limit_bytes: u32,
}

/// `struct tc_ratespec` (12 bytes).
fn ratespec(rate_bytes_per_s: u64) -> [u8; 12] {
    let mut b = [0u8; 12];
    b[0] = 0; // cell_log: unused without a rate table
    b[1] = TC_LINKLAYER_ETHERNET;
    // overhead u16 = 0, cell_align i16 = 0, mpu u16 = 0
    let rate32 = u32::try_from(rate_bytes_per_s).unwrap_or(u32::MAX);
    b[8..12].copy_from_slice(&rate32.to_ne_bytes());
    b
}

/// Time to send `bytes` at `rate_bytes_per_s`, in scheduler ticks (saturating to u32).
fn ticks(bytes: u32, rate_bytes_per_s: u64) -> u32 {
    let ns = (bytes as u128 * 1_000_000_000u128) / rate_bytes_per_s.max(1) as u128;
    u32::try_from(ns >> PSCHED_SHIFT).unwrap_or(u32::MAX)
}

/// `struct tc_tbf_qopt` (36 bytes): rate, peak rate (unused: zero), limit, buffer, mtu.
pub(crate) fn tbf_parms(t: &Tbf) -> Vec<u8> {
    let mut b = Vec::with_capacity(36);
    b.extend_from_slice(&ratespec(t.rate_bytes_per_s));
    b.extend_from_slice(&[0u8; 12]); // no peak rate
    b.extend_from_slice(&t.limit_bytes.to_ne_bytes());
    b.extend_from_slice(&ticks(t.burst_bytes, t.rate_bytes_per_s).to_ne_bytes());
    b.extend_from_slice(&0u32.to_ne_bytes()); // mtu: only used with a peak rate
    b
}

/// The `TCA_OPTIONS` attribute of a `tbf` qdisc.
pub(crate) fn tbf_options(t: &Tbf) -> TcAttribute {
    let mut opts = vec![TcOption::Other(DefaultNla::new(
        TCA_TBF_PARMS,
        tbf_parms(t),
    ))];
    if t.rate_bytes_per_s > u32::MAX as u64 {
        opts.push(TcOption::Other(DefaultNla::new(
            TCA_TBF_RATE64,
            t.rate_bytes_per_s.to_ne_bytes().to_vec(),
        )));
    }
    opts.push(TcOption::Other(DefaultNla::new(
        TCA_TBF_BURST,
        t.burst_bytes.to_ne_bytes().to_vec(),
    )));
    TcAttribute::Options(opts)
}

/// The `TCA_OPTIONS` of a `netem` qdisc that adds nothing (no delay, no loss): netem takes a
/// bare `struct tc_netem_qopt` (latency, limit, loss, gap, duplicate, jitter; 24 bytes) rather
/// than nested attributes. Used only to probe whether the kernel has netem.
pub(crate) fn netem_noop_options() -> TcAttribute {
    let limit_packets: u32 = 1000;
    let mut b = Vec::with_capacity(24);
    for v in [0u32, limit_packets, 0, 0, 0, 0] {
        b.extend_from_slice(&v.to_ne_bytes());
    }
    TcAttribute::Other(DefaultNla::new(TCA_OPTIONS, b))
}

#[cfg(test)]
mod tests {
    use super::*;
    use netlink_packet_core::Emitable;

    #[test]
    fn tbf_parms_layout_is_the_kernel_struct() {
        // 50 Mbit/s = 6_250_000 B/s, burst 36_056 B -> 5_768_960 ns -> 90_140 ticks.
        let t = Tbf {
            rate_bytes_per_s: 6_250_000,
            burst_bytes: 36_056,
            limit_bytes: 348_556,
        };
        let b = tbf_parms(&t);
        assert_eq!(b.len(), 36);
        assert_eq!(b[1], TC_LINKLAYER_ETHERNET);
        assert_eq!(u32::from_ne_bytes(b[8..12].try_into().unwrap()), 6_250_000);
        assert!(b[12..24].iter().all(|&x| x == 0), "peak rate must be zero");
        assert_eq!(u32::from_ne_bytes(b[24..28].try_into().unwrap()), 348_556);
        assert_eq!(u32::from_ne_bytes(b[28..32].try_into().unwrap()), 90_140);
        assert_eq!(u32::from_ne_bytes(b[32..36].try_into().unwrap()), 0);
    }

    #[test]
    fn tbf_rate64_only_when_rate_exceeds_32_bits() {
        let small = Tbf {
            rate_bytes_per_s: 125_000_000,
            burst_bytes: 500_000,
            limit_bytes: 1 << 20,
        };
        let TcAttribute::Options(o) = tbf_options(&small) else {
            panic!("tbf options must be nested TCA_OPTIONS")
        };
        assert_eq!(o.len(), 2);
        // PARMS (4 + 36) + BURST (4 + 4)
        assert_eq!(TcAttribute::Options(o).buffer_len(), 4 + 40 + 8);

        let big = Tbf {
            rate_bytes_per_s: 5_000_000_000,
            ..small
        };
        let TcAttribute::Options(o) = tbf_options(&big) else {
            panic!("tbf options must be nested TCA_OPTIONS")
        };
        assert_eq!(o.len(), 3);
        let parms = tbf_parms(&big);
        assert_eq!(
            u32::from_ne_bytes(parms[8..12].try_into().unwrap()),
            u32::MAX
        );
    }

    #[test]
    fn netem_probe_options_are_a_bare_24_byte_struct() {
        let a = netem_noop_options();
        assert_eq!(a.buffer_len(), 4 + 24);
    }
}
