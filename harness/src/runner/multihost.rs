//! One rank of a multi-host run (`fomoe site CONFIG`): the same run as `fomoe run-one` with
//! `network.backend = "tcp"`, but every site is a process of its own, started by the user
//! or by Slurm on any host, instead of a worker the single-host orchestrator spawns.
//!
//! ## Life of a rank
//! 1. Checks the config (backend `tcp`, one rank per site: the world size is the config's
//!    `sites`) and, at rank 0, that the run directory may be cleared; binds the listener of
//!    every endpoint it hosts (rank r: site r; rank 0: site 0 and, for Photon star, the
//!    aggregator, which runs inside rank 0 as one more endpoint with its own listener).
//! 2. Meets the other ranks ([`crate::net::rendezvous`]): checks world, run id, config hash
//!    and token, learns every endpoint's address.
//! 3. Rank 0 creates the run directory (`manifest.json` `running`), writes `config.json`
//!    and the one seeded `init.safetensors`, and sends the latter to every rank over its
//!    control channel, so every site starts from the same bytes whatever its host.
//! 4. Every endpoint dials its higher-numbered peers directly and accepts the lower ones
//!    ([`crate::net::tcp::direct_site_config`]) and trains: the same strategy code, the same
//!    bytes, the same handshakes as the single-host `tcp` run. Ranks other than 0 send their
//!    telemetry to rank 0 ([`super::remote_sink`]); rank 0 writes it with the same sinks, then
//!    merges and summarises the run directory as `fomoe run` does, and writes `ranks.json`
//!    (host, addresses and threads of every rank).
//! 5. A rank exits 0 only after rank 0 acknowledged that everything it sent is on disk.
//!
//! ## Failures
//! Whatever fails first (a site's error, a lost rank, a refused join), rank 0 tells every
//! rank still running to stop ([`FromRank0::Abort`]), waits at most [`ABORT_GRACE`] for them,
//! and records the run as `failed` with the root cause first. A rank told to stop, or one
//! that loses its control connection, ends its process at once (its training thread may be
//! blocked on a link), after removing its scratch directory.
//!
//! ## Threads
//! `threads_per_site` when the config sets it, else `SLURM_CPUS_PER_TASK`, else this host's
//! cores divided by the ranks on this host (by host name, from the rendezvous). With all
//! ranks on one host this is the single-host default (cores / sites), so the two runs
//! compute with the same thread counts and give the same losses.
//!
//! ## Not supported here
//! Checkpoints and resume (`checkpoint_every_rounds`, `resume_from`): each rank's state lives
//! on its own host; they are refused before anything runs.

use std::collections::BTreeMap;
use std::net::{SocketAddr, TcpListener};
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::mpsc;
use std::sync::Arc;
use std::time::{Duration, Instant};

use anyhow::{anyhow, bail, Context, Result};
use serde::Serialize;

use super::launch::Launch;
use super::remote_sink::{collect, FromRank0, RemoteSink, ToRank0};
use super::{finish_run_files, prepare_run_files, read_site_reports, run_endpoint, RunOutcome};
use crate::config::RunConfig;
use crate::net::frame::{Token, MAX_RUN_ID_BYTES};
use crate::net::rendezvous::{self, hosted_endpoints, Control, Meeting, RendezvousOptions};
use crate::net::tcp::{direct_site_config, TcpComm, Timeouts};
use crate::net::{Backend, NetOptions};
use crate::results::{clear_run_dir, RunDir, RunEnv};
use crate::strategy::MethodRegistry;

/// How long rank 0 waits for the other ranks to stop after a failure.
pub const ABORT_GRACE: Duration = Duration::from_secs(30);
/// How long a rank waits for rank 0's acknowledgement of its results.
pub const ACK_TIMEOUT: Duration = Duration::from_secs(60);
/// Suite name recorded in the manifest of a `fomoe site` run.
pub const SITE_SUITE: &str = "site";

/// Everything a rank needs besides the config.
#[derive(Clone, Debug)]
pub struct RankOptions {
    pub launch: Launch,
    pub token: Token,
    /// Run id checked at the rendezvous and in every link handshake.
    pub run_id: String,
    /// Rank 0's run directory (other ranks write nothing there).
    pub out: PathBuf,
    /// Where this rank's listeners bind: `IP:PORT`, endpoint k of the rank at `PORT + k`
    /// (port 0: any). Default: the unspecified address of the rendezvous's family.
    pub listen: Option<SocketAddr>,
    /// Rendezvous timeout.
    pub timeout: Duration,
}

