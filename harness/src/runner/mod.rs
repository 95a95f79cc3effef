//! Executes one run: shared initial model, network, one site per process (or per thread on
//! `sim`), then the run's files merged.
//!
//! Files the runner leaves in the run directory (besides what `results` adds):
//! `config.json` (the resolved [`RunConfig`]), `init.safetensors` (the one seeded initial
//! model every site starts from), per-site `steps-site<i>.csv`, `probe-site<i>.jsonl`,
//! `site<i>.json`, and after a successful or failed run the merged `steps.csv` (rows of all
//! sites sorted by step, then site). Round rows go into the one rounds sink of the run
//! directory (`rounds.csv`, [`run_one_into`]), complete with their byte totals as the
//! evaluator derives them: pushed directly by a site thread, or read by the orchestrator
//! from a worker's stdout and pushed (see [`sink`]).
//!
//! Backends: `sim` runs every endpoint as a thread of this process with a compute gate
//! (at most cores / threads-per-site sites compute at once, each on its own cores) on a
//! virtual clock; `relay` starts the
//! relay here and spawns `fomoe worker --run-dir D --site i` per endpoint (its network
//! config, with the run's secret token, written to the worker's stdin: no secret is ever in
//! a file; a worker dies with the orchestrator, `PR_SET_PDEATHSIG`); `netns` (root)
//! builds one network namespace per endpoint with kernel `tbf` rates (and the relay in the
//! hub namespace when links have delay, see [`crate::net::netns::network`]), writes
//! `netns.json` (which component supplies rate and delay, the namespaces), and starts each
//! worker inside its endpoint's namespace (`setns` between fork and exec), where it listens
//! on and dials namespace addresses; `tcp` binds one loopback listener per endpoint here
//! and hands each to its worker across `exec` (`--listen-fd`), and the workers dial each
//! other directly (no relay, no shaping; `fomoe site` runs the same links across hosts, see
//! [`multihost`]). A worker that fails writes `error-site<i>.txt` and exits
//! non-zero; the orchestrator then kills the other workers, waits for them (no orphans) and
//! reports the first error. Workers are killed and waited for, then the relay stopped, then
//! the namespaces removed, on every exit path (an error, a panic; SIGINT/SIGTERM remove the
//! namespaces through the lab's signal handler).

pub mod clock;
pub mod deadline;
pub mod eval;
pub mod gate;
pub mod launch;
pub mod multihost;
pub mod recovery;
pub mod remote_sink;
pub mod results;
pub mod round_end;
pub mod sink;
pub mod site;

use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use anyhow::{anyhow, bail, Context, Result};

use crate::checkpoint::CheckpointWriter;
use crate::config::RunConfig;
use crate::data::Dataset;
use crate::model::params::ParamStore;
use crate::model::{ModelConfig, Residency};
use crate::net::{Backend, Comm, NetOptions};
use crate::results::CsvSink;
use crate::strategy::MethodRegistry;
use crate::telemetry::RoundRow;

pub use results::execute_in_run_dir;

pub use site::{run_site, SiteReport};

/// How to execute runs.
#[derive(Clone, Debug, Default)]
pub struct RunOptions {
    /// The `fomoe` executable that runs `worker` (real backends). Default: this executable.
    pub worker_exe: Option<PathBuf>,
}

/// What a finished run reports.
#[derive(Clone, Debug, serde::Serialize, serde::Deserialize)]
pub struct RunOutcome {
    pub sites: Vec<SiteReport>,
    pub wall_s: f64,
    pub threads_per_site: usize,
}

/// CPU threads each site uses: the config's value, or cores / sites (at least 1). The
/// same on every backend, so the arithmetic (and the loss) does not depend on the backend.
pub fn threads_per_site(cfg: &RunConfig) -> usize {
    cfg.threads_per_site.unwrap_or_else(|| {
        let cores = std::thread::available_parallelism()
            .map(|n| n.get())
            .unwrap_or(1);
        (cores / cfg.sites.max(1)).max(1)
    })
}

