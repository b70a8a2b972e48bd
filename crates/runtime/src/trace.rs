//! Traces: with `NACRE_TRACE=<file>`, the spans of a create, start, exec
//! and delete (the host's, from `tracing` spans, and the guest agent's,
//! from `Agent.GetTrace`) are written to `<file>` in the Trace Event
//! Format's JSON object form (`{"traceEvents": [...]}`), which Perfetto
//! and chrome://tracing load. Each process (the CLI command, its monitor)
//! merges its own events into the file when it ends, under a lock, so
//! one `nacre run` gives one file with every process on one timeline.
//!
//! Guest spans use the guest's wall clock, which the host sets when the
//! VM starts (so they line up with the host's to a few milliseconds);
//! their names are the guest's, cut to [`NAME_MAX`] printable characters,
//! and at most [`GUEST_SPANS_MAX`] are taken.

use std::fs::OpenOptions;
use std::io::{self, Write};
use std::os::fd::AsRawFd;
use std::path::{Path, PathBuf};
use std::sync::{Mutex, PoisonError};
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

/// The trace file, when tracing is on.
pub fn file() -> Option<PathBuf> {
    std::env::var_os(TRACE_ENV)
        .filter(|v| !v.is_empty())
        .map(PathBuf::from)
}

static EVENTS: Mutex<Vec<Value>> = Mutex::new(Vec::new());

fn push(event: Value) {
    EVENTS
        .lock()
        .unwrap_or_else(PoisonError::into_inner)
        .push(event);
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

/// Adds the spans of the guest of the VMM `vmm_pid`.
pub fn add_guest(spans: &[GuestSpan], vmm_pid: u32) {
    let pid = GUEST_PID_BASE + u64::from(vmm_pid);
    push(json!({
        "name": "process_name", "ph": "M", "pid": pid,
        "args": {"name": format!("guest agent (VM of nacre-vmm {vmm_pid})")},
    }));
    for s in spans.iter().take(GUEST_SPANS_MAX) {
        let name: String = s
            .name
            .chars()
            .filter(|c| c.is_ascii_graphic() || *c == ' ')
            .take(NAME_MAX)
            .collect();
        push(json!({
            "name": format!("agent.{name}"),
            "cat": "guest",
            "ph": "X",
            "ts": s.start_us,
            "dur": s.duration_us,
            "pid": pid,
            "tid": s.thread,
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

/// Merges this process's events (named `process` in the viewer) into the
/// trace file `path` and forgets them. The file is created if missing;
/// concurrent writers take turns (flock on `<path>.lock`).
pub fn flush(path: &Path, process: &str) -> io::Result<()> {
    let mut events = std::mem::take(&mut *EVENTS.lock().unwrap_or_else(PoisonError::into_inner));
    events.push(self_cpu());
    events.push(json!({
        "name": "process_name", "ph": "M", "pid": std::process::id(),
        "args": {"name": process},
    }));
    let lock_path = path.with_extension("lock");
    let lock = OpenOptions::new()
        .create(true)
        .truncate(false)
        .write(true)
        .open(&lock_path)?;
    // SAFETY: flock(2) on a descriptor this function owns; released when
    // `lock` is closed.
    if unsafe { libc::flock(lock.as_raw_fd(), libc::LOCK_EX) } != 0 {
        return Err(io::Error::last_os_error());
    }
    let mut all = match std::fs::read(path) {
        Ok(bytes) => serde_json::from_slice::<Value>(&bytes)
            .ok()
            .and_then(|v| v.get("traceEvents").and_then(Value::as_array).cloned())
            .unwrap_or_default(),
        Err(e) if e.kind() == io::ErrorKind::NotFound => Vec::new(),
        Err(e) => return Err(e),
    };
    all.extend(events);
    let doc = json!({"traceEvents": all, "displayTimeUnit": "ms"});
    let tmp = path.with_extension(format!("tmp.{}", std::process::id()));
    {
        let mut f = std::fs::File::create(&tmp)?;
        f.write_all(doc.to_string().as_bytes())?;
    }
    std::fs::rename(&tmp, path)
}

#[cfg(test)]
mod tests {
    use super::*;
    use tracing_subscriber::layer::SubscriberExt;

    #[test]
    fn host_and_guest_spans_merge_into_one_file() {
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
        assert_eq!(names.iter().filter(|n| **n == "process_name").count(), 4);
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
