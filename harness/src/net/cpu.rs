//! CPU accounting for the relay (getrusage) and timer precision (prctl), Linux first.

/// User + system CPU seconds of the calling thread (`getrusage(RUSAGE_THREAD)`); 0 where
/// the platform has no per-thread usage.
pub fn thread_cpu_seconds() -> f64 {
    #[cfg(target_os = "linux")]
    {
        rusage_seconds(libc::RUSAGE_THREAD)
    }
    #[cfg(not(target_os = "linux"))]
    {
        0.0
    }
}

/// User + system CPU seconds of the whole process (`getrusage(RUSAGE_SELF)`).
pub fn process_cpu_seconds() -> f64 {
    #[cfg(unix)]
    {
        rusage_seconds(libc::RUSAGE_SELF)
    }
    #[cfg(not(unix))]
    {
        0.0
    }
}

#[cfg(unix)]
fn rusage_seconds(who: libc::c_int) -> f64 {
    // SAFETY: getrusage writes a plain struct we own; a zeroed rusage is a valid value.
    let mut ru: libc::rusage = unsafe { std::mem::zeroed() };
    // SAFETY: `ru` is a valid, writable rusage for the duration of the call.
    let rc = unsafe { libc::getrusage(who, &mut ru) };
    if rc != 0 {
        return 0.0;
    }
    let tv = |t: libc::timeval| t.tv_sec as f64 + t.tv_usec as f64 * 1e-6;
    tv(ru.ru_utime) + tv(ru.ru_stime)
}

/// Asks the kernel to fire this thread's timers within 1 µs instead of the default 50 µs.
pub fn set_fine_timer_slack() {
    #[cfg(target_os = "linux")]
    // SAFETY: PR_SET_TIMERSLACK takes a plain integer and affects only this thread.
    unsafe {
        libc::prctl(libc::PR_SET_TIMERSLACK, 1_000 as libc::c_ulong, 0, 0, 0);
    }
}
