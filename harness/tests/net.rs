//! Links, transport and collectives on the `sim` and `relay` backends: exact sums, exact
//! bytes per link, identical bytes across backends, malformed frames, timeouts.

use harness::bytes::{self, Traffic};
use harness::collective::{self, wire, CollectiveError, WireDtype};
use harness::net::frame::{self, Expect, HandshakeParams, Token};
use harness::net::tcp::{self, PeerRoute, SiteNetConfig, TcpComm, Timeouts};
use harness::net::{
    build_local, Backend, Comm, LinkCounters, LinkSpec, NetError, NetOptions, Topology,
};
use harness::rng::splitmix64;
use std::io::Write;
use std::net::{TcpListener, TcpStream};
use std::time::{Duration, Instant};

/// Small integers in [−8, 8]: every partial sum of ≤ 8 of them is exact in f32, bf16 and f16.
fn int_tensor(seed: u64, n: usize) -> Vec<f32> {
    let mut s = seed;
    (0..n)
        .map(|_| (splitmix64(&mut s) % 17) as f32 - 8.0)
        .collect()
}

/// Arbitrary f32 in [−1, 1) with full mantissas.
fn float_tensor(seed: u64, n: usize) -> Vec<f32> {
    let mut s = seed ^ 0xF00D;
    (0..n)
        .map(|_| (splitmix64(&mut s) >> 40) as f32 / (1u64 << 23) as f32 - 1.0)
        .collect()
}

/// The documented result of a ring all-reduce, computed independently of the ring code:
/// chunk c is summed from position c onwards, rounding the partial sum at every hop.
fn reference_ring(inputs: &[Vec<f32>], wire_dtype: WireDtype) -> Vec<f32> {
    let g = inputs.len();
    let n = inputs[0].len();
    if g == 1 || n == 0 {
        return inputs[0].clone();
    }
    let mut out = vec![0.0f32; n];
    for c in 0..g {
        let r = bytes::ring_chunk_range(n, g, c);
        let mut s: Vec<f32> = inputs[c][r.clone()].to_vec();
        for k in 1..g {
            wire::round_trip(wire_dtype, &mut s);
            for (a, b) in s.iter_mut().zip(&inputs[(c + k) % g][r.clone()]) {
                *a += *b;
            }
        }
        wire::round_trip(wire_dtype, &mut s);
        out[r].copy_from_slice(&s);
    }
    out
}

fn opts(run_id: &str) -> NetOptions {
    NetOptions {
        run_id: run_id.into(),
        timeouts: Timeouts {
            connect: Duration::from_secs(10),
            read: Duration::from_secs(5),
            idle: Duration::from_secs(10),
        },
        ..NetOptions::default()
    }
}

fn fast_link() -> LinkSpec {
    LinkSpec::new(10_000_000_000, Duration::from_micros(100), Duration::ZERO).unwrap()
}

/// Runs `f` on every site in its own thread; returns results and the endpoints.
fn on_sites<R: Send>(
    comms: Vec<Box<dyn Comm>>,
    f: impl Fn(&mut dyn Comm) -> R + Sync,
) -> Vec<(R, Box<dyn Comm>)> {
    std::thread::scope(|s| {
        let handles: Vec<_> = comms
            .into_iter()
            .map(|mut c| {
                let f = &f;
                s.spawn(move || (f(c.as_mut()), c))
            })
            .collect();
        handles
            .into_iter()
            .map(|h| h.join().expect("site thread panicked"))
            .collect()
    })
}

/// Checks every site's counters against the expected traffic, exactly.
fn assert_counters(all: &[Vec<LinkCounters>], expected: &Traffic, run_id: &str) {
    let hs = frame::handshake_bytes(run_id);
    for (i, counters) in all.iter().enumerate() {
        for (j, c) in counters.iter().enumerate() {
            assert_eq!(c.peer, j);
            if i == j {
                assert_eq!(
                    *c,
                    LinkCounters {
                        peer: j,
                        ..Default::default()
                    }
                );
                continue;
            }
            let out = expected.get(i, j);
            let inn = expected.get(j, i);
            assert_eq!(c.payload_bytes_sent, out.payload_bytes, "payload {i} → {j}");
            assert_eq!(c.messages_sent, out.messages, "messages {i} → {j}");
            assert_eq!(
                c.payload_bytes_received, inn.payload_bytes,
                "payload {j} → {i} at {i}"
            );
            assert_eq!(
                c.messages_received, inn.messages,
                "messages {j} → {i} at {i}"
            );
            // All messages here fit one frame: 8 framing bytes each, plus the handshake.
            assert_eq!(
                c.framing_bytes_sent,
                hs + 8 * out.messages,
                "framing {i} → {j}"
            );
            assert_eq!(
                c.framing_bytes_received,
                hs + 8 * inn.messages,
                "framing {j} → {i}"
            );
        }
    }
}

const SIZES: &[usize] = &[0, 1, 2, 3, 5, 7, 8, 13, 31, 64, 100, 257, 1000, 4099];

/// All-reduce of every size and dtype over all sites of `backend`; checks exact sums,
/// bit-equality with the documented reference, identical members, and exact bytes.
fn allreduce_exact(backend: Backend, m: usize, dtypes: &[WireDtype]) {
    let run_id = format!("ar-{backend}-{m}");
    let links = Topology::uniform(fast_link()).resolve(m).unwrap();
    let net = build_local(backend, &links, &opts(&run_id)).unwrap();
    allreduce_exact_on(net.comms, dtypes, &run_id, &backend.to_string());
}