/// What a rank reports when it is done.
#[derive(Clone, Debug, Serialize)]
pub struct RankOutcome {
    pub rank: usize,
    /// Rank 0: the run directory.
    pub run_dir: Option<PathBuf>,
    pub threads: usize,
    pub wall_s: f64,
}

/// One rank's line in `ranks.json`.
#[derive(Clone, Debug, Serialize)]
struct RankRecord {
    rank: usize,
    host: String,
    endpoints: Vec<(usize, SocketAddr)>,
    threads: usize,
}

/// Checks that `cfg` can run as `o.launch.world` ranks, before anything else happens.
pub fn check_config(cfg: &RunConfig, o: &RankOptions) -> Result<()> {
    cfg.validate()?;
    super::check_memory(cfg)?;
    crate::device::resolve(cfg.device, 0)?;
    let l = &o.launch;
    if cfg.network.backend != Backend::Tcp {
        bail!(
            "invalid network.backend = {}: `fomoe site` runs real links; set network.backend = \"tcp\" (relay, sim and netns emulate links inside one host)",
            cfg.network.backend
        );
    }
    if l.world != cfg.sites {
        bail!(
            "{} = {} but the config has sites = {}: start one rank per site (srun -n {})",
            l.world_from,
            l.world,
            cfg.sites,
            cfg.sites
        );
    }
    if cfg.resume_from.is_some() || cfg.checkpoint_every_rounds.is_some() {
        bail!("invalid checkpoint_every_rounds / resume_from: `fomoe site` keeps no checkpoints yet (each rank's state lives on its own host); run without them");
    }
    if o.run_id.is_empty() || o.run_id.len() > MAX_RUN_ID_BYTES {
        bail!(
            "invalid run id `{}`: must be 1..={MAX_RUN_ID_BYTES} bytes",
            o.run_id
        );
    }
    Ok(())
}

/// Runs this rank to the end (see the module doc). May end the process: see Failures.
pub fn run_rank(cfg: &RunConfig, o: &RankOptions, reg: MethodRegistry) -> Result<RankOutcome> {
    let start = Instant::now();
    check_config(cfg, o)?;
    let rank = o.launch.rank;
    let target = rendezvous::resolve_address(&o.launch.rendezvous)
        .map_err(|m| anyhow!("rank {rank}: {m}"))?;
    if rank == 0 {
        clear_run_dir(&o.out)
            .with_context(|| format!("rank 0: run directory {}", o.out.display()))?;
    }
    let listeners = bind_listeners(cfg, o, target)?;
    let mut meeting = rendezvous::meet(&RendezvousOptions {
        rank,
        world: o.launch.world,
        endpoints: cfg.endpoints(),
        address: o.launch.rendezvous.clone(),
        run_id: o.run_id.clone(),
        config_hash: cfg.run_hash(),
        token: o.token.clone(),
        timeout: o.timeout,
        listeners: listeners
            .iter()
            .map(|(e, l)| Ok((*e, l.local_addr()?)))
            .collect::<std::io::Result<_>>()?,
    })?;
    let threads = rank_threads(cfg, &o.launch, &meeting);
    tch::set_num_threads(threads as i32);
    let net = NetOptions {
        run_id: o.run_id.clone(),
        token: o.token.clone(),
        seed: cfg.seed,
        ..Default::default()
    };
    if rank == 0 {
        let controls: Vec<Option<Arc<Control>>> =
            meeting.control.drain(..).map(|c| c.map(Arc::new)).collect();
        let result = run_rank0(cfg, o, &meeting, &controls, listeners, &net, reg, threads);
        if let Err(e) = &result {
            abort(&controls, &format!("{e:#}"));
        }
        result?;
        Ok(RankOutcome {
            rank,
            run_dir: Some(o.out.clone()),
            threads,
            wall_s: start.elapsed().as_secs_f64(),
        })
    } else {
        let control = Arc::new(
            meeting.control[0]
                .take()
                .ok_or_else(|| anyhow!("rank {rank}: no control channel to rank 0"))?,
        );
        run_member(cfg, o, &meeting, control, listeners, &net, reg, threads)
            .with_context(|| format!("rank {rank}"))?;
        Ok(RankOutcome {
            rank,
            run_dir: None,
            threads,
            wall_s: start.elapsed().as_secs_f64(),
        })
    }
}

