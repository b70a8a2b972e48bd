//! Runs the real `nacre-agent` binary on the host (not PID 1, listening on
//! a Unix socket) and talks to it through the runtime's agent client.

#![allow(clippy::unwrap_used, reason = "test helpers fail the test on error")]

use std::io::{BufRead, BufReader};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::sync::mpsc;
use std::time::{Duration, Instant};

use nacre_runtime::agent::{
    AgentClient, AgentClientError, ClientOptions, Endpoint, HealthStatus, TtrpcAgentClient,
};

const AGENT: &str = env!("CARGO_BIN_EXE_nacre-agent");

/// The agent process, killed on drop if still running.
struct Agent {
    child: Child,
    socket: PathBuf,
    dir: PathBuf,
}

impl Agent {
    /// Starts the agent on a fresh socket and waits for its ready line.
    fn start(name: &str) -> Agent {
        let dir =
            std::env::temp_dir().join(format!("nacre-agent-test-{}-{name}", std::process::id()));
        std::fs::create_dir_all(&dir).unwrap();
        let socket = dir.join("agent.sock");
        let mut child = Command::new(AGENT)
            .arg("--listen")
            .arg(format!("unix://{}", socket.display()))
            .stdout(Stdio::piped())
            .stderr(Stdio::inherit())
            .spawn()
            .unwrap();
        let stdout = child.stdout.take().unwrap();
        let (tx, rx) = mpsc::channel();
        std::thread::spawn(move || {
            for line in BufReader::new(stdout).lines() {
                let _ = tx.send(line.unwrap_or_default());
            }
        });
        let line = rx.recv_timeout(Duration::from_secs(20)).unwrap();
        assert!(line.contains("nacre-agent: ready"), "first line: {line:?}");
        assert!(line.contains(&socket.display().to_string()), "{line:?}");
        Agent { child, socket, dir }
    }

    fn client(&self) -> TtrpcAgentClient {
        TtrpcAgentClient::connect(Endpoint::unix(&self.socket), options()).unwrap()
    }
}

impl Drop for Agent {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
        let _ = std::fs::remove_dir_all(&self.dir);
    }
}

fn options() -> ClientOptions {
    ClientOptions {
        connect_timeout: Duration::from_secs(10),
        retry_interval: Duration::from_millis(20),
        call_timeout: Duration::from_secs(10),
    }
}

fn host_kernel_release() -> String {
    std::fs::read_to_string("/proc/sys/kernel/osrelease")
        .unwrap()
        .trim()
        .to_owned()
}

#[test]
fn health_and_guest_details() {
    let agent = Agent::start("details");
    let client = agent.client();
    assert_eq!(client.health().unwrap(), HealthStatus::Serving);
    let details = client.guest_details().unwrap();
    assert_eq!(details.agent_version, env!("CARGO_PKG_VERSION"));
    assert_eq!(details.protocol_version, nacre_protocol::PROTOCOL_VERSION);
    assert_eq!(details.kernel_release, host_kernel_release());
    assert!(details.cpus >= 1);
    assert!(details.memory_total_bytes > 16 << 20);
    assert!(details.uptime > Duration::ZERO);
    // A second client on the same agent works too.
    assert_eq!(agent.client().health().unwrap(), HealthStatus::Serving);
}

#[test]
fn shutdown_ends_the_agent_not_the_host() {
    let mut agent = Agent::start("shutdown");
    let client = agent.client();
    client.shutdown().unwrap();
    let deadline = Instant::now() + Duration::from_secs(10);
    let status = loop {
        if let Some(status) = agent.child.try_wait().unwrap() {
            break status;
        }
        assert!(
            Instant::now() < deadline,
            "agent still running after Shutdown"
        );
        std::thread::sleep(Duration::from_millis(20));
    };
    assert!(status.success(), "{status}");
    assert!(!agent.socket.exists(), "socket file removed on exit");
}

#[test]
fn set_time_needs_privilege_on_the_host() {
    let agent = Agent::start("settime");
    let client = agent.client();
    // Setting the host clock as root would succeed and change it: only
    // check the unprivileged error path there.
    // SAFETY: geteuid has no preconditions and cannot fail.
    if unsafe { libc::geteuid() } == 0 {
        return;
    }
    let err = client.set_time(std::time::SystemTime::now()).unwrap_err();
    assert!(
        matches!(
            err,
            AgentClientError::Status {
                rpc: "Agent.SetTime",
                ..
            }
        ),
        "{err}"
    );
}