/// [`allreduce_exact`] on given endpoints (all sites of one network); returns every site's
/// counters and outputs (bits).
fn allreduce_exact_on(
    comms: Vec<Box<dyn Comm>>,
    dtypes: &[WireDtype],
    run_id: &str,
    backend: &str,
) -> (Vec<Vec<LinkCounters>>, Vec<Vec<Vec<u32>>>) {
    let m = comms.len();
    let group: Vec<usize> = (0..m).collect();
    let results = on_sites(comms, |c| {
        let mut outs = Vec::new();
        for &wire_dtype in dtypes {
            for (k, &n) in SIZES.iter().enumerate() {
                let seed = (k as u64) << 8 | c.rank() as u64;
                let mut ints = int_tensor(seed, n);
                collective::ring_allreduce(c, &group, wire_dtype, &mut ints).unwrap();
                let mut floats = float_tensor(seed, n);
                collective::ring_allreduce(c, &group, wire_dtype, &mut floats).unwrap();
                outs.push((ints, floats));
            }
        }
        outs
    });
    let mut expected = Traffic::default();
    let mut idx = 0;
    for &wire_dtype in dtypes {
        for (k, &n) in SIZES.iter().enumerate() {
            let ints: Vec<Vec<f32>> = (0..m)
                .map(|r| int_tensor((k as u64) << 8 | r as u64, n))
                .collect();
            let floats: Vec<Vec<f32>> = (0..m)
                .map(|r| float_tensor((k as u64) << 8 | r as u64, n))
                .collect();
            let want_ints = reference_ring(&ints, wire_dtype);
            let want_floats = reference_ring(&floats, wire_dtype);
            if wire_dtype != WireDtype::Int8 {
                // The exact sum, independent of any order.
                let exact: Vec<f32> = (0..n)
                    .map(|e| ints.iter().map(|x| x[e] as i64).sum::<i64>() as f32)
                    .collect();
                assert_eq!(want_ints, exact);
            }
            for (r, (outs, _)) in results.iter().enumerate() {
                assert_eq!(
                    outs[idx].0, want_ints,
                    "{backend} M={m} {wire_dtype} n={n} site {r} (ints)"
                );
                let same_bits = outs[idx]
                    .1
                    .iter()
                    .zip(&want_floats)
                    .all(|(a, b)| a.to_bits() == b.to_bits());
                assert!(
                    same_bits && outs[idx].1.len() == n,
                    "{backend} M={m} {wire_dtype} n={n} site {r} (floats)"
                );
            }
            expected.merge(&bytes::ring_allreduce_traffic(n, &group, wire_dtype));
            expected.merge(&bytes::ring_allreduce_traffic(n, &group, wire_dtype));
            idx += 1;
        }
    }
    let counters: Vec<Vec<LinkCounters>> = results.iter().map(|(_, c)| c.link_counters()).collect();
    assert_counters(&counters, &expected, run_id);
    let bits = results
        .iter()
        .map(|(outs, _)| {
            outs.iter()
                .flat_map(|(a, b)| [a, b])
                .map(|x| x.iter().map(|f| f.to_bits()).collect())
                .collect()
        })
        .collect();
    (counters, bits)
}

#[test]
fn sim_allreduce_is_exact_for_all_sizes_dtypes_and_group_sizes() {
    for m in [2, 3, 4, 8] {
        allreduce_exact(Backend::Sim, m, &WireDtype::ALL);
    }
}

#[test]
fn relay_allreduce_is_exact_m2_m3() {
    for m in [2, 3] {
        allreduce_exact(Backend::Relay, m, &WireDtype::ALL);
    }
}

#[test]
fn relay_allreduce_is_exact_m4() {
    allreduce_exact(Backend::Relay, 4, &[WireDtype::F32, WireDtype::Int8]);
}

#[test]
fn relay_allreduce_is_exact_m8() {
    allreduce_exact(Backend::Relay, 8, &[WireDtype::F32, WireDtype::Bf16]);
}

#[test]
fn direct_tcp_allreduce_is_exact() {
    let comms = tcp::local_direct(3, &opts("direct")).unwrap();
    let comms: Vec<Box<dyn Comm>> = comms
        .into_iter()
        .map(|c| Box::new(c) as Box<dyn Comm>)
        .collect();
    let out = on_sites(comms, |c| {
        let mut x = int_tensor(c.rank() as u64, 10);
        collective::ring_allreduce(c, &[0, 1, 2], WireDtype::F32, &mut x).unwrap();
        x
    });
    let want = reference_ring(
        &(0..3).map(|r| int_tensor(r, 10)).collect::<Vec<_>>(),
        WireDtype::F32,
    );
    for (x, _) in &out {
        assert_eq!(*x, want);
    }
}

/// A sequence of collectives touching subsets, stars, broadcast and barrier.
fn mixed_sequence(c: &mut dyn Comm) -> Vec<Vec<f32>> {
    let r = c.rank() as u64;
    let mut outs = Vec::new();
    // Subset ring over holders [3, 1, 4] (ring order as given); 0 and 2 are not members.
    let mut x = int_tensor(100 + r, 11);
    collective::ring_allreduce(c, &[3, 1, 4], WireDtype::F32, &mut x).unwrap();
    outs.push(x);
    let mut x = float_tensor(200 + r, 37);
    collective::ring_allreduce(c, &[2, 0], WireDtype::Int8, &mut x).unwrap();
    outs.push(x);
    // Star through aggregator 4 (not a client), weighted.
    let mut x = int_tensor(300 + r, 9);
    collective::star_allreduce(
        c,
        4,
        &[0, 1, 2, 3],
        Some(&[1.0, 2.0, 3.0, 4.0]),
        WireDtype::F32,
        &mut x,
    )
    .unwrap();
    outs.push(x);
    // Star where the aggregator is a client, bf16.
    let mut x = int_tensor(400 + r, 5);
    collective::star_allreduce(c, 0, &[0, 2, 3], None, WireDtype::Bf16, &mut x).unwrap();
    outs.push(x);
    let mut x = float_tensor(500 + r, 6);
    collective::broadcast(c, 2, &[1, 2, 3], WireDtype::F16, &mut x).unwrap();
    outs.push(x);
    collective::barrier(c, &[4, 3, 2, 1, 0]).unwrap();
    outs
}

fn mixed_traffic() -> Traffic {
    let mut t = Traffic::default();
    t.merge(&bytes::ring_allreduce_traffic(
        11,
        &[3, 1, 4],
        WireDtype::F32,
    ));
    t.merge(&bytes::ring_allreduce_traffic(37, &[2, 0], WireDtype::Int8));
    t.merge(&bytes::star_allreduce_traffic(
        9,
        4,
        &[0, 1, 2, 3],
        WireDtype::F32,
    ));
    t.merge(&bytes::star_allreduce_traffic(
        5,
        0,
        &[0, 2, 3],
        WireDtype::Bf16,
    ));
    t.merge(&bytes::broadcast_traffic(6, 2, &[1, 2, 3], WireDtype::F16));
    t.merge(&bytes::barrier_traffic(&[4, 3, 2, 1, 0]));
    t
}

