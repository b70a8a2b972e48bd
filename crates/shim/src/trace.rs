//! The shim's trace: with `NACRE_TRACE=<file>` in containerd's
//! environment (containerd passes it to its shims) or `[trace] file` in
//! the configuration file, the shim records a `tracing` span around each
//! step of a task's and of its sandbox's life (`task.create`,
//! `sandbox.boot` and the runtime's `sandbox.start`, `agent.*` inside it,
//! `task.start`, `task.exec`, `task.wait`, `task.exit`, `task.kill`,
//! `task.delete`, `task.cleanup`, `sandbox.shutdown`) and merges them,
//! with the guest agent's spans and the VMM's CPU, into the trace file
//! through [`nacre_runtime::trace`] (the writer the CLI uses): after each
//! task delete, and when the shim exits. A shim serves one sandbox for
//! as long as it lives, so each of its pods reaches the file as its tasks
//! are deleted; the writer keeps the file bounded and private.
//!
//! Without tracing nothing is installed: the shim's `tracing` events go
//! to containerd's log through the `log` crate as before. With it, a
//! global subscriber records the spans ([`nacre_runtime::trace::TraceLayer`])
//! and hands events on to the `log` crate ([`LogBridge`]), so the log
//! stays the same.

use std::fmt::Write as _;
use std::path::{Path, PathBuf};
use std::sync::OnceLock;

use nacre_runtime::trace::TraceLayer;
use tracing::field::{Field, Visit};
use tracing::{Event, Level, Subscriber};
use tracing_subscriber::layer::{Context, SubscriberExt};
use tracing_subscriber::Layer;

use crate::config::Config;

/// The process name of a shim in the trace.
const PROCESS: &str = "containerd-shim-nacre-v2";

static FILE: OnceLock<PathBuf> = OnceLock::new();

/// Where the trace goes: `NACRE_TRACE` (`env`), else the configuration's
/// `[trace] file`. A relative path is refused (a shim's working directory
/// is a bundle): `Err` says why.
pub fn choose(env: Option<PathBuf>, config: Option<&Config>) -> Result<Option<PathBuf>, String> {
    let file = env
        .filter(|p| !p.as_os_str().is_empty())
        .or_else(|| config.and_then(|c| c.trace.file.clone()));
    match file {
        Some(f) if !f.is_absolute() => Err(format!(
            "the trace file {} is not an absolute path: no trace",
            f.display()
        )),
        f => Ok(f),
    }
}

/// Turns tracing on when [`choose`] names a file; after the log is set
/// up. Returns the file.
pub fn init(config: Option<&Config>) -> Option<&'static Path> {
    let env = std::env::var_os(nacre_runtime::trace::TRACE_ENV).map(PathBuf::from);
    let file = match choose(env, config) {
        Ok(Some(f)) => f,
        Ok(None) => return None,
        Err(e) => {
            tracing::error!("{e}");
            return None;
        }
    };
    let subscriber = tracing_subscriber::registry()
        .with(TraceLayer)
        .with(LogBridge);
    if let Err(e) = tracing::subscriber::set_global_default(subscriber) {
        tracing::error!("tracing to {}: {e}", file.display());
        return None;
    }
    nacre_runtime::trace::configure(file.clone());
    let file = FILE.get_or_init(|| file);
    tracing::info!(file = %file.display(), "tracing");
    Some(file.as_path())
}

/// Whether spans are recorded.
pub fn enabled() -> bool {
    FILE.get().is_some()
}

/// Merges what this shim recorded since the last flush into the trace
/// file (blocking: takes the file's lock).
pub fn flush(sandbox: &str) {
    if let Some(file) = FILE.get() {
        if let Err(e) = nacre_runtime::trace::flush(file, &format!("{PROCESS} {sandbox}")) {
            tracing::warn!("writing the trace {}: {e}", file.display());
        }
    }
}

/// [`flush`] off the async runtime.
pub async fn flush_async(sandbox: &str) {
    if enabled() {
        let sandbox = sandbox.to_owned();
        let _ = tokio::task::spawn_blocking(move || flush(&sandbox)).await;
    }
}

/// Hands `tracing` events to the `log` crate's logger (containerd's log
/// FIFO), which the `log` feature of `tracing` only does while no
/// subscriber is installed.
#[derive(Debug, Default)]
pub struct LogBridge;

impl<S: Subscriber> Layer<S> for LogBridge {
    fn on_event(&self, event: &Event<'_>, _ctx: Context<'_, S>) {
        let meta = event.metadata();
        let level = log_level(*meta.level());
        let log_meta = log::Metadata::builder()
            .level(level)
            .target(meta.target())
            .build();
        let logger = log::logger();
        if level > log::max_level() || !logger.enabled(&log_meta) {
            return;
        }
        let mut text = Text::default();
        event.record(&mut text);
        logger.log(
            &log::Record::builder()
                .metadata(log_meta)
                .args(format_args!("{}", text.line()))
                .module_path(meta.module_path())
                .file(meta.file())
                .line(meta.line())
                .build(),
        );
    }
}

fn log_level(level: Level) -> log::Level {
    match level {
        Level::ERROR => log::Level::Error,
        Level::WARN => log::Level::Warn,
        Level::INFO => log::Level::Info,
        Level::DEBUG => log::Level::Debug,
        Level::TRACE => log::Level::Trace,
    }
}

/// An event as one line: its message, then `key=value` for each field.
#[derive(Default)]
struct Text {
    message: String,
    fields: String,
}

impl Text {
    fn line(&self) -> String {
        format!("{}{}", self.message, self.fields)
    }
}

impl Visit for Text {
    fn record_debug(&mut self, field: &Field, value: &dyn std::fmt::Debug) {
        if field.name() == "message" {
            let _ = write!(self.message, "{value:?}");
        } else {
            let _ = write!(self.fields, " {}={value:?}", field.name());
        }
    }

    fn record_str(&mut self, field: &Field, value: &str) {
        if field.name() == "message" {
            self.message.push_str(value);
        } else {
            let _ = write!(self.fields, " {}={value:?}", field.name());
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_environment_wins_and_only_absolute_files_are_taken() {
        let config = Config::parse("[trace]\nfile = \"/c/t.json\"\n", Path::new("c.toml")).unwrap();
        assert_eq!(choose(None, None), Ok(None));
        assert_eq!(choose(Some(PathBuf::new()), None), Ok(None));
        assert_eq!(
            choose(None, Some(&config)),
            Ok(Some(PathBuf::from("/c/t.json")))
        );
        assert_eq!(
            choose(Some("/e/t.json".into()), Some(&config)),
            Ok(Some(PathBuf::from("/e/t.json")))
        );
        assert!(choose(Some("t.json".into()), Some(&config)).is_err());
    }

    /// Records each event as [`LogBridge`] renders it.
    struct Lines(std::sync::Arc<std::sync::Mutex<Vec<String>>>);

    impl<S: Subscriber> Layer<S> for Lines {
        fn on_event(&self, event: &Event<'_>, _ctx: Context<'_, S>) {
            let mut text = Text::default();
            event.record(&mut text);
            self.0.lock().unwrap().push(text.line());
        }
    }

    #[test]
    fn events_become_one_log_line_with_their_fields() {
        let lines = std::sync::Arc::new(std::sync::Mutex::new(Vec::new()));
        let subscriber = tracing_subscriber::registry().with(Lines(lines.clone()));
        tracing::subscriber::with_default(subscriber, || {
            tracing::info!(cid = "c1", pid = 7, "container created");
        });
        assert_eq!(
            *lines.lock().unwrap(),
            ["container created cid=\"c1\" pid=7"]
        );
    }
}
