//! Shared harness of nacre's fuzz targets: a guest memory the fuzzer
//! fills, virtqueues laid out in it, the checks every device target makes
//! (no write outside what the driver offered, used lengths within their
//! chains) and scratch directories.
//!
//! The harness may `unwrap` on its own setup (a failure there is a broken
//! machine, not a finding); the code under test never gets that leeway.

#![allow(clippy::unwrap_used, clippy::expect_used)]

pub mod guest;
pub mod oracle;
pub mod scratch;

/// Ignores SIGPIPE, as a Rust `main` would: the fuzz targets' `main` is
/// libFuzzer's, and a write to a socket whose peer left must fail with
/// EPIPE (what the product sees) rather than kill the fuzzer.
pub fn ignore_sigpipe() {
    static ONCE: std::sync::Once = std::sync::Once::new();
    ONCE.call_once(|| {
        // SAFETY: installs the SIG_IGN disposition; no handler code runs.
        unsafe {
            libc::signal(libc::SIGPIPE, libc::SIG_IGN);
        }
    });
}

/// Whether `needle` occurs in `hay`. One `memmem` call: a byte loop (or
/// `windows().any(==)`, a memcmp per window that libFuzzer records) over
/// 64 KiB made the search the bulk of an execution.
pub fn contains(hay: &[u8], needle: &[u8]) -> bool {
    // SAFETY: both pointers and lengths come from live slices; memmem only
    // reads them and returns a pointer into `hay` or null.
    let found = unsafe {
        libc::memmem(
            hay.as_ptr().cast(),
            hay.len(),
            needle.as_ptr().cast(),
            needle.len(),
        )
    };
    !found.is_null()
}
