//! `<runtime> run` of one OCI bundle, timed the same way for runc, crun and
//! nacre, and the host memory of one running nacre sandbox.

use std::os::unix::fs::symlink;
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::time::Instant;

use crate::memory::{self, Memory};

/// Errors preparing or running a bundle.
#[derive(Debug, thiserror::Error)]
pub enum ContainerBenchError {
    #[error("preparing {path}: {source}")]
    Io {
        path: PathBuf,
        #[source]
        source: std::io::Error,
    },
    #[error("`{command}` failed: {detail}")]
    Command { command: String, detail: String },
}

fn io_err(path: &Path) -> impl FnOnce(std::io::Error) -> ContainerBenchError + '_ {
    move |source| ContainerBenchError::Io {
        path: path.to_path_buf(),
        source,
    }
}

/// Writes an OCI bundle under `dir` whose rootfs is busybox-static and whose
/// process runs `args`. The spec is the one `crun spec` writes, with the
/// process and terminal settings changed.
pub fn busybox_bundle(dir: &Path, args: &[&str]) -> Result<PathBuf, ContainerBenchError> {
    let rootfs = dir.join("rootfs");
    for d in ["bin", "proc", "sys", "dev", "tmp", "etc"] {
        std::fs::create_dir_all(rootfs.join(d)).map_err(io_err(&rootfs))?;
    }
    let busybox = rootfs.join("bin/busybox");
    std::fs::copy("/bin/busybox", &busybox).map_err(io_err(&busybox))?;
    for applet in ["sh", "true", "echo", "sleep", "uname"] {
        let link = rootfs.join("bin").join(applet);
        symlink("busybox", &link).map_err(io_err(&link))?;
    }
    let out = Command::new("crun")
        .args(["spec", "--bundle"])
        .arg(dir)
        .output()
        .map_err(io_err(Path::new("crun")))?;
    if !out.status.success() {
        return Err(ContainerBenchError::Command {
            command: "crun spec".into(),
            detail: String::from_utf8_lossy(&out.stderr).into(),
        });
    }
    let config = dir.join("config.json");
    let text = std::fs::read_to_string(&config).map_err(io_err(&config))?;
    let mut spec: serde_json::Value =
        serde_json::from_str(&text).map_err(|e| ContainerBenchError::Command {
            command: "crun spec".into(),
            detail: format!("config.json: {e}"),
        })?;
    spec["process"]["args"] = serde_json::json!(args);
    spec["process"]["terminal"] = serde_json::json!(false);
    spec["root"]["readonly"] = serde_json::json!(true);
    std::fs::write(&config, spec.to_string()).map_err(io_err(&config))?;
    Ok(dir.to_path_buf())
}

/// An OCI runtime command line: the binary and its global flags.
#[derive(Debug, Clone)]
pub struct Runtime {
    pub name: &'static str,
    pub binary: PathBuf,
    pub root: PathBuf,
}

/// crun 1.8 refuses a hybrid cgroup host whose v2 `unified` hierarchy
/// has controllers ("cgroups in hybrid mode not supported"), as these
/// hosts have (hugetlb). runc uses the v1 hierarchies there.
fn hybrid_cgroup2_has_controllers() -> bool {
    std::fs::read_to_string("/sys/fs/cgroup/unified/cgroup.controllers")
        .is_ok_and(|c| !c.trim().is_empty())
}

/// Runs the command in a mount namespace of its own without the v2
/// `unified` mount, so crun uses the v1 hierarchies as runc does. The
/// host's mounts are untouched.
fn hide_unified_cgroup2(cmd: &mut Command) {
    use std::os::unix::process::CommandExt;
    // SAFETY: the closure runs in the forked child before exec and makes
    // only async-signal-safe system calls (unshare, mount, umount2) on
    // constant C strings; it allocates nothing.
    unsafe {
        cmd.pre_exec(|| {
            if libc::unshare(libc::CLONE_NEWNS) != 0
                || libc::mount(
                    c"none".as_ptr(),
                    c"/".as_ptr(),
                    std::ptr::null(),
                    libc::MS_REC | libc::MS_PRIVATE,
                    std::ptr::null(),
                ) != 0
                || libc::umount2(c"/sys/fs/cgroup/unified".as_ptr(), libc::MNT_DETACH) != 0
            {
                return Err(std::io::Error::last_os_error());
            }
            Ok(())
        });
    }
}

impl Runtime {
    fn command(&self) -> Command {
        let mut cmd = Command::new(&self.binary);
        cmd.arg("--root").arg(&self.root);
        if self.name == "crun" && hybrid_cgroup2_has_controllers() {
            hide_unified_cgroup2(&mut cmd);
        }
        cmd
    }

