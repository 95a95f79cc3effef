//! Process-level settings every fomoe process applies at start.

/// Keep large tensor buffers in the heap instead of fresh `mmap`s.
///
/// glibc serves allocations above its mmap threshold (at most 32 MiB when adaptive) with a
/// new mapping each time, so every step that allocates a parameter-sized temporary pays a
/// page fault per 4 KiB page and zero-fills it. Raising the threshold and the trim
/// threshold lets freed buffers be reused. Measured on proxy-s (1 thread): the optimiser
/// phase fell from 0.142 to 0.090 CPU-s per step with the equivalent environment variables.
pub fn tune_allocator() -> bool {
    #[cfg(all(target_os = "linux", target_env = "gnu"))]
    // SAFETY: mallopt only changes glibc's allocation thresholds; any value is accepted.
    unsafe {
        let a = libc::mallopt(libc::M_MMAP_THRESHOLD, 1 << 30);
        let b = libc::mallopt(libc::M_TRIM_THRESHOLD, i32::MAX);
        a == 1 && b == 1
    }
    #[cfg(not(all(target_os = "linux", target_env = "gnu")))]
    false
}
