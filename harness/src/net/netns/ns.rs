//! Named network namespaces (`/run/netns/<name>`, the `ip netns` convention), entering them,
//! and removing them on every exit path.
//!
//! A namespace is created on a throwaway thread: `unshare(CLONE_NEWNET)` moves only that
//! thread into a new namespace, which is then pinned by bind-mounting
//! `/proc/thread-self/ns/net` onto an empty file `/run/netns/<name>`. Removing it is the
//! reverse (lazy unmount, unlink); the kernel destroys the namespace, and every interface in
//! it, once the last reference (mount, open fd, socket, thread) is gone.
//!
//! Names are `<prefix><pid>-<n>-<role>`; the pid lets [`cleanup_stale`] tell leftovers of dead
//! runs from namespaces of live ones. Labs register their name prefix here; a SIGINT, SIGTERM
//! or SIGHUP handler ([`install_signal_cleanup`]) removes every registered lab's namespaces,
//! then ends the process as the signal would have.

use std::fs::{self, File, OpenOptions};
use std::io;
use std::os::fd::AsFd;
use std::os::unix::fs::{MetadataExt, OpenOptionsExt};
use std::path::{Path, PathBuf};
use std::sync::{Mutex, OnceLock};

use nix::errno::Errno;
use nix::mount::{mount, umount2, MntFlags, MsFlags};
use nix::sched::{setns, unshare, CloneFlags};

use super::error::{NetnsError, Result};
use super::nl::Nl;

/// Where named network namespaces live (shared with `ip netns`).
pub const NETNS_DIR: &str = "/run/netns";

/// One pinned namespace: its name, file, an open fd on it (for `setns`) and a netlink socket
/// that acts inside it.
pub(crate) struct Ns {
    pub name: String,
    pub path: PathBuf,
    pub file: File,
    pub inode: u64,
    pub nl: Mutex<Nl>,
}

/// Prefixes of labs alive in this process, for the signal handler.
static LIVE_PREFIXES: Mutex<Vec<String>> = Mutex::new(Vec::new());
static SIGNAL_HANDLER: OnceLock<std::result::Result<(), String>> = OnceLock::new();

fn live() -> std::sync::MutexGuard<'static, Vec<String>> {
    LIVE_PREFIXES.lock().unwrap_or_else(|p| p.into_inner())
}

pub(crate) fn register(prefix: &str) {
    live().push(prefix.to_string());
}

pub(crate) fn unregister(prefix: &str) {
    live().retain(|p| p != prefix);
}

/// Checks that this process can create network namespaces: effective uid 0. (The namespace
/// creation itself reports EPERM as [`NetnsError::Unavailable`] too, for containers that
/// are root without CAP_SYS_ADMIN.)
pub(crate) fn check_root() -> Result<()> {
    let euid = nix::unistd::geteuid();
    if !euid.is_root() {
        return Err(NetnsError::Unavailable(format!(
            "needs root to create network namespaces (euid is {euid})"
        )));
    }
    Ok(())
}

/// Creates `/run/netns/<name>` holding a new network namespace, and opens a netlink socket
/// inside it. On failure nothing is left behind.
pub(crate) fn create(name: &str) -> Result<Ns> {
    fs::create_dir_all(NETNS_DIR).map_err(|e| NetnsError::io(format!("mkdir {NETNS_DIR}"), e))?;
    let path = Path::new(NETNS_DIR).join(name);
    let thread_path = path.clone();
    let thread_name = name.to_string();
    let worker = std::thread::Builder::new()
        .name(format!("netns-create-{name}"))
        .spawn(move || -> Result<(Nl, u64)> {
            unshare(CloneFlags::CLONE_NEWNET).map_err(|e| {
                if e == Errno::EPERM || e == Errno::EINVAL || e == Errno::ENOSYS {
                    NetnsError::Unavailable(format!("unshare(CLONE_NEWNET) failed: {e}"))
                } else {
                    NetnsError::nix("unshare(CLONE_NEWNET)", e)
                }
            })?;
            OpenOptions::new()
                .read(true)
                .write(true)
                .create_new(true)
                .mode(0o444)
                .open(&thread_path)
                .map_err(|e| NetnsError::io(format!("create {}", thread_path.display()), e))?;
            if let Err(e) = mount(
                Some("/proc/thread-self/ns/net"),
                &thread_path,
                None::<&str>,
                MsFlags::MS_BIND,
                None::<&str>,
            ) {
                let _ = fs::remove_file(&thread_path);
                return Err(NetnsError::nix(
                    format!("bind-mount namespace {thread_name}"),
                    e,
                ));
            }
            let inode = fs::metadata("/proc/thread-self/ns/net")
                .map_err(|e| NetnsError::io("stat /proc/thread-self/ns/net", e))?
                .ino();
            let nl = Nl::open()?;
            Ok((nl, inode))
        })
        .map_err(|e| NetnsError::io("spawn namespace thread", e))?;
    let (nl, inode) = match worker.join() {
        Ok(r) => r,
        Err(p) => std::panic::resume_unwind(p),
    }
    .inspect_err(|_| {
        let _ = remove(name);
    })?;
    let file = match File::open(&path) {
        Ok(f) => f,
        Err(e) => {
            let _ = remove(name);
            return Err(NetnsError::io(format!("open {}", path.display()), e));
        }
    };
    Ok(Ns {
        name: name.to_string(),
        path,
        file,
        inode,
        nl: Mutex::new(nl),
    })
}