    fn checked(&self, mut cmd: Command, what: &str) -> Result<(), ContainerBenchError> {
        let out = cmd
            .stdin(Stdio::null())
            .output()
            .map_err(io_err(&self.binary))?;
        if out.status.success() {
            Ok(())
        } else {
            Err(ContainerBenchError::Command {
                command: format!("{} {what}", self.name),
                detail: format!(
                    "{}: {}",
                    out.status,
                    String::from_utf8_lossy(&out.stderr).trim()
                ),
            })
        }
    }

    /// Times `<runtime> run --bundle B <id>` in the foreground, from spawn
    /// to exit, and checks it exited 0.
    pub fn time_run(&self, bundle: &Path, id: &str) -> Result<f64, ContainerBenchError> {
        self.time_run_traced(bundle, id, None)
    }

    /// [`Runtime::time_run`] with `NACRE_TRACE=<trace>` when given.
    pub fn time_run_traced(
        &self,
        bundle: &Path,
        id: &str,
        trace: Option<&Path>,
    ) -> Result<f64, ContainerBenchError> {
        let mut cmd = self.command();
        cmd.args(["run", "--bundle"]).arg(bundle).arg(id);
        if let Some(t) = trace {
            cmd.env(nacre_runtime::trace::TRACE_ENV, t);
        }
        cmd.stdout(Stdio::null());
        let start = Instant::now();
        self.checked(cmd, "run")?;
        Ok(start.elapsed().as_secs_f64())
    }

    /// Starts `<runtime> run --detach`, measures the memory of the
    /// container's host processes (the pid in `state` and every descendant),
    /// then deletes it.
    pub fn running_memory(&self, bundle: &Path, id: &str) -> Result<Memory, ContainerBenchError> {
        let result = self
            .run_detached(bundle, id)
            .and_then(|()| self.state_pid(id))
            .map(tree_memory);
        let mut del = self.command();
        del.args(["delete", "--force", id]);
        let deleted = self.checked(del, "delete --force");
        let memory = result?;
        deleted?;
        Ok(memory)
    }

    /// `run --detach`. The container's monitor keeps the caller's stdio, so
    /// its output goes to a file rather than a pipe that would stay open.
    fn run_detached(&self, bundle: &Path, id: &str) -> Result<(), ContainerBenchError> {
        std::fs::create_dir_all(&self.root).map_err(io_err(&self.root))?;
        let log = self.root.join(format!("{id}.stderr"));
        let file = std::fs::File::create(&log).map_err(io_err(&log))?;
        let status = self
            .command()
            .args(["run", "--detach", "--bundle"])
            .arg(bundle)
            .arg(id)
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(file)
            .status()
            .map_err(io_err(&self.binary))?;
        if status.success() {
            return Ok(());
        }
        Err(ContainerBenchError::Command {
            command: format!("{} run --detach", self.name),
            detail: format!(
                "{status}: {}",
                std::fs::read_to_string(&log).unwrap_or_default().trim()
            ),
        })
    }

    fn state_pid(&self, id: &str) -> Result<u32, ContainerBenchError> {
        let mut cmd = self.command();
        let out = cmd
            .args(["state", id])
            .output()
            .map_err(io_err(&self.binary))?;
        serde_json::from_slice::<serde_json::Value>(&out.stdout)
            .ok()
            .and_then(|v| v["pid"].as_u64())
            .and_then(|p| u32::try_from(p).ok())
            .ok_or_else(|| ContainerBenchError::Command {
                command: format!("{} state", self.name),
                detail: String::from_utf8_lossy(&out.stderr).into(),
            })
    }
}

/// Sums the memory of `pid` and all its descendants.
pub fn tree_memory(pid: u32) -> Memory {
    let mut total = Memory::default();
    let mut todo = vec![pid];
    while let Some(p) = todo.pop() {
        total = total + memory::of_pid(p).unwrap_or_default();
        todo.extend(children(p));
    }
    total
}

fn children(pid: u32) -> Vec<u32> {
    let Ok(dir) = std::fs::read_dir("/proc") else {
        return Vec::new();
    };
    dir.filter_map(Result::ok)
        .filter_map(|e| e.file_name().to_str()?.parse::<u32>().ok())
        .filter(|&p| parent_of(p) == Some(pid))
        .collect()
}

fn parent_of(pid: u32) -> Option<u32> {
    let stat = std::fs::read_to_string(format!("/proc/{pid}/stat")).ok()?;
    // The command name may hold spaces: the fields after it follow the last ')'.
    let rest = stat.get(stat.rfind(')')? + 2..)?;
    rest.split_whitespace().nth(1)?.parse().ok()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn own_parent_is_found() {
        let me = std::process::id();
        assert!(parent_of(me).is_some());
        assert!(tree_memory(me).rss_kib > 0);
    }
}
