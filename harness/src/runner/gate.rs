//! The compute gate of the `sim` backend: at most `slots` sites compute at once, so each
//! computing site has its threads' cores to itself (slots = cores / threads per site).
//! Measured compute times then reflect an uncontended machine, as on M real hosts.

use std::sync::{Condvar, Mutex};

pub struct ComputeGate {
    free: Mutex<usize>,
    cv: Condvar,
}

/// Held while computing; frees the slot on drop.
pub struct GateSlot<'a>(&'a ComputeGate);

impl ComputeGate {
    pub fn new(slots: usize) -> Self {
        Self {
            free: Mutex::new(slots.max(1)),
            cv: Condvar::new(),
        }
    }

    pub fn acquire(&self) -> GateSlot<'_> {
        let mut free = self.free.lock().unwrap_or_else(|e| e.into_inner());
        while *free == 0 {
            free = self.cv.wait(free).unwrap_or_else(|e| e.into_inner());
        }
        *free -= 1;
        GateSlot(self)
    }
}

impl Drop for GateSlot<'_> {
    fn drop(&mut self) {
        let mut free = self.0.free.lock().unwrap_or_else(|e| e.into_inner());
        *free += 1;
        self.0.cv.notify_one();
    }
}
