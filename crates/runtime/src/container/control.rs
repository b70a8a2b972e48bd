//! The monitor's control socket: `nacre start` asks the monitor, which
//! already holds the agent connection, to start the container, instead of
//! opening a connection of its own (each new connection costs the guest a
//! ttRPC server thread pool: hundreds of milliseconds of emulated kernel
//! work here). The socket lives in the container's state directory (0700,
//! root's), accepts only its own user (`SO_PEERCRED`), reads one bounded
//! request line and answers one line.

use std::io::{BufRead, BufReader, Read, Write};
use std::os::unix::fs::PermissionsExt;
use std::os::unix::net::{UnixListener, UnixStream};
use std::path::Path;
use std::time::Duration;

use crate::pod::ContainerHandle;

/// The socket's name in the state directory.
pub const SOCKET: &str = "monitor.sock";

/// The longest request line read.
const REQUEST_MAX: u64 = 64;
/// The longest answer read (an error from the guest included).
const ANSWER_MAX: u64 = 8 << 10;

/// Serves `start` for `container` on `<dir>/monitor.sock`, on a thread of
/// its own, for the monitor's life.
pub fn serve(dir: &Path, container: ContainerHandle) -> std::io::Result<()> {
    let path = dir.join(SOCKET);
    let listener = UnixListener::bind(&path)?;
    std::fs::set_permissions(&path, std::fs::Permissions::from_mode(0o600))?;
    std::thread::Builder::new()
        .name("control".into())
        .spawn(move || {
            for stream in listener.incoming().flatten() {
                if let Err(e) = answer(stream, &container) {
                    tracing::warn!("control socket: {e}");
                }
            }
        })?;
    Ok(())
}

fn answer(stream: UnixStream, container: &ContainerHandle) -> std::io::Result<()> {
    let peer = peer_uid(&stream)?;
    // SAFETY: geteuid has no preconditions.
    let me = unsafe { libc::geteuid() };
    let mut writer = stream.try_clone()?;
    if peer != me {
        return writer.write_all(b"err the monitor answers only its own user\n");
    }
    stream.set_read_timeout(Some(Duration::from_secs(5)))?;
    let mut line = String::new();
    BufReader::new(stream.take(REQUEST_MAX)).read_line(&mut line)?;
    let reply = match line.trim_end() {
        "start" => match container.start() {
            Ok(()) => "ok".to_owned(),
            Err(e) => format!("err {}", crate::container::ContainerError::from(e)),
        },
        other => format!("err unknown request {other:?}"),
    };
    writer.write_all(format!("{}\n", reply.replace('\n', " ")).as_bytes())
}

fn peer_uid(stream: &UnixStream) -> std::io::Result<libc::uid_t> {
    use std::os::fd::AsRawFd;
    let mut cred = libc::ucred {
        pid: 0,
        uid: 0,
        gid: 0,
    };
    let mut len = std::mem::size_of::<libc::ucred>() as libc::socklen_t;
    // SAFETY: SO_PEERCRED writes one ucred into `cred`, at most `len`
    // bytes.
    let r = unsafe {
        libc::getsockopt(
            stream.as_raw_fd(),
            libc::SOL_SOCKET,
            libc::SO_PEERCRED,
            (&mut cred as *mut libc::ucred).cast(),
            &mut len,
        )
    };
    if r != 0 {
        return Err(std::io::Error::last_os_error());
    }
    Ok(cred.uid)
}

