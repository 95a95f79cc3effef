//! A sub-millisecond timer for async tasks.
//!
//! Tokio's timer wheel has 1 ms ticks and rounds every deadline *up* to the next tick, and a
//! sleep on a deadline that has already passed still waits for the next tick. A relay that
//! sleeps per chunk with tokio therefore releases bytes up to ~1 ms late and, at 1 Gbit/s
//! (a 64 KiB chunk every 0.5 ms), could not keep up at all. This timer instead runs one OS
//! thread that sleeps on a condition variable until the earliest registered deadline (the
//! kernel's high-resolution timers, slack set to 1 µs) and wakes the waiting tasks. Callers
//! never sleep on a passed deadline: [`PreciseTimer::sleep_until`] is ready at once then.

use std::collections::BTreeMap;
use std::future::Future;
use std::pin::Pin;
use std::sync::{Arc, Condvar, Mutex};
use std::task::{Context, Poll, Waker};
use std::thread::JoinHandle;
use std::time::{Duration, Instant};

struct State {
    /// Waiting tasks by (deadline, registration number); a dropped sleep removes its entry.
    waiting: BTreeMap<(Instant, u64), Waker>,
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
            state: Mutex::new(State {
                waiting: BTreeMap::new(),
                seq: 0,
                stop: false,
            }),
            cv: Condvar::new(),
        });
        let s = Arc::clone(&shared);
        let thread = std::thread::Builder::new()
            .name("fomoe-timer".into())
            .spawn(move || run(&s))?;
        Ok(PreciseTimer {
            shared,
            thread: Some(thread),
        })
    }

    pub fn handle(&self) -> TimerHandle {
        TimerHandle {
            shared: Arc::clone(&self.shared),
        }
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
        self.thread
            .take()
            .and_then(|t| t.join().ok())
            .unwrap_or(0.0)
    }
}

impl Drop for PreciseTimer {
    fn drop(&mut self) {
        self.stop_inner();
    }
}

fn run(shared: &Shared) -> f64 {
    crate::net::cpu::set_fine_timer_slack();
    let Ok(mut st) = shared.state.lock() else {
        return crate::net::cpu::thread_cpu_seconds();
    };
    loop {
        if st.stop {
            // Wake everyone still waiting so no task hangs.
            for (_, w) in std::mem::take(&mut st.waiting) {
                w.wake();
            }
            break;
        }
        let now = Instant::now();
        while let Some(entry) = st.waiting.first_entry() {
            if entry.key().0 > now {
                break;
            }
            entry.remove().wake();
        }
        st = match st.waiting.keys().next().map(|k| k.0) {
            None => match shared.cv.wait(st) {
                Ok(g) => g,
                Err(_) => break,
            },
            Some(d) => match shared
                .cv
                .wait_timeout(st, d.saturating_duration_since(Instant::now()))
            {
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
        Sleep {
            shared: Arc::clone(&self.shared),
            deadline,
            registered: None,
        }
    }

    /// A future that is ready after `d`.
    pub fn sleep(&self, d: Duration) -> Sleep {
        self.sleep_until(Instant::now() + d)
    }
}

/// See [`TimerHandle::sleep_until`]. Dropping it cancels the wake-up.
pub struct Sleep {
    shared: Arc<Shared>,
    deadline: Instant,
    /// Our entry's key and the waker it holds.
    registered: Option<((Instant, u64), Waker)>,
}

impl Sleep {
    fn unregister(&mut self) {
        if let Some((key, _)) = self.registered.take() {
            if let Ok(mut st) = self.shared.state.lock() {
                st.waiting.remove(&key);
            }
        }
    }
}

impl Future for Sleep {
    type Output = ();

    fn poll(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<()> {
        if Instant::now() >= self.deadline {
            self.unregister(); // usually already removed by the timer thread
            return Poll::Ready(());
        }
        if self
            .registered
            .as_ref()
            .is_some_and(|(_, w)| w.will_wake(cx.waker()))
        {
            return Poll::Pending;
        }
        let previous = self.registered.take();
        let shared = Arc::clone(&self.shared);
        let Ok(mut st) = shared.state.lock() else {
            return Poll::Ready(());
        };
        if st.stop {
            return Poll::Ready(());
        }
        if let Some((key, _)) = previous {
            st.waiting.remove(&key);
        }
        let earliest = st.waiting.keys().next().map(|k| k.0);
        st.seq += 1;
        let key = (self.deadline, st.seq);
        st.waiting.insert(key, cx.waker().clone());
        drop(st);
        if earliest.is_none_or(|e| self.deadline < e) {
            shared.cv.notify_one();
        }
        self.registered = Some((key, cx.waker().clone()));
        Poll::Pending
    }
}

impl Drop for Sleep {
    fn drop(&mut self) {
        self.unregister();
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn sleeps_wake_on_time_and_cancel_on_drop() {
        let timer = PreciseTimer::start().unwrap();
        let h = timer.handle();
        let rt = tokio::runtime::Builder::new_current_thread()
            .build()
            .unwrap();
        rt.block_on(async {
            let t0 = Instant::now();
            h.sleep(Duration::from_millis(3)).await;
            let took = t0.elapsed();
            assert!(took >= Duration::from_millis(3), "{took:?}");
            // A passed deadline is ready at once.
            h.sleep_until(t0).await;
            // A dropped sleep leaves nothing behind.
            let mut s = Box::pin(h.sleep(Duration::from_secs(60)));
            assert!(futures_poll_once(s.as_mut()).await.is_pending());
            drop(s);
        });
        assert!(h.shared.state.lock().unwrap().waiting.is_empty());
        timer.stop();
    }

    async fn futures_poll_once<F: Future + Unpin>(mut f: F) -> Poll<F::Output> {
        std::future::poll_fn(|cx| Poll::Ready(Pin::new(&mut f).poll(cx))).await
    }
}