fn net_options(cfg: &RunConfig, dir: &Path) -> NetOptions {
    let mut o = NetOptions {
        seed: cfg.seed,
        ..Default::default()
    };
    o.run_id = dir
        .file_name()
        .map(|n| n.to_string_lossy().chars().take(100).collect())
        .unwrap_or_else(|| "run".into());
    if let Ok(mcfg) = cfg.model_config() {
        let t = TransportBudget::of(cfg, &mcfg);
        o.limits.max_message_bytes = t.max_message_bytes;
        o.peer_limits.max_queued_bytes = t.max_queued_bytes;
        o.peer_limits.min_rate_bps = t.min_rate_bps;
    }
    o
}

/// What a run's protocol can legitimately send, so a peer (even one holding the run's
/// token) cannot make a site hold more ([`crate::net::tcp::PeerLimits`]). With
/// `model_bytes` = 4·N (the whole model in f32, the widest wire dtype):
/// - `max_message_bytes` = 2·model_bytes + 1 MiB: the largest single message is at most a
///   whole model (Photon's upload and broadcast, a ring chunk, the experts a site sends for
///   the global model) or an expert's weights and outer momentum (a load-aware move); the
///   MiB covers wire headers;
/// - `max_queued_bytes` = 4·model_bytes + 16 MiB per peer: a peer runs at most one
///   synchronisation ahead of us before it needs our data (a ring sends its successor
///   2(M−1)/M of a model per sync, the lockstep schedule of holder groups the same in total
///   however many groups share the link), plus an eval gather (≤ one model) and expert
///   moves (≤ two models) outstanding at once, plus 16 MiB of small messages. So the
///   budget never blocks a conforming sender;
/// - `min_rate_bps` = min(1 Mbit/s, link rate / 4): a frame slower than a quarter of the
///   modelled link is a broken or hostile peer.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct TransportBudget {
    pub max_message_bytes: u64,
    pub max_queued_bytes: u64,
    pub min_rate_bps: u64,
}

impl TransportBudget {
    pub fn of(cfg: &RunConfig, mcfg: &ModelConfig) -> TransportBudget {
        let n = crate::model::ParamLayout::new(mcfg, &Residency::full(mcfg)).total as u64;
        let model_bytes = 4 * n;
        let rate = cfg
            .link_spec()
            .map(|l| l.rate_bps)
            .unwrap_or(crate::net::frame::DEFAULT_MIN_RATE_BPS);
        TransportBudget {
            max_message_bytes: 2 * model_bytes + (1 << 20),
            max_queued_bytes: 4 * model_bytes + (16 << 20),
            min_rate_bps: crate::net::frame::DEFAULT_MIN_RATE_BPS.min(rate / 4).max(1),
        }
    }
}

/// What can be checked of a run before anything is written: the config validates, its
/// device is usable, it fits this machine's memory ([`check_memory`]) and its data opens (a
/// missing or malformed data file is reported here, not after the run directory and
/// `init.safetensors` exist). Returns the rows a complete run writes.
pub fn prepare(cfg: &RunConfig) -> Result<crate::results::ExpectedRows> {
    cfg.validate()?;
    crate::device::resolve(cfg.device, 0)?;
    check_memory(cfg)?;
    let mcfg = cfg.model_config()?;
    let data = Dataset::open(&cfg.data, mcfg.seq_len)?;
    Ok(crate::results::ExpectedRows::for_training(
        cfg,
        data.n_domains(),
        mcfg.n_layers,
    ))
}

/// Execute `cfg` with its files in `dir` (created if needed), round rows into the
/// directory's `rounds.csv` (created, or appended to on resume).
pub fn run_one(
    cfg: &RunConfig,
    dir: &Path,
    reg: &MethodRegistry,
    opts: &RunOptions,
) -> Result<RunOutcome> {
    // What can refuse the run does so before anything is written.
    prepare(cfg)?;
    std::fs::create_dir_all(dir).with_context(|| format!("creating {}", dir.display()))?;
    let path = dir.join(crate::results::run_dir::ROUNDS_FILE);
    let mut rounds = if cfg.resume_from.is_some() {
        CsvSink::<RoundRow>::append(path)?
    } else {
        CsvSink::<RoundRow>::create(path)?
    };
    let outcome = run_one_into(cfg, dir, reg, opts, &mut rounds);
    rounds.finish()?;
    outcome
}