fn run_mixed(backend: Backend) -> (Vec<Vec<Vec<f32>>>, Vec<Vec<LinkCounters>>) {
    let links = Topology::uniform(fast_link()).resolve(5).unwrap();
    let net = build_local(backend, &links, &opts("mixed")).unwrap();
    let out = on_sites(net.comms, mixed_sequence);
    let counters = out.iter().map(|(_, c)| c.link_counters()).collect();
    (out.into_iter().map(|(x, _)| x).collect(), counters)
}

#[test]
fn subset_star_broadcast_barrier_results_and_bytes_on_sim_and_relay() {
    let (sim_out, sim_counters) = run_mixed(Backend::Sim);
    let (relay_out, relay_counters) = run_mixed(Backend::Relay);
    let expected = mixed_traffic();
    assert_counters(&sim_counters, &expected, "mixed");
    assert_counters(&relay_counters, &expected, "mixed");
    // The same collectives send identical bytes, and compute identical bits, on both.
    assert_eq!(sim_counters, relay_counters);
    let bits = |v: &Vec<Vec<Vec<f32>>>| -> Vec<Vec<Vec<u32>>> {
        v.iter()
            .map(|s| {
                s.iter()
                    .map(|x| x.iter().map(|f| f.to_bits()).collect())
                    .collect()
            })
            .collect()
    };
    assert_eq!(bits(&sim_out), bits(&relay_out));

    let out = &sim_out;
    // Subset ring [3, 1, 4]: members get the sum, non-members 0 and 2 are untouched.
    let inputs: Vec<Vec<f32>> = [3u64, 1, 4]
        .iter()
        .map(|&r| int_tensor(100 + r, 11))
        .collect();
    let sum: Vec<f32> = (0..11).map(|e| inputs.iter().map(|x| x[e]).sum()).collect();
    for r in [1, 3, 4] {
        assert_eq!(out[r][0], sum);
    }
    for r in [0usize, 2] {
        assert_eq!(
            out[r][0],
            int_tensor(100 + r as u64, 11),
            "non-member {r} changed"
        );
    }
    // Nothing was ever sent to, or by, a non-member in that ring: links 0↔{1,3,4} carry only
    // the star/broadcast/barrier traffic; the ring alone never touches them.
    let ring_only = bytes::ring_allreduce_traffic(11, &[3, 1, 4], WireDtype::F32);
    for &(f, t) in ring_only.links.keys() {
        assert!([1, 3, 4].contains(&f) && [1, 3, 4].contains(&t));
    }
    // Weighted star through 4: Σ w_i x_i, exact for small integers.
    let xs: Vec<Vec<f32>> = (0..4u64).map(|r| int_tensor(300 + r, 9)).collect();
    let want: Vec<f32> = (0..9)
        .map(|e| (0..4).map(|i| (i + 1) as f32 * xs[i][e]).sum())
        .collect();
    for (r, site) in out.iter().enumerate() {
        assert_eq!(site[2], want, "star site {r}");
    }
    // Star through client 0: sites 0, 2, 3 get the sum; 1 and 4 untouched.
    let xs: Vec<Vec<f32>> = [0u64, 2, 3]
        .iter()
        .map(|&r| int_tensor(400 + r, 5))
        .collect();
    let want: Vec<f32> = (0..5).map(|e| xs.iter().map(|x| x[e]).sum()).collect();
    for r in [0, 2, 3] {
        assert_eq!(out[r][3], want);
    }
    assert_eq!(out[1][3], int_tensor(401, 5));
    assert_eq!(out[4][3], int_tensor(404, 5));
    // Broadcast from 2 in f16: members hold R(root), site 0 and 4 untouched.
    let mut root = float_tensor(502, 6);
    wire::round_trip(WireDtype::F16, &mut root);
    for r in [1, 2, 3] {
        assert_eq!(out[r][4], root);
    }
    assert_eq!(out[0][4], float_tensor(500, 6));
}

#[test]
fn non_members_are_sent_nothing() {
    // Only a subset ring runs: sites 0 and 2 must see no payload and no message at all.
    let links = Topology::uniform(fast_link()).resolve(5).unwrap();
    for backend in [Backend::Sim, Backend::Relay] {
        let net = build_local(backend, &links, &opts("subset")).unwrap();
        let out = on_sites(net.comms, |c| {
            let mut x = int_tensor(c.rank() as u64, 1001);
            collective::ring_allreduce(c, &[3, 1, 4], WireDtype::Int8, &mut x).unwrap();
            x
        });
        for r in [0usize, 2] {
            assert_eq!(out[r].0, int_tensor(r as u64, 1001));
            for c in out[r].1.link_counters() {
                assert_eq!(
                    (
                        c.payload_bytes_sent,
                        c.messages_sent,
                        c.payload_bytes_received,
                        c.messages_received
                    ),
                    (0, 0, 0, 0)
                );
            }
            for (other, (_, comm)) in out.iter().enumerate() {
                let c = comm.link_counters()[r];
                assert_eq!(
                    (c.payload_bytes_sent, c.messages_sent, c.messages_received),
                    (0, 0, 0),
                    "{backend}: {other} ↔ {r}"
                );
            }
        }
        let counters: Vec<_> = out.iter().map(|(_, c)| c.link_counters()).collect();
        assert_counters(
            &counters,
            &bytes::ring_allreduce_traffic(1001, &[3, 1, 4], WireDtype::Int8),
            "subset",
        );
    }
}

