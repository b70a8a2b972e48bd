//! The host's decoding of agent replies: whatever the guest agent writes
//! back on the ttRPC connection, read by the runtime's real client
//! (`TtrpcAgentClient` over the sync ttrpc client) for one call.
//!
//! Inputs are structure-aware: well-formed responses (a frame header for
//! the call's stream, a `Response` with a status and a
//! `GetGuestDetailsResponse` payload), frames with chosen header fields
//! around arbitrary payloads, and raw bytes.
//!
//! Invariants: the call returns (no hang past its timeout, no panic); a
//! well-formed OK reply decodes to exactly the fields the agent sent
//! (round trip) and an error status never decodes as success.

#![no_main]

use std::io::{Read, Write};
use std::os::unix::net::{UnixListener, UnixStream};
use std::path::PathBuf;
use std::sync::OnceLock;
use std::time::Duration;

use arbitrary::Arbitrary;
use libfuzzer_sys::fuzz_target;
use nacre_protocol::agent::GetGuestDetailsResponse;
use nacre_protocol::protobuf::{Enum, Message};
use nacre_protocol::ttrpc::{self, Code};
use nacre_runtime::agent::{AgentClient, ClientOptions, Endpoint, TtrpcAgentClient};

#[derive(Arbitrary, Debug, Clone)]
struct Details {
    agent_version: String,
    protocol_version: u32,
    kernel_release: String,
    hostname: String,
    cpus: u32,
    memory_total_bytes: u64,
    uptime_ms: u64,
}

#[derive(Arbitrary, Debug)]
enum Frame {
    /// A well-formed reply to the call (stream 1).
    Reply {
        code: u8,
        message: String,
        details: Details,
    },
    /// A response with any payload bytes.
    Payload {
        code: u8,
        payload: Vec<u8>,
    },
    /// A frame header with chosen fields around any body.
    Framed {
        stream_id: u32,
        kind: u8,
        flags: u8,
        len_delta: i16,
        body: Vec<u8>,
    },
    Raw(Vec<u8>),
}

#[derive(Arbitrary, Debug)]
struct Input {
    health: bool,
    frames: Vec<Frame>,
}

fn code(c: u8) -> Code {
    Code::from_i32(i32::from(c % 17)).unwrap_or(Code::UNKNOWN)
}

fn frame(stream_id: u32, kind: u8, flags: u8, body: &[u8], len: u32) -> Vec<u8> {
    let mut f = Vec::with_capacity(10 + body.len());
    f.extend_from_slice(&len.to_be_bytes());
    f.extend_from_slice(&stream_id.to_be_bytes());
    f.push(kind);
    f.push(flags);
    f.extend_from_slice(body);
    f
}

fn response(c: Code, message: &str, payload: Vec<u8>) -> Vec<u8> {
    let mut r = ttrpc::Response::new();
    r.set_status(ttrpc::get_status(c, message));
    r.payload = payload;
    r.write_to_bytes().unwrap()
}

fn details_pb(d: &Details) -> GetGuestDetailsResponse {
    let mut p = GetGuestDetailsResponse::new();
    p.agent_version = d.agent_version.clone();
    p.protocol_version = d.protocol_version;
    p.kernel_release = d.kernel_release.clone();
    p.hostname = d.hostname.clone();
    p.cpus = d.cpus;
    p.memory_total_bytes = d.memory_total_bytes;
    p.uptime_ms = d.uptime_ms;
    p
}

fn encode(f: &Frame) -> Vec<u8> {
    match f {
        Frame::Reply {
            code: c,
            message,
            details,
        } => {
            let body = response(
                code(*c),
                message,
                details_pb(details).write_to_bytes().unwrap(),
            );
            frame(1, 2, 0, &body, body.len() as u32)
        }
        Frame::Payload { code: c, payload } => {
            let body = response(code(*c), "", payload.clone());
            frame(1, 2, 0, &body, body.len() as u32)
        }
        Frame::Framed {
            stream_id,
            kind,
            flags,
            len_delta,
            body,
        } => {
            let len = (body.len() as u32).wrapping_add_signed(i32::from(*len_delta));
            frame(*stream_id, *kind, *flags, body, len)
        }
        Frame::Raw(b) => b.clone(),
    }
}

