//! Traces: with `NACRE_TRACE=<file>` (or, for the containerd shim,
//! `[trace] file` in the configuration, see [`configure`]), the spans of a
//! create, start, exec and delete (the host's, from `tracing` spans, and
//! the guest agent's, from `Agent.GetTrace`) are written to `<file>` in
//! the Trace Event Format's JSON object form (`{"traceEvents": [...]}`),
//! which Perfetto and chrome://tracing load. Each process (the CLI
//! command, its monitor, a shim) merges its own events into the file
//! under a lock ([`flush`]: when a CLI process ends, when a shim deletes a
//! task or exits), so one `nacre run` gives one file with every process on
//! one timeline.
//!
//! Bounded: a process keeps at most [`MEMORY_EVENTS_MAX`] events between
//! flushes and the file at most [`FILE_EVENTS_MAX`] (the oldest go first).
//! The file is the writer's alone: 0600, never reached through a symbolic
//! link (see [`flush`]).
//!
//! Guest spans use the guest's wall clock, which the host sets when the
//! VM starts (so they line up with the host's to a few milliseconds);
//! their names are the guest's, cut to [`NAME_MAX`] printable characters,
//! and at most [`GUEST_SPANS_MAX`] are taken.

mod file;
mod guest;

pub use file::{flush, merge, FILE_BYTES_MAX, FILE_EVENTS_MAX};
pub use guest::{add_guest, GuestCursor};

use std::collections::VecDeque;
use std::path::PathBuf;
use std::sync::{Mutex, OnceLock, PoisonError};
use std::time::{Instant, SystemTime, UNIX_EPOCH};

use serde_json::{json, Value};
use tracing::span::{Attributes, Id};
use tracing::Subscriber;
use tracing_subscriber::layer::Context;
use tracing_subscriber::registry::LookupSpan;
use tracing_subscriber::Layer;

/// The environment variable naming the trace file.
pub const TRACE_ENV: &str = "NACRE_TRACE";
/// The most guest spans taken from one agent.
pub const GUEST_SPANS_MAX: usize = 4096;
/// The longest span name kept from the guest.
pub const NAME_MAX: usize = 64;
/// Guest processes appear as pid `GUEST_PID_BASE + <VMM pid>`.
pub const GUEST_PID_BASE: u64 = 1 << 32;

/// One span the agent recorded.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct GuestSpan {
    pub name: String,
    pub start_us: u64,
    pub duration_us: u64,
    pub thread: u32,
}

/// The most events a process keeps between two flushes; older ones are
/// dropped first.
pub const MEMORY_EVENTS_MAX: usize = 50_000;

static CONFIGURED: OnceLock<PathBuf> = OnceLock::new();

/// The trace file, when tracing is on: `NACRE_TRACE`, else the file given
/// to [`configure`].
pub fn file() -> Option<PathBuf> {
    std::env::var_os(TRACE_ENV)
        .filter(|v| !v.is_empty())
        .map(PathBuf::from)
        .or_else(|| CONFIGURED.get().cloned())
}

/// Turns tracing on for this process with `path` as the trace file
/// (`NACRE_TRACE`, when set, still wins). Once; later calls are ignored.
pub fn configure(path: PathBuf) {
    let _ = CONFIGURED.set(path);
}

static EVENTS: Mutex<VecDeque<Value>> = Mutex::new(VecDeque::new());

fn push(event: Value) {
    let mut events = EVENTS.lock().unwrap_or_else(PoisonError::into_inner);
    if events.len() >= MEMORY_EVENTS_MAX {
        events.pop_front();
    }
    events.push_back(event);
}

/// This process's events since the last call.
fn take() -> Vec<Value> {
    std::mem::take(&mut *EVENTS.lock().unwrap_or_else(PoisonError::into_inner)).into()
}

fn micros(t: SystemTime) -> u64 {
    t.duration_since(UNIX_EPOCH)
        .map_or(0, |d| u64::try_from(d.as_micros()).unwrap_or(u64::MAX))
}

fn thread_id() -> u64 {
    // SAFETY: gettid(2) has no arguments and no memory effects.
    u64::try_from(unsafe { libc::gettid() }).unwrap_or(0)
}

/// A `tracing` layer recording every span of this process.
#[derive(Debug, Default)]
pub struct TraceLayer;

struct Timing {
    wall: SystemTime,
    start: Instant,
    args: serde_json::Map<String, Value>,
}

struct Args<'a>(&'a mut serde_json::Map<String, Value>);

impl tracing::field::Visit for Args<'_> {
    fn record_debug(&mut self, field: &tracing::field::Field, value: &dyn std::fmt::Debug) {
        self.0
            .insert(field.name().to_owned(), Value::String(format!("{value:?}")));
    }
    fn record_str(&mut self, field: &tracing::field::Field, value: &str) {
        self.0
            .insert(field.name().to_owned(), Value::String(value.to_owned()));
    }
}

impl<S> Layer<S> for TraceLayer
where
    S: Subscriber + for<'a> LookupSpan<'a>,
{
    fn on_new_span(&self, attrs: &Attributes<'_>, id: &Id, ctx: Context<'_, S>) {
        let mut args = serde_json::Map::new();
        attrs.record(&mut Args(&mut args));
        if let Some(span) = ctx.span(id) {
            span.extensions_mut().insert(Timing {
                wall: SystemTime::now(),
                start: Instant::now(),
                args,
            });
        }
    }

    fn on_close(&self, id: Id, ctx: Context<'_, S>) {
        let Some(span) = ctx.span(&id) else { return };
        let ext = span.extensions();
        let Some(t) = ext.get::<Timing>() else { return };
        push(json!({
            "name": span.name(),
            "cat": "host",
            "ph": "X",
            "ts": micros(t.wall),
            "dur": u64::try_from(t.start.elapsed().as_micros()).unwrap_or(u64::MAX),
            "pid": std::process::id(),
            "tid": thread_id(),
            "args": t.args,
        }));
    }
}