#[test]
fn sim_time_follows_the_link_model_exactly_and_is_deterministic() {
    let link = LinkSpec::new(1_000_000_000, Duration::from_millis(5), Duration::ZERO).unwrap();
    let links = Topology::uniform(link).resolve(4).unwrap();
    let n = 4 * 1000;
    let run = || {
        let net = build_local(Backend::Sim, &links, &opts("t")).unwrap();
        on_sites(net.comms, |c| {
            let mut x = int_tensor(c.rank() as u64, n);
            collective::ring_allreduce(c, &[0, 1, 2, 3], WireDtype::F32, &mut x).unwrap();
            c.now()
        })
        .into_iter()
        .map(|(t, _)| t)
        .collect::<Vec<_>>()
    };
    let times = run();
    // 2(G−1) steps, each: serialise one chunk (1000 f32 + 8 framing bytes) then the delay.
    let step = link.serialisation_time(4000 + 8) + link.delay;
    for t in &times {
        assert_eq!(*t, step * 6);
    }
    assert_eq!(run(), times);
    // Local compute moves the clock, and a late sender delays the receiver.
    let net = build_local(Backend::Sim, &links, &opts("t")).unwrap();
    let out = on_sites(net.comms, |c| {
        if c.rank() == 0 {
            c.advance(Duration::from_secs(1));
        }
        let mut x = vec![1.0f32; 4];
        collective::ring_allreduce(c, &[0, 1], WireDtype::F32, &mut x).unwrap();
        c.now()
    });
    // Site 0 starts 1 s late. Reduce-scatter: its message reaches 1 at 1 s + step. All-gather:
    // 0 sends again at 1 s, but link 0 → 1 is busy until 1 s + ser, so 1 hears at
    // 1 s + 2·ser + delay; 1 answers at 1 s + step, heard by 0 at 1 s + 2·step.
    let ser = link.serialisation_time(8 + 8);
    let step = ser + link.delay;
    assert_eq!(out[0].0, Duration::from_secs(1) + 2 * step);
    assert_eq!(out[1].0, Duration::from_secs(1) + step + ser);
    assert_eq!(out[2].0, Duration::ZERO);
}

#[test]
fn sim_link_is_busy_while_transmitting_and_jitter_keeps_order() {
    let link = LinkSpec::new(
        8_000_000,
        Duration::from_millis(10),
        Duration::from_millis(4),
    )
    .unwrap(); // 1 byte/µs
    let links = Topology::uniform(link).resolve(2).unwrap();
    let net = build_local(Backend::Sim, &links, &opts("busy")).unwrap();
    let out = on_sites(net.comms, |c| {
        let mut arrivals = Vec::new();
        if c.rank() == 0 {
            for _ in 0..50 {
                c.send(1, vec![0u8; 992]).unwrap(); // 1000 wire bytes = 1 ms each
            }
        } else {
            for _ in 0..50 {
                c.recv(0).unwrap();
                arrivals.push(c.now());
            }
        }
        arrivals
    });
    let arrivals = &out[1].0;
    for (k, t) in arrivals.iter().enumerate() {
        let no_jitter = Duration::from_millis(k as u64 + 1) + link.delay;
        assert!(
            *t + link.jitter >= no_jitter && *t <= no_jitter + link.jitter * 2,
            "message {k} at {t:?}"
        );
        if k > 0 {
            assert!(*t >= arrivals[k - 1], "order kept");
        }
    }
    assert!(
        arrivals
            .windows(2)
            .any(|w| w[1] - w[0] != Duration::from_millis(1)),
        "jitter applied"
    );
}

#[test]
fn relay_applies_delay_and_rate_lower_bounds() {
    // Correctness, not speed: the relay must never deliver before the model allows.
    let link = LinkSpec::new(100_000_000, Duration::from_millis(20), Duration::ZERO).unwrap();
    let links = Topology::uniform(link).resolve(2).unwrap();
    let net = build_local(Backend::Relay, &links, &opts("bounds")).unwrap();
    let out = on_sites(net.comms, |c| {
        if c.rank() == 0 {
            let t0 = c.now();
            c.send(1, t0.as_nanos().to_le_bytes().to_vec()).unwrap();
            c.send(1, vec![7u8; 1_000_000]).unwrap();
            c.recv(1).unwrap();
            Duration::ZERO
        } else {
            let probe = c.recv(0).unwrap();
            let sent = Duration::from_nanos(u128::from_le_bytes(probe.try_into().unwrap()) as u64);
            let one_way = c.now() - sent;
            let big = c.recv(0).unwrap();
            assert_eq!(big.len(), 1_000_000);
            // Both on the network's shared clock: scheduling can only make it later.
            let since_probe_sent = c.now() - sent;
            c.send(0, vec![]).unwrap();
            assert!(
                one_way >= Duration::from_millis(20),
                "one-way delay {one_way:?} below 20 ms"
            );
            since_probe_sent
        }
    });
    // The big message cannot arrive before delay + serialisation of both messages:
    // 20 ms + (24 + 1_000_008)·8 bits / 100 Mbit/s = 100.0026 ms (less 1 µs for the relay's
    // per-piece rounding down).
    let floor =
        link.delay + link.serialisation_time(16 + 8 + 1_000_000 + 8) - Duration::from_micros(1);
    assert!(
        out[1].0 >= floor,
        "1 MB arrived {:?} after the probe was sent",
        out[1].0
    );
}

#[test]
fn large_messages_split_into_frames_with_exact_framing() {
    let mut o = opts("frames");
    o.limits.max_frame_bytes = 1000;
    let links = Topology::uniform(fast_link()).resolve(2).unwrap();
    for backend in [Backend::Sim, Backend::Relay] {
        let net = build_local(backend, &links, &o).unwrap();
        let sizes = [0usize, 999, 1000, 1001, 25_000];
        let out = on_sites(net.comms, |c| {
            if c.rank() == 0 {
                for &s in &sizes {
                    c.send(1, vec![s as u8; s]).unwrap();
                }
            } else {
                for &s in &sizes {
                    assert_eq!(c.recv(0).unwrap(), vec![s as u8; s]);
                }
            }
        });
        let c = out[0].1.link_counters()[1];
        let hs = frame::handshake_bytes("frames");
        // Frames: 1 + 1 + 1 + 2 + 25.
        assert_eq!(c.framing_bytes_sent, hs + 8 * 30, "{backend}");
        assert_eq!(c.payload_bytes_sent, 28_000);
        assert_eq!(
            out[1].1.link_counters()[0].framing_bytes_received,
            hs + 8 * 30
        );
    }
}

