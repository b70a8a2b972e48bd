//! CRI `Exec` with streams, as `kubectl exec` does it: RuntimeService.Exec
//! hands out a one-time URL on containerd's streaming server (Kubernetes'
//! `kubelet/cri/streaming`, carried in containerd as `pkg/cri/streaming`),
//! and the client upgrades that URL to a WebSocket.
//!
//! The WebSocket subprotocols are Kubernetes' channel protocols: every
//! binary message is one channel byte and a payload. Channels: 0 stdin
//! (client to server), 1 stdout, 2 stderr, 3 status (server to client: in
//! `v4.channel.k8s.io` one JSON `metav1.Status` at the end), 4 resize
//! (client to server, JSON `{"Width":w,"Height":h}`). The server first
//! sends an empty message on its lowest output channel, then the output,
//! then the status, and closes the connection.
//!
//! Stdin has no end of file before `v5.channel.k8s.io` (Kubernetes 1.30),
//! whose close signal is the message `[255, channel]`. containerd 1.6
//! (Debian 12) offers `channel.k8s.io`, `base64.channel.k8s.io` and their
//! `v4.` versions only, and closing the WebSocket instead ends the whole
//! session, output included. The client offers v5 first and closes stdin
//! where the server has it; on v4 the stdin data is sent and left open,
//! so commands must stop reading by themselves (`head -c N`, not `cat`).
//! The pre-v4 protocols are not offered: their status carries no exit code.

use std::time::{Duration, Instant};

use futures_util::{SinkExt, StreamExt};
use k8s_cri::v1::ExecRequest;
use tokio_tungstenite::tungstenite::client::IntoClientRequest;
use tokio_tungstenite::tungstenite::http::HeaderValue;
use tokio_tungstenite::tungstenite::{self, Message};

use crate::cri::{CriClient, CriError};

/// Subprotocols offered, most preferred first.
pub const PROTOCOLS: &[&str] = &[V5, V4];
const V5: &str = "v5.channel.k8s.io";
const V4: &str = "v4.channel.k8s.io";
/// [`PROTOCOLS`] as the `Sec-WebSocket-Protocol` header.
const OFFERED: &str = "v5.channel.k8s.io, v4.channel.k8s.io";

const STDIN: u8 = 0;
const STDOUT: u8 = 1;
const STDERR: u8 = 2;
const STATUS: u8 = 3;
const RESIZE: u8 = 4;
/// v5's control channel: `[CLOSE, channel]` half-closes `channel`.
const CLOSE: u8 = 255;
/// Largest stdin payload per message.
const STDIN_CHUNK: usize = 32 * 1024;

/// What a streamed exec produced.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct ExecOutput {
    pub stdout: Vec<u8>,
    /// Empty with a terminal: the terminal merges it into stdout.
    pub stderr: Vec<u8>,
    pub exit_code: i32,
}

/// The terminal size of an exec with a TTY, sent as the first resize.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct TerminalSize {
    pub width: u16,
    pub height: u16,
}