/// Records the CPU the VMM `vmm_pid` has used so far, split into its vCPU
/// threads and the others (an instant event named `cpu.vmm`; the bench
/// reads it). Nothing when the process is gone.
pub fn add_vmm_cpu(vmm_pid: u32) {
    if let Some(event) = vmm_cpu(vmm_pid) {
        push(event);
    }
}

fn vmm_cpu(vmm_pid: u32) -> Option<Value> {
    let u = crate::metrics::ProcessUsage::of(vmm_pid)?;
    Some(json!({
        "name": "cpu.vmm", "cat": "cpu", "ph": "i", "s": "p",
        "ts": micros(SystemTime::now()),
        "pid": std::process::id(), "tid": thread_id(),
        "args": {"vmm_pid": vmm_pid, "vcpu_s": u.vcpu_seconds, "other_s": u.other_seconds},
    }))
}

/// This process's own CPU so far (user and system seconds), as an
/// instant event named `cpu.self`.
fn self_cpu() -> Value {
    // SAFETY: getrusage writes one rusage into `ru`.
    let mut ru: libc::rusage = unsafe { std::mem::zeroed() };
    // SAFETY: as above; RUSAGE_SELF is always valid.
    unsafe { libc::getrusage(libc::RUSAGE_SELF, &mut ru) };
    let secs = |t: libc::timeval| t.tv_sec as f64 + t.tv_usec as f64 / 1e6;
    json!({
        "name": "cpu.self", "cat": "cpu", "ph": "i", "s": "p",
        "ts": micros(SystemTime::now()),
        "pid": std::process::id(), "tid": thread_id(),
        "args": {"user_s": secs(ru.ru_utime), "sys_s": secs(ru.ru_stime)},
    })
}

/// The tests that record events or flush them, one at a time (the events
/// are the process's).
#[cfg(test)]
static TEST_LOCK: Mutex<()> = Mutex::new(());

#[cfg(test)]
mod tests {
    use super::*;
    use tracing_subscriber::layer::SubscriberExt;

    #[test]
    fn host_and_guest_spans_merge_into_one_file() {
        let _serial = TEST_LOCK.lock().unwrap_or_else(PoisonError::into_inner);
        let dir = std::env::temp_dir().join(format!("nacre-trace-{}", std::process::id()));
        std::fs::create_dir_all(&dir).unwrap();
        let file = dir.join("trace.json");
        let subscriber = tracing_subscriber::registry().with(TraceLayer);
        tracing::subscriber::with_default(subscriber, || {
            let _outer = tracing::info_span!("test.outer", id = "c1").entered();
            let _inner = tracing::info_span!("test.inner").entered();
        });
        add_guest(
            &[GuestSpan {
                name: "CreateContainer\u{1b}[31m".into(),
                start_us: 5,
                duration_us: 7,
                thread: 1,
            }],
            42,
        );
        flush(&file, "first").unwrap();
        // A second process's flush adds to the same file.
        add_guest(&[], 43);
        flush(&file, "second").unwrap();
        let doc: Value = serde_json::from_slice(&std::fs::read(&file).unwrap()).unwrap();
        let events = doc["traceEvents"].as_array().unwrap();
        let names: Vec<&str> = events.iter().filter_map(|e| e["name"].as_str()).collect();
        for want in ["test.outer", "test.inner", "agent.CreateContainer[31m"] {
            assert!(names.contains(&want), "{want} not in {names:?}");
        }
        let outer = events.iter().find(|e| e["name"] == "test.outer").unwrap();
        assert_eq!(outer["ph"], "X");
        assert_eq!(outer["args"]["id"], "c1");
        assert!(outer["ts"].as_u64().unwrap() > 0 && outer["dur"].is_u64());
        let guest = events
            .iter()
            .find(|e| e["name"] == "agent.CreateContainer[31m")
            .unwrap();
        assert_eq!(guest["pid"].as_u64(), Some(GUEST_PID_BASE + 42));
        // One name per process left: the guest of 43 has no span, both
        // flushes came from this process (the latest name stands).
        assert_eq!(names.iter().filter(|n| **n == "process_name").count(), 2);
        let own = events
            .iter()
            .find(|e| e["name"] == "process_name" && e["pid"] == std::process::id())
            .unwrap();
        assert_eq!(own["args"]["name"], "second");
        // Each flush records its process's CPU.
        let cpu: Vec<&Value> = events.iter().filter(|e| e["name"] == "cpu.self").collect();
        assert_eq!(cpu.len(), 2);
        assert!(cpu[0]["args"]["user_s"].as_f64().unwrap() >= 0.0);
        assert!(cpu[0]["args"]["sys_s"].is_f64());
        std::fs::remove_dir_all(&dir).unwrap();
    }

    #[test]
    fn the_cpu_of_a_vmm_is_split_into_vcpu_and_other_threads() {
        // This process stands in for the VMM: no thread is a vCPU.
        let e = vmm_cpu(std::process::id()).unwrap();
        assert_eq!(e["name"], "cpu.vmm");
        assert_eq!(e["args"]["vcpu_s"].as_f64(), Some(0.0));
        assert!(e["args"]["other_s"].as_f64().unwrap() >= 0.0);
    }
}
