//! A process's stdio ends as containerd gives them, for the one relay
//! ([`nacre_runtime::stdio`]).
//!
//! containerd passes FIFO paths (or, for stdout and stderr, a `file://` or
//! `binary://` log URI). The stdin copy ends (and closes the process's
//! stdin in the guest) when every writer of the FIFO closed it, or on
//! `CloseIO` once the FIFO holds nothing more: a client that keeps its end
//! open (CRI does) ends the input with `CloseIO`.

use std::fs::{File, OpenOptions};
use std::io::{Read, Write};
use std::path::PathBuf;
use std::process::{Child, Command, Stdio as ProcStdio};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use nacre_runtime::agent::AgentClient;
use nacre_runtime::stdio::{self, Ends, FifoInput, OutputEnd};

use crate::error::ShimError;

/// The stdio containerd asked for.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct StdioPaths {
    pub stdin: String,
    pub stdout: String,
    pub stderr: String,
    pub terminal: bool,
}

/// The relay of one process and what its ends hold.
#[derive(Debug)]
pub struct IoHandle {
    relay: stdio::Relay,
    logger: Option<Arc<Mutex<Child>>>,
    /// Dropped on `CloseIO`: wakes the stdin copy to finish.
    stdin_close: Mutex<Option<std::io::PipeWriter>>,
}

/// Where output goes.
enum Target {
    Fifo(PathBuf),
    File(PathBuf),
    Discard,
}

fn target(uri: &str) -> Result<Target, ShimError> {
    if uri.is_empty() {
        return Ok(Target::Discard);
    }
    if let Some(path) = uri.strip_prefix("file://") {
        return Ok(Target::File(PathBuf::from(path)));
    }
    if uri.contains("://") && !uri.starts_with("fifo://") {
        return Err(ShimError::InvalidArgument(format!(
            "unsupported stdio URI {uri:?} (FIFO paths, file:// and binary:// are supported)"
        )));
    }
    Ok(Target::Fifo(PathBuf::from(
        uri.strip_prefix("fifo://").unwrap_or(uri),
    )))
}

/// Starts copying for process `exec_id` of `cid`.
pub fn start(
    client: &Arc<dyn AgentClient>,
    cid: &str,
    exec_id: &str,
    paths: &StdioPaths,
    namespace: &str,
) -> Result<IoHandle, ShimError> {
    let mut logger = None;
    let (stdout, stderr): (OutputEnd, OutputEnd) = if paths.stdout.starts_with("binary://") {
        let (child, out, err) = spawn_log_binary(&paths.stdout, cid, namespace)?;
        logger = Some(Arc::new(Mutex::new(child)));
        (
            Box::new(move || Box::new(out) as _),
            Box::new(move || Box::new(err) as _),
        )
    } else {
        let out = target(&paths.stdout)?;
        // file:// logs get both streams in one file, as containerd's do.
        let err_uri = if paths.stderr.is_empty() && paths.stdout.starts_with("file://") {
            paths.stdout.clone()
        } else {
            paths.stderr.clone()
        };
        let err = target(&err_uri)?;
        (
            Box::new(move || open_target(out)),
            Box::new(move || open_target(err)),
        )
    };
    // With a terminal, all output is on stdout.
    let stderr = (!paths.terminal).then_some(stderr);
    let mut stdin_close = None;
    let stdin = if paths.stdin.is_empty() {
        // No stdin: the process reads EOF, as from /dev/null under runc.
        None
    } else {
        let path = PathBuf::from(paths.stdin.strip_prefix("fifo://").unwrap_or(&paths.stdin));
        let (wake, close) = std::io::pipe().map_err(ShimError::io("creating a pipe"))?;
        stdin_close = Some(close);
        Some(Box::new(FifoInput {
            path,
            wake: wake.into(),
        }) as Box<dyn stdio::InputEnd>)
    };
    let ends = Ends {
        stdin,
        stdout: Some(stdout),
        stderr,
        window: None,
    };
    let relay = stdio::start(client, cid, exec_id, ends)
        .map_err(ShimError::io("spawning the stdio threads"))?;
    Ok(IoHandle {
        relay,
        logger,
        stdin_close: Mutex::new(stdin_close),
    })
}

impl IoHandle {
    /// `CloseIO` with stdin (or the process exited): the stdin copy
    /// forwards what the FIFO still holds, then closes the process's
    /// stdin.
    pub fn close_stdin(&self) {
        let mut close = match self.stdin_close.lock() {
            Ok(w) => w,
            Err(p) => p.into_inner(),
        };
        close.take();
    }

    /// Waits up to `timeout` for the output streams to end (the process
    /// and anything that inherited its stdout exited), so that the exit
    /// event does not overtake the last output.
    pub fn wait_outputs(&self, timeout: Duration) {
        self.relay.wait_outputs(timeout);
        if let Some(child) = &self.logger {
            if let Ok(mut child) = child.lock() {
                let _ = child.wait();
            }
        }
    }
}

