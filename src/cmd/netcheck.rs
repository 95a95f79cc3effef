//! `fomoe netcheck`: measures what an emulated link really delivers, on the chosen backend.
//!
//! 1. **One link** (2 sites): one-way delay of small probes sent every `--probe-interval`
//!    (p50/p99 from an HdrHistogram; the probe's own serialisation time is included and
//!    reported), then a bulk stream of `--seconds` worth of bytes at the configured rate:
//!    achieved rate = wire bytes (payload + framing) of messages k0+1..K · 8 / (t_K − t_k0),
//!    `t_k` the arrival of message k, k0 = K/10: the steady-state rate, without the delay
//!    and start-up. The bulk stream starts once every probe has arrived.
//! 2. **Ring all-reduce** of `--size` bytes of f32 over `--sites` sites (all links alike),
//!    timed from a common start to the last site's finish, against the bound
//!    `2(M−1)/M · S·8/R + 2(M−1) · delay`; the result and the payload bytes per link are
//!    checked exactly (bytes.rs).
//!
//! On `sim` the clocks are virtual, so the figures show the model itself; on `relay` they
//! are wall-clock, and the relay's CPU seconds per GB forwarded (getrusage per relay thread)
//! are reported too. On `netns` (root) every site is a network namespace; the report says
//! which component supplied the rate (kernel `tbf` per site, set to the rate ÷ the TCP
//! payload fraction so the TCP stream carries the configured rate) and which the delay (the
//! relay in the hub namespace, rate unlimited there; no netem), see
//! `harness::net::netns::network`. Without root or namespaces it fails in one line.

use anyhow::{bail, Context, Result};
use harness::bytes;
use harness::collective::{self, WireDtype};
use harness::net::{build_local, frame, Backend, ClockKind, Comm, LinkSpec, NetOptions, Topology};
use harness::units::{format_bytes, format_rate, parse_bytes, parse_duration, parse_rate_bps};
use serde::Serialize;
use std::sync::{Condvar, Mutex};
use std::time::Duration;

#[derive(clap::Args, Debug)]
pub struct Args {
    /// Link rate, e.g. 10mbit, 100mbit, 1gbit, 2.5gbit.
    #[arg(long, value_parser = parse_rate_bps, required_unless_present = "link", allow_hyphen_values = true)]
    rate: Option<u64>,
    /// One-way delay, e.g. 25ms, 500us.
    #[arg(long, value_parser = parse_duration, required_unless_present = "link", allow_hyphen_values = true)]
    delay: Option<Duration>,
    /// Jitter: each delay is uniform in [delay − jitter, delay + jitter], order kept.
    #[arg(long, value_parser = parse_duration, allow_hyphen_values = true)]
    jitter: Option<Duration>,
    /// A named scenario instead of (or as the base for) --rate/--delay/--jitter:
    /// same-region, cross-region, cross-continent, consumer, internet, lan.
    #[arg(long)]
    link: Option<String>,
    /// relay (default, no root), sim (virtual time) or netns (root).
    #[arg(long, default_value = "relay")]
    backend: Backend,
    /// Sites in the ring all-reduce.
    #[arg(long, default_value_t = 4)]
    sites: usize,
    /// Bytes of f32 values all-reduced, e.g. 64MiB. 0 skips the all-reduce.
    #[arg(long, default_value = "64MiB", value_parser = parse_bytes)]
    size: u64,
    /// Wire dtype of the all-reduce: f32, bf16, f16, int8.
    #[arg(long, default_value = "f32")]
    wire: WireDtype,
    /// Length of the bulk rate test, in seconds at the configured rate. 0 skips it.
    #[arg(long, default_value_t = 2.0)]
    seconds: f64,
    /// Number of delay probes. 0 skips them.
    #[arg(long, default_value_t = 200)]
    probes: usize,
    /// Time between probes (raised to 4× a probe's serialisation time if shorter).
    #[arg(long, default_value = "2ms", value_parser = parse_duration)]
    probe_interval: Duration,
    /// Seed of the jitter samples.
    #[arg(long, default_value_t = 0)]
    seed: u64,
    /// Print one JSON object instead of text.
    #[arg(long)]
    json: bool,
}

#[derive(Serialize, Debug)]
struct Report {
    backend: String,
    link: LinkReport,
    /// Which component supplied rate and delay (`netns` only).
    netns: Option<NetnsReport>,
    delay: Option<DelayReport>,
    rate: Option<RateReport>,
    allreduce: Option<AllreduceReport>,
    process_cpu_seconds: f64,
}