#[test]
fn connect_gives_up_after_the_deadline() {
    let missing = Path::new("/nonexistent/nacre-agent.sock");
    let start = Instant::now();
    let err = TtrpcAgentClient::connect(
        Endpoint::unix(missing),
        ClientOptions {
            connect_timeout: Duration::from_millis(200),
            retry_interval: Duration::from_millis(20),
            call_timeout: Duration::from_secs(1),
        },
    )
    .unwrap_err();
    assert!(start.elapsed() < Duration::from_secs(5));
    let AgentClientError::Unreachable { attempts, .. } = &err else {
        panic!("{err}");
    };
    assert!(*attempts > 1, "{err}");
    assert!(
        err.to_string().contains("/nonexistent/nacre-agent.sock"),
        "{err}"
    );
}

#[test]
fn connect_waits_for_a_late_agent() {
    let dir = std::env::temp_dir().join(format!("nacre-agent-test-{}-late", std::process::id()));
    std::fs::create_dir_all(&dir).unwrap();
    let socket = dir.join("agent.sock");
    let connecting = {
        let socket = socket.clone();
        std::thread::spawn(move || TtrpcAgentClient::connect(Endpoint::unix(socket), options()))
    };
    std::thread::sleep(Duration::from_millis(300));
    let mut child = Command::new(AGENT)
        .arg(format!("--listen=unix://{}", socket.display()))
        .stdout(Stdio::null())
        .spawn()
        .unwrap();
    let client = connecting.join().unwrap();
    let health = client.and_then(|c| c.health());
    let _ = child.kill();
    let _ = child.wait();
    let _ = std::fs::remove_dir_all(&dir);
    assert_eq!(health.unwrap(), HealthStatus::Serving);
}

#[test]
fn bad_arguments_exit_2() {
    let out = Command::new(AGENT).arg("--bogus").output().unwrap();
    assert_eq!(out.status.code(), Some(2));
    assert!(String::from_utf8_lossy(&out.stderr).contains("--bogus"));
    let out = Command::new(AGENT).arg("--help").output().unwrap();
    assert!(out.status.success());
    assert!(String::from_utf8_lossy(&out.stdout).contains("--listen"));
}

/// A stand-in for the VMM's hybrid vsock socket: accepts one client, checks
/// its `CONNECT 1024` line, answers `OK`, then splices the stream to the
/// agent's Unix socket.
fn fake_hybrid_vsock(dir: &Path, agent_socket: PathBuf) -> PathBuf {
    use std::io::{Read, Write};
    use std::os::unix::net::{UnixListener, UnixStream};

    let path = dir.join("vsock.sock");
    let listener = UnixListener::bind(&path).unwrap();
    std::thread::spawn(move || {
        let (mut host, _) = listener.accept().unwrap();
        let mut line = Vec::new();
        let mut byte = [0u8; 1];
        while byte[0] != b'\n' {
            host.read_exact(&mut byte).unwrap();
            line.push(byte[0]);
        }
        assert_eq!(line, b"CONNECT 1024\n");
        let guest = UnixStream::connect(agent_socket).unwrap();
        host.write_all(b"OK 1073741824\n").unwrap();
        let splice = |mut from: UnixStream, mut to: UnixStream| {
            std::thread::spawn(move || {
                let _ = std::io::copy(&mut from, &mut to);
                let _ = to.shutdown(std::net::Shutdown::Write);
            })
        };
        splice(host.try_clone().unwrap(), guest.try_clone().unwrap());
        splice(guest, host);
    });
    path
}

#[test]
fn guest_details_through_the_hybrid_vsock_handshake() {
    let agent = Agent::start("hybrid");
    let vsock = fake_hybrid_vsock(&agent.dir, agent.socket.clone());
    let client = TtrpcAgentClient::connect(Endpoint::agent_vsock(vsock), options()).unwrap();
    assert_eq!(client.health().unwrap(), HealthStatus::Serving);
    let details = client.guest_details().unwrap();
    assert_eq!(details.kernel_release, host_kernel_release());
}

#[test]
fn silent_agent_times_out_per_call() {
    use std::os::unix::net::UnixListener;

    let dir = std::env::temp_dir().join(format!("nacre-agent-test-{}-silent", std::process::id()));
    std::fs::create_dir_all(&dir).unwrap();
    let socket = dir.join("silent.sock");
    // Accepts and reads, never answers.
    let listener = UnixListener::bind(&socket).unwrap();
    std::thread::spawn(move || {
        let (mut stream, _) = listener.accept().unwrap();
        let _ = std::io::copy(&mut stream, &mut std::io::sink());
    });
    let client = TtrpcAgentClient::connect(
        Endpoint::unix(&socket),
        ClientOptions {
            call_timeout: Duration::from_millis(200),
            ..options()
        },
    )
    .unwrap();
    let start = Instant::now();
    let err = client.guest_details().unwrap_err();
    let _ = std::fs::remove_dir_all(&dir);
    assert!(
        matches!(
            err,
            AgentClientError::Timeout {
                rpc: "Agent.GetGuestDetails",
                ..
            }
        ),
        "{err}"
    );
    assert!(start.elapsed() < Duration::from_secs(5));
}
