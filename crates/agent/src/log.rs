//! A minimal `tracing` subscriber writing one line per event to stderr
//! (the console when the agent is PID 1).
//!
//! tracing-subscriber's formatter would add hundreds of KB to a binary
//! that is copied into guest memory byte by byte; spans are not recorded.

use std::fmt::{self, Write as _};
use std::io::Write as _;

use tracing::field::{Field, Visit};
use tracing::span::{Attributes, Id, Record};
use tracing::{Event, Level, Metadata, Subscriber};

/// Logs events up to `max_level` to stderr.
#[derive(Debug)]
pub struct ConsoleLogger {
    max_level: Level,
}

impl ConsoleLogger {
    /// A logger for events at `max_level` or more severe.
    #[must_use]
    pub fn new(max_level: Level) -> Self {
        ConsoleLogger { max_level }
    }

    /// Installs the logger as the global default; a no-op if one is set.
    pub fn install(max_level: Level) {
        // A second install (tests) keeps the first logger.
        let _ = tracing::subscriber::set_global_default(ConsoleLogger::new(max_level));
    }
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
        *metadata.level() <= self.max_level
    }

    fn max_level_hint(&self) -> Option<tracing::level_filters::LevelFilter> {
        Some(tracing::level_filters::LevelFilter::from_level(
            self.max_level,
        ))
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