#[derive(Serialize, Debug)]
struct LinkReport {
    rate_bps: u64,
    delay_ms: f64,
    jitter_ms: f64,
    text: String,
}

#[derive(Serialize, Debug)]
struct NetnsReport {
    rate_by: harness::net::netns::RateSource,
    rate: String,
    delay_by: harness::net::netns::DelaySource,
    delay: String,
    /// `tbf` rate of each site direction, L2 bit/s (None where the kernel does not shape).
    tbf_l2_rate_bps: Option<u64>,
    mtu_bytes: u32,
    tcp_payload_fraction: f64,
    has_netem: bool,
}

#[derive(Serialize, Debug)]
struct DelayReport {
    probes: usize,
    probe_wire_bytes: u64,
    probe_serialisation_ms: f64,
    configured_ms: f64,
    p50_ms: f64,
    p99_ms: f64,
    min_ms: f64,
    max_ms: f64,
    mean_ms: f64,
    p50_minus_configured_ms: f64,
}

#[derive(Serialize, Debug)]
struct RateReport {
    messages: usize,
    message_bytes: u64,
    wire_bytes: u64,
    configured_bps: f64,
    achieved_bps: f64,
    goodput_bps: f64,
    ratio: f64,
    relay: Option<RelayReport>,
}

#[derive(Serialize, Debug)]
struct RelayReport {
    bytes_forwarded: u64,
    cpu_seconds: f64,
    cpu_seconds_per_gb: f64,
}

#[derive(Serialize, Debug)]
struct AllreduceReport {
    sites: usize,
    bytes: u64,
    wire: String,
    bound_s: f64,
    measured_s: f64,
    ratio: f64,
    result_exact: bool,
    payload_bytes_exact: bool,
    payload_bytes_per_site: Vec<u64>,
    relay: Option<RelayReport>,
}

/// Bytes received so far, for in-process flow control of the bulk stream.
#[derive(Default)]
struct Window {
    received: Mutex<u64>,
    changed: Condvar,
}

impl Window {
    fn add(&self, bytes: u64) {
        if let Ok(mut r) = self.received.lock() {
            *r += bytes;
        }
        self.changed.notify_all();
    }

    /// Blocks until `sent − received ≤ window`.
    fn wait_until_within(&self, sent: u64, window: u64) {
        let Ok(mut r) = self.received.lock() else {
            return;
        };
        while sent.saturating_sub(*r) > window {
            r = match self.changed.wait(r) {
                Ok(g) => g,
                Err(_) => return,
            };
        }
    }
}

/// Runs `f` on every endpoint in its own thread; returns results and endpoints.
fn on_sites<R: Send>(
    comms: Vec<Box<dyn Comm>>,
    f: impl Fn(&mut dyn Comm) -> Result<R> + Sync,
) -> Result<Vec<(R, Box<dyn Comm>)>> {
    std::thread::scope(|s| {
        let handles: Vec<_> = comms
            .into_iter()
            .map(|mut c| {
                let f = &f;
                s.spawn(move || f(c.as_mut()).map(|r| (r, c)))
            })
            .collect();
        handles
            .into_iter()
            .map(|h| h.join().unwrap_or_else(|_| bail!("a site thread panicked")))
            .collect()
    })
}

fn relay_report(relay: Option<harness::net::relay::RelayNetwork>) -> Option<RelayReport> {
    relay.map(|r| {
        let s = r.shutdown();
        RelayReport {
            bytes_forwarded: s.bytes_forwarded,
            cpu_seconds: s.cpu_seconds,
            cpu_seconds_per_gb: if s.bytes_forwarded > 0 {
                s.cpu_seconds / (s.bytes_forwarded as f64 / 1e9)
            } else {
                0.0
            },
        }
    })
}

fn ms(d: Duration) -> f64 {
    d.as_secs_f64() * 1e3
}

/// Waits `dt`: virtual clocks advance, wall clocks sleep.
fn pause(c: &mut dyn Comm, dt: Duration) {
    match c.clock_kind() {
        ClockKind::Virtual => c.advance(dt),
        ClockKind::Wall => std::thread::sleep(dt),
    }
}

