//! The VMM's own log, bounded. Its stderr is a file on the host's `/run`
//! tmpfs (`vmm.log`), and a hostile guest can trigger most of what is
//! logged (an invalid MMIO register write makes virtio-queue log an error;
//! a malformed FUSE request makes fuse-backend-rs log the request body).
//! So every event, `log` records of third-party crates included, passes:
//!
//! - [`RateLimit`]: each call site emits at most `burst` events per
//!   `window`; the rest are counted and summarized in one line;
//! - [`BoundedFields`]: an event's fields are formatted to at most
//!   `max_line` bytes (never held in full in memory);
//! - [`CappedWriter`]: at most `max_bytes` reach the file in total, the
//!   last line says where the log was truncated, and each line is cut at
//!   `max_line` bytes.
//!
//! Guest-triggered conditions in nacre's own devices should also be
//! counters rather than log lines; this is the backstop for the rest.

mod capped;
mod fields;
mod rate;

#[cfg(test)]
mod tests;

use std::io::Write;
use std::time::Duration;

use tracing::Subscriber;
use tracing_log::AsLog;
use tracing_subscriber::layer::SubscriberExt;
use tracing_subscriber::EnvFilter;

pub use capped::CappedWriter;
pub use fields::BoundedFields;
pub use rate::RateLimit;

/// The bounds of the VMM's log.
#[derive(Debug, Clone)]
pub struct LogLimits {
    /// Total bytes written, the truncation line included.
    pub max_bytes: u64,
    /// Bytes of one line (one event).
    pub max_line: usize,
    /// Events per call site per `window`.
    pub burst: u32,
    /// The rate limit's period.
    pub window: Duration,
}

/// 1 MiB in total.
pub const DEFAULT_MAX_BYTES: u64 = nacre_vmm_api::args::DEFAULT_LOG_MAX_BYTES;

impl Default for LogLimits {
    fn default() -> Self {
        Self {
            max_bytes: DEFAULT_MAX_BYTES,
            max_line: 1024,
            burst: 10,
            window: Duration::from_secs(60),
        }
    }
}

/// Why logging could not be set up.
#[derive(Debug, thiserror::Error)]
pub enum LoggingError {
    #[error("log filter {filter:?}: {source}")]
    Filter {
        filter: String,
        source: tracing_subscriber::filter::ParseError,
    },
    #[error("installing the logger: {0}")]
    Install(String),
}

/// What is left to do with the installed logger: the exit summary.
#[derive(Clone)]
pub struct LogHandle {
    rate: RateLimit,
    out: CappedWriter,
}

impl LogHandle {
    /// Writes the pending "N messages suppressed" lines (call at exit).
    pub fn flush(&self) {
        self.rate.flush();
        let _ = self.out.clone().flush();
    }

    /// Events dropped by the rate limit so far.
    pub fn suppressed(&self) -> u64 {
        self.rate.suppressed()
    }

    /// Bytes written to the output so far.
    pub fn bytes_written(&self) -> u64 {
        self.out.bytes_written()
    }

    /// Bytes dropped at the total cap so far.
    pub fn bytes_dropped(&self) -> u64 {
        self.out.bytes_dropped()
    }
}

/// A bounded subscriber writing to `out` (for [`init`], and for tests with
/// `tracing::subscriber::with_default`).
pub fn subscriber(
    filter: EnvFilter,
    limits: &LogLimits,
    out: impl Write + Send + 'static,
) -> (impl Subscriber + Send + Sync, LogHandle) {
    let writer = CappedWriter::new(out, limits.max_bytes, limits.max_line);
    let rate = RateLimit::new(limits.burst, limits.window, writer.clone());
    let fmt = tracing_subscriber::fmt::layer()
        .with_writer(writer.clone())
        .with_target(false)
        .with_ansi(false)
        .fmt_fields(BoundedFields::new(limits.max_line))
        // A closed stderr must not panic the thread that logs.
        .log_internal_errors(false);
    let subscriber = tracing_subscriber::registry()
        .with(filter)
        .with(rate.clone())
        .with(fmt);
    (subscriber, LogHandle { rate, out: writer })
}

/// Installs the bounded logger on stderr for the whole process, with
/// `level` (a level or an env-filter directive), and bridges the `log`
/// crate into it.
pub fn init(level: &str, limits: &LogLimits) -> Result<LogHandle, LoggingError> {
    let filter = EnvFilter::try_new(level).map_err(|source| LoggingError::Filter {
        filter: level.to_string(),
        source,
    })?;
    let max_level = filter.max_level_hint();
    let (subscriber, handle) = subscriber(filter, limits, std::io::stderr());
    tracing::subscriber::set_global_default(subscriber)
        .map_err(|e| LoggingError::Install(e.to_string()))?;
    let mut bridge = tracing_log::LogTracer::builder();
    if let Some(level) = max_level {
        bridge = bridge.with_max_level(level.as_log());
    }
    bridge
        .init()
        .map_err(|e| LoggingError::Install(e.to_string()))?;
    Ok(handle)
}

/// Helpers for tests that check what reaches the log.
#[cfg(test)]
pub(crate) mod test_util {
    use std::io::{self, Write};
    use std::sync::{Arc, Mutex};

    /// A log output the test reads back.
    #[derive(Clone, Default)]
    pub struct SharedBuf(pub Arc<Mutex<Vec<u8>>>);

    impl SharedBuf {
        pub fn contents(&self) -> String {
            String::from_utf8_lossy(&self.0.lock().unwrap()).into_owned()
        }
    }

    impl Write for SharedBuf {
        fn write(&mut self, buf: &[u8]) -> io::Result<usize> {
            self.0.lock().unwrap().extend_from_slice(buf);
            Ok(buf.len())
        }

        fn flush(&mut self) -> io::Result<()> {
            Ok(())
        }
    }

    /// Bridges the `log` crate into `tracing` (whose test subscribers are
    /// per thread); a second call does nothing.
    pub fn bridge_log() {
        let _ = tracing_log::LogTracer::init();
    }
}
