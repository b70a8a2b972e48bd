//! Where the guest console (the UART's output) goes: a log file on the
//! host's `/run` tmpfs and/or stdout. Everything here is written by the
//! guest, so it is bounded: at most `max_bytes` reach the sinks, then one
//! truncation line, then the rest is dropped and counted.
//!
//! The console is also how the VMM learns that the guest kernel panicked
//! (with `panic=-1` a panic is a reset, which must not pass for a clean
//! shutdown). But once containers run, any of them that reaches ttyS0
//! (e.g. with `mknod c 4 64`, see the security review's M5) can print the
//! kernel's panic message. So the marker is trusted only until the agent
//! prints its ready line: up to then, only the kernel and the agent (PID 1)
//! run in the guest, and no container exists. A panic after readiness is
//! reported as a plain reset (the shim sees its agent connection drop).
//! A restored VM was snapshotted after its agent was ready: the marker is
//! never trusted there ([`SerialOutput::after_ready`]). A paravirtual panic
//! signal (pvpanic, Hyper-V crash MSRs) would lift this limit, but needs
//! guest kernel support nacre does not have yet.

use std::fs::File;
use std::io::{self, Write};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;

/// What Linux prints when it panics.
pub const PANIC_MARKER: &[u8] = b"Kernel panic - not syncing";
/// The start of the line nacre-agent prints on the console once it serves
/// (`nacre_agent::READY_LINE`; the VMM does not depend on the agent crate).
pub const READY_MARKER: &[u8] = b"nacre-agent: ready";
/// Default cap on the console bytes written: 1 MiB.
pub const DEFAULT_MAX_BYTES: u64 = 1 << 20;

const SCAN_MAX: usize = 256;
const FLUSH_AT: usize = 4096;

/// The guest console's sinks, with the byte cap and the panic watch.
#[derive(Debug)]
pub struct SerialOutput {
    log: Option<File>,
    stdout: bool,
    line: Vec<u8>,
    scan: Vec<u8>,
    panicked: Arc<AtomicBool>,
    /// The agent said it is ready: the panic marker is no longer trusted.
    ready: bool,
    failed_once: bool,
    max_bytes: u64,
    written: u64,
    dropped: u64,
}

impl Default for SerialOutput {
    fn default() -> Self {
        Self::new(None, false)
    }
}

impl SerialOutput {
    /// Output to `log` (if any) and to stdout when `stdout` is set, at most
    /// [`DEFAULT_MAX_BYTES`].
    pub fn new(log: Option<File>, stdout: bool) -> Self {
        Self {
            log,
            stdout,
            line: Vec::new(),
            scan: Vec::new(),
            panicked: Arc::new(AtomicBool::new(false)),
            ready: false,
            failed_once: false,
            max_bytes: DEFAULT_MAX_BYTES,
            written: 0,
            dropped: 0,
        }
    }

    /// Writes at most `max_bytes` (the truncation line included).
    pub fn with_max_bytes(mut self, max_bytes: u64) -> Self {
        self.max_bytes = max_bytes;
        self
    }

    /// For a guest whose agent is already ready (a restored VM): the panic
    /// marker is never trusted.
    pub fn after_ready(mut self) -> Self {
        self.ready = true;
        self
    }

    /// Set once the guest kernel printed a panic before its agent was ready.
    pub fn panic_flag(&self) -> Arc<AtomicBool> {
        self.panicked.clone()
    }

    /// Console bytes dropped at the cap.
    pub fn dropped(&self) -> u64 {
        self.dropped
    }

    fn scan(&mut self, buf: &[u8]) {
        if self.ready {
            return;
        }
        for &b in buf {
            if b == b'\n' {
                let has = |m: &[u8]| self.scan.windows(m.len()).any(|w| w == m);
                if has(READY_MARKER) {
                    self.ready = true;
                    self.scan = Vec::new();
                    return;
                }
                if has(PANIC_MARKER) {
                    self.panicked.store(true, Ordering::SeqCst);
                }
                self.scan.clear();
            } else if self.scan.len() < SCAN_MAX {
                self.scan.push(b);
            }
        }
    }