#[test]
fn site_configs_survive_json_and_connect_like_worker_processes() {
    let links = Topology::uniform(fast_link()).resolve(3).unwrap();
    let relay =
        harness::net::relay::RelayNetwork::start(&links, &opts("json"), &Default::default())
            .unwrap();
    let json: Vec<String> = relay
        .site_configs()
        .iter()
        .map(|c| serde_json::to_string(c).unwrap())
        .collect();
    assert!(json[0].contains("\"dial\""));
    let comms: Vec<Box<dyn Comm>> = std::thread::scope(|s| {
        let hs: Vec<_> = json
            .iter()
            .map(|j| {
                s.spawn(move || {
                    let cfg: SiteNetConfig = serde_json::from_str(j).unwrap();
                    Box::new(TcpComm::connect(&cfg).unwrap()) as Box<dyn Comm>
                })
            })
            .collect();
        hs.into_iter().map(|h| h.join().unwrap()).collect()
    });
    let out = on_sites(comms, |c| {
        let mut x = vec![c.rank() as f32 + 1.0; 5];
        collective::ring_allreduce(c, &[0, 1, 2], WireDtype::F32, &mut x).unwrap();
        x
    });
    for (x, _) in &out {
        assert_eq!(*x, vec![6.0; 5]);
    }
    drop(out);
    let stats = relay.shutdown();
    assert!(stats.bytes_forwarded > 0);
}

/// A `netns` network, or `None` (test skipped, reason printed) where this machine cannot
/// create namespaces, except under `CI=true`.
fn netns_local(links: &harness::net::LinkMatrix, run_id: &str) -> Option<harness::net::LocalNet> {
    match build_local(Backend::Netns, links, &opts(run_id)) {
        Ok(n) => Some(n),
        Err(e) if e.is_backend_unavailable() && std::env::var("CI").as_deref() != Ok("true") => {
            eprintln!("skipped: {e}");
            None
        }
        Err(e) => panic!("netns backend: {e}"),
    }
}

/// All-reduce over namespaces, with the kernel alone (no delay: sites dial each other) and
/// with the relay in the hub namespace (delay): exact sums, exactly the bytes of
/// `bytes::ring_allreduce_traffic` per link, identical counters and bits to `sim`, and no
/// namespace left once the network is dropped.
#[test]
fn netns_allreduce_is_exact_and_sends_the_bytes_of_sim() {
    use harness::net::netns::{list_namespaces, DelaySource, RateSource};
    let dtypes = [WireDtype::F32, WireDtype::Int8];
    let m = 4;
    for (delay, delay_by) in [
        (Duration::ZERO, DelaySource::None),
        (Duration::from_millis(1), DelaySource::Relay),
    ] {
        let link = LinkSpec::new(1_000_000_000, delay, Duration::ZERO).unwrap();
        let links = Topology::uniform(link).resolve(m).unwrap();
        let run_id = "ar-netns";
        let Some(net) = netns_local(&links, run_id) else {
            return;
        };
        let netns = net.netns.as_ref().expect("netns backend keeps its lab");
        assert_eq!(netns.plan().rate_by, RateSource::KernelTbf);
        assert_eq!(netns.plan().delay_by, delay_by);
        assert_eq!(net.relay.is_some(), delay_by == DelaySource::Relay);
        let prefix = netns.lab().prefix().to_string();
        assert_eq!(list_namespaces(&prefix).unwrap().len(), m + 1);
        let (netns_counters, netns_bits) = allreduce_exact_on(net.comms, &dtypes, run_id, "netns");
        drop(net.relay);
        drop(net.netns);
        assert_eq!(list_namespaces(&prefix).unwrap(), Vec::<String>::new());

        let sim = build_local(Backend::Sim, &links, &opts(run_id)).unwrap();
        let (sim_counters, sim_bits) = allreduce_exact_on(sim.comms, &dtypes, run_id, "sim");
        assert_eq!(netns_counters, sim_counters, "delay {delay:?}");
        assert_eq!(netns_bits, sim_bits, "delay {delay:?}");
    }
}

#[test]
fn bad_groups_and_weights_are_errors_not_panics() {
    let links = Topology::uniform(fast_link()).resolve(2).unwrap();
    let net = build_local(Backend::Sim, &links, &opts("bad")).unwrap();
    let mut comms = net.comms;
    let c = comms[0].as_mut();
    let mut x = vec![1.0f32; 3];
    for group in [&[][..], &[0, 0][..], &[0, 5][..]] {
        let e = collective::ring_allreduce(c, group, WireDtype::F32, &mut x).unwrap_err();
        assert!(matches!(e, CollectiveError::BadGroup { .. }), "{e}");
    }
    let e =
        collective::star_reduce(c, 0, &[0, 1], Some(&[1.0]), WireDtype::F32, &mut x).unwrap_err();
    assert!(e.to_string().contains("1 weights for 2 clients"), "{e}");
    let e = collective::star_reduce(
        c,
        0,
        &[0, 1],
        Some(&[1.0, f32::NAN]),
        WireDtype::F32,
        &mut x,
    )
    .unwrap_err();
    assert!(e.to_string().contains("finite"), "{e}");
    let e = collective::broadcast(c, 1, &[0], WireDtype::F32, &mut x).unwrap_err();
    assert!(e.to_string().contains("root 1"), "{e}");
    assert!(matches!(c.send(0, vec![]), Err(NetError::BadPeer { .. })));
    assert!(matches!(c.recv(7), Err(NetError::BadPeer { .. })));
    // A message of the wrong size names its sender.
    comms[1].send(0, vec![1, 2, 3]).unwrap();
    let e =
        collective::broadcast(comms[0].as_mut(), 1, &[0, 1], WireDtype::F32, &mut x).unwrap_err();
    assert_eq!(
        e.to_string(),
        "site 1 sent a 3-byte message for 3 f32 values; expected 12 bytes"
    );
}

// ---------------------------------------------------------------- malformed frames

const SHORT: Timeouts = Timeouts {
    connect: Duration::from_millis(1500),
    read: Duration::from_millis(300),
    idle: Duration::from_millis(1500),
};