struct Agent {
    path: PathBuf,
    listener: UnixListener,
}

fn agent() -> &'static Agent {
    static AGENT: OnceLock<Agent> = OnceLock::new();
    AGENT.get_or_init(|| {
        let path = nacre_fuzz::scratch::dir("agent-reply").join("agent.sock");
        let listener = UnixListener::bind(&path).unwrap();
        Agent { path, listener }
    })
}

fuzz_target!(|input: Input| {
    nacre_fuzz::ignore_sigpipe();
    let agent = agent();
    let mut bytes = Vec::new();
    for f in input.frames.iter().take(4) {
        bytes.extend(encode(f));
    }
    bytes.truncate(64 * 1024);
    cap_oversize(&mut bytes);
    let options = ClientOptions {
        connect_timeout: Duration::from_secs(5),
        retry_interval: Duration::from_millis(10),
        call_timeout: Duration::from_secs(5),
    };
    let client = TtrpcAgentClient::connect(Endpoint::unix(&agent.path), options).unwrap();
    let (server, _) = agent.listener.accept().unwrap();
    // The agent answers once the request is in: a reply read before the
    // client registered its call would be dropped as unsolicited.
    let got = std::thread::scope(|scope| {
        scope.spawn(|| answer(server, &bytes));
        if input.health {
            let _ = client.health();
            None
        } else {
            Some(client.guest_details())
        }
    });
    let Some(got) = got else {
        return;
    };
    let first = input.frames.first();
    match first {
        Some(Frame::Reply {
            code: c, details, ..
        }) => {
            if code(*c) == Code::OK {
                let d = got.expect("a well-formed reply decodes");
                assert_eq!(d.agent_version, details.agent_version);
                assert_eq!(d.protocol_version, details.protocol_version);
                assert_eq!(d.kernel_release, details.kernel_release);
                assert_eq!(d.hostname, details.hostname);
                assert_eq!(d.cpus, details.cpus);
                assert_eq!(d.memory_total_bytes, details.memory_total_bytes);
                assert_eq!(d.uptime.as_millis(), u128::from(details.uptime_ms));
            } else {
                assert!(got.is_err(), "an error status decoded as success");
            }
        }
        Some(Frame::Payload { code: c, .. }) if code(*c) != Code::OK => {
            assert!(got.is_err(), "an error status decoded as success");
        }
        _ => {}
    }
});

/// Lowers the length of the first frame that declares more than ttrpc's
/// `MESSAGE_LENGTH_MAX` (walking the bytes frame by frame, as the client's
/// receiver does) to `MESSAGE_LENGTH_MAX + 1`.
///
/// The receiver discards an oversize frame's declared length in 4 KiB
/// reads, and goes on "reading" at end of stream: a length near 4 GiB
/// cost a million empty reads, seconds per input (a few such inputs made
/// the bulk of this target's time). Any length over the maximum takes
/// the same path (the call fails with the oversize status and the rest
/// of the at most 64 KiB that follow is swallowed), so the smallest one
/// changes nothing the client decides, only how long it spins.
fn cap_oversize(bytes: &mut [u8]) {
    let max = ttrpc::proto::MESSAGE_LENGTH_MAX;
    let mut at = 0usize;
    while at + 10 <= bytes.len() {
        let len = u32::from_be_bytes(bytes[at..at + 4].try_into().unwrap()) as usize;
        if len > max {
            bytes[at..at + 4].copy_from_slice(&(max as u32 + 1).to_be_bytes());
            return;
        }
        at += 10 + len;
    }
}

/// Reads one request frame, then writes `reply` and closes the stream.
fn answer(mut server: UnixStream, reply: &[u8]) {
    server
        .set_read_timeout(Some(Duration::from_secs(5)))
        .unwrap();
    let mut head = [0u8; 10];
    if server.read_exact(&mut head).is_err() {
        return;
    }
    let len = u32::from_be_bytes([head[0], head[1], head[2], head[3]]) as usize;
    let mut body = vec![0u8; len];
    if server.read_exact(&mut body).is_err() {
        return;
    }
    let _ = server.write_all(reply);
}
