//! A hostile agent: the guest side of the agent connection is written by
//! an attacker, so every reply is untrusted input to the host. An evil
//! ttrpc server on a Unix socket (no VM, no root needed) answers the
//! host's client with crafted frames; each test states the attack and
//! the safe outcome it checks: the call returns an error in bounded time
//! and the host's memory and output stay bounded.

#![allow(clippy::unwrap_used, clippy::expect_used, reason = "tests")]

use std::io::{Read, Write};
use std::os::unix::net::{UnixListener, UnixStream};
use std::path::PathBuf;
use std::time::{Duration, Instant};

use nacre_protocol::protobuf::Message;
use nacre_protocol::ttrpc::{Code, Response, Status};
use nacre_runtime::agent::{
    AgentClient, AgentClientError, ClientOptions, Endpoint, TtrpcAgentClient, GUEST_TEXT_MAX,
};

const CALL_TIMEOUT: Duration = Duration::from_secs(2);

/// What the evil agent does with each request it reads.
type Evil = fn(&mut UnixStream, u32);

/// Serves one connection on a fresh socket with `evil`; returns the
/// socket path.
fn evil_agent(name: &str, evil: Evil) -> PathBuf {
    let dir = std::env::temp_dir().join(format!("nacre-evil-{name}-{}", std::process::id()));
    let _ = std::fs::remove_dir_all(&dir);
    std::fs::create_dir_all(&dir).unwrap();
    let path = dir.join("agent.sock");
    let listener = UnixListener::bind(&path).unwrap();
    std::thread::spawn(move || {
        let Ok((mut conn, _)) = listener.accept() else {
            return;
        };
        loop {
            let mut header = [0u8; 10];
            if conn.read_exact(&mut header).is_err() {
                return;
            }
            let len = u32::from_be_bytes(header[0..4].try_into().unwrap()) as usize;
            let stream = u32::from_be_bytes(header[4..8].try_into().unwrap());
            let mut body = vec![0u8; len];
            if conn.read_exact(&mut body).is_err() {
                return;
            }
            evil(&mut conn, stream);
        }
    });
    path
}

fn client(path: PathBuf) -> TtrpcAgentClient {
    TtrpcAgentClient::connect(
        Endpoint::unix(path),
        ClientOptions {
            connect_timeout: Duration::from_secs(5),
            retry_interval: Duration::from_millis(20),
            call_timeout: CALL_TIMEOUT,
        },
    )
    .unwrap()
}

fn frame(stream: u32, payload: &[u8]) -> Vec<u8> {
    let mut out = Vec::with_capacity(10 + payload.len());
    out.extend_from_slice(&u32::try_from(payload.len()).unwrap().to_be_bytes());
    out.extend_from_slice(&stream.to_be_bytes());
    out.push(2); // response
    out.push(0);
    out.extend_from_slice(payload);
    out
}

fn status_reply(conn: &mut UnixStream, stream: u32, code: Code, message: String) {
    let mut status = Status::new();
    status.set_code(code);
    status.set_message(message);
    let mut response = Response::new();
    response.set_status(status);
    let _ = conn.write_all(&frame(stream, &response.write_to_bytes().unwrap()));
}

/// Resident memory of this process, in KiB.
fn rss_kib() -> u64 {
    std::fs::read_to_string("/proc/self/status")
        .unwrap()
        .lines()
        .find_map(|l| l.strip_prefix("VmRSS:"))
        .and_then(|v| v.split_whitespace().next())
        .and_then(|v| v.parse().ok())
        .unwrap()
}

/// Attack: a reply header announcing a 4 GiB frame, then nothing.
/// Safe outcome: the call fails within its timeout; nothing near that
/// size is allocated.
#[test]
fn a_four_gib_frame_header_fails_the_call_in_bounded_time_and_memory() {
    let path = evil_agent("4gib", |conn, stream| {
        let mut header = Vec::new();
        header.extend_from_slice(&u32::MAX.to_be_bytes());
        header.extend_from_slice(&stream.to_be_bytes());
        header.extend_from_slice(&[2, 0]);
        let _ = conn.write_all(&header);
        let _ = conn.write_all(&[0u8; 64 << 10]);
    });
    let before = rss_kib();
    let started = Instant::now();
    let err = client(path).guest_details().unwrap_err();
    assert!(
        started.elapsed() < CALL_TIMEOUT * 3,
        "{:?}",
        started.elapsed()
    );
    assert!(
        rss_kib() < before + 64 * 1024,
        "RSS grew by {} KiB",
        rss_kib() - before
    );
    eprintln!("4 GiB header: {err}");
}