/// Site 0 is a real endpoint that accepts site 1; site 1 is a raw socket driven by the test.
/// `token` is what the fake peer believes the token is.
fn fake_peer_setup(
    token: &Token,
) -> (
    std::thread::JoinHandle<Result<TcpComm, NetError>>,
    Result<TcpStream, NetError>,
) {
    let real_token = Token([7u8; 32]);
    let listener = TcpListener::bind("127.0.0.1:0").unwrap();
    let addr = listener.local_addr().unwrap();
    let cfg = SiteNetConfig {
        run_id: "bad".into(),
        site: 0,
        world: 2,
        token: real_token,
        listen: Some(addr),
        peers: vec![PeerRoute::Myself, PeerRoute::Accept],
        timeouts: SHORT,
        max_frame_bytes: 4096,
        max_message_bytes: 1 << 20,
        peer_limits: Default::default(),
    };
    let real =
        std::thread::spawn(move || TcpComm::connect_with(&cfg, Some(listener), Instant::now()));
    let mut s = TcpStream::connect(addr).unwrap();
    s.set_read_timeout(Some(Duration::from_millis(20))).unwrap();
    let params = HandshakeParams {
        run_id: "bad",
        me: 1,
        world: 2,
        token,
        max_frame_bytes: 4096,
    };
    let r = frame::handshake(
        &mut s,
        &params,
        Expect::Dialed(0),
        &addr.to_string(),
        Duration::from_secs(2),
    )
    .map(|_| s);
    (real, r)
}

/// Connects a fake site 1, lets it write `bytes` (then `close` or hold the socket), and
/// returns site 0's `recv` error and how long it took.
fn recv_after(bytes: &[u8], close: bool) -> (NetError, Duration) {
    let (real, fake) = fake_peer_setup(&Token([7u8; 32]));
    let mut fake = fake.unwrap();
    let mut comm = real.join().unwrap().unwrap();
    fake.write_all(bytes).unwrap();
    fake.flush().unwrap();
    let holder = if close {
        drop(fake);
        None
    } else {
        Some(fake)
    };
    let t0 = Instant::now();
    let e = comm.recv(1).unwrap_err();
    let took = t0.elapsed();
    drop(holder);
    (e, took)
}

fn frame_bytes(payload: &[u8]) -> Vec<u8> {
    let mut v = Vec::new();
    frame::write_message(&mut v, payload, 4096).unwrap();
    v
}

fn assert_names_site1(e: &NetError) {
    let msg = e.to_string();
    assert!(msg.starts_with("site 1 (127.0.0.1:"), "{msg}");
    assert!(!msg.contains('\n'));
}

#[test]
fn frame_length_over_maximum_is_refused() {
    let (e, took) = recv_after(&(1u32 << 30).to_le_bytes(), false);
    assert!(
        matches!(e, NetError::FrameTooLong { len, max: 4096, .. } if len == 1 << 30),
        "{e}"
    );
    assert_names_site1(&e);
    assert!(took < SHORT.read, "{took:?}");
}

#[test]
fn bad_checksum_is_refused() {
    let mut f = frame_bytes(b"some payload");
    let last = f.len() - 1;
    f[last] ^= 1;
    let (e, _) = recv_after(&f, false);
    assert!(matches!(e, NetError::BadChecksum { len: 12, .. }), "{e}");
    assert_names_site1(&e);
}

#[test]
fn truncated_stream_is_refused() {
    let f = frame_bytes(&[5u8; 100]);
    let (e, took) = recv_after(&f[..50], true);
    assert!(
        matches!(
            e,
            NetError::Truncated {
                got: 50,
                want: 108,
                ..
            }
        ),
        "{e}"
    );
    assert_names_site1(&e);
    assert!(took < SHORT.read, "{took:?}");
}

#[test]
fn peer_that_stops_mid_frame_times_out() {
    let f = frame_bytes(&[5u8; 100]);
    let (e, took) = recv_after(&f[..30], false);
    assert!(
        matches!(
            e,
            NetError::Stalled {
                got: 30,
                want: 108,
                ..
            }
        ),
        "{e}"
    );
    assert_names_site1(&e);
    assert!(
        took >= SHORT.read.mul_f32(0.9) && took < SHORT.read * 3,
        "{took:?}"
    );
}

#[test]
fn silent_peer_times_out_on_recv() {
    let (e, took) = recv_after(&[], false);
    assert!(matches!(e, NetError::RecvTimeout { .. }), "{e}");
    assert_names_site1(&e);
    assert!(took >= SHORT.idle && took < SHORT.idle * 2, "{took:?}");
}

#[test]
fn wrong_token_is_turned_away() {
    let (real, fake) = fake_peer_setup(&Token([8u8; 32]));
    let fake_err = fake.expect_err("the stranger must not get in");
    assert!(
        fake_err.to_string().contains("handshake failed"),
        "{fake_err}"
    );
    let e = real
        .join()
        .unwrap()
        .err()
        .expect("site 0 must not accept a stranger");
    let msg = e.to_string();
    assert!(
        matches!(e, NetError::AcceptTimeout { ref missing, .. } if missing == &vec![1]),
        "{msg}"
    );
    assert!(
        msg.contains("wrong token") && msg.contains("claiming site 1"),
        "{msg}"
    );
}

#[test]
fn wrong_run_or_site_is_turned_away() {
    let listener = TcpListener::bind("127.0.0.1:0").unwrap();
    let addr = listener.local_addr().unwrap();
    let token = Token([1u8; 32]);
    let cfg = SiteNetConfig {
        run_id: "run-a".into(),
        site: 0,
        world: 2,
        token: token.clone(),
        listen: Some(addr),
        peers: vec![PeerRoute::Myself, PeerRoute::Accept],
        timeouts: Timeouts {
            connect: Duration::from_millis(800),
            ..SHORT
        },
        max_frame_bytes: 4096,
        max_message_bytes: 1 << 20,
        peer_limits: Default::default(),
    };
    let real =
        std::thread::spawn(move || TcpComm::connect_with(&cfg, Some(listener), Instant::now()));
    for (run_id, me) in [("run-b", 1usize), ("run-a", 0)] {
        let mut s = TcpStream::connect(addr).unwrap();
        s.set_read_timeout(Some(Duration::from_millis(20))).unwrap();
        let params = HandshakeParams {
            run_id,
            me,
            world: 2,
            token: &token,
            max_frame_bytes: 4096,
        };
        assert!(frame::handshake(
            &mut s,
            &params,
            Expect::Dialed(0),
            "x",
            Duration::from_secs(2)
        )
        .is_err());
    }
    let msg = real.join().unwrap().err().unwrap().to_string();
    assert!(msg.contains("run id `run-b`, expected `run-a`"), "{msg}");
    assert!(msg.contains("site 0 is not expected"), "{msg}");
}