/// Execute `cfg` with its files in `dir`, round rows into `rounds` (the run directory's sink).
pub fn run_one_into(
    cfg: &RunConfig,
    dir: &Path,
    reg: &MethodRegistry,
    opts: &RunOptions,
    rounds: &mut CsvSink<RoundRow>,
) -> Result<RunOutcome> {
    prepare_run_files(cfg, dir)?;
    let threads = threads_per_site(cfg);
    let start = Instant::now();
    let result = match cfg.network.backend {
        Backend::Sim => run_sim(cfg, dir, reg, threads, rounds),
        Backend::Relay | Backend::Netns | Backend::Tcp => run_processes(cfg, dir, opts, rounds),
    };
    let sites = finish_run_files(cfg, dir, result)?;
    Ok(RunOutcome {
        sites,
        wall_s: start.elapsed().as_secs_f64(),
        threads_per_site: threads,
    })
}

/// Validates `cfg` and writes the files every site starts from: `config.json` and the one
/// seeded initial model `init.safetensors` (kept when resuming). Returns the model config.
/// Callers have run [`prepare`] (or, for `fomoe site`, `multihost::check_config`) first.
pub fn prepare_run_files(cfg: &RunConfig, dir: &Path) -> Result<ModelConfig> {
    cfg.validate()?;
    let mcfg = cfg.model_config()?;
    std::fs::create_dir_all(dir).with_context(|| format!("creating {}", dir.display()))?;
    crate::results::write_atomic(
        &dir.join("config.json"),
        serde_json::to_string_pretty(cfg)?.as_bytes(),
    )?;
    let init_path = dir.join("init.safetensors");
    if cfg.resume_from.is_none() || !init_path.exists() {
        let init = ParamStore::init(&mcfg, Residency::full(&mcfg), cfg.seed);
        CheckpointWriter::new()
            .model(&init)
            .meta("seed", cfg.seed)
            .write(&init_path)?;
    }
    Ok(mcfg)
}

/// After the sites ran (`result`): merges the per-site step and participation files (also
/// after a failure, so partial results stay readable).
pub fn finish_run_files(
    cfg: &RunConfig,
    dir: &Path,
    result: Result<Vec<SiteReport>>,
) -> Result<Vec<SiteReport>> {
    let merged = crate::results::merge_site_steps(dir);
    let participation = crate::scenario::participation::merge_participation(dir, cfg.sites);
    let sites = result?;
    merged?;
    participation?;
    Ok(sites)
}

/// The site reports (`site<i>.json`) of a finished run.
pub(crate) fn read_site_reports(cfg: &RunConfig, dir: &Path) -> Result<Vec<SiteReport>> {
    let mut reports = Vec::new();
    for i in 0..cfg.sites {
        let p = dir.join(format!("site{i}.json"));
        let text =
            std::fs::read_to_string(&p).with_context(|| format!("reading {}", p.display()))?;
        reports.push(serde_json::from_str(&text)?);
    }
    Ok(reports)
}

/// Refuse a run whose estimated memory exceeds what this machine has available
/// ([`crate::sysmodel::run_memory`]), before anything is allocated or written; a machine
/// whose memory cannot be read is not checked.
pub fn check_memory(cfg: &RunConfig) -> Result<()> {
    if let Some(machine) = crate::sysmodel::machine::detect() {
        crate::sysmodel::run_memory::check_fits(cfg, &machine)?;
    }
    Ok(())
}

/// Body of one site (or Photon's aggregator) given its endpoint, its telemetry in files of
/// `dir` ([`sink::FileSink::create`]: site 0 writes `rounds.csv`).
pub fn run_endpoint(
    cfg: &RunConfig,
    dir: &Path,
    endpoint: usize,
    comm: &mut dyn Comm,
    reg: &MethodRegistry,
    gate: Option<&gate::ComputeGate>,
) -> Result<Option<SiteReport>> {
    if endpoint >= cfg.sites {
        return run_endpoint_with(cfg, dir, endpoint, comm, reg, gate, &mut sink::NullSink);
    }
    let mut sink = sink::FileSink::create(dir, endpoint, cfg.resume_from.is_some())?;
    run_endpoint_with(cfg, dir, endpoint, comm, reg, gate, &mut sink)
}

