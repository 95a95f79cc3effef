//! Tests of the netns lab. Those that need root and namespaces skip (printing why) where they
//! are unavailable, except under `CI=true`, where they must run.

use std::collections::HashSet;
use std::fs;
use std::io::{BufRead, BufReader};
use std::net::TcpListener;
use std::panic::{catch_unwind, AssertUnwindSafe};
use std::process::{Command, Stdio};
use std::sync::mpsc;
use std::time::{Duration, Instant};

use super::*;

fn lab_with(sites: usize, opts: &LabOptions) -> Option<NetnsLab> {
    match NetnsLab::with_options(sites, opts) {
        Ok(l) => Some(l),
        Err(e) if should_skip(&e) => {
            eprintln!("skipped: {e}");
            None
        }
        Err(e) => panic!("netns lab: {e}"),
    }
}

fn lab(sites: usize) -> Option<NetnsLab> {
    lab_with(sites, &LabOptions::default())
}

fn thread_netns() -> String {
    fs::read_link("/proc/thread-self/ns/net")
        .expect("readlink /proc/thread-self/ns/net")
        .to_string_lossy()
        .into_owned()
}

/// Tasks (threads of any process) whose network namespace is `net:[ino]` for one of `inodes`.
fn tasks_in(inodes: &HashSet<u64>) -> Vec<String> {
    let mut found = Vec::new();
    let Ok(procs) = fs::read_dir("/proc") else {
        return found;
    };
    for p in procs.flatten() {
        let Ok(tasks) = fs::read_dir(p.path().join("task")) else {
            continue;
        };
        for t in tasks.flatten() {
            if let Ok(l) = fs::read_link(t.path().join("ns/net")) {
                let l = l.to_string_lossy().into_owned();
                let ino = l
                    .strip_prefix("net:[")
                    .and_then(|r| r.strip_suffix(']'))
                    .and_then(|n| n.parse::<u64>().ok());
                if ino.is_some_and(|i| inodes.contains(&i)) {
                    found.push(t.path().display().to_string());
                }
            }
        }
    }
    found
}

/// Inodes of the namespaces pinned in `/run/netns` by other labs (other prefixes). The kernel
/// reuses the inode number of a destroyed namespace for the next one created, so a concurrent
/// test's new namespace may carry a number that was ours; a number seen there is such a reuse,
/// which itself proves ours was destroyed.
fn inodes_of_other_labs(prefix: &str) -> HashSet<u64> {
    use std::os::unix::fs::MetadataExt;
    let mut set = HashSet::new();
    for name in list_namespaces("").unwrap() {
        if !name.starts_with(prefix) {
            if let Ok(m) = fs::metadata(Path::new(NETNS_DIR).join(&name)) {
                set.insert(m.ino());
            }
        }
    }
    set
}

/// Nothing of a lab remains: no `/run/netns` entry with its prefix, no mount and no task
/// referencing its namespaces, no `fmoe-` interface in this (the root) namespace.
fn assert_nothing_left(prefix: &str, inodes: &[u64]) {
    assert_eq!(list_namespaces(prefix).unwrap(), Vec::<String>::new());
    // A joined thread can still be finishing its exit for a moment: poll, bounded.
    let deadline = Instant::now() + Duration::from_secs(2);
    loop {
        let reused = inodes_of_other_labs(prefix);
        let ours: HashSet<u64> = inodes
            .iter()
            .copied()
            .filter(|i| !reused.contains(i))
            .collect();
        let mountinfo = fs::read_to_string("/proc/self/mountinfo").unwrap();
        let mounted: Vec<u64> = ours
            .iter()
            .copied()
            .filter(|i| mountinfo.contains(&format!("net:[{i}]")))
            .collect();
        let tasks = tasks_in(&ours);
        if mounted.is_empty() && tasks.is_empty() {
            break;
        }
        assert!(
            Instant::now() < deadline,
            "lab namespaces still referenced: mounted {mounted:?}, tasks {tasks:?}"
        );
        std::thread::sleep(Duration::from_millis(10));
    }
    let mountinfo = fs::read_to_string("/proc/self/mountinfo").unwrap();
    assert!(!mountinfo.contains(&format!("{NETNS_DIR}/{prefix}")));
    let root_links = current_link_names().unwrap();
    assert!(
        root_links.iter().all(|n| !n.starts_with("fmoe-")),
        "lab interface in the root namespace: {root_links:?}"
    );
}

