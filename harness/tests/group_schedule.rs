//! FoMoE's holder groups synchronised in one lockstep schedule
//! (`collective::ring_allreduce_groups`) against the same groups one after another
//! (`ring_allreduce` per group): identical sums bit for bit, identical bytes on every link,
//! on `sim` and `relay`; and on `sim` with a long delay the lockstep round pays the latency of
//! the longest ring only.

use std::time::Duration;

use harness::bytes::{ring_allreduce_traffic, Traffic};
use harness::collective::{ring_allreduce, ring_allreduce_groups, RingJob, WireDtype};
use harness::net::{build_local, Backend, Comm, LinkCounters, LinkSpec, NetOptions, Topology};
use harness::strategy::fomoe::ExpertPlacement;

/// The holder groups of round-robin FoMoE with `e` experts, as member lists in canonical
/// order (sorted), with the number of values each group synchronises: the dense group (all
/// sites, `dense` values) and one group per distinct holder set (`per_expert` values per
/// expert it holds).
fn fomoe_groups(
    m: usize,
    e: usize,
    rho: usize,
    dense: usize,
    per_expert: usize,
) -> Vec<(Vec<usize>, usize)> {
    let p = ExpertPlacement::round_robin(e, m, rho).unwrap();
    let mut groups: std::collections::BTreeMap<Vec<usize>, usize> = Default::default();
    *groups.entry((0..m).collect()).or_default() += dense;
    for h in &p.holders {
        *groups.entry(h.clone()).or_default() += per_expert;
    }
    groups.into_iter().collect()
}

/// Values of site `s` for group `g`: arbitrary full-mantissa floats, different per site.
fn values(s: usize, g: usize, n: usize) -> Vec<f32> {
    let mut state = (s as u64 + 1) * 0x9E37_79B9 + g as u64 * 7919;
    (0..n)
        .map(|_| {
            state = state
                .wrapping_mul(6364136223846793005)
                .wrapping_add(1442695040888963407);
            (state >> 40) as f32 / (1u64 << 23) as f32 - 1.0
        })
        .collect()
}

struct Outcome {
    sums: Vec<Vec<Vec<f32>>>,
    counters: Vec<Vec<LinkCounters>>,
    clock: Vec<Duration>,
}

fn run(
    backend: Backend,
    m: usize,
    groups: &[(Vec<usize>, usize)],
    link: LinkSpec,
    lockstep: bool,
) -> Outcome {
    let links = Topology::uniform(link).resolve(m).unwrap();
    let net = build_local(backend, &links, &NetOptions::default()).unwrap();
    let results: Vec<(Vec<Vec<f32>>, Vec<LinkCounters>, Duration)> = std::thread::scope(|sc| {
        let handles: Vec<_> = net
            .comms
            .into_iter()
            .map(|mut c| {
                sc.spawn(move || {
                    let me = c.rank();
                    let mine: Vec<usize> = (0..groups.len())
                        .filter(|&g| groups[g].0.contains(&me))
                        .collect();
                    let mut bufs: Vec<Vec<f32>> =
                        mine.iter().map(|&g| values(me, g, groups[g].1)).collect();
                    if lockstep {
                        let mut jobs: Vec<RingJob<'_>> = mine
                            .iter()
                            .zip(bufs.iter_mut())
                            .map(|(&g, buf)| RingJob {
                                group: &groups[g].0,
                                buf,
                            })
                            .collect();
                        ring_allreduce_groups(c.as_mut(), &mut jobs, WireDtype::F32).unwrap();
                    } else {
                        for (&g, buf) in mine.iter().zip(bufs.iter_mut()) {
                            ring_allreduce(c.as_mut(), &groups[g].0, WireDtype::F32, buf).unwrap();
                        }
                    }
                    (bufs, c.link_counters(), c.now())
                })
            })
            .collect();
        handles.into_iter().map(|h| h.join().unwrap()).collect()
    });
    drop(net.relay);
    Outcome {
        sums: results.iter().map(|r| r.0.clone()).collect(),
        counters: results.iter().map(|r| r.1.clone()).collect(),
        clock: results.iter().map(|r| r.2).collect(),
    }
}