/// [`run_endpoint`] with the round rows going to `rounds` (the run directory's sink, or the
/// orchestrator through a worker's stdout): what site threads and workers use.
pub fn run_endpoint_to<'r>(
    cfg: &RunConfig,
    dir: &Path,
    endpoint: usize,
    comm: &mut dyn Comm,
    reg: &MethodRegistry,
    gate: Option<&gate::ComputeGate>,
    rounds: Box<dyn sink::RoundsOut + 'r>,
) -> Result<Option<SiteReport>> {
    if endpoint >= cfg.sites {
        return run_endpoint_with(cfg, dir, endpoint, comm, reg, gate, &mut sink::NullSink);
    }
    let mut sink =
        sink::FileSink::with_rounds(dir, endpoint, cfg.resume_from.is_some(), Some(rounds))?;
    run_endpoint_with(cfg, dir, endpoint, comm, reg, gate, &mut sink)
}

/// [`run_endpoint`] with the site's telemetry going to `sink` (an aggregator has none):
/// the seam where a multi-host rank sends its telemetry to rank 0
/// ([`remote_sink::RemoteSink`]). `dir` holds `init.safetensors`.
pub fn run_endpoint_with(
    cfg: &RunConfig,
    dir: &Path,
    endpoint: usize,
    comm: &mut dyn Comm,
    reg: &MethodRegistry,
    gate: Option<&gate::ComputeGate>,
    sink: &mut dyn sink::SiteSink,
) -> Result<Option<SiteReport>> {
    let mcfg = cfg.model_config()?;
    let all: Vec<usize> = (0..cfg.endpoints()).collect();
    if endpoint >= cfg.sites {
        let c0 = comm.link_counters();
        (reg.aggregator)(cfg, comm, dir)?;
        let c1 = comm.link_counters();
        let sum = |c: &[crate::net::LinkCounters], f: fn(&crate::net::LinkCounters) -> u64| {
            c.iter().map(f).sum::<u64>()
        };
        let report = serde_json::json!({
            "payload_sent": sum(&c1, |l| l.payload_bytes_sent) - sum(&c0, |l| l.payload_bytes_sent),
            "framing_sent": sum(&c1, |l| l.framing_bytes_sent) - sum(&c0, |l| l.framing_bytes_sent),
            "rounds": cfg.rounds(),
        });
        crate::results::write_atomic(&dir.join("aggregator.json"), report.to_string().as_bytes())?;
        crate::collective::barrier(comm, &all)?;
        return Ok(None);
    }
    // The site's tensors live on its device from here on (the aggregator above stays on
    // the host: it only averages host buffers).
    let device = crate::device::resolve(cfg.device, endpoint)?.device;
    let mut runtime = crate::device::Runtime::new(device, cfg.precision);
    // A caller may ask for the CUDA path's host copies on the CPU (tests do).
    runtime.stage_payloads |= crate::device::current().stage_payloads;
    let _runtime = crate::device::enter(runtime);
    let data = Dataset::open(&cfg.data, mcfg.seq_len)?;
    let init = site::load_init(&dir.join("init.safetensors"), &mcfg)?;
    let mut strategy = (reg.site)(cfg, endpoint)?;
    let ctx = site::SiteContext {
        cfg,
        model_cfg: mcfg.clone(),
        site: endpoint,
        data: &data,
        init: &init,
        compute_gate: gate,
        checkpoint: cfg.checkpoint_every_rounds.map(|n| (dir.to_path_buf(), n)),
        resume: cfg
            .resume_from
            .as_ref()
            .map(|p| p.join(format!("ckpt-site{endpoint}.safetensors"))),
    };
    let mut source = site::ShardSource {
        data: &data,
        site: endpoint,
        sites: cfg.sites,
        seed: cfg.seed,
        batch_size: mcfg.batch_size,
    };
    let report = run_site(&ctx, strategy.as_mut(), comm, &mut source, sink)?;
    // Nobody leaves while a peer may still need its messages.
    crate::collective::barrier(comm, &all)?;
    Ok(Some(report))
}