/// Attack: the agent reads requests and never answers. Safe outcome:
/// each call fails with a timeout naming the RPC, within its bound.
#[test]
fn an_agent_that_never_answers_times_out() {
    let path = evil_agent("silent", |_, _| {});
    let c = client(path);
    for _ in 0..3 {
        let started = Instant::now();
        let err = c.state_container("c1").unwrap_err();
        assert!(
            started.elapsed() < CALL_TIMEOUT * 2,
            "{:?}",
            started.elapsed()
        );
        assert!(
            matches!(err, AgentClientError::Timeout { .. }),
            "not a timeout: {err}"
        );
    }
}

/// Attack: an error status whose message is 3.9 MB of terminal escape
/// sequences (clear screen, set the window title) and text. Safe
/// outcome: the error the host shows is at most GUEST_TEXT_MAX bytes
/// (plus a note of the cut) and carries no control character.
#[test]
fn a_huge_error_with_escape_codes_is_cut_and_defanged() {
    let path = evil_agent("escape", |conn, stream| {
        let mut text = String::from("\u{1b}[2J\u{1b}]0;pwned\u{7}");
        while text.len() < 3_900_000 {
            text.push_str("\u{1b}[31mno such file ");
        }
        status_reply(conn, stream, Code::INTERNAL, text);
    });
    let err = client(path).guest_details().unwrap_err().to_string();
    assert!(err.len() < GUEST_TEXT_MAX + 256, "{} bytes", err.len());
    assert!(!err.chars().any(|c| c.is_control()), "{:?}", &err[..200]);
    assert!(err.contains("more bytes cut"), "{}", &err[err.len() - 80..]);
}

/// Attack: a reply over ttrpc's 4 MiB frame limit (10 MB). Safe outcome:
/// the client discards it and the call fails in bounded time.
#[test]
fn an_oversized_reply_is_discarded() {
    let path = evil_agent("10mb", |conn, stream| {
        let mut response = Response::new();
        response.payload = vec![b'A'; 10 << 20];
        let _ = conn.write_all(&frame(stream, &response.write_to_bytes().unwrap()));
    });
    let before = rss_kib();
    let started = Instant::now();
    assert!(client(path).guest_details().is_err());
    assert!(started.elapsed() < CALL_TIMEOUT * 3);
    assert!(
        rss_kib() < before + 64 * 1024,
        "RSS grew by {} KiB",
        rss_kib() - before
    );
}

/// Attack: endless output: every ReadStdout answers a full 1 MiB chunk.
/// Safe outcome: each reply is bounded (the host reads chunk by chunk,
/// never the whole stream), and memory does not grow with the stream.
#[test]
fn endless_stdout_is_read_in_bounded_chunks() {
    let path = evil_agent("stdout", |conn, stream| {
        let mut reply = nacre_protocol::container::ReadStdoutResponse::new();
        reply.data = vec![b'y'; 1 << 20];
        let mut response = Response::new();
        response.payload = reply.write_to_bytes().unwrap();
        let _ = conn.write_all(&frame(stream, &response.write_to_bytes().unwrap()));
    });
    let c = client(path);
    let _ = c.read_stdout("c1", "", 0).unwrap();
    let before = rss_kib();
    let mut total = 0usize;
    for _ in 0..64 {
        let chunk = c.read_stdout("c1", "", 0).unwrap();
        assert!(chunk.len() <= 4 << 20);
        total += chunk.len();
    }
    assert_eq!(total, 64 << 20);
    assert!(
        rss_kib() < before + 32 * 1024,
        "RSS grew by {} KiB",
        rss_kib() - before
    );
}
