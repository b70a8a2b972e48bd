//! Boot a guest under a VMM and time it to the agent's ready line.

use std::io::{BufRead, BufReader};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::sync::mpsc;
use std::time::{Duration, Instant};

use nacre_runtime::host::{kernel_mode, KernelMode};
use nacre_runtime::image::GuestImage;

use crate::memory::{self, Memory};

/// The line the guest agent prints on the console once it listens.
pub const READY_MARKER: &str = "nacre-agent: ready";

/// Kernel command line both VMMs boot with (the VMM adds its own device
/// declarations; QEMU's microvm adds its own too).
pub fn guest_cmdline() -> String {
    let mut cmdline = String::from(nacre_vmm::cmdline::BASE);
    if kernel_mode() == KernelMode::Emulated {
        // What nacre-vmm adds on such a host, so both VMMs boot the same.
        cmdline.push(' ');
        cmdline.push_str(nacre_vmm::cmdline::PVM_QUIRKS);
    }
    cmdline
}

/// A VMM to boot the guest image with.
#[derive(Debug, Clone)]
pub enum Vmm {
    /// nacre's own VMM, with its hybrid vsock device.
    Nacre { binary: PathBuf },
    /// QEMU's microvm machine from Debian's qemu-system-x86.
    QemuMicrovm { binary: PathBuf },
}

impl Vmm {
    /// A short name for reports.
    pub fn name(&self) -> &'static str {
        match self {
            Vmm::Nacre { .. } => "nacre-vmm",
            Vmm::QemuMicrovm { .. } => "qemu-microvm",
        }
    }

    /// The VMM's command line for `image` (console on stdout).
    pub fn command(&self, image: &GuestImage, memory_mib: u32, scratch: &Path) -> Command {
        match self {
            Vmm::Nacre { binary } => {
                let mut cmd = Command::new(binary);
                cmd.arg("--kernel")
                    .arg(&image.kernel)
                    .arg("--initrd")
                    .arg(&image.initrd)
                    .arg("--memory-mib")
                    .arg(memory_mib.to_string())
                    .arg("--serial-stdout")
                    .arg("--vsock-uds")
                    .arg(scratch.join("vsock.sock"))
                    .arg("--api-socket")
                    .arg(scratch.join("api.sock"));
                cmd
            }
            Vmm::QemuMicrovm { binary } => {
                let mut cmd = Command::new(binary);
                // qemu64 says AuthenticAMD; without XSAVEERPTR the guest
                // kernel flags AMD's FXSAVE leak and runs `fnclex` in
                // kernel mode, which this host's emulator of guest kernel
                // mode cannot execute on AMD hosts (KVM internal error,
                // emulation failure). nacre-vmm passes the host's CPUID,
                // which has it; QEMU drops the flag where KVM lacks it.
                cmd.args(["-machine", "microvm,accel=kvm"])
                    .args(["-cpu", "qemu64,+x2apic,+xsaveerptr"])
                    .args(["-m", &memory_mib.to_string(), "-smp", "1"])
                    .args(["-nodefaults", "-no-user-config", "-nographic"])
                    .args(["-serial", "stdio", "-no-reboot"])
                    .arg("-kernel")
                    .arg(&image.kernel)
                    .arg("-initrd")
                    .arg(&image.initrd)
                    .arg("-append")
                    .arg(guest_cmdline());
                cmd
            }
        }
    }
}

/// What one boot measured.
#[derive(Debug, Clone, serde::Serialize)]
pub struct BootSample {
    pub vmm: &'static str,
    /// Seconds from spawning the VMM to the agent's ready line.
    pub ready_secs: f64,
    /// Seconds from spawning the VMM to the first console byte.
    pub first_output_secs: f64,
    /// The VMM process's memory when the agent was ready.
    pub memory: Memory,
    /// Guest uptime when the agent started and when it was ready, from
    /// its ready line: what the kernel took, and what the agent took.
    pub guest_uptime: Option<(f64, f64)>,
}

/// The two uptimes of the agent's ready line (`..., started at 1.234 s,
/// ready at 1.567 s of uptime)`), if present.
pub fn parse_guest_uptime(line: &str) -> Option<(f64, f64)> {
    let number_after = |key: &str| -> Option<f64> {
        let rest = &line[line.find(key)? + key.len()..];
        rest.split_whitespace().next()?.parse().ok()
    };
    Some((number_after("started at ")?, number_after("ready at ")?))
}