fn run_sim(
    cfg: &RunConfig,
    dir: &Path,
    reg: &MethodRegistry,
    threads: usize,
    rounds: &mut CsvSink<RoundRow>,
) -> Result<Vec<SiteReport>> {
    tch::set_num_threads(threads as i32);
    let links = cfg.net_schedule()?;
    let comms = crate::net::sim::sim_comms_scheduled(&links, &net_options(cfg, dir))?;
    let cores = std::thread::available_parallelism()
        .map(|n| n.get())
        .unwrap_or(1);
    // Sites on a GPU compute one at a time (see `crate::device`, "Sharing one GPU").
    let on_gpu = crate::device::resolve(cfg.device, 0)?.device.is_cuda();
    let gate = gate::ComputeGate::new(if on_gpu { 1 } else { cores / threads });
    let shared = std::sync::Mutex::new(rounds);
    // Site threads inherit the caller's request to stage payloads (see `run_endpoint`).
    let stage = crate::device::current().stage_payloads;
    let results: Vec<Result<Option<SiteReport>>> = std::thread::scope(|s| {
        let handles: Vec<_> = comms
            .into_iter()
            .enumerate()
            .map(|(i, mut comm)| {
                let (gate, shared) = (&gate, &shared);
                s.spawn(move || {
                    let _staged = stage.then(|| {
                        crate::device::enter(crate::device::Runtime {
                            stage_payloads: true,
                            ..crate::device::Runtime::CPU
                        })
                    });
                    let out = Box::new(sink::SharedRounds(shared));
                    run_endpoint_to(cfg, dir, i, &mut comm, reg, Some(gate), out)
                        .with_context(|| format!("site {i}"))
                })
            })
            .collect();
        handles
            .into_iter()
            .map(|h| {
                h.join()
                    .unwrap_or_else(|_| Err(anyhow!("a site thread panicked")))
            })
            .collect()
    });
    // Report every failed site: the root cause (e.g. a crash) and its consequences
    // (peers whose links closed) are all named.
    let errors: Vec<String> = results
        .iter()
        .filter_map(|r| r.as_ref().err().map(|e| format!("{e:#}")))
        .collect();
    if !errors.is_empty() {
        let mut errors = errors;
        errors.sort_by_key(|e| e.contains("connection closed"));
        bail!(errors.join("; "));
    }
    Ok(results
        .into_iter()
        .filter_map(|r| r.ok().flatten())
        .collect())
}

/// The network of a run whose sites are processes; it must outlive every worker.
enum ProcessNet {
    Relay(crate::net::relay::RelayNetwork),
    Netns(Box<crate::net::netns::NetnsNetwork>),
    /// `tcp` on one host: every endpoint's listener on 127.0.0.1, bound here (so no other
    /// process can take the port between choosing and using it) and inherited by its worker.
    Direct {
        configs: Vec<crate::net::tcp::SiteNetConfig>,
        listeners: Vec<Option<std::net::TcpListener>>,
    },
}

impl ProcessNet {
    fn site_configs(&self) -> &[crate::net::tcp::SiteNetConfig] {
        match self {
            ProcessNet::Relay(r) => r.site_configs(),
            ProcessNet::Netns(n) => n.site_configs(),
            ProcessNet::Direct { configs, .. } => configs,
        }
    }

    /// Direct links on loopback for `endpoints` workers.
    fn direct(endpoints: usize, net: &NetOptions) -> Result<ProcessNet> {
        let mut listeners = Vec::with_capacity(endpoints);
        let mut addrs = Vec::with_capacity(endpoints);
        for i in 0..endpoints {
            let l = std::net::TcpListener::bind("127.0.0.1:0")
                .with_context(|| format!("site {i}: binding a loopback listener"))?;
            addrs.push(l.local_addr()?);
            listeners.push(Some(l));
        }
        let configs = (0..endpoints)
            .map(|i| crate::net::tcp::direct_site_config(i, &addrs, net))
            .collect();
        Ok(ProcessNet::Direct { configs, listeners })
    }
}

