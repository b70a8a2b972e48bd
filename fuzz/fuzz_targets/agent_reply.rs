//! The host's decoding of agent replies: whatever the guest agent writes
//! back on the ttRPC connection, read by the runtime's real client
//! (`TtrpcAgentClient` over the sync ttrpc client) for one call.
//!
//! Inputs are structure-aware: well-formed responses (a frame header for
//! the call's stream, a `Response` with a status and a
//! `GetGuestDetailsResponse` payload), frames with chosen header fields
//! around arbitrary payloads, and raw bytes.
//!
//! One connection serves input after input while the bytes leave it in a
//! known state (whole frames, one answering the call); stream ids are
//! rewritten so that each input sees what a fresh connection would.
//!
//! Invariants: the call returns (no hang past its timeout, no panic); a
//! well-formed OK reply decodes to exactly the fields the agent sent
//! (round trip) and an error status never decodes as success.

#![no_main]

use std::cell::RefCell;
use std::io::{Read, Write};
use std::net::Shutdown;
use std::os::unix::net::{UnixListener, UnixStream};
use std::path::PathBuf;
use std::sync::{mpsc, Mutex, OnceLock};
use std::time::Duration;

use arbitrary::Arbitrary;
use libfuzzer_sys::fuzz_target;
use nacre_protocol::agent::GetGuestDetailsResponse;
use nacre_protocol::protobuf::{Enum, Message};
use nacre_protocol::ttrpc::{self, Code};
use nacre_runtime::agent::{
    AgentClient, AgentClientError, ClientOptions, Endpoint, TtrpcAgentClient,
};

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
        /// The declared length minus the body's (none: the body's). An
        /// `i16` was almost never 0: nearly every such frame misframed the
        /// stream, and the frames after it went unread as frames.
        len_delta: Option<i16>,
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
            let len = (body.len() as u32).wrapping_add_signed(i32::from(len_delta.unwrap_or(0)));
            frame(*stream_id, *kind, *flags, body, len)
        }
        Frame::Raw(b) => b.clone(),
    }
}

struct Agent {
    path: PathBuf,
    listener: UnixListener,
    /// The agent thread's work: one reply per call.
    jobs: mpsc::Sender<Job>,
    done: Mutex<mpsc::Receiver<()>>,
}

/// What the agent thread does for one call: read the request from
/// `stream`, write `reply`, and end the connection if `close`.
struct Job {
    stream: UnixStream,
    reply: Vec<u8>,
    close: bool,
}

fn agent() -> &'static Agent {
    static AGENT: OnceLock<Agent> = OnceLock::new();
    AGENT.get_or_init(|| {
        let path = nacre_fuzz::scratch::dir("agent-reply").join("agent.sock");
        let listener = UnixListener::bind(&path).unwrap();
        let (jobs, rx) = mpsc::channel::<Job>();
        let (done_tx, done) = mpsc::channel();
        std::thread::spawn(move || {
            for job in rx {
                answer(&job.stream, &job.reply);
                if job.close {
                    let _ = job.stream.shutdown(Shutdown::Both);
                }
                if done_tx.send(()).is_err() {
                    return;
                }
            }
        });
        Agent {
            path,
            listener,
            jobs,
            done: Mutex::new(done),
        }
    })
}

/// A client connected to the fake agent, kept from one input to the next
/// while the connection is in a known state (see [`frames`]): a fresh
/// connection per input cost three thread starts (the sync ttrpc
/// client's two, the agent's), most of an execution.
struct Session {
    /// Threads of this process before the client started its own.
    threads_before: usize,
    client: TtrpcAgentClient,
    /// The agent's end.
    stream: UnixStream,
    /// The stream id of the session's next call (the client numbers its
    /// calls 1, 3, 5, ...).
    next_call: u32,
}

thread_local! {
    static SESSION: RefCell<Option<Session>> = const { RefCell::new(None) };
}

fn connect(agent: &Agent) -> Session {
    let options = ClientOptions {
        connect_timeout: Duration::from_secs(5),
        retry_interval: Duration::from_millis(10),
        call_timeout: Duration::from_secs(5),
    };
    let threads_before = threads();
    let client = TtrpcAgentClient::connect(Endpoint::unix(&agent.path), options).unwrap();
    let (stream, _) = agent.listener.accept().unwrap();
    Session {
        threads_before,
        client,
        stream,
        next_call: 1,
    }
}

/// The number of threads of this process.
fn threads() -> usize {
    let status = std::fs::read_to_string("/proc/self/status").unwrap();
    status
        .lines()
        .find_map(|l| l.strip_prefix("Threads:"))
        .and_then(|n| n.trim().parse().ok())
        .unwrap()
}

