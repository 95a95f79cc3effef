//! Is CUDA usable in this process? Loading libtorch's CUDA library and counting GPUs.
//!
//! tch links `libtorch_cuda.so` only "as needed", and nothing in the harness calls into it
//! directly, so a binary built against a CUDA libtorch does not load it by itself and
//! libtorch then reports no CUDA. [`availability`] therefore opens `libtorch_cuda.so` from
//! the directory of the libtorch this process loaded (its static initialisers register the
//! CUDA backend), then asks libtorch for the device count. It runs once per process, before
//! any CUDA query (libtorch caches the backend it finds on the first query), and only for
//! `device = cuda | auto`, so CPU runs never touch the CUDA libraries.
//!
//! Reasons CUDA is unusable, each said in the error: the loaded libtorch has no
//! `libtorch_cuda.so` (a CPU build); it has one whose dependencies (cuBLAS, cuDNN, ...) are
//! not installed (this project's default `cpu` set-up flavour); no NVIDIA driver or GPU.

use std::ffi::{CStr, CString};
use std::path::{Path, PathBuf};
use std::sync::OnceLock;

/// The number of usable GPUs, or why there are none. Computed once per process.
pub fn availability() -> Result<usize, String> {
    static AVAILABLE: OnceLock<Result<usize, String>> = OnceLock::new();
    AVAILABLE.get_or_init(probe).clone()
}

fn probe() -> Result<usize, String> {
    let dir = libtorch_lib_dir().ok_or("the loaded libtorch could not be located")?;
    let lib = dir.join("libtorch_cuda.so");
    if !lib.exists() {
        return Err(format!(
            "{} is a CPU-only libtorch (no libtorch_cuda.so)",
            dir.display()
        ));
    }
    load_global(&lib).map_err(|e| format!("libtorch_cuda.so does not load: {e}"))?;
    let n = tch::Cuda::device_count();
    if n <= 0 || !tch::Cuda::is_available() {
        return Err("libtorch sees no CUDA GPU (no NVIDIA driver or device)".into());
    }
    Ok(n as usize)
}

/// `dlopen(path, RTLD_NOW | RTLD_GLOBAL)`; the library stays loaded for the process.
fn load_global(path: &Path) -> Result<(), String> {
    let c = CString::new(path.as_os_str().as_encoded_bytes()).map_err(|e| e.to_string())?;
    // SAFETY: `c` is a NUL-terminated path; dlopen has no other preconditions. The handle is
    // deliberately never closed (libtorch's CUDA backend must stay registered).
    let handle = unsafe { libc::dlopen(c.as_ptr(), libc::RTLD_NOW | libc::RTLD_GLOBAL) };
    if handle.is_null() {
        // SAFETY: dlerror returns NULL or a NUL-terminated message owned by libc, valid
        // until the next dl* call on this thread; it is copied at once.
        let msg = unsafe { libc::dlerror() };
        return Err(if msg.is_null() {
            "dlopen failed".into()
        } else {
            // SAFETY: `msg` is non-NULL here, so it is libc's NUL-terminated message (above).
            unsafe { CStr::from_ptr(msg) }
                .to_string_lossy()
                .into_owned()
        });
    }
    Ok(())
}

/// The directory holding the `libtorch_cpu.so` mapped into this process.
pub fn libtorch_lib_dir() -> Option<PathBuf> {
    let maps = std::fs::read_to_string("/proc/self/maps").ok()?;
    maps_libtorch_dir(&maps)
}

/// The directory of `libtorch_cpu.so` in the text of a `/proc/<pid>/maps` file.
pub fn maps_libtorch_dir(maps: &str) -> Option<PathBuf> {
    maps.lines()
        .filter_map(|l| l.split_whitespace().nth(5))
        .map(Path::new)
        .find(|p| {
            p.file_name()
                .and_then(|n| n.to_str())
                .is_some_and(|n| n.starts_with("libtorch_cpu.so"))
        })
        .and_then(|p| p.parent().map(Path::to_path_buf))
}
