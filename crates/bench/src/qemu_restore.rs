//! QEMU's own snapshot restore of the same guest, beside nacre's template
//! restore: QEMU microvm boots the guest to the agent's ready line, is
//! stopped and migrated to a file (`migrate "exec:cat > FILE"`), and a
//! new QEMU started with `-incoming "exec:cat FILE"` is timed from spawn
//! until QMP reports the guest running again (after `cont`: the source
//! was stopped, so the restored guest comes up paused).
//!
//! QEMU gets no agent channel here (no vhost-vsock on these hosts), so
//! its figure stops at "running", where nacre's stops at the restored
//! agent's first answer: QEMU's is the lower bound of its time to an
//! answering agent.

use std::io::{BufRead, BufReader, Write};
use std::os::unix::net::UnixStream;
use std::path::{Path, PathBuf};
use std::process::Command;
use std::time::{Duration, Instant};

use nacre_runtime::image::GuestImage;
use serde_json::{json, Value};

use crate::boot::{spawn_until_ready, BootError, Vmm};
use crate::memory::{self, Memory};

/// What one QEMU save and restore measured.
#[derive(Debug, Clone, serde::Serialize)]
pub struct QemuRestore {
    /// Seconds from `stop` to the migration's completion.
    pub save_secs: f64,
    /// Bytes of the migration file.
    pub snapshot_bytes: u64,
    /// Seconds from spawning the restoring QEMU to QMP's `running`.
    pub restore_running_secs: f64,
    /// The restored QEMU process's memory once running.
    pub memory: Memory,
}

/// Errors of the QEMU restore measurement.
#[derive(Debug, thiserror::Error)]
pub enum QemuRestoreError {
    #[error(transparent)]
    Boot(#[from] BootError),
    #[error("QMP at {path}: {detail}")]
    Qmp { path: PathBuf, detail: String },
    #[error("{what} {path}: {source}")]
    Io {
        what: &'static str,
        path: PathBuf,
        #[source]
        source: std::io::Error,
    },
}

/// One QMP connection (line-delimited JSON).
struct Qmp {
    path: PathBuf,
    reader: BufReader<UnixStream>,
    writer: UnixStream,
}

impl Qmp {
    fn connect(path: &Path, timeout: Duration) -> Result<Qmp, QemuRestoreError> {
        let deadline = Instant::now() + timeout;
        let stream = loop {
            match UnixStream::connect(path) {
                Ok(s) => break s,
                Err(_) if Instant::now() < deadline => {
                    std::thread::sleep(Duration::from_millis(10));
                }
                Err(e) => return Err(qmp_err(path, format!("connecting: {e}"))),
            }
        };
        stream
            .set_read_timeout(Some(timeout))
            .map_err(|e| qmp_err(path, e.to_string()))?;
        let writer = stream
            .try_clone()
            .map_err(|e| qmp_err(path, e.to_string()))?;
        let mut qmp = Qmp {
            path: path.to_path_buf(),
            reader: BufReader::new(stream),
            writer,
        };
        qmp.read()?; // the greeting
        qmp.execute("qmp_capabilities", None)?;
        Ok(qmp)
    }

    fn read(&mut self) -> Result<Value, QemuRestoreError> {
        let mut line = String::new();
        self.reader
            .read_line(&mut line)
            .map_err(|e| qmp_err(&self.path, format!("reading: {e}")))?;
        serde_json::from_str(&line).map_err(|e| qmp_err(&self.path, format!("{e}: {line:?}")))
    }