#[test]
fn config_errors_name_the_field_before_any_privilege_check() {
    let e = NetnsLab::new(0).err().unwrap();
    assert_eq!(e.to_string(), "netns config: sites = 0: 1..=250");
    let e = NetnsLab::new(MAX_SITES + 1).err().unwrap();
    assert_eq!(e.to_string(), "netns config: sites = 251: 1..=250");
    let opts = LabOptions {
        mtu_bytes: 40,
        ..LabOptions::default()
    };
    let e = NetnsLab::with_options(2, &opts).err().unwrap();
    assert_eq!(e.to_string(), "netns config: mtu_bytes = 40: 68..=65535");
    let opts = LabOptions {
        name_prefix: "Bad/".into(),
        ..LabOptions::default()
    };
    let e = NetnsLab::with_options(2, &opts).err().unwrap();
    assert!(
        e.to_string()
            .starts_with("netns config: name_prefix = \"Bad/\""),
        "{e}"
    );
}

#[test]
fn unavailable_is_one_line_and_skippable() {
    let e =
        NetnsError::Unavailable("needs root to create network namespaces (euid is 1000)".into());
    assert_eq!(
        e.to_string(),
        "netns backend unavailable: needs root to create network namespaces (euid is 1000)"
    );
    assert!(!e.to_string().contains('\n'));
    assert!(e.is_unavailable());
    assert_eq!(
        should_skip(&e),
        std::env::var("CI").as_deref() != Ok("true")
    );
    let other = NetnsError::Transfer("x".into());
    assert!(!should_skip(&other));
}

#[test]
fn defaults_for_burst_and_queue() {
    // 50 Mbit/s at MTU 9000: four frames (36_056 B) beat 4 ms of rate (25_000 B).
    assert_eq!(default_burst_bytes(50_000_000, 9000), 36_056);
    // 1 Gbit/s: 4 ms of rate, 500_000 B.
    assert_eq!(default_burst_bytes(1_000_000_000, 9000), 500_000);
    // queue = burst + 50 ms of rate, at least 32 frames of (mtu + 14) bytes
    assert_eq!(
        default_queue_bytes(50_000_000, 36_056, 9000),
        36_056 + 312_500
    );
    assert_eq!(
        default_queue_bytes(10_000_000, 36_056, 9000),
        36_056 + 32 * 9014
    );
    assert_eq!(default_queue_bytes(10_000_000, 6_056, 1500), 6_056 + 62_500);
    assert!((tcp_payload_fraction(1500) - 1448.0 / 1514.0).abs() < 1e-12);
    assert!((tcp_payload_fraction(9000) - 8948.0 / 9014.0).abs() < 1e-12);
    assert_eq!(site_ipv4(0), Ipv4Addr::new(10, 213, 0, 1));
    assert_eq!(site_ipv4(249), Ipv4Addr::new(10, 213, 0, 250));
}

