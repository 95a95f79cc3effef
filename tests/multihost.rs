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

// ---------------------------------------------------------------------------------------
// `fomoe site` ranks as processes

use std::process::{Child, Command, Output, Stdio};
use std::time::{Duration, Instant};

/// A port that was free a moment ago (rank 0 binds it itself).
fn free_port() -> u16 {
    std::net::TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .port()
}

fn token() -> String {
    harness::net::frame::Token::generate().to_hex()
}

/// Writes `cfg` as the TOML file every rank reads.
fn write_config(cfg: &RunConfig, path: &Path) {
    std::fs::write(path, toml::to_string(cfg).unwrap()).unwrap();
}

/// `fomoe site CONFIG` with `args`, the token in the environment, output captured.
fn site_command(config: &Path, token: &str, args: &[String]) -> Command {
    let mut c = Command::new(env!("CARGO_BIN_EXE_fomoe"));
    c.arg("site")
        .arg(config)
        .args(args)
        .env("FOMOE_TOKEN", token)
        .env_remove("SLURM_PROCID")
        .env_remove("SLURM_NTASKS")
        .env_remove("SLURM_CPUS_PER_TASK")
        .stdin(Stdio::null())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped());
    c
}

fn rank_args(rank: usize, world: usize, port: u16, out: &Path) -> Vec<String> {
    vec![
        "--rank".into(),
        rank.to_string(),
        "--world".into(),
        world.to_string(),
        "--rendezvous".into(),
        format!("127.0.0.1:{port}"),
        "--out".into(),
        out.display().to_string(),
        "--timeout".into(),
        "60s".into(),
    ]
}

/// Processes killed and reaped if a test fails before waiting for them.
struct Ranks(Vec<Option<Child>>);

impl Ranks {
    /// Waits for every rank (at most `limit` in all); returns their outputs by rank.
    fn wait(mut self, limit: Duration) -> Vec<Output> {
        let t = Instant::now();
        let mut outs = Vec::new();
        for c in self.0.iter_mut() {
            let mut child = c.take().unwrap();
            while child.try_wait().unwrap().is_none() {
                assert!(t.elapsed() < limit, "a rank still runs after {limit:?}");
                std::thread::sleep(Duration::from_millis(20));
            }
            outs.push(child.wait_with_output().unwrap());
        }
        outs
    }
}

impl Drop for Ranks {
    fn drop(&mut self) {
        for c in self.0.iter_mut().flatten() {
            let _ = c.kill();
            let _ = c.wait();
        }
    }
}

/// Starts the ranks in the order given, `gap` apart; `commands[r]` is rank r's.
fn start_ranks(mut commands: Vec<Command>, order: &[usize], gap: Duration) -> Ranks {
    let mut children: Vec<Option<Child>> = (0..commands.len()).map(|_| None).collect();
    for &r in order {
        children[r] = Some(commands[r].spawn().unwrap());
        std::thread::sleep(gap);
    }
    Ranks(children)
}

fn text(o: &Output) -> String {
    format!(
        "{}{}",
        String::from_utf8_lossy(&o.stdout),
        String::from_utf8_lossy(&o.stderr)
    )
}

/// Every column of the step rows that is not a timing, as written.
fn step_record(dir: &Path) -> Vec<Vec<String>> {
    csv_columns(
        &dir.join("steps.csv"),
        &[
            "site",
            "step",
            "round",
            "loss",
            "ce",
            "balance",
            "lr",
            "grad_norm",
            "tokens",
            "payload_sent",
            "payload_recv",
            "framing_sent",
            "framing_recv",
            "skip_rate",
        ],
    )
}

/// Every column of the round rows that is not a timing, as written.
fn round_record(dir: &Path) -> Vec<Vec<String>> {
    csv_columns(
        &dir.join("rounds.csv"),
        &[
            "round",
            "step",
            "domain",
            "eval_loss",
            "floor",
            "local_eval_loss",
            "payload_bytes_total",
            "framing_bytes_total",
            "eval_bytes_total",
        ],
    )
}

