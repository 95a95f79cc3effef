//! One writer per suite directory: an advisory lock on `<out>/<suite>/.lock`.
//!
//! `fomoe run` takes the lock before it touches anything in the suite directory and holds
//! it until it returns. The lock is the kernel's `flock` (through the `fs4` crate), so it
//! is released whenever the holder's file descriptor closes: a clean return, an error, a
//! panic, and also a `SIGKILL` or a crash, where no code of ours runs. The file holds the
//! holder's pid, one line, for the error message of a second invocation:
//!
//! - lock taken by a live process → [`ResultsError::Locked`]: one line naming the pid;
//! - lock free but the file still names a pid (the holder died without releasing, e.g.
//!   killed) → the lock is taken over and [`SuiteLock::stale_holder`] says whose it was
//!   and whether that process still runs (pids are reused, so the flock decides, not the
//!   pid);
//! - released cleanly → the file is emptied (not removed: removing a lock file races with
//!   a process that has just opened it and would lock an orphaned inode).

use std::fs::{File, OpenOptions};
use std::io::{Read, Seek, SeekFrom, Write};
use std::path::{Path, PathBuf};

use super::ResultsError;

/// Name of the lock file inside a suite directory.
pub const LOCK_FILE: &str = ".lock";

/// A held lock on a suite directory; dropping it releases the lock.
#[derive(Debug)]
pub struct SuiteLock {
    file: File,
    path: PathBuf,
    stale: Option<StaleHolder>,
}

/// The pid a lock file named when its lock was taken over.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct StaleHolder {
    pub pid: u32,
    /// Whether a process with that pid exists now (another process that reused the pid).
    pub running: bool,
}

impl SuiteLock {
    /// Take the lock of `suite_dir` (which must exist) without waiting.
    pub fn acquire(suite_dir: &Path) -> Result<SuiteLock, ResultsError> {
        let path = suite_dir.join(LOCK_FILE);
        let io = |error| ResultsError::Io {
            path: path.clone(),
            error,
        };
        let mut file = OpenOptions::new()
            .read(true)
            .write(true)
            .create(true)
            .truncate(false)
            .open(&path)
            .map_err(io)?;
        match fs4::FileExt::try_lock(&file) {
            Ok(()) => {}
            Err(fs4::TryLockError::WouldBlock) => {
                return Err(ResultsError::Locked {
                    path: suite_dir.to_path_buf(),
                    holder: read_pid(&mut file)
                        .map_or_else(|| "pid unknown".into(), |p| format!("pid {p}")),
                })
            }
            Err(fs4::TryLockError::Error(e)) => return Err(io(e)),
        }
        let stale = read_pid(&mut file)
            .filter(|&p| p != std::process::id())
            .map(|pid| StaleHolder {
                pid,
                running: super::atomic::process_alive(pid as i32),
            });
        file.set_len(0).map_err(io)?;
        file.seek(SeekFrom::Start(0)).map_err(io)?;
        writeln!(file, "{}", std::process::id()).map_err(io)?;
        file.sync_all().map_err(io)?;
        Ok(SuiteLock { file, path, stale })
    }

    /// The holder named by the lock file when this lock took it over, if any.
    pub fn stale_holder(&self) -> Option<StaleHolder> {
        self.stale
    }

    /// A one-line note about the takeover of a stale lock, for the user.
    pub fn takeover_note(&self) -> Option<String> {
        self.stale.map(|s| {
            format!(
                "{}: took over the lock of pid {}, which {} (it ended without releasing it)",
                self.path.display(),
                s.pid,
                if s.running {
                    "is another process now"
                } else {
                    "is no longer running"
                }
            )
        })
    }
}

impl Drop for SuiteLock {
    fn drop(&mut self) {
        // Empty the file while still holding the lock, then release it (closing the file
        // would release it too).
        let _ = self.file.set_len(0);
        let _ = fs4::FileExt::unlock(&self.file);
    }
}

fn read_pid(file: &mut File) -> Option<u32> {
    let mut text = String::new();
    file.seek(SeekFrom::Start(0)).ok()?;
    file.take(64).read_to_string(&mut text).ok()?;
    text.trim().parse().ok()
}