#[test]
fn namespaces_are_created_listed_and_wired() {
    let Some(lab) = lab(3) else { return };
    let names = lab.namespace_names();
    assert_eq!(names.len(), 4);
    assert_eq!(names[0], format!("{}hub", lab.prefix()));
    for i in 0..3 {
        assert_eq!(names[i + 1], format!("{}s{i}", lab.prefix()));
        assert_eq!(lab.site_netns_name(i).unwrap(), names[i + 1]);
        assert_eq!(
            lab.site_netns_path(i).unwrap(),
            Path::new(NETNS_DIR).join(&names[i + 1])
        );
    }
    let mut sorted = names.clone();
    sorted.sort();
    assert_eq!(list_namespaces(lab.prefix()).unwrap(), sorted);
    assert!(lab
        .prefix()
        .starts_with(&format!("{DEFAULT_PREFIX}{}-", std::process::id())));

    let mut hub = lab.hub_link_names().unwrap();
    hub.sort();
    assert_eq!(hub, ["fmoe-br", "fmoe-h0", "fmoe-h1", "fmoe-h2", "lo"]);
    let outer = thread_netns();
    let inodes = lab.namespace_inodes();
    for i in 0..3 {
        let mut links = lab.site_link_names(i).unwrap();
        links.sort();
        assert_eq!(links, [site_link_name(i), "lo".to_string()]);
        // f runs inside the site's namespace; the caller's thread does not move.
        let inner = lab.in_site(i, thread_netns).unwrap();
        assert_eq!(inner, format!("net:[{}]", inodes[i + 1]));
        assert_ne!(inner, outer);
        assert_eq!(thread_netns(), outer);
        // The site's address is local in its own namespace and in no other.
        let addr = lab.site_addr(i).unwrap();
        assert_eq!(addr, site_ipv4(i));
        for j in 0..3 {
            let bound = lab
                .in_site(j, || TcpListener::bind((addr, 0)).is_ok())
                .unwrap();
            assert_eq!(bound, i == j, "address of site {i} bindable in site {j}");
        }
    }
    assert!(matches!(
        lab.site_addr(3),
        Err(NetnsError::NoSuchSite { site: 3, sites: 3 })
    ));
    let spawned = lab
        .spawn_in_site(2, thread_netns)
        .unwrap()
        .join()
        .unwrap()
        .unwrap();
    assert_eq!(spawned, format!("net:[{}]", inodes[3]));
}

#[test]
fn tcp_traffic_flows_between_sites() {
    let Some(lab) = lab(2) else { return };
    let before = lab.site_counters(0).unwrap();
    let bytes = 4 << 20;
    let s = measure_tcp_transfer(&lab, 0, 1, bytes, Duration::from_secs(5)).unwrap();
    assert_eq!(s.bytes, bytes);
    let back = measure_tcp_transfer(&lab, 1, 0, 1 << 20, Duration::from_secs(5)).unwrap();
    assert_eq!(back.bytes, 1 << 20);
    let after = lab.site_counters(0).unwrap();
    // Every payload byte left site 0 through its veth, and came back in on it.
    assert!(after.tx_bytes - before.tx_bytes >= bytes);
    assert!(after.rx_bytes - before.rx_bytes >= 1 << 20);
    // A site does not send to itself through the lab.
    assert!(measure_tcp_transfer(&lab, 1, 1, 10, Duration::from_secs(1)).is_err());
}

#[test]
fn tbf_limits_rate_both_directions() {
    let Some(lab) = lab(2) else { return };
    let rate_bps = 50_000_000u64;
    lab.shape_site(0, &SiteShape::symmetric(rate_bps)).unwrap();
    let burst = default_burst_bytes(rate_bps, lab.mtu_bytes()) as f64;
    let bytes = 4u64 << 20;
    // Up (tbf on the site end) then down (tbf on the hub end).
    for (from, to) in [(0, 1), (1, 0)] {
        let s = measure_tcp_transfer(&lab, from, to, bytes, Duration::from_secs(5)).unwrap();
        assert_eq!(s.bytes, bytes);
        let ratio = s.goodput_bps / rate_bps as f64;
        eprintln!(
            "tbf {rate_bps} bit/s, {from}->{to}: goodput {:.0} bit/s, ratio {ratio:.4}, span {:?}",
            s.goodput_bps, s.span
        );
        assert!(ratio >= 0.95, "goodput {ratio:.4} of the rate, below 0.95");
        // Payload in the span cannot exceed what the bucket lets through.
        let timed_bits = (s.bytes - s.first_read_bytes) as f64 * 8.0;
        let allowed_bits = rate_bps as f64 * s.span.as_secs_f64() + burst * 8.0;
        assert!(
            timed_bits <= allowed_bits,
            "{timed_bits} bits in {:?} > {allowed_bits}",
            s.span
        );
    }
    // Removing the shape lifts the limit well above the rate.
    lab.shape_site(0, &SiteShape::default()).unwrap();
    let s = measure_tcp_transfer(&lab, 0, 1, bytes, Duration::from_secs(5)).unwrap();
    assert!(
        s.goodput_bps > 4.0 * rate_bps as f64,
        "unshaped goodput {}",
        s.goodput_bps
    );
}