fn csv_columns(path: &Path, cols: &[&str]) -> Vec<Vec<String>> {
    let mut r = csv::Reader::from_path(path).unwrap();
    let header = r.headers().unwrap().clone();
    let idx: Vec<usize> = cols
        .iter()
        .map(|c| {
            header
                .iter()
                .position(|h| h == *c)
                .unwrap_or_else(|| panic!("{c} in {path:?}"))
        })
        .collect();
    r.records()
        .map(|rec| {
            let rec = rec.unwrap();
            idx.iter().map(|&i| rec[i].to_string()).collect()
        })
        .collect()
}

fn manifest(dir: &Path) -> serde_json::Value {
    serde_json::from_str(&std::fs::read_to_string(dir.join("manifest.json")).unwrap()).unwrap()
}

/// Four `fomoe site` processes started in reverse order meet at rank 0 and produce the run
/// directory of the single-host run of the same config: every non-timing column of
/// steps.csv and rounds.csv identical (losses bit for bit, payload and framing bytes), for
/// DiLoCo and for Photon, whose aggregator runs inside rank 0.
#[test]
fn ranks_met_through_the_rendezvous_equal_the_single_host_run() {
    let d = tempfile::tempdir().unwrap();
    for m in [Method::Diloco, Method::Photon] {
        let mut cfg = base(m, 4);
        cfg.network.backend = Backend::Tcp;
        cfg.threads_per_site = None; // the default thread rule must agree on both paths
        let config = d.path().join(format!("{}.toml", m.name()));
        write_config(&cfg, &config);
        let single = d.path().join("single").join(m.name());
        run(&cfg, &single);
        let out = d.path().join("site").join(m.name());
        let (port, tok) = (free_port(), token());
        let commands = (0..4)
            .map(|r| site_command(&config, &tok, &rank_args(r, 4, port, &out)))
            .collect();
        let outs = start_ranks(commands, &[3, 2, 1, 0], Duration::from_millis(100))
            .wait(Duration::from_secs(240));
        for (r, o) in outs.iter().enumerate() {
            assert!(o.status.success(), "{} rank {r}: {}", m.name(), text(o));
        }
        assert!(text(&outs[0]).starts_with(&format!("rank 0: run {} complete", m.name())));
        assert_eq!(manifest(&out)["status"], "complete", "{}", m.name());
        assert_eq!(
            step_record(&out),
            step_record(&single),
            "{}: steps.csv",
            m.name()
        );
        assert_eq!(
            round_record(&out),
            round_record(&single),
            "{}: rounds.csv",
            m.name()
        );
        let ranks: serde_json::Value =
            serde_json::from_str(&std::fs::read_to_string(out.join("ranks.json")).unwrap())
                .unwrap();
        let endpoints_at_rank0 = ranks[0]["endpoints"].as_array().unwrap().len();
        assert_eq!(
            endpoints_at_rank0,
            cfg.endpoints() - 3,
            "{}: {ranks}",
            m.name()
        );
        assert!(out.join("routing.csv").exists() && out.join("sites.json").exists());
    }
}

/// A site that crashes on one rank fails the run at rank 0 with the root cause first, and
/// every rank exits non-zero soon after: nobody is left waiting.
#[test]
fn a_crash_on_one_rank_stops_every_rank() {
    let d = tempfile::tempdir().unwrap();
    let mut cfg = base(Method::Diloco, 3);
    cfg.network.backend = Backend::Tcp;
    cfg.faults.push(harness::config::Fault {
        site: 2,
        at_step: 3,
        kind: harness::config::FaultKind::Crash,
    });
    let config = d.path().join("crash.toml");
    write_config(&cfg, &config);
    let out = d.path().join("crash");
    let (port, tok) = (free_port(), token());
    let commands = (0..3)
        .map(|r| site_command(&config, &tok, &rank_args(r, 3, port, &out)))
        .collect();
    let t = Instant::now();
    let outs = start_ranks(commands, &[0, 1, 2], Duration::ZERO).wait(Duration::from_secs(120));
    assert!(t.elapsed() < Duration::from_secs(90), "{:?}", t.elapsed());
    for (r, o) in outs.iter().enumerate() {
        assert!(!o.status.success(), "rank {r} succeeded: {}", text(o));
    }
    let m = manifest(&out);
    assert_eq!(m["status"], "failed");
    let e = m["error"].as_str().unwrap();
    assert!(
        e.contains("site 2: injected fault: site 2 crashed at step 3"),
        "root cause first: {e}"
    );
    assert!(
        text(&outs[2]).contains("injected fault: site 2 crashed at step 3"),
        "{}",
        text(&outs[2])
    );
    // Partial telemetry is kept: the crashed site's two steps arrived before its failure
    // (the others may have been stopped sooner: DiLoCo's first round has no sync).
    let crashed: Vec<String> = step_record(&out)
        .into_iter()
        .filter(|r| r[0] == "2")
        .map(|r| r[1].clone())
        .collect();
    assert_eq!(crashed, ["1", "2"]);
}