/// The listeners of the endpoints this rank hosts, bound before the rendezvous so their
/// ports can be advertised.
fn bind_listeners(
    cfg: &RunConfig,
    o: &RankOptions,
    target: SocketAddr,
) -> Result<Vec<(usize, TcpListener)>> {
    let rank = o.launch.rank;
    let base = o
        .listen
        .unwrap_or_else(|| rendezvous::default_listen_addr(&target));
    hosted_endpoints(rank, o.launch.world, cfg.endpoints())
        .into_iter()
        .enumerate()
        .map(|(k, e)| {
            let port = if base.port() == 0 {
                0
            } else {
                base.port().checked_add(k as u16).ok_or_else(|| {
                    anyhow!(
                        "rank {rank}: --listen port {} + {k} is past 65535",
                        base.port()
                    )
                })?
            };
            let addr = SocketAddr::new(base.ip(), port);
            let l = TcpListener::bind(addr).map_err(|err| {
                anyhow!("rank {rank}: cannot listen for endpoint {e} on {addr}: {err}")
            })?;
            Ok((e, l))
        })
        .collect()
}

/// CPU threads of this rank's sites (see the module doc).
fn rank_threads(cfg: &RunConfig, l: &Launch, m: &Meeting) -> usize {
    cfg.threads_per_site.or(l.cpus_per_task).unwrap_or_else(|| {
        let cores = std::thread::available_parallelism()
            .map(|n| n.get())
            .unwrap_or(1);
        (cores / m.ranks_on_my_host().max(1)).max(1)
    })
}

fn abort(controls: &[Option<Arc<Control>>], reason: &str) {
    for c in controls.iter().flatten() {
        let _ = c.send(&FromRank0::Abort {
            reason: reason.to_string(),
        });
    }
}

/// The connected endpoint `e` of this rank.
fn connect(e: usize, m: &Meeting, net: &NetOptions, listener: TcpListener) -> Result<TcpComm> {
    let sc = direct_site_config(e, &m.endpoints, net);
    Ok(TcpComm::connect_on(&sc, Some(listener))?)
}

/// Who finished, at rank 0.
enum Event {
    Local(Result<()>),
    Remote(usize, Result<usize>),
}

#[allow(clippy::too_many_arguments)]
fn run_rank0(
    cfg: &RunConfig,
    o: &RankOptions,
    m: &Meeting,
    controls: &[Option<Arc<Control>>],
    listeners: Vec<(usize, TcpListener)>,
    net: &NetOptions,
    reg: MethodRegistry,
    threads: usize,
) -> Result<()> {
    let env = RunEnv::detect(SITE_SUITE, "cpu");
    let mut dir = RunDir::create(&o.out, &o.run_id, cfg, &env)
        .with_context(|| format!("rank 0: run directory {}", o.out.display()))?;
    // Rank 0's site 0 writes rounds.csv in the run directory itself (FileSink).
    let result = super::results::execute_with(cfg, &mut dir, threads, |path, _rounds| {
        let start = Instant::now();
        prepare_run_files(cfg, path)?;
        let init =
            std::fs::read(path.join("init.safetensors")).context("reading init.safetensors")?;
        for (r, c) in controls.iter().enumerate() {
            if let Some(c) = c {
                c.send(&FromRank0::Init {
                    bytes: init.len() as u64,
                })
                .and_then(|_| c.send_bytes(&init))
                .with_context(|| format!("sending the initial model to rank {r}"))?;
            }
        }
        let outcome = train_and_collect(cfg, m, controls, listeners, net, reg, path, threads);
        let sites = finish_run_files(
            cfg,
            path,
            outcome
                .map(|_| ())
                .and_then(|_| read_site_reports(cfg, path)),
        )?;
        Ok(RunOutcome {
            sites,
            wall_s: start.elapsed().as_secs_f64(),
            threads_per_site: threads,
        })
    });
    let manifest = dir.finish(&result)?;
    result.map(|_| ()).map_err(|e| {
        anyhow!(
            "run {} failed ({}): {e:#}",
            o.run_id,
            manifest.status.name()
        )
    })
}