pub fn run(args: Args) -> Result<()> {
    let link = resolve_link(&args)?;
    if args.sites < 2 && args.size > 0 {
        bail!(
            "invalid --sites {}: the all-reduce needs at least 2 sites",
            args.sites
        );
    }
    if !(args.seconds.is_finite() && args.seconds >= 0.0 && args.seconds <= 3600.0) {
        bail!(
            "invalid --seconds {}: must be between 0 and 3600",
            args.seconds
        );
    }
    if args.backend == Backend::Tcp {
        bail!(
            "invalid --backend tcp: tcp does not emulate links, so there is no link model to \
             check; allowed: relay, sim, netns"
        );
    }
    if !args.size.is_multiple_of(4) {
        bail!(
            "invalid --size {}: must be a whole number of f32 values (a multiple of 4 bytes)",
            args.size
        );
    }
    let net = NetOptions {
        run_id: "netcheck".into(),
        seed: args.seed,
        ..NetOptions::default()
    };
    // Fail early and in one line if the backend cannot run here.
    let pair = Topology::uniform(link).resolve(2)?;
    let first = build_local(args.backend, &pair, &net)
        .with_context(|| format!("backend {}", args.backend))?;
    let netns = first.netns.as_ref().map(|n| {
        let p = n.plan();
        NetnsReport {
            rate_by: p.rate_by,
            rate: p.rate_text(),
            delay_by: p.delay_by,
            delay: p.delay_text(),
            tbf_l2_rate_bps: p.sites.first().and_then(|s| s.up_tbf_l2_bps),
            mtu_bytes: p.mtu_bytes,
            tcp_payload_fraction: p.tcp_payload_fraction,
            has_netem: n.lab().has_netem(),
        }
    });

    let (delay, rate) = link_phase(&args, link, first)?;
    let allreduce = if args.size > 0 {
        Some(allreduce_phase(&args, link, &net)?)
    } else {
        None
    };
    let report = Report {
        backend: args.backend.to_string(),
        link: LinkReport {
            rate_bps: link.rate_bps,
            delay_ms: ms(link.delay),
            jitter_ms: ms(link.jitter),
            text: link.to_string(),
        },
        netns,
        delay,
        rate,
        allreduce,
        process_cpu_seconds: harness::net::cpu::process_cpu_seconds(),
    };
    if args.json {
        outln!("{}", serde_json::to_string_pretty(&report)?);
    } else {
        print_text(&report);
    }
    Ok(())
}

fn resolve_link(args: &Args) -> Result<LinkSpec> {
    let base = match &args.link {
        Some(name) => Some(LinkSpec::scenario(name).context("--link")?),
        None => None,
    };
    let rate = args
        .rate
        .or(base.map(|b| b.rate_bps))
        .context("--rate is required")?;
    let delay = args
        .delay
        .or(base.map(|b| b.delay))
        .context("--delay is required")?;
    let jitter = args
        .jitter
        .or(base.map(|b| b.jitter))
        .unwrap_or(Duration::ZERO);
    Ok(LinkSpec::new(rate, delay, jitter)?)
}