/// Unpins the namespace `name`: lazy unmount, then unlink. Missing pieces are not errors.
pub(crate) fn remove(name: &str) -> Result<()> {
    let path = Path::new(NETNS_DIR).join(name);
    match umount2(&path, MntFlags::MNT_DETACH) {
        Ok(()) | Err(Errno::EINVAL) | Err(Errno::ENOENT) => {}
        Err(e) => return Err(NetnsError::nix(format!("umount {}", path.display()), e)),
    }
    match fs::remove_file(&path) {
        Ok(()) => Ok(()),
        Err(e) if e.kind() == io::ErrorKind::NotFound => Ok(()),
        Err(e) => Err(NetnsError::io(format!("remove {}", path.display()), e)),
    }
}

/// Names in `/run/netns` that start with `prefix`, sorted.
pub fn list_namespaces(prefix: &str) -> Result<Vec<String>> {
    let entries = match fs::read_dir(NETNS_DIR) {
        Ok(e) => e,
        Err(e) if e.kind() == io::ErrorKind::NotFound => return Ok(Vec::new()),
        Err(e) => return Err(NetnsError::io(format!("read {NETNS_DIR}"), e)),
    };
    let mut names: Vec<String> = entries
        .filter_map(|e| e.ok())
        .filter_map(|e| e.file_name().into_string().ok())
        .filter(|n| n.starts_with(prefix))
        .collect();
    names.sort();
    Ok(names)
}

/// Removes every namespace whose name starts with `prefix`; returns the names removed.
/// All are attempted; the first error is returned after.
pub(crate) fn remove_prefixed(prefix: &str) -> Result<Vec<String>> {
    let mut removed = Vec::new();
    let mut first_err = None;
    for name in list_namespaces(prefix)? {
        match remove(&name) {
            Ok(()) => removed.push(name),
            Err(e) => {
                first_err.get_or_insert(e);
            }
        }
    }
    match first_err {
        Some(e) => Err(e),
        None => Ok(removed),
    }
}

/// Removes leftovers of dead runs: namespaces named `<prefix><pid>-...` whose `pid` is not a
/// live process here (no `/proc/<pid>`). Namespaces of live processes, including this one,
/// and names that do not parse, are kept. Returns the names removed.
pub fn cleanup_stale(prefix: &str) -> Result<Vec<String>> {
    let own_pid = std::process::id();
    let mut removed = Vec::new();
    for name in list_namespaces(prefix)? {
        let rest = &name[prefix.len()..];
        let Some(pid) = rest.split('-').next().and_then(|p| p.parse::<u32>().ok()) else {
            continue;
        };
        if pid == own_pid || Path::new(&format!("/proc/{pid}")).exists() {
            continue;
        }
        remove(&name)?;
        removed.push(name);
    }
    Ok(removed)
}

/// Moves the calling thread into the network namespace at `path` (e.g. a site's
/// `/run/netns/...` file). For a worker process: call it first thing in `main`, before any
/// thread (or tokio runtime) starts, and every thread it later creates inherits the namespace.
pub fn enter_netns(path: &Path) -> Result<()> {
    let f = File::open(path).map_err(|e| NetnsError::io(format!("open {}", path.display()), e))?;
    setns(f.as_fd(), CloneFlags::CLONE_NEWNET)
        .map_err(|e| NetnsError::nix(format!("setns into {}", path.display()), e))
}

/// Runs `f` on a fresh thread that has entered the namespace of `file`; the caller's thread
/// never changes namespace. A panic in `f` is resumed in the caller.
pub(crate) fn run_in<T: Send, F: FnOnce() -> T + Send>(file: &File, name: &str, f: F) -> Result<T> {
    std::thread::scope(|s| {
        let handle = std::thread::Builder::new()
            .name(format!("in-{name}"))
            .spawn_scoped(s, move || -> Result<T> {
                setns(file.as_fd(), CloneFlags::CLONE_NEWNET)
                    .map_err(|e| NetnsError::nix(format!("setns into {name}"), e))?;
                Ok(f())
            })
            .map_err(|e| NetnsError::io(format!("spawn thread for {name}"), e))?;
        match handle.join() {
            Ok(r) => r,
            Err(payload) => std::panic::resume_unwind(payload),
        }
    })
}

/// Removes the namespaces of every lab alive in this process, for a caller that handles
/// signals itself (and so built its labs with `install_signal_handler: false`) and is about to
/// exit. The labs' own `Drop` then finds nothing left to remove.
pub fn cleanup_live_labs() -> Result<()> {
    let prefixes = live().clone();
    let mut first_err = None;
    for p in &prefixes {
        if let Err(e) = remove_prefixed(p) {
            first_err.get_or_insert(e);
        }
    }
    first_err.map_or(Ok(()), Err)
}

/// Installs (once per process) a handler for SIGINT, SIGTERM and SIGHUP that removes the
/// namespaces of every lab alive in this process and then ends the process the way the
/// signal would have. Labs call this themselves unless told not to.
pub fn install_signal_cleanup() -> Result<()> {
    SIGNAL_HANDLER
        .get_or_init(|| {
            use signal_hook::consts::{SIGHUP, SIGINT, SIGTERM};
            let mut signals = signal_hook::iterator::Signals::new([SIGINT, SIGTERM, SIGHUP])
                .map_err(|e| format!("register signal handler: {e}"))?;
            std::thread::Builder::new()
                .name("netns-signal-cleanup".into())
                .spawn(move || {
                    if let Some(sig) = signals.forever().next() {
                        if let Err(e) = cleanup_live_labs() {
                            eprintln!("netns cleanup on signal {sig}: {e}");
                        }
                        let _ = signal_hook::low_level::emulate_default_handler(sig);
                        std::process::exit(128 + sig);
                    }
                })
                .map_err(|e| format!("spawn signal thread: {e}"))?;
            Ok(())
        })
        .clone()
        .map_err(|e| NetnsError::io("install signal cleanup", io::Error::other(e)))
}