/// Rank 0's endpoints train (with `threads` threads) while the other ranks' telemetry is
/// collected; returns each rank's threads, or every failure (root cause first).
#[allow(clippy::too_many_arguments)]
fn train_and_collect(
    cfg: &RunConfig,
    m: &Meeting,
    controls: &[Option<Arc<Control>>],
    listeners: Vec<(usize, TcpListener)>,
    net: &NetOptions,
    reg: MethodRegistry,
    dir: &Path,
    threads: usize,
) -> Result<BTreeMap<usize, usize>> {
    let (tx, rx) = mpsc::channel::<Event>();
    let silence = Timeouts::default().idle + Duration::from_secs(60);
    for (r, c) in controls.iter().enumerate() {
        if let Some(c) = c {
            let (c, dir, tx) = (Arc::clone(c), dir.to_path_buf(), tx.clone());
            std::thread::spawn(move || {
                let _ = tx.send(Event::Remote(r, collect(&c, &dir, r, silence)));
            });
        }
    }
    // Every endpoint connects on its own thread: rank 0's endpoints dial each other.
    for (e, l) in listeners {
        let (cfg, dir, tx) = (cfg.clone(), dir.to_path_buf(), tx.clone());
        let sc = direct_site_config(e, &m.endpoints, net);
        std::thread::spawn(move || {
            let comm = TcpComm::connect_on(&sc, Some(l))
                .map_err(anyhow::Error::from)
                .with_context(|| format!("site {e}: connecting"));
            let r = comm.and_then(|mut comm| {
                run_endpoint(&cfg, &dir, e, &mut comm, &reg, None)
                    .map(|_| ())
                    .with_context(|| format!("site {e}"))
            });
            let _ = tx.send(Event::Local(r));
        });
    }
    drop(tx);
    let participants = controls.iter().filter(|c| c.is_some()).count()
        + hosted_endpoints(0, m.world, cfg.endpoints()).len();
    let mut used = BTreeMap::from([(0, threads)]);
    let mut errors: Vec<String> = Vec::new();
    let mut deadline: Option<Instant> = None;
    let mut heard = 0;
    while heard < participants {
        let ev = match deadline {
            None => rx.recv().ok(),
            Some(d) => rx
                .recv_timeout(d.saturating_duration_since(Instant::now()))
                .ok(),
        };
        let Some(ev) = ev else { break };
        heard += 1;
        let failed = match ev {
            Event::Local(Ok(())) => None,
            Event::Remote(r, Ok(t)) => {
                used.insert(r, t);
                None
            }
            Event::Local(Err(e)) | Event::Remote(_, Err(e)) => Some(format!("{e:#}")),
        };
        if let Some(e) = failed {
            if deadline.is_none() {
                abort(controls, &e);
                deadline = Some(Instant::now() + ABORT_GRACE);
            }
            errors.push(e);
        }
    }
    if heard < participants {
        errors.push(format!(
            "{} participant(s) did not stop within {ABORT_GRACE:?} after the failure",
            participants - heard
        ));
    }
    if !errors.is_empty() {
        // The root cause first; peers that only saw a closed link after it come later.
        errors.sort_by_key(|e| e.contains("connection closed") || e.contains("lost contact"));
        bail!(errors.join("; "));
    }
    let records: Vec<RankRecord> = (0..m.world)
        .map(|r| RankRecord {
            rank: r,
            host: m.hosts[r].clone(),
            // As the other ranks reach them: rank 0's host at the rendezvous address.
            endpoints: hosted_endpoints(r, m.world, cfg.endpoints())
                .into_iter()
                .map(|e| {
                    let a = m.endpoints[e];
                    let ip = if a.ip().is_loopback() {
                        m.rendezvous.ip()
                    } else {
                        a.ip()
                    };
                    (e, SocketAddr::new(ip, a.port()))
                })
                .collect(),
            threads: used.get(&r).copied().unwrap_or(0),
        })
        .collect();
    crate::results::write_atomic(
        &dir.join("ranks.json"),
        serde_json::to_string_pretty(&records)?.as_bytes(),
    )?;
    Ok(used)
}