    /// Writes out the pending bytes under the cap. A sink that fails loses
    /// them (and is reported once); the other sink still gets them.
    fn emit(&mut self) {
        if self.line.is_empty() {
            return;
        }
        let line = std::mem::take(&mut self.line);
        let room = self.max_bytes.saturating_sub(self.written);
        if room == 0 {
            self.dropped += line.len() as u64;
        } else if (line.len() as u64) + (TRUNCATED.len() as u64) <= room {
            self.put(&line);
        } else {
            // The cap is reached: as much as fits with the marker, once.
            let keep = room.saturating_sub(TRUNCATED.len() as u64) as usize;
            let keep = keep.min(line.len());
            self.dropped += (line.len() - keep) as u64;
            let mut last = line[..keep].to_vec();
            if (TRUNCATED.len() as u64) <= room {
                last.extend_from_slice(TRUNCATED);
            }
            self.put(&last);
            self.written = self.max_bytes;
        }
        self.line = line;
        self.line.clear();
    }

    fn put(&mut self, bytes: &[u8]) {
        self.written += bytes.len() as u64;
        let mut result = Ok(());
        if let Some(log) = self.log.as_mut() {
            result = log.write_all(bytes);
        }
        if self.stdout {
            let mut out = io::stdout().lock();
            let r = out.write_all(bytes).and_then(|()| out.flush());
            result = result.and(r);
        }
        if let Err(e) = result {
            if !self.failed_once {
                self.failed_once = true;
                tracing::warn!("guest console output lost: {e}");
            }
        }
    }
}

const TRUNCATED: &[u8] = b"\n[nacre-vmm: console log truncated here; later output is dropped]\n";

impl Write for SerialOutput {
    fn write(&mut self, buf: &[u8]) -> io::Result<usize> {
        self.scan(buf);
        if self.written >= self.max_bytes {
            self.dropped += buf.len() as u64;
            return Ok(buf.len());
        }
        self.line.extend_from_slice(buf);
        if buf.contains(&b'\n') || self.line.len() >= FLUSH_AT {
            self.emit();
        }
        Ok(buf.len())
    }

    fn flush(&mut self) -> io::Result<()> {
        self.emit();
        Ok(())
    }
}

impl Drop for SerialOutput {
    fn drop(&mut self) {
        self.emit();
        if self.dropped > 0 {
            tracing::info!(
                bytes = self.dropped,
                "guest console output dropped at the {} byte cap",
                self.max_bytes
            );
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::io::Read;

    #[test]
    fn kernel_panic_is_noticed() {
        let mut out = SerialOutput::new(None, false);
        let flag = out.panic_flag();
        let _ = out.write(b"[    1.0] Kernel panic - not sync");
        assert!(!flag.load(Ordering::SeqCst), "not before the line ends");
        let _ = out.write(b"ing: VFS: Unable to mount root fs\n");
        assert!(flag.load(Ordering::SeqCst));
        let mut calm = SerialOutput::new(None, false);
        let _ = calm.write(b"all good\nKernel panic? no\n");
        assert!(!calm.panic_flag().load(Ordering::SeqCst));
    }

    #[test]
    fn a_panic_line_after_the_agent_is_ready_is_not_trusted() {
        let mut out = SerialOutput::new(None, false);
        let flag = out.panic_flag();
        let _ = out.write(b"nacre-agent: ready, started at 0.5 s, ready at 0.6 s of uptime\n");
        // What a container writing to ttyS0 could print.
        let _ = out.write(b"Kernel panic - not syncing: fake\n");
        assert!(!flag.load(Ordering::SeqCst));
        let mut restored = SerialOutput::new(None, false).after_ready();
        let _ = restored.write(b"Kernel panic - not syncing: fake\n");
        assert!(!restored.panic_flag().load(Ordering::SeqCst));
    }

    #[test]
    fn ten_mib_of_console_output_stop_at_the_cap() {
        let path = std::env::temp_dir().join(format!("nacre-console-cap-{}", std::process::id()));
        let file = File::create(&path).unwrap();
        let cap = 1 << 20;
        let mut out = SerialOutput::new(Some(file), false).with_max_bytes(cap);
        let chunk = [b'x'; 999];
        let mut sent = 0u64;
        // 10 MiB, one byte at a time for the first lines (as the UART does).
        for b in b"boot line\n" {
            let _ = out.write(&[*b]);
            sent += 1;
        }
        while sent < 10 << 20 {
            let _ = out.write(&chunk);
            let _ = out.write(b"\n");
            sent += 1000;
        }
        out.flush().unwrap();
        let dropped = out.dropped();
        drop(out);
        let mut data = Vec::new();
        File::open(&path).unwrap().read_to_end(&mut data).unwrap();
        let _ = std::fs::remove_file(&path);
        assert_eq!(data.len() as u64, cap);
        assert!(data.starts_with(b"boot line\n"));
        assert!(data.ends_with(TRUNCATED));
        assert_eq!(dropped, sent - (cap - TRUNCATED.len() as u64));
    }
}
