//! The status parser and framing, and sessions against a stand-in for
//! containerd's streaming server on 127.0.0.1.
#![allow(clippy::unwrap_used, clippy::expect_used, reason = "tests")]

use std::future::Future;

use tokio::net::{TcpListener, TcpStream};
use tokio_tungstenite::tungstenite::handshake::server::{ErrorResponse, Request, Response};
use tokio_tungstenite::WebSocketStream;

use super::*;

#[test]
fn exit_code_from_a_v4_status() {
    assert_eq!(
        exit_code(br#"{"metadata":{},"status":"Success"}"#).unwrap(),
        0
    );
    assert_eq!(exit_code(&failure(3)).unwrap(), 3);
}

#[test]
fn a_failure_without_exit_code_is_an_error() {
    let internal = br#"{"metadata":{},"status":"Failure","message":"error executing command in container: no such process","reason":"InternalError","code":500}"#;
    let err = exit_code(internal).unwrap_err();
    assert!(
        matches!(&err, StreamError::Failed { message } if message.contains("no such process")),
        "{err}"
    );
    for raw in [
        &b"not json"[..],
        br#"{"status":"Failure","reason":"NonZeroExitCode"}"#,
        br#"{"status":"Failure","reason":"NonZeroExitCode","details":{"causes":[{"reason":"ExitCode","message":"three"}]}}"#,
        br#"{"status":"Unknown"}"#,
    ] {
        assert!(
            matches!(exit_code(raw), Err(StreamError::BadStatus { .. })),
            "{}",
            String::from_utf8_lossy(raw)
        );
    }
}

#[test]
fn frames_and_urls() {
    assert_eq!(OFFERED, PROTOCOLS.join(", "));
    assert_eq!(frame(STDIN, b"hi"), Message::binary(vec![0, b'h', b'i']));
    let Message::Binary(resize) = resize_frame(TerminalSize {
        width: 111,
        height: 33,
    }) else {
        panic!("not binary")
    };
    assert_eq!(resize[0], RESIZE);
    let size: serde_json::Value = serde_json::from_slice(&resize[1..]).unwrap();
    assert_eq!(size, serde_json::json!({"Width": 111, "Height": 33}));
    assert_eq!(
        websocket_url("http://127.0.0.1:4000/exec/abc").unwrap(),
        "ws://127.0.0.1:4000/exec/abc"
    );
    assert!(websocket_url("https://127.0.0.1:4000/exec/abc").is_err());
    assert!(websocket_url("unix:///x").is_err());
}

/// The v4 status of a command that exited with `code`, as containerd
/// writes it.
fn failure(code: i32) -> Vec<u8> {
    serde_json::json!({
        "metadata": {},
        "status": "Failure",
        "message": format!("command terminated with non-zero exit code: exit code {code}"),
        "reason": "NonZeroExitCode",
        "details": {"causes": [{"reason": "ExitCode", "message": code.to_string()}]},
    })
    .to_string()
    .into_bytes()
}

fn run<F: Future>(fut: F) -> F::Output {
    tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .unwrap()
        .block_on(fut)
}

/// A listener on 127.0.0.1 and the exec URL that points at it.
async fn listen() -> (TcpListener, String) {
    let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
    let url = format!("http://{}/exec/token", listener.local_addr().unwrap());
    (listener, url)
}

/// Accepts one WebSocket, answering subprotocol `chosen` (none when
/// empty) after checking what the client offered.
#[allow(clippy::result_large_err, reason = "tungstenite's Callback signature")]
async fn accept(listener: &TcpListener, chosen: &'static str) -> WebSocketStream<TcpStream> {
    let (tcp, _) = listener.accept().await.unwrap();
    let callback = move |req: &Request, mut resp: Response| -> Result<Response, ErrorResponse> {
        let offered = req.headers().get("Sec-WebSocket-Protocol").unwrap();
        assert_eq!(offered, OFFERED);
        if !chosen.is_empty() {
            resp.headers_mut()
                .insert("Sec-WebSocket-Protocol", HeaderValue::from_static(chosen));
        }
        Ok(resp)
    };
    tokio_tungstenite::accept_hdr_async(tcp, callback)
        .await
        .unwrap()
}

async fn next_binary(ws: &mut WebSocketStream<TcpStream>) -> Vec<u8> {
    match ws.next().await {
        Some(Ok(Message::Binary(data))) => data.to_vec(),
        other => panic!("expected a binary message, got {other:?}"),
    }
}

const LONG: Duration = Duration::from_secs(30);

#[test]
fn v4_session_collects_output_and_the_exit_code() {
    run(async {
        let (listener, url) = listen().await;
        let server = tokio::spawn(async move {
            let mut ws = accept(&listener, V4).await;
            assert_eq!(next_binary(&mut ws).await, b"\x00abc");
            for msg in [&b"\x01"[..], b"\x01out", b"\x02err", b"\x01more"] {
                ws.send(Message::binary(msg.to_vec())).await.unwrap();
            }
            let mut status = vec![STATUS];
            status.extend(failure(7));
            ws.send(Message::binary(status)).await.unwrap();
            // Like containerd: the connection goes without a close frame.
        });
        let out = session(&url, Some(b"abc"), None, LONG).await.unwrap();
        server.await.unwrap();
        assert_eq!(
            out,
            ExecOutput {
                stdout: b"outmore".to_vec(),
                stderr: b"err".to_vec(),
                exit_code: 7,
            }
        );
    });
}

#[test]
fn v5_session_sends_the_size_and_closes_stdin() {
    run(async {
        let (listener, url) = listen().await;
        let server = tokio::spawn(async move {
            let mut ws = accept(&listener, V5).await;
            let resize = next_binary(&mut ws).await;
            assert_eq!(resize[0], RESIZE);
            assert_eq!(next_binary(&mut ws).await, b"\x00in");
            assert_eq!(next_binary(&mut ws).await, [CLOSE, STDIN]);
            let success = br#"{"metadata":{},"status":"Success"}"#;
            let mut status = vec![STATUS];
            status.extend_from_slice(success);
            ws.send(Message::binary(status)).await.unwrap();
            ws.close(None).await.unwrap();
        });
        let size = TerminalSize {
            width: 80,
            height: 24,
        };
        let out = session(&url, Some(b"in"), Some(size), LONG).await.unwrap();
        server.await.unwrap();
        assert_eq!(out, ExecOutput::default());
    });
}

#[test]
fn a_session_without_status_fails() {
    run(async {
        let (listener, url) = listen().await;
        let server = tokio::spawn(async move {
            let mut ws = accept(&listener, V4).await;
            ws.send(Message::binary(b"\x01partial".to_vec()))
                .await
                .unwrap();
            ws.close(None).await.unwrap();
            // A connection dropped before the status is an I/O error.
            let ws = accept(&listener, V4).await;
            drop(ws);
        });
        let err = session(&url, None, None, LONG).await.unwrap_err();
        assert!(matches!(err, StreamError::NoStatus { .. }), "{err}");
        let err = session(&url, None, None, LONG).await.unwrap_err();
        assert!(matches!(err, StreamError::Io { .. }), "{err}");
        server.await.unwrap();
    });
}

#[test]
fn a_silent_server_times_out() {
    run(async {
        let (listener, url) = listen().await;
        let _server = tokio::spawn(async move {
            let _ws = accept(&listener, V4).await;
            tokio::time::sleep(LONG).await;
        });
        let err = session(&url, None, None, Duration::from_millis(300))
            .await
            .unwrap_err();
        assert!(matches!(err, StreamError::Timeout { .. }), "{err}");
    });
}

#[test]
fn a_server_without_a_channel_protocol_is_refused() {
    run(async {
        let (listener, url) = listen().await;
        let _server = tokio::spawn(async move {
            let (tcp, _) = listener.accept().await.unwrap();
            // A plain WebSocket server: no subprotocol in its answer.
            let _ = tokio_tungstenite::accept_async(tcp).await;
        });
        let err = session(&url, None, None, LONG).await.unwrap_err();
        assert!(matches!(err, StreamError::Connect { .. }), "{err}");
        assert!(err.to_string().contains("ubprotocol"), "{err}");
    });
}
