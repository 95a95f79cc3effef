//! Sites on separate hosts (issue 12): the `tcp` backend on one host, `fomoe site` ranks
//! meeting through the rendezvous (on loopback, and each in its own network namespace with
//! kernel `tbf` shaping), and their bad input. Every run is on the `tiny` preset; results are
//! compared with the `sim` run of the same config, bit for bit in losses and exactly in bytes.

use std::path::Path;

use harness::config::{Method, RunConfig};
use harness::net::Backend;
use harness::runner::{run_one, RunOptions, RunOutcome};
use harness::telemetry::{RoundRow, StepRow};

fn base(method: Method, sites: usize) -> RunConfig {
    let mut c = RunConfig {
        method,
        sites,
        steps: 8,
        inner_steps: 4,
        threads_per_site: Some(1),
        ..Default::default()
    };
    c.network.backend = Backend::Sim;
    c.eval_sequences = 4;
    c
}

fn opts() -> RunOptions {
    RunOptions {
        worker_exe: Some(env!("CARGO_BIN_EXE_fomoe").into()),
    }
}

fn run(cfg: &RunConfig, dir: &Path) -> RunOutcome {
    run_one(cfg, dir, &baselines::registry(), &opts())
        .unwrap_or_else(|e| panic!("{} run failed: {e:#}", cfg.method.name()))
}

fn steps(dir: &Path) -> Vec<StepRow> {
    csv::Reader::from_path(dir.join("steps.csv"))
        .unwrap()
        .deserialize()
        .collect::<Result<_, _>>()
        .unwrap()
}

fn rounds(dir: &Path) -> Vec<RoundRow> {
    csv::Reader::from_path(dir.join("rounds.csv"))
        .unwrap()
        .deserialize()
        .collect::<Result<_, _>>()
        .unwrap()
}

/// (step, site, loss bits, payload sent, payload received) of every step row.
fn step_key(rows: &[StepRow]) -> Vec<(usize, usize, u64, u64, u64)> {
    rows.iter()
        .map(|r| {
            (
                r.step,
                r.site,
                r.loss.to_bits(),
                r.payload_sent,
                r.payload_recv,
            )
        })
        .collect()
}

/// (round, domain, global eval loss bits, local eval loss bits, payload total) per row.
fn round_key(rows: &[RoundRow]) -> Vec<(usize, String, u64, u64, u64)> {
    rows.iter()
        .map(|r| {
            (
                r.round,
                r.domain.clone(),
                r.eval_loss.to_bits(),
                r.local_eval_loss.to_bits(),
                r.payload_bytes_total,
            )
        })
        .collect()
}

/// `tcp` on one host (workers dialing each other over loopback, no relay) trains exactly
/// what `sim` trains and moves exactly its payload, Photon's aggregator included.
#[test]
fn tcp_on_one_host_equals_sim_bit_for_bit() {
    let d = tempfile::tempdir().unwrap();
    for m in [Method::Diloco, Method::Photon] {
        let sim = base(m, 4);
        let mut tcp = sim.clone();
        tcp.network.backend = Backend::Tcp;
        let a = run(&sim, &d.path().join(format!("{}-sim", m.name())));
        let b = run(&tcp, &d.path().join(format!("{}-tcp", m.name())));
        let (sa, sb) = (
            steps(&d.path().join(format!("{}-sim", m.name()))),
            steps(&d.path().join(format!("{}-tcp", m.name()))),
        );
        assert_eq!(sa.len(), 4 * 8, "{}", m.name());
        assert_eq!(step_key(&sa), step_key(&sb), "{}: steps differ", m.name());
        assert_eq!(
            round_key(&rounds(&d.path().join(format!("{}-sim", m.name())))),
            round_key(&rounds(&d.path().join(format!("{}-tcp", m.name())))),
            "{}: rounds differ",
            m.name()
        );
        for (x, y) in a.sites.iter().zip(&b.sites) {
            assert_eq!(
                x.payload_sent,
                y.payload_sent,
                "{} site {}",
                m.name(),
                x.site
            );
            assert_eq!(y.payload_sent, y.expected_payload_sent, "{}", m.name());
        }
    }
}

/// Backend `tcp` emulates nothing, so a link knob it would ignore is refused in one line.
#[test]
fn tcp_refuses_link_emulation_knobs() {
    let mut c = base(Method::Diloco, 4);
    c.network.backend = Backend::Tcp;
    c.network.rate = Some("100mbit".into());
    let e = c.validate().unwrap_err().to_string();
    assert!(
        e.starts_with("invalid network.rate = 100mbit: not applied by backend tcp"),
        "{e}"
    );
}