#[test]
fn dialing_nobody_fails_within_the_connect_timeout() {
    let (fd, addr) = reserved_closed_port();
    let cfg = SiteNetConfig {
        run_id: "r".into(),
        site: 0,
        world: 2,
        token: Token([0; 32]),
        listen: None,
        peers: vec![PeerRoute::Myself, PeerRoute::Dial(addr)],
        timeouts: Timeouts {
            connect: Duration::from_millis(300),
            ..SHORT
        },
        max_frame_bytes: 4096,
        max_message_bytes: 1 << 20,
        peer_limits: Default::default(),
    };
    let t0 = Instant::now();
    let e = TcpComm::connect(&cfg).err().unwrap();
    assert!(matches!(e, NetError::Connect { .. }), "{e}");
    assert!(e.to_string().contains(&addr.to_string()));
    assert!(t0.elapsed() < Duration::from_secs(2));
    let mut bad = cfg.clone();
    bad.peers = vec![PeerRoute::Myself];
    assert!(TcpComm::connect(&bad)
        .err()
        .unwrap()
        .to_string()
        .contains("1 peer routes for a world of 2"));
    // SAFETY: closing the descriptor we opened.
    unsafe { libc::close(fd) };
}

/// A loopback port that is bound but not listening: connections to it are refused, and no
/// other test can bind it meanwhile (a closed-then-reused port could belong to another test).
fn reserved_closed_port() -> (i32, std::net::SocketAddr) {
    // SAFETY: plain socket calls on a socket we own; the sockaddr_in is fully initialised.
    unsafe {
        let fd = libc::socket(libc::AF_INET, libc::SOCK_STREAM, 0);
        assert!(fd >= 0);
        let mut sa: libc::sockaddr_in = std::mem::zeroed();
        sa.sin_family = libc::AF_INET as libc::sa_family_t;
        sa.sin_addr.s_addr = u32::from_ne_bytes([127, 0, 0, 1]);
        let len = std::mem::size_of::<libc::sockaddr_in>() as libc::socklen_t;
        assert_eq!(
            libc::bind(fd, &sa as *const _ as *const libc::sockaddr, len),
            0
        );
        let mut got: libc::sockaddr_in = std::mem::zeroed();
        let mut got_len = len;
        assert_eq!(
            libc::getsockname(fd, &mut got as *mut _ as *mut libc::sockaddr, &mut got_len),
            0
        );
        (
            fd,
            std::net::SocketAddr::from(([127, 0, 0, 1], u16::from_be(got.sin_port))),
        )
    }
}

// ---------------------------------------------------------------- hostile peers (issue 10)

/// Defect 3 of issue 10: a peer that has the run token and sends many valid messages
/// without the site receiving them grew the site's memory without bound (the reader queued
/// into an unbounded channel). With a budget of 4 MiB, a flood of 64 × 1 MiB is held to the
/// budget plus one message; the rest waits in the sender (TCP back-pressure), and once the
/// site receives, every message arrives intact and in order.
#[test]
fn a_flooding_peer_is_held_to_the_queue_budget_and_loses_nothing() {
    let budget: u64 = 4 << 20;
    let msg_len: usize = 1 << 20;
    let mut o = opts("flood");
    o.limits.max_message_bytes = msg_len as u64;
    o.peer_limits.max_queued_bytes = budget;
    let mut comms = tcp::local_direct(2, &o).unwrap();
    let mut site = comms.remove(0);
    let mut flooder = comms.remove(0);
    assert_eq!(site.max_queued_bytes(), budget);
    let n = 64u32;
    let sender = std::thread::spawn(move || {
        for i in 0..n {
            let mut m = vec![(i % 251) as u8; msg_len];
            m[..4].copy_from_slice(&i.to_le_bytes());
            flooder.send(0, m).unwrap();
        }
        flooder
    });
    // Let the flood run into the budget (64 MiB offered).
    std::thread::sleep(Duration::from_millis(1500));
    let peak = site.peak_queued_bytes(1);
    assert!(
        peak <= budget + msg_len as u64,
        "queued {peak} bytes from the flooding peer, budget {budget} + one message"
    );
    assert!(peak >= budget, "the reader filled its budget ({peak})");
    for i in 0..n {
        let m = site.recv(1).unwrap();
        assert_eq!(m.len(), msg_len);
        assert_eq!(u32::from_le_bytes(m[..4].try_into().unwrap()), i, "order");
        assert!(m[4..].iter().all(|&b| b == (i % 251) as u8));
    }
    assert!(site.peak_queued_bytes(1) <= budget + msg_len as u64);
    let flooder = sender.join().unwrap();
    assert_eq!(
        site.link_counters()[1].payload_bytes_received,
        flooder.link_counters()[0].payload_bytes_sent
    );
}

/// A reader that yields one byte per call, sleeping between calls (a peer trickling bytes).
struct Trickle {
    data: Vec<u8>,
    at: usize,
    every: Duration,
}

impl std::io::Read for Trickle {
    fn read(&mut self, buf: &mut [u8]) -> std::io::Result<usize> {
        if self.at == self.data.len() || buf.is_empty() {
            return Ok(0);
        }
        std::thread::sleep(self.every);
        buf[0] = self.data[self.at];
        self.at += 1;
        Ok(1)
    }
}