/// Drops a session whose connection the agent ended, once the sync ttrpc
/// client's receiver thread has seen the end of stream and exited: that
/// thread reads the connection by descriptor number, and a descriptor
/// closed under it is reused by the next session's sockets, whose bytes
/// it would then steal. (Its sender thread leaves once the client is
/// dropped, without touching the descriptor.)
fn end(session: Session) {
    // The agent's end, if the agent has not ended it (a call that timed
    // out): the receiver exits at the end of stream.
    let _ = session.stream.shutdown(Shutdown::Both);
    // Generous: a niced fuzzer beside a VM test run can wait seconds for
    // a CPU.
    let deadline = std::time::Instant::now() + Duration::from_secs(120);
    while threads() > session.threads_before + 1 {
        assert!(
            std::time::Instant::now() < deadline,
            "the ttrpc receiver did not exit 120 s after the end of stream"
        );
        std::thread::yield_now();
    }
    drop(session);
}

/// Walks `bytes` frame by frame as the client's receiver reads them and
/// makes a reused connection answer like a fresh one, where the call is
/// stream 1 and every other stream id is unknown to the client:
///
/// - stream id 1 becomes `call` (the id of this connection's call), any
///   other odd id the even id below it (the client never uses even ids;
///   an odd one could be a later call's);
/// - the first length over ttrpc's `MESSAGE_LENGTH_MAX` becomes the
///   maximum + 1. The receiver discards an oversize frame's declared
///   length in 4 KiB reads, and goes on "reading" at end of stream: a
///   length near 4 GiB cost a million empty reads, seconds per input.
///   Any length over the maximum takes the same path (the call fails with
///   the oversize status and the rest of the at most 64 KiB that follow
///   is swallowed), so the smallest one changes nothing the client
///   decides, only how long it spins.
///
/// Returns whether the connection is left in a known state: the bytes
/// are whole frames, none oversize, one of them answers the call (so the
/// call returns without the end of stream, and no partial frame waits in
/// the receiver for the next input's bytes).
fn frames(bytes: &mut [u8], call: u32) -> bool {
    let max = ttrpc::proto::MESSAGE_LENGTH_MAX;
    let mut at = 0usize;
    let mut answered = false;
    while at + 10 <= bytes.len() {
        let len = u32::from_be_bytes(bytes[at..at + 4].try_into().unwrap()) as usize;
        let id = u32::from_be_bytes(bytes[at + 4..at + 8].try_into().unwrap());
        let id = match id {
            1 => {
                answered = true;
                call
            }
            odd if odd % 2 == 1 => odd - 1,
            even => even,
        };
        bytes[at + 4..at + 8].copy_from_slice(&id.to_be_bytes());
        if len > max {
            bytes[at..at + 4].copy_from_slice(&(max as u32 + 1).to_be_bytes());
            return false;
        }
        at += 10 + len;
    }
    answered && at == bytes.len()
}

fuzz_target!(|input: Input| {
    nacre_fuzz::ignore_sigpipe();
    let agent = agent();
    let mut bytes = Vec::new();
    for f in input.frames.iter().take(4) {
        bytes.extend(encode(f));
    }
    bytes.truncate(64 * 1024);
    let session = SESSION.with(|s| s.borrow_mut().take());
    let mut session = session.unwrap_or_else(|| connect(agent));
    let keep = frames(&mut bytes, session.next_call);
    // The agent answers once the request is in: a reply read before the
    // client registered its call would be dropped as unsolicited. A
    // connection not left in a known state is ended after the reply, as
    // a fresh connection per input always was.
    agent
        .jobs
        .send(Job {
            stream: session.stream.try_clone().unwrap(),
            reply: bytes,
            close: !keep,
        })
        .unwrap();
    let (got, timed_out) = if input.health {
        let r = session.client.health();
        (None, matches!(r, Err(AgentClientError::Timeout { .. })))
    } else {
        let r = session.client.guest_details();
        let t = matches!(r, Err(AgentClientError::Timeout { .. }));
        (Some(r), t)
    };
    agent.done.lock().unwrap().recv().unwrap();
    // A call that timed out is the client doing its job when the answer
    // comes late: on a loaded machine (a niced fuzzer beside a VM test
    // run) the agent thread can wait seconds for a CPU. Its late reply
    // would answer the next input's call, so the session ends here and
    // nothing is checked of this input.
    if timed_out {
        end(session);
        return;
    }
    // The agent ended the connection right after its reply: the client's
    // receiver may see the end of stream before the call collects the
    // reply (most often on a starved machine), and then reports the
    // disconnection; the call fails, it never decodes wrongly.
    let disconnected = matches!(got, Some(Err(AgentClientError::Transport { .. })));
    if disconnected && !keep {
        end(session);
        return;
    }
    if keep {
        session.next_call += 2;
        SESSION.with(|s| *s.borrow_mut() = Some(session));
    } else {
        end(session);
    }
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

/// Reads one request frame, then writes `reply`.
fn answer(mut server: &UnixStream, reply: &[u8]) {
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
