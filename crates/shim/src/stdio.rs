//! A process's stdio between containerd and the agent.
//!
//! containerd passes FIFO paths (or, for stdout and stderr, a `file://` or
//! `binary://` log URI). One thread per stream copies: the stdin FIFO to
//! `Agent.WriteStdin` (then `CloseStdin` at EOF), `Agent.ReadStdout` /
//! `ReadStderr` to the FIFO or log until the agent reports the end of the
//! stream. The agent calls block, so these are plain threads.
//!
//! The stdin copy ends (and closes the process's stdin in the guest) when
//! every writer of the FIFO closed it, or on `CloseIO` once the FIFO holds
//! nothing more: a client that keeps its end open (CRI does) ends the
//! input with `CloseIO`.

use std::fs::{File, OpenOptions};
use std::io::{Read, Write};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio as ProcStdio};
use std::sync::mpsc;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use nacre_runtime::agent::AgentClient;

use crate::error::ShimError;

/// The stdio containerd asked for.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct StdioPaths {
    pub stdin: String,
    pub stdout: String,
    pub stderr: String,
    pub terminal: bool,
}

/// The copy threads of one process.
#[derive(Debug)]
pub struct IoHandle {
    outputs: Mutex<Vec<mpsc::Receiver<()>>>,
    logger: Option<Arc<Mutex<Child>>>,
    /// Dropped on `CloseIO`: wakes the stdin copy to finish.
    stdin_close: Mutex<Option<std::io::PipeWriter>>,
}

#[derive(Clone, Copy)]
enum Stream {
    Stdout,
    Stderr,
}

/// Opens an output's destination (in its copy thread: a FIFO open blocks).
type Opener = Box<dyn FnOnce() -> Box<dyn Write + Send> + Send>;

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
    let mut outputs = Vec::new();
    let mut logger = None;
    let streams: Vec<(Stream, Opener)> = if paths.stdout.starts_with("binary://") {
        let (child, out, err) = spawn_log_binary(&paths.stdout, cid, namespace)?;
        logger = Some(Arc::new(Mutex::new(child)));
        let mut v: Vec<(Stream, Opener)> =
            vec![(Stream::Stdout, Box::new(move || Box::new(out) as _))];
        if !paths.terminal {
            v.push((Stream::Stderr, Box::new(move || Box::new(err) as _)));
        }
        v
    } else {
        let mut v: Vec<(Stream, Opener)> = Vec::new();
        let out = target(&paths.stdout)?;
        v.push((Stream::Stdout, Box::new(move || open_target(out))));
        if !paths.terminal {
            // file:// logs get both streams in one file, as containerd's do.
            let err_uri = if paths.stderr.is_empty() && paths.stdout.starts_with("file://") {
                paths.stdout.clone()
            } else {
                paths.stderr.clone()
            };
            let err = target(&err_uri)?;
            v.push((Stream::Stderr, Box::new(move || open_target(err))));
        }
        v
    };
    for (stream, open) in streams {
        let (tx, rx) = mpsc::channel();
        outputs.push(rx);
        let client = client.clone();
        let (cid, exec_id) = (cid.to_string(), exec_id.to_string());
        spawn_thread("stdio-out", move || {
            pump_output(&client, &cid, &exec_id, stream, open());
            let _ = tx.send(());
        })?;
    }
    let client = client.clone();
    let (cid, exec_id) = (cid.to_string(), exec_id.to_string());
    let mut stdin_close = None;
    if paths.stdin.is_empty() {
        // No stdin: the process reads EOF, as from /dev/null under runc.
        if let Err(e) = client.close_stdin(&cid, &exec_id) {
            tracing::debug!(cid, exec_id, "closing unused stdin: {e}");
        }
    } else {
        let stdin = PathBuf::from(paths.stdin.strip_prefix("fifo://").unwrap_or(&paths.stdin));
        let (wake, close) = std::io::pipe().map_err(ShimError::io("creating a pipe"))?;
        stdin_close = Some(close);
        spawn_thread("stdio-in", move || {
            pump_stdin(&client, &cid, &exec_id, &stdin, &wake)
        })?;
    }
    Ok(IoHandle {
        outputs: Mutex::new(outputs),
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
        let deadline = Instant::now() + timeout;
        let outputs = match self.outputs.lock() {
            Ok(o) => o,
            Err(p) => p.into_inner(),
        };
        for rx in outputs.iter() {
            let left = deadline.saturating_duration_since(Instant::now());
            let _ = rx.recv_timeout(left);
        }
        if let Some(child) = &self.logger {
            if let Ok(mut child) = child.lock() {
                let _ = child.wait();
            }
        }
    }
}

