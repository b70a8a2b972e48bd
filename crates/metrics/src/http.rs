//! A minimal HTTP/1.0 server for `GET /metrics`: one response per
//! connection, a bounded request head, a bounded number of clients.

use std::io::{Read, Write};
use std::net::{TcpListener, TcpStream};
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::Arc;
use std::time::Duration;

/// Clients served at once; more get 503.
const MAX_CLIENTS: usize = 8;
/// The longest request head read.
const HEAD_MAX: usize = 8192;

/// Serves `scrape` on `listener` until the process ends.
pub fn serve(listener: TcpListener, scrape: impl Fn() -> String + Send + Sync + 'static) {
    let scrape = Arc::new(scrape);
    let active = Arc::new(AtomicUsize::new(0));
    for conn in listener.incoming() {
        let Ok(mut conn) = conn else { continue };
        if active.fetch_add(1, Ordering::SeqCst) >= MAX_CLIENTS {
            active.fetch_sub(1, Ordering::SeqCst);
            let _ = respond(&mut conn, "503 Service Unavailable", "busy\n");
            continue;
        }
        let (scrape, active) = (scrape.clone(), active.clone());
        std::thread::spawn(move || {
            handle(&mut conn, &*scrape);
            active.fetch_sub(1, Ordering::SeqCst);
        });
    }
}

fn handle(conn: &mut TcpStream, scrape: &dyn Fn() -> String) {
    let _ = conn.set_read_timeout(Some(Duration::from_secs(10)));
    let _ = conn.set_write_timeout(Some(Duration::from_secs(30)));
    let Some(head) = read_head(conn) else {
        let _ = respond(conn, "400 Bad Request", "bad request\n");
        return;
    };
    let mut parts = head.split_whitespace();
    let (method, target) = (parts.next().unwrap_or(""), parts.next().unwrap_or(""));
    let path = target.split('?').next().unwrap_or("");
    let _ = match (method, path) {
        ("GET", "/metrics") => respond(conn, "200 OK", &scrape()),
        ("GET", "/") => respond(conn, "200 OK", "nacre-metrics: see /metrics\n"),
        ("GET", _) => respond(conn, "404 Not Found", "not found\n"),
        _ => respond(conn, "405 Method Not Allowed", "only GET\n"),
    };
}

/// The request head (up to the empty line), or None if it is malformed,
/// too long or does not come in time.
fn read_head(conn: &mut TcpStream) -> Option<String> {
    let mut head = Vec::new();
    let mut buf = [0u8; 1024];
    while !head.windows(4).any(|w| w == b"\r\n\r\n") && !head.windows(2).any(|w| w == b"\n\n") {
        let n = conn.read(&mut buf).ok()?;
        if n == 0 {
            break;
        }
        head.extend_from_slice(&buf[..n]);
        if head.len() > HEAD_MAX {
            return None;
        }
    }
    String::from_utf8(head).ok().filter(|h| !h.is_empty())
}

fn respond(conn: &mut TcpStream, status: &str, body: &str) -> std::io::Result<()> {
    write!(
        conn,
        "HTTP/1.0 {status}\r\nContent-Type: text/plain; version=0.0.4; charset=utf-8\r\n\
         Content-Length: {}\r\nConnection: close\r\n\r\n",
        body.len()
    )?;
    conn.write_all(body.as_bytes())?;
    conn.flush()
}

#[cfg(test)]
mod tests {
    use super::*;

    fn get(addr: std::net::SocketAddr, request: &str) -> String {
        let mut s = TcpStream::connect(addr).unwrap();
        s.write_all(request.as_bytes()).unwrap();
        let mut out = String::new();
        s.read_to_string(&mut out).unwrap();
        out
    }

    #[test]
    fn metrics_and_errors() {
        let l = TcpListener::bind("127.0.0.1:0").unwrap();
        let addr = l.local_addr().unwrap();
        std::thread::spawn(move || serve(l, || "nacre_sandboxes 0\n".to_owned()));
        let ok = get(addr, "GET /metrics HTTP/1.1\r\nHost: x\r\n\r\n");
        assert!(ok.starts_with("HTTP/1.0 200 OK\r\n"), "{ok}");
        assert!(
            ok.contains("version=0.0.4") && ok.ends_with("\r\n\r\nnacre_sandboxes 0\n"),
            "{ok}"
        );
        assert!(get(addr, "GET /nope HTTP/1.0\r\n\r\n").starts_with("HTTP/1.0 404"));
        assert!(get(addr, "POST /metrics HTTP/1.0\r\n\r\n").starts_with("HTTP/1.0 405"));
        let huge = format!("GET /metrics HTTP/1.0\r\nX: {}\r\n\r\n", "a".repeat(20_000));
        let mut s = TcpStream::connect(addr).unwrap();
        let _ = s.write_all(huge.as_bytes());
        let mut out = String::new();
        let _ = s.read_to_string(&mut out);
        assert!(out.starts_with("HTTP/1.0 400"), "{out}");
    }
}
