//! Spans of the agent's own work, kept in memory for `Agent.GetTrace`:
//! the last [`KEPT`] (name, wall-clock start, duration, thread). Always
//! on: a span costs two clock reads and a short lock.

use std::collections::VecDeque;
use std::sync::{Mutex, PoisonError};
use std::time::{Instant, SystemTime, UNIX_EPOCH};

/// Spans kept; older ones are dropped first.
pub const KEPT: usize = 1024;

/// One finished span.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Span {
    pub name: &'static str,
    /// Microseconds since the Unix epoch at its start.
    pub start_us: u64,
    pub duration_us: u64,
    pub thread: u32,
}

static SPANS: Mutex<VecDeque<Span>> = Mutex::new(VecDeque::new());

/// Records a span from now until the guard is dropped.
pub fn span(name: &'static str) -> Guard {
    Guard {
        name,
        wall: SystemTime::now(),
        start: Instant::now(),
    }
}

/// A span in progress.
#[must_use = "the span ends when the guard is dropped"]
pub struct Guard {
    name: &'static str,
    wall: SystemTime,
    start: Instant,
}

impl Drop for Guard {
    fn drop(&mut self) {
        let start_us = self
            .wall
            .duration_since(UNIX_EPOCH)
            .map_or(0, |d| u64::try_from(d.as_micros()).unwrap_or(u64::MAX));
        let duration_us = u64::try_from(self.start.elapsed().as_micros()).unwrap_or(u64::MAX);
        // SAFETY: gettid(2) has no arguments and no memory effects.
        let thread = u32::try_from(unsafe { libc::gettid() }).unwrap_or(0);
        add(Span {
            name: self.name,
            start_us,
            duration_us,
            thread,
        });
    }
}

/// Keeps a span timed elsewhere (a forked child's step).
pub fn add(span: Span) {
    let mut spans = SPANS.lock().unwrap_or_else(PoisonError::into_inner);
    if spans.len() >= KEPT {
        spans.pop_front();
    }
    spans.push_back(span);
}

/// Forgets every span kept (a VM restored from a template starts its
/// own list).
pub fn clear() {
    SPANS.lock().unwrap_or_else(PoisonError::into_inner).clear();
}

/// The spans kept, oldest first.
pub fn spans() -> Vec<Span> {
    SPANS
        .lock()
        .unwrap_or_else(PoisonError::into_inner)
        .iter()
        .cloned()
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn spans_are_kept_in_order_and_bounded() {
        for _ in 0..KEPT + 5 {
            let _s = span("test.bounded");
        }
        {
            let _s = span("test.last");
            std::thread::sleep(std::time::Duration::from_millis(2));
        }
        let all = spans();
        assert!(all.len() <= KEPT);
        let last = all.iter().rev().find(|s| s.name == "test.last").unwrap();
        assert!(last.duration_us >= 2000, "{last:?}");
        assert!(last.start_us > 1_600_000_000_000_000);
    }
}