/// Defect 8 of issue 10: a peer sending 1 byte per step defeated the read timeout (every
/// byte was progress). A started frame now has a deadline: the read timeout plus its size
/// at the minimum rate. Here: a 1000-byte frame at 200 B/s would take 5 s; the deadline is
/// 100 ms + 1004 B at 10 kB/s ≈ 200 ms, and the error names the peer.
#[test]
fn a_trickling_peer_fails_at_the_frame_deadline() {
    let mut wire = Vec::new();
    frame::write_message(&mut wire, &[7u8; 1000], 4096).unwrap();
    let pace = frame::ReadPace {
        stall: Duration::from_millis(100),
        min_rate_bps: 80_000,
    };
    let limits = frame::FrameLimits {
        max_frame_bytes: 4096,
        max_message_bytes: 1 << 20,
    };
    let peer = harness::net::PeerName::site(1, "127.0.0.1:9");
    let mut slow = Trickle {
        data: wire.clone(),
        at: 0,
        every: Duration::from_millis(5),
    };
    let t0 = Instant::now();
    let e = frame::read_message_paced(&mut slow, limits, &peer, pace).unwrap_err();
    let took = t0.elapsed();
    assert!(matches!(e, NetError::TooSlow { .. }), "{e}");
    assert!(
        e.to_string()
            .starts_with("site 1 (127.0.0.1:9): too slow mid-frame"),
        "{e}"
    );
    assert!(took < Duration::from_secs(1), "gave up after {took:?}");
    // The same frame at the link's pace is read whole.
    let mut fast = Trickle {
        data: wire,
        at: 0,
        every: Duration::ZERO,
    };
    let m = frame::read_message_paced(&mut fast, limits, &peer, pace)
        .unwrap()
        .unwrap();
    assert_eq!(m.payload, vec![7u8; 1000]);
}

/// The handshake of a trickling stranger ends within its timeout instead of lasting as long
/// as the stranger keeps sending.
#[test]
fn a_trickling_handshake_ends_within_its_timeout() {
    let listener = TcpListener::bind("127.0.0.1:0").unwrap();
    let addr = listener.local_addr().unwrap();
    let cfg = SiteNetConfig {
        run_id: "slow".into(),
        site: 0,
        world: 2,
        token: Token([7u8; 32]),
        listen: Some(addr),
        peers: vec![PeerRoute::Myself, PeerRoute::Accept],
        timeouts: SHORT,
        max_frame_bytes: 4096,
        max_message_bytes: 1 << 20,
        peer_limits: Default::default(),
    };
    let real =
        std::thread::spawn(move || TcpComm::connect_with(&cfg, Some(listener), Instant::now()));
    let mut s = TcpStream::connect(addr).unwrap();
    // One byte of a hello every 50 ms: its 50 bytes would take 2.5 s; the accepting side
    // allows SHORT.connect (1.5 s) for connecting and handshakes together.
    let t0 = Instant::now();
    // A well-formed hello from site 1 (version 1, to 0, world 2, max frame 4096, run id
    // "slow"), so only its pace is wrong.
    let mut hello = b"FMOE".to_vec();
    for v in [1u16, 0] {
        hello.extend_from_slice(&v.to_le_bytes());
    }
    for v in [1u32, 0, 2, 4096] {
        hello.extend_from_slice(&v.to_le_bytes());
    }
    hello.extend_from_slice(&4u16.to_le_bytes());
    hello.extend_from_slice(b"slow");
    hello.extend_from_slice(&[0u8; 40]);
    for b in hello {
        if s.write_all(&[b]).is_err() || real.is_finished() {
            break;
        }
        std::thread::sleep(Duration::from_millis(50));
    }
    let e = real.join().unwrap().err().unwrap().to_string();
    assert!(
        t0.elapsed() < Duration::from_millis(3000),
        "{:?}: {e}",
        t0.elapsed()
    );
    assert!(e.contains("handshake not complete within"), "{e}");
}

/// Defect 8 of issue 10: a stranger that connected first to a relay port took the site's
/// place, and the run failed blaming the peer site (`site 0 failed: site 1 …`). The relay
/// now takes the first connection that opens with the right site's hello: strangers (foreign
/// bytes, silence, another site's hello) are turned away and named by address, and the run
/// connects.
#[test]
fn strangers_on_relay_ports_are_turned_away_and_named() {
    use harness::net::relay::{RelayNetwork, RelayOptions};
    let links = Topology::uniform(fast_link()).resolve(2).unwrap();
    let mut o = opts("stranger");
    o.timeouts.connect = Duration::from_secs(3);
    let relay = RelayNetwork::start(&links, &o, &RelayOptions::default()).unwrap();
    let configs = relay.site_configs().to_vec();
    let PeerRoute::Dial(port_of_site1) = configs[1].peers[0] else {
        panic!("site 1 dials the relay")
    };
    // Three strangers on site 1's port before site 1 itself: HTTP, a hello claiming to be
    // site 0, and one that says nothing and hangs up.
    let mut garbage = TcpStream::connect(port_of_site1).unwrap();
    garbage
        .write_all(b"GET / HTTP/1.1\r\nHost: x\r\n\r\n")
        .unwrap();
    let mut impostor = TcpStream::connect(port_of_site1).unwrap();
    let mut hello = b"FMOE".to_vec();
    hello.extend_from_slice(&1u16.to_le_bytes());
    hello.extend_from_slice(&0u16.to_le_bytes());
    for v in [0u32, 1, 2, 4096] {
        hello.extend_from_slice(&v.to_le_bytes());
    }
    hello.extend_from_slice(&8u16.to_le_bytes());
    hello.extend_from_slice(b"stranger");
    hello.extend_from_slice(&[0u8; 20]);
    impostor.write_all(&hello).unwrap();
    drop(TcpStream::connect(port_of_site1).unwrap());
    let stranger_addrs = [
        garbage.local_addr().unwrap().to_string(),
        impostor.local_addr().unwrap().to_string(),
    ];
    std::thread::sleep(Duration::from_millis(200));
    let listeners = (0..2).map(|_| None).collect();
    let mut comms = tcp::connect_all(&configs, listeners).unwrap();
    comms[1].send(0, b"hi".to_vec()).unwrap();
    assert_eq!(comms[0].recv(1).unwrap(), b"hi");
    let turned = relay.strangers();
    assert_eq!(turned.len(), 3, "{turned:?}");
    assert!(
        turned.iter().any(|t| t.starts_with(&stranger_addrs[0])
            && t.contains("on the port of site 1 (pair 0-1): not a fomoe peer (bad magic)")),
        "{turned:?}"
    );
    assert!(
        turned.iter().any(|t| t.starts_with(&stranger_addrs[1])
            && t.contains("hello from site 0 to site 1")),
        "{turned:?}"
    );
    assert!(turned.iter().any(|t| t.contains("no hello")), "{turned:?}");
}
