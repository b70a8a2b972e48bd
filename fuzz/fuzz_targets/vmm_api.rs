//! The VMM's control socket: the bytes a client writes on one connection,
//! served by the real connection loop against a fake VM.
//!
//! Invariants: the responses are exactly the ones a model of the framing
//! predicts (one per non-blank line of at most `MAX_LINE` bytes, a final
//! error for an over-long line, nothing after invalid UTF-8 or after
//! `shutdown`), each response is valid JSON that round-trips, a line that
//! parses as a request is answered `ok` (but `snapshot`, which the fake
//! refuses) and one that does not is answered with an error; a request
//! that parses round-trips through its canonical line.

#![no_main]

use std::io::{Read, Write};
use std::os::unix::net::UnixStream;
use std::path::Path;
use std::sync::atomic::{AtomicU32, Ordering};

use libfuzzer_sys::fuzz_target;
use nacre_vmm::api::{serve, Request, Response, State, VmControl, VmStatus};

const MAX_LINE: usize = 4096;

#[derive(Default)]
struct Fake {
    shutdowns: AtomicU32,
}

impl VmControl for Fake {
    fn status(&self) -> VmStatus {
        VmStatus {
            state: State::Running,
            pid: 1,
            vcpus: 1,
            memory_mib: 64,
        }
    }
    fn pause(&self) -> Result<(), String> {
        Ok(())
    }
    fn resume(&self) -> Result<(), String> {
        Ok(())
    }
    fn shutdown(&self) {
        self.shutdowns.fetch_add(1, Ordering::SeqCst);
    }
    fn snapshot(&self, _dir: &Path) -> Result<(), String> {
        Err("not here".into())
    }
}

/// What `serve` should answer, line by line: `Some(ok)` per response.
fn expected(mut input: &[u8]) -> Vec<Option<bool>> {
    let mut out = Vec::new();
    loop {
        let window = &input[..input.len().min(MAX_LINE)];
        let n = window
            .iter()
            .position(|&b| b == b'\n')
            .map_or(window.len(), |p| p + 1);
        if n == 0 {
            return out;
        }
        let line = &window[..n];
        input = &input[n..];
        // read_line checks UTF-8 before serve looks at the length.
        let Ok(line) = std::str::from_utf8(line) else {
            return out;
        };
        if n >= MAX_LINE && !line.ends_with('\n') {
            out.push(Some(false));
            return out;
        }
        if line.trim().is_empty() {
            continue;
        }
        match Request::parse(line) {
            Ok(req) => {
                let again = Request::parse(&req.to_line().unwrap()).unwrap();
                assert_eq!(again, req, "request round trip");
                out.push(Some(!matches!(req, Request::Snapshot { .. })));
                if matches!(req, Request::Shutdown) {
                    return out;
                }
            }
            Err(_) => out.push(Some(false)),
        }
    }
}

fuzz_target!(|data: &[u8]| {
    nacre_fuzz::ignore_sigpipe();
    let data = &data[..data.len().min(64 * 1024)];
    let (mut client, server) = UnixStream::pair().unwrap();
    let fake = Fake::default();
    // The client writes everything, then reads the answers while the
    // server runs: many short lines answer more than a socket buffers.
    let out = std::thread::scope(|scope| {
        let mut reader = client.try_clone().unwrap();
        let answers = scope.spawn(move || {
            let mut out = Vec::new();
            reader.read_to_end(&mut out).unwrap();
            out
        });
        let writer = scope.spawn(move || {
            let _ = client.write_all(data);
            let _ = client.shutdown(std::net::Shutdown::Write);
        });
        serve(server, &fake);
        writer.join().unwrap();
        answers.join().unwrap()
    });
    let text = String::from_utf8(out).expect("responses are UTF-8");
    let got: Vec<Option<bool>> = text
        .lines()
        .map(|l| {
            let r = Response::parse(l).expect("a response line is JSON");
            assert_eq!(
                Response::parse(&r.to_line()).unwrap(),
                r,
                "response round trip"
            );
            assert!(r.ok || r.error.is_some(), "an error without a reason");
            Some(r.ok)
        })
        .collect();
    let want = expected(data);
    assert_eq!(got, want, "responses differ from the framing model");
    let shut = want.last().is_some() && data_has_shutdown(&want, data);
    assert_eq!(fake.shutdowns.load(Ordering::SeqCst) > 0, shut);
});

/// Whether the model's last answered line was a shutdown.
fn data_has_shutdown(_want: &[Option<bool>], data: &[u8]) -> bool {
    let mut input = data;
    loop {
        let window = &input[..input.len().min(MAX_LINE)];
        let n = window
            .iter()
            .position(|&b| b == b'\n')
            .map_or(window.len(), |p| p + 1);
        if n == 0 {
            return false;
        }
        let Ok(line) = std::str::from_utf8(&window[..n]) else {
            return false;
        };
        if n >= MAX_LINE && !line.ends_with('\n') {
            return false;
        }
        input = &input[n..];
        if matches!(Request::parse(line), Ok(Request::Shutdown)) {
            return true;
        }
    }
}