/// Errors booting a guest for a benchmark or a test.
#[derive(Debug, thiserror::Error)]
pub enum BootError {
    #[error("starting {vmm}: {source}")]
    Spawn {
        vmm: String,
        #[source]
        source: std::io::Error,
    },
    #[error("scratch directory {path}: {source}")]
    Scratch {
        path: PathBuf,
        #[source]
        source: std::io::Error,
    },
    #[error("{vmm}: no `{READY_MARKER}` within {timeout:?}; console:\n{console}")]
    Timeout {
        vmm: &'static str,
        timeout: Duration,
        console: String,
    },
    #[error("{vmm} exited before the agent was ready; console:\n{console}")]
    Exited { vmm: &'static str, console: String },
}

/// Boots `image` under `vmm`, waits for the ready line, samples the VMM's
/// memory, then kills the VMM. Nothing is left running or on disk.
pub fn boot_to_ready(
    vmm: &Vmm,
    image: &GuestImage,
    memory_mib: u32,
    timeout: Duration,
) -> Result<BootSample, BootError> {
    let scratch =
        std::env::temp_dir().join(format!("nacre-bench-{}-{}", std::process::id(), vmm.name()));
    std::fs::create_dir_all(&scratch).map_err(|source| BootError::Scratch {
        path: scratch.clone(),
        source,
    })?;
    let result = boot_in(vmm, image, memory_mib, timeout, &scratch);
    let _ = std::fs::remove_dir_all(&scratch);
    result
}

fn boot_in(
    vmm: &Vmm,
    image: &GuestImage,
    memory_mib: u32,
    timeout: Duration,
    scratch: &Path,
) -> Result<BootSample, BootError> {
    let cmd = vmm.command(image, memory_mib, scratch);
    let mut ready = spawn_until_ready(cmd, vmm.name(), timeout)?;
    let memory = memory::of_pid(ready.child.id()).unwrap_or_default();
    let sample = BootSample {
        vmm: vmm.name(),
        ready_secs: (ready.ready_at - ready.start).as_secs_f64(),
        first_output_secs: (ready.first_output - ready.start).as_secs_f64(),
        memory,
        guest_uptime: parse_guest_uptime(&ready.ready_line),
    };
    let _ = ready.child.kill();
    let _ = ready.child.wait();
    Ok(sample)
}

/// A VMM whose guest printed the agent's ready line; the caller kills it.
pub struct Ready {
    pub child: Child,
    pub start: Instant,
    pub first_output: Instant,
    pub ready_at: Instant,
    pub ready_line: String,
}

/// Spawns `cmd` (a VMM writing the guest console to its stdout) and
/// waits until the guest prints [`READY_MARKER`]. On failure the VMM is
/// killed.
pub fn spawn_until_ready(
    mut cmd: Command,
    name: &'static str,
    timeout: Duration,
) -> Result<Ready, BootError> {
    cmd.stdin(Stdio::null())
        .stdout(Stdio::piped())
        .stderr(Stdio::null());
    let start = Instant::now();
    let mut child = cmd.spawn().map_err(|source| BootError::Spawn {
        vmm: name.into(),
        source,
    })?;
    let guard = KillOnDrop(&mut child);
    let (tx, rx) = mpsc::channel();
    if let Some(stdout) = guard.0.stdout.take() {
        std::thread::spawn(move || {
            for line in BufReader::new(stdout).split(b'\n').map_while(Result::ok) {
                if tx.send((Instant::now(), line)).is_err() {
                    break;
                }
            }
        });
    }
    let mut console = String::new();
    let mut first_output = None;
    let deadline = start + timeout;
    let (ready_at, ready_line) = loop {
        let left = deadline.saturating_duration_since(Instant::now());
        match rx.recv_timeout(left) {
            Ok((at, line)) => {
                first_output.get_or_insert(at);
                let line = String::from_utf8_lossy(&line).into_owned();
                console.push_str(&line);
                console.push('\n');
                if line.contains(READY_MARKER) {
                    break (at, line);
                }
            }
            Err(mpsc::RecvTimeoutError::Timeout) => {
                return Err(BootError::Timeout {
                    vmm: name,
                    timeout,
                    console,
                })
            }
            Err(mpsc::RecvTimeoutError::Disconnected) => {
                return Err(BootError::Exited { vmm: name, console })
            }
        }
    };
    std::mem::forget(guard);
    Ok(Ready {
        child,
        start,
        first_output: first_output.unwrap_or(ready_at),
        ready_at,
        ready_line,
    })
}

struct KillOnDrop<'a>(&'a mut Child);

impl Drop for KillOnDrop<'_> {
    fn drop(&mut self) {
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn ready_line_uptimes() {
        let line = "nacre-agent: ready (listening on vsock://-1:1024, started at 15.587 s, ready at 16.116 s of uptime)";
        assert_eq!(parse_guest_uptime(line), Some((15.587, 16.116)));
        assert_eq!(
            parse_guest_uptime("nacre-agent: ready (listening on x)"),
            None
        );
    }

    #[test]
    fn cmdline_has_console_and_reset() {
        let c = guest_cmdline();
        assert!(c.contains("console=ttyS0"));
        assert!(c.contains("reboot=k"));
    }

    #[test]
    fn missing_binary_is_a_spawn_error() {
        let vmm = Vmm::QemuMicrovm {
            binary: "/nonexistent/qemu".into(),
        };
        let image = GuestImage {
            kernel: "/k".into(),
            initrd: "/i".into(),
        };
        let err = boot_to_ready(&vmm, &image, 64, Duration::from_secs(1)).unwrap_err();
        assert!(matches!(err, BootError::Spawn { .. }), "{err}");
    }
}
