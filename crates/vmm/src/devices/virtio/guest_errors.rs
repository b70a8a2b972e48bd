//! Counters for errors a guest can cause at will (malformed requests,
//! invalid queues, credit violations). Each kind is logged at warn for
//! its first [`LOGGED`] occurrences, then only counted (and logged at
//! debug); [`summary`] reports the totals once, at exit. The bounded
//! logger (`crate::logging`) is the backstop for everything else.

use std::sync::atomic::{AtomicU64, Ordering};

/// Occurrences of one kind logged at warn.
pub const LOGGED: u64 = 16;

/// One kind of guest-caused error.
#[derive(Debug)]
pub struct GuestErrorCounter {
    kind: &'static str,
    what: &'static str,
    count: AtomicU64,
}

impl GuestErrorCounter {
    /// A counter of `kind` (a metric label) for `what` (a plural noun
    /// phrase, for the summary).
    pub const fn new(kind: &'static str, what: &'static str) -> Self {
        Self {
            kind,
            what,
            count: AtomicU64::new(0),
        }
    }

    /// Counts one; true if the caller should log it at warn.
    pub fn record(&self) -> bool {
        self.count.fetch_add(1, Ordering::Relaxed) < LOGGED
    }

    /// Occurrences so far.
    pub fn count(&self) -> u64 {
        self.count.load(Ordering::Relaxed)
    }
}

/// virtio-fs requests dropped as malformed.
pub static FS_DROPPED_REQUESTS: GuestErrorCounter =
    GuestErrorCounter::new("fs_dropped_request", "virtio-fs requests dropped");
/// Used-ring updates that failed (the guest's used ring is unusable).
pub static USED_RING_FAILURES: GuestErrorCounter =
    GuestErrorCounter::new("used_ring_failure", "buffers not returned (bad used ring)");
/// DRIVER_OK over queues that are not valid.
pub static ACTIVATION_FAILURES: GuestErrorCounter =
    GuestErrorCounter::new("activation_refused", "device activations refused");
/// vsock packets beyond the credit the host gave.
pub static VSOCK_CREDIT_VIOLATIONS: GuestErrorCounter =
    GuestErrorCounter::new("vsock_credit_violation", "vsock credit violations");

const ALL: [&GuestErrorCounter; 4] = [
    &FS_DROPPED_REQUESTS,
    &USED_RING_FAILURES,
    &ACTIVATION_FAILURES,
    &VSOCK_CREDIT_VIOLATIONS,
];

/// Every counter by kind, zeros included (the API's `status`).
pub fn counts() -> std::collections::BTreeMap<String, u64> {
    ALL.iter().map(|c| (c.kind.to_owned(), c.count())).collect()
}

/// One line with the non-zero counters, if any (at exit).
pub fn summary() -> Option<String> {
    let parts: Vec<String> = ALL
        .iter()
        .filter(|c| c.count() > 0)
        .map(|c| format!("{} {}", c.count(), c.what))
        .collect();
    (!parts.is_empty()).then(|| format!("guest errors: {}", parts.join(", ")))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn logs_the_first_then_counts() {
        static C: GuestErrorCounter = GuestErrorCounter::new("test", "test errors");
        let logged = (0..1000).filter(|_| C.record()).count() as u64;
        assert_eq!(logged, LOGGED);
        assert_eq!(C.count(), 1000);
    }

    #[test]
    fn every_kind_is_reported() {
        let counts = counts();
        for kind in [
            "fs_dropped_request",
            "used_ring_failure",
            "activation_refused",
            "vsock_credit_violation",
        ] {
            assert!(counts.contains_key(kind), "{kind} in {counts:?}");
        }
    }
}