/// Makes `listener` survive `exec` in the child `cmd` starts (the parent's copy stays
/// close-on-exec) and returns the descriptor number the child finds it under.
fn inherit_listener(cmd: &mut Command, listener: &std::net::TcpListener) -> i32 {
    use std::os::fd::AsRawFd;
    use std::os::unix::process::CommandExt;
    let fd = listener.as_raw_fd();
    // SAFETY: between fork and exec the closure only calls fcntl(2) on a descriptor the
    // child inherited, which is async-signal-safe.
    unsafe {
        cmd.pre_exec(move || {
            let flags = libc::fcntl(fd, libc::F_GETFD);
            if flags < 0 || libc::fcntl(fd, libc::F_SETFD, flags & !libc::FD_CLOEXEC) != 0 {
                return Err(std::io::Error::last_os_error());
            }
            Ok(())
        });
    }
    fd
}

/// Worker processes; dropping kills and waits for those still running (no orphans on any
/// exit path).
#[derive(Default)]
struct Workers(Vec<(usize, Child)>);

impl Drop for Workers {
    fn drop(&mut self) {
        kill_all(&mut self.0);
    }
}

fn run_processes(
    cfg: &RunConfig,
    dir: &Path,
    opts: &RunOptions,
    rounds: &mut CsvSink<RoundRow>,
) -> Result<Vec<SiteReport>> {
    let links = cfg.link_matrix()?;
    let net = net_options(cfg, dir);
    // Declared before the workers, so dropped after them on every path.
    let mut network = match cfg.network.backend {
        Backend::Netns => ProcessNet::Netns(Box::new(
            crate::net::netns::NetnsNetwork::start(&links, &net, &Default::default())
                .context("network.backend = netns")?,
        )),
        Backend::Tcp => ProcessNet::direct(cfg.endpoints(), &net)?,
        _ => ProcessNet::Relay(crate::net::relay::RelayNetwork::start(
            &links,
            &net,
            &Default::default(),
        )?),
    };
    if let ProcessNet::Netns(n) = &network {
        crate::results::write_atomic(
            &dir.join("netns.json"),
            serde_json::to_string_pretty(&n.record())?.as_bytes(),
        )?;
    }
    let exe = match &opts.worker_exe {
        Some(p) => p.clone(),
        None => std::env::current_exe().context("locating the fomoe executable")?,
    };
    let mut workers = Workers::default();
    // Round rows come from the evaluating worker's stdout; they go into `rounds` here.
    let (rows_tx, rows_rx) = std::sync::mpsc::channel::<Result<Vec<RoundRow>>>();
    let mut readers = Vec::new();
    let mut push_rows = |rows_rx: &std::sync::mpsc::Receiver<Result<Vec<RoundRow>>>,
                         failure: &mut Option<String>| {
        for rows in rows_rx.try_iter() {
            let pushed = rows.and_then(|r| sink::RoundsOut::push(&mut *rounds, &r));
            if let Err(e) = pushed {
                failure.get_or_insert(format!("round rows: {e:#}"));
            }
        }
    };
    for i in 0..cfg.endpoints() {
        let _ = std::fs::remove_file(dir.join(format!("error-site{i}.txt")));
        let log_path = dir.join(format!("worker-site{i}.log"));
        let log = std::fs::File::create(&log_path)
            .with_context(|| format!("creating {}", log_path.display()))?;
        let mut cmd = Command::new(&exe);
        cmd.arg("worker")
            .arg("--run-dir")
            .arg(dir)
            .arg("--site")
            .arg(i.to_string())
            .stdin(Stdio::piped())
            .stdout(Stdio::piped())
            .stderr(Stdio::from(log));
        die_with_parent(&mut cmd);
        // Held until the worker has started; then only the worker has it.
        let mut inherited = None;
        match &mut network {
            ProcessNet::Netns(n) => n
                .lab()
                .command_in_site(i, &mut cmd)
                .with_context(|| format!("site {i}: entering its namespace"))?,
            ProcessNet::Direct { listeners, .. } => {
                if let Some(l) = listeners[i].take() {
                    let fd = inherit_listener(&mut cmd, &l);
                    cmd.arg("--listen-fd").arg(fd.to_string());
                    inherited = Some(l);
                }
            }
            ProcessNet::Relay(_) => {}
        }
        let spawned = cmd.spawn();
        drop(inherited);
        match spawned {
            Ok(mut c) => {
                // The site's network config (with the run's token) goes through a pipe:
                // it is never written to a file. A worker that died before reading it
                // is reported by the wait loop below.
                let config = serde_json::to_vec(&network.site_configs()[i])?;
                if let Some(mut stdin) = c.stdin.take() {
                    let _ = std::io::Write::write_all(&mut stdin, &config);
                }
                if let Some(out) = c.stdout.take() {
                    readers.push(read_round_lines(i, out, rows_tx.clone()));
                }
                workers.0.push((i, c));
            }
            Err(e) => bail!("starting worker for site {i} ({}): {e}", exe.display()),
        }
    }
    drop(rows_tx);
    // Failures as they are seen; after the first, the others get a moment to exit on their
    // own, so the root cause (a crash) and its consequences (peers whose links closed) are
    // all named, root cause first, whatever order the processes happened to exit in.
    let mut failures: Vec<String> = Vec::new();
    let mut first_failure: Option<Instant> = None;
    while !workers.0.is_empty() {
        let mut still = Vec::new();
        for (i, mut c) in std::mem::take(&mut workers.0) {
            match c.try_wait() {
                Ok(Some(status)) if status.success() => {}
                Ok(Some(status)) => {
                    let msg = std::fs::read_to_string(dir.join(format!("error-site{i}.txt")))
                        .unwrap_or_else(|_| format!("worker exited with {status}"));
                    failures.push(format!("site {i} failed: {}", msg.trim()));
                }
                Ok(None) => still.push((i, c)),
                Err(e) => {
                    failures.push(format!("site {i}: waiting for the worker: {e}"));
                    let _ = c.kill();
                    let _ = c.wait();
                }
            }
        }
        workers.0 = still;
        let mut rows_failure = None;
        push_rows(&rows_rx, &mut rows_failure);
        failures.extend(rows_failure);
        if !failures.is_empty() {
            let since = *first_failure.get_or_insert_with(Instant::now);
            if since.elapsed() >= FAILURE_GRACE {
                kill_all(&mut workers.0);
                break;
            }
        }
        std::thread::sleep(Duration::from_millis(20));
    }
    failures.sort_by_key(|f| is_consequence(f));
    if let (ProcessNet::Relay(r), false) = (&network, failures.is_empty()) {
        // Whoever the relay turned away is named: a stranger, not a site, may be the cause.
        for s in r.strangers() {
            failures.push(format!("the relay turned away {s}"));
        }
    }
    let mut failure = (!failures.is_empty()).then(|| failures.join("; "));
    drop(workers);
    for r in readers {
        let _ = r.join();
    }
    push_rows(&rows_rx, &mut failure);
    match network {
        ProcessNet::Relay(r) => drop(r),
        ProcessNet::Direct { .. } => {}
        ProcessNet::Netns(n) => {
            if let Err(e) = n.close() {
                failure.get_or_insert(format!("removing the run's network namespaces: {e}"));
            }
        }
    }
    if let Some(f) = failure {
        bail!(f);
    }
    read_site_reports(cfg, dir)
}

