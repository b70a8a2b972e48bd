//! Errors of the agent client, and their mapping from ttrpc's errors (in
//! this one place).

use std::io;
use std::time::Duration;

use nacre_protocol::ttrpc::{self, Code};

use super::endpoint::HandshakeError;

/// Why talking to the agent failed.
#[derive(Debug, thiserror::Error)]
pub enum AgentClientError {
    /// The Unix socket could not be connected.
    #[error("connecting to {path}: {source}")]
    Connect {
        /// The socket path.
        path: String,
        /// The system error.
        #[source]
        source: io::Error,
    },
    /// The hybrid vsock handshake failed.
    #[error("vsock handshake on {path} for port {port}: {source}")]
    Handshake {
        /// The VMM's vsock socket path.
        path: String,
        /// The guest port asked for.
        port: u32,
        /// What went wrong.
        #[source]
        source: HandshakeError,
    },
    /// No connection could be made before the connect deadline.
    #[error("agent at {endpoint} not reachable within {waited:?} ({attempts} attempts): {last}")]
    Unreachable {
        /// The endpoint tried.
        endpoint: String,
        /// How long the client tried.
        waited: Duration,
        /// How many attempts were made.
        attempts: u32,
        /// The last attempt's error.
        #[source]
        last: Box<AgentClientError>,
    },
    /// The ttrpc client could not be set up on the connected socket.
    #[error("setting up the ttrpc client for {endpoint}: {source}")]
    Setup {
        /// The endpoint.
        endpoint: String,
        /// ttrpc's error.
        #[source]
        source: Box<ttrpc::Error>,
    },
    /// The RPC got no answer within the call timeout.
    #[error("{rpc} timed out after {timeout:?}")]
    Timeout {
        /// The RPC, e.g. `Agent.GetGuestDetails`.
        rpc: &'static str,
        /// The call timeout.
        timeout: Duration,
    },
    /// The agent does not implement the RPC (an older agent).
    #[error("{rpc} is not supported by this agent: {message}")]
    Unsupported {
        /// The RPC.
        rpc: &'static str,
        /// The agent's message.
        message: String,
    },
    /// The agent answered with an error status.
    #[error("{rpc} failed with {code:?}: {message}")]
    Status {
        /// The RPC.
        rpc: &'static str,
        /// The ttRPC status code.
        code: Code,
        /// The agent's message.
        message: String,
    },
    /// The agent's answer does not make sense to this client.
    #[error("{rpc}: bad answer from the agent: {message}")]
    BadResponse {
        /// The RPC.
        rpc: &'static str,
        /// What is wrong with it.
        message: String,
    },
    /// The request is larger than a ttrpc message may be: refused before
    /// sending (runc's execve would fail with E2BIG).
    #[error(
        "{rpc}: argument list too long (E2BIG): the {what} is {size} bytes, \
         the agent takes at most {max} bytes (the ttrpc message limit)"
    )]
    TooLarge {
        /// The RPC.
        rpc: &'static str,
        /// What is too large (`spec`, `process`).
        what: &'static str,
        /// Its size in bytes.
        size: usize,
        /// The most the agent takes.
        max: usize,
    },
    /// The connection failed during the RPC.
    #[error("{rpc}: connection to the agent failed: {source}")]
    Transport {
        /// The RPC.
        rpc: &'static str,
        /// ttrpc's error.
        #[source]
        source: Box<ttrpc::Error>,
    },
}

/// The most of a guest-written message the host keeps (an agent error
/// goes into logs, CLI output and containerd's errors).
pub const GUEST_TEXT_MAX: usize = 4096;

/// A message written by the guest, made safe to show on the host: control
/// characters (terminal escape sequences included) replaced by `?`, at
/// most [`GUEST_TEXT_MAX`] bytes kept, the cut said.
#[must_use]
pub fn guest_text(text: &str) -> String {
    let mut out = String::with_capacity(text.len().min(GUEST_TEXT_MAX + 32));
    for (i, c) in text.char_indices() {
        if out.len() + c.len_utf8() > GUEST_TEXT_MAX {
            out.push_str(&format!("... ({} more bytes cut)", text.len() - i));
            break;
        }
        out.push(if c.is_control() && c != '\n' && c != '\t' {
            '?'
        } else {
            c
        });
    }
    out
}

/// The largest JSON document (spec or process) sent in one request: the
/// ttrpc message limit less room for the request's other fields.
pub const MAX_JSON_BYTES: usize = ttrpc::proto::MESSAGE_LENGTH_MAX - 64 * 1024;

/// Refuses a `what` of `size` bytes that would not fit in a ttrpc message.
pub fn check_json_size(
    rpc: &'static str,
    what: &'static str,
    size: usize,
) -> Result<(), AgentClientError> {
    if size > MAX_JSON_BYTES {
        return Err(AgentClientError::TooLarge {
            rpc,
            what,
            size,
            max: MAX_JSON_BYTES,
        });
    }
    Ok(())
}

impl AgentClientError {
    /// Maps ttrpc's error for `rpc` (called with `timeout`).
    #[must_use]
    pub fn from_rpc(rpc: &'static str, timeout: Duration, err: ttrpc::Error) -> Self {
        match err {
            ttrpc::Error::RpcStatus(status) => {
                let code = status.code();
                let message = guest_text(status.message());
                // Generated servers answer NOT_FOUND "... is not supported"
                // for unimplemented methods; the sync ttrpc server answers
                // INVALID_ARGUMENT "... does not exist" for unknown ones.
                let unsupported = code == Code::UNIMPLEMENTED
                    || (code == Code::NOT_FOUND && message.ends_with("is not supported"))
                    || (code == Code::INVALID_ARGUMENT && message.ends_with("does not exist"));
                if unsupported {
                    AgentClientError::Unsupported { rpc, message }
                } else {
                    AgentClientError::Status { rpc, code, message }
                }
            }
            // The sync client reports an expired `timeout_nano` this way.
            ttrpc::Error::Others(ref msg) if msg.contains("timeout") => {
                AgentClientError::Timeout { rpc, timeout }
            }
            source => AgentClientError::Transport {
                rpc,
                source: Box::new(source),
            },
        }
    }