/// A rank other than 0: receive the initial model, train, send telemetry, wait for the
/// acknowledgement.
#[allow(clippy::too_many_arguments)]
fn run_member(
    cfg: &RunConfig,
    o: &RankOptions,
    m: &Meeting,
    control: Arc<Control>,
    mut listeners: Vec<(usize, TcpListener)>,
    net: &NetOptions,
    reg: MethodRegistry,
    threads: usize,
) -> Result<()> {
    let rank = o.launch.rank;
    let scratch = tempfile::Builder::new()
        .prefix(&format!("fomoe-site-r{rank}-"))
        .tempdir()
        .context("creating a scratch directory")?;
    let wait = o.timeout + rendezvous::REPLY_GRACE;
    let bytes = match control
        .recv::<FromRank0>(wait)
        .context("waiting for the initial model from rank 0")?
    {
        FromRank0::Init { bytes } => bytes,
        FromRank0::Abort { reason } => bail!("rank 0 stopped the run: {reason}"),
        FromRank0::Ack => bail!("rank 0 acknowledged results before the run started"),
    };
    let init = control
        .recv_bytes(wait)
        .context("receiving the initial model from rank 0")?;
    if init.len() as u64 != bytes {
        bail!(
            "the initial model from rank 0 has {} bytes, announced {bytes}",
            init.len()
        );
    }
    crate::results::write_atomic(&scratch.path().join("init.safetensors"), &init)?;
    let finished = Arc::new(AtomicBool::new(false));
    let (ack_tx, ack_rx) = mpsc::channel::<()>();
    {
        let (control, finished, path) = (
            Arc::clone(&control),
            Arc::clone(&finished),
            scratch.path().to_path_buf(),
        );
        std::thread::spawn(move || watch_rank0(rank, &control, &finished, &path, ack_tx));
    }
    let (e, listener) = listeners
        .pop()
        .ok_or_else(|| anyhow!("no listener for site {rank}"))?;
    let result = connect(e, m, net, listener).and_then(|mut comm| {
        let mut sink = RemoteSink::new(Arc::clone(&control));
        run_endpoint_remote(cfg, scratch.path(), e, &mut comm, reg, &mut sink)
    });
    if let Err(err) = &result {
        let _ = control.send(&ToRank0::Failed {
            error: format!("{err:#}"),
        });
        return result;
    }
    finished.store(true, Ordering::Release);
    control
        .send(&ToRank0::Done { threads })
        .context("telling rank 0 this site is done")?;
    ack_rx.recv_timeout(ACK_TIMEOUT).map_err(|_| {
        anyhow!("rank 0 did not acknowledge this site's results within {ACK_TIMEOUT:?}")
    })
}

fn run_endpoint_remote(
    cfg: &RunConfig,
    dir: &Path,
    e: usize,
    comm: &mut TcpComm,
    reg: MethodRegistry,
    sink: &mut RemoteSink,
) -> Result<()> {
    super::run_endpoint_with(cfg, dir, e, comm, &reg, None, sink)
        .map(|_| ())
        .with_context(|| format!("site {e}"))
}

/// Reads what rank 0 sends during the run: an acknowledgement at the end, or an order to
/// stop, which ends the process now (see Failures in the module doc).
fn watch_rank0(
    rank: usize,
    control: &Control,
    finished: &AtomicBool,
    scratch: &Path,
    ack: mpsc::Sender<()>,
) {
    let stop = |why: String| -> ! {
        eprintln!("error: rank {rank}: {why}");
        let _ = std::fs::remove_dir_all(scratch);
        std::process::exit(1);
    };
    match control.recv::<FromRank0>(Duration::MAX) {
        Ok(FromRank0::Ack) => {
            let _ = ack.send(());
        }
        Ok(FromRank0::Abort { reason }) => stop(format!("rank 0 stopped the run: {reason}")),
        Ok(FromRank0::Init { .. }) => stop("rank 0 sent a second initial model".into()),
        // After this rank's Done, rank 0 closing the connection is its answer too (the
        // main thread then finds the acknowledgement missing).
        Err(_) if finished.load(Ordering::Acquire) => {}
        Err(e) => stop(format!("lost the control connection to rank 0: {e}")),
    }
}