/// A thread forwarding the round rows a worker prints (see [`sink::StdoutRounds`]); other
/// lines are passed on to the log.
fn read_round_lines(
    site: usize,
    out: std::process::ChildStdout,
    tx: std::sync::mpsc::Sender<Result<Vec<RoundRow>>>,
) -> std::thread::JoinHandle<()> {
    std::thread::spawn(move || {
        use std::io::BufRead;
        for line in std::io::BufReader::new(out).lines() {
            let Ok(line) = line else { break };
            match sink::parse_rounds_line(&line) {
                Some(rows) => {
                    let _ = tx.send(rows.with_context(|| format!("site {site}")));
                }
                None => tracing::info!("worker {site}: {line}"),
            }
        }
    })
}

/// Make the worker receive SIGKILL when the process that started it dies (Linux
/// `PR_SET_PDEATHSIG`), so a killed orchestrator leaves no worker waiting out its connect
/// timeout. The signal follows the *thread* that spawned the worker, which here is the one
/// that also waits for it. If the parent is already gone when the child starts, the child
/// exits at once.
fn die_with_parent(cmd: &mut Command) {
    use std::os::unix::process::CommandExt;
    let parent = std::process::id() as libc::pid_t;
    // SAFETY: the closure runs in the child between fork and exec and only makes
    // async-signal-safe system calls (prctl, getppid, _exit).
    unsafe {
        cmd.pre_exec(move || {
            if libc::prctl(
                libc::PR_SET_PDEATHSIG,
                libc::SIGKILL as libc::c_ulong,
                0,
                0,
                0,
            ) != 0
            {
                return Err(std::io::Error::last_os_error());
            }
            if libc::getppid() != parent {
                libc::_exit(1);
            }
            Ok(())
        });
    }
}

