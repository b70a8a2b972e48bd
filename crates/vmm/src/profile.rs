//! A sampling profiler of the guest, for boot-time work.
//!
//! With `NACRE_VMM_PROFILE=<file>` in its environment, nacre-vmm kicks
//! every vCPU out of KVM_RUN every [`INTERVAL`] and appends the guest's
//! instruction pointer to `<file>` (one hex address per line, then the
//! time of the sample in microseconds since the Unix epoch, to line it
//! up with a `NACRE_TRACE` timeline). Resolve
//! them against `vmlinux`'s symbols (`nm -n vmlinux`) to see where a boot
//! spends its time; `guest/kernel/profile.sh` does that.

use std::fs::File;
use std::io::{self, Write};
use std::sync::{Arc, Mutex, OnceLock};
use std::time::Duration;

/// Time between two samples.
pub const INTERVAL: Duration = Duration::from_millis(5);

/// The environment variable naming the output file.
pub const ENV: &str = "NACRE_VMM_PROFILE";

static OUTPUT: OnceLock<Mutex<io::BufWriter<File>>> = OnceLock::new();

/// Opens the output file if profiling was asked for (`nacre-vmm` does it
/// first, before its jail); returns whether it was.
pub fn init() -> io::Result<bool> {
    let Some(path) = std::env::var_os(ENV) else {
        return Ok(false);
    };
    let file = File::create(&path)?;
    let _ = OUTPUT.set(Mutex::new(io::BufWriter::new(file)));
    Ok(true)
}

/// Whether samples are being taken.
pub fn enabled() -> bool {
    OUTPUT.get().is_some()
}

/// Records one sample.
pub fn record(rip: u64) {
    if let Some(out) = OUTPUT.get() {
        let mut out = out.lock().unwrap_or_else(|p| p.into_inner());
        let at = std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .map_or(0, |d| d.as_micros());
        let _ = writeln!(out, "{rip:016x} {at}");
    }
}

/// Writes buffered samples out.
pub fn flush() {
    if let Some(out) = OUTPUT.get() {
        let _ = out.lock().unwrap_or_else(|p| p.into_inner()).flush();
    }
}

/// Starts the thread that kicks the vCPUs (`kick`) every [`INTERVAL`].
pub fn spawn_ticker(kick: Arc<dyn Fn() + Send + Sync>) -> io::Result<()> {
    crate::seccomp::spawn(
        crate::seccomp::ThreadKind::Profile,
        "profiler".into(),
        move || loop {
            std::thread::sleep(INTERVAL);
            kick();
            flush();
        },
    )
    .map(|_| ())
}

/// Starts the ticker for the vCPUs of `control` when [`init`] opened an
/// output (before the jail: the output's path is the host's).
pub fn start(control: &Arc<crate::vcpu::VcpuControl>) -> io::Result<()> {
    if !enabled() {
        return Ok(());
    }
    let control = Arc::clone(control);
    spawn_ticker(Arc::new(move || control.kick()))
}
