//! The short criterion profile `.ci/run` runs (`scripts/ci-bench`): the hot paths, a few
//! seconds each, compared as ratios against `bench/ci-baseline.csv` (a regression prints a
//! warning, never fails CI).
//!
//! - `moe_layer/fwd_bwd`: one MoE layer, forward + backward, proxy-s shape (4096 tokens,
//!   d 256, E 16, k 2, d_e 256), 2 threads;
//! - `ring_allreduce/sim_m4_4mib`: ring all-reduce of 1 Mi f32 (4 MiB) over 4 sites on
//!   the `sim` backend (the collective and the in-memory transport, no sockets);
//! - `frame/encode_16mib`, `frame/decode_16mib`: one 16 MiB message through the framing
//!   (header, crc32, length checks) to and from memory;
//! - `relay/throughput_8mib`: an 8 MiB message from site 0 to site 1 through the relay on
//!   a 100 Gbit/s zero-delay link (the relay's pump and the TCP endpoints, not the model).
//!
//! `cargo bench -p fomoe-harness --bench ci_profile`

use std::io::Cursor;
use std::time::Duration;

use criterion::{criterion_group, criterion_main, Criterion, Throughput};
use harness::collective::{ring_allreduce, WireDtype};
use harness::model::moe::{AuxScope, ExpertWeights, LayerResidency, RoutingOptions, SkipPolicy};
use harness::model::RouterKind;
use harness::net::frame::{self, FrameLimits};
use harness::net::{build_local, Backend, LinkSpec, NetOptions, PeerName, Topology};

mod common;

fn short<'a>(
    c: &'a mut Criterion,
    name: &str,
) -> criterion::BenchmarkGroup<'a, criterion::measurement::WallTime> {
    let mut g = c.benchmark_group(name);
    g.sample_size(10)
        .warm_up_time(Duration::from_millis(500))
        .measurement_time(Duration::from_secs(2));
    g
}

fn moe_layer(c: &mut Criterion) {
    let (x, router, fc1, fc2) = common::proxy_s_layer();
    let e = common::E;
    let all: Vec<usize> = (0..e).collect();
    let res = LayerResidency::new(e, &all);
    let w = ExpertWeights {
        fc1: fc1.iter().collect(),
        fc2: fc2.iter().collect(),
    };
    let o = RoutingOptions {
        top_k: 2,
        router: RouterKind::SoftmaxTopk,
        skip_policy: None::<SkipPolicy>,
        aux_scope: AuxScope::All,
    };
    let mut g = short(c, "moe_layer");
    g.bench_function("fwd_bwd", |b| {
        b.iter(|| common::fwd_bwd(&x, &router, &w, &res, o))
    });
    g.finish();
}

fn ring_on_sim(c: &mut Criterion) {
    let m = 4;
    let n = 1 << 20;
    let link = LinkSpec::new(10_000_000_000, Duration::from_micros(100), Duration::ZERO)
        .expect("a valid link");
    let links = Topology::uniform(link).resolve(m).expect("a topology");
    let mut net = build_local(Backend::Sim, &links, &NetOptions::default()).expect("sim");
    let group: Vec<usize> = (0..m).collect();
    let mut bufs: Vec<Vec<f32>> = (0..m).map(|s| vec![s as f32; n]).collect();
    let mut g = short(c, "ring_allreduce");
    g.throughput(Throughput::Bytes(4 * n as u64));
    g.bench_function("sim_m4_4mib", |b| {
        b.iter(|| {
            std::thread::scope(|scope| {
                for (comm, buf) in net.comms.iter_mut().zip(bufs.iter_mut()) {
                    let group = &group;
                    scope.spawn(move || {
                        ring_allreduce(comm.as_mut(), group, WireDtype::F32, buf)
                            .expect("all-reduce")
                    });
                }
            })
        })
    });
    g.finish();
}

fn framing(c: &mut Criterion) {
    let payload = vec![0x5Au8; 16 << 20];
    let max_frame = frame::DEFAULT_MAX_FRAME_BYTES;
    let mut wire = Vec::with_capacity(payload.len() + 64);
    frame::write_message(&mut wire, &payload, max_frame).expect("in memory");
    let limits = FrameLimits {
        max_frame_bytes: max_frame,
        max_message_bytes: 1 << 30,
    };
    let peer = PeerName::site(1, "bench");
    let mut g = short(c, "frame");
    g.throughput(Throughput::Bytes(payload.len() as u64));
    g.bench_function("encode_16mib", |b| {
        let mut out = Vec::with_capacity(wire.len());
        b.iter(|| {
            out.clear();
            frame::write_message(&mut out, &payload, max_frame).expect("in memory")
        })
    });
    g.bench_function("decode_16mib", |b| {
        b.iter(|| {
            frame::read_message(
                &mut Cursor::new(&wire),
                limits,
                &peer,
                Duration::from_secs(1),
            )
            .expect("valid frame")
        })
    });
    g.finish();
}

fn relay(c: &mut Criterion) {
    let link =
        LinkSpec::new(100_000_000_000, Duration::ZERO, Duration::ZERO).expect("a valid link");
    let links = Topology::uniform(link).resolve(2).expect("a topology");
    let mut net = build_local(Backend::Relay, &links, &NetOptions::default()).expect("relay");
    let msg = vec![1u8; 8 << 20];
    let mut g = short(c, "relay");
    g.throughput(Throughput::Bytes(msg.len() as u64));
    g.bench_function("throughput_8mib", |b| {
        b.iter(|| {
            net.comms[0].send(1, msg.clone()).expect("send");
            net.comms[1].recv(0).expect("recv")
        })
    });
    g.finish();
}

criterion_group!(benches, moe_layer, ring_on_sim, framing, relay);
criterion_main!(benches);
