//! A sub-millisecond timer for async tasks.
//!
//! Tokio's timer wheel has 1 ms ticks and rounds every deadline *up* to the next tick, and a
//! sleep on a deadline that has already passed still waits for the next tick. A relay that
//! sleeps per chunk with tokio therefore releases bytes up to ~1 ms late and, at 1 Gbit/s
//! (a 64 KiB chunk every 0.5 ms), could not keep up at all. This timer instead runs one OS
//! thread that sleeps on a condition variable until the earliest registered deadline (the
//! kernel's high-resolution timers, slack set to 1 µs) and wakes the waiting tasks. Callers
//! never sleep on a passed deadline: [`PreciseTimer::sleep_until`] is ready at once then.

use std::cmp::Ordering;
use std::collections::BinaryHeap;
use std::future::Future;
use std::pin::Pin;
use std::sync::{Arc, Condvar, Mutex};
use std::task::{Context, Poll, Waker};
use std::thread::JoinHandle;
use std::time::{Duration, Instant};

struct Entry {
    deadline: Instant,
    seq: u64,
    waker: Waker,
}

impl PartialEq for Entry {
    fn eq(&self, other: &Self) -> bool {
        self.deadline == other.deadline && self.seq == other.seq
    }
}
impl Eq for Entry {}
impl PartialOrd for Entry {
    fn partial_cmp(&self, other: &Self) -> Option<Ordering> {
        Some(self.cmp(other))
    }
}
impl Ord for Entry {
    // Reversed: BinaryHeap is a max-heap, we want the earliest deadline on top.
    fn cmp(&self, other: &Self) -> Ordering {
        other.deadline.cmp(&self.deadline).then(other.seq.cmp(&self.seq))
    }
}

struct State {
    heap: BinaryHeap<Entry>,
    seq: u64,
    stop: bool,
}

struct Shared {
    state: Mutex<State>,
    cv: Condvar,
}

/// The timer thread and its queue. Dropping it stops the thread.
pub struct PreciseTimer {
    shared: Arc<Shared>,
    thread: Option<JoinHandle<f64>>,
}

/// A cheap handle tasks use to sleep.
#[derive(Clone)]
pub struct TimerHandle {
    shared: Arc<Shared>,
}

impl PreciseTimer {
    /// Starts the timer thread.
    pub fn start() -> std::io::Result<Self> {
        let shared = Arc::new(Shared {
            state: Mutex::new(State { heap: BinaryHeap::new(), seq: 0, stop: false }),
            cv: Condvar::new(),
        });
        let s = Arc::clone(&shared);
        let thread = std::thread::Builder::new().name("fomoe-timer".into()).spawn(move || run(&s))?;
        Ok(PreciseTimer { shared, thread: Some(thread) })
    }

    pub fn handle(&self) -> TimerHandle {
        TimerHandle { shared: Arc::clone(&self.shared) }
    }

    /// Stops the thread; returns the CPU seconds it used.
    pub fn stop(mut self) -> f64 {
        self.stop_inner()
    }

    fn stop_inner(&mut self) -> f64 {
        if let Ok(mut st) = self.shared.state.lock() {
            st.stop = true;
        }
        self.shared.cv.notify_all();
        self.thread.take().and_then(|t| t.join().ok()).unwrap_or(0.0)
    }
}

impl Drop for PreciseTimer {
    fn drop(&mut self) {
        self.stop_inner();
    }
}

fn run(shared: &Shared) -> f64 {
    crate::net::cpu::set_fine_timer_slack();
    let Ok(mut st) = shared.state.lock() else { return crate::net::cpu::thread_cpu_seconds() };
    loop {
        if st.stop {
            // Wake everyone still waiting so no task hangs.
            for e in st.heap.drain() {
                e.waker.wake();
            }
            break;
        }
        let now = Instant::now();
        while st.heap.peek().is_some_and(|e| e.deadline <= now) {
            if let Some(e) = st.heap.pop() {
                e.waker.wake();
            }
        }
        st = match st.heap.peek().map(|e| e.deadline) {
            None => match shared.cv.wait(st) {
                Ok(g) => g,
                Err(_) => break,
            },
            Some(d) => match shared.cv.wait_timeout(st, d.saturating_duration_since(Instant::now())) {
                Ok((g, _)) => g,
                Err(_) => break,
            },
        };
    }
    crate::net::cpu::thread_cpu_seconds()
}

impl TimerHandle {
    /// A future that is ready at `deadline` (at once if it has passed).
    pub fn sleep_until(&self, deadline: Instant) -> Sleep {
        Sleep { shared: Arc::clone(&self.shared), deadline, registered: None }
    }

    /// A future that is ready after `d`.
    pub fn sleep(&self, d: Duration) -> Sleep {
        self.sleep_until(Instant::now() + d)
    }
}

/// See [`TimerHandle::sleep_until`].
pub struct Sleep {
    shared: Arc<Shared>,
    deadline: Instant,
    registered: Option<Waker>,
}

impl Future for Sleep {
    type Output = ();

    fn poll(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<()> {
        if Instant::now() >= self.deadline {
            return Poll::Ready(());
        }
        if self.registered.as_ref().is_some_and(|w| w.will_wake(cx.waker())) {
            return Poll::Pending;
        }
        let Ok(mut st) = self.shared.state.lock() else { return Poll::Ready(()) };
        if st.stop {
            return Poll::Ready(());
        }
        let earliest = st.heap.peek().map(|e| e.deadline);
        st.seq += 1;
        let seq = st.seq;
        st.heap.push(Entry { deadline: self.deadline, seq, waker: cx.waker().clone() });
        drop(st);
        if earliest.is_none_or(|e| self.deadline < e) {
            self.shared.cv.notify_one();
        }
        self.registered = Some(cx.waker().clone());
        Poll::Pending
    }
}