    /// Runs `command`; returns its `return` value (events are skipped).
    fn execute(&mut self, command: &str, args: Option<Value>) -> Result<Value, QemuRestoreError> {
        let mut msg = json!({ "execute": command });
        if let Some(a) = args {
            msg["arguments"] = a;
        }
        writeln!(self.writer, "{msg}").map_err(|e| qmp_err(&self.path, e.to_string()))?;
        loop {
            let v = self.read()?;
            if let Some(r) = v.get("return") {
                return Ok(r.clone());
            }
            if let Some(e) = v.get("error") {
                return Err(qmp_err(&self.path, format!("{command}: {e}")));
            }
        }
    }
}

fn qmp_err(path: &Path, detail: String) -> QemuRestoreError {
    QemuRestoreError::Qmp {
        path: path.to_path_buf(),
        detail,
    }
}

fn with_qmp(mut cmd: Command, socket: &Path) -> Command {
    cmd.arg("-qmp")
        .arg(format!("unix:{},server=on,wait=off", socket.display()));
    cmd
}

/// Boots, saves and restores the guest under QEMU `qemu` in `scratch`
/// (left for the caller to remove). Every QEMU started is killed.
pub fn measure(
    qemu: &Path,
    image: &GuestImage,
    memory_mib: u32,
    timeout: Duration,
    scratch: &Path,
) -> Result<QemuRestore, QemuRestoreError> {
    std::fs::create_dir_all(scratch).map_err(|source| QemuRestoreError::Io {
        what: "creating",
        path: scratch.to_path_buf(),
        source,
    })?;
    let vmm = Vmm::QemuMicrovm {
        binary: qemu.to_path_buf(),
    };
    let snapshot = scratch.join("qemu.snap");
    // Boot to the ready line, then stop and save.
    let save_sock = scratch.join("qmp-save.sock");
    let cmd = with_qmp(vmm.command(image, memory_mib, scratch), &save_sock);
    let mut booted = spawn_until_ready(cmd, "qemu-microvm", timeout)?;
    let saved = (|| {
        let mut qmp = Qmp::connect(&save_sock, timeout)?;
        let started = Instant::now();
        qmp.execute("stop", None)?;
        let uri = format!("exec:cat > {}", snapshot.display());
        qmp.execute("migrate", Some(json!({ "uri": uri })))?;
        loop {
            let status = qmp.execute("query-migrate", None)?;
            match status["status"].as_str() {
                Some("completed") => break,
                Some("failed") | Some("cancelled") => {
                    return Err(qmp_err(&save_sock, format!("migration: {status}")))
                }
                _ => std::thread::sleep(Duration::from_millis(20)),
            }
            if started.elapsed() > timeout {
                return Err(qmp_err(&save_sock, "migration timed out".into()));
            }
        }
        Ok(started.elapsed().as_secs_f64())
    })();
    let _ = booted.child.kill();
    let _ = booted.child.wait();
    let save_secs = saved?;
    let snapshot_bytes = std::fs::metadata(&snapshot).map_or(0, |m| m.len());
    // Restore from the file.
    let restore_sock = scratch.join("qmp-restore.sock");
    let mut cmd = with_qmp(vmm.command(image, memory_mib, scratch), &restore_sock);
    cmd.arg("-incoming")
        .arg(format!("exec:cat {}", snapshot.display()))
        .stdin(std::process::Stdio::null())
        .stdout(std::process::Stdio::null())
        .stderr(std::process::Stdio::null());
    let start = Instant::now();
    let mut child = cmd.spawn().map_err(|source| QemuRestoreError::Io {
        what: "starting",
        path: qemu.to_path_buf(),
        source,
    })?;
    let restored = (|| {
        let mut qmp = Qmp::connect(&restore_sock, timeout)?;
        let mut continued = false;
        loop {
            let status = qmp.execute("query-status", None)?;
            match status["status"].as_str() {
                Some("running") => break,
                Some("paused") | Some("postmigrate") if !continued => {
                    qmp.execute("cont", None)?;
                    continued = true;
                }
                _ => std::thread::sleep(Duration::from_millis(5)),
            }
            if start.elapsed() > timeout {
                return Err(qmp_err(
                    &restore_sock,
                    format!("still {status} after {timeout:?}"),
                ));
            }
        }
        Ok(start.elapsed().as_secs_f64())
    })();
    let memory = memory::of_pid(child.id()).unwrap_or_default();
    let _ = child.kill();
    let _ = child.wait();
    Ok(QemuRestore {
        save_secs,
        snapshot_bytes,
        restore_running_secs: restored?,
        memory,
    })
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::os::unix::net::UnixListener;

    #[test]
    fn qmp_skips_events_and_reports_errors() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("qmp.sock");
        let listener = UnixListener::bind(&path).unwrap();
        let server = std::thread::spawn(move || {
            let (stream, _) = listener.accept().unwrap();
            let mut w = stream.try_clone().unwrap();
            let mut r = BufReader::new(stream);
            writeln!(w, r#"{{"QMP": {{"version": {{}}, "capabilities": []}}}}"#).unwrap();
            let mut line = String::new();
            for reply in [
                r#"{"return": {}}"#,
                "{\"event\": \"STOP\"}\n{\"return\": {\"status\": \"paused\"}}",
                r#"{"error": {"class": "GenericError", "desc": "nope"}}"#,
            ] {
                line.clear();
                r.read_line(&mut line).unwrap();
                writeln!(w, "{reply}").unwrap();
            }
        });
        let mut qmp = Qmp::connect(&path, Duration::from_secs(5)).unwrap();
        let status = qmp.execute("query-status", None).unwrap();
        assert_eq!(status["status"], "paused");
        let err = qmp.execute("cont", None).unwrap_err().to_string();
        assert!(err.contains("cont") && err.contains("nope"), "{err}");
        server.join().unwrap();
    }
}