/// Bad input is refused in one line before anything runs (or, for a rank whose config
/// differs, at the rendezvous, naming the rank), and no process is left waiting.
#[test]
fn bad_input_is_refused_in_one_line() {
    let d = tempfile::tempdir().unwrap();
    let mut cfg = base(Method::Diloco, 2);
    cfg.network.backend = Backend::Tcp;
    let config = d.path().join("ok.toml");
    write_config(&cfg, &config);
    let tok = token();
    let one_line = |o: &Output| {
        assert!(!o.status.success());
        let e = String::from_utf8_lossy(&o.stderr).trim().to_string();
        assert_eq!(e.lines().count(), 1, "{e}");
        e
    };
    let run_site = |config: &Path, args: Vec<String>, env: &[(&str, &str)]| {
        let mut c = site_command(config, &tok, &args);
        for (k, v) in env {
            c.env(k, v);
        }
        let t = Instant::now();
        let o = c.output().unwrap();
        assert!(t.elapsed() < Duration::from_secs(30), "{:?}", t.elapsed());
        o
    };
    let out = d.path().join("out").display().to_string();
    // A Slurm step with another number of tasks than the config has sites.
    let e = one_line(&run_site(
        &config,
        vec!["--out".into(), out.clone()],
        &[
            ("SLURM_PROCID", "0"),
            ("SLURM_NTASKS", "3"),
            ("SLURM_STEP_NODELIST", "localhost"),
            ("SLURM_JOB_ID", "5"),
        ],
    ));
    assert_eq!(
        e,
        "error: SLURM_NTASKS = 3 but the config has sites = 2: start one rank per site (srun -n 2)"
    );
    // A rendezvous address that does not resolve.
    let mut args = rank_args(1, 2, 1, Path::new(&out));
    args[5] = "nohost.invalid:29500".into();
    let e = one_line(&run_site(&config, args, &[]));
    assert!(
        e.starts_with("error: rank 1: rendezvous address `nohost.invalid:29500` does not resolve"),
        "{e}"
    );
    // No token.
    let mut c = site_command(&config, &tok, &rank_args(0, 2, 1, Path::new(&out)));
    c.env_remove("FOMOE_TOKEN");
    let e = one_line(&c.output().unwrap());
    assert!(e.starts_with("error: no run token: set FOMOE_TOKEN"), "{e}");
    // A backend that emulates links.
    let mut relay = cfg.clone();
    relay.network.backend = Backend::Relay;
    let relay_path = d.path().join("relay.toml");
    write_config(&relay, &relay_path);
    let e = one_line(&run_site(
        &relay_path,
        rank_args(0, 2, 1, Path::new(&out)),
        &[],
    ));
    assert!(
        e.starts_with("error: invalid network.backend = relay: `fomoe site` runs real links"),
        "{e}"
    );
    // A port in use at rank 0.
    let taken = std::net::TcpListener::bind("0.0.0.0:0").unwrap();
    let port = taken.local_addr().unwrap().port();
    let e = one_line(&run_site(
        &config,
        rank_args(0, 2, port, Path::new(&out)),
        &[],
    ));
    assert!(
        e.starts_with(&format!(
            "error: rank 0: cannot listen for the rendezvous on 0.0.0.0:{port}"
        )),
        "{e}"
    );
    // A rank whose config file differs: refused at the rendezvous, naming the rank.
    let mut other = cfg.clone();
    other.seed = 7;
    let other_path = d.path().join("other.toml");
    write_config(&other, &other_path);
    let port = free_port();
    let commands = vec![
        site_command(&config, &tok, &rank_args(0, 2, port, Path::new(&out))),
        site_command(&other_path, &tok, &rank_args(1, 2, port, Path::new(&out))),
    ];
    let outs =
        start_ranks(commands, &[0, 1], Duration::from_millis(200)).wait(Duration::from_secs(30));
    let (e0, e1) = (one_line(&outs[0]), one_line(&outs[1]));
    assert!(e0.starts_with("error: rank 0: rank 1 (127.0.0.1:"), "{e0}");
    assert!(e0.contains("has another config (hash "), "{e0}");
    assert!(
        e1.starts_with("error: rank 1: refused by rank 0: rank 1 (127.0.0.1:"),
        "{e1}"
    );
}