#[test]
fn bad_shapes_are_rejected_with_the_field() {
    let Some(lab) = lab(1) else { return };
    let e = lab
        .shape_site(
            0,
            &SiteShape {
                up_rate_bps: Some(0),
                ..SiteShape::default()
            },
        )
        .unwrap_err();
    assert_eq!(
        e.to_string(),
        "netns config: up_rate_bps = 0: 8000..=100000000000 bit/s"
    );
    let e = lab
        .shape_site(
            0,
            &SiteShape {
                down_rate_bps: Some(10_000_000),
                burst_bytes: Some(1000),
                ..SiteShape::default()
            },
        )
        .unwrap_err();
    assert_eq!(
        e.to_string(),
        "netns config: burst_bytes = 1000: at least one frame, mtu + 14 = 9014 bytes"
    );
    assert!(matches!(
        lab.shape_site(1, &SiteShape::default()),
        Err(NetnsError::NoSuchSite { site: 1, sites: 1 })
    ));
}

#[test]
fn netem_probe_matches_kernel_config() {
    let Some(lab) = lab(1) else { return };
    let probed = probe_netem().unwrap();
    assert_eq!(lab.has_netem(), probed);
    match lab.require_netem() {
        Ok(()) => assert!(probed),
        Err(e) => {
            assert!(!probed);
            assert!(matches!(e, NetnsError::Unsupported(_)));
            assert_eq!(
                e.to_string(),
                "netns backend: unsupported here: the kernel has no netem qdisc \
                 (CONFIG_NET_SCH_NETEM unset): delay and jitter must come from the relay"
            );
        }
    }
    // Where the kernel exposes its config, the probe must agree with it.
    if let Ok(out) = Command::new("sh")
        .arg("-c")
        .arg("zcat /proc/config.gz 2>/dev/null | grep -E '^(# )?CONFIG_NET_SCH_NETEM[ =]'")
        .output()
    {
        let line = String::from_utf8_lossy(&out.stdout).trim().to_string();
        if line == "# CONFIG_NET_SCH_NETEM is not set" {
            assert!(!probed, "config says no netem, probe found one");
        } else if line == "CONFIG_NET_SCH_NETEM=y" {
            assert!(probed, "netem is built in, probe did not find it");
        }
        eprintln!("kernel config: {line:?}; has_netem = {probed}");
    }
}

#[test]
fn nothing_left_after_drop() {
    let Some(lab) = lab(2) else { return };
    let prefix = lab.prefix().to_string();
    let inodes = lab.namespace_inodes();
    assert_eq!(list_namespaces(&prefix).unwrap().len(), 3);
    lab.shape_site(1, &SiteShape::symmetric(100_000_000))
        .unwrap();
    let s = measure_tcp_transfer(&lab, 0, 1, 256 << 10, Duration::from_secs(5)).unwrap();
    assert_eq!(s.bytes, 256 << 10);
    drop(lab);
    assert_nothing_left(&prefix, &inodes);
}

#[test]
fn panic_inside_catch_unwind_cleans_up() {
    let seen = std::sync::Mutex::new(None);
    let r = catch_unwind(AssertUnwindSafe(|| {
        let Some(lab) = lab(2) else { return false };
        *seen.lock().unwrap() = Some((lab.prefix().to_string(), lab.namespace_inodes()));
        let _listener = lab
            .in_site(1, || TcpListener::bind((site_ipv4(1), 0)))
            .unwrap()
            .unwrap();
        panic!("deliberate panic while the lab is alive");
    }));
    let Some((prefix, inodes)) = seen.into_inner().unwrap() else {
        return; // skipped
    };
    assert!(r.is_err(), "the closure must have panicked");
    assert_nothing_left(&prefix, &inodes);
}