fn link_phase(
    args: &Args,
    link: LinkSpec,
    net: harness::net::LocalNet,
) -> Result<(Option<DelayReport>, Option<RateReport>)> {
    let harness::net::LocalNet {
        comms,
        relay,
        netns,
    } = net;
    let probe_bytes = 64usize;
    let probe_wire = probe_bytes as u64
        + frame::message_framing_bytes(probe_bytes as u64, frame::DEFAULT_MAX_FRAME_BYTES);
    let probe_ser = link.serialisation_time(probe_wire);
    let interval = args.probe_interval.max(probe_ser * 4);
    let probes = args.probes;
    let message = ((link.rate_bps as f64 * 0.010 / 8.0) as u64).clamp(1 << 10, 4 << 20) as usize;
    let total = (link.rate_bps as f64 / 8.0 * args.seconds) as u64;
    let count = if args.seconds > 0.0 {
        ((total / message as u64) as usize).max(4)
    } else {
        0
    };
    // In-process flow control: keep at most `window` bytes outstanding (≥ 2 bandwidth-delay
    // products), so a fast sender does not queue the whole test in memory. On netns the
    // kernel's queues hold bytes too (up and down tbf, up to burst + 50 ms each): a window
    // smaller than what the path holds would starve the link.
    let queues = if netns.is_some() {
        Duration::from_millis(250)
    } else {
        Duration::from_millis(50)
    };
    let bdp = link.rate_bps as f64 / 8.0 * (link.delay + link.jitter + queues).as_secs_f64();
    let window = (2.0 * bdp).max(8.0 * message as f64) as u64;
    let received = Window::default();

    let out = on_sites(comms, |c| -> Result<(Vec<Duration>, Vec<Duration>)> {
        let mut delays = Vec::with_capacity(probes);
        let mut arrivals = Vec::with_capacity(count);
        if c.rank() == 0 {
            for _ in 0..probes {
                let mut p = vec![0u8; probe_bytes];
                p[..16].copy_from_slice(&c.now().as_nanos().to_le_bytes());
                c.send(1, p)?;
                pause(c, interval);
            }
            if probes > 0 {
                c.recv(1)?; // all probes arrived: the bulk stream does not disturb them
            }
            let mut sent = 0u64;
            for _ in 0..count {
                received.wait_until_within(sent, window);
                c.send(1, vec![0u8; message])?;
                sent += message as u64;
            }
            c.recv(1)?; // the receiver is done
        } else {
            for _ in 0..probes {
                let p = c.recv(0)?;
                let sent = u128::from_le_bytes(p[..16].try_into()?);
                delays.push(c.now().saturating_sub(Duration::from_nanos(sent as u64)));
            }
            if probes > 0 {
                c.send(0, Vec::new())?;
            }
            for _ in 0..count {
                let m = c.recv(0)?;
                arrivals.push(c.now());
                received.add(m.len() as u64);
            }
            c.send(0, Vec::new())?;
        }
        Ok((delays, arrivals))
    })?;
    let mut out = out;
    let (delays, arrivals) = std::mem::take(&mut out[1].0);
    drop(out); // endpoints close before the relay stops
    let relay = relay_report(relay);
    drop(netns); // then the namespaces go

    let delay = if probes > 0 {
        let mut h = hdrhistogram::Histogram::<u64>::new_with_bounds(1, 3_600_000_000_000, 4)?;
        for d in &delays {
            h.record(d.as_nanos().max(1) as u64)?;
        }
        let q = |x: f64| h.median_equivalent(h.value_at_quantile(x)) as f64 / 1e6;
        Some(DelayReport {
            probes,
            probe_wire_bytes: probe_wire,
            probe_serialisation_ms: ms(probe_ser),
            configured_ms: ms(link.delay),
            p50_ms: q(0.5),
            p99_ms: q(0.99),
            min_ms: h.min() as f64 / 1e6,
            max_ms: h.max() as f64 / 1e6,
            mean_ms: h.mean() / 1e6,
            p50_minus_configured_ms: q(0.5) - ms(link.delay),
        })
    } else {
        None
    };
    let rate = if count >= 2 {
        let wire = message as u64
            + frame::message_framing_bytes(message as u64, frame::DEFAULT_MAX_FRAME_BYTES);
        // Steady state: from the arrival of message k0 (10% in, skipping start-up) to the last.
        let k0 = count / 10;
        let span = (arrivals[count - 1] - arrivals[k0]).as_secs_f64();
        let counted = (count - 1 - k0) as f64;
        let achieved = counted * wire as f64 * 8.0 / span;
        let goodput = counted * message as f64 * 8.0 / span;
        Some(RateReport {
            messages: count,
            message_bytes: message as u64,
            wire_bytes: wire * count as u64,
            configured_bps: link.rate_bps as f64,
            achieved_bps: achieved,
            goodput_bps: goodput,
            ratio: achieved / link.rate_bps as f64,
            relay,
        })
    } else {
        None
    };
    Ok((delay, rate))
}