/// How long the other workers of a failed run may take to exit on their own.
const FAILURE_GRACE: Duration = Duration::from_millis(500);

/// Whether a site's error reads as the consequence of another site's failure (its link
/// closed or went quiet) rather than a cause.
fn is_consequence(error: &str) -> bool {
    ["connection closed", "no message within", "stalled mid-"]
        .iter()
        .any(|m| error.contains(m))
}

fn kill_all(children: &mut Vec<(usize, Child)>) {
    for (_, c) in children.iter_mut() {
        let _ = c.kill();
    }
    for (_, c) in children.iter_mut() {
        let _ = c.wait();
    }
    children.clear();
}

/// Entry point of `fomoe worker`: one endpoint of a run on a real backend. Its network
/// config ([`crate::net::tcp::SiteNetConfig`], which holds the run's token) arrives as JSON
/// on stdin from the orchestrator, never through a file. `listen_fd`: the listener the
/// orchestrator bound for this endpoint and left open across `exec` (`tcp`).
pub fn worker_main(
    dir: &Path,
    endpoint: usize,
    reg: &MethodRegistry,
    listen_fd: Option<i32>,
) -> Result<()> {
    let result = (|| -> Result<()> {
        let cfg: RunConfig = serde_json::from_str(
            &std::fs::read_to_string(dir.join("config.json")).context("reading config.json")?,
        )?;
        tch::set_num_threads(threads_per_site(&cfg) as i32);
        let sc: crate::net::tcp::SiteNetConfig =
            serde_json::from_reader(std::io::stdin().lock())
                .context("reading the site's network config from stdin")?;
        let mut comm = match listen_fd {
            None => crate::net::tcp::TcpComm::connect(&sc)?,
            Some(fd) => {
                use std::os::fd::FromRawFd;
                // SAFETY: the orchestrator passes the number of a listening socket it left
                // open for this process alone; nothing else in this process owns it.
                let listener = unsafe { std::net::TcpListener::from_raw_fd(fd) };
                let bound = listener.local_addr().ok();
                if bound != sc.listen {
                    bail!(
                        "--listen-fd {fd} is bound to {bound:?}, the network config says {:?}",
                        sc.listen
                    );
                }
                crate::net::tcp::TcpComm::connect_on(&sc, Some(listener))?
            }
        };
        let rounds = Box::new(sink::StdoutRounds);
        run_endpoint_to(&cfg, dir, endpoint, &mut comm, reg, None, rounds)?;
        Ok(())
    })();
    if let Err(e) = &result {
        let _ = crate::results::write_atomic(
            &dir.join(format!("error-site{endpoint}.txt")),
            format!("{e:#}").as_bytes(),
        );
    }
    result
}
