//! A minimal `tracing` subscriber writing one line per event to stderr
//! (the console when the agent is PID 1).
//!
//! tracing-subscriber's formatter would add hundreds of KB to a binary
//! that is copied into guest memory byte by byte; spans are not recorded.

use std::fmt::{self, Write as _};
use std::io::Write as _;
use std::sync::atomic::{AtomicU8, Ordering};

use tracing::field::{Field, Visit};
use tracing::span::{Attributes, Id, Record};
use tracing::{Event, Level, Metadata, Subscriber};

/// The most verbose level logged, shared by every `ConsoleLogger` so that
/// it can change once the settings are known.
static MAX_LEVEL: AtomicU8 = AtomicU8::new(level_to_u8(Level::WARN));

const fn level_to_u8(level: Level) -> u8 {
    match level {
        Level::ERROR => 1,
        Level::WARN => 2,
        Level::INFO => 3,
        Level::DEBUG => 4,
        Level::TRACE => 5,
    }
}

fn max_level() -> Level {
    match MAX_LEVEL.load(Ordering::Relaxed) {
        1 => Level::ERROR,
        2 => Level::WARN,
        3 => Level::INFO,
        4 => Level::DEBUG,
        _ => Level::TRACE,
    }
}

/// Logs events up to the level set with [`set_level`] (default: warn) to
/// stderr.
#[derive(Debug, Default)]
pub struct ConsoleLogger;

impl ConsoleLogger {
    /// Installs the logger as the global default; a no-op if one is set.
    pub fn install() {
        // A second install (tests) keeps the first logger.
        let _ = tracing::subscriber::set_global_default(ConsoleLogger);
    }
}

/// Changes the most verbose level logged.
pub fn set_level(level: Level) {
    MAX_LEVEL.store(level_to_u8(level), Ordering::Relaxed);
    // tracing caches each call site's interest: recompute it.
    tracing::callsite::rebuild_interest_cache();
}

/// Collects an event's fields as `message key=value ...`.
struct LineWriter {
    line: String,
}

impl Visit for LineWriter {
    fn record_str(&mut self, field: &Field, value: &str) {
        if field.name() == "message" {
            self.line.push_str(value);
        } else {
            let _ = write!(self.line, " {}={value:?}", field.name());
        }
    }

    fn record_debug(&mut self, field: &Field, value: &dyn fmt::Debug) {
        if field.name() == "message" {
            let _ = write!(self.line, "{value:?}");
        } else {
            let _ = write!(self.line, " {}={value:?}", field.name());
        }
    }
}

/// Formats one event as a line (without the trailing newline).
pub fn format_event(event: &Event<'_>) -> String {
    let meta = event.metadata();
    let mut writer = LineWriter {
        line: format!("nacre-agent: {} {}: ", meta.level(), meta.target()),
    };
    event.record(&mut writer);
    writer.line
}

impl Subscriber for ConsoleLogger {
    fn enabled(&self, metadata: &Metadata<'_>) -> bool {
        *metadata.level() <= max_level()
    }

    fn max_level_hint(&self) -> Option<tracing::level_filters::LevelFilter> {
        Some(tracing::level_filters::LevelFilter::from_level(max_level()))
    }

    fn new_span(&self, _span: &Attributes<'_>) -> Id {
        Id::from_u64(1)
    }

    fn record(&self, _span: &Id, _values: &Record<'_>) {}

    fn record_follows_from(&self, _span: &Id, _follows: &Id) {}

    fn event(&self, event: &Event<'_>) {
        let mut line = format_event(event);
        line.push('\n');
        // One write per line so that lines of different threads do not mix.
        let _ = std::io::stderr().lock().write_all(line.as_bytes());
    }

    fn enter(&self, _span: &Id) {}

    fn exit(&self, _span: &Id) {}
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn level_round_trips() {
        for level in [
            Level::ERROR,
            Level::WARN,
            Level::INFO,
            Level::DEBUG,
            Level::TRACE,
        ] {
            MAX_LEVEL.store(level_to_u8(level), Ordering::Relaxed);
            assert_eq!(max_level(), level);
        }
        MAX_LEVEL.store(level_to_u8(Level::WARN), Ordering::Relaxed);
    }
}