fn expected_traffic(groups: &[(Vec<usize>, usize)]) -> Traffic {
    let mut t = Traffic::default();
    for (members, n) in groups {
        t.merge(&ring_allreduce_traffic(*n, members, WireDtype::F32));
    }
    t
}

#[test]
fn lockstep_groups_equal_sequential_groups_bit_for_bit_with_the_same_bytes() {
    let link = LinkSpec::new(10_000_000_000, Duration::from_micros(50), Duration::ZERO).unwrap();
    for (m, e, rho) in [(4, 8, 2), (8, 8, 2), (4, 8, 1), (4, 8, 3), (8, 16, 4)] {
        // Sizes not divisible by the group sizes, and one group smaller than its ring.
        let groups = fomoe_groups(m, e, rho, 1001, 37);
        for backend in [Backend::Sim, Backend::Relay] {
            let a = run(backend, m, &groups, link, false);
            let b = run(backend, m, &groups, link, true);
            for s in 0..m {
                let bits = |o: &Outcome| -> Vec<Vec<u32>> {
                    o.sums[s]
                        .iter()
                        .map(|v| v.iter().map(|x| x.to_bits()).collect())
                        .collect()
                };
                assert_eq!(
                    bits(&a),
                    bits(&b),
                    "M={m} E={e} rho={rho} {backend:?}: site {s} sums differ"
                );
                let strip = |c: &[LinkCounters]| -> Vec<(u64, u64, u64, u64)> {
                    c.iter()
                        .map(|l| {
                            (
                                l.payload_bytes_sent,
                                l.messages_sent,
                                l.payload_bytes_received,
                                l.messages_received,
                            )
                        })
                        .collect()
                };
                assert_eq!(
                    strip(&a.counters[s]),
                    strip(&b.counters[s]),
                    "M={m} {backend:?}: site {s} bytes differ"
                );
            }
            // And both are the documented per-link traffic of the groups.
            let t = expected_traffic(&groups);
            for (i, counters) in b.counters.iter().enumerate() {
                for (j, c) in counters.iter().enumerate() {
                    if i != j {
                        assert_eq!(c.payload_bytes_sent, t.get(i, j).payload_bytes, "{i} → {j}");
                        assert_eq!(c.messages_sent, t.get(i, j).messages, "{i} → {j}");
                    }
                }
            }
        }
    }
}

/// With a long one-way delay the lockstep schedule costs 2(M−1) ring steps (the dense
/// group's), each at least one delay, while one-after-another pays every group's ring in
/// turn along the chain of groups that share sites.
#[test]
fn lockstep_pays_the_latency_of_the_longest_ring_only() {
    let delay = Duration::from_millis(200);
    let link = LinkSpec::new(1_000_000_000, delay, Duration::ZERO).unwrap();
    for m in [4usize, 8] {
        let groups = fomoe_groups(m, 8, 2, 4000, 500);
        let seq = run(Backend::Sim, m, &groups, link, false);
        let lock = run(Backend::Sim, m, &groups, link, true);
        let end = |o: &Outcome| o.clock.iter().max().copied().unwrap();
        let steps = 2 * (m as u32 - 1);
        // Lower bound of any schedule: the dense ring's steps, one delay each.
        assert!(end(&lock) >= delay * steps, "M={m}: {:?}", end(&lock));
        // Lockstep: the dense ring's steps plus at most one serialisation time per step.
        assert!(
            end(&lock) < delay * steps + Duration::from_millis(5),
            "M={m}: lockstep took {:?}",
            end(&lock)
        );
        assert!(
            end(&seq) >= end(&lock) + delay * 2,
            "M={m}: sequential {:?} vs lockstep {:?}",
            end(&seq),
            end(&lock)
        );
    }
}