fn allreduce_phase(args: &Args, link: LinkSpec, net: &NetOptions) -> Result<AllreduceReport> {
    let m = args.sites;
    let n = (args.size / 4) as usize;
    let links = Topology::uniform(link).resolve(m)?;
    let harness::net::LocalNet {
        comms,
        relay,
        netns,
    } = build_local(args.backend, &links, net)?;
    let group: Vec<usize> = (0..m).collect();
    let start = std::sync::Barrier::new(m);
    let wire = args.wire;
    let out = on_sites(comms, |c| -> Result<(Duration, Duration, bool)> {
        // Site r holds r + 1 everywhere: the sum is M(M+1)/2 exactly, in every dtype
        // (int8 included: each message is constant, so its scale is exact).
        let mut x = vec![(c.rank() + 1) as f32; n];
        start.wait();
        let t0 = c.now();
        collective::ring_allreduce(c, &group, wire, &mut x)?;
        let t1 = c.now();
        let want = (m * (m + 1) / 2) as f32;
        Ok((t0, t1, x.iter().all(|v| *v == want)))
    })?;
    let t0 = out
        .iter()
        .map(|((t0, _, _), _)| *t0)
        .min()
        .unwrap_or_default();
    let t1 = out
        .iter()
        .map(|((_, t1, _), _)| *t1)
        .max()
        .unwrap_or_default();
    let result_exact = out.iter().all(|((_, _, ok), _)| *ok);
    let expected = bytes::ring_allreduce_traffic(n, &group, wire);
    let mut payload_bytes_exact = true;
    let mut per_site = Vec::new();
    for (i, (_, c)) in out.iter().enumerate() {
        let counters = c.link_counters();
        per_site.push(counters.iter().map(|l| l.payload_bytes_sent).sum());
        for (j, l) in counters.iter().enumerate() {
            if i != j && l.payload_bytes_sent != expected.get(i, j).payload_bytes {
                payload_bytes_exact = false;
            }
        }
    }
    drop(out);
    let relay = relay_report(relay);
    drop(netns);
    let b = wire.bytes_per_value() as f64;
    let bound = bytes::ring_allreduce_bytes_closed_form(m, n as f64, b) * 8.0
        / link.rate_bps as f64
        + 2.0 * (m as f64 - 1.0) * link.delay.as_secs_f64();
    let measured = (t1 - t0).as_secs_f64();
    Ok(AllreduceReport {
        sites: m,
        bytes: args.size,
        wire: wire.to_string(),
        bound_s: bound,
        measured_s: measured,
        ratio: measured / bound,
        result_exact,
        payload_bytes_exact,
        payload_bytes_per_site: per_site,
        relay,
    })
}

fn print_text(r: &Report) {
    outln!("netcheck: backend {}, link {}", r.backend, r.link.text);
    if let Some(n) = &r.netns {
        outln!("  rate by        {}", n.rate);
        outln!(
            "  delay by       {}{}",
            n.delay,
            if n.has_netem {
                ""
            } else {
                " (kernel has no netem)"
            }
        );
    }
    if let Some(d) = &r.delay {
        outln!(
            "  one-way delay  configured {:.3} ms   p50 {:.3} ms   p99 {:.3} ms   (min {:.3}, max {:.3}; {} probes of {} wire bytes, {:.3} ms serialisation each)   p50 − configured {:+.3} ms",
            d.configured_ms, d.p50_ms, d.p99_ms, d.min_ms, d.max_ms, d.probes, d.probe_wire_bytes, d.probe_serialisation_ms, d.p50_minus_configured_ms
        );
    }
    if let Some(x) = &r.rate {
        outln!(
            "  rate           configured {}   achieved {}   ratio {:.4}   (goodput {}; {} messages of {})",
            format_rate(x.configured_bps as u64),
            format_rate_approx(x.achieved_bps),
            x.ratio,
            format_rate_approx(x.goodput_bps),
            x.messages,
            format_bytes(x.message_bytes)
        );
        if let Some(rl) = &x.relay {
            outln!(
                "  relay cpu      {:.3} CPU-s for {:.3} GB forwarded = {:.3} CPU-s/GB",
                rl.cpu_seconds,
                rl.bytes_forwarded as f64 / 1e9,
                rl.cpu_seconds_per_gb
            );
        }
    }
    if let Some(a) = &r.allreduce {
        outln!(
            "  all-reduce     {} {} over {} sites: bound {:.3} s   measured {:.3} s   ratio {:.4}   result {}   payload bytes {}",
            format_bytes(a.bytes),
            a.wire,
            a.sites,
            a.bound_s,
            a.measured_s,
            a.ratio,
            if a.result_exact { "exact" } else { "WRONG" },
            if a.payload_bytes_exact { "exact" } else { "MISMATCH" }
        );
        if let Some(rl) = &a.relay {
            outln!(
                "  relay cpu      {:.3} CPU-s for {:.3} GB forwarded = {:.3} CPU-s/GB",
                rl.cpu_seconds,
                rl.bytes_forwarded as f64 / 1e9,
                rl.cpu_seconds_per_gb
            );
        }
    }
    outln!(
        "  process cpu    {:.3} s (sites, relay and checks together)",
        r.process_cpu_seconds
    );
}

fn format_rate_approx(bps: f64) -> String {
    if bps >= 1e9 {
        format!("{:.4} Gbit/s", bps / 1e9)
    } else if bps >= 1e6 {
        format!("{:.4} Mbit/s", bps / 1e6)
    } else {
        format!("{:.4} kbit/s", bps / 1e3)
    }
}