/// Namespace hosts: every site is a `fomoe site` process in a network namespace of its own,
/// with its own address on a bridge and kernel `tbf` shaping its link both ways, started
/// through the rendezvous (ranks in reverse order), not the single-host orchestrator. The
/// FoMoE run trains exactly what the `sim` run of the same config trains and moves exactly
/// its payload; the traffic really crossed each site's veth; every namespace is removed
/// afterwards (also when the test fails: the lab's Drop runs after the ranks are killed).
/// Skipped (reason printed) without root or namespaces, unless `CI=true`.
#[test]
fn namespace_hosts_equal_the_sim_run() {
    use harness::net::netns::{self, LabOptions, NetnsLab, SiteShape};
    if let Err(e) = netns::check_available() {
        if netns::should_skip(&e) {
            eprintln!("skipped: {e}");
            return;
        }
        panic!("{e}");
    }
    let d = tempfile::tempdir().unwrap();
    let sim = base(Method::Fomoe, 4);
    let mut tcp = sim.clone();
    tcp.network.backend = Backend::Tcp;
    let config = d.path().join("fomoe.toml");
    write_config(&tcp, &config);
    let sim_dir = d.path().join("sim");
    let a = run(&sim, &sim_dir);

    let lab = NetnsLab::with_options(
        4,
        &LabOptions {
            name_prefix: "fomoe-mh-".into(),
            ..LabOptions::default()
        },
    )
    .unwrap();
    lab.shape_all(&SiteShape::symmetric(200_000_000)).unwrap();
    let names = lab.namespace_names();
    let out = d.path().join("hosts");
    let rendezvous = format!("{}:29500", lab.site_addr(0).unwrap());
    let tok = token();
    let commands = (0..4)
        .map(|r| {
            let mut args = rank_args(r, 4, 1, &out);
            args[5] = rendezvous.clone();
            let mut c = site_command(&config, &tok, &args);
            lab.command_in_site(r, &mut c).unwrap();
            c
        })
        .collect();
    let outs = start_ranks(commands, &[3, 2, 1, 0], Duration::from_millis(100))
        .wait(Duration::from_secs(240));
    for (r, o) in outs.iter().enumerate() {
        assert!(o.status.success(), "rank {r}: {}", text(o));
    }
    assert_eq!(manifest(&out)["status"], "complete");
    assert_eq!(
        step_key(&steps(&out)),
        step_key(&steps(&sim_dir)),
        "steps differ"
    );
    assert_eq!(
        round_key(&rounds(&out)),
        round_key(&rounds(&sim_dir)),
        "rounds differ"
    );
    let reports: Vec<harness::runner::SiteReport> = serde_json::from_str::<serde_json::Value>(
        &std::fs::read_to_string(out.join("sites.json")).unwrap(),
    )
    .map(|v| serde_json::from_value(v["sites"].clone()).unwrap())
    .unwrap();
    for (x, y) in a.sites.iter().zip(&reports) {
        assert_eq!(x.payload_sent, y.payload_sent, "site {}", x.site);
        assert_eq!(y.payload_sent, y.expected_payload_sent, "site {}", y.site);
        // The payload left through the site's own (shaped) veth.
        let c = lab.site_counters(y.site).unwrap();
        assert!(
            c.tx_bytes >= y.payload_sent + y.eval_payload_sent,
            "site {}: veth sent {} bytes, payload {}",
            y.site,
            c.tx_bytes,
            y.payload_sent
        );
    }
    let ranks = std::fs::read_to_string(out.join("ranks.json")).unwrap();
    for r in 0..4 {
        assert!(
            ranks.contains(&lab.site_addr(r).unwrap().to_string()),
            "{ranks}"
        );
    }
    drop(lab);
    let left = netns::list_namespaces("").unwrap();
    for n in &names {
        assert!(!left.contains(n), "namespace {n} left behind");
    }
}
