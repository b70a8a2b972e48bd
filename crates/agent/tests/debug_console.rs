//! The agent's debug console on the host (not PID 1): a shell on a
//! terminal per connection, only where asked for, gone when the host
//! hangs up. (`cli/tests/vm_containers.rs` drives it in a real guest.)

#![allow(clippy::unwrap_used, reason = "test helpers fail the test on error")]

use std::io::{BufRead, BufReader, Read, Write};
use std::os::unix::net::UnixStream;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

const AGENT: &str = env!("CARGO_BIN_EXE_nacre-agent");

struct Agent {
    child: Child,
    dir: PathBuf,
}

impl Agent {
    fn start(name: &str, console: bool) -> Agent {
        let dir = std::env::temp_dir().join(format!("nacre-debug-{}-{name}", std::process::id()));
        std::fs::create_dir_all(&dir).unwrap();
        let mut cmd = Command::new(AGENT);
        cmd.arg("--listen")
            .arg(format!("unix://{}", dir.join("agent.sock").display()));
        if console {
            cmd.arg("--debug-console")
                .arg(format!("unix://{}", dir.join("console.sock").display()));
        }
        let mut child = cmd.stdout(Stdio::piped()).spawn().unwrap();
        let mut line = String::new();
        BufReader::new(child.stdout.take().unwrap())
            .read_line(&mut line)
            .unwrap();
        assert!(line.contains("nacre-agent: ready"), "{line:?}");
        Agent { child, dir }
    }

    fn console(&self) -> PathBuf {
        self.dir.join("console.sock")
    }
}

impl Drop for Agent {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
        let _ = std::fs::remove_dir_all(&self.dir);
    }
}

/// Reads from `s` until `want` appears, the end of stream or 20 s pass;
/// returns what came and whether the stream ended.
fn read_until(s: &mut UnixStream, want: &str) -> (String, bool) {
    s.set_read_timeout(Some(Duration::from_millis(200)))
        .unwrap();
    let deadline = Instant::now() + Duration::from_secs(20);
    let mut got = Vec::new();
    let mut buf = [0u8; 4096];
    let mut ended = false;
    while Instant::now() < deadline && !String::from_utf8_lossy(&got).contains(want) {
        match s.read(&mut buf) {
            Ok(0) => {
                ended = true;
                break;
            }
            Ok(n) => got.extend_from_slice(&buf[..n]),
            Err(_) => {}
        }
    }
    (String::from_utf8_lossy(&got).into_owned(), ended)
}

fn wait_gone(pid: u32) -> bool {
    let deadline = Instant::now() + Duration::from_secs(10);
    while Instant::now() < deadline {
        let stat = std::fs::read_to_string(format!("/proc/{pid}/stat")).unwrap_or_default();
        let state = stat
            .rsplit_once(')')
            .map(|(_, r)| r.trim_start().to_owned());
        if state.is_none_or(|s| s.starts_with('Z') || s.starts_with('X')) {
            return true;
        }
        std::thread::sleep(Duration::from_millis(20));
    }
    false
}

/// The shell's answer to `echo pid=$$`: the terminal echoes the line
/// first, so the answer is the second "pid=".
fn shell_pid(s: &mut UnixStream) -> u32 {
    let mut out = String::new();
    while out.matches("pid=").count() < 2 || !out.rsplit("pid=").next().unwrap_or("").contains('\n')
    {
        let (more, ended) = read_until(s, "\n");
        assert!(!ended && !more.is_empty(), "no answer: {out:?}{more:?}");
        out += &more;
    }
    let pid: u32 = out
        .rsplit("pid=")
        .next()
        .and_then(|r| r.split_whitespace().next())
        .and_then(|p| p.parse().ok())
        .unwrap_or_else(|| panic!("no pid in {out:?}"));
    pid
}

#[test]
fn a_shell_on_a_terminal_per_connection() {
    let agent = Agent::start("shell", true);
    let mut s = UnixStream::connect(agent.console()).unwrap();
    s.write_all(b"tty; echo sum=$((6*7)); exit 3\n").unwrap();
    let (out, ended) = read_until(&mut s, "\u{0}never");
    assert!(ended, "the connection outlived the shell: {out:?}");
    assert!(out.contains("sum=42"), "{out:?}");
    assert!(out.contains("/dev/pts/"), "not on a terminal: {out:?}");
}

#[test]
fn the_shell_is_hung_up_when_the_host_leaves() {
    let agent = Agent::start("hangup", true);
    let mut s = UnixStream::connect(agent.console()).unwrap();
    s.write_all(b"echo pid=$$\n").unwrap();
    let pid = shell_pid(&mut s);
    assert!(!wait_gone_now(pid), "the shell is not running");
    drop(s);
    assert!(wait_gone(pid), "shell {pid} outlived the connection");
}

fn wait_gone_now(pid: u32) -> bool {
    !Path::new(&format!("/proc/{pid}")).exists()
}

/// A shell that ignores the hangup (`trap '' HUP`) is killed instead.
#[test]
fn a_shell_ignoring_the_hangup_is_killed() {
    let agent = Agent::start("nohup", true);
    let mut s = UnixStream::connect(agent.console()).unwrap();
    s.write_all(b"trap '' HUP; echo pid=$$\n").unwrap();
    let pid = shell_pid(&mut s);
    drop(s);
    assert!(wait_gone(pid), "shell {pid} outlived the connection");
}

#[test]
fn no_console_unless_asked_for() {
    let agent = Agent::start("off", false);
    assert!(!agent.console().exists());
    assert!(UnixStream::connect(agent.console()).is_err());
}