fn spawn_thread(name: &str, f: impl FnOnce() + Send + 'static) -> Result<(), ShimError> {
    std::thread::Builder::new()
        .name(name.into())
        .spawn(f)
        .map(|_| ())
        .map_err(ShimError::io(format!("spawning the {name} thread")))
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

/// The most one output read asks for: all the agent holds, up to its cap
/// (1 MiB). Fewer, larger reads move bulk output faster (each is a round
/// trip through the guest).
const READ_MAX: u32 = 1 << 20;

fn pump_output(
    client: &Arc<dyn AgentClient>,
    cid: &str,
    exec_id: &str,
    stream: Stream,
    mut sink: Box<dyn Write + Send>,
) {
    loop {
        let chunk = match stream {
            Stream::Stdout => client.read_stdout(cid, exec_id, READ_MAX),
            Stream::Stderr => client.read_stderr(cid, exec_id, READ_MAX),
        };
        match chunk {
            Ok(data) if data.is_empty() => break,
            Ok(data) => {
                if let Err(e) = sink.write_all(&data) {
                    // The reader went away: keep draining so the process
                    // never blocks on a full pipe.
                    tracing::debug!(cid, exec_id, "output reader gone: {e}");
                    sink = Box::new(std::io::sink());
                }
            }
            Err(e) => {
                tracing::debug!(cid, exec_id, "output stream ended: {e}");
                break;
            }
        }
    }
    let _ = sink.flush();
}

fn pump_stdin(
    client: &Arc<dyn AgentClient>,
    cid: &str,
    exec_id: &str,
    fifo: &Path,
    wake: &std::io::PipeReader,
) {
    // Blocks until containerd's side opens the FIFO for writing.
    match File::open(fifo) {
        Ok(f) => {
            tracing::debug!(cid, exec_id, "stdin open");
            let write = |data: &[u8]| match client.write_stdin(cid, exec_id, data) {
                Ok(0) => None,
                Ok(n) => Some(n),
                Err(e) => {
                    // The process is gone (or closed its stdin).
                    tracing::debug!(cid, exec_id, "writing stdin: {e}");
                    None
                }
            };
            let total = copy_stdin(f, wake, write);
            tracing::debug!(cid, exec_id, total, "stdin closed");
        }
        Err(e) => tracing::warn!("opening stdin {}: {e}", fifo.display()),
    }
    if let Err(e) = client.close_stdin(cid, exec_id) {
        tracing::debug!(cid, exec_id, "closing stdin: {e}");
    }
}

/// What the stdin FIFO had for the copy.
enum Input {
    Data(usize),
    /// Every writer closed it.
    Eof,
    /// Nothing right now.
    Empty,
}

fn read_input(fifo: &mut File, buf: &mut [u8]) -> Input {
    loop {
        return match fifo.read(buf) {
            Ok(0) => Input::Eof,
            Ok(n) => Input::Data(n),
            Err(e) if e.kind() == std::io::ErrorKind::Interrupted => continue,
            Err(e) if e.kind() == std::io::ErrorKind::WouldBlock => Input::Empty,
            Err(e) => {
                tracing::debug!("reading stdin: {e}");
                Input::Eof
            }
        };
    }
}

/// Copies the FIFO with `write` (bytes taken, or `None` when the process
/// takes no more) until its end, or until `wake` closes and the FIFO is
/// drained. Returns the bytes copied.
fn copy_stdin(
    mut fifo: File,
    wake: &std::io::PipeReader,
    mut write: impl FnMut(&[u8]) -> Option<usize>,
) -> usize {
    use std::os::fd::AsRawFd;

    let fd = fifo.as_raw_fd();
    // SAFETY: fcntl on a descriptor `fifo` owns; no memory is touched.
    let flags = unsafe { libc::fcntl(fd, libc::F_GETFL) };
    // SAFETY: as above.
    if flags < 0 || unsafe { libc::fcntl(fd, libc::F_SETFL, flags | libc::O_NONBLOCK) } < 0 {
        tracing::warn!("stdin FIFO: {}", std::io::Error::last_os_error());
        return 0;
    }
    let mut total = 0usize;
    let mut buf = vec![0u8; 64 * 1024];
    let mut closing = false;
    loop {
        if !closing {
            let mut fds = [
                libc::pollfd {
                    fd,
                    events: libc::POLLIN,
                    revents: 0,
                },
                libc::pollfd {
                    fd: wake.as_raw_fd(),
                    events: libc::POLLIN,
                    revents: 0,
                },
            ];
            // SAFETY: `fds` is a valid array of two pollfds for the call.
            let ready = unsafe { libc::poll(fds.as_mut_ptr(), 2, -1) };
            if ready < 0 {
                let e = std::io::Error::last_os_error();
                if e.kind() == std::io::ErrorKind::Interrupted {
                    continue;
                }
                tracing::warn!("waiting for stdin: {e}");
                return total;
            }
            // Data first: CloseIO ends the input after what was written.
            if fds[0].revents == 0 {
                closing = fds[1].revents != 0;
                if !closing {
                    continue;
                }
            }
        }
        let n = match read_input(&mut fifo, &mut buf) {
            Input::Data(n) => n,
            Input::Eof => return total,
            Input::Empty if closing => return total,
            Input::Empty => continue,
        };
        let mut data = &buf[..n];
        while !data.is_empty() {
            let Some(w) = write(data) else {
                return total;
            };
            total += w;
            data = &data[w.min(data.len())..];
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

    /// A FIFO in a temp dir, opened for reading (as the stdin copy
    /// does, once a writer is there) and for writing.
    fn fifo() -> (tempfile::TempDir, File, File) {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("stdin");
        let c = std::ffi::CString::new(path.to_str().unwrap()).unwrap();
        // SAFETY: a NUL-terminated path.
        assert_eq!(unsafe { libc::mkfifo(c.as_ptr(), 0o600) }, 0);
        let p = path.clone();
        let reader = std::thread::spawn(move || File::open(p).unwrap());
        let writer = OpenOptions::new().write(true).open(&path).unwrap();
        (dir, reader.join().unwrap(), writer)
    }

    fn collect(out: &Arc<Mutex<Vec<u8>>>) -> impl FnMut(&[u8]) -> Option<usize> + '_ {
        move |data| {
            out.lock().unwrap().extend_from_slice(data);
            Some(data.len())
        }
    }

    #[test]
    fn stdin_ends_when_the_writers_close() {
        let (_dir, reader, mut writer) = fifo();
        let (wake, _close) = std::io::pipe().unwrap();
        let out = Arc::new(Mutex::new(Vec::new()));
        writer.write_all(b"hello").unwrap();
        drop(writer);
        assert_eq!(copy_stdin(reader, &wake, collect(&out)), 5);
        assert_eq!(out.lock().unwrap().as_slice(), b"hello");
    }

    #[test]
    fn close_io_ends_stdin_after_what_was_written() {
        // The client keeps its end open (as CRI does); CloseIO ends the
        // input once the FIFO is drained.
        let (_dir, reader, mut writer) = fifo();
        let (wake, close) = std::io::pipe().unwrap();
        let out = Arc::new(Mutex::new(Vec::new()));
        let data: Vec<u8> = (0..200_000u32).map(|i| (i % 251) as u8).collect();
        let copy = {
            let out = out.clone();
            std::thread::spawn(move || copy_stdin(reader, &wake, collect(&out)))
        };
        writer.write_all(&data).unwrap();
        drop(close);
        assert_eq!(copy.join().unwrap(), data.len());
        assert_eq!(*out.lock().unwrap(), data);
        drop(writer);
    }

    #[test]
    fn stdin_stops_when_the_process_takes_no_more() {
        let (_dir, reader, mut writer) = fifo();
        let (wake, _close) = std::io::pipe().unwrap();
        writer.write_all(b"abc").unwrap();
        assert_eq!(copy_stdin(reader, &wake, |_| None), 0);
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
