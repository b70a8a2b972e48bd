//! The debug console: a root shell in the guest, outside every container,
//! for the node's operators (what Kata's debug console is). Served only
//! when the host enables it (`nacre.debug_console=1` on the guest kernel
//! command line, from the node's configuration; `--debug-console ADDR` on
//! the host for tests). Each connection gets `/bin/sh` on a new
//! pseudo-terminal, as session leader with the terminal as its
//! controlling one; the connection carries the terminal's bytes both
//! ways. Reachable only from the host: containers cannot reach guest
//! vsock listeners (no vsock loopback in the guest kernel), and on the
//! host only root reaches the VMM's vsock socket.

use std::fs::File;
use std::io::{self, Read, Write};
use std::os::fd::{AsRawFd, OwnedFd};
use std::os::unix::process::CommandExt;
use std::process::{Command, Stdio};
use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
use std::sync::Arc;

use crate::config::ListenAddr;
use crate::container::ffi;
use crate::reaper::Reaper;

/// The shell each session runs.
pub const SHELL: &str = "/bin/sh";

/// Sessions served at once; more are refused (closed at once).
const MAX_SESSIONS: usize = 4;
/// After the host hangs up, the shell's session has this many 100 ms
/// steps to end on SIGHUP before it is killed.
const HANGUP_GRACE_STEPS: u32 = 20;

/// Binds `addr` and serves sessions from a background thread.
pub fn start(addr: &ListenAddr, reaper: Reaper) -> io::Result<()> {
    let listener = crate::listen::listen(addr)?;
    let active = Arc::new(AtomicUsize::new(0));
    std::thread::Builder::new()
        .name("debug-console".into())
        .spawn(move || loop {
            let conn = match crate::listen::accept(&listener) {
                Ok(conn) => conn,
                Err(e) => {
                    tracing::warn!("debug console: accept: {e}");
                    std::thread::sleep(std::time::Duration::from_millis(100));
                    continue;
                }
            };
            if active.fetch_add(1, Ordering::SeqCst) >= MAX_SESSIONS {
                active.fetch_sub(1, Ordering::SeqCst);
                continue;
            }
            let (reaper, active) = (reaper.clone(), active.clone());
            let spawned = std::thread::Builder::new()
                .name("debug-session".into())
                .spawn(move || {
                    if let Err(e) = session(conn, &reaper) {
                        tracing::warn!("debug console session: {e}");
                    }
                    active.fetch_sub(1, Ordering::SeqCst);
                });
            if let Err(e) = spawned {
                tracing::warn!("debug console: starting a session: {e}");
            }
        })?;
    tracing::info!("debug console on {addr}");
    Ok(())
}

/// One session: the shell on a new terminal, relayed until it exits or
/// the host hangs up (the shell then gets SIGHUP).
fn session(conn: OwnedFd, reaper: &Reaper) -> io::Result<()> {
    let (master, slave, _) = ffi::openpty()?;
    let mut cmd = Command::new(SHELL);
    cmd.arg0("-sh")
        .env_clear()
        .env("PATH", "/bin:/sbin:/usr/bin:/usr/sbin")
        .env("HOME", "/root")
        .env("TERM", "linux")
        .env("PS1", "nacre-guest# ")
        .current_dir("/")
        .stdin(Stdio::from(slave.try_clone()?))
        .stdout(Stdio::from(slave.try_clone()?))
        .stderr(Stdio::from(slave));
    // SAFETY: between fork and exec the closure calls only signal(2),
    // setsid(2) and ioctl(2), all async-signal-safe, on a descriptor the
    // child holds.
    unsafe {
        cmd.pre_exec(move || {
            // Dispositions a parent ignored (nohup) would survive exec: the
            // shell must die of the hangup below.
            for sig in [
                libc::SIGHUP,
                libc::SIGINT,
                libc::SIGQUIT,
                libc::SIGTERM,
                libc::SIGPIPE,
                libc::SIGTSTP,
                libc::SIGTTIN,
                libc::SIGTTOU,
            ] {
                libc::signal(sig, libc::SIG_DFL);
            }
            if libc::setsid() < 0 {
                return Err(io::Error::last_os_error());
            }
            // The terminal is the child's stdin (dup2'd before this runs).
            if libc::ioctl(0, libc::TIOCSCTTY, 0) < 0 {
                return Err(io::Error::last_os_error());
            }
            Ok(())
        });
    }
    let pid = reaper.spawn(|| {
        let child = cmd.spawn()?;
        // The reaper collects it; `Child` is only dropped.
        let pid = libc::pid_t::try_from(child.id())
            .map_err(|_| io::Error::from_raw_os_error(libc::ESRCH))?;
        Ok((pid, pid))
    })?;
    // `cmd` holds the slave's copies until dropped: the master reads EIO
    // only once every slave descriptor is closed.
    drop(cmd);
    let mut to_shell = File::from(master.try_clone()?);
    let mut from_shell = File::from(master);
    let mut conn_in = File::from(conn.try_clone()?);
    let mut conn_out = File::from(conn);
    let ended = Arc::new(AtomicBool::new(false));
    let ended_in = ended.clone();
    let input = std::thread::Builder::new()
        .name("debug-input".into())
        .spawn(move || {
            let _ = copy(&mut conn_in, &mut to_shell);
            // The host hung up: end the shell's session, by force if it
            // ignores the hangup (`trap '' HUP` in the shell).
            // SAFETY: kill(2) of the session's process group.
            unsafe { libc::kill(-pid, libc::SIGHUP) };
            for _ in 0..HANGUP_GRACE_STEPS {
                if ended_in.load(Ordering::SeqCst) {
                    return;
                }
                std::thread::sleep(std::time::Duration::from_millis(100));
            }
            if !ended_in.load(Ordering::SeqCst) {
                // SAFETY: as above; the session has not been reaped.
                unsafe { libc::kill(-pid, libc::SIGKILL) };
            }
        })?;
    let _ = copy(&mut from_shell, &mut conn_out);
    // The shell is gone (EIO on the master): end the connection, which
    // also ends the input thread's read.
    // SAFETY: shutdown(2) of a socket this function owns.
    unsafe { libc::shutdown(conn_out.as_raw_fd(), libc::SHUT_RDWR) };
    let status = reaper.wait(pid);
    ended.store(true, Ordering::SeqCst);
    let _ = input.join();
    tracing::info!(?status, "debug console session ended");
    Ok(())
}

/// Copies until end of file or an error (EIO on a terminal master whose
/// slave side is closed counts as the end).
fn copy(from: &mut File, to: &mut File) -> io::Result<()> {
    let mut buf = [0u8; 4096];
    loop {
        let n = match from.read(&mut buf) {
            Ok(0) => return Ok(()),
            Ok(n) => n,
            Err(e) if e.kind() == io::ErrorKind::Interrupted => continue,
            Err(e) if e.raw_os_error() == Some(libc::EIO) => return Ok(()),
            Err(e) => return Err(e),
        };
        to.write_all(&buf[..n])?;
    }
}