/// What went wrong in a streamed exec.
#[derive(Debug, thiserror::Error)]
pub enum StreamError {
    #[error(transparent)]
    Cri(#[from] CriError),
    #[error("CRI Exec: cannot stream from {url}: {reason}")]
    Url { url: String, reason: &'static str },
    #[error("exec stream {url}: WebSocket upgrade: {source}")]
    Connect {
        url: String,
        #[source]
        source: Box<tungstenite::Error>,
    },
    #[error("exec stream {url}: {source}")]
    Io {
        url: String,
        #[source]
        source: Box<tungstenite::Error>,
    },
    #[error("exec stream {url}: no status within {timeout:?}")]
    Timeout { url: String, timeout: Duration },
    #[error("exec stream {url}: closed without a status")]
    NoStatus { url: String },
    #[error("exec stream: unreadable status {raw:?}: {reason}")]
    BadStatus { raw: String, reason: String },
    #[error("exec stream: the command did not run to an exit code: {message}")]
    Failed { message: String },
}

impl CriClient {
    /// Runs `cmd` in container `id` through CRI Exec and its stream:
    /// writes `stdin` (if any) to the command, collects stdout, stderr and
    /// the exit code. With `tty` the command gets a terminal of that size
    /// (stderr is then part of stdout, and input is echoed). Everything,
    /// the Exec call included, gives up after the client's `timeout`.
    ///
    /// On containerd 1.6 stdin is never closed (see the module
    /// documentation): give stdin only to commands that stop reading by
    /// themselves.
    pub fn exec_stream(
        &self,
        id: &str,
        cmd: &[&str],
        stdin: Option<&[u8]>,
        tty: Option<TerminalSize>,
    ) -> Result<ExecOutput, StreamError> {
        let start = Instant::now();
        let url = self.exec(&ExecRequest {
            container_id: id.to_string(),
            cmd: cmd.iter().map(|s| s.to_string()).collect(),
            tty: tty.is_some(),
            // containerd 1.6 relays no terminal output to an exec without
            // stdin (kubectl pairs -t with -i): ask for it, send nothing.
            stdin: stdin.is_some() || tty.is_some(),
            stdout: true,
            // CRI refuses stderr with a terminal: the terminal merges it.
            stderr: tty.is_none(),
        })?;
        let left = self.timeout.saturating_sub(start.elapsed());
        self.block_on(session(&url, stdin, tty, left))
    }
}

/// [`stream`] within `timeout`.
async fn session(
    url: &str,
    stdin: Option<&[u8]>,
    tty: Option<TerminalSize>,
    timeout: Duration,
) -> Result<ExecOutput, StreamError> {
    match tokio::time::timeout(timeout, stream(url, stdin, tty)).await {
        Ok(result) => result,
        Err(_) => Err(StreamError::Timeout {
            url: url.to_string(),
            timeout,
        }),
    }
}

/// The WebSocket address of the URL CRI Exec returned.
fn websocket_url(url: &str) -> Result<String, StreamError> {
    if let Some(rest) = url.strip_prefix("http://") {
        Ok(format!("ws://{rest}"))
    } else if url.starts_with("https://") {
        Err(StreamError::Url {
            url: url.to_string(),
            reason: "TLS streaming (enable_tls_streaming) is not supported",
        })
    } else {
        Err(StreamError::Url {
            url: url.to_string(),
            reason: "not an http:// URL",
        })
    }
}

/// One message on `channel`.
fn frame(channel: u8, payload: &[u8]) -> Message {
    let mut data = Vec::with_capacity(payload.len() + 1);
    data.push(channel);
    data.extend_from_slice(payload);
    Message::binary(data)
}

fn resize_frame(size: TerminalSize) -> Message {
    let json = serde_json::json!({ "Width": size.width, "Height": size.height });
    frame(RESIZE, json.to_string().as_bytes())
}

/// Connects, sends the terminal size and stdin, reads until the server
/// closes.
async fn stream(
    url: &str,
    stdin: Option<&[u8]>,
    tty: Option<TerminalSize>,
) -> Result<ExecOutput, StreamError> {
    let ws_url = websocket_url(url)?;
    let connect_err = |source| StreamError::Connect {
        url: url.to_string(),
        source: Box::new(source),
    };
    let mut request = ws_url.into_client_request().map_err(connect_err)?;
    request
        .headers_mut()
        .insert("Sec-WebSocket-Protocol", HeaderValue::from_static(OFFERED));
    let (ws, response) = tokio_tungstenite::connect_async(request)
        .await
        .map_err(connect_err)?;
    // tungstenite refuses an answer without one of the offered protocols.
    let v5 = response
        .headers()
        .get("Sec-WebSocket-Protocol")
        .is_some_and(|v| v == V5);
    let io_err = |source| StreamError::Io {
        url: url.to_string(),
        source: Box::new(source),
    };
    let (mut sink, mut source) = ws.split();

    // Input and output at once: a command may answer before it has read
    // all its input. The sink is dropped, not closed, when done: a close
    // frame would end the session.
    let send = async {
        if let Some(size) = tty {
            sink.send(resize_frame(size)).await?;
        }
        if let Some(data) = stdin {
            for chunk in data.chunks(STDIN_CHUNK) {
                sink.send(frame(STDIN, chunk)).await?;
            }
            if v5 {
                sink.send(Message::binary(vec![CLOSE, STDIN])).await?;
            }
        }
        Ok::<_, tungstenite::Error>(())
    };
    let receive = async {
        let mut out = ExecOutput::default();
        let mut status = Vec::new();
        while let Some(message) = source.next().await {
            let data = match message {
                Ok(Message::Binary(data)) => data,
                Ok(Message::Close(_)) => break,
                Ok(_) => continue,
                // containerd drops the connection right after the status.
                Err(_) if !status.is_empty() => break,
                Err(e) => return Err(io_err(e)),
            };
            let Some((&channel, payload)) = data.split_first() else {
                continue;
            };
            match channel {
                STDOUT => out.stdout.extend_from_slice(payload),
                STDERR => out.stderr.extend_from_slice(payload),
                STATUS => status.extend_from_slice(payload),
                _ => {}
            }
        }
        if status.is_empty() {
            return Err(StreamError::NoStatus {
                url: url.to_string(),
            });
        }
        out.exit_code = exit_code(&status)?;
        Ok(out)
    };
    // A failed send means the session ended early: the receiving side
    // tells why, or the command exited without reading all its input.
    let (_sent, received) = futures_util::future::join(send, receive).await;
    received
}

/// The exit code in a v4 status: 0 for `Success`, the `ExitCode` cause of
/// a `NonZeroExitCode` failure; any other failure is an error.
fn exit_code(raw: &[u8]) -> Result<i32, StreamError> {
    let bad = |reason: String| StreamError::BadStatus {
        raw: String::from_utf8_lossy(raw).into_owned(),
        reason,
    };
    let status: serde_json::Value = serde_json::from_slice(raw).map_err(|e| bad(e.to_string()))?;
    match status["status"].as_str() {
        Some("Success") => Ok(0),
        Some("Failure") if status["reason"] == "NonZeroExitCode" => {
            let causes = status["details"]["causes"].as_array();
            let code = causes
                .into_iter()
                .flatten()
                .find(|c| c["reason"] == "ExitCode")
                .and_then(|c| c["message"].as_str())
                .ok_or_else(|| bad("no ExitCode cause".into()))?;
            code.parse()
                .map_err(|_| bad(format!("exit code {code:?} is not a number")))
        }
        Some("Failure") => Err(StreamError::Failed {
            message: status["message"]
                .as_str()
                .unwrap_or("(no message)")
                .to_string(),
        }),
        other => Err(bad(format!("status {other:?}"))),
    }
}

#[cfg(test)]
mod tests;
