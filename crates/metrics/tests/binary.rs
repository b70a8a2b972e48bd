//! The `nacre-metrics` binary: one scrape with `--once`, and the endpoint.

use std::io::{BufRead, BufReader, Read, Write};
use std::process::{Command, Stdio};

const BIN: &str = env!("CARGO_BIN_EXE_nacre-metrics");

#[test]
fn once_prints_an_empty_node() {
    let root = std::env::temp_dir().join(format!("nacre-metrics-once-{}", std::process::id()));
    std::fs::create_dir_all(&root).unwrap();
    let o = Command::new(BIN)
        .arg("--once")
        .arg("--shim-root")
        .arg(&root)
        .arg("--template-dir")
        .arg(&root)
        .output()
        .unwrap();
    assert!(o.status.success());
    let text = String::from_utf8_lossy(&o.stdout);
    assert!(text.contains("nacre_sandboxes 0\n"), "{text}");
    assert!(text.contains("nacre_templates 0\n"), "{text}");
    std::fs::remove_dir_all(&root).unwrap();
}

#[test]
fn serves_metrics_over_http() {
    let root = std::env::temp_dir().join(format!("nacre-metrics-http-{}", std::process::id()));
    std::fs::create_dir_all(&root).unwrap();
    let mut child = Command::new(BIN)
        .args(["--listen", "127.0.0.1:0", "--shim-root"])
        .arg(&root)
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();
    let mut line = String::new();
    BufReader::new(child.stderr.take().unwrap())
        .read_line(&mut line)
        .unwrap();
    let addr = line.trim().rsplit(' ').next().unwrap().to_owned();
    let mut s = std::net::TcpStream::connect(&addr).unwrap();
    s.write_all(b"GET /metrics HTTP/1.0\r\n\r\n").unwrap();
    let mut out = String::new();
    s.read_to_string(&mut out).unwrap();
    let _ = child.kill();
    let _ = child.wait();
    std::fs::remove_dir_all(&root).unwrap();
    assert!(out.starts_with("HTTP/1.0 200 OK"), "{out}");
    assert!(out.contains("nacre_sandboxes 0\n"), "{out}");
}
