//! Logging as runc does it: to `--log` when given (containerd's shim reads
//! the file's JSON lines `{"level":"error","msg":"..."}` after a failure),
//! else to stderr; text or JSON by `--log-format`.

use std::fmt::Write as _;
use std::fs::{File, OpenOptions};
use std::io::Write;
use std::path::Path;
use std::sync::{Arc, Mutex, PoisonError};

use tracing::field::{Field, Visit};
use tracing::{Event, Level, Subscriber};
use tracing_subscriber::filter::EnvFilter;
use tracing_subscriber::layer::{Context, SubscriberExt};
use tracing_subscriber::util::SubscriberInitExt;
use tracing_subscriber::Layer;

/// `--log-format`.
#[derive(Debug, Clone, Copy, PartialEq, Eq, clap::ValueEnum)]
pub enum LogFormat {
    Text,
    Json,
}

/// Where log lines go.
#[derive(Clone)]
enum Sink {
    Stderr,
    File(Arc<Mutex<File>>),
}

impl Sink {
    fn write_line(&self, line: &str) {
        match self {
            Sink::Stderr => {
                let _ = writeln!(std::io::stderr(), "{line}");
            }
            Sink::File(f) => {
                let mut f = f.lock().unwrap_or_else(PoisonError::into_inner);
                let _ = writeln!(f, "{line}");
            }
        }
    }
}

/// The installed logger; also used to log the final error.
#[derive(Clone)]
pub struct Logger {
    sink: Sink,
    format: LogFormat,
}

struct LineLayer(Logger);

#[derive(Default)]
struct Fields {
    message: String,
    rest: String,
}

impl Visit for Fields {
    fn record_debug(&mut self, field: &Field, value: &dyn std::fmt::Debug) {
        if field.name() == "message" {
            let _ = write!(self.message, "{value:?}");
        } else {
            let _ = write!(self.rest, " {}={value:?}", field.name());
        }
    }
    fn record_str(&mut self, field: &Field, value: &str) {
        if field.name() == "message" {
            self.message.push_str(value);
        } else {
            let _ = write!(self.rest, " {}={value}", field.name());
        }
    }
}

impl<S: Subscriber> Layer<S> for LineLayer {
    fn on_event(&self, event: &Event<'_>, _ctx: Context<'_, S>) {
        let mut fields = Fields::default();
        event.record(&mut fields);
        let level = match *event.metadata().level() {
            Level::ERROR => "error",
            Level::WARN => "warning",
            Level::INFO => "info",
            Level::DEBUG => "debug",
            Level::TRACE => "trace",
        };
        self.0
            .line(level, &format!("{}{}", fields.message, fields.rest));
    }
}

impl Logger {
    /// Sets up logging; `filter` is a tracing filter (`warn`, `debug`, ...).
    pub fn init(log: Option<&Path>, format: LogFormat, filter: &str) -> Logger {
        let sink = log
            .and_then(|p| {
                OpenOptions::new()
                    .create(true)
                    .append(true)
                    .open(p)
                    .map_err(|e| eprintln!("nacre: opening log {}: {e}", p.display()))
                    .ok()
            })
            .map_or(Sink::Stderr, |f| Sink::File(Arc::new(Mutex::new(f))));
        let logger = Logger { sink, format };
        let filter = std::env::var("NACRE_LOG")
            .ok()
            .and_then(|f| EnvFilter::try_new(f).ok())
            .unwrap_or_else(|| EnvFilter::new(filter));
        // NACRE_TRACE: every span, whatever the log level.
        let trace = nacre_runtime::trace::file().map(|_| nacre_runtime::trace::TraceLayer);
        let _ = tracing_subscriber::registry()
            .with(LineLayer(logger.clone()).with_filter(filter))
            .with(trace)
            .try_init();
        logger
    }

    /// Whether lines go to a file (not stderr).
    pub fn to_file(&self) -> bool {
        matches!(self.sink, Sink::File(_))
    }

    /// Writes one line at `level`.
    pub fn line(&self, level: &str, msg: &str) {
        let time = nacre_runtime::container::state::rfc3339(std::time::SystemTime::now());
        let text = match self.format {
            LogFormat::Json => {
                serde_json::json!({"level": level, "msg": msg, "time": time}).to_string()
            }
            LogFormat::Text => format!("time=\"{time}\" level={level} msg={msg:?}"),
        };
        self.sink.write_line(&text);
    }
}
