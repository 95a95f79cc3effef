//! Whole-file writes that are atomic on POSIX file systems: write a temporary file in the
//! same directory, fsync it, rename it over the target, fsync the directory. A reader (or a
//! crash at any instant) sees either the old file or the new one, never a mix.
//!
//! Temporaries are named `.<name>.<pid>-<n>.tmp`. A process killed mid-write leaves its
//! temporary behind; the next atomic write of the same target removes temporaries whose
//! process is gone, so they do not pile up.

use std::fs::{self, File};
use std::io::Write;
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicU64, Ordering};

use super::ResultsError;

static COUNTER: AtomicU64 = AtomicU64::new(0);

fn io_err(path: &Path) -> impl FnOnce(std::io::Error) -> ResultsError + '_ {
    move |error| ResultsError::Io {
        path: path.to_path_buf(),
        error,
    }
}

/// Replace `path` with `bytes` atomically.
pub fn write_atomic(path: &Path, bytes: &[u8]) -> Result<(), ResultsError> {
    let dir = match path.parent() {
        Some(d) if !d.as_os_str().is_empty() => d.to_path_buf(),
        _ => PathBuf::from("."),
    };
    let name = path
        .file_name()
        .and_then(|n| n.to_str())
        .ok_or_else(|| ResultsError::Invalid {
            path: path.to_path_buf(),
            reason: "not a file name".into(),
        })?;
    remove_stale_temporaries(&dir, name);
    let n = COUNTER.fetch_add(1, Ordering::Relaxed);
    let tmp = dir.join(format!(".{name}.{}-{n}.tmp", std::process::id()));
    let result = (|| {
        let mut f = File::create(&tmp).map_err(io_err(&tmp))?;
        f.write_all(bytes).map_err(io_err(&tmp))?;
        f.sync_all().map_err(io_err(&tmp))?;
        drop(f);
        fs::rename(&tmp, path).map_err(io_err(path))
    })();
    if result.is_err() {
        let _ = fs::remove_file(&tmp);
        return result;
    }
    // Make the rename itself durable; best effort (some file systems refuse to sync a dir).
    if let Ok(d) = File::open(&dir) {
        let _ = d.sync_all();
    }
    Ok(())
}

/// Temporaries of `name` in `dir` left by processes that no longer exist.
pub fn stale_temporaries(dir: &Path, name: &str) -> Vec<PathBuf> {
    let prefix = format!(".{name}.");
    let Ok(entries) = fs::read_dir(dir) else {
        return Vec::new();
    };
    entries
        .filter_map(|e| e.ok())
        .filter_map(|e| {
            let file = e.file_name().to_str()?.to_string();
            let rest = file.strip_prefix(&prefix)?.strip_suffix(".tmp")?;
            let pid: i32 = rest.split('-').next()?.parse().ok()?;
            (!process_alive(pid)).then(|| e.path())
        })
        .collect()
}

fn remove_stale_temporaries(dir: &Path, name: &str) {
    for p in stale_temporaries(dir, name) {
        let _ = fs::remove_file(p);
    }
}

/// Whether a process with this pid exists (signal 0; EPERM counts as existing).
pub(crate) fn process_alive(pid: i32) -> bool {
    if pid <= 0 {
        return false;
    }
    if pid as u32 == std::process::id() {
        return true;
    }
    // Signal 0 probes for existence; EPERM means it exists under another user.
    match nix::sys::signal::kill(nix::unistd::Pid::from_raw(pid), None) {
        Ok(()) => true,
        Err(e) => e == nix::errno::Errno::EPERM,
    }
}

/// Every temporary (stale or live) of any file in `dir`: used by tests and `fomoe report`.
pub fn temporaries_in(dir: &Path) -> Vec<PathBuf> {
    let Ok(entries) = fs::read_dir(dir) else {
        return Vec::new();
    };
    let mut out: Vec<PathBuf> = entries
        .filter_map(|e| e.ok())
        .filter(|e| {
            e.file_name()
                .to_str()
                .is_some_and(|n| n.starts_with('.') && n.ends_with(".tmp"))
        })
        .map(|e| e.path())
        .collect();
    out.sort();
    out
}