fn open_target(target: Target) -> Box<dyn Write + Send> {
    let opened = match &target {
        // Blocks until containerd opened the reading end.
        Target::Fifo(p) => OpenOptions::new().write(true).open(p),
        Target::File(p) => OpenOptions::new().create(true).append(true).open(p),
        Target::Discard => return Box::new(std::io::sink()),
    };
    match opened {
        Ok(f) => Box::new(f),
        Err(e) => {
            let path = match &target {
                Target::Fifo(p) | Target::File(p) => p.display().to_string(),
                Target::Discard => String::new(),
            };
            tracing::warn!("opening {path}: {e}; discarding the output");
            Box::new(std::io::sink())
        }
    }
}

/// Parses `binary:///path?k=v&k2=v2` into the program and its arguments
/// (`k v k2 v2`, as containerd's runc shim passes them).
pub fn parse_binary_uri(uri: &str) -> Result<(PathBuf, Vec<String>), ShimError> {
    let rest = uri
        .strip_prefix("binary://")
        .ok_or_else(|| ShimError::InvalidArgument(format!("{uri:?} is not a binary:// URI")))?;
    let (path, query) = rest.split_once('?').unwrap_or((rest, ""));
    if !path.starts_with('/') {
        return Err(ShimError::InvalidArgument(format!(
            "log binary in {uri:?} must be an absolute path"
        )));
    }
    let mut args = Vec::new();
    for pair in query.split('&').filter(|p| !p.is_empty()) {
        let (k, v) = pair.split_once('=').unwrap_or((pair, ""));
        args.push(k.to_string());
        if !v.is_empty() {
            args.push(v.to_string());
        }
    }
    Ok((PathBuf::from(path), args))
}

/// Starts a containerd logging binary: its fd 3 reads stdout, fd 4
/// stderr, and it closes fd 5 (or writes to it) once ready.
fn spawn_log_binary(
    uri: &str,
    cid: &str,
    namespace: &str,
) -> Result<(Child, File, File), ShimError> {
    use std::os::fd::{AsRawFd, OwnedFd};
    use std::os::unix::process::CommandExt;

    let (program, args) = parse_binary_uri(uri)?;
    let pipe = || -> Result<(OwnedFd, OwnedFd), ShimError> {
        let (r, w) = std::io::pipe().map_err(ShimError::io("creating a log pipe"))?;
        Ok((OwnedFd::from(r), OwnedFd::from(w)))
    };
    let (out_r, out_w) = pipe()?;
    let (err_r, err_w) = pipe()?;
    let (ready_r, ready_w) = pipe()?;
    let fds = [out_r.as_raw_fd(), err_r.as_raw_fd(), ready_w.as_raw_fd()];
    let mut cmd = Command::new(&program);
    cmd.args(&args)
        .env("CONTAINER_ID", cid)
        .env("CONTAINER_NAMESPACE", namespace)
        .stdin(ProcStdio::null())
        .stdout(ProcStdio::null())
        .stderr(ProcStdio::null());
    // SAFETY: the closure only calls dup2, which is async-signal-safe, on
    // descriptors that stay open in the parent until spawn returns.
    unsafe {
        cmd.pre_exec(move || {
            for (i, fd) in fds.iter().enumerate() {
                // dup2 clears FD_CLOEXEC on the new descriptor.
                let target = 3 + i32::try_from(i).unwrap_or(0);
                if libc::dup2(*fd, target) < 0 {
                    return Err(std::io::Error::last_os_error());
                }
            }
            Ok(())
        });
    }
    let child = cmd.spawn().map_err(ShimError::io(format!(
        "starting log binary {}",
        program.display()
    )))?;
    drop((out_r, err_r, ready_w));
    // Ready once it writes or closes its end.
    let mut ready = File::from(ready_r);
    let mut byte = [0u8; 1];
    let _ = ready.read(&mut byte);
    Ok((child, File::from(out_w), File::from(err_w)))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn binary_uris_parse() {
        let (p, a) = parse_binary_uri("binary:///usr/bin/logger?id=1&verbose").unwrap();
        assert_eq!(p, PathBuf::from("/usr/bin/logger"));
        assert_eq!(a, vec!["id", "1", "verbose"]);
        assert!(parse_binary_uri("binary://rel/path").is_err());
        assert!(parse_binary_uri("file:///x").is_err());
    }

    #[test]
    fn targets() {
        assert!(matches!(target("").unwrap(), Target::Discard));
        assert!(matches!(target("/run/x/stdout").unwrap(), Target::Fifo(_)));
        assert!(matches!(
            target("file:///var/log/x").unwrap(),
            Target::File(_)
        ));
        assert!(target("tcp://host:1").is_err());
    }
}
