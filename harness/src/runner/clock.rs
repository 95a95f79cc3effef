//! How a site times the parts of a step, on every backend.
//!
//! - Compute ([`compute`]): measured wall time of the closure, under the `sim` compute gate
//!   when there is one, and added to the virtual clock (`Comm::advance`, a no-op on real
//!   backends, where compute takes real time).
//! - Communication ([`comm`]): the clock's advance across the closure: virtual on `sim` (the
//!   link model and waiting for peers), wall time otherwise; plus the CPU time the site's
//!   own thread spent inside (encoding, reducing, copying), the host cost of communication.
//!
//! - Evaluation ([`measure`]): measured, but outside the run's time on `sim` (the clock is
//!   not advanced; evaluation traffic is received with `recv_untimed`), so measuring the
//!   model never delays training in virtual time. On real backends it takes real time.
//! - Faults ([`pause`], [`slow_down`]): injected idle time (a stall) and the extra time of a
//!   slow site's compute, slept on real backends and added to the virtual clock on `sim`.
//!
//! So `data + compute + comm + opt + fault` is a step's wall time by construction on
//! `sim`, and up to the bookkeeping between the parts on real backends.

use std::time::{Duration, Instant};

use super::gate::ComputeGate;
use crate::net::{ClockKind, Comm};

/// Runs `f` as compute: under the gate on sim (and advancing the virtual clock).
pub fn compute<T>(
    gate: Option<&ComputeGate>,
    comm: &mut dyn Comm,
    f: impl FnOnce() -> T,
) -> (T, Duration) {
    let guard = gate.map(|g| g.acquire());
    let t = Instant::now();
    let out = f();
    crate::device::synchronize();
    let dt = t.elapsed();
    drop(guard);
    comm.advance(dt);
    (out, dt)
}

/// Runs `f` as work outside the run's time (evaluation): under the gate on sim, measured,
/// the virtual clock left where it is.
pub fn measure<T>(gate: Option<&ComputeGate>, f: impl FnOnce() -> T) -> (T, Duration) {
    let guard = gate.map(|g| g.acquire());
    let t = Instant::now();
    let out = f();
    let dt = t.elapsed();
    drop(guard);
    (out, dt)
}

/// Stretch the compute that took `dt` by `factor` (a slow site): the extra (factor − 1)·dt
/// is slept on real backends and added to the virtual clock on sim. Returns the extra.
pub fn slow_down(comm: &mut dyn Comm, dt: Duration, factor: f64) -> Duration {
    if factor <= 1.0 {
        return Duration::ZERO;
    }
    let extra = dt.mul_f64(factor - 1.0);
    pause(comm, extra);
    extra
}

/// Idle for `d`: sleep on real backends, advance the virtual clock on sim.
pub fn pause(comm: &mut dyn Comm, d: Duration) {
    match comm.clock_kind() {
        ClockKind::Virtual => comm.advance(d),
        ClockKind::Wall => std::thread::sleep(d),
    }
}

/// Time of a communication section and the host CPU time it took.
pub struct CommTime {
    /// Virtual on sim, wall otherwise.
    pub elapsed: Duration,
    /// CPU time of this thread inside the section.
    pub cpu: Duration,
}

/// Runs `f` as communication (see the module doc).
pub fn comm<T>(comm: &mut dyn Comm, f: impl FnOnce(&mut dyn Comm) -> T) -> (T, CommTime) {
    let kind = comm.clock_kind();
    let a = comm.now();
    let t = Instant::now();
    let cpu0 = thread_cpu_time();
    let out = f(comm);
    let cpu = thread_cpu_time().saturating_sub(cpu0);
    let elapsed = match kind {
        ClockKind::Virtual => comm.now().saturating_sub(a),
        ClockKind::Wall => t.elapsed(),
    };
    (out, CommTime { elapsed, cpu })
}

/// The start of a step: the run clock and the wall clock.
#[derive(Clone, Copy)]
pub struct StepStart {
    clock: Duration,
    wall: Instant,
}

impl StepStart {
    pub fn now(comm: &dyn Comm) -> Self {
        Self {
            clock: comm.now(),
            wall: Instant::now(),
        }
    }

    /// Time since the start: the run clock's advance on sim, wall time otherwise.
    pub fn elapsed(&self, comm: &dyn Comm) -> Duration {
        match comm.clock_kind() {
            ClockKind::Virtual => comm.now().saturating_sub(self.clock),
            ClockKind::Wall => self.wall.elapsed(),
        }
    }
}

/// CPU time consumed by the calling thread.
fn thread_cpu_time() -> Duration {
    let mut ts = libc::timespec {
        tv_sec: 0,
        tv_nsec: 0,
    };
    // SAFETY: clock_gettime writes into the timespec we own.
    let rc = unsafe { libc::clock_gettime(libc::CLOCK_THREAD_CPUTIME_ID, &mut ts) };
    if rc != 0 {
        return Duration::ZERO;
    }
    Duration::new(ts.tv_sec as u64, ts.tv_nsec as u32)
}