/// Asks the monitor of the container in `dir` to start it: None when no
/// monitor answers there (then the caller goes to the agent itself),
/// else the monitor's answer (an error carries the guest's cause).
pub fn request_start(dir: &Path, timeout: Duration) -> Option<Result<(), String>> {
    let mut stream = UnixStream::connect(dir.join(SOCKET)).ok()?;
    stream.set_read_timeout(Some(timeout)).ok()?;
    stream.write_all(b"start\n").ok()?;
    let mut line = String::new();
    match BufReader::new(stream.take(ANSWER_MAX)).read_line(&mut line) {
        Ok(0) => Some(Err("the monitor closed its control socket".into())),
        Ok(_) => match line.trim_end() {
            "ok" => Some(Ok(())),
            answer => Some(Err(answer
                .strip_prefix("err ")
                .unwrap_or(answer)
                .to_owned())),
        },
        Err(e) => Some(Err(format!("waiting for the monitor to start it: {e}"))),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::agent::fake::FakeAgent;
    use crate::agent::AgentClient;
    use std::sync::Arc;

    #[test]
    fn start_goes_through_the_monitor_and_errors_come_back() {
        let dir = tempfile::tempdir().unwrap();
        let agent = Arc::new(FakeAgent::default());
        agent.create_container("c1", b"{}").unwrap();
        serve(dir.path(), ContainerHandle::attach(agent.clone(), "c1")).unwrap();
        let mode = std::fs::metadata(dir.path().join(SOCKET))
            .unwrap()
            .permissions()
            .mode();
        assert_eq!(mode & 0o777, 0o600);
        assert_eq!(
            request_start(dir.path(), Duration::from_secs(5)),
            Some(Ok(()))
        );
        // A second start: the agent's refusal reaches the caller.
        let again = request_start(dir.path(), Duration::from_secs(5)).unwrap();
        assert!(again.is_err(), "{again:?}");
        // An unknown request is refused, a long one cut.
        let mut s = UnixStream::connect(dir.path().join(SOCKET)).unwrap();
        s.write_all(&[b'x'; 200]).unwrap();
        let mut answer = String::new();
        BufReader::new(s).read_line(&mut answer).unwrap();
        assert!(answer.starts_with("err unknown request"), "{answer}");
    }

    /// Attack: another local user reaches the socket (its directory made
    /// world-searchable here; in a real state directory it is 0700) and
    /// asks for a start: refused by the peer check, the container stays
    /// created.
    #[test]
    fn another_user_is_refused() {
        // SAFETY: geteuid has no preconditions.
        if unsafe { libc::geteuid() } != 0 {
            assert!(
                !crate::testing::vm_tests_required(),
                "another_user_is_refused needs root (required under CI)"
            );
            eprintln!("SKIPPED another_user_is_refused: not root");
            return;
        }
        let dir = tempfile::tempdir().unwrap();
        let agent = Arc::new(FakeAgent::default());
        agent.create_container("c1", b"{}").unwrap();
        serve(dir.path(), ContainerHandle::attach(agent.clone(), "c1")).unwrap();
        let socket = dir.path().join(SOCKET);
        std::fs::set_permissions(dir.path(), std::fs::Permissions::from_mode(0o755)).unwrap();
        std::fs::set_permissions(&socket, std::fs::Permissions::from_mode(0o666)).unwrap();
        let (mut r, w) = UnixStream::pair().unwrap();
        // SAFETY: the child only drops to nobody, talks over the socket
        // and exits without unwinding.
        let pid = unsafe { libc::fork() };
        assert!(pid >= 0);
        if pid == 0 {
            let answer = (|| {
                // SAFETY: setgid/setuid only change credentials.
                if unsafe { libc::setgid(65534) } != 0 || unsafe { libc::setuid(65534) } != 0 {
                    return "setuid failed".to_owned();
                }
                let mut s = match UnixStream::connect(&socket) {
                    Ok(s) => s,
                    Err(e) => return format!("connect: {e}"),
                };
                let _ = s.write_all(b"start\n");
                let mut line = String::new();
                let _ = BufReader::new(s).read_line(&mut line);
                line
            })();
            let _ = (&w).write_all(answer.as_bytes());
            // SAFETY: leaves the forked child at once.
            unsafe { libc::_exit(0) };
        }
        drop(w);
        let mut answer = String::new();
        r.read_to_string(&mut answer).unwrap();
        let mut status = 0;
        // SAFETY: waits for the child just forked.
        unsafe { libc::waitpid(pid, &mut status, 0) };
        assert!(answer.contains("only its own user"), "{answer}");
        assert_eq!(
            agent.state_container("c1").unwrap().status,
            crate::agent::ContainerStatus::Created,
            "not started"
        );
    }

    #[test]
    fn no_monitor_means_none() {
        let dir = tempfile::tempdir().unwrap();
        assert_eq!(request_start(dir.path(), Duration::from_secs(1)), None);
    }
}