    /// Whether a new connection attempt may succeed (the VMM's socket or the
    /// agent's listener is not there yet).
    #[must_use]
    pub fn is_retryable(&self) -> bool {
        match self {
            AgentClientError::Connect { source, .. } => matches!(
                source.kind(),
                io::ErrorKind::NotFound
                    | io::ErrorKind::ConnectionRefused
                    | io::ErrorKind::ConnectionReset
            ),
            AgentClientError::Handshake { source, .. } => source.is_retryable(),
            _ => false,
        }
    }
}

#[cfg(test)]
mod tests {
    use nacre_protocol::ttrpc::get_status;

    use super::*;

    const T: Duration = Duration::from_secs(1);

    #[test]
    fn stays_small() {
        // Callers embed it in their own errors.
        assert!(std::mem::size_of::<AgentClientError>() <= 64);
    }

    #[test]
    fn maps_status_codes() {
        let err = AgentClientError::from_rpc(
            "Agent.SetTime",
            T,
            ttrpc::Error::RpcStatus(get_status(Code::PERMISSION_DENIED, "no")),
        );
        assert!(matches!(
            err,
            AgentClientError::Status {
                rpc: "Agent.SetTime",
                code: Code::PERMISSION_DENIED,
                ..
            }
        ));
        assert_eq!(
            err.to_string(),
            "Agent.SetTime failed with PERMISSION_DENIED: no"
        );
    }

    #[test]
    fn maps_unknown_methods_to_unsupported() {
        for status in [
            get_status(Code::NOT_FOUND, "/nacre.agent.v1.Agent/X is not supported"),
            get_status(
                Code::INVALID_ARGUMENT,
                "/nacre.agent.v1.Agent/X does not exist",
            ),
            get_status(Code::UNIMPLEMENTED, "nope"),
        ] {
            let err = AgentClientError::from_rpc("Agent.X", T, ttrpc::Error::RpcStatus(status));
            assert!(
                matches!(err, AgentClientError::Unsupported { rpc: "Agent.X", .. }),
                "{err}"
            );
        }
        let err = AgentClientError::from_rpc(
            "Agent.X",
            T,
            ttrpc::Error::RpcStatus(get_status(Code::NOT_FOUND, "no such container")),
        );
        assert!(matches!(err, AgentClientError::Status { .. }));
    }

    #[test]
    fn maps_timeouts_and_transport_errors() {
        let err = AgentClientError::from_rpc(
            "Health.Check",
            T,
            ttrpc::Error::Others("Receive packet from Receiver timeout: x".into()),
        );
        assert!(
            matches!(err, AgentClientError::Timeout { rpc: "Health.Check", timeout } if timeout == T)
        );
        let err = AgentClientError::from_rpc(
            "Health.Check",
            T,
            ttrpc::Error::Socket("socket error EOF".into()),
        );
        assert!(matches!(err, AgentClientError::Transport { .. }));
        assert!(err
            .to_string()
            .starts_with("Health.Check: connection to the agent failed"));
    }

    #[test]
    fn retries_only_transient_connect_errors() {
        let connect = |kind| AgentClientError::Connect {
            path: "/x".into(),
            source: io::Error::from(kind),
        };
        assert!(connect(io::ErrorKind::NotFound).is_retryable());
        assert!(connect(io::ErrorKind::ConnectionRefused).is_retryable());
        assert!(!connect(io::ErrorKind::PermissionDenied).is_retryable());
        let handshake = |source| AgentClientError::Handshake {
            path: "/x".into(),
            port: 1024,
            source,
        };
        assert!(handshake(HandshakeError::Closed).is_retryable());
        assert!(!handshake(HandshakeError::BadReply("NO".into())).is_retryable());
    }

    #[test]
    fn oversized_documents_are_refused_as_e2big() {
        check_json_size("Agent.CreateContainer", "spec", MAX_JSON_BYTES).unwrap();
        let err = check_json_size("Agent.CreateContainer", "spec", 5_751_886).unwrap_err();
        assert_eq!(
            err.to_string(),
            format!(
                "Agent.CreateContainer: argument list too long (E2BIG): the spec is 5751886 \
                 bytes, the agent takes at most {MAX_JSON_BYTES} bytes (the ttrpc message limit)"
            )
        );
        const { assert!(MAX_JSON_BYTES > 4_000_000) };
    }

    #[test]
    fn guest_text_is_bounded_and_escape_free() {
        let evil = format!("\u{1b}[2J\u{1b}]0;owned\u{7}{}", "x".repeat(10 << 20));
        let shown = guest_text(&evil);
        assert!(shown.len() < GUEST_TEXT_MAX + 64, "{}", shown.len());
        assert!(!shown.chars().any(|c| c.is_control()), "{shown:?}");
        assert!(
            shown.ends_with("more bytes cut)"),
            "{}",
            &shown[shown.len() - 40..]
        );
        assert_eq!(guest_text("plain: no such file\n"), "plain: no such file\n");
    }
}