#[test]
fn panic_in_site_closure_reaches_the_caller() {
    let Some(lab) = lab(1) else { return };
    let outer = thread_netns();
    let r = catch_unwind(AssertUnwindSafe(|| {
        lab.in_site(0, || -> u32 { panic!("inside the site") })
    }));
    let payload = r.unwrap_err();
    assert_eq!(payload.downcast_ref::<&str>(), Some(&"inside the site"));
    assert_eq!(thread_netns(), outer);
    assert_eq!(lab.in_site(0, || 7).unwrap(), 7);
}

/// Prefix the child processes use, distinct from the default so that labs created by other
/// tests (which clean stale `fomoe-` names) never touch the child's leftovers.
const CHILD_PREFIX: &str = "fomoet-";
const CHILD_ENV: &str = "FOMOE_NETNS_CHILD";

/// Not a test on its own: the body of the child process of the signal tests. It builds a lab,
/// prints its prefix and waits (bounded) to be signalled.
#[test]
#[ignore = "run as a child process by the signal tests"]
fn child_lab_waits_for_signal() {
    let Ok(mode) = std::env::var(CHILD_ENV) else {
        return;
    };
    let opts = LabOptions {
        name_prefix: CHILD_PREFIX.into(),
        remove_stale: false,
        ..LabOptions::default()
    };
    let lab = NetnsLab::with_options(2, &opts).unwrap();
    println!("NETNS-PREFIX {}", lab.prefix());
    if mode == "cleanup-live" {
        // Done in a child: it removes every live lab of the process, and the test process
        // has other tests' labs alive.
        assert_eq!(list_namespaces(lab.prefix()).unwrap().len(), 3);
        cleanup_live_labs().unwrap();
        assert_eq!(list_namespaces(lab.prefix()).unwrap(), Vec::<String>::new());
        drop(lab); // finds nothing left
        return;
    }
    std::thread::sleep(Duration::from_secs(10));
}

/// Starts the child in `mode`, returns it with the lab prefix it printed.
fn start_child(mode: &str) -> (std::process::Child, String) {
    let exe = std::env::current_exe().unwrap();
    let mut child = Command::new(exe)
        .args([
            "net::netns::tests::child_lab_waits_for_signal",
            "--exact",
            "--ignored",
            "--nocapture",
            "--test-threads=1",
        ])
        .env(CHILD_ENV, mode)
        .stdout(Stdio::piped())
        .stderr(Stdio::null())
        .spawn()
        .unwrap();
    let stdout = child.stdout.take().unwrap();
    let (tx, rx) = mpsc::channel();
    std::thread::spawn(move || {
        for line in BufReader::new(stdout).lines().map_while(|l| l.ok()) {
            // libtest prints "test <name> ... " without a newline before the body's output.
            if let Some((_, p)) = line.split_once("NETNS-PREFIX ") {
                let _ = tx.send(p.trim().to_string());
            }
        }
    });
    match rx.recv_timeout(Duration::from_secs(10)) {
        Ok(prefix) => (child, prefix),
        Err(_) => {
            let _ = child.kill();
            let _ = child.wait();
            panic!("child lab did not report its prefix within 10 s");
        }
    }
}

fn wait_bounded(child: &mut std::process::Child) -> std::process::ExitStatus {
    let deadline = Instant::now() + Duration::from_secs(10);
    loop {
        if let Some(st) = child.try_wait().unwrap() {
            return st;
        }
        if Instant::now() > deadline {
            let _ = child.kill();
            panic!("child did not exit within 10 s of the signal");
        }
        std::thread::sleep(Duration::from_millis(10));
    }
}

#[test]
fn sigterm_removes_the_namespaces() {
    use std::os::unix::process::ExitStatusExt;
    if let Err(e) = ns::check_root() {
        if should_skip(&e) {
            eprintln!("skipped: {e}");
            return;
        }
        panic!("{e}");
    }
    let (mut child, prefix) = start_child("wait");
    assert_eq!(list_namespaces(&prefix).unwrap().len(), 3);
    let pid = nix::unistd::Pid::from_raw(child.id() as i32);
    nix::sys::signal::kill(pid, nix::sys::signal::Signal::SIGTERM).unwrap();
    let status = wait_bounded(&mut child);
    assert_eq!(
        status.signal(),
        Some(libc::SIGTERM),
        "child status {status:?}"
    );
    assert_eq!(list_namespaces(&prefix).unwrap(), Vec::<String>::new());
}

#[test]
fn cleanup_live_labs_removes_namespaces_of_live_labs() {
    if let Err(e) = ns::check_root() {
        if should_skip(&e) {
            eprintln!("skipped: {e}");
            return;
        }
        panic!("{e}");
    }
    let (mut child, prefix) = start_child("cleanup-live");
    let status = wait_bounded(&mut child);
    assert!(status.success(), "child status {status:?}");
    assert_eq!(list_namespaces(&prefix).unwrap(), Vec::<String>::new());
}

#[test]
fn cleanup_stale_removes_dead_runs_only() {
    let Some(own) = lab_with(
        1,
        &LabOptions {
            name_prefix: CHILD_PREFIX.into(),
            remove_stale: false,
            ..LabOptions::default()
        },
    ) else {
        return;
    };
    let (mut child, prefix) = start_child("wait");
    child.kill().unwrap(); // SIGKILL: no handler runs, the namespaces stay
    wait_bounded(&mut child);
    let left = list_namespaces(&prefix).unwrap();
    assert_eq!(left.len(), 3, "SIGKILL leaves the namespaces: {left:?}");
    let removed = cleanup_stale(CHILD_PREFIX).unwrap();
    for n in &left {
        assert!(removed.contains(n), "{n} not removed: {removed:?}");
    }
    assert!(removed.iter().all(|n| !n.starts_with(own.prefix())));
    assert_eq!(list_namespaces(&prefix).unwrap(), Vec::<String>::new());
    assert_eq!(list_namespaces(own.prefix()).unwrap().len(), 2);
}

/// The rate sweep behind the report: `cargo test --release -p fomoe-harness
/// tbf_rate_sweep -- --ignored --nocapture` (optionally `FOMOE_NETNS_MTU=1500`).
/// About 3 s of transfer per rate.
#[test]
#[ignore = "measurement, run by hand"]
fn tbf_rate_sweep() {
    // FOMOE_NETNS_MTU=1500 measures at the common Internet MTU instead of the default 9000.
    let mtu_bytes = match std::env::var("FOMOE_NETNS_MTU") {
        Ok(v) => v
            .parse()
            .expect("FOMOE_NETNS_MTU must be an integer number of bytes"),
        Err(_) => LabOptions::default().mtu_bytes,
    };
    let opts = LabOptions {
        mtu_bytes,
        ..LabOptions::default()
    };
    let Some(lab) = lab_with(2, &opts) else {
        return;
    };
    println!("mtu {mtu_bytes} bytes");
    for rate_bps in [10_000_000u64, 100_000_000, 1_000_000_000] {
        lab.shape_site(0, &SiteShape::symmetric(rate_bps)).unwrap();
        let bytes = (rate_bps / 8 * 3).clamp(4 << 20, 512 << 20);
        let s = measure_tcp_transfer(&lab, 0, 1, bytes, Duration::from_secs(30)).unwrap();
        println!(
            "rate {rate_bps} bit/s  bytes {bytes}  span {:.3} s  goodput {:.0} bit/s  \
             goodput/rate {:.4}  expected payload fraction {:.4}",
            s.span.as_secs_f64(),
            s.goodput_bps,
            s.goodput_bps / rate_bps as f64,
            tcp_payload_fraction(lab.mtu_bytes())
        );
    }
    lab.shape_site(0, &SiteShape::default()).unwrap();
    let s = measure_tcp_transfer(&lab, 0, 1, 512 << 20, Duration::from_secs(30)).unwrap();
    println!("unshaped: goodput {:.0} bit/s", s.goodput_bps);
}
